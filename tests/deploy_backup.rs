//! The backup scripts in deploy/backup, end to end on the real suite: buy, back up while the
//! suite runs, buy once more (the restore must undo that one), stop, wipe, restore, start
//! again, and find the same orders, stock and balances. Once on the embedded SQLite files
//! (`sqlite-backup.sh`/`sqlite-restore.sh`), once on PostgreSQL (`pg-backup.sh`/`pg-restore.sh`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `ftshop up --port-base 0` on a data dir this test chooses (and keeps across restarts).
struct Up {
    data_dir: PathBuf,
    supervisor: Child,
    http: reqwest::Client,
}

impl Up {
    async fn start(data_dir: &Path, database_url: Option<&str>) -> Up {
        // A previous run's up.json names ports that are gone.
        let _ = std::fs::remove_file(data_dir.join("up.json"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftshop"));
        cmd.args(["up", "--port-base", "0", "--faults", "off", "--data-dir"])
            .arg(data_dir)
            .env("FTSHOP_ADMIN_TOKEN", common::ADMIN_TOKEN)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(url) = database_url {
            cmd.args(["--database-url", url]);
        }
        let up = Up {
            data_dir: data_dir.to_owned(),
            supervisor: cmd.spawn().expect("spawn ftshop up"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        };
        up.wait_until_ready(Duration::from_secs(90)).await;
        up
    }

    fn members(&self) -> Vec<Value> {
        std::fs::read_to_string(self.data_dir.join("up.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["members"].as_array().cloned())
            .unwrap_or_default()
    }

    fn url(&self, name: &str) -> String {
        self.members()
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["url"].as_str())
            .unwrap_or_else(|| panic!("no {name} in up.json"))
            .to_owned()
    }

    async fn wait_until_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let members = self.members();
            let mut ready = members.len() == 6;
            for m in &members {
                let url = format!("{}/health/ready", m["url"].as_str().unwrap_or_default());
                ready &= self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
            }
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "suite not ready within {limit:?}; logs in {}/logs",
                self.data_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn stop(&mut self) {
        common::signal(
            self.supervisor.id() as i32,
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(self.supervisor.try_wait(), Ok(Some(_))) {
            assert!(Instant::now() < deadline, "ftshop up did not stop in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn buy(&self, product: &str, user: &str, key: &str) -> Value {
        let resp = self
            .http
            .post(format!("{}/buy", self.url("ecommerce")))
            .header("Idempotency-Key", key)
            .json(&json!({"product": product, "user": user, "ft": true}))
            .send()
            .await
            .expect("POST /buy");
        let status = resp.status();
        let body: Value = resp.json().await.expect("JSON body");
        assert_eq!(status, 200, "POST /buy: {body}");
        body
    }

    async fn get(&self, member: &str, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url(member)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// What a restore must bring back: each order, the whole catalog with stock, each balance.
    async fn state(&self, orders: &[String], users: &[&str]) -> Value {
        let mut order_states = Vec::new();
        for id in orders {
            let (status, body) = self.get("ecommerce", &format!("/orders/{id}")).await;
            assert_eq!(status, 200, "GET /orders/{id}: {body}");
            order_states.push(body);
        }
        let (_, products) = self.get("store-1", "/products").await;
        let mut balances = Vec::new();
        for user in users {
            balances.push(self.get("fidelity", &format!("/balance/{user}")).await.1);
        }
        json!({"orders": order_states, "products": products, "balances": balances})
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.supervisor.try_wait() {
            self.stop();
        }
    }
}

/// Runs a deploy/backup script; its last line of stdout (the backup's path, for some).
fn script(name: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/backup")
        .join(name);
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .output()
        .expect("run backup script");
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

const USERS: [&str; 2] = ["alice", "bob"];

/// Three purchases, each bonus credited; returns the order ids.
async fn purchases(up: &Up, run: &str) -> Vec<String> {
    let mut orders = Vec::new();
    for (i, (product, user)) in [("1", "alice"), ("2", "bob"), ("1", "bob")]
        .into_iter()
        .enumerate()
    {
        let body = up.buy(product, user, &format!("{run}-{i}")).await;
        orders.push(body["order_id"].as_str().expect("order_id").to_owned());
    }
    // Every bonus credited before the backup, so balances are part of what it must keep.
    common::eventually(Duration::from_secs(30), "every bonus credited", || async {
        let mut all = true;
        for id in &orders {
            let (_, order) = up.get("ecommerce", &format!("/orders/{id}")).await;
            all &= order["status"] == "completed" && order["bonus_status"] == "credited";
        }
        all
    })
    .await;
    orders
}

async fn assert_restored(up: &Up, orders: &[String], before: &Value, undone: &str) {
    let after = up.state(orders, &USERS).await;
    assert_eq!(&after, before, "the restored suite differs from the backup");
    let (status, body) = up.get("ecommerce", &format!("/orders/{undone}")).await;
    assert_eq!(
        status, 404,
        "the order made after the backup survived the restore: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_backup_wipe_restore_keeps_orders_stock_and_balances() {
    let data = tempfile::tempdir().expect("tempdir");
    let backups = tempfile::tempdir().expect("tempdir");
    let mut up = Up::start(data.path(), None).await;
    let run = uuid::Uuid::new_v4().to_string();
    let orders = purchases(&up, &run).await;
    let before = up.state(&orders, &USERS).await;

    // Online: the suite keeps running (and selling) during and after the backup.
    let backup = script(
        "sqlite-backup.sh",
        &[
            data.path().to_str().expect("utf-8 path"),
            backups.path().to_str().expect("utf-8 path"),
        ],
    );
    let later = up.buy("3", "carol", &format!("{run}-later")).await;
    up.stop();

    for entry in std::fs::read_dir(data.path()).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("wipe");
        } else {
            std::fs::remove_file(&path).expect("wipe");
        }
    }
    script(
        "sqlite-restore.sh",
        &[&backup, data.path().to_str().expect("utf-8 path")],
    );

    let up = Up::start(data.path(), None).await;
    assert_restored(
        &up,
        &orders,
        &before,
        later["order_id"].as_str().expect("id"),
    )
    .await;
}

/// A database of its own on the real PostgreSQL, dropped when the test ends.
struct TestDatabase {
    admin: String,
    name: String,
}

impl TestDatabase {
    fn create() -> TestDatabase {
        let admin = std::env::var("FTSHOP_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("ftshop_backup_{}", uuid::Uuid::new_v4().simple());
        let db = TestDatabase { admin, name };
        db.admin_sql(&format!("CREATE DATABASE \"{}\"", db.name));
        db
    }

    fn url(&self) -> String {
        let base = self.admin.rsplit_once('/').map_or(&*self.admin, |(b, _)| b);
        format!("{base}/{}", self.name)
    }

    fn admin_sql(&self, sql: &str) {
        let out = Command::new("psql")
            .args([&self.admin, "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .output()
            .expect("psql (postgresql-client) is needed");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin,
                "-qc",
                &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            ])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_backup_wipe_restore_keeps_orders_stock_and_balances() {
    let db = TestDatabase::create();
    let url = db.url();
    let data = tempfile::tempdir().expect("tempdir");
    let backups = tempfile::tempdir().expect("tempdir");
    let mut up = Up::start(data.path(), Some(&url)).await;
    let run = uuid::Uuid::new_v4().to_string();
    let orders = purchases(&up, &run).await;
    let before = up.state(&orders, &USERS).await;

    let dump = backups.path().join("ftshop.dump");
    script("pg-backup.sh", &[&url, dump.to_str().expect("utf-8 path")]);
    let later = up.buy("3", "carol", &format!("{run}-later")).await;
    up.stop();

    // The database is lost: drop it and start from an empty one.
    db.admin_sql(&format!("DROP DATABASE \"{}\" WITH (FORCE)", db.name));
    db.admin_sql(&format!("CREATE DATABASE \"{}\"", db.name));
    script("pg-restore.sh", &[&url, dump.to_str().expect("utf-8 path")]);

    let up = Up::start(data.path(), Some(&url)).await;
    assert_restored(
        &up,
        &orders,
        &before,
        later["order_id"].as_str().expect("id"),
    )
    .await;
}

/// Runs a deploy/backup script and returns whether it succeeded (for the refusals).
fn script_succeeds(name: &str, args: &[&str]) -> bool {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/backup")
        .join(name);
    Command::new("bash")
        .arg(&path)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run backup script")
        .success()
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 (the backup scripts install it when missing)");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn sqlite_restore_refuses_a_damaged_backup_and_leaves_the_data_alone() {
    let data = tempfile::tempdir().expect("tempdir");
    let backups = tempfile::tempdir().expect("tempdir");
    let db = data.path().join("store.db");
    sqlite(
        &db,
        "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2);",
    );
    let backup = script(
        "sqlite-backup.sh",
        &[
            data.path().to_str().expect("utf-8 path"),
            backups.path().to_str().expect("utf-8 path"),
        ],
    );
    sqlite(&db, "INSERT INTO t VALUES (3);");

    // One flipped byte: the manifest no longer matches, and nothing in the data dir changes.
    let copy = Path::new(&backup).join("store.db");
    let mut bytes = std::fs::read(&copy).expect("backup file");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&copy, &bytes).expect("damage");
    assert!(!script_succeeds(
        "sqlite-restore.sh",
        &[&backup, data.path().to_str().expect("utf-8 path")]
    ));
    assert_eq!(sqlite(&db, "SELECT COUNT(*) FROM t;"), "3");

    // An incomplete backup (no manifest) is refused too.
    std::fs::remove_file(Path::new(&backup).join("SHA256SUMS")).expect("manifest");
    assert!(!script_succeeds(
        "sqlite-restore.sh",
        &[&backup, data.path().to_str().expect("utf-8 path")]
    ));
    assert_eq!(sqlite(&db, "SELECT COUNT(*) FROM t;"), "3");
}

/// Backups and restored databases hold customer data: the scripts create every directory 0700
/// and every file 0600 themselves (umask 077 first), even when run from a shell with umask 022.
#[test]
fn sqlite_backup_and_restore_create_owner_only_files() {
    use std::os::unix::fs::MetadataExt;
    let mode = |path: &Path| {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        format!("{:o}", meta.mode() & 0o7777)
    };
    let run = |name: &str, args: &[&Path]| {
        let out = Command::new("bash")
            .args(["-c", "umask 022 && exec bash \"$0\" \"$@\""])
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("deploy/backup")
                    .join(name),
            )
            .args(args)
            .output()
            .expect("run backup script");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default(),
        )
    };
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    sqlite(
        &data.join("store.db"),
        "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);",
    );

    let backup_root = root.path().join("backups");
    let backup = run("sqlite-backup.sh", &[&data, &backup_root]);
    assert_eq!(mode(&backup_root), "700", "the backup root");
    assert_eq!(mode(&backup), "700", "the backup");
    for file in ["store.db", "SHA256SUMS"] {
        assert_eq!(mode(&backup.join(file)), "600", "backup {file}");
    }

    let restored = root.path().join("restored");
    run("sqlite-restore.sh", &[&backup, &restored]);
    assert_eq!(mode(&restored), "700", "the restored data dir");
    assert_eq!(
        mode(&restored.join("store.db")),
        "600",
        "the restored store.db"
    );
}
