//! The orders table: idempotency claims, final answers kept for replay, and order lookups.
//!
//! Life of an order: `processing` when claimed, then `completed` (sale done), `rejected`
//! (a final 4xx: unknown product, out of stock) or `failed` (a downstream failed). A replay
//! of the same Idempotency-Key returns the stored answer of a completed or rejected order and
//! re-drives a failed (or abandoned) one under the same order id; Store's idempotency key is
//! derived from that id, so re-driving never sells twice.

use ftshop_platform::db::{Db, is_unique_violation, now_millis};
use ftshop_platform::money::Decimal;
use serde::Serialize;
use sqlx::Row;

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

/// What to do with an incoming purchase.
pub enum Claim {
    /// A new order: run it.
    Fresh,
    /// Run again under the existing order id (earlier attempt failed or was abandoned).
    Resume { order_id: String },
    /// Answer exactly what the first request got.
    Replay { status: u16, body: String },
    /// Another request with this key is running right now.
    InProgress,
    /// The key was used with a different body.
    KeyReused,
}

pub async fn claim(db: &Db, order: &NewOrder<'_>) -> Result<Claim, sqlx::Error> {
    if let Some(key) = order.idempotency_key
        && let Some(claim) = existing(db, key, order.fingerprint).await?
    {
        return Ok(claim);
    }
    let now = now_millis();
    let inserted = sqlx::query(
        "INSERT INTO orders (order_id, idempotency_key, request_hash, user_id, product_id, ft, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'processing', $7, $7)",
    )
    .bind(order.order_id.to_owned())
    .bind(order.idempotency_key.map(str::to_owned))
    .bind(order.fingerprint.to_owned())
    .bind(order.user.to_owned())
    .bind(order.product.to_owned())
    .bind(i64::from(order.ft))
    .bind(now)
    .execute(&db.pool)
    .await;
    match (inserted, order.idempotency_key) {
        (Ok(_), _) => Ok(Claim::Fresh),
        // Lost a race with a concurrent request carrying the same key.
        (Err(e), Some(key)) if is_unique_violation(&e) => Ok(existing(db, key, order.fingerprint)
            .await?
            .unwrap_or(Claim::InProgress)),
        (Err(e), _) => Err(e),
    }
}

async fn existing(db: &Db, key: &str, fingerprint: &str) -> Result<Option<Claim>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT order_id, request_hash, status, response_status, response, updated_at FROM orders WHERE idempotency_key = $1",
    )
    .bind(key.to_owned())
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    if row.try_get::<String, _>("request_hash")? != fingerprint {
        return Ok(Some(Claim::KeyReused));
    }
    let order_id: String = row.try_get("order_id")?;
    let status: String = row.try_get("status")?;
    let claim = match status.as_str() {
        "completed" | "rejected" | "pending" | "cancelled" => {
            let code: Option<i64> = row.try_get("response_status")?;
            let body: Option<String> = row.try_get("response")?;
            match (code, body) {
                (Some(code), Some(body)) => Claim::Replay {
                    status: code as u16,
                    body,
                },
                _ => Claim::Resume { order_id },
            }
        }
        "processing"
            if now_millis() - row.try_get::<i64, _>("updated_at")? < ABANDONED_AFTER_MS =>
        {
            Claim::InProgress
        }
        _ => Claim::Resume { order_id },
    };
    Ok(Some(claim))
}

/// The sale went through: keep the figures and the answer.
pub struct Completion<'a> {
    pub order_id: &'a str,
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
/// in the same transaction: either both are durable or neither is.
pub async fn complete(db: &Db, c: &Completion<'_>) -> Result<(), sqlx::Error> {
    let now = now_millis();
    let mut tx = db.pool.begin().await?;
    // The first statement writes (SQLite: take the write lock before reading anything).
    sqlx::query(
        "UPDATE orders SET status = 'completed', failed_step = NULL, transaction_id = $2, value_cents = $3, rate_exact = $4, \
         total_cents = $5, bonus_points = $6, bonus_status = $7, response_status = 200, response = $8, updated_at = $9, \
         completed_sync = $10, next_attempt_at = NULL WHERE order_id = $1",
    )
    .bind(c.order_id.to_owned())
    .bind(c.transaction_id.to_owned())
    .bind(c.value_cents)
    .bind(c.rate.to_string())
    .bind(c.total_cents)
    .bind(c.bonus_points)
    .bind(c.bonus_status.to_owned())
    .bind(c.response.to_owned())
    .bind(now)
    .bind(i64::from(c.completed_sync))
    .execute(&mut *tx)
    .await?;
    if c.bonus_status != "credited" {
        sqlx::query(
            "INSERT INTO bonus_outbox (transaction_id, order_id, user_id, points, attempts, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, 0, $5, $5) ON CONFLICT (transaction_id) DO NOTHING",
        )
        .bind(c.transaction_id.to_owned())
        .bind(c.order_id.to_owned())
        .bind(c.user.to_owned())
        .bind(c.bonus_points)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    // Counted once the sale is durable: revenue in BRL cents (an integer counter never loses
    // a cent to float rounding) and points promised to the customer.
    metrics::counter!("shop_revenue_brl_cents_total")
        .increment(u64::try_from(c.total_cents).unwrap_or(0));
    metrics::counter!("shop_bonus_points_total", "status" => bonus_status_label(c.bonus_status))
        .increment(u64::try_from(c.bonus_points).unwrap_or(0));
    Ok(())
}

fn bonus_status_label(status: &str) -> &'static str {
    if status == "credited" {
        "credited"
    } else {
        "pending"
    }
}

