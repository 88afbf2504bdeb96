//! The control room of `ftshop up`, over HTTP on the real binary: every endpoint refuses a
//! request without the login token or its session (401, problem+json for the API), refuses bad
//! input with problem+json, and a refused action changes nothing; the actions reach the services
//! through their admin API. (The page itself is tested in a browser: tests/browser/.)

mod common;

use std::time::{Duration, Instant};

use common::Suite;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

/// The control room of a running suite: its base URL and login token, from up.json.
struct Room {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Room {
    fn of(suite: &Suite) -> Room {
        let up = suite.up_file().expect("up.json");
        let url = up["control_room"]
            .as_str()
            .expect("up.json has control_room")
            .to_owned();
        let (base, token) = url.split_once("/?token=").expect("URL with ?token=");
        Room {
            base: base.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        }
    }

    fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// As the page would: with the login token as a bearer token.
    fn authed(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path).bearer_auth(&self.token)
    }

    async fn state(&self) -> Value {
        let response = self
            .authed("GET", "/api/state")
            .send()
            .await
            .expect("state");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("state json")
    }

    async fn process(&self, name: &str) -> Value {
        let state = self.state().await;
        state["processes"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no process {name}"))
    }
}

/// Every route of the control room, with a body that would be valid.
fn every_endpoint() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("GET", "/", None),
        ("GET", "/app.js", None),
        ("GET", "/app.css", None),
        ("GET", "/api/state", None),
        ("GET", "/api/events", None),
        (
            "GET",
            "/api/purchases/0190f3a2-0000-7000-8000-000000000000",
            None,
        ),
        ("POST", "/api/processes/store-1/kill", None),
        ("POST", "/api/processes/store-1/restart", None),
        ("POST", "/api/breakers/store-1.sell/force-open", None),
        ("POST", "/api/breakers/store-1.sell/reset", None),
        ("POST", "/api/breakers/reset", None),
        (
            "POST",
            "/api/faults/rules",
            Some(
                json!({"service": "store", "route": "/sell", "kind": "error", "probability": 1.0}),
            ),
        ),
        (
            "PUT",
            "/api/faults/store-1",
            Some(json!({"rules": [{"route": "/sell", "kind": "error", "probability": 1.0}]})),
        ),
        (
            "POST",
            "/api/faults/preset",
            Some(json!({"name": "default"})),
        ),
        (
            "POST",
            "/api/traffic/start",
            Some(json!({"users": 1, "think_ms": 0, "ft": "on", "duration_s": 1})),
        ),
        ("POST", "/api/traffic/stop", None),
        (
            "POST",
            "/api/buy",
            Some(json!({"product": "1", "user": "intruder", "ft": true})),
        ),
        ("POST", "/api/invariants", None),
    ]
}

/// What a refused action could have changed: pids, restarts, rules, breakers, purchases, load.
async fn observable(suite: &Suite, room: &Room) -> Value {
    let state = room.state().await;
    let processes: Vec<Value> = state["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| json!([p["name"], p["pid"], p["restarts"]]))
        .collect();
    let mut rules = Vec::new();
    for name in [
        "ecommerce",
        "store-1",
        "store-2",
        "exchange-1",
        "exchange-2",
        "fidelity",
    ] {
        let faults: Value = suite
            .http
            .get(format!("{}/admin/faults", suite.url(name)))
            .bearer_auth(common::ADMIN_TOKEN)
            .send()
            .await
            .expect("faults")
            .json()
            .await
            .expect("faults json");
        rules.push(json!([name, faults["rules"]]));
    }
    let breakers: Value =
        common::get_json(suite, format!("{}/breakers", suite.url("ecommerce"))).await;
    let breakers: Vec<Value> = breakers
        .as_array()
        .expect("breakers")
        .iter()
        .map(|b| json!([b["name"], b["state"]]))
        .collect();
    let purchases: Value = suite
        .http
        .get(format!(
            "{}/admin/purchases?limit=500",
            suite.url("ecommerce")
        ))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .expect("purchases")
        .json()
        .await
        .expect("purchases json");
    json!({
        "processes": processes,
        "rules": rules,
        "breakers": breakers,
        "purchases": purchases.as_array().map(Vec::len),
        "traffic": state["traffic"]["state"],
    })
}

async fn assert_problem(response: reqwest::Response, status: StatusCode, what: &str) -> Value {
    assert_eq!(response.status(), status, "{what}");
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{what}: content-type {content_type}"
    );
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(body["status"], status.as_u16(), "{what}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {body}"
    );
    body
}

