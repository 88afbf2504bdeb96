//! Logging and trace context: JSON lines by default (one object per event, with the request id
//! and W3C trace id of the span), human-readable with `FTSHOP_LOG_FORMAT=pretty`. `RUST_LOG`
//! filters as usual.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber once; later calls are no-ops (tests start many services).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let pretty = std::env::var("FTSHOP_LOG_FORMAT").is_ok_and(|v| v == "pretty");
    let registry = tracing_subscriber::registry().with(filter);
    let result = if pretty {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    // Already initialised (several services in one test process): keep the first subscriber.
    let _ = result;
}

/// The W3C trace context header (`00-<trace id>-<parent span id>-<flags>`).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A W3C trace context: which trace a piece of work belongs to and which span is doing it.
///
/// The first service a request reaches (ecommerce) starts the trace when the caller sent no
/// valid `traceparent`; every hop then continues it: its own span is a child of the caller's,
/// and what it sends downstream names its own span as the parent. The trace id is in every
/// JSON log line (`span.trace_id`), so one purchase can be followed across all processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    sampled: bool,
}

impl TraceContext {
    /// A new trace. A request id that is a UUID (what ecommerce generates) becomes the trace id,
    /// so request id and trace id name the same thing; anything else gets a random trace id.
    pub fn root(request_id: Option<&str>) -> Self {
        let trace_id = request_id
            .and_then(|id| uuid::Uuid::try_parse(id).ok())
            .map(|u| u.as_u128())
            .filter(|&t| t != 0)
            .unwrap_or_else(random_trace_id);
        Self {
            trace_id,
            span_id: random_span_id(),
            parent_span_id: None,
            sampled: true,
        }
    }

    /// Parses a `traceparent` value; `None` for anything the W3C spec says to ignore
    /// (wrong lengths, non-hex, all-zero ids, version `ff`).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four fields; later versions may append more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let lower_hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower_hex(version) && lower_hex(trace) && lower_hex(span) && lower_hex(flags)) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            parent_span_id: None,
            sampled: flags & 1 == 1,
        })
    }

    /// The context of work done on behalf of this one: same trace, new span, this span as parent.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: random_span_id(),
            parent_span_id: Some(self.span_id),
            sampled: self.sampled,
        }
    }

    /// The context of this process's side of a request that arrived with `traceparent` (when
    /// valid) or with only `request_id`.
    pub fn for_request(traceparent: Option<&str>, request_id: Option<&str>) -> Self {
        traceparent
            .and_then(Self::parse)
            .map(|caller| caller.child())
            .unwrap_or_else(|| Self::root(request_id))
    }

    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    pub fn parent_span_id(&self) -> Option<String> {
        self.parent_span_id.map(|id| format!("{id:016x}"))
    }

    /// The `traceparent` value naming this span as the parent.
    pub fn header_value(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// Runs `fut` with this context as [`current`] and its ids in a `trace` span, so every log
    /// line inside carries `trace_id` and `span_id`.
    pub async fn scope<F: std::future::Future>(
        self,
        request_id: Option<&str>,
        fut: F,
    ) -> F::Output {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "trace",
            trace_id = %self.trace_id(),
            span_id = %self.span_id(),
            parent_span_id = self.parent_span_id().unwrap_or_default(),
            request_id = request_id.unwrap_or("-"),
        );
        CURRENT.scope(self, fut.instrument(span)).await
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The trace context of the request this task is serving, if any (background workers have none).
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// The `traceparent` to send on an outgoing call: a child of the current request's span, or a
/// new trace (keyed by `request_id` when it is a UUID) for work outside any request.
pub fn outgoing_traceparent(request_id: &str) -> String {
    outgoing_context(request_id).header_value()
}

fn random_trace_id() -> u128 {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

fn random_span_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example_and_continues_the_trace() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::parse(header).expect("valid traceparent");
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.span_id(), "00f067aa0ba902b7");
        assert_eq!(parsed.header_value(), header);

        let mine = TraceContext::for_request(Some(header), Some("ignored"));
        assert_eq!(mine.trace_id(), parsed.trace_id());
        assert_ne!(mine.span_id(), parsed.span_id());
        assert_eq!(mine.parent_span_id().as_deref(), Some("00f067aa0ba902b7"));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_uuid_request_id_becomes_the_trace_id() {
        let id = "0191f3a2-7c4e-7d3a-9b1e-2f4a5c6d7e8f";
        let root = TraceContext::for_request(None, Some(id));
        assert_eq!(root.trace_id(), "0191f3a27c4e7d3a9b1e2f4a5c6d7e8f");
        assert_eq!(root.parent_span_id(), None);
        let other = TraceContext::for_request(Some("garbage"), Some("not-a-uuid"));
        assert_eq!(other.trace_id().len(), 32);
    }

    #[tokio::test]
    async fn outgoing_calls_are_children_of_the_current_span() {
        let ctx = TraceContext::root(None);
        let sent = ctx.scope(None, async { outgoing_traceparent("x") }).await;
        let parsed = TraceContext::parse(&sent).expect("valid");
        assert_eq!(parsed.trace_id(), ctx.trace_id());
        assert_ne!(parsed.span_id(), ctx.span_id());
        // Outside any request: a new trace.
        let outside = TraceContext::parse(&outgoing_traceparent("x")).expect("valid");
        assert_ne!(outside.trace_id(), ctx.trace_id());
    }
}

