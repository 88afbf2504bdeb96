//! Helpers shared by this crate's test binaries (each uses some of them).
#![allow(dead_code)]

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// A connection through SQLite's own `unix` VFS, to check what the shim wrote.
pub fn open_plain(path: &Path) -> Connection {
    let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), c"unix")
        .expect("open plain");
    conn.execute_batch("PRAGMA busy_timeout = 5000;")
        .expect("pragmas");
    conn
}

pub fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

pub fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

/// The database as a crash would leave it: the database file and its WAL (if any) copied while
/// the writer is still open (no checkpoint at close), opened elsewhere through `unix`, so SQLite
/// rebuilds the wal-index from the WAL's frames and checksums alone.
pub fn recovered_copy(path: &Path) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = path.file_name().expect("file name");
    std::fs::copy(path, dir.path().join(name)).expect("copy db");
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        let mut wal_copy = dir.path().join(name).into_os_string();
        wal_copy.push("-wal");
        std::fs::copy(&wal, &wal_copy).expect("copy wal");
    }
    let conn = open_plain(&dir.path().join(name));
    (dir, conn)
}
