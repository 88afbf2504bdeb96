//! Tiered cache: in-process L1 (quick_cache) + optional Redis L2, with single-flight loading and
//! last-known-good fallback.
//!
//! Why each piece:
//! - **L1 in process** answers most reads in well under a microsecond and keeps answering when
//!   Redis is gone; **L2 in Redis** lets replicas share what one of them loaded (Exchange
//!   replicas share rates) and survives restarts.
//! - **Single flight**: when a hot key expires, one caller loads it and the others wait for that
//!   result, so a dependency sees one request instead of a stampede. Every L1 write goes
//!   through the in-flight lock: a load writes only while it is still its key's current
//!   flight, and `insert` or an invalidation detaches it, so an older loaded value never
//!   overwrites a newer write (compare-and-set on the flight id).
//! - **Last-known-good**: an expired value is kept for `max_staleness` after its TTL; if the
//!   load fails, it is served (marked [`CacheSource::Stale`]) instead of an error. A bounded
//!   age, because a week-old exchange rate is worse than an honest error.
//! - Freshness is judged with [`tokio::time::Instant`] for L1 (paused-clock testable) and
//!   wall-clock write times for L2 (shared between processes). The L1 map is `quick_cache`,
//!   picked over moka because a hit costs ~17 ns there against ~115 ns
//!   (docs/benchmarks/resilience.md). It has no expiry of its own: it is bounded by
//!   `capacity`, and an entry read past `ttl + max_staleness` is dropped on the spot.
//!
//! One [`TieredCache`] is one namespace: its own L1, keys `"{prefix}{namespace}:{key}"` in
//! Redis, its own metric label `cache="{namespace}"`. Several caches can share one
//! [`RedisL2`].

mod l2;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use metrics::Counter;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use self::l2::{L2Error, RedisL2, RedisL2Builder};
use crate::error::ConfigError;

/// Validated cache settings; build with [`CacheConfig::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    namespace: String,
    ttl: Duration,
    max_staleness: Duration,
    capacity: u64,
}

impl CacheConfig {
    /// Settings for the namespace `namespace` (ASCII letters, digits, `.`, `_`, `-`): 60 s TTL,
    /// no stale serving, 10 000 entries.
    pub fn builder(namespace: impl Into<String>) -> CacheConfigBuilder {
        CacheConfigBuilder {
            config: CacheConfig {
                namespace: namespace.into(),
                ttl: Duration::from_secs(60),
                max_staleness: Duration::ZERO,
                capacity: 10_000,
            },
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// How long a value is fresh.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long after its TTL a value may still be served when loading fails.
    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }
}

/// Builder for [`CacheConfig`].
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheConfigBuilder {
    config: CacheConfig,
}

impl CacheConfigBuilder {
    /// How long a value is fresh.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// Serve values up to `max` past their TTL when loading fails (last-known-good).
    pub fn max_staleness(mut self, max: Duration) -> Self {
        self.config.max_staleness = max;
        self
    }

