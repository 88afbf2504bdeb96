//! The points ledger: one row per credited transaction, balances are sums of rows.
//!
//! Crediting is a single `INSERT .. ON CONFLICT DO NOTHING`, the first and only statement of its
//! (implicit) transaction: SQLite takes the write lock at once instead of upgrading a read lock
//! (which can fail with `SQLITE_BUSY` under concurrency), and PostgreSQL makes a concurrent
//! insert of the same transaction id wait for the first and then do nothing. Whoever inserted
//! nothing reads the existing row to tell a replay from a conflicting reuse.

use anyhow::Context;
use ftshop_platform::db::{Db, is_unique_violation, now_millis};
use ftshop_platform::sql;

/// What crediting a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credit {
    /// First time this transaction was seen: the points were added.
    Credited,
    /// The same transaction, user and points were credited before: nothing changed.
    Duplicate,
    /// The transaction id was credited before with another user or amount: nothing changed.
    Conflict,
}

/// Credits `points` to `user` once for `transaction_id`.
///
/// Through the database breaker, and retried within the retry budget when the connection is
/// lost mid-way ([`Db::run_idempotent`]): the insert is keyed by `transaction_id`, so a retry
/// after a COMMIT that did happen inserts nothing and answers [`Credit::Duplicate`] (the
/// caller's receipt is the same: credited once).
pub async fn credit(
    db: &Db,
    transaction_id: &str,
    user: &str,
    points: i64,
) -> anyhow::Result<Credit> {
    db.run_idempotent(|| credit_once(db, transaction_id, user, points))
        .await
        .context("cannot credit")?
        .ok_or_else(|| anyhow::anyhow!("transaction {transaction_id} neither inserts nor exists"))
}

/// One attempt; `None` when the row that blocked the insert vanished twice (rolled back).
async fn credit_once(
    db: &Db,
    transaction_id: &str,
    user: &str,
    points: i64,
) -> Result<Option<Credit>, sqlx::Error> {
    // Two rounds at most: an empty lookup means the row that blocked our insert was rolled
    // back in between, and the second insert then goes through (or meets a committed row).
    for _ in 0..2 {
        let inserted = sql::query(
            "INSERT INTO credits (transaction_id, user_id, points, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (transaction_id) DO NOTHING",
        )
        .bind(transaction_id)
        .bind(user)
        .bind(points)
        .bind(now_millis())
        .execute(db)
        .await;
        match inserted {
            Ok(done) if done.rows_affected() == 1 => return Ok(Some(Credit::Credited)),
            Ok(_) => {}
            // ON CONFLICT makes this unlikely, but a unique violation means the same thing.
            Err(err) if is_unique_violation(&err) => {}
            Err(err) => return Err(err),
        }
        let existing: Option<(String, i64)> =
            sql::query("SELECT user_id, points FROM credits WHERE transaction_id = $1")
                .bind(transaction_id)
                .fetch_optional(db)
                .await?
                .map(|row| Ok::<_, sqlx::Error>((row.try_get_at(0)?, row.try_get_at(1)?)))
                .transpose()?;
        match existing {
            Some((existing_user, existing_points))
                if existing_user == user && existing_points == points =>
            {
                return Ok(Some(Credit::Duplicate));
            }
            Some(_) => return Ok(Some(Credit::Conflict)),
            None => {}
        }
    }
    Ok(None)
}

/// The user's points: the sum of their credits (0 when there are none), from the database
/// (the caller puts it under the breaker, see [`crate::AppState::balances`]).
pub async fn balance(db: &Db, user: &str) -> Result<i64, sqlx::Error> {
    // PostgreSQL sums BIGINT into NUMERIC, which the Any driver cannot decode: cast it back.
    sql::query("SELECT CAST(COALESCE(SUM(points), 0) AS BIGINT) FROM credits WHERE user_id = $1")
        .bind(user)
        .fetch_one(db)
        .await?
        .try_get_at(0)
}
