//! The orders table: idempotency claims, final answers kept for replay, and order lookups.
//!
//! Life of an order: `processing` when claimed, then `completed` (sale done), `rejected`
//! (a final 4xx: unknown product, out of stock) or `failed` (a downstream failed). A replay
//! of the same Idempotency-Key returns the stored answer of a completed or rejected order and
//! re-drives a failed (or abandoned) one under the same order id; Store's idempotency key is
//! derived from that id, so re-driving never sells twice.
//!
//! Every transition is a compare-and-set on the row's `version` (migration 0004): the claimant
//! of an order (a fresh request, a replay resuming a failed order, the order worker) holds a
//! [`Lease`], the version it wrote, and each of its later writes applies only
//! `WHERE order_id = $1 AND version = $held`, bumping the version again. Of N identical
//! requests released at one instant exactly one drives the order; the others read the stored
//! answer or get `409 request-in-progress`. A holder that was superseded (its order looked
//! abandoned and a worker took it over) finds its write refused (`Ok(false)`) instead of
//! overwriting the newer outcome.
//!
//! Every function goes through the database breaker ([`Db::run`]). The compare-and-set
//! transitions ([`complete`], [`defer`], [`cancel`], [`finish_unsuccessfully`],
//! [`reschedule_order`], [`reschedule_bonus`], [`dead_letter_bonus`]), [`bonus_delivered`] and
//! the `last_rate` upsert
//! are also retried within the retry budget when the connection is lost mid-call
//! ([`Db::run_idempotent`]): a retry after a COMMIT that did happen finds the version already
//! moved and reports the lease superseded (`Ok(false)`), and the caller answers the stored
//! answer, which is the one it wrote; nothing is written twice. [`claim`] (a fresh order's
//! insert) and the lease grabs are not retried: a replayed claim would turn into a 409 or a
//! duplicate-key error instead of the order.

use ftshop_platform::db::{Db, is_unique_violation, now_millis};
use ftshop_platform::money::Decimal;
use ftshop_platform::sql::{self, Done, Row};
use serde::Serialize;

fn updated_one(result: &Done) -> bool {
    result.rows_affected() == 1
}

/// A `processing` order older than this was abandoned (its process died) and may be re-driven.
const ABANDONED_AFTER_MS: i64 = 10_000;

pub struct NewOrder<'a> {
    pub order_id: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// The request body in canonical form; a key reused with another body is refused.
    pub fingerprint: &'a str,
    pub user: &'a str,
    pub product: &'a str,
    pub ft: bool,
}

/// The right to write an order's next state: the `version` its holder wrote when it claimed
/// the order. Passed to every write; a write whose lease was superseded changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub order_id: String,
    pub version: i64,
}

/// What to do with an incoming purchase.
#[derive(Debug)]
pub enum Claim {
    /// A new order, claimed: run it.
    Fresh(Lease),
    /// An earlier attempt failed or was abandoned; this request won the claim to run it again
    /// under the same order id.
    Resumed(Lease),
    /// Answer exactly what the first request got.
    Replay { status: u16, body: String },
    /// Another request with this key is running right now.
    InProgress,
    /// The key was used with a different body.
    KeyReused,
}

/// Claims the order for `order`: inserts it (`processing`), or, for a known Idempotency-Key,
/// replays its answer or takes it over by compare-and-set when its earlier attempt failed or
/// was abandoned. Concurrent calls with one key: exactly one gets `Fresh`/`Resumed`.
pub async fn claim(db: &Db, order: &NewOrder<'_>) -> Result<Claim, sqlx::Error> {
    db.run(|| claim_once(db, order)).await
}

async fn claim_once(db: &Db, order: &NewOrder<'_>) -> Result<Claim, sqlx::Error> {
    if let Some(key) = order.idempotency_key
        && let Some(claim) = existing(db, key, order.fingerprint).await?
    {
        return Ok(claim);
    }
    let now = now_millis();
    let inserted = sql::query(
        "INSERT INTO orders (order_id, idempotency_key, request_hash, user_id, product_id, ft, status, created_at, updated_at, version) \
         VALUES ($1, $2, $3, $4, $5, $6, 'processing', $7, $7, 0)",
    )
    .bind(order.order_id.to_owned())
    .bind(order.idempotency_key.map(str::to_owned))
    .bind(order.fingerprint.to_owned())
    .bind(order.user.to_owned())
    .bind(order.product.to_owned())
    .bind(i64::from(order.ft))
    .bind(now)
    .execute(db)
    .await;
    match (inserted, order.idempotency_key) {
        (Ok(_), _) => Ok(Claim::Fresh(Lease {
            order_id: order.order_id.to_owned(),
            version: 0,
        })),
        // Lost a race with a concurrent request carrying the same key.
        (Err(e), Some(key)) if is_unique_violation(&e) => Ok(existing(db, key, order.fingerprint)
            .await?
            .unwrap_or(Claim::InProgress)),
        (Err(e), _) => Err(e),
    }
}

