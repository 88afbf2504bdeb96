//! A SQLite VFS shim over the `unix` VFS that writes each WAL commit with one `pwrite`.
//!
//! **Why.** SQLite writes a transaction into the WAL frame by frame, and each frame with two
//! `write` calls: its 24-byte header, then the page (`walWriteOneFrame` in `sqlite3.c`). A
//! purchase commits ~16 frames over three databases, so ~32 `pwrite64` calls, and the WAL's
//! writes were 10-13 % of each writing service's CPU (docs/benchmarks/happy-path.md, the sixth
//! round): most of it is the kernel's fixed cost per call (the inode lock, `file_modified`,
//! the page-cache lookup of each folio touched), not the copy. A transaction's frames are
//! contiguous in the file, so this shim keeps them in a buffer and writes them with one call
//! when the commit frame arrives. No SQLite option does this (the bundled 3.51 has none), and no
//! maintained crate offers a pass-through shim of the `unix` VFS; Turso's rewrite of SQLite
//! writes a commit's frames with one `pwritev` for the same reason (its `append_frames_vectored`).
//!
//! **What reaches the file, and when.** Every other file (the database, its `-shm`, journals,
//! temporary files) is the `unix` VFS's own object. On the WAL only *appends* are buffered: a
//! write that lands where this connection's previous write ended, or the first write of a write
//! transaction. Every other write (a frame overwritten in place, the checksums that
//! `walRewriteChecksums` rewrites) goes to the file at once, after the buffer. The buffer is
//! written, before the call returns, by the write that completes a commit frame (its page, after
//! the header whose "database size after commit" is non-zero), and before any other operation
//! on the WAL (read, sync, truncate, size, file control, close); so SQLite never reads the file
//! without what it was told was written, and the commit's result is the buffer's: a full disk
//! fails it (`SQLITE_FULL`) before the wal-index header that publishes it is written, as
//! SQLite's own last write would. A failed write before a read, sync or truncate is reported as
//! `SQLITE_IOERR_WRITE`, which makes SQLite roll the whole transaction back. Three hooks on the
//! main database file (found with `sqlite3_database_file_object`, the API SQLite gives VFS shims
//! for that) bound what can stay buffered (after a commit frame nothing is: what SQLite appends after
//! it in the same transaction, the padding of `synchronous = FULL` with `psow=0`, goes straight
//! to the file so that its error reaches SQLite): its `xShmBarrier`, called before a wal-index
//! header is published, writes anything still buffered; its `xShmLock` releasing the WAL write
//! lock (slot 0),
//! and its `xUnlock` lowering the file lock (in `locking_mode = EXCLUSIVE`, where SQLite takes no
//! shared-memory locks, that lock is what keeps other writers out), write what is left while the
//! lock is still held (frames that a rolled-back transaction spilled, past the last committed
//! frame, where SQLite itself would have written them at once): written any later, they could
//! land on frames another connection committed since. Frames thus
//! reach the file a little later than without the shim, but always before anything reads them,
//! before they are published, and before the write lock is released; a crash before that loses
//! a transaction that had not committed. Tests (`tests/wal.rs`) check each of these, including
//! recovery from a copy of the files taken while the writer runs (as after a crash) and two
//! processes on one file (the Store replicas share one).
//!
//! Registered as the process's default VFS by [`register`] (`ftshop_platform::db` does it before
//! its first connection), so the direct connection of `ftshop_platform::sql` and the sqlx pool's
//! connections both use it. Source of the file format:
//! <https://sqlite.org/walformat.html> (frame header: page number, then the database size in
//! pages after a commit, 0 for other frames).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::ffi;

/// The VFS's registered name.
pub const VFS_NAME: &CStr = c"ftshop-wal";

/// Bytes of a WAL frame header.
const FRAME_HEADER: usize = 24;

/// Most bytes written with one call: the `unix` VFS writes at most this much per `pwrite`
/// (`seekAndWriteFd` masks the length with `0x1ffff`, and a length that masks to 0 is reported
/// as a full disk), so a larger transaction goes out in pieces of up to this size.
const MAX_WRITE: usize = 0x1ffff;

/// A buffer's capacity kept after a write; a larger one (a big transaction's) is given back.
const KEEP_CAPACITY: usize = 64 << 10;

