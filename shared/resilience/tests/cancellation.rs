//! Cancelled attempts are accounted for (hedge losers, outer deadlines, dropped callers), and
//! the shared state (half-open permits, retry budget, single-flight cache) holds under
//! concurrent callers released at one instant.

#![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ftshop_resilience::breaker::{CircuitBreakerLayer, TransitionReason};
use ftshop_resilience::hedge::HedgeLayer;
use ftshop_resilience::{
    BoxError, BreakerConfig, CacheConfig, CircuitBreaker, HedgePolicy, Policy, ResilienceError,
    RetryBudget, State, TieredCache,
};
use tokio::sync::Barrier;
use tokio::time::{Instant, advance, sleep};
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[derive(Debug, Clone, PartialEq)]
struct Down;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The breaker settings ecommerce uses per Store replica and route.
fn replica_config() -> BreakerConfig {
    BreakerConfig::builder()
        .failure_rate_threshold(0.5)
        .count_window(10)
        .minimum_calls(4)
        .wait_in_open(ms(500))
        .permitted_calls_in_half_open(2)
        .build()
        .unwrap()
}

/// A breaker that judges slow calls (>= 100 ms) and never opens on the first few calls.
fn slow_config(permitted_in_half_open: u32) -> BreakerConfig {
    BreakerConfig::builder()
        .count_window(10)
        .minimum_calls(10)
        .slow_call_threshold(ms(100), 0.5)
        .wait_in_open(Duration::from_secs(5))
        .permitted_calls_in_half_open(permitted_in_half_open)
        .build()
        .unwrap()
}

/// Opens `breaker` by recording failures.
fn open_it(breaker: &CircuitBreaker) {
    for _ in 0..10 {
        if breaker.state() == State::Open {
            return;
        }
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), State::Open);
}

// (a) A Store replica that swallows every `/product` request, behind hedging: the first
// attempts it loses to the hedge are failures of that replica, its breaker opens, and the
// health-aware order sends later first attempts to the healthy replica.
#[tokio::test(start_paused = true)]
async fn a_silent_replica_that_loses_every_hedge_race_is_ejected() {
    let breakers = [
        CircuitBreaker::new("store-1.product", replica_config()),
        CircuitBreaker::new("store-2.product", replica_config()),
    ];
    let replicas: Vec<Policy<Down>> = breakers
        .iter()
        .map(|b| {
            Policy::named(b.name().to_owned())
                .timeout(ms(250))
                .breaker(b.clone())
        })
        .collect();
    let first_attempts = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let hedged: Policy<ResilienceError<Down>> =
        Policy::named("store.product").hedge(HedgePolicy::after(ms(40)));

    let mut latencies = Vec::new();
    for _purchase in 0..10 {
        // Health-aware order as in ecommerce: replicas whose breaker is open go last; the
        // round-robin start is always store-1, the replica that never answers.
        let mut order = [0, 1];
        order.sort_by_key(|&i| breakers[i].state() == State::Open);
        let attempt = AtomicUsize::new(0);
        let started = Instant::now();
        let result = hedged
            .call(|| {
                let k = attempt.fetch_add(1, Ordering::SeqCst);
                let i = order[k % order.len()];
                if k == 0 {
                    first_attempts[i].fetch_add(1, Ordering::SeqCst);
                }
                replicas[i].call(move || async move {
                    if i == 0 {
                        std::future::pending::<()>().await; // omission: no answer, ever
                    }
                    sleep(ms(5)).await;
                    Ok::<_, Down>(i)
                })
            })
            .await;
        assert_eq!(result, Ok(1), "store-2 answers every purchase");
        latencies.push(started.elapsed());
    }

    let status = breakers[0].status();
    assert_eq!(status.state, State::Open, "store-1 ejected: {status:?}");
    assert_eq!(status.calls_in_window, 4);
    assert_eq!(status.failures_in_window, 4, "each lost race is a failure");
    assert_eq!(
        first_attempts[0].load(Ordering::SeqCst),
        4,
        "store-1 got first attempts only until its breaker had minimum_calls failures"
    );
    assert_eq!(first_attempts[1].load(Ordering::SeqCst), 6);
    assert_eq!(
        &latencies[..4],
        &[ms(45); 4],
        "hedge delay + store-2's 5 ms"
    );
    assert_eq!(&latencies[4..], &[ms(5); 6], "no more hedge delay");
    assert_eq!(breakers[1].status().failures_in_window, 0);
}

// The same through the tower layers: a breaker layer inside a hedge layer records the first
// call, which lost to the hedge, as a failure.
#[tokio::test(start_paused = true)]
async fn the_tower_hedge_layer_reports_its_superseded_first_call() {
    let breaker = CircuitBreaker::new("svc", replica_config());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(HedgeLayer::new("svc", HedgePolicy::after(ms(30))))
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .service(service_fn(move |()| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(n)
            }
        }));
    assert_eq!(svc.oneshot(()).await.unwrap(), 1, "the hedge won");
    let status = breaker.status();
    assert_eq!((status.calls_in_window, status.failures_in_window), (2, 1));
}

