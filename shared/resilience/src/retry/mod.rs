//! Retry with capped exponential backoff, full jitter, a maximum number of attempts, a
//! classifier of what is worth retrying, and a [`RetryBudget`].
//!
//! Why a budget: per-call attempt limits alone multiply load on a dependency that is already
//! failing (3 attempts = 3x traffic exactly when it hurts most). The budget (tower's
//! `TpsBudget`, the Finagle/linkerd design) allows retries only up to a ratio of recent
//! requests plus a small floor, so a dead dependency sees ~`1 + ratio` times normal traffic
//! instead of a storm.
//!
//! Why full jitter: with `delay = random(0, min(cap, base * factor^n))` clients that failed
//! together do not retry together (see the AWS "Exponential Backoff And Jitter" analysis).
//! The capped exponential schedule itself comes from `backon`; `backon`'s own jitter adds
//! `random(0, d)` on top of `d`, which is not full jitter, so jitter is applied here.
//!
//! Retries never outlive the request deadline: a retry whose backoff would end past the
//! deadline is not attempted and the last error is returned at once.

mod budget;
mod future;
mod layer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use metrics::Counter;
use tokio::time::Instant;

pub use self::budget::RetryBudget;
pub use self::future::ResponseFuture;
pub use self::layer::{Retry, RetryLayer};
use crate::error::ResilienceError;

type Classifier<E> = Arc<dyn Fn(&ResilienceError<E>) -> bool + Send + Sync>;

/// How the delay between attempts is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Exactly the exponential delay (deterministic; useful in tests).
    None,
    /// Uniform in `[0, delay]` (the default: spreads retries best).
    #[default]
    Full,
    /// Uniform in `[delay / 2, delay]`.
    Equal,
}

impl Jitter {
    fn apply(self, delay: Duration) -> Duration {
        match self {
            Jitter::None => delay,
            Jitter::Full => delay.mul_f64(rand::random::<f64>()),
            Jitter::Equal => delay / 2 + (delay / 2).mul_f64(rand::random::<f64>()),
        }
    }
}

/// When and how often to retry a failed call whose error type is `E`.
pub struct RetryPolicy<E> {
    backoff: ExponentialBuilder,
    max_attempts: u32,
    jitter: Jitter,
    budget: Option<RetryBudget>,
    classifier: Classifier<E>,
}

impl<E> Clone for RetryPolicy<E> {
    fn clone(&self) -> Self {
        RetryPolicy {
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            jitter: self.jitter,
            budget: self.budget.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<E> std::fmt::Debug for RetryPolicy<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("jitter", &self.jitter)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl<E> RetryPolicy<E> {
    /// Up to 3 attempts; the n-th retry waits a full-jittered `base * 2^(n-1)`, capped at 10 s.
    /// Retries timeouts and errors of the wrapped call, never rejections (an open breaker, a
    /// full bulkhead or an exhausted budget is a reason to back off, not to try again).
    pub fn exponential(base: Duration) -> Self {
        RetryPolicy {
            backoff: ExponentialBuilder::default()
                .with_min_delay(base)
                .with_max_delay(Duration::from_secs(10))
                .with_factor(2.0)
                .with_max_times(2),
            max_attempts: 3,
            jitter: Jitter::Full,
            budget: None,
            classifier: Arc::new(|err: &ResilienceError<E>| {
                matches!(err, ResilienceError::Timeout | ResilienceError::Inner(_))
            }),
        }
    }

    /// Total attempts including the first (values below 1 are treated as 1: no retry).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self.backoff = self
            .backoff
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        self
    }

    /// Cap on a single delay (before jitter).
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.backoff = self.backoff.with_max_delay(max);
        self
    }

    /// Growth factor between delays (values below 1, and NaN, are treated as 1).
    pub fn factor(mut self, factor: f32) -> Self {
        let factor = if factor >= 1.0 { factor } else { 1.0 };
        self.backoff = self.backoff.with_factor(factor);
        self
    }

    /// How delays are randomised (default [`Jitter::Full`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Spend retries from `budget` (shared between the policies that should share it).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Retry only errors for which `retryable` returns true.
    pub fn retry_if<F>(mut self, retryable: F) -> Self
    where
        F: Fn(&ResilienceError<E>) -> bool + Send + Sync + 'static,
    {
        self.classifier = Arc::new(retryable);
        self
    }

    /// Whether `err` is retryable according to the classifier.
    pub fn is_retryable(&self, err: &ResilienceError<E>) -> bool {
        (self.classifier)(err)
    }

    /// Runs `attempt` until it succeeds, the error is not retryable, attempts, schedule or
    /// budget run out, or the next try would start after `deadline`.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        metrics: &RetryMetrics,
        deadline: Option<Instant>,
        mut attempt: F,
    ) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ResilienceError<E>>>,
    {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        let mut retries = 0u32;
        let mut schedule = None;
        loop {
            let err = match crate::attempt::numbered(retries + 1, attempt()).await {
                Ok(value) => {
                    metrics.success(retries);
                    return Ok(value);
                }
                Err(err) => err,
            };
            if retries + 1 >= self.max_attempts || !self.is_retryable(&err) {
                metrics.failed(retries);
                return Err(err);
            }
            let schedule = schedule.get_or_insert_with(|| self.backoff.build());
            let Some(delay) = schedule.next() else {
                metrics.failed(retries);
                return Err(err);
            };
            let delay = self.jitter.apply(round_to_micros(delay));
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                tracing::debug!(
                    error = err.kind(),
                    "no time left for a retry before the deadline"
                );
                metrics.failed(retries);
                return Err(err);
            }
            if let Some(budget) = &self.budget
                && !budget.try_withdraw()
            {
                // An event of the enclosing span (the purchase's): why no replica was tried next.
                tracing::info!(
                    name = metrics.name.as_ref(),
                    error = err.kind(),
                    "retry budget exhausted"
                );
                metrics.budget_exhausted.increment(1);
                return Err(ResilienceError::BudgetExhausted);
            }
            tracing::debug!(retry = retries + 1, ?delay, error = err.kind(), "retrying");
            tokio::time::sleep(delay).await;
            retries += 1;
        }
    }
}

