//! The fault middleware and the admin API through a real router: what clients see, and that
//! admin requests without the right token are refused and change nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use ftshop_platform::admin::AdminToken;
use ftshop_platform::faults::{FaultEngine, FaultKind, FaultProfile, FaultRule, FaultsStatus};
use ftshop_platform::server::Service;
use http_body_util::BodyExt;
use tower::ServiceExt;

const TOKEN: &str = "test-admin-token";

fn rule(route: &str, kind: FaultKind, probability: f64) -> FaultRule {
    FaultRule {
        service: None,
        instance: None,
        route: route.into(),
        method: None,
        kind,
        probability,
        window_ms: 0,
        latency_ms: if kind == FaultKind::Latency { 2_000 } else { 0 },
        ttl_secs: None,
    }
}

fn app(engine: Arc<FaultEngine>) -> Router {
    let routes = Router::new()
        .route("/product", get(|| async { "product" }))
        .route("/sell", post(|| async { "sold" }));
    Service::new("store", routes, utoipa::openapi::OpenApi::default())
        .faults(engine)
        .admin_token(AdminToken::new(Some(TOKEN)))
        .into_router()
}

fn engine(rules: Vec<FaultRule>) -> Arc<FaultEngine> {
    let profile = FaultProfile {
        name: "test".into(),
        seed: None,
        rules,
    };
    FaultEngine::new("store", None, &profile, Some(1))
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Option<String>, String) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let fault = response
        .headers()
        .get("x-fault-injected")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, fault, String::from_utf8_lossy(&body).into_owned())
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

fn admin(method: &str, path: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Body::from(body.to_owned())).expect("request")
}

