//! The pending-bonus queue: bonuses Fidelity has durably accepted but not credited yet.
//!
//! A bonus lands here when the caller asks for an asynchronous answer (`Prefer: respond-async`,
//! answered 202 at once) or when crediting it inline fails. A worker credits queued bonuses
//! with exponential backoff and full jitter; the ledger's primary key on `transaction_id` makes
//! a credit happen once however often it is retried, and the queue row is deleted only after.
//! Depth and oldest age are exported as `fidelity_pending_bonuses` and
//! `fidelity_oldest_pending_age_seconds`, and readiness fails when the oldest is too old.
//!
//! A queued bonus whose transaction id was credited before with another user or amount (a
//! conflict) can never be credited: it becomes a **dead letter** (`dead_lettered_at`, migration
//! 0003), kept rather than deleted, never retried, left out of depth, age and readiness, and
//! counted in `GET /bonus/pending` (`dead_letters`) and `fidelity_dead_letter_bonuses`.

use ftshop_resilience::full_jitter;
use std::time::Duration;

use anyhow::Context;
use ftshop_platform::db::{Db, now_millis};
use ftshop_platform::sql;
use serde::Serialize;

use crate::ledger::{self, Credit};

/// How often the worker looks again after a failed pass.
const POLL: Duration = Duration::from_millis(200);
/// How often it looks when the last pass found nothing due: a bonus queued wakes it at once, so
/// this pace only finds retries whose time came, and costs the idle suite little.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a worker's claim on a due bonus keeps other workers away (one credit attempt is a
/// single insert; a worker that dies mid-attempt leaves the bonus due again after this).
const CLAIM_HOLD_MS: i64 = 10_000;

/// Durably accepts a bonus for later crediting. Idempotent: a transaction already queued is
/// left as it is; so it goes through the database breaker and is retried within the retry
/// budget when the connection is lost mid-way ([`Db::run_idempotent`]).
pub async fn enqueue(db: &Db, transaction_id: &str, user: &str, points: i64) -> anyhow::Result<()> {
    let now = now_millis();
    db.run_idempotent(|| sql::query(
        "INSERT INTO pending_bonuses (transaction_id, user_id, points, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, 0, $4, $4) ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(transaction_id.to_owned())
    .bind(user.to_owned())
    .bind(points)
    .bind(now)
    .execute(db))
    .await
    .context("cannot queue bonus")?;
    Ok(())
}

/// `GET /bonus/pending`.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// Bonuses accepted and not credited yet.
    pub depth: i64,
    /// Age of the oldest of them (0 when empty).
    pub oldest_age_seconds: f64,
    /// Bonuses that can never be credited (their transaction id was credited with another user
    /// or amount): kept for an operator, never retried, not in `depth`.
    pub dead_letters: i64,
}

/// The queue's figures, read in one statement: one snapshot, so a bonus dead-lettered between
/// two reads can never be counted in both `depth` and `dead_letters`, or in neither.
pub async fn stats(db: &Db) -> anyhow::Result<QueueStats> {
    // SUM over no rows is NULL (and NUMERIC on PostgreSQL, which the Any driver cannot
    // decode): COALESCE and CAST back to BIGINT.
    let row = db
        .run(|| {
            sql::query(
                "SELECT CAST(COALESCE(SUM(CASE WHEN dead_lettered_at IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS n, \
                 MIN(CASE WHEN dead_lettered_at IS NULL THEN created_at END) AS oldest, \
                 CAST(COALESCE(SUM(CASE WHEN dead_lettered_at IS NULL THEN 0 ELSE 1 END), 0) AS BIGINT) AS dead \
                 FROM pending_bonuses",
            )
            .fetch_one(db)
        })
        .await
        .context("cannot read the pending queue")?;
    let depth: i64 = row.try_get("n")?;
    let oldest: Option<i64> = row.try_get("oldest")?;
    let dead_letters: i64 = row.try_get("dead")?;
    let oldest_age_seconds = oldest.map_or(0.0, |t| (now_millis() - t).max(0) as f64 / 1000.0);
    metrics::gauge!("fidelity_pending_bonuses").set(depth as f64);
    metrics::gauge!("fidelity_oldest_pending_age_seconds").set(oldest_age_seconds);
    metrics::gauge!("fidelity_dead_letter_bonuses").set(dead_letters as f64);
    Ok(QueueStats {
        depth,
        oldest_age_seconds,
        dead_letters,
    })
}

