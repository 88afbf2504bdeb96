//! The shim against real SQLite files: each commit is one write, and nothing SQLite wrote is
//! lost or misplaced, with rolled-back spills, reads inside a transaction, and two processes on
//! one file. Each test runs in this test binary's own process (the counters are process-wide),
//! one at a time.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

mod common;
use common::{count, integrity, open_plain, recovered_copy};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open(path: &Path) -> Connection {
    ftshop_sqlite_wal::register().expect("register");
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
    )
    .expect("pragmas");
    conn
}

#[test]
fn the_default_vfs_is_the_shim() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = open(&dir.path().join("a.db"));
    let name: String = conn
        .query_row("PRAGMA main.journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(name, "wal");
    let vfs = ftshop_sqlite_wal::default_vfs_name();
    assert_eq!(vfs, "ftshop-wal");
}

#[test]
fn a_commit_of_many_frames_is_one_write() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = open(&dir.path().join("a.db"));
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t (v);",
    )
    .expect("schema");
    for round in 0..20 {
        let before = ftshop_sqlite_wal::stats();
        let tx = conn.unchecked_transaction().expect("begin");
        for i in 0..50 {
            tx.execute(
                "INSERT INTO t (v) VALUES (?1)",
                [format!("{round}-{i}-{}", "x".repeat(200))],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
        let after = ftshop_sqlite_wal::stats();
        let writes = after.writes - before.writes;
        // At least the table's and the index's pages: two calls per frame from SQLite...
        assert!(writes >= 6, "round {round}: {writes} writes from SQLite");
        // ...and one to the file (the first commit also writes the WAL header: contiguous),
        // made by the commit itself, not later by a hook.
        assert_eq!(after.flushes - before.flushes, 1, "round {round}");
        assert_eq!(after.late, before.late, "round {round}");
    }
    drop(conn);
    let plain = open_plain(&dir.path().join("a.db"));
    assert_eq!(integrity(&plain), "ok");
    assert_eq!(count(&plain, "SELECT COUNT(*) FROM t"), 1000);
}

/// A transaction bigger than the page cache spills frames into the WAL before its commit; rolled
/// back, those frames must never be written later over frames another connection committed
/// (with no hook at the write lock's release this test finds "Rowid 549 out of order").
#[test]
fn a_rolled_back_spill_never_lands_on_frames_committed_after_it() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    let a = open(&path);
    a.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, pad BLOB);")
        .expect("schema");
    let b = open(&path);
    for round in 0..5 {
        // An empty WAL: rolling back then reads nothing from it (the pages come back from the
        // database file), so nothing makes the shim write A's buffered frames.
        b.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
        let before = ftshop_sqlite_wal::stats();
        // A spills: a tiny cache and ~100 pages of rows.
        a.execute_batch("PRAGMA cache_size = 5; BEGIN IMMEDIATE;")
            .expect("begin");
        for _ in 0..100 {
            a.execute("INSERT INTO t (who, pad) VALUES ('a', zeroblob(3000))", [])
                .expect("insert a");
        }
        a.execute_batch("ROLLBACK;").expect("rollback");
        let after = ftshop_sqlite_wal::stats();
        assert!(
            after.late > before.late,
            "round {round}: the spill should have been buffered, then written at the write \
             lock's release: {before:?} {after:?}"
        );
        // B commits where A's spill was (more frames than A spilled: one transaction each).
        for i in 0..150 {
            b.execute(
                "INSERT INTO t (who, pad) VALUES ('b', ?1)",
                [vec![i as u8; 500]],
            )
            .expect("insert b");
        }
        // A commits again, elsewhere in the WAL.
        a.execute("INSERT INTO t (who, pad) VALUES ('a', x'01')", [])
            .expect("insert a after");
    }
    drop(a);
    drop(b);
    let plain = open_plain(&path);
    assert_eq!(integrity(&plain), "ok");
    assert_eq!(count(&plain, "SELECT COUNT(*) FROM t WHERE who = 'b'"), 750);
    assert_eq!(count(&plain, "SELECT COUNT(*) FROM t WHERE who = 'a'"), 5);
    let bad: i64 = count(
        &plain,
        "SELECT COUNT(*) FROM t WHERE who = 'b' AND length(pad) != 500",
    );
    assert_eq!(bad, 0);
}

