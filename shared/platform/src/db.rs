//! Database access shared by the services: one `sqlx::AnyPool` over SQLite (embedded default,
//! one file per service under the data dir) or PostgreSQL (`DATABASE_URL`, one schema per
//! service so the suite can share a database). SQL is written once with `$1` placeholders,
//! which both backends accept; DDL differs and lives in `migrations/{sqlite,postgres}`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Connection, Executor};

/// Which engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A service's database: the pool, its engine, and the resilient-repository guard (the `db`
/// breaker and the retry budget of idempotent writes, see [`crate::repository`]). Request
/// paths go through [`Db::run`] or [`Db::run_idempotent`]; the readiness probe does not (it is
/// how an outage's end is seen).
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// The SQLite file this pool opened (`None` on PostgreSQL and in-memory SQLite).
    pub file: Option<DbFile>,
    /// Shared: a `Db` is cloned per request (axum state, middleware), and the guard's
    /// policies are several reference-counted handles each.
    pub(crate) guard: std::sync::Arc<crate::repository::Guard>,
    /// The connection [`crate::sql`] runs SQLite statements on, on the caller's thread (`None`
    /// on PostgreSQL and in-memory SQLite, where that API uses the pool).
    pub(crate) direct: Option<crate::sql::Direct>,
    /// When [`Db::reclaim_wal`] last ran a checkpoint (its rate limit).
    last_reclaim: std::sync::Arc<Mutex<Option<Instant>>>,
}

/// Bytes of the space reserve a data-dir database keeps beside it (see [`Db::reclaim_wal`]):
/// room for the database file to take 64 pages out of the WAL when the disk is otherwise full.
pub const RESERVE_BYTES: u64 = 256 * 1024;

/// Least time between two [`Db::reclaim_wal`] checkpoints of one pool.
pub const WAL_RECLAIM_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes SQLite leaves in a `-wal` file after a checkpoint reset it (`PRAGMA
/// journal_size_limit`): the size of a WAL at [`crate::sql::INLINE_CHECKPOINT_PAGES`] frames of
/// 4 KiB pages (each frame a 24-byte header and a page), about 16 MiB, where a busy WAL resets.
/// A larger file is cut back to this; one this size is kept and written over from the start,
/// so a busy database does not truncate its WAL at every reset and allocate the same blocks
/// again (a limit of 1 MiB made `ftruncate` and the file system's block allocation for the
/// re-extended file ~12 % of the suite's CPU per purchase: docs/benchmarks/happy-path.md).
/// The space comes back on demand: [`Db::reclaim_wal`] truncates the WAL to zero whenever the
/// disk runs low ([`RESERVE_BYTES`]), and a clean stop leaves it empty. On a small file system
/// the limit is [`SMALL_DISK_WAL_SIZE_LIMIT_BYTES`] instead (see [`wal_size_limit`]).
pub const WAL_SIZE_LIMIT_BYTES: u64 = crate::sql::INLINE_CHECKPOINT_PAGES as u64 * (4096 + 24) + 32;

/// The WAL size limit on a file system smaller than [`SMALL_DISK_BYTES`]: there a WAL kept at
/// 16 MiB would leave the other databases too little room before the low-space reclaim
/// truncates it (a full-disk fault sooner), so the WAL is cut back at each reset as before.
pub const SMALL_DISK_WAL_SIZE_LIMIT_BYTES: u64 = 1 << 20;

/// File systems smaller than this (64 WALs of [`WAL_SIZE_LIMIT_BYTES`], ~1 GiB) are small.
pub const SMALL_DISK_BYTES: u64 = 64 * WAL_SIZE_LIMIT_BYTES;

/// `journal_size_limit` for a database whose file is (or will be) `path`, in bytes:
/// [`WAL_SIZE_LIMIT_BYTES`], or [`SMALL_DISK_WAL_SIZE_LIMIT_BYTES`] when the file system
/// holding it is smaller than [`SMALL_DISK_BYTES`] or cannot be read (`statvfs` of the
/// file's directory). `None` (no file: in-memory): the small limit, which never matters there.
pub fn wal_size_limit(path: Option<&Path>) -> u64 {
    let dir = path.and_then(Path::parent).map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    });
    let large = dir.is_some_and(|dir| {
        nix::sys::statvfs::statvfs(dir)
            .is_ok_and(|fs| fs.blocks().saturating_mul(fs.fragment_size()) >= SMALL_DISK_BYTES)
    });
    if large {
        WAL_SIZE_LIMIT_BYTES
    } else {
        SMALL_DISK_WAL_SIZE_LIMIT_BYTES
    }
}

/// The pools [`close_all`] closes, once [`close_at_exit`] asked for it (the `ftshop` binary
/// does; tests, which open many short-lived pools in one process, do not).
static OPEN_POOLS: Mutex<Option<Vec<Db>>> = Mutex::new(None);

/// Makes every [`Db`] connected from now on known to [`close_all`]. Called once by a process
/// that serves one service and exits after it.
pub fn close_at_exit() {
    let mut pools = OPEN_POOLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pools.get_or_insert_with(Vec::new);
}

/// Closes every pool registered since [`close_at_exit`]: on SQLite a `wal_checkpoint(TRUNCATE)`
/// first, then the pool (its last connection closing checkpoints again and removes the
/// `-wal`/`-shm` files when no other process has the database open). Each pool gets at most
/// `limit`; a worker still holding a connection then is not waited for (its connection closes
/// with the process; the WAL stays and is replayed at the next open, nothing is lost).
/// Call it after the server drained (SIGTERM), before the process exits.
pub async fn close_all(limit: Duration) {
    let pools = OPEN_POOLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .unwrap_or_default();
    for db in pools {
        if tokio::time::timeout(limit, db.close()).await.is_err() {
            tracing::warn!(
                limit_s = limit.as_secs_f64(),
                "the database pool did not close in time; its WAL stays until the next start"
            );
        }
    }
}

