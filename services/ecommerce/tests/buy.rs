//! Ecommerce against scripted downstreams: a fake Store, Exchange and Fidelity on port 0 whose
//! behaviour each test sets, so every failure mapping and the idempotency rules are pinned down.
//! (The real services are exercised together by the end-to-end tests in the root `tests/`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use ftshop_ecommerce::Config;
use ftshop_platform::config::CommonArgs;
use serde_json::{Value, json};

/// What the fake downstreams do; tests flip these.
#[derive(Default)]
struct Script {
    product_status: Option<u16>,
    product_delay: Option<Duration>,
    /// Only this Store replica (0 or 1) is slow on /product, when set.
    slow_product_replica: Option<usize>,
    product_calls: usize,
    exchange_status: Option<u16>,
    sell_status: Option<u16>,
    /// `/sell` of this product answers 503 (other products sell).
    sell_fails_for: Option<String>,
    /// The idempotency key of every `/sell` request, answered or refused.
    sell_keys: Vec<String>,
    /// The request id of every `/sell` request, beside its key: the order worker's are
    /// `order-worker-<order id>`, a purchase's are its own.
    sell_request_ids: Vec<(String, String)>,
    /// Store sells, then answers only after this long (the answer is late, the sale is done).
    sell_delay: Option<Duration>,
    bonus_status: Option<u16>,
    /// Store's idempotency keys → transaction ids, like the real Store.
    sales: HashMap<String, String>,
    sell_calls: usize,
    /// Sales per replica (0 or 1).
    sells_by_replica: [usize; 2],
    bonus_calls: Vec<(String, i64, String)>,
    /// Every /bonus request, answered or refused.
    bonus_attempts: usize,
    /// /bonus requests made by a purchase (not by the outbox dispatcher, whose request ids
    /// start with `bonus-dispatcher-`).
    purchase_bonus_calls: usize,
    /// How long Fidelity takes to answer /bonus, when set.
    bonus_delay: Option<Duration>,
    /// The product's price in cents (default 4990) and Exchange's `rate` (default 5.0).
    price_cents: Option<i64>,
    rate: Option<Value>,
}

type Shared = Arc<Mutex<Script>>;

fn problem(status: u16, detail: &str) -> axum::response::Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [("content-type", "application/problem+json")],
        json!({"type": "x", "title": "x", "status": status.as_u16(), "detail": detail}).to_string(),
    )
        .into_response()
}

