//! Exchange with `REDIS_URL` against the real Redis at 127.0.0.1:6379 (scripts/ci/ensure-services.sh
//! starts it; these tests fail when it is not there). Every test uses its own uuid key prefix,
//! its own data directories, and deletes its keys at the end; keys a failed test leaves behind
//! expire with the short TTL + max staleness the tests configure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ftshop_exchange::{Config, app};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How long a test waits for a condition before failing.
const DEADLINE: Duration = Duration::from_secs(20);

/// One test's keys in Redis and its Exchange processes' data directories.
struct Keyspace {
    prefix: String,
    dirs: Vec<TempDir>,
}

impl Keyspace {
    /// A fresh prefix; fails the test when Redis does not answer.
    async fn new() -> Self {
        let mut conn = redis_conn().await;
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        assert!(
            pong.is_ok(),
            "no Redis at {REDIS_URL} ({pong:?}); start it with scripts/ci/ensure-services.sh"
        );
        Keyspace {
            prefix: format!("ftshop-test-{}:", uuid::Uuid::new_v4().simple()),
            dirs: Vec::new(),
        }
    }

    /// The Redis key of the shared rate.
    fn key(&self) -> String {
        format!("{}exchange:usd-brl", self.prefix)
    }

    /// Exchange settings with the simulated source seeded by `seed`, a 60 s TTL and 60 s max
    /// staleness, its own data directory, and this keyspace in the Redis at `redis_url`.
    fn config(&mut self, redis_url: &str, seed: u64) -> Config {
        let dir = tempfile::tempdir().expect("temp data dir");
        let mut config = Config::for_data_dir(dir.path());
        self.dirs.push(dir);
        config.common.redis_url = Some(redis_url.to_owned());
        config.redis_key_prefix = self.prefix.clone();
        // Generous: a loaded CI machine must not turn a slow first connection into a miss.
        config.redis_timeout = Duration::from_millis(500);
        config.rate_seed = Some(seed);
        config.rate_ttl = Duration::from_secs(60);
        config.max_stale = Duration::from_secs(60);
        config
    }

    /// What Redis holds for the rate: the envelope `{"v": {"rate", "as_of"}, "t"}`.
    async fn stored(&self) -> Option<Value> {
        let mut conn = redis_conn().await;
        let raw: Option<String> = conn.get(self.key()).await.expect("GET the rate key");
        raw.map(|text| serde_json::from_str(&text).expect("the stored rate is JSON"))
    }

    /// Stores `rate` as if another replica had fetched it `age` ago.
    async fn store(&self, rate: f64, age: Duration) -> String {
        let fetched = SystemTime::now() - age;
        let millis = fetched
            .duration_since(UNIX_EPOCH)
            .expect("after the epoch")
            .as_millis() as u64;
        let as_of = OffsetDateTime::from(fetched)
            .format(&Rfc3339)
            .expect("RFC 3339");
        let body = json!({"v": {"rate": rate, "as_of": as_of}, "t": millis}).to_string();
        let mut conn = redis_conn().await;
        conn.set_ex::<_, _, ()>(self.key(), body, 120)
            .await
            .expect("SET the rate key");
        as_of
    }

    /// Deletes every key of this test.
    async fn clean(self) {
        let mut conn = redis_conn().await;
        let keys: Vec<String> = conn
            .keys(format!("{}*", self.prefix))
            .await
            .expect("KEYS of the test prefix");
        if !keys.is_empty() {
            conn.del::<_, ()>(&keys).await.expect("DEL the test keys");
        }
    }
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|err| {
            panic!("no Redis at {REDIS_URL} ({err}); start it with scripts/ci/ensure-services.sh")
        })
}

async fn spawn_exchange(config: Config) -> String {
    let router = app(&config).await.expect("exchange app starts");
    ftshop_platform::server::testing::serve_on_free_port(router)
        .await
        .expect("serve on a free port")
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn source(&self) -> &str {
        self.body["source"].as_str().unwrap_or_default()
    }

    fn rate(&self) -> f64 {
        self.body["rate"].as_f64().unwrap_or(f64::NAN)
    }

    /// The readiness check called `name`.
    fn check(&self, name: &str) -> Option<&Value> {
        self.body["checks"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
    }
}

async fn get(url: &str) -> Answer {
    let response = reqwest::get(url).await.expect("request sent");
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, body }
}

/// A rate answer, asserted to be a 200.
async fn rate(base: &str) -> Answer {
    let answer = get(&format!("{base}/exchange")).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer
}

