//! The Store's HTTP API, end to end through the real router, once over SQLite and once over
//! PostgreSQL (every scenario below runs on both backends).

mod common;

use std::collections::HashSet;

use common::{Backend, spawn};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Generates one `#[tokio::test]` per backend for each scenario.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    product_lookup,
    products_are_listed_in_id_order,
    sell_decrements_stock_by_exactly_one,
    idempotent_sell_twice_sells_once,
    a_key_replayed_after_its_product_sold_out_answers_its_sale,
    concurrent_sells_with_one_key_sell_once,
    concurrent_sells_never_oversell,
    two_instances_on_one_database_never_oversell,
    bad_input_is_rejected_and_changes_nothing,
    idempotency_key_reused_for_another_product_is_rejected,
    restart_keeps_stock_and_does_not_reseed,
    catalog_file_overrides_the_built_in_one,
    catalog_prices_outside_the_shared_limits_stop_the_start,
    health_ready_checks_database_and_stock,
    openapi_and_metrics_are_served,
);

/// The low-stock demo product of the built-in catalog, and its opening stock.
const LOW_STOCK_PRODUCT: &str = "12";
const LOW_STOCK: i64 = 5;

async fn product_lookup(backend: Backend) {
    let store = spawn(backend).await;

    let answer = store.get("/product?product=8").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(
        answer.body,
        json!({
            "id": "8",
            "name": "Portable Bluetooth Speaker",
            "value": 49.9,
            "value_cents": 4990,
            "stock": 500
        })
    );

    let low = store.get("/product?product=12").await;
    assert_eq!(low.body["stock"], LOW_STOCK);
    assert_eq!(low.body["value"], 599.0);
    assert_eq!(low.body["value_cents"], 59900);
}

async fn products_are_listed_in_id_order(backend: Backend) {
    let store = spawn(backend).await;
    let products = store.products().await;
    let products = products.as_array().expect("an array");
    let ids: Vec<&str> = products.iter().filter_map(|p| p["id"].as_str()).collect();
    let expected: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected);
    for product in products {
        let cents = product["value_cents"].as_i64().expect("value_cents");
        let value = product["value"].as_f64().expect("value");
        assert_eq!((value * 100.0).round() as i64, cents, "{product}");
        assert!(product["name"].as_str().is_some_and(|n| !n.is_empty()));
        assert!(product["stock"].as_i64().is_some_and(|s| s > 0));
    }
}