/// SQLite's writes to WAL files, the shim's writes of its buffers, and buffers written by
/// something other than their commit, since start (process-wide; for tests and the benchmark
/// notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// `xWrite` calls SQLite made on WAL files.
    pub writes: u64,
    /// Writes this shim made to WAL files (one per commit on the happy path).
    pub flushes: u64,
    /// Buffers written by something other than their own commit frame: the release of the
    /// write lock (a rolled-back transaction's spilled frames), a barrier before a wal-index
    /// header is published, or the WAL's close.
    pub late: u64,
}

static WRITES: AtomicU64 = AtomicU64::new(0);
static FLUSHES: AtomicU64 = AtomicU64::new(0);
static LATE: AtomicU64 = AtomicU64::new(0);

/// See [`Stats`].
pub fn stats() -> Stats {
    Stats {
        writes: WRITES.load(Ordering::Relaxed),
        flushes: FLUSHES.load(Ordering::Relaxed),
        late: LATE.load(Ordering::Relaxed),
    }
}

/// Registers the shim as the default VFS (once per process; later calls return the first
/// result). Must run before the first SQLite connection opens, or that connection keeps `unix`.
///
/// # Errors
/// The `unix` VFS is missing (not a Unix build of SQLite) or registration failed.
pub fn register() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // SAFETY: sqlite3_vfs_find is thread-safe and returns a VFS that lives for the
            // process (the built-in "unix").
            let base = unsafe { ffi::sqlite3_vfs_find(c"unix".as_ptr()) };
            if base.is_null() {
                return Err("SQLite has no `unix` VFS".to_owned());
            }
            // SAFETY: `base` is a valid VFS; copied by value.
            let mut vfs = unsafe { *base };
            let base_size = usize::try_from(vfs.szOsFile).map_err(|e| e.to_string())?;
            let extra_offset = base_size.next_multiple_of(std::mem::align_of::<Extra>());
            vfs.szOsFile = c_int::try_from(extra_offset + std::mem::size_of::<Extra>())
                .map_err(|e| e.to_string())?;
            vfs.zName = VFS_NAME.as_ptr();
            vfs.pNext = std::ptr::null_mut();
            vfs.xOpen = Some(x_open);
            // The other methods stay `unix`'s: they do not depend on the file object's size.
            if SHIM.set(Shim { base, extra_offset }).is_err() {
                return Err("VFS shim set twice".to_owned());
            }
            // Leaked: a registered VFS lives for the process, and SQLite writes its `pNext`, so
            // no Rust reference to it is kept.
            let vfs: *mut ffi::sqlite3_vfs = Box::into_raw(Box::new(vfs));
            // SAFETY: `vfs` is valid for the process; `1` makes it the default.
            let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 1) };
            if rc == ffi::SQLITE_OK {
                Ok(())
            } else {
                Err(format!("sqlite3_vfs_register failed: {rc}"))
            }
        })
        .clone()
}

/// The name of the process's default VFS (`ftshop-wal` after [`register`]).
pub fn default_vfs_name() -> String {
    // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS or null; a VFS's name is a C
    // string that lives as long as the VFS (registered VFSes live for the process).
    unsafe {
        let vfs = ffi::sqlite3_vfs_find(std::ptr::null());
        if vfs.is_null() || (*vfs).zName.is_null() {
            return String::new();
        }
        CStr::from_ptr((*vfs).zName).to_string_lossy().into_owned()
    }
}

struct Shim {
    base: *mut ffi::sqlite3_vfs,
    /// Where [`Extra`] starts in a file object (after the `unix` VFS's own object).
    extra_offset: usize,
}

// SAFETY: the pointers are to process-lifetime VFS objects, read only after registration.
unsafe impl Send for Shim {}
// SAFETY: as above.
unsafe impl Sync for Shim {}

static SHIM: OnceLock<Shim> = OnceLock::new();

/// What the shim keeps after the `unix` VFS's file object: the `unix` methods, and the WAL
/// buffer (owned by the WAL file, shared with its database file).
#[repr(C)]
struct Extra {
    base_methods: *const ffi::sqlite3_io_methods,
    /// `Arc::into_raw` of the WAL's buffer, or null (a database whose WAL is not open).
    wal: *const Mutex<WalBuffer>,
}

