//! HTTP calls to Store, Exchange and Fidelity. Each call has its own timeout, carries the
//! request id and the W3C trace context of its own client span (`POST /sell`, a child of the
//! current span: the purchase's, or the resilience policy's attempt span), is measured (`http_client_request_duration_seconds`) and fails with a
//! [`StepError`] that names the step, so the client learns which hop broke.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use ftshop_platform::money::{Decimal, RateBand};
use ftshop_platform::{Problem, REQUEST_ID_HEADER};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

/// The four calls of a purchase, as named in problems, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Product,
    Exchange,
    Sell,
    Bonus,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Product => "product",
            Step::Exchange => "exchange",
            Step::Sell => "sell",
            Step::Bonus => "bonus",
        }
    }

    /// The method and route template each step calls.
    pub fn http_route(self) -> (&'static str, &'static str) {
        match self {
            Step::Product => ("GET", "/product"),
            Step::Exchange => ("GET", "/exchange"),
            Step::Sell => ("POST", "/sell"),
            Step::Bonus => ("POST", "/bonus"),
        }
    }
}

/// Header telling a downstream how many milliseconds the caller will still wait, so it can
/// give up on work nobody will read.
pub const DEADLINE_HEADER: &str = "x-ftshop-deadline-ms";

fn transport_error(step: Step, err: reqwest::Error, timeout: Duration) -> StepError {
    if err.is_timeout() {
        StepError::Timeout {
            step,
            after: timeout,
        }
    } else if err.is_decode() {
        StepError::Decode {
            step,
            cause: err.to_string(),
        }
    } else {
        let cause =
            std::error::Error::source(&err).map_or_else(|| err.to_string(), |s| s.to_string());
        StepError::Transport {
            step,
            cause,
            never_sent: err.is_connect(),
        }
    }
}

/// Why a downstream call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StepError {
    #[error("{}: no answer within {after:?}", step.as_str())]
    Timeout { step: Step, after: Duration },
    #[error("{}: answered {status}", step.as_str())]
    Status {
        step: Step,
        status: StatusCode,
        detail: Option<String>,
    },
    #[error("{}: unreachable: {cause}", step.as_str())]
    Transport {
        step: Step,
        cause: String,
        /// True when the request provably never reached the service (the connection could
        /// not be made); false when it may have (or nothing is known).
        never_sent: bool,
    },
    #[error("{}: unreadable answer: {cause}", step.as_str())]
    Decode { step: Step, cause: String },
    /// The step answered, but with data outside the suite's shared limits
    /// ([`ftshop_platform::limits`]): a product whose bonus Fidelity would refuse. Found before
    /// any side effect; never counted against a breaker (the replica is healthy, its data is not).
    #[error("{}: outside the suite's limits: {cause}", step.as_str())]
    OutsideLimits { step: Step, cause: String },
}

impl StepError {
    /// Whether the downstream may have acted on the request although the call failed: a
    /// timeout, an unreadable answer, or a transport error after the connection was made. False
    /// when the service answered that it did not (an error status), or never got the request.
    pub fn may_have_happened(&self) -> bool {
        match self {
            StepError::Timeout { .. } | StepError::Decode { .. } => true,
            StepError::Transport { never_sent, .. } => !never_sent,
            StepError::Status { .. } | StepError::OutsideLimits { .. } => false,
        }
    }

    pub fn step(&self) -> Step {
        match self {
            StepError::Timeout { step, .. }
            | StepError::Status { step, .. }
            | StepError::Transport { step, .. }
            | StepError::Decode { step, .. }
            | StepError::OutsideLimits { step, .. } => *step,
        }
    }

