//! The shared tier (`REDIS_URL`): Exchange replicas share the current rate and the
//! last-known-good rate through Redis, with the resilience crate's [`TieredCache`] (in-process L1 +
//! Redis L2 behind a breaker, `get_or_store` with single flight, last-known-good).
//!
//! One key, `{prefix}exchange:usd-brl`, holds `{"v": {"rate", "as_of"}, "t": written_ms}` and
//! lives `ttl + max_stale` in Redis. A refresh of [`RatesCache`](crate::RatesCache) (already
//! single-flight within the process) asks `get_or_store`:
//!
//! - a rate some replica stored less than `ttl` ago is taken as is ([`Refresh::Shared`]), so
//!   replicas serve the same rate and a restarted replica serves it at once;
//! - otherwise this replica fetches from its source and stores the result for everyone
//!   ([`Refresh::Fetched`]); the simulated market first continues from the newest shared rate,
//!   so the replicas walk one market and a restart does not jump back to the walk's start;
//! - if that fetch fails, the newest rate within `ttl + max_stale` (L1, else Redis) comes back as
//!   the fallback of a [`Refresh::Failed`]: a freshly restarted replica whose source is down
//!   still has the other replicas' last-known-good rate.
//!
//! Two replicas whose rate expires at the same moment may both fetch; the later write wins in
//! Redis, and each serves its own rate until its TTL ends (no cross-replica lock: a cache, not a
//! consensus).
//!
//! Redis is an optimisation, never a dependency: every operation is bounded by `op_timeout` and
//! guarded by the crate's `redis-l2` breaker, and the connection is lazy and reconnects by
//! itself, so with Redis down a refresh pays at most one short timeout (nothing once the breaker
//! is open) and fetches from the source as without Redis; the breaker's half-open probe notices
//! when Redis is back. Readiness reports Redis but never fails on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ftshop_platform::money::{self, Decimal, RateBand};
use ftshop_resilience::cache::RedisL2;
use ftshop_resilience::{CacheConfig, CacheError, CacheSource, Cached, TieredCache};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cache::{Refresh, Snapshot};
use crate::source::RateSource;

/// The cache namespace: the middle of the Redis key and the `cache` label of
/// `resilience_cache_requests_total` for the shared tier.
pub const NAMESPACE: &str = "exchange";
/// The one key of the namespace.
pub const KEY: &str = "usd-brl";

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    pub url: String,
    /// Prepended to [`NAMESPACE`] in every key (`ftshop:` gives `ftshop:exchange:usd-brl`).
    pub key_prefix: String,
    /// Upper bound of one Redis operation (a readiness ping included).
    pub op_timeout: Duration,
}

/// The rate as stored in Redis. `rate` is a JSON number written from the exact decimal
/// ([`money::json`]); a stored rate outside [`RateBand::DEFAULT`] does not decode, so the tiered
/// cache ignores it like any undecodable value and this replica asks its own source.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SharedRate {
    #[serde(
        serialize_with = "money::json::serialize",
        deserialize_with = "plausible_rate"
    )]
    rate: Decimal,
    /// When a replica fetched it from its source.
    #[serde(with = "time::serde::rfc3339")]
    as_of: OffsetDateTime,
}

/// The tiered cache of the rate, shared with the other replicas through Redis.
pub struct SharedRates {
    cache: TieredCache<SharedRate>,
    l2: RedisL2,
    /// The simulated walk has been moved to the shared last-known-good rate (first refresh).
    walk_primed: AtomicBool,
}

impl SharedRates {
    /// Builds the client without connecting (so it succeeds while Redis is down); fails only on
    /// an invalid URL or setting. Must run inside a tokio runtime.
    pub fn new(
        settings: &SharedSettings,
        ttl: Duration,
        max_stale: Duration,
    ) -> anyhow::Result<Self> {
        let l2 = RedisL2::builder(settings.url.as_str())
            .key_prefix(settings.key_prefix.as_str())
            .op_timeout(settings.op_timeout)
            .build()
            .map_err(|err| anyhow::anyhow!("REDIS_URL / --redis-url: {err}"))?;
        // The tiered cache needs a positive TTL; a zero TTL (always fetch) keeps a 1 ms one.
        let config = CacheConfig::builder(NAMESPACE)
            .ttl(ttl.max(Duration::from_millis(1)))
            .max_staleness(max_stale)
            .capacity(16)
            .build()?;
        Ok(Self {
            cache: TieredCache::with_l2(config, l2.clone()),
            l2,
            walk_primed: AtomicBool::new(false),
        })
    }

