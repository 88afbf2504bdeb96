//! Exchange's HTTP API through the real router on 127.0.0.1:0: the simulated source, and an
//! upstream (a tiny axum server on port 0) that the tests switch between healthy, failing,
//! nonsensical and hanging.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use axum::response::{IntoResponse, Response};
use ftshop_exchange::{Config, app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;

/// How long a test waits for a condition before failing.
const DEADLINE: Duration = Duration::from_secs(10);

/// Serves `router` on a free loopback port until the test's runtime ends; returns its base URL.
async fn serve_on_free_port(router: axum::Router) -> String {
    ftshop_platform::server::testing::serve_on_free_port(router)
        .await
        .expect("serve on a free port")
}

async fn spawn_exchange(config: Config) -> String {
    serve_on_free_port(app(&config).await.expect("exchange app starts")).await
}

fn simulated(seed: u64, ttl: Duration) -> Config {
    let mut config = Config::for_data_dir(std::env::temp_dir());
    config.rate_seed = Some(seed);
    config.rate_ttl = ttl;
    config
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Answer {
    fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        assert_eq!(
            self.body["type"],
            format!("https://ftshop.dev/problems/{kind}"),
            "{self:?}"
        );
    }

    fn source(&self) -> &str {
        self.body["source"].as_str().unwrap_or_default()
    }

    fn rate(&self) -> f64 {
        self.body["rate"].as_f64().unwrap_or(f64::NAN)
    }
}

async fn request(method: reqwest::Method, url: &str) -> Answer {
    let response = reqwest::Client::new()
        .request(method, url)
        .send()
        .await
        .expect("request sent");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        content_type,
        body,
    }
}

async fn get(url: &str) -> Answer {
    request(reqwest::Method::GET, url).await
}

/// Asks until `done` accepts an answer, or fails the test after [`DEADLINE`].
async fn poll_until(url: &str, what: &str, done: impl Fn(&Answer) -> bool) -> Answer {
    let started = Instant::now();
    loop {
        let answer = get(url).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "gave up waiting for {what}; last answer {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_rate_answer(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.content_type, "application/json", "{answer:?}");
    let rate = answer.rate();
    assert!(rate.is_finite() && rate > 0.0, "{answer:?}");
    let as_of = answer.body["as_of"].as_str().unwrap_or_default();
    let parsed = OffsetDateTime::parse(as_of, &Rfc3339);
    assert!(
        matches!(parsed, Ok(t) if t.offset().is_utc()),
        "as_of {as_of:?} is not RFC 3339 UTC"
    );
    assert!(
        ["live", "cache", "stale"].contains(&answer.source()),
        "{answer:?}"
    );
}

#[tokio::test]
async fn simulated_rates_are_positive_and_cached_within_the_ttl() {
    let base = spawn_exchange(simulated(42, Duration::from_secs(60))).await;
    let url = format!("{base}/exchange");

    let first = get(&url).await;
    assert_rate_answer(&first);
    assert_eq!(first.source(), "live");
    assert!((4.5..=6.5).contains(&first.rate()), "{first:?}");

    let second = get(&url).await;
    assert_rate_answer(&second);
    assert_eq!(second.source(), "cache");
    assert_eq!(second.body["rate"], first.body["rate"]);
    assert_eq!(second.body["as_of"], first.body["as_of"]);
}

#[tokio::test]
async fn a_seed_gives_the_same_rates_and_each_fetch_moves_them() {
    let (a, b) = (
        spawn_exchange(simulated(7, Duration::ZERO)).await,
        spawn_exchange(simulated(7, Duration::ZERO)).await,
    );
    let mut rates = Vec::new();
    for _ in 0..10 {
        let (x, y) = (
            get(&format!("{a}/exchange")).await,
            get(&format!("{b}/exchange")).await,
        );
        assert_rate_answer(&x);
        assert_eq!(x.source(), "live", "a zero TTL fetches every time");
        assert_eq!(x.body["rate"], y.body["rate"]);
        rates.push(x.rate());
    }
    assert!(
        rates.windows(2).any(|w| w[0] != w[1]),
        "the walk moves: {rates:?}"
    );
}

/// What the fake upstream does.
const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const NONSENSE: u8 = 2;
const HANGING: u8 = 3;
/// Answers the rate as the string `"NaN"`.
const NAN_TEXT: u8 = 4;

#[derive(Clone, Default)]
struct Upstream {
    mode: Arc<AtomicU8>,
    rate_bits: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
}

impl Upstream {
    fn set(&self, mode: u8, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Ordering::SeqCst);
        self.mode.store(mode, Ordering::SeqCst);
    }
}