impl Db {
    /// Checkpoints and truncates the WAL (SQLite), then closes the pool, waiting for the
    /// connections in use to come back. See [`close_all`].
    pub async fn close(&self) {
        if self.backend == Backend::Sqlite
            && let Err(err) = self.checkpoint_truncate().await
        {
            tracing::warn!(error = %err, "WAL checkpoint at shutdown failed");
        }
        if let Some(direct) = &self.direct {
            direct.close().await;
        }
        self.pool.close().await;
    }

    /// Gives back the space the SQLite WAL holds: `PRAGMA wal_checkpoint(TRUNCATE)` copies the
    /// committed pages into the database file and truncates the `-wal` file to zero bytes.
    /// SQLite checkpoints on its own only when the WAL passes 1000 pages (about 4 MiB), so on
    /// a disk smaller than that the WAL alone can fill it, and every write then fails with
    /// `SQLITE_FULL` while the space that would heal it sits in the WAL.
    ///
    /// Run after a [`StorageFault::Full`], by the readiness probe ([`Db::check_storage`]) and by a
    /// background task started with the pool, at most once per [`WAL_RECLAIM_INTERVAL`];
    /// `Ok(false)` when skipped (rate limit, or PostgreSQL, whose server manages its own WAL).
    ///
    /// A checkpoint may need room: the database file grows to take the pages that so far lived
    /// only in the WAL. So a database in the data dir keeps a space reserve next to it
    /// (`<service>.db.reserve`, [`RESERVE_BYTES`], written at start when there is room, the
    /// "emergency ballast" idea of CockroachDB, docs/cockroachdb `ballast`); a checkpoint that
    /// fails deletes it and tries again, and a checkpoint that succeeded writes it back when
    /// space allows. `Err` when the checkpoint still failed (a reader held it off for the
    /// busy timeout, or the data outgrew the reserve: then the disk is full of data, not WAL).
    pub async fn reclaim_wal(&self) -> Result<bool, sqlx::Error> {
        if self.backend != Backend::Sqlite {
            return Ok(false);
        }
        {
            let mut last = self
                .last_reclaim
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < WAL_RECLAIM_INTERVAL) {
                return Ok(false);
            }
            *last = Some(Instant::now());
        }
        let mut outcome = self.checkpoint_truncate().await;
        if outcome.is_err()
            && let Some(reserve) = self.file.as_ref().map(DbFile::reserve_path)
            && std::fs::remove_file(&reserve).is_ok()
        {
            // The database file has to grow to take the WAL's pages, and the disk has no room
            // for that: the reserve is that room.
            tracing::warn!(reserve = %reserve.display(), "storage full: released the space reserve");
            outcome = self.checkpoint_truncate().await;
        }
        match outcome {
            Ok(()) => {
                if let Some(file) = &self.file {
                    file.ensure_reserve();
                }
                metrics::counter!("db_wal_reclaims_total", "outcome" => "ok").increment(1);
                tracing::info!("storage fault: WAL checkpointed and truncated");
                Ok(true)
            }
            Err(err) => {
                metrics::counter!("db_wal_reclaims_total", "outcome" => "failed").increment(1);
                tracing::warn!(error = %err, "storage fault: WAL checkpoint failed");
                Err(err)
            }
        }
    }

    async fn checkpoint_truncate(&self) -> Result<(), sqlx::Error> {
        // (busy, wal frames, frames checkpointed): busy = 1 when a reader or writer kept it
        // from completing (https://sqlite.org/pragma.html#pragma_wal_checkpoint).
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.pool)
            .await?;
        if busy != 0 {
            return Err(sqlx::Error::Protocol(
                "WAL checkpoint blocked by another connection".to_owned(),
            ));
        }
        Ok(())
    }

    /// The background half of [`Db::reclaim_wal`]: every [`WAL_RECLAIM_INTERVAL`], while the
    /// pool is open, a [`StorageFault::Full`] recorded since the last look, or a disk with less
    /// than [`RESERVE_BYTES`] free while this WAL holds data, triggers a checkpoint, so
    /// the suite heals without anyone polling readiness.
    ///
    /// With a direct connection ([`crate::sql`]) it is also that connection's checkpointer:
    /// whenever a commit took a WAL past another [`crate::sql::CHECKPOINT_PAGES`] pages (the
    /// hook that replaces SQLite's automatic checkpoint there), `wal_checkpoint(PASSIVE)`
    /// through the pool, on a sqlx connection's thread, never a runtime thread.
    fn spawn_wal_reclaimer(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let db = self.clone();
        runtime.spawn(async move {
            let mut seen = storage_health().last_full_at();
            let mut tick = tokio::time::interval(WAL_RECLAIM_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Registered before any work and again before each checkpoint: `notify_waiters`
            // keeps no permit, and the hook asks only once per `CHECKPOINT_PAGES`, so a request
            // made while a checkpoint or a reclaim runs must still find a registered waiter.
            let mut wanted = std::pin::pin!(crate::sql::CHECKPOINT_WANTED.notified());
            wanted.as_mut().enable();
            while !db.pool.is_closed() {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = &mut wanted, if db.direct.is_some() => {
                        wanted.set(crate::sql::CHECKPOINT_WANTED.notified());
                        wanted.as_mut().enable();
                        if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                            .execute(&db.pool)
                            .await
                        {
                            note_storage_error(&err);
                            tracing::debug!(error = %err, "WAL checkpoint failed");
                        }
                        continue;
                    }
                }
                let last = storage_health().last_full_at();
                // The disk is shared: another process (Store's writes fill it, ecommerce meets
                // the fault) may be the one that saw it, so a nearly full disk counts too.
                let disk_low = db.file.as_ref().is_some_and(DbFile::disk_nearly_full);
                if last != seen || disk_low {
                    seen = last;
                    let _ = db.reclaim_wal().await;
                }
            }
        });
    }

    /// Connects to `database_url`, or to `<data_dir>/<service>.db` when none is given. The
    /// embedded database holds customer data: its directory is made 0700 and the file exists
    /// with mode 0600 before SQLite opens it (see [`crate::private_fs`]).
    pub async fn connect(
        database_url: Option<&str>,
        data_dir: &Path,
        service: &'static str,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let db = match database_url {
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
                let mut db = Self::connect_sqlite(url).await?;
                // A file named by the URL is guarded like the data dir's (an in-memory one
                // has none); creating it or not is the URL's `mode`.
                let path = sqlite_file(url).filter(|path| path.exists());
                db.file = path.map(DbFile::opened).transpose()?;
                // A read-only URL (`mode=ro`) keeps every statement on the pool.
                if let Some(path) = path.filter(|_| !url.contains("mode=ro")) {
                    db.direct = Some(crate::sql::Direct::open(path)?);
                }
                Ok(db)
            }
            Some(other) => anyhow::bail!(
                "DATABASE_URL must start with postgres:// or sqlite:, got {:?}",
                other.split(':').next().unwrap_or_default()
            ),
            None => {
                let path = data_dir.join(format!("{service}.db"));
                let marker = DbFile::marker_of(&path);
                // A data dir that had this database and lost it must not start over empty:
                // a fresh catalog would sell stock that was already sold.
                if !path.exists() && marker.exists() {
                    anyhow::bail!(
                        "the database file {} is missing, but {} says this data dir had one: \
                         restore it (deploy/backup/sqlite-restore.sh) or, to start with an \
                         empty database on purpose, remove {}",
                        path.display(),
                        marker.display(),
                        marker.display()
                    );
                }
                // The data dir 0700 and the file created here, once, 0600 (an empty file is an
                // empty database); the pool opens it without `create`, so a file lost later is
                // never silently recreated empty by a new pooled connection (that one fails
                // with SQLITE_CANTOPEN instead).
                prepare_private_sqlite(data_dir, &path)?;
                let url = format!("sqlite://{}?mode=rw", path.display());
                let mut db = Self::connect_sqlite(&url).await?;
                let file = DbFile::opened(&path)?;
                if !marker.exists() {
                    std::fs::write(&marker, format!("{}\n", now_millis()))
                        .with_context(|| format!("cannot write {}", marker.display()))?;
                }
                file.ensure_reserve();
                db.file = Some(file);
                db.direct = Some(crate::sql::Direct::open(&path)?);
                Ok(db)
            }
        }?;
        db.create_probe_table().await?;
        if db.backend == Backend::Sqlite {
            db.spawn_wal_reclaimer();
        }
        if let Some(pools) = OPEN_POOLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            pools.push(db.clone());
        }
        Ok(db)
    }

    async fn connect_sqlite(url: &str) -> anyhow::Result<Self> {
        // Before the first connection: every SQLite connection of the process (the pool's and
        // the direct one) writes a commit's WAL frames with one call (ftshop_sqlite_wal).
        ftshop_sqlite_wal::register().map_err(|why| anyhow::anyhow!("SQLite VFS: {why}"))?;
        let wal_limit = wal_size_limit(sqlite_file(url));
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            // No ping before each use: on SQLite it only asks the connection's worker thread
            // whether it is alive (it cannot see a lost file or a full disk: the statement's own
            // error does, see `StorageFault`), and costs a round trip to that thread, two
            // context switches, on every acquire (docs/benchmarks/happy-path.md).
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    // WAL lets Store replicas in separate processes share one file; the busy
                    // timeout makes a writer wait for the lock instead of failing at once.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute(AssertSqlSafe(format!(
                        "PRAGMA journal_size_limit = {wal_limit}"
                    )))
                    .await?;
                    Ok(())
                })
            })
            .after_release(|conn, _meta| Box::pin(release_check(conn)))
            .connect(url)
            .await
            .with_context(|| format!("cannot open SQLite database {url}"))?;
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
            file: None,
            guard: std::sync::Arc::new(crate::repository::Guard::new()),
            direct: None,
            last_reclaim: std::sync::Arc::default(),
        })
    }

    async fn connect_postgres(url: &str, service: &'static str) -> anyhow::Result<Self> {
        // Create the service's schema first, on a one-off connection, so the pool's
        // search_path can point at it.
        let schema = format!("ftshop_{service}");
        let bootstrap = first_postgres_connection(url, FIRST_CONNECT_PATIENCE).await?;
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
            // sqlx's `test_before_acquire` pings before every use: one more round trip to the
            // server per statement (per transaction). A connection used within the last
            // `PING_WHEN_IDLE_FOR` just answered its last statement; one that sat idle longer
            // (through a server restart or a network cut) is pinged, and a dead one is closed
            // and replaced before the caller sees it, as before.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_WHEN_IDLE_FOR {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    conn.execute(sqlx::raw_sql(AssertSqlSafe(set_path))).await?;
                    Ok(())
                })
            })
            .after_release(|conn, _meta| Box::pin(release_check(conn)))
            .connect(url)
            .await
            .context("cannot connect to PostgreSQL")?;
        Ok(Self {
            pool,
            backend: Backend::Postgres,
            file: None,
            guard: std::sync::Arc::new(crate::repository::Guard::new()),
            direct: None,
            last_reclaim: std::sync::Arc::default(),
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

    /// The readiness check of a service that writes: a small write transaction (8 KiB into
    /// `ftshop_storage_probe`, a table this module owns) must commit, and no request may have met
    /// a storage fault (see [`StorageFault`]) in the last [`STORAGE_FAULT_HOLD`]. A write probe
    /// rather than `SELECT 1`, because a full disk, a read-only file or a held write lock let
    /// reads through while every purchase fails. `Ok(detail)` when ready, `Err(reason)` not.
    pub async fn check_storage(&self) -> Result<String, String> {
        if let Err(why) = self.check_file() {
            return Err(format!("{:?}: {why}", self.backend));
        }
        let probe = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO ftshop_storage_probe (id, checked_at, pad) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at, pad = excluded.pad",
            )
            .bind(now_millis())
            .bind(PROBE_PAD.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        };
        if storage_health()
            .recent_fault()
            .is_some_and(|(fault, _)| fault == StorageFault::Full)
        {
            // The WAL may be what filled the disk: give its space back before probing.
            let _ = self.reclaim_wal().await;
        }
        if let Err(err) = probe.await {
            if note_storage_error(&err) == Some(StorageFault::Full) {
                let _ = self.reclaim_wal().await;
            }
            return Err(format!("{:?}: write probe failed: {err}", self.backend));
        }
        match storage_health().recent_fault() {
            Some((fault, age)) => Err(format!(
                "{:?}: {} {:.1} s ago (ready again {} s after the last one)",
                self.backend,
                fault.describe(),
                age.as_secs_f64(),
                STORAGE_FAULT_HOLD.as_secs()
            )),
            None => Ok(format!("{:?} writable", self.backend)),
        }
    }

    /// Whether the SQLite file this pool opened is still the one at its path (`Ok` on
    /// PostgreSQL). An open handle keeps reading and writing a file that was removed (or
    /// renamed, or replaced by another) as if nothing happened, and whatever it writes then is
    /// lost with the inode: so a removed, renamed or replaced file is a
    /// [`StorageFault::Damaged`] (recorded, readiness `not_ready`), and nothing served from it
    /// may be acknowledged (see [`crate::server::Service::database`]). `Err(reason)` then.
    pub fn check_file(&self) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        file.check().inspect_err(|_| {
            storage_health().record(StorageFault::Damaged);
            metrics::counter!("storage_faults_total", "kind" => StorageFault::Damaged.as_str())
                .increment(1);
        })
    }

    /// Creates the write probe's table (both backends; in the service's schema on PostgreSQL).
    async fn create_probe_table(&self) -> anyhow::Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS ftshop_storage_probe \
             (id INTEGER PRIMARY KEY, checked_at BIGINT NOT NULL, pad TEXT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .or_else(|e| {
            // PostgreSQL: replicas racing to create it; the loser sees a duplicate type.
            if e.to_string().contains("already exists") || is_unique_violation(&e) {
                Ok(Default::default())
            } else {
                Err(e)
            }
        })
        .context("cannot create the storage probe table")?;
        Ok(())
    }
}

