//! Where the USD→BRL rate comes from: a simulated market (default, no network needed) or an
//! upstream HTTP API such as `https://api.frankfurter.app/latest?from=USD&to=BRL`.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ftshop_platform::money::{Decimal, RateBand, RateError};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Target of `http_client_request_duration_seconds` for upstream fetches.
const UPSTREAM_TARGET: &str = "upstream";

/// The rate source behind the cache, and the boundary where a rate enters the suite: every
/// rate it hands out is an exact [`Decimal`] inside its [`RateBand`].
pub struct RateSource {
    kind: SourceKind,
    band: RateBand,
    jump: Mutex<JumpGuard>,
}

/// Refuses a rate that moved too far from the last good one in one refresh (reviewer finding
/// F3: 5.31 then 1,000,000 was served live), unless the move persists.
///
/// A new rate more than `max_jump` (a ratio: `0.2` = 20 %) away from the last good rate is
/// [`FetchError::Jump`] (outcome `implausible`), and the cache serves the last good rate stale.
/// A real level shift keeps answering the new level: once `confirmations` consecutive answers
/// agree with each other (each within `max_jump` of the first), the last of them is accepted
/// and becomes the new reference. The idea is the "price band / limit up-limit down" circuit
/// breaker of exchanges and the "stale price / deviation check" of price oracles (Chainlink's
/// deviation threshold), reduced to one pair and a count of confirmations.
#[derive(Debug, Clone)]
pub struct JumpGuard {
    max_jump: Decimal,
    confirmations: u32,
    last_good: Option<Decimal>,
    /// A jumped rate seen, and how many consecutive answers agreed with it.
    candidate: Option<(Decimal, u32)>,
}

impl JumpGuard {
    /// Default largest move per refresh: 20 %. USD/BRL rarely moves 2 % in a day; its largest
    /// one-day move (March 2020) was under 10 %.
    pub const DEFAULT_MAX_JUMP: Decimal = Decimal::from_parts(2, 0, 0, false, 1);
    /// Default consistent answers after which a jump is believed.
    pub const DEFAULT_CONFIRMATIONS: u32 = 3;

    /// A guard refusing moves above `max_jump` (`0 < max_jump <= 10`) until `confirmations`
    /// (`2..=1000`) consecutive answers agree.
    pub fn new(max_jump: Decimal, confirmations: u32) -> Result<Self, String> {
        if max_jump <= Decimal::ZERO || max_jump > Decimal::TEN {
            return Err(format!(
                "the largest rate jump {max_jump} must be above 0 and at most 10 (a ratio)"
            ));
        }
        if !(2..=1000).contains(&confirmations) {
            return Err(format!(
                "{confirmations} confirmations of a rate jump must be between 2 and 1000"
            ));
        }
        Ok(Self {
            max_jump,
            confirmations,
            last_good: None,
            candidate: None,
        })
    }

    /// `rate` when it is within the allowed move of the last good rate (or confirms a jump),
    /// remembering it as the last good rate; [`FetchError::Jump`] otherwise.
    pub fn check(&mut self, rate: Decimal) -> Result<Decimal, FetchError> {
        let Some(last) = self.last_good else {
            self.accept(rate);
            return Ok(rate);
        };
        if self.within(last, rate) {
            self.accept(rate);
            return Ok(rate);
        }
        let seen = match self.candidate {
            Some((first, seen)) if self.within(first, rate) => seen + 1,
            _ => 1,
        };
        if seen >= self.confirmations {
            tracing::warn!(from = %last, to = %rate, answers = seen,
                "rate jump confirmed by consecutive answers; accepted as the new level");
            self.accept(rate);
            return Ok(rate);
        }
        let first = match self.candidate {
            Some((first, _)) if seen > 1 => first,
            _ => rate,
        };
        self.candidate = Some((first, seen));
        Err(FetchError::Jump {
            from: last,
            to: rate,
            max_jump: self.max_jump,
            seen,
            confirmations: self.confirmations,
        })
    }

    /// Takes `rate` as the last good rate (a rate another replica accepted).
    pub fn accept(&mut self, rate: Decimal) {
        self.last_good = Some(rate);
        self.candidate = None;
    }