/// The claim for a known key: its stored answer, in progress, or (when it failed or was
/// abandoned) a compare-and-set from the version read to `processing`. Losing that race means
/// someone else took it a moment ago: read again (a few rounds), else in progress.
async fn existing(db: &Db, key: &str, fingerprint: &str) -> Result<Option<Claim>, sqlx::Error> {
    for _ in 0..3 {
        let row = sql::query(
            "SELECT order_id, request_hash, status, response_status, response, updated_at, version FROM orders WHERE idempotency_key = $1",
        )
        .bind(key.to_owned())
        .fetch_optional(db)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if row.try_get::<String>("request_hash")? != fingerprint {
            return Ok(Some(Claim::KeyReused));
        }
        let order_id: String = row.try_get("order_id")?;
        let status: String = row.try_get("status")?;
        let version: i64 = row.try_get("version")?;
        let answer = stored_answer(&row)?;
        match status.as_str() {
            "completed" | "rejected" | "pending" | "cancelled" if answer.is_some() => {
                let (status, body) = answer.unwrap_or_default();
                return Ok(Some(Claim::Replay { status, body }));
            }
            "processing"
                if now_millis() - row.try_get::<i64>("updated_at")? < ABANDONED_AFTER_MS =>
            {
                return Ok(Some(Claim::InProgress));
            }
            _ => {}
        }
        // Failed, abandoned, or a final state without a stored answer: take it over.
        let taken = sql::query(
            "UPDATE orders SET status = 'processing', updated_at = $3, version = version + 1 \
             WHERE order_id = $1 AND version = $2",
        )
        .bind(order_id.clone())
        .bind(version)
        .bind(now_millis())
        .execute(db)
        .await?;
        if taken.rows_affected() == 1 {
            return Ok(Some(Claim::Resumed(Lease {
                order_id,
                version: version + 1,
            })));
        }
    }
    Ok(Some(Claim::InProgress))
}

fn stored_answer(row: &Row) -> Result<Option<(u16, String)>, sqlx::Error> {
    let code: Option<i64> = row.try_get("response_status")?;
    let body: Option<String> = row.try_get("response")?;
    Ok(code
        .zip(body)
        .map(|(code, body)| (u16::try_from(code).unwrap_or(500), body)))
}

/// The answer stored for an order that reached a state with one (`completed`, `pending`,
/// `rejected`, `cancelled`, or `failed`): what a request whose lease was superseded answers.
pub async fn answer_of(db: &Db, order_id: &str) -> Result<Option<(u16, String)>, sqlx::Error> {
    db.run(|| answer_of_once(db, order_id)).await
}

async fn answer_of_once(db: &Db, order_id: &str) -> Result<Option<(u16, String)>, sqlx::Error> {
    let row =
        sql::query("SELECT status, response_status, response FROM orders WHERE order_id = $1")
            .bind(order_id.to_owned())
            .fetch_optional(db)
            .await?;
    match row {
        Some(row) if row.try_get::<String>("status")? != "processing" => stored_answer(&row),
        _ => Ok(None),
    }
}

/// The sale went through: keep the figures and the answer.
pub struct Completion<'a> {
    pub user: &'a str,
    pub transaction_id: &'a str,
    pub value_cents: i64,
    /// Stored exactly, as decimal text in `rate_exact`.
    pub rate: Decimal,
    pub total_cents: i64,
    pub bonus_points: i64,
    /// `credited`, or `pending` when the bonus goes to the outbox.
    pub bonus_status: &'a str,
    /// True when the customer got this answer synchronously (not a deferred sale).
    pub completed_sync: bool,
    pub response: &'a str,
}

/// Marks the order completed and, when the bonus is not credited yet, writes it to the outbox
/// in the same transaction: either both are durable or neither is. `Ok(false)`: the lease was
/// superseded and nothing was written.
#[must_use = "a superseded lease wrote nothing"]
pub async fn complete(db: &Db, lease: &Lease, c: &Completion<'_>) -> Result<bool, sqlx::Error> {
    db.run_idempotent(|| complete_once(db, lease, c)).await
}

