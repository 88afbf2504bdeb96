//! The `disk-full` scenario's tools: how big the data dir's filesystem is (the scenario refuses
//! anything over [`MAX_FILESYSTEM_BYTES`], so it can never fill a real disk), a tmpfs the run
//! mounts for its own suite when it is root, and the filler file that takes all the space but a
//! small margin. The filling technique is the one `tests/e2e_storage_faults.rs` uses.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The largest filesystem `disk-full` agrees to fill: 1 GiB (statvfs `f_blocks × f_frsize`).
pub const MAX_FILESYSTEM_BYTES: u64 = 1 << 30;

/// Size of the tmpfs the run mounts for its own suite (databases, logs, up.json).
pub const TMPFS_SIZE: &str = "64m";

/// Bytes left free by the filler, so purchases fill the rest: some transactions then fail
/// half-way or at COMMIT, the hard case (same margin as tests/e2e_storage_faults.rs).
pub const MARGIN_BYTES: u64 = 384 << 10;

/// Name of the filler file inside the data dir.
pub const FILLER: &str = "chaos-disk-filler";

/// Total size in bytes of the filesystem holding `dir` (statvfs).
pub fn filesystem_bytes(dir: &Path) -> anyhow::Result<u64> {
    let stat =
        nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok(stat.blocks().saturating_mul(stat.fragment_size()))
}

/// Refuses `dir` unless its filesystem is at most [`MAX_FILESYSTEM_BYTES`].
pub fn ensure_small(dir: &Path) -> anyhow::Result<u64> {
    let size = filesystem_bytes(dir)?;
    if size > MAX_FILESYSTEM_BYTES {
        bail!(
            "disk-full fills the filesystem of the data dir, and {} is on one of {} MiB (more \
             than {} MiB): refused, so it can never fill a real disk. Run as root without \
             --data-dir (the run mounts a {TMPFS_SIZE} tmpfs), or give a --data-dir (or \
             --attach-data-dir) on a small filesystem, e.g. `mount -t tmpfs -o size=64m tmpfs DIR`",
            dir.display(),
            size >> 20,
            MAX_FILESYSTEM_BYTES >> 20
        );
    }
    Ok(size)
}

/// True when this process may mount (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A tmpfs this run mounted over its own temporary data dir; unmounted (lazily) when dropped,
/// and the then empty mount point removed, unless [`Tmpfs::keep`] was called (its files are
/// evidence).
pub struct Tmpfs {
    dir: PathBuf,
    keep: bool,
}

impl Tmpfs {
    /// Mounts a [`TMPFS_SIZE`] tmpfs (mode 0700) on `dir`, which must exist.
    pub fn mount(dir: &Path) -> anyhow::Result<Self> {
        use nix::mount::{MsFlags, mount};
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={TMPFS_SIZE},mode=0700").as_str()),
        )
        .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            keep: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leaves it mounted; the caller says so.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        match nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&self.dir);
            }
            Err(err) => eprintln!("[chaos] could not unmount {}: {err}", self.dir.display()),
        }
    }
}

/// The filler file: created by [`Filler::fill`], removed by [`Filler::free`] or when dropped,
/// so the disk never stays full after the run, whatever happens to the scenario task.
pub struct Filler {
    path: PathBuf,
    bytes: u64,
    freed: bool,
}

impl Filler {
    /// Writes `<dir>/chaos-disk-filler` until the filesystem is full, then shortens it so
    /// `margin` bytes are free. Blocking (runs in `spawn_blocking`). Refuses a filesystem over
    /// [`MAX_FILESYSTEM_BYTES`] again, in case the data dir was remounted meanwhile.
    pub fn fill(dir: &Path, margin: u64) -> anyhow::Result<Self> {
        ensure_small(dir)?;
        let path = dir.join(FILLER);
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut filler = Filler {
            path: path.clone(),
            bytes: 0,
            freed: false,
        };
        // Big chunks first, then smaller ones, so the last bytes are taken too.
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let buf = vec![0u8; chunk];
            while file.write_all(&buf).is_ok() {}
        }
        let full = file.metadata().context("filler size")?.len();
        filler.bytes = full.saturating_sub(margin);
        file.set_len(filler.bytes)
            .context("leaving the margin free")?;
        let _ = file.sync_all();
        Ok(filler)
    }

    /// Size of the filler in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Removes the filler now.
    pub fn free(mut self) -> std::io::Result<()> {
        self.freed = true;
        std::fs::remove_file(&self.path)
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if !self.freed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a filler left in `dir` (an aborted scenario task); true when there was one.
pub fn remove_leftover(dir: &Path) -> bool {
    std::fs::remove_file(dir.join(FILLER)).is_ok()
}

/// The database files `db-file-gone` may take away (`--db-gone-file`).
pub const DB_FILES: [&str; 3] = ["store.db", "ecommerce.db", "fidelity.db"];

/// Suffix of a database file while `db-file-gone` holds it away.
const AWAY: &str = ".chaos-away";

/// A database file renamed away from its path (the services' open handles keep it, under
/// another name); renamed back by [`MovedAway::restore`] or when dropped, so it never stays
/// away after the run.
pub struct MovedAway {
    path: PathBuf,
    away: PathBuf,
    restored: bool,
}

impl MovedAway {
    /// Renames `path` to `<path>.chaos-away`.
    pub fn rename(path: &Path) -> anyhow::Result<Self> {
        let away = away_of(path);
        std::fs::rename(path, &away)
            .with_context(|| format!("renaming {} away", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            away,
            restored: false,
        })
    }

    /// Renames it back.
    pub fn restore(mut self) -> std::io::Result<()> {
        self.restored = true;
        std::fs::rename(&self.away, &self.path)
    }
}

impl Drop for MovedAway {
    fn drop(&mut self) {
        if !self.restored {
            let _ = std::fs::rename(&self.away, &self.path);
        }
    }
}

fn away_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(AWAY);
    PathBuf::from(name)
}

/// Renames back a database file `db-file-gone` left away (an aborted scenario task); true
/// when there was one.
pub fn restore_leftover(dir: &Path) -> bool {
    let mut restored = false;
    for name in DB_FILES {
        let path = dir.join(name);
        let away = away_of(&path);
        if away.exists() && !path.exists() {
            restored |= std::fs::rename(&away, &path).is_ok();
        }
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_filesystem_is_refused() {
        // The root filesystem of a development machine or CI runner is far over 1 GiB; on a
        // machine where it is not, there is nothing to check.
        let size = filesystem_bytes(Path::new("/")).expect("statvfs /");
        if size > MAX_FILESYSTEM_BYTES {
            let err = ensure_small(Path::new("/")).expect_err("/ is refused");
            assert!(err.to_string().contains("refused"), "{err}");
            let err = Filler::fill(Path::new("/"), MARGIN_BYTES)
                .err()
                .expect("no filler");
            assert!(err.to_string().contains("refused"), "{err}");
            assert!(!Path::new("/").join(FILLER).exists());
        }
    }

    #[test]
    fn a_database_file_moved_away_comes_back_even_when_the_task_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        std::fs::write(&path, b"data").expect("file");
        let moved = MovedAway::rename(&path).expect("rename");
        assert!(!path.exists());
        drop(moved);
        assert_eq!(std::fs::read(&path).expect("back"), b"data");
        let moved = MovedAway::rename(&path).expect("rename");
        std::mem::forget(moved); // an aborted task that never ran its drop
        assert!(restore_leftover(dir.path()));
        assert_eq!(std::fs::read(&path).expect("back"), b"data");
    }
}