    /// `|rate - reference| <= max_jump × reference` (the reference is positive: band-checked).
    fn within(&self, reference: Decimal, rate: Decimal) -> bool {
        let allowed = reference.checked_mul(self.max_jump);
        let moved = rate.checked_sub(reference).map(|d| d.abs());
        matches!((moved, allowed), (Some(moved), Some(allowed)) if moved <= allowed)
    }
}

impl Default for JumpGuard {
    fn default() -> Self {
        Self {
            max_jump: Self::DEFAULT_MAX_JUMP,
            confirmations: Self::DEFAULT_CONFIRMATIONS,
            last_good: None,
            candidate: None,
        }
    }
}

enum SourceKind {
    // Boxed: the seeded generator is larger than the upstream's client.
    Simulated(Box<SimulatedRate>),
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
    /// A number, but not a believable rate (`1e300`, `1e-9`, `0`, `-5.3`): a failed fetch, so
    /// the cache serves its last good rate instead.
    #[error("implausible rate refused: {0}")]
    Implausible(RateError),
    /// Inside the band, but too far from the last good rate in one refresh ([`JumpGuard`]).
    #[error(
        "implausible rate jump refused: {from} to {to} moves more than {max_jump} of the last \
         good rate ({seen} of {confirmations} consistent answers needed to accept it)"
    )]
    Jump {
        from: Decimal,
        to: Decimal,
        max_jump: Decimal,
        seen: u32,
        confirmations: u32,
    },
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
            FetchError::Implausible(_) | FetchError::Jump { .. } => "implausible",
        }
    }
}

impl RateSource {
    /// A simulated market; `None` seeds it at random.
    pub fn simulated(seed: Option<u64>) -> Self {
        let seed = seed.unwrap_or_else(rand::random);
        Self {
            kind: SourceKind::Simulated(Box::new(SimulatedRate {
                walk: Mutex::new(RandomWalk::new(seed)),
            })),
            band: RateBand::DEFAULT,
            jump: Mutex::new(JumpGuard::default()),
        }
    }

    /// The same source refusing rates outside `band` (default [`RateBand::DEFAULT`]).
    pub fn with_band(mut self, band: RateBand) -> Self {
        self.band = band;
        self
    }

    /// The same source refusing jumps as `guard` says (default [`JumpGuard::default`]).
    pub fn with_jump_guard(mut self, guard: JumpGuard) -> Self {
        self.jump = Mutex::new(guard);
        self
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
        Ok(Self {
            kind: SourceKind::Upstream(UpstreamRate {
                http,
                url,
                pointer: pointer.to_owned(),
                timeout,
            }),
            band: RateBand::DEFAULT,
            jump: Mutex::new(JumpGuard::default()),
        })
    }

    /// One rate, newly obtained: the simulated walk takes a step, the upstream is asked. A rate
    /// outside the band is [`FetchError::Implausible`], one too far from the last good rate is
    /// [`FetchError::Jump`] ([`JumpGuard`]), whichever source produced it.
    pub async fn fetch(&self) -> Result<Decimal, FetchError> {
        let believe = |rate: Decimal| {
            let rate = self.band.check(rate).map_err(FetchError::Implausible)?;
            self.jump_guard().check(rate)
        };
        match &self.kind {
            SourceKind::Simulated(simulated) => believe(simulated.next()),
            // Inside the upstream's fetch, so a refused jump is counted as `implausible`.
            SourceKind::Upstream(upstream) => upstream.fetch(&self.band, believe).await,
        }
    }

    fn jump_guard(&self) -> std::sync::MutexGuard<'_, JumpGuard> {
        // Plain fields, updated whole: a poisoned lock still holds a valid guard.
        self.jump.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The band this source's rates must lie in.
    pub fn band(&self) -> RateBand {
        self.band
    }

    /// Moves the simulated market to `rate`, a rate another replica published, so the next
    /// step continues from it: replicas sharing a cache walk one market instead of each their
    /// own. The upstream ignores it (it is the market).
    pub fn observe(&self, rate: Decimal) {
        // Another replica's accepted rate is the last good rate of the pair for this one too
        // (only a rate this replica would believe: inside its band).
        if self.band.check(rate).is_ok() {
            self.jump_guard().accept(rate);
        }
        if let SourceKind::Simulated(simulated) = &self.kind {
            simulated.walk().continue_from(rate);
        }
    }

