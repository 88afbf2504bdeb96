//! Where the USD→BRL rate comes from: a simulated market (default, no network needed) or an
//! upstream HTTP API such as `https://api.frankfurter.app/latest?from=USD&to=BRL`.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Target of `http_client_request_duration_seconds` for upstream fetches.
const UPSTREAM_TARGET: &str = "upstream";

/// The rate source behind the cache.
pub enum RateSource {
    Simulated(SimulatedRate),
    Upstream(UpstreamRate),
}

/// Why a fetch produced no usable rate.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream unreachable: {0}")]
    Transport(String),
    #[error("upstream answered {0}")]
    Status(reqwest::StatusCode),
    #[error("upstream answer unusable: {0}")]
    Decode(String),
}

impl FetchError {
    /// Bounded `outcome` label, the same vocabulary Ecommerce uses for its downstream calls.
    fn outcome(&self) -> &'static str {
        match self {
            FetchError::Timeout(_) => "timeout",
            FetchError::Transport(_) => "unreachable",
            FetchError::Status(status) if status.is_client_error() => "client_error",
            FetchError::Status(_) => "server_error",
            FetchError::Decode(_) => "decode_error",
        }
    }
}

impl RateSource {
    /// A simulated market; `None` seeds it at random.
    pub fn simulated(seed: Option<u64>) -> Self {
        let seed = seed.unwrap_or_else(rand::random);
        RateSource::Simulated(SimulatedRate {
            walk: Mutex::new(RandomWalk::new(seed)),
        })
    }

    pub fn upstream(url: reqwest::Url, pointer: &str, timeout: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "--upstream-url must be an http(s) URL, got scheme {:?}",
            url.scheme()
        );
        anyhow::ensure!(
            pointer.is_empty() || pointer.starts_with('/'),
            "--upstream-pointer must be a JSON pointer such as /rates/BRL, got {pointer:?}"
        );
        anyhow::ensure!(!timeout.is_zero(), "--upstream-timeout must be positive");
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()?;
        Ok(RateSource::Upstream(UpstreamRate {
            http,
            url,
            pointer: pointer.to_owned(),
            timeout,
        }))
    }

    /// One rate, newly obtained: the simulated walk takes a step, the upstream is asked.
    pub async fn fetch(&self) -> Result<f64, FetchError> {
        match self {
            RateSource::Simulated(simulated) => Ok(simulated.next()),
            RateSource::Upstream(upstream) => upstream.fetch().await,
        }
    }

    /// Moves the simulated market to `rate`, a rate another replica published, so the next
    /// step continues from it: replicas sharing a cache walk one market instead of each their
    /// own. The upstream ignores it (it is the market).
    pub fn observe(&self, rate: f64) {
        if let RateSource::Simulated(simulated) = self {
            simulated.walk().continue_from(rate);
        }
    }

    /// `simulated` or `upstream`, for logs and readiness details.
    pub fn kind(&self) -> &'static str {
        match self {
            RateSource::Simulated(_) => "simulated",
            RateSource::Upstream(_) => "upstream",
        }
    }
}

/// A random walk that moves on every fetch, like a market quote would.
pub struct SimulatedRate {
    walk: Mutex<RandomWalk>,
}

impl SimulatedRate {
    fn next(&self) -> f64 {
        self.walk().step()
    }

    fn walk(&self) -> std::sync::MutexGuard<'_, RandomWalk> {
        // Nothing can panic while the lock is held, so a poisoned lock still holds a valid walk.
        self.walk.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A seeded random walk around a realistic USD/BRL value: small uniform steps, a gentle pull
/// back towards [`RandomWalk::START`] so it does not wander off to the bounds, clamped to
/// [`RandomWalk::MIN`]..=[`RandomWalk::MAX`] and rounded to 4 decimals. The same seed gives the
/// same sequence (for a given `rand` version; `StdRng` is not portable across its releases).
pub struct RandomWalk {
    rng: StdRng,
    rate: f64,
}

impl RandomWalk {
    pub const START: f64 = 5.30;
    pub const MIN: f64 = 4.50;
    pub const MAX: f64 = 6.50;
    /// Largest move per step, before the pull towards the start.
    pub const STEP: f64 = 0.01;
    /// Fraction of the distance to [`Self::START`] recovered on each step.
    const PULL: f64 = 0.02;

    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            rate: Self::START,
        }
    }

    /// Continues the walk from `rate` (clamped to the bounds; ignored unless finite).
    pub fn continue_from(&mut self, rate: f64) {
        if rate.is_finite() {
            self.rate = rate.clamp(Self::MIN, Self::MAX);
        }
    }

    /// Moves the rate and returns it.
    pub fn step(&mut self) -> f64 {
        let noise = self.rng.random_range(-Self::STEP..=Self::STEP);
        let pull = (Self::START - self.rate) * Self::PULL;
        let next = (self.rate + pull + noise).clamp(Self::MIN, Self::MAX);
        self.rate = (next * 10_000.0).round() / 10_000.0;
        self.rate
    }
}

/// An HTTP API answering JSON with the rate at a JSON pointer.
pub struct UpstreamRate {
    http: reqwest::Client,
    url: reqwest::Url,
    pointer: String,
    timeout: Duration,
}

