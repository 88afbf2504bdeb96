//! Hedged requests: if the first attempt has not answered after `delay`, send a second one and
//! take whichever answers first successfully.
//!
//! Why: tail latency. When a small fraction of requests are lost or stall (a dropped packet, a
//! GC pause, a replica that swallows the request), waiting for a timeout and then retrying
//! costs the whole timeout; a hedge sent at about the p95 latency costs ~5 % extra load and
//! cuts the tail to roughly `delay + median`. The hedge is itself a retry, so it can spend from
//! a [`RetryBudget`]: under a real outage hedging stops instead of doubling traffic.
//!
//! Both attempts are polled in the caller's task (no spawn): the loser is dropped, which
//! cancels it. Only use hedging for idempotent calls.
//!
//! The loser is still accounted for by the breakers inside it: a first attempt that loses to
//! the hedge is marked superseded, so its breaker permit counts it as a failure (it did not
//! answer within the delay plus the hedge's whole latency; Envoy's router likewise reports a
//! per-try timeout to the host's outlier detector as a timeout when it hedges). A hedge that
//! loses to the first attempt started later and proved nothing: it counts only as slow if it
//! already ran past its breaker's slow-call threshold, else as cancelled. Without this, a
//! replica that swallows every request never trips its breaker while hedging hides it, and
//! keeps getting first attempts that each pay the hedge delay. Pick the delay at about the
//! p95 latency so that a healthy replica's lost races (about 5 % of its calls) stay far
//! below the breaker's failure-rate threshold.

mod future;
mod layer;

use std::future::Future;
use std::time::Duration;

use metrics::Counter;

pub use self::future::ResponseFuture;
pub use self::layer::{Hedge, HedgeLayer};
use crate::attempt::{self, Fate};
use crate::error::ResilienceError;
use crate::retry::RetryBudget;

/// When to send the hedge.
#[derive(Debug, Clone)]
pub struct HedgePolicy {
    delay: Duration,
    budget: Option<RetryBudget>,
}

impl HedgePolicy {
    /// Send the hedge when the first attempt has not answered after `delay` (pick about the
    /// p95 latency of the dependency).
    pub fn after(delay: Duration) -> Self {
        HedgePolicy {
            delay,
            budget: None,
        }
    }

    /// Only hedge while `budget` allows; each call deposits into it. Use a budget of its own:
    /// sharing the retry policy's would count each call twice.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The hedge delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Runs `attempt` once, and a second time if the first is still pending after the delay.
    /// The first `Ok` wins; if both fail, the error of the one that failed last is returned.
    /// A first attempt dropped because the hedge won is marked superseded (module docs).
    pub(crate) async fn run<T, E, F, Fut>(
        &self,
        metrics: &HedgeMetrics,
        mut attempt: F,
    ) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ResilienceError<E>>>,
    {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        let primary_fate = Fate::nested();
        let primary = attempt::scope(primary_fate.clone(), attempt::numbered(1, attempt()));
        tokio::pin!(primary);
        let hedge_timer = tokio::time::sleep(self.delay);
        tokio::select! {
            biased;
            result = &mut primary => {
                metrics.not_needed.increment(1);
                return result;
            }
            () = hedge_timer => {}
        }
        if let Some(budget) = &self.budget
            && !budget.try_withdraw()
        {
            metrics.budget_exhausted.increment(1);
            tracing::info!(
                name = metrics.name.as_ref(),
                "hedge not sent: retry budget exhausted"
            );
            return primary.await;
        }
        // Events of the enclosing span (the purchase's), next to the two attempt spans.
        tracing::info!(name = metrics.name.as_ref(), delay = ?self.delay, "hedge fired");
        let hedge = attempt::scope(Fate::nested(), attempt::numbered(2, attempt()));
        tokio::pin!(hedge);
        let primary_failed_first = tokio::select! {
            biased;
            result = &mut primary => match result {
                Ok(value) => {
                    metrics.primary_won.increment(1);
                    return Ok(value);
                }
                Err(_) => true,
            },
            result = &mut hedge => match result {
                Ok(value) => {
                    metrics.hedge_won.increment(1);
                    tracing::info!(name = metrics.name.as_ref(), "hedge won");
                    // The first attempt, still pending, is dropped on return: it lost a race it
                    // started first.
                    primary_fate.supersede();
                    return Ok(value);
                }
                Err(_) => false,
            },
        };
        let rest = if primary_failed_first {
            hedge.await
        } else {
            primary.await
        };
        match rest {
            Ok(value) => {
                if primary_failed_first {
                    metrics.hedge_won.increment(1);
                    tracing::info!(name = metrics.name.as_ref(), "hedge won");
                } else {
                    metrics.primary_won.increment(1);
                }
                Ok(value)
            }
            Err(err) => {
                metrics.both_failed.increment(1);
                Err(err)
            }
        }
    }
}

/// `resilience_hedge_total{name,outcome}` handles. Outcomes: `not_needed` (answered before the
/// delay), `primary_won`, `hedge_won`, `both_failed`, `budget_exhausted` (no hedge sent).
#[derive(Debug, Clone)]
pub(crate) struct HedgeMetrics {
    /// The policy's name, for the events in traces.
    pub(crate) name: std::sync::Arc<str>,
    not_needed: Counter,
    primary_won: Counter,
    hedge_won: Counter,
    both_failed: Counter,
    budget_exhausted: Counter,
}

impl HedgeMetrics {
    pub(crate) fn new(name: &str) -> Self {
        let counter = |outcome: &'static str| metrics::counter!("resilience_hedge_total", "name" => name.to_owned(), "outcome" => outcome);
        HedgeMetrics {
            name: name.into(),
            not_needed: counter("not_needed"),
            primary_won: counter("primary_won"),
            hedge_won: counter("hedge_won"),
            both_failed: counter("both_failed"),
            budget_exhausted: counter("budget_exhausted"),
        }
    }
}
