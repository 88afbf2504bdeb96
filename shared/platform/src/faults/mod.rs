//! Fault injection: the suite fails on purpose, reproducibly, the way the exercise specifies.
//!
//! A [`FaultEngine`] holds rules per route (`omission`, `crash`, `error`, `latency`), each with a
//! probability drawn per request and a window: once drawn, the fault stays on for that long
//! (`0` = only the request that drew it; a crash lasts until the process is restarted because
//! the process exits). Every rule draws from its own random stream derived from one seed and the
//! process's *fault epoch*, so the same seed, the same epoch and the same traffic on a route give
//! the same faults, whatever the other routes see.
//!
//! The epoch is the lifetime number of the process (`--fault-epoch`, `FTSHOP_FAULT_EPOCH`; `ftshop
//! up` passes its restart count). Without it a restarted process would replay the same draws and
//! crash at the same request every lifetime, so a "crash, p = 0.1" rule would really be "crash at
//! request N, forever" (reviewer finding F1). Epoch 0 derives the streams exactly as before.
//!
//! The engine sits in a tower middleware ([`layer::inject`]) on every service and is changed at
//! run time through the authenticated admin API ([`admin`]). Profiles: `off`, `default` (the
//! four faults of the exercise) or a TOML/JSON file (docs/faults.md).

pub mod admin;
pub mod layer;
mod profile;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use profile::{FaultProfile, ProfileError};