/// Pages spilled inside a transaction are read back from the WAL before its commit: the read
/// must see them.
#[test]
fn a_transaction_reads_back_what_it_spilled() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    let conn = open(&path);
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, pad BLOB);")
        .expect("schema");
    conn.execute_batch("PRAGMA cache_size = 5; BEGIN IMMEDIATE;")
        .expect("begin");
    for i in 0..300 {
        conn.execute("INSERT INTO t (n, pad) VALUES (?1, zeroblob(2000))", [i])
            .expect("insert");
    }
    let sum: i64 = conn
        .query_row("SELECT SUM(n) FROM t", [], |r| r.get(0))
        .expect("sum inside");
    assert_eq!(sum, (0..300).sum::<i64>());
    conn.execute_batch("COMMIT;").expect("commit");
    drop(conn);
    let plain = open_plain(&path);
    assert_eq!(integrity(&plain), "ok");
    assert_eq!(count(&plain, "SELECT SUM(n) FROM t"), (0..300).sum::<i64>());
}

const CHILD_ENV: &str = "FTSHOP_WAL_TEST_CHILD_DB";
const CHILD_ROWS: i64 = 1500;

/// Two processes (as the two Store replicas) write one file through the shim, one row per
/// transaction, at the same time: every row is there and the file is sound.
#[test]
fn two_processes_on_one_file_lose_no_commit() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    open(&path)
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, n INTEGER, pad BLOB);")
        .expect("schema");
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = ["p1", "p2"]
        .iter()
        .map(|who| {
            std::process::Command::new(&exe)
                .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, &path)
                .env("FTSHOP_WAL_TEST_WHO", who)
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("wait").success(), "a writer failed");
    }
    let plain = open_plain(&path);
    assert_eq!(integrity(&plain), "ok");
    for who in ["p1", "p2"] {
        let n = plain
            .query_row(
                "SELECT COUNT(*), COUNT(DISTINCT n) FROM t WHERE who = ?1",
                [who],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .expect("count");
        assert_eq!(n, (CHILD_ROWS, CHILD_ROWS), "{who}");
    }
}

/// The writer of `two_processes_on_one_file_lose_no_commit` (does nothing when run alone).
#[test]
fn child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let who = std::env::var("FTSHOP_WAL_TEST_WHO").expect("who");
    let conn = open(Path::new(&path));
    for n in 0..CHILD_ROWS {
        // Sizes vary so that frames and pages differ between the two writers.
        let pad = vec![1u8; usize::try_from(n % 7).expect("small") * 300];
        loop {
            match conn.execute(
                "INSERT INTO t (who, n, pad) VALUES (?1, ?2, ?3)",
                rusqlite::params![who, n, pad],
            ) {
                Ok(_) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy => {}
                Err(err) => panic!("insert: {err}"),
            }
        }
        if n % 500 == 0 {
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }
}

fn pages_of_rows(conn: &Connection, rows: i64) {
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, pad BLOB);")
        .expect("schema");
    let tx = conn.unchecked_transaction().expect("begin");
    for id in 1..=rows {
        // One row per page.
        tx.execute(
            "INSERT INTO t (id, n, pad) VALUES (?1, 0, zeroblob(3000))",
            [id],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// Commits of every size from 1 to 70 frames, across the point where a buffer is written for
/// room (a review found the commit page of a 32-frame commit lost there): each is read by
/// another connection at once, and all of them survive a crash.
#[test]
fn commits_of_every_size_reach_the_file() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    let conn = open(&path);
    pages_of_rows(&conn, 80);
    let reader = open_plain(&path);
    let mut expected = 0;
    let before = ftshop_sqlite_wal::stats();
    for k in 1..=70 {
        conn.execute("UPDATE t SET n = n + 1 WHERE id <= ?1", [k])
            .expect("update");
        expected += k;
        assert_eq!(
            count(&reader, "SELECT SUM(n) FROM t"),
            expected,
            "after a commit of {k} pages"
        );
    }
    // Each commit written by its own last page, none by a barrier or a lock's release.
    assert_eq!(ftshop_sqlite_wal::stats().late, before.late);
    let (_copy, recovered) = recovered_copy(&path);
    assert_eq!(integrity(&recovered), "ok");
    assert_eq!(count(&recovered, "SELECT SUM(n) FROM t"), expected);
}

/// A transaction that spills pages and then changes them again makes SQLite rewrite its frames'
/// checksums at the commit (header writes in place, the commit frame's last): a crash right
/// after must still find the commit (a review found the last header left in a buffer).
#[test]
fn a_commit_with_rewritten_checksums_survives_a_crash() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    let conn = open(&path);
    pages_of_rows(&conn, 60);
    conn.execute_batch("PRAGMA cache_size = 5; BEGIN IMMEDIATE;")
        .expect("begin");
    for _ in 0..2 {
        // Every page twice: the second pass finds pages already spilled to the WAL.
        conn.execute("UPDATE t SET n = n + 10", []).expect("update");
    }
    conn.execute_batch("COMMIT;").expect("commit");
    conn.execute("UPDATE t SET n = n + 1 WHERE id = 1", [])
        .expect("one more");
    let expected = 60 * 20 + 1;
    assert_eq!(count(&open_plain(&path), "SELECT SUM(n) FROM t"), expected);
    let (_copy, recovered) = recovered_copy(&path);
    assert_eq!(integrity(&recovered), "ok");
    assert_eq!(count(&recovered, "SELECT SUM(n) FROM t"), expected);
}