/// Runs `attempt` until it returns `Some`, or fails the test after [`DEADLINE`].
async fn poll<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        assert!(started.elapsed() < DEADLINE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The detail of the `redis` readiness check, asserting that readiness passes and that check too.
async fn ready_redis_detail(base: &str) -> String {
    let ready = get(&format!("{base}/health/ready")).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    let check = ready.check("redis").expect("a redis check");
    assert_eq!(check["status"], "ok", "{ready:?}");
    check["detail"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn replicas_share_one_rate_and_a_late_replica_serves_it_at_once() {
    let mut keys = Keyspace::new().await;
    let a = spawn_exchange(keys.config(REDIS_URL, 1)).await;
    let b = spawn_exchange(keys.config(REDIS_URL, 2)).await;

    let first = rate(&a).await;
    assert_eq!(first.source(), "live", "{first:?}");
    let stored = keys.stored().await.expect("the rate is in Redis");
    assert_eq!(stored["v"]["rate"].as_f64(), Some(first.rate()), "{stored}");

    // B's own walk (another seed) is never asked: it serves A's rate, as of A's fetch.
    let second = rate(&b).await;
    assert_eq!(second.source(), "cache", "{second:?}");
    assert_eq!(second.rate(), first.rate());
    assert_eq!(second.body["as_of"], first.body["as_of"]);

    // A replica started later (a restart after a crash) serves it from its first request.
    let c = spawn_exchange(keys.config(REDIS_URL, 3)).await;
    let third = rate(&c).await;
    assert_eq!(third.source(), "cache", "{third:?}");
    assert_eq!(third.rate(), first.rate());
    assert_eq!(third.body["as_of"], first.body["as_of"]);

    for base in [&a, &b, &c] {
        let detail = ready_redis_detail(base).await;
        assert!(detail.starts_with("reachable"), "{detail}");
    }
    let metrics = get(&format!("{b}/metrics")).await;
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(
        text.contains("resilience_cache_requests_total{cache=\"exchange\",result=\"l2_hit\"}"),
        "no shared-tier hit counted in\n{text}"
    );
    keys.clean().await;
}

/// A shared rate outside the plausible band (another replica's bug, a hand-edited key) is not
/// served, fresh as it is: the replica fetches its own rate and overwrites it.
#[tokio::test]
async fn an_absurd_shared_rate_is_ignored() {
    for absurd in [1e300, 1e-9, 0.0, -5.31] {
        let mut keys = Keyspace::new().await;
        let config = keys.config(REDIS_URL, 7);
        keys.store(absurd, Duration::from_secs(1)).await;

        let base = spawn_exchange(config).await;
        let answer = rate(&base).await;
        assert_eq!(answer.source(), "live", "{absurd}: {answer:?}");
        assert!((4.5..=6.5).contains(&answer.rate()), "{absurd}: {answer:?}");
        let stored = keys.stored().await.expect("the new rate is in Redis");
        assert_eq!(
            stored["v"]["rate"].as_f64(),
            Some(answer.rate()),
            "{stored}"
        );
        keys.clean().await;
    }
}

#[tokio::test]
async fn a_restarted_replica_continues_the_walk_from_the_shared_last_known_good() {
    let mut keys = Keyspace::new().await;
    // Fetched 10 minutes ago by a replica now gone: past the TTL, within the staleness.
    let mut config = keys.config(REDIS_URL, 7);
    config.max_stale = Duration::from_secs(3600);
    keys.store(6.1234, Duration::from_secs(600)).await;

    let base = spawn_exchange(config).await;
    let answer = rate(&base).await;
    assert_eq!(
        answer.source(),
        "live",
        "too old to serve as fresh: {answer:?}"
    );
    // A new walk would start at 5.30; this one takes one step from the shared rate.
    assert!((answer.rate() - 6.1234).abs() < 0.05, "{answer:?}");
    let stored = keys.stored().await.expect("the new rate is in Redis");
    assert_eq!(
        stored["v"]["rate"].as_f64(),
        Some(answer.rate()),
        "{stored}"
    );
    keys.clean().await;
}

#[tokio::test]
async fn a_replica_whose_source_fails_serves_the_shared_last_known_good() {
    let mut keys = Keyspace::new().await;
    let mut config = keys.config(REDIS_URL, 7);
    config.max_stale = Duration::from_secs(3600);
    config.upstream_timeout = Duration::from_millis(200);
    config.upstream_url = Some(
        format!("http://127.0.0.1:{}/latest", free_port().await)
            .parse()
            .expect("upstream URL"),
    );
    let as_of = keys.store(5.4321, Duration::from_secs(600)).await;

    let base = spawn_exchange(config).await;
    let answer = rate(&base).await;
    assert_eq!(answer.source(), "stale", "{answer:?}");
    assert_eq!(answer.rate(), 5.4321);
    let served = OffsetDateTime::parse(answer.body["as_of"].as_str().unwrap_or_default(), &Rfc3339);
    let stored = OffsetDateTime::parse(&as_of, &Rfc3339).expect("stored as_of");
    assert!(
        matches!(served, Ok(t) if (t - stored).abs() < time::Duration::milliseconds(1)),
        "as of the other replica's fetch ({as_of}): {answer:?}"
    );
    keys.clean().await;
}

#[tokio::test]
async fn without_redis_exchange_serves_from_its_own_source() {
    let mut keys = Keyspace::new().await;
    let dead = format!("redis://127.0.0.1:{}", free_port().await);
    let base = spawn_exchange(keys.config(&dead, 11)).await;

    let started = Instant::now();
    let live = rate(&base).await;
    assert_eq!(live.source(), "live", "{live:?}");
    assert!((4.5..=6.5).contains(&live.rate()), "{live:?}");
    let cached = rate(&base).await;
    assert_eq!(cached.source(), "cache", "{cached:?}");
    assert_eq!(cached.rate(), live.rate());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "Redis being down costs at most short timeouts: {:?}",
        started.elapsed()
    );

    let detail = ready_redis_detail(&base).await;
    assert!(detail.starts_with("degraded: unreachable"), "{detail}");
    assert_eq!(keys.stored().await, None, "nothing reached the real Redis");
    keys.clean().await;
}

#[tokio::test]
async fn exchange_recovers_its_redis_tier_when_redis_comes_back() {
    let mut keys = Keyspace::new().await;
    let proxy = Proxy::start().await;
    let mut config = keys.config(&format!("redis://127.0.0.1:{}", proxy.port), 21);
    // Short enough that requests keep refreshing through the outage.
    config.rate_ttl = Duration::from_millis(100);
    config.redis_timeout = Duration::from_millis(200);
    let base = spawn_exchange(config).await;

    let first = rate(&base).await;
    assert_eq!(first.source(), "live", "{first:?}");
    assert!(keys.stored().await.is_some(), "stored through the proxy");

    proxy.down();
    // Requests keep being answered, and refreshes fetch from the source.
    poll("a live rate with Redis down", || async {
        (rate(&base).await.source() == "live").then_some(())
    })
    .await;
    // Failed Redis operations open the breaker, after which refreshes stop trying Redis.
    poll("the Redis breaker to open", || async {
        assert_eq!(rate(&base).await.status, StatusCode::OK);
        let detail = ready_redis_detail(&base).await;
        (detail.starts_with("degraded: unreachable") && detail.contains("breaker open"))
            .then_some(())
    })
    .await;

    proxy.up();
    let back_at = unix_ms();
    // The breaker's half-open probe lets a refresh through again, and it stores the rate.
    let stored = poll("a rate stored after Redis came back", || async {
        let answer = rate(&base).await;
        let stored = keys.stored().await?;
        let written = stored["t"].as_u64()?;
        (written >= back_at && answer.source() != "stale").then_some(stored)
    })
    .await;
    poll("readiness to report Redis back, breaker closed", || async {
        let detail = ready_redis_detail(&base).await;
        (detail.starts_with("reachable") && detail.contains("breaker closed")).then_some(())
    })
    .await;

    // A replica on the real Redis sees what the recovered one stored.
    let other = spawn_exchange(keys.config(REDIS_URL, 22)).await;
    let answer = rate(&other).await;
    let stored_now = keys.stored().await.expect("still stored");
    assert!(stored["v"]["rate"].is_number(), "{stored}");
    assert_eq!(
        Some(answer.rate()),
        stored_now["v"]["rate"].as_f64(),
        "{answer:?}"
    );
    keys.clean().await;
}

/// A loopback port where nothing listens.
async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr").port()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A TCP proxy to the real Redis that can be switched off (dropping every connection and
/// refusing new ones) and on again.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (up, connections) = (up.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped at once: as good as refused
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect("127.0.0.1:6379").await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    lock(&connections).push(task);
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
        for task in lock(&self.connections).drain(..) {
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