async fn product(
    State((s, replica)): State<(Shared, usize)>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let (status, delay, cents) = {
        let mut s = s.lock().expect("lock");
        s.product_calls += 1;
        let delay = match s.slow_product_replica {
            Some(slow) if slow != replica => None,
            _ => s.product_delay,
        };
        (s.product_status, delay, s.price_cents.unwrap_or(4990))
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match status {
        Some(code) => problem(code, "scripted"),
        None => Json(json!({"id": q.get("product"), "name": "Thing", "value": cents as f64 / 100.0, "value_cents": cents, "stock": 10})).into_response(),
    }
}

async fn exchange(State((s, _)): State<(Shared, usize)>) -> axum::response::Response {
    let s = s.lock().expect("lock");
    match s.exchange_status {
        Some(code) => problem(code, "scripted"),
        None => {
            let rate = s.rate.clone().unwrap_or(json!(5.0));
            Json(json!({"rate": rate, "as_of": "2026-11-23T00:00:00Z", "source": "live"}))
                .into_response()
        }
    }
}

async fn sell(
    State((s, replica)): State<(Shared, usize)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let (tx, delay) = {
        let mut s = s.lock().expect("lock");
        s.sell_calls += 1;
        s.sells_by_replica[replica] += 1;
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        s.sell_keys.push(key.clone());
        let request_id = headers
            .get(ftshop_platform::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        s.sell_request_ids.push((key.clone(), request_id));
        if let Some(code) = s.sell_status {
            return problem(code, "scripted");
        }
        if s.sell_fails_for.is_some() && body["product"].as_str() == s.sell_fails_for.as_deref() {
            return problem(503, "scripted for this product");
        }
        let next = format!("tx-{}", s.sales.len() + 1);
        (s.sales.entry(key).or_insert(next).clone(), s.sell_delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    Json(json!({"transaction_id": tx})).into_response()
}

async fn bonus(
    State((s, _)): State<(Shared, usize)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let delay = {
        let mut s = s.lock().expect("lock");
        let by_dispatcher = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|id| id.starts_with("bonus-dispatcher-"));
        if !by_dispatcher {
            s.purchase_bonus_calls += 1;
        }
        s.bonus_delay
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut s = s.lock().expect("lock");
    s.bonus_attempts += 1;
    if let Some(code) = s.bonus_status {
        return problem(code, "scripted");
    }
    // Like the real Fidelity: 1 to 1,000,000 points per purchase, otherwise 422.
    if !(1..=1_000_000).contains(&body["bonus"].as_i64().unwrap_or_default()) {
        return problem(
            422,
            "`bonus` must be a whole number of points from 1 to 1000000",
        );
    }
    s.bonus_calls.push((
        body["user"].as_str().unwrap_or_default().to_owned(),
        body["bonus"].as_i64().unwrap_or_default(),
        body["transaction_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ));
    Json(json!({"status": "credited"})).into_response()
}

async fn live() -> &'static str {
    "ok"
}

const ADMIN_TOKEN: &str = "buy-tests-admin-token";

struct TestApp {
    url: String,
    script: Shared,
    http: reqwest::Client,
    database_url: Option<String>,
    _dir: tempfile::TempDir,
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// Two fake replicas (index 0 and 1) sharing one script: Store and Exchange calls spread over
/// both, Fidelity is replica 0.
async fn spawn_app(database_url: Option<String>) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    spawn_app_in(database_url, dir, Arc::default()).await
}

/// Like [`spawn_app`], on an existing data dir and script (a "restart" of ecommerce).
async fn spawn_app_in(
    database_url: Option<String>,
    dir: tempfile::TempDir,
    script: Shared,
) -> TestApp {
    spawn_app_promising(database_url, dir, script, Duration::from_secs(60)).await
}

/// Like [`spawn_app_in`], with a completion promise of `defer_promise` for deferred sales.
async fn spawn_app_promising(
    database_url: Option<String>,
    dir: tempfile::TempDir,
    script: Shared,
    defer_promise: Duration,
) -> TestApp {
    let mut replicas = Vec::new();
    for index in 0..2 {
        let fake = Router::new()
            .route("/product", get(product))
            .route("/exchange", get(exchange))
            .route("/sell", post(sell))
            .route("/bonus", post(bonus))
            .route("/health/live", get(live))
            .with_state((script.clone(), index));
        replicas.push(serve(fake).await);
    }
    let mut common = CommonArgs::for_data_dir(dir.path());
    common.database_url = database_url.clone();
    common.admin_token = Some(ADMIN_TOKEN.to_owned());
    let config = Config {
        common,
        port: 0,
        store_urls: replicas.clone(),
        exchange_urls: replicas.clone(),
        fidelity_url: replicas[0].clone(),
        call_timeout_ms: 300,
        buy_budget_ms: 1000,
        bonus_timeout_ms: 150,
        hedge_after_ms: 40,
        rate_ttl_ms: 200,
        defer_promise,
        defer_queue_after: Duration::from_secs(1),
    };
    let app = ftshop_ecommerce::app(&config).await.expect("app");
    let url = serve(app).await;
    TestApp {
        url,
        script,
        http: reqwest::Client::new(),
        database_url,
        _dir: dir,
    }
}

impl TestApp {
    async fn buy(&self, key: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}/buy", self.url)).json(&body);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let response = req.send().await.expect("post");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json body"))
    }

    /// `GET {path}` on the service, as JSON.
    async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().expect("lock")
    }

    /// The order row's stored figures: `(value_cents, rate_exact, total_cents)`.
    async fn stored_figures(&self, order_id: &str) -> (i64, String, i64) {
        use sqlx::Row;
        let db = ftshop_platform::db::Db::connect(
            self.database_url.as_deref(),
            self._dir.path(),
            "ecommerce",
        )
        .await
        .expect("the test's database");
        let row = sqlx::query(
            "SELECT value_cents, rate_exact, total_cents FROM orders WHERE order_id = $1",
        )
        .bind(order_id.to_owned())
        .fetch_one(&db.pool)
        .await
        .expect("the order row");
        (
            row.try_get("value_cents").expect("value_cents"),
            row.try_get("rate_exact").expect("rate_exact"),
            row.try_get("total_cents").expect("total_cents"),
        )
    }
}

impl TestApp {
    /// The outbox row of a transaction: `(attempts, dead_lettered_at)`.
    async fn outbox_row(&self, transaction_id: &str) -> (i64, Option<i64>) {
        use sqlx::Row;
        let db = ftshop_platform::db::Db::connect(
            self.database_url.as_deref(),
            self._dir.path(),
            "ecommerce",
        )
        .await
        .expect("the test's database");
        let row = sqlx::query(
            "SELECT attempts, dead_lettered_at FROM bonus_outbox WHERE transaction_id = $1",
        )
        .bind(transaction_id.to_owned())
        .fetch_one(&db.pool)
        .await
        .expect("the outbox row");
        (
            row.try_get("attempts").expect("attempts"),
            row.try_get("dead_lettered_at").expect("dead_lettered_at"),
        )
    }
}

fn order() -> Value {
    json!({"product": "7", "user": "alice", "ft": false})
}

async fn happy_path_and_replay(app: TestApp) {
    let (status, body) = app.buy(Some("k1"), order()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["product"],
        json!({"id": "7", "name": "Thing", "value": 49.9})
    );
    assert_eq!(body["rate"], 5.0);
    assert_eq!(body["total"], 249.5);
    assert_eq!(body["bonus"], json!({"points": 50, "status": "credited"}));
    assert_eq!(body["degraded"], json!([]));
    assert_eq!(
        app.script().bonus_calls,
        vec![("alice".to_owned(), 50, "tx-1".to_owned())]
    );

    let (status, again) = app.buy(Some("k1"), order()).await;
    assert_eq!(status, 200);
    assert_eq!(again, body, "a replay answers exactly the first answer");
    assert_eq!(app.script().sell_calls, 1, "a replay never sells again");

    let (status, problem) = app
        .buy(
            Some("k1"),
            json!({"product": "8", "user": "alice", "ft": false}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("idempotency-key-reused"))
    );

    let order_id = body["order_id"].as_str().expect("order id");
    let view = order_view(&app, order_id).await;
    assert_eq!(view["status"], "completed");
    assert_eq!(view["transaction_id"], "tx-1");
}

#[tokio::test]
async fn happy_path_and_replay_on_sqlite() {
    happy_path_and_replay(spawn_app(None).await).await;
}

#[tokio::test]
async fn happy_path_and_replay_on_postgres() {
    let url = ftshop_platform::db::testing::fresh_postgres_database()
        .await
        .expect("postgres");
    happy_path_and_replay(spawn_app(Some(url)).await).await;
}

/// 24.50 USD at 5.31 is exactly 130.095 BRL: half a cent, rounded away from zero to 130.10
/// (f64 arithmetic gave 130.09). The answer, the order view and the stored row all say so, on
/// the plain and the fault-tolerant path.
async fn totals_are_exact_and_rounded_half_away_from_zero(app: TestApp) {
    app.script().price_cents = Some(2450);
    app.script().rate = Some(json!(5.31));
    for ft in [false, true] {
        let (status, body) = app
            .buy(None, json!({"product": "7", "user": "alice", "ft": ft}))
            .await;
        assert_eq!(status, 200, "ft={ft}: {body}");
        assert_eq!(body["product"]["value"], json!(24.5), "{body}");
        assert_eq!(body["rate"], json!(5.31), "{body}");
        assert_eq!(body["total"], json!(130.1), "ft={ft}: {body}");
        assert_eq!(
            body["bonus"]["points"], 25,
            "round(24.50) half away from zero"
        );

        let order_id = body["order_id"].as_str().expect("order id");
        let view = order_view(&app, order_id).await;
        assert_eq!(view["total"], json!(130.1), "{view}");
        let (value_cents, rate, total_cents) = app.stored_figures(order_id).await;
        assert_eq!(
            (value_cents, rate.as_str(), total_cents),
            (2450, "5.31", 13010)
        );
    }
}

#[tokio::test]
async fn totals_are_exact_on_sqlite() {
    totals_are_exact_and_rounded_half_away_from_zero(spawn_app(None).await).await;
}

#[tokio::test]
async fn totals_are_exact_on_postgres() {
    let url = ftshop_platform::db::testing::fresh_postgres_database()
        .await
        .expect("postgres");
    totals_are_exact_and_rounded_half_away_from_zero(spawn_app(Some(url)).await).await;
}

/// A rate no market gives (1e300 used to saturate the total to 9.2e16 BRL, 1e-9 to price the
/// product at 0) fails the Exchange step: nothing is sold, no bonus, on either path.
#[tokio::test]
async fn absurd_rates_fail_the_exchange_step_and_sell_nothing() {
    let app = spawn_app(None).await;
    for absurd in [
        json!(1e300),
        json!(1e-9),
        json!(0),
        json!(-5.31),
        json!("5.31"),
    ] {
        app.script().rate = Some(absurd.clone());
        for ft in [false, true] {
            let (status, body) = app
                .buy(None, json!({"product": "7", "user": "alice", "ft": ft}))
                .await;
            assert_eq!(status, 502, "rate {absurd}, ft={ft}: {body}");
            assert_eq!(body["step"], "exchange", "rate {absurd}, ft={ft}: {body}");
        }
    }
    assert_eq!(app.script().sell_calls, 0);
    assert!(app.script().bonus_calls.is_empty());
}

/// Reviewer finding F3: a 1e-6 rate sold 24.50 USD and 0.50 USD for `"total": 0.0` with the
/// bonus credited, and 1,000,000 sold 1,000,000.49 USD for 10^12 BRL. A rate absurd for
/// USD->BRL, or any rate that prices the product at 0 cents, fails the Exchange step before the
/// sale: nothing is sold, no bonus, on either path.
#[tokio::test]
async fn a_rate_that_gives_a_zero_total_or_is_absurd_for_the_pair_sells_nothing() {
    let app = spawn_app(None).await;
    for (price_cents, rate) in [
        (2450, json!(0.000001)),
        (50, json!(0.000001)),
        (50, json!(0.009)),
        (100_000_049, json!(1_000_000)),
        (2450, json!(0.19)),
    ] {
        {
            let mut script = app.script();
            script.price_cents = Some(price_cents);
            script.rate = Some(rate.clone());
        }
        for ft in [false, true] {
            let (status, body) = app
                .buy(None, json!({"product": "7", "user": "alice", "ft": ft}))
                .await;
            let case = format!("{price_cents} cents at {rate}, ft={ft}: {body}");
            assert_eq!(status, 502, "{case}");
            assert_eq!(body["step"], "exchange", "{case}");
            assert!(body.get("total").is_none(), "{case}");
        }
    }
    assert_eq!(app.script().sell_calls, 0);
    assert!(app.script().bonus_calls.is_empty());
}

#[tokio::test]
async fn each_failing_step_is_named_with_the_right_status() {
    let app = spawn_app(None).await;
    app.script().product_status = Some(404);
    let (status, problem) = app.buy(None, order()).await;
    assert_eq!((status, problem["step"].as_str()), (404, Some("product")));

    app.script().product_status = None;
    app.script().product_delay = Some(Duration::from_millis(600));
    let (status, problem) = app.buy(None, order()).await;
    assert_eq!((status, problem["step"].as_str()), (504, Some("product")));

    app.script().product_delay = None;
    app.script().exchange_status = Some(500);
    let (status, problem) = app.buy(None, order()).await;
    assert_eq!((status, problem["step"].as_str()), (502, Some("exchange")));

    app.script().exchange_status = None;
    app.script().sell_status = Some(409);
    let (status, problem) = app.buy(None, order()).await;
    assert_eq!((status, problem["step"].as_str()), (409, Some("sell")));

    app.script().sell_status = Some(500);
    let (status, problem) = app.buy(None, order()).await;
    assert_eq!((status, problem["step"].as_str()), (502, Some("sell")));
    assert_eq!(
        app.script().sales.len(),
        0,
        "no sale was recorded by the failing store"
    );
}

#[tokio::test]
async fn a_failed_order_is_redriven_under_the_same_sale_key() {
    let app = spawn_app(None).await;
    app.script().bonus_status = Some(500);
    let (status, problem) = app.buy(Some("k-bonus"), order()).await;
    assert_eq!((status, problem["step"].as_str()), (502, Some("bonus")));
    assert_eq!(
        app.script().sales.len(),
        1,
        "the sale happened before the bonus failed"
    );

    app.script().bonus_status = None;
    let (status, body) = app.buy(Some("k-bonus"), order()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["transaction_id"], "tx-1",
        "re-driving reuses the first sale"
    );
    assert_eq!(app.script().sales.len(), 1, "and never sells a second unit");
    assert_eq!(app.script().sell_calls, 2);
}

#[tokio::test]
async fn invalid_requests_are_refused_before_any_call() {
    let app = spawn_app(None).await;
    for (body, status) in [
        (json!({"product": "7"}), 422),
        (json!({"product": "7", "user": "a b"}), 422),
        (json!({"product": "7", "user": "u", "ft": "yes"}), 422),
        (json!({"product": "7", "user": "u", "extra": 1}), 422),
    ] {
        let (got, problem) = app.buy(None, body.clone()).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(problem["status"], status);
    }
    let response = app
        .http
        .post(format!("{}/buy", app.url))
        .header("idempotency-key", "has space")
        .json(&order())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    assert_eq!(app.script().sell_calls, 0);
    let missing = app
        .http
        .get(format!("{}/orders/nope", app.url))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
}

// ---- ft=true ---------------------------------------------------------------------------------

fn ft_order() -> Value {
    json!({"product": "7", "user": "bob", "ft": true})
}

async fn order_view(app: &TestApp, order_id: &str) -> Value {
    app.get_json(&format!("/orders/{order_id}")).await
}

/// Polls the order until `done` holds (at most 15 s: the workers back off with jitter).
async fn wait_for_order(
    app: &TestApp,
    order_id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let view = order_view(app, order_id).await;
        if done(&view) {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "order never {what}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ft_happy_path_credits_synchronously() {
    let app = spawn_app(None).await;
    let (status, body) = app.buy(None, ft_order()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["bonus"], json!({"points": 50, "status": "credited"}));
    assert_eq!(body["degraded"], json!([]));
}

#[tokio::test]
async fn ft_defers_the_sale_when_no_store_replica_can_sell_and_completes_it_later() {
    let app = spawn_app(None).await;
    app.script().sell_status = Some(500);
    let started = std::time::Instant::now();
    let (status, body) = app.buy(Some("deferred"), ft_order()).await;
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "answered within the budget"
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending");
    assert_eq!(body["transaction_id"], Value::Null);
    assert!(
        body["degraded"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("store:sale-deferred")))
    );
    let order_id = body["order_id"].as_str().expect("order id").to_owned();

    // The same key while pending answers the same 202 and sells nothing.
    let (status, again) = app.buy(Some("deferred"), ft_order()).await;
    assert_eq!((status, &again), (202, &body));

    app.script().sell_status = None;
    let done = wait_for_order(&app, &order_id, "completed with its bonus", |v| {
        v["status"] == "completed" && v["bonus_status"] == "credited"
    })
    .await;
    assert_eq!(done["transaction_id"], "tx-1");
    assert_eq!(
        app.script().sales.len(),
        1,
        "one sale for the order, however many attempts"
    );
    assert_eq!(
        app.script().bonus_calls,
        vec![("bob".to_owned(), 50, "tx-1".to_owned())]
    );

    let backlog = app.get_json("/backlog").await;
    assert_eq!(backlog["pending_orders"], 0);
    assert_eq!(backlog["outbox_bonuses"], 0);
}

/// First come, first served once Store is not keeping up: Store fails the sales of product 7
/// only, so the first purchase (product 7) is deferred. A purchase of product 8 made at once
/// sells synchronously (200): the deferred sale has not waited `--defer-queue-after` (1 s), and a
/// deferral the worker settles at once must not send every purchase through the queue. Once the
/// deferred sale has waited 1 s, a purchase of product 8 is deferred behind it
/// (`store:behind-backlog`) without any `/sell` request of its own. Once Store sells again, all
/// complete, one sale each. Before this rule, the third purchase was sold (or tried) ahead of
/// the waiting one.
#[tokio::test]
async fn ft_does_not_sell_ahead_of_a_deferred_sale_that_waits() {
    let app = spawn_app(None).await;
    app.script().sell_fails_for = Some("7".to_owned());
    let (status, first) = app
        .buy(None, json!({"product": "7", "user": "first", "ft": true}))
        .await;
    assert_eq!(status, 202, "{first}");
    let (status, second) = app
        .buy(None, json!({"product": "8", "user": "second", "ft": true}))
        .await;
    assert_eq!(
        status, 200,
        "a deferral just made does not queue purchases: {second}"
    );

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, third) = app
        .buy(None, json!({"product": "8", "user": "third", "ft": true}))
        .await;
    assert_eq!(
        status, 202,
        "sold ahead of a waiting deferred sale: {third}"
    );
    assert_eq!(third["status"], "pending");
    let labels = third["degraded"].as_array().expect("degraded");
    for label in ["store:behind-backlog", "store:sale-deferred"] {
        assert!(labels.contains(&json!(label)), "{third}");
    }
    let third_id = third["order_id"].as_str().expect("order id").to_owned();
    // The order worker, woken by the deferrals, may try the queued sale at any moment (that is
    // its job); the request path must not have.
    let third_key = format!("order-{third_id}");
    let by_request_path: Vec<String> = app
        .script()
        .sell_request_ids
        .iter()
        .filter(|(key, id)| *key == third_key && !id.starts_with("order-worker-"))
        .map(|(_, id)| id.clone())
        .collect();
    assert!(
        by_request_path.is_empty(),
        "the request path tried to sell the third purchase: {by_request_path:?}"
    );

    app.script().sell_fails_for = None;
    let first_id = first["order_id"].as_str().expect("order id").to_owned();
    for id in [&first_id, &third_id] {
        wait_for_order(&app, id, "completed", |v| v["status"] == "completed").await;
    }
    assert_eq!(app.script().sales.len(), 3, "one sale per order");
}

/// Store fails every sale for good and the promise is 35 s. Two Store replicas give a drain-rate
/// prior of 2 × 0.9 = 1.8 sales/s (falling while the backlog waits and nothing completes) and a
/// dispersion of 10, so the promise admits 63 − 2.326·√630 = 4.6 deferrals at 99 %: the first
/// purchases are deferred, each with an expected completion within the promise; once the
/// backlog plus one more could not drain within it, every purchase is refused with
/// `503 deferral-refused` (step `sell`) and a `Retry-After` in whole seconds. Nothing is sold.
async fn refuses_to_defer_beyond_the_promise(database_url: Option<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_promising(database_url, dir, Arc::default(), Duration::from_secs(35)).await;
    app.script().sell_status = Some(503);

    let mut answers = Vec::new();
    for i in 0..10 {
        let response = app
            .http
            .post(format!("{}/buy", app.url))
            .json(&json!({"product": "7", "user": format!("u{i}"), "ft": true}))
            .send()
            .await
            .expect("post");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|v| {
            v.to_str()
                .expect("ascii")
                .parse::<u64>()
                .expect("whole seconds")
        });
        let body: Value = response.json().await.expect("json");
        answers.push((status, retry_after, body));
    }
    let accepted = answers.iter().take_while(|(s, _, _)| *s == 202).count();
    // At most 4 fit; the prior admits at least the first even after the few seconds of busy
    // time this loop can take (the rate falls to 1.5/s in 5 s: 52.5 − 2.326·√525 = 1.2).
    assert!((1..=4).contains(&accepted), "{answers:#?}");
    for (status, retry_after, body) in &answers[..accepted] {
        assert_eq!(*retry_after, None);
        assert_eq!(body["status"], "pending", "{status} {body}");
        let expected = body["expected_completion_seconds"]
            .as_f64()
            .expect("seconds");
        assert!(expected > 0.0 && expected <= 35.0, "{body}");
        for field in ["expected_completion_at", "promised_by"] {
            let at = body[field].as_str().expect(field);
            assert!(
                at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
                "{at}"
            );
        }
    }
    for (status, retry_after, body) in &answers[accepted..] {
        assert_eq!(
            *status, 503,
            "once refused, refused while nothing drains: {body}"
        );
        assert!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("/deferral-refused")),
            "{body}"
        );
        assert_eq!(body["step"], "sell");
        // (backlog + 1 − what fits) / rate, with backlog <= 4 and rate >= 18/40 per second.
        let retry_after = retry_after.expect("Retry-After on a refusal");
        assert!((1..=12).contains(&retry_after), "{retry_after}");
    }
    assert!(app.script().sales.is_empty(), "nothing sold");
    let backlog = app.get_json("/backlog").await;
    assert_eq!(backlog["pending_orders"], accepted as u64, "{backlog}");
    assert_eq!(backlog["promise_seconds"], 35.0);
    assert_eq!(
        backlog["drain_dispersion"], 10.0,
        "nothing drained yet: the prior"
    );
    assert!(
        backlog["admissible_orders"].as_u64() <= Some(accepted as u64),
        "one more would not fit: {backlog}"
    );
    let rate = backlog["drain_rate_per_second"].as_f64().expect("rate");
    assert!(rate > 0.0 && rate <= 1.8, "{backlog}");
    let projected = backlog["projected_drain_seconds"]
        .as_f64()
        .expect("projected");
    assert!(
        (projected - accepted as f64 / rate).abs() < 0.5,
        "{backlog}"
    );
}

