//! Timeout, deadline, retry (backoff, jitter, budget, classifier), hedge, bulkhead and their
//! composition in `Policy`, all on a paused tokio clock.

#![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ftshop_resilience::{
    BreakerConfig, Bulkhead, CircuitBreaker, HedgePolicy, Jitter, Policy, ResilienceError,
    RetryBudget, RetryPolicy, State, remaining, with_deadline,
};
use tokio::time::{Instant, sleep};

#[derive(Debug, Clone, PartialEq)]
enum Downstream {
    Unavailable,
    NotFound,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A fake dependency: answers after `latency`, failing the first `failures` calls.
#[derive(Clone)]
struct Fake {
    calls: Arc<AtomicU32>,
    failures: u32,
    latency: Duration,
}

impl Fake {
    fn new(failures: u32, latency: Duration) -> Self {
        Fake {
            calls: Arc::new(AtomicU32::new(0)),
            failures,
            latency,
        }
    }

    async fn call(&self) -> Result<u32, Downstream> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if !self.latency.is_zero() {
            sleep(self.latency).await;
        }
        if n <= self.failures {
            Err(Downstream::Unavailable)
        } else {
            Ok(n)
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn breaker(name: &str) -> CircuitBreaker {
    CircuitBreaker::new(
        name,
        BreakerConfig::builder()
            .count_window(4)
            .minimum_calls(4)
            .wait_in_open(Duration::from_secs(5))
            .build()
            .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn timeout_fails_a_slow_call_at_exactly_the_timeout() {
    let policy: Policy<Downstream> = Policy::named("t").timeout(ms(100));
    let fake = Fake::new(0, Duration::from_secs(2));
    let start = Instant::now();
    let result = policy.call(|| fake.call()).await;
    assert_eq!(result, Err(ResilienceError::Timeout));
    assert_eq!(start.elapsed(), ms(100));
}

#[tokio::test(start_paused = true)]
async fn a_ready_value_wins_even_with_a_timeout() {
    let policy: Policy<Downstream> = Policy::named("t").timeout(ms(1));
    assert_eq!(policy.call(|| async { Ok(7) }).await, Ok(7));
}

#[tokio::test(start_paused = true)]
async fn task_local_deadline_cuts_every_hop_and_is_never_extended() {
    let policy: Policy<Downstream> = Policy::named("t").timeout(Duration::from_secs(1));
    let start = Instant::now();
    let result = with_deadline(start + ms(300), async {
        assert_eq!(remaining(), Some(ms(300)));
        let quick = Fake::new(0, ms(200));
        let fast = policy.call(|| quick.call()).await;
        assert!(fast.is_ok());
        // Only 100 ms left for the second hop, although its own timeout is 1 s; an inner
        // scope cannot extend the outer deadline.
        let slow = Fake::new(0, ms(500));
        with_deadline(start + Duration::from_secs(10), async {
            policy.call(|| slow.call()).await
        })
        .await
    })
    .await;
    assert_eq!(result, Err(ResilienceError::Timeout));
    assert_eq!(start.elapsed(), ms(300));
}

#[tokio::test(start_paused = true)]
async fn an_expired_deadline_does_not_touch_the_dependency() {
    let policy: Policy<Downstream> = Policy::named("t");
    let fake = Fake::new(0, ms(1));
    let deadline = Instant::now();
    let result = policy.call_with_deadline(deadline, || fake.call()).await;
    assert_eq!(result, Err(ResilienceError::Timeout));
    assert_eq!(fake.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn retry_backs_off_exponentially_then_succeeds() {
    let metrics = common::Metrics::install();
    let policy: Policy<Downstream> = Policy::named("store.sell").retry(
        RetryPolicy::exponential(ms(100))
            .max_attempts(4)
            .jitter(Jitter::None),
    );
    let fake = Fake::new(3, Duration::ZERO);
    let start = Instant::now();
    assert_eq!(policy.call(|| fake.call()).await, Ok(4));
    assert_eq!(fake.calls(), 4);
    assert_eq!(start.elapsed(), ms(100 + 200 + 400));
    let snap = metrics.snapshot();
    let kind = |k| {
        common::value(
            &snap,
            "resilience_retry_calls_total",
            &[("kind", k), ("name", "store.sell")],
        )
    };
    assert_eq!(kind("success_with_retry"), Some(1.0));
    assert_eq!(kind("success_without_retry"), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_max_attempts_with_the_last_error() {
    let policy: Policy<Downstream> = Policy::named("r").retry(
        RetryPolicy::exponential(ms(10))
            .max_attempts(3)
            .jitter(Jitter::None),
    );
    let fake = Fake::new(10, Duration::ZERO);
    let result = policy.call(|| fake.call()).await;
    assert_eq!(result, Err(ResilienceError::Inner(Downstream::Unavailable)));
    assert_eq!(fake.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn delays_are_capped_and_full_jitter_stays_within_bounds() {
    for _ in 0..20 {
        let policy: Policy<Downstream> = Policy::named("r").retry(
            RetryPolicy::exponential(ms(100))
                .max_attempts(5)
                .max_delay(ms(250)),
        );
        let fake = Fake::new(10, Duration::ZERO);
        let start = Instant::now();
        let _ = policy.call(|| fake.call()).await;
        // Uncapped: 100 + 200 + 400 + 800; capped: 100 + 200 + 250 + 250 = 800 at most.
        assert!(start.elapsed() <= ms(800), "{:?}", start.elapsed());
    }
    let policy: Policy<Downstream> = Policy::named("r").retry(
        RetryPolicy::exponential(ms(100))
            .max_attempts(5)
            .max_delay(ms(250))
            .jitter(Jitter::None),
    );
    let start = Instant::now();
    let failing = Fake::new(10, Duration::ZERO);
    let _ = policy.call(|| failing.call()).await;
    assert_eq!(start.elapsed(), ms(800));
}

#[tokio::test(start_paused = true)]
async fn the_classifier_decides_what_is_retried() {
    let policy: Policy<Downstream> = Policy::named("r").retry(
        RetryPolicy::exponential(ms(10))
            .retry_if(|e| matches!(e, ResilienceError::Inner(Downstream::Unavailable))),
    );
    let calls = AtomicU32::new(0);
    let result = policy
        .call(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<u32, _>(Downstream::NotFound) }
        })
        .await;
    assert_eq!(result, Err(ResilienceError::Inner(Downstream::NotFound)));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a 404 is not retried");
}

#[tokio::test(start_paused = true)]
async fn retry_budget_stops_a_retry_storm() {
    let metrics = common::Metrics::install();
    // 10 % of requests may be retried, no floor.
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.1).unwrap();
    let policy: Policy<Downstream> = Policy::named("budgeted").retry(
        RetryPolicy::exponential(ms(1))
            .max_attempts(3)
            .budget(budget),
    );
    let fake = Fake::new(u32::MAX, Duration::ZERO); // the dependency is down
    let mut exhausted = 0;
    for _ in 0..100 {
        if policy.call(|| fake.call()).await == Err(ResilienceError::BudgetExhausted) {
            exhausted += 1;
        }
    }
    // Without a budget: 300 calls. With it: 100 first attempts + about 10 retries.
    assert!(fake.calls() <= 112, "calls = {}", fake.calls());
    assert!(exhausted >= 85, "exhausted = {exhausted}");
    let snap = metrics.snapshot();
    assert_eq!(
        common::value(
            &snap,
            "resilience_retry_calls_total",
            &[("kind", "budget_exhausted"), ("name", "budgeted")],
        ),
        Some(f64::from(exhausted))
    );
}

#[tokio::test(start_paused = true)]
async fn retry_never_sleeps_past_the_deadline() {
    let policy: Policy<Downstream> = Policy::named("r").retry(
        RetryPolicy::exponential(ms(400))
            .max_attempts(5)
            .jitter(Jitter::None),
    );
    let fake = Fake::new(10, ms(50));
    let start = Instant::now();
    let result = policy
        .call_with_deadline(start + Duration::from_secs(1), || fake.call())
        .await;
    assert_eq!(result, Err(ResilienceError::Inner(Downstream::Unavailable)));
    // 50 + 400 + 50 = 500; the next backoff (800) would end past 1 s, so stop now.
    assert_eq!(start.elapsed(), ms(500));
    assert_eq!(fake.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_is_not_retried_and_timeouts_count_as_failures() {
    let b = breaker("store-1");
    let policy: Policy<Downstream> = Policy::named("store.sell")
        .timeout(ms(100))
        .breaker(b.clone())
        .retry(RetryPolicy::exponential(ms(10)).max_attempts(2));
    let slow = Fake::new(0, Duration::from_secs(5));
    for _ in 0..2 {
        // Each call: 2 attempts, both time out = 2 failures.
        assert_eq!(
            policy.call(|| slow.call()).await,
            Err(ResilienceError::Timeout)
        );
    }
    assert_eq!(b.state(), State::Open);
    let before = slow.calls();
    let result = policy.call(|| slow.call()).await;
    assert!(matches!(result, Err(ResilienceError::BreakerOpen { .. })));
    assert_eq!(slow.calls(), before, "rejected without calling or retrying");
}

#[tokio::test(start_paused = true)]
async fn failure_if_keeps_expected_errors_out_of_the_breaker() {
    let b = breaker("store-1");
    let policy: Policy<Downstream> = Policy::named("store.product")
        .breaker(b.clone())
        .failure_if(|e| *e != Downstream::NotFound);
    for _ in 0..10 {
        let r = policy
            .call(|| async { Err::<u32, _>(Downstream::NotFound) })
            .await;
        assert_eq!(r, Err(ResilienceError::Inner(Downstream::NotFound)));
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.status().failure_rate, 0.0);
}

#[tokio::test(start_paused = true)]
async fn hedge_sends_a_second_attempt_and_the_first_answer_wins() {
    let metrics = common::Metrics::install();
    let policy: Policy<Downstream> =
        Policy::named("store.product").hedge(HedgePolicy::after(ms(50)));
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let result = policy
        .call(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                // The first attempt is "lost" (omission fault); the hedge answers in 20 ms.
                sleep(if n == 0 {
                    Duration::from_secs(60)
                } else {
                    ms(20)
                })
                .await;
                Ok::<_, Downstream>(n)
            }
        })
        .await;
    assert_eq!(result, Ok(1));
    assert_eq!(start.elapsed(), ms(70));
    assert_eq!(
        common::value(
            &metrics.snapshot(),
            "resilience_hedge_total",
            &[("name", "store.product"), ("outcome", "hedge_won")],
        ),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn no_hedge_when_the_first_attempt_is_fast_enough() {
    let policy: Policy<Downstream> = Policy::named("h").hedge(HedgePolicy::after(ms(50)));
    let fake = Fake::new(0, ms(49));
    assert_eq!(policy.call(|| fake.call()).await, Ok(1));
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn hedge_waits_for_the_other_attempt_when_one_fails() {
    let policy: Policy<Downstream> = Policy::named("h").hedge(HedgePolicy::after(ms(10)));
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let result = policy
        .call(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    sleep(ms(30)).await;
                    Err(Downstream::Unavailable)
                } else {
                    sleep(ms(100)).await;
                    Ok(n)
                }
            }
        })
        .await;
    assert_eq!(result, Ok(1));
    assert_eq!(start.elapsed(), ms(110));

    let both_fail = policy
        .call(|| async {
            sleep(ms(20)).await;
            Err::<u32, _>(Downstream::Unavailable)
        })
        .await;
    assert_eq!(
        both_fail,
        Err(ResilienceError::Inner(Downstream::Unavailable))
    );
}

#[tokio::test(start_paused = true)]
async fn hedge_respects_its_budget() {
    let budget = RetryBudget::new(Duration::from_secs(1), 0, 0.0).unwrap();
    let policy: Policy<Downstream> =
        Policy::named("h").hedge(HedgePolicy::after(ms(10)).budget(budget));
    let fake = Fake::new(0, ms(100));
    assert_eq!(policy.call(|| fake.call()).await, Ok(1));
    assert_eq!(fake.calls(), 1, "no budget, no hedge");
}

#[tokio::test(start_paused = true)]
async fn bulkhead_rejects_beyond_capacity_and_frees_slots() {
    let metrics = common::Metrics::install();
    let bulkhead = Bulkhead::new("fidelity", 2).unwrap();
    let policy: Policy<Downstream> = Policy::named("fidelity.bonus").bulkhead(bulkhead.clone());
    let fake = Fake::new(0, ms(100));
    let (a, b, c) = tokio::join!(
        policy.call(|| fake.call()),
        policy.call(|| fake.call()),
        policy.call(|| fake.call()),
    );
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(c, Err(ResilienceError::BulkheadFull));
    assert_eq!(bulkhead.available(), 2);
    assert_eq!(
        common::value(
            &metrics.snapshot(),
            "resilience_bulkhead_rejected_total",
            &[("name", "fidelity")],
        ),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn bulkhead_can_wait_briefly_for_a_slot() {
    let bulkhead = Bulkhead::new("b", 1).unwrap().with_max_wait(ms(150));
    let policy: Policy<Downstream> = Policy::named("b").bulkhead(bulkhead);
    let fake = Fake::new(0, ms(100));
    let start = Instant::now();
    let (a, b) = tokio::join!(policy.call(|| fake.call()), policy.call(|| fake.call()));
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(start.elapsed(), ms(200));
    assert!(Bulkhead::new("zero", 0).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_full_policy_reads_as_a_sentence() {
    let registry = ftshop_resilience::BreakerRegistry::new();
    let budget = RetryBudget::default();
    let policy: Policy<Downstream> = Policy::named("store.sell")
        .timeout(ms(300))
        .breaker(registry.get_or_create("store-1", BreakerConfig::default()))
        .bulkhead(Bulkhead::new("store", 10).unwrap())
        .retry(
            RetryPolicy::exponential(ms(20))
                .budget(budget)
                .retry_if(|e| !matches!(e, ResilienceError::Inner(Downstream::NotFound))),
        );
    let fake = Fake::new(1, ms(10));
    assert_eq!(policy.call(|| fake.call()).await, Ok(2));
    assert_eq!(registry.snapshot()[0].calls_in_window, 2);
    assert_eq!(policy.name(), "store.sell");
    assert!(policy.circuit_breaker().is_some());
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_bulkhead_slot_spends_the_attempt_timeout() {
    let bulkhead = Bulkhead::new("b", 1)
        .unwrap()
        .with_max_wait(Duration::from_secs(10));
    let policy: Policy<Downstream> = Policy::named("b").timeout(ms(50)).bulkhead(bulkhead);
    let holder = Fake::new(0, Duration::from_secs(1));
    let waiter = Fake::new(0, ms(1));
    let start = Instant::now();
    let (held, waited) = tokio::join!(policy.call(|| holder.call()), async {
        policy.call(|| waiter.call()).await
    });
    assert_eq!(held, Err(ResilienceError::Timeout));
    assert_eq!(waited, Err(ResilienceError::Timeout));
    assert_eq!(waiter.calls(), 0, "timed out while waiting for the slot");
    assert_eq!(start.elapsed(), ms(50));
}
