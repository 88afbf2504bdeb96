//! The completion promise of a deferred sale, and the admission control that keeps it.
//!
//! A `202 pending` answer is a promise: the sale completes (or is cancelled with a reason)
//! within `--defer-promise` (default 60 s). With ft=true, a purchase whose sale cannot happen
//! now is deferred only when the backlog of deferred sales, this one included, drains within the
//! promise at the measured drain rate; otherwise it is refused with `503 deferral-refused`
//! (step `sell`) and a `Retry-After` computed from the same rate.
//!
//! **Drain rate.** Deferred sales completed (or cancelled) by the order worker per second of
//! *busy* time, that is time during which the backlog was not empty: while the backlog is empty
//! nothing can be drained, so idle time says nothing about capacity. Both sums decay
//! exponentially with a time constant of [`DRAIN_WINDOW`] (an exponentially weighted moving
//! average of the rate, the smoothing of e.g. Unix load averages), and a prior enters as
//! [`PRIOR_WEIGHT`] pseudo-seconds of busy time at the prior rate:
//!
//! `rate = (completions + prior_rate × P) / (busy_seconds + P)`
//!
//! so a fresh process starts at the prior, the measurements take over within a window, and the
//! estimate never reaches zero (a Store that fails for good drives it towards
//! `prior × P / (window + P)`, which keeps refusals' `Retry-After` finite).
//!
//! **Prior.** Store's default `/sell` fault (docs/faults.md) opens a 5 s error window with
//! p = 0.1 per request, so one replica sells on average `1/p - 1 = 9` units per window cycle,
//! at most 9 / 5 s = 1.8 units/s when selling itself takes no time. The prior assumes half of
//! that, [`PRIOR_SALES_PER_REPLICA`] = 0.9 units/s per Store replica: conservative, so a fresh
//! process does not promise what it has not seen.
//!
//! **Backlog.** Kept in memory for the hot path (no database round trip per purchase): set from
//! the database about once a second by the backlog gauges, plus one per admitted deferral and
//! minus one per order the worker ends. Several ecommerce replicas share the database's backlog
//! but each measures only its own worker's completions, so each underestimates the rate:
//! conservative again.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Default bound on how long an acknowledged (202) purchase may wait for its sale.
pub const DEFAULT_PROMISE: Duration = Duration::from_secs(60);
/// Time constant of the decaying sums behind the drain rate.
pub const DRAIN_WINDOW: Duration = Duration::from_secs(30);
/// Weight of the prior, in pseudo-seconds of busy time.
pub const PRIOR_WEIGHT: Duration = Duration::from_secs(10);
/// Prior drain rate per Store replica, units per second (half the default fault model's cap).
pub const PRIOR_SALES_PER_REPLICA: f64 = 0.9;

/// What admission control decided for one purchase whose sale must be deferred.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    /// Defer it: the backlog including it drains in `expected` (at most the promise).
    Accept { expected: Duration },
    /// Refuse it: draining the backlog plus this one would take `projected`, beyond the
    /// promise; the backlog will have drained enough for one more in `retry_after` (whole
    /// seconds, at least 1).
    Refuse {
        projected: Duration,
        retry_after: Duration,
    },
}

/// A snapshot for `GET /backlog` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrainView {
    /// Deferred sales per second the backlog drains at (estimate, see the module docs).
    pub rate_per_second: f64,
    /// Seconds to drain the current backlog at that rate.
    pub projected_drain_seconds: f64,
    /// The promise, in seconds.
    pub promise_seconds: f64,
    /// Deferred sales in the backlog, as this process knows it.
    pub backlog: u64,
}

/// Drain-rate estimator and admission control (see the module docs for the estimate).
#[derive(Debug)]
pub struct CompletionPromise {
    promise: Duration,
    prior_rate: f64,
    inner: Mutex<Sums>,
}

#[derive(Debug)]
struct Sums {
    /// Decayed count of ended deferred orders.
    completions: f64,
    /// Decayed seconds during which the backlog was not empty.
    busy_seconds: f64,
    /// Deferred sales waiting.
    backlog: u64,
    /// When the sums were last brought up to date.
    at: Instant,
    /// Sales added to the backlog and ended since start (monotonic), so a database count read
    /// a moment ago can be brought up to date with what happened since (see [`BacklogMark`]).
    added: u64,
    ended: u64,
    /// Admitted sales whose order is not written yet (their [`Admitted`] guard is alive).
    unwritten: u64,
}

