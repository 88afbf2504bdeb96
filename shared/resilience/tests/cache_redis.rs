//! The Redis tier against the real Redis at 127.0.0.1:6379 (real time: Redis I/O and a paused
//! clock do not mix). Each test uses its own uuid namespace and removes its keys.
//!
//! Without a reachable Redis these tests print a notice and pass, unless
//! `FTSHOP_REQUIRE_REDIS=1` (CI sets it where Redis runs), in which case they fail.

#![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ftshop_resilience::cache::{L2Error, RedisL2};
use ftshop_resilience::{BreakerConfig, CacheConfig, CacheSource, TieredCache};
use redis::AsyncCommands;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const PREFIX: &str = "ftshop-test:";

#[derive(Debug)]
struct SourceDown;

async fn real_l2() -> Option<RedisL2> {
    let l2 = RedisL2::builder(REDIS_URL)
        .key_prefix(PREFIX)
        .op_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    if l2.ping().await {
        return Some(l2);
    }
    assert!(
        std::env::var_os("FTSHOP_REQUIRE_REDIS").is_none(),
        "FTSHOP_REQUIRE_REDIS is set but Redis at {REDIS_URL} is not reachable"
    );
    eprintln!("skipping: no Redis at {REDIS_URL}");
    None
}

fn namespace() -> String {
    format!("t-{}", uuid::Uuid::new_v4().simple())
}

