//! Per-call overhead of the policies around a future that is already ready, so only the
//! policy's own cost is measured; `failsafe`'s breaker runs in the same process for comparison.
//!
//! Run: `cargo bench -p ftshop-resilience --bench overhead` (about two minutes).
//! Results and discussion: docs/benchmarks/resilience.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::futures::CircuitBreaker as _;
use ftshop_resilience::{
    BreakerConfig, CacheConfig, CircuitBreaker, Policy, TieredCache, timeout_at,
};
use tokio::runtime::Runtime;
use tokio::time::Instant;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn ready() -> impl std::future::Future<Output = Result<u64, ()>> {
    std::future::ready(Ok(black_box(42)))
}

fn breaker(slow_calls: bool) -> CircuitBreaker {
    let mut cfg = BreakerConfig::builder().count_window(100).minimum_calls(20);
    if slow_calls {
        cfg = cfg.slow_call_threshold(Duration::from_secs(1), 1.0);
    }
    CircuitBreaker::new("bench", cfg.build().expect("config"))
}

fn bench_breakers(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("breaker");

    group.bench_function("baseline_ready_future", |b| {
        b.to_async(&rt).iter(|| async { black_box(ready().await) })
    });

    let ours = breaker(false);
    group.bench_function("ftshop", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(ours.call(ready()).await) })
    });

    let ours_slow = breaker(true);
    group.bench_function("ftshop_with_slow_call_tracking", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(ours_slow.call(ready()).await) })
    });

    let theirs = failsafe::Config::new().build();
    group.bench_function("failsafe", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(theirs.call(ready()).await) })
    });
    group.finish();

    let mut group = c.benchmark_group("breaker_plus_timeout");
    let policy: Policy<()> = Policy::named("bench")
        .timeout(Duration::from_secs(1))
        .breaker(breaker(false));
    group.bench_function("ftshop_policy", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(policy.call(ready).await) })
    });

    let ours = breaker(false);
    group.bench_function("ftshop_breaker_and_timeout_at", |b| {
        b.to_async(&rt).iter(|| async {
            let deadline = Instant::now() + Duration::from_secs(1);
            black_box(ours.call(timeout_at(deadline, ready())).await)
        })
    });

    let theirs = failsafe::Config::new().build();
    group.bench_function("failsafe_and_tokio_timeout", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                theirs
                    .call(tokio::time::timeout(Duration::from_secs(1), ready()))
                    .await,
            )
        })
    });
    group.finish();
}

fn bench_cache(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("cache_hit");
    let cache: TieredCache<f64> = TieredCache::new(
        CacheConfig::builder("bench")
            .ttl(Duration::from_secs(3600))
            .build()
            .expect("config"),
    );
    rt.block_on(async {
        cache
            .insert("usd-brl", 5.31)
            .await
            .expect("L1-only insert cannot fail")
    });

    group.bench_function("get_or_store", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                cache
                    .get_or_store("usd-brl", || async { Ok::<f64, ()>(0.0) })
                    .await,
            )
        })
    });
    group.bench_function("get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.get("usd-brl").await) })
    });

    // Reference rows: what the hit is made of, and the L1 it replaced.
    let l1: quick_cache::sync::Cache<String, f64> = quick_cache::sync::Cache::new(10_000);
    l1.insert("usd-brl".to_owned(), 5.31);
    group.bench_function("raw_quick_cache_get_for_reference", |b| {
        b.iter(|| black_box(l1.get("usd-brl")))
    });
    let raw: moka::sync::Cache<String, f64> = moka::sync::Cache::new(10_000);
    raw.insert("usd-brl".to_owned(), 5.31);
    group.bench_function("raw_moka_get_for_reference", |b| {
        b.iter(|| black_box(raw.get("usd-brl")))
    });
    // Benches build with the dev-dependencies, so tokio has `test-util` here and its `now()`
    // consults the pausable clock of the runtime it runs in (hence `enter`); release binaries
    // read the std clock directly. Synchronous, like the row below, so the two compare.
    group.bench_function("tokio_instant_now_for_reference", |b| {
        let _in_runtime = rt.enter();
        b.iter(|| black_box(Instant::now()))
    });
    group.bench_function("std_instant_now_for_reference", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_breakers, bench_cache
}
criterion_main!(benches);
