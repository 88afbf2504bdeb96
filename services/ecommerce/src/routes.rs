//! `POST /buy` and `GET /orders/{id}`.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ftshop_platform::extract::{IdempotencyKey, Json, Path, Query, validate_id};
use ftshop_platform::{Problem, REQUEST_ID_HEADER};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use crate::AppState;
use crate::downstream::{Product, Step, StepError};
use crate::ft::{Degradations, SellFailure};
use crate::money::{Decimal, cents_to_decimal, to_cents};
use crate::orders::{self, Backlog, Claim, Completion, NewOrder, OrderView};
use crate::promise::{Admission, rfc3339_millis};
use crate::story;

#[derive(OpenApi)]
#[openapi(
    paths(buy, get_order, get_backlog, get_breakers, reset_breaker, force_open_breaker, reset_all_breakers, recent_purchases, purchase_story, breaker_transitions),
    components(schemas(BuyRequest, BuyResponse, ProductView, BonusView, OrderView, Backlog, Problem, story::Story)),
    tags((name = "ecommerce", description = "Purchases across Store, Exchange and Fidelity"))
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/buy", post(buy))
        .route("/orders/{id}", get(get_order))
        .route("/backlog", get(get_backlog))
        .route("/breakers", get(get_breakers))
        .with_state(state)
}

/// Operator routes, served behind the admin token by the platform.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/admin/breakers/reset", post(reset_all_breakers))
        .route("/admin/breakers/{name}/reset", post(reset_breaker))
        .route(
            "/admin/breakers/{name}/force-open",
            post(force_open_breaker),
        )
        .route("/admin/breakers/transitions", get(breaker_transitions))
        .route("/admin/purchases", get(recent_purchases))
        .route("/admin/purchases/{order_id}", get(purchase_story))
        .with_state(state)
}

/// `POST /buy` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuyRequest {
    /// Product id in Store's catalog.
    pub product: String,
    /// Customer id; receives the bonus points.
    pub user: String,
    /// Fault tolerance for this request (default true). `false` makes the four calls naively.
    #[serde(default = "default_ft")]
    pub ft: bool,
}

fn default_ft() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProductView {
    pub id: String,
    pub name: String,
    /// Price in USD, exact to the cent (a JSON number: `24.5`).
    #[schema(value_type = f64, example = 24.5)]
    #[serde(with = "ftshop_platform::money::json")]
    pub value: Decimal,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BonusView {
    pub points: i64,
    /// `credited` or `pending`.
    pub status: String,
}

/// A purchase: completed (200) or durably accepted with the sale deferred (202).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuyResponse {
    pub order_id: String,
    /// `completed`, or `pending` when the sale is deferred (see `GET /orders/{id}`).
    pub status: String,
    /// Store's sale; `null` while the sale is deferred.
    pub transaction_id: Option<String>,
    pub product: ProductView,
    /// USD→BRL rate used, the exact decimal Exchange answered (a JSON number: `5.31`).
    #[schema(value_type = f64, example = 5.31)]
    #[serde(with = "ftshop_platform::money::json")]
    pub rate: Decimal,
    /// `value × rate` in BRL, computed exactly and rounded once to cents, half away from zero
    /// (24.50 × 5.31 = 130.095 → `130.1`; docs/design.md, "Money").
    #[schema(value_type = f64, example = 130.1)]
    #[serde(with = "ftshop_platform::money::json")]
    pub total: Decimal,
    pub bonus: BonusView,
    /// Every fallback that saved this purchase (empty on the happy path).
    pub degraded: Vec<String>,
    /// A deferred sale (202) only: when it is expected to complete, RFC 3339 UTC, from the
    /// backlog and the measured drain rate at acceptance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_completion_at: Option<String>,
    /// A deferred sale only: seconds from acceptance to the expected completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_completion_seconds: Option<f64>,
    /// A deferred sale only: the promise's bound (acceptance + `--defer-promise`), RFC 3339
    /// UTC; the sale completes or is cancelled by then, or the order says `promise_missed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promised_by: Option<String>,
}

