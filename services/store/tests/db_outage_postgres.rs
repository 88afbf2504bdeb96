//! Issue 14, class 9: a database outage must not stop the reads that can be served. The Store
//! runs on a real PostgreSQL reached through a TCP proxy the test cuts and restores. While
//! the database is away, `GET /product` and `GET /products` answer the last value read,
//! marked stale (`x-ftshop-stale: true`, `Age`); once the `db` breaker is open they do so well
//! under the pool's 5 s acquire timeout and `POST /sell` answers 503 problem+json with
//! `Retry-After` just as fast; when the database returns, the breaker closes and the answers
//! are fresh again. Its own test binary: the breaker gauge is per process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ftshop_platform::db::testing::{TcpProxy, fresh_postgres_database};
use ftshop_store::Config;
use futures::future::join_all;
use reqwest::StatusCode;
use tempfile::TempDir;

/// Well under the pool's 5 s acquire timeout, and loose enough for a loaded CI machine.
const FAST: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_database_serves_stale_reads_fails_sales_fast_and_recovers() {
    let url = fresh_postgres_database()
        .await
        .expect("a PostgreSQL server for the tests");
    let (proxy, through) = TcpProxy::in_front_of(&url).await.expect("proxy");
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    let mut config = Config::for_data_dir(dir.path());
    config.common.database_url = Some(through);
    let store = common::spawn_with(&config, dir).await;

    // Fresh reads go to the database and fill the cache; a sale is seen by the next read.
    let before = store.timed_get("/product?product=1").await;
    assert_eq!(before.status, StatusCode::OK, "{before:?}");
    assert!(!before.is_stale(), "{before:?}");
    let sold = store.timed_sell("1", "before-outage").await;
    assert_eq!(sold.status, StatusCode::OK, "{sold:?}");
    let product = store.timed_get("/product?product=1").await;
    assert!(!product.is_stale(), "{product:?}");
    let stock = product.body["stock"].as_i64().expect("stock");
    assert_eq!(stock, before.body["stock"].as_i64().expect("stock") - 1);
    let catalog = store.timed_get("/products").await;
    assert!(!catalog.is_stale(), "{catalog:?}");

    proxy.cut();

    // Until the breaker has seen enough failures each read waits for the pool, and is still
    // answered: from the cache, marked stale, with the value last read.
    let first = join_all((0..8).map(|_| store.timed_get("/product?product=1"))).await;
    for read in &first {
        assert_eq!(read.status, StatusCode::OK, "{read:?}");
        assert!(read.is_stale(), "not marked stale: {read:?}");
        assert!(read.header("age").is_some(), "no Age: {read:?}");
        assert_eq!(read.body["stock"], stock, "{read:?}");
    }

    // Breaker open: a sale fails at once (503 problem+json, Retry-After), reads are answered
    // from the cache at once. Polled: a half-open trial call may wait for the pool.
    let fast_sale = poll(|| async {
        let sale = store.timed_sell("1", "during-outage").await;
        (sale.elapsed < FAST).then_some(sale)
    })
    .await;
    assert_eq!(
        fast_sale.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{fast_sale:?}"
    );
    assert_eq!(
        fast_sale.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        fast_sale.body["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/database-unavailable")),
        "{fast_sale:?}"
    );
    let retry_after: u64 = fast_sale
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let fast_read = poll(|| async {
        let read = store.timed_get("/product?product=1").await;
        (read.elapsed < FAST).then_some(read)
    })
    .await;
    assert_eq!(fast_read.status, StatusCode::OK, "{fast_read:?}");
    assert!(fast_read.is_stale(), "{fast_read:?}");
    assert_eq!(fast_read.body["stock"], stock);
    let fast_list = poll(|| async {
        let read = store.timed_get("/products").await;
        (read.elapsed < FAST).then_some(read)
    })
    .await;
    assert_eq!(fast_list.status, StatusCode::OK, "{fast_list:?}");
    assert!(fast_list.is_stale(), "{fast_list:?}");
    assert_eq!(fast_list.body, catalog.body, "the list last read");
    assert!(
        breaker_state(&store, "open").await || breaker_state(&store, "half_open").await,
        "the `db` breaker shows in the metrics as not closed"
    );

    proxy.restore();

    // The database is back: the breaker closes and reads are fresh again.
    let fresh = poll(|| async {
        let read = store.timed_get("/product?product=1").await;
        (read.status == StatusCode::OK && !read.is_stale()).then_some(read)
    })
    .await;
    assert!(fresh.header("age").is_none(), "{fresh:?}");
    assert_eq!(fresh.body["stock"], stock, "the refused sale sold nothing");
    let after = poll(|| async {
        let sale = store.timed_sell("1", "after-outage").await;
        (sale.status == StatusCode::OK).then_some(sale)
    })
    .await;
    assert_eq!(after.body["stock_left"], stock - 1, "{after:?}");
    let list = store.timed_get("/products").await;
    assert!(!list.is_stale(), "{list:?}");
    poll(|| async { breaker_state(&store, "closed").await.then_some(()) }).await;
}

/// Whether `/metrics` shows the `db` breaker in `state`.
async fn breaker_state(store: &common::TestStore, state: &str) -> bool {
    let text = store
        .client
        .get(store.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines().any(|line| {
        line.starts_with("resilience_circuitbreaker_state{")
            && line.contains(r#"name="db""#)
            && line.contains(&format!(r#"state="{state}""#))
            && line.ends_with(" 1")
    })
}

/// Calls `attempt` until it gives a value, failing the test after [`DEADLINE`].
async fn poll<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {DEADLINE:?}"
        );
        // A poll interval, not a wait for the condition.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