/// Exit code of a process stopped by a crash fault (EX_SOFTWARE), so supervisors and logs can
/// tell an injected crash from a real one.
pub const CRASH_EXIT_CODE: i32 = 70;
/// Response header naming the fault injected into that answer.
pub const FAULT_HEADER: &str = "x-fault-injected";
/// Longest window, latency and time-to-live a rule may ask for.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
const MAX_LATENCY: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Never answer that request (the client's timeout is the only way out).
    Omission,
    /// Flush logs and exit the process with [`CRASH_EXIT_CODE`].
    Crash,
    /// Answer 500 problem+json.
    Error,
    /// Add `latency_ms` before the request is handled.
    Latency,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Omission => "omission",
            FaultKind::Crash => "crash",
            FaultKind::Error => "error",
            FaultKind::Latency => "latency",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fault rule, as written in profile files and sent to `PUT /admin/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Service the rule is for (`store`, `exchange`, ...); omitted = every service. Rules for
    /// another service are ignored, so one profile can be sent to the whole suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only this replica (`store-2`); omitted = every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Route template as the service declares it (`/product`, `/balance/{user}`), or `*`.
    pub route: String,
    /// HTTP method; omitted = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub kind: FaultKind,
    /// Chance that a request draws the fault, 0.0..=1.0.
    pub probability: f64,
    /// Once drawn, the fault applies to every request for this long (0 = only that request).
    #[serde(default)]
    pub window_ms: u64,
    /// Delay added by a `latency` fault.
    #[serde(default)]
    pub latency_ms: u64,
    /// The rule removes itself after this long, so a forgotten fault turns itself off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

impl FaultRule {
    /// True when `other` aims at the same thing (route, method, kind and replica): setting a
    /// rule through `ftshop fault set` or the control room replaces such a rule instead of
    /// adding a second one beside it.
    pub fn same_target(&self, other: &FaultRule) -> bool {
        self.route == other.route
            && self.method == other.method
            && self.kind == other.kind
            && self.instance == other.instance
    }

    /// Checks ranges; the error reads as a 422 detail.
    pub fn validate(&self) -> Result<(), String> {
        let route = self.route.as_str();
        if route != "*" && !route.starts_with('/') {
            return Err(format!("route `{route}` must start with `/` or be `*`"));
        }
        if route.len() > 200 {
            return Err("route is longer than 200 characters".into());
        }
        if !(self.probability.is_finite() && (0.0..=1.0).contains(&self.probability)) {
            return Err(format!(
                "probability {} must be between 0 and 1",
                self.probability
            ));
        }
        if Duration::from_millis(self.window_ms) > MAX_WINDOW {
            return Err(format!("window_ms {} exceeds 24 h", self.window_ms));
        }
        match self.kind {
            FaultKind::Latency if self.latency_ms == 0 => {
                return Err("a latency fault needs latency_ms > 0".into());
            }
            _ if Duration::from_millis(self.latency_ms) > MAX_LATENCY => {
                return Err(format!("latency_ms {} exceeds 60 s", self.latency_ms));
            }
            _ => {}
        }
        if let Some(ttl) = self.ttl_secs
            && (ttl == 0 || Duration::from_secs(ttl) > MAX_TTL)
        {
            return Err(format!("ttl_secs {ttl} must be between 1 s and 7 days"));
        }
        if let Some(method) = &self.method
            && method.parse::<http::Method>().is_err()
        {
            return Err(format!("method `{method}` is not an HTTP method"));
        }
        Ok(())
    }

    /// Whether the rule is addressed to this process.
    fn is_for(&self, service: &str, instance: Option<&str>) -> bool {
        self.service.as_deref().is_none_or(|s| s == service)
            && self.instance.as_deref().is_none_or(|i| Some(i) == instance)
    }

    fn matches(&self, method: &http::Method, route: &str) -> bool {
        (self.route == "*" || self.route == route)
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
    }
}

/// What the middleware must do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    pub kind: FaultKind,
    pub latency: Duration,
    /// The rule's window: once drawn, the fault hits every matching request for this long
    /// (zero: each request is drawn alone). In the request span's `fault injected` event.
    pub window: Duration,
}

/// The fault rules of one process and their random streams and windows.
pub struct FaultEngine {
    service: &'static str,
    instance: Option<String>,
    state: Mutex<State>,
    /// Replaces the process exit in tests (the test process must survive).
    crash_hook: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

struct State {
    profile: String,
    seed: u64,
    /// Lifetime number of this process, mixed into every stream (see the module docs).
    epoch: u64,
    rules: Vec<LiveRule>,
    /// Label sets exported to the gauges (route, kind, origin), so removed rules are set back
    /// to 0.
    exported: Vec<(String, FaultKind, &'static str)>,
    /// Route labels handed out so far (see [`State::route_label`]).
    route_labels: BTreeSet<String>,
}

/// Distinct `route` label values the chaos metrics take per process; later rule routes share
/// `other`. Rules name routes freely (any string from the admin API, up to 100 per update), and
/// a series, once exported, stays in `/metrics` for the life of the process.
pub const MAX_ROUTE_LABELS: usize = 32;

/// The `origin` label of `chaos_fault_configured`: `drill` for rules sent through the admin API
/// (`PUT /admin/faults` with `rules`, what `ftshop fault set` does), `profile` for a named
/// profile (the one the process started with, or `off`/`default` set again), the state the
/// lab chose to run in. FtshopFaultLeftActive alerts on drills left on only.
fn origin_of(profile: &str) -> &'static str {
    if profile == "admin" {
        "drill"
    } else {
        "profile"
    }
}

/// The `route` label for a rule's route: the route itself while fewer than
/// [`MAX_ROUTE_LABELS`] are in use (a route keeps its label once given), `other` after.
fn route_label(given: &mut BTreeSet<String>, route: &str) -> String {
    if given.contains(route) {
        return route.to_owned();
    }
    if given.len() < MAX_ROUTE_LABELS {
        given.insert(route.to_owned());
        return route.to_owned();
    }
    "other".to_owned()
}

struct LiveRule {
    rule: FaultRule,
    rng: StdRng,
    /// The drawn fault applies to requests before this instant.
    active_until: Option<Instant>,
    expires_at: Option<Instant>,
    injected: u64,
    windows: u64,
}

/// A rule as `GET /admin/faults` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleStatus {
    #[serde(flatten)]
    pub rule: FaultRule,
    /// A drawn window is on now.
    pub active: bool,
    /// How long the current window still lasts.
    pub active_remaining_ms: u64,
    /// Seconds until the rule removes itself (its ttl).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    /// Requests this rule has faulted since it was set.
    pub injected: u64,
    /// Windows this rule has opened since it was set (0 for a rule without a window: each of
    /// its faults is counted in `injected`). Requests that pass between two windows divided by
    /// this is the observed run length, `1/p − 1` on average (docs/benchmarks/sustained-faults.md).
    #[serde(default)]
    pub windows: u64,
}

/// The engine's state as `GET /admin/faults` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FaultsStatus {
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The profile the rules came from (`off`, `default`, a file, or `admin` once changed).
    pub profile: String,
    /// Seed of the random draws; the same seed, epoch and traffic repeat the same faults.
    pub seed: u64,
    /// Lifetime number of this process (its restart count under `ftshop up`), mixed into every
    /// rule's stream so each lifetime draws differently.
    #[serde(default)]
    pub epoch: u64,
    pub rules: Vec<RuleStatus>,
}

impl FaultEngine {
    /// An engine for `service` with the rules of `profile` that concern it; `seed` None draws one.
    /// Spawns a task that keeps the `chaos_fault_*` gauges current when called inside a runtime.
    pub fn new(
        service: &'static str,
        instance: Option<String>,
        profile: &FaultProfile,
        seed: Option<u64>,
    ) -> Arc<Self> {
        Self::with_epoch(service, instance, profile, seed, 0)
    }

    /// [`FaultEngine::new`] for lifetime `epoch` of the process: the same seed with another
    /// epoch gives every rule another, still reproducible, stream (epoch 0 = [`FaultEngine::new`]).
    pub fn with_epoch(
        service: &'static str,
        instance: Option<String>,
        profile: &FaultProfile,
        seed: Option<u64>,
        epoch: u64,
    ) -> Arc<Self> {
        let seed = seed.or(profile.seed).unwrap_or_else(rand::random);
        let engine = Arc::new(Self {
            service,
            instance,
            state: Mutex::new(State {
                profile: profile.name.clone(),
                seed,
                epoch,
                rules: Vec::new(),
                exported: Vec::new(),
                route_labels: BTreeSet::new(),
            }),
            crash_hook: std::sync::OnceLock::new(),
        });
        engine.install(profile.rules.clone(), seed, profile.name.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(refresh_gauges(Arc::downgrade(&engine)));
        }
        engine
    }

    /// An engine with no rules (faults off).
    pub fn off(service: &'static str) -> Arc<Self> {
        Self::new(service, None, &FaultProfile::off(), Some(0))
    }

    /// Replaces what a crash does (tests cannot let the test process exit).
    pub fn with_crash_hook(self: Arc<Self>, hook: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        if self.crash_hook.set(Box::new(hook)).is_err() {
            tracing::warn!("crash hook already installed; keeping the first");
        }
        self
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Replaces every rule (rules for other services or replicas are dropped) and restarts the
    /// random streams from `seed`.
    pub fn install(&self, rules: Vec<FaultRule>, seed: u64, profile: String) {
        let now = Instant::now();
        let epoch = self.lock().epoch;
        let live = rules
            .into_iter()
            .filter(|rule| rule.is_for(self.service, self.instance.as_deref()))
            .enumerate()
            .map(|(index, rule)| LiveRule {
                rng: StdRng::seed_from_u64(stream_seed(
                    seed,
                    epoch,
                    self.service,
                    self.instance.as_deref(),
                    index,
                    &rule,
                )),
                expires_at: rule.ttl_secs.map(|s| now + Duration::from_secs(s)),
                active_until: None,
                injected: 0,
                windows: 0,
                rule,
            })
            .collect();
        {
            let mut state = self.lock();
            state.rules = live;
            state.seed = seed;
            state.profile = profile;
        }
        self.export_gauges();
    }

    /// Removes every rule.
    pub fn reset(&self) {
        let seed = self.lock().seed;
        self.install(Vec::new(), seed, "off".into());
    }

    pub fn seed(&self) -> u64 {
        self.lock().seed
    }

    /// Lifetime number of this process mixed into the draws (see the module docs).
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Draws for one request on `route`: the first matching rule whose window is on, or that
    /// draws its fault now, decides. Rules keep their own streams, so other routes' traffic
    /// never shifts this route's draws.
    pub fn decide(&self, method: &http::Method, route: &str) -> Option<Injection> {
        let now = Instant::now();
        let mut state = self.lock();
        state
            .rules
            .retain(|r| r.expires_at.is_none_or(|expiry| now < expiry));
        let State {
            rules,
            route_labels,
            ..
        } = &mut *state;
        for live in rules.iter_mut() {
            if !live.rule.matches(method, route) {
                continue;
            }
            let mut opened = false;
            let on = if live.active_until.is_some_and(|until| now < until) {
                true
            } else {
                live.active_until = None;
                let draw: f64 = live.rng.random();
                let drawn = draw < live.rule.probability;
                if drawn && live.rule.window_ms > 0 {
                    live.active_until = Some(now + Duration::from_millis(live.rule.window_ms));
                    live.windows += 1;
                    opened = true;
                }
                drawn
            };
            if on {
                live.injected += 1;
                let kind = live.rule.kind;
                let latency_ms = live.rule.latency_ms;
                let label_route = route_label(route_labels, &live.rule.route);
                let window_on = live.active_until.is_some();
                let window = Duration::from_millis(live.rule.window_ms);
                drop(state);
                let labels = [
                    ("service", self.service.to_owned()),
                    ("route", label_route),
                    ("kind", kind.as_str().to_owned()),
                ];
                metrics::counter!("chaos_faults_injected_total", &labels).increment(1);
                if opened {
                    metrics::counter!("chaos_fault_windows_total", &labels).increment(1);
                }
                if window_on {
                    metrics::gauge!("chaos_fault_active", &labels).set(1.0);
                }
                return Some(Injection {
                    kind,
                    latency: match kind {
                        FaultKind::Latency => Duration::from_millis(latency_ms),
                        _ => Duration::ZERO,
                    },
                    window,
                });
            }
        }
        None
    }

    /// Runs the crash action (exits the process unless a test replaced it).
    pub(crate) fn crash(&self) {
        match self.crash_hook.get() {
            Some(hook) => hook(),
            None => crash_process(),
        }
    }

    pub fn status(&self) -> FaultsStatus {
        let now = Instant::now();
        let state = self.lock();
        FaultsStatus {
            service: self.service.to_owned(),
            instance: self.instance.clone(),
            profile: state.profile.clone(),
            seed: state.seed,
            epoch: state.epoch,
            rules: state
                .rules
                .iter()
                .filter(|r| r.expires_at.is_none_or(|expiry| now < expiry))
                .map(|r| {
                    let remaining = r
                        .active_until
                        .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
                    RuleStatus {
                        rule: r.rule.clone(),
                        active: !remaining.is_zero(),
                        active_remaining_ms: u64::try_from(remaining.as_millis())
                            .unwrap_or(u64::MAX),
                        expires_in_secs: r
                            .expires_at
                            .map(|e| e.saturating_duration_since(now).as_secs()),
                        injected: r.injected,
                        windows: r.windows,
                    }
                })
                .collect(),
        }
    }

    /// Sets `chaos_fault_active` and `chaos_fault_configured` for every rule (0 for rules that
    /// went away), dropping expired rules. Route labels are bounded ([`MAX_ROUTE_LABELS`]).
    /// `chaos_fault_configured` also says where the rules came from ([`origin_of`]), so an alert
    /// can tell a drill left on from the profile the lab runs with.
    fn export_gauges(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let origin = origin_of(&state.profile);
        state
            .rules
            .retain(|r| r.expires_at.is_none_or(|expiry| now < expiry));
        // Rules sharing a label (`other`, or one route twice) export one series: active if any
        // is, the highest probability.
        let mut merged: Vec<(String, FaultKind, bool, f64)> = Vec::new();
        let State {
            rules,
            route_labels,
            ..
        } = &mut *state;
        for r in rules.iter() {
            let label = route_label(route_labels, &r.rule.route);
            let active = r.active_until.is_some_and(|until| now < until);
            match merged
                .iter_mut()
                .find(|(l, k, _, _)| *l == label && *k == r.rule.kind)
            {
                Some(entry) => {
                    entry.2 |= active;
                    entry.3 = entry.3.max(r.rule.probability);
                }
                None => merged.push((label, r.rule.kind, active, r.rule.probability)),
            }
        }
        let current = merged;
        let previous = std::mem::replace(
            &mut state.exported,
            current
                .iter()
                .map(|(r, k, _, _)| (r.clone(), *k, origin))
                .collect(),
        );
        drop(state);
        for (route, kind, was) in previous {
            let kept = current.iter().any(|(r, k, _, _)| *r == route && *k == kind);
            if !kept {
                let labels = self.labels(&route, kind);
                metrics::gauge!("chaos_fault_active", &labels).set(0.0);
            }
            if !kept || was != origin {
                let labels = self.configured_labels(&route, kind, was);
                metrics::gauge!("chaos_fault_configured", &labels).set(0.0);
            }
        }
        for (route, kind, active, probability) in current {
            let labels = self.labels(&route, kind);
            metrics::gauge!("chaos_fault_active", &labels).set(if active { 1.0 } else { 0.0 });
            // At 0 from the moment the rule exists, so `increase()` counts its first injection.
            metrics::counter!("chaos_faults_injected_total", &labels).increment(0);
            metrics::counter!("chaos_fault_windows_total", &labels).increment(0);
            let labels = self.configured_labels(&route, kind, origin);
            metrics::gauge!("chaos_fault_configured", &labels).set(probability);
        }
    }

    fn configured_labels(
        &self,
        route: &str,
        kind: FaultKind,
        origin: &'static str,
    ) -> [(&'static str, String); 4] {
        let [service, route, kind] = self.labels(route, kind);
        [service, route, kind, ("origin", origin.to_owned())]
    }

    fn labels(&self, route: &str, kind: FaultKind) -> [(&'static str, String); 3] {
        [
            ("service", self.service.to_owned()),
            ("route", route.to_owned()),
            ("kind", kind.as_str().to_owned()),
        ]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent data (plain fields), so recover.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Keeps the gauges true when windows end or rules expire without traffic.
async fn refresh_gauges(engine: Weak<FaultEngine>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match engine.upgrade() {
            Some(engine) => engine.export_gauges(),
            None => return,
        }
    }
}

fn crash_process() {
    tracing::error!(
        exit_code = CRASH_EXIT_CODE,
        "crash fault injected: exiting the process"
    );
    // The log writer is stderr, which is unbuffered; flush anyway in case it is redirected.
    use std::io::Write;
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    std::process::exit(CRASH_EXIT_CODE);
}

/// Derives one rule's stream from the run's seed and the process's epoch (FNV-1a over the rule's
/// identity, then a splitmix64 finaliser): independent streams per rule, replica and lifetime,
/// stable across runs. Epoch 0 feeds nothing, so it gives the streams of before epochs existed.
fn stream_seed(
    seed: u64,
    epoch: u64,
    service: &str,
    instance: Option<&str>,
    index: usize,
    rule: &FaultRule,
) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    };
    feed(service.as_bytes());
    feed(instance.unwrap_or("").as_bytes());
    feed(&index.to_le_bytes());
    feed(rule.route.as_bytes());
    feed(rule.kind.as_str().as_bytes());
    if epoch != 0 {
        feed(b"epoch");
        feed(&epoch.to_le_bytes());
    }
    let mut z = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