impl UpstreamRate {
    async fn fetch(&self) -> Result<f64, FetchError> {
        let started = Instant::now();
        let result = self.fetch_once().await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(err) => err.outcome(),
        };
        metrics::histogram!(
            "http_client_request_duration_seconds",
            "service" => crate::NAME,
            "target" => UPSTREAM_TARGET,
            "outcome" => outcome,
        )
        .record(started.elapsed().as_secs_f64());
        result
    }

    async fn fetch_once(&self) -> Result<f64, FetchError> {
        let classify = |err: reqwest::Error| {
            if err.is_timeout() {
                FetchError::Timeout(self.timeout)
            } else if err.is_decode() {
                FetchError::Decode(error_chain(&err.without_url()))
            } else {
                FetchError::Transport(error_chain(&err.without_url()))
            }
        };
        let response = self
            .http
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status));
        }
        let body: serde_json::Value = response.json().await.map_err(classify)?;
        rate_at(&body, &self.pointer)
    }
}

/// `error: cause: root cause`, since reqwest's own message alone ("error sending request")
/// does not say what went wrong.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads a positive, finite rate at `pointer`; numbers and numeric strings are accepted.
pub fn rate_at(body: &serde_json::Value, pointer: &str) -> Result<f64, FetchError> {
    let value = body
        .pointer(pointer)
        .ok_or_else(|| FetchError::Decode(format!("nothing at JSON pointer {pointer:?}")))?;
    let rate = match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| FetchError::Decode(format!("value at {pointer:?} is not a number")))?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(FetchError::Decode(format!(
            "rate {rate} at {pointer:?} is not positive and finite"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_walk_is_deterministic_for_a_seed() {
        let mut a = RandomWalk::new(42);
        let mut b = RandomWalk::new(42);
        let first: Vec<f64> = (0..100).map(|_| a.step()).collect();
        let second: Vec<f64> = (0..100).map(|_| b.step()).collect();
        assert_eq!(first, second);

        let mut c = RandomWalk::new(43);
        let other: Vec<f64> = (0..100).map(|_| c.step()).collect();
        assert_ne!(first, other, "another seed gives another walk");
    }

    #[test]
    fn the_walk_stays_realistic() {
        let mut walk = RandomWalk::new(7);
        let mut previous = RandomWalk::START;
        for _ in 0..100_000 {
            let rate = walk.step();
            assert!(
                (RandomWalk::MIN..=RandomWalk::MAX).contains(&rate),
                "{rate} out of bounds"
            );
            let scaled = rate * 10_000.0;
            assert!(
                (scaled - scaled.round()).abs() < 1e-6,
                "{rate} has more than 4 decimals"
            );
            // A step is the noise plus a small pull towards the start.
            assert!(
                (rate - previous).abs() <= 0.05,
                "step {previous} -> {rate} too large"
            );
            previous = rate;
        }
        let mut walk = RandomWalk::new(1);
        assert!((walk.step() - RandomWalk::START).abs() <= RandomWalk::STEP + 1e-9);
    }

    #[tokio::test]
    async fn the_simulated_source_moves_on_each_fetch() {
        let source = RateSource::simulated(Some(5));
        let mut expected = RandomWalk::new(5);
        for _ in 0..10 {
            let rate = source.fetch().await;
            assert!(matches!(rate, Ok(r) if r == expected.step()));
        }
    }

    #[tokio::test]
    async fn the_simulated_walk_continues_from_an_observed_rate() {
        let source = RateSource::simulated(Some(5));
        source.observe(6.2);
        let next = source.fetch().await;
        assert!(matches!(next, Ok(r) if (r - 6.2).abs() <= 0.03), "{next:?}");
        source.observe(100.0);
        let clamped = source.fetch().await;
        assert!(
            matches!(clamped, Ok(r) if r <= RandomWalk::MAX && r > RandomWalk::MAX - 0.1),
            "{clamped:?}"
        );
        source.observe(f64::NAN);
        assert!(matches!(source.fetch().await, Ok(r) if r.is_finite()));
    }

    #[test]
    fn rates_are_read_at_the_pointer() {
        let body = json!({"amount": 1.0, "base": "USD", "rates": {"BRL": 5.4321}});
        assert!(matches!(rate_at(&body, "/rates/BRL"), Ok(r) if r == 5.4321));
        assert!(matches!(rate_at(&json!({"r": "5.1"}), "/r"), Ok(r) if r == 5.1));
        assert!(matches!(rate_at(&json!(5.2), ""), Ok(r) if r == 5.2));
    }

    #[test]
    fn unusable_rates_are_failed_fetches() {
        for body in [
            json!({"rates": {}}),
            json!({"rates": {"BRL": 0}}),
            json!({"rates": {"BRL": -5.3}}),
            json!({"rates": {"BRL": "NaN"}}),
            json!({"rates": {"BRL": "inf"}}),
            json!({"rates": {"BRL": null}}),
            json!({"rates": {"BRL": [5.3]}}),
            json!({"rates": {"BRL": "five"}}),
        ] {
            assert!(
                matches!(rate_at(&body, "/rates/BRL"), Err(FetchError::Decode(_))),
                "{body}"
            );
        }
    }
}
