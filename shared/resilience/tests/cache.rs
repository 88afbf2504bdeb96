//! The L1 tier: TTL, single flight, last-known-good, invalidation and metrics (paused clock).

#![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ftshop_resilience::{CacheConfig, CacheError, CacheSource, TieredCache};
use tokio::time::{advance, sleep};

#[derive(Debug, PartialEq)]
struct SourceDown;

fn rates() -> TieredCache<f64> {
    TieredCache::new(
        CacheConfig::builder("rates")
            .ttl(Duration::from_secs(60))
            .max_staleness(Duration::from_secs(300))
            .build()
            .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn loads_once_then_hits_until_the_ttl() {
    let cache = rates();
    let loads = Arc::new(AtomicU32::new(0));
    let load = || {
        let loads = loads.clone();
        move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, SourceDown>(5.31)
        }
    };
    let first = cache.get_or_store("usd-brl", load()).await.unwrap();
    assert_eq!((first.value, first.source), (5.31, CacheSource::Loaded));
    advance(Duration::from_secs(59)).await;
    let hit = cache.get_or_store("usd-brl", load()).await.unwrap();
    assert_eq!(hit.source, CacheSource::L1);
    assert_eq!(hit.age, Duration::from_secs(59));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    advance(Duration::from_secs(1)).await;
    let reloaded = cache.get_or_store("usd-brl", load()).await.unwrap();
    assert_eq!(reloaded.source, CacheSource::Loaded);
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_share_one_load() {
    let cache = rates();
    let loads = Arc::new(AtomicU32::new(0));
    let callers = (0..50).map(|_| {
        let cache = cache.clone();
        let loads = loads.clone();
        async move {
            cache
                .get_or_store("usd-brl", move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    sleep(Duration::from_millis(100)).await;
                    Ok::<_, SourceDown>(5.0)
                })
                .await
        }
    });
    let results = futures::future::join_all(callers).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().value == 5.0));
    assert_eq!(loads.load(Ordering::SeqCst), 1, "no stampede");
}

#[tokio::test(start_paused = true)]
async fn a_failed_load_serves_the_last_known_good_value_within_max_staleness() {
    let metrics = common::Metrics::install();
    let cache = rates();
    cache
        .get_or_store("usd-brl", || async { Ok::<_, SourceDown>(5.0) })
        .await
        .unwrap();
    advance(Duration::from_secs(60 + 300)).await;
    let stale = cache
        .get_or_store("usd-brl", || async { Err::<f64, _>(SourceDown) })
        .await
        .unwrap();
    assert_eq!(stale.source, CacheSource::Stale);
    assert_eq!(stale.value, 5.0);
    assert_eq!(stale.age, Duration::from_secs(360));

    advance(Duration::from_millis(1)).await;
    let too_old = cache
        .get_or_store("usd-brl", || async { Err::<f64, _>(SourceDown) })
        .await;
    match too_old {
        Err(CacheError::Load(e)) => assert_eq!(*e, SourceDown),
        other => panic!("expected the load error, got {other:?}"),
    }
    let snap = metrics.snapshot();
    let result = |r| {
        common::value(
            &snap,
            "resilience_cache_requests_total",
            &[("cache", "rates"), ("result", r)],
        )
    };
    assert_eq!(result("stale"), Some(1.0));
    assert_eq!(result("miss"), Some(2.0));
    assert_eq!(result("hit"), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn waiters_of_a_failed_load_get_the_error_or_the_stale_value() {
    let cache = rates();
    let callers = (0..3).map(|_| {
        let cache = cache.clone();
        async move {
            cache
                .get_or_store("k", || async {
                    sleep(Duration::from_millis(10)).await;
                    Err::<f64, _>(SourceDown)
                })
                .await
        }
    });
    for result in futures::future::join_all(callers).await {
        assert!(matches!(result, Err(CacheError::Load(_))));
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_loader_fails_its_callers_and_does_not_wedge_the_key() {
    let cache = rates();
    let first = cache
        .get_or_store("k", || async {
            if true {
                panic!("loader bug");
            }
            Ok::<f64, SourceDown>(1.0)
        })
        .await;
    assert!(matches!(first, Err(CacheError::ConcurrentLoadFailed)));
    let second = cache
        .get_or_store("k", || async { Ok::<_, SourceDown>(2.0) })
        .await
        .unwrap();
    assert_eq!(second.value, 2.0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_does_not_strand_the_waiters() {
    let cache = rates();
    let leader = cache.get_or_store("k", || async {
        sleep(Duration::from_millis(100)).await;
        Ok::<_, SourceDown>(9.0)
    });
    // Poll the leader once so it starts the flight, then drop it.
    let _ = tokio::time::timeout(Duration::from_millis(10), leader).await;
    let waiter = cache
        .get_or_store("k", || async { Ok::<_, SourceDown>(0.0) })
        .await
        .unwrap();
    assert_eq!(
        waiter.value, 9.0,
        "joined the flight the cancelled caller started"
    );
}

#[tokio::test(start_paused = true)]
async fn get_insert_invalidate_and_patterns() {
    let cache: TieredCache<String> =
        TieredCache::new(CacheConfig::builder("catalog").build().unwrap());
    for key in ["product:1", "product:2", "product:10", "stock:1"] {
        cache.insert(key, key.to_uppercase()).await.unwrap();
    }
    assert_eq!(cache.get("product:1").await.unwrap().value, "PRODUCT:1");
    cache.invalidate("product:1").await.unwrap();
    assert!(cache.get("product:1").await.is_none());
    assert_eq!(cache.invalidate_pattern("product:?").await.unwrap(), 1);
    assert!(cache.get("product:2").await.is_none());
    assert!(cache.get("product:10").await.is_some());
    assert_eq!(cache.invalidate_pattern("product:*").await.unwrap(), 1);
    assert!(cache.get("stock:1").await.is_some());
    cache.clear().await.unwrap();
    assert!(cache.get("stock:1").await.is_none());
}

#[tokio::test(start_paused = true)]
async fn get_does_not_return_stale_values() {
    let cache = rates();
    cache.insert("k", 1.0).await.unwrap();
    advance(Duration::from_secs(61)).await;
    assert!(cache.get("k").await.is_none());
}

/// `last_known_good` answers whatever is still servable without loading: fresh as `L1`, past
/// the TTL as `Stale` with its age, nothing once past `ttl + max_staleness`.
#[tokio::test(start_paused = true)]
async fn last_known_good_is_bounded_by_ttl_plus_max_staleness() {
    let cache = rates();
    assert_eq!(cache.last_known_good("usd-brl").await, None);
    cache.insert("usd-brl", 5.31).await.unwrap();
    let fresh = cache.last_known_good("usd-brl").await.unwrap();
    assert_eq!((fresh.value, fresh.source), (5.31, CacheSource::L1));
    advance(Duration::from_secs(200)).await;
    let stale = cache.last_known_good("usd-brl").await.unwrap();
    assert_eq!(
        (stale.value, stale.source, stale.age),
        (5.31, CacheSource::Stale, Duration::from_secs(200))
    );
    advance(Duration::from_secs(161)).await;
    assert_eq!(
        cache.last_known_good("usd-brl").await,
        None,
        "past 60 s + 300 s"
    );
}