/// Which side of a call a span describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// This process answering a request.
    Server,
    /// This process calling another.
    Client,
}

/// A finished span, handed to [`export_span`].
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    /// `service.name` of the process (`ecommerce`, `store`, ...).
    pub service: &'static str,
    /// `POST /buy`, `GET /product`, ...
    pub name: String,
    pub kind: SpanKind,
    pub context: TraceContext,
    pub start: std::time::SystemTime,
    pub end: std::time::SystemTime,
    pub attributes: Vec<(&'static str, String)>,
    pub error: bool,
}

/// Sends `span` to the OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; does nothing otherwise. Never blocks: spans
/// are batched by a background task and dropped when its queue is full.
pub fn export_span(span: FinishedSpan) {
    if let Some(exporter) = otlp::global() {
        exporter.send(span);
    }
}

/// The context for an outgoing call: a child of the current request's span, or a new trace
/// (keyed by `request_id` when it is a UUID) for work outside any request.
pub fn outgoing_context(request_id: &str) -> TraceContext {
    current()
        .map(|c| c.child())
        .unwrap_or_else(|| TraceContext::root(Some(request_id)))
}

/// OTLP trace export over HTTP with JSON encoding (`http/json`, what an OpenTelemetry Collector,
/// Jaeger or Tempo accept on port 4318), written against tokio alone: plain `http://`
/// endpoints, no extra dependency. Spans carry the same trace and span ids as the logs and the
/// `traceparent` headers, so a trace in the collector and a `grep` of the logs agree.
pub mod otlp {
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::{FinishedSpan, SpanKind};

    /// Spans waiting for export; beyond this they are dropped (and counted).
    const QUEUE: usize = 4096;
    const BATCH: usize = 512;
    const FLUSH_EVERY: Duration = Duration::from_secs(1);
    const POST_TIMEOUT: Duration = Duration::from_secs(3);