/// Without the login token or its session cookie (or with wrong ones), every page, stream and
/// action is 401 (problem+json on the API), and none of the refused actions changed anything.
/// The token buys an HttpOnly, SameSite=Strict session cookie and a redirect that drops it from
/// the address bar; the admin token appears nowhere the page can read.
#[tokio::test]
async fn every_endpoint_needs_the_login_token_or_its_session_and_a_refusal_changes_nothing() {
    let suite = Suite::start(&[]).await;
    let room = Room::of(&suite);
    let before = observable(&suite, &room).await;

    let wrong_cookie = "ftshop_control=00000000000000000000000000000000000000000000000000000000";
    for (method, path, body) in every_endpoint() {
        for (label, auth) in [
            ("no credentials", None),
            (
                "a wrong bearer token",
                Some(("authorization", "Bearer not-the-token")),
            ),
            ("a wrong session cookie", Some(("cookie", wrong_cookie))),
            (
                "the admin token instead of the login token",
                Some(("authorization", "Bearer e2e-admin-token-0123456789abcdef")),
            ),
        ] {
            let mut request = room.request(method, path);
            if let Some((name, value)) = auth {
                request = request.header(name, value);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.expect("send");
            let what = format!("{method} {path} with {label}");
            if path.starts_with("/api/") {
                assert_problem(response, StatusCode::UNAUTHORIZED, &what).await;
            } else {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
            }
        }
    }
    let wrong_login = room
        .request("GET", "/?token=0123456789abcdef0123456789abcdef")
        .send()
        .await
        .expect("login");
    assert_eq!(wrong_login.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong_login.headers().get(SET_COOKIE).is_none());

    let after = observable(&suite, &room).await;
    assert_eq!(before, after, "a refused request changed the suite");

    // The token buys a session cookie and a redirect to the page without the token.
    let login = room
        .request("GET", &format!("/?token={}", room.token))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    assert_eq!(login.headers()[LOCATION], "/");
    let cookie = login.headers()[SET_COOKIE]
        .to_str()
        .expect("cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().expect("pair").to_owned();
    for path in ["/", "/app.js", "/app.css", "/api/state"] {
        let response = room
            .request("GET", path)
            .header(COOKIE, &session)
            .send()
            .await
            .expect("page");
        assert_eq!(response.status(), StatusCode::OK, "{path} with the session");
        if path == "/" {
            let csp = response.headers()["content-security-policy"]
                .to_str()
                .expect("csp")
                .to_owned();
            assert!(csp.contains("default-src 'self'"), "{csp}");
        }
        let text = response.text().await.expect("body");
        assert!(
            !text.contains(common::ADMIN_TOKEN),
            "{path} shows the admin token"
        );
    }
    // A restarted control room (same data dir) accepts the same login URL and session.
    let dir = suite.stop_and_keep_data();
    let suite = Suite::start_in(dir, &[]).await;
    let again = Room::of(&suite);
    assert_eq!(
        again.token, room.token,
        "the login token survives a restart"
    );
    let response = again
        .request("GET", "/api/state")
        .header(COOKIE, &session)
        .send()
        .await
        .expect("state");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the session survives a restart"
    );
}

/// Bad input to every action is a problem+json 4xx, and none of it changes the suite; so are
/// forms from another site (wrong content type, foreign Origin).
#[tokio::test]
async fn bad_input_is_refused_with_problem_json_and_changes_nothing() {
    let suite = Suite::start(&[]).await;
    let room = Room::of(&suite);
    let before = observable(&suite, &room).await;

    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let cases: Vec<(&str, &str, Option<Value>, StatusCode)> = vec![
        (
            "POST",
            "/api/processes/nobody/kill",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/processes/store-1/explode",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/breakers/store-1.sell/explode",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/breakers/no-such.sell/force-open",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/breakers/bad%20name!/reset",
            None,
            unprocessable,
        ),
        (
            "POST",
            "/api/faults/rules",
            Some(
                json!({"service": "store", "route": "/sell", "kind": "error", "probability": 2.0}),
            ),
            unprocessable,
        ),
        (
            "POST",
            "/api/faults/rules",
            Some(json!({"service": "store", "route": "sell", "kind": "error", "probability": 1.0})),
            unprocessable,
        ),
        (
            "POST",
            "/api/faults/rules",
            Some(json!({"route": "/sell", "kind": "error", "probability": 1.0})),
            unprocessable,
        ),
        (
            "POST",
            "/api/faults/rules",
            Some(
                json!({"service": "store", "instance": "store-9", "route": "/sell", "kind": "error", "probability": 1.0}),
            ),
            unprocessable,
        ),
        (
            "POST",
            "/api/faults/rules",
            Some(
                json!({"service": "store", "route": "/sell", "kind": "meteor", "probability": 1.0}),
            ),
            unprocessable,
        ),
        (
            "PUT",
            "/api/faults/store-1",
            Some(json!({"rules": [{"route": "/sell", "kind": "error", "probability": -1.0}]})),
            unprocessable,
        ),
        (
            "PUT",
            "/api/faults/store-1",
            Some(json!({"rulez": []})),
            unprocessable,
        ),
        (
            "PUT",
            "/api/faults/nobody",
            Some(json!({"rules": []})),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/faults/preset",
            Some(json!({"name": "meteor"})),
            unprocessable,
        ),
        (
            "POST",
            "/api/faults/preset",
            Some(json!({"name": "exchange-down", "seconds": 0})),
            unprocessable,
        ),
        (
            "POST",
            "/api/traffic/start",
            Some(json!({"users": 0, "think_ms": 0, "ft": "on", "duration_s": 5})),
            unprocessable,
        ),
        (
            "POST",
            "/api/traffic/start",
            Some(json!({"users": 1, "think_ms": 0, "ft": "maybe", "duration_s": 5})),
            unprocessable,
        ),
        (
            "POST",
            "/api/traffic/start",
            Some(json!({"users": 1, "think_ms": 0, "ft": "on", "duration_s": 100000})),
            unprocessable,
        ),
        ("POST", "/api/traffic/stop", None, StatusCode::CONFLICT),
        (
            "POST",
            "/api/buy",
            Some(json!({"product": "no such id!", "user": "u"})),
            unprocessable,
        ),
        (
            "POST",
            "/api/buy",
            Some(json!({"product": "1"})),
            unprocessable,
        ),
        ("GET", "/api/purchases/not%20an%20id", None, unprocessable),
        ("GET", "/api/nothing-here", None, StatusCode::NOT_FOUND),
    ];
    for (method, path, body, status) in cases {
        let mut request = room.authed(method, path);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.expect("send");
        assert_problem(response, status, &format!("{method} {path} {body:?}")).await;
    }
    // Malformed JSON.
    let response = room
        .authed("POST", "/api/faults/rules")
        .header(CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    let status = response.status();
    assert!(
        status == StatusCode::BAD_REQUEST || status == unprocessable,
        "{status}"
    );
    assert_problem(response, status, "malformed JSON").await;
    // A form from another site: wrong content type, or a foreign Origin.
    let response = room
        .authed("POST", "/api/processes/store-1/kill")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .expect("send");
    assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "form post").await;
    let response = room
        .authed("POST", "/api/processes/store-1/kill")
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("send");
    assert_problem(response, StatusCode::FORBIDDEN, "foreign origin").await;

    let after = observable(&suite, &room).await;
    assert_eq!(before, after, "a refused action changed the suite");
}

/// The actions reach the services: a rule set and removed, a breaker forced open and reset, a
/// purchase with its story, a killed process seen down within a second and restarted, a short
/// load run with live series, the invariants over it, and the event stream.
#[tokio::test]
async fn actions_reach_the_services_and_the_state_follows() {
    let suite = Suite::start(&[]).await;
    let room = Room::of(&suite);
    let ok = |r: &reqwest::Response, what: &str| {
        assert!(r.status().is_success(), "{what}: {}", r.status())
    };

    // Faults: add on store-1 only, then remove through the process's rule list.
    let rule = json!({"service": "store", "instance": "store-1", "route": "/sell", "method": "POST", "kind": "error", "probability": 1.0});
    let response = room
        .authed("POST", "/api/faults/rules")
        .json(&rule)
        .send()
        .await
        .expect("rule");
    ok(&response, "add rule");
    let store_faults = |name: &'static str| {
        let (http, url) = (suite.http.clone(), suite.url(name));
        async move {
            let faults: Value = http
                .get(format!("{url}/admin/faults"))
                .bearer_auth(common::ADMIN_TOKEN)
                .send()
                .await
                .expect("faults")
                .json()
                .await
                .expect("json");
            faults["rules"].as_array().cloned().unwrap_or_default()
        }
    };
    assert_eq!(store_faults("store-1").await.len(), 1);
    assert_eq!(store_faults("store-2").await.len(), 0);

    // A purchase with ft=true; its story has the sell step, and names store-1's error when it
    // was tried first.
    let response = room
        .authed("POST", "/api/buy")
        .json(&json!({"product": "1", "user": "http-test", "ft": true}))
        .send()
        .await
        .expect("buy");
    ok(&response, "buy");
    let bought: Value = response.json().await.expect("json");
    assert!(
        matches!(bought["status"].as_u64(), Some(200 | 202)),
        "{bought}"
    );
    let attempts = bought["story"]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(attempts.iter().any(|a| a["step"] == "sell"), "{bought}");
    if attempts
        .iter()
        .any(|a| a["step"] == "sell" && a["replica"] == 1)
    {
        assert!(
            bought["story"]["degraded"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "store:failover")),
            "{bought}"
        );
    }
    let order_id = bought["answer"]["order_id"].as_str().expect("order id");
    let response = room
        .authed("GET", &format!("/api/purchases/{order_id}"))
        .send()
        .await
        .expect("story");
    ok(&response, "story");

    let response = room
        .authed("PUT", "/api/faults/store-1")
        .json(&json!({"rules": []}))
        .send()
        .await
        .expect("put");
    ok(&response, "remove rules");
    assert!(store_faults("store-1").await.is_empty());

    // Breakers: force open, then reset.
    let breaker_state = || {
        let (http, url) = (suite.http.clone(), suite.url("ecommerce"));
        async move {
            let list: Value = http
                .get(format!("{url}/breakers"))
                .send()
                .await
                .expect("b")
                .json()
                .await
                .expect("json");
            list.as_array()
                .and_then(|l| l.iter().find(|b| b["name"] == "store-2.sell").cloned())
                .map(|b| b["state"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default()
        }
    };
    let response = room
        .authed("POST", "/api/breakers/store-2.sell/force-open")
        .send()
        .await
        .expect("open");
    ok(&response, "force open");
    assert_eq!(breaker_state().await, "forced_open");
    let response = room
        .authed("POST", "/api/breakers/store-2.sell/reset")
        .send()
        .await
        .expect("reset");
    ok(&response, "reset");
    assert_eq!(breaker_state().await, "closed");

    // Kill: the state says so within a second, then the supervisor restarts it.
    let old_pid = room.process("exchange-2").await["pid"]
        .as_u64()
        .expect("pid");
    let response = room
        .authed("POST", "/api/processes/exchange-2/kill")
        .send()
        .await
        .expect("kill");
    ok(&response, "kill");
    let killed_at = Instant::now();
    loop {
        let p = room.process("exchange-2").await;
        if p["state"] != "up" || p["pid"].as_u64() != Some(old_pid) {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(1),
            "kill not shown within 1 s: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::eventually(
        Duration::from_secs(30),
        "exchange-2 restarted and up",
        || async {
            let p = room.process("exchange-2").await;
            p["state"] == "up" && p["restarts"] == 1 && p["pid"].as_u64() != Some(old_pid)
        },
    )
    .await;

    // A 3 s load with ft both: both series get answers; then the invariants hold.
    let response = room
        .authed("POST", "/api/traffic/start")
        .json(&json!({"users": 2, "think_ms": 50, "ft": "both", "duration_s": 3}))
        .send()
        .await
        .expect("start");
    ok(&response, "start load");
    let busy = room
        .authed("POST", "/api/traffic/start")
        .json(&json!({"users": 2, "think_ms": 50, "ft": "both", "duration_s": 3}))
        .send()
        .await
        .expect("start again");
    assert_problem(busy, StatusCode::CONFLICT, "a second load run").await;
    common::eventually(Duration::from_secs(40), "the load run finished", || async {
        room.state().await["traffic"]["state"] == "finished"
    })
    .await;
    let traffic = room.state().await["traffic"].clone();
    for ft in ["on", "off"] {
        let answered: u64 = traffic["series"][ft]
            .as_array()
            .expect("series")
            .iter()
            .map(|s| s["completed"].as_u64().unwrap_or(0) + s["accepted"].as_u64().unwrap_or(0))
            .sum();
        assert!(answered > 0, "ft {ft}: {traffic}");
    }
    let response = room
        .authed("POST", "/api/invariants")
        .send()
        .await
        .expect("invariants");
    ok(&response, "invariants");
    let verdict: Value = response.json().await.expect("json");
    assert_eq!(verdict["passed"], true, "{verdict}");
    assert_eq!(verdict["verdicts"].as_array().map(Vec::len), Some(4));

    // The stream: server-sent events with snapshots.
    let mut events = room
        .authed("GET", "/api/events")
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), StatusCode::OK);
    assert!(
        events.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .starts_with("text/event-stream")
    );
    let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
        .await
        .expect("an event within 5 s")
        .expect("chunk")
        .expect("some bytes");
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.contains("event: snapshot"), "{text}");
}
