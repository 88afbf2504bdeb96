//! Store: the catalog, its stock and the sales ledger. `GET /product`, `GET /products` and
//! `POST /sell` (idempotent, never oversells, safe with several replicas on one database).
//!
//! A library crate: the `ftshop` binary runs it with `ftshop serve store`.

pub mod catalog;
mod config;
pub mod money;
pub mod repo;
pub mod routes;
mod telemetry;

use std::future::Future;

use anyhow::Context;
use ftshop_platform::db::Db;
use ftshop_platform::health::Readiness;
use ftshop_platform::server::{self, Service};
use sqlx::migrate::Migrator;
use utoipa::OpenApi;

pub use config::Config;
pub use repo::Inventory;
pub use routes::{ApiDoc, AppState, router};

/// Name used for the database file/schema, logs and metrics.
pub const SERVICE: &str = "store";

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connects, migrates, seeds an empty catalog and returns the full application router.
pub async fn app(config: &Config) -> anyhow::Result<axum::Router> {
    // Install the Prometheus recorder before the first gauge is set, or it would be lost.
    ftshop_platform::http_metrics::prometheus();
    telemetry::register_counters();

    let catalog = catalog::load(config.catalog.as_deref())?;
    let db = Db::connect(
        config.common.database_url.as_deref(),
        &config.common.data_dir,
        SERVICE,
    )
    .await?;
    db.migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS).await?;

    let inventory = Inventory::new(db.clone(), config.common.stale_reads_max)?;
    let seeded = inventory
        .seed(&catalog)
        .await
        .context("cannot seed the catalog")?;
    if seeded > 0 {
        tracing::info!(products = seeded, "seeded the catalog");
    }
    let products = inventory
        .products()
        .await
        .context("cannot read the catalog")?;
    // Products written before the shared limits existed (the seed only fills an empty
    // database) are checked too: a price whose bonus Fidelity refuses stops the start, naming
    // the product, instead of failing every purchase of it after the sale.
    for product in &products {
        catalog::check_limits(&product.id, product.value_cents)
            .context("the stored catalog breaks the suite's limits; correct the price")?;
    }
    telemetry::record_all_stock(&products);

    let readiness = Readiness::new()
        .check("database", {
            let db = db.clone();
            move || {
                let db = db.clone();
                async move { db.check_storage().await }
            }
        })
        .check("stock", {
            let inventory = inventory.clone();
            move || {
                let inventory = inventory.clone();
                async move { stock_check(&inventory).await }
            }
        });

    Ok(
        Service::new(SERVICE, router(AppState::new(inventory)), ApiDoc::openapi())
            .readiness(readiness)
            .database(&db)
            .with_common(&config.common)?
            .into_router(),
    )
}

/// Binds `host:port` and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = app(&config).await?;
    server::run_service(SERVICE, &config.common, config.port, app, shutdown).await
}

/// Readiness of the stock: fails only when the catalog is empty or unreadable. Also refreshes
/// the stock gauges, which may lag when another replica sells.
async fn stock_check(inventory: &Inventory) -> Result<String, String> {
    let products = inventory
        .products()
        .await
        .map_err(|e| format!("cannot read stock: {e}"))?;
    if products.is_empty() {
        return Err("the catalog is empty".to_owned());
    }
    telemetry::record_all_stock(&products);
    let out = products.iter().filter(|p| p.stock == 0).count();
    Ok(format!("{} products, {out} out of stock", products.len()))
}