/// Buy one unit of a product.
#[utoipa::path(
    post, path = "/buy", tag = "ecommerce",
    request_body = BuyRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body give the same answer and never a second sale")),
    responses(
        (status = 200, description = "Purchase completed", body = BuyResponse),
        (status = 202, description = "Accepted; the sale is deferred and will complete or be cancelled (ft=true only)", body = BuyResponse),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Out of stock, or the same key is being processed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields or key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "ft=true: no Store replica could sell now and the backlog of deferred sales cannot complete this one within the completion promise (type `deferral-refused`, step `sell`; header `Retry-After` in seconds, from the measured drain rate). Nothing is sold; a replay of the same key after Retry-After drives the order again", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "A downstream step failed, or the product's price is outside the suite's limits (type `outside-limits`, step `product`: its bonus would be refused by Fidelity; nothing is sold)", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "A downstream step timed out", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn buy(
    State(state): State<AppState>,
    headers: HeaderMap,
    key: IdempotencyKey,
    Json(request): Json<BuyRequest>,
) -> Response {
    let stories = state.stories.clone();
    let (product, user, ft) = (request.product.clone(), request.user.clone(), request.ft);
    // Boxed: the purchase's state machine (resilience policies, spans, the story's recording)
    // is large in a debug build, and moving it by value through `record` and the task-local
    // scope overflowed a 2 MiB test-thread stack (tests/buy.rs bursts). On the heap it is
    // allocated once and never moved.
    let purchase = Box::pin(purchase_answer(state, headers, key, request));
    story::record(&stories, product, user, ft, async move {
        purchase.await.into_response()
    })
    .await
}

/// `POST /buy` itself; [`buy`] records its story for the control room.
async fn purchase_answer(
    state: AppState,
    headers: HeaderMap,
    IdempotencyKey(key): IdempotencyKey,
    request: BuyRequest,
) -> Result<Response, Problem> {
    validate_id("product", &request.product)?;
    validate_id("user", &request.user)?;
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let fingerprint = format!("{}\n{}\n{}", request.product, request.user, request.ft);

    let new_id = uuid::Uuid::now_v7().to_string();
    let claim = orders::claim(
        &state.db,
        &NewOrder {
            order_id: &new_id,
            idempotency_key: key.as_deref(),
            fingerprint: &fingerprint,
            user: &request.user,
            product: &request.product,
            ft: request.ft,
        },
    )
    .await?;
    let lease = match claim {
        Claim::Fresh(lease) | Claim::Resumed(lease) => lease,
        Claim::Replay { status, body } => return Ok(replay(status, body)),
        Claim::InProgress => return Err(in_progress()),
        Claim::KeyReused => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "this Idempotency-Key was used with a different request body",
            ));
        }
    };
    let order_id = lease.order_id.clone();
    story::order_id(&order_id);

    let outcome = if request.ft {
        let deadline = tokio::time::Instant::now() + state.buy_budget;
        ftshop_resilience::with_deadline(
            deadline,
            ft_purchase(&state, &order_id, &request, &request_id, deadline),
        )
        .await
    } else {
        purchase(&state, &order_id, &request, &request_id).await
    };

    match outcome {
        Ok(Outcome::Completed(answer)) => {
            story::degraded(&answer.degraded);
            let body = serde_json::to_string(&answer).map_err(Problem::internal)?;
            let transaction_id = answer.transaction_id.clone().unwrap_or_default();
            let completion = Completion {
                user: &request.user,
                transaction_id: &transaction_id,
                value_cents: cents(answer.product.value)?,
                rate: answer.rate,
                total_cents: cents(answer.total)?,
                bonus_points: answer.bonus.points,
                bonus_status: &answer.bonus.status,
                completed_sync: true,
                response: &body,
            };
            if !orders::complete(&state.db, &lease, &completion).await? {
                return superseded(&state, &order_id).await;
            }
            if completion.bonus_status != "credited" {
                state.outbox.notify_one();
            }
            metrics::counter!("shop_orders_total", "outcome" => "completed", "ft" => ft_label(request.ft)).increment(1);
            Ok(replay(200, body))
        }
        Ok(Outcome::Deferred(deferral)) => {
            let answer = &deferral.answer;
            story::degraded(&answer.degraded);
            let body = serde_json::to_string(answer).map_err(Problem::internal)?;
            let written = orders::defer(
                &state.db,
                &lease,
                &orders::Deferral {
                    value_cents: cents(answer.product.value)?,
                    rate: answer.rate,
                    total_cents: cents(answer.total)?,
                    bonus_points: answer.bonus.points,
                    expected_completion_at: deferral.expected_at_ms,
                    promised_by: deferral.promised_by_ms,
                    response: &body,
                },
            )
            .await;
            let written = match written {
                Ok(true) => {
                    drop(deferral.admitted);
                    true
                }
                Ok(false) => {
                    deferral.admitted.not_written();
                    false
                }
                Err(err) => {
                    deferral.admitted.not_written();
                    return Err(err.into());
                }
            };
            if !written {
                return superseded(&state, &order_id).await;
            }
            state.deferred.notify_one();
            metrics::counter!("shop_orders_total", "outcome" => "accepted_pending", "ft" => ft_label(request.ft)).increment(1);
            Ok(replay(202, body))
        }
        Ok(Outcome::Refused(refusal)) => {
            let problem = refusal.problem(state.promise.promise());
            let body = serde_json::to_string(&problem).map_err(Problem::internal)?;
            // `failed`, not a final answer: a replay of the key after Retry-After drives the
            // order again, under the same sale key.
            let written = orders::finish_unsuccessfully(
                &state.db,
                &lease,
                Step::Sell.as_str(),
                false,
                problem.status,
                &body,
                None,
            )
            .await?;
            if !written {
                return superseded(&state, &order_id).await;
            }
            metrics::counter!("shop_orders_total", "outcome" => "refused", "ft" => ft_label(request.ft)).increment(1);
            metrics::counter!("shop_deferrals_refused_total").increment(1);
            tracing::info!(
                order_id,
                retry_after_s = refusal.retry_after.as_secs(),
                "deferral refused: the backlog cannot complete it within the promise"
            );
            let mut response = replay(problem.status, body);
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(refusal.retry_after.as_secs()),
            );
            Ok(response)
        }
        Err(failure) => {
            let problem = failure.error.to_problem();
            let final_answer = problem.status_code().is_client_error();
            let body = serde_json::to_string(&problem).map_err(Problem::internal)?;
            let written = orders::finish_unsuccessfully(
                &state.db,
                &lease,
                failure.error.step().as_str(),
                final_answer,
                problem.status,
                &body,
                failure.transaction_id.as_deref(),
            )
            .await?;
            if !written {
                return superseded(&state, &order_id).await;
            }
            let outcome = if final_answer { "rejected" } else { "failed" };
            metrics::counter!("shop_orders_total", "outcome" => outcome, "ft" => ft_label(request.ft)).increment(1);
            tracing::warn!(order_id, error = %failure.error, "purchase failed");
            Err(problem)
        }
    }
}

