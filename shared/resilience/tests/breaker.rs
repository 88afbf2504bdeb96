//! Circuit breaker state machine, registry and metrics, driven by a paused tokio clock.

#![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

mod common;

use std::time::Duration;

use ftshop_resilience::breaker::{TransitionReason, UnknownBreaker};
use ftshop_resilience::{
    BreakerConfig, BreakerRegistry, CircuitBreaker, Outcome, ResilienceError, SlidingWindow, State,
};
use tokio::time::{advance, sleep};

fn config() -> BreakerConfig {
    BreakerConfig::builder()
        .count_window(10)
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .wait_in_open(Duration::from_secs(5))
        .permitted_calls_in_half_open(2)
        .build()
        .unwrap()
}

fn record(breaker: &CircuitBreaker, outcome: Outcome) {
    breaker.try_acquire().unwrap().record(outcome);
}

fn open_it(breaker: &CircuitBreaker) {
    for _ in 0..10 {
        if breaker.state() == State::Open {
            return;
        }
        record(breaker, Outcome::Failure);
    }
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_until_minimum_calls_even_if_all_fail() {
    let breaker = CircuitBreaker::new("b", config());
    for _ in 0..3 {
        record(&breaker, Outcome::Failure);
        assert_eq!(breaker.state(), State::Closed);
    }
    record(&breaker, Outcome::Failure);
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_exactly_at_the_failure_rate_threshold() {
    let breaker = CircuitBreaker::new("b", config());
    // 2 successes then failures: 1/3 < 50 %... 2/4 = 50 % opens.
    record(&breaker, Outcome::Success);
    record(&breaker, Outcome::Success);
    record(&breaker, Outcome::Failure);
    assert_eq!(breaker.state(), State::Closed);
    record(&breaker, Outcome::Failure);
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn below_threshold_stays_closed_as_the_window_slides() {
    let breaker = CircuitBreaker::new("b", config());
    for i in 0..100 {
        // 1 failure in 3 calls: at most 4 in any 10 (40 %) < 50 %.
        let outcome = if i % 3 == 2 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        record(&breaker, outcome);
        assert_eq!(breaker.state(), State::Closed);
    }
    let status = breaker.status();
    assert_eq!(
        status.calls_in_window, 10,
        "count window keeps the last 10 calls"
    );
}

#[tokio::test(start_paused = true)]
async fn open_rejects_until_the_wait_has_elapsed_then_half_opens() {
    let breaker = CircuitBreaker::new("store-1", config());
    open_it(&breaker);
    let err = breaker.try_acquire().unwrap_err();
    assert_eq!(&*err.name, "store-1");

    advance(Duration::from_millis(4_999)).await;
    assert!(
        breaker.try_acquire().is_err(),
        "still open 1 ms before the wait ends"
    );
    assert_eq!(breaker.status().retry_after_ms, Some(1));

    advance(Duration::from_millis(1)).await;
    let permit = breaker.try_acquire().expect("a trial call after the wait");
    assert_eq!(breaker.state(), State::HalfOpen);
    drop(permit);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_the_permitted_calls_and_closes_when_they_succeed() {
    let breaker = CircuitBreaker::new("b", config());
    open_it(&breaker);
    advance(Duration::from_secs(5)).await;

    let first = breaker.try_acquire().unwrap();
    let second = breaker.try_acquire().unwrap();
    assert!(breaker.try_acquire().is_err(), "only 2 trial calls");
    first.success();
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "decides after all trials finish"
    );
    assert!(
        breaker.try_acquire().is_err(),
        "a finished trial does not free a slot"
    );
    second.success();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        breaker.status().calls_in_window,
        0,
        "closing starts a fresh window"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_when_trials_fail() {
    let breaker = CircuitBreaker::new("b", config());
    open_it(&breaker);
    advance(Duration::from_secs(5)).await;
    record(&breaker, Outcome::Success);
    record(&breaker, Outcome::Failure);
    assert_eq!(breaker.state(), State::Open, "1 of 2 trials failed = 50 %");
    assert!(breaker.try_acquire().is_err());
    advance(Duration::from_secs(5)).await;
    assert!(
        breaker.try_acquire().is_ok(),
        "waits again, then probes again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_trial_permit_frees_its_slot() {
    let breaker = CircuitBreaker::new("b", config());
    open_it(&breaker);
    advance(Duration::from_secs(5)).await;
    let a = breaker.try_acquire().unwrap();
    let b = breaker.try_acquire().unwrap();
    drop(a); // the caller was cancelled
    let c = breaker.try_acquire().expect("slot given back");
    b.success();
    c.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn outcomes_from_an_earlier_state_are_ignored() {
    let breaker = CircuitBreaker::new("b", config());
    let late = breaker.try_acquire_owned().unwrap(); // admitted while closed
    open_it(&breaker);
    advance(Duration::from_secs(5)).await;
    let trial = breaker.try_acquire().unwrap();
    late.record(Outcome::Failure); // arrives during half-open: must not count as a trial
    assert_eq!(breaker.status().calls_in_window, 0);
    trial.success();
    record(&breaker, Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_breaker() {
    let cfg = BreakerConfig::builder()
        .count_window(4)
        .minimum_calls(4)
        .slow_call_threshold(Duration::from_millis(100), 0.75)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new("slow", cfg);
    let mut rx = breaker.subscribe();
    for i in 0..4 {
        let permit = breaker.try_acquire().unwrap();
        let took = if i == 0 { 99 } else { 100 };
        sleep(Duration::from_millis(took)).await;
        permit.success();
    }
    assert_eq!(breaker.state(), State::Open, "3 of 4 calls took >= 100 ms");
    let change = rx.try_recv().unwrap();
    assert_eq!(change.reason, TransitionReason::SlowCallRate);
    assert_eq!(change.slow_rate, 0.75);
    assert_eq!(change.failure_rate, 0.0);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let cfg = BreakerConfig::builder()
        .sliding_window(SlidingWindow::Time {
            length: Duration::from_secs(10),
            buckets: 10,
        })
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new("t", cfg);
    for _ in 0..3 {
        record(&breaker, Outcome::Failure);
    }
    assert_eq!(breaker.status().calls_in_window, 3);
    advance(Duration::from_secs(11)).await;
    assert_eq!(breaker.status().calls_in_window, 0, "failures aged out");
    for outcome in [Outcome::Failure, Outcome::Success, Outcome::Failure] {
        advance(Duration::from_millis(500)).await;
        record(&breaker, outcome);
        assert_eq!(breaker.state(), State::Closed, "fewer than 4 recent calls");
    }
    advance(Duration::from_millis(500)).await;
    record(&breaker, Outcome::Failure);
    assert_eq!(
        breaker.state(),
        State::Open,
        "3 of the 4 recent calls failed"
    );
}

#[tokio::test(start_paused = true)]
async fn force_open_holds_until_reset() {
    let breaker = CircuitBreaker::new("b", config());
    breaker.force_open();
    assert_eq!(breaker.state(), State::ForcedOpen);
    advance(Duration::from_secs(3600)).await;
    assert!(breaker.try_acquire().is_err());
    breaker.reset();
    assert_eq!(breaker.state(), State::Closed);
    assert!(breaker.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn call_maps_rejection_and_errors() {
    let breaker = CircuitBreaker::new("b", config());
    let ok: Result<u8, ResilienceError<&str>> = breaker.call(async { Ok::<_, &str>(1) }).await;
    assert_eq!(ok, Ok(1));
    for _ in 0..3 {
        let err = breaker.call(async { Err::<u8, _>("boom") }).await;
        assert_eq!(err, Err(ResilienceError::Inner("boom")));
    }
    let rejected = breaker.call(async { Ok::<u8, &str>(1) }).await;
    assert!(matches!(rejected, Err(ResilienceError::BreakerOpen { ref name }) if &**name == "b"));
}

#[tokio::test(start_paused = true)]
async fn registry_shares_breakers_lists_them_and_broadcasts_changes() {
    let registry = BreakerRegistry::new();
    let mut events = registry.subscribe();
    let a = registry.get_or_create("store-1", config());
    let again = registry.get_or_create("store-1", BreakerConfig::default());
    assert_eq!(
        again.config(),
        &config(),
        "existing breaker keeps its config"
    );
    registry.get_or_create("exchange-1", config());
    assert_eq!(registry.names(), vec!["exchange-1", "store-1"]);

    open_it(&again); // same breaker as `a`
    assert_eq!(a.state(), State::Open);

    let snapshot = registry.snapshot();
    assert_eq!(snapshot.len(), 2);
    let store = &snapshot[1];
    assert_eq!(store.name, "store-1");
    assert_eq!(store.state, State::Open);
    assert_eq!(store.failure_rate, 1.0);
    assert_eq!(store.calls_in_window, 4);
    assert_eq!(store.retry_after_ms, Some(5_000));
    let json = serde_json::to_value(store).unwrap();
    assert_eq!(json["state"], "open");
    assert!(json["since"].as_u64().unwrap() > 0);

    let forced = registry.force_open("exchange-1").unwrap();
    assert_eq!(forced.state, State::ForcedOpen);
    let reset = registry.reset("store-1").unwrap();
    assert_eq!(reset.state, State::Closed);
    assert_eq!(
        registry.reset("nope"),
        Err(UnknownBreaker("nope".to_owned()))
    );

    let changes: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|c| (c.name, c.from, c.to, c.reason))
        .collect();
    assert_eq!(
        changes,
        vec![
            (
                "store-1".into(),
                State::Closed,
                State::Open,
                TransitionReason::FailureRate
            ),
            (
                "exchange-1".into(),
                State::Closed,
                State::ForcedOpen,
                TransitionReason::ManualForceOpen
            ),
            (
                "store-1".into(),
                State::Open,
                State::Closed,
                TransitionReason::ManualReset
            ),
        ]
    );
    registry.reset_all();
    assert!(registry.snapshot().iter().all(|s| s.state == State::Closed));
}

#[tokio::test(start_paused = true)]
async fn full_cycle_emits_every_transition_in_order() {
    let breaker = CircuitBreaker::new("cycle", config());
    let mut rx = breaker.subscribe();
    open_it(&breaker);
    advance(Duration::from_secs(5)).await;
    record(&breaker, Outcome::Failure);
    record(&breaker, Outcome::Failure);
    advance(Duration::from_secs(5)).await;
    record(&breaker, Outcome::Success);
    record(&breaker, Outcome::Success);
    let seen: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|c| (c.from, c.to, c.reason))
        .collect();
    use State::*;
    use TransitionReason::*;
    assert_eq!(
        seen,
        vec![
            (Closed, Open, FailureRate),
            (Open, HalfOpen, WaitElapsed),
            (HalfOpen, Open, TrialsFailed),
            (Open, HalfOpen, WaitElapsed),
            (HalfOpen, Closed, TrialsSucceeded),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_use_the_documented_names_and_labels() {
    let metrics = common::Metrics::install();
    let breaker = CircuitBreaker::new("store-1", config());
    record(&breaker, Outcome::Success);
    open_it(&breaker);
    let _ = breaker.try_acquire();
    let snap = metrics.snapshot();
    let calls = |outcome| {
        common::value(
            &snap,
            "resilience_circuitbreaker_calls_total",
            &[("name", "store-1"), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("success"), Some(1.0));
    assert_eq!(
        calls("failure"),
        Some(3.0),
        "1 success + 3 failures = 75 % opens"
    );
    assert_eq!(calls("rejected"), Some(1.0));
    assert_eq!(calls("slow"), Some(0.0));
    let state = |s| {
        common::value(
            &snap,
            "resilience_circuitbreaker_state",
            &[("name", "store-1"), ("state", s)],
        )
    };
    assert_eq!(state("open"), Some(1.0));
    assert_eq!(state("closed"), Some(0.0));
    assert_eq!(state("half_open"), Some(0.0));
    assert_eq!(
        common::value(
            &snap,
            "resilience_circuitbreaker_transitions_total",
            &[("from", "closed"), ("name", "store-1"), ("to", "open")],
        ),
        Some(1.0)
    );
}

#[test]
fn config_validation_rejects_impossible_settings() {
    let b = BreakerConfig::builder;
    assert!(b().build().is_ok());
    assert_eq!(
        b().failure_rate_threshold(0.0).build().unwrap_err().field,
        "failure_rate_threshold"
    );
    assert!(b().failure_rate_threshold(1.5).build().is_err());
    assert!(b().failure_rate_threshold(f64::NAN).build().is_err());
    assert!(b().count_window(0).build().is_err());
    assert_eq!(
        b().count_window(5)
            .minimum_calls(6)
            .build()
            .unwrap_err()
            .field,
        "minimum_calls"
    );
    assert!(b().minimum_calls(0).build().is_err());
    assert!(b().wait_in_open(Duration::ZERO).build().is_err());
    assert!(b().permitted_calls_in_half_open(0).build().is_err());
    assert!(
        b().slow_call_threshold(Duration::ZERO, 0.5)
            .build()
            .is_err()
    );
    assert!(
        b().slow_call_threshold(Duration::from_secs(1), 0.0)
            .build()
            .is_err()
    );
    assert!(
        b().sliding_window(SlidingWindow::Time {
            length: Duration::from_secs(1),
            buckets: 0
        })
        .build()
        .is_err()
    );
}