    /// The client's answer: the downstream's own 404/409 pass through, everything else is a
    /// gateway error naming the step.
    pub fn to_problem(&self) -> Problem {
        let step = self.step();
        let problem = match self {
            StepError::Status { status, detail, .. }
                if *status == StatusCode::NOT_FOUND && step == Step::Product =>
            {
                Problem::not_found(
                    detail
                        .clone()
                        .unwrap_or_else(|| "unknown product".to_owned()),
                )
            }
            StepError::Status { status, detail, .. }
                if *status == StatusCode::CONFLICT && step == Step::Sell =>
            {
                Problem::conflict(
                    "out-of-stock",
                    detail.clone().unwrap_or_else(|| "out of stock".to_owned()),
                )
            }
            // A 502: the client's request is fine, the catalog's data is not (docs/design.md,
            // "Limits"). The order is `failed`, so a replay after the price is corrected sells.
            StepError::OutsideLimits { .. } => {
                Problem::new(StatusCode::BAD_GATEWAY, "outside-limits", self.to_string())
            }
            StepError::Timeout { .. } => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "downstream-timeout",
                self.to_string(),
            ),
            _ => Problem::new(
                StatusCode::BAD_GATEWAY,
                "downstream-failed",
                self.to_string(),
            ),
        };
        problem.with_step(step.as_str())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub value_cents: i64,
}

impl Product {
    /// The bonus points of this product when the suite's limits accept its price
    /// ([`ftshop_platform::limits::check_price`]: Fidelity credits them), checked before
    /// anything is sold; otherwise an [`StepError::OutsideLimits`] of the product step naming it.
    pub fn checked_bonus(&self) -> Result<i64, StepError> {
        ftshop_platform::limits::check_price(self.value_cents).map_err(|err| {
            StepError::OutsideLimits {
                step: Step::Product,
                cause: format!("product {:?}: {err}", self.id),
            }
        })
    }
}

/// Exchange's answer. `rate` is read from the JSON number exactly (its shortest decimal text).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Rate {
    #[serde(with = "ftshop_platform::money::json")]
    pub rate: Decimal,
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sale {
    pub transaction_id: String,
}

/// Where the downstream services live and how to reach them.
pub struct Downstreams {
    http: reqwest::Client,
    stores: Vec<String>,
    exchanges: Vec<String>,
    fidelity: String,
    timeout: Duration,
    next_store: AtomicUsize,
    next_exchange: AtomicUsize,
    /// The URLs of the calls every purchase makes (`/sell` on each Store replica, `/bonus`),
    /// parsed once: reqwest parses a `String` URL at each call (URL parsing was 2.5 % of
    /// ecommerce's CPU, 2.2 % after this: reqwest's redirect layer parses it again;
    /// docs/benchmarks/happy-path.md).
    hot_urls: Vec<(String, reqwest::Url)>,
}

