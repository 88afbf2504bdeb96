//! Fidelity's HTTP API through the real router on 127.0.0.1:0, once over a fresh SQLite file
//! and once over a fresh PostgreSQL database (every scenario runs on both backends).

use std::sync::Arc;

use ftshop_fidelity::{Config, app};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

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
    credit_then_balance,
    a_repeated_bonus_is_credited_once,
    a_reused_transaction_id_is_a_conflict,
    concurrent_identical_bonuses_credit_once,
    concurrent_distinct_bonuses_all_count,
    bad_input_is_rejected_and_changes_nothing,
    two_instances_on_one_database_credit_once,
    health_openapi_and_metrics_are_served,
    an_async_bonus_is_queued_then_credited_once,
    a_queued_bonus_that_conflicts_is_dead_lettered_not_dropped,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Fidelity {
    base: String,
    client: reqwest::Client,
    _data_dir: Arc<TempDir>,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Answer {
    fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "unexpected answer: {self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        assert_eq!(
            self.body["type"],
            format!("https://ftshop.dev/problems/{kind}"),
            "{self:?}"
        );
    }
}

/// A fresh configuration: its own temp data dir, and for PostgreSQL its own database.
async fn config(backend: Backend) -> (Config, Arc<TempDir>) {
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    let mut config = Config::for_data_dir(dir.path());
    if backend == Backend::Postgres {
        let url = ftshop_platform::db::testing::fresh_postgres_database()
            .await
            .expect("a PostgreSQL server for the tests");
        config.common.database_url = Some(url);
    }
    (config, dir)
}

async fn spawn(backend: Backend) -> Fidelity {
    let (config, dir) = config(backend).await;
    spawn_with(&config, dir).await
}

async fn spawn_with(config: &Config, data_dir: Arc<TempDir>) -> Fidelity {
    let router = app(config).await.expect("fidelity app starts");
    let base = ftshop_platform::server::testing::serve_on_free_port(router)
        .await
        .expect("serve on a free port");
    Fidelity {
        base,
        client: reqwest::Client::new(),
        _data_dir: data_dir,
    }
}

impl Fidelity {
    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request sent");
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

    async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn bonus(&self, user: &str, bonus: i64, transaction_id: &str) -> Answer {
        let body = json!({"user": user, "bonus": bonus, "transaction_id": transaction_id});
        self.bonus_json(&body).await
    }

    async fn bonus_json(&self, body: &Value) -> Answer {
        self.send(self.client.post(format!("{}/bonus", self.base)).json(body))
            .await
    }