// A hedge that loses to the first attempt started later: it proved nothing about its
// replica, so it is neither a failure nor (below the slow threshold) a call at all.
#[tokio::test(start_paused = true)]
async fn a_hedge_that_loses_to_the_first_attempt_is_not_a_failure() {
    let breakers = [
        CircuitBreaker::new("r1", replica_config()),
        CircuitBreaker::new("r2", replica_config()),
    ];
    let replicas: Vec<Policy<Down>> = breakers
        .iter()
        .map(|b| Policy::named(b.name().to_owned()).breaker(b.clone()))
        .collect();
    let hedged: Policy<ResilienceError<Down>> =
        Policy::named("h").hedge(HedgePolicy::after(ms(40)));
    for _ in 0..5 {
        let attempt = AtomicUsize::new(0);
        let result = hedged
            .call(|| {
                let i = attempt.fetch_add(1, Ordering::SeqCst);
                replicas[i].call(move || async move {
                    // The first attempt answers at 50 ms, the hedge (sent at 40 ms) never.
                    sleep(if i == 0 { ms(50) } else { Duration::MAX / 4 }).await;
                    Ok::<_, Down>(i)
                })
            })
            .await;
        assert_eq!(result, Ok(0));
    }
    assert_eq!(breakers[0].status().calls_in_window, 5);
    let r2 = breakers[1].status();
    assert_eq!((r2.state, r2.calls_in_window), (State::Closed, 0));
}

// (b) A half-open trial whose future is dropped is never leaked: dropped early it gives its
// slot back (the breaker can probe again); dropped past the slow-call threshold it is a slow
// trial and decides; superseded by a hedge it is a failed trial.
#[tokio::test(start_paused = true)]
async fn a_dropped_half_open_trial_is_released_or_decides() {
    let breaker = CircuitBreaker::new("b", slow_config(1));
    let policy: Policy<Down> = Policy::named("b").breaker(breaker.clone());
    open_it(&breaker);
    advance(Duration::from_secs(5)).await;

    // Dropped after 50 ms (outer deadline): nothing learnt, the slot is free again.
    let dropped = tokio::time::timeout(
        ms(50),
        policy.call(std::future::pending::<Result<(), Down>>),
    )
    .await;
    assert!(dropped.is_err());
    let status = breaker.status();
    assert_eq!((status.state, status.calls_in_window), (State::HalfOpen, 0));
    let probe = breaker.try_acquire().expect("the slot was given back");
    assert!(breaker.try_acquire().is_err(), "still only one trial");
    drop(probe);

    // Dropped after 150 ms: a slow trial, so the breaker reopens instead of staying half-open
    // with its only permit used.
    let mut events = breaker.subscribe();
    let dropped = tokio::time::timeout(
        ms(150),
        policy.call(std::future::pending::<Result<(), Down>>),
    )
    .await;
    assert!(dropped.is_err());
    assert_eq!(breaker.state(), State::Open);
    let change = events.try_recv().unwrap();
    assert_eq!(
        (change.from, change.to, change.reason),
        (State::HalfOpen, State::Open, TransitionReason::TrialsFailed)
    );
    assert_eq!((change.slow_rate, change.failure_rate), (1.0, 0.0));

    // Superseded by a hedge that won: a failed trial (after 40 ms, below the slow threshold).
    advance(Duration::from_secs(5)).await;
    let hedged: Policy<ResilienceError<Down>> =
        Policy::named("h").hedge(HedgePolicy::after(ms(40)));
    let attempt = AtomicUsize::new(0);
    let result = hedged
        .call(|| {
            let k = attempt.fetch_add(1, Ordering::SeqCst);
            let policy = policy.clone();
            async move {
                if k == 0 {
                    policy.call(std::future::pending::<Result<u8, Down>>).await
                } else {
                    Ok(7) // another replica
                }
            }
        })
        .await;
    assert_eq!(result, Ok(7));
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        events.try_recv().unwrap().to,
        State::HalfOpen,
        "the trial's admission"
    );
    let change = events.try_recv().unwrap();
    assert_eq!(
        (change.to, change.reason, change.failure_rate),
        (State::Open, TransitionReason::TrialsFailed, 1.0)
    );
}

// (c) An outer deadline that drops an attempt past the slow-call threshold counts it as slow;
// one that drops it earlier counts nothing. Same through Policy nesting (as ecommerce's hedged
// call does) and through the tower layer.
#[tokio::test(start_paused = true)]
async fn an_attempt_dropped_by_an_outer_deadline_past_the_threshold_is_slow() {
    let breaker = CircuitBreaker::new("slow", slow_config(1));
    let replica: Policy<Down> = Policy::named("replica").breaker(breaker.clone());
    let outer: Policy<ResilienceError<Down>> = Policy::named("outer");

    for deadline in [ms(150), ms(50)] {
        let result = outer
            .call_with_deadline(Instant::now() + deadline, || {
                replica.call(std::future::pending::<Result<(), Down>>)
            })
            .await;
        assert_eq!(result, Err(ResilienceError::Timeout));
    }
    let status = breaker.status();
    assert_eq!(status.calls_in_window, 1, "the 50 ms drop is not judged");
    assert_eq!(status.slow_calls_in_window, 1);
    assert_eq!(status.slow_rate, 1.0);
    assert_eq!(status.failure_rate, 0.0);

    let svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .service(service_fn(|()| async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        }));
    let dropped = tokio::time::timeout(ms(120), svc.oneshot(())).await;
    assert!(dropped.is_err());
    let status = breaker.status();
    assert_eq!(status.calls_in_window, 2);
    assert_eq!(status.slow_calls_in_window, 2);
    assert_eq!(status.slow_rate, 1.0);
}