async fn complete_once(db: &Db, lease: &Lease, c: &Completion<'_>) -> Result<bool, sqlx::Error> {
    let now = now_millis();
    let update = sql::query(
        "UPDATE orders SET status = 'completed', failed_step = NULL, transaction_id = $2, value_cents = $3, rate_exact = $4, \
         total_cents = $5, bonus_points = $6, bonus_status = $7, response_status = 200, response = $8, updated_at = $9, \
         completed_sync = $10, next_attempt_at = NULL, \
         promise_missed = CASE WHEN promised_by IS NOT NULL AND promised_by < $9 THEN 1 ELSE 0 END, \
         version = version + 1 WHERE order_id = $1 AND version = $11",
    )
    .bind(lease.order_id.clone())
    .bind(c.transaction_id.to_owned())
    .bind(c.value_cents)
    .bind(c.rate.to_string())
    .bind(c.total_cents)
    .bind(c.bonus_points)
    .bind(c.bonus_status.to_owned())
    .bind(c.response.to_owned())
    .bind(now)
    .bind(i64::from(c.completed_sync))
    .bind(lease.version);
    if c.bonus_status == "credited" {
        // Nothing for the outbox: the one statement is its own transaction (the happy path's
        // write, one round trip instead of BEGIN, UPDATE, COMMIT: docs/benchmarks/happy-path.md).
        let updated = update.execute(db).await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        count_completion(c);
        return Ok(true);
    }
    let mut tx = db.begin().await?;
    // The first statement writes (SQLite: take the write lock before reading anything).
    let updated = update.execute(&mut tx).await?;
    if updated.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    // The span this runs in (the purchase's, or the order worker's): the dispatcher's delivery
    // links to it (migration 0008).
    let traceparent = ftshop_platform::telemetry::traceparent_of(&tracing::Span::current());
    sql::query(
        "INSERT INTO bonus_outbox (transaction_id, order_id, user_id, points, attempts, next_attempt_at, created_at, traceparent) \
         VALUES ($1, $2, $3, $4, 0, $5, $5, $6) ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(c.transaction_id.to_owned())
    .bind(lease.order_id.clone())
    .bind(c.user.to_owned())
    .bind(c.bonus_points)
    .bind(now)
    .bind(traceparent)
    .execute(&mut tx)
    .await?;
    tx.commit().await?;
    count_completion(c);
    Ok(true)
}

/// Counted once the sale is durable: revenue in BRL cents (an integer counter never loses a
/// cent to float rounding) and points promised to the customer.
fn count_completion(c: &Completion<'_>) {
    metrics::counter!("shop_revenue_brl_cents_total")
        .increment(u64::try_from(c.total_cents).unwrap_or(0));
    metrics::counter!("shop_bonus_points_total", "status" => bonus_status_label(c.bonus_status))
        .increment(u64::try_from(c.bonus_points).unwrap_or(0));
}

fn bonus_status_label(status: &str) -> &'static str {
    if status == "credited" {
        "credited"
    } else {
        "pending"
    }
}

/// A deferred sale's figures, its completion promise and the 202 answer.
pub struct Deferral<'a> {
    pub value_cents: i64,
    pub rate: Decimal,
    pub total_cents: i64,
    pub bonus_points: i64,
    /// When the sale is expected to complete, epoch milliseconds.
    pub expected_completion_at: i64,
    /// The promise's bound, epoch milliseconds: ending later is a missed promise.
    pub promised_by: i64,
    pub response: &'a str,
}

/// No Store replica could sell in time: the order is durably accepted as `pending` with its
/// figures and promise; the order worker completes or cancels it. `Ok(false)`: lease
/// superseded, nothing written.
#[must_use = "a superseded lease wrote nothing"]
pub async fn defer(db: &Db, lease: &Lease, d: &Deferral<'_>) -> Result<bool, sqlx::Error> {
    db.run_idempotent(|| defer_once(db, lease, d)).await
}

async fn defer_once(db: &Db, lease: &Lease, d: &Deferral<'_>) -> Result<bool, sqlx::Error> {
    let now = now_millis();
    // The purchase's span: the order worker's attempts link to it (migration 0008).
    let traceparent = ftshop_platform::telemetry::traceparent_of(&tracing::Span::current());
    let written = sql::query(
        "UPDATE orders SET status = 'pending', value_cents = $2, rate_exact = $3, total_cents = $4, bonus_points = $5, \
         bonus_status = 'pending', response_status = 202, response = $6, updated_at = $7, next_attempt_at = $7, \
         completed_sync = 0, expected_completion_at = $9, promised_by = $10, promise_missed = 0, \
         traceparent = $11, version = version + 1 WHERE order_id = $1 AND version = $8",
    )
    .bind(lease.order_id.clone())
    .bind(d.value_cents)
    .bind(d.rate.to_string())
    .bind(d.total_cents)
    .bind(d.bonus_points)
    .bind(d.response.to_owned())
    .bind(now)
    .bind(lease.version)
    .bind(d.expected_completion_at)
    .bind(d.promised_by)
    .bind(traceparent)
    .execute(db)
    .await?;
    Ok(updated_one(&written))
}

