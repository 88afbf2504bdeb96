//! The embedded database holds customer data: its directory, file and `-wal`/`-shm` companions
//! are owner-only from the moment they exist, whatever umask the caller runs with.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ftshop_platform::db::Db;
use sqlx::Executor;

/// The permission bits of `path` in octal (`"600"`), so a failure reads like `ls -l`.
fn mode_of(path: &Path) -> String {
    std::fs::metadata(path)
        .map(|m| format!("{:o}", m.mode() & 0o7777))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn sqlite_files_are_owner_only_under_a_permissive_umask() {
    // An ordinary caller's umask (the test harness may run with a stricter one): the modes
    // asserted below must come from the code, not from the umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let root = tempfile::tempdir().expect("tempdir");

    // A data dir an older version created 0755, with a 0644 database in it.
    let old = root.path().join("old");
    std::fs::create_dir(&old).expect("mkdir");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(old.join("store.db"), b"").expect("db");
    std::fs::set_permissions(old.join("store.db"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");

    let fresh = root.path().join("fresh");
    for dir in [&fresh, &old] {
        let db = Db::connect(None, dir, "store").await.expect("connect");
        db.pool
            .execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
            .await
            .expect("create");
        db.pool
            .execute("INSERT INTO t (x) VALUES (1)")
            .await
            .expect("insert");
        assert_eq!(mode_of(dir), "700", "{}", dir.display());
        for name in ["store.db", "store.db-wal", "store.db-shm"] {
            assert_eq!(mode_of(&dir.join(name)), "600", "{}/{name}", dir.display());
        }
        db.pool.close().await;
    }
}