/// The SQLite file a [`Db`] opened: its path and the identity (device, inode) of the file
/// that was there when the pool opened it.
#[derive(Debug, Clone)]
pub struct DbFile {
    /// Shared: cloned with the [`Db`], per request.
    path: std::sync::Arc<Path>,
    dev: u64,
    ino: u64,
}

impl DbFile {
    /// Identity of the file at `path` now.
    fn opened(path: &Path) -> anyhow::Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
        Ok(Self {
            path: path.into(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// True when the file system holding the database has less than [`RESERVE_BYTES`] free
    /// (statvfs) and this database's `-wal` file holds something to give back.
    fn disk_nearly_full(&self) -> bool {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        if !std::fs::metadata(Path::new(&wal)).is_ok_and(|m| m.len() > 0) {
            return false;
        }
        nix::sys::statvfs::statvfs(&*self.path).is_ok_and(|fs| {
            let free = fs.blocks_available().saturating_mul(fs.fragment_size());
            free < RESERVE_BYTES
        })
    }

    /// `<file>.reserve`: the space reserve of [`Db::reclaim_wal`].
    pub fn reserve_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".reserve");
        PathBuf::from(name)
    }

    /// Writes the space reserve when it is missing or short; best effort (a disk without room
    /// for it is not a reason to stop: it is written at the next successful reclaim).
    fn ensure_reserve(&self) {
        let path = self.reserve_path();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
            return;
        }
        let written = usize::try_from(RESERVE_BYTES)
            .map_err(std::io::Error::other)
            .and_then(|len| std::fs::write(&path, vec![0u8; len]));
        if let Err(err) = written {
            // A short reserve would only hold space the database needs now.
            let _ = std::fs::remove_file(&path);
            tracing::warn!(reserve = %path.display(), error = %err,
                "cannot write the storage space reserve (disk full?); retried after the next \
                 WAL reclaim");
        }
    }