/// Whether an order whose promise ends at `promised_by` (epoch ms; `None`: no promise, a
/// synchronous answer) and that ends now misses it.
pub fn misses_promise(promised_by: Option<i64>) -> bool {
    promised_by.is_some_and(|by| now_millis() > by)
}

/// An order the worker must drive: a deferred sale, or an abandoned `processing` order.
#[derive(Debug, Clone)]
pub struct DueOrder {
    pub order_id: String,
    pub user: String,
    pub product: String,
    pub status: String,
    pub attempts: i64,
    pub value_cents: Option<i64>,
    /// The rate the order was priced at (`rate_exact`); `None` before it was priced.
    pub rate: Option<Decimal>,
    pub response: Option<String>,
    /// The version read; [`lease_due`] claims the order from it.
    pub version: i64,
    /// The bound of the completion promise of a deferred sale (epoch ms).
    pub promised_by: Option<i64>,
    /// The `traceparent` of the purchase that deferred it, for the worker's span link.
    pub traceparent: Option<String>,
}

pub async fn due_orders(db: &Db, limit: i64) -> Result<Vec<DueOrder>, sqlx::Error> {
    db.run(|| due_orders_once(db, limit)).await
}

/// The order worker's scan: deferred orders due now, and claims abandoned mid-purchase.
const DUE_ORDERS_SQL: &str = "SELECT order_id, user_id, product_id, status, attempts, value_cents, rate_exact, response, version, promised_by, traceparent FROM orders \
     WHERE ft = 1 AND ((status = 'pending' AND next_attempt_at <= $1) \
        OR (status = 'processing' AND updated_at < $2 AND (next_attempt_at IS NULL OR next_attempt_at <= $1))) \
     ORDER BY created_at LIMIT $3";

/// The backlog gauges' counts of deferred orders, all and past their promise.
const PENDING_ORDERS_SQL: &str =
    "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM orders WHERE status = 'pending'";
const LATE_ORDERS_SQL: &str = "SELECT COUNT(*) AS n FROM orders WHERE status = 'pending' AND promised_by IS NOT NULL AND promised_by < $1";

async fn due_orders_once(db: &Db, limit: i64) -> Result<Vec<DueOrder>, sqlx::Error> {
    let now = now_millis();
    let rows = sql::query(DUE_ORDERS_SQL)
        .bind(now)
        .bind(now - ABANDONED_AFTER_MS)
        .bind(limit)
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(DueOrder {
                order_id: row.try_get("order_id")?,
                user: row.try_get("user_id")?,
                product: row.try_get("product_id")?,
                status: row.try_get("status")?,
                attempts: row.try_get("attempts")?,
                value_cents: row.try_get("value_cents")?,
                rate: decimal_column(row, "rate_exact")?,
                response: row.try_get("response")?,
                version: row.try_get("version")?,
                promised_by: row.try_get("promised_by")?,
                traceparent: row.try_get("traceparent")?,
            })
        })
        .collect()
}

/// Claims a due order for one worker attempt of at most `hold_ms`: compare-and-set from the
/// version read, pushing `next_attempt_at` past the attempt so no other worker (another
/// ecommerce replica) picks it meanwhile, and refreshing `updated_at` of an abandoned
/// `processing` order so a replay of its key says in-progress. `None`: someone else claimed
/// or changed it first; leave it.
pub async fn lease_due(
    db: &Db,
    order: &DueOrder,
    hold_ms: i64,
) -> Result<Option<Lease>, sqlx::Error> {
    db.run(|| lease_due_once(db, order, hold_ms)).await
}

async fn lease_due_once(
    db: &Db,
    order: &DueOrder,
    hold_ms: i64,
) -> Result<Option<Lease>, sqlx::Error> {
    let now = now_millis();
    let taken = sql::query(
        "UPDATE orders SET version = version + 1, next_attempt_at = $3, \
         updated_at = CASE WHEN status = 'processing' THEN $4 ELSE updated_at END \
         WHERE order_id = $1 AND version = $2",
    )
    .bind(order.order_id.clone())
    .bind(order.version)
    .bind(now + hold_ms)
    .bind(now)
    .execute(db)
    .await?;
    Ok(updated_one(&taken).then(|| Lease {
        order_id: order.order_id.clone(),
        version: order.version + 1,
    }))
}

/// Schedules the next attempt at a due order and gives up the lease.
#[must_use = "a superseded lease wrote nothing"]
pub async fn reschedule_order(
    db: &Db,
    lease: &Lease,
    attempts: i64,
    next_attempt_at: i64,
) -> Result<bool, sqlx::Error> {
    db.run_idempotent(|| reschedule_order_once(db, lease, attempts, next_attempt_at))
        .await
}