fn config(ns: &str) -> CacheConfig {
    CacheConfig::builder(ns)
        .ttl(Duration::from_secs(30))
        .max_staleness(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// A port where nothing listens.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn values_are_shared_through_redis_and_invalidated_by_pattern() {
    let Some(l2) = real_l2().await else { return };
    let ns = namespace();
    let a: TieredCache<String> = TieredCache::with_l2(config(&ns), l2.clone());
    let b: TieredCache<String> = TieredCache::with_l2(config(&ns), l2.clone());

    let loaded = a
        .get_or_store("product:1", || async {
            Ok::<_, SourceDown>("lamp".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(loaded.source, CacheSource::Loaded);
    let shared = b
        .get_or_store("product:1", || async { Err::<String, _>(SourceDown) })
        .await
        .unwrap();
    assert_eq!(
        (shared.value.as_str(), shared.source),
        ("lamp", CacheSource::L2)
    );
    assert_eq!(
        b.get("product:1").await.unwrap().source,
        CacheSource::L1,
        "filled L1 from L2"
    );

    a.insert("product:2", "desk".into()).await.unwrap();
    a.insert("stock:1", "3".into()).await.unwrap();
    let mut conn = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{PREFIX}{ns}:product:2");
    assert!(conn.exists::<_, bool>(&key).await.unwrap());

    a.invalidate_pattern("product:*").await.unwrap();
    assert!(!conn.exists::<_, bool>(&key).await.unwrap());
    let c: TieredCache<String> = TieredCache::with_l2(config(&ns), l2.clone());
    assert!(c.get("product:1").await.is_none());
    assert_eq!(c.get("stock:1").await.unwrap().value, "3");

    a.clear().await.unwrap();
    let left: Vec<String> = conn.keys(format!("{PREFIX}{ns}:*")).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_stale_value_in_redis_is_the_last_known_good_for_a_new_replica() {
    let Some(l2) = real_l2().await else { return };
    let ns = namespace();
    let mut conn = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Written 10 minutes ago by another replica: past the 30 s TTL, within the 1 h staleness.
    let written = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - Duration::from_secs(600);
    let body = serde_json::json!({ "v": 5.31, "t": written.as_millis() as u64 }).to_string();
    let key = format!("{PREFIX}{ns}:usd-brl");
    conn.set_ex::<_, _, ()>(&key, body, 60).await.unwrap();

    let cache: TieredCache<f64> = TieredCache::with_l2(config(&ns), l2);
    let got = cache
        .get_or_store("usd-brl", || async { Err::<f64, _>(SourceDown) })
        .await
        .unwrap();
    assert_eq!((got.value, got.source), (5.31, CacheSource::Stale));
    assert!(got.age >= Duration::from_secs(599), "{:?}", got.age);
    cache.clear().await.unwrap();
}

#[tokio::test]
async fn a_redis_outage_keeps_l1_serving_counts_errors_and_never_stalls() {
    let metrics = common::Metrics::install();
    let Some(real) = real_l2().await else { return };
    let ns = namespace();
    let dead = RedisL2::builder(format!("redis://127.0.0.1:{}", dead_port().await))
        .key_prefix(PREFIX)
        .build()
        .unwrap();
    let cache: TieredCache<f64> = TieredCache::with_l2(config(&ns), dead.clone());

    let start = Instant::now();
    let loaded = cache
        .get_or_store("usd-brl", || async { Ok::<_, SourceDown>(5.31) })
        .await
        .unwrap();
    assert_eq!(loaded.source, CacheSource::Loaded);
    for _ in 0..20 {
        let hit = cache
            .get_or_store("usd-brl", || async { Err::<f64, _>(SourceDown) })
            .await
            .unwrap();
        assert_eq!(hit.source, CacheSource::L1);
        // Misses go to L2 first; Redis being down must not fail them.
        let other = cache
            .get_or_store("eur-brl", || async { Ok::<_, SourceDown>(6.2) })
            .await
            .unwrap();
        assert_eq!(other.value, 6.2);
        cache.invalidate("eur-brl").await.ok();
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "an outage must cost at most short L2 timeouts: {:?}",
        start.elapsed()
    );
    assert!(
        matches!(cache.insert("x", 1.0).await, Err(L2Error::Unavailable)),
        "after repeated failures the L2 breaker is open"
    );
    let errors = common::value(
        &metrics.snapshot(),
        "resilience_cache_requests_total",
        &[("cache", ns.as_str()), ("result", "l2_error")],
    )
    .unwrap();
    assert!(errors >= 5.0, "l2 errors counted: {errors}");

    // The same namespace on the real Redis works (and sees nothing from the outage).
    let healthy: TieredCache<f64> = TieredCache::with_l2(config(&ns), real);
    healthy.insert("usd-brl", 5.4).await.unwrap();
    let fresh: TieredCache<f64> = TieredCache::with_l2(config(&ns), healthy_l2().await);
    assert_eq!(fresh.get("usd-brl").await.unwrap().source, CacheSource::L2);
    healthy.clear().await.unwrap();
}

async fn healthy_l2() -> RedisL2 {
    RedisL2::builder(REDIS_URL)
        .key_prefix(PREFIX)
        .build()
        .unwrap()
}

/// A TCP proxy to the real Redis that can be switched off (dropping every connection) and on.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let up = up.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // drop: connection refused in effect
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect("127.0.0.1:6379").await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            })
        };
        Proxy {
            port,
            up,
            connections,
            accept,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

#[tokio::test]
async fn the_same_cache_recovers_when_redis_comes_back() {
    let Some(_) = real_l2().await else { return };
    let proxy = Proxy::start().await;
    let ns = namespace();
    let l2 = RedisL2::builder(format!("redis://127.0.0.1:{}", proxy.port))
        .key_prefix(PREFIX)
        .op_timeout(Duration::from_millis(100))
        .breaker(
            BreakerConfig::builder()
                .count_window(4)
                .minimum_calls(2)
                .wait_in_open(Duration::from_millis(200))
                .permitted_calls_in_half_open(1)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let cache: TieredCache<u32> = TieredCache::with_l2(config(&ns), l2.clone());
    cache.insert("a", 1).await.unwrap();

    proxy.down();
    wait_until("L2 errors", Duration::from_secs(5), || async {
        cache.insert("b", 2).await.is_err()
    })
    .await;
    assert_eq!(cache.get("a").await.unwrap().value, 1, "L1 still serves");

    proxy.up();
    wait_until("L2 recovery", Duration::from_secs(10), || async {
        cache.insert("c", 3).await.is_ok()
    })
    .await;
    let other: TieredCache<u32> = TieredCache::with_l2(config(&ns), healthy_l2().await);
    assert_eq!(other.get("c").await.unwrap().source, CacheSource::L2);
    other.clear().await.unwrap();
}