/// A change of the backlog in flight (an admitted deferral whose order is being written, or a
/// deferred order the worker is ending): keep it until the database write returned. While it
/// lives, [`CompletionPromise::set_backlog`] does not apply database counts, which may or may
/// not include that write. Dropping it (also when the request is cancelled) ends that.
#[must_use = "keep it until the deferred order is written"]
#[derive(Debug)]
pub struct Admitted {
    promise: std::sync::Arc<CompletionPromise>,
}

impl Admitted {
    /// The deferred order could not be written: it is not in the backlog after all.
    pub fn not_written(self) {
        let mut sums = self.promise.inner.lock().unwrap_or_else(|e| e.into_inner());
        sums.backlog = sums.backlog.saturating_sub(1);
        sums.added = sums.added.saturating_sub(1);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut sums = self.promise.inner.lock().unwrap_or_else(|e| e.into_inner());
        sums.unwritten = sums.unwritten.saturating_sub(1);
    }
}

/// Where the backlog's own counters stood when a database count of it was started: read it
/// with [`CompletionPromise::mark`] *before* the `COUNT`, give both to
/// [`CompletionPromise::set_backlog`]. Without it, a count read just before an admission's
/// order was written, applied just after the admission, would erase that admission and let the
/// next purchase be promised the same slot.
#[derive(Debug, Clone, Copy)]
pub struct BacklogMark {
    added: u64,
    ended: u64,
    unwritten: u64,
}

impl CompletionPromise {
    /// A promise of `promise` with `store_replicas` Store replicas behind the prior.
    ///
    /// # Errors
    /// `promise` is zero.
    pub fn new(promise: Duration, store_replicas: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !promise.is_zero(),
            "the completion promise must be above zero"
        );
        Ok(Self {
            promise,
            prior_rate: PRIOR_SALES_PER_REPLICA * store_replicas.max(1) as f64,
            inner: Mutex::new(Sums {
                completions: 0.0,
                busy_seconds: 0.0,
                backlog: 0,
                at: Instant::now(),
                added: 0,
                ended: 0,
                unwritten: 0,
            }),
        })
    }

    pub fn promise(&self) -> Duration {
        self.promise
    }

    /// Decides for one more deferred sale at `now`; an accepted one joins the backlog.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut sums = self.sums(now);
        let rate = sums.rate(self.prior_rate);
        let projected = (sums.backlog as f64 + 1.0) / rate;
        let promise = self.promise.as_secs_f64();
        // A nanosecond of slack, so float rounding never refuses what fits exactly.
        if projected <= promise + 1e-9 {
            sums.backlog += 1;
            sums.added += 1;
            Admission::Accept {
                expected: Duration::from_secs_f64(projected),
            }
        } else {
            Admission::Refuse {
                projected: Duration::from_secs_f64(projected),
                retry_after: Duration::from_secs(
                    (projected - promise - 1e-9).ceil().max(1.0) as u64
                ),
            }
        }
    }

    /// Adds a deferred sale that cannot be refused (an attempt may have sold it already) at
    /// `now`, whatever the projection; returns the time to drain the backlog including it.
    pub fn defer_anyway(&self, now: Instant) -> Duration {
        let mut sums = self.sums(now);
        sums.backlog += 1;
        sums.added += 1;
        Duration::from_secs_f64(sums.backlog as f64 / sums.rate(self.prior_rate))
    }

    /// The order worker ended a deferred order (completed or cancelled) at `now`.
    pub fn completed(&self, now: Instant) {
        let mut sums = self.sums(now);
        sums.completions += 1.0;
        sums.backlog = sums.backlog.saturating_sub(1);
        sums.ended += 1;
    }

    /// The counters to read before counting the backlog in the database.
    pub fn mark(&self) -> BacklogMark {
        let sums = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        BacklogMark {
            added: sums.added,
            ended: sums.ended,
            unwritten: sums.unwritten,
        }
    }

    /// The backlog as counted in the database (the count started after `mark` was taken).
    /// Applied only when nothing changed the backlog meanwhile (no admission, no end, no order
    /// being written or ended at either moment): a count racing an admission could erase it and
    /// promise its slot twice, or count it twice and refuse a purchase that fits. The in-memory
    /// count is exact for what this process does; the database count corrects drift (a restart,
    /// another replica) whenever the backlog is quiet.
    pub fn set_backlog(&self, now: Instant, mark: BacklogMark, counted: u64) {
        let mut sums = self.sums(now);
        let quiet = sums.added == mark.added
            && sums.ended == mark.ended
            && mark.unwritten == 0
            && sums.unwritten == 0;
        if quiet {
            sums.backlog = counted;
        }
    }

    /// Marks one admitted deferral as being written; see [`Admitted`].
    pub fn writing(self: &std::sync::Arc<Self>) -> Admitted {
        let mut sums = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        sums.unwritten += 1;
        drop(sums);
        Admitted {
            promise: self.clone(),
        }
    }

    /// The current estimate.
    pub fn view(&self, now: Instant) -> DrainView {
        let sums = self.sums(now);
        let rate = sums.rate(self.prior_rate);
        DrainView {
            rate_per_second: rate,
            projected_drain_seconds: sums.backlog as f64 / rate,
            promise_seconds: self.promise.as_secs_f64(),
            backlog: sums.backlog,
        }
    }

    /// The sums, decayed and with busy time added up to `now`.
    fn sums(&self, now: Instant) -> std::sync::MutexGuard<'_, Sums> {
        let mut sums = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let dt = now.saturating_duration_since(sums.at).as_secs_f64();
        if dt > 0.0 {
            let tau = DRAIN_WINDOW.as_secs_f64();
            let decay = (-dt / tau).exp();
            sums.completions *= decay;
            sums.busy_seconds *= decay;
            if sums.backlog > 0 {
                // ∫ e^{-(dt-s)/τ} ds over the interval: busy time, decayed like the rest.
                sums.busy_seconds += tau * (1.0 - decay);
            }
            sums.at = now;
        }
        sums
    }
}

