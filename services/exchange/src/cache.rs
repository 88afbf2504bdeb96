//! The rate cache: TTL, single-flight refresh and a bounded last-known-good fallback.
//!
//! This is the in-process tier and the whole serving policy; with `REDIS_URL` a refresh goes
//! through the shared tier ([`crate::shared`]) instead of straight to the source, and may come
//! back with another replica's rate ([`Refresh::Shared`]) or a shared last-known-good rate
//! ([`Refresh::Failed`] with a fallback):
//!
//! - a rate younger than `ttl` is served from memory (`cache`);
//! - an older one is refreshed by one caller while concurrent callers wait for that refresh and
//!   reuse its outcome, so a burst of misses asks the source once (`live`; `cache` when the
//!   refresh found a rate another replica fetched less than `ttl` ago);
//! - when the refresh fails, the last good rate (this replica's or the shared one, whichever is
//!   newer) is served while it is younger than `max_stale` (`stale`), and nothing otherwise
//!   ([`Unavailable`]);
//! - after a failed refresh the source is left alone for `ttl` before it is asked again, so a
//!   failing source is not hammered and callers get their stale answer at once instead of
//!   waiting out a timeout each.
//!
//! Ages are ages of the rate itself (since it was fetched from a source, by whichever replica),
//! so a shared rate expires here when it expires everywhere.
//!
//! Time comes from `tokio::time::Instant`, so the tests run on a paused clock.

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ftshop_platform::money::{Decimal, decimal_to_f64};
use time::OffsetDateTime;
use tokio::time::Instant;

/// The `cache` label of `resilience_cache_requests_total`; the latest good rate is the
/// `exchange_rate` gauge.
pub const CACHE_NAME: &str = "exchange_rate";

pub struct RatesCache {
    ttl: Duration,
    max_stale: Duration,
    state: Mutex<State>,
    /// Held while the source is asked: the single flight.
    refresh: tokio::sync::Mutex<()>,
}

/// How a quote was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Fetched from the source for this request.
    Live,
    /// Younger than the TTL, served from memory.
    Cache,
    /// The source failed; the last good rate, younger than `max_stale`.
    Stale,
}

/// A rate and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quote {
    pub rate: Decimal,
    /// Wall-clock time the rate was fetched.
    pub as_of: OffsetDateTime,
    pub origin: Origin,
    /// Time since the rate was fetched.
    pub age: Duration,
}

/// What one refresh produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Refresh {
    /// Fetched from the source just now (`age` about zero).
    Fetched(Snapshot),
    /// A rate fetched earlier, by this or another replica, found fresh in the shared tier.
    Shared(Snapshot),
    /// The fetch failed; `fallback` is a last-known-good rate from the shared tier, if any.
    Failed {
        error: String,
        fallback: Option<Snapshot>,
    },
}

/// A rate fetched elsewhere or earlier, and how old it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub rate: Decimal,
    /// Wall-clock time the rate was fetched from a source.
    pub as_of: OffsetDateTime,
    pub age: Duration,
}

/// A plain fetch from the source (no shared tier).
impl<E: std::fmt::Display> From<Result<Decimal, E>> for Refresh {
    fn from(fetched: Result<Decimal, E>) -> Self {
        match fetched {
            Ok(rate) => Refresh::Fetched(Snapshot {
                rate,
                as_of: OffsetDateTime::now_utc(),
                age: Duration::ZERO,
            }),
            Err(err) => Refresh::Failed {
                error: err.to_string(),
                fallback: None,
            },
        }
    }
}

/// No rate young enough to serve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no rate younger than {max_stale:?}: {reason}")]
pub struct Unavailable {
    pub max_stale: Duration,
    /// The last fetch error (operators' eyes only: it may name hosts).
    pub reason: String,
}

#[derive(Default)]
struct State {
    last_good: Option<Entry>,
    /// When the last successful refresh ended (it stored `last_good`); cleared when a failed
    /// refresh replaces `last_good` with an older shared rate.
    refreshed_at: Option<Instant>,
    /// The last refresh's error; cleared by a successful one.
    last_failure: Option<Failure>,
}

