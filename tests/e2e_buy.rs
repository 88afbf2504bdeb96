//! End to end: the real `ftshop up`, a purchase over HTTP, and the supervisor's promises.

mod common;

use std::time::Duration;

use common::{Suite, alive, eventually, get_json, signal};
use ftshop_platform::money;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn buy_sells_one_unit_credits_the_bonus_and_honours_the_idempotency_key() {
    let suite = Suite::start(&[]).await;
    let store = suite.url("store-1");
    let fidelity = suite.url("fidelity");
    let ecommerce = suite.url("ecommerce");
    let user = format!("e2e-{}", uuid::Uuid::new_v4().simple());

    let before = get_json(&suite, format!("{store}/product?product=1")).await;
    let stock_before = before["stock"].as_i64().expect("stock");
    let value_cents = before["value_cents"].as_i64().expect("value_cents");
    let points = money::bonus_points(value_cents);
    let balance_before = get_json(&suite, format!("{fidelity}/balance/{user}")).await["points"]
        .as_i64()
        .expect("points");
    assert_eq!(balance_before, 0);

    let key = uuid::Uuid::new_v4().to_string();
    let buy = || {
        suite
            .http
            .post(format!("{ecommerce}/buy"))
            .header("idempotency-key", &key)
            .json(&json!({"product": "1", "user": user, "ft": false}))
            .send()
    };
    let first = buy().await.expect("buy");
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.expect("json");
    assert_eq!(first["product"]["id"], "1");
    assert_eq!(first["bonus"]["status"], "credited");
    assert_eq!(first["bonus"]["points"].as_i64(), Some(points));
    // Exact: the rate as the decimal Exchange wrote, the price in cents, one rounding half away
    // from zero (docs/design.md, "Money").
    let rate = money::decimal_from_f64(first["rate"].as_f64().expect("rate")).expect("rate");
    assert!(rate > money::Decimal::ZERO);
    let expected_total = money::convert(value_cents, rate).expect("a total");
    assert_eq!(
        first["total"],
        json!(money::decimal_to_f64(money::cents_to_decimal(
            expected_total
        ))),
        "{first}"
    );
    assert!(
        first["transaction_id"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    let after = get_json(&suite, format!("{store}/product?product=1")).await;
    assert_eq!(
        after["stock"].as_i64(),
        Some(stock_before - 1),
        "stock falls by one"
    );
    let balance = get_json(&suite, format!("{fidelity}/balance/{user}")).await["points"].as_i64();
    assert_eq!(balance, Some(points), "balance rises by round(value)");

    // Same key, same body: the same answer and no second sale.
    let second = buy().await.expect("buy again");
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.expect("json");
    assert_eq!(second["order_id"], first["order_id"]);
    assert_eq!(second["transaction_id"], first["transaction_id"]);
    let replica = get_json(
        &suite,
        format!("{}/product?product=1", suite.url("store-2")),
    )
    .await;
    assert_eq!(
        replica["stock"].as_i64(),
        Some(stock_before - 1),
        "replayed key sells nothing"
    );
    let balance = get_json(&suite, format!("{fidelity}/balance/{user}")).await["points"].as_i64();
    assert_eq!(balance, Some(points), "replayed key credits nothing");

    // The order is on record.
    let order = get_json(
        &suite,
        format!(
            "{ecommerce}/orders/{}",
            first["order_id"].as_str().expect("id")
        ),
    )
    .await;
    assert_eq!(order["status"], "completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_purchase_requests_get_problems_and_change_nothing() {
    let suite = Suite::start(&[]).await;
    let ecommerce = suite.url("ecommerce");
    let store = suite.url("store-1");
    let stock_before =
        get_json(&suite, format!("{store}/product?product=1")).await["stock"].as_i64();

    let cases: Vec<(&str, String, u16)> = vec![
        ("malformed json", "{\"product\": ".to_owned(), 400),
        ("missing user", json!({"product": "1"}).to_string(), 422),
        (
            "wrong type",
            json!({"product": 1, "user": "u"}).to_string(),
            422,
        ),
        (
            "empty product",
            json!({"product": "", "user": "u"}).to_string(),
            422,
        ),
        (
            "unknown product",
            json!({"product": "no-such-product", "user": "u", "ft": false}).to_string(),
            404,
        ),
        (
            "huge body",
            json!({"product": "1", "user": "u", "pad": "x".repeat(70 * 1024)}).to_string(),
            413,
        ),
    ];
    for (what, body, status) in cases {
        let response = suite
            .http
            .post(format!("{ecommerce}/buy"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{what}"
        );
        let problem: Value = response.json().await.expect("problem body");
        assert_eq!(
            problem["status"].as_u64(),
            Some(u64::from(status)),
            "{what}"
        );
    }
    let stock_after =
        get_json(&suite, format!("{store}/product?product=1")).await["stock"].as_i64();
    assert_eq!(stock_before, stock_after);
}

#[tokio::test(flavor = "multi_thread")]
async fn up_restarts_a_killed_process_and_stops_everything_on_sigterm() {
    let mut suite = Suite::start(&[]).await;
    let old_pid = suite.pid("exchange-1").expect("exchange-1 pid");
    signal(old_pid, nix::sys::signal::Signal::SIGKILL);

    eventually(
        Duration::from_secs(30),
        "exchange-1 restarted with a new pid",
        || async { suite.pid("exchange-1").is_some_and(|p| p != old_pid) },
    )
    .await;
    let exchange = suite.url("exchange-1");
    eventually(
        Duration::from_secs(30),
        "restarted exchange-1 serves /exchange",
        || async {
            suite
                .http
                .get(format!("{exchange}/exchange"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    assert_eq!(suite.member("exchange-1")["restarts"].as_u64(), Some(1));

    let pids: Vec<i32> = [
        "ecommerce",
        "store-1",
        "store-2",
        "exchange-1",
        "exchange-2",
        "fidelity",
    ]
    .iter()
    .filter_map(|n| suite.pid(n))
    .collect();
    assert_eq!(pids.len(), 6);
    let status = suite.stop();
    assert!(status.success(), "supervisor exit status {status}");
    for pid in pids {
        assert!(!alive(pid), "child {pid} still alive after up stopped");
    }
}

/// `ftshop up --stores 3 --exchanges 1 --defer-promise 45s --port-base 0`: up.json lists
/// exactly ecommerce, store-1..3, exchange-1 and fidelity on distinct ports, each ready;
/// ecommerce balances over the three Store replicas and the one Exchange (one breaker per
/// replica and route), its drain-rate prior counts three replicas (3 × 0.9 sales/s) and its
/// completion promise is the one given; a purchase goes through.
#[tokio::test(flavor = "multi_thread")]
async fn up_starts_the_requested_store_and_exchange_replicas() {
    let suite = Suite::start(&[
        "--stores",
        "3",
        "--exchanges",
        "1",
        "--defer-promise",
        "45s",
    ])
    .await;
    let up = suite.up_file().expect("up.json");
    let members = up["members"].as_array().expect("members");
    let names: Vec<&str> = members.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "ecommerce",
            "store-1",
            "store-2",
            "store-3",
            "exchange-1",
            "fidelity"
        ],
        "{up}"
    );
    let services: Vec<&str> = members
        .iter()
        .filter_map(|m| m["service"].as_str())
        .collect();
    assert_eq!(
        services,
        [
            "ecommerce",
            "store",
            "store",
            "store",
            "exchange",
            "fidelity"
        ]
    );
    let mut ports: Vec<u64> = members.iter().filter_map(|m| m["port"].as_u64()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 6, "distinct ports: {up}");
    for name in ["store-3", "exchange-1"] {
        assert!(
            suite
                .answers_ok(&format!("{}/health/ready", suite.url(name)))
                .await
        );
    }

    let ecommerce = suite.url("ecommerce");
    let breakers = get_json(&suite, format!("{ecommerce}/breakers")).await;
    let mut names: Vec<&str> = breakers
        .as_array()
        .expect("a list of breakers")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "exchange-1.exchange",
            "fidelity.bonus",
            "store-1.product",
            "store-1.sell",
            "store-2.product",
            "store-2.sell",
            "store-3.product",
            "store-3.sell"
        ],
        "{breakers}"
    );
    let backlog = get_json(&suite, format!("{ecommerce}/backlog")).await;
    assert_eq!(backlog["promise_seconds"], 45.0, "{backlog}");
    let rate = backlog["drain_rate_per_second"].as_f64().expect("rate");
    assert!((rate - 2.7).abs() < 1e-9, "{backlog}");

    let bought = suite
        .http
        .post(format!("{ecommerce}/buy"))
        .json(&json!({"product": "1", "user": "replicas", "ft": true}))
        .send()
        .await
        .expect("buy");
    assert_eq!(bought.status(), 200);
}