async fn reschedule_order_once(
    db: &Db,
    lease: &Lease,
    attempts: i64,
    next_attempt_at: i64,
) -> Result<bool, sqlx::Error> {
    let written = sql::query(
        "UPDATE orders SET attempts = $2, next_attempt_at = $3, version = version + 1 \
         WHERE order_id = $1 AND version = $4",
    )
    .bind(lease.order_id.clone())
    .bind(attempts)
    .bind(next_attempt_at)
    .bind(lease.version)
    .execute(db)
    .await?;
    Ok(updated_one(&written))
}

/// A deferred order that can never complete (out of stock, unknown product).
#[must_use = "a superseded lease wrote nothing"]
pub async fn cancel(
    db: &Db,
    lease: &Lease,
    reason: &str,
    response_status: u16,
    response: &str,
) -> Result<bool, sqlx::Error> {
    db.run_idempotent(|| cancel_once(db, lease, reason, response_status, response))
        .await
}

async fn cancel_once(
    db: &Db,
    lease: &Lease,
    reason: &str,
    response_status: u16,
    response: &str,
) -> Result<bool, sqlx::Error> {
    let written = sql::query(
        "UPDATE orders SET status = 'cancelled', cancel_reason = $2, response_status = $3, response = $4, \
         updated_at = $5, next_attempt_at = NULL, \
         promise_missed = CASE WHEN promised_by IS NOT NULL AND promised_by < $5 THEN 1 ELSE 0 END, \
         version = version + 1 WHERE order_id = $1 AND version = $6",
    )
    .bind(lease.order_id.clone())
    .bind(reason.to_owned())
    .bind(i64::from(response_status))
    .bind(response.to_owned())
    .bind(now_millis())
    .bind(lease.version)
    .execute(db)
    .await?;
    Ok(updated_one(&written))
}

/// A bonus waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub transaction_id: String,
    pub order_id: String,
    pub user: String,
    pub points: i64,
    pub attempts: i64,
    /// As read; [`lease_bonus`] claims the entry from it.
    pub next_attempt_at: i64,
    /// The `traceparent` of the span that queued it (the purchase's), for the delivery's link.
    pub traceparent: Option<String>,
}

pub async fn due_bonuses(db: &Db, limit: i64) -> Result<Vec<OutboxEntry>, sqlx::Error> {
    db.run(|| due_bonuses_once(db, limit)).await
}

async fn due_bonuses_once(db: &Db, limit: i64) -> Result<Vec<OutboxEntry>, sqlx::Error> {
    let rows = sql::query(
        "SELECT transaction_id, order_id, user_id, points, attempts, next_attempt_at, traceparent FROM bonus_outbox \
         WHERE dead_lettered_at IS NULL AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
    )
    .bind(now_millis())
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(OutboxEntry {
                transaction_id: row.try_get("transaction_id")?,
                order_id: row.try_get("order_id")?,
                user: row.try_get("user_id")?,
                points: row.try_get("points")?,
                attempts: row.try_get("attempts")?,
                next_attempt_at: row.try_get("next_attempt_at")?,
                traceparent: row.try_get("traceparent")?,
            })
        })
        .collect()
}

/// Claims an outbox entry for one delivery attempt of at most `hold_ms` (compare-and-set on
/// the `attempts` and `next_attempt_at` read), so two dispatchers never deliver and
/// reschedule one entry at once. `false`: another dispatcher has it; leave it.
pub async fn lease_bonus(db: &Db, entry: &OutboxEntry, hold_ms: i64) -> Result<bool, sqlx::Error> {
    db.run(|| lease_bonus_once(db, entry, hold_ms)).await
}

async fn lease_bonus_once(db: &Db, entry: &OutboxEntry, hold_ms: i64) -> Result<bool, sqlx::Error> {
    let taken = sql::query(
        "UPDATE bonus_outbox SET next_attempt_at = $4 \
         WHERE transaction_id = $1 AND attempts = $2 AND next_attempt_at = $3 AND dead_lettered_at IS NULL",
    )
    .bind(entry.transaction_id.clone())
    .bind(entry.attempts)
    .bind(entry.next_attempt_at)
    .bind(now_millis() + hold_ms)
    .execute(db)
    .await?;
    Ok(updated_one(&taken))
}

/// Fidelity acknowledged: the outbox row goes and the order says `credited`, together.
pub async fn bonus_delivered(
    db: &Db,
    transaction_id: &str,
    order_id: &str,
) -> Result<(), sqlx::Error> {
    db.run_idempotent(|| bonus_delivered_once(db, transaction_id, order_id))
        .await
}

