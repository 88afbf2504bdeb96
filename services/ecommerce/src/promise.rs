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
//! **Admission at 99 %.** Sales under Store's fault come in bursts: a replica sells a
//! geometric number of units (mean `1/p - 1` = 9, variance `(1-p)/p²` = 90) and then nothing
//! for a whole window, so the units sold in 60 s vary by ±30 % from one minute to the next on
//! one replica. Admitting up to `rate × promise` would break the promise for about half of the
//! orders admitted at that edge. Ecommerce therefore admits a deferral only when the backlog,
//! this one included, drains within the promise with 99 % confidence under a normal
//! approximation of the drain: `n` units take `T` with
//!
//! `rate × T − z × √(D × rate × T × (1 + T × u)) = n`, z = 2.326 (one-sided 99 %),
//!
//! where `D` is the drain's dispersion index (variance over mean of the units completed per
//! [`DISPERSION_BUCKET`] of busy time; 1 for a Poisson drain, 10 for the default fault's
//! bursts, [`PRIOR_DISPERSION`]), measured as an exponentially weighted mean over buckets with
//! the prior as the starting value, and `T × u` is the rate estimate's own error relative to
//! the drain's: the estimate counts about 30 s of busy time, so its relative standard error is
//! itself ~20 % under the default fault (`u = B / (B + P)²`, 0 while all of the estimate is
//! prior). Without that term the 1000-user benchmark missed the promise for 1.3 % of its 202s
//! (p99 63 s). The 202's `expected_completion_seconds` is the mean `(backlog + 1) / rate`; a
//! refusal's projection is the 99 % time `T`. (The normal approximation of a renewal
//! process's count: e.g. Cox, *Renewal Theory*, 1962, ch. 3.) Under the default fault, two
//! Store replicas measured at ~3.6 sales/s admit ~63 deferrals within 60 s; one replica
//! (1.8/s) almost none: its minute-to-minute sales vary too much for a 99 % promise.
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
/// Busy time over which completions are counted for the dispersion index.
pub const DISPERSION_BUCKET: Duration = Duration::from_secs(10);
/// Prior dispersion index: variance over mean of a replica's sales per error-window cycle under
/// the default `/sell` fault (90 / 9).
pub const PRIOR_DISPERSION: f64 = 10.0;
/// Default of [`CompletionPromise::queueing_after`].
pub const DEFAULT_QUEUE_AFTER: Duration = Duration::from_secs(1);
/// How many admission instants are kept for [`CompletionPromise::queue_ahead`] (only the
/// oldest matters; beyond this many waiting, the newest are not recorded).
const TRACKED_ADMISSIONS: usize = 100_000;
/// Weight of a new bucket in the dispersion index's moving averages.
const DISPERSION_ALPHA: f64 = 0.1;
/// One-sided 99 % quantile of the standard normal distribution.
const CONFIDENCE_Z: f64 = 2.326;

/// What admission control decided for one purchase whose sale must be deferred.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    /// Defer it: the backlog including it drains in `expected` (at most the promise).
    Accept { expected: Duration },
    /// Refuse it: draining the backlog plus this one would take up to `projected` (99 %),
    /// beyond the promise; the backlog will have drained enough for one more in `retry_after`
    /// (whole seconds, at least 1).
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
    /// Dispersion index of the drain (see the module docs).
    pub dispersion: f64,
    /// How many deferred sales the promise admits at 99 % (the backlog included).
    pub admissible: u64,
}

