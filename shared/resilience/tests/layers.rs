//! The tower middlewares, alone and stacked with `ServiceBuilder`.

#![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ftshop_resilience::breaker::CircuitBreakerLayer;
use ftshop_resilience::bulkhead::BulkheadLayer;
use ftshop_resilience::hedge::HedgeLayer;
use ftshop_resilience::retry::RetryLayer;
use ftshop_resilience::timeout::TimeoutLayer;
use ftshop_resilience::{
    BoxError, BreakerConfig, Bulkhead, CircuitBreaker, HedgePolicy, Jitter, ResilienceError,
    RetryPolicy, State, with_deadline,
};
use tokio::time::{Instant, sleep};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A service that sleeps `latency[n]` on its n-th call and fails while `n < failures`.
fn flaky(
    failures: u32,
    latency: Vec<Duration>,
) -> (
    impl Service<
        u32,
        Response = u32,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<u32, BoxError>> + Send,
    > + Clone
    + Send
    + 'static,
    Arc<AtomicU32>,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let latency = Arc::new(latency);
    let svc = service_fn(move |req: u32| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let latency = latency.clone();
        async move {
            let wait = latency.get(n as usize).copied().unwrap_or_default();
            if !wait.is_zero() {
                sleep(wait).await;
            }
            if n < failures {
                Err::<u32, BoxError>("unavailable".into())
            } else {
                Ok(req + n)
            }
        }
    });
    (svc, calls)
}

#[tokio::test(start_paused = true)]
async fn timeout_layer_boxes_elapsed_and_honours_the_deadline() {
    let (svc, _) = flaky(0, vec![Duration::from_secs(5); 4]);
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(svc);
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(ResilienceError::from_boxed(err).is_timeout());
    assert_eq!(start.elapsed(), Duration::from_secs(1));

    let start = Instant::now();
    let call = svc.ready().await.unwrap().call(1);
    let err = with_deadline(start + ms(250), call).await.unwrap_err();
    assert!(err.is::<ftshop_resilience::error::Elapsed>());
    assert_eq!(start.elapsed(), ms(250));
}

#[tokio::test(start_paused = true)]
async fn breaker_layer_opens_and_rejects_without_calling() {
    let breaker = CircuitBreaker::new(
        "svc",
        BreakerConfig::builder()
            .count_window(2)
            .minimum_calls(2)
            .build()
            .unwrap(),
    );
    let (svc, calls) = flaky(100, vec![]);
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .service(svc);
    for _ in 0..2 {
        assert!(svc.ready().await.unwrap().call(0).await.is_err());
    }
    assert_eq!(breaker.state(), State::Open);
    let err = svc.ready().await.unwrap().call(0).await.unwrap_err();
    match ResilienceError::from_boxed(err) {
        ResilienceError::BreakerOpen { name } => assert_eq!(&*name, "svc"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn breaker_layer_uses_a_custom_failure_predicate() {
    let breaker = CircuitBreaker::new(
        "svc",
        BreakerConfig::builder()
            .count_window(2)
            .minimum_calls(2)
            .build()
            .unwrap(),
    );
    // Responses >= 500 are failures even though they are Ok (an HTTP client's view).
    let svc = service_fn(|status: u16| async move { Ok::<u16, BoxError>(status) });
    let mut svc = ServiceBuilder::new()
        .layer(
            CircuitBreakerLayer::new(breaker.clone())
                .failure_if(|r: &Result<u16, BoxError>| matches!(r, Ok(s) if *s >= 500)),
        )
        .service(svc);
    svc.ready().await.unwrap().call(404).await.unwrap();
    svc.ready().await.unwrap().call(404).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    svc.ready().await.unwrap().call(503).await.unwrap();
    assert_eq!(breaker.state(), State::Open, "1 of the last 2 = 50 %");
}

#[tokio::test(start_paused = true)]
async fn bulkhead_layer_rejects_the_overflow() {
    let (svc, _) = flaky(0, vec![ms(100); 3]);
    let bulkhead = Bulkhead::new("svc", 2).unwrap();
    let svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(bulkhead.clone()))
        .service(svc);
    let (a, b, c) = tokio::join!(
        svc.clone().oneshot(1),
        svc.clone().oneshot(1),
        svc.clone().oneshot(1)
    );
    assert!(a.is_ok() && b.is_ok());
    assert!(matches!(
        ResilienceError::from_boxed(c.unwrap_err()),
        ResilienceError::BulkheadFull
    ));
    assert_eq!(bulkhead.available(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_layer_retries_through_inner_timeouts() {
    // First attempt hangs, second answers at once.
    let (svc, calls) = flaky(0, vec![Duration::from_secs(60)]);
    let policy = RetryPolicy::<BoxError>::exponential(ms(10))
        .max_attempts(3)
        .jitter(Jitter::None);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new("svc", policy))
        .layer(TimeoutLayer::new(ms(100)))
        .service(svc);
    let start = Instant::now();
    assert_eq!(svc.oneshot(5).await.unwrap(), 6);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), ms(110));
}

#[tokio::test(start_paused = true)]
async fn retry_layer_does_not_retry_an_open_breaker() {
    let breaker = CircuitBreaker::new("svc", BreakerConfig::default());
    breaker.force_open();
    let (svc, calls) = flaky(0, vec![]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new("svc", RetryPolicy::exponential(ms(10))))
        .layer(CircuitBreakerLayer::new(breaker))
        .service(svc);
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.is::<ftshop_resilience::error::BreakerOpen>());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn hedge_layer_races_a_second_call() {
    let (svc, calls) = flaky(0, vec![Duration::from_secs(60), ms(5)]);
    let svc = ServiceBuilder::new()
        .layer(HedgeLayer::new("svc", HedgePolicy::after(ms(30))))
        .service(svc);
    let start = Instant::now();
    assert_eq!(
        svc.oneshot(10).await.unwrap(),
        11,
        "the hedge (call #1) won"
    );
    assert_eq!(start.elapsed(), ms(35));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