/// A deferred order still pending past its promise says `promise_missed`, in
/// `GET /orders/{id}` and `GET /backlog`, and keeps saying so once it completes late. With a
/// 0.5 s promise no deferral is admitted, so the order is one whose sale is in doubt (Store
/// sold it but answered too late), deferred anyway; Store then fails until it is past due.
async fn a_deferred_order_past_its_promise_says_so(database_url: Option<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_promising(
        database_url,
        dir,
        Arc::default(),
        Duration::from_millis(500),
    )
    .await;
    app.script().sell_delay = Some(Duration::from_secs(2));
    let (status, body) = app.buy(None, ft_order()).await;
    assert_eq!(status, 202, "{body}");
    {
        let mut script = app.script();
        script.sell_delay = None;
        script.sell_status = Some(503);
    }
    let first = body["order_id"].as_str().expect("order id").to_owned();
    let view = order_view(&app, &first).await;
    assert_eq!(view["promise_missed"], false, "{view}");
    assert_eq!(
        view["expected_completion_at"],
        body["expected_completion_at"]
    );
    let late = wait_for_order(&app, &first, "past its promise", |v| {
        v["promise_missed"] == true
    })
    .await;
    assert_eq!(late["status"], "pending");
    let backlog = app.get_json("/backlog").await;
    assert!(
        backlog["pending_orders_past_promise"].as_i64() >= Some(1),
        "{backlog}"
    );

    // Store recovers: the late orders complete and still say they missed the promise.
    app.script().sell_status = None;
    let done = wait_for_order(&app, &first, "completed", |v| v["status"] == "completed").await;
    assert_eq!(done["promise_missed"], true, "{done}");
}