    /// One refresh: a fresh shared rate, else a fetch from `source` stored for everyone, else
    /// the failure with the shared last-known-good rate.
    pub async fn refresh(&self, source: Arc<RateSource>) -> Refresh {
        if source.is_simulated()
            && !self.walk_primed.swap(true, Ordering::SeqCst)
            && let Some(fresh) = self.prime_walk(&source).await
        {
            return fresh;
        }
        // The loader runs as a shared future, so its error comes back through this slot when
        // the cache answers with a stale value instead.
        let error = Arc::new(Mutex::new(None::<String>));
        let load = {
            let (source, error) = (source.clone(), error.clone());
            move || async move {
                let fetched = source.fetch().await;
                if let Err(err) = &fetched {
                    *error.lock().unwrap_or_else(PoisonError::into_inner) = Some(err.to_string());
                }
                fetched.map(|rate| SharedRate {
                    rate,
                    as_of: OffsetDateTime::now_utc(),
                })
            }
        };
        match self.cache.get_or_store(KEY, load).await {
            Ok(cached) => {
                let from = cached.source;
                let snapshot = snapshot(cached);
                if from != CacheSource::Loaded {
                    source.observe(snapshot.rate);
                }
                match from {
                    CacheSource::Loaded => Refresh::Fetched(snapshot),
                    CacheSource::L1 | CacheSource::L2 => Refresh::Shared(snapshot),
                    CacheSource::Stale => Refresh::Failed {
                        error: error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .take()
                            .unwrap_or_else(|| "the rate source failed".to_owned()),
                        fallback: Some(snapshot),
                    },
                }
            }
            Err(CacheError::Load(err)) => Refresh::Failed {
                error: err.to_string(),
                fallback: None,
            },
            Err(CacheError::ConcurrentLoadFailed) => Refresh::Failed {
                error: "a concurrent fetch of the rate failed".to_owned(),
                fallback: None,
            },
        }
    }

    /// Moves the simulated walk to the newest shared rate, fresh or stale, before this replica's
    /// first step, and returns the fresh one as this refresh's answer. A lookup whose loader
    /// refuses: it reads L1 and Redis and fetches nothing.
    async fn prime_walk(&self, source: &RateSource) -> Option<Refresh> {
        let peek = self
            .cache
            .get_or_store(KEY, || async { Err::<SharedRate, _>(NotFetching) })
            .await
            .ok()?;
        let fresh = matches!(peek.source, CacheSource::L1 | CacheSource::L2);
        let snapshot = snapshot(peek);
        source.observe(snapshot.rate);
        tracing::info!(
            rate = %snapshot.rate,
            age_ms = snapshot.age.as_millis() as u64,
            fresh,
            "simulated rate continues from the shared rate"
        );
        fresh.then_some(Refresh::Shared(snapshot))
    }

    /// Opens the connection now, so the first request does not pay for it, and logs whether
    /// Redis answers.
    pub async fn warm_up(&self) {
        if self.l2.ping().await {
            tracing::info!("redis reachable: rates are shared with the other replicas");
        } else {
            tracing::warn!(
                "redis unreachable: serving from the in-process cache and the rate source \
                 until it answers"
            );
        }
    }

    /// The readiness detail. Never a failure: without Redis this replica serves from its
    /// in-process cache and its own source, as it does without `REDIS_URL`.
    pub async fn status(&self) -> String {
        let reachable = self.l2.ping().await;
        let breaker = self.l2.breaker().state().as_str();
        if reachable {
            format!("reachable, breaker {breaker}: rates shared with the other replicas")
        } else {
            format!(
                "degraded: unreachable, breaker {breaker}: serving from the in-process cache \
                 and this replica's source"
            )
        }
    }
}

/// A shared rate as read from Redis: a JSON number inside [`RateBand::DEFAULT`].
fn plausible_rate<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let rate = money::json::deserialize(deserializer)?;
    RateBand::DEFAULT
        .check(rate)
        .map_err(serde::de::Error::custom)
}

/// The peek's loader error: [`SharedRates::prime_walk`] only reads.
#[derive(Debug)]
struct NotFetching;

fn snapshot(cached: Cached<SharedRate>) -> Snapshot {
    Snapshot {
        rate: cached.value.rate,
        as_of: cached.value.as_of,
        age: cached.age,
    }
}
