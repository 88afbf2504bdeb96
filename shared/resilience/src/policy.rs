//! [`Policy`]: every policy for one downstream call, composed in a fixed, sensible order so a
//! call site reads as a sentence:
//!
//! ```text
//! deadline ▸ retry ▸ hedge ▸ bulkhead ▸ breaker ▸ timeout ▸ your call
//! ```
//!
//! Why this order: the timeout is innermost so a timed-out attempt counts as a breaker failure;
//! the breaker is inside the bulkhead so a rejected call holds no slot; the bulkhead is per
//! attempt so retries do not hold a slot while backing off; the hedge races two attempts, each
//! through bulkhead, breaker and timeout; retry wraps everything and spends the budget; the
//! deadline (explicit or task-local, see [`with_deadline`](crate::timeout::with_deadline))
//! bounds the whole thing, backoff sleeps included. The order does not depend on the order of
//! the builder calls.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::breaker::{CircuitBreaker, Outcome};
use crate::bulkhead::Bulkhead;
use crate::error::ResilienceError;
use crate::hedge::{HedgeMetrics, HedgePolicy};
use crate::retry::{RetryMetrics, RetryPolicy};
use crate::timeout::{TimeoutFuture, current_deadline};

type FailureIf<E> = Arc<dyn Fn(&E) -> bool + Send + Sync>;

/// The resilience policies for one downstream call whose error type is `E`.
/// Build once (e.g. in application state) and share: cloning is cheap.
pub struct Policy<E> {
    name: Arc<str>,
    timeout: Option<Duration>,
    breaker: Option<CircuitBreaker>,
    bulkhead: Option<Bulkhead>,
    retry: Option<(RetryPolicy<E>, RetryMetrics)>,
    hedge: Option<(HedgePolicy, HedgeMetrics)>,
    failure_if: Option<FailureIf<E>>,
    span_attempts: bool,
}

impl<E> Clone for Policy<E> {
    fn clone(&self) -> Self {
        Policy {
            name: self.name.clone(),
            timeout: self.timeout,
            breaker: self.breaker.clone(),
            bulkhead: self.bulkhead.clone(),
            retry: self.retry.clone(),
            hedge: self.hedge.clone(),
            failure_if: self.failure_if.clone(),
            span_attempts: self.span_attempts,
        }
    }
}

impl<E> std::fmt::Debug for Policy<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker)
            .field("bulkhead", &self.bulkhead)
            .field("retry", &self.retry.as_ref().map(|(r, _)| r))
            .field("hedge", &self.hedge.as_ref().map(|(h, _)| h))
            .finish_non_exhaustive()
    }
}

impl<E> Policy<E> {
    /// An empty policy; `name` labels the retry and hedge metrics (e.g. `"store.sell"`).
    pub fn named(name: impl Into<Arc<str>>) -> Self {
        Policy {
            name: name.into(),
            timeout: None,
            breaker: None,
            bulkhead: None,
            retry: None,
            hedge: None,
            failure_if: None,
            span_attempts: false,
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Each attempt gets at most `timeout` (and never more than the deadline leaves).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Guard attempts with `breaker`.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Run attempts inside `bulkhead`.
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Retry failed calls according to `retry`.
    pub fn retry(mut self, retry: RetryPolicy<E>) -> Self {
        let metrics = RetryMetrics::new(&self.name);
        self.retry = Some((retry, metrics));
        self
    }

    /// Hedge slow attempts according to `hedge` (idempotent calls only).
    pub fn hedge(mut self, hedge: HedgePolicy) -> Self {
        let metrics = HedgeMetrics::new(&self.name);
        self.hedge = Some((hedge, metrics));
        self
    }

    /// Which errors of the call count as failures for the breaker (default: all). A
    /// "not found" is usually the dependency working correctly, not failing. Timeouts always
    /// count as failures.
    pub fn failure_if<F>(mut self, is_failure: F) -> Self
    where
        F: Fn(&E) -> bool + Send + Sync + 'static,
    {
        self.failure_if = Some(Arc::new(is_failure));
        self
    }

    /// Runs each attempt in its own `tracing` span (target `ftshop::trace::attempt`, name
    /// `attempt`),
    /// for the trace of a call: `otel.name` `attempt <policy name>` (`attempt store-1.sell`),
    /// `resilience.policy`, `resilience.attempt` (1-based number within the enclosing retry or
    /// hedge), `resilience.breaker.state` when the attempt began, and `resilience.outcome`:
    /// `success`, `failure` (counted against the breaker), `error` (an error the breaker does
    /// not count, a 404 say), `timeout`, `breaker_open` (rejected, with a `breaker rejected`
    /// event; nothing was sent) or `bulkhead_full`. Meant for policies guarding one replica of
    /// a remote dependency; with no `tracing` subscriber interested the span costs nothing.
    pub fn span_attempts(mut self) -> Self {
        self.span_attempts = true;
        self
    }

    /// The breaker, if any (for status endpoints).
    pub fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref()
    }

    /// Runs `call` under every configured policy. `call` is invoked once per attempt (retries
    /// and hedges invoke it again), so it must build a fresh future each time.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ResilienceError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(None, &call).await
    }