    /// `<file>.created`: written next to a database file the first time a service opens it, so
    /// a later start can tell "new data dir" from "database file lost".
    pub fn marker_of(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".created");
        PathBuf::from(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Ok` while the file at the path is the one opened; `Err(reason)` when it was removed,
    /// replaced or cannot be read.
    pub fn check(&self) -> Result<(), String> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => Ok(()),
            Ok(_) => Err(format!(
                "database file {} was replaced by another file since it was opened (restart \
                 the service to use the new one)",
                self.path.display()
            )),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "database file {} was removed or renamed since it was opened",
                self.path.display()
            )),
            Err(err) => Err(format!(
                "database file {} cannot be read: {err}",
                self.path.display()
            )),
        }
    }
}

/// A pooled PostgreSQL connection idle at least this long is pinged before it is handed out.
pub const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// How long readiness stays `not_ready` after a request met a storage fault, even when the
/// write probe passes: a nearly full disk can take the probe's small write and still refuse a
/// purchase's larger one.
pub const STORAGE_FAULT_HOLD: Duration = Duration::from_secs(5);

static PROBE_PAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "p".repeat(8192));

/// A storage error that is about the medium or the server, not the request: the request fails
/// with 503 (nothing acknowledged) and readiness turns `not_ready` while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// No space left: `SQLITE_FULL`, PostgreSQL class 53 (`disk_full`, out of memory, ...).
    Full,
    /// The medium failed a read or write: `SQLITE_IOERR*`, PostgreSQL `58030 io_error`.
    Io,
    /// Writes refused: `SQLITE_READONLY*`, PostgreSQL `25006 read_only_sql_transaction`.
    ReadOnly,
    /// The write lock was not obtained within the busy timeout: `SQLITE_BUSY`/`SQLITE_LOCKED`,
    /// PostgreSQL `55P03 lock_not_available`.
    Locked,
    /// The file is damaged, missing or not a database: `SQLITE_CORRUPT`, `SQLITE_CANTOPEN`,
    /// `SQLITE_NOTADB`, PostgreSQL class 58 and `XX001`/`XX002` (data corrupted).
    Damaged,
    /// The server or the pool is out of reach: I/O on the socket, pool timed out or closed,
    /// PostgreSQL class 08 (connection) and 57P0x (shutting down).
    Unavailable,
}

impl StorageFault {
    /// Classifies a sqlx error; `None` for errors about the request itself (a constraint
    /// violation, a missing row, a decoding error).
    pub fn of(err: &sqlx::Error) -> Option<StorageFault> {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Some(StorageFault::Unavailable),
            sqlx::Error::Database(db) => {
                let code = db.code()?;
                // SQLite reports its (extended) result code as a number; the primary code is
                // the low byte (https://sqlite.org/rescode.html).
                if let Ok(extended) = code.parse::<u32>() {
                    return match extended & 0xff {
                        13 => Some(StorageFault::Full),
                        10 | 7 => Some(StorageFault::Io), // IOERR, NOMEM
                        8 => Some(StorageFault::ReadOnly),
                        5 | 6 => Some(StorageFault::Locked),
                        11 | 14 | 26 => Some(StorageFault::Damaged),
                        _ => None,
                    };
                }
                // PostgreSQL SQLSTATE (https://www.postgresql.org/docs/current/errcodes-appendix.html).
                match code.as_ref() {
                    c if c.starts_with("53") => Some(StorageFault::Full),
                    "58030" => Some(StorageFault::Io),
                    "25006" => Some(StorageFault::ReadOnly),
                    "55P03" => Some(StorageFault::Locked),
                    "XX001" | "XX002" => Some(StorageFault::Damaged),
                    c if c.starts_with("58") => Some(StorageFault::Damaged),
                    c if c.starts_with("08") || c.starts_with("57P") => {
                        Some(StorageFault::Unavailable)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// A stable label for metrics and problem details.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageFault::Full => "full",
            StorageFault::Io => "io",
            StorageFault::ReadOnly => "read-only",
            StorageFault::Locked => "locked",
            StorageFault::Damaged => "damaged",
            StorageFault::Unavailable => "unavailable",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            StorageFault::Full => "storage full",
            StorageFault::Io => "storage I/O error",
            StorageFault::ReadOnly => "storage read-only",
            StorageFault::Locked => "write lock not obtained",
            StorageFault::Damaged => "database file damaged or missing",
            StorageFault::Unavailable => "database unreachable",
        }
    }
}

/// Records `err` when it is a [`StorageFault`] (readiness and `storage_faults_total{kind}`);
/// returns its classification. Every path that meets a database error and does not turn it
/// into a [`crate::Problem`] (which calls this) calls it: workers, start-up, probes.
pub fn note_storage_error(err: &sqlx::Error) -> Option<StorageFault> {
    let fault = StorageFault::of(err)?;
    storage_health().record(fault);
    metrics::counter!("storage_faults_total", "kind" => fault.as_str()).increment(1);
    Some(fault)
}

/// The process's last storage fault. One per process: a service runs one [`Db`].
#[derive(Default)]
struct StorageHealth {
    last: Mutex<Option<(StorageFault, Instant)>>,
    /// The last `Full` one: what [`Db::reclaim_wal`] answers (a lock or I/O fault is not
    /// helped by a checkpoint, which would only add to the contention).
    last_full: Mutex<Option<Instant>>,
}

impl StorageHealth {
    fn record(&self, fault: StorageFault) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *last = Some((fault, Instant::now()));
        if fault == StorageFault::Full {
            *self
                .last_full
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        }
    }

    /// When the last [`StorageFault::Full`] was recorded (`None`: never).
    fn last_full_at(&self) -> Option<Instant> {
        *self
            .last_full
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last fault and its age, when younger than [`STORAGE_FAULT_HOLD`].
    fn recent_fault(&self) -> Option<(StorageFault, Duration)> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (fault, at) = (*last)?;
        let age = at.elapsed();
        (age < STORAGE_FAULT_HOLD).then_some((fault, age))
    }
}

fn storage_health() -> &'static StorageHealth {
    static HEALTH: std::sync::OnceLock<StorageHealth> = std::sync::OnceLock::new();
    HEALTH.get_or_init(StorageHealth::default)
}

/// The pool's `after_release` hook: a connection that comes back still inside a transaction is
/// closed instead of pooled. That happens when SQLite rolled a transaction back on its own (a
/// statement or COMMIT failing with `SQLITE_FULL`/`SQLITE_IOERR`): sqlx's ROLLBACK then fails,
/// its transaction depth stays at 1, and the next `begin()` on that connection issues a
/// `SAVEPOINT` whose `ROLLBACK TO` leaves a write transaction open forever, holding the write
/// lock, with every later statement on it never committed (lost orders, "database is locked"
/// for every other connection). Closing the connection rolls back whatever it holds.
async fn release_check(conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    if conn.is_in_transaction() {
        // A dropped `Transaction` only queues its ROLLBACK; a round trip runs it first.
        conn.ping().await?;
        if conn.is_in_transaction() {
            tracing::warn!("a pooled connection came back inside a transaction; closing it");
            metrics::counter!("db_connections_discarded_total").increment(1);
            return Ok(false);
        }
    }
    Ok(true)
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

/// How long a process keeps trying its first PostgreSQL connection before it gives up and exits.
/// A database that is still initialising, restarting, or not scheduled yet (a Kubernetes pod
/// started before its database) is waited for, instead of every service exiting and being
/// restarted in a loop meanwhile.
pub const FIRST_CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// Opens the first connection to PostgreSQL (a one-connection pool), retrying while the server
/// is out of reach (refused or reset connections, DNS not resolving yet, `57P03` "the database
/// system is starting up", class 08) with exponential backoff and full jitter (250 ms doubling
/// up to 5 s, [`ftshop_resilience::retry::full_jitter`]) for at most `patience`. A refused login
/// (`28P01` wrong password, `28000`) is not retried: it fails at once with what to do about it.
pub async fn first_postgres_connection(url: &str, patience: Duration) -> anyhow::Result<AnyPool> {
    sqlx::any::install_default_drivers();
    let started = tokio::time::Instant::now();
    let mut attempt: i64 = 0;
    loop {
        // sqlx itself retries a refused connection until the acquire timeout: one attempt
        // lasts at most 5 s, and never much past the patience.
        let left = patience.saturating_sub(started.elapsed());
        let outcome = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(left.clamp(Duration::from_secs(1), Duration::from_secs(5)))
            .connect(url)
            .await;
        let err = match outcome {
            Ok(pool) => {
                if attempt > 0 {
                    tracing::info!(attempts = attempt + 1, "connected to PostgreSQL");
                }
                return Ok(pool);
            }
            Err(err) => err,
        };
        if let Some(code) = refused_login(&err) {
            return Err(anyhow::anyhow!(err)).context(format!(
                "PostgreSQL refused the login of user `{}` ({code}): the password in DATABASE_URL \
                 is not the role's. With docker compose, POSTGRES_PASSWORD applies only when the \
                 postgres-data volume is first created; a password changed in .env afterwards is \
                 not the database's. Put the old one back, change the role's password \
                 (ALTER ROLE ... PASSWORD), or start over with `docker compose down -v` (deletes \
                 the data); docs/deploy.md, \"Passwords\"",
                url_user(url).unwrap_or("?")
            ));
        }
        let transient = StorageFault::of(&err) == Some(StorageFault::Unavailable);
        let delay = ftshop_resilience::retry::full_jitter(
            attempt,
            Duration::from_millis(250),
            Duration::from_secs(5),
        );
        if !transient || started.elapsed() + delay > patience {
            return Err(anyhow::anyhow!(err)).context(format!(
                "cannot connect to PostgreSQL ({} attempts in {:.1} s)",
                attempt + 1,
                started.elapsed().as_secs_f64()
            ));
        }
        tracing::warn!(
            attempt = attempt + 1,
            retry_in_ms = delay.as_millis() as u64,
            error = %err,
            "PostgreSQL is not reachable yet; retrying"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// The SQLSTATE of a refused login: `28P01` (invalid password) or `28000` (no such role, or
/// pg_hba.conf refuses it).
fn refused_login(err: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let code = db.code()?;
    code.starts_with("28").then(|| code.into_owned())
}

/// The user of a `postgres://user:password@host/db` URL (never the password).
fn url_user(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let (credentials, _) = rest.split_once('@')?;
    credentials.split(':').next()
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

    /// A tmpfs of `size` (`mount -o size=`, e.g. `"32m"`) mounted over the existing directory
    /// `dir`, unmounted (lazily) when dropped: the small disk of the storage-fault tests. `None`
    /// (with the reason printed) when mounting is not permitted (it needs root); a panic instead
    /// when `CI` is set, so CI never skips.
    pub struct Tmpfs(PathBuf);

    impl Tmpfs {
        pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
                .arg("tmpfs")
                .arg(dir)
                .status();
            match status {
                Ok(s) if s.success() => Some(Tmpfs(dir.to_owned())),
                other => {
                    let why = format!(
                        "cannot mount a tmpfs on {} ({other:?}); needs root",
                        dir.display()
                    );
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "{why}: CI must run this test"
                    );
                    eprintln!("SKIPPED: {why}");
                    None
                }
            }
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }

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

    /// A TCP proxy on 127.0.0.1:0 to `target` that can be cut and restored: the database
    /// outage of the resilient-repository tests. Cut, every open connection is dropped and new
    /// ones are accepted and then never answered (held until restored), as a server behind a
    /// cut network looks to a client: a connection attempt waits out its own timeout.
    pub struct TcpProxy {
        /// The port to connect to instead of the target's.
        pub port: u16,
        up: std::sync::Arc<std::sync::atomic::AtomicBool>,
        connections: std::sync::Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
        held: std::sync::Arc<Mutex<Vec<tokio::net::TcpStream>>>,
        accept: tokio::task::JoinHandle<()>,
    }

    impl TcpProxy {
        /// Starts forwarding to `target` (`host:port`).
        pub async fn start(target: &str) -> std::io::Result<Self> {
            use std::sync::atomic::Ordering;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            let connections: std::sync::Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> =
                std::sync::Arc::default();
            let held: std::sync::Arc<Mutex<Vec<tokio::net::TcpStream>>> = std::sync::Arc::default();
            let accept = {
                let (up, connections, target) =
                    (up.clone(), connections.clone(), target.to_owned());
                let held = held.clone();
                tokio::spawn(async move {
                    while let Ok((mut client, _)) = listener.accept().await {
                        if !up.load(Ordering::SeqCst) {
                            lock(&held).push(client); // never answered while cut
                            continue;
                        }
                        let target = target.clone();
                        let task = tokio::spawn(async move {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                        lock(&connections).push(task);
                    }
                })
            };
            Ok(Self {
                port,
                up,
                connections,
                held,
                accept,
            })
        }

        /// Cuts the database off: drops every connection; new ones get no answer.
        pub fn cut(&self) {
            self.up.store(false, std::sync::atomic::Ordering::SeqCst);
            for task in lock(&self.connections).drain(..) {
                task.abort();
            }
        }

        /// Lets connections through again (the ones held while cut are closed).
        pub fn restore(&self) {
            self.up.store(true, std::sync::atomic::Ordering::SeqCst);
            lock(&self.held).clear();
        }

        /// A proxy in front of the server of `url` (`scheme://[user@]host:port/db`), and the
        /// same URL through the proxy.
        pub async fn in_front_of(url: &str) -> std::io::Result<(Self, String)> {
            let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (user, host_port) = match authority.rsplit_once('@') {
                Some((user, host_port)) => (format!("{user}@"), host_port),
                None => (String::new(), authority),
            };
            let proxy = Self::start(host_port).await?;
            let host = host_port
                .rsplit_once(':')
                .map_or(host_port, |(host, _)| host);
            let through = format!("{scheme}://{user}{host}:{}/{path}", proxy.port);
            Ok((proxy, through))
        }
    }

    impl Drop for TcpProxy {
        fn drop(&mut self) {
            self.cut();
            self.accept.abort();
            lock(&self.held).clear();
        }
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pooled PostgreSQL connection whose server session ended while it sat idle (a server
    /// restart, a network cut, an idle timeout) is found dead before it is handed out, not by
    /// the caller's statement: the pool pings a connection idle for [`PING_WHEN_IDLE_FOR`] or
    /// more. With no ping at all (sqlx's `test_before_acquire` off, no `before_acquire`) the
    /// statement below fails with an I/O error.
    #[tokio::test]
    async fn an_idle_postgres_connection_whose_session_ended_is_replaced_before_use() {
        let url = testing::fresh_postgres_database()
            .await
            .expect("a PostgreSQL server for the tests");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(Some(&url), dir.path(), "ping")
            .await
            .expect("db");
        let one: i64 = sqlx::query_scalar("SELECT 1::bigint")
            .fetch_one(&db.pool)
            .await
            .expect("a first statement");
        assert_eq!(one, 1);
        assert!(db.pool.num_idle() >= 1, "the pool keeps its connection");
        // End every other session on this database, as a server restart would.
        let mut admin = AnyConnection::connect(&url)
            .await
            .expect("admin connection");
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&mut admin)
        .await
        .expect("terminate the pool's sessions");
        tokio::time::sleep(PING_WHEN_IDLE_FOR + Duration::from_millis(200)).await;
        let one: i64 = sqlx::query_scalar("SELECT 1::bigint")
            .fetch_one(&db.pool)
            .await
            .expect("a statement after the server ended the pooled sessions");
        assert_eq!(one, 1);
    }

    /// A transaction that SQLite rolled back on its own (`SQLITE_FULL` from `max_page_count`,
    /// the file-level equivalent of a full disk) must not go back to the pool. With the
    /// connection pooled (the release check answering `true`), the last write below fails with
    /// "database is locked", the symptom (the next `begin()` became a SAVEPOINT whose
    /// rollback left a write transaction open); with the check it is committed.
    #[tokio::test]
    async fn a_connection_left_inside_a_transaction_is_not_pooled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(None, dir.path(), "full").await.expect("db");
        sqlx::query("CREATE TABLE t (v TEXT)")
            .execute(&db.pool)
            .await
            .expect("table");
        let mut conn = db.pool.acquire().await.expect("conn");
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut *conn)
            .await
            .expect("pages");
        sqlx::query(AssertSqlSafe(format!("PRAGMA max_page_count = {pages}")))
            .execute(&mut *conn)
            .await
            .expect("cap");
        {
            let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
            let full = sqlx::query("INSERT INTO t (v) VALUES ($1)")
                .bind("x".repeat(1 << 20))
                .execute(&mut *tx)
                .await;
            let err = full.expect_err("the insert must not fit");
            assert_eq!(StorageFault::of(&err), Some(StorageFault::Full), "{err}");
        }
        let pooled = release_check(&mut conn).await.expect("check");
        assert!(
            conn.is_in_transaction(),
            "SQLite rolled back on its own and sqlx's ROLLBACK failed: depth stays at 1"
        );
        assert!(!pooled, "such a connection must be closed, not pooled");
        drop(conn);
        // The release runs on a task: wait for it, so the next acquire would get this very
        // connection back were it pooled (it is the only one the pool ever opened).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while db.pool.size() > db.pool.num_idle() as u32 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // What pooling it did (issue: acknowledged orders lost, "database is locked"): the next
        // begin() became a SAVEPOINT, its rollback a ROLLBACK TO that left a write transaction
        // open, and every later write on the connection was never committed.
        let mut tx = db.pool.begin().await.expect("begin");
        sqlx::query("INSERT INTO t (v) VALUES ('rolled back')")
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.rollback().await.expect("rollback");
        sqlx::query("INSERT INTO t (v) VALUES ('acknowledged')")
            .execute(&db.pool)
            .await
            .expect("an acknowledged write");
        let other = Db::connect(None, dir.path(), "full")
            .await
            .expect("second pool");
        let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t WHERE v = 'acknowledged'")
            .fetch_one(&other.pool)
            .await
            .expect("read from another connection");
        assert_eq!(seen, 1, "an acknowledged write must be committed");
    }

    /// An open pool keeps writing a removed or renamed file as if nothing happened (SQLite in
    /// WAL mode reports no error): the identity check must see it, the write probe's readiness
    /// must turn `not_ready`, and putting the same file back heals it; another file in its
    /// place is not the database that was opened.
    #[tokio::test]
    async fn a_removed_renamed_or_replaced_database_file_is_a_storage_fault() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(None, dir.path(), "gone").await.expect("db");
        let path = dir.path().join("gone.db");
        assert!(db.check_file().is_ok());
        assert!(db.check_storage().await.is_ok());

        let away = dir.path().join("elsewhere.db");
        std::fs::rename(&path, &away).expect("rename away");
        // What makes it dangerous: the write still succeeds, into a file with another name.
        sqlx::query("INSERT INTO ftshop_storage_probe (id, checked_at, pad) VALUES (2, 0, '')")
            .execute(&db.pool)
            .await
            .expect("SQLite does not notice");
        let why = db.check_file().expect_err("renamed away");
        assert!(why.contains("removed or renamed"), "{why}");
        let not_ready = db.check_storage().await.expect_err("not ready");
        assert!(not_ready.contains("removed or renamed"), "{not_ready}");

        // A new pooled connection meanwhile fails (SQLITE_CANTOPEN) instead of creating an
        // empty database in its place.
        let mut held = Vec::new();
        for _ in 0..8 {
            match db.pool.acquire().await {
                Ok(conn) => held.push(conn),
                Err(err) => {
                    assert_eq!(StorageFault::of(&err), Some(StorageFault::Damaged), "{err}")
                }
            }
        }
        assert!(held.len() < 8, "no new connection was attempted");
        assert!(
            !path.exists(),
            "a new connection created an empty database in place of the lost one"
        );
        drop(held);

        std::fs::rename(&away, &path).expect("rename back");
        assert!(db.check_file().is_ok(), "the same file back heals");

        // Another file at the path (a copy is another inode).
        std::fs::copy(&path, &away).expect("copy");
        std::fs::rename(&away, &path).expect("replace");
        let why = db.check_file().expect_err("replaced");
        assert!(why.contains("replaced"), "{why}");

        // A database named by a `sqlite:` URL is guarded the same way.
        let named = dir.path().join("named.db");
        let url = format!("sqlite://{}?mode=rwc", named.display());
        let db = Db::connect(Some(&url), dir.path(), "unused")
            .await
            .expect("db");
        assert!(db.check_file().is_ok());
        std::fs::remove_file(&named).expect("remove");
        let why = db.check_file().expect_err("removed");
        assert!(why.contains("removed"), "{why}");
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory&cache=shared"), None);
        assert_eq!(sqlite_file("sqlite:a/b.db"), Some(Path::new("a/b.db")));
    }

    /// A data dir that had a database and lost the file must not start over with an empty one
    /// (the Store would seed its catalog again and sell stock that was already sold); a new
    /// data dir, or one whose marker was removed on purpose, starts empty.
    #[tokio::test]
    async fn starting_on_a_data_dir_that_lost_its_database_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(None, dir.path(), "lost").await.expect("db");
        db.pool.close().await;
        let path = dir.path().join("lost.db");
        let marker = DbFile::marker_of(&path);
        assert!(marker.exists(), "the first start leaves a marker");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let err = Db::connect(None, dir.path(), "lost")
            .await
            .expect_err("a lost database file refuses the start");
        assert!(format!("{err:#}").contains("is missing"), "{err:#}");
        assert!(!path.exists(), "no empty database was created");

        std::fs::remove_file(&marker).expect("remove the marker on purpose");
        let db = Db::connect(None, dir.path(), "lost")
            .await
            .expect("empty start");
        assert!(db.check_file().is_ok());
    }

