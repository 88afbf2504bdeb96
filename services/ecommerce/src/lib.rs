//! Ecommerce: the orchestrator behind `POST /buy`. It asks Store for the product, Exchange for
//! the USD→BRL rate, sells through Store and credits the bonus at Fidelity, then stores the
//! order so an `Idempotency-Key` replay gets the same answer and never a second sale.

mod downstream;
mod ft;
mod money;
mod orders;
pub mod promise;
mod routes;
pub mod story;
mod workers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ftshop_platform::config::CommonArgs;
use ftshop_platform::db::Db;
use ftshop_platform::health::Readiness;
use ftshop_platform::server::{self, Service};
use utoipa::OpenApi;

pub use downstream::Downstreams;
pub use ft::{FtSettings, Resilient};
pub use routes::{ApiDoc, admin_router, router};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// `ftshop serve ecommerce` settings.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Store replicas, comma-separated.
    #[arg(
        long = "store-url",
        env = "FTSHOP_STORE_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8081,http://127.0.0.1:8091"
    )]
    pub store_urls: Vec<String>,

    /// Exchange replicas, comma-separated.
    #[arg(
        long = "exchange-url",
        env = "FTSHOP_EXCHANGE_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8082,http://127.0.0.1:8092"
    )]
    pub exchange_urls: Vec<String>,

    /// Fidelity base URL.
    #[arg(
        long = "fidelity-url",
        env = "FTSHOP_FIDELITY_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub fidelity_url: String,

    /// Timeout of each downstream call, in milliseconds (the exercise fixes it at 1 s).
    #[arg(long, env = "FTSHOP_CALL_TIMEOUT_MS", default_value_t = 1000)]
    pub call_timeout_ms: u64,

    /// With ft=true, the whole /buy must answer within this many milliseconds; every hop gets
    /// what is left.
    #[arg(long, env = "FTSHOP_BUY_BUDGET_MS", default_value_t = 1000)]
    pub buy_budget_ms: u64,

    /// With ft=true, how long /bonus may take before the bonus goes to the outbox.
    #[arg(long, env = "FTSHOP_BONUS_TIMEOUT_MS", default_value_t = 150)]
    pub bonus_timeout_ms: u64,

    /// With ft=true, when to send the hedged /product request to the other Store replica.
    #[arg(long, env = "FTSHOP_HEDGE_AFTER_MS", default_value_t = 40)]
    pub hedge_after_ms: u64,

    /// With ft=true, how long a fetched USD→BRL rate is reused before asking Exchange again
    /// (after that it still serves as the last known good rate for up to 10 minutes).
    #[arg(long, env = "FTSHOP_RATE_TTL_MS", default_value_t = 1000)]
    pub rate_ttl_ms: u64,

    /// With ft=true, the bound on how long a deferred (202) sale may wait to complete, e.g.
    /// `60s`, `2m`. A purchase is deferred only when the backlog drains within it at the
    /// measured rate; otherwise it is refused with 503 and Retry-After (docs/design.md,
    /// "Completion promise").
    #[arg(long, env = "FTSHOP_DEFER_PROMISE", default_value = "60s", value_parser = parse_promise)]
    pub defer_promise: Duration,

    /// With ft=true, once the oldest deferred sale has waited this long (Store is not keeping
    /// up), new purchases queue behind the deferred sales instead of selling first (first come,
    /// first served), e.g. `1s`; `0s` queues them behind any deferred sale.
    #[arg(long, env = "FTSHOP_DEFER_QUEUE_AFTER", default_value = "1s", value_parser = humantime::parse_duration)]
    pub defer_queue_after: Duration,
}

fn parse_promise(text: &str) -> Result<Duration, String> {
    let promise = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if promise.is_zero() {
        return Err("the completion promise must be above zero".to_owned());
    }
    Ok(promise)
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub downstreams: Arc<Downstreams>,
    /// The fault-tolerant path's policies, breakers and caches.
    pub resilient: Arc<Resilient>,
    /// The ft=true deadline of a whole /buy.
    pub buy_budget: Duration,
    /// The completion promise of deferred sales and its admission control.
    pub promise: Arc<promise::CompletionPromise>,
    /// Wakes the order worker when a sale is deferred.
    pub deferred: Arc<tokio::sync::Notify>,
    /// Wakes the bonus dispatcher when a completion wrote a bonus to the outbox.
    pub outbox: Arc<tokio::sync::Notify>,
    /// Recent purchases' stories and breaker transitions, for the control room.
    pub stories: Arc<story::Stories>,
}

