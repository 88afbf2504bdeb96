//! Database access shared by the services: one `sqlx::AnyPool` over SQLite (embedded default,
//! one file per service under the data dir) or PostgreSQL (`DATABASE_URL`, one schema per
//! service so the suite can share a database). SQL is written once with `$1` placeholders,
//! which both backends accept; DDL differs and lives in `migrations/{sqlite,postgres}`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, AssertSqlSafe, Executor};

/// Which engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

impl Db {
    /// Connects to `database_url`, or to `<data_dir>/<service>.db` when none is given. The
    /// embedded database holds customer data: its directory is made 0700 and the file exists
    /// with mode 0600 before SQLite opens it (see [`crate::private_fs`]).
    pub async fn connect(
        database_url: Option<&str>,
        data_dir: &Path,
        service: &'static str,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Self::connect_postgres(url, service).await
            }
            Some(url) if url.starts_with("sqlite:") => {
                if let Some(path) = sqlite_file(url) {
                    // A file the operator named: never created here (the URL's mode decides),
                    // but an existing one and its companions are made owner-only.
                    for suffix in ["", "-wal", "-shm", "-journal"] {
                        let mut file = path.as_os_str().to_owned();
                        file.push(suffix);
                        crate::private_fs::tighten_if_exists(Path::new(&file))?;
                    }
                }
                Self::connect_sqlite(url).await
            }
            Some(other) => anyhow::bail!(
                "DATABASE_URL must start with postgres:// or sqlite:, got {:?}",
                other.split(':').next().unwrap_or_default()
            ),
            None => {
                let path = data_dir.join(format!("{service}.db"));
                prepare_private_sqlite(data_dir, &path)?;
                Self::connect_sqlite(&format!("sqlite://{}?mode=rwc", path.display())).await
            }
        }
    }

    async fn connect_sqlite(url: &str) -> anyhow::Result<Self> {
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets Store replicas in separate processes share one file; the busy
                    // timeout makes a writer wait for the lock instead of failing at once.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .with_context(|| format!("cannot open SQLite database {url}"))?;
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
        })
    }

    async fn connect_postgres(url: &str, service: &'static str) -> anyhow::Result<Self> {
        // Create the service's schema first, on a one-off connection, so the pool's
        // search_path can point at it.
        let schema = format!("ftshop_{service}");
        let bootstrap = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .context("cannot connect to PostgreSQL")?;
        bootstrap
            .execute(sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            ))))
            .await
            .or_else(|e| {
                // Two replicas racing to create the schema: the loser sees a unique violation.
                if e.to_string().contains("already exists")
                    || e.to_string().contains("duplicate key")
                {
                    Ok(Default::default())
                } else {
                    Err(e)
                }
            })
            .with_context(|| format!("cannot create schema {schema}"))?;
        bootstrap.close().await;
        let set_path = format!("SET search_path TO {schema}");
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    conn.execute(sqlx::raw_sql(AssertSqlSafe(set_path))).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .context("cannot connect to PostgreSQL")?;
        Ok(Self {
            pool,
            backend: Backend::Postgres,
        })
    }

    /// Runs the migrations for this backend.
    ///
    /// SQLite has no migration lock, so when replicas start together on one file the slower one
    /// fails on the tables (or bookkeeping row) the other just created; by then the migration is
    /// applied, and running the migrator again finds nothing left to do. Hence a few retries.
    /// PostgreSQL takes an advisory lock and needs none, but the retry is harmless there.
    pub async fn migrate(&self, sqlite: &Migrator, postgres: &Migrator) -> anyhow::Result<()> {
        const ATTEMPTS: u32 = 5;
        let migrator = match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        };
        let mut attempt = 1;
        loop {
            match migrator.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(err) if attempt < ATTEMPTS => {
                    tracing::warn!(error = %err, attempt, "migration failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(err) => return Err(anyhow::Error::from(err).context("migrations failed")),
            }
        }
    }

    /// A cheap round trip for readiness checks.
    pub async fn ping(&self) -> Result<String, String> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| format!("{:?} reachable", self.backend))
            .map_err(|e| format!("{:?}: {e}", self.backend))
    }
}

/// True when the error is a unique-constraint violation (both backends).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}

/// Milliseconds since the Unix epoch, the timestamp format stored in every table.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Owner-only data dir and database file before SQLite opens it: SQLite would create the file
/// 0644 (less the umask), and creates `-wal`/`-shm` with the database file's mode, so a 0600
/// database gives 0600 companions. Companions left looser by an older version are tightened.
fn prepare_private_sqlite(data_dir: &Path, path: &Path) -> anyhow::Result<()> {
    crate::private_fs::ensure_private_dir(data_dir)
        .with_context(|| format!("data dir {}", data_dir.display()))?;
    crate::private_fs::ensure_private_file(path)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        crate::private_fs::tighten_if_exists(Path::new(&companion))?;
    }
    Ok(())
}

/// The file a `sqlite:` URL names, if any (`sqlite://data/x.db?mode=rwc` gives `data/x.db`;
/// `sqlite::memory:` and in-memory modes give none).
fn sqlite_file(url: &str) -> Option<&Path> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(Path::new(path))
}

/// Helpers for tests that need a real PostgreSQL: each call creates a fresh, uniquely named
/// database so tests run in parallel without sharing state.
pub mod testing {
    use super::*;

    /// Server used by the PostgreSQL tests; override with `FTSHOP_TEST_POSTGRES_URL`.
    pub fn admin_url() -> String {
        std::env::var("FTSHOP_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// Creates `ftshop_test_<unix seconds>_<uuid>` and returns its URL. Test databases older
    /// than an hour (left by earlier runs) are dropped on the way, so the server does not fill up.
    pub async fn fresh_postgres_database() -> anyhow::Result<String> {
        sqlx::any::install_default_drivers();
        let admin = admin_url();
        let now = now_millis() / 1000;
        let name = format!("ftshop_test_{now}_{}", uuid::Uuid::new_v4().simple());
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&admin)
            .await
            .with_context(|| {
                format!("PostgreSQL tests need a server at {admin} (set FTSHOP_TEST_POSTGRES_URL)")
            })?;
        let old: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'ftshop_test_%'",
        )
        .fetch_all(&pool)
        .await?;
        for db in old {
            let created = db.split('_').nth(2).and_then(|t| t.parse::<i64>().ok());
            if created.is_some_and(|t| now - t > 3600) {
                let _ = pool
                    .execute(sqlx::raw_sql(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                    ))))
                    .await;
            }
        }
        pool.execute(sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE {name}"
        ))))
        .await?;
        pool.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Ok(format!("{base}/{name}"))
    }
}