impl Downstreams {
    pub fn new(
        stores: &[String],
        exchanges: &[String],
        fidelity: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!stores.is_empty(), "at least one --store-url is needed");
        anyhow::ensure!(
            !exchanges.is_empty(),
            "at least one --exchange-url is needed"
        );
        let trim = |u: &String| u.trim().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .connect_timeout(timeout)
            .build()?;
        let stores: Vec<String> = stores.iter().map(trim).collect();
        let fidelity = fidelity.trim().trim_end_matches('/').to_owned();
        let hot_urls = stores
            .iter()
            .map(|base| format!("{base}/sell"))
            .chain(std::iter::once(format!("{fidelity}/bonus")))
            .filter_map(|url| {
                let parsed = reqwest::Url::parse(&url).ok()?;
                Some((url, parsed))
            })
            .collect();
        Ok(Self {
            http,
            stores,
            exchanges: exchanges.iter().map(trim).collect(),
            fidelity,
            timeout,
            next_store: AtomicUsize::new(0),
            next_exchange: AtomicUsize::new(0),
            hot_urls,
        })
    }

    /// A POST to `{base}{path}`, its URL parsed once when it is one of [`Self::hot_urls`], else
    /// parsed by reqwest at the call (an invalid URL is then the call's error, as before).
    fn post(&self, base: &str, path: &str) -> reqwest::RequestBuilder {
        let parsed = self.hot_urls.iter().find(|(url, _)| {
            url.len() == base.len() + path.len() && url.starts_with(base) && url.ends_with(path)
        });
        match parsed {
            Some((_, url)) => self.http.post(url.clone()),
            None => self.http.post(format!("{base}{path}")),
        }
    }

    /// Round-robin over replicas: the naive path spreads load but never fails over.
    fn pick<'a>(urls: &'a [String], next: &AtomicUsize) -> &'a str {
        let i = next.fetch_add(1, Ordering::Relaxed) % urls.len();
        &urls[i]
    }

    pub fn stores(&self) -> &[String] {
        &self.stores
    }

    pub fn exchanges(&self) -> &[String] {
        &self.exchanges
    }

    pub fn fidelity(&self) -> &str {
        &self.fidelity
    }

    /// The per-call timeout of the naive path.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    // The naive path: one call each, round-robin over replicas, the fixed timeout.

    pub async fn product(&self, id: &str, request_id: &str) -> Result<Product, StepError> {
        let base = Self::pick(&self.stores, &self.next_store);
        self.product_at(base, id, request_id, self.timeout).await
    }

    pub async fn exchange(&self, request_id: &str) -> Result<Rate, StepError> {
        let base = Self::pick(&self.exchanges, &self.next_exchange);
        self.exchange_at(base, request_id, self.timeout).await
    }

    pub async fn sell(
        &self,
        product: &str,
        idempotency_key: &str,
        request_id: &str,
    ) -> Result<Sale, StepError> {
        let base = Self::pick(&self.stores, &self.next_store);
        self.sell_at(base, product, idempotency_key, request_id, self.timeout)
            .await
    }

    pub async fn bonus(
        &self,
        user: &str,
        points: i64,
        transaction_id: &str,
        request_id: &str,
    ) -> Result<(), StepError> {
        self.bonus_at(
            &self.fidelity,
            user,
            points,
            transaction_id,
            request_id,
            self.timeout,
        )
        .await
    }

    // One call to one replica with the given timeout: the building blocks of both paths.

    pub async fn product_at(
        &self,
        base: &str,
        id: &str,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Product, StepError> {
        // Ids are validated to URL-safe characters (`validate_id`), so no encoding is needed.
        let req = self.http.get(format!("{base}/product?product={id}"));
        self.call(Step::Product, base, req, request_id, timeout)
            .await
    }

    pub async fn exchange_at(
        &self,
        base: &str,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Rate, StepError> {
        let rate: Rate = self
            .call(
                Step::Exchange,
                base,
                self.http.get(format!("{base}/exchange")),
                request_id,
                timeout,
            )
            .await?;
        // Exchange refuses implausible rates at its boundary; this is the second check, so a
        // misconfigured or foreign Exchange cannot price an order at 1e300 or 0 either.
        RateBand::DEFAULT
            .check(rate.rate)
            .map_err(|err| StepError::Decode {
                step: Step::Exchange,
                cause: err.to_string(),
            })?;
        Ok(rate)
    }

    pub async fn sell_at(
        &self,
        base: &str,
        product: &str,
        idempotency_key: &str,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Sale, StepError> {
        let req = self
            .post(base, "/sell")
            .header("idempotency-key", idempotency_key)
            .json(&serde_json::json!({ "product": product }));
        self.call(Step::Sell, base, req, request_id, timeout).await
    }

    pub async fn bonus_at(
        &self,
        base: &str,
        user: &str,
        points: i64,
        transaction_id: &str,
        request_id: &str,
        timeout: Duration,
    ) -> Result<(), StepError> {
        let req = self.post(base, "/bonus").json(&serde_json::json!({
            "user": user, "bonus": points, "transaction_id": transaction_id,
        }));
        let _: serde_json::Value = self
            .call(Step::Bonus, base, req, request_id, timeout)
            .await?;
        Ok(())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        step: Step,
        base: &str,
        request: reqwest::RequestBuilder,
        request_id: &str,
        timeout: Duration,
    ) -> Result<T, StepError> {
        // The control room's purchase story (crate::story): a no-op outside a recorded /buy.
        let attempt = crate::story::AttemptGuard::begin(step, self.replica_number(step, base));
        let started = Instant::now();
        let (method, route) = step.http_route();
        let span = tracing::info_span!(
            target: "ftshop::trace::http",
            "call",
            otel.name = format_args!("{method} {route}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = method,
            url.template = route,
            http.response.status_code = tracing::field::Empty,
            ftshop.step = step.as_str(),
            ftshop.outcome = tracing::field::Empty,
        );
        let result = self
            .send(step, request, request_id, &span, timeout)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(StepError::Timeout { .. }) => "timeout",
            Err(StepError::Status { status, .. }) if status.is_client_error() => "client_error",
            Err(StepError::Status { .. }) => "server_error",
            Err(StepError::Transport { .. }) => "unreachable",
            Err(StepError::Decode { .. }) => "decode_error",
            Err(StepError::OutsideLimits { .. }) => "outside_limits",
        };
        attempt.finish(story_outcome(outcome));
        metrics::histogram!(
            "http_client_request_duration_seconds",
            "service" => "ecommerce", "target" => step.as_str(), "outcome" => outcome,
        )
        .record(started.elapsed().as_secs_f64());
        if !span.is_disabled() {
            span.record("ftshop.outcome", outcome);
            if let Err(StepError::Status { status, .. }) = &result {
                span.record("http.response.status_code", status.as_u16());
            } else if result.is_ok() {
                span.record("http.response.status_code", 200);
            }
            if !matches!(outcome, "success" | "client_error") {
                span.record("otel.status_code", "error");
            }
        }
        result
    }

    /// `base`'s 1-based position among `step`'s replicas (`store-2` is 2); 0 when unknown.
    fn replica_number(&self, step: Step, base: &str) -> usize {
        let replicas = match step {
            Step::Product | Step::Sell => &self.stores[..],
            Step::Exchange => &self.exchanges[..],
            Step::Bonus => return 1,
        };
        replicas.iter().position(|b| b == base).map_or(0, |i| i + 1)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        step: Step,
        request: reqwest::RequestBuilder,
        request_id: &str,
        span: &tracing::Span,
        timeout: Duration,
    ) -> Result<T, StepError> {
        let mut trace_headers = axum::http::HeaderMap::new();
        ftshop_platform::telemetry::inject_context(span, &mut trace_headers);
        let request = request
            .timeout(timeout)
            .header(REQUEST_ID_HEADER, request_id)
            .headers(trace_headers)
            .header(DEADLINE_HEADER, timeout.as_millis().to_string());
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(step, e, timeout))?;
        let status = response.status();
        if !status.is_success() {
            let detail = response.json::<Problem>().await.ok().and_then(|p| p.detail);
            return Err(StepError::Status {
                step,
                status,
                detail,
            });
        }
        response
            .json::<T>()
            .await
            .map_err(|e| transport_error(step, e, timeout))
    }

    /// Readiness: every kind of downstream has at least one live replica.
    pub async fn check_live(&self) -> Result<String, String> {
        let groups = [
            ("store", &self.stores[..]),
            ("exchange", &self.exchanges[..]),
            ("fidelity", std::slice::from_ref(&self.fidelity)),
        ];
        let mut summary = Vec::new();
        let mut down = Vec::new();
        for (name, urls) in groups {
            let probes = urls.iter().map(|u| {
                self.http
                    .get(format!("{u}/health/live"))
                    .timeout(Duration::from_millis(300))
                    .send()
            });
            let live = futures::future::join_all(probes)
                .await
                .into_iter()
                .filter(|r| r.as_ref().is_ok_and(|r| r.status().is_success()))
                .count();
            summary.push(format!("{name} {live}/{}", urls.len()));
            if live == 0 {
                down.push(name);
            }
        }
        let summary = summary.join(", ");
        if down.is_empty() {
            Ok(summary)
        } else {
            Err(format!("no live replica of {}: {summary}", down.join(", ")))
        }
    }
}

/// The story's name for a call's metric outcome.
fn story_outcome(outcome: &str) -> crate::story::AttemptOutcome {
    use crate::story::AttemptOutcome as O;
    match outcome {
        "success" => O::Success,
        "timeout" => O::Timeout,
        "client_error" | "outside_limits" => O::ClientError,
        "server_error" => O::ServerError,
        "unreachable" => O::Unreachable,
        _ => O::DecodeError,
    }
}