    /// Where spans go: `host:port` and the request path.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Endpoint {
        pub authority: String,
        pub path: String,
    }

    impl Endpoint {
        /// From the standard variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as is,
        /// `OTEL_EXPORTER_OTLP_ENDPOINT` gets `/v1/traces` appended.
        pub fn from_env() -> Option<Result<Self, String>> {
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
            if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                return Some(Self::parse(&url, false));
            }
            var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|url| Self::parse(&url, true))
        }

        pub fn parse(url: &str, append_signal_path: bool) -> Result<Self, String> {
            let uri: axum::http::Uri = url
                .trim()
                .parse()
                .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
            if uri.scheme_str() != Some("http") {
                return Err(format!(
                    "{url:?}: only plain http:// endpoints are supported (http/json)"
                ));
            }
            let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
            let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
            let base = uri.path().trim_end_matches('/');
            let path = if append_signal_path {
                format!("{base}/v1/traces")
            } else if base.is_empty() {
                "/".to_owned()
            } else {
                base.to_owned()
            };
            Ok(Self { authority, path })
        }
    }

    /// A running exporter: a queue and the task draining it.
    #[derive(Debug, Clone)]
    pub struct Exporter {
        tx: mpsc::Sender<FinishedSpan>,
    }

    impl Exporter {
        /// Starts the export task on the current tokio runtime.
        pub fn start(endpoint: Endpoint) -> Self {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(endpoint, rx));
            Self { tx }
        }

        pub fn send(&self, span: FinishedSpan) {
            if !span.context.sampled {
                return;
            }
            if self.tx.try_send(span).is_err() {
                metrics::counter!("otlp_spans_total", "outcome" => "dropped").increment(1);
            }
        }
    }

    /// The process's exporter, configured from the environment on first use (inside a tokio
    /// runtime); `None` when no endpoint is set or it is unusable (logged once).
    pub fn global() -> Option<&'static Exporter> {
        static GLOBAL: OnceLock<Option<Exporter>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let endpoint = match Endpoint::from_env()? {
                    Ok(endpoint) => endpoint,
                    Err(reason) => {
                        tracing::warn!(%reason, "OTLP trace export disabled");
                        return None;
                    }
                };
                tokio::runtime::Handle::try_current().ok()?;
                tracing::info!(endpoint = %endpoint.authority, path = %endpoint.path, "exporting traces over OTLP (http/json)");
                Some(Exporter::start(endpoint))
            })
            .as_ref()
    }

    async fn run(endpoint: Endpoint, mut rx: mpsc::Receiver<FinishedSpan>) {
        let mut warned = false;
        loop {
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            let body = encode(&batch).to_string();
            let outcome = match tokio::time::timeout(POST_TIMEOUT, post(&endpoint, &body)).await {
                Ok(Ok(())) => "exported",
                Ok(Err(reason)) => {
                    if !warned {
                        tracing::warn!(%reason, "OTLP export failed (further failures are counted in otlp_spans_total)");
                        warned = true;
                    }
                    "failed"
                }
                Err(_) => {
                    if !warned {
                        tracing::warn!(
                            "OTLP export timed out (further failures are counted in otlp_spans_total)"
                        );
                        warned = true;
                    }
                    "failed"
                }
            };
            metrics::counter!("otlp_spans_total", "outcome" => outcome)
                .increment(batch.len() as u64);
        }
    }

    /// One HTTP/1.1 POST; `Ok` on a 2xx answer.
    async fn post(endpoint: &Endpoint, body: &str) -> Result<(), String> {
        let mut stream = tokio::net::TcpStream::connect(&endpoint.authority)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", endpoint.authority))?;
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            endpoint.path,
            endpoint.authority,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(body.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        let status_line = String::from_utf8_lossy(&head);
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| "no HTTP status in the collector's answer".to_owned())?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    }

    /// The OTLP/JSON `ExportTraceServiceRequest` for `spans`, one resource per service.
    pub fn encode(spans: &[FinishedSpan]) -> Value {
        let mut services: Vec<&'static str> = spans.iter().map(|s| s.service).collect();
        services.sort_unstable();
        services.dedup();
        let resource_spans: Vec<Value> = services
            .into_iter()
            .map(|service| {
                let spans: Vec<Value> = spans
                    .iter()
                    .filter(|s| s.service == service)
                    .map(encode_span)
                    .collect();
                json!({
                    "resource": { "attributes": [attribute("service.name", service)] },
                    "scopeSpans": [{
                        "scope": { "name": "ftshop", "version": env!("CARGO_PKG_VERSION") },
                        "spans": spans,
                    }],
                })
            })
            .collect();
        json!({ "resourceSpans": resource_spans })
    }

    fn encode_span(span: &FinishedSpan) -> Value {
        let nanos = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                .to_string()
        };
        let mut value = json!({
            "traceId": span.context.trace_id(),
            "spanId": span.context.span_id(),
            "name": span.name,
            // SPAN_KIND_SERVER = 2, SPAN_KIND_CLIENT = 3.
            "kind": match span.kind { SpanKind::Server => 2, SpanKind::Client => 3 },
            "startTimeUnixNano": nanos(span.start),
            "endTimeUnixNano": nanos(span.end),
            "attributes": span.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
            // STATUS_CODE_UNSET = 0, STATUS_CODE_ERROR = 2.
            "status": { "code": if span.error { 2 } else { 0 } },
        });
        if let (Some(parent), Some(map)) = (span.context.parent_span_id(), value.as_object_mut()) {
            map.insert("parentSpanId".to_owned(), Value::String(parent));
        }
        value
    }

    fn attribute(key: &str, value: &str) -> Value {
        json!({ "key": key, "value": { "stringValue": value } })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::telemetry::TraceContext;

        fn span(service: &'static str, kind: SpanKind, context: TraceContext) -> FinishedSpan {
            let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
            FinishedSpan {
                service,
                name: "POST /buy".to_owned(),
                kind,
                context,
                start,
                end: start + Duration::from_millis(12),
                attributes: vec![("http.route", "/buy".to_owned())],
                error: false,
            }
        }

        #[test]
        fn endpoints_follow_the_otel_variables() {
            let base = Endpoint::parse("http://127.0.0.1:4318", true);
            assert_eq!(
                base,
                Ok(Endpoint {
                    authority: "127.0.0.1:4318".to_owned(),
                    path: "/v1/traces".to_owned()
                })
            );
            let full = Endpoint::parse("http://collector/custom/traces", false);
            assert_eq!(
                full.map(|e| (e.authority, e.path)),
                Ok(("collector:80".to_owned(), "/custom/traces".to_owned()))
            );
            assert!(Endpoint::parse("https://collector:4318", true).is_err());
            assert!(Endpoint::parse("not a url", true).is_err());
        }

        #[test]
        fn encodes_ids_as_hex_with_the_parent_and_one_resource_per_service() {
            let root = TraceContext::root(None);
            let child = root.child();
            let body = encode(&[
                span("ecommerce", SpanKind::Server, root),
                span("store", SpanKind::Server, child),
            ]);
            let resources = body["resourceSpans"].as_array().map(Vec::len);
            assert_eq!(resources, Some(2));
            let store = &body["resourceSpans"][1];
            assert_eq!(
                store["resource"]["attributes"][0]["value"]["stringValue"],
                "store"
            );
            let s = &store["scopeSpans"][0]["spans"][0];
            assert_eq!(s["traceId"], root.trace_id());
            assert_eq!(s["spanId"], child.span_id());
            assert_eq!(s["parentSpanId"], root.span_id());
            assert_eq!(s["kind"], 2);
            assert_eq!(s["startTimeUnixNano"], "1700000000000000000");
            assert_eq!(s["endTimeUnixNano"], "1700000000012000000");
            let root_span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
            assert!(root_span.get("parentSpanId").is_none());
        }

        #[tokio::test]
        async fn the_exporter_posts_batches_to_the_collector() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let exporter = Exporter::start(Endpoint {
                authority: addr.to_string(),
                path: "/v1/traces".to_owned(),
            });
            let ctx = TraceContext::root(None);
            exporter.send(span("fidelity", SpanKind::Server, ctx));

            let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("the exporter connects within its flush interval")
                .expect("accept");
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = conn.read(&mut buf).await.expect("read");
                received.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&received);
                if n == 0 || text.contains(&ctx.trace_id()) && text.ends_with('}') {
                    break;
                }
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .expect("answer");
            let text = String::from_utf8_lossy(&received);
            assert!(text.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{text}");
            assert!(text.contains("Content-Type: application/json"));
            assert!(text.contains(&ctx.trace_id()));
        }
    }
}
