//! What a small write transaction costs through `unix` and through the shim, in one process,
//! alternating blocks so the host's drift falls on both alike.
//!
//! `cargo run --release -p ftshop-sqlite-wal --example commit_cost [DIR]` (DIR: where the two
//! databases go, default a temporary directory; use the file system the data dir is on).
//! Each transaction is shaped like a bonus credit: `BEGIN IMMEDIATE`, an insert keyed by a
//! UUID-like text, an upsert of a balance, `COMMIT` (WAL, `synchronous = NORMAL`).

use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};

const BLOCK: u32 = 5_000;
const BLOCKS: u32 = 8;

fn open(path: &Path, vfs: &std::ffi::CStr) -> Connection {
    let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA journal_size_limit = 67108864;
         CREATE TABLE IF NOT EXISTS credits (transaction_id TEXT PRIMARY KEY, user TEXT NOT NULL, points INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS balances (user TEXT PRIMARY KEY, points INTEGER NOT NULL);",
    )
    .expect("schema");
    conn
}

fn block(conn: &Connection, start: u32) -> f64 {
    let began = Instant::now();
    for i in start..start + BLOCK {
        let user = format!("user-{}", i % 1000);
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        conn.prepare_cached(
            "INSERT INTO credits (transaction_id, user, points) VALUES (?1, ?2, ?3)",
        )
        .expect("prepare")
        .execute(rusqlite::params![
            format!(
                "{:032x}",
                u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
            ),
            user,
            10
        ])
        .expect("insert");
        conn.prepare_cached("INSERT INTO balances (user, points) VALUES (?1, ?2) ON CONFLICT (user) DO UPDATE SET points = points + excluded.points")
            .expect("prepare")
            .execute(rusqlite::params![user, 10])
            .expect("upsert");
        conn.execute_batch("COMMIT").expect("commit");
    }
    began.elapsed().as_secs_f64() * 1e6 / f64::from(BLOCK)
}

fn main() {
    ftshop_sqlite_wal::register().expect("register");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| tmp.path().to_owned(), Into::into);
    let unix = open(&dir.join("unix.db"), c"unix");
    let shim = open(&dir.join("shim.db"), ftshop_sqlite_wal::VFS_NAME);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..BLOCKS {
        let start = round * BLOCK;
        if round % 2 == 0 {
            a.push(block(&unix, start));
            b.push(block(&shim, start));
        } else {
            b.push(block(&shim, start));
            a.push(block(&unix, start));
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("µs per transaction, {BLOCKS} blocks of {BLOCK} each, interleaved:");
    println!(
        "unix: {:.2} mean {:?}",
        mean(&a),
        a.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>()
    );
    println!(
        "shim: {:.2} mean {:?}",
        mean(&b),
        b.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>()
    );
    println!("shim stats: {:?}", ftshop_sqlite_wal::stats());
}