async fn bonus_delivered_once(
    db: &Db,
    transaction_id: &str,
    order_id: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sql::query("DELETE FROM bonus_outbox WHERE transaction_id = $1")
        .bind(transaction_id.to_owned())
        .execute(&mut tx)
        .await?;
    sql::query(
        "UPDATE orders SET bonus_status = 'credited', updated_at = $2 \
         WHERE order_id = $1 AND bonus_status <> 'credited'",
    )
    .bind(order_id.to_owned())
    .bind(now_millis())
    .execute(&mut tx)
    .await?;
    tx.commit().await
}

/// Schedules the next delivery of a leased entry (`attempts` was `entry.attempts` when leased;
/// it becomes one more). `Ok(false)`: the entry changed meanwhile; nothing written.
pub async fn reschedule_bonus(
    db: &Db,
    entry: &OutboxEntry,
    next_attempt_at: i64,
    error: &str,
) -> Result<bool, sqlx::Error> {
    db.run_idempotent(|| reschedule_bonus_once(db, entry, next_attempt_at, error))
        .await
}

async fn reschedule_bonus_once(
    db: &Db,
    entry: &OutboxEntry,
    next_attempt_at: i64,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let written = sql::query(
        "UPDATE bonus_outbox SET attempts = $2, next_attempt_at = $3, last_error = $4 \
         WHERE transaction_id = $1 AND attempts = $5",
    )
    .bind(entry.transaction_id.clone())
    .bind(entry.attempts + 1)
    .bind(next_attempt_at)
    .bind(error.to_owned())
    .bind(entry.attempts)
    .execute(db)
    .await?;
    Ok(updated_one(&written))
}

/// Fidelity refused a leased entry for good (a final 4xx): the entry becomes a dead letter
/// (`dead_lettered_at`, migration 0006), never retried, and its order's `bonus_status` says
/// `dead-letter`, in one transaction. `Ok(false)`: the entry changed meanwhile; nothing written.
pub async fn dead_letter_bonus(
    db: &Db,
    entry: &OutboxEntry,
    error: &str,
) -> Result<bool, sqlx::Error> {
    db.run_idempotent(|| dead_letter_bonus_once(db, entry, error))
        .await
}