    /// A busy WAL keeps its file on a large disk (`WAL_SIZE_LIMIT_BYTES`, the hot-path step of
    /// docs/benchmarks/happy-path.md) but is cut back to 1 MiB at each reset on a small one (a
    /// 32 MB tmpfs, as the storage-fault tests use), on the pool's connections and on the
    /// direct one alike. Failed before `wal_size_limit` (16 MiB on the tmpfs too).
    #[tokio::test]
    async fn the_wal_size_limit_follows_the_size_of_the_disk() {
        async fn limits(db: &Db) -> (i64, i64) {
            let pooled: i64 = sqlx::query_scalar("PRAGMA journal_size_limit")
                .fetch_one(&db.pool)
                .await
                .expect("pool");
            let direct: i64 = crate::sql::query("PRAGMA journal_size_limit")
                .fetch_one(db)
                .await
                .expect("direct")
                .try_get_at(0)
                .expect("value");
            (pooled, direct)
        }
        let large = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(None, large.path(), "large").await.expect("db");
        let expected = wal_size_limit(Some(&large.path().join("large.db")));
        if expected != WAL_SIZE_LIMIT_BYTES {
            // A temp dir on a file system under ~1 GiB (a small /tmp): small there too.
            eprintln!("the temp dir's file system is small; both limits are the small one");
        }
        let expected = i64::try_from(expected).expect("fits");
        assert_eq!(limits(&db).await, (expected, expected));
        db.close().await;

        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("small");
        std::fs::create_dir(&dir).expect("mount point");
        let Some(_unmount) = testing::Tmpfs::mount(&dir, "32m") else {
            return;
        };
        let db = Db::connect(None, &dir, "small").await.expect("db");
        let small = i64::try_from(SMALL_DISK_WAL_SIZE_LIMIT_BYTES).expect("fits");
        assert_eq!(limits(&db).await, (small, small));
        db.close().await;
    }