async fn upstream_latest(State(upstream): State<Upstream>) -> Response {
    upstream.calls.fetch_add(1, Ordering::SeqCst);
    let rate = f64::from_bits(upstream.rate_bits.load(Ordering::SeqCst));
    match upstream.mode.load(Ordering::SeqCst) {
        HEALTHY => axum::Json(json!({"amount": 1.0, "base": "USD", "rates": {"BRL": rate}}))
            .into_response(),
        NONSENSE => axum::Json(json!({"rates": {"BRL": -rate}})).into_response(),
        NAN_TEXT => axum::Json(json!({"rates": {"BRL": "NaN"}})).into_response(),
        HANGING => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            AxumStatus::GATEWAY_TIMEOUT.into_response()
        }
        _ => (AxumStatus::INTERNAL_SERVER_ERROR, "down").into_response(),
    }
}

/// A fake rates API and an Exchange using it with a short TTL and max staleness.
async fn spawn_with_upstream(ttl: Duration, max_stale: Duration) -> (Upstream, String) {
    let upstream = Upstream::default();
    upstream.set(HEALTHY, 5.1234);
    let router = axum::Router::new()
        .route("/latest", axum::routing::get(upstream_latest))
        .with_state(upstream.clone());
    let upstream_base = serve_on_free_port(router).await;

    let mut config = Config::for_data_dir(std::env::temp_dir());
    config.rate_ttl = ttl;
    config.max_stale = max_stale;
    config.upstream_timeout = Duration::from_millis(200);
    config.upstream_url = Some(
        format!("{upstream_base}/latest?from=USD&to=BRL")
            .parse()
            .expect("upstream URL"),
    );
    (upstream, spawn_exchange(config).await)
}

/// An absurd upstream rate is a failed fetch at the boundary: Exchange keeps serving its last
/// good rate as `stale`, never the absurd one (1e300 used to price a 24.50 USD order at
/// 9.2e16 BRL, 1e-9 at 0).
#[tokio::test]
async fn absurd_upstream_rates_are_refused_and_the_last_good_rate_served() {
    let (upstream, base) =
        spawn_with_upstream(Duration::from_millis(50), Duration::from_secs(60)).await;
    let url = format!("{base}/exchange");
    let live = get(&url).await;
    assert_eq!(live.source(), "live", "{live:?}");
    assert_eq!(live.body["rate"], json!(5.1234));

    for (mode, absurd) in [
        (HEALTHY, 1e300),
        (HEALTHY, 1e-9),
        (HEALTHY, 0.0),
        (HEALTHY, -5.31),
        (HEALTHY, 1_000_001.0),
        (NAN_TEXT, f64::NAN),
    ] {
        upstream.set(mode, absurd);
        let stale = poll_until(&url, &format!("a stale rate instead of {absurd}"), |a| {
            a.source() == "stale"
        })
        .await;
        assert_rate_answer(&stale);
        assert_eq!(stale.body["rate"], json!(5.1234), "{absurd}: {stale:?}");

        upstream.set(HEALTHY, 5.1234);
        poll_until(&url, "a live rate again", |a| a.source() == "live").await;
    }

    let metrics = get(&format!("{base}/metrics")).await;
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.starts_with("http_client_request_duration_seconds")
                && l.contains("outcome=\"implausible\"")),
        "no implausible outcome in\n{text}"
    );
}