/// An amount of the answer in cents; it was made from cents, so this is exact and cannot fail
/// short of a bug.
fn cents(amount: Decimal) -> Result<i64, Problem> {
    to_cents(amount).ok_or_else(|| Problem::internal(format!("amount {amount} beyond i64 cents")))
}

/// `value_cents × rate` as the BRL total of an answer, rounded once to cents by the suite's rule
/// ([`ftshop_platform::limits::check_total`]). A total beyond what a JSON number holds exactly
/// is the rate's fault (the price is bounded by the shared limits, checked first): an Exchange
/// step error, never a saturated number.
pub(crate) fn total(value_cents: i64, rate: Decimal) -> Result<Decimal, StepError> {
    ftshop_platform::limits::check_total(value_cents, rate)
        .map(cents_to_decimal)
        .map_err(|err| StepError::Decode {
            step: Step::Exchange,
            cause: err.to_string(),
        })
}

/// This request's claim on its order was superseded while it ran (the order looked abandoned
/// and the order worker took it over): it answers what the new holder stored, or
/// `409 request-in-progress` while that one still runs. Never a second, different answer.
async fn superseded(state: &AppState, order_id: &str) -> Result<Response, Problem> {
    metrics::counter!("shop_order_claims_superseded_total").increment(1);
    tracing::warn!(
        order_id,
        "order claim superseded; answering the stored outcome"
    );
    match orders::answer_of(&state.db, order_id).await? {
        Some((status, body)) => Ok(replay(status, body)),
        None => Err(in_progress()),
    }
}