struct WalBuffer {
    /// The WAL file this buffer belongs to (null once it is closed): the database's hooks write
    /// through it.
    file: *mut ffi::sqlite3_file,
    data: Vec<u8>,
    /// File offset of `data[0]`.
    start: i64,
    /// Offset where the page of a buffered commit frame's header goes: writing it completes the
    /// commit.
    commit_page_at: Option<i64>,
    /// Where this connection's next append to the WAL goes (just past the last byte it wrote or
    /// buffered), or `None` at the start of a write transaction (the first write may start a
    /// buffer wherever it lands). Only an append is buffered: every other write (a frame
    /// overwritten in place, the checksums rewritten by `walRewriteChecksums`) goes to the file
    /// at once, after the buffer.
    next_append: Option<i64>,
    /// A commit of this write transaction was written: what SQLite appends after it (the
    /// padding of `synchronous = FULL` with `psow=0`) goes straight to the file, so that its
    /// write's error reaches SQLite. Cleared when a write transaction starts (slot 0 taken);
    /// in exclusive locking mode, where that is never seen, nothing is buffered after the first
    /// commit.
    after_commit: bool,
}

// SAFETY: `file` is used only under the buffer's mutex, by the connection that owns both files
// (SQLite uses a connection from one thread at a time).
unsafe impl Send for WalBuffer {}

fn shim() -> &'static Shim {
    // Set before the VFS is registered, so before SQLite can call into it.
    SHIM.get()
        .expect("the VFS shim is registered before a file opens")
}

/// # Safety
/// `file` is a file object allocated with this VFS's `szOsFile`.
unsafe fn extra(file: *mut ffi::sqlite3_file) -> *mut Extra {
    // SAFETY: the object is `szOsFile` bytes, `Extra` at `extra_offset` within it.
    unsafe { file.cast::<u8>().add(shim().extra_offset).cast::<Extra>() }
}

/// # Safety
/// `file` is an open file of this VFS.
unsafe fn base(file: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: set at open to `unix`'s methods, which live for the process.
    unsafe { &*(*extra(file)).base_methods }
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let shim = shim();
    // SAFETY: `base` is `unix`, whose xOpen fills the front of the object as usual.
    let rc = unsafe {
        let Some(open) = (*shim.base).xOpen else {
            return ffi::SQLITE_ERROR;
        };
        open(shim.base, name, file, flags, out_flags)
    };
    // SAFETY: `file` is ours (szOsFile bytes); on failure SQLite does not call xClose.
    unsafe {
        if rc != ffi::SQLITE_OK || (*file).pMethods.is_null() {
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        let ours = extra(file);
        ours.write(Extra {
            base_methods: (*file).pMethods,
            wal: std::ptr::null(),
        });
        if flags & ffi::SQLITE_OPEN_WAL != 0 {
            let wal = Arc::new(Mutex::new(WalBuffer {
                file,
                data: Vec::new(),
                start: 0,
                commit_page_at: None,
                next_append: None,
                after_commit: false,
            }));
            // Link the database file (same connection, opened before its WAL) to this buffer.
            let db = ffi::sqlite3_database_file_object(name);
            if !db.is_null() && std::ptr::eq((*db).pMethods, &DB_METHODS) {
                let db_extra = extra(db);
                let old = std::mem::replace(&mut (*db_extra).wal, Arc::into_raw(Arc::clone(&wal)));
                if !old.is_null() {
                    drop(Arc::from_raw(old));
                }
            }
            (*ours).wal = Arc::into_raw(wal);
            (*file).pMethods = &WAL_METHODS;
        } else if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
            (*file).pMethods = &DB_METHODS;
        } else {
            // Journals, temporary files: the `unix` object as it is.
            (*file).pMethods = (*ours).base_methods;
        }
    }
    ffi::SQLITE_OK
}

/// The WAL buffer of `file` (a WAL file or a database file), if any. The reference is valid
/// while `file` is open (its `Arc` is released at its close), not for `'static`.
///
/// # Safety
/// `file` is an open file of this VFS, and the reference is not kept past its close.
unsafe fn wal_of(file: *mut ffi::sqlite3_file) -> Option<&'static Mutex<WalBuffer>> {
    // SAFETY: the pointer is an `Arc::into_raw` kept alive by this file until its close.
    unsafe { (*extra(file)).wal.as_ref() }
}

fn lock(wal: &Mutex<WalBuffer>) -> std::sync::MutexGuard<'_, WalBuffer> {
    // A panic cannot happen while it is held (no code that panics runs under it); if one did,
    // the buffer is still consistent.
    wal.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes the buffer through `unix`'s xWrite on its WAL file and empties it (also on failure:
