//! The shim over a `unix` VFS whose WAL writes fail on demand (`SQLITE_FULL`, what the `unix`
//! VFS returns on `ENOSPC`): a write that fails where SQLite cannot see it must still fail the
//! transaction. Its own test binary: the faulty VFS is registered as `unix` before the shim, which
//! then sits on top of it. (Both tests come from a review of the shim.)

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rusqlite::{Connection, OpenFlags, ffi};

mod common;
use common::{count, integrity, open_plain};

/// 0: no fault; 1: every WAL write fails; 2: only a short write at a 4 KiB boundary (the tail of
/// a frame padded after a sync point).
static FAULT: AtomicU8 = AtomicU8::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

struct Real {
    vfs: *mut ffi::sqlite3_vfs,
    wal_methods: OnceLock<Methods>,
}
struct Methods {
    real: *const ffi::sqlite3_io_methods,
    faulty: ffi::sqlite3_io_methods,
}
// SAFETY: process-lifetime pointers to SQLite's own VFS and method tables, only read.
unsafe impl Send for Real {}
// SAFETY: as above.
unsafe impl Sync for Real {}
// SAFETY: as above.
unsafe impl Send for Methods {}
// SAFETY: as above.
unsafe impl Sync for Methods {}

static REAL: OnceLock<Real> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

unsafe extern "C" fn faulty_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let fail = match FAULT.load(Ordering::SeqCst) {
        1 => true,
        2 => offset % 4096 == 0 && offset > 0 && amount < 4120,
        _ => false,
    };
    if fail {
        FAILED.fetch_add(1, Ordering::SeqCst);
        return ffi::SQLITE_FULL;
    }
    let methods = REAL
        .get()
        .and_then(|r| r.wal_methods.get())
        .expect("installed");
    // SAFETY: the real `unix` xWrite on its own file object, with SQLite's arguments.
    unsafe { ((*methods.real).xWrite.expect("xWrite"))(file, data, amount, offset) }
}

unsafe extern "C" fn faulty_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let real = REAL.get().expect("installed");
    // SAFETY: the real `unix` xOpen fills the file object SQLite (here: the shim) allocated.
    unsafe {
        let rc = ((*real.vfs).xOpen.expect("xOpen"))(real.vfs, name, file, flags, out);
        if rc == ffi::SQLITE_OK && flags & ffi::SQLITE_OPEN_WAL != 0 && !(*file).pMethods.is_null()
        {
            let methods = real.wal_methods.get_or_init(|| {
                let mut faulty = *(*file).pMethods;
                faulty.xWrite = Some(faulty_write);
                Methods {
                    real: (*file).pMethods,
                    faulty,
                }
            });
            (*file).pMethods = &methods.faulty;
        }
        rc
    }
}

fn install() -> std::sync::MutexGuard<'static, ()> {
    let guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    REAL.get_or_init(|| {
        // SAFETY: registering a copy of `unix` (same name, our xOpen) as the default, leaked
        // for the process, before the shim registers on top of "unix".
        unsafe {
            let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
            let mut vfs = *unix;
            vfs.xOpen = Some(faulty_open);
            vfs.pNext = std::ptr::null_mut();
            assert_eq!(
                ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 1),
                0
            );
            Real {
                vfs: unix,
                wal_methods: OnceLock::new(),
            }
        }
    });
    ftshop_sqlite_wal::register().expect("shim");
    guard
}

/// A full disk when the shim writes its buffer before SQLite reads spilled pages back: SQLite
/// must roll the whole transaction back (as for its own failed write), not only the statement
/// and then commit without those frames.
#[test]
fn a_failed_write_before_a_read_rolls_the_transaction_back() {
    let _one = install();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, pad BLOB);",
    )
    .expect("schema");
    let tx = conn.unchecked_transaction().expect("begin");
    for id in 1..=60 {
        tx.execute(
            "INSERT INTO t (id, n, pad) VALUES (?1, 0, zeroblob(3000))",
            [id],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
    conn.execute_batch("PRAGMA cache_size = 5; BEGIN;")
        .expect("begin");
    for id in 61..=80 {
        // Spills: frames in the shim's buffer.
        conn.execute(
            "INSERT INTO t (id, n, pad) VALUES (?1, 1, zeroblob(3000))",
            [id],
        )
        .expect("insert");
    }
    let failed_before = FAILED.load(Ordering::SeqCst);
    FAULT.store(1, Ordering::SeqCst);
    // Reads the spilled pages back: the buffer is written first, and the disk is full.
    let statement = conn.execute(
        "INSERT INTO t (n, pad) SELECT n + 100, pad FROM t WHERE id > 60",
        [],
    );
    FAULT.store(0, Ordering::SeqCst);
    assert!(
        FAILED.load(Ordering::SeqCst) > failed_before,
        "the fault was not hit"
    );
    assert!(statement.is_err());
    let committed = !conn.is_autocommit() && conn.execute_batch("COMMIT;").is_ok();
    let plain = open_plain(&path);
    assert_eq!(integrity(&plain), "ok");
    assert!(
        !committed,
        "the transaction must not commit after its frames were lost"
    );
    assert_eq!(count(&plain, "SELECT COUNT(*) FROM t"), 60);
}

/// `synchronous = FULL` with `psow=0` pads a commit after a sync point: a failed write of that
/// padding must fail the commit, as without the shim (the shim once kept it buffered, wrote it
/// at a barrier and lost the error; readers then saw a torn page).
#[test]
fn a_failed_write_of_a_commit_padding_fails_the_commit() {
    let _one = install();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    let uri = format!("file:{}?psow=0", path.display());
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, pad BLOB);
         INSERT INTO t VALUES (1, 0, randomblob(3500));",
    )
    .expect("schema");
    for id in 2..50 {
        conn.execute("INSERT INTO t VALUES (?1, 7, randomblob(3500))", [id])
            .expect("insert");
    }
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        .expect("checkpoint");
    let failed_before = FAILED.load(Ordering::SeqCst);
    FAULT.store(2, Ordering::SeqCst);
    let update = conn.execute(
        "UPDATE t SET n = 1, pad = ?1 WHERE id = 1",
        [vec![0xABu8; 3500]],
    );
    FAULT.store(0, Ordering::SeqCst);
    assert!(
        FAILED.load(Ordering::SeqCst) > failed_before,
        "the fault was not hit"
    );
    let reader = open_plain(&path);
    let seen = reader.query_row(
        "SELECT n, pad = ?1 FROM t WHERE id = 1",
        [vec![0xABu8; 3500]],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)),
    );
    match update {
        // Committed: every byte of it is readable.
        Ok(_) => assert_eq!(seen.expect("read"), (1, true)),
        // Failed: the old row, whole.
        Err(_) => assert_eq!(seen.expect("read"), (0, false)),
    }
}
