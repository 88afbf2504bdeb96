//! The `/buy` latency histogram with trace ids as OpenMetrics exemplars, so a slow point on a
//! latency panel leads to the trace of a purchase that took that long.
//!
//! Why a second registry: the `metrics` facade records a bare `f64` (no way to attach an
//! exemplar) and `metrics-exporter-prometheus` writes the Prometheus text format, which has no
//! exemplars. `prometheus-client` (the Prometheus project's Rust client) keeps, per bucket, the
//! last observation's labels and writes them in the OpenMetrics text format. So this one
//! histogram, `shop_buy_duration_seconds{status}` (the same buckets as
//! `http_server_request_duration_seconds`), lives there and is served on
//! `GET /metrics/exemplars` (content type `application/openmetrics-text`); Prometheus keeps the
//! exemplars with `--enable-feature=exemplar-storage`, and Grafana's Prometheus datasource opens
//! `trace_id` in Tempo (`exemplarTraceIdDestinations`). Only sampled traces (export on) give
//! exemplars: an id that leads nowhere would be worse than none.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The histogram's labels: the answer's status code (a handful of values).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

/// An exemplar's labels: the 32-hex-digit trace id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabel {
    trace_id: String,
}

type BuyHistogram = Family<StatusLabel, HistogramWithExemplars<TraceLabel>>;

struct Exemplars {
    registry: Registry,
    buy: BuyHistogram,
}

fn global() -> &'static Exemplars {
    static GLOBAL: OnceLock<Exemplars> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let buy: BuyHistogram = Family::new_with_constructor(|| {
            HistogramWithExemplars::new(crate::http_metrics::LATENCY_BUCKETS.iter().copied())
        });
        let mut registry = Registry::default();
        registry.register(
            "shop_buy_duration_seconds",
            "Time to answer POST /buy, by status; exemplars carry the trace id",
            buy.clone(),
        );
        Exemplars { registry, buy }
    })
}

/// Records one `/buy` answer of `seconds` with `status`; `trace_id` (32 hex digits) becomes the
/// exemplar of its bucket.
pub fn observe_buy(status: u16, seconds: f64, trace_id: Option<String>) {
    global().buy.get_or_create(&StatusLabel { status }).observe(
        seconds,
        trace_id.map(|trace_id| TraceLabel { trace_id }),
        None,
    );
}

/// The OpenMetrics text of the histogram (ends with `# EOF`).
pub fn encode() -> String {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &global().registry).is_err() {
        text = "# EOF\n".to_owned();
    }
    text
}

/// `GET /metrics/exemplars`.
pub async fn render() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buy_carries_its_trace_id_as_an_exemplar() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        observe_buy(200, 0.042, Some(trace.to_owned()));
        let text = encode();
        let bucket = text
            .lines()
            .find(|l| {
                l.starts_with("shop_buy_duration_seconds_bucket") && l.contains("le=\"0.05\"")
            })
            .unwrap_or_else(|| panic!("no 50 ms bucket:\n{text}"));
        assert!(
            bucket.contains(&format!("# {{trace_id=\"{trace}\"}} 0.042")),
            "{bucket}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