/// `synchronous = FULL` without powersafe overwrite pads a commit to a sector with copies of
/// its last frame, split around a sync: the bytes after the commit frame reach the file too.
#[test]
fn padded_commits_with_synchronous_full_reach_the_file() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    ftshop_sqlite_wal::register().expect("register");
    let uri = format!("file:{}?psow=0", path.display());
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .expect("open");
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .expect("pragmas");
    pages_of_rows(&conn, 10);
    let reader = open_plain(&path);
    for i in 1..=20 {
        conn.execute("UPDATE t SET n = n + 1 WHERE id = ?1", [i % 10 + 1])
            .expect("update");
        assert_eq!(count(&reader, "SELECT SUM(n) FROM t"), i, "commit {i}");
    }
    let (_copy, recovered) = recovered_copy(&path);
    assert_eq!(integrity(&recovered), "ok");
    assert_eq!(count(&recovered, "SELECT SUM(n) FROM t"), 20);
}

/// `locking_mode = EXCLUSIVE` before the WAL opens keeps the wal-index in memory, and SQLite
/// then takes no shared-memory lock at all: a commit after a rolled-back spill is still written
/// by its last page (a review found it left in the buffer, lost by a crash after COMMIT).
#[test]
fn exclusive_locking_mode_commits_reach_the_file() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    ftshop_sqlite_wal::register().expect("register");
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
    )
    .expect("pragmas");
    pages_of_rows(&conn, 60);
    conn.execute_batch("PRAGMA cache_size = 5; BEGIN;")
        .expect("begin");
    conn.execute("UPDATE t SET n = n + 100", []).expect("spill");
    conn.execute_batch("ROLLBACK;").expect("rollback");
    conn.execute("UPDATE t SET n = n + 1 WHERE id = 1", [])
        .expect("one page");
    let (_copy, recovered) = recovered_copy(&path);
    assert_eq!(integrity(&recovered), "ok");
    assert_eq!(count(&recovered, "SELECT SUM(n) FROM t"), 1);
}

/// Leaving exclusive locking mode with a rolled-back spill still buffered: it is written while
/// the exclusive lock is held, never later over frames another connection committed (a review
/// found rolled-back rows back and "Rowid 116 out of order").
#[test]
fn leaving_exclusive_mode_after_a_spill_keeps_other_commits() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    let a = open(&path);
    pages_of_rows(&a, 20);
    a.execute_batch("PRAGMA locking_mode = EXCLUSIVE;")
        .expect("exclusive");
    a.execute("UPDATE t SET n = n + 1 WHERE id = 1", [])
        .expect("update");
    a.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    a.execute_batch("PRAGMA locking_mode = NORMAL;")
        .expect("normal");
    // Still exclusive until this transaction ends: it spills and rolls back.
    a.execute_batch("PRAGMA cache_size = 5; BEGIN;")
        .expect("begin");
    for _ in 0..100 {
        a.execute("INSERT INTO t (n, pad) VALUES (100, zeroblob(3000))", [])
            .expect("spill");
    }
    a.execute_batch("ROLLBACK;").expect("rollback");
    let b = open(&path);
    for _ in 0..150 {
        b.execute("INSERT INTO t (n, pad) VALUES (1, randomblob(3000))", [])
            .expect("insert b");
    }
    assert_eq!(count(&a, "SELECT COUNT(*) FROM t"), 170);
    drop(b);
    let check = open_plain(&path);
    assert_eq!(integrity(&check), "ok");
    assert_eq!(count(&check, "SELECT SUM(n) FROM t"), 151);
}