fn in_progress() -> Problem {
    Problem::conflict(
        "request-in-progress",
        "a request with this Idempotency-Key is still being processed; retry shortly",
    )
}

/// How a purchase ended, before it is recorded.
enum Outcome {
    Completed(BuyResponse),
    Deferred(Deferral),
    /// The sale could not happen now and admission control refused to defer it.
    Refused(Refusal),
}

/// A deferred sale admitted within the completion promise.
struct Deferral {
    answer: BuyResponse,
    /// Epoch milliseconds.
    expected_at_ms: i64,
    promised_by_ms: i64,
    /// Held until the order is written, so a backlog count meanwhile does not miss it.
    admitted: crate::promise::Admitted,
}

/// A deferral refused by admission control ([`crate::promise`]).
struct Refusal {
    /// Seconds until the backlog has drained enough for one more deferral.
    retry_after: std::time::Duration,
    /// How long the backlog plus this sale would take to drain.
    projected: std::time::Duration,
    /// Deferred sales were waiting, so the sale was not tried (first come, first served).
    behind: Option<u64>,
}

impl Refusal {
    fn problem(&self, promise: std::time::Duration) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "deferral-refused",
            format!(
                "{}, and the deferred sales ahead of this one, with it, would take up to {:.0} s to complete (99 % bound), beyond the {} s completion promise; nothing was sold, retry after {} s",
                match self.behind {
                    None => "no Store replica can sell now".to_owned(),
                    Some(waiting) => format!(
                        "{waiting} deferred sales wait (first come, first served: no sale is made ahead of them)"
                    ),
                },
                self.projected.as_secs_f64().ceil(),
                promise.as_secs(),
                self.retry_after.as_secs()
            ),
        )
        .with_step(Step::Sell.as_str())
    }
}

fn ft_label(ft: bool) -> &'static str {
    if ft { "on" } else { "off" }
}

struct PurchaseFailure {
    error: StepError,
    /// Set when the sale happened before a later step failed.
    transaction_id: Option<String>,
}

impl From<StepError> for PurchaseFailure {
    fn from(error: StepError) -> Self {
        Self {
            error,
            transaction_id: None,
        }
    }
}

/// The four calls, in the exercise's order. Store's idempotency key is derived from the order
/// id, so re-driving an order can never sell twice.
async fn purchase(
    state: &AppState,
    order_id: &str,
    request: &BuyRequest,
    request_id: &str,
) -> Result<Outcome, PurchaseFailure> {
    let calls = &state.downstreams;
    let product = calls.product(&request.product, request_id).await?;
    // The bonus Fidelity will be asked for, checked against its limits before the sale.
    let points = product.checked_bonus()?;
    let Product {
        id,
        name,
        value_cents,
    } = product;
    let rate = calls.exchange(request_id).await?;
    let total = total(value_cents, rate.rate)?;
    let sale = calls.sell(&id, &sale_key(order_id), request_id).await?;
    calls
        .bonus(&request.user, points, &sale.transaction_id, request_id)
        .await
        .map_err(|error| PurchaseFailure {
            error,
            transaction_id: Some(sale.transaction_id.clone()),
        })?;
    let mut degraded = Vec::new();
    if rate.source.as_deref() == Some("stale") {
        degraded.push("exchange:stale-rate".to_owned());
    }
    Ok(Outcome::Completed(BuyResponse {
        order_id: order_id.to_owned(),
        status: "completed".to_owned(),
        transaction_id: Some(sale.transaction_id),
        product: ProductView {
            id,
            name,
            value: cents_to_decimal(value_cents),
        },
        rate: rate.rate,
        total,
        bonus: BonusView {
            points,
            status: "credited".to_owned(),
        },
        degraded,
        expected_completion_at: None,
        expected_completion_seconds: None,
        promised_by: None,
    }))
}

/// Why an ft=true purchase's sale was not made on the request path.
enum NotSold {
    /// No Store replica could sell in time; `in_doubt`: an attempt may have sold it anyway.
    Unavailable { error: StepError, in_doubt: bool },
    /// Not tried: `waiting` deferred sales came first (first come, first served).
    BehindBacklog { waiting: u64 },
}