    /// Issue F2: on a disk smaller than SQLite's auto-checkpoint (about 4 MiB of WAL), the WAL
    /// alone fills it and every write fails with `SQLITE_FULL` while the space that would heal
    /// it sits in the WAL. After the storage fault is recorded, the pool's reclaimer must
    /// checkpoint and truncate the WAL (the database file taking the WAL's new pages out of the
    /// space reserve) so that writes succeed again without a restart.
    #[tokio::test]
    async fn a_wal_that_filled_the_disk_is_checkpointed_and_writes_succeed_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("small");
        std::fs::create_dir(&dir).expect("mount point");
        let Some(_unmount) = testing::Tmpfs::mount(&dir, "1m") else {
            return;
        };

        let db = Db::connect(None, &dir, "small").await.expect("db");
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .execute(&db.pool)
            .await
            .expect("table");
        // As the suite did (its readiness probe rewrites one 8 KiB row every few
        // seconds): a few rows rewritten over and over, so the WAL holds many versions of a
        // few pages, and the database file (never checkpointed: one page) has to grow by
        // those few pages to take them.
        let mut full = None;
        for round in 0..1000 {
            let written = sqlx::query(
                "INSERT INTO t (id, v) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET v = excluded.v",
            )
            .bind(round % 4)
            .bind(format!("{round}").repeat(6000 / 4))
            .execute(&db.pool)
            .await;
            if let Err(err) = written {
                full = Some(err);
                break;
            }
        }
        let err = full.expect("1 MiB of tmpfs filled up");
        assert_eq!(note_storage_error(&err), Some(StorageFault::Full), "{err}");
        let wal = dir.join("small.db-wal");
        let wal_before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert!(
            wal_before > 256 * 1024,
            "the WAL filled the disk: {wal_before} bytes"
        );