// (d) N callers released at one instant on a half-open breaker get exactly the permitted
// number of trial permits.
#[tokio::test(start_paused = true)]
async fn concurrent_callers_get_exactly_the_half_open_permits() {
    const N: usize = 32;
    let breaker = CircuitBreaker::new("b", replica_config());
    open_it(&breaker);
    advance(ms(500)).await;
    let barrier = Arc::new(Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (breaker, barrier) = (breaker.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                breaker.try_acquire_owned().ok()
            })
        })
        .collect();
    let mut permits = Vec::new();
    for task in tasks {
        permits.extend(task.await.unwrap());
    }
    assert_eq!(permits.len(), 2);
    assert_eq!(breaker.state(), State::HalfOpen);
}

// (d) Tasks released at one instant on worker threads never overdraw the retry budget: with no
// traffic and a floor of 32 retries per second over 1 s, exactly 32 retries are granted
// however many are asked for at once. (Each task asks repeatedly so that several of them
// reach the last token together.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_withdrawals_never_overdraw_the_retry_budget() {
    const N: usize = 8;
    for round in 0..2000 {
        let budget = RetryBudget::new(Duration::from_secs(1), 32, 0.0).unwrap();
        let barrier = Arc::new(Barrier::new(N));
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                let (budget, barrier) = (budget.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    (0..16).filter(|_| budget.try_withdraw()).count()
                })
            })
            .collect();
        let mut granted = 0;
        for task in tasks {
            granted += task.await.unwrap();
        }
        assert_eq!(granted, 32, "round {round}: retries granted");
    }
}

// (d) N callers released at one instant on one missing key cause exactly one load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_get_or_store_of_one_key_loads_once() {
    const N: usize = 16;
    for round in 0..4000 {
        let cache: TieredCache<u32> = TieredCache::new(
            CacheConfig::builder("single_flight")
                .ttl(Duration::from_secs(60))
                .build()
                .unwrap(),
        );
        let loads = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(N));
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                let (cache, loads, barrier) = (cache.clone(), loads.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    cache
                        .get_or_store("k", || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, std::io::Error>(42)
                        })
                        .await
                        .map(|c| c.value)
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 42);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "round {round}: loads");
    }
}

/// Starts a load of `key` that answers `value` when `release` fires; returns once the loader
/// runs.
async fn load_in_flight(
    cache: &TieredCache<u32>,
    key: &'static str,
    value: u32,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<u32>,
) {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let cache = cache.clone();
    let task = tokio::spawn(async move {
        cache
            .get_or_store(key, || async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                Ok::<_, std::io::Error>(value)
            })
            .await
            .unwrap()
            .value
    });
    started_rx.await.unwrap();
    (release_tx, task)
}

// Cache entries are compare-and-set against the load in flight: a load that started before
// an `insert` or an invalidation of its key still answers its own callers, but does not write
// its older value over theirs.
#[tokio::test(start_paused = true)]
async fn a_load_in_flight_does_not_overwrite_a_newer_write() {
    let cache: TieredCache<u32> = TieredCache::new(
        CacheConfig::builder("cas")
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let never = || async { Ok::<u32, std::io::Error>(99) };

    let (release, loading) = load_in_flight(&cache, "inserted", 1).await;
    cache.insert("inserted", 2).await.unwrap();
    release.send(()).unwrap();
    assert_eq!(
        loading.await.unwrap(),
        1,
        "its own caller gets what it loaded"
    );
    let now = cache.get_or_store("inserted", never).await.unwrap();
    assert_eq!(now.value, 2, "the newer insert survives");

    let (release, loading) = load_in_flight(&cache, "invalidated", 1).await;
    cache.invalidate("invalidated").await.unwrap();
    release.send(()).unwrap();
    assert_eq!(loading.await.unwrap(), 1);
    let now = cache
        .get_or_store("invalidated", || async { Ok::<u32, std::io::Error>(3) })
        .await
        .unwrap();
    assert_eq!(
        (now.value, now.source),
        (3, ftshop_resilience::CacheSource::Loaded),
        "the invalidation holds: loaded again"
    );

    let (release, loading) = load_in_flight(&cache, "pattern-1", 1).await;
    cache.invalidate_pattern("pattern-*").await.unwrap();
    release.send(()).unwrap();
    assert_eq!(loading.await.unwrap(), 1);
    let now = cache
        .get_or_store("pattern-1", || async { Ok::<u32, std::io::Error>(4) })
        .await
        .unwrap();
    assert_eq!(now.value, 4, "the pattern invalidation holds too");
}