#[tokio::test]
async fn ft_refuses_to_defer_beyond_the_completion_promise_on_sqlite() {
    refuses_to_defer_beyond_the_promise(None).await;
}

#[tokio::test]
async fn ft_refuses_to_defer_beyond_the_completion_promise_on_postgres() {
    let url = ftshop_platform::db::testing::fresh_postgres_database()
        .await
        .expect("postgres");
    refuses_to_defer_beyond_the_promise(Some(url)).await;
}

#[tokio::test]
async fn a_deferred_order_past_its_promise_says_so_on_sqlite() {
    a_deferred_order_past_its_promise_says_so(None).await;
}

#[tokio::test]
async fn a_deferred_order_past_its_promise_says_so_on_postgres() {
    let url = ftshop_platform::db::testing::fresh_postgres_database()
        .await
        .expect("postgres");
    a_deferred_order_past_its_promise_says_so(Some(url)).await;
}

/// The order worker drains the backlog at Store's pace, not at a per-order backoff's: eight
/// deferred sales wait while Store fails until one of them has failed nine times (with the
/// exponential backoff per order the worker used to apply, the orders would by then wait up to
/// 10 s before their next attempts: 8-10 s measured); all complete within 3 s of Store
/// recovering (a breaker's 500 ms wait plus a few retries of 100-300 ms: about 0.6 s measured),
/// with one sale each. (While every Store breaker is open the
/// worker makes no attempt, so only the oldest order takes the probes.)
#[tokio::test]
async fn the_worker_drains_the_backlog_as_soon_as_store_recovers() {
    let app = spawn_app(None).await;
    app.script().sell_status = Some(503);
    let mut ids = Vec::new();
    for i in 0..8 {
        let (status, body) = app
            .buy(
                None,
                json!({"product": "7", "user": format!("w{i}"), "ft": true}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["order_id"].as_str().expect("order id").to_owned());
    }
    let db = ftshop_platform::db::Db::connect(None, app._dir.path(), "ecommerce")
        .await
        .expect("the test's database");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        use sqlx::Row;
        let row = sqlx::query("SELECT MAX(attempts) AS a FROM orders WHERE status = 'pending'")
            .fetch_one(&db.pool)
            .await
            .expect("attempts");
        let most: Option<i64> = row.try_get("a").expect("a");
        if most.is_some_and(|a| a >= 9) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never retried an order nine times: {most:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    app.script().sell_status = None;
    let recovered = std::time::Instant::now();
    for id in &ids {
        wait_for_order(&app, id, "completed", |v| v["status"] == "completed").await;
    }
    let drained_in = recovered.elapsed();
    assert!(
        drained_in < Duration::from_secs(3),
        "backlog drained {drained_in:?} after Store recovered"
    );
    assert_eq!(app.script().sales.len(), 8, "one sale per order");
}

/// A refusal says "nothing was sold", so it is only given when that is known. With a 0.5 s
/// promise no deferral fits (the prior drains 1.8 sales/s: one takes 0.56 s), so a purchase
/// Store answers 503 is refused; but a purchase whose sale Store made while its answer came too
/// late (the unit may be sold) is deferred anyway, marked `store:sale-in-doubt`, and completes
/// under its sale key with exactly that one sale. (The backlog is empty throughout: with
/// deferred sales waiting, a purchase does not try to sell at all, see
/// `ft_does_not_sell_ahead_of_a_waiting_deferred_sale`.)
#[tokio::test]
async fn a_sale_in_doubt_is_deferred_never_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_promising(None, dir, Arc::default(), Duration::from_millis(500)).await;
    app.script().sell_status = Some(503);
    let (status, refused) = app.buy(None, ft_order()).await;
    assert_eq!(
        status, 503,
        "Store said no sale, and no deferral fits the promise: {refused}"
    );
    assert!(app.script().sales.is_empty());

    // Store sells but answers after every deadline: the outcome of each attempt is unknown.
    {
        let mut script = app.script();
        script.sell_status = None;
        script.sell_delay = Some(Duration::from_secs(2));
    }
    let (status, doubtful) = app.buy(None, ft_order()).await;
    assert_eq!(status, 202, "a sale in doubt is never refused: {doubtful}");
    assert!(
        doubtful["degraded"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("store:sale-in-doubt"))),
        "{doubtful}"
    );
    assert!(doubtful["expected_completion_seconds"].as_f64() > Some(0.0));
    let key = format!("order-{}", doubtful["order_id"].as_str().expect("order id"));
    assert!(app.script().sales.contains_key(&key), "Store did sell it");

    app.script().sell_delay = None;
    let id = doubtful["order_id"].as_str().expect("order id");
    wait_for_order(&app, id, "completed", |v| v["status"] == "completed").await;
    let sales = app.script().sales.clone();
    assert_eq!(
        sales.len(),
        1,
        "one sale for the acknowledged order: {sales:?}"
    );
    let done = order_view(&app, doubtful["order_id"].as_str().expect("id")).await;
    assert_eq!(done["transaction_id"], json!(sales[&key]), "{done}");
}

