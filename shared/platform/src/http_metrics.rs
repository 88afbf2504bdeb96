//! The process-wide Prometheus recorder and the per-request telemetry middleware (HTTP server
//! metrics and W3C trace context). Routes are labelled by their template (`MatchedPath`), never
//! the raw path, and methods by [`method_label`] (extension methods become `other`), so no
//! client can grow the number of series.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::telemetry;
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Latency buckets in seconds, tuned for a 1 s request budget.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often the recorder's upkeep runs without a scrape (metrics-exporter-prometheus's own
/// default for the upkeep thread of `install()`).
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// The recorder's handle, installing the recorder on first use. When another recorder is
/// already installed (an embedding application's), ours still renders its own registry.
///
/// It also starts the recorder's upkeep, once per process: a thread (`metrics-upkeep`) that
/// runs [`PrometheusHandle::run_upkeep`] every [`UPKEEP_PERIOD`]. metrics-exporter-prometheus
/// appends every histogram observation to a buffer that only its upkeep drains, and leaves
/// running it to whoever builds the recorder (`install()` starts such a thread;
/// `build_recorder()`, used here to keep our own handle, does not). Without it a service no one
/// scraped kept every observation, ~24 bytes per request per histogram, for as long as it ran
/// (`tests/metrics_upkeep.rs`).
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        let started = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_PERIOD);
                    upkeep.run_upkeep();
                }
            });
        if let Err(err) = started {
            // Scrapes still drain the buffers; only an unscraped process grows.
            tracing::warn!(error = %err, "cannot start the metrics upkeep thread");
        }
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
/// request inside its server span (`POST /buy`, ...), a child of the caller's span when the
/// request carries a valid `traceparent` (W3C TraceContext and Baggage, [`telemetry`]), else the
/// root of a new trace. Its logs carry `trace_id`, `span_id` and `request_id`; outgoing calls
/// made inside propagate it ([`telemetry::inject_context`]). A request whose client hung up
/// before the answer (its future is dropped) is recorded with status `499`, as nginx does, so
/// abandoned requests (an omission fault, a caller's timeout) show on the dashboards and as
/// error spans too. Scrapes and probes get no span (they would drown the traces that matter).
pub async fn track(service: &'static str, request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let span = if route.starts_with("/metrics") || route.starts_with("/health/") {
        tracing::Span::none()
    } else {
        // Read in a block: a `&Request` held across an await would make this future `!Send`.
        let headers = request.headers();
        let request_id = headers
            .get(crate::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let span = tracing::info_span!(
            target: "ftshop::http",
            "request",
            otel.name = format_args!("{method} {route}"),
            otel.kind = "server",
            http.request.method = method,
            http.route = route.as_str(),
            request_id,
        );
        let _ = span.set_parent(telemetry::extract_context(headers));
        span
    };
    let mut in_flight = InFlight {
        service,
        method,
        route,
        span: span.clone(),
        started: Instant::now(),
        finished: false,
    };
    let response = next.run(request).instrument(span).await;
    in_flight.finish(response.status().as_u16());
    response
}

/// The `method` label: one of the nine methods of RFC 9110 (and PATCH), or `other` for any
/// extension method a client makes up (`FOO123`), so clients cannot mint new series. The same
/// mapping as OpenTelemetry's `http.request.method` (`_OTHER` there).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// A request being served; records itself once, when answered or when dropped unanswered.
struct InFlight {
    service: &'static str,
    method: &'static str,
    route: String,
    span: tracing::Span,
    started: Instant,
    finished: bool,
}

/// What a request gets when its client hung up before the answer.
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl InFlight {
    fn finish(&mut self, status: u16) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let status_label = status.to_string();
        let seconds = self.started.elapsed().as_secs_f64();
        metrics::histogram!(
            "http_server_request_duration_seconds",
            "service" => self.service,
            "method" => self.method,
            "route" => self.route.clone(),
            "status" => status_label,
        )
        .record(seconds);
        if self.route == "/buy" {
            // The trace id as the exemplar, when the trace is exported (sampled).
            let trace_id = self
                .span
                .context()
                .span()
                .span_context()
                .is_sampled()
                .then(|| telemetry::trace_id_of(&self.span).unwrap_or_default());
            crate::exemplars::observe_buy(status, seconds, trace_id.filter(|t| !t.is_empty()));
        }
        if !self.span.is_disabled() {
            // Straight onto the OpenTelemetry span, not `Span::record`: the JSON log layer keeps
            // each span's fields as a JSON string and a record parses and writes it again
            // (1.5 % of ecommerce's CPU), for fields no log line shows (the answer's status is
            // known only after the last line inside the request).
            self.span
                .set_attribute("http.response.status_code", i64::from(status));
            if status >= 500 || status == CLIENT_CLOSED_REQUEST {
                self.span
                    .set_status(opentelemetry::trace::Status::error(""));
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.finish(CLIENT_CLOSED_REQUEST);
    }
}