    /// `simulated` or `upstream`, for logs and readiness details.
    pub fn kind(&self) -> &'static str {
        match self.kind {
            SourceKind::Simulated(_) => "simulated",
            SourceKind::Upstream(_) => "upstream",
        }
    }

    /// True for the simulated market.
    pub fn is_simulated(&self) -> bool {
        matches!(self.kind, SourceKind::Simulated(_))
    }
}

/// A random walk that moves on every fetch, like a market quote would.
pub struct SimulatedRate {
    walk: Mutex<RandomWalk>,
}

impl SimulatedRate {
    fn next(&self) -> Decimal {
        self.walk().step()
    }

    fn walk(&self) -> std::sync::MutexGuard<'_, RandomWalk> {
        // Nothing can panic while the lock is held, so a poisoned lock still holds a valid walk.
        self.walk.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A seeded random walk around a realistic USD/BRL value: small uniform steps, a gentle pull
/// back towards [`RandomWalk::START`] so it does not wander off to the bounds, clamped to
/// [`RandomWalk::MIN`]..=[`RandomWalk::MAX`] and rounded to 4 decimals, all in exact decimals.
/// The same seed gives the same sequence (for a given `rand` version; `StdRng` is not portable
/// across its releases).
pub struct RandomWalk {
    rng: StdRng,
    rate: Decimal,
}

impl RandomWalk {
    pub const START: Decimal = Decimal::from_parts(530, 0, 0, false, 2);
    pub const MIN: Decimal = Decimal::from_parts(450, 0, 0, false, 2);
    pub const MAX: Decimal = Decimal::from_parts(650, 0, 0, false, 2);
    /// Largest move per step, before the pull towards the start.
    pub const STEP: Decimal = Decimal::from_parts(1, 0, 0, false, 2);
    /// Decimals of a simulated rate.
    const DECIMALS: u32 = 4;
    /// Largest move per step in units of the last decimal (`STEP` = 100 × 0.0001).
    const STEP_UNITS: i64 = 100;
    /// Fraction of the distance to [`Self::START`] recovered on each step.
    const PULL: Decimal = Decimal::from_parts(2, 0, 0, false, 2);

    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            rate: Self::START,
        }
    }

    /// Continues the walk from `rate` (clamped to the bounds).
    pub fn continue_from(&mut self, rate: Decimal) {
        self.rate = rate.clamp(Self::MIN, Self::MAX);
    }

    /// Moves the rate and returns it.
    pub fn step(&mut self) -> Decimal {
        let noise = Decimal::new(
            self.rng.random_range(-Self::STEP_UNITS..=Self::STEP_UNITS),
            Self::DECIMALS,
        );
        let pull = (Self::START - self.rate) * Self::PULL;
        let next = (self.rate + pull + noise).clamp(Self::MIN, Self::MAX);
        self.rate = next.round_dp_with_strategy(Self::DECIMALS, ftshop_platform::money::ROUNDING);
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
    /// One request; `believe` (band and jump guard) decides on the rate before the outcome is
    /// recorded, so a refused rate counts as `implausible`.
    async fn fetch(
        &self,
        band: &RateBand,
        believe: impl FnOnce(Decimal) -> Result<Decimal, FetchError>,
    ) -> Result<Decimal, FetchError> {
        use tracing::Instrument;
        let started = Instant::now();
        // A client span (a child of the request's, or the root of the refresher's own trace);
        // its W3C context goes with the request, so an upstream that traces joins the trace.
        let span = tracing::info_span!(
            target: "ftshop::trace::http",
            "call",
            otel.name = "GET upstream rate",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "GET",
            ftshop.step = UPSTREAM_TARGET,
            ftshop.outcome = tracing::field::Empty,
        );
        let result = self
            .fetch_once(band, &span)
            .instrument(span.clone())
            .await
            .and_then(believe);
        let outcome = match &result {
            Ok(_) => "success",
            Err(err) => err.outcome(),
        };
        if !span.is_disabled() {
            span.record("ftshop.outcome", outcome);
            if result.is_err() {
                span.record("otel.status_code", "error");
            }
        }
        metrics::histogram!(
            "http_client_request_duration_seconds",
            "service" => crate::NAME,
            "target" => UPSTREAM_TARGET,
            "outcome" => outcome,
        )
        .record(started.elapsed().as_secs_f64());
        result
    }

    async fn fetch_once(
        &self,
        band: &RateBand,
        span: &tracing::Span,
    ) -> Result<Decimal, FetchError> {
        let classify = |err: reqwest::Error| {
            if err.is_timeout() {
                FetchError::Timeout(self.timeout)
            } else if err.is_decode() {
                FetchError::Decode(ftshop_platform::error_chain(&err.without_url()))
            } else {
                FetchError::Transport(ftshop_platform::error_chain(&err.without_url()))
            }
        };
        let mut trace_headers = reqwest::header::HeaderMap::new();
        ftshop_platform::telemetry::inject_context(span, &mut trace_headers);
        let response = self
            .http
            .get(self.url.clone())
            .headers(trace_headers)
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
        rate_at(&body, &self.pointer, band)
    }
}

