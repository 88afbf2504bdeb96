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
    current()
        .map(|c| c.child())
        .unwrap_or_else(|| TraceContext::root(Some(request_id)))
        .header_value()
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