    /// Maximum number of L1 entries (approximate: above 63 entries the L1 is split into shards,
    /// each with its share of the capacity, so eviction may start a little below it and the
    /// total may round up by a few entries).
    pub fn capacity(mut self, entries: u64) -> Self {
        self.config.capacity = entries;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<CacheConfig, ConfigError> {
        let c = self.config;
        let valid_char = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-');
        if c.namespace.is_empty() || !c.namespace.chars().all(valid_char) {
            return Err(ConfigError::new(
                "namespace",
                format!(
                    "{:?} must be non-empty ASCII letters, digits, '.', '_' or '-'",
                    c.namespace
                ),
            ));
        }
        if c.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be positive"));
        }
        if c.ttl.checked_add(c.max_staleness).is_none() {
            return Err(ConfigError::new(
                "max_staleness",
                "ttl + max_staleness overflows",
            ));
        }
        if c.capacity == 0 {
            return Err(ConfigError::new("capacity", "must be at least 1"));
        }
        Ok(c)
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSource {
    /// Fresh, from the in-process tier.
    L1,
    /// Fresh, from Redis.
    L2,
    /// Just loaded by `get_or_store` (by this caller or one it waited for).
    Loaded,
    /// Past its TTL but within `max_staleness`, served because loading failed.
    Stale,
}

/// A value from the cache, with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached<V> {
    /// The value.
    pub value: V,
    /// Where it came from.
    pub source: CacheSource,
    /// Time since it was stored.
    pub age: Duration,
}

/// Why [`TieredCache::get_or_store`] has no value to return.
#[derive(Debug, thiserror::Error)]
pub enum CacheError<E> {
    /// The loader failed (this caller's, or the one it waited for) and no value within
    /// `max_staleness` was available.
    #[error("loading the value failed: {0}")]
    Load(Arc<E>),
    /// The load this caller waited for failed with another error type, or panicked.
    #[error("a concurrent load of the same key failed")]
    ConcurrentLoadFailed,
}

impl<E> Clone for CacheError<E> {
    fn clone(&self) -> Self {
        match self {
            CacheError::Load(e) => CacheError::Load(e.clone()),
            CacheError::ConcurrentLoadFailed => CacheError::ConcurrentLoadFailed,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    stored_at: Instant,
}

#[derive(Serialize)]
struct EnvelopeRef<'a, V> {
    v: &'a V,
    /// Wall-clock write time, ms since the Unix epoch.
    t: u64,
}

#[derive(Deserialize)]
struct Envelope<V> {
    v: V,
    t: u64,
}

type LoadError = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
struct FlightOk<V> {
    entry: Entry<V>,
    source: CacheSource,
}

#[derive(Clone)]
struct FlightErr<V> {
    /// `None` if the loader panicked.
    error: Option<LoadError>,
    /// A stale value found in L2 on the way, for the fallback.
    l2_stale: Option<Entry<V>>,
}

type Flight<V> = Shared<BoxFuture<'static, Result<FlightOk<V>, FlightErr<V>>>>;

/// A namespaced two-tier cache of `V`. Cheap to clone.
pub struct TieredCache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for TieredCache<V> {
    fn clone(&self) -> Self {
        TieredCache {
            inner: self.inner.clone(),
        }
    }
}

impl<V> std::fmt::Debug for TieredCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("config", &self.inner.config)
            .field("l2", &self.inner.l2)
            .finish_non_exhaustive()
    }
}

struct Inner<V> {
    config: CacheConfig,
    l1: quick_cache::sync::Cache<String, Entry<V>>,
    l2: Option<RedisL2>,
    inflight: Mutex<HashMap<String, (u64, Flight<V>)>>,
    next_flight: std::sync::atomic::AtomicU64,
    metrics: CacheMetrics,
}

/// `resilience_cache_requests_total{cache,result}` handles.
struct CacheMetrics {
    hit: Counter,
    miss: Counter,
    stale: Counter,
    l2_hit: Counter,
    l2_error: Counter,
}

impl CacheMetrics {
    fn new(cache: &str) -> Self {
        let counter = |result: &'static str| metrics::counter!("resilience_cache_requests_total", "cache" => cache.to_owned(), "result" => result);
        CacheMetrics {
            hit: counter("hit"),
            miss: counter("miss"),
            stale: counter("stale"),
            l2_hit: counter("l2_hit"),
            l2_error: counter("l2_error"),
        }
    }
}

impl<V> TieredCache<V>
where
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    /// An L1-only cache.
    pub fn new(config: CacheConfig) -> Self {
        Self::build(config, None)
    }

    /// A cache backed by `l2` as well.
    pub fn with_l2(config: CacheConfig, l2: RedisL2) -> Self {
        Self::build(config, Some(l2))
    }