async fn dead_letter_bonus_once(
    db: &Db,
    entry: &OutboxEntry,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let now = now_millis();
    let mut tx = db.begin().await?;
    let written = sql::query(
        "UPDATE bonus_outbox SET attempts = $2, last_error = $3, dead_lettered_at = $4 \
         WHERE transaction_id = $1 AND attempts = $5 AND dead_lettered_at IS NULL",
    )
    .bind(entry.transaction_id.clone())
    .bind(entry.attempts + 1)
    .bind(error.to_owned())
    .bind(now)
    .bind(entry.attempts)
    .execute(&mut tx)
    .await?;
    if !updated_one(&written) {
        tx.rollback().await?;
        return Ok(false);
    }
    sql::query(
        "UPDATE orders SET bonus_status = 'dead-letter', updated_at = $2 \
         WHERE order_id = $1 AND bonus_status <> 'credited'",
    )
    .bind(entry.order_id.clone())
    .bind(now)
    .execute(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Depth of the backlogs and the age of their oldest entries, for metrics and readiness.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Backlog {
    pub pending_orders: i64,
    pub oldest_pending_order_age_seconds: f64,
    /// Bonuses in the outbox still being delivered (dead letters not included).
    pub outbox_bonuses: i64,
    pub oldest_outbox_bonus_age_seconds: f64,
    /// Bonuses Fidelity refused for good (a final 4xx), kept for an operator, never retried.
    pub dead_letter_bonuses: i64,
    /// Seconds since the oldest of them was dead-lettered (0 when there is none).
    pub oldest_dead_letter_bonus_age_seconds: f64,
    /// Pending orders already past their completion promise (should stay 0).
    pub pending_orders_past_promise: i64,
    /// Deferred sales drained per second (measured while there is a backlog, with a prior at
    /// start; see `crate::promise`).
    pub drain_rate_per_second: f64,
    /// Seconds to drain the pending orders at that rate.
    pub projected_drain_seconds: f64,
    /// The completion promise of a deferred sale (`--defer-promise`), in seconds.
    pub promise_seconds: f64,
    /// Variance over mean of the sales drained per 10 s (1 for an even drain; Store's error
    /// windows make it about 10), which sets the admission's 99 % margin (`crate::promise`).
    pub drain_dispersion: f64,
    /// Deferred sales the promise admits at 99 %, those pending included.
    pub admissible_orders: u64,
}

impl Backlog {
    /// The pending orders and how long the oldest has waited, as
    /// [`crate::promise::CompletionPromise::set_backlog`] takes them.
    pub fn pending(&self) -> (u64, std::time::Duration) {
        (
            u64::try_from(self.pending_orders).unwrap_or(0),
            std::time::Duration::try_from_secs_f64(self.oldest_pending_order_age_seconds)
                .unwrap_or_default(),
        )
    }
}

pub async fn backlog(db: &Db) -> Result<Backlog, sqlx::Error> {
    db.run(|| backlog_once(db)).await
}

async fn backlog_once(db: &Db) -> Result<Backlog, sqlx::Error> {
    let now = now_millis();
    let orders = sql::query(PENDING_ORDERS_SQL).fetch_one(db).await?;
    let outbox = sql::query(
        "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM bonus_outbox WHERE dead_lettered_at IS NULL",
    )
    .fetch_one(db)
    .await?;
    let dead = sql::query(
        "SELECT COUNT(*) AS n, MIN(dead_lettered_at) AS oldest FROM bonus_outbox WHERE dead_lettered_at IS NOT NULL",
    )
    .fetch_one(db)
    .await?;
    let late = sql::query(LATE_ORDERS_SQL).bind(now).fetch_one(db).await?;
    let age = |oldest: Option<i64>| oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
    Ok(Backlog {
        pending_orders: orders.try_get("n")?,
        oldest_pending_order_age_seconds: age(orders.try_get("oldest")?),
        outbox_bonuses: outbox.try_get("n")?,
        oldest_outbox_bonus_age_seconds: age(outbox.try_get("oldest")?),
        dead_letter_bonuses: dead.try_get("n")?,
        oldest_dead_letter_bonus_age_seconds: age(dead.try_get("oldest")?),
        pending_orders_past_promise: late.try_get("n")?,
        ..Backlog::default()
    })
}

/// The order ended without a sale or with a failed step. `final_answer` rejections (4xx) are
/// replayed as they are; failures are re-driven on replay. `Ok(false)`: lease superseded.
#[must_use = "a superseded lease wrote nothing"]
#[allow(clippy::too_many_arguments)]
pub async fn finish_unsuccessfully(
    db: &Db,
    lease: &Lease,
    step: &str,
    final_answer: bool,
    response_status: u16,
    response: &str,
    transaction_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    db.run_idempotent(|| {
        finish_unsuccessfully_once(
            db,
            lease,
            step,
            final_answer,
            response_status,
            response,
            transaction_id,
        )
    })
    .await
}

async fn finish_unsuccessfully_once(
    db: &Db,
    lease: &Lease,
    step: &str,
    final_answer: bool,
    response_status: u16,
    response: &str,
    transaction_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let status = if final_answer { "rejected" } else { "failed" };
    let written = sql::query(
        "UPDATE orders SET status = $2, failed_step = $3, response_status = $4, response = $5, \
         transaction_id = COALESCE($6, transaction_id), updated_at = $7, version = version + 1 \
         WHERE order_id = $1 AND version = $8",
    )
    .bind(lease.order_id.clone())
    .bind(status)
    .bind(step.to_owned())
    .bind(i64::from(response_status))
    .bind(response.to_owned())
    .bind(transaction_id.map(str::to_owned))
    .bind(now_millis())
    .bind(lease.version)
    .execute(db)
    .await?;
    Ok(updated_one(&written))
}

/// `GET /orders/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub order_id: String,
    /// `processing`, `pending` (sale deferred), `completed`, `cancelled`, `rejected` or `failed`.
    pub status: String,
    pub user: String,
    pub product: String,
    pub ft: bool,
    pub transaction_id: Option<String>,
    pub failed_step: Option<String>,
    /// Why a deferred order was cancelled (`out-of-stock`, `unknown-product`,
    /// `outside-limits`, `rejected-by-store`).
    pub cancel_reason: Option<String>,
    /// Total in BRL (a JSON number, exact to the cent).
    #[schema(value_type = Option<f64>, example = 130.1)]
    #[serde(with = "ftshop_platform::money::json::option")]
    pub total: Option<Decimal>,
    pub bonus_points: Option<i64>,
    /// `credited`; `pending` (in the outbox, retried until Fidelity acknowledges); or
    /// `dead-letter` (Fidelity refused it for good: kept for an operator, see `GET /backlog`).
    pub bonus_status: Option<String>,
    /// A deferred sale: when it was expected to complete at acceptance (RFC 3339 UTC).
    pub expected_completion_at: Option<String>,
    /// A deferred sale: the completion promise's bound (RFC 3339 UTC).
    pub promised_by: Option<String>,
    /// True when a deferred sale ended (completed or cancelled) after its promise, or is
    /// still pending past it.
    pub promise_missed: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

pub async fn find(db: &Db, order_id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    db.run(|| find_once(db, order_id)).await
}

async fn find_once(db: &Db, order_id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    let row = sql::query(
        "SELECT order_id, status, user_id, product_id, ft, transaction_id, failed_step, cancel_reason, total_cents, \
         bonus_points, bonus_status, created_at, updated_at, expected_completion_at, promised_by, promise_missed \
         FROM orders WHERE order_id = $1",
    )
    .bind(order_id.to_owned())
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let status: String = row.try_get("status")?;
    let promised_by: Option<i64> = row.try_get("promised_by")?;
    let promise_missed = row.try_get::<i64>("promise_missed")? != 0
        || (status == "pending" && misses_promise(promised_by));
    Ok(Some(OrderView {
        order_id: row.try_get("order_id")?,
        status,
        user: row.try_get("user_id")?,
        product: row.try_get("product_id")?,
        ft: row.try_get::<i64>("ft")? != 0,
        transaction_id: row.try_get("transaction_id")?,
        failed_step: row.try_get("failed_step")?,
        cancel_reason: row.try_get("cancel_reason")?,
        total: row
            .try_get::<Option<i64>>("total_cents")?
            .map(crate::money::cents_to_decimal),
        bonus_points: row.try_get("bonus_points")?,
        bonus_status: row.try_get("bonus_status")?,
        expected_completion_at: row
            .try_get::<Option<i64>>("expected_completion_at")?
            .and_then(crate::promise::rfc3339_millis),
        promised_by: promised_by.and_then(crate::promise::rfc3339_millis),
        promise_missed,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
    }))
}

/// Remembers the last rate Exchange answered (one row per currency pair), as decimal text.
pub async fn store_last_rate(db: &Db, pair: &str, rate: Decimal) -> Result<(), sqlx::Error> {
    db.run_idempotent(|| store_last_rate_once(db, pair, rate))
        .await
}

async fn store_last_rate_once(db: &Db, pair: &str, rate: Decimal) -> Result<(), sqlx::Error> {
    sql::query(
        "INSERT INTO last_rate (pair, rate, stored_at) VALUES ($1, $2, $3) \
         ON CONFLICT (pair) DO UPDATE SET rate = excluded.rate, stored_at = excluded.stored_at",
    )
    .bind(pair.to_owned())
    .bind(rate.to_string())
    .bind(now_millis())
    .execute(db)
    .await?;
    Ok(())
}

/// The last remembered rate for `pair` and its age in milliseconds.
pub async fn last_rate(db: &Db, pair: &str) -> Result<Option<(Decimal, i64)>, sqlx::Error> {
    db.run(|| last_rate_once(db, pair)).await
}

async fn last_rate_once(db: &Db, pair: &str) -> Result<Option<(Decimal, i64)>, sqlx::Error> {
    let row = sql::query("SELECT rate, stored_at FROM last_rate WHERE pair = $1")
        .bind(pair.to_owned())
        .fetch_optional(db)
        .await?;
    row.map(|row| -> Result<(Decimal, i64), sqlx::Error> {
        let stored_at: i64 = row.try_get("stored_at")?;
        let rate = decimal_column(&row, "rate")?.ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "rate".to_owned(),
            source: "NULL rate".into(),
        })?;
        Ok((rate, (now_millis() - stored_at).max(0)))
    })
    .transpose()
}