/// SQLite treats a failed write as not made and rolls the transaction back).
///
/// # Safety
/// `buf.file`, when not null, is an open WAL file of this VFS.
unsafe fn flush(buf: &mut WalBuffer) -> c_int {
    if buf.data.is_empty() {
        return ffi::SQLITE_OK;
    }
    let file = buf.file;
    if file.is_null() {
        buf.data.clear();
        return ffi::SQLITE_IOERR_WRITE;
    }
    let Ok(len) = c_int::try_from(buf.data.len()) else {
        buf.data.clear();
        return ffi::SQLITE_IOERR_WRITE;
    };
    FLUSHES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `unix`'s xWrite on its own file object, with our buffer.
    let rc = unsafe {
        match base(file).xWrite {
            Some(write) => write(file, buf.data.as_ptr().cast(), len, buf.start),
            None => ffi::SQLITE_IOERR_WRITE,
        }
    };
    buf.data.clear();
    if buf.data.capacity() > KEEP_CAPACITY {
        buf.data.shrink_to(KEEP_CAPACITY);
    }
    rc
}

/// Writes what is buffered before an operation that must see the file as SQLite wrote it. A
/// failure is reported as `SQLITE_IOERR_WRITE` whatever its cause: an I/O error makes SQLite roll
/// the whole transaction back, where `SQLITE_FULL` from a read could roll back only the statement
/// and let the transaction commit without the frames that failed here.
///
/// # Safety
/// `file` is an open WAL file of this VFS.
unsafe fn settle(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        match wal_of(file) {
            Some(wal) => match flush(&mut lock(wal)) {
                ffi::SQLITE_OK => ffi::SQLITE_OK,
                _ => ffi::SQLITE_IOERR_WRITE,
            },
            None => ffi::SQLITE_OK,
        }
    }
}

