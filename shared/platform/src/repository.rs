//! The resilient repository: how a service reaches its database when the database may be away.
//!
//! Three pieces, all built from `ftshop_resilience` (no policy of its own here):
//! - **A breaker around database calls**, one per process, named [`BREAKER_NAME`] (`db`), in
//!   the usual `resilience_circuitbreaker_state{name="db"}` metrics. Without it, with the
//!   server cut every request waits out the pool's 5 s acquire timeout; with it, once half of
//!   the last [`BREAKER_WINDOW`] calls (at least [`BREAKER_MIN_CALLS`]) found the database
//!   unreachable, calls fail at once with [`CircuitOpen`] (503 problem+json, `Retry-After`)
//!   for [`BREAKER_WAIT`], then trial calls probe it. Only an unreachable or damaged database
//!   counts as a failure ([`StorageFault::Unavailable`], [`StorageFault::Damaged`]): a full
//!   disk, a read-only file or a held lock still answer reads, and a constraint violation is
//!   the database working.
//! - **Retries of idempotent writes**, within a [`RetryBudget`] (20 % of recent calls plus a
//!   floor, so an outage never turns into a retry storm), and only when the connection was
//!   lost mid-call (the COMMIT outcome is unknown). [`Db::run_idempotent`] is for writes whose
//!   replay after a COMMIT that did happen is a no-op answering the same thing: Store's sale
//!   with an `Idempotency-Key`, Fidelity's credit by transaction id. Every other call goes
//!   through [`Db::run`], never retried.
//! - **Reads answered from a cache while the database is away** ([`ReadCache`]): every fresh
//!   read goes to the database and refreshes the cache; when the read meets a storage fault
//!   (or the open breaker), the last value read, at most `max_staleness` old, is answered
//!   instead, marked stale ([`Read::stale`]; over HTTP the headers [`STALE_HEADER`]`: true`
//!   and `Age`). A stale read is never the basis of a write: writes always go to the database.
//!
//! Ideas taken from elsewhere: the breaker and budget designs are the resilience crate's
//! (Resilience4j's state machine, Finagle/linkerd's retry budget); marking a response served
//! from cache with `Age` follows RFC 9111 §5.1.

use std::future::Future;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ftshop_resilience::{
    BreakerConfig, CacheConfig, CircuitBreaker, ConfigError, Policy, ResilienceError, RetryBudget,
    RetryPolicy, TieredCache,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::{Db, StorageFault, note_storage_error};

/// Name of the database breaker in metrics, logs and breaker status.
pub const BREAKER_NAME: &str = "db";
/// The breaker judges the last this many database calls.
pub const BREAKER_WINDOW: u32 = 10;
/// ... and only once it has seen at least this many.
pub const BREAKER_MIN_CALLS: u32 = 5;
/// How long an open breaker fails calls fast before letting trial calls through.
pub const BREAKER_WAIT: Duration = Duration::from_secs(2);
/// Response header set to `true` on a read answered from the cache while the database is away.
pub const STALE_HEADER: &str = "x-ftshop-stale";
/// Default bound on the age of a stale read (`--stale-reads-max`).
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(600);

/// The call was not made: the database breaker is open. Carried as the source of a
/// `sqlx::Error::Io`, so it is classified as [`StorageFault::Unavailable`] (503) everywhere a
/// database error is, and [`crate::Problem`] turns `retry_after` into `Retry-After`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the database is unreachable (circuit breaker `db` open); failing fast")]
pub struct CircuitOpen {
    /// Time until the breaker lets a trial call through.
    pub retry_after: Duration,
}

impl CircuitOpen {
    /// The [`CircuitOpen`] inside `err`, if that is what `err` is.
    pub fn of(err: &sqlx::Error) -> Option<&CircuitOpen> {
        match err {
            sqlx::Error::Io(io) => io.get_ref()?.downcast_ref::<CircuitOpen>(),
            _ => None,
        }
    }
}

/// The breaker and the two call policies of one [`Db`].
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    breaker: CircuitBreaker,
    plain: Policy<sqlx::Error>,
    idempotent: Policy<sqlx::Error>,
}