#[tokio::test]
async fn ft_cancels_a_deferred_order_when_store_runs_out() {
    let app = spawn_app(None).await;
    app.script().sell_status = Some(503);
    let (status, body) = app.buy(None, ft_order()).await;
    assert_eq!(status, 202, "{body}");
    let order_id = body["order_id"].as_str().expect("order id").to_owned();
    app.script().sell_status = Some(409);
    let done = wait_for_order(&app, &order_id, "cancelled", |v| v["status"] == "cancelled").await;
    assert_eq!(done["cancel_reason"], "out-of-stock");
    assert!(
        app.script().bonus_calls.is_empty(),
        "no bonus for a cancelled order"
    );
}

#[tokio::test]
async fn ft_queues_the_bonus_when_fidelity_fails_and_delivers_it_once() {
    let app = spawn_app(None).await;
    app.script().bonus_status = Some(500);
    let (status, body) = app.buy(None, ft_order()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bonus"]["status"], "pending");
    assert!(
        body["degraded"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("fidelity:bonus-queued")))
    );
    let order_id = body["order_id"].as_str().expect("order id").to_owned();
    let backlog = app.get_json("/backlog").await;
    assert_eq!(backlog["outbox_bonuses"], 1, "the bonus is durably queued");

    app.script().bonus_status = None;
    wait_for_order(&app, &order_id, "credited", |v| {
        v["bonus_status"] == "credited"
    })
    .await;
    assert_eq!(app.script().bonus_calls.len(), 1);
}

/// The state of the breaker `name`, from `GET /breakers`.
async fn breaker_state(app: &TestApp, name: &str) -> String {
    let breakers = app.get_json("/breakers").await;
    breakers
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == name))
        .and_then(|b| b["state"].as_str())
        .unwrap_or_else(|| panic!("no breaker {name}: {breakers}"))
        .to_owned()
}

/// A latency window on Fidelity (every /bonus slower than the slow-call threshold, 80 % of the
/// 150 ms bonus timeout) opens its breaker on slow calls; from then on purchases queue the bonus
/// without calling Fidelity, also once the breaker's wait in open has passed: the trial calls
/// are the outbox dispatcher's, never a purchase's. When Fidelity is fast again the dispatcher's
/// trials close the breaker and purchases credit synchronously again.
#[tokio::test]
async fn ft_skips_a_slow_fidelity_once_its_slow_call_breaker_opens() {
    let app = spawn_app(None).await;
    app.script().bonus_delay = Some(Duration::from_millis(130));
    let mut opened = false;
    for _ in 0..10 {
        let (status, body) = app.buy(None, ft_order()).await;
        assert_eq!(status, 200, "{body}");
        if breaker_state(&app, "fidelity.bonus").await == "open" {
            opened = true;
            break;
        }
    }
    assert!(opened, "slow calls never opened Fidelity's breaker");
    let calls_when_opened = app.script().purchase_bonus_calls;

    // Purchases for longer than the breaker's 1 s wait in open.
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    let mut purchases = 0;
    while std::time::Instant::now() < until {
        let (status, body) = app.buy(None, ft_order()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["bonus"]["status"], "pending", "{body}");
        purchases += 1;
    }
    assert!(purchases >= 3, "only {purchases} purchases in 2.5 s");
    assert_eq!(
        app.script().purchase_bonus_calls,
        calls_when_opened,
        "a purchase called Fidelity while its breaker was not closed"
    );
    assert_ne!(breaker_state(&app, "fidelity.bonus").await, "closed");

    // Fidelity recovers: the dispatcher's deliveries close the breaker again.
    app.script().bonus_delay = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = app.buy(None, ft_order()).await;
        assert_eq!(status, 200, "{body}");
        if body["bonus"]["status"] == "credited" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the breaker never closed after Fidelity recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(breaker_state(&app, "fidelity.bonus").await, "closed");
}

