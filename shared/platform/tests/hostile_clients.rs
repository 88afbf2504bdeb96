//! Hostile clients against a real server on port 0 (issue 14, classes 3 and 4): made-up
//! methods, paths and headers must not mint metric series; slow, idle and surplus connections
//! must be let go of instead of held forever.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use ftshop_platform::extract::Json;
use ftshop_platform::server::{self, ServerLimits, Service};
use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A running server; stops when dropped.
struct TestServer {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(service: &'static str, limits: ServerLimits) -> TestServer {
    let routes = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route(
            "/echo",
            post(|Json(body): Json<serde_json::Value>| async move { axum::Json(body) }),
        );
    let app = Service::new(service, routes, utoipa::openapi::OpenApi::default()).into_router();
    let listener = server::bind([127, 0, 0, 1].into(), 0)
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(server::serve(listener, app, limits, async move {
        stopped.cancelled().await;
    }));
    TestServer { addr, stop }
}

/// The `http_server_request_duration_seconds` series of `service` in `/metrics`.
async fn series(client: &reqwest::Client, addr: SocketAddr, service: &str) -> BTreeSet<String> {
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("scrape body");
    let needle = format!("service=\"{service}\"");
    text.lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split_once('}').map(|(labels, _)| labels.to_owned()))
        .collect()
}

const STANDARD: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH",
];

fn random_token(rng: &mut impl RngExt, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[tokio::test]
async fn random_methods_paths_and_headers_add_no_metric_series() {
    const SERVICE: &str = "hostile-labels";
    let server = start(SERVICE, ServerLimits::default()).await;
    let client = reqwest::Client::new();
    let addr = server.addr;

    // The fixed set: every method label once on an unmatched path and on a matched route.
    let fixed: Vec<&str> = STANDARD.iter().copied().chain(["FOO"]).collect();
    for method in &fixed {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        for path in ["/fixed/unmatched", "/items/1"] {
            client
                .request(method.clone(), format!("http://{addr}{path}"))
                .send()
                .await
                .expect("fixed request");
        }
    }
    // The first scrape records `/metrics` itself; the second sees that series too.
    series(&client, addr, SERVICE).await;
    let baseline = series(&client, addr, SERVICE).await;
    assert!(
        baseline.iter().any(|s| s.contains("method=\"other\"")),
        "an extension method is labelled `other`: {baseline:#?}"
    );

    // 500 requests a hostile client makes up: extension methods, random paths, random headers.
    let mut rng = rand::rng();
    for i in 0..500 {
        let method = if i % 2 == 0 {
            format!("{}{}", random_token(&mut rng, 3).to_uppercase(), i)
        } else {
            STANDARD[rng.random_range(0..STANDARD.len())].to_owned()
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid token");
        let path = if i % 3 == 0 {
            format!("/items/{}", random_token(&mut rng, 12))
        } else {
            format!("/fixed/{}/{}", random_token(&mut rng, 8), i)
        };
        let response = client
            .request(method, format!("http://{addr}{path}"))
            .header(
                format!("x-{}", random_token(&mut rng, 10)),
                random_token(&mut rng, 20),
            )
            .header("x-request-id", random_token(&mut rng, 30))
            .header("traceparent", random_token(&mut rng, 55))
            .header("user-agent", random_token(&mut rng, 16))
            .send()
            .await
            .expect("random request");
        assert!(response.status().as_u16() < 500, "{}", response.status());
    }
    let after = series(&client, addr, SERVICE).await;
    assert_eq!(
        after.len(),
        baseline.len(),
        "new series: {:#?}",
        after.difference(&baseline).collect::<Vec<_>>()
    );
    assert_eq!(after, baseline);
}

/// Reads until the server closes the connection (EOF or reset) or `deadline`; what was read,
/// and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, deadline: Instant) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (received, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);
/// Room for a loaded 2-core machine on top of the timeout.
const MARGIN: Duration = Duration::from_secs(2);

fn short_timeouts() -> ServerLimits {
    ServerLimits {
        header_read_timeout: HEADER_TIMEOUT,
        body_read_timeout: HEADER_TIMEOUT,
        ..ServerLimits::default()
    }
}

#[tokio::test]
async fn a_slowloris_client_is_closed_within_the_header_timeout() {
    let server = start("hostile-slowloris", short_timeouts()).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let deadline = started + HEADER_TIMEOUT + MARGIN;
    // One byte every 50 ms: the head would take several seconds, far past the timeout.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut closed = false;
    let mut buf = [0u8; 256];
    for byte in head.iter() {
        pace.tick().await;
        if Instant::now() > deadline {
            break;
        }
        if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
            closed = true;
            break;
        }
        // A closed connection reads as EOF (or reset) at once; an open one has nothing yet.
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!(
                "answered a request head that never finished: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(
        closed,
        "still open after {elapsed:?} (header timeout {HEADER_TIMEOUT:?})"
    );
    assert!(elapsed >= HEADER_TIMEOUT, "closed too early: {elapsed:?}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let server = start("hostile-silent", short_timeouts()).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    let (received, closed) =
        read_until_closed(&mut stream, started + HEADER_TIMEOUT + MARGIN).await;
    assert!(
        closed,
        "silent connection still open after {:?}",
        started.elapsed()
    );
    assert!(received.is_empty(), "nothing was asked, nothing answered");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_response() {
    let server = start("hostile-idle", short_timeouts()).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send request");
    let started = Instant::now();
    let (received, closed) =
        read_until_closed(&mut stream, started + HEADER_TIMEOUT + MARGIN).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        closed,
        "idle keep-alive connection still open after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_400_within_the_body_timeout() {
    let server = start("hostile-slow-body", short_timeouts()).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // Promises 100 bytes, sends 10, then nothing.
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"a\": \"bbb",
        )
        .await
        .expect("send");
    let started = Instant::now();
    let (received, _) = read_until_closed(&mut stream, started + HEADER_TIMEOUT + MARGIN).await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 400 Bad Request"),
        "after {:?}: {text:?}",
        started.elapsed()
    );
    assert!(text.contains("application/problem+json"), "{text}");
}

#[tokio::test]
async fn over_the_connection_cap_a_new_client_is_answered_503_at_once() {
    const CAP: usize = 4;
    let limits = ServerLimits {
        // Long enough that the held connections stay held for the whole test.
        header_read_timeout: Duration::from_secs(60),
        max_connections: CAP,
        ..ServerLimits::default()
    };
    let server = start("hostile-cap", limits).await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    // An ordinary route: a shed `/health/live` answers 200 (the process is alive; see
    // `a_connection_flood_does_not_starve_the_health_listener`).
    let url = format!("http://{}/items/1", server.addr);

    let started = Instant::now();
    let response = client
        .get(&url)
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("retry-after").as_deref(), Some("1"));
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/problem+json")
    );
    let body: serde_json::Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // One held connection goes away: its slot serves the next client.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = client.get(&url).send().await.map(|r| r.status());
        if matches!(status, Ok(reqwest::StatusCode::OK)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a freed slot never served: {status:?}"
        );
        tokio::task::yield_now().await;
    }
    drop(held);
}

