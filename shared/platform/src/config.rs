//! Settings every service shares. Flags override env, env overrides defaults (see DESIGN.md).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::server::ServerLimits;

/// Flags common to every `ftshop serve <service>`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Address to listen on.
    #[arg(long, env = "FTSHOP_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Directory for the embedded SQLite databases (one file per service).
    #[arg(long, env = "FTSHOP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// `postgres://...` switches the service from embedded SQLite to PostgreSQL; each service
    /// keeps its tables in its own schema, so one database can hold the whole suite.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Bearer token for the admin API. Without one, admin endpoints answer 401 to everyone.
    #[arg(long, env = "FTSHOP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Name of this replica in logs and metrics (for example `store-2`).
    #[arg(long, env = "FTSHOP_INSTANCE")]
    pub instance: Option<String>,

    /// Redis for the shared cache tier (`redis://127.0.0.1:6379`); without it each process
    /// caches in memory only.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Fault profile: `off`, `default` (the exercise's four faults) or a TOML/JSON file
    /// (see docs/faults.md).
    #[arg(long, env = "FTSHOP_FAULTS", default_value = "off")]
    pub faults: String,

    /// Seed for the fault draws, so a run can be repeated exactly; random when unset.
    #[arg(long, env = "FTSHOP_FAULT_SEED")]
    pub fault_seed: Option<u64>,

    /// Lifetime number of this process, mixed into the fault draws so a restarted process does
    /// not replay its previous lifetime's faults (`ftshop up` passes its restart count; see
    /// docs/faults.md). Same seed + same epoch + same traffic = same faults.
    #[arg(long, env = "FTSHOP_FAULT_EPOCH", default_value_t = 0)]
    pub fault_epoch: u64,

    /// Time a connection has to send a complete request head, counted from accept and again
    /// after each response: both the slowloris guard and the idle keep-alive timeout. Closed
    /// without an answer on expiry.
    #[arg(long, env = "FTSHOP_HEADER_READ_TIMEOUT", default_value = "10s",
        value_parser = parse_timeout)]
    pub header_read_timeout: Duration,

    /// Longest pause between two chunks of a request body (then 400).
    #[arg(long, env = "FTSHOP_BODY_READ_TIMEOUT", default_value = "10s",
        value_parser = parse_timeout)]
    pub body_read_timeout: Duration,

    /// Connections this process serves at once; more are answered 503 (`Retry-After: 1`) while
    /// the 64 shed slots last, then closed unanswered. Keep it well below the file-descriptor
    /// limit (`ulimit -n`); probe health on `--health-port`, which a flood cannot starve.
    #[arg(long, env = "FTSHOP_MAX_CONNECTIONS", default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Port of a second listener, on the same host, that serves only `/health/live`,
    /// `/health/ready` and `/metrics` with its own small connection cap, so a connection flood
    /// on the public port cannot starve the probes (point liveness/readiness probes here).
    /// Unset: no such listener (health stays on the main port, as it always does).
    #[arg(long, env = "FTSHOP_HEALTH_PORT")]
    pub health_port: Option<u16>,

    /// While the database is away, the reads that have a cache (Store `GET /product` and
    /// `GET /products`, Fidelity `GET /balance/{user}`) answer the last value read, marked
    /// stale, if it is at most this old; `0s` turns stale reads off. See docs/design.md.
    #[arg(long, env = "FTSHOP_STALE_READS_MAX", default_value = "10m",
        value_parser = parse_staleness)]
    pub stale_reads_max: Duration,
}

impl CommonArgs {
    /// Defaults for tests and embedding: loopback, the given data dir, SQLite.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            data_dir: data_dir.into(),
            database_url: None,
            admin_token: None,
            instance: None,
            redis_url: None,
            faults: "off".to_owned(),
            fault_seed: None,
            fault_epoch: 0,
            header_read_timeout: ServerLimits::default().header_read_timeout,
            body_read_timeout: ServerLimits::default().body_read_timeout,
            max_connections: u32::try_from(ServerLimits::default().max_connections)
                .unwrap_or(u32::MAX),
            stale_reads_max: crate::repository::DEFAULT_MAX_STALENESS,
            health_port: None,
        }
    }

    /// Binds the health listener of [`CommonArgs::health_port`], if one is asked for.
    pub async fn bind_health(&self) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        match self.health_port {
            Some(port) => {
                let listener = crate::server::bind(self.host, port).await?;
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!(address = %addr, "health listener");
                }
                Ok(Some(listener))
            }
            None => Ok(None),
        }
    }

    /// The timeouts and connection cap the server applies to clients.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
        }
    }
}

/// A humantime duration from 0 (stale reads off) to 24 h: a day-old stock level or balance is
/// more misleading than an honest 503.
fn parse_staleness(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if duration > Duration::from_secs(24 * 3600) {
        return Err(format!("{value} is over 24h"));
    }
    Ok(duration)
}

/// A humantime duration (`10s`, `500ms`) between 1 ms and 1 h: a zero timeout would close every
/// connection, an unbounded one would be no guard at all.
fn parse_timeout(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if duration < Duration::from_millis(1) || duration > Duration::from_secs(3600) {
        return Err(format!("{value} is outside 1ms..=1h"));
    }
    Ok(duration)
}
