//! Settings every service shares. Flags override env, env overrides defaults (see DESIGN.md).

use std::net::IpAddr;
use std::path::PathBuf;

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
        }
    }
}