/// Runs the queue worker forever (spawn it): again at once after a pass that found work, else
/// when `queued` is notified or after [`IDLE_POLL`] ([`POLL`] after a failed pass).
pub async fn run_worker(db: Db, queued: std::sync::Arc<tokio::sync::Notify>) {
    loop {
        let wait = match drain_once(&db).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => IDLE_POLL,
            Err(err) => {
                if let Some(db_err) = err.chain().find_map(|e| e.downcast_ref::<sqlx::Error>()) {
                    ftshop_platform::db::note_storage_error(db_err);
                }
                tracing::warn!(
                    error = format!("{err:#}"),
                    "pending-bonus worker pass failed"
                );
                POLL
            }
        };
        let _ = stats(&db).await;
        tokio::select! {
            () = queued.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Credits every due bonus once; returns how many were handled.
pub async fn drain_once(db: &Db) -> anyhow::Result<usize> {
    // Every statement goes through the database breaker, so during an outage the worker fails
    // fast too; only the delete (idempotent) is retried on a lost connection.
    let now = now_millis();
    let rows = db
        .run(|| {
            sql::query(
                "SELECT transaction_id, user_id, points, attempts, next_attempt_at \
                 FROM pending_bonuses WHERE dead_lettered_at IS NULL AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at LIMIT 64",
            )
            .bind(now)
            .fetch_all(db)
        })
        .await
        .context("cannot read due bonuses")?;
    let n = rows.len();
    for row in rows {
        let transaction_id: String = row.try_get("transaction_id")?;
        let user: String = row.try_get("user_id")?;
        let points: i64 = row.try_get("points")?;
        let attempts: i64 = row.try_get("attempts")?;
        let due_at: i64 = row.try_get("next_attempt_at")?;
        // Compare-and-set claim on what was read, so two workers (Fidelity replicas sharing
        // PostgreSQL) never credit-and-reschedule one bonus at once; the loser leaves it.
        let hold_until = now_millis() + CLAIM_HOLD_MS;
        let claimed = db
            .run(|| {
                sql::query(
                    "UPDATE pending_bonuses SET next_attempt_at = $4 WHERE transaction_id = $1 \
                     AND attempts = $2 AND next_attempt_at = $3 AND dead_lettered_at IS NULL",
                )
                .bind(transaction_id.clone())
                .bind(attempts)
                .bind(due_at)
                .bind(hold_until)
                .execute(db)
            })
            .await
            .context("cannot claim a due bonus")?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        match ledger::credit(db, &transaction_id, &user, points).await {
            Ok(Credit::Conflict) => {
                // Never creditable: kept as a dead letter for an operator, not retried, not
                // deleted (the caller was answered 202 for it).
                tracing::error!(%transaction_id, %user, points, "queued bonus conflicts with an earlier credit of its transaction id; dead-lettered, needs attention");
                metrics::counter!("fidelity_bonus_total", "outcome" => "conflict", "via" => "queue")
                    .increment(1);
                let now = now_millis();
                db.run(|| {
                    sql::query(
                        "UPDATE pending_bonuses SET attempts = $2, dead_lettered_at = $3, \
                         last_error = $4 WHERE transaction_id = $1 AND attempts = $5",
                    )
                    .bind(transaction_id.clone())
                    .bind(attempts + 1)
                    .bind(now)
                    .bind("transaction-conflict: the transaction id was credited with another user or amount")
                    .bind(attempts)
                    .execute(db)
                })
                .await
                .context("cannot dead-letter a conflicting bonus")?;
            }
            Ok(outcome) => {
                let label = match outcome {
                    Credit::Duplicate => "duplicate",
                    _ => "credited",
                };
                metrics::counter!("fidelity_bonus_total", "outcome" => label, "via" => "queue")
                    .increment(1);
                db.run_idempotent(|| {
                    sql::query("DELETE FROM pending_bonuses WHERE transaction_id = $1")
                        .bind(transaction_id.clone())
                        .execute(db)
                })
                .await
                .context("cannot dequeue bonus")?;
            }
            Err(err) => {
                let delay = full_jitter(
                    attempts,
                    Duration::from_millis(200),
                    Duration::from_secs(30),
                );
                let next = now_millis() + i64::try_from(delay.as_millis()).unwrap_or(30_000);
                let last_error = format!("{err:#}");
                db.run(|| {
                    sql::query(
                        "UPDATE pending_bonuses SET attempts = $2, next_attempt_at = $3, \
                         last_error = $4 WHERE transaction_id = $1 AND attempts = $5",
                    )
                    .bind(transaction_id.clone())
                    .bind(attempts + 1)
                    .bind(next)
                    .bind(last_error.clone())
                    .bind(attempts)
                    .execute(db)
                })
                .await
                .context("cannot reschedule bonus")?;
            }
        }
    }
    Ok(n)
}