/// Issue F4: a connection flood on the public port (every connection slot held, the shed
/// slots kept busy by clients that reconnect at once) left `/health/live` unanswered, and a
/// liveness probe then restarts the pod. The health listener has its own connection cap: it
/// answers `/health/live` and `/health/ready` 200 promptly while the public port cannot, and
/// serves nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_does_not_starve_the_health_listener() {
    const CAP: usize = 8;
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(60),
        max_connections: CAP,
        ..ServerLimits::default()
    };
    let routes = Router::new().route("/items/{id}", get(|| async { "item" }));
    let app =
        Service::new("hostile-flood", routes, utoipa::openapi::OpenApi::default()).into_router();
    let listener = server::bind([127, 0, 0, 1].into(), 0).await.expect("bind");
    let health = server::bind([127, 0, 0, 1].into(), 0).await.expect("bind");
    let (addr, health_addr) = (
        listener.local_addr().expect("addr"),
        health.local_addr().expect("addr"),
    );
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(server::serve_with_health(
        listener,
        Some(health),
        app,
        limits,
        async move { stopped.cancelled().await },
    ));

    // The flood: every slot held, then clients that connect, send nothing and are replaced
    // (at most 200 open at once, for at most 10 s, to 127.0.0.1 only).
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let flooding = CancellationToken::new();
    let flood = tokio::spawn({
        let flooding = flooding.clone();
        async move {
            let mut open = std::collections::VecDeque::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !flooding.is_cancelled() && Instant::now() < deadline {
                if let Ok(stream) = TcpStream::connect(addr).await {
                    open.push_back(stream);
                }
                if open.len() > 200 {
                    open.pop_front();
                }
                tokio::task::yield_now().await;
            }
        }
    });

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    // The flood works: the public port does not answer readiness.
    let mut public_failed = 0;
    for _ in 0..5 {
        let status = client
            .get(format!("http://{addr}/health/ready"))
            .send()
            .await
            .map(|r| r.status());
        if !matches!(status, Ok(reqwest::StatusCode::OK)) {
            public_failed += 1;
        }
    }
    assert_eq!(
        public_failed, 5,
        "the flood did not saturate the public port"
    );
    for _ in 0..10 {
        for path in ["/health/live", "/health/ready"] {
            let started = Instant::now();
            let status = client
                .get(format!("http://{health_addr}{path}"))
                .send()
                .await
                .map(|r| r.status());
            assert!(
                matches!(status, Ok(reqwest::StatusCode::OK)),
                "{path} on the health listener during the flood: {status:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{path} took {:?}",
                started.elapsed()
            );
        }
    }
    // Both scrape paths are there too: Kubernetes scrapes only this listener
    // (deploy/k8s/prometheus/scrape-configs.yaml), the exemplars included.
    for path in ["/metrics", "/metrics/exemplars"] {
        let scrape = client
            .get(format!("http://{health_addr}{path}"))
            .send()
            .await
            .map(|r| r.status());
        assert!(
            matches!(scrape, Ok(reqwest::StatusCode::OK)),
            "{path} on the health listener: {scrape:?}"
        );
    }
    let other = client
        .get(format!("http://{health_addr}/items/1"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(other.status(), reqwest::StatusCode::NOT_FOUND);
    flooding.cancel();
    let _ = flood.await;
    drop(held);
    stop.cancel();
}

/// A liveness probe that lands on the shed path (every connection slot held) is answered 200:
/// the process is alive, and a 503 would get it restarted. Other requests there stay 503.
#[tokio::test]
async fn a_shed_liveness_probe_is_answered_live() {
    const CAP: usize = 2;
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(60),
        max_connections: CAP,
        ..ServerLimits::default()
    };
    let server = start("hostile-shed-live", limits).await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let live = client
        .get(format!("http://{}/health/live", server.addr))
        .send()
        .await
        .expect("an answer");
    assert_eq!(live.status(), reqwest::StatusCode::OK);
    let other = client
        .get(format!("http://{}/items/1", server.addr))
        .send()
        .await
        .expect("an answer");
    assert_eq!(other.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    drop(held);
}