/// Drain-rate estimator and admission control (see the module docs for the estimate).
#[derive(Debug)]
pub struct CompletionPromise {
    promise: Duration,
    prior_rate: f64,
    /// New purchases queue behind the deferred sales once the oldest has waited this long.
    queue_after: Duration,
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
    /// The current dispersion bucket: busy seconds so far and completions in them.
    bucket_busy: f64,
    bucket_completions: f64,
    /// Moving averages of completions per bucket and of their squared deviation.
    bucket_mean: f64,
    bucket_var: f64,
    /// When the waiting deferred sales were admitted, oldest first (the worker takes the
    /// oldest due order first, so an ended order is taken to be the oldest).
    admitted_at: std::collections::VecDeque<Instant>,
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
        sums.admitted_at.pop_back();
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
        let prior_rate = PRIOR_SALES_PER_REPLICA * store_replicas.max(1) as f64;
        let prior_bucket = prior_rate * DISPERSION_BUCKET.as_secs_f64();
        Ok(Self {
            promise,
            prior_rate,
            queue_after: DEFAULT_QUEUE_AFTER,
            inner: Mutex::new(Sums {
                completions: 0.0,
                busy_seconds: 0.0,
                backlog: 0,
                at: Instant::now(),
                added: 0,
                ended: 0,
                unwritten: 0,
                bucket_busy: 0.0,
                bucket_completions: 0.0,
                bucket_mean: prior_bucket,
                bucket_var: prior_bucket * PRIOR_DISPERSION,
                admitted_at: std::collections::VecDeque::new(),
            }),
        })
    }

    pub fn promise(&self) -> Duration {
        self.promise
    }

    /// Sets how long the oldest deferred sale waits before new purchases queue behind the
    /// deferred sales (see [`Self::queue_ahead`]).
    #[must_use]
    pub fn queueing_after(mut self, after: Duration) -> Self {
        self.queue_after = after;
        self
    }

    /// Decides for one more deferred sale at `now`; an accepted one joins the backlog.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut sums = self.sums(now);
        let drain = sums.drain(self.prior_rate);
        let units = sums.backlog as f64 + 1.0;
        let promise = self.promise.as_secs_f64();
        // An empty backlog always admits one, when the mean says it drains within the promise:
        // the drain is measured only while something waits, so a low estimate (a stretch in
        // which every replica was failing) that admitted nothing could never be corrected.
        let capacity =
            drain
                .capacity(promise)
                .max(if sums.backlog == 0 && drain.rate * promise >= 1.0 {
                    1.0
                } else {
                    0.0
                });
        // A millionth of a unit of slack, so float rounding never refuses what fits exactly.
        if units <= capacity + 1e-6 {
            sums.backlog += 1;
            sums.added += 1;
            sums.admitted(now);
            Admission::Accept {
                expected: Duration::from_secs_f64(units / drain.rate),
            }
        } else {
            Admission::Refuse {
                projected: Duration::from_secs_f64(drain.time_for(units)),
                retry_after: Duration::from_secs(
                    ((units - capacity - 1e-6) / drain.rate).ceil().max(1.0) as u64,
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
        sums.admitted(now);
        Duration::from_secs_f64(sums.backlog as f64 / sums.rate(self.prior_rate))
    }

    /// The deferred sales a new purchase must queue behind at `now`, if any: first come, first
    /// served once the oldest of them has waited [`Self::queueing_after`] (Store is not keeping
    /// up, so each unit it can sell goes to the oldest order). A deferral the worker settles
    /// at once (a healthy but momentarily slow Store) does not make purchases queue: that would
    /// send every purchase through the worker while nothing is scarce.
    pub fn queue_ahead(&self, now: Instant) -> Option<u64> {
        let sums = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = *sums.admitted_at.front()?;
        (sums.backlog > 0 && now.saturating_duration_since(oldest) >= self.queue_after)
            .then_some(sums.backlog)
    }

    /// The order worker ended a deferred order (completed or cancelled) at `now`.
    pub fn completed(&self, now: Instant) {
        let mut sums = self.sums(now);
        sums.completions += 1.0;
        sums.bucket_completions += 1.0;
        sums.backlog = sums.backlog.saturating_sub(1);
        sums.ended += 1;
        sums.admitted_at.pop_front();
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
    /// `oldest` is how long the oldest counted order has waited: it corrects the admission
    /// instants this process keeps (orders deferred before a restart, or by another replica).
    pub fn set_backlog(&self, now: Instant, mark: BacklogMark, counted: u64, oldest: Duration) {
        let mut sums = self.sums(now);
        let quiet = sums.added == mark.added
            && sums.ended == mark.ended
            && mark.unwritten == 0
            && sums.unwritten == 0;
        if quiet {
            sums.backlog = counted;
            let tracked = usize::try_from(counted)
                .unwrap_or(usize::MAX)
                .min(TRACKED_ADMISSIONS);
            let since = now.checked_sub(oldest).unwrap_or(now);
            while sums.admitted_at.len() > tracked {
                sums.admitted_at.pop_front();
            }
            while sums.admitted_at.len() < tracked {
                sums.admitted_at.push_front(since);
            }
            // The database knows the true oldest: nothing waits longer than it says, and the
            // oldest waits that long (the instants of out-of-order ends are corrected here).
            for at in sums.admitted_at.iter_mut() {
                if *at >= since {
                    break;
                }
                *at = since;
            }
            if let Some(front) = sums.admitted_at.front_mut() {
                *front = since;
            }
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
        let drain = sums.drain(self.prior_rate);
        DrainView {
            rate_per_second: drain.rate,
            projected_drain_seconds: sums.backlog as f64 / drain.rate,
            promise_seconds: self.promise.as_secs_f64(),
            backlog: sums.backlog,
            dispersion: drain.dispersion,
            admissible: drain.capacity(self.promise.as_secs_f64()).floor() as u64,
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
                sums.bucket_busy += dt;
                let bucket = DISPERSION_BUCKET.as_secs_f64();
                if sums.bucket_busy >= bucket {
                    // Completions scaled to a whole bucket (a long gap between calls makes
                    // one longer bucket, whose count is spread evenly).
                    let count = sums.bucket_completions * bucket / sums.bucket_busy;
                    let deviation = count - sums.bucket_mean;
                    sums.bucket_mean += DISPERSION_ALPHA * deviation;
                    sums.bucket_var = (1.0 - DISPERSION_ALPHA)
                        * (sums.bucket_var + DISPERSION_ALPHA * deviation * deviation);
                    sums.bucket_busy = 0.0;
                    sums.bucket_completions = 0.0;
                }
            }
            sums.at = now;
        }
        sums
    }
}

impl Sums {
    /// The drain as estimated now.
    fn drain(&self, prior_rate: f64) -> Drain {
        Drain {
            rate: self.rate(prior_rate),
            dispersion: self.dispersion(),
            uncertainty: self.rate_uncertainty(),
        }
    }

    fn admitted(&mut self, now: Instant) {
        if self.admitted_at.len() < TRACKED_ADMISSIONS {
            self.admitted_at.push_back(now);
        }
    }

    fn rate(&self, prior_rate: f64) -> f64 {
        let weight = PRIOR_WEIGHT.as_secs_f64();
        (self.completions + prior_rate * weight) / (self.busy_seconds + weight)
    }

    /// The relative variance of the rate estimate, per unit of dispersion and rate:
    /// `Var(rate) = dispersion × rate × this`. The estimate counts completions over `B` decayed
    /// busy seconds (variance about `D·rate·B`) and adds the prior's `P` pseudo-seconds, taken
    /// as exact: `B / (B + P)²`. 0 for a fresh process (all prior), about 30 / 40² for a
    /// process that has drained for a while.
    fn rate_uncertainty(&self) -> f64 {
        let weight = PRIOR_WEIGHT.as_secs_f64();
        self.busy_seconds / ((self.busy_seconds + weight) * (self.busy_seconds + weight))
    }

    /// Variance over mean of completions per bucket, at least 1 (a drain more regular than
    /// Poisson is not assumed); the prior while buckets have held almost nothing (a Store that
    /// fails for good: there is no drain to measure the regularity of).
    fn dispersion(&self) -> f64 {
        if self.bucket_mean < 1.0 {
            PRIOR_DISPERSION
        } else {
            (self.bucket_var / self.bucket_mean).max(1.0)
        }
    }
}

/// The drain as estimated at one moment: the bound of the module docs.
#[derive(Debug, Clone, Copy)]
struct Drain {
    /// Deferred sales per second of busy time ([`Sums::rate`]).
    rate: f64,
    /// Variance over mean of the drain ([`Sums::dispersion`]).
    dispersion: f64,
    /// The rate estimate's relative variance per unit of dispersion and rate
    /// ([`Sums::rate_uncertainty`]).
    uncertainty: f64,
}

impl Drain {
    /// Units that drain within `seconds` with 99 % confidence: the mean `rate·T` less `z`
    /// standard deviations of the drain (`D·rate·T`) and of the estimate's error over `T`
    /// (`T²·D·rate·uncertainty`, at most [`ESTIMATE_ERROR_CAP`] times the drain's); at least 0.
    fn capacity(&self, seconds: f64) -> f64 {
        let mean = self.rate * seconds;
        let estimate_error = (seconds * self.uncertainty).min(ESTIMATE_ERROR_CAP);
        let variance = self.dispersion * mean * (1.0 + estimate_error);
        (mean - CONFIDENCE_Z * variance.sqrt()).max(0.0)
    }

    /// The time within which `units` drain with 99 % confidence (the smallest `T` whose
    /// [`Self::capacity`] holds them), found by bisection; [`LONGEST_PROJECTION`] when not
    /// within it.
    fn time_for(&self, units: f64) -> f64 {
        let holds = |t: f64| self.capacity(t) >= units;
        if !holds(LONGEST_PROJECTION) {
            return LONGEST_PROJECTION;
        }
        let (mut low, mut high) = (0.0, LONGEST_PROJECTION);
        for _ in 0..64 {
            let mid = (low + high) / 2.0;
            if holds(mid) { high = mid } else { low = mid }
        }
        high
    }
}

/// The estimate's error enters the bound as at most this many times the drain's own variance.
/// Its relative error does not shrink with the horizon, so uncapped it would make a long
/// promise admit nearly nothing (with `--defer-promise 1h`, 1,400 of 2,000 purchases in
/// `tests/e2e_ft_faults.rs`, where the long promise exists to hold the whole backlog). The
/// cap binds only for promises above `2 / u`, at least 80 s (`u` ≤ 1 / (4·P) = 0.025): the
/// default 60 s promise, and every run in docs/benchmarks/sustained-faults.md, use the
/// uncapped bound.
const ESTIMATE_ERROR_CAP: f64 = 2.0;

/// Longest drain time a refusal reports: beyond it the projection says "not within a day".
const LONGEST_PROJECTION: f64 = 86_400.0;

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

    /// The refusal's projection and Retry-After; panics on an acceptance.
    fn refused(admission: Admission) -> (Duration, Duration) {
        match admission {
            Admission::Refuse {
                projected,
                retry_after,
            } => (projected, retry_after),
            other => panic!("{other:?}"),
        }
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
        promise.set_backlog(Instant::now(), promise.mark(), 1_000, Duration::ZERO);
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

    /// Accepts while the backlog plus one drains within the promise at 99 %, then refuses with
    /// the seconds until it would, rounded up. Two replicas: prior 1.8 units/s, dispersion 10;
    /// in 60 s: 108 units on average, 108 − 2.326·√(10·108) = 31.56 at 99 %.
    #[tokio::test(start_paused = true)]
    async fn admission_accepts_what_drains_within_the_promise_at_99_percent() {
        let promise = CompletionPromise::new(Duration::from_secs(60), 2).unwrap();
        let now = Instant::now();
        for k in 1..=31u32 {
            match promise.admit(now) {
                // The 202 states the mean: k / rate.
                Admission::Accept { expected } => {
                    assert!((secs(expected) - f64::from(k) / 1.8).abs() < 1e-6, "{k}")
                }
                other => panic!("purchase {k}: {other:?}"),
            }
        }
        let view = promise.view(now);
        assert_eq!((view.backlog, view.admissible), (31, 31));
        assert!((view.dispersion - 10.0).abs() < 1e-9);
        // The 32nd would drain within 60.38 s at 99 %: refused, and 0.44 units of the backlog
        // drain in 0.24 s: retry after 1 s.
        let (projected, retry_after) = refused(promise.admit(now));
        assert!((secs(projected) - 60.38).abs() < 0.01, "{projected:?}");
        assert_eq!(retry_after, Duration::from_secs(1));
        assert_eq!(promise.view(now).backlog, 31, "a refusal adds nothing");

        // A larger backlog (from the database): 81 units take 99.76 s at 99 %, and 49.44 must
        // drain first: Retry-After 28 s.
        promise.set_backlog(now, promise.mark(), 80, Duration::ZERO);
        let (projected, retry_after) = refused(promise.admit(now));
        assert!((secs(projected) - 99.76).abs() < 0.01, "{projected:?}");
        assert_eq!(retry_after, Duration::from_secs(28));
        promise.set_backlog(now, promise.mark(), 30, Duration::ZERO);
        assert!(matches!(promise.admit(now), Admission::Accept { .. }));
        // A sale in doubt joins the backlog beyond the promise, with its mean projection.
        assert_eq!(
            promise.defer_anyway(now),
            Duration::from_secs_f64(32.0 / 1.8)
        );
        assert_eq!(promise.view(now).backlog, 32);
    }

    /// The dispersion index follows the drain: a regular drain (5 units each second) brings it
    /// to its floor of 1 and lets the promise admit nearly rate × promise; a bursty one (90
    /// units in one 10 s stretch, none in the next) keeps it far above the prior.
    #[tokio::test(start_paused = true)]
    async fn the_dispersion_index_follows_how_bursty_the_drain_is() {
        let regular = CompletionPromise::new(Duration::from_secs(60), 2).unwrap();
        regular.set_backlog(Instant::now(), regular.mark(), 100_000, Duration::ZERO);
        for _ in 0..3_000 {
            tokio::time::advance(Duration::from_millis(200)).await;
            regular.completed(Instant::now());
        }
        let view = regular.view(Instant::now());
        assert!(view.dispersion < 1.5, "{view:?}");
        // The rate (with its prior's weight) ≈ 4.2/s: 252.8 in 60 s on average; with D = 1 and
        // the estimate's error (u = 30 / 40², 1 + 60·u = 2.125):
        // 252.8 − 2.326·√(252.8 × 2.125) = 198.8 at 99 % (with the prior's D = 10: 82.3).
        assert!((view.rate_per_second - 4.21).abs() < 0.01, "{view:?}");
        assert_eq!(view.admissible, 198, "{view:?}");

        let bursty = CompletionPromise::new(Duration::from_secs(60), 2).unwrap();
        bursty.set_backlog(Instant::now(), bursty.mark(), 100_000, Duration::ZERO);
        // Ticks of 250 ms (exact in binary, so buckets stay aligned with the bursts).
        for cycle in 0..40 {
            for tick in 0..40 {
                tokio::time::advance(Duration::from_millis(250)).await;
                bursty.view(Instant::now());
                if cycle % 2 == 0 && tick < 10 {
                    for _ in 0..9 {
                        bursty.completed(Instant::now());
                    }
                }
            }
        }
        let view = bursty.view(Instant::now());
        // Buckets of 90 and 0: mean 45, variance about 45² = 2025, dispersion about 45.
        assert!(view.dispersion > 20.0, "{view:?}");
        assert!(view.admissible < 200, "{view:?}");
    }

    /// A low estimate must not shut admission for good: the drain is measured only while
    /// something waits. After a minute of waiting without a completion (every replica failing),
    /// the 99 % bound admits nothing, yet an empty backlog still admits one; its completion
    /// lifts the estimate. (Without this the 100-user benchmark admitted nothing from its first
    /// such stretch on: `admissible_orders` 0, rate stuck at 1.55/s.)
    #[tokio::test(start_paused = true)]
    async fn an_empty_backlog_admits_one_so_the_drain_is_measured_again() {
        let promise = CompletionPromise::new(Duration::from_secs(60), 2).unwrap();
        assert!(matches!(
            promise.admit(Instant::now()),
            Admission::Accept { .. }
        ));
        tokio::time::advance(Duration::from_secs(60)).await;
        promise.completed(Instant::now());
        let view = promise.view(Instant::now());
        assert_eq!((view.backlog, view.admissible), (0, 0), "{view:?}");
        assert!(matches!(
            promise.admit(Instant::now()),
            Admission::Accept { .. }
        ));
        assert!(
            matches!(promise.admit(Instant::now()), Admission::Refuse { .. }),
            "only one while the bound admits none"
        );
        // It completes, and so do the next ones, 4 a second for two minutes: the estimate
        // recovers.
        for _ in 0..480 {
            tokio::time::advance(Duration::from_millis(250)).await;
            promise.completed(Instant::now());
            assert!(matches!(
                promise.admit(Instant::now()),
                Admission::Accept { .. }
            ));
        }
        let view = promise.view(Instant::now());
        assert!(view.admissible > 50, "{view:?}");
    }

    /// Purchases queue behind the deferred sales only once the oldest has waited the
    /// threshold; ends take the oldest; a database count corrects the instants (an order older
    /// than this process knows, e.g. from before a restart).
    #[tokio::test(start_paused = true)]
    async fn purchases_queue_once_the_oldest_deferred_sale_has_waited() {
        let promise = CompletionPromise::new(Duration::from_secs(60), 2)
            .unwrap()
            .queueing_after(Duration::from_secs(1));
        assert_eq!(promise.queue_ahead(Instant::now()), None, "nothing waits");
        assert!(matches!(
            promise.admit(Instant::now()),
            Admission::Accept { .. }
        ));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(matches!(
            promise.admit(Instant::now()),
            Admission::Accept { .. }
        ));
        assert_eq!(
            promise.queue_ahead(Instant::now()),
            None,
            "the oldest waited 0.6 s"
        );
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(promise.queue_ahead(Instant::now()), Some(2));
        promise.completed(Instant::now()); // the oldest ended; the other waited 0.4 s
        assert_eq!(promise.queue_ahead(Instant::now()), None);
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(promise.queue_ahead(Instant::now()), Some(1));
        promise.completed(Instant::now());
        assert_eq!(promise.queue_ahead(Instant::now()), None, "nothing waits");

        // After a restart the database holds three orders, the oldest 30 s old.
        promise.set_backlog(Instant::now(), promise.mark(), 3, Duration::from_secs(30));
        assert_eq!(promise.queue_ahead(Instant::now()), Some(3));
        // Then it says the oldest is 0.2 s old (the others ended elsewhere): no queue.
        promise.set_backlog(
            Instant::now(),
            promise.mark(),
            1,
            Duration::from_millis(200),
        );
        assert_eq!(promise.queue_ahead(Instant::now()), None);
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
        promise.set_backlog(now, mark, 0, Duration::ZERO); // the count lands after the admission
        assert_eq!(promise.view(now).backlog, 1);
        // A count started while the order is being written is not applied either way.
        let mark = promise.mark();
        promise.set_backlog(now, mark, 0, Duration::ZERO);
        assert_eq!(promise.view(now).backlog, 1);
        promise.set_backlog(now, mark, 2, Duration::ZERO);
        assert_eq!(promise.view(now).backlog, 1);
        drop(admitted); // written: a quiet count is the truth again
        let mark = promise.mark();
        promise.set_backlog(now, mark, 3, Duration::ZERO);
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
