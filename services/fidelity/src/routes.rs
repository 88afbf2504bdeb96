//! `POST /bonus` and `GET /balance/{user}`.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ftshop_platform::Problem;
use ftshop_platform::extract::{Json, Path, validate_id};
use ftshop_platform::repository::Read;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use crate::AppState;
use crate::ledger::{self, Credit};
use crate::queue::{self, QueueStats};

/// Largest bonus one transaction may credit: the suite's shared limit
/// ([`ftshop_platform::limits::BONUS_POINTS_MAX`]), which Store's catalog and Ecommerce check
/// before a sale, so no sold product's bonus is refused here.
pub const MAX_BONUS: i64 = ftshop_platform::limits::BONUS_POINTS_MAX;

#[derive(OpenApi)]
#[openapi(
    paths(post_bonus, get_balance, get_pending),
    components(schemas(BonusRequest, BonusReceipt, BonusStatus, Balance, QueueStats, Problem)),
    tags((name = "fidelity", description = "Bonus points, credited exactly once per transaction"))
)]
pub struct ApiDoc;

/// The service's own routes (the platform adds health, metrics and docs).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/bonus", post(post_bonus))
        .route("/balance/{user}", get(get_balance))
        .route("/bonus/pending", get(get_pending))
        .with_state(state)
}

/// `POST /bonus` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BonusRequest {
    /// Customer receiving the points.
    #[schema(example = "alice")]
    pub user: String,
    /// Points to credit: a whole number from 1 to 1000000.
    #[schema(example = 50, minimum = 1, maximum = 1_000_000)]
    pub bonus: i64,
    /// The sale this bonus is for; credited at most once.
    #[schema(example = "0193a5b2-7c1e-7d4f-9a8b-2f6c1d0e9a31")]
    pub transaction_id: String,
}

/// The outcome of `POST /bonus`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BonusReceipt {
    pub transaction_id: String,
    pub user: String,
    /// Points this transaction credited.
    pub points: i64,
    pub status: BonusStatus,
    /// True when this transaction had been credited before and nothing changed now.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BonusStatus {
    Credited,
    /// Durably queued; the queue worker credits it shortly (see `GET /bonus/pending`).
    Pending,
}

/// A user's points.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Balance {
    pub user: String,
    pub points: i64,
}

/// Credit a purchase's bonus points, exactly once per transaction id.
#[utoipa::path(
    post, path = "/bonus", tag = "fidelity",
    request_body = BonusRequest,
    responses(
        (status = 200, description = "Credited now, or earlier by the same request (`duplicate: true`)", body = BonusReceipt),
        (status = 202, description = "Durably queued, credited shortly: asked with `Prefer: respond-async`, or crediting inline failed", body = BonusReceipt),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The transaction id was credited with another user or amount (type `transaction-conflict`)",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid user, transaction id or bonus", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unreachable: neither credited nor queued (type `database-unavailable`, `Retry-After`); retrying with the same transaction id is safe", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn post_bonus(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<BonusRequest>,
) -> Result<Response, Problem> {
    validate_id("user", &request.user)?;
    validate_id("transaction_id", &request.transaction_id)?;
    if ftshop_platform::limits::check_bonus(request.bonus).is_err() {
        return Err(Problem::validation(format!(
            "`bonus` must be a whole number of points from {} to {MAX_BONUS}",
            ftshop_platform::limits::BONUS_POINTS_MIN
        )));
    }
    let BonusRequest {
        user,
        bonus,
        transaction_id,
    } = request;

    let respond_async = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        });
    let queued = |transaction_id: String, user: String| {
        metrics::counter!("fidelity_bonus_total", "outcome" => "queued").increment(1);
        let receipt = BonusReceipt {
            transaction_id,
            user,
            points: bonus,
            status: BonusStatus::Pending,
            duplicate: false,
        };
        (StatusCode::ACCEPTED, Json(receipt)).into_response()
    };
    if respond_async {
        queue::enqueue(&state.db, &transaction_id, &user, bonus)
            .await
            .map_err(|err| Problem::from_anyhow(&err))?;
        state.queued.notify_one();
        return Ok(queued(transaction_id, user));
    }

    let outcome = match ledger::credit(&state.db, &transaction_id, &user, bonus).await {
        Ok(outcome) => outcome,
        Err(err) => {
            // Crediting failed (a busy or failing database): accept the bonus into the queue if
            // that still works, so the caller need not retry; the worker credits it later.
            tracing::warn!(error = format!("{err:#}"), %transaction_id, "inline credit failed; queueing");
            queue::enqueue(&state.db, &transaction_id, &user, bonus)
                .await
                .map_err(|e| {
                    tracing::error!(
                        error = format!("{err:#}"),
                        "inline credit failed and queueing failed too"
                    );
                    Problem::from_anyhow(&e)
                })?;
            state.queued.notify_one();
            return Ok(queued(transaction_id, user));
        }
    };
    let label = match outcome {
        Credit::Credited => "credited",
        Credit::Duplicate => "duplicate",
        Credit::Conflict => "conflict",
    };
    metrics::counter!("fidelity_bonus_total", "outcome" => label).increment(1);
    // One line per bonus would be the only per-request log line of the suite (~600 bytes, ~10 %
    // of Fidelity's CPU per bonus: docs/benchmarks/happy-path.md); `fidelity_bonus_total` counts
    // them and the trace has the request. `RUST_LOG=info,ftshop_fidelity=debug` shows them.
    tracing::debug!(%transaction_id, %user, points = bonus, outcome = label, "bonus");

    let duplicate = match outcome {
        Credit::Credited => false,
        Credit::Duplicate => true,
        Credit::Conflict => {
            return Err(Problem::conflict(
                "transaction-conflict",
                format!(
                    "transaction `{transaction_id}` was already credited with another user or amount"
                ),
            ));
        }
    };
    Ok(Json(BonusReceipt {
        transaction_id,
        user,
        points: bonus,
        status: BonusStatus::Credited,
        duplicate,
    })
    .into_response())
}

/// Depth and oldest age of the pending-bonus queue.
#[utoipa::path(
    get, path = "/bonus/pending", tag = "fidelity",
    responses((status = 200, description = "Queue depth and the age of its oldest bonus", body = QueueStats))
)]
async fn get_pending(State(state): State<AppState>) -> Result<Json<QueueStats>, Problem> {
    queue::stats(&state.db)
        .await
        .map(Json)
        .map_err(|err| Problem::from_anyhow(&err))
}

/// A user's points balance (0 for a user never credited).
#[utoipa::path(
    get, path = "/balance/{user}", tag = "fidelity",
    params(("user" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The balance; while the database is away, the last one read, marked stale", body = Balance,
            headers(
                ("x-ftshop-stale" = String, description = "`true` when the database is unreachable and this is the last balance read, at most `--stale-reads-max` old (absent on a fresh answer)"),
                ("Age" = u64, description = "With `x-ftshop-stale`: whole seconds since the balance was read from the database (RFC 9111)"),
            )),
        (status = 422, description = "Invalid user id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unreachable and no balance cached for this user (type `database-unavailable`, `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_balance(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Read<Balance>, Problem> {
    validate_id("user", &user)?;
    let db = &state.db;
    let read = state
        .balances
        .read(db, &user, || ledger::balance(db, &user))
        .await?;
    Ok(read.map(|points| Balance { user, points }))
}