#[tokio::test]
async fn error_fault_answers_500_problem_with_the_fault_header() {
    let app = app(engine(vec![rule("/product", FaultKind::Error, 1.0)]));
    let (status, fault, body) = call(&app, get_req("/product")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(fault.as_deref(), Some("error"));
    assert!(body.contains("fault-injected"), "{body}");
    // Health, metrics and other routes are untouched.
    let (status, fault, _) = call(&app, get_req("/health/live")).await;
    assert_eq!((status, fault), (StatusCode::OK, None));
    let (status, _, body) = call(&app, get_req("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("chaos_faults_injected_total"), "{body}");
    let (status, fault, _) = call(
        &app,
        Request::post("/sell").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!((status, fault), (StatusCode::OK, None));
}

#[tokio::test(start_paused = true)]
async fn latency_fault_delays_then_answers() {
    let app = app(engine(vec![rule("/product", FaultKind::Latency, 1.0)]));
    let started = tokio::time::Instant::now();
    let (status, fault, body) = call(&app, get_req("/product")).await;
    assert_eq!(
        (status, fault.as_deref(), body.as_str()),
        (StatusCode::OK, Some("latency"), "product")
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn omission_never_answers_within_any_client_timeout() {
    let app = app(engine(vec![rule("/product", FaultKind::Omission, 1.0)]));
    let pending =
        tokio::time::timeout(Duration::from_secs(60), call(&app, get_req("/product"))).await;
    assert!(pending.is_err(), "an omitted request was answered");
}

#[tokio::test]
async fn crash_fault_runs_the_crash_action() {
    let crashes = Arc::new(AtomicUsize::new(0));
    let seen = crashes.clone();
    let engine = engine(vec![rule("/product", FaultKind::Crash, 1.0)]).with_crash_hook(move || {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let app = app(engine);
    let _ = call(&app, get_req("/product")).await;
    assert_eq!(crashes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn admin_without_the_right_token_gets_401_and_changes_nothing() {
    let engine = engine(vec![rule("/product", FaultKind::Error, 0.5)]);
    let app = app(engine.clone());
    let before = serde_json::to_value(engine.status()).expect("json");
    let clear = r#"{"rules": []}"#;
    for token in [
        None,
        Some("wrong-token"),
        Some("test-admin-tokeN"),
        Some(""),
    ] {
        for request in [
            admin("GET", "/admin/faults", token, ""),
            admin("PUT", "/admin/faults", token, clear),
            admin("POST", "/admin/faults/reset", token, ""),
        ] {
            let (status, _, body) = call(&app, request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
            assert!(body.contains("unauthorized"), "{body}");
        }
    }
    assert_eq!(serde_json::to_value(engine.status()).expect("json"), before);

    // A service without a configured token refuses everyone, even an empty bearer.
    let open =
        Service::new("store", Router::new(), utoipa::openapi::OpenApi::default()).into_router();
    let (status, _, _) = call(&open, admin("GET", "/admin/faults", Some(""), "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn admin_lists_replaces_and_resets_rules() {
    let engine = engine(Vec::new());
    let app = app(engine.clone());
    let put = r#"{"rules": [
        {"route": "/sell", "method": "POST", "kind": "error", "probability": 1.0, "window_ms": 5000, "ttl_secs": 60},
        {"service": "exchange", "route": "/exchange", "kind": "crash", "probability": 0.1}
    ], "seed": 9}"#;
    let (status, _, body) = call(&app, admin("PUT", "/admin/faults", Some(TOKEN), put)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let shown: FaultsStatus = serde_json::from_str(&body).expect("status");
    assert_eq!(
        (shown.seed, shown.rules.len(), shown.profile.as_str()),
        (9, 1, "admin")
    );

    let (status, fault, _) = call(
        &app,
        Request::post("/sell").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(
        (status, fault.as_deref()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("error"))
    );
    let (_, _, body) = call(&app, admin("GET", "/admin/faults", Some(TOKEN), "")).await;
    let shown: FaultsStatus = serde_json::from_str(&body).expect("status");
    assert!(shown.rules[0].active);
    assert_eq!(shown.rules[0].injected, 1);

    // Invalid rules: 422 and the old rules stay.
    for bad in [
        r#"{"rules": [{"route": "/sell", "kind": "error", "probability": 2}]}"#,
        r#"{"rules": [{"route": "/sell", "kind": "teleport", "probability": 1}]}"#,
        r#"{"profile": "chaos-monkey"}"#,
        r#"{}"#,
    ] {
        let (status, _, body) = call(&app, admin("PUT", "/admin/faults", Some(TOKEN), bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let (status, _, _) = call(
        &app,
        admin("PUT", "/admin/faults", Some(TOKEN), "{not json"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(engine.status().rules.len(), 1);

    let (status, _, body) = call(
        &app,
        admin(
            "PUT",
            "/admin/faults",
            Some(TOKEN),
            r#"{"profile": "default"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let shown: FaultsStatus = serde_json::from_str(&body).expect("status");
    assert_eq!(shown.rules.len(), 2, "store's two default faults");

    let (status, _, _) = call(&app, admin("POST", "/admin/faults/reset", Some(TOKEN), "")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(engine.status().rules.is_empty());
    let (status, fault, _) = call(
        &app,
        Request::post("/sell").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!((status, fault), (StatusCode::OK, None));
}

#[tokio::test]
async fn openapi_documents_the_admin_api() {
    let app = app(engine(Vec::new()));
    let (_, _, body) = call(&app, get_req("/openapi.json")).await;
    assert!(body.contains("/admin/faults/reset"), "{body}");
    assert!(body.contains("admin_token"), "{body}");
}

#[tokio::test]
async fn rule_routes_from_the_admin_api_take_a_bounded_set_of_metric_labels() {
    const SERVICE: &str = "fault-labels";
    let profile = FaultProfile {
        name: "test".into(),
        seed: None,
        rules: Vec::new(),
    };
    let engine = FaultEngine::new(SERVICE, None, &profile, Some(1));
    let app = Service::new(SERVICE, Router::new(), utoipa::openapi::OpenApi::default())
        .faults(engine)
        .admin_token(AdminToken::new(Some(TOKEN)))
        .into_router();
    // Five updates of 100 rules each, every rule on a route never seen before: 500 names.
    for update in 0..5 {
        let rules: Vec<FaultRule> = (0..100)
            .map(|i| rule(&format!("/made-up/{update}/{i}"), FaultKind::Error, 0.5))
            .collect();
        let body = serde_json::json!({ "rules": rules }).to_string();
        let (status, _, text) = call(&app, admin("PUT", "/admin/faults", Some(TOKEN), &body)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    let rendered = ftshop_platform::http_metrics::prometheus().render();
    let needle = format!("service=\"{SERVICE}\"");
    let routes: std::collections::BTreeSet<&str> = rendered
        .lines()
        .filter(|l| l.starts_with("chaos_") && l.contains(&needle))
        .filter_map(|l| l.split("route=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        routes.len(),
        ftshop_platform::faults::MAX_ROUTE_LABELS + 1,
        "{routes:?}"
    );
    assert!(routes.contains("other"));
}

/// Issue 18, defect 2: `chaos_fault_configured` tells the profile the process runs with
/// (`origin="profile"`, never alerted on) from rules a drill sent through the admin API
/// (`origin="drill"`, FtshopFaultLeftActive after 30 minutes); a series whose origin changed
/// drops to 0, so an alert never sees both.
#[tokio::test]
async fn configured_faults_say_whether_a_drill_or_the_profile_set_them() {
    const SERVICE: &str = "fault-origin";
    let profile = FaultProfile {
        name: "default".into(),
        seed: None,
        rules: vec![rule("/sell", FaultKind::Error, 0.1)],
    };
    let engine = FaultEngine::new(SERVICE, None, &profile, Some(1));
    let app = Service::new(SERVICE, Router::new(), utoipa::openapi::OpenApi::default())
        .faults(engine)
        .admin_token(AdminToken::new(Some(TOKEN)))
        .into_router();
    let configured = |origin: &str| {
        let rendered = ftshop_platform::http_metrics::prometheus().render();
        let service = format!("service=\"{SERVICE}\"");
        let origin = format!("origin=\"{origin}\"");
        rendered
            .lines()
            .filter(|l| l.starts_with("chaos_fault_configured{") && l.contains(&service))
            .filter(|l| l.contains(&origin))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(configured("profile"), 0.1, "the start-up profile's rule");
    assert_eq!(configured("drill"), 0.0);

    let body = serde_json::json!({ "rules": [rule("/sell", FaultKind::Error, 1.0)] }).to_string();
    let (status, _, text) = call(&app, admin("PUT", "/admin/faults", Some(TOKEN), &body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(configured("drill"), 1.0, "a drill's rule");
    assert_eq!(
        configured("profile"),
        0.0,
        "the profile's series drops to 0"
    );

    let body = serde_json::json!({ "profile": "off" }).to_string();
    let (status, _, text) = call(&app, admin("PUT", "/admin/faults", Some(TOKEN), &body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(configured("drill"), 0.0, "the drill is over");
}