impl NotSold {
    fn in_doubt(&self) -> bool {
        matches!(self, Self::Unavailable { in_doubt: true, .. })
    }

    /// The deferred sales it queued behind, when it was not tried.
    fn behind(&self) -> Option<u64> {
        match self {
            Self::BehindBacklog { waiting } => Some(*waiting),
            Self::Unavailable { .. } => None,
        }
    }
}

impl std::fmt::Display for NotSold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable { error, .. } => {
                write!(f, "no Store replica could sell in time: {error}")
            }
            Self::BehindBacklog { waiting } => {
                write!(
                    f,
                    "{waiting} deferred sales wait; not selling ahead of them"
                )
            }
        }
    }
}

/// The fault-tolerant purchase (see `ft.rs` for each call's policies). Always answers within
/// the budget: when no Store replica can sell in time the order is durably accepted and
/// deferred (202); when Fidelity does not credit in time the bonus goes to the outbox.
async fn ft_purchase(
    state: &AppState,
    order_id: &str,
    request: &BuyRequest,
    request_id: &str,
    deadline: tokio::time::Instant,
) -> Result<Outcome, PurchaseFailure> {
    let ft = &state.resilient;
    let mut degraded = Degradations::default();
    let product = ft
        .product(&request.product, request_id, deadline, &mut degraded)
        .await?;
    // The bonus Fidelity will be asked for, checked against its limits before the sale (and
    // before the outbox could hold a bonus Fidelity refuses for good).
    let points = product.checked_bonus()?;
    let rate = ft.rate(request_id, deadline, &mut degraded).await?;
    let mut answer = BuyResponse {
        order_id: order_id.to_owned(),
        status: "pending".to_owned(),
        transaction_id: None,
        product: ProductView {
            id: product.id.clone(),
            name: product.name.clone(),
            value: cents_to_decimal(product.value_cents),
        },
        rate: rate.rate,
        total: total(product.value_cents, rate.rate)?,
        bonus: BonusView {
            points,
            status: "pending".to_owned(),
        },
        degraded: Vec::new(),
        expected_completion_at: None,
        expected_completion_seconds: None,
        promised_by: None,
    };

    // Keep a little of the budget to record a deferral instead of selling to the last moment.
    let sell_deadline = deadline.checked_sub(SAFETY_MARGIN).unwrap_or(deadline);
    let key = sale_key(order_id);
    // First come, first served: while deferred sales wait and Store is not keeping up (the
    // oldest has waited `--defer-queue-after`), a new purchase does not try to sell ahead of
    // them. Store's capacity under its `/sell` fault is a few units a second; a purchase that
    // took a unit the moment a replica came out of its error window would take it from an
    // order already promised, and under steady traffic the backlog would never get one
    // (measured: docs/benchmarks/sustained-faults.md). It joins the queue instead, under the
    // same admission control. (Queueing behind a deferral the worker settles at once would send
    // every purchase through the worker while nothing is scarce: the happy-path benchmark
    // answered 47 % of its purchases 503 that way.)
    let sale = if let Some(waiting) = state.promise.queue_ahead(tokio::time::Instant::now()) {
        Err(NotSold::BehindBacklog { waiting })
    } else {
        match ft
            .sell(
                &product.id,
                &key,
                request_id,
                sell_deadline,
                ft.settings().sell_timeout,
                &mut degraded,
            )
            .await
        {
            Ok(sale) => Ok(sale),
            Err(SellFailure::Final(error)) => return Err(error.into()),
            Err(SellFailure::Unavailable { error, in_doubt }) => {
                Err(NotSold::Unavailable { error, in_doubt })
            }
        }
    };
    let sale = match sale {
        Ok(sale) => sale,
        Err(error) => {
            let in_doubt = error.in_doubt();
            if error.behind().is_some() {
                degraded.add("store:behind-backlog");
            }
            // A 202 is a promise bounded in time: defer only what the backlog can complete
            // within it at the measured drain rate (crate::promise).
            let now = tokio::time::Instant::now();
            // Taken before the decision, so no backlog count can miss this sale until its order
            // is written (or the request ends).
            let admitted = state.promise.writing();
            let expected = match state.promise.admit(now) {
                Admission::Accept { expected } => expected,
                // An attempt may have sold the unit (its answer was lost): refusing would say
                // "nothing was sold" without knowing it. The order is deferred anyway, so the
                // worker settles it under the same sale key; its answer says so, and when it
                // expects to complete (possibly beyond the promise).
                Admission::Refuse { .. } if in_doubt => {
                    tracing::info!(order_id, %error, "sale in doubt; deferred beyond admission control");
                    degraded.add("store:sale-in-doubt");
                    state.promise.defer_anyway(now)
                }
                Admission::Refuse {
                    projected,
                    retry_after,
                } => {
                    tracing::info!(order_id, %error, "backlog beyond the promise; refused");
                    return Ok(Outcome::Refused(Refusal {
                        retry_after,
                        projected,
                        behind: error.behind(),
                    }));
                }
            };
            tracing::info!(order_id, %error, "deferring the sale");
            degraded.add("store:sale-deferred");
            answer.degraded = degraded.0;
            let now = ftshop_platform::db::now_millis();
            let millis =
                |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
            let expected_at_ms = now.saturating_add(millis(expected));
            let promised_by_ms = now.saturating_add(millis(state.promise.promise()));
            answer.expected_completion_at = rfc3339_millis(expected_at_ms);
            answer.expected_completion_seconds =
                Some((expected.as_secs_f64() * 1000.0).round() / 1000.0);
            answer.promised_by = rfc3339_millis(promised_by_ms);
            return Ok(Outcome::Deferred(Deferral {
                answer,
                expected_at_ms,
                promised_by_ms,
                admitted,
            }));
        }
    };

    let bonus = ft
        .bonus(&request.user, points, &sale.transaction_id, request_id)
        .await;
    answer.bonus.status = match bonus {
        Ok(()) => "credited".to_owned(),
        Err(error) => {
            tracing::info!(order_id, %error, "bonus not credited in time; queued in the outbox");
            degraded.add("fidelity:bonus-queued");
            "pending".to_owned()
        }
    };
    answer.status = "completed".to_owned();
    answer.transaction_id = Some(sale.transaction_id);
    answer.degraded = degraded.0;
    Ok(Outcome::Completed(answer))
}