/// Reads the rate at `pointer` as an exact decimal inside `band`. Numbers are read through
/// their shortest decimal text ([`money::decimal_from_f64`](ftshop_platform::money::decimal_from_f64)),
/// numeric strings (`"5.1"`, `"5.1e0"`) exactly. Anything else, NaN and infinities are
/// [`FetchError::Decode`]; a number outside the band (`0`, `-5.3`, `1e300`, `1e-9`) is
/// [`FetchError::Implausible`].
pub fn rate_at(
    body: &serde_json::Value,
    pointer: &str,
    band: &RateBand,
) -> Result<Decimal, FetchError> {
    use std::str::FromStr;
    let value = body
        .pointer(pointer)
        .ok_or_else(|| FetchError::Decode(format!("nothing at JSON pointer {pointer:?}")))?;
    let not_a_number = || FetchError::Decode(format!("value at {pointer:?} is not a number"));
    let rate = match value {
        serde_json::Value::Number(n) => {
            let float = n.as_f64().ok_or_else(not_a_number)?;
            return band.check_f64(float).map_err(FetchError::Implausible);
        }
        serde_json::Value::String(s) => {
            let s = s.trim();
            match Decimal::from_str(s).or_else(|_| Decimal::from_scientific(s)) {
                Ok(rate) => Some(rate),
                // A number no decimal holds ("1e300") is absurd, not malformed.
                Err(_) => match s.parse::<f64>() {
                    Ok(float) if float.is_finite() => {
                        return band.check_f64(float).map_err(FetchError::Implausible);
                    }
                    _ => None,
                },
            }
        }
        _ => None,
    }
    .ok_or_else(not_a_number)?;
    band.check(rate).map_err(FetchError::Implausible)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_walk_is_deterministic_for_a_seed() {
        let mut a = RandomWalk::new(42);
        let mut b = RandomWalk::new(42);
        let first: Vec<Decimal> = (0..100).map(|_| a.step()).collect();
        let second: Vec<Decimal> = (0..100).map(|_| b.step()).collect();
        assert_eq!(first, second);

        let mut c = RandomWalk::new(43);
        let other: Vec<Decimal> = (0..100).map(|_| c.step()).collect();
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
            assert!(rate.scale() <= 4, "{rate} has more than 4 decimals");
            // A step is the noise plus a small pull towards the start.
            assert!(
                (rate - previous).abs() <= dec("0.05"),
                "step {previous} -> {rate} too large"
            );
            previous = rate;
        }
        let mut walk = RandomWalk::new(1);
        assert!((walk.step() - RandomWalk::START).abs() <= RandomWalk::STEP);
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
        source.observe(dec("6.2"));
        let next = source.fetch().await;
        assert!(
            matches!(next, Ok(r) if (r - dec("6.2")).abs() <= dec("0.03")),
            "{next:?}"
        );
        source.observe(dec("100"));
        let clamped = source.fetch().await;
        assert!(
            matches!(clamped, Ok(r) if r <= RandomWalk::MAX && r > RandomWalk::MAX - dec("0.1")),
            "{clamped:?}"
        );
    }

    #[test]
    fn rates_are_read_at_the_pointer() {
        let body = json!({"amount": 1.0, "base": "USD", "rates": {"BRL": 5.4321}});
        let band = RateBand::DEFAULT;
        assert!(matches!(rate_at(&body, "/rates/BRL", &band), Ok(r) if r == dec("5.4321")));
        assert!(matches!(rate_at(&json!({"r": "5.1"}), "/r", &band), Ok(r) if r == dec("5.1")));
        assert!(matches!(rate_at(&json!(5.2), "", &band), Ok(r) if r == dec("5.2")));
        // Exact: the decimal written, not the nearest binary fraction.
        assert_eq!(rate_at(&json!(5.31), "", &band).ok(), Some(dec("5.31")));
        // More digits than a JSON number carries: rounded once, here, to 15 significant digits.
        assert_eq!(
            rate_at(&json!("5.123456789012345678"), "", &band).ok(),
            Some(dec("5.12345678901235"))
        );
    }

    #[test]
    fn unusable_rates_are_failed_fetches() {
        let band = RateBand::DEFAULT;
        for body in [
            json!({"rates": {}}),
            json!({"rates": {"BRL": "NaN"}}),
            json!({"rates": {"BRL": "inf"}}),
            json!({"rates": {"BRL": null}}),
            json!({"rates": {"BRL": [5.3]}}),
            json!({"rates": {"BRL": "five"}}),
        ] {
            assert!(
                matches!(
                    rate_at(&body, "/rates/BRL", &band),
                    Err(FetchError::Decode(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn absurd_rates_are_refused_at_the_boundary() {
        let band = RateBand::DEFAULT;
        for body in [
            json!({"rates": {"BRL": 0}}),
            json!({"rates": {"BRL": -5.3}}),
            json!({"rates": {"BRL": 1e300}}),
            json!({"rates": {"BRL": 1e-9}}),
            json!({"rates": {"BRL": "1e300"}}),
            json!({"rates": {"BRL": "0.000000001"}}),
            json!({"rates": {"BRL": 1000000.5}}),
            // Reviewer finding F3: plausible for "any pair", absurd for USD->BRL.
            json!({"rates": {"BRL": 0.000001}}),
            json!({"rates": {"BRL": 1000000}}),
        ] {
            let got = rate_at(&body, "/rates/BRL", &band);
            assert!(
                matches!(got, Err(FetchError::Implausible(_))),
                "{body}: {got:?}"
            );
        }
        // The ends of the band are plausible.
        assert!(rate_at(&json!(0.5), "", &band).is_ok());
        assert!(rate_at(&json!(50), "", &band).is_ok());
    }

    /// Reviewer finding F3 (b): a jump beyond the allowed move is refused until it persists.
    #[test]
    fn the_jump_guard_refuses_a_jump_until_consistent_answers_confirm_it() {
        let mut guard = JumpGuard::new(dec("0.2"), 3).unwrap_or_default();
        assert!(matches!(guard.check(dec("5.31")), Ok(r) if r == dec("5.31")));
        // 20 % is allowed, just above is not.
        assert!(guard.check(dec("6.372")).is_ok());
        assert!(guard.check(dec("5.31")).is_ok());
        assert!(matches!(
            guard.check(dec("40")),
            Err(FetchError::Jump { seen: 1, .. })
        ));
        // A one-off: the next answer is back near 5.31 and resets the candidate.
        assert!(guard.check(dec("5.32")).is_ok());
        assert!(matches!(
            guard.check(dec("40")),
            Err(FetchError::Jump { seen: 1, .. })
        ));
        assert!(matches!(
            guard.check(dec("41")),
            Err(FetchError::Jump { seen: 2, .. })
        ));
        // The third consistent answer is the new level, and the reference from now on.
        assert!(matches!(guard.check(dec("40.5")), Ok(r) if r == dec("40.5")));
        assert!(guard.check(dec("42")).is_ok());
        assert!(matches!(
            guard.check(dec("5.31")),
            Err(FetchError::Jump { .. })
        ));
        assert!(JumpGuard::new(dec("0"), 3).is_err());
        assert!(JumpGuard::new(dec("0.2"), 1).is_err());
    }

    #[tokio::test]
    async fn a_configured_band_refuses_the_walk_outside_it() {
        let narrow = RateBand::new(dec("1"), dec("2")).unwrap_or_default();
        let source = RateSource::simulated(Some(5)).with_band(narrow);
        assert!(matches!(
            source.fetch().await,
            Err(FetchError::Implausible(_))
        ));
    }

    fn dec(text: &str) -> Decimal {
        text.parse().unwrap_or_else(|err| panic!("{text}: {err}"))
    }
}
