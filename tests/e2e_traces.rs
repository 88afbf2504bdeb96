//! One purchase is one trace: the real suite (`ftshop up`) exports its spans over OTLP/HTTP to a
//! receiver in this test, which decodes them with the official definitions
//! (`opentelemetry-proto`), in `http/protobuf` and in `http/json`. Store-1's `/sell` fails
//! every time (fault rule, p = 1), so an ft=true purchase that tries store-1 first fails over
//! to store-2: the trace must show both attempts, their outcomes, and the parent of every span.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::{ADMIN_TOKEN, Suite};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

/// A span as received, with the resource attributes of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    instance: String,
    span: Span,
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    fn id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn has_event(&self, name: &str) -> bool {
        self.span.events.iter().any(|e| e.name == name)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            any_value::Value::IntValue(i) => i.to_string(),
            any_value::Value::BoolValue(b) => b.to_string(),
            any_value::Value::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

/// An OTLP/HTTP trace receiver on a free port: decodes every `POST /v1/traces` by its
/// content type (protobuf or JSON) and keeps the spans.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let content_types: Arc<Mutex<Vec<String>>> = Arc::default();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post({
                let (spans, content_types) = (spans.clone(), content_types.clone());
                move |headers: HeaderMap, body: Bytes| async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let request = if content_type.starts_with("application/json") {
                        serde_json::from_slice::<ExportTraceServiceRequest>(&body)
                            .expect("an OTLP/JSON ExportTraceServiceRequest")
                    } else {
                        ExportTraceServiceRequest::decode(body)
                            .expect("an OTLP protobuf ExportTraceServiceRequest")
                    };
                    content_types
                        .lock()
                        .expect("lock")
                        .push(content_type.clone());
                    let mut kept = spans.lock().expect("lock");
                    for rs in request.resource_spans {
                        let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                        let service = attr(&resource, "service.name").unwrap_or_default();
                        let instance = attr(&resource, "service.instance.id").unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                kept.push(Received {
                                    service: service.clone(),
                                    instance: instance.clone(),
                                    span,
                                });
                            }
                        }
                    }
                    let body = if content_type.starts_with("application/json") {
                        "{}"
                    } else {
                        ""
                    };
                    ([("content-type", content_type)], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            spans,
            content_types,
        }
    }

    fn trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| hex(&r.span.trace_id) == trace_id)
            .cloned()
            .collect()
    }
}

fn random_hex(bytes: usize) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..bytes * 2].to_owned()
}

/// The default filter plus Fidelity's debug lines: one per bonus, the line these tests read.
fn fidelity_bonus_lines() -> String {
    format!(
        "{},ftshop_fidelity=debug",
        ftshop_platform::telemetry::DEFAULT_LOG_FILTER
    )
}

