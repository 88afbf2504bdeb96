//! `ftshop serve store` settings. Flags override env, env overrides defaults.

use std::path::PathBuf;

use ftshop_platform::config::CommonArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Port to listen on (the replica in `ftshop up` uses 8091).
    #[arg(long, default_value_t = 8081)]
    pub port: u16,

    /// Seed catalog (JSON array of `{id, name, value, stock}`) used when the database has no
    /// products yet; defaults to the built-in catalog. Every `value` must give a bonus Fidelity
    /// credits (0.50 to 1000000.49 USD, `ftshop_platform::limits`), or the start fails naming
    /// the product.
    #[arg(long, env = "FTSHOP_CATALOG")]
    pub catalog: Option<PathBuf>,
}

impl Config {
    /// Defaults for tests and embedding: loopback, port 0, SQLite under `data_dir`.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            common: CommonArgs::for_data_dir(data_dir),
            port: 0,
            catalog: None,
        }
    }
}