/// No Store replica could sell in time: the order is durably accepted as `pending` with its
/// figures; the order worker completes or cancels it.
pub async fn defer(
    db: &Db,
    order_id: &str,
    value_cents: i64,
    rate: Decimal,
    total_cents: i64,
    bonus_points: i64,
    response: &str,
) -> Result<(), sqlx::Error> {
    let now = now_millis();
    sqlx::query(
        "UPDATE orders SET status = 'pending', value_cents = $2, rate_exact = $3, total_cents = $4, bonus_points = $5, \
         bonus_status = 'pending', response_status = 202, response = $6, updated_at = $7, next_attempt_at = $7, \
         completed_sync = 0 WHERE order_id = $1",
    )
    .bind(order_id.to_owned())
    .bind(value_cents)
    .bind(rate.to_string())
    .bind(total_cents)
    .bind(bonus_points)
    .bind(response.to_owned())
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
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
}

pub async fn due_orders(db: &Db, limit: i64) -> Result<Vec<DueOrder>, sqlx::Error> {
    let now = now_millis();
    let rows = sqlx::query(
        "SELECT order_id, user_id, product_id, status, attempts, value_cents, rate_exact, response FROM orders \
         WHERE ft = 1 AND ((status = 'pending' AND next_attempt_at <= $1) \
            OR (status = 'processing' AND updated_at < $2 AND (next_attempt_at IS NULL OR next_attempt_at <= $1))) \
         ORDER BY created_at LIMIT $3",
    )
    .bind(now)
    .bind(now - ABANDONED_AFTER_MS)
    .bind(limit)
    .fetch_all(&db.pool)
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
            })
        })
        .collect()
}

/// Schedules the next attempt at a due order.
pub async fn reschedule_order(
    db: &Db,
    order_id: &str,
    attempts: i64,
    next_attempt_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET attempts = $2, next_attempt_at = $3 WHERE order_id = $1")
        .bind(order_id.to_owned())
        .bind(attempts)
        .bind(next_attempt_at)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A deferred order that can never complete (out of stock, unknown product).
pub async fn cancel(
    db: &Db,
    order_id: &str,
    reason: &str,
    response_status: u16,
    response: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET status = 'cancelled', cancel_reason = $2, response_status = $3, response = $4, \
         updated_at = $5, next_attempt_at = NULL WHERE order_id = $1",
    )
    .bind(order_id.to_owned())
    .bind(reason.to_owned())
    .bind(i64::from(response_status))
    .bind(response.to_owned())
    .bind(now_millis())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A bonus waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub transaction_id: String,
    pub order_id: String,
    pub user: String,
    pub points: i64,
    pub attempts: i64,
}

pub async fn due_bonuses(db: &Db, limit: i64) -> Result<Vec<OutboxEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT transaction_id, order_id, user_id, points, attempts FROM bonus_outbox \
         WHERE next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
    )
    .bind(now_millis())
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(OutboxEntry {
                transaction_id: row.try_get("transaction_id")?,
                order_id: row.try_get("order_id")?,
                user: row.try_get("user_id")?,
                points: row.try_get("points")?,
                attempts: row.try_get("attempts")?,
            })
        })
        .collect()
}

