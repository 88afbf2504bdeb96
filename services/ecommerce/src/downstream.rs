//! HTTP calls to Store, Exchange and Fidelity. Each call has its own timeout, carries the
//! request id and the W3C trace context of its own client span (`POST /sell`, a child of the
//! current span: the purchase's, or the resilience policy's attempt span), is measured (`http_client_request_duration_seconds`) and fails with a
//! [`StepError`] that names the step, so the client learns which hop broke.
//!
//! The calls go through hyper-util's pooled HTTP/1 client directly, not reqwest: reqwest's
//! layers on top of the same pool (URL re-parsing for redirects, a retry layer, its body and
//! timeout wrappers) cost 12-15 µs of CPU per call on the benchmark machine against 31-46 µs for
//! the whole call without them (docs/benchmarks/happy-path.md, "The fifth round"), and every
//! purchase makes two such calls. What reqwest gave that is needed here is kept: a connect
//! timeout, a deadline over the whole exchange (headers and body), keep-alive pooling, and the
//! decisions of [`StepError::may_have_happened`]. A body cut in the middle is now `Transport`
//! (reqwest said `Decode`; both are in doubt). A connect that times out is `Transport {
//! never_sent: true }` only where the call's deadline is longer than the connect timeout (the
//! bonus dispatcher's); on a purchase the deadline, set first, ends it as a `Timeout`, in doubt,
//! as before. Redirects are not followed: a 3xx is a `Decode` error (in doubt: a `303` after a
//! POST means the action was done).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use ftshop_platform::money::{Decimal, RateBand};
use ftshop_platform::{Problem, REQUEST_ID_HEADER};
use http::{HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
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

/// The HTTP client: plain HTTP/1.1 (the suite's services talk HTTP on their private network,
/// TLS ends in front of ecommerce), bodies sent whole.
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The largest answer read from a downstream (a product, a rate, a sale or a problem is well
/// under 1 KiB): a longer one is an unreadable answer, not a buffer grown without bound.
pub const MAX_ANSWER_BYTES: usize = ftshop_platform::MAX_BODY_BYTES;

/// How long an idle pooled connection is kept: under the servers' own idle close (their
/// `header_read_timeout`, 10 s, `ftshop_platform::server::ServerLimits`), so a request is not
/// written into a connection the server is closing at that moment (it would fail after the
/// write, a sale in doubt for nothing).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole body of an answer, at most [`MAX_ANSWER_BYTES`].
async fn read_body(
    response: http::Response<hyper::body::Incoming>,
) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await?
        .to_bytes())
}

/// A failed exchange with the client: `never_sent` only when the connection could not be made,
/// so the request provably never reached the service.
fn client_error(step: Step, err: &hyper_util::client::legacy::Error) -> StepError {
    StepError::Transport {
        step,
        cause: ftshop_platform::error_chain(err),
        never_sent: err.is_connect(),
    }
}

/// A failed read of an answer's body: too long (unreadable), or the connection broke after the
/// request was sent (it may have been acted on).
fn body_error(step: Step, err: &(dyn std::error::Error + 'static)) -> StepError {
    if err.is::<http_body_util::LengthLimitError>() {
        StepError::Decode {
            step,
            cause: format!("answer longer than {MAX_ANSWER_BYTES} bytes"),
        }
    } else {
        StepError::Transport {
            step,
            cause: ftshop_platform::error_chain(err),
            never_sent: false,
        }
    }
}

/// A downstream base URL ecommerce can call: `http://host[:port][/path]`. Errors for anything
/// else: another scheme, an empty host, an invalid port, a query, a fragment or credentials.
fn check_base_url(base: &str) -> anyhow::Result<()> {
    let uri: Uri = base
        .parse()
        .map_err(|err| anyhow::anyhow!("downstream URL {base:?}: {err}"))?;
    // `http::Uri` drops a fragment and keeps an invalid port as `None` (the connector would
    // then use port 80), and a user name and password would be dropped without a word.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let after_host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => authority.find(':').map_or("", |i| &authority[i..]),
    };
    let port_ok = after_host
        .strip_prefix(':')
        .is_none_or(|port| port.parse::<u16>().is_ok())
        && (after_host.is_empty() || after_host.starts_with(':'));
    anyhow::ensure!(
        uri.scheme_str() == Some("http")
            && uri.host().is_some_and(|h| !h.is_empty())
            && port_ok
            && uri.query().is_none()
            && !base.contains(['#', '@']),
        "downstream URL {base:?}: an http://host[:port][/path] URL (no query, fragment \
         or credentials) is needed (the services talk plain HTTP on their network; put \
         TLS in front of ecommerce)"
    );
    Ok(())
}