    fn build(config: CacheConfig, l2: Option<RedisL2>) -> Self {
        let l1 =
            quick_cache::sync::Cache::new(usize::try_from(config.capacity).unwrap_or(usize::MAX));
        TieredCache {
            inner: Arc::new(Inner {
                metrics: CacheMetrics::new(&config.namespace),
                config,
                l1,
                l2,
                inflight: Mutex::new(HashMap::new()),
                next_flight: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// A fresh value from L1, then L2; `None` if neither has one (stale values are not
    /// returned here).
    pub async fn get(&self, key: &str) -> Option<Cached<V>> {
        let inner = &*self.inner;
        let now = Instant::now();
        if let Some(entry) = inner.l1_get(key, now)
            && inner.is_fresh(&entry, now)
        {
            inner.metrics.hit.increment(1);
            return Some(Cached::from_entry(entry, CacheSource::L1, now));
        }
        match inner.l2_lookup(key).await {
            L2Lookup::Fresh(entry) => {
                inner.metrics.l2_hit.increment(1);
                inner.l1.insert(key.to_owned(), entry.clone());
                Some(Cached::from_entry(entry, CacheSource::L2, Instant::now()))
            }
            _ => {
                inner.metrics.miss.increment(1);
                None
            }
        }
    }

    /// Any value for `key` still within `ttl + max_staleness` (L1, else L2), fresh or not,
    /// without loading: for a caller whose source of truth just failed outside
    /// [`get_or_store`](Self::get_or_store) (a database read guarded by a breaker, say).
    /// Marked [`CacheSource::Stale`] once past its TTL; counted as `hit`, `l2_hit`, `stale` or
    /// `miss` like the other reads. `None` when nothing servable is cached.
    pub async fn last_known_good(&self, key: &str) -> Option<Cached<V>> {
        let inner = &*self.inner;
        let now = Instant::now();
        let found = match inner.l1_get(key, now) {
            Some(entry) => Some((entry, CacheSource::L1)),
            None => match inner.l2_lookup(key).await {
                L2Lookup::Fresh(entry) | L2Lookup::Stale(entry) => Some((entry, CacheSource::L2)),
                L2Lookup::Absent => None,
            },
        };
        let Some((entry, tier)) = found else {
            inner.metrics.miss.increment(1);
            return None;
        };
        let now = Instant::now();
        if !inner.is_fresh(&entry, now) {
            inner.metrics.stale.increment(1);
            return Some(Cached::from_entry(entry, CacheSource::Stale, now));
        }
        match tier {
            CacheSource::L2 => inner.metrics.l2_hit.increment(1),
            _ => inner.metrics.hit.increment(1),
        }
        Some(Cached::from_entry(entry, tier, now))
    }

    /// The fresh value for `key`, loading it with `load` on a miss.
    ///
    /// Concurrent callers for the same key share one load (single flight). If the load fails,
    /// a value up to `max_staleness` past its TTL (L1, else L2) is returned as
    /// [`CacheSource::Stale`]; otherwise the load error. The loader runs as a shared future, so
    /// it must be `'static`; if the caller that started it is cancelled, a waiting caller drives
    /// it to completion.
    pub async fn get_or_store<F, Fut, E>(
        &self,
        key: &str,
        load: F,
    ) -> Result<Cached<V>, CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let now = Instant::now();
        let mut l1_stale = None;
        if let Some(entry) = inner.l1_get(key, now) {
            if inner.is_fresh(&entry, now) {
                inner.metrics.hit.increment(1);
                return Ok(Cached::from_entry(entry, CacheSource::L1, now));
            }
            l1_stale = Some(entry);
        }

        let flight = {
            let mut inflight = inner.lock_inflight();
            // Check L1 again under the lock: a flight that finished between our first look
            // and taking the lock stored its value in L1 before removing itself, so a fresh
            // entry now means the key was just loaded and must not be loaded twice.
            let just_loaded = || {
                let now = Instant::now();
                inner
                    .l1_get(key, now)
                    .filter(|entry| inner.is_fresh(entry, now))
            };
            match inflight.get(key) {
                Some((_, flight)) => flight.clone(),
                None => {
                    if let Some(entry) = just_loaded() {
                        drop(inflight);
                        inner.metrics.hit.increment(1);
                        return Ok(Cached::from_entry(entry, CacheSource::L1, Instant::now()));
                    }
                    let id = inner
                        .next_flight
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let flight = self.clone().load_flight(key.to_owned(), id, load());
                    inflight.insert(key.to_owned(), (id, flight.clone()));
                    flight
                }
            }
        };

        match flight.await {
            Ok(FlightOk { entry, source }) => {
                match source {
                    CacheSource::L2 => inner.metrics.l2_hit.increment(1),
                    _ => inner.metrics.miss.increment(1),
                }
                Ok(Cached::from_entry(entry, source, Instant::now()))
            }
            Err(FlightErr { error, l2_stale }) => {
                let now = Instant::now();
                let stale = [l1_stale, inner.l1_get(key, now), l2_stale]
                    .into_iter()
                    .flatten()
                    .filter(|e| inner.is_servable(e, now))
                    .max_by_key(|e| e.stored_at);
                if let Some(entry) = stale {
                    inner.metrics.stale.increment(1);
                    tracing::debug!(cache = %inner.config.namespace, key, "load failed, serving stale value");
                    return Ok(Cached::from_entry(entry, CacheSource::Stale, now));
                }
                inner.metrics.miss.increment(1);
                match error.and_then(|e| e.downcast::<E>().ok()) {
                    Some(e) => Err(CacheError::Load(e)),
                    None => Err(CacheError::ConcurrentLoadFailed),
                }
            }
        }
    }

    /// Stores `value` in L1 and L2. An L2 failure is returned (and counted) but L1 is updated
    /// regardless.
    ///
    /// A load of `key` already in flight is detached: its callers still get what it loads, but
    /// it no longer writes to the cache, so it cannot overwrite this newer value.
    pub async fn insert(&self, key: &str, value: V) -> Result<(), L2Error> {
        let entry = Entry {
            value,
            stored_at: Instant::now(),
        };
        {
            let mut inflight = self.inner.lock_inflight();
            inflight.remove(key);
            self.inner.l1.insert(key.to_owned(), entry.clone());
        }
        self.inner.l2_store(key, &entry.value).await
    }

    /// Removes `key` from both tiers. A load of `key` already in flight is detached (it no
    /// longer writes to the cache), so the value it loaded before the invalidation does not
    /// come back.
    pub async fn invalidate(&self, key: &str) -> Result<(), L2Error> {
        let inner = &*self.inner;
        {
            let mut inflight = inner.lock_inflight();
            inflight.remove(key);
            inner.l1.remove(key);
        }
        let Some(l2) = &inner.l2 else { return Ok(()) };
        let result = l2.delete(&l2.full_key(&inner.config.namespace, key)).await;
        inner.count_l2(&result);
        result
    }

    /// Removes every key matching `pattern` from both tiers: `*` matches any run of characters,
    /// `?` one character, everything else is literal. Returns how many L1 entries were removed.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<usize, L2Error> {
        let inner = &*self.inner;
        let removed = std::cell::Cell::new(0_usize);
        {
            // In-flight loads of matching keys are detached, as in `invalidate`.
            let mut inflight = inner.lock_inflight();
            inflight.retain(|key, _| !glob_match(pattern, key));
            inner.l1.retain(|key, _| {
                let keep = !glob_match(pattern, key);
                if !keep {
                    removed.set(removed.get() + 1);
                }
                keep
            });
        }
        inner.l2_delete_matching(pattern).await?;
        Ok(removed.get())
    }

    /// Removes every key of this namespace from both tiers.
    pub async fn clear(&self) -> Result<(), L2Error> {
        {
            let mut inflight = self.inner.lock_inflight();
            inflight.clear();
            self.inner.l1.clear();
        }
        self.inner.l2_delete_matching("*").await
    }

    fn load_flight<Fut, E>(self, key: String, id: u64, load: Fut) -> Flight<V>
    where
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        async move {
            let inner = &*self.inner;
            let outcome = AssertUnwindSafe(inner.fill(&key, load))
                .catch_unwind()
                .await;
            // Write L1 and remove the flight in one step under the in-flight lock, so nobody
            // sees neither; and only while this flight is still the key's current one: an
            // `insert` or an invalidation since it started detached it, and its value must
            // not overwrite theirs (compare-and-set on the flight id).
            let current = {
                let mut inflight = inner.lock_inflight();
                let current = inflight
                    .get(&key)
                    .is_some_and(|(current, _)| *current == id);
                if current {
                    inflight.remove(&key);
                    if let Ok(Ok(ok)) = &outcome {
                        inner.l1.insert(key.clone(), ok.entry.clone());
                    }
                }
                current
            };
            if let Ok(Ok(ok)) = &outcome
                && current
                && ok.source == CacheSource::Loaded
            {
                // Failure is counted and logged inside; L1 already serves the value.
                let _ = inner.l2_store(&key, &ok.entry.value).await;
            }
            match outcome {
                Ok(result) => result,
                Err(_panic) => {
                    tracing::error!(cache = %inner.config.namespace, key, "cache loader panicked");
                    Err(FlightErr {
                        error: None,
                        l2_stale: None,
                    })
                }
            }
        }
        .boxed()
        .shared()
    }
}

enum L2Lookup<V> {
    Fresh(Entry<V>),
    Stale(Entry<V>),
    Absent,
}

impl<V> Inner<V>
where
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    /// The in-flight loads by key. Also taken by every write to L1 (`insert`, invalidations and
    /// a finishing load), so a load can check that it is still current and write in one step.
    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Flight<V>)>> {
        // The map stays consistent through a panic elsewhere: keep going.
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The L1 entry for `key` if it is still servable (fresh or within `max_staleness`). One
    /// past that is removed here: the L1 map has no expiry of its own.
    fn l1_get(&self, key: &str, now: Instant) -> Option<Entry<V>> {
        let entry = self.l1.get(key)?;
        if self.is_servable(&entry, now) {
            return Some(entry);
        }
        self.l1_remove_unless_replaced(key, &entry);
        None
    }

    /// Removes `key` from L1 only if it still holds `seen`: a value stored by someone else
    /// between our read and this call must survive.
    fn l1_remove_unless_replaced(&self, key: &str, seen: &Entry<V>) {
        self.l1
            .remove_if(key, |current| current.stored_at == seen.stored_at);
    }

    fn is_fresh(&self, entry: &Entry<V>, now: Instant) -> bool {
        now.saturating_duration_since(entry.stored_at) < self.config.ttl
    }

    fn is_servable(&self, entry: &Entry<V>, now: Instant) -> bool {
        now.saturating_duration_since(entry.stored_at)
            <= self.config.ttl.saturating_add(self.config.max_staleness)
    }

    /// The leader's work: L2, then the loader; stores what it finds.
    async fn fill<Fut, E>(&self, key: &str, load: Fut) -> Result<FlightOk<V>, FlightErr<V>>
    where
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        // The caller (`load_flight`) writes the result to L1 and L2 if it is still current.
        let l2_stale = match self.l2_lookup(key).await {
            L2Lookup::Fresh(entry) => {
                return Ok(FlightOk {
                    entry,
                    source: CacheSource::L2,
                });
            }
            L2Lookup::Stale(entry) => Some(entry),
            L2Lookup::Absent => None,
        };
        match load.await {
            Ok(value) => {
                let entry = Entry {
                    value,
                    stored_at: Instant::now(),
                };
                Ok(FlightOk {
                    entry,
                    source: CacheSource::Loaded,
                })
            }
            Err(error) => Err(FlightErr {
                error: Some(Arc::new(error)),
                l2_stale,
            }),
        }
    }

    async fn l2_lookup(&self, key: &str) -> L2Lookup<V> {
        let Some(l2) = &self.l2 else {
            return L2Lookup::Absent;
        };
        let result = l2.get(&l2.full_key(&self.config.namespace, key)).await;
        self.count_l2(&result);
        let bytes = match result {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(_) => return L2Lookup::Absent,
        };
        let envelope: Envelope<V> = match serde_json::from_slice(&bytes) {
            Ok(envelope) => envelope,
            Err(err) => {
                self.metrics.l2_error.increment(1);
                tracing::warn!(cache = %self.config.namespace, key, %err, "undecodable L2 value ignored");
                return L2Lookup::Absent;
            }
        };
        let age = Duration::from_millis(unix_ms().saturating_sub(envelope.t));
        let now = Instant::now();
        let stored_at = now.checked_sub(age).unwrap_or(now);
        let entry = Entry {
            value: envelope.v,
            stored_at,
        };
        if age < self.config.ttl {
            L2Lookup::Fresh(entry)
        } else if age <= self.config.ttl.saturating_add(self.config.max_staleness) {
            L2Lookup::Stale(entry)
        } else {
            L2Lookup::Absent
        }
    }

    /// Deletes this namespace's L2 keys matching `pattern` (our glob syntax).
    async fn l2_delete_matching(&self, pattern: &str) -> Result<(), L2Error> {
        let Some(l2) = &self.l2 else { return Ok(()) };
        let glob = format!(
            "{}{}",
            escape_redis_glob(&l2.full_key(&self.config.namespace, "")),
            redis_glob(pattern)
        );
        let result = l2.delete_matching(&glob).await;
        self.count_l2(&result);
        result.map(|_deleted| ())
    }

    async fn l2_store(&self, key: &str, value: &V) -> Result<(), L2Error> {
        let Some(l2) = &self.l2 else { return Ok(()) };
        let bytes = serde_json::to_vec(&EnvelopeRef {
            v: value,
            t: unix_ms(),
        })
        .map_err(|e| L2Error::Codec(e.to_string()));
        let result = match bytes {
            Ok(bytes) => {
                let ttl = self.config.ttl.saturating_add(self.config.max_staleness);
                l2.set(&l2.full_key(&self.config.namespace, key), bytes, ttl)
                    .await
            }
            Err(err) => Err(err),
        };
        self.count_l2(&result);
        result
    }

    fn count_l2<T>(&self, result: &Result<T, L2Error>) {
        if let Err(err) = result {
            self.metrics.l2_error.increment(1);
            tracing::debug!(cache = %self.config.namespace, %err, "L2 operation failed; serving from L1");
        }
    }
}