/// Left of the /buy budget for recording the outcome after the calls.
const SAFETY_MARGIN: std::time::Duration = std::time::Duration::from_millis(60);

/// Store's idempotency key for an order: every attempt at selling it, synchronous or by the
/// order worker, uses the same key, so a unit is sold at most once per order.
pub fn sale_key(order_id: &str) -> String {
    format!("order-{order_id}")
}

/// A stored answer, byte for byte.
fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        ftshop_platform::problem::PROBLEM_JSON
    };
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Where an order stands.
#[utoipa::path(
    get, path = "/orders/{id}", tag = "ecommerce",
    params(("id" = String, Path, description = "Order id from /buy")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a valid order id", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, Problem> {
    validate_id("id", &id)?;
    orders::find(&state.db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no order {id}")))
}

/// Deferred sales and undelivered bonuses, the drain rate of deferred sales, the time to drain
/// them at that rate and the completion promise it is held to.
#[utoipa::path(
    get, path = "/backlog", tag = "ecommerce",
    responses((status = 200, description = "Backlog depth and age", body = Backlog))
)]
async fn get_backlog(State(state): State<AppState>) -> Result<Json<Backlog>, Problem> {
    let mark = state.promise.mark();
    let mut backlog = orders::backlog(&state.db).await?;
    let now = tokio::time::Instant::now();
    let (pending, oldest) = backlog.pending();
    state.promise.set_backlog(now, mark, pending, oldest);
    let drain = state.promise.view(now);
    backlog.drain_rate_per_second = drain.rate_per_second;
    backlog.projected_drain_seconds = drain.projected_drain_seconds;
    backlog.promise_seconds = drain.promise_seconds;
    backlog.drain_dispersion = drain.dispersion;
    backlog.admissible_orders = drain.admissible;
    Ok(Json(backlog))
}