async fn one_purchase_is_one_trace(protocol: &str) {
    let receiver = Receiver::start().await;
    let suite = Suite::start_with_env(
        tempfile::tempdir().expect("tempdir"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            // Fidelity's per-bonus line (the log line this test reads) is at debug.
            ("RUST_LOG", &fidelity_bonus_lines()),
        ],
    )
    .await;
    let store1 = suite.url("store-1");
    let put = suite
        .http
        .put(format!("{store1}/admin/faults"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"rules": [{"route": "/sell", "kind": "error", "probability": 1.0}]}))
        .send()
        .await
        .expect("PUT /admin/faults");
    assert!(put.status().is_success(), "{}", put.status());

    // Which replica a purchase tries first rotates; a few purchases reach store-1 first.
    let ecommerce = suite.url("ecommerce");
    let mut failed_over = None;
    for attempt in 0..6 {
        let trace_id = random_hex(16);
        let caller_span = random_hex(8);
        let answer = suite
            .http
            .post(format!("{ecommerce}/buy"))
            .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
            .header("x-request-id", format!("trace-test-{attempt}"))
            .json(&json!({"product": "1", "user": "tracer", "ft": true}))
            .send()
            .await
            .expect("buy");
        assert_eq!(answer.status(), 200, "purchase {attempt}");
        // Every process's spans of this purchase: the server spans of ecommerce, store (twice
        // when it failed over) and fidelity end before the answer, then wait for the batch.
        let deadline = Instant::now() + Duration::from_secs(20);
        let spans = loop {
            let spans = receiver.trace(&trace_id);
            let fidelity = spans
                .iter()
                .any(|s| s.service == "fidelity" && s.span.name == "POST /bonus");
            let buy = spans
                .iter()
                .any(|s| s.service == "ecommerce" && s.span.name == "POST /buy");
            if fidelity && buy {
                // Late batches of the other processes.
                tokio::time::sleep(Duration::from_millis(500)).await;
                break receiver.trace(&trace_id);
            }
            assert!(
                Instant::now() < deadline,
                "the purchase's spans did not all arrive: {:#?}",
                spans
                    .iter()
                    .map(|s| (&s.service, &s.span.name))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if spans.iter().any(|s| s.span.name == "attempt store-1.sell") {
            failed_over = Some((trace_id, caller_span, spans));
            break;
        }
    }
    let (trace_id, caller_span, spans) =
        failed_over.expect("no purchase tried store-1's /sell first in 6 purchases");
    let summary: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "{} {} {} span {} parent {} {:?}",
                s.service,
                s.instance,
                s.span.name,
                s.id(),
                s.parent(),
                s.span.attributes.iter().map(|a| &a.key).collect::<Vec<_>>()
            )
        })
        .collect();
    let summary = summary.join("\n");
    eprintln!("trace {trace_id} ({protocol}):\n{summary}");

    // One trace across the three services that took part.
    for service in ["ecommerce", "store", "fidelity", "exchange"] {
        if service == "exchange" {
            continue; // the rate may come from ecommerce's cache
        }
        assert!(
            spans.iter().any(|s| s.service == service),
            "no {service} span in trace {trace_id}:\n{summary}"
        );
    }
    // Parents: the purchase's server span is the caller's child; every other span's parent is
    // a span of this trace.
    let ids: HashMap<String, &Received> = spans.iter().map(|s| (s.id(), s)).collect();
    let buys: Vec<&Received> = spans
        .iter()
        .filter(|s| s.service == "ecommerce" && s.span.name == "POST /buy")
        .collect();
    assert_eq!(buys.len(), 1, "{summary}");
    let buy = buys[0];
    assert_eq!(buy.parent(), caller_span, "{summary}");
    assert_eq!(buy.span.kind, 2, "server span");
    for s in spans.iter().filter(|s| s.id() != buy.id()) {
        assert!(
            ids.contains_key(&s.parent()),
            "{} {} has a parent outside the trace:\n{summary}",
            s.service,
            s.span.name
        );
    }
    let parent_of = |s: &Received| ids.get(&s.parent()).copied();

    // The failover: the attempt on store-1 failed (its breaker state when it began, attempt 1),
    // the one on store-2 sold (attempt 2); each attempt's HTTP call reached its replica.
    let attempt = |name: &str| {
        spans
            .iter()
            .find(|s| s.span.name == name)
            .unwrap_or_else(|| panic!("no span {name}:\n{summary}"))
    };
    let first = attempt("attempt store-1.sell");
    let second = attempt("attempt store-2.sell");
    assert_eq!(first.attr("resilience.outcome").as_deref(), Some("failure"));
    assert_eq!(first.attr("resilience.attempt").as_deref(), Some("1"));
    assert_eq!(
        first.attr("resilience.breaker.state").as_deref(),
        Some("closed")
    );
    assert_eq!(first.span.status.as_ref().map(|s| s.code), Some(2), "error");
    assert_eq!(
        second.attr("resilience.outcome").as_deref(),
        Some("success")
    );
    assert_eq!(second.attr("resilience.attempt").as_deref(), Some("2"));
    for (attempt, replica, status) in [(first, "store-1", "500"), (second, "store-2", "200")] {
        assert_eq!(
            parent_of(attempt).map(Received::id),
            Some(buy.id()),
            "{summary}"
        );
        let call = spans
            .iter()
            .find(|s| s.span.name == "POST /sell" && s.parent() == attempt.id())
            .unwrap_or_else(|| panic!("no client span under {}:\n{summary}", attempt.span.name));
        assert_eq!(call.service, "ecommerce");
        assert_eq!(call.span.kind, 3, "client span");
        let served = spans
            .iter()
            .find(|s| s.service == "store" && s.parent() == call.id())
            .unwrap_or_else(|| panic!("no store span under the call to {replica}:\n{summary}"));
        assert_eq!(served.instance, replica, "{summary}");
        assert_eq!(served.span.name, "POST /sell");
        assert_eq!(
            served.attr("http.response.status_code").as_deref(),
            Some(status)
        );
        let error = served.span.status.as_ref().is_some_and(|s| s.code == 2);
        assert_eq!(
            error,
            status == "500",
            "a 5xx server span has the error status, a 200 not:\n{summary}"
        );
    }
    let faulted = spans
        .iter()
        .find(|s| s.instance == "store-1" && s.span.name == "POST /sell")
        .expect("store-1's server span");
    let fault = faulted
        .span
        .events
        .iter()
        .find(|e| e.name == "fault injected")
        .unwrap_or_else(|| panic!("no fault event on store-1's span:\n{summary}"));
    assert_eq!(attr(&fault.attributes, "kind").as_deref(), Some("error"));
    assert!(
        buy.span.events.iter().any(|e| e.name == "fallback used"
            && attr(&e.attributes, "degraded").as_deref() == Some("store:failover")),
        "the purchase span tells which fallback saved it:\n{summary}"
    );
    assert!(!buy.has_event("fault injected"));
    // The bonus: Fidelity's server span is the child of ecommerce's call.
    let bonus = spans
        .iter()
        .find(|s| s.service == "fidelity" && s.span.name == "POST /bonus")
        .expect("fidelity span");
    let bonus_call = parent_of(bonus).expect("the bonus call");
    assert_eq!(bonus_call.service, "ecommerce");
    assert_eq!(bonus_call.span.name, "POST /bonus");
    // The /buy latency histogram leads to this trace: its bucket's exemplar (OpenMetrics) is
    // the trace id of the last purchase, this one.
    let exemplars = suite
        .http
        .get(format!("{ecommerce}/metrics/exemplars"))
        .send()
        .await
        .expect("GET /metrics/exemplars");
    assert!(
        exemplars.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        exemplars.headers()
    );
    let exemplars = exemplars.text().await.expect("text");
    assert!(
        exemplars
            .lines()
            .any(|l| l.starts_with("shop_buy_duration_seconds_bucket")
                && l.contains(&format!("# {{trace_id=\"{trace_id}\"}}"))),
        "no exemplar with trace {trace_id}:\n{exemplars}"
    );
    // The logs name the same trace and keep the request id: Fidelity's line for this bonus.
    let log = std::fs::read_to_string(suite.logs_dir().join("fidelity.log")).expect("log");
    let line = log
        .lines()
        .find(|l| l.contains(&format!("\"trace_id\":\"{trace_id}\"")))
        .unwrap_or_else(|| panic!("no fidelity log line with trace id {trace_id}"));
    let line: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
    assert!(
        line.to_string().contains("\"request_id\":\"trace-test-"),
        "{line}"
    );
    eprintln!("{line}");
    let expected_type = if protocol == "http/json" {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    assert!(
        receiver
            .content_types
            .lock()
            .expect("lock")
            .iter()
            .all(|t| t.starts_with(expected_type)),
        "{protocol}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_over_purchase_is_one_trace_over_otlp_protobuf() {
    one_purchase_is_one_trace("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_over_purchase_is_one_trace_over_otlp_json() {
    one_purchase_is_one_trace("http/json").await;
}

/// Work finished later, outside the purchase's request, is its own trace linked to the
/// purchase: the order worker's sale of a deferred order, and the outbox's bonus delivery.
#[tokio::test(flavor = "multi_thread")]
async fn deferred_sales_and_outbox_deliveries_link_to_the_purchase() {
    let receiver = Receiver::start().await;
    let suite = Suite::start_with_env(
        tempfile::tempdir().expect("tempdir"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let faults = |member: &str, route: &str, on: bool| {
        let url = format!("{}/admin/faults", suite.url(member));
        let rules = if on {
            json!([{"route": route, "kind": "error", "probability": 1.0}])
        } else {
            json!([])
        };
        let request = suite
            .http
            .put(url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "rules": rules }));
        async move {
            let answer = request.send().await.expect("PUT /admin/faults");
            assert!(answer.status().is_success(), "{}", answer.status());
        }
    };
    let ecommerce = suite.url("ecommerce");
    let buy = |trace_id: &str, caller: &str| {
        suite
            .http
            .post(format!("{ecommerce}/buy"))
            .header("traceparent", format!("00-{trace_id}-{caller}-01"))
            .json(&json!({"product": "2", "user": "linker", "ft": true}))
            .send()
    };
    let linked_span = |name: &'static str, trace_id: String| {
        let receiver = &receiver;
        async move {
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                let found = receiver.spans.lock().expect("lock").iter().find_map(|r| {
                    (r.span.name == name
                        && r.span.links.iter().any(|l| hex(&l.trace_id) == trace_id))
                    .then(|| r.clone())
                });
                if let Some(found) = found {
                    return found;
                }
                assert!(
                    Instant::now() < deadline,
                    "no span {name:?} linked to trace {trace_id}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    // No Store replica can sell: the sale is deferred (202), then done by the order worker.
    faults("store-1", "/sell", true).await;
    faults("store-2", "/sell", true).await;
    let (trace_id, caller) = (random_hex(16), random_hex(8));
    let answer = buy(&trace_id, &caller).await.expect("buy");
    assert_eq!(answer.status(), 202);
    faults("store-1", "/sell", false).await;
    faults("store-2", "/sell", false).await;
    let worker = linked_span("drive deferred order", trace_id.clone()).await;
    assert_ne!(hex(&worker.span.trace_id), trace_id, "its own trace");
    let link = &worker.span.links[0];
    let purchase = receiver
        .trace(&trace_id)
        .into_iter()
        .find(|s| s.span.name == "POST /buy")
        .expect("the purchase's span");
    assert_eq!(
        hex(&link.span_id),
        purchase.id(),
        "linked to the purchase's span"
    );
    assert!(
        purchase
            .span
            .events
            .iter()
            .any(|e| e.name.contains("deferring the sale")),
        "the purchase span says the sale was deferred"
    );

    // Fidelity refuses: the bonus goes to the outbox, the dispatcher delivers it later.
    faults("fidelity", "/bonus", true).await;
    let (trace_id, caller) = (random_hex(16), random_hex(8));
    let answer: serde_json::Value = buy(&trace_id, &caller)
        .await
        .expect("buy")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["bonus"]["status"], "pending", "{answer}");
    faults("fidelity", "/bonus", false).await;
    let delivery = linked_span("deliver outbox bonus", trace_id.clone()).await;
    assert_ne!(hex(&delivery.span.trace_id), trace_id, "its own trace");
    // The delivery's call reached Fidelity inside the delivery's trace.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !receiver
        .trace(&hex(&delivery.span.trace_id))
        .iter()
        .any(|s| s.service == "fidelity" && s.span.name == "POST /bonus")
    {
        assert!(
            Instant::now() < deadline,
            "no fidelity span in the delivery's trace"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A collector that accepts connections and never answers: purchases are unaffected (export runs
/// on the batch processor's thread, behind a bounded queue) and the spans that do not fit are
/// dropped and counted. How much it costs is measured, not timed here
/// (scripts/bench/trace-cost.py, docs/observability.md).
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_collector_never_fails_a_purchase_and_dropped_spans_are_counted() {
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", blackhole.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = blackhole.accept().await {
            held.push(conn); // read nothing, answer nothing
        }
    });
    let suite = Suite::start_with_env(
        tempfile::tempdir().expect("tempdir"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let ecommerce = suite.url("ecommerce");
    for i in 0..12 {
        let answer = suite
            .http
            .post(format!("{ecommerce}/buy"))
            .json(&json!({"product": "3", "user": format!("hung{i}"), "ft": true}))
            .send()
            .await
            .expect("buy");
        assert_eq!(answer.status(), 200, "purchase {i}");
    }
    // 12 purchases make ~60 spans at ecommerce (about 5 each once the catalog and the rate are
    // cached); at most 16 are admitted (one hung batch plus the queue), the rest is dropped.
    let metrics = suite
        .http
        .get(format!("{ecommerce}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("otlp_spans_total{") && l.contains("outcome=\"dropped\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no dropped-span count:\n{metrics}"));
    assert!(dropped >= 25.0, "{dropped} spans counted as dropped");
}

/// Without an endpoint nothing is recorded, but the trace context still crosses every hop: the
/// callee's log lines carry the trace id the caller sent (and their own span ids).
#[tokio::test(flavor = "multi_thread")]
async fn without_an_endpoint_the_logs_still_follow_the_trace() {
    let suite = Suite::start_with_env(
        tempfile::tempdir().expect("tempdir"),
        &[],
        &[("RUST_LOG", &fidelity_bonus_lines())],
    )
    .await;
    let ecommerce = suite.url("ecommerce");
    let (trace_id, caller) = (random_hex(16), random_hex(8));
    let answer = suite
        .http
        .post(format!("{ecommerce}/buy"))
        .header("traceparent", format!("00-{trace_id}-{caller}-01"))
        .header("x-request-id", "no-endpoint-1")
        .json(&json!({"product": "4", "user": "quiet", "ft": true}))
        .send()
        .await
        .expect("buy");
    assert_eq!(answer.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log =
            std::fs::read_to_string(suite.logs_dir().join("fidelity.log")).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(&format!("\"trace_id\":\"{trace_id}\"")))
        {
            assert!(line.contains("\"request_id\":\"no-endpoint-1\""), "{line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fidelity log line with trace id {trace_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