/// Reviewer finding F3: rates plausible for "any pair" but absurd for USD->BRL (1e-6, which
/// sold 24.50 USD for 0.00 BRL) and a jump from 5.31 to 1,000,000 in one refresh were served
/// `live`. Both are refused now and the last good rate is served `stale`; a jump inside the band
/// (5.31 to 40) too, until consecutive answers confirm the new level.
#[tokio::test]
async fn rates_absurd_for_the_pair_or_jumping_are_refused_and_the_last_good_served() {
    let (upstream, base) =
        spawn_with_upstream(Duration::from_millis(50), Duration::from_secs(60)).await;
    let url = format!("{base}/exchange");
    upstream.set(HEALTHY, 5.31);
    poll_until(&url, "live 5.31", |a| {
        a.source() == "live" && a.body["rate"] == json!(5.31)
    })
    .await;

    for absurd in [0.000001, 1_000_000.0] {
        upstream.set(HEALTHY, absurd);
        let stale = poll_until(&url, &format!("a stale rate instead of {absurd}"), |a| {
            a.source() == "stale"
        })
        .await;
        assert_eq!(stale.body["rate"], json!(5.31), "{absurd}: {stale:?}");
        // However often it is asked, the absurd rate is never served.
        let calls = upstream.calls.load(Ordering::SeqCst);
        let mut answers = Vec::new();
        let started = Instant::now();
        while upstream.calls.load(Ordering::SeqCst) < calls + 5 {
            answers.push(get(&url).await);
            assert!(
                started.elapsed() < DEADLINE,
                "the upstream is no longer asked"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for answer in &answers {
            assert_eq!(answer.body["rate"], json!(5.31), "{absurd}: {answer:?}");
        }
        upstream.set(HEALTHY, 5.31);
        poll_until(&url, "a live rate again", |a| a.source() == "live").await;
    }

    // A jump inside the band: refused (stale 5.31) until 3 consecutive answers agree.
    upstream.set(HEALTHY, 40.0);
    let stale = poll_until(&url, "a stale rate instead of 40", |a| {
        a.source() != "cache"
    })
    .await;
    assert_eq!(stale.source(), "stale", "{stale:?}");
    assert_eq!(stale.body["rate"], json!(5.31), "{stale:?}");
    let asked_before = upstream.calls.load(Ordering::SeqCst);
    let live = poll_until(&url, "the confirmed new level", |a| {
        a.source() == "live" && a.body["rate"] == json!(40.0)
    })
    .await;
    assert_rate_answer(&live);
    assert!(
        upstream.calls.load(Ordering::SeqCst) >= asked_before + 2,
        "accepted before 3 consistent answers"
    );

    let metrics = get(&format!("{base}/metrics")).await;
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.starts_with("http_client_request_duration_seconds")
                && l.contains("outcome=\"implausible\"")),
        "no implausible outcome in\n{text}"
    );
}

