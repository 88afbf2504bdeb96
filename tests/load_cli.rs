//! `ftshop load` end to end: the real binary against a tiny fake /buy on 127.0.0.1, whose
//! answers cycle through 200 (degraded and clean), 202, 409 and 500, so every count in
//! result.json can be checked against what the server saw.

#![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Default)]
struct Seen {
    requests: u64,
    completed: u64,
    degraded: u64,
    pending_bonus: u64,
    accepted: u64,
    out_of_stock: u64,
    server_error: u64,
    keys: HashSet<String>,
    /// Anything about a request that breaks the contract `ftshop load` must keep.
    violations: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

async fn buy(State(seen): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let mut seen = seen.lock().unwrap();
    let n = seen.requests;
    seen.requests += 1;
    match headers.get("idempotency-key").and_then(|k| k.to_str().ok()) {
        Some(key) if seen.keys.insert(key.to_owned()) => {}
        other => seen
            .violations
            .push(format!("missing or repeated key {other:?}")),
    }
    let product: u32 = body["product"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    if !(1..=11).contains(&product)
        || body["ft"] != json!(true)
        || body["user"].as_str().is_none_or(str::is_empty)
    {
        seen.violations.push(format!("bad body {body}"));
    }
    match n % 5 {
        0 => {
            seen.completed += 1;
            seen.degraded += 1;
            seen.pending_bonus += 1;
            Json(json!({
                "order_id": format!("o{n}"),
                "degraded": ["exchange:stale-rate"],
                "bonus": {"points": 10, "status": "pending"},
            }))
            .into_response()
        }
        1 => {
            seen.completed += 1;
            Json(json!({
                "order_id": format!("o{n}"),
                "degraded": [],
                "bonus": {"points": 10, "status": "credited"},
            }))
            .into_response()
        }
        2 => {
            seen.accepted += 1;
            (
                StatusCode::ACCEPTED,
                Json(json!({"order_id": format!("o{n}"), "status": "pending"})),
            )
                .into_response()
        }
        3 => {
            seen.out_of_stock += 1;
            (StatusCode::CONFLICT, "out of stock").into_response()
        }
        _ => {
            seen.server_error += 1;
            (StatusCode::BAD_GATEWAY, "store down").into_response()
        }
    }
}

/// A shop that takes 200 ms per answer, to fill the open loop's in-flight cap.
async fn slow_buy(State(seen): State<Shared>) -> Response {
    seen.lock().unwrap().requests += 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Json(json!({"order_id": "slow", "degraded": [], "bonus": {"status": "credited"}}))
        .into_response()
}

/// A shop under sustained faults, for following 202s: answers cycle through 200, 202 that
/// completes after 200 ms, 202 that completes after 1.5 s, 202 that is cancelled, 503 with
/// `Retry-After`, and 202 that never ends; `GET /orders/{id}` tells each order's state.
#[derive(Default)]
struct Deferred {
    requests: u64,
    /// Order id → (when it was accepted, how long until it ends, its final status).
    orders: std::collections::HashMap<String, (std::time::Instant, Option<Duration>, &'static str)>,
    order_polls: u64,
}

type SharedDeferred = Arc<Mutex<Deferred>>;

async fn deferring_buy(State(shop): State<SharedDeferred>) -> Response {
    let mut shop = shop.lock().unwrap();
    let n = shop.requests;
    shop.requests += 1;
    let id = format!("o{n}");
    let ends = match n % 6 {
        0 => {
            return Json(json!({"order_id": id, "degraded": [], "bonus": {"status": "credited"}}))
                .into_response();
        }
        1 => (Some(Duration::from_millis(200)), "completed"),
        2 => (Some(Duration::from_millis(1500)), "completed"),
        3 => (Some(Duration::ZERO), "cancelled"),
        4 => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    ("retry-after", "2"),
                    ("content-type", "application/problem+json"),
                ],
                json!({"title": "backlog full", "status": 503, "step": "admission"}).to_string(),
            )
                .into_response();
        }
        _ => (None, "completed"),
    };
    shop.orders
        .insert(id.clone(), (std::time::Instant::now(), ends.0, ends.1));
    (
        StatusCode::ACCEPTED,
        Json(json!({"order_id": id, "status": "pending"})),
    )
        .into_response()
}