/// backon computes delays in `f32` (`100 ms * 2.0` is `200.000003 ms`), and the tokio timer
/// rounds any fraction of a millisecond up; rounding to whole microseconds keeps
/// `Jitter::None` schedules exact.
fn round_to_micros(delay: Duration) -> Duration {
    let micros = (delay.as_nanos() + 500) / 1_000;
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

/// `resilience_retry_calls_total{name,kind}` handles, registered once per policy.
#[derive(Debug, Clone)]
pub(crate) struct RetryMetrics {
    /// The policy's name, for the events in traces.
    pub(crate) name: std::sync::Arc<str>,
    success_without_retry: Counter,
    success_with_retry: Counter,
    failed_with_retry: Counter,
    failed_without_retry: Counter,
    budget_exhausted: Counter,
}

impl RetryMetrics {
    pub(crate) fn new(name: &str) -> Self {
        let counter = |kind: &'static str| metrics::counter!("resilience_retry_calls_total", "name" => name.to_owned(), "kind" => kind);
        RetryMetrics {
            name: name.into(),
            success_without_retry: counter("success_without_retry"),
            success_with_retry: counter("success_with_retry"),
            failed_with_retry: counter("failed_with_retry"),
            failed_without_retry: counter("failed_without_retry"),
            budget_exhausted: counter("budget_exhausted"),
        }
    }

    fn success(&self, retries: u32) {
        if retries == 0 {
            self.success_without_retry.increment(1);
        } else {
            self.success_with_retry.increment(1);
        }
    }

    fn failed(&self, retries: u32) {
        if retries == 0 {
            self.failed_without_retry.increment(1);
        } else {
            self.failed_with_retry.increment(1);
        }
    }
}

/// The delay before retry number `attempts + 1` of a *durable* retry loop: uniform in
/// `[0, min(cap, base * 2^attempts)]` ("full jitter", AWS Architecture Blog, 2015).
///
/// Outboxes and queues store their attempt count in a database and must compute the next delay
/// after a restart from that count alone; a `backon` iterator lives in memory and would start
/// over, so this is a formula. Negative counts are treated as 0.
pub fn full_jitter(attempts: i64, base: Duration, cap: Duration) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    let ceiling = base.saturating_mul(1u32 << exp).min(cap);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=ms))
}

#[cfg(test)]
mod full_jitter_tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_growing_cap_and_spreads() {
        let (base, cap) = (Duration::from_millis(200), Duration::from_secs(10));
        for attempts in 0..30 {
            let ceiling = base.saturating_mul(1 << attempts.min(20)).min(cap);
            let delays: Vec<Duration> =
                (0..200).map(|_| full_jitter(attempts, base, cap)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling));
            // Jittered: 200 draws over a range of >= 200 ms are not all equal.
            assert!(delays.iter().any(|d| *d != delays[0]), "attempt {attempts}");
        }
        assert_eq!(full_jitter(-3, Duration::ZERO, cap), Duration::ZERO);
    }
}