/// Fidelity acknowledged: the outbox row goes and the order says `credited`, together.
pub async fn bonus_delivered(
    db: &Db,
    transaction_id: &str,
    order_id: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("DELETE FROM bonus_outbox WHERE transaction_id = $1")
        .bind(transaction_id.to_owned())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE orders SET bonus_status = 'credited', updated_at = $2 WHERE order_id = $1")
        .bind(order_id.to_owned())
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

pub async fn reschedule_bonus(
    db: &Db,
    transaction_id: &str,
    attempts: i64,
    next_attempt_at: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE bonus_outbox SET attempts = $2, next_attempt_at = $3, last_error = $4 WHERE transaction_id = $1")
        .bind(transaction_id.to_owned())
        .bind(attempts)
        .bind(next_attempt_at)
        .bind(error.to_owned())
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Depth of the backlogs and the age of their oldest entries, for metrics and readiness.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Backlog {
    pub pending_orders: i64,
    pub oldest_pending_order_age_seconds: f64,
    pub outbox_bonuses: i64,
    pub oldest_outbox_bonus_age_seconds: f64,
}

pub async fn backlog(db: &Db) -> Result<Backlog, sqlx::Error> {
    let now = now_millis();
    let orders = sqlx::query(
        "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM orders WHERE status = 'pending'",
    )
    .fetch_one(&db.pool)
    .await?;
    let outbox = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM bonus_outbox")
        .fetch_one(&db.pool)
        .await?;
    let age = |oldest: Option<i64>| oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
    Ok(Backlog {
        pending_orders: orders.try_get("n")?,
        oldest_pending_order_age_seconds: age(orders.try_get("oldest")?),
        outbox_bonuses: outbox.try_get("n")?,
        oldest_outbox_bonus_age_seconds: age(outbox.try_get("oldest")?),
    })
}

/// The order ended without a sale or with a failed step. `final_answer` rejections (4xx) are
/// replayed as they are; failures are re-driven on replay.
pub async fn finish_unsuccessfully(
    db: &Db,
    order_id: &str,
    step: &str,
    final_answer: bool,
    response_status: u16,
    response: &str,
    transaction_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    let status = if final_answer { "rejected" } else { "failed" };
    sqlx::query(
        "UPDATE orders SET status = $2, failed_step = $3, response_status = $4, response = $5, \
         transaction_id = COALESCE($6, transaction_id), updated_at = $7 WHERE order_id = $1",
    )
    .bind(order_id.to_owned())
    .bind(status)
    .bind(step.to_owned())
    .bind(i64::from(response_status))
    .bind(response.to_owned())
    .bind(transaction_id.map(str::to_owned))
    .bind(now_millis())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Marks a resumed order as running again, so a concurrent replay waits.
pub async fn touch(db: &Db, order_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET status = 'processing', updated_at = $2 WHERE order_id = $1")
        .bind(order_id.to_owned())
        .bind(now_millis())
        .execute(&db.pool)
        .await?;
    Ok(())
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
    /// Why a deferred order was cancelled (`out-of-stock`, `unknown-product`).
    pub cancel_reason: Option<String>,
    /// Total in BRL (a JSON number, exact to the cent).
    #[schema(value_type = Option<f64>, example = 130.1)]
    #[serde(with = "ftshop_platform::money::json::option")]
    pub total: Option<Decimal>,
    pub bonus_points: Option<i64>,
    pub bonus_status: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

pub async fn find(db: &Db, order_id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT order_id, status, user_id, product_id, ft, transaction_id, failed_step, cancel_reason, total_cents, \
         bonus_points, bonus_status, created_at, updated_at FROM orders WHERE order_id = $1",
    )
    .bind(order_id.to_owned())
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(OrderView {
        order_id: row.try_get("order_id")?,
        status: row.try_get("status")?,
        user: row.try_get("user_id")?,
        product: row.try_get("product_id")?,
        ft: row.try_get::<i64, _>("ft")? != 0,
        transaction_id: row.try_get("transaction_id")?,
        failed_step: row.try_get("failed_step")?,
        cancel_reason: row.try_get("cancel_reason")?,
        total: row
            .try_get::<Option<i64>, _>("total_cents")?
            .map(crate::money::cents_to_decimal),
        bonus_points: row.try_get("bonus_points")?,
        bonus_status: row.try_get("bonus_status")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
    }))
}

/// Remembers the last rate Exchange answered (one row per currency pair), as decimal text.
pub async fn store_last_rate(db: &Db, pair: &str, rate: Decimal) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO last_rate (pair, rate, stored_at) VALUES ($1, $2, $3) \
         ON CONFLICT (pair) DO UPDATE SET rate = excluded.rate, stored_at = excluded.stored_at",
    )
    .bind(pair.to_owned())
    .bind(rate.to_string())
    .bind(now_millis())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The last remembered rate for `pair` and its age in milliseconds.
pub async fn last_rate(db: &Db, pair: &str) -> Result<Option<(Decimal, i64)>, sqlx::Error> {
    let row = sqlx::query("SELECT rate, stored_at FROM last_rate WHERE pair = $1")
        .bind(pair.to_owned())
        .fetch_optional(&db.pool)
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
fn decimal_column(row: &sqlx::any::AnyRow, column: &str) -> Result<Option<Decimal>, sqlx::Error> {
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