/// Connects, migrates and returns the full ecommerce application.
pub async fn app(config: &Config) -> anyhow::Result<axum::Router> {
    ftshop_platform::http_metrics::prometheus();
    register_counters();
    let db = Db::connect(
        config.common.database_url.as_deref(),
        &config.common.data_dir,
        "ecommerce",
    )
    .await?;
    db.migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS).await?;
    let downstreams = Arc::new(Downstreams::new(
        &config.store_urls,
        &config.exchange_urls,
        &config.fidelity_url,
        Duration::from_millis(config.call_timeout_ms),
    )?);
    let settings = FtSettings {
        bonus_timeout: Duration::from_millis(config.bonus_timeout_ms),
        hedge_after: Duration::from_millis(config.hedge_after_ms),
        rate_ttl: Duration::from_millis(config.rate_ttl_ms),
        ..FtSettings::default()
    };
    let resilient = Arc::new(Resilient::new(downstreams.clone(), settings)?);
    resilient.remember_rates_in(db.clone());
    let state = AppState {
        db: db.clone(),
        downstreams: downstreams.clone(),
        resilient: resilient.clone(),
        buy_budget: Duration::from_millis(config.buy_budget_ms),
        promise: Arc::new(
            promise::CompletionPromise::new(config.defer_promise, config.store_urls.len())?
                .queueing_after(config.defer_queue_after),
        ),
        deferred: Arc::new(tokio::sync::Notify::new()),
        outbox: Arc::new(tokio::sync::Notify::new()),
        stories: story::Stories::new(resilient.registry()),
    };
    workers::spawn(state.clone());

    let guarded = db.clone();
    let readiness = Readiness::new()
        .check("database", move || {
            let db = db.clone();
            async move { db.check_storage().await }
        })
        // Reported, never failing: with ft=true a purchase survives any one dependency being
        // down (last-known rate, deferred sale, bonus outbox), so taking ecommerce out of a load
        // balancer for it would turn a degraded shop into a closed one.
        .check("downstreams", move || {
            let downstreams = downstreams.clone();
            async move {
                Ok(match downstreams.check_live().await {
                    Ok(detail) => detail,
                    Err(problem) => {
                        format!("degraded: {problem}; purchases continue through fallbacks")
                    }
                })
            }
        });
    let admin = admin_router(state.clone());
    Ok(Service::new("ecommerce", router(state), ApiDoc::openapi())
        .admin_routes(admin)
        .readiness(readiness)
        .database(&guarded)
        .with_common(&config.common)?
        .into_router())
}

/// Serves ecommerce on `host:port` until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = app(&config).await?;
    server::run_service("ecommerce", &config.common, config.port, app, shutdown).await
}

/// Registers ecommerce's business counters at 0 for every label set they can take, at start.
/// A counter created at its first increment has no earlier sample, so Prometheus' `increase()`
/// and `rate()` lose that first increment (3 orders showed as 2.2 on the Business dashboard)
/// and panels show "No data" where the truth is 0. The label values are the fixed ones the
/// code increments (outcomes, ft on/off, fallback kinds).
pub fn register_counters() {
    const ORDER_OUTCOMES: &[(&str, &[&str])] = &[
        ("completed", &["on", "off"]),
        ("rejected", &["on", "off"]),
        ("failed", &["on", "off"]),
        ("accepted_pending", &["on"]),
        ("refused", &["on"]),
        ("completed_deferred", &["on"]),
        ("cancelled", &["on"]),
    ];
    for (outcome, fts) in ORDER_OUTCOMES {
        for ft in *fts {
            metrics::counter!("shop_orders_total", "outcome" => *outcome, "ft" => *ft).increment(0);
        }
    }
    metrics::counter!("shop_revenue_brl_cents_total").increment(0);
    for status in ["credited", "pending"] {
        metrics::counter!("shop_bonus_points_total", "status" => status).increment(0);
    }
    for outcome in ["delivered", "retry", "dead_letter"] {
        metrics::counter!("shop_bonus_outbox_total", "outcome" => outcome).increment(0);
    }
    for outcome in ["completed", "cancelled"] {
        metrics::counter!("shop_promise_missed_total", "outcome" => outcome).increment(0);
    }
    metrics::counter!("shop_deferrals_refused_total").increment(0);
    for kind in [
        "product:stale-catalog",
        "exchange:last-known-rate",
        "exchange:stale-upstream-rate",
        "store:failover",
        "store:sale-in-doubt",
        "store:sale-deferred",
        "store:behind-backlog",
        "fidelity:bonus-queued",
    ] {
        metrics::counter!("shop_fallbacks_total", "kind" => kind).increment(0);
    }
}