#[tokio::test]
async fn a_failing_upstream_gives_stale_then_503_then_recovers() {
    let (upstream, base) =
        spawn_with_upstream(Duration::from_millis(50), Duration::from_secs(1)).await;
    let url = format!("{base}/exchange");

    let live = get(&url).await;
    assert_rate_answer(&live);
    assert_eq!(live.source(), "live");
    assert_eq!(live.rate(), 5.1234);
    assert_eq!(
        get(&format!("{base}/health/ready")).await.status,
        StatusCode::OK
    );
    // Concurrent requests share one refresh and count as cache hits, however slow the machine
    // (one request at a time may always outlive the 50 ms TTL).
    let started = Instant::now();
    loop {
        let burst = futures::future::join_all((0..4).map(|_| get(&url))).await;
        assert!(burst.iter().all(|a| a.rate() == 5.1234), "{burst:?}");
        if burst.iter().any(|a| a.source() == "cache") {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "no cache hit: {burst:?}");
    }

    let failing_since = OffsetDateTime::now_utc();
    upstream.set(FAILING, 9.9);
    let stale = poll_until(&url, "a stale rate", |a| a.source() == "stale").await;
    assert_rate_answer(&stale);
    assert_eq!(stale.rate(), 5.1234, "the last good rate");
    let as_of = |a: &Answer| {
        OffsetDateTime::parse(a.body["as_of"].as_str().unwrap_or_default(), &Rfc3339)
            .expect("as_of")
    };
    // As of when it was fetched: before the failure, no earlier than the first live rate (a
    // request outliving the TTL refreshes it in between).
    assert!(
        as_of(&live) <= as_of(&stale) && as_of(&stale) <= failing_since,
        "{live:?} {stale:?}"
    );

    let ready = get(&format!("{base}/health/ready")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");
    assert_eq!(ready.body["checks"][0]["name"], "source");
    assert_eq!(ready.body["checks"][0]["status"], "fail");

    let gone = poll_until(&url, "503 once max-stale passed", |a| {
        a.status.as_u16() == 503
    })
    .await;
    gone.assert_problem(503, "rate-unavailable");

    upstream.set(HEALTHY, 5.2);
    let back = poll_until(&url, "a live rate again", |a| a.source() == "live").await;
    assert_rate_answer(&back);
    assert_eq!(back.rate(), 5.2);
    let ready = poll_until(&format!("{base}/health/ready"), "ready again", |a| {
        a.status == 200
    })
    .await;
    let detail = ready.body["checks"][0]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains("rate 5.2"), "{ready:?}");

    let metrics = get(&format!("{base}/metrics")).await;
    let text = metrics.body.as_str().unwrap_or_default();
    for result in ["hit", "miss", "stale"] {
        let series = format!(
            "resilience_cache_requests_total{{cache=\"exchange_rate\",result=\"{result}\"}}"
        );
        assert!(text.contains(&series), "no {series} in\n{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("exchange_rate ")),
        "no exchange_rate gauge"
    );
    for outcome in ["success", "server_error"] {
        assert!(
            text.lines().any(
                |l| l.starts_with("http_client_request_duration_seconds_count")
                    && l.contains("service=\"exchange\"")
                    && l.contains("target=\"upstream\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            ),
            "no upstream {outcome} histogram in\n{text}"
        );
    }
}

#[tokio::test]
async fn nonsense_or_hanging_upstreams_are_failed_fetches() {
    let (upstream, base) =
        spawn_with_upstream(Duration::from_millis(50), Duration::from_secs(60)).await;
    let url = format!("{base}/exchange");

    upstream.set(NONSENSE, 5.3);
    get(&url).await.assert_problem(503, "rate-unavailable");
    let ready = get(&format!("{base}/health/ready")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");

    upstream.set(HEALTHY, 5.3);
    let live = poll_until(&url, "a live rate", |a| a.source() == "live").await;
    assert_eq!(live.rate(), 5.3);

    upstream.set(HANGING, 5.3);
    let started = Instant::now();
    let stale = poll_until(&url, "a stale rate", |a| a.source() == "stale").await;
    assert_eq!(stale.rate(), 5.3);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the upstream timeout bounds the wait"
    );
}

#[tokio::test]
async fn a_burst_of_misses_asks_the_upstream_once() {
    let (upstream, base) =
        spawn_with_upstream(Duration::from_secs(60), Duration::from_secs(60)).await;
    let url = format!("{base}/exchange");
    let answers = futures::future::join_all((0..20).map(|_| get(&url))).await;
    assert!(
        answers
            .iter()
            .all(|a| a.status == StatusCode::OK && a.rate() == 5.1234)
    );
    assert_eq!(answers.iter().filter(|a| a.source() == "live").count(), 1);
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_routes_and_methods_are_problems_and_docs_are_served() {
    let base = spawn_exchange(simulated(1, Duration::from_secs(2))).await;

    get(&format!("{base}/nope"))
        .await
        .assert_problem(404, "not-found");
    request(reqwest::Method::POST, &format!("{base}/exchange"))
        .await
        .assert_problem(405, "method-not-allowed");
    request(reqwest::Method::DELETE, &format!("{base}/exchange"))
        .await
        .assert_problem(405, "method-not-allowed");

    let live = get(&format!("{base}/health/live")).await;
    assert_eq!(live.status, StatusCode::OK);
    let ready = get(&format!("{base}/health/ready")).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "the simulated source is always ready: {ready:?}"
    );

    let openapi = get(&format!("{base}/openapi.json")).await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert!(
        openapi.body["paths"]["/exchange"]["get"].is_object(),
        "{openapi:?}"
    );
    let schema = &openapi.body["components"]["schemas"]["ExchangeRate"];
    assert!(schema.is_object(), "{openapi:?}");
}