unsafe extern "C" fn wal_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    WRITES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: SQLite passes `amount` readable bytes at `data`, on an open WAL file of ours.
    unsafe {
        let direct = |file| match base(file).xWrite {
            Some(write) => write(file, data, amount, offset),
            None => ffi::SQLITE_IOERR_WRITE,
        };
        let Some(wal) = wal_of(file) else {
            return direct(file);
        };
        let Ok(len) = usize::try_from(amount) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
        // A commit frame's header (database size after the commit, non-zero): its page follows
        // right after it (`walWriteOneFrame`), and writing that page completes the commit.
        let commit_page =
            (len == FRAME_HEADER && bytes[4..8] != [0; 4]).then_some(offset + FRAME_HEADER as i64);
        let mut buf = lock(wal);
        let append = !buf.after_commit && buf.next_append.is_none_or(|next| next == offset);
        buf.next_append = Some(offset + i64::from(amount));
        if !append || len > MAX_WRITE {
            // Not an append (an overwritten frame, a rewritten checksum, a commit's first frame
            // when no write lock was seen: exclusive locking mode), or more than one call can
            // write: what is buffered goes first, then this, straight to the file.
            let rc = flush(&mut buf);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let rc = direct(file);
            buf.commit_page_at = commit_page.filter(|_| rc == ffi::SQLITE_OK);
            return rc;
        }
        let completes_commit = buf.commit_page_at == Some(offset);
        if !buf.data.is_empty() && buf.data.len() + len > MAX_WRITE {
            let rc = flush(&mut buf);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if buf.data.is_empty() {
            buf.start = offset;
        }
        buf.data.extend_from_slice(bytes);
        if completes_commit {
            buf.commit_page_at = None;
            buf.after_commit = true;
            return flush(&mut buf);
        }
        if commit_page.is_some() {
            buf.commit_page_at = commit_page;
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: an open WAL file of ours; after this SQLite never uses it again.
    unsafe {
        let extra = extra(file);
        let wal = std::mem::replace(&mut (*extra).wal, std::ptr::null());
        if !wal.is_null() {
            let wal = Arc::from_raw(wal);
            // Empty unless the connection held its write lock to the end (locking_mode =
            // EXCLUSIVE never releases it): SQLite's own writes, so they go to the file.
            let mut buf = lock(&wal);
            write_leftovers(&mut buf);
            buf.file = std::ptr::null_mut();
        }
        match base(file).xClose {
            Some(close) => close(file),
            None => ffi::SQLITE_OK,
        }
    }
}

unsafe extern "C" fn db_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: an open database file of ours; after this SQLite never uses it again.
    unsafe {
        let extra = extra(file);
        let wal = std::mem::replace(&mut (*extra).wal, std::ptr::null());
        if !wal.is_null() {
            drop(Arc::from_raw(wal));
        }
        match base(file).xClose {
            Some(close) => close(file),
            None => ffi::SQLITE_OK,
        }
    }
}

/// Writes what a hook finds still buffered (see the module docs: the bytes are SQLite's own
/// writes, and the lock that keeps other writers off them is still held). An error here cannot
/// reach SQLite (these calls return nothing it acts on), so the bytes stay out of the file: for a
/// rolled-back transaction's frames that changes nothing; for the padding after a commit frame
/// (`synchronous = FULL`, `psow=0`) it leaves what a crash during that write would.
///
/// # Safety
/// `buf.file`, when not null, is an open WAL file of this VFS.
unsafe fn write_leftovers(buf: &mut WalBuffer) {
    if !buf.data.is_empty() {
        LATE.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        let _ = unsafe { flush(buf) };
    }
}

/// `WAL_WRITE_LOCK`'s slot in the wal-index's lock array (`sqlite3.c`: `#define WAL_WRITE_LOCK 0`).
const WAL_WRITE_LOCK: c_int = 0;

unsafe extern "C" fn db_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: an open database file of ours.
    unsafe {
        let covers_write_lock = offset <= WAL_WRITE_LOCK && offset + n > WAL_WRITE_LOCK;
        if covers_write_lock
            && flags & ffi::SQLITE_SHM_UNLOCK != 0
            && let Some(wal) = wal_of(file)
        {
            // The write transaction is over, and the lock still held until the call below: what
            // is left (frames of a rolled-back transaction that spilled, past the last committed
            // frame) is written now, as SQLite wrote it, while no other connection can append
            // there. Never later: by then another writer may have committed frames at the same
            // place.
            let mut buf = lock(wal);
            write_leftovers(&mut buf);
            buf.commit_page_at = None;
        }
        let rc = match base(file).xShmLock {
            Some(shm_lock) => shm_lock(file, offset, n, flags),
            None => ffi::SQLITE_IOERR_SHMLOCK,
        };
        if rc == ffi::SQLITE_OK
            && covers_write_lock
            && flags & ffi::SQLITE_SHM_LOCK != 0
            && flags & ffi::SQLITE_SHM_EXCLUSIVE != 0
            && let Some(wal) = wal_of(file)
        {
            // A write transaction starts: its first write may start a buffer wherever it lands
            // (after another process's frames, or at a restarted WAL's header).
            let mut buf = lock(wal);
            buf.next_append = None;
            buf.after_commit = false;
        }
        rc
    }
}

/// `xUnlock` on a database: the connection lowers its lock on the database file (in exclusive
/// locking mode, the lock that kept every other connection out of the WAL). Anything still
/// buffered (a rolled-back transaction's spilled frames: exclusive mode never releases the WAL
/// write lock through `xShmLock`) is written while that lock is still held.
unsafe extern "C" fn db_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: an open database file of ours.
    unsafe {
        if let Some(wal) = wal_of(file) {
            let mut buf = lock(wal);
            write_leftovers(&mut buf);
        }
        match base(file).xUnlock {
            Some(unlock) => unlock(file, level),
            None => ffi::SQLITE_IOERR_UNLOCK,
        }
    }
}

/// `xShmBarrier` on a database: SQLite is about to publish a wal-index header (or has read
/// one); everything it wrote to the WAL is in the file first. Nothing should be buffered here (a
/// commit is written with its last page, and what follows it goes straight to the file): a
/// second line of defence.
unsafe extern "C" fn db_shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: an open database file of ours.
    unsafe {
        if let Some(wal) = wal_of(file) {
            let mut buf = lock(wal);
            write_leftovers(&mut buf);
        }
        if let Some(barrier) = base(file).xShmBarrier {
            barrier(file);
        }
    }
}

/// Forwarders to `unix`'s methods; `$settle` writes a WAL's buffer first.
macro_rules! forward {
    ($name:ident, $method:ident, $settle:expr, ($($arg:ident: $ty:ty),*) -> $ret:ty, $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> $ret {
            // SAFETY: an open file of ours; the arguments are SQLite's, passed on unchanged.
            unsafe {
                if $settle {
                    let rc = settle(file);
                    if rc != ffi::SQLITE_OK {
                        return rc;
                    }
                }
                match base(file).$method {
                    Some(method) => method(file $(, $arg)*),
                    None => $missing,
                }
            }
        }
    };
}