    /// Like [`call`](Self::call), bounded by `deadline` as well (and by the task-local deadline
    /// if that is earlier).
    pub async fn call_with_deadline<T, F, Fut>(
        &self,
        deadline: Instant,
        call: F,
    ) -> Result<T, ResilienceError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(Some(deadline), &call).await
    }

    async fn run<T, F, Fut>(
        &self,
        explicit: Option<Instant>,
        call: &F,
    ) -> Result<T, ResilienceError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let deadline = match (explicit, current_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match &self.retry {
            Some((retry, metrics)) => {
                retry
                    .run(metrics, deadline, || self.hedged(deadline, call))
                    .await
            }
            None => self.hedged(deadline, call).await,
        }
    }

    async fn hedged<T, F, Fut>(
        &self,
        deadline: Option<Instant>,
        call: &F,
    ) -> Result<T, ResilienceError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        match &self.hedge {
            Some((hedge, metrics)) => hedge.run(metrics, || self.attempt(deadline, call)).await,
            None => self.attempt(deadline, call).await,
        }
    }

    async fn attempt<T, F, Fut>(
        &self,
        deadline: Option<Instant>,
        call: &F,
    ) -> Result<T, ResilienceError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if !self.span_attempts {
            return self.attempt_unspanned(deadline, call).await;
        }
        use tracing::Instrument;
        let span = tracing::info_span!(
            target: "ftshop::trace::attempt",
            "attempt",
            otel.name = format_args!("attempt {}", self.name),
            otel.status_code = tracing::field::Empty,
            resilience.policy = &*self.name,
            resilience.attempt = crate::attempt::number(),
            resilience.breaker.state = self.breaker.as_ref().map(|b| b.state().as_str()),
            resilience.outcome = tracing::field::Empty,
        );
        let result = self
            .attempt_unspanned(deadline, call)
            .instrument(span.clone())
            .await;
        if !span.is_disabled() {
            let outcome = match &result {
                Ok(_) => "success",
                Err(ResilienceError::Inner(err)) => {
                    if self.failure_if.as_ref().is_none_or(|f| f(err)) {
                        "failure"
                    } else {
                        "error"
                    }
                }
                Err(ResilienceError::Timeout) => "timeout",
                Err(ResilienceError::BreakerOpen { .. }) => "breaker_open",
                Err(ResilienceError::BulkheadFull) => "bulkhead_full",
                Err(_) => "other",
            };
            span.record("resilience.outcome", outcome);
            if !matches!(outcome, "success" | "error") {
                span.record("otel.status_code", "error");
            }
        }
        result
    }

    async fn attempt_unspanned<T, F, Fut>(
        &self,
        deadline: Option<Instant>,
        call: &F,
    ) -> Result<T, ResilienceError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // The attempt's budget starts now: waiting for a bulkhead slot spends it too.
        let attempt_deadline = match (self.timeout, deadline) {
            (None, None) => None,
            (timeout, deadline) => {
                let now = Instant::now();
                let own = timeout.and_then(|t| now.checked_add(t));
                let effective = match (own, deadline) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).unwrap_or(now),
                };
                if effective <= now {
                    // No budget left: do not touch the dependency.
                    return Err(ResilienceError::Timeout);
                }
                Some(effective)
            }
        };
        let _slot = match &self.bulkhead {
            Some(bulkhead) => {
                let slot = match attempt_deadline {
                    Some(d) => TimeoutFuture::new(bulkhead.acquire(), Some(d))
                        .await
                        .map_err(|_elapsed| ResilienceError::Timeout)?,
                    None => bulkhead.acquire().await,
                };
                Some(slot.map_err(|_| ResilienceError::BulkheadFull)?)
            }
            None => None,
        };
        let permit = match &self.breaker {
            Some(breaker) => Some(breaker.try_acquire().map_err(|open| {
                tracing::info!(breaker = %open.name, "breaker rejected");
                ResilienceError::BreakerOpen { name: open.name }
            })?),
            None => None,
        };
        // The call's future is boxed: every layer above (hedge, retry, an outer policy's
        // attempt) then holds a pointer instead of the whole future, and futures are moved by
        // value at each `.await` of a new one. Unboxed, a hedged failover sale in ecommerce was
        // a 23 KB future copied at each of its ~12 layers: `memmove` was 5.5 % of ecommerce's
        // CPU, 3.5 % after this (docs/benchmarks/happy-path.md); one allocation per attempt
        // costs less.
        let result = match TimeoutFuture::new(Box::pin(call()), attempt_deadline).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(ResilienceError::Inner(err)),
            Err(_elapsed) => Err(ResilienceError::Timeout),
        };
        if let Some(permit) = permit {
            let failure = match &result {
                Ok(_) => false,
                Err(ResilienceError::Inner(err)) => self
                    .failure_if
                    .as_ref()
                    .is_none_or(|is_failure| is_failure(err)),
                Err(_) => true,
            };
            permit.record(if failure {
                Outcome::Failure
            } else {
                Outcome::Success
            });
        }
        result
    }
}
