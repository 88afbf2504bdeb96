//! The middleware that applies the engine's decision to each request.
//!
//! It runs inside the router (`Router::layer`), where the matched route template is known, so
//! rules name routes the way the service declares them. Platform routes (health, metrics, docs,
//! admin) are never faulted: the supervisor, Prometheus and the operator must keep working.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{FAULT_HEADER, FaultEngine, FaultKind};
use crate::Problem;

/// How long an omitted request is held before the connection is answered anyway; clients give
/// up long before (1 s in the exercise). Shutdown releases it at once.
const OMISSION_HOLD: Duration = Duration::from_secs(120);

/// Routes no rule applies to.
fn exempt(route: &str) -> bool {
    route.starts_with("/health")
        || route.starts_with("/admin")
        || route.starts_with("/docs")
        || route == "/metrics"
        || route == "/metrics/exemplars"
        || route == "/openapi.json"
}

/// `axum::middleware::from_fn_with_state(engine, inject)`.
pub async fn inject(
    State(engine): State<Arc<FaultEngine>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(route) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        return next.run(request).await;
    };
    if exempt(&route) {
        return next.run(request).await;
    }
    let Some(injection) = engine.decide(request.method(), &route) else {
        return next.run(request).await;
    };
    // An event of the request's server span: the trace shows which fault hit the request.
    tracing::info!(
        kind = %injection.kind,
        route = %route,
        window_ms = u64::try_from(injection.window.as_millis()).unwrap_or(u64::MAX),
        "fault injected"
    );
    match injection.kind {
        FaultKind::Crash => {
            engine.crash();
            // Only reached when a test replaced the crash action.
            marked(
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "fault-injected",
                    "injected crash fault (crash action replaced)",
                )
                .into_response(),
                injection.kind,
            )
        }
        FaultKind::Omission => {
            tokio::select! {
                () = tokio::time::sleep(OMISSION_HOLD) => {}
                () = crate::server::shutting_down() => {}
            }
            marked(
                Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "fault-injected",
                    "injected omission fault: this request was never handled",
                )
                .into_response(),
                injection.kind,
            )
        }
        FaultKind::Error => marked(
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "fault-injected",
                format!("injected error fault on {route}"),
            )
            .into_response(),
            injection.kind,
        ),
        FaultKind::Latency => {
            tokio::time::sleep(injection.latency).await;
            marked(next.run(request).await, injection.kind)
        }
    }
}

fn marked(mut response: Response, kind: FaultKind) -> Response {
    response
        .headers_mut()
        .insert(FAULT_HEADER, HeaderValue::from_static(kind.as_str()));
    response
}