impl Guard {
    pub(crate) fn new() -> Self {
        let breaker = CircuitBreaker::new(BREAKER_NAME, breaker_config());
        let plain = Policy::named(BREAKER_NAME)
            .breaker(breaker.clone())
            .failure_if(trips_breaker);
        let retry = RetryPolicy::exponential(Duration::from_millis(50))
            .max_attempts(3)
            .budget(RetryBudget::default())
            .retry_if(|err: &ResilienceError<sqlx::Error>| {
                err.inner().is_some_and(is_connection_lost)
            });
        let idempotent = Policy::named("db.idempotent_write")
            .breaker(breaker.clone())
            .failure_if(trips_breaker)
            .retry(retry);
        Self {
            breaker,
            plain,
            idempotent,
        }
    }

    fn error(&self, err: ResilienceError<sqlx::Error>) -> sqlx::Error {
        match err {
            ResilienceError::Inner(err) => err,
            ResilienceError::BreakerOpen { .. } => {
                let retry_after = self
                    .breaker
                    .status()
                    .retry_after_ms
                    .map_or(BREAKER_WAIT, Duration::from_millis);
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    CircuitOpen { retry_after },
                ))
            }
            // Only retries of a lost connection spend the budget, so an exhausted budget means
            // the connection was lost.
            ResilienceError::BudgetExhausted => sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the database connection was lost and the retry budget is exhausted",
            )),
            // No timeout or bulkhead is configured; kept total all the same.
            other => sqlx::Error::Io(std::io::Error::other(other.to_string())),
        }
    }
}

impl Db {
    /// Runs one database call (a read, or a write that must not be repeated) under the
    /// database breaker: with the breaker open it fails at once with [`CircuitOpen`] (inside
    /// `sqlx::Error::Io`) without touching the pool. `call` is invoked once.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, sqlx::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let guard = &self.guard;
        guard.plain.call(call).await.map_err(|e| guard.error(e))
    }

    /// Like [`run`](Self::run), and when the connection is lost mid-call (so whether it
    /// committed is unknown) the call is made again, up to 3 attempts with jittered backoff
    /// from 50 ms, within the retry budget. Only for writes whose replay is a no-op that
    /// answers the same thing when the first attempt did commit (an idempotency key, a
    /// transaction id, an `ON CONFLICT DO NOTHING`); never for a plain insert or decrement.
    pub async fn run_idempotent<T, F, Fut>(&self, call: F) -> Result<T, sqlx::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let guard = &self.guard;
        guard
            .idempotent
            .call(call)
            .await
            .map_err(|e| guard.error(e))
    }

    /// The database breaker (for status and tests).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.guard.breaker
    }
}

/// 50 % failures over the last [`BREAKER_WINDOW`] calls (at least [`BREAKER_MIN_CALLS`]),
/// open for [`BREAKER_WAIT`], 2 trial calls.
fn breaker_config() -> BreakerConfig {
    BreakerConfig::builder()
        .failure_rate_threshold(0.5)
        .count_window(BREAKER_WINDOW)
        .minimum_calls(BREAKER_MIN_CALLS)
        .wait_in_open(BREAKER_WAIT)
        .permitted_calls_in_half_open(2)
        .build()
        // The constants above are valid (unit-tested); the default is the safe fallback.
        .unwrap_or_default()
}

/// An error that says the database is away: it counts against the breaker.
fn trips_breaker(err: &sqlx::Error) -> bool {
    matches!(
        StorageFault::of(err),
        Some(StorageFault::Unavailable | StorageFault::Damaged)
    )
}