    async fn bonus_raw(
        &self,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut request = self.client.post(format!("{}/bonus", self.base)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        self.send(request).await
    }

    async fn balance(&self, user: &str) -> i64 {
        let answer = self.get(&format!("/balance/{user}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(answer.body["user"], user, "{answer:?}");
        answer.body["points"]
            .as_i64()
            .expect("points is an integer")
    }
}

fn receipt(user: &str, points: i64, transaction_id: &str, duplicate: bool) -> Value {
    json!({
        "transaction_id": transaction_id,
        "user": user,
        "points": points,
        "status": "credited",
        "duplicate": duplicate,
    })
}

async fn credit_then_balance(backend: Backend) {
    let fidelity = spawn(backend).await;
    assert_eq!(
        fidelity.balance("alice").await,
        0,
        "unknown users have no points"
    );

    let answer = fidelity.bonus("alice", 50, "tx-1").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(answer.body, receipt("alice", 50, "tx-1", false));
    assert_eq!(fidelity.balance("alice").await, 50);

    assert_eq!(
        fidelity.bonus("alice", 1_000_000, "tx-2").await.status,
        StatusCode::OK
    );
    assert_eq!(
        fidelity.bonus("bob", 1, "tx-3").await.status,
        StatusCode::OK
    );
    assert_eq!(fidelity.balance("alice").await, 1_000_050);
    assert_eq!(fidelity.balance("bob").await, 1);
    assert_eq!(fidelity.balance("carol").await, 0);
}

async fn a_repeated_bonus_is_credited_once(backend: Backend) {
    let fidelity = spawn(backend).await;
    assert_eq!(
        fidelity.bonus("alice", 30, "tx-1").await.body,
        receipt("alice", 30, "tx-1", false)
    );
    for _ in 0..3 {
        let again = fidelity.bonus("alice", 30, "tx-1").await;
        assert_eq!(again.status, StatusCode::OK, "{again:?}");
        assert_eq!(again.body, receipt("alice", 30, "tx-1", true));
    }
    assert_eq!(fidelity.balance("alice").await, 30);
}

async fn a_reused_transaction_id_is_a_conflict(backend: Backend) {
    let fidelity = spawn(backend).await;
    assert_eq!(
        fidelity.bonus("alice", 30, "tx-1").await.status,
        StatusCode::OK
    );

    fidelity
        .bonus("alice", 31, "tx-1")
        .await
        .assert_problem(409, "transaction-conflict");
    fidelity
        .bonus("bob", 30, "tx-1")
        .await
        .assert_problem(409, "transaction-conflict");

    assert_eq!(fidelity.balance("alice").await, 30);
    assert_eq!(fidelity.balance("bob").await, 0);
    // The original request is still recognised as a replay.
    assert_eq!(
        fidelity.bonus("alice", 30, "tx-1").await.body,
        receipt("alice", 30, "tx-1", true)
    );
}

async fn concurrent_identical_bonuses_credit_once(backend: Backend) {
    let fidelity = spawn(backend).await;
    let answers = join_all((0..20).map(|_| fidelity.bonus("alice", 75, "tx-burst"))).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    let fresh = answers
        .iter()
        .filter(|a| a.body["duplicate"] == false)
        .count();
    assert_eq!(fresh, 1, "exactly one request credits: {answers:?}");
    assert_eq!(fidelity.balance("alice").await, 75);
}

async fn concurrent_distinct_bonuses_all_count(backend: Backend) {
    let fidelity = spawn(backend).await;
    let answers = join_all((1..=20).map(|i| {
        let fidelity = &fidelity;
        async move { fidelity.bonus("alice", i, &format!("tx-{i}")).await }
    }))
    .await;
    assert!(
        answers.iter().all(|a| a.status == StatusCode::OK),
        "{answers:?}"
    );
    assert_eq!(fidelity.balance("alice").await, (1..=20).sum::<i64>());
}

async fn bad_input_is_rejected_and_changes_nothing(backend: Backend) {
    let fidelity = spawn(backend).await;
    assert_eq!(
        fidelity.bonus("alice", 10, "tx-ok").await.status,
        StatusCode::OK
    );

    let invalid = [
        json!({"user": "alice", "bonus": 0, "transaction_id": "tx-a"}),
        json!({"user": "alice", "bonus": -5, "transaction_id": "tx-b"}),
        json!({"user": "alice", "bonus": 1.5, "transaction_id": "tx-c"}),
        json!({"user": "alice", "bonus": 10.0, "transaction_id": "tx-d"}),
        json!({"user": "alice", "bonus": "10", "transaction_id": "tx-e"}),
        json!({"user": "alice", "bonus": 1_000_001, "transaction_id": "tx-f"}),
        json!({"user": "alice", "bonus": 1e30, "transaction_id": "tx-g"}),
        json!({"user": "alice", "bonus": u64::MAX, "transaction_id": "tx-h"}),
        json!({"user": "alice", "bonus": i64::MIN, "transaction_id": "tx-i"}),
        json!({"user": "alice", "bonus": null, "transaction_id": "tx-j"}),
        json!({"user": "alice", "transaction_id": "tx-k"}),
        json!({"user": "alice", "bonus": 10}),
        json!({"bonus": 10, "transaction_id": "tx-l"}),
        json!({"user": "", "bonus": 10, "transaction_id": "tx-m"}),
        json!({"user": "a b", "bonus": 10, "transaction_id": "tx-n"}),
        json!({"user": "x".repeat(65), "bonus": 10, "transaction_id": "tx-o"}),
        json!({"user": "ção", "bonus": 10, "transaction_id": "tx-p"}),
        json!({"user": 7, "bonus": 10, "transaction_id": "tx-q"}),
        json!({"user": "alice", "bonus": 10, "transaction_id": ""}),
        json!({"user": "alice", "bonus": 10, "transaction_id": "tx/../1"}),
        json!({"user": "alice", "bonus": 10, "transaction_id": 12}),
        json!([]),
        json!("alice"),
    ];
    for body in &invalid {
        fidelity
            .bonus_json(body)
            .await
            .assert_problem(422, "validation");
    }

    let json = Some("application/json");
    fidelity
        .bonus_raw(json, "{\"user\": ")
        .await
        .assert_problem(400, "bad-request");
    fidelity
        .bonus_raw(json, "not json")
        .await
        .assert_problem(400, "bad-request");
    fidelity
        .bonus_raw(json, "")
        .await
        .assert_problem(400, "bad-request");
    fidelity
        .bonus_raw(
            None,
            r#"{"user": "alice", "bonus": 10, "transaction_id": "tx-r"}"#,
        )
        .await
        .assert_problem(415, "unsupported-media-type");
    fidelity
        .bonus_raw(
            Some("text/plain"),
            r#"{"user": "alice", "bonus": 10, "transaction_id": "tx-s"}"#,
        )
        .await
        .assert_problem(415, "unsupported-media-type");
    let huge =
        json!({"user": "alice", "bonus": 10, "transaction_id": "tx-t", "pad": "x".repeat(70_000)});
    fidelity
        .bonus_raw(json, huge.to_string())
        .await
        .assert_problem(413, "payload-too-large");

    fidelity
        .get("/balance/a%20b")
        .await
        .assert_problem(422, "validation");
    fidelity
        .get(&format!("/balance/{}", "x".repeat(65)))
        .await
        .assert_problem(422, "validation");
    fidelity
        .get("/balance/")
        .await
        .assert_problem(404, "not-found");
    fidelity.get("/nope").await.assert_problem(404, "not-found");
    fidelity
        .get("/bonus")
        .await
        .assert_problem(405, "method-not-allowed");
    fidelity
        .send(
            fidelity
                .client
                .post(format!("{}/balance/alice", fidelity.base)),
        )
        .await
        .assert_problem(405, "method-not-allowed");

    assert_eq!(fidelity.balance("alice").await, 10, "nothing changed");
    // None of the rejected transaction ids was recorded: each credits now.
    for tx in ["tx-a", "tx-f", "tx-r", "tx-t"] {
        assert_eq!(
            fidelity.bonus("alice", 1, tx).await.body,
            receipt("alice", 1, tx, false)
        );
    }
}

async fn two_instances_on_one_database_credit_once(backend: Backend) {
    let (config, dir) = config(backend).await;
    let (a, b) = (
        spawn_with(&config, dir.clone()).await,
        spawn_with(&config, dir).await,
    );
    let answers = join_all((0..20).map(|i| {
        let instance = if i % 2 == 0 { &a } else { &b };
        instance.bonus("alice", 40, "tx-shared")
    }))
    .await;
    assert!(
        answers.iter().all(|a| a.status == StatusCode::OK),
        "{answers:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.body["duplicate"] == false)
            .count(),
        1
    );
    assert_eq!(a.balance("alice").await, 40);
    assert_eq!(b.balance("alice").await, 40);
}

async fn health_openapi_and_metrics_are_served(backend: Backend) {
    let fidelity = spawn(backend).await;

    let live = fidelity.get("/health/live").await;
    assert_eq!(live.status, StatusCode::OK, "{live:?}");
    let ready = fidelity.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["checks"][0]["name"], "database");
    assert_eq!(ready.body["checks"][0]["status"], "ok");

    let openapi = fidelity.get("/openapi.json").await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert!(
        openapi.body["paths"]["/bonus"]["post"].is_object(),
        "{openapi:?}"
    );
    assert!(
        openapi.body["paths"]["/balance/{user}"]["get"].is_object(),
        "{openapi:?}"
    );

    let _ = fidelity.bonus("alice", 5, "tx-1").await;
    let _ = fidelity.bonus("alice", 5, "tx-1").await;
    let _ = fidelity.bonus("alice", 6, "tx-1").await;
    let metrics = fidelity.get("/metrics").await;
    let text = metrics.body.as_str().unwrap_or_default();
    for outcome in ["credited", "duplicate", "conflict"] {
        let series = format!("fidelity_bonus_total{{outcome=\"{outcome}\"}}");
        assert!(text.contains(&series), "no {series} in\n{text}");
    }
}

/// `Prefer: respond-async` queues the bonus (202); the worker credits it exactly once, even when
/// the same bonus is also posted synchronously and queued twice.
async fn an_async_bonus_is_queued_then_credited_once(backend: Backend) {
    let fidelity = spawn(backend).await;
    let body = json!({"user": "queued", "bonus": 7, "transaction_id": "tx-async-1"});
    let post_async = || {
        fidelity.send(
            fidelity
                .client
                .post(format!("{}/bonus", fidelity.base))
                .header("prefer", "respond-async")
                .json(&body),
        )
    };
    let first = post_async().await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    assert_eq!(first.body["status"], "pending");
    assert_eq!(post_async().await.status, StatusCode::ACCEPTED);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pending = fidelity.get("/bonus/pending").await;
        assert_eq!(pending.status, StatusCode::OK, "{pending:?}");
        if pending.body["depth"] == 0 && fidelity.balance("queued").await == 7 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue never drained: {pending:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A synchronous repeat is a duplicate and changes nothing.
    let again = fidelity.bonus("queued", 7, "tx-async-1").await;
    assert_eq!(again.body, receipt("queued", 7, "tx-async-1", true));
    assert_eq!(fidelity.balance("queued").await, 7);
    let ready = fidelity.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
}

/// Issue 14, class 6: a queued bonus (answered 202) whose transaction id was already credited
/// with another user can never be credited. It becomes a dead letter, counted apart from the
/// queue depth (and readiness), instead of being deleted without a trace.
async fn a_queued_bonus_that_conflicts_is_dead_lettered_not_dropped(backend: Backend) {
    let fidelity = spawn(backend).await;
    let credited = fidelity.bonus("first", 5, "tx-shared").await;
    assert_eq!(credited.status, StatusCode::OK, "{credited:?}");
    let queued = fidelity
        .send(
            fidelity
                .client
                .post(format!("{}/bonus", fidelity.base))
                .header("prefer", "respond-async")
                .json(&json!({"user": "second", "bonus": 5, "transaction_id": "tx-shared"})),
        )
        .await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{queued:?}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let pending = loop {
        let pending = fidelity.get("/bonus/pending").await;
        assert_eq!(pending.status, StatusCode::OK, "{pending:?}");
        if pending.body["dead_letters"] == 1 {
            break pending;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never dead-lettered: {pending:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(pending.body["depth"], 0, "{pending:?}");
    assert_eq!(fidelity.balance("first").await, 5);
    assert_eq!(fidelity.balance("second").await, 0);
    let ready = fidelity.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
}
