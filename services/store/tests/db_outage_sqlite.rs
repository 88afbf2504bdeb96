//! Issue 14, class 9, on the embedded SQLite: the Store's database made unavailable by closing
//! its pool (every call then fails as `PoolClosed`, a storage fault). Reads already made are
//! answered from the cache, marked stale; a read never made and a sale fail with 503
//! problem+json and `Retry-After`; the `db` breaker opens. Its own test binary: the breaker
//! gauge is per process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ftshop_platform::db::Db;
use ftshop_resilience::State;
use ftshop_store::{AppState, Config, Inventory, router};
use reqwest::StatusCode;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_sqlite_pool_serves_stale_reads_and_fails_sales() {
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    // The full app migrates and seeds the file; the Store under test has its own pool on it,
    // which the test can close.
    let _migrated = ftshop_store::app(&Config::for_data_dir(dir.path()))
        .await
        .expect("store app starts");
    let db = Db::connect(None, dir.path(), ftshop_store::SERVICE)
        .await
        .expect("db");
    let inventory = Inventory::new(db.clone(), Duration::from_secs(600)).expect("inventory");
    let store = common::serve_router(router(AppState::new(inventory)), dir).await;

    let product = store.timed_get("/product?product=3").await;
    assert_eq!(product.status, StatusCode::OK, "{product:?}");
    assert!(!product.is_stale(), "{product:?}");
    let catalog = store.timed_get("/products").await;
    assert!(!catalog.is_stale(), "{catalog:?}");

    db.pool.close().await;

    let stale = store.timed_get("/product?product=3").await;
    assert_eq!(stale.status, StatusCode::OK, "{stale:?}");
    assert!(stale.is_stale(), "not marked stale: {stale:?}");
    let age: u64 = stale
        .header("age")
        .and_then(|v| v.parse().ok())
        .expect("Age in whole seconds");
    assert!(age < 600, "{age}");
    assert_eq!(stale.body, product.body, "the product last read");
    let list = store.timed_get("/products").await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    assert!(list.is_stale(), "{list:?}");
    assert_eq!(list.body, catalog.body);

    // Nothing cached for product 4, and a sale never uses the cache: honest 503s.
    for answer in [
        store.timed_get("/product?product=4").await,
        store.timed_sell("3", "while-closed").await,
    ] {
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json")
        );
        assert!(answer.header("retry-after").is_some(), "{answer:?}");
    }

    // Enough failures open the breaker; the sale is then refused without touching the pool,
    // and the reads are still answered.
    for _ in 0..5 {
        store.timed_sell("3", "while-closed").await;
    }
    assert_eq!(db.breaker().state(), State::Open);
    let refused = store.timed_sell("3", "while-open").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("circuit breaker open")),
        "{refused:?}"
    );
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    let still = store.timed_get("/product?product=3").await;
    assert_eq!(still.status, StatusCode::OK, "{still:?}");
    assert!(still.is_stale(), "{still:?}");
}