async fn sell_decrements_stock_by_exactly_one(backend: Backend) {
    let store = spawn(backend).await;
    let before = store.stock("3").await;

    let sold = store.sell("3", None).await;
    assert_eq!(sold.status, StatusCode::OK, "{sold:?}");
    assert!(!sold.replayed);
    assert_eq!(sold.body["product"], "3");
    assert_eq!(sold.body["value"], 329.0);
    assert_eq!(sold.body["value_cents"], 32900);
    assert_eq!(sold.body["stock_left"], before - 1);
    let id = sold.body["transaction_id"]
        .as_str()
        .expect("transaction_id");
    assert_eq!(uuid_version(id), Some(7), "{id}");
    assert_eq!(store.stock("3").await, before - 1);

    // Without a key, every request is a new sale.
    let again = store.sell("3", None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_ne!(again.body["transaction_id"], sold.body["transaction_id"]);
    assert_eq!(store.stock("3").await, before - 2);
    // Other products are untouched.
    assert_eq!(store.stock("4").await, 1000);
}

async fn idempotent_sell_twice_sells_once(backend: Backend) {
    let store = spawn(backend).await;
    let before = store.stock("1").await;

    let first = store.sell("1", Some("order-42")).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert!(!first.replayed);
    let second = store.sell("1", Some("order-42")).await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    assert!(second.replayed, "the replay is marked");
    assert_eq!(second.body, first.body, "a replay is the same answer");
    assert_eq!(store.stock("1").await, before - 1);

    // Another key is another sale.
    let other = store.sell("1", Some("order-43")).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_ne!(other.body["transaction_id"], first.body["transaction_id"]);
    assert_eq!(store.stock("1").await, before - 2);
}

async fn concurrent_sells_with_one_key_sell_once(backend: Backend) {
    let store = spawn(backend).await;
    let before = store.stock("2").await;

    let answers = join_all((0..20).map(|_| store.sell("2", Some("same-key")))).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    let ids: HashSet<&str> = answers
        .iter()
        .filter_map(|a| a.body["transaction_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "one sale for one key: {ids:?}");
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    assert_eq!(store.stock("2").await, before - 1);
}

async fn concurrent_sells_never_oversell(backend: Backend) {
    let store = spawn(backend).await;
    let answers = join_all((0..50).map(|_| store.sell(LOW_STOCK_PRODUCT, None))).await;
    assert_exactly_stock_sold(&answers, LOW_STOCK);
    assert_eq!(store.stock(LOW_STOCK_PRODUCT).await, 0);

    // Sold out stays sold out.
    store
        .sell(LOW_STOCK_PRODUCT, None)
        .await
        .assert_problem(409);
    assert_eq!(store.stock(LOW_STOCK_PRODUCT).await, 0);
}

/// Two replicas started together on one database (for SQLite: one file, two connection pools)
/// selling the same products concurrently.
async fn two_instances_on_one_database_never_oversell(backend: Backend) {
    let (config, dir) = common::config(backend).await;
    // Started concurrently, like `ftshop up` does: both migrate and seed at once.
    let (a, b) = tokio::join!(ftshop_store::app(&config), ftshop_store::app(&config));
    let a = common::serve_router(a.expect("replica a starts"), dir.clone()).await;
    let b = common::serve_router(b.expect("replica b starts"), dir).await;
    let replicas = [&a, &b];
    assert_eq!(a.products().await, b.products().await);

    let answers = join_all((0..50).map(|i| replicas[i % 2].sell(LOW_STOCK_PRODUCT, None))).await;
    assert_exactly_stock_sold(&answers, LOW_STOCK);
    assert_eq!(a.stock(LOW_STOCK_PRODUCT).await, 0);
    assert_eq!(b.stock(LOW_STOCK_PRODUCT).await, 0);

    // Plenty of stock: every sale counts exactly once, whichever replica made it.
    let before = a.stock("4").await;
    let answers = join_all((0..40).map(|i| replicas[i % 2].sell("4", None))).await;
    assert!(
        answers.iter().all(|a| a.status == StatusCode::OK),
        "{answers:?}"
    );
    assert_eq!(b.stock("4").await, before - 40);

    // One key through both replicas: one sale.
    let answers =
        join_all((0..20).map(|i| replicas[i % 2].sell("5", Some("failover-retry")))).await;
    let ids: HashSet<&str> = answers
        .iter()
        .inspect(|a| assert_eq!(a.status, StatusCode::OK, "{a:?}"))
        .filter_map(|a| a.body["transaction_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(a.stock("5").await, 799);
}

async fn bad_input_is_rejected_and_changes_nothing(backend: Backend) {
    let store = spawn(backend).await;
    let before = store.products().await;

    // GET /product
    store.get("/product").await.assert_problem(400);
    store.get("/product?id=1").await.assert_problem(400);
    store.get("/product?product=").await.assert_problem(422);
    store
        .get("/product?product=a%20b")
        .await
        .assert_problem(422);
    store
        .get("/product?product=..%2Fetc")
        .await
        .assert_problem(422);
    let long = "x".repeat(65);
    store
        .get(&format!("/product?product={long}"))
        .await
        .assert_problem(422);
    let unknown = store.get("/product?product=999").await;
    assert!(unknown.assert_problem(404).ends_with("/not-found"));

    // POST /sell
    let json = Some("application/json");
    store
        .sell_raw(json, "{\"product\": ")
        .await
        .assert_problem(400);
    store.sell_raw(json, "not json").await.assert_problem(400);
    store.sell_raw(json, "{}").await.assert_problem(422);
    store.sell_raw(json, "[]").await.assert_problem(422);
    store
        .sell_raw(json, r#"{"product": 12}"#)
        .await
        .assert_problem(422);
    store
        .sell_raw(json, r#"{"product": null}"#)
        .await
        .assert_problem(422);
    store
        .sell_raw(json, r#"{"product": ""}"#)
        .await
        .assert_problem(422);
    store
        .sell_raw(json, r#"{"product": "1 OR 1=1"}"#)
        .await
        .assert_problem(422);
    store
        .sell_raw(json, r#"{"product": "../1"}"#)
        .await
        .assert_problem(422);
    store
        .sell_raw(None, r#"{"product": "1"}"#)
        .await
        .assert_problem(415);
    store
        .sell_raw(Some("text/plain"), r#"{"product": "1"}"#)
        .await
        .assert_problem(415);
    let huge = format!(
        r#"{{"product": "1", "padding": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    store.sell_raw(json, huge).await.assert_problem(413);
    let unknown = store.sell("999", None).await;
    assert!(unknown.assert_problem(404).ends_with("/not-found"));
    store
        .sell("1", Some(&"k".repeat(201)))
        .await
        .assert_problem(400);
    store.sell("1", Some("has space")).await.assert_problem(400);

    // Wrong method, unknown route.
    store.get("/sell").await.assert_problem(405);
    store.get("/nope").await.assert_problem(404);

    assert_eq!(
        store.products().await,
        before,
        "bad input changed the stock"
    );
}

/// A sale finds a replayed key by its own insert (no lookup first): the replay of a key whose
/// product has sold out since must still answer the sale it made, not `409 out-of-stock`, and
/// a replay that met stock must not keep the unit it decremented.
async fn a_key_replayed_after_its_product_sold_out_answers_its_sale(backend: Backend) {
    let store = spawn(backend).await;
    let first = store.sell(LOW_STOCK_PRODUCT, Some("order-last")).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let replay = store.sell(LOW_STOCK_PRODUCT, Some("order-last")).await;
    assert!(replay.replayed, "{replay:?}");
    assert_eq!(store.stock(LOW_STOCK_PRODUCT).await, LOW_STOCK - 1);
    for _ in 1..LOW_STOCK {
        let sold = store.sell(LOW_STOCK_PRODUCT, None).await;
        assert_eq!(sold.status, StatusCode::OK, "{sold:?}");
    }
    assert_eq!(store.stock(LOW_STOCK_PRODUCT).await, 0);
    let replay = store.sell(LOW_STOCK_PRODUCT, Some("order-last")).await;
    assert_eq!(replay.status, StatusCode::OK, "{replay:?}");
    assert!(replay.replayed, "the replay is marked");
    assert_eq!(replay.body, first.body, "a replay is the same answer");
    assert_eq!(store.stock(LOW_STOCK_PRODUCT).await, 0);
}

async fn idempotency_key_reused_for_another_product_is_rejected(backend: Backend) {
    let store = spawn(backend).await;
    let sold = store.sell("6", Some("key-1")).await;
    assert_eq!(sold.status, StatusCode::OK);
    let before = store.products().await;

    let reused = store.sell("7", Some("key-1")).await;
    assert!(
        reused
            .assert_problem(422)
            .ends_with("/idempotency-key-reused"),
        "{reused:?}"
    );
    // Also when the other product does not exist, or is sold out.
    store.sell("999", Some("key-1")).await.assert_problem(422);
    assert_eq!(store.products().await, before);

    // The key still answers for its own product.
    let replay = store.sell("6", Some("key-1")).await;
    assert_eq!(replay.body, sold.body);
}

async fn restart_keeps_stock_and_does_not_reseed(backend: Backend) {
    let (config, dir) = common::config(backend).await;
    let first = common::spawn_with(&config, dir.clone()).await;
    for _ in 0..3 {
        assert_eq!(
            first.sell(LOW_STOCK_PRODUCT, None).await.status,
            StatusCode::OK
        );
    }
    let receipt = first.sell("9", Some("before-restart")).await;

    let second = common::spawn_with(&config, dir).await;
    assert_eq!(second.stock(LOW_STOCK_PRODUCT).await, LOW_STOCK - 3);
    assert_eq!(second.products().await.as_array().map(Vec::len), Some(12));
    let replay = second.sell("9", Some("before-restart")).await;
    assert!(replay.replayed);
    assert_eq!(
        replay.body, receipt.body,
        "the sales ledger survives a restart"
    );
}

async fn catalog_file_overrides_the_built_in_one(backend: Backend) {
    let (mut config, dir) = common::config(backend).await;
    let path = dir.path().join("catalog.json");
    std::fs::write(
        &path,
        r#"[{"id": "lamp", "name": "Desk Lamp", "value": 19.99, "stock": 1},
            {"id": "mug", "name": "Coffee Mug", "value": 7.5, "stock": 10}]"#,
    )
    .expect("write catalog");
    config.catalog = Some(path);
    let store = common::spawn_with(&config, dir).await;

    let products = store.products().await;
    assert_eq!(
        products,
        json!([
            {"id": "lamp", "name": "Desk Lamp", "value": 19.99, "value_cents": 1999, "stock": 1},
            {"id": "mug", "name": "Coffee Mug", "value": 7.5, "value_cents": 750, "stock": 10},
        ])
    );
    assert_eq!(store.sell("lamp", None).await.status, StatusCode::OK);
    store.sell("lamp", None).await.assert_problem(409);
    store.get("/product?product=1").await.assert_problem(404);
}

/// Issue 14, class 6: a catalog file with a price whose bonus Fidelity refuses (0.49 USD gives
/// 0 points, 1,000,000.50 USD gives 1,000,001) stops the start with an error naming the product,
/// and so does such a price already in the database (written before the limits existed: the
/// seed only fills an empty database).
async fn catalog_prices_outside_the_shared_limits_stop_the_start(backend: Backend) {
    let (mut config, dir) = common::config(backend).await;
    let path = dir.path().join("catalog.json");
    for (value, id) in [("0.49", "cheap"), ("1000000.50", "dear")] {
        std::fs::write(
            &path,
            format!(
                r#"[{{"id": "lamp", "name": "Desk Lamp", "value": 19.99, "stock": 1}},
                    {{"id": "{id}", "name": "Odd", "value": {value}, "stock": 1}}]"#
            ),
        )
        .expect("write catalog");
        config.catalog = Some(path.clone());
        let err = match ftshop_store::app(&config).await {
            Ok(_) => panic!("a catalog priced {value} USD was accepted"),
            Err(err) => format!("{err:#}"),
        };
        assert!(err.contains(&format!("product \"{id}\"")), "{err}");
        assert!(err.contains("1 to 1000000 points"), "{err}");
    }

    // The built-in catalog is seeded; then a price is changed behind the Store's back.
    config.catalog = None;
    drop(
        ftshop_store::app(&config)
            .await
            .expect("the built-in catalog starts"),
    );
    let db = ftshop_platform::db::Db::connect(
        config.common.database_url.as_deref(),
        &config.common.data_dir,
        ftshop_store::SERVICE,
    )
    .await
    .expect("the store database");
    sqlx::query("UPDATE products SET value_cents = 49 WHERE id = '3'")
        .execute(&db.pool)
        .await
        .expect("update a price");
    let err = match ftshop_store::app(&config).await {
        Ok(_) => panic!("a stored price of 0.49 USD was accepted"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("product \"3\""), "{err}");
    assert!(
        err.contains("price 0.49 USD gives a bonus of 0 points"),
        "{err}"
    );
}

async fn health_ready_checks_database_and_stock(backend: Backend) {
    let store = spawn(backend).await;
    assert_eq!(store.get("/health/live").await.status, StatusCode::OK);

    let ready = store.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["status"], "ready");
    let checks = ready.body["checks"].as_array().expect("checks");
    let check = |name: &str| -> &Value {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .expect("check present")
    };
    assert_eq!(check("database")["status"], "ok", "{checks:?}");
    assert_eq!(check("stock")["status"], "ok", "{checks:?}");
    assert_eq!(check("stock")["detail"], "12 products, 0 out of stock");

    join_all((0..LOW_STOCK).map(|_| store.sell(LOW_STOCK_PRODUCT, None))).await;
    let ready = store.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "sold out is not unready");
    let checks = ready.body["checks"].as_array().expect("checks");
    let stock = checks
        .iter()
        .find(|c| c["name"] == "stock")
        .expect("stock check");
    assert_eq!(stock["detail"], "12 products, 1 out of stock");
}

async fn openapi_and_metrics_are_served(backend: Backend) {
    let store = spawn(backend).await;
    let doc = store.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    for path in ["/sell", "/product", "/products"] {
        assert!(
            doc.body["paths"][path].is_object(),
            "{path} missing from {}",
            doc.body
        );
    }
    assert!(doc.body["components"]["schemas"]["SaleReceipt"].is_object());

    assert_eq!(store.sell("10", None).await.status, StatusCode::OK);
    let metrics = store
        .client
        .get(store.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.expect("metrics text");
    assert!(
        text.contains("store_sales_total{outcome=\"sold\"}"),
        "{text}"
    );
    assert!(text.contains("store_stock_units{product=\"10\"}"), "{text}");
}

/// Exactly `stock` sales succeeded, with distinct transaction ids, and every other answer is a
/// 409 `out-of-stock` problem.
fn assert_exactly_stock_sold(answers: &[common::Answer], stock: i64) {
    let sold: Vec<&common::Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .collect();
    assert_eq!(sold.len() as i64, stock, "{answers:?}");
    let ids: HashSet<&str> = sold
        .iter()
        .filter_map(|a| a.body["transaction_id"].as_str())
        .collect();
    assert_eq!(ids.len() as i64, stock);
    let mut left: Vec<i64> = sold
        .iter()
        .filter_map(|a| a.body["stock_left"].as_i64())
        .collect();
    left.sort_unstable();
    assert_eq!(
        left,
        (0..stock).collect::<Vec<_>>(),
        "each sale saw its own stock"
    );
    for answer in answers.iter().filter(|a| a.status != StatusCode::OK) {
        assert!(
            answer.assert_problem(409).ends_with("/out-of-stock"),
            "{answer:?}"
        );
    }
}

fn uuid_version(id: &str) -> Option<u32> {
    // xxxxxxxx-xxxx-Vxxx-...: the version is the first digit of the third group.
    id.split('-').nth(2)?.chars().next()?.to_digit(16)
}