#[derive(Clone, Copy)]
struct Entry {
    rate: Decimal,
    /// When the rate was fetched from a source (in the past for a shared rate).
    fetched_at: Instant,
    as_of: OffsetDateTime,
    /// Taken from the shared tier rather than fetched by this replica.
    shared: bool,
}

impl Entry {
    fn from_snapshot(snapshot: Snapshot, shared: bool, now: Instant) -> Self {
        Entry {
            rate: snapshot.rate,
            fetched_at: now.checked_sub(snapshot.age).unwrap_or(now),
            as_of: snapshot.as_of,
            shared,
        }
    }
}

struct Failure {
    at: Instant,
    error: String,
}

impl RatesCache {
    pub fn new(ttl: Duration, max_stale: Duration) -> Self {
        Self {
            ttl,
            max_stale,
            state: Mutex::new(State::default()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// A quote for a client request, refreshing through `fetch` when needed, counted in
    /// `resilience_cache_requests_total{cache="exchange_rate",result=hit|miss|stale}` (a refresh
    /// that ends without any rate to serve counts as a miss). `fetch` returns a plain
    /// `Result<Decimal, E>` from the source or a [`Refresh`] from the shared tier.
    pub async fn get<F, Fut, R>(&self, fetch: F) -> Result<Quote, Unavailable>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
        R: Into<Refresh>,
    {
        let result = self.lookup(fetch).await;
        let label = match &result {
            Ok(Quote {
                origin: Origin::Cache,
                ..
            }) => "hit",
            Ok(Quote {
                origin: Origin::Live,
                ..
            })
            | Err(_) => "miss",
            Ok(Quote {
                origin: Origin::Stale,
                ..
            }) => "stale",
        };
        metrics::counter!("resilience_cache_requests_total", "cache" => CACHE_NAME, "result" => label)
            .increment(1);
        result
    }

    /// [`Self::get`] without the request metrics, for refreshes nobody asked for (readiness).
    pub async fn lookup<F, Fut, R>(&self, fetch: F) -> Result<Quote, Unavailable>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
        R: Into<Refresh>,
    {
        let asked_at = Instant::now();
        if let Some(answer) = self.settled(asked_at) {
            return answer;
        }
        let _flight = self.refresh.lock().await;
        // Whoever held the lock before us may have refreshed (or failed to) meanwhile.
        if let Some(answer) = self.settled(asked_at) {
            return answer;
        }
        let refresh: Refresh = fetch().await.into();
        let now = Instant::now();
        let mut state = self.state();
        let (entry, origin) = match refresh {
            Refresh::Fetched(snapshot) => {
                (Entry::from_snapshot(snapshot, false, now), Origin::Live)
            }
            Refresh::Shared(snapshot) => (Entry::from_snapshot(snapshot, true, now), Origin::Cache),
            Refresh::Failed { error, fallback } => {
                tracing::warn!(%error, "exchange rate refresh failed");
                state.last_failure = Some(Failure { at: now, error });
                if let Some(shared) = fallback.map(|s| Entry::from_snapshot(s, true, now))
                    && state
                        .last_good
                        .is_none_or(|own| shared.fetched_at > own.fetched_at)
                {
                    // Another replica fetched more recently than this one: its rate is the
                    // better last-known-good. It is not this refresh's success, though.
                    state.last_good = Some(shared);
                    state.refreshed_at = None;
                }
                return self.fallback(&state, now);
            }
        };
        state.last_good = Some(entry);
        state.refreshed_at = Some(now);
        state.last_failure = None;
        // A gauge is an f64 by nature: for graphs only, never read back as money.
        metrics::gauge!("exchange_rate").set(decimal_to_f64(entry.rate));
        Ok(quote(&entry, origin, now))
    }

    /// The readiness verdict: fine when the last refresh succeeded or a fresh rate exists.
    pub fn status(&self) -> Result<String, String> {
        let now = Instant::now();
        let state = self.state();
        let describe = |entry: &Entry| {
            format!(
                "rate {} fetched {} ms ago{}",
                entry.rate,
                age_of(entry, now).as_millis(),
                if entry.shared {
                    " (from the shared cache)"
                } else {
                    ""
                }
            )
        };
        match (&state.last_good, &state.last_failure) {
            (Some(entry), None) => Ok(describe(entry)),
            (Some(entry), Some(_)) if age_of(entry, now) < self.ttl => Ok(describe(entry)),
            (last_good, Some(failure)) => Err(format!(
                "last fetch failed {} ms ago: {}; {}",
                now.saturating_duration_since(failure.at).as_millis(),
                failure.error,
                last_good.map_or_else(|| "no rate fetched yet".to_owned(), |e| describe(&e)),
            )),
            (None, None) => Err("no rate fetched yet".to_owned()),
        }
    }

    /// True when the next lookup would ask the source.
    pub fn refresh_due(&self) -> bool {
        self.settled(Instant::now()).is_none()
    }

    /// The answer that needs no fetch, if there is one for a caller that asked at `asked_at`.
    fn settled(&self, asked_at: Instant) -> Option<Result<Quote, Unavailable>> {
        let now = Instant::now();
        let state = self.state();
        if let Some(entry) = &state.last_good {
            // Fresh, or refreshed by another caller after this one asked: as new as it gets.
            let refreshed_since = state.refreshed_at.is_some_and(|at| at >= asked_at);
            if age_of(entry, now) < self.ttl || refreshed_since {
                return Some(Ok(quote(entry, Origin::Cache, now)));
            }
        }
        if let Some(failure) = &state.last_failure {
            // A refresh failed while this caller waited, or too recently to try again.
            let backing_off = now.saturating_duration_since(failure.at) < self.ttl;
            if failure.at >= asked_at || backing_off {
                return Some(self.fallback(&state, now));
            }
        }
        None
    }

    fn fallback(&self, state: &State, now: Instant) -> Result<Quote, Unavailable> {
        match &state.last_good {
            Some(entry) if age_of(entry, now) <= self.max_stale => {
                Ok(quote(entry, Origin::Stale, now))
            }
            _ => Err(Unavailable {
                max_stale: self.max_stale,
                reason: state
                    .last_failure
                    .as_ref()
                    .map_or_else(|| "no rate fetched yet".to_owned(), |f| f.error.clone()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held, so a poisoned lock still holds valid state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn age_of(entry: &Entry, now: Instant) -> Duration {
    now.saturating_duration_since(entry.fetched_at)
}

fn quote(entry: &Entry, origin: Origin, now: Instant) -> Quote {
    Quote {
        rate: entry.rate,
        as_of: entry.as_of,
        origin,
        age: age_of(entry, now),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::{advance, sleep};

    use super::*;

    const TTL: Duration = Duration::from_secs(2);
    const MAX_STALE: Duration = Duration::from_secs(10);

    async fn ok(rate: f64) -> Result<Decimal, String> {
        Ok(dec(rate))
    }

    fn dec(rate: f64) -> Decimal {
        ftshop_platform::money::decimal_from_f64(rate).unwrap_or_default()
    }

    /// `rate` is the decimal `text` (a guard, since decimals cannot be matched as literals).
    fn is(rate: impl std::borrow::Borrow<Decimal>, text: &str) -> bool {
        text.parse() == Ok(*rate.borrow())
    }

    async fn fail() -> Result<Decimal, String> {
        Err("source down".to_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_rates_come_from_memory() {
        let cache = RatesCache::new(TTL, MAX_STALE);
        let first = cache.get(|| ok(5.3)).await;
        assert!(matches!(
            first,
            Ok(Quote {
                rate,
                origin: Origin::Live,
                ..
            }) if is(rate, "5.3")
        ));
        advance(Duration::from_millis(1999)).await;
        let second = cache.get(|| ok(9.9)).await;
        assert!(
            matches!(
                second,
                Ok(Quote {
                    rate,
                    origin: Origin::Cache,
                    ..
                }) if is(rate, "5.3")
            ),
            "{second:?}"
        );
        assert_eq!(second.map(|q| q.as_of).ok(), first.map(|q| q.as_of).ok());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_rates_are_fetched_again() {
        let cache = RatesCache::new(TTL, MAX_STALE);
        let _ = cache.get(|| ok(5.3)).await;
        advance(TTL).await;
        let quote = cache.get(|| ok(5.4)).await;
        assert!(
            matches!(
                quote,
                Ok(Quote {
                    rate,
                    origin: Origin::Live,
                    ..
                }) if is(rate, "5.4")
            ),
            "{quote:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_serve_the_last_good_rate_until_max_stale() {
        let cache = RatesCache::new(TTL, MAX_STALE);
        let _ = cache.get(|| ok(5.3)).await;

        advance(TTL).await;
        let stale = cache.get(fail).await;
        assert!(
            matches!(stale, Ok(Quote { rate, origin: Origin::Stale, age, .. }) if age == TTL && is(rate, "5.3"))
        );
        assert!(
            cache.status().is_err(),
            "a failed fetch with an expired rate is not ready"
        );

        // Within the back-off the source is not asked; the answer is still stale.
        let calls = AtomicUsize::new(0);
        let counted = || {
            calls.fetch_add(1, Ordering::SeqCst);
            fail()
        };
        advance(Duration::from_secs(1)).await;
        assert!(matches!(
            cache.get(counted).await,
            Ok(Quote {
                origin: Origin::Stale,
                ..
            })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 0);

        advance(MAX_STALE - TTL - Duration::from_secs(1)).await;
        let oldest = cache.get(fail).await;
        assert!(matches!(oldest, Ok(Quote { origin: Origin::Stale, age, .. }) if age == MAX_STALE));

        advance(Duration::from_millis(1)).await;
        let gone = cache.get(fail).await;
        assert_eq!(
            gone,
            Err(Unavailable {
                max_stale: MAX_STALE,
                reason: "source down".to_owned()
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_source_recovers_after_the_back_off() {
        let cache = RatesCache::new(TTL, MAX_STALE);
        let _ = cache.get(|| ok(5.3)).await;
        advance(TTL).await;
        let _ = cache.get(fail).await;
        advance(Duration::from_millis(1999)).await;
        assert!(matches!(
            cache.get(|| ok(5.5)).await,
            Ok(Quote {
                origin: Origin::Stale,
                ..
            })
        ));
        advance(Duration::from_millis(1)).await;
        let back = cache.get(|| ok(5.5)).await;
        assert!(
            matches!(
                back,
                Ok(Quote {
                    rate,
                    origin: Origin::Live,
                    ..
                }) if is(rate, "5.5")
            ),
            "{back:?}"
        );
        assert!(cache.status().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_to_fall_back_on_is_unavailable() {
        let cache = RatesCache::new(TTL, MAX_STALE);
        assert_eq!(cache.status(), Err("no rate fetched yet".to_owned()));
        assert!(cache.refresh_due());
        let answer = cache.get(fail).await;
        assert!(matches!(answer, Err(Unavailable { ref reason, .. }) if reason == "source down"));
        assert!(!cache.refresh_due(), "backing off after a failure");
        let status = cache.status();
        assert!(
            matches!(&status, Err(s) if s.contains("source down")),
            "{status:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_fetch_once() {
        let cache = Arc::new(RatesCache::new(TTL, MAX_STALE));
        let calls = Arc::new(AtomicUsize::new(0));
        let requests = (0..50).map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get(|| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        sleep(Duration::from_millis(300)).await;
                        Ok::<_, String>(dec(5.3))
                    })
                    .await
            })
        });
        let answers = futures::future::join_all(requests).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let live = answers
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Ok(Ok(Quote {
                        origin: Origin::Live,
                        ..
                    }))
                )
            })
            .count();
        let cached = answers
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Ok(Ok(Quote {
                        rate,
                        origin: Origin::Cache,
                        ..
                    })) if is(rate, "5.3")
                )
            })
            .count();
        assert_eq!((live, cached), (1, 49));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_a_failure() {
        let cache = Arc::new(RatesCache::new(TTL, MAX_STALE));
        let _ = cache.get(|| ok(5.3)).await;
        advance(TTL).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let requests = (0..20).map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get(|| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        sleep(Duration::from_millis(800)).await;
                        Err::<Decimal, _>("timed out")
                    })
                    .await
            })
        });
        let answers = futures::future::join_all(requests).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one fetch for the whole burst"
        );
        assert!(answers.iter().all(|a| matches!(
            a,
            Ok(Ok(Quote {
                rate,
                origin: Origin::Stale,
                ..
            })) if is(rate, "5.3")
        )));
    }

    fn shared(rate: f64, age: Duration) -> Snapshot {
        Snapshot {
            rate: dec(rate),
            as_of: OffsetDateTime::UNIX_EPOCH,
            age,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shared_rates_keep_their_age_and_as_of() {
        let cache = RatesCache::new(TTL, MAX_STALE);
        let got = cache
            .get(|| async { Refresh::Shared(shared(5.5, Duration::from_millis(1500))) })
            .await;
        assert_eq!(
            got,
            Ok(Quote {
                rate: dec(5.5),
                as_of: OffsetDateTime::UNIX_EPOCH,
                origin: Origin::Cache,
                age: Duration::from_millis(1500),
            })
        );
        let status = cache.status();
        assert!(
            matches!(&status, Ok(s) if s.contains("rate 5.5") && s.contains("shared")),
            "{status:?}"
        );
        // It expires when it was fetched plus the TTL, not when this replica took it.
        advance(Duration::from_millis(499)).await;
        assert!(!cache.refresh_due());
        advance(Duration::from_millis(1)).await;
        assert!(cache.refresh_due());
        let live = cache.get(|| ok(5.6)).await;
        assert!(matches!(
            live,
            Ok(Quote {
                rate,
                origin: Origin::Live,
                ..
            }) if is(rate, "5.6")
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_take_a_shared_rate_without_asking_again() {
        let cache = Arc::new(RatesCache::new(TTL, MAX_STALE));
        let calls = Arc::new(AtomicUsize::new(0));
        let requests = (0..20).map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get(|| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        sleep(Duration::from_millis(300)).await;
                        // Already past the TTL when it arrives: still this refresh's answer.
                        Refresh::Shared(shared(5.5, TTL + Duration::from_millis(1)))
                    })
                    .await
            })
        });
        let answers = futures::future::join_all(requests).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|a| matches!(
            a,
            Ok(Ok(Quote {
                rate,
                origin: Origin::Cache,
                ..
            })) if is(rate, "5.5")
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn the_newer_of_own_and_shared_last_good_is_served_stale() {
        let cache = RatesCache::new(TTL, MAX_STALE);
        let _ = cache.get(|| ok(5.3)).await;
        advance(Duration::from_secs(5)).await;

        // Another replica fetched 1 s ago, after this one: its rate is the better fallback.
        let newer = cache
            .get(|| async {
                Refresh::Failed {
                    error: "source down".to_owned(),
                    fallback: Some(shared(5.4, Duration::from_secs(1))),
                }
            })
            .await;
        assert!(
            matches!(newer, Ok(Quote { rate, origin: Origin::Stale, age, .. }) if age == Duration::from_secs(1) && is(rate, "5.4")),
            "{newer:?}"
        );
        // Younger than the TTL: a rate worth serving exists, so readiness stays fine.
        let status = cache.status();
        assert!(
            matches!(&status, Ok(s) if s.contains("rate 5.4")),
            "{status:?}"
        );

        // An older shared rate does not replace it.
        advance(TTL).await;
        let kept = cache
            .get(|| async {
                Refresh::Failed {
                    error: "source down".to_owned(),
                    fallback: Some(shared(5.0, Duration::from_secs(9))),
                }
            })
            .await;
        assert!(
            matches!(kept, Ok(Quote { rate, origin: Origin::Stale, age, .. }) if age == Duration::from_secs(3) && is(rate, "5.4")),
            "{kept:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_ttl_always_fetches() {
        let cache = RatesCache::new(Duration::ZERO, MAX_STALE);
        for rate in [5.1, 5.2, 5.3] {
            let quote = cache.get(|| ok(rate)).await;
            assert!(matches!(
                quote,
                Ok(Quote {
                    origin: Origin::Live,
                    ..
                })
            ));
            advance(Duration::from_millis(1)).await;
        }
    }
}
