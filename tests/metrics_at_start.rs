//! Issue 18, defect 3: counters exist at 0 from the start. A counter created at its first
//! increment has no earlier sample, so Prometheus' `increase()`/`rate()` lose that increment (the
//! Business dashboard showed 2.2 orders for 3) and panels show "No data" where the truth is 0.
//! The store, fidelity and ecommerce apps are built in this process (one Prometheus recorder,
//! its own test binary so no other test increments anything) and nothing is requested.

use ftshop_platform::faults::{FaultEngine, FaultProfile};

/// `name{labels} 0` is in the exposition, for a counter `name` and its exact label string.
fn at_zero(text: &str, series: &str) -> bool {
    text.lines().any(|l| l == format!("{series} 0"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_and_chaos_counters_are_exported_at_zero_before_any_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ftshop_store::Config::for_data_dir(dir.path().join("store"));
    let _store = ftshop_store::app(&store).await.expect("store app");
    let fidelity = ftshop_fidelity::Config::for_data_dir(dir.path().join("fidelity"));
    let _fidelity = ftshop_fidelity::app(&fidelity).await.expect("fidelity app");
    // Nothing listens on the discard port: no downstream is ever reached in this test.
    let nowhere = "http://127.0.0.1:9".to_owned();
    let ecommerce = ftshop_ecommerce::Config {
        common: ftshop_platform::config::CommonArgs::for_data_dir(dir.path().join("ecommerce")),
        port: 0,
        store_urls: vec![nowhere.clone()],
        exchange_urls: vec![nowhere.clone()],
        fidelity_url: nowhere,
        call_timeout_ms: 300,
        buy_budget_ms: 1000,
        bonus_timeout_ms: 150,
        hedge_after_ms: 40,
        rate_ttl_ms: 200,
        defer_promise: std::time::Duration::from_secs(60),
        defer_queue_after: std::time::Duration::from_secs(1),
    };
    let _ecommerce = ftshop_ecommerce::app(&ecommerce)
        .await
        .expect("ecommerce app");
    let _faults = FaultEngine::new(
        "store",
        None,
        &FaultProfile::load("default").expect("default profile"),
        Some(1),
    );

    let text = ftshop_platform::http_metrics::prometheus().render();
    for series in [
        r#"shop_orders_total{outcome="completed",ft="on"}"#,
        r#"shop_orders_total{outcome="completed",ft="off"}"#,
        r#"shop_orders_total{outcome="failed",ft="off"}"#,
        r#"shop_orders_total{outcome="accepted_pending",ft="on"}"#,
        r#"shop_orders_total{outcome="cancelled",ft="on"}"#,
        "shop_revenue_brl_cents_total",
        r#"shop_bonus_points_total{status="credited"}"#,
        r#"shop_bonus_outbox_total{outcome="delivered"}"#,
        r#"shop_fallbacks_total{kind="exchange:last-known-rate"}"#,
        r#"store_sales_total{outcome="sold"}"#,
        r#"store_sales_total{outcome="out_of_stock"}"#,
        r#"fidelity_bonus_total{outcome="credited"}"#,
        r#"fidelity_bonus_total{outcome="queued"}"#,
        r#"chaos_faults_injected_total{service="store",route="/sell",kind="error"}"#,
        r#"chaos_fault_windows_total{service="store",route="/sell",kind="error"}"#,
    ] {
        assert!(
            at_zero(&text, series),
            "{series} is not exported at 0:\n{text}"
        );
    }
}