async fn deferred_order(
    State(shop): State<SharedDeferred>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let mut shop = shop.lock().unwrap();
    shop.order_polls += 1;
    let Some(&(at, ends_after, fate)) = shop.orders.get(&id) else {
        return (StatusCode::NOT_FOUND, "no such order").into_response();
    };
    let status = match ends_after {
        Some(after) if at.elapsed() >= after => fate,
        _ => "pending",
    };
    Json(json!({"order_id": id, "status": status})).into_response()
}

async fn deferring_shop() -> (String, SharedDeferred) {
    let shop = SharedDeferred::default();
    let app = Router::new()
        .route("/buy", post(deferring_buy))
        .route("/orders/{id}", axum::routing::get(deferred_order))
        .with_state(Arc::clone(&shop));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, shop)
}

async fn fake_shop() -> (String, Shared) {
    let seen = Shared::default();
    let app = Router::new()
        .route("/buy", post(buy))
        .route("/slow/buy", post(slow_buy))
        // A redirect the load generator must report, not follow (it could point anywhere).
        .route(
            "/redirect/buy",
            post(|| async { axum::response::Redirect::temporary("/buy") }),
        )
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// `ftshop load <args>`, killed if the test gives up on it.
fn load_command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ftshop"));
    command
        .arg("load")
        .args(args)
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .kill_on_drop(true);
    command
}

async fn within_30s(
    run: impl std::future::Future<Output = std::io::Result<std::process::Output>>,
) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("ftshop load finished within 30 s")
        .expect("ftshop load ran")
}

async fn ftshop_load(args: &[&str]) -> std::process::Output {
    within_30s(load_command(args).output()).await
}

