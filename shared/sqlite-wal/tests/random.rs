//! Random transactions through the shim (inserts, updates, deletes, savepoints, rollbacks,
//! reads of spilled pages, every checkpoint mode, NORMAL and FULL sync, page caches of 5, 10 and
//! 2000 pages) in normal, exclusive and in-memory-index exclusive locking mode, with and without
//! powersafe overwrite. After each step the writer, a reader through `unix` (normal mode) and a
//! recovery from the files copied at that moment (as after a crash) must agree. Seeded, so a
//! failure names its seed; `FTSHOP_WAL_SEEDS=N` runs more seeds (default 2). Written by a review
//! of the shim, which ran it with 25 seeds.

use rusqlite::{Connection, OpenFlags};

mod common;
use common::recovered_copy;

/// A 64-bit LCG (Knuth's MMIX constants): enough to choose operations reproducibly.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        i64::try_from((self.0 >> 33) % n).expect("small")
    }
}

/// Row count, a sum over ids and values, and a sum over the pads' lengths and contents.
fn digest(conn: &Connection) -> Result<(i64, i64, i64), rusqlite::Error> {
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(n * 31 + id), 0),
                COALESCE(SUM(length(pad) + unicode(substr(hex(pad), 1 + (id % 100), 1))), 0)
         FROM t",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// `mode`: 0 normal, 1 exclusive after the WAL opened, 2 exclusive before (index in memory).
fn run(seed: u64, mode: u32, psow: bool) -> Result<(), String> {
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    let uri = format!("file:{}?psow={}", path.display(), u8::from(psow));
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI;
    let w = Connection::open_with_flags(&uri, flags).expect("open");
    if mode == 2 {
        w.execute_batch("PRAGMA locking_mode = EXCLUSIVE;")
            .expect("exclusive");
    }
    w.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, pad BLOB);
         CREATE INDEX tn ON t (n);",
    )
    .expect("schema");
    if mode == 1 {
        w.execute_batch("PRAGMA locking_mode = EXCLUSIVE;")
            .expect("exclusive");
    }
    let reader = (mode == 0).then(|| {
        Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), c"unix").expect("reader")
    });
    let at = |step: i32| format!("seed {seed} mode {mode} psow {psow} step {step}");
    for step in 0..60 {
        let cache = [5, 10, 2000][usize::try_from(rng.below(3)).expect("index")];
        let sync = ["NORMAL", "FULL"][usize::try_from(rng.below(2)).expect("index")];
        w.execute_batch(&format!(
            "PRAGMA cache_size = {cache}; PRAGMA synchronous = {sync};"
        ))
        .expect("pragmas");
        if rng.below(10) == 0 {
            let how = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"]
                [usize::try_from(rng.below(4)).expect("index")];
            let _ = w.query_row(&format!("PRAGMA wal_checkpoint({how})"), [], |_| Ok(()));
        } else {
            w.execute_batch("BEGIN").expect("begin");
            let mut savepoint = false;
            for _ in 0..1 + rng.below(6) {
                match rng.below(6) {
                    0 | 1 => {
                        let (rows, size) = (1 + rng.below(80), 100 + rng.below(3800));
                        for _ in 0..rows {
                            w.execute(
                                "INSERT INTO t (n, pad) VALUES (abs(random()) % 1000, randomblob(?1))",
                                [size],
                            )
                            .expect("insert");
                        }
                    }
                    2 => {
                        w.execute(
                            "UPDATE t SET n = n + 1, pad = randomblob(length(pad))
                             WHERE id % 7 = ?1 % 7 OR id > ?1",
                            [rng.below(400)],
                        )
                        .expect("update");
                    }
                    3 => {
                        w.execute("DELETE FROM t WHERE id % 5 = ?1", [rng.below(5)])
                            .expect("delete");
                    }
                    4 => {
                        let sql = match (savepoint, rng.below(2)) {
                            (false, _) => "SAVEPOINT s",
                            (true, 0) => "ROLLBACK TO s",
                            (true, _) => "RELEASE s",
                        };
                        w.execute_batch(sql).expect("savepoint");
                        savepoint = !savepoint;
                    }
                    _ => {
                        let _: Option<i64> = w
                            .query_row(
                                "SELECT SUM(length(pad)) FROM t WHERE n % 3 = ?1",
                                [rng.below(3)],
                                |r| r.get(0),
                            )
                            .expect("read");
                    }
                }
            }
            let end = if rng.below(4) == 0 {
                "ROLLBACK"
            } else {
                "COMMIT"
            };
            w.execute_batch(end).expect("end");
        }
        let want = digest(&w).map_err(|e| format!("{}: writer {e}", at(step)))?;
        if let Some(reader) = &reader {
            let seen = digest(reader).map_err(|e| format!("{}: reader {e}", at(step)))?;
            if seen != want {
                return Err(format!("{}: reader {seen:?} != {want:?}", at(step)));
            }
        }
        let (_copy, copy) = recovered_copy(&path);
        let integrity: String = copy
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| format!("{}: recovered {e}", at(step)))?;
        let seen = digest(&copy).map_err(|e| format!("{}: recovered {e}", at(step)))?;
        if integrity != "ok" || seen != want {
            return Err(format!(
                "{}: recovered {integrity} {seen:?} != {want:?}",
                at(step)
            ));
        }
    }
    Ok(())
}

#[test]
fn random_transactions_agree_with_a_reader_and_a_recovery() {
    ftshop_sqlite_wal::register().expect("register");
    let seeds: u64 = std::env::var("FTSHOP_WAL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut failures = Vec::new();
    for seed in 0..seeds {
        for mode in 0..3 {
            for psow in [true, false] {
                if let Err(why) = run(seed * 7919 + 1, mode, psow) {
                    failures.push(why);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