/// A decimal stored as text (`rate_exact`, `last_rate.rate`), read exactly; text that is not a
/// decimal is a decode error, never a guess.
fn decimal_column(row: &Row, column: &str) -> Result<Option<Decimal>, sqlx::Error> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| {
        text.trim()
            .parse::<Decimal>()
            .or_else(|_| Decimal::from_scientific(text.trim()))
            .map_err(|err| sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: Box::new(err),
            })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scans by status (the order worker's, the backlog gauges') find their rows through
    /// `orders_due`: after `orders_status` was dropped (migration 0009), no lookup by status
    /// reads the whole table. SQLite's plan; PostgreSQL has the same index.
    #[tokio::test]
    async fn lookups_by_status_use_an_index_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(None, dir.path(), "ecommerce")
            .await
            .expect("db");
        db.migrate(&crate::SQLITE_MIGRATIONS, &crate::POSTGRES_MIGRATIONS)
            .await
            .expect("migrations");
        for statement in [DUE_ORDERS_SQL, PENDING_ORDERS_SQL, LATE_ORDERS_SQL] {
            let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {statement}"
            )))
            .fetch_all(&db.pool)
            .await
            .expect("plan")
            .iter()
            .map(|row| sqlx::Row::try_get::<String, _>(row, "detail").expect("detail"))
            .collect();
            assert!(
                plan.iter().all(|step| !step.starts_with("SCAN orders")),
                "{statement}: {plan:?}"
            );
            assert!(
                plan.iter()
                    .any(|step| step.contains("USING INDEX orders_due")),
                "{statement}: {plan:?}"
            );
        }
        db.close().await;
    }
}