fn non_empty(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!text.trim().is_empty(), "{} is empty", path.display());
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_in_result_json_match_what_the_server_answered() {
    let (url, seen) = fake_shop().await;
    let out = tempfile::tempdir().unwrap();
    let output = ftshop_load(&[
        "--url",
        &url,
        "--vus",
        "4",
        "--duration",
        "2s",
        "--think",
        "0s",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let result: Value = serde_json::from_str(&non_empty(&out.path().join("result.json"))).unwrap();
    let summary = non_empty(&out.path().join("summary.md"));
    let chart = non_empty(&out.path().join("chart.svg"));
    assert!(chart.starts_with("<svg"), "{chart}");
    assert!(
        stdout.contains("| metric | ft=true |"),
        "summary printed: {stdout}"
    );
    assert!(summary.contains("| metric | ft=true |"), "{summary}");

    let seen = seen.lock().unwrap();
    assert!(
        seen.violations.is_empty(),
        "{:?}",
        &seen.violations[..seen.violations.len().min(5)]
    );
    assert!(
        seen.requests >= 20,
        "only {} requests in 2 s",
        seen.requests
    );
    let runs = result["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["ft"], json!(true));
    let counts = &run["counts"];
    assert_eq!(counts["requests"], json!(seen.requests), "{counts}");
    assert_eq!(counts["completed"], json!(seen.completed), "{counts}");
    assert_eq!(counts["accepted"], json!(seen.accepted), "{counts}");
    assert_eq!(counts["out_of_stock"], json!(seen.out_of_stock), "{counts}");
    assert_eq!(counts["server_error"], json!(seen.server_error), "{counts}");
    for none in ["client_error", "timeout", "connection_error", "unexpected"] {
        assert_eq!(counts[none], json!(0), "{none}: {counts}");
    }
    assert_eq!(run["acknowledged"], json!(seen.completed + seen.accepted));
    assert_eq!(
        run["status_codes"],
        json!({
            "200": seen.completed,
            "202": seen.accepted,
            "409": seen.out_of_stock,
            "502": seen.server_error,
        })
    );
    assert_eq!(run["degraded"]["answers"], json!(seen.degraded));
    assert_eq!(
        run["degraded"]["labels"]["exchange:stale-rate"],
        json!(seen.degraded)
    );
    assert_eq!(run["bonus"]["pending"], json!(seen.pending_bonus));
    assert_eq!(
        run["bonus"]["credited"],
        json!(seen.completed - seen.pending_bonus)
    );

    // Success excludes the 409s: about 3/4 of the rest are acknowledged.
    let expected = (seen.completed + seen.accepted) as f64 * 100.0
        / (seen.requests - seen.out_of_stock) as f64;
    let success = run["success_rate_pct"].as_f64().unwrap();
    assert!(
        (success - expected).abs() < 0.001,
        "{success} vs {expected}"
    );
    assert!(run["latency_ms"]["all"]["p99"].as_f64().unwrap() > 0.0);
    let series = run["timeseries"].as_array().unwrap();
    assert!(!series.is_empty());
    let per_second: u64 = series.iter().map(|p| p["requests"].as_u64().unwrap()).sum();
    assert_eq!(
        per_second, seen.requests,
        "the time series accounts for every request"
    );
    assert_eq!(result["settings"]["vus"], json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_success_threshold_and_loopback_refusal_fail_the_command() {
    let (url, seen) = fake_shop().await;
    let out = tempfile::tempdir().unwrap();
    let output = ftshop_load(&[
        "--url",
        &url,
        "--vus",
        "2",
        "--duration",
        "1s",
        "--think",
        "0s",
        "--max-requests",
        "10",
        "--min-success",
        "99.9",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a 500 in every 5 answers is below 99.9 %"
    );
    assert!(stderr.contains("below --min-success"), "{stderr}");
    assert_eq!(
        seen.lock().unwrap().requests,
        10,
        "--max-requests bounds the run"
    );
    // The results are still written, for the CI job to publish.
    non_empty(&out.path().join("summary.md"));

    let output = ftshop_load(&["--url", "http://10.11.12.13:8080", "--duration", "1s"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("non-loopback"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_pipe_neither_panics_nor_changes_the_verdict() {
    let (url, _seen) = fake_shop().await;
    let out = tempfile::tempdir().unwrap();
    // `ftshop load ... | head -0`: the reader is gone before the summary is printed.
    let out_dir = out.path().to_str().unwrap();
    let run = |min_success: &'static str| {
        let mut child = load_command(&[
            "--url",
            &url,
            "--vus",
            "2",
            "--duration",
            "1s",
            "--think",
            "0s",
            "--max-requests",
            "10",
            "--min-success",
            min_success,
            "--out",
            out_dir,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        drop(child.stdout.take());
        within_30s(child.wait_with_output())
    };

    let passing = run("50").await;
    let stderr = String::from_utf8_lossy(&passing.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(passing.status.success(), "80 % >= 50 %: {stderr}");
    non_empty(&out.path().join("summary.md"));

    let failing = run("99.9").await;
    let stderr = String::from_utf8_lossy(&failing.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("below --min-success"), "{stderr}");
    assert!(!failing.status.success(), "80 % < 99.9 % must still fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_its_schedule_and_drops_above_the_in_flight_cap() {
    let (url, seen) = fake_shop().await;
    let out = tempfile::tempdir().unwrap();
    // 40 arrivals in 1 s; each answer takes 200 ms and at most 2 may be outstanding, so about
    // 2 per 200 ms are sent and the rest are dropped, not queued.
    let output = ftshop_load(&[
        "--url",
        &format!("{url}/slow/"),
        "--rate",
        "40/s",
        "--max-in-flight",
        "2",
        "--duration",
        "1s",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let result: Value = serde_json::from_str(&non_empty(&out.path().join("result.json"))).unwrap();
    let run = &result["runs"][0];
    let sent = run["counts"]["requests"].as_u64().unwrap();
    let dropped = run["dropped"].as_u64().unwrap();
    assert_eq!(sent, seen.lock().unwrap().requests);
    assert_eq!(run["counts"]["completed"].as_u64().unwrap(), sent);
    assert!(
        (39..=41).contains(&(sent + dropped)),
        "{sent} sent + {dropped} dropped"
    );
    assert!(
        (4..=14).contains(&sent),
        "{sent} sent with 2 in flight of 200 ms each"
    );
    // Latency is measured from the scheduled arrival, so it is at least the server's 200 ms.
    assert!(run["latency_ms"]["all"]["p50"].as_f64().unwrap() >= 199.0);
    assert_eq!(result["settings"]["mode"], json!("open"));
    assert!(non_empty(&out.path().join("summary.md")).contains("dropped (in-flight cap)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_reported_not_followed() {
    let (url, seen) = fake_shop().await;
    let out = tempfile::tempdir().unwrap();
    let output = ftshop_load(&[
        "--url",
        &format!("{url}/redirect/"),
        "--vus",
        "1",
        "--think",
        "0s",
        "--duration",
        "2s",
        "--max-requests",
        "3",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(&non_empty(&out.path().join("result.json"))).unwrap();
    let run = &result["runs"][0];
    assert_eq!(run["counts"]["requests"], json!(3));
    assert_eq!(run["counts"]["unexpected"], json!(3));
    assert_eq!(run["status_codes"], json!({"307": 3}));
    assert_eq!(
        seen.lock().unwrap().requests,
        0,
        "the redirect was not followed"
    );
}

/// Every 202 is followed with `GET /orders/{id}` until it ends or the follow timeout passes:
/// the report counts completed, cancelled and unresolved orders, completion times (from the
/// purchase), those ended within `--promise`, 503 + Retry-After refusals apart from 5xx, the
/// synchronous share, and the measured sales/s beside the analytic cap for `--stores`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_202_is_followed_to_its_end_and_reported_against_the_promise() {
    let (url, shop) = deferring_shop().await;
    let out = tempfile::tempdir().unwrap();
    let output = ftshop_load(&[
        "--url",
        &url,
        "--vus",
        "2",
        "--think",
        "0s",
        "--duration",
        "5s",
        "--max-requests",
        "12",
        "--promise",
        "1s",
        "--follow-timeout",
        "3s",
        "--stores",
        "4",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let result: Value = serde_json::from_str(&non_empty(&out.path().join("result.json"))).unwrap();
    let run = &result["runs"][0];
    // Two of each of the six answers.
    assert_eq!(run["counts"]["requests"], json!(12), "{run}");
    assert_eq!(run["counts"]["completed"], json!(2));
    assert_eq!(run["counts"]["accepted"], json!(8));
    assert_eq!(
        run["counts"]["refused"],
        json!(2),
        "503 + Retry-After is a refusal"
    );
    assert_eq!(run["counts"]["server_error"], json!(0));
    assert_eq!(run["errors"], json!(0), "an honest refusal is not an error");
    assert_eq!(run["sync_share_pct"], json!(20.0), "2 of 10 acknowledged");

    let deferred = &run["deferred"];
    assert_eq!(
        deferred["counts"],
        json!({
            "followed": 8, "completed": 4, "cancelled": 2, "unresolved": 2,
            "lookup_failed": 0, "within_promise": 4,
        }),
        "{deferred}"
    );
    assert_eq!(deferred["within_promise_pct"], json!(50.0));
    assert_eq!(deferred["promise_s"], json!(1.0));
    let completion = &deferred["completion_ms"];
    assert!(completion["p50"].as_f64().unwrap() >= 200.0, "{completion}");
    let max = completion["max"].as_f64().unwrap();
    assert!((1500.0..3000.0).contains(&max), "{completion}");

    let sales = &run["sales"];
    assert_eq!(
        sales["units"],
        json!(6),
        "2 sold at once + 4 deferred completed"
    );
    assert_eq!(
        sales["cap"]["units_per_s"],
        json!(7.2),
        "4 × (1/0.1 − 1) / 5 s"
    );
    let per_s = sales["per_s"].as_f64().unwrap();
    let span = sales["span_s"].as_f64().unwrap();
    assert!((per_s - 6.0 / span).abs() < 0.01, "{sales}");
    // The never-ending orders were polled until the follow timeout, with backoff (not a
    // busy loop): at most ~1 poll per 100 ms at first, then at most one a second.
    let polls = shop.lock().unwrap().order_polls;
    assert!(polls <= 80, "{polls} polls for 8 orders");

    let summary = non_empty(&out.path().join("summary.md"));
    for row in [
        "| 503 refused (Retry-After) | 2 |",
        "| sync share (200 / acknowledged) | 20.00 % |",
        "| 202 followed: completed / cancelled / unresolved / lookup failed | 4 / 2 / 2 / 0 |",
        "| 202 ended within the promise | 4 of 8 (50.00 %, promise 1 s) |",
        "7.20 (",
    ] {
        assert!(summary.contains(row), "{row} missing:\n{summary}");
    }
}