/// Every circuit breaker of the fault-tolerant path: state, failure rate, calls in window.
#[utoipa::path(
    get, path = "/breakers", tag = "ecommerce",
    responses((status = 200, description = "Breaker status snapshot"))
)]
async fn get_breakers(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(state.resilient.registry().snapshot()).unwrap_or_default())
}

/// Closes one breaker and clears its window (for example after fixing a dependency by hand).
#[utoipa::path(
    post, path = "/admin/breakers/{name}/reset", tag = "admin",
    params(("name" = String, Path, description = "Breaker name, e.g. `store-1.sell`")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The breaker's new status"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn reset_breaker(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let status = state.resilient.registry().reset(&name);
    breaker_answer(&name, status, "reset")
}

/// The status after an admin action on breaker `name`, or 404 when there is no such breaker.
fn breaker_answer<S: Serialize, E>(
    name: &str,
    status: Result<S, E>,
    action: &str,
) -> Result<Json<serde_json::Value>, Problem> {
    let status = status.map_err(|_| {
        Problem::not_found(format!("no breaker named `{name}` (see GET /breakers)"))
    })?;
    tracing::warn!(
        breaker = name,
        action,
        "breaker changed through the admin API"
    );
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

/// Holds one breaker open until it is reset: takes a replica out of rotation (maintenance).
#[utoipa::path(
    post, path = "/admin/breakers/{name}/force-open", tag = "admin",
    params(("name" = String, Path, description = "Breaker name, e.g. `store-2.sell`")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The breaker's new status"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn force_open_breaker(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let status = state.resilient.registry().force_open(&name);
    breaker_answer(&name, status, "force-open")
}

/// Closes every breaker.
#[utoipa::path(
    post, path = "/admin/breakers/reset", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every breaker's status"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn reset_all_breakers(State(state): State<AppState>) -> Json<serde_json::Value> {
    state.resilient.registry().reset_all();
    tracing::warn!("every breaker reset through the admin API");
    Json(serde_json::to_value(state.resilient.registry().snapshot()).unwrap_or_default())
}

/// `?limit=` of the control room's feeds.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    /// How many entries, 1..=500 (default 50).
    limit: Option<usize>,
}

impl FeedQuery {
    fn limit(&self) -> Result<usize, Problem> {
        match self.limit {
            None => Ok(50),
            Some(n @ 1..=500) => Ok(n),
            Some(n) => Err(Problem::validation(format!(
                "limit must be within 1..=500, got {n}"
            ))),
        }
    }
}

/// The most recent purchases (newest first), each with its story: every attempt of every step
/// (replica, outcome, start and duration in microseconds from the purchase's start, hedge),
/// breaker rejections and fallbacks. Kept in memory, the last 200; for the control room.
#[utoipa::path(
    get, path = "/admin/purchases", tag = "admin",
    params(FeedQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Recent purchases, newest first", body = Vec<story::Story>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn recent_purchases(
    State(state): State<AppState>,
    Query(query): Query<FeedQuery>,
) -> Result<Json<Vec<std::sync::Arc<story::Story>>>, Problem> {
    Ok(Json(state.stories.recent(query.limit()?)))
}

/// One purchase's story by order id, while it is among the last 200.
#[utoipa::path(
    get, path = "/admin/purchases/{order_id}", tag = "admin",
    params(("order_id" = String, Path, description = "Order id from /buy")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The purchase's story", body = story::Story),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn purchase_story(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<Json<std::sync::Arc<story::Story>>, Problem> {
    validate_id("order_id", &order_id)?;
    state.stories.find(&order_id).map(Json).ok_or_else(|| {
        Problem::not_found(format!(
            "no story for order {order_id} (only the last {} purchases are kept)",
            story::CAPACITY
        ))
    })
}

/// The most recent breaker transitions (oldest first): breaker, from, to, reason, rates, time.
#[utoipa::path(
    get, path = "/admin/breakers/transitions", tag = "admin",
    params(FeedQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Recent transitions, oldest first"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn breaker_transitions(
    State(state): State<AppState>,
    Query(query): Query<FeedQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    let transitions = state.stories.transitions(query.limit()?);
    Ok(Json(serde_json::to_value(transitions).unwrap_or_default()))
}
