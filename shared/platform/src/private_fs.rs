//! Files that hold a secret or customer data (the data dir, SQLite databases and their
//! `-wal`/`-shm` companions, logs, `up.json` with the admin token) are created with their final
//! mode, never chmod'ed afterwards: files 0600, directories 0700, owner only.
//!
//! Two layers, so no window exists in which another local user can open such a file:
//! - [`restrict_umask`] (umask 077, called first thing in `main`) makes every file the process
//!   or a library inside it creates (SQLite creates `-wal`/`-shm` itself) owner-only, and
//!   children inherit it;
//! - the functions below pass the mode to `open(2)`/`mkdir(2)` themselves, so the library
//!   functions are right even when called without that umask (tests, embedding), and they
//!   tighten a file or directory left looser by an older version.
//!
//! An existing directory with group or other bits is tightened to 0700 when it is owned by
//! this user and is not a shared directory (world-writable or sticky, like `/tmp`); otherwise it
//! is refused with an error naming it, because tightening a directory others rely on, or that
//! others control, is not this process's call.
//!
//! Atomic replacement ([`write_private_atomic`]) uses the `tempfile` crate, which creates its
//! file with `O_CREAT|O_EXCL` and mode 0600 in the target's directory, then renames it.
//! Unix only (like the rest of the binary: signals and process groups).

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};

/// Mode of every file holding a secret or customer data.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory holding such files.
pub const DIR_MODE: u32 = 0o700;

/// Sets the process umask to 077 and returns the previous one. Call it before any file is
/// created or any thread or child is started: the umask is process-wide and inherited.
pub fn restrict_umask() -> u32 {
    use nix::sys::stat::{Mode, umask};
    umask(Mode::from_bits_truncate(0o077)).bits()
}

/// Creates `dir` (and missing parents) with mode 0700, or checks an existing one: looser modes
/// are tightened to 0700 when the directory is ours and not shared; a shared one (world-writable
/// or sticky) or one owned by another user is refused.
///
/// # Errors
/// `dir` cannot be created, is not a directory, is shared or another user's, or cannot be
/// tightened.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let meta =
        std::fs::metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let me = nix::unistd::geteuid().as_raw();
    if mode & 0o1002 != 0 {
        bail!(
            "{} is a shared directory (mode {mode:04o}); secrets and customer data need a \
             directory of their own: pass a subdirectory",
            dir.display()
        );
    }
    if meta.uid() != me {
        bail!(
            "{} has mode {mode:04o} and belongs to uid {}, not to this user (uid {me}); \
             run `chmod 700 {}` as its owner or choose another directory",
            dir.display(),
            meta.uid(),
            dir.display()
        );
    }
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
        .with_context(|| format!("cannot tighten {} to 0700", dir.display()))?;
    tracing::warn!(
        dir = %dir.display(),
        was = format!("{mode:04o}"),
        "tightened the data dir to 0700: it holds secrets and customer data"
    );
    Ok(())
}

/// Opens `path` for appending (a log), creating it with mode 0600; an existing file with a
/// looser mode is tightened through the open handle.
///
/// # Errors
/// The file cannot be opened or tightened.
pub fn open_private_append(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    tighten(&file, path)?;
    Ok(file)
}

/// Creates or truncates `path` for writing with mode 0600 (tightening an existing file first).
///
/// # Errors
/// The file cannot be opened, tightened or truncated.
pub fn create_private(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .mode(FILE_MODE)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // Tighten before truncating, so the old contents are not readable while we write new ones.
    tighten(&file, path)?;
    file.set_len(0)
        .with_context(|| format!("cannot truncate {}", path.display()))?;
    Ok(file)
}

/// Makes sure `path` exists with mode 0600 without touching its contents: creates an empty file
/// when missing (SQLite treats it as an empty database and gives its `-wal`/`-shm` files the
/// database file's mode), tightens an existing one.
///
/// # Errors
/// The file cannot be created or tightened.
pub fn ensure_private_file(path: &Path) -> anyhow::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    tighten(&file, path)
}

/// Tightens `path` to 0600 when it exists; a missing file is fine.
///
/// # Errors
/// The file exists but cannot be tightened.
pub fn tighten_if_exists(path: &Path) -> anyhow::Result<()> {
    match OpenOptions::new().read(true).open(path) {
        Ok(file) => tighten(&file, path),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("cannot open {}", path.display())),
    }
}

/// Replaces `path` with `bytes` atomically: a reader sees the old file or the new one, never
/// half of one, and never a copy with a looser mode. The temporary file (`.<name>.*` in the same
/// directory) is created 0600 with `O_EXCL`, synced, then renamed over `path`.
///
/// # Errors
/// The temporary file cannot be created, written or renamed (it is removed then).
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(FILE_MODE))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn tighten(file: &File, path: &Path) -> anyhow::Result<()> {
    let mode = file
        .metadata()
        .with_context(|| format!("cannot inspect {}", path.display()))?
        .mode()
        & 0o7777;
    if mode != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .with_context(|| format!("cannot tighten {} to 0600", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path)
            .map(|m| m.mode() & 0o7777)
            .unwrap_or(0)
    }

    #[test]
    fn creates_with_final_modes_and_tightens_what_exists() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b");
        ensure_private_dir(&dir).expect("dir");
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&root.path().join("a")), 0o700);

        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).expect("loosen");
        ensure_private_dir(&dir).expect("tighten dir");
        assert_eq!(mode_of(&dir), 0o700);

        let loose = dir.join("old.log");
        std::fs::write(&loose, b"x").expect("write");
        std::fs::set_permissions(&loose, Permissions::from_mode(0o644)).expect("loosen");
        drop(open_private_append(&loose).expect("append"));
        assert_eq!(mode_of(&loose), 0o600);

        let db = dir.join("x.db");
        ensure_private_file(&db).expect("db");
        assert_eq!(mode_of(&db), 0o600);

        let up = dir.join("up.json");
        write_private_atomic(&up, b"{}").expect("write");
        assert_eq!(mode_of(&up), 0o600);
        assert_eq!(std::fs::read(&up).expect("read"), b"{}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names.len(), 3, "no temporary file left: {names:?}");
    }

    #[test]
    fn refuses_a_shared_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let shared = root.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, Permissions::from_mode(0o1777)).expect("chmod");
        let err = ensure_private_dir(&shared).expect_err("a sticky world-writable dir is refused");
        assert!(err.to_string().contains("shared directory"), "{err}");
        assert_eq!(mode_of(&shared), 0o1777, "left as it was");
    }
}