/// One outgoing call before its common headers: method, URI, the JSON body of a POST and an
/// idempotency key.
struct Outgoing<'a> {
    method: Method,
    uri: Uri,
    body: Bytes,
    idempotency_key: Option<&'a str>,
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
    http: HttpClient,
    stores: Vec<String>,
    exchanges: Vec<String>,
    fidelity: String,
    timeout: Duration,
    next_store: AtomicUsize,
    next_exchange: AtomicUsize,
    /// The URIs of the calls every purchase makes (`/sell` on each Store replica, `/bonus`),
    /// parsed once rather than at each call (URL parsing was 2.5 % of ecommerce's CPU).
    hot_uris: Vec<(String, Uri)>,
}

impl Downstreams {
    /// The client for the given base URLs (`http://host:port`, a trailing `/` ignored) and the
    /// naive path's per-call `timeout` (also the connect timeout).
    ///
    /// Errors: no Store or Exchange URL, or a URL that is not `http://` with a host and a valid
    /// port, or has a query, a fragment or credentials.
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
        let stores: Vec<String> = stores.iter().map(trim).collect();
        let exchanges: Vec<String> = exchanges.iter().map(trim).collect();
        let fidelity = fidelity.trim().trim_end_matches('/').to_owned();
        for base in stores
            .iter()
            .chain(&exchanges)
            .chain(std::iter::once(&fidelity))
        {
            check_base_url(base)?;
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let http = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        let hot_uris = stores
            .iter()
            .map(|base| format!("{base}/sell"))
            .chain(std::iter::once(format!("{fidelity}/bonus")))
            .filter_map(|url| {
                let parsed = url.parse().ok()?;
                Some((url, parsed))
            })
            .collect();
        Ok(Self {
            http,
            stores,
            exchanges,
            fidelity,
            timeout,
            next_store: AtomicUsize::new(0),
            next_exchange: AtomicUsize::new(0),
            hot_uris,
        })
    }

    /// The URI `{base}{path}`: parsed once when it is one of [`Self::hot_uris`], else now. An
    /// invalid one (bases are checked at start and ids are URL-safe, so none is expected) fails
    /// the step before anything is sent.
    fn uri(&self, step: Step, base: &str, path: &str) -> Result<Uri, StepError> {
        let parsed = self.hot_uris.iter().find(|(url, _)| {
            url.len() == base.len() + path.len() && url.starts_with(base) && url.ends_with(path)
        });
        match parsed {
            Some((_, uri)) => Ok(uri.clone()),
            None => format!("{base}{path}")
                .parse()
                .map_err(|err: http::uri::InvalidUri| StepError::Transport {
                    step,
                    cause: format!("invalid URL {base}{path}: {err}"),
                    never_sent: true,
                }),
        }
    }

