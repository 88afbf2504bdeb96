//! The optional Redis tier.
//!
//! Redis is an optimisation here, never a dependency: every operation is bounded by a short
//! timeout (50 ms by default) and guarded by a circuit breaker, so when Redis is down a request
//! pays at most one short timeout until the breaker opens, then nothing; the breaker's
//! half-open probes notice when Redis is back. The connection is created lazily
//! (`ConnectionManager::new_lazy_with_config`), so a cache can be built while Redis is down and
//! `ConnectionManager` reconnects by itself afterwards.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use crate::error::ConfigError;

/// Why an L2 operation failed (the cache carries on with L1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L2Error {
    /// The operation did not finish within the L2 timeout.
    #[error("redis operation timed out")]
    Timeout,
    /// The L2 circuit breaker is open: Redis failed recently.
    #[error("redis is unavailable (breaker open)")]
    Unavailable,
    /// Redis answered with an error or the connection failed.
    #[error("redis error: {0}")]
    Redis(String),
    /// A stored value could not be decoded or encoded.
    #[error("codec error: {0}")]
    Codec(String),
}

/// Settings for [`RedisL2`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisL2Builder {
    url: String,
    key_prefix: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    breaker_name: String,
    breaker: Option<BreakerConfig>,
}

impl RedisL2Builder {
    /// Prepended to every key (e.g. `"ftshop:"`), before the cache namespace.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Upper bound for one Redis operation (default 50 ms).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Upper bound for establishing a connection (default 250 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Name of the guarding breaker in metrics (default `redis-l2`).
    pub fn breaker_name(mut self, name: impl Into<String>) -> Self {
        self.breaker_name = name.into();
        self
    }

    /// Settings of the guarding breaker (default: 50 % failures over the last 20 operations,
    /// at least 5, open for 2 s, 1 probe).
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// Creates the client. Does not connect (the first operation does), so it succeeds while
    /// Redis is down; fails only on an invalid URL or setting. Must run inside a tokio runtime.
    pub fn build(self) -> Result<RedisL2, ConfigError> {
        if self.op_timeout.is_zero() {
            return Err(ConfigError::new("op_timeout", "must be positive"));
        }
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| ConfigError::new("redis_url", e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| ConfigError::new("redis_url", e.to_string()))?;
        let breaker_config = match self.breaker {
            Some(config) => config,
            None => BreakerConfig::builder()
                .count_window(20)
                .minimum_calls(5)
                .failure_rate_threshold(0.5)
                .wait_in_open(Duration::from_secs(2))
                .permitted_calls_in_half_open(1)
                .build()?,
        };
        Ok(RedisL2 {
            inner: Arc::new(L2Inner {
                conn,
                key_prefix: self.key_prefix,
                op_timeout: self.op_timeout,
                breaker: CircuitBreaker::new(self.breaker_name, breaker_config),
            }),
        })
    }
}

/// A Redis connection shared by any number of [`TieredCache`](super::TieredCache)s (one per
/// namespace). Cheap to clone.
#[derive(Clone)]
pub struct RedisL2 {
    inner: Arc<L2Inner>,
}

struct L2Inner {
    conn: ConnectionManager,
    key_prefix: String,
    op_timeout: Duration,
    breaker: CircuitBreaker,
}

impl std::fmt::Debug for RedisL2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisL2")
            .field("key_prefix", &self.inner.key_prefix)
            .field("op_timeout", &self.inner.op_timeout)
            .field("breaker", &self.inner.breaker)
            .finish()
    }
}

impl RedisL2 {
    /// Settings for a client of `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisL2Builder {
        RedisL2Builder {
            url: url.into(),
            key_prefix: String::new(),
            op_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(250),
            breaker_name: "redis-l2".to_owned(),
            breaker: None,
        }
    }

    /// A client of `url` with default settings (see [`builder`](Self::builder)).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        Self::builder(url).build()
    }

    /// The breaker guarding Redis (to expose its status).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// Sends `PING`; true if Redis answered in time (for readiness checks). Bypasses the
    /// breaker so it can observe recovery.
    pub async fn ping(&self) -> bool {
        let mut conn = self.inner.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(self.inner.op_timeout, ping).await,
            Ok(Ok(_))
        )
    }

    pub(crate) fn full_key(&self, namespace: &str, key: &str) -> String {
        let mut full =
            String::with_capacity(self.inner.key_prefix.len() + namespace.len() + key.len() + 1);
        full.push_str(&self.inner.key_prefix);
        full.push_str(namespace);
        full.push(':');
        full.push_str(key);
        full
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, L2Error> {
        let mut conn = self.inner.conn.clone();
        self.guarded(self.inner.op_timeout, async move {
            conn.get::<_, Option<Vec<u8>>>(key).await
        })
        .await
    }

    pub(crate) async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), L2Error> {
        let mut conn = self.inner.conn.clone();
        let millis = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        self.guarded(self.inner.op_timeout, async move {
            conn.pset_ex::<_, _, ()>(key, value, millis).await
        })
        .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), L2Error> {
        let mut conn = self.inner.conn.clone();
        self.guarded(self.inner.op_timeout, async move {
            conn.unlink::<_, ()>(key).await
        })
        .await
    }

    /// Deletes the keys matching `glob` (Redis `SCAN MATCH` syntax, already escaped), returning
    /// how many were deleted. Bounded by 20 operation timeouts in total.
    pub(crate) async fn delete_matching(&self, glob: &str) -> Result<u64, L2Error> {
        let mut conn = self.inner.conn.clone();
        let budget = self.inner.op_timeout * 20;
        self.guarded(budget, async move {
            let mut cursor: u64 = 0;
            let mut deleted = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(glob)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    deleted += conn.unlink::<_, u64>(&keys).await?;
                }
                if next == 0 {
                    return Ok(deleted);
                }
                cursor = next;
            }
        })
        .await
    }

    async fn guarded<T, Fut>(&self, limit: Duration, op: Fut) -> Result<T, L2Error>
    where
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let permit = self
            .inner
            .breaker
            .try_acquire()
            .map_err(|_| L2Error::Unavailable)?;
        match tokio::time::timeout(limit, op).await {
            Ok(Ok(value)) => {
                permit.record(Outcome::Success);
                Ok(value)
            }
            Ok(Err(err)) => {
                permit.record(Outcome::Failure);
                Err(L2Error::Redis(err.to_string()))
            }
            Err(_) => {
                permit.record(Outcome::Failure);
                Err(L2Error::Timeout)
            }
        }
    }
}