/// The connection broke during the call: the server may or may not have committed. A pool
/// timeout is not retried (it already waited the whole acquire timeout), nor a closed pool.
fn is_connection_lost(err: &sqlx::Error) -> bool {
    StorageFault::of(err) == Some(StorageFault::Unavailable)
        && !matches!(err, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
        && CircuitOpen::of(err).is_none()
}

/// A read result, fresh from the database or, while the database is away, from the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Read<T> {
    /// The value.
    pub value: T,
    /// `None` when read from the database now; `Some(age)` when answered from the cache,
    /// `age` being the time since it was read from the database.
    pub stale: Option<Duration>,
}

impl<T> Read<T> {
    /// A value just read from the database.
    pub fn fresh(value: T) -> Self {
        Self { value, stale: None }
    }

    /// The same read with its value transformed.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Read<U> {
        Read {
            value: f(self.value),
            stale: self.stale,
        }
    }
}

impl<T: Serialize> IntoResponse for Read<T> {
    /// 200 with the value as JSON; a stale read adds `x-ftshop-stale: true` and
    /// `Age: <whole seconds since it was read from the database>`.
    fn into_response(self) -> Response {
        let mut response = crate::extract::Json(self.value).into_response();
        if let Some(age) = self.stale {
            let headers = response.headers_mut();
            headers.insert(
                HeaderName::from_static(STALE_HEADER),
                HeaderValue::from_static("true"),
            );
            headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
        }
        response
    }
}

/// The last values read from the database, by key, answered while the database is away.
/// One per kind of read (its own namespace and `resilience_cache_requests_total{cache}`
/// label). In process only: each replica keeps what it read itself. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadCache<V> {
    cache: TieredCache<V>,
}