    /// A GET of `{base}{path}`.
    fn get(&self, step: Step, base: &str, path: &str) -> Result<Outgoing<'static>, StepError> {
        Ok(Outgoing {
            method: Method::GET,
            uri: self.uri(step, base, path)?,
            body: Bytes::new(),
            idempotency_key: None,
        })
    }

    /// A POST of `body` as JSON to `{base}{path}`.
    fn post<'a>(
        &self,
        step: Step,
        base: &str,
        path: &str,
        body: &impl Serialize,
        idempotency_key: Option<&'a str>,
    ) -> Result<Outgoing<'a>, StepError> {
        let body = serde_json::to_vec(body).map_err(|err| StepError::Transport {
            step,
            cause: format!("request body: {err}"),
            never_sent: true,
        })?;
        Ok(Outgoing {
            method: Method::POST,
            uri: self.uri(step, base, path)?,
            body: Bytes::from(body),
            idempotency_key,
        })
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
        let req = self.get(Step::Product, base, &format!("/product?product={id}"))?;
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
                self.get(Step::Exchange, base, "/exchange")?,
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
        let req = self.post(
            Step::Sell,
            base,
            "/sell",
            &serde_json::json!({ "product": product }),
            Some(idempotency_key),
        )?;
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
        let req = self.post(
            Step::Bonus,
            base,
            "/bonus",
            &serde_json::json!({
                "user": user, "bonus": points, "transaction_id": transaction_id,
            }),
            None,
        )?;
        let _: serde_json::Value = self
            .call(Step::Bonus, base, req, request_id, timeout)
            .await?;
        Ok(())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        step: Step,
        base: &str,
        request: Outgoing<'_>,
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

    /// Sends `request` with the request id, the trace context of `span` and the deadline
    /// header; reads the whole answer within `timeout` (connect, send, headers and body).
    async fn send<T: DeserializeOwned>(
        &self,
        step: Step,
        request: Outgoing<'_>,
        request_id: &str,
        span: &tracing::Span,
        timeout: Duration,
    ) -> Result<T, StepError> {
        let not_sent = |err: http::Error| StepError::Transport {
            step,
            cause: format!("request not built: {err}"),
            never_sent: true,
        };
        let mut builder = http::Request::builder()
            .method(request.method)
            .uri(request.uri)
            .header(REQUEST_ID_HEADER, request_id)
            .header(
                DEADLINE_HEADER,
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            );
        if let Some(key) = request.idempotency_key {
            builder = builder.header("idempotency-key", key);
        }
        if !request.body.is_empty() {
            builder = builder.header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(headers) = builder.headers_mut() {
            ftshop_platform::telemetry::inject_context(span, headers);
        }
        let request = builder.body(Full::new(request.body)).map_err(not_sent)?;
        // One deadline over connect, send, head and body.
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = |_| StepError::Timeout {
            step,
            after: timeout,
        };
        let response = tokio::time::timeout_at(deadline, self.http.request(request))
            .await
            .map_err(timed_out)?
            .map_err(|err| client_error(step, &err))?;
        let status = response.status();
        if status.is_redirection() {
            // Not a refusal (a `303` says the POST was acted on) nor an answer: in doubt.
            return Err(StepError::Decode {
                step,
                cause: format!("answered {status}; redirects are not followed"),
            });
        }
        let body = tokio::time::timeout_at(deadline, read_body(response));
        if !status.is_success() {
            // The status is the answer; its problem's detail is read if it can be (a body cut,
            // late or too long does not turn an out-of-stock into a sale in doubt).
            let detail = body
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|body| serde_json::from_slice::<Problem>(&body).ok())
                .and_then(|problem| problem.detail);
            return Err(StepError::Status {
                step,
                status,
                detail,
            });
        }
        let body = body
            .await
            .map_err(timed_out)?
            .map_err(|err| body_error(step, &*err))?;
        serde_json::from_slice(&body).map_err(|err| StepError::Decode {
            step,
            cause: err.to_string(),
        })
    }

    /// Whether `GET {base}/health/live` answers 2xx within 300 ms.
    async fn is_live(&self, base: &str) -> bool {
        let Ok(uri) = format!("{base}/health/live").parse::<Uri>() else {
            return false;
        };
        let Ok(request) = http::Request::get(uri).body(Full::new(Bytes::new())) else {
            return false;
        };
        let probe = async {
            let response = self.http.request(request).await.ok()?;
            let status = response.status();
            // Read to the end, so the connection goes back to the pool.
            read_body(response).await.ok()?;
            Some(status.is_success())
        };
        tokio::time::timeout(Duration::from_millis(300), probe)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
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
            let probes = urls.iter().map(|u| self.is_live(u));
            let live = futures::future::join_all(probes)
                .await
                .into_iter()
                .filter(|live| *live)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

    //! Every way a call can fail, against raw sockets, and the class each one gets: the class
    //! decides whether a sale is in doubt ([`StepError::may_have_happened`]).

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const TIMEOUT: Duration = Duration::from_millis(300);

    /// Reads one request (head and `content-length` body) and returns it as text.
    async fn read_request(stream: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                return String::from_utf8_lossy(&buf).into_owned();
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    }

    /// A server that hands each connection to `handle`; its base URL.
    async fn raw_server<F, Fut>(handle: F) -> String
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(stream));
            }
        });
        base
    }

    /// A server that reads each request and writes `answer` (a whole HTTP/1.1 response).
    async fn answering(answer: &'static str) -> String {
        raw_server(move |mut stream| async move {
            loop {
                let request = read_request(&mut stream).await;
                if request.is_empty() {
                    return;
                }
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        })
        .await
    }

    fn downstreams(base: &str) -> Downstreams {
        Downstreams::new(&[base.to_owned()], &[base.to_owned()], base, TIMEOUT).unwrap()
    }

    async fn sell(base: &str) -> Result<Sale, StepError> {
        downstreams(base)
            .sell_at(base, "p-1", "key-1", "req-1", TIMEOUT)
            .await
    }

    /// A server that answers with `head` (a status line, headers and the start of a body) and
    /// then stalls (`stall`) or closes the connection.
    async fn answering_half(head: &'static str, stall: bool) -> String {
        raw_server(move |mut stream| async move {
            read_request(&mut stream).await;
            stream.write_all(head.as_bytes()).await.unwrap();
            if stall {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
        .await
    }

    /// The head of a sale's answer and the first bytes of its 40-byte body.
    const HALF_A_SALE: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{\"transaction_id\":";

    /// A transport error after the request may have been sent: a sale in doubt.
    fn assert_sent_and_broken(err: &StepError) {
        assert!(
            matches!(
                err,
                StepError::Transport {
                    never_sent: false,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.may_have_happened());
    }

    #[tokio::test]
    async fn a_refused_connection_was_never_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = sell(&base).await.unwrap_err();
        assert!(
            matches!(
                err,
                StepError::Transport {
                    never_sent: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.may_have_happened());
        assert!(err.to_string().contains("onnection refused"), "{err}");
    }

    #[tokio::test]
    async fn a_connection_closed_after_the_request_may_have_acted() {
        let base = raw_server(|mut stream| async move {
            read_request(&mut stream).await;
            drop(stream);
        })
        .await;
        assert_sent_and_broken(&sell(&base).await.unwrap_err());
    }

    #[tokio::test]
    async fn no_answer_within_the_timeout_is_a_timeout() {
        let base = raw_server(|mut stream| async move {
            read_request(&mut stream).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let started = Instant::now();
        let err = sell(&base).await.unwrap_err();
        assert!(matches!(err, StepError::Timeout { .. }), "{err:?}");
        assert!(err.may_have_happened());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_body_that_stalls_after_the_head_is_a_timeout() {
        let base = answering_half(HALF_A_SALE, true).await;
        let err = sell(&base).await.unwrap_err();
        assert!(matches!(err, StepError::Timeout { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_connection_cut_mid_body_may_have_acted() {
        let base = answering_half(HALF_A_SALE, false).await;
        assert_sent_and_broken(&sell(&base).await.unwrap_err());
    }

    #[tokio::test]
    async fn a_redirect_is_in_doubt() {
        let base =
            answering("HTTP/1.1 303 See Other\r\nlocation: /sales/1\r\ncontent-length: 0\r\n\r\n")
                .await;
        let err = sell(&base).await.unwrap_err();
        assert!(matches!(err, StepError::Decode { .. }), "{err:?}");
        assert!(err.may_have_happened());
    }

    #[tokio::test]
    async fn an_unreadable_answer_is_a_decode_error() {
        let base = answering(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\nnot json!",
        )
        .await;
        let err = sell(&base).await.unwrap_err();
        assert!(matches!(err, StepError::Decode { .. }), "{err:?}");
        assert!(err.may_have_happened());
    }

    #[tokio::test]
    async fn an_answer_past_the_limit_is_a_decode_error() {
        let base = raw_server(|mut stream| async move {
            read_request(&mut stream).await;
            let length = MAX_ANSWER_BYTES + 1;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            let _ = stream.write_all(&vec![b' '; length]).await;
        })
        .await;
        let err = sell(&base).await.unwrap_err();
        assert!(matches!(err, StepError::Decode { .. }), "{err:?}");
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[tokio::test]
    async fn an_error_status_carries_the_problem_detail() {
        let base = answering(
            "HTTP/1.1 409 Conflict\r\ncontent-type: application/problem+json\r\ncontent-length: 70\r\n\r\n{\"type\":\"about:blank\",\"title\":\"Conflict\",\"status\":409,\"detail\":\"gone\"}",
        )
        .await;
        let err = sell(&base).await.unwrap_err();
        match &err {
            StepError::Status { status, detail, .. } => {
                assert_eq!(*status, StatusCode::CONFLICT);
                assert_eq!(detail.as_deref(), Some("gone"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!err.may_have_happened());
        assert_eq!(
            err.to_problem().kind,
            "https://ftshop.dev/problems/out-of-stock"
        );
    }

    #[tokio::test]
    async fn an_error_status_wins_over_a_body_cut_or_late() {
        let head = "HTTP/1.1 409 Conflict\r\ncontent-type: application/problem+json\r\ncontent-length: 70\r\n\r\n{\"type\":";
        for stall in [false, true] {
            let base = answering_half(head, stall).await;
            let err = sell(&base).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    StepError::Status {
                        status: StatusCode::CONFLICT,
                        detail: None,
                        ..
                    }
                ),
                "stall {stall}: {err:?}"
            );
            assert!(!err.may_have_happened());
        }
    }

    #[tokio::test]
    async fn a_sale_sends_its_headers_and_body_and_reuses_the_connection() {
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let base = raw_server(move |mut stream| {
            let seen = seen_tx.clone();
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                loop {
                    let request = read_request(&mut stream).await;
                    if request.is_empty() {
                        return;
                    }
                    seen.send(request).unwrap();
                    let body = r#"{"transaction_id":"t-1"}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(answer.as_bytes()).await.unwrap();
                }
            }
        })
        .await;
        let calls = downstreams(&base);
        for _ in 0..3 {
            let sale = calls
                .sell_at(&base, "p-1", "key-1", "req-1", TIMEOUT)
                .await
                .unwrap();
            assert_eq!(sale.transaction_id, "t-1");
        }
        let request = seen_rx.recv().await.unwrap().to_ascii_lowercase();
        for line in [
            "post /sell http/1.1",
            "x-request-id: req-1",
            "idempotency-key: key-1",
            "content-type: application/json",
            "x-ftshop-deadline-ms: 300",
            "content-length: 17",
            "{\"product\":\"p-1\"}",
        ] {
            assert!(request.contains(line), "{line:?} missing in {request}");
        }
        assert!(request.contains("\r\nhost: 127.0.0.1:"), "{request}");
        assert_eq!(connections.load(Ordering::SeqCst), 1, "kept alive");
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        for bad in [
            "https://store:8080",
            "ftp://store",
            "store:8080",
            "not a url",
            "http://",
            "http://store:8080/?a=1",
            "http://store:8080#x",
            "http://store:99999",
            "http://store:abc",
            "http://:8080",
            "http://user:pw@store:8080",
            "http://[::1]:70000",
        ] {
            let result = Downstreams::new(
                &[bad.to_owned()],
                &["http://127.0.0.1:9".to_owned()],
                "http://127.0.0.1:9",
                TIMEOUT,
            );
            assert!(result.is_err(), "{bad:?} accepted");
        }
        assert!(
            Downstreams::new(
                &[
                    "http://store-1:8080/".to_owned(),
                    "http://gateway/store-2".to_owned(),
                    "http://[::1]:8081".to_owned()
                ],
                &["http://127.0.0.1:9".to_owned()],
                " http://fidelity:8080 ",
                TIMEOUT,
            )
            .is_ok()
        );
    }
}
