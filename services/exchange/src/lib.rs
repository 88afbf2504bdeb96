//! Exchange: the USD→BRL rate behind `GET /exchange`.
//!
//! The rate comes from a simulated market (default: a seeded random walk, no network needed) or
//! from an upstream HTTP API (`--upstream-url`). A TTL cache in front of the source answers most
//! requests from memory, refreshes once for a burst of misses, and keeps serving the last good
//! rate (marked `stale`) for a bounded time when the source fails. With `REDIS_URL`, refreshes
//! go through a Redis tier shared by the replicas (see [`shared`]): they serve the same rate, a
//! restarted replica serves it at once, and Redis being down only costs the sharing.

mod cache;
mod duration;
mod routes;
pub mod shared;
mod source;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ftshop_platform::config::CommonArgs;
use ftshop_platform::health::Readiness;
use ftshop_platform::money::{Decimal, RateBand};
use ftshop_platform::server::{self, Service};
use utoipa::OpenApi;

pub use cache::{Origin, Quote, RatesCache, Refresh, Snapshot, Unavailable};
pub use duration::parse_duration;
pub use routes::{ApiDoc, ExchangeRate, RateOrigin, router};
pub use shared::{SharedRates, SharedSettings};
pub use source::{FetchError, JumpGuard, RandomWalk, RateSource};

/// Service name in logs, metrics and docs.
pub const NAME: &str = "exchange";
/// Default listening port.
pub const PORT: u16 = 8082;

/// `ftshop serve exchange` settings.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    #[arg(long, default_value_t = PORT)]
    pub port: u16,

    /// How long a fetched rate is served from memory before the source is asked again
    /// (`2s`, `500ms`, ...). Also the pause before retrying a source that just failed.
    #[arg(long, env = "FTSHOP_RATE_TTL", default_value = "2s", value_parser = parse_duration)]
    pub rate_ttl: Duration,

    /// How old the last good rate may be and still be served (as `stale`) while the source
    /// fails; past it, `GET /exchange` answers 503.
    #[arg(long, env = "FTSHOP_RATE_MAX_STALE", default_value = "10m", value_parser = parse_duration)]
    pub max_stale: Duration,

    /// Seed of the simulated rate's random walk (same seed, same rates). Random by default.
    #[arg(long, env = "FTSHOP_RATE_SEED")]
    pub rate_seed: Option<u64>,

    /// Fetch the rate from this HTTP API instead of simulating it, e.g.
    /// `https://api.frankfurter.app/latest?from=USD&to=BRL`.
    #[arg(long, env = "FTSHOP_EXCHANGE_UPSTREAM")]
    pub upstream_url: Option<reqwest::Url>,

    /// Smallest rate believed (BRL per USD); a source answering less has failed, and the last
    /// good rate is served instead. Must lie inside the band Ecommerce accepts,
    /// `RateBand::DEFAULT` (0.5..=50, docs/design.md "Limits").
    #[arg(long, env = "FTSHOP_RATE_MIN", default_value = "0.5")]
    pub rate_min: Decimal,

    /// Largest rate believed; a source answering more has failed (see `--rate-min`).
    #[arg(long, env = "FTSHOP_RATE_MAX", default_value = "50")]
    pub rate_max: Decimal,

    /// Largest move of the rate in one refresh, as a ratio of the last good rate (`0.2` =
    /// 20 %); a bigger move is refused as implausible and the last good rate served stale,
    /// until `--rate-jump-confirmations` consecutive answers agree on the new level.
    #[arg(long, env = "FTSHOP_RATE_MAX_JUMP", default_value = "0.2")]
    pub rate_max_jump: Decimal,

    /// Consecutive consistent answers after which a rate jump is believed (2 to 1000).
    #[arg(long, env = "FTSHOP_RATE_JUMP_CONFIRMATIONS", default_value_t = 3)]
    pub rate_jump_confirmations: u32,

    /// Timeout of one upstream fetch.
    #[arg(long, env = "FTSHOP_EXCHANGE_UPSTREAM_TIMEOUT", default_value = "800ms", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// JSON pointer to the rate in the upstream's answer.
    #[arg(
        long,
        env = "FTSHOP_EXCHANGE_UPSTREAM_POINTER",
        default_value = "/rates/BRL"
    )]
    pub upstream_pointer: String,

    /// Prefix of Exchange's keys in Redis (with `REDIS_URL`), before the `exchange` namespace:
    /// the default gives `ftshop:exchange:usd-brl`; another prefix keeps suites sharing one
    /// Redis apart.
    #[arg(long, env = "FTSHOP_REDIS_KEY_PREFIX", default_value = "ftshop:")]
    pub redis_key_prefix: String,

    /// Upper bound of one Redis operation; past it the request carries on without Redis.
    #[arg(long, env = "FTSHOP_REDIS_TIMEOUT", default_value = "50ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,
}