impl Sums {
    fn rate(&self, prior_rate: f64) -> f64 {
        let weight = PRIOR_WEIGHT.as_secs_f64();
        (self.completions + prior_rate * weight) / (self.busy_seconds + weight)
    }
}

/// `at` (Unix epoch milliseconds) as RFC 3339 UTC with milliseconds, e.g.
/// `2026-11-30T06:09:18.123Z`; `None` when out of range.
pub fn rfc3339_millis(at_ms: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000).ok()?;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_estimator_drains_at_the_prior_of_its_replicas() {
        let promise = CompletionPromise::new(Duration::from_secs(60), 2).unwrap();
        let view = promise.view(Instant::now());
        assert!((view.rate_per_second - 1.8).abs() < 1e-9, "{view:?}");
        assert_eq!(view.backlog, 0);
        assert_eq!(view.projected_drain_seconds, 0.0);
        assert!(CompletionPromise::new(Duration::ZERO, 2).is_err());
    }

    /// Busy time without completions drives the rate down; completions while busy drive it
    /// towards the measured rate; idle time changes neither.
    #[tokio::test(start_paused = true)]
    async fn the_drain_rate_follows_completions_per_busy_second() {
        let promise = CompletionPromise::new(Duration::from_secs(60), 1).unwrap();
        let start = Instant::now();
        // Idle for a minute: nothing to drain, the prior stands.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!((promise.view(Instant::now()).rate_per_second - 0.9).abs() < 1e-9);

        // A backlog that drains at 5 units/s for two windows.
        promise.set_backlog(Instant::now(), promise.mark(), 1_000);
        for _ in 0..600 {
            tokio::time::advance(Duration::from_millis(200)).await;
            promise.completed(Instant::now());
        }
        let rate = promise.view(Instant::now()).rate_per_second;
        // Busy ≈ τ(1 - e^-4), completions ≈ 5 × that: (5·29.45 + 0.9·10) / (29.45 + 10) ≈ 3.96.
        assert!((rate - 3.96).abs() < 0.05, "rate {rate}");

        // Store fails for good: busy, nothing completes; the rate falls but stays above zero.
        tokio::time::advance(Duration::from_secs(300)).await;
        let rate = promise.view(Instant::now()).rate_per_second;
        let floor = 0.9 * 10.0 / (30.0 + 10.0);
        assert!(rate > floor && rate < floor * 1.01, "rate {rate}");
        assert!(Instant::now() > start);
    }

    /// Accepts while (backlog + 1) / rate fits the promise, then refuses with the seconds
    /// until it fits again, rounded up.
    #[tokio::test(start_paused = true)]
    async fn admission_accepts_within_the_promise_and_refuses_beyond_it() {
        // One replica: prior 0.9 units/s; promise 10 s → 9 units fit.
        let promise = CompletionPromise::new(Duration::from_secs(10), 1).unwrap();
        let now = Instant::now();
        for k in 1..=9u32 {
            match promise.admit(now) {
                Admission::Accept { expected } => {
                    assert!((secs(expected) - f64::from(k) / 0.9).abs() < 1e-6, "{k}")
                }
                other => panic!("purchase {k}: {other:?}"),
            }
        }
        assert_eq!(promise.view(now).backlog, 9);
        // The 10th would drain in 10 / 0.9 = 11.1 s: refused, retry after ceil(1.1) = 2 s.
        match promise.admit(now) {
            Admission::Refuse {
                projected,
                retry_after,
            } => {
                assert!((secs(projected) - 10.0 / 0.9).abs() < 1e-6);
                assert_eq!(retry_after, Duration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(promise.view(now).backlog, 9, "a refusal adds nothing");

        // A larger backlog (from the database): Retry-After grows with it.
        promise.set_backlog(now, promise.mark(), 44);
        assert_eq!(
            promise.admit(now),
            Admission::Refuse {
                projected: Duration::from_secs_f64(45.0 / 0.9),
                retry_after: Duration::from_secs(40),
            }
        );
        // Two ended: 43 + 1 at 0.9/s still beyond; at 8 left, one more fits again.
        promise.set_backlog(now, promise.mark(), 8);
        assert!(matches!(promise.admit(now), Admission::Accept { .. }));
        // A sale in doubt joins the backlog beyond the promise, with its honest projection.
        assert_eq!(
            promise.defer_anyway(now),
            Duration::from_secs_f64(10.0 / 0.9)
        );
        assert_eq!(promise.view(now).backlog, 10);
    }

    /// A backlog count read just before an admitted order was written, applied just after the
    /// admission, used to erase it: the next purchase was promised the same slot (two 202s both
    /// expecting 0.556 s, seen in a test on PostgreSQL).
    #[tokio::test(start_paused = true)]
    async fn a_backlog_count_never_erases_an_admission_not_yet_written() {
        let promise =
            std::sync::Arc::new(CompletionPromise::new(Duration::from_secs(60), 2).unwrap());
        let now = Instant::now();
        let mark = promise.mark(); // a count starts; the database holds no pending order
        let admitted = promise.writing();
        assert!(matches!(promise.admit(now), Admission::Accept { .. }));
        promise.set_backlog(now, mark, 0); // the count lands after the admission
        assert_eq!(promise.view(now).backlog, 1);
        // A count started while the order is being written is not applied either way.
        let mark = promise.mark();
        promise.set_backlog(now, mark, 0);
        assert_eq!(promise.view(now).backlog, 1);
        promise.set_backlog(now, mark, 2);
        assert_eq!(promise.view(now).backlog, 1);
        drop(admitted); // written: a quiet count is the truth again
        let mark = promise.mark();
        promise.set_backlog(now, mark, 3);
        assert_eq!(promise.view(now).backlog, 3, "drift corrected");
        // A write that failed leaves the backlog as it was.
        let admitted = promise.writing();
        assert!(matches!(promise.admit(now), Admission::Accept { .. }));
        admitted.not_written();
        assert_eq!(promise.view(now).backlog, 3);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            rfc3339_millis(1_764_483_000_123).as_deref(),
            Some("2025-11-30T06:10:00.123Z")
        );
    }
}
