//! The process-wide Prometheus recorder and the per-request telemetry middleware (HTTP server
//! metrics and W3C trace context). Routes are labelled by their template (`MatchedPath`), never
//! the raw path, so label cardinality stays bounded.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::telemetry::{self, FinishedSpan, SpanKind, TraceContext};

/// Latency buckets in seconds, tuned for a 1 s request budget.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder's handle, installing the recorder on first use. When another recorder is
/// already installed (an embedding application's), ours still renders its own registry.
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Renders the Prometheus text exposition.
pub async fn render() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let handle = prometheus();
    handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle.render(),
    )
}

/// Records `http_server_request_duration_seconds{service,method,route,status}` and runs the
/// request inside its trace context (continued from `traceparent`, or started here), so its
/// logs carry `trace_id` and its outgoing calls can propagate it
/// ([`telemetry::outgoing_traceparent`]).
pub async fn track(service: &'static str, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Read in a block: a `&Request` held across an await would make this future `!Send`.
    let (request_id, trace) = {
        let headers = request.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let request_id = header(crate::REQUEST_ID_HEADER).map(str::to_owned);
        let trace =
            TraceContext::for_request(header(telemetry::TRACEPARENT_HEADER), request_id.as_deref());
        (request_id, trace)
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let wall_start = SystemTime::now();
    let response = trace.scope(request_id.as_deref(), next.run(request)).await;
    let status = response.status().as_u16().to_string();
    let end = SystemTime::now();
    metrics::histogram!(
        "http_server_request_duration_seconds",
        "service" => service,
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.clone(),
    )
    .record(started.elapsed().as_secs_f64());
    // Scrapes and probes would drown the traces that matter.
    if route != "/metrics" && !route.starts_with("/health/") {
        telemetry::export_span(FinishedSpan {
            service,
            name: format!("{method} {route}"),
            kind: SpanKind::Server,
            context: trace,
            start: wall_start,
            end,
            error: response.status().is_server_error(),
            attributes: vec![
                ("http.request.method", method),
                ("http.route", route),
                ("http.response.status_code", status),
            ],
        });
    }
    response
}