#[tokio::test]
async fn ft_hedges_a_slow_product_request_to_the_other_replica() {
    let app = spawn_app(None).await;
    {
        let mut s = app.script();
        s.product_delay = Some(Duration::from_secs(5));
        s.slow_product_replica = Some(0);
    }
    // Whichever replica goes first, a purchase never waits for the slow one.
    for i in 0..4 {
        let started = std::time::Instant::now();
        let (status, body) = app
            .buy(
                None,
                json!({"product": format!("p{i}"), "user": "bob", "ft": true}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "purchase {i} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn ft_serves_the_last_known_rate_when_every_exchange_replica_fails() {
    let app = spawn_app(None).await;
    let (status, first) = app.buy(None, ft_order()).await;
    assert_eq!(status, 200, "{first}");
    app.script().exchange_status = Some(500);
    // Past the 200 ms rate TTL, every replica fails: the last known rate saves the purchase.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = app.buy(None, ft_order()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rate"], first["rate"]);
        if body["degraded"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("exchange:last-known-rate")))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never fell back to the last known rate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ft_passes_out_of_stock_through_without_deferring() {
    let app = spawn_app(None).await;
    app.script().sell_status = Some(409);
    let (status, problem) = app.buy(None, ft_order()).await;
    assert_eq!((status, problem["step"].as_str()), (409, Some("sell")));
}

#[tokio::test]
async fn admin_can_force_a_breaker_open_and_reset_it_only_with_the_token() {
    let app = spawn_app(None).await;
    let admin = |path: &str, token: Option<&str>| {
        let mut req = app.http.post(format!("{}{path}", app.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    // Breakers exist once the ft path has run.
    let (status, body) = app
        .buy(None, json!({"product": "7", "user": "bob", "ft": true}))
        .await;
    assert_eq!(status, 200, "{body}");

    let refused = admin("/admin/breakers/store-1.sell/force-open", None)
        .await
        .expect("post");
    assert_eq!(refused.status(), 401);
    let refused = admin("/admin/breakers/store-1.sell/force-open", Some("wrong"))
        .await
        .expect("post");
    assert_eq!(refused.status(), 401);
    let breakers = app.get_json("/breakers").await;
    assert!(breakers.to_string().contains("closed"), "{breakers}");
    assert!(!breakers.to_string().contains("forced_open"), "{breakers}");

    let forced = admin("/admin/breakers/store-1.sell/force-open", Some(ADMIN_TOKEN))
        .await
        .expect("post");
    assert_eq!(forced.status(), 200);
    let forced: Value = forced.json().await.expect("json");
    assert!(forced.to_string().contains("forced_open"), "{forced}");

    // Every sale now goes to store-2 (replica 1).
    let before = app.script().sells_by_replica;
    for user in ["c1", "c2", "c3", "c4"] {
        let (status, body) = app
            .buy(None, json!({"product": "7", "user": user, "ft": true}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let after = app.script().sells_by_replica;
    assert_eq!(
        after[0], before[0],
        "replica 0 sold while its breaker was forced open"
    );
    assert_eq!(after[1], before[1] + 4, "replica 1 took every sale");

    let reset = admin("/admin/breakers/store-1.sell/reset", Some(ADMIN_TOKEN))
        .await
        .expect("post");
    assert_eq!(reset.status(), 200);
    let reset: Value = reset.json().await.expect("json");
    assert!(reset.to_string().contains("closed"), "{reset}");
    let unknown = admin("/admin/breakers/nope/reset", Some(ADMIN_TOKEN))
        .await
        .expect("post");
    assert_eq!(unknown.status(), 404);
    let all = admin("/admin/breakers/reset", Some(ADMIN_TOKEN))
        .await
        .expect("post");
    assert_eq!(all.status(), 200);
}

#[tokio::test]
async fn a_restarted_ecommerce_still_has_the_last_known_rate() {
    let first = spawn_app(None).await;
    let (status, body) = first
        .buy(None, json!({"product": "7", "user": "dana", "ft": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rate"], 5.0);
    // The rate is remembered in the background; give it a moment (poll, bounded).
    let db = first._dir.path().join("ecommerce.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read(&db).unwrap_or_default();
        let wal = std::fs::read(first._dir.path().join("ecommerce.db-wal")).unwrap_or_default();
        if text.windows(7).any(|w| w == b"USD-BRL") || wal.windows(7).any(|w| w == b"USD-BRL") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rate never remembered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new ecommerce process on the same database, with every Exchange replica failing.
    first.script().exchange_status = Some(503);
    let TestApp { script, _dir, .. } = first;
    let restarted = spawn_app_in(None, _dir, script).await;
    let (status, body) = restarted
        .buy(None, json!({"product": "7", "user": "erin", "ft": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rate"], 5.0);
    assert!(
        body["degraded"]
            .to_string()
            .contains("exchange:last-known-rate"),
        "{body}"
    );

    // Without a remembered rate, the same failure is a 502 naming the step.
    let fresh = spawn_app(None).await;
    fresh.script().exchange_status = Some(503);
    let (status, body) = fresh
        .buy(None, json!({"product": "7", "user": "finn", "ft": true}))
        .await;
    assert_eq!(body["step"], "exchange", "{status} {body}");
}

// ---------------------------------------------------------------------------------------------
// Concurrent identical requests (issue: check-then-act on idempotency). For every state an
// order can be in, N requests with one Idempotency-Key are released at one instant: exactly one
// of them may drive the order, every answer is the stored answer or `409 request-in-progress`,
// and every side effect (sale, bonus) happens at most once.

const BURST: usize = 10;

/// Sends `BURST` identical purchases released together by a barrier; returns their answers.
/// Each request has its own client whose connection is opened first (a `/health/live`), so the
/// purchases leave within microseconds of each other instead of one TCP handshake apart.
async fn burst(app: &TestApp, key: &str, body: Value) -> Vec<(u16, Value)> {
    let mut clients = Vec::new();
    for _ in 0..BURST {
        let client = reqwest::Client::new();
        let warm = client.get(format!("{}/health/live", app.url)).send().await;
        assert!(warm.is_ok_and(|r| r.status().is_success()));
        clients.push(client);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(BURST));
    let requests = clients.into_iter().map(|client| {
        let barrier = barrier.clone();
        let body = body.clone();
        let url = format!("{}/buy", app.url);
        let key = key.to_owned();
        tokio::spawn(async move {
            barrier.wait().await;
            let response = client
                .post(url)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .expect("post");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json body"))
        })
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.expect("request task"))
        .collect()
}

/// Every answer is `expected` (status and body) or `409 request-in-progress`; at least one is
/// `expected`.
fn same_answer_or_in_progress(answers: &[(u16, Value)], expected: &(u16, Value)) {
    let mut matched = 0;
    for answer in answers {
        if answer == expected {
            matched += 1;
        } else {
            assert_eq!(
                answer.0, 409,
                "neither the stored answer nor 409: {answer:?}"
            );
            assert!(
                answer.1["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("/request-in-progress")),
                "a 409 that is not request-in-progress: {answer:?}"
            );
        }
    }
    assert!(matched >= 1, "no request got the answer: {answers:?}");
}

/// The answers of a burst on a key whose order is being driven right now: one driver, the
/// others 409 or (if they came after it finished) the very same answer.
fn one_driver(answers: &[(u16, Value)]) -> (u16, Value) {
    let done: Vec<_> = answers.iter().filter(|(s, _)| *s != 409).collect();
    assert!(!done.is_empty(), "nobody drove the order: {answers:?}");
    let first = done[0].clone();
    same_answer_or_in_progress(answers, &first);
    first
}

#[tokio::test]
async fn a_burst_on_a_new_key_makes_one_order_and_one_sale() {
    let app = spawn_app(None).await;
    app.script().product_delay = Some(Duration::from_millis(30));
    let answers = burst(&app, "burst-new", order()).await;
    let (status, body) = one_driver(&answers);
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.script().sales.len(), 1);
    assert_eq!(app.script().sell_calls, 1, "one request drove the order");
    assert_eq!(app.script().bonus_calls.len(), 1, "one bonus");
}

#[tokio::test]
async fn a_burst_replaying_a_failed_order_redrives_it_once() {
    let app = spawn_app(None).await;
    // Three rounds, three keys: a race that a lucky schedule hides once is not hidden thrice.
    for (round, key) in ["burst-failed-1", "burst-failed-2", "burst-failed-3"]
        .into_iter()
        .enumerate()
    {
        app.script().product_delay = None;
        app.script().sell_status = Some(500);
        let (status, problem) = app.buy(Some(key), order()).await;
        assert_eq!((status, problem["step"].as_str()), (502, Some("sell")));
        let calls_before = app.script().sell_calls;

        app.script().sell_status = None;
        // Each driver spends a while in the product call, so without a compare-and-set claim
        // every request of the burst that read `failed` drives the order.
        app.script().product_delay = Some(Duration::from_millis(50));
        let answers = burst(&app, key, order()).await;
        let (status, body) = one_driver(&answers);
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            app.script().sell_calls - calls_before,
            1,
            "exactly one request re-drove the failed order: {answers:?}"
        );
        assert_eq!(app.script().sales.len(), round + 1, "one sale per order");
        assert_eq!(
            app.script().bonus_calls.len(),
            round + 1,
            "one bonus per order"
        );
        let order_id = body["order_id"].as_str().expect("order id");
        let view = order_view(&app, order_id).await;
        assert_eq!(view["status"], "completed", "{view}");

        // Once completed, a second burst replays the same answer with no call at all.
        let calls = app.script().sell_calls;
        let again = burst(&app, key, order()).await;
        assert!(
            again.iter().all(|a| *a == (status, body.clone())),
            "{again:?}"
        );
        assert_eq!(app.script().sell_calls, calls);
    }
}

#[tokio::test]
async fn a_burst_on_a_rejected_order_replays_the_rejection() {
    let app = spawn_app(None).await;
    app.script().sell_status = Some(409);
    let first = app.buy(Some("burst-rejected"), order()).await;
    assert_eq!(first.0, 409, "{first:?}");
    app.script().sell_status = None;
    let calls = app.script().sell_calls;
    let answers = burst(&app, "burst-rejected", order()).await;
    assert!(answers.iter().all(|a| *a == first), "{answers:?}");
    assert_eq!(
        app.script().sell_calls,
        calls,
        "a final answer is never re-driven"
    );
}

#[tokio::test]
async fn a_burst_on_a_pending_order_replays_the_202_and_it_completes_once() {
    let app = spawn_app(None).await;
    app.script().sell_status = Some(500);
    let first = app.buy(Some("burst-pending"), ft_order()).await;
    assert_eq!(first.0, 202, "{first:?}");
    let answers = burst(&app, "burst-pending", ft_order()).await;
    assert!(answers.iter().all(|a| *a == first), "{answers:?}");

    app.script().sell_status = None;
    let order_id = first.1["order_id"].as_str().expect("order id").to_owned();
    let view = wait_for_order(&app, &order_id, "completed", |v| {
        v["status"] == "completed" && v["bonus_status"] == "credited"
    })
    .await;
    // Once completed, the key answers the completion (the stored answer follows the order to
    // its final state), the same for every request of a burst; one sale, one bonus in all.
    let answers = burst(&app, "burst-pending", ft_order()).await;
    assert_eq!(answers[0].0, 200, "{answers:?}");
    assert_eq!(answers[0].1["transaction_id"], view["transaction_id"]);
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(app.script().sales.len(), 1);
    assert_eq!(
        app.script().bonus_calls,
        vec![(
            "bob".to_owned(),
            50,
            view["transaction_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        )]
    );
}

#[tokio::test]
async fn a_burst_on_a_cancelled_order_replays_its_answer() {
    let app = spawn_app(None).await;
    app.script().sell_status = Some(503);
    let first = app.buy(Some("burst-cancelled"), ft_order()).await;
    assert_eq!(first.0, 202, "{first:?}");
    let order_id = first.1["order_id"].as_str().expect("order id").to_owned();
    app.script().sell_status = Some(409);
    wait_for_order(&app, &order_id, "cancelled", |v| v["status"] == "cancelled").await;
    let calls = app.script().sell_calls;
    let answers = burst(&app, "burst-cancelled", ft_order()).await;
    // The stored answer of a cancelled order is its cancellation, the same for everyone.
    assert_eq!(answers[0].0, 409, "{answers:?}");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(
        app.script().sell_calls,
        calls,
        "a cancelled order is never re-driven"
    );
    assert!(app.script().sales.is_empty());
}

#[tokio::test]
async fn an_abandoned_order_is_driven_once_by_a_burst_of_replays_and_the_worker() {
    let app = spawn_app(None).await;
    app.script().sell_status = Some(500);
    let (status, body) = app.buy(Some("burst-abandoned"), ft_order()).await;
    assert_eq!(status, 202, "{body}");
    let order_id = body["order_id"].as_str().expect("order id").to_owned();
    // Make it look like its process died mid-purchase: `processing`, untouched for long, no
    // answer stored. Both the order worker and every replay of the key may now take it over.
    let db = ftshop_platform::db::Db::connect(None, app._dir.path(), "ecommerce")
        .await
        .expect("db");
    sqlx::query(
        "UPDATE orders SET status = 'processing', updated_at = 0, next_attempt_at = NULL, \
         response = NULL, response_status = NULL WHERE order_id = $1",
    )
    .bind(order_id.clone())
    .execute(&db.pool)
    .await
    .expect("abandon the order");
    app.script().product_delay = Some(Duration::from_millis(50));
    app.script().sell_status = None;
    let calls = app.script().sell_calls;
    let answers = burst(&app, "burst-abandoned", ft_order()).await;
    for (status, body) in &answers {
        assert!(
            *status == 409 || (*status == 200 && body["order_id"] == order_id.as_str()),
            "{answers:?}"
        );
    }
    let view = wait_for_order(&app, &order_id, "completed", |v| {
        v["status"] == "completed" && v["bonus_status"] == "credited"
    })
    .await;
    assert_eq!(
        app.script().sell_calls - calls,
        1,
        "one holder drove the abandoned order: {answers:?}"
    );
    assert_eq!(app.script().bonus_calls.len(), 1, "one bonus: {view}");
}

/// Issue 14, class 9: with ecommerce's PostgreSQL cut (a TCP proxy the test cuts and
/// restores), a purchase fails with 503 problem+json and `Retry-After`, and once the `db`
/// breaker is open it does so well under the pool's 5 s acquire timeout, selling nothing;
/// when the database returns, purchases go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_database_fails_purchases_fast_sells_nothing_and_recovers() {
    use ftshop_platform::db::testing::{TcpProxy, fresh_postgres_database};
    let url = fresh_postgres_database().await.expect("postgres");
    let (proxy, through) = TcpProxy::in_front_of(&url).await.expect("proxy");
    let app = spawn_app(Some(through)).await;
    let (status, body) = app.buy(Some("before-outage"), order()).await;
    assert_eq!(status, 200, "{body}");

    proxy.cut();
    let buy = |key: String| {
        let request = app
            .http
            .post(format!("{}/buy", app.url))
            .header("idempotency-key", key)
            .json(&order());
        async move {
            let started = std::time::Instant::now();
            let response = request.send().await.expect("post");
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: Value = response.json().await.expect("json body");
            (status, retry_after, body, started.elapsed())
        }
    };
    let first = futures::future::join_all((0..6).map(|i| buy(format!("cut-{i}")))).await;
    for (status, retry_after, body, _) in &first {
        assert_eq!(*status, 503, "{body}");
        assert!(retry_after.is_some(), "{body}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (status, retry_after, body) = loop {
        let (status, retry_after, body, elapsed) = buy("during-outage".to_owned()).await;
        if elapsed < Duration::from_secs(1) {
            break (status, retry_after, body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no purchase failed fast within 60 s"
        );
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/database-unavailable")),
        "{body}"
    );
    assert!(retry_after.is_some(), "{body}");
    assert_eq!(
        app.script().sell_calls,
        1,
        "nothing sold while the database is away"
    );

    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body, _) = buy("after-outage".to_owned()).await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no purchase went through within 60 s of the database's return: {body}"
        );
        // A poll interval, not a wait for the condition.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One more sale in all. A first "after-outage" attempt may have sold and then failed to
    // record its order while the breaker was still closing; its replay re-drives the order
    // under the same Store key, so Store may be called twice but sells once.
    assert_eq!(app.script().sales.len(), 2, "one sale after the outage");
    let txs: std::collections::HashSet<_> = app.script().sales.values().cloned().collect();
    assert_eq!(txs.len(), 2, "two distinct transactions in all");
}

// ---- limits that disagree between services (issue 14, class 6) -------------------------------

/// A price whose bonus Fidelity refuses (0.49 USD gives 0 points; 1,000,000.50 USD gives
/// 1,000,001, over its maximum) is refused before anything is sold, on both paths: 502
/// `outside-limits` naming the product step, no sale, no bonus, nothing in the outbox; the order
/// is `failed` at step `product`. (It used to sell and then answer 502 with ft=false, and 200
/// with a bonus stuck in the outbox with ft=true.)
#[tokio::test]
async fn a_product_whose_bonus_fidelity_refuses_is_refused_before_any_sale() {
    let app = spawn_app(None).await;
    // One product id per price: the ft path caches the catalog.
    for (product, cents, points) in [("7", 49, 0), ("8", 100_000_050, 1_000_001)] {
        app.script().price_cents = Some(cents);
        for ft in [false, true] {
            let key = format!("limits-{cents}-{ft}");
            let (status, body) = app
                .buy(
                    Some(&key),
                    json!({"product": product, "user": "alice", "ft": ft}),
                )
                .await;
            assert_eq!(status, 502, "{cents} cents, ft={ft}: {body}");
            assert_eq!(body["step"], "product", "{body}");
            assert!(
                body["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("outside-limits")),
                "{body}"
            );
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(&format!("product {product:?}"))
                    && detail.contains(&format!("bonus of {points} points")),
                "{detail}"
            );
            // The order is `failed`, not `rejected`: a replay re-drives it (and would sell once
            // the catalog is corrected); here it is refused again, still before any sale.
            let (again, replayed) = app
                .buy(
                    Some(&key),
                    json!({"product": product, "user": "alice", "ft": ft}),
                )
                .await;
            assert_eq!((again, &replayed["step"]), (502, &json!("product")));
        }
    }
    assert_eq!(app.script().sell_calls, 0, "nothing was sold");
    assert_eq!(app.script().bonus_attempts, 0, "no bonus was sent");
    let backlog = app.get_json("/backlog").await;
    assert_eq!(backlog["outbox_bonuses"], 0, "{backlog}");
    assert_eq!(backlog["dead_letter_bonuses"], 0, "{backlog}");

    // The edges' neighbours sell (0.50 USD is 1 point, 1,000,000.49 USD is 1,000,000).
    for (product, cents, points) in [("9", 50, 1), ("10", 100_000_049, 1_000_000)] {
        app.script().price_cents = Some(cents);
        for ft in [false, true] {
            let (status, body) = app
                .buy(None, json!({"product": product, "user": "alice", "ft": ft}))
                .await;
            assert_eq!(status, 200, "{cents} cents, ft={ft}: {body}");
            assert_eq!(
                body["bonus"],
                json!({"points": points, "status": "credited"})
            );
        }
    }
}

/// An outbox entry Fidelity refuses with a final 4xx goes to the dead letters after one
/// dispatcher attempt (it used to be rescheduled hourly, forever): it is no longer due, the
/// order says `dead-letter`, and /backlog counts it apart from the bonuses still in delivery.
async fn a_final_refusal_is_dead_lettered_after_one_attempt(app: TestApp) {
    app.script().bonus_status = Some(409);
    let (status, body) = app.buy(None, ft_order()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bonus"]["status"], "pending", "{body}");
    let order_id = body["order_id"].as_str().expect("order id").to_owned();
    let transaction_id = body["transaction_id"].as_str().expect("tx").to_owned();

    let view = wait_for_order(&app, &order_id, "dead-lettered", |v| {
        v["bonus_status"] == "dead-letter"
    })
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    let (attempts, dead_lettered_at) = app.outbox_row(&transaction_id).await;
    assert_eq!(attempts, 1, "one dispatcher attempt");
    assert!(dead_lettered_at.is_some(), "dead-lettered, not rescheduled");
    assert_eq!(
        app.script().bonus_attempts,
        2,
        "the /buy attempt and one dispatcher attempt"
    );

    let backlog = app.get_json("/backlog").await;
    assert_eq!(backlog["dead_letter_bonuses"], 1, "{backlog}");
    assert!(
        backlog["oldest_dead_letter_bonus_age_seconds"]
            .as_f64()
            .is_some_and(|age| age >= 0.0),
        "{backlog}"
    );
    assert_eq!(backlog["outbox_bonuses"], 0, "{backlog}");

    // Fidelity would now accept it, but a dead letter is never retried by itself: another
    // purchase's bonus is delivered meanwhile, this one is not.
    app.script().bonus_status = Some(500);
    let (status, second) = app.buy(None, ft_order()).await;
    assert_eq!(status, 200, "{second}");
    let second_id = second["order_id"].as_str().expect("order id").to_owned();
    app.script().bonus_status = None;
    wait_for_order(&app, &second_id, "credited", |v| {
        v["bonus_status"] == "credited"
    })
    .await;
    assert_eq!(
        order_view(&app, &order_id).await["bonus_status"],
        "dead-letter"
    );
    assert_eq!(app.outbox_row(&transaction_id).await.0, 1);
    assert!(
        app.script()
            .bonus_calls
            .iter()
            .all(|(_, _, tx)| *tx != transaction_id),
        "the dead letter was not sent again"
    );
}

#[tokio::test]
async fn a_final_refusal_is_dead_lettered_after_one_attempt_on_sqlite() {
    a_final_refusal_is_dead_lettered_after_one_attempt(spawn_app(None).await).await;
}

#[tokio::test]
async fn a_final_refusal_is_dead_lettered_after_one_attempt_on_postgres() {
    let url = ftshop_platform::db::testing::fresh_postgres_database()
        .await
        .expect("postgres");
    a_final_refusal_is_dead_lettered_after_one_attempt(spawn_app(Some(url)).await).await;
}

/// A 4xx that can heal (429 Too Many Requests) is retried with backoff, never dead-lettered.
#[tokio::test]
async fn a_refusal_that_can_heal_is_retried_not_dead_lettered() {
    let app = spawn_app(None).await;
    app.script().bonus_status = Some(429);
    let (status, body) = app.buy(None, ft_order()).await;
    assert_eq!(status, 200, "{body}");
    let order_id = body["order_id"].as_str().expect("order id").to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while app.script().bonus_attempts < 3 {
        assert!(std::time::Instant::now() < deadline, "not retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(order_view(&app, &order_id).await["bonus_status"], "pending");
    app.script().bonus_status = None;
    wait_for_order(&app, &order_id, "credited", |v| {
        v["bonus_status"] == "credited"
    })
    .await;
    assert_eq!(app.get_json("/backlog").await["dead_letter_bonuses"], 0);
}
