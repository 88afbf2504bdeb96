//! Fidelity: the bonus points ledger behind `POST /bonus` and `GET /balance/{user}`.
//!
//! Every bonus names the sale it rewards (`transaction_id`) and is credited exactly once: a
//! retried request (Ecommerce's outbox retries until it gets an answer) changes nothing and says
//! `duplicate: true`, while reusing a transaction id for another user or amount is a conflict.

mod ledger;
mod queue;
mod routes;

use std::future::Future;

use ftshop_platform::config::CommonArgs;
use ftshop_platform::db::Db;
use ftshop_platform::health::Readiness;
use ftshop_platform::repository::ReadCache;
use ftshop_platform::server::{self, Service};
use utoipa::OpenApi;

pub use ledger::Credit;
pub use routes::{ApiDoc, Balance, BonusReceipt, BonusRequest, BonusStatus, MAX_BONUS, router};

/// Service name in logs, metrics, docs and the database (`fidelity.db`, schema `ftshop_fidelity`).
pub const NAME: &str = "fidelity";
/// Default listening port.
pub const PORT: u16 = 8083;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// `ftshop serve fidelity` settings.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    #[arg(long, default_value_t = PORT)]
    pub port: u16,
}

impl Config {
    /// The defaults of `ftshop serve fidelity` with loopback and `data_dir` (tests, embedding).
    pub fn for_data_dir(data_dir: impl Into<std::path::PathBuf>) -> Self {
        Self::new(CommonArgs::for_data_dir(data_dir))
    }

    /// The defaults of `ftshop serve fidelity` around `common`.
    pub fn new(common: CommonArgs) -> Self {
        Self { common, port: PORT }
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Balances last read, answered (marked stale) while the database is away.
    pub balances: ReadCache<i64>,
    /// Wakes the queue worker when a bonus was queued.
    pub queued: std::sync::Arc<tokio::sync::Notify>,
}

/// Connects, migrates and returns the full fidelity application.
pub async fn app(config: &Config) -> anyhow::Result<axum::Router> {
    ftshop_platform::http_metrics::prometheus();
    register_counters();
    let db = Db::connect(
        config.common.database_url.as_deref(),
        &config.common.data_dir,
        NAME,
    )
    .await?;
    db.migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS).await?;
    let state = AppState {
        db: db.clone(),
        balances: ReadCache::new("fidelity.balance", config.common.stale_reads_max)?,
        queued: std::sync::Arc::default(),
    };
    tokio::spawn(queue::run_worker(db.clone(), state.queued.clone()));
    let queue_db = db.clone();
    let guarded = db.clone();
    let readiness = Readiness::new()
        .check("database", move || {
            let db = db.clone();
            async move { db.check_storage().await }
        })
        .check("queue", move || {
            let db = queue_db.clone();
            async move { queue_check(&db).await }
        });
    Ok(Service::new(NAME, router(state), ApiDoc::openapi())
        .readiness(readiness)
        .database(&guarded)
        .with_common(&config.common)?
        .into_router())
}

/// Registers `fidelity_bonus_total` at 0 for every outcome at start: a counter created at its
/// first increment loses that increment in Prometheus' `increase()`/`rate()`, and shows
/// "No data" where the truth is 0.
pub fn register_counters() {
    for outcome in ["credited", "duplicate", "conflict", "queued"] {
        metrics::counter!("fidelity_bonus_total", "outcome" => outcome).increment(0);
    }
    for outcome in ["credited", "duplicate", "conflict"] {
        metrics::counter!("fidelity_bonus_total", "outcome" => outcome, "via" => "queue")
            .increment(0);
    }
}

/// A bonus waiting longer than this is reported as a slow queue (seconds).
const MAX_QUEUE_AGE_SECONDS: f64 = 60.0;

/// The queue's depth and oldest age, for `/health/ready`. Reported, never failing on age: an old
/// queue means the ledger or the worker is slow, and Fidelity still accepts bonuses durably
/// (202, queued); failing readiness would take the only replica out of its Service or load
/// balancer and turn a slow ledger into refused bonuses (as ecommerce's `downstreams` check).
/// Fails only when the queue cannot be read (the database check says why).
async fn queue_check(db: &Db) -> Result<String, String> {
    let stats = queue::stats(db).await.map_err(|e| format!("{e:#}"))?;
    let detail = format!(
        "{} pending, oldest {:.1} s",
        stats.depth, stats.oldest_age_seconds
    );
    Ok(if stats.oldest_age_seconds > MAX_QUEUE_AGE_SECONDS {
        format!(
            "degraded: {detail} (over {MAX_QUEUE_AGE_SECONDS} s: the ledger or the queue worker is \
             slow); bonuses are still accepted into the queue"
        )
    } else {
        detail
    })
}

/// Serves fidelity on `host:port` until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = app(&config).await?;
    server::run_service("fidelity", &config.common, config.port, app, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18, defect 9: a queue older than the limit keeps Fidelity ready (and says so).
    #[tokio::test]
    async fn an_old_queue_is_reported_not_failed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::connect(None, dir.path(), NAME).await.expect("db");
        db.migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS)
            .await
            .expect("migrate");
        queue::enqueue(&db, "tx-old", "alice", 3)
            .await
            .expect("enqueue");
        sqlx::query("UPDATE pending_bonuses SET created_at = created_at - 600000")
            .execute(&db.pool)
            .await
            .expect("age the queue");
        let detail = queue_check(&db)
            .await
            .expect("an old queue must not fail readiness");
        assert!(detail.starts_with("degraded: 1 pending"), "{detail}");
    }
}
