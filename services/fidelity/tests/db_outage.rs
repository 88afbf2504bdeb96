//! Issue 14, class 9, for Fidelity: with its PostgreSQL cut (a TCP proxy the test cuts and
//! restores), `GET /balance/{user}` answers the balance last read, marked stale
//! (`x-ftshop-stale: true`, `Age`); once the `db` breaker is open it does so well under the
//! pool's 5 s acquire timeout, and `POST /bonus` answers 503 problem+json with `Retry-After`
//! just as fast (the credit never comes from the cache); when the database returns,
//! balances are fresh again and credits go through. Its own test binary: the breaker is per
//! process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ftshop_fidelity::{Config, app};
use ftshop_platform::db::testing::{TcpProxy, fresh_postgres_database};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Well under the pool's 5 s acquire timeout, and loose enough for a loaded CI machine.
const FAST: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_database_serves_stale_balances_fails_credits_fast_and_recovers() {
    let url = fresh_postgres_database()
        .await
        .expect("a PostgreSQL server for the tests");
    let (proxy, through) = TcpProxy::in_front_of(&url).await.expect("proxy");
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    let mut config = Config::for_data_dir(dir.path());
    config.common.database_url = Some(through);
    let fidelity = Fidelity::spawn(&config).await;

    let credited = fidelity.bonus("ana", 10, "t-before").await;
    assert_eq!(credited.status, StatusCode::OK, "{credited:?}");
    let balance = fidelity.balance("ana").await;
    assert_eq!(balance.status, StatusCode::OK, "{balance:?}");
    assert!(!balance.is_stale(), "{balance:?}");
    assert_eq!(balance.body, json!({"user": "ana", "points": 10}));

    proxy.cut();

    let first = join_all((0..8).map(|_| fidelity.balance("ana"))).await;
    for read in &first {
        assert_eq!(read.status, StatusCode::OK, "{read:?}");
        assert!(read.is_stale(), "not marked stale: {read:?}");
        assert!(read.header("age").is_some(), "no Age: {read:?}");
        assert_eq!(read.body, balance.body, "{read:?}");
    }
    let fast_credit = poll(|| async {
        let answer = fidelity.bonus("ana", 5, "t-during").await;
        (answer.elapsed < FAST).then_some(answer)
    })
    .await;
    assert_eq!(
        fast_credit.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{fast_credit:?}"
    );
    assert_eq!(
        fast_credit.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        fast_credit.header("retry-after").is_some(),
        "{fast_credit:?}"
    );
    let fast_read = poll(|| async {
        let read = fidelity.balance("ana").await;
        (read.elapsed < FAST).then_some(read)
    })
    .await;
    assert_eq!(fast_read.status, StatusCode::OK, "{fast_read:?}");
    assert!(fast_read.is_stale(), "{fast_read:?}");
    assert_eq!(fast_read.body, balance.body);

    proxy.restore();

    let fresh = poll(|| async {
        let read = fidelity.balance("ana").await;
        (read.status == StatusCode::OK && !read.is_stale()).then_some(read)
    })
    .await;
    assert_eq!(
        fresh.body, balance.body,
        "the refused credit credited nothing"
    );
    let after = poll(|| async {
        let answer = fidelity.bonus("ana", 5, "t-after").await;
        (answer.status == StatusCode::OK).then_some(answer)
    })
    .await;
    assert_eq!(after.body["status"], "credited", "{after:?}");
    let total = fidelity.balance("ana").await;
    assert!(!total.is_stale(), "{total:?}");
    assert_eq!(total.body["points"], 15);
}

struct Fidelity {
    base: String,
    client: reqwest::Client,
}

#[derive(Debug)]
struct Timed {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
    elapsed: Duration,
}

impl Timed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn is_stale(&self) -> bool {
        self.header("x-ftshop-stale") == Some("true")
    }
}

impl Fidelity {
    async fn spawn(config: &Config) -> Self {
        let router = app(config).await.expect("fidelity app starts");
        let base = ftshop_platform::server::testing::serve_on_free_port(router)
            .await
            .expect("serve on a free port");
        Self {
            base,
            client: reqwest::Client::new(),
        }
    }

    async fn balance(&self, user: &str) -> Timed {
        timed(self.client.get(format!("{}/balance/{user}", self.base))).await
    }

    async fn bonus(&self, user: &str, bonus: i64, transaction_id: &str) -> Timed {
        let body = json!({"user": user, "bonus": bonus, "transaction_id": transaction_id});
        timed(self.client.post(format!("{}/bonus", self.base)).json(&body)).await
    }
}

async fn timed(request: reqwest::RequestBuilder) -> Timed {
    let started = Instant::now();
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    Timed {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        elapsed: started.elapsed(),
    }
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
