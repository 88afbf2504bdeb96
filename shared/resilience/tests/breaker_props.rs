//! Property tests for the breaker's invariants, against a simple reference model.

#![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

use std::time::Duration;

use ftshop_resilience::breaker::OwnedPermit;
use ftshop_resilience::{BreakerConfig, CircuitBreaker, Outcome, State};
use proptest::prelude::*;

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    /// Acquire a permit and keep it.
    Acquire,
    /// Finish the oldest kept permit with this outcome.
    Finish(bool),
    /// Drop the oldest kept permit without an outcome (cancelled call).
    Cancel,
    /// Let time pass (ms).
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        4 => any::<bool>().prop_map(Op::Finish),
        1 => Just(Op::Cancel),
        2 => (0u64..3_000).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// In the closed state, the breaker is open after a call iff the last `size` outcomes
    /// (since it last closed) hold at least `min` calls and a failure rate >= threshold.
    #[test]
    fn opens_iff_failure_rate_reaches_threshold_after_minimum_calls(
        size in 1u32..20,
        min_frac in 0.0f64..=1.0,
        threshold_pct in 1u32..=100,
        outcomes in proptest::collection::vec(any::<bool>(), 0..80),
    ) {
        let min = ((f64::from(size) * min_frac).ceil() as u32).clamp(1, size);
        let cfg = BreakerConfig::builder()
            .count_window(size)
            .minimum_calls(min)
            .failure_rate_threshold(f64::from(threshold_pct) / 100.0)
            .build()
            .unwrap();
        paused_runtime().block_on(async {
            let breaker = CircuitBreaker::new("prop", cfg);
            let mut model: Vec<bool> = Vec::new();
            for failed in outcomes {
                let permit = breaker.try_acquire();
                prop_assert!(permit.is_ok(), "closed breaker must admit");
                permit.unwrap().record(if failed { Outcome::Failure } else { Outcome::Success });
                model.push(failed);
                if model.len() > size as usize {
                    model.remove(0);
                }
                let calls = model.len() as u32;
                let failures = model.iter().filter(|f| **f).count() as u32;
                // Integer arithmetic: failures / calls >= pct / 100.
                let should_open = calls >= min && failures * 100 >= threshold_pct * calls;
                let status = breaker.status();
                prop_assert!(status.calls_in_window <= size, "window never exceeds its size");
                if should_open {
                    prop_assert_eq!(status.state, State::Open);
                    breaker.reset();
                    model.clear();
                } else {
                    prop_assert_eq!(status.state, State::Closed);
                    prop_assert_eq!(status.calls_in_window, calls);
                    prop_assert_eq!(status.failures_in_window, failures);
                }
            }
            Ok(())
        })?;
    }

    /// Whatever the interleaving of calls, outcomes, cancellations and time, half-open never
    /// has more than `permitted` trial calls admitted at once, and the window never exceeds
    /// its size.
    #[test]
    fn half_open_never_admits_more_than_permitted(
        permitted in 1u32..5,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let cfg = BreakerConfig::builder()
            .count_window(5)
            .minimum_calls(2)
            .failure_rate_threshold(0.5)
            .wait_in_open(Duration::from_millis(1_000))
            .permitted_calls_in_half_open(permitted)
            .build()
            .unwrap();
        paused_runtime().block_on(async {
            let breaker = CircuitBreaker::new("prop", cfg);
            // Kept permits, with whether each was admitted as a half-open trial.
            let mut kept: Vec<(OwnedPermit, bool)> = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire => {
                        let before = breaker.state();
                        if let Ok(permit) = breaker.try_acquire_owned() {
                            let trial = breaker.state() == State::HalfOpen;
                            prop_assert!(
                                before != State::ForcedOpen,
                                "never admits when forced open"
                            );
                            kept.push((permit, trial));
                        }
                    }
                    Op::Finish(failed) => {
                        if !kept.is_empty() {
                            let (permit, _) = kept.remove(0);
                            permit.record(if failed { Outcome::Failure } else { Outcome::Success });
                        }
                    }
                    Op::Cancel => {
                        if !kept.is_empty() {
                            drop(kept.remove(0));
                        }
                    }
                    Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                }
                if breaker.state() != State::HalfOpen {
                    // Trials of an earlier half-open no longer count.
                    for (_, trial) in kept.iter_mut() {
                        *trial = false;
                    }
                }
                let trials = kept.iter().filter(|(_, t)| *t).count() as u32;
                prop_assert!(trials <= permitted, "{trials} trials in flight > {permitted}");
                prop_assert!(breaker.status().calls_in_window <= 5);
            }
            Ok(())
        })?;
    }
}
