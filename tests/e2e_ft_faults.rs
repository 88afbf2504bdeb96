//! The product's promise, end to end: under the default fault profile (fixed seed), 2,000
//! purchases with `ft=true` are acknowledged (200, or 202 when the sale is deferred) at least
//! 99.9 % of the time; after the faults stop every acknowledged order completes, stock fell by
//! exactly the number of completed orders, no transaction id appears twice, and the points
//! credited equal the bonuses of the completed orders. The same traffic with `ft=false`
//! fails as the fault table predicts.
//!
//! The completion promise (docs/design.md, "Completion promise"): this traffic (16 clients, no
//! think time, ~400 purchases/s) is about a hundred times what Store can sell under its error
//! fault (~3.6 sales/s with two replicas), so with the default 60 s promise the honest answer to
//! most of it is `503 deferral-refused`. The acknowledgement test above therefore runs with a
//! promise long enough for its whole backlog (`--defer-promise 1h`), and a second test keeps the
//! default promise: every purchase is acknowledged or refused with 503 + Retry-After, each 202
//! expects completion within the promise, and the same invariants hold for what was
//! acknowledged.
//!
//! Timings are printed for the record (docs/benchmarks/ has the measured runs), never asserted.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Suite, eventually, get_json};
use serde_json::{Value, json};

/// Products with enough stock that 2,000 purchases never run out (out of stock is a correct
/// rejection, but it would blur the success rate).
const PRODUCTS: [&str; 6] = ["2", "4", "5", "7", "8", "11"];
const USERS: usize = 40;
const CLIENTS: usize = 16;

#[derive(Debug, Default)]
struct Outcome {
    /// order id → the answer's JSON, for acknowledged purchases.
    acknowledged: Vec<(u16, Value)>,
    failures: BTreeMap<String, usize>,
    latencies_ms: Vec<f64>,
}

async fn drive(suite: &Suite, total: usize, ft: bool) -> Outcome {
    let ecommerce = suite.url("ecommerce");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (http, url, next) = (http.clone(), format!("{ecommerce}/buy"), next.clone());
        tasks.spawn(async move {
            let mut out = Outcome::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return out;
                }
                let body = json!({
                    "product": PRODUCTS[i % PRODUCTS.len()],
                    "user": format!("ft-user-{}", i % USERS),
                    "ft": ft,
                });
                let started = Instant::now();
                let mut retry_after = None;
                let sent = http
                    .post(&url)
                    .header("idempotency-key", format!("e2e-ft-{ft}-{i}"))
                    .json(&body)
                    .send()
                    .await;
                let answer = match sent {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        retry_after = response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        let value: Value = response.json().await.unwrap_or(Value::Null);
                        Ok((status, value))
                    }
                    Err(err) if err.is_timeout() => Err("client timeout".to_owned()),
                    Err(_) => Err("connection error".to_owned()),
                };
                out.latencies_ms
                    .push(started.elapsed().as_secs_f64() * 1000.0);
                match answer {
                    Ok((status @ (200 | 202), value)) => out.acknowledged.push((status, value)),
                    Ok((status, value)) => {
                        let step = value["step"].as_str().unwrap_or("-").to_owned();
                        let kind = value["type"]
                            .as_str()
                            .and_then(|t| t.rsplit('/').next())
                            .unwrap_or("-")
                            .to_owned();
                        let retry_after = if retry_after.is_some() {
                            " retry-after"
                        } else {
                            ""
                        };
                        *out.failures
                            .entry(format!("{status} {kind} step={step}{retry_after}"))
                            .or_default() += 1;
                    }
                    Err(kind) => *out.failures.entry(kind).or_default() += 1,
                }
            }
        });
    }
    let mut all = Outcome::default();
    while let Some(part) = tasks.join_next().await {
        let part = part.expect("client task");
        all.acknowledged.extend(part.acknowledged);
        all.latencies_ms.extend(part.latencies_ms);
        for (k, v) in part.failures {
            *all.failures.entry(k).or_default() += v;
        }
    }
    all
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(label: &str, total: usize, out: &mut Outcome, elapsed: Duration) {
    out.latencies_ms.sort_by(f64::total_cmp);
    let sync = out.acknowledged.iter().filter(|(s, _)| *s == 200).count();
    println!(
        "{label}: {} of {total} acknowledged ({:.2} %), {sync} synchronously ({:.1} %), \
         {:.0} purchases/s, p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, failures {:?}",
        out.acknowledged.len(),
        100.0 * out.acknowledged.len() as f64 / total as f64,
        100.0 * sync as f64 / total as f64,
        total as f64 / elapsed.as_secs_f64(),
        percentile(&out.latencies_ms, 50.0),
        percentile(&out.latencies_ms, 95.0),
        percentile(&out.latencies_ms, 99.0),
        out.failures,
    );
}