impl<V> ReadCache<V>
where
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    /// A cache for `namespace` (ASCII letters, digits, `.`, `_`, `-`) answering values at most
    /// `max_staleness` old (zero: never, the database error is returned), holding at most
    /// 10 000 keys.
    pub fn new(namespace: &str, max_staleness: Duration) -> Result<Self, ConfigError> {
        // Never fresh (1 ms TTL): a fresh read always goes to the database; the cache only
        // answers when that fails, up to `max_staleness`.
        let config = CacheConfig::builder(namespace)
            .ttl(Duration::from_millis(1))
            .max_staleness(max_staleness)
            .capacity(10_000)
            .build()?;
        Ok(Self {
            cache: TieredCache::new(config),
        })
    }

    /// Reads `key` with `load` under the database breaker ([`Db::run`]) and caches the value;
    /// when that meets a storage fault (or the open breaker), answers the cached value, marked
    /// stale, if one at most `max_staleness` old exists. Otherwise the database error.
    pub async fn read<F, Fut>(&self, db: &Db, key: &str, load: F) -> Result<Read<V>, sqlx::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<V, sqlx::Error>>,
    {
        match db.run(load).await {
            Ok(value) => {
                self.remember(key, value.clone()).await;
                Ok(Read::fresh(value))
            }
            Err(err) => self.fallback(key, err).await,
        }
    }

    /// Like [`read`](Self::read) for a value that may not exist: a fresh `None` forgets `key`
    /// (so no stale value of a removed row is answered later, and unknown keys take no room).
    pub async fn read_optional<F, Fut>(
        &self,
        db: &Db,
        key: &str,
        load: F,
    ) -> Result<Read<Option<V>>, sqlx::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<V>, sqlx::Error>>,
    {
        match db.run(load).await {
            Ok(Some(value)) => {
                self.remember(key, value.clone()).await;
                Ok(Read::fresh(Some(value)))
            }
            Ok(None) => {
                // L1 only: the removal cannot fail.
                let _ = self.cache.invalidate(key).await;
                Ok(Read::fresh(None))
            }
            Err(err) => Ok(self.fallback(key, err).await?.map(Some)),
        }
    }

    async fn remember(&self, key: &str, value: V) {
        // L1 only: an insert cannot fail.
        let _ = self.cache.insert(key, value).await;
    }

    async fn fallback(&self, key: &str, err: sqlx::Error) -> Result<Read<V>, sqlx::Error> {
        if StorageFault::of(&err).is_none() || self.cache.config().max_staleness().is_zero() {
            return Err(err);
        }
        let Some(cached) = self.cache.last_known_good(key).await else {
            return Err(err);
        };
        // Readiness and `storage_faults_total` still learn the database is away.
        note_storage_error(&err);
        tracing::warn!(
            cache = %self.cache.config().namespace(),
            key,
            age_ms = cached.age.as_millis() as u64,
            error = %err,
            "database read failed; answering the cached value, marked stale"
        );
        Ok(Read {
            value: cached.value,
            stale: Some(cached.age),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_settings_are_valid() {
        let built = BreakerConfig::builder()
            .failure_rate_threshold(0.5)
            .count_window(BREAKER_WINDOW)
            .minimum_calls(BREAKER_MIN_CALLS)
            .wait_in_open(BREAKER_WAIT)
            .permitted_calls_in_half_open(2)
            .build()
            .expect("valid");
        assert_eq!(built, breaker_config());
    }

    #[test]
    fn only_a_lost_connection_is_retried() {
        let lost = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_connection_lost(&lost));
        for not in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::RowNotFound,
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                CircuitOpen {
                    retry_after: BREAKER_WAIT,
                },
            )),
        ] {
            assert!(!is_connection_lost(&not), "{not}");
        }
    }

    fn connection_reset() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    }

    /// An idempotent write whose answer was lost after it committed (the COMMIT outcome is
    /// unknown to the caller) is made again, and applied once; a plain write never is.
    #[tokio::test]
    async fn an_idempotent_write_is_retried_after_a_lost_connection_and_applied_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(None, dir.path(), "retry").await.expect("db");
        sqlx::query("CREATE TABLE credits (id TEXT PRIMARY KEY)")
            .execute(&db.pool)
            .await
            .expect("table");
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let credited = db
            .run_idempotent(|| async {
                let attempt = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let inserted = sqlx::query(
                    "INSERT INTO credits (id) VALUES ('t-1') ON CONFLICT (id) DO NOTHING",
                )
                .execute(&db.pool)
                .await?
                .rows_affected();
                if attempt == 0 {
                    return Err(connection_reset()); // committed, but the answer was lost
                }
                Ok(inserted)
            })
            .await
            .expect("the retry answers");
        assert_eq!(attempts.into_inner(), 2, "retried once");
        assert_eq!(
            credited, 0,
            "the retry found the committed row and inserted nothing"
        );
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credits")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(rows, 1, "applied once");

        let plain = std::sync::atomic::AtomicU32::new(0);
        let err = db
            .run(|| async {
                plain.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err::<(), _>(connection_reset())
            })
            .await
            .expect_err("not retried");
        assert_eq!(
            plain.into_inner(),
            1,
            "a plain write is never retried: {err}"
        );
    }

    /// With the breaker open a call fails at once as [`CircuitOpen`], without running, and
    /// answers 503 problem+json with `Retry-After`.
    #[tokio::test]
    async fn an_open_breaker_fails_calls_without_running_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(None, dir.path(), "open").await.expect("db");
        for _ in 0..BREAKER_MIN_CALLS {
            let _ = db
                .run(|| async { Err::<(), _>(sqlx::Error::PoolTimedOut) })
                .await;
        }
        assert_eq!(db.breaker().state(), ftshop_resilience::State::Open);
        let ran = std::sync::atomic::AtomicBool::new(false);
        let err = db
            .run(|| async {
                ran.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .await
            .expect_err("rejected");
        assert!(!ran.into_inner(), "the call must not run");
        let open = CircuitOpen::of(&err).expect("a CircuitOpen");
        assert!(open.retry_after <= BREAKER_WAIT, "{open:?}");
        let response = crate::Problem::from(err).into_response();
        assert_eq!(response.status(), 503);
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .expect("Retry-After");
        assert!(retry_after == "1" || retry_after == "2", "{retry_after:?}");
    }
}