forward!(wal_read, xRead, true, (data: *mut c_void, amount: c_int, offset: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_READ);
forward!(wal_truncate, xTruncate, true, (size: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_TRUNCATE);
forward!(wal_sync, xSync, true, (flags: c_int) -> c_int, ffi::SQLITE_IOERR_FSYNC);
forward!(wal_file_size, xFileSize, true, (size: *mut ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_FSTAT);
forward!(wal_file_control, xFileControl, true, (op: c_int, arg: *mut c_void) -> c_int, ffi::SQLITE_NOTFOUND);

forward!(pass_read, xRead, false, (data: *mut c_void, amount: c_int, offset: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_READ);
forward!(pass_write, xWrite, false, (data: *const c_void, amount: c_int, offset: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_WRITE);
forward!(pass_truncate, xTruncate, false, (size: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_TRUNCATE);
forward!(pass_sync, xSync, false, (flags: c_int) -> c_int, ffi::SQLITE_IOERR_FSYNC);
forward!(pass_file_size, xFileSize, false, (size: *mut ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_FSTAT);
forward!(pass_lock, xLock, false, (level: c_int) -> c_int, ffi::SQLITE_IOERR_LOCK);
forward!(pass_unlock, xUnlock, false, (level: c_int) -> c_int, ffi::SQLITE_IOERR_UNLOCK);
forward!(pass_check_reserved_lock, xCheckReservedLock, false, (out: *mut c_int) -> c_int, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK);
forward!(pass_file_control, xFileControl, false, (op: c_int, arg: *mut c_void) -> c_int, ffi::SQLITE_NOTFOUND);
forward!(pass_sector_size, xSectorSize, false, () -> c_int, 4096);
forward!(pass_device_characteristics, xDeviceCharacteristics, false, () -> c_int, 0);
forward!(pass_shm_map, xShmMap, false, (page: c_int, page_size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int, ffi::SQLITE_IOERR_SHMMAP);
forward!(pass_shm_unmap, xShmUnmap, false, (delete: c_int) -> c_int, ffi::SQLITE_OK);
forward!(pass_fetch, xFetch, false, (offset: ffi::sqlite3_int64, amount: c_int, out: *mut *mut c_void) -> c_int, ffi::SQLITE_OK);
forward!(pass_unfetch, xUnfetch, false, (offset: ffi::sqlite3_int64, page: *mut c_void) -> c_int, ffi::SQLITE_OK);

unsafe extern "C" fn pass_shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: an open file of ours.
    unsafe {
        if let Some(barrier) = base(file).xShmBarrier {
            barrier(file);
        }
    }
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(pass_lock),
    xUnlock: Some(pass_unlock),
    xCheckReservedLock: Some(pass_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(pass_sector_size),
    xDeviceCharacteristics: Some(pass_device_characteristics),
    xShmMap: Some(pass_shm_map),
    xShmLock: Some(pass_shm_lock),
    xShmBarrier: Some(pass_shm_barrier),
    xShmUnmap: Some(pass_shm_unmap),
    xFetch: Some(pass_fetch),
    xUnfetch: Some(pass_unfetch),
};

static DB_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(db_close),
    xRead: Some(pass_read),
    xWrite: Some(pass_write),
    xTruncate: Some(pass_truncate),
    xSync: Some(pass_sync),
    xFileSize: Some(pass_file_size),
    xLock: Some(pass_lock),
    xUnlock: Some(db_unlock),
    xCheckReservedLock: Some(pass_check_reserved_lock),
    xFileControl: Some(pass_file_control),
    xSectorSize: Some(pass_sector_size),
    xDeviceCharacteristics: Some(pass_device_characteristics),
    xShmMap: Some(pass_shm_map),
    xShmLock: Some(db_shm_lock),
    xShmBarrier: Some(db_shm_barrier),
    xShmUnmap: Some(pass_shm_unmap),
    xFetch: Some(pass_fetch),
    xUnfetch: Some(pass_unfetch),
};

forward!(pass_shm_lock, xShmLock, false, (offset: c_int, n: c_int, flags: c_int) -> c_int, ffi::SQLITE_IOERR_SHMLOCK);