impl<V> Cached<V> {
    fn from_entry(entry: Entry<V>, source: CacheSource, now: Instant) -> Self {
        Cached {
            age: now.saturating_duration_since(entry.stored_at),
            value: entry.value,
            source,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Glob match with `*` (any run) and `?` (one char); everything else literal. Walks both
/// strings by byte offset on char boundaries, without allocating: `invalidate_pattern` runs it
/// on every L1 key while holding that shard's lock.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let next = |s: &str, at: usize| s[at..].chars().next();
    let (mut pi, mut ti) = (0, 0);
    // After a `*`: where the pattern resumes, and the text offset it is currently matched from.
    let mut star: Option<(usize, usize)> = None;
    while let Some(t) = next(text, ti) {
        match next(pattern, pi) {
            Some('*') => {
                pi += 1;
                star = Some((pi, ti));
            }
            Some(p) if p == '?' || p == t => {
                pi += p.len_utf8();
                ti += t.len_utf8();
            }
            _ => match star {
                Some((resume, from)) => {
                    // Let the `*` swallow one more char and try again.
                    let from = from + next(text, from).map_or(1, char::len_utf8);
                    star = Some((resume, from));
                    pi = resume;
                    ti = from;
                }
                None => return false,
            },
        }
    }
    pattern[pi..].chars().all(|c| c == '*')
}

/// Escapes every Redis glob metacharacter.
fn escape_redis_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Our pattern language (`*`, `?`, literals) in Redis glob syntax.
fn redis_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if matches!(c, '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_redis_for_star_and_question_mark() {
        assert!(glob_match("*", ""));
        assert!(glob_match("user:*", "user:42"));
        assert!(glob_match("user:?", "user:4"));
        assert!(!glob_match("user:?", "user:42"));
        assert!(glob_match("*:42", "user:42"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("rate[1]", "rate[1]"));
        assert!(!glob_match("rate", "rates"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("**", "abc"));
        assert!(glob_match("*c", "abcbc"));
        assert!(!glob_match("*c", "abcb"));
        assert!(glob_match("a*?", "ab"));
        assert!(!glob_match("a*?", "a"));
        // `?` is one character, not one byte.
        assert!(glob_match("pre?o", "preço"));
        assert!(glob_match("pre?o", "pre\u{1F600}o"));
        assert!(glob_match("*ç*", "preço"));
        assert!(!glob_match("pre?o", "preçço"));
    }

    /// The obvious recursive matcher, as the model `glob_match` must agree with.
    fn reference_glob(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => {
                reference_glob(&p[1..], t) || (!t.is_empty() && reference_glob(p, &t[1..]))
            }
            Some('?') => !t.is_empty() && reference_glob(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && reference_glob(&p[1..], &t[1..]),
        }
    }

    proptest::proptest! {
        #[test]
        fn glob_agrees_with_the_reference_matcher(
            pattern in "[ab*?ç]{0,8}",
            text in "[abç]{0,10}",
        ) {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            proptest::prop_assert_eq!(glob_match(&pattern, &text), reference_glob(&p, &t));
        }
    }

    #[test]
    fn redis_globs_escape_metacharacters() {
        assert_eq!(escape_redis_glob("a*b?[c]"), "a\\*b\\?\\[c\\]");
        assert_eq!(redis_glob("k[1]*"), "k\\[1\\]*");
    }

    fn l1_only(ttl_s: u64, stale_s: u64, capacity: u64) -> TieredCache<u32> {
        TieredCache::new(
            CacheConfig::builder("unit")
                .ttl(Duration::from_secs(ttl_s))
                .max_staleness(Duration::from_secs(stale_s))
                .capacity(capacity)
                .build()
                .expect("valid config"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn l1_drops_an_entry_read_past_ttl_plus_staleness() {
        let cache = l1_only(10, 5, 100);
        cache.insert("k", 1).await.expect("no L2");
        tokio::time::advance(Duration::from_secs(14)).await;
        assert_eq!(
            cache.get("k").await,
            None,
            "stale values are not returned by get"
        );
        assert_eq!(
            cache.inner.l1.len(),
            1,
            "still servable as last-known-good: kept"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get("k").await, None);
        assert_eq!(cache.inner.l1.len(), 0, "past ttl + max_staleness: removed");
    }

    #[tokio::test(start_paused = true)]
    async fn l1_keeps_a_newer_value_stored_after_an_expired_read() {
        let cache = l1_only(10, 0, 100);
        cache.insert("k", 1).await.expect("no L2");
        tokio::time::advance(Duration::from_secs(11)).await;
        let expired = cache.inner.l1.get("k").expect("still in the map");
        cache.insert("k", 2).await.expect("no L2");
        // `l1_get` read `expired`, then another caller stored 2: the removal must spare it.
        cache.inner.l1_remove_unless_replaced("k", &expired);
        assert_eq!(cache.get("k").await.map(|c| c.value), Some(2));
        // With nothing newer, the same call removes the entry.
        let current = cache.inner.l1.get("k").expect("2 is stored");
        cache.inner.l1_remove_unless_replaced("k", &current);
        assert_eq!(cache.inner.l1.len(), 0);
    }

    #[tokio::test]
    async fn l1_is_bounded_by_capacity() {
        let cache = l1_only(3600, 0, 64);
        for i in 0..1_000 {
            cache.insert(&format!("k{i}"), i).await.expect("no L2");
        }
        let held = cache.inner.l1.len();
        assert!(held <= 64, "held {held} entries with capacity 64");
        assert!(held >= 32, "held only {held} entries with capacity 64");
    }

    #[test]
    fn config_rejects_bad_namespaces_and_ttl() {
        assert!(CacheConfig::builder("rates").build().is_ok());
        assert!(CacheConfig::builder("").build().is_err());
        assert!(CacheConfig::builder("a b").build().is_err());
        assert!(CacheConfig::builder("a*").build().is_err());
        assert!(
            CacheConfig::builder("r")
                .ttl(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(CacheConfig::builder("r").capacity(0).build().is_err());
    }
}