        // No restart: writes succeed again within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let written = sqlx::query("INSERT INTO t (id, v) VALUES (5000, 'after the fault')")
                .execute(&db.pool)
                .await;
            match written {
                Ok(_) => break,
                Err(err) => assert!(
                    Instant::now() < deadline,
                    "writes still fail 10 s after the fault: {err}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wal_after = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert!(
            wal_after < wal_before,
            "the WAL gave its space back: {wal_before} -> {wal_after} bytes"
        );
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(rows, 5, "the committed rows survived the checkpoint");
        db.close().await;
    }

    /// Issue F2: closing a pool checkpoints and truncates its WAL even while a clone is held
    /// elsewhere (the whole binary is covered by tests/e2e_storage_faults.rs).
    #[tokio::test]
    async fn closing_a_pool_leaves_no_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(None, dir.path(), "closing").await.expect("db");
        sqlx::query("CREATE TABLE t (v TEXT)")
            .execute(&db.pool)
            .await
            .expect("table");
        for _ in 0..20 {
            sqlx::query("INSERT INTO t (v) VALUES ($1)")
                .bind("x".repeat(4000))
                .execute(&db.pool)
                .await
                .expect("insert");
        }
        // A clone held elsewhere (a worker) does not keep the WAL alive.
        let _worker = db.clone();
        let wal = dir.path().join("closing.db-wal");
        assert!(std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0));
        db.close().await;
        let left = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(left, 0, "the WAL is gone or empty after a clean stop");
    }
}
