//! The orders table: idempotency claims, final answers kept for replay, and order lookups.
//!
//! Life of an order: `processing` when claimed, then `completed` (sale done), `rejected`
//! (a final 4xx: unknown product, out of stock) or `failed` (a downstream failed). A replay
//! of the same Idempotency-Key returns the stored answer of a completed or rejected order and
//! re-drives a failed (or abandoned) one under the same order id; Store's idempotency key is
//! derived from that id, so re-driving never sells twice.

use ftshop_platform::db::{Db, is_unique_violation, now_millis};
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
        "completed" | "rejected" => {
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
    pub transaction_id: &'a str,
    pub value_cents: i64,
    pub rate: f64,
    pub total_cents: i64,
    pub bonus_points: i64,
    pub bonus_status: &'a str,
    pub response: &'a str,
}

pub async fn complete(db: &Db, c: &Completion<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET status = 'completed', failed_step = NULL, transaction_id = $2, value_cents = $3, rate = $4, \
         total_cents = $5, bonus_points = $6, bonus_status = $7, response_status = 200, response = $8, updated_at = $9 \
         WHERE order_id = $1",
    )
    .bind(c.order_id.to_owned())
    .bind(c.transaction_id.to_owned())
    .bind(c.value_cents)
    .bind(c.rate)
    .bind(c.total_cents)
    .bind(c.bonus_points)
    .bind(c.bonus_status.to_owned())
    .bind(c.response.to_owned())
    .bind(now_millis())
    .execute(&db.pool)
    .await?;
    Ok(())
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
    /// `processing`, `completed`, `rejected` or `failed`.
    pub status: String,
    pub user: String,
    pub product: String,
    pub ft: bool,
    pub transaction_id: Option<String>,
    pub failed_step: Option<String>,
    /// Total in BRL.
    pub total: Option<f64>,
    pub bonus_points: Option<i64>,
    pub bonus_status: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

pub async fn find(db: &Db, order_id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT order_id, status, user_id, product_id, ft, transaction_id, failed_step, total_cents, bonus_points, \
         bonus_status, created_at, updated_at FROM orders WHERE order_id = $1",
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
        total: row
            .try_get::<Option<i64>, _>("total_cents")?
            .map(crate::money::cents_to_number),
        bonus_points: row.try_get("bonus_points")?,
        bonus_status: row.try_get("bonus_status")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
    }))
}