async fn stock(suite: &Suite) -> BTreeMap<String, i64> {
    let products = get_json(suite, format!("{}/products", suite.url("store-1"))).await;
    products
        .as_array()
        .expect("array")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id").to_owned(),
                p["stock"].as_i64().expect("stock"),
            )
        })
        .collect()
}

async fn faults_off(suite: &Suite) {
    for member in [
        "store-1",
        "store-2",
        "exchange-1",
        "exchange-2",
        "fidelity",
        "ecommerce",
    ] {
        let url = format!("{}/admin/faults/reset", suite.url(member));
        // A crashed exchange may be restarting: it comes back with no rules only if started
        // with them off, so retry until it has answered.
        eventually(
            Duration::from_secs(30),
            &format!("reset faults on {member}"),
            || async {
                suite
                    .http
                    .post(&url)
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ft_purchases_survive_the_default_faults_and_every_invariant_holds() {
    const TOTAL: usize = 2_000;
    // A promise long enough for the whole backlog this traffic defers (see the module docs).
    let suite = Suite::start(&[
        "--faults",
        "default",
        "--fault-seed",
        "42",
        "--defer-promise",
        "1h",
    ])
    .await;
    let stock_before = stock(&suite).await;

    let started = Instant::now();
    let mut out = drive(&suite, TOTAL, true).await;
    report(
        "ft=true under default faults",
        TOTAL,
        &mut out,
        started.elapsed(),
    );
    let acknowledged = out.acknowledged.len();
    assert!(
        acknowledged * 1000 >= TOTAL * 999,
        "only {acknowledged} of {TOTAL} acknowledged: {:?}",
        out.failures
    );
    every_acknowledged_order_ends_and_nothing_is_sold_or_credited_twice(
        &suite,
        &out,
        &stock_before,
    )
    .await;
}

/// The default 60 s completion promise under the same faults and traffic: every purchase is
/// acknowledged (200, or 202 expecting completion within the promise) or refused with
/// `503 deferral-refused`, step `sell`, and a Retry-After; nothing else (no timeout, no other
/// 5xx). Once the faults stop, the acknowledged orders all complete and the invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ft_purchases_under_the_default_promise_are_acknowledged_or_refused_honestly() {
    const TOTAL: usize = 2_000;
    let suite = Suite::start(&["--faults", "default", "--fault-seed", "42"]).await;
    let stock_before = stock(&suite).await;
    let started = Instant::now();
    let mut out = drive(&suite, TOTAL, true).await;
    report(
        "ft=true under default faults, 60 s promise",
        TOTAL,
        &mut out,
        started.elapsed(),
    );
    let refused = out
        .failures
        .get("503 deferral-refused step=sell retry-after")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        out.acknowledged.len() + refused,
        TOTAL,
        "every purchase acknowledged or refused with Retry-After: {:?}",
        out.failures
    );
    assert!(!out.acknowledged.is_empty());
    for (status, answer) in &out.acknowledged {
        if *status == 202 {
            let expected = answer["expected_completion_seconds"]
                .as_f64()
                .expect("a 202 says when it expects to complete");
            // A sale in doubt (an attempt may have sold it) is deferred even beyond the promise,
            // never refused as unsold; it says so and when it expects to complete.
            let in_doubt = answer["degraded"]
                .as_array()
                .is_some_and(|d| d.contains(&json!("store:sale-in-doubt")));
            assert!(expected > 0.0 && (in_doubt || expected <= 60.0), "{answer}");
        }
    }
    every_acknowledged_order_ends_and_nothing_is_sold_or_credited_twice(
        &suite,
        &out,
        &stock_before,
    )
    .await;
}

/// Faults stop; every acknowledged order must end completed (nothing here runs out of stock),
/// stock fell by exactly the completed sales, no transaction id twice, and every user's points
/// equal the bonuses of their completed orders.
async fn every_acknowledged_order_ends_and_nothing_is_sold_or_credited_twice(
    suite: &Suite,
    out: &Outcome,
    stock_before: &BTreeMap<String, i64>,
) {
    // Faults stop; every acknowledged order must end completed (nothing here runs out of stock).
    faults_off(suite).await;
    let ecommerce = suite.url("ecommerce");
    let fidelity = suite.url("fidelity");
    let drain_started = Instant::now();
    eventually(
        Duration::from_secs(240),
        "orders, outbox and pending bonuses drain",
        || async {
            let backlog = get_json(suite, format!("{ecommerce}/backlog")).await;
            let pending = get_json(suite, format!("{fidelity}/bonus/pending")).await;
            backlog["pending_orders"] == 0
                && backlog["outbox_bonuses"] == 0
                && pending["depth"] == 0
        },
    )
    .await;
    println!(
        "drained {:.1} s after the faults stopped",
        drain_started.elapsed().as_secs_f64()
    );

    let mut transaction_ids = HashSet::new();
    let mut sold: BTreeMap<String, i64> = BTreeMap::new();
    let mut points_by_user: BTreeMap<String, i64> = BTreeMap::new();
    for (_, answer) in &out.acknowledged {
        let id = answer["order_id"].as_str().expect("order_id");
        let order = get_json(suite, format!("{ecommerce}/orders/{id}")).await;
        assert_eq!(order["status"], "completed", "order {id}: {order}");
        let tx = order["transaction_id"]
            .as_str()
            .expect("transaction_id")
            .to_owned();
        assert!(
            transaction_ids.insert(tx.clone()),
            "transaction id {tx} twice"
        );
        *sold
            .entry(order["product"].as_str().expect("product").to_owned())
            .or_default() += 1;
        let user = order["user"].as_str().map(str::to_owned);
        let points = order["bonus_points"].as_i64().expect("points");
        assert_eq!(order["bonus_status"], "credited", "order {id}: {order}");
        *points_by_user
            .entry(user.unwrap_or_else(|| "?".into()))
            .or_default() += points;
    }

    // Stock fell by exactly the completed sales, product by product.
    let stock_after = stock(suite).await;
    for (product, before) in stock_before {
        let decrease = before - stock_after[product];
        assert_eq!(
            decrease,
            sold.get(product).copied().unwrap_or(0),
            "product {product}: stock fell by {decrease}"
        );
    }

    // Every user's balance equals the bonuses of their completed orders: credited once each.
    let total_points: i64 = points_by_user.values().sum();
    let mut credited = 0;
    for u in 0..USERS {
        let user = format!("ft-user-{u}");
        let balance = get_json(suite, format!("{fidelity}/balance/{user}")).await["points"]
            .as_i64()
            .expect("points");
        if let Some(expected) = points_by_user.get(&user) {
            assert_eq!(balance, *expected, "balance of {user}");
        }
        credited += balance;
    }
    assert_eq!(credited, total_points);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_purchases_fail_as_the_fault_table_predicts() {
    const TOTAL: usize = 400;
    let suite = Suite::start(&["--faults", "default", "--fault-seed", "42"]).await;
    let started = Instant::now();
    let mut out = drive(&suite, TOTAL, false).await;
    report(
        "ft=false under default faults",
        TOTAL,
        &mut out,
        started.elapsed(),
    );
    // /product's omission alone fails one purchase in five (p = 0.2 per request, one replica
    // asked, no hedge): at least 15 % must fail (3.6 standard deviations below 20 % at n=400);
    // the other three faults add more.
    let failed = TOTAL - out.acknowledged.len();
    assert!(
        failed * 100 >= TOTAL * 15,
        "ft=false failed only {failed} of {TOTAL}: {:?}",
        out.failures
    );
    let omitted = out
        .failures
        .iter()
        .filter(|(k, _)| k.contains("step=product"))
        .map(|(_, n)| n)
        .sum::<usize>();
    assert!(
        omitted > 0,
        "no purchase failed at /product: {:?}",
        out.failures
    );
}