impl Config {
    /// The defaults of `ftshop serve exchange` with loopback and `data_dir` (tests, embedding).
    pub fn for_data_dir(data_dir: impl Into<std::path::PathBuf>) -> Self {
        Self::new(CommonArgs::for_data_dir(data_dir))
    }

    /// The defaults of `ftshop serve exchange` around `common`.
    pub fn new(common: CommonArgs) -> Self {
        Self {
            common,
            port: PORT,
            rate_ttl: Duration::from_secs(2),
            max_stale: Duration::from_secs(600),
            rate_seed: None,
            upstream_url: None,
            rate_min: RateBand::DEFAULT.min,
            rate_max: RateBand::DEFAULT.max,
            rate_max_jump: JumpGuard::DEFAULT_MAX_JUMP,
            rate_jump_confirmations: JumpGuard::DEFAULT_CONFIRMATIONS,
            upstream_timeout: Duration::from_millis(800),
            upstream_pointer: "/rates/BRL".to_owned(),
            redis_key_prefix: "ftshop:".to_owned(),
            redis_timeout: Duration::from_millis(50),
        }
    }

    /// The shared tier's settings, when `REDIS_URL` is set.
    pub fn shared_settings(&self) -> Option<SharedSettings> {
        self.common.redis_url.as_ref().map(|url| SharedSettings {
            url: url.clone(),
            key_prefix: self.redis_key_prefix.clone(),
            op_timeout: self.redis_timeout,
        })
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub cache: Arc<RatesCache>,
    pub source: Arc<RateSource>,
    /// The Redis tier, with `REDIS_URL`.
    pub shared: Option<Arc<SharedRates>>,
}

impl AppState {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let band = RateBand::new(config.rate_min, config.rate_max)
            .map_err(|err| anyhow::anyhow!("--rate-min / --rate-max: {err}"))?;
        // Ecommerce refuses rates outside the default band: a wider band here would serve rates
        // that fail every purchase (docs/design.md, "Limits").
        anyhow::ensure!(
            ftshop_platform::limits::rate_band_is_accepted(&band),
            "--rate-min / --rate-max: {}..={} must lie inside {}..={}, the band Ecommerce accepts",
            band.min,
            band.max,
            RateBand::DEFAULT.min,
            RateBand::DEFAULT.max
        );
        let source = match &config.upstream_url {
            Some(url) => RateSource::upstream(
                url.clone(),
                &config.upstream_pointer,
                config.upstream_timeout,
            )?,
            None => RateSource::simulated(config.rate_seed),
        }
        .with_band(band)
        .with_jump_guard(
            JumpGuard::new(config.rate_max_jump, config.rate_jump_confirmations).map_err(
                |err| anyhow::anyhow!("--rate-max-jump / --rate-jump-confirmations: {err}"),
            )?,
        );
        anyhow::ensure!(
            !config.redis_timeout.is_zero(),
            "--redis-timeout must be positive"
        );
        let shared = config
            .shared_settings()
            .map(|settings| SharedRates::new(&settings, config.rate_ttl, config.max_stale))
            .transpose()?;
        Ok(Self {
            cache: Arc::new(RatesCache::new(config.rate_ttl, config.max_stale)),
            source: Arc::new(source),
            shared: shared.map(Arc::new),
        })
    }

    /// One refresh of the rate: through the shared tier with `REDIS_URL`, straight from the
    /// source otherwise.
    pub fn refresh(&self) -> impl Future<Output = Refresh> + Send + 'static {
        let (source, shared) = (self.source.clone(), self.shared.clone());
        async move {
            match shared {
                Some(shared) => shared.refresh(source).await,
                None => source.fetch().await.into(),
            }
        }
    }

    /// Readiness of the rate source. When the cached rate is due for a refresh, one is made
    /// first (in its own task, so the check's timeout cannot cancel it halfway), which lets an
    /// idle replica notice that its source came back.
    async fn check_source(self) -> Result<String, String> {
        if self.cache.refresh_due() {
            let (cache, fetch) = (self.cache.clone(), self.refresh());
            let refresh = tokio::spawn(async move { cache.lookup(|| fetch).await });
            let _ = refresh.await;
        }
        self.cache
            .status()
            .map(|detail| format!("{} source: {detail}", self.source.kind()))
    }
}

/// Builds the full exchange application.
pub async fn app(config: &Config) -> anyhow::Result<axum::Router> {
    // Install the Prometheus recorder now: until it exists, metrics are dropped, and the first
    // scrape of /metrics may come long after the first requests.
    ftshop_platform::http_metrics::prometheus();
    let state = AppState::new(config)?;
    tracing::info!(
        source = state.source.kind(),
        ttl = ?config.rate_ttl,
        max_stale = ?config.max_stale,
        shared = state.shared.is_some(),
        "exchange rate source configured"
    );
    let check_state = state.clone();
    let mut readiness =
        Readiness::new().check("source", move || check_state.clone().check_source());
    if let Some(shared) = &state.shared {
        let warm = shared.clone();
        tokio::spawn(async move { warm.warm_up().await });
        let shared = shared.clone();
        // Redis down is a degradation (no sharing), not unreadiness: the check passes and its
        // detail says so.
        readiness = readiness.check("redis", move || {
            let shared = shared.clone();
            async move { Ok(shared.status().await) }
        });
    }
    Ok(Service::new(NAME, router(state), ApiDoc::openapi())
        .readiness(readiness)
        .with_common(&config.common)?
        .into_router())
}

/// Serves exchange on `host:port` until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = app(&config).await?;
    server::run_service("exchange", &config.common, config.port, app, shutdown).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn flag_defaults_match_config_new() {
        let parsed = Cli::try_parse_from(["exchange"]).map(|cli| cli.config);
        let Ok(parsed) = parsed else {
            panic!("defaults do not parse: {parsed:?}")
        };
        let built = Config::new(parsed.common.clone());
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }

    #[test]
    fn flags_parse() {
        let parsed = Cli::try_parse_from([
            "exchange",
            "--rate-ttl",
            "500ms",
            "--max-stale",
            "1m",
            "--rate-seed",
            "7",
            "--upstream-url",
            "https://api.frankfurter.app/latest?from=USD&to=BRL",
            "--upstream-timeout",
            "1s",
        ])
        .map(|cli| cli.config);
        let Ok(config) = parsed else {
            panic!("flags do not parse: {parsed:?}")
        };
        assert_eq!(config.rate_ttl, Duration::from_millis(500));
        assert_eq!(config.max_stale, Duration::from_secs(60));
        assert_eq!(config.rate_seed, Some(7));
        assert_eq!(config.upstream_timeout, Duration::from_secs(1));
        assert!(config.upstream_url.is_some());
        assert!(Cli::try_parse_from(["exchange", "--rate-ttl", "2"]).is_err());
    }

    /// Issue 14, class 6: a band Ecommerce would not accept (wider than
    /// [`RateBand::DEFAULT`]) is refused at start, so Exchange never serves a rate every
    /// purchase then refuses; a narrower band is fine.
    #[test]
    fn a_rate_band_wider_than_ecommerce_accepts_is_refused_at_start() {
        let dir = std::env::temp_dir();
        let with_band = |min: &str, max: &str| {
            let mut config = Config::for_data_dir(&dir);
            config.rate_min = min.parse().unwrap_or_default();
            config.rate_max = max.parse().unwrap_or_default();
            AppState::new(&config)
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        };
        for (min, max) in [
            ("0.0000001", "10"),
            ("1", "1000000.5"),
            ("0.0000001", "2000000"),
            // The old default, far too wide for USD->BRL (reviewer finding F3).
            ("0.000001", "1000000"),
            ("0.4", "50"),
            ("0.5", "51"),
        ] {
            let err = with_band(min, max).err().unwrap_or_default();
            assert!(
                err.contains("the band Ecommerce accepts"),
                "{min}..={max}: {err}"
            );
        }
        assert_eq!(with_band("1", "10"), Ok(()));
        assert_eq!(with_band("0.5", "50"), Ok(()));
    }
}
