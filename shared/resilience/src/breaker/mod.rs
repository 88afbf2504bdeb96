//! Circuit breaker: stop calling a dependency that is failing, give it time, then probe it.
//!
//! States: `Closed` (calls flow, outcomes are recorded in a sliding window) → `Open` when, with
//! at least `minimum_calls` in the window, the failure rate or the slow-call rate reaches its
//! threshold → after `wait_in_open`, `HalfOpen` lets `permitted_calls_in_half_open` trial calls
//! through; when all have finished, the same thresholds over the trials decide `Closed` or
//! `Open` again. `ForcedOpen` is a manual override that only [`CircuitBreaker::reset`] ends.
//!
//! Why this shape (the linkerd one): a *gate* that is a single atomic load on the hot path
//! (closed → admit, open → compare the clock), and a *state machine* behind a short mutex that
//! only runs when an outcome is recorded or the state changes. Every admission carries the
//! state generation it was admitted in, so an outcome that arrives after a transition (a slow
//! call admitted while closed finishing during half-open) cannot corrupt the new state's
//! bookkeeping.
//!
//! A [`Permit`] dropped without an outcome means its call was cancelled (a hedge loser, an
//! outer deadline, a client that hung up). It is still accounted for, never lost:
//! - an attempt that lost a hedge race it *started first* (it had not answered within the
//!   hedge delay plus the winner's whole latency) counts as a failure, as Envoy's router
//!   reports a per-try timeout to the host's outlier detector as a local-origin timeout even
//!   when `hedge_on_per_try_timeout` keeps the request running;
//! - any other cancelled call that had already run for at least the slow-call threshold
//!   counts as a slow call (it was slow whatever its outcome would have been, as
//!   Resilience4j's slow-call rate judges duration alone);
//! - any other is not judged (the caller gave up early, nothing was learnt about the
//!   dependency): it is counted as `cancelled` and, in half-open, gives its trial slot back.
//!
//! So a cancelled trial call can never wedge the breaker in half-open: it either decides as
//! a trial or frees its slot for another probe.
//!
//! Time comes from [`tokio::time::Instant`], so tests drive every transition with a paused
//! clock.

mod config;
mod future;
mod layer;
mod registry;
mod window;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::Counter;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::Instant;

pub use self::config::{BreakerConfig, BreakerConfigBuilder, SlidingWindow};
pub use self::future::ResponseFuture;
pub use self::layer::{CircuitBreakerLayer, CircuitBreakerService};
pub use self::registry::{BreakerRegistry, UnknownBreaker};
use self::window::{Counts, Window};
use crate::attempt::{self, Fate};
pub use crate::error::BreakerOpen;
use crate::error::ResilienceError;

/// Capacity of the state-change broadcast channel; slow subscribers see `Lagged`.
const EVENT_CAPACITY: usize = 256;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls are rejected until `wait_in_open` has passed.
    Open,
    /// A limited number of trial calls decide whether to close or reopen.
    HalfOpen,
    /// Rejecting calls by operator decision until [`CircuitBreaker::reset`].
    ForcedOpen,
}

impl State {
    const ALL: [State; 4] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
    ];

    /// The label used in metrics and logs: `closed`, `open`, `half_open`, `forced_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
        }
    }

    fn from_bits(bits: u64) -> State {
        match bits & STATE_MASK {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::ForcedOpen,
        }
    }

    fn bits(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionReason {
    /// The failure rate reached the threshold.
    FailureRate,
    /// The slow-call rate reached the threshold.
    SlowCallRate,
    /// `wait_in_open` elapsed; trial calls are allowed.
    WaitElapsed,
    /// The half-open trial calls were healthy.
    TrialsSucceeded,
    /// The half-open trial calls failed or were slow.
    TrialsFailed,
    /// [`CircuitBreaker::reset`].
    ManualReset,
    /// [`CircuitBreaker::force_open`].
    ManualForceOpen,
}

/// A state transition, broadcast to [`CircuitBreaker::subscribe`] and
/// [`BreakerRegistry::subscribe`] receivers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateChange {
    /// Name of the breaker.
    pub name: String,
    /// Previous state.
    pub from: State,
    /// New state.
    pub to: State,
    /// What caused it.
    pub reason: TransitionReason,
    /// Failure rate in the window (or over the trials) when it happened.
    pub failure_rate: f64,
    /// Slow-call rate in the window (or over the trials) when it happened.
    pub slow_rate: f64,
    /// Wall-clock time of the transition, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// A point-in-time view of a breaker, for admin endpoints and health checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerStatus {
    /// Name of the breaker.
    pub name: String,
    /// Current state.
    pub state: State,
    /// Failures / calls in the window (or over the half-open trials so far).
    pub failure_rate: f64,
    /// Slow calls / calls in the window (or over the half-open trials so far).
    pub slow_rate: f64,
    /// Calls recorded in the window (or half-open trials finished).
    pub calls_in_window: u32,
    /// Failures among them.
    pub failures_in_window: u32,
    /// Slow calls among them.
    pub slow_calls_in_window: u32,
    /// Wall-clock time the current state began, milliseconds since the Unix epoch.
    pub since: u64,
    /// How long the breaker has been in this state, in milliseconds (tokio clock).
    pub in_state_ms: u64,
    /// In `Open`: milliseconds until trial calls are allowed.
    pub retry_after_ms: Option<u64>,
}

/// Outcome of a call admitted by the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call worked (it may still be counted as slow).
    Success,
    /// The call failed (timeouts included).
    Failure,
}

/// A circuit breaker. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

struct Shared {
    name: Arc<str>,
    config: BreakerConfig,
    /// `generation << 2 | state`: one load tells the gate everything it needs.
    packed: AtomicU64,
    /// In `Open`: nanoseconds after `epoch` at which trial calls are allowed.
    open_until: AtomicU64,
    epoch: Instant,
    /// Whether recording an outcome needs the clock (slow-call tracking or a time window).
    clock_on_record: bool,
    inner: Mutex<Inner>,
    events: broadcast::Sender<StateChange>,
    calls: CallCounters,
}

struct Inner {
    window: Window,
    trials_admitted: u32,
    trials: Counts,
    since: Instant,
    since_wall: SystemTime,
}

const STATE_MASK: u64 = 0b11;

fn pack(state: State, generation: u64) -> u64 {
    generation << 2 | state.bits()
}

/// Handles registered once per breaker so that counting a call is one atomic add.
struct CallCounters {
    success: Counter,
    failure: Counter,
    slow: Counter,
    rejected: Counter,
    cancelled: Counter,
}

impl CallCounters {
    fn new(name: &Arc<str>) -> Self {
        let counter = |outcome: &'static str| {
            metrics::counter!(
                "resilience_circuitbreaker_calls_total",
                "name" => name.to_string(),
                "outcome" => outcome
            )
        };
        CallCounters {
            success: counter("success"),
            failure: counter("failure"),
            slow: counter("slow"),
            rejected: counter("rejected"),
            cancelled: counter("cancelled"),
        }
    }
}

/// What an admission remembers until its outcome is recorded.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    packed: u64,
    start: Option<Instant>,
}

impl CircuitBreaker {
    /// A standalone breaker with its own event channel. Prefer
    /// [`BreakerRegistry::get_or_create`] in services so breakers can be listed and reset.
    ///
    /// Metric handles are registered here: install the metrics recorder before creating
    /// breakers.
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self::with_events(name.into(), config, events)
    }

    fn with_events(
        name: Arc<str>,
        config: BreakerConfig,
        events: broadcast::Sender<StateChange>,
    ) -> Self {
        let epoch = Instant::now();
        let clock_on_record = config.slow_call_duration.is_some()
            || matches!(config.window, SlidingWindow::Time { .. });
        let shared = Shared {
            calls: CallCounters::new(&name),
            inner: Mutex::new(Inner {
                window: Window::new(config.window, epoch),
                trials_admitted: 0,
                trials: Counts::default(),
                since: epoch,
                since_wall: SystemTime::now(),
            }),
            name,
            config,
            packed: AtomicU64::new(pack(State::Closed, 0)),
            open_until: AtomicU64::new(0),
            epoch,
            clock_on_record,
            events,
        };
        publish_state_gauges(&shared.name, State::Closed);
        register_transition_counters(&shared.name);
        CircuitBreaker {
            shared: Arc::new(shared),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// The current state (an `Open` breaker whose wait has elapsed still reports `Open` until
    /// the next call attempt moves it to `HalfOpen`).
    pub fn state(&self) -> State {
        State::from_bits(self.shared.packed.load(Ordering::Acquire))
    }

    /// Asks to make a call. On `Ok`, make the call and report its outcome on the [`Permit`]
    /// (dropping it unreported means the call was cancelled: see the module docs for how that
    /// is counted). On `Err`, do not call.
    pub fn try_acquire(&self) -> Result<Permit<'_>, BreakerOpen> {
        self.admit().map(|ticket| Permit {
            breaker: self,
            ticket: Some(ticket),
            fate: attempt::current(),
        })
    }

    /// Like [`try_acquire`](Self::try_acquire) but the permit owns a clone of the breaker, for
    /// futures that must be `'static`.
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, BreakerOpen> {
        self.admit().map(|ticket| OwnedPermit {
            breaker: self.clone(),
            ticket: Some(ticket),
            fate: attempt::current(),
        })
    }

    /// Runs `fut` if the breaker admits it, recording `Err` as a failure.
    pub async fn call<T, E, Fut>(&self, fut: Fut) -> Result<T, ResilienceError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self
            .try_acquire()
            .map_err(|open| ResilienceError::BreakerOpen { name: open.name })?;
        let result = fut.await;
        permit.record(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        result.map_err(ResilienceError::Inner)
    }

    /// A snapshot of state and window rates.
    pub fn status(&self) -> BreakerStatus {
        let s = &*self.shared;
        let now = Instant::now();
        let inner = s.lock();
        let packed = s.packed.load(Ordering::Acquire);
        let state = State::from_bits(packed);
        let counts = match state {
            State::HalfOpen => inner.trials,
            _ => inner.window.counts(now),
        };
        let retry_after_ms = (state == State::Open).then(|| {
            let until = s.open_until.load(Ordering::Acquire);
            let now_nanos = s.nanos_since_epoch(now);
            Duration::from_nanos(until.saturating_sub(now_nanos)).as_millis() as u64
        });
        BreakerStatus {
            name: s.name.to_string(),
            state,
            failure_rate: counts.failure_rate(),
            slow_rate: counts.slow_rate(),
            calls_in_window: counts.calls,
            failures_in_window: counts.failures,
            slow_calls_in_window: counts.slow,
            since: unix_ms(inner.since_wall),
            in_state_ms: now.saturating_duration_since(inner.since).as_millis() as u64,
            retry_after_ms,
        }
    }

    /// Closes the breaker and clears its window (operator action or tests).
    pub fn reset(&self) {
        let s = &*self.shared;
        let now = Instant::now();
        let mut inner = s.lock();
        let packed = s.packed.load(Ordering::Acquire);
        if State::from_bits(packed) == State::Closed {
            inner.window.clear();
        } else {
            self.transition(
                &mut inner,
                packed,
                State::Closed,
                TransitionReason::ManualReset,
                now,
            );
        }
    }

    /// Rejects every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        let s = &*self.shared;
        let now = Instant::now();
        let mut inner = s.lock();
        let packed = s.packed.load(Ordering::Acquire);
        if State::from_bits(packed) != State::ForcedOpen {
            self.transition(
                &mut inner,
                packed,
                State::ForcedOpen,
                TransitionReason::ManualForceOpen,
                now,
            );
        }
    }

    /// State changes of this breaker (for a registry's breakers: of all its breakers).
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.shared.events.subscribe()
    }

    /// The gate. Closed is one atomic load; everything else takes the cold path.
    #[inline]
    fn admit(&self) -> Result<Ticket, BreakerOpen> {
        let s = &*self.shared;
        let packed = s.packed.load(Ordering::Acquire);
        if State::from_bits(packed) == State::Closed {
            let start = s.config.slow_call_duration.map(|_| Instant::now());
            return Ok(Ticket { packed, start });
        }
        self.admit_slow(packed)
    }

    #[cold]
    fn admit_slow(&self, packed: u64) -> Result<Ticket, BreakerOpen> {
        let s = &*self.shared;
        let now = Instant::now();
        match State::from_bits(packed) {
            State::ForcedOpen => return Err(self.reject()),
            State::Open if s.nanos_since_epoch(now) < s.open_until.load(Ordering::Acquire) => {
                return Err(self.reject());
            }
            _ => {}
        }
        let mut inner = s.lock();
        let mut current = s.packed.load(Ordering::Acquire);
        match State::from_bits(current) {
            State::Closed => {
                let start = s.config.slow_call_duration.map(|_| now);
                return Ok(Ticket {
                    packed: current,
                    start,
                });
            }
            State::ForcedOpen => return Err(self.reject()),
            State::Open => {
                if s.nanos_since_epoch(now) < s.open_until.load(Ordering::Acquire) {
                    return Err(self.reject());
                }
                current = self.transition(
                    &mut inner,
                    current,
                    State::HalfOpen,
                    TransitionReason::WaitElapsed,
                    now,
                );
            }
            State::HalfOpen => {}
        }
        if inner.trials_admitted < s.config.permitted_calls_in_half_open {
            inner.trials_admitted += 1;
            Ok(Ticket {
                packed: current,
                start: Some(now),
            })
        } else {
            Err(self.reject())
        }
    }

    fn reject(&self) -> BreakerOpen {
        self.shared.calls.rejected.increment(1);
        BreakerOpen {
            name: self.shared.name.clone(),
        }
    }

    fn record(&self, ticket: Ticket, outcome: Outcome) {
        let s = &*self.shared;
        let admitted_in = State::from_bits(ticket.packed);
        let now = if s.clock_on_record || admitted_in == State::HalfOpen {
            Some(Instant::now())
        } else {
            None
        };
        let slow = match (s.config.slow_call_duration, ticket.start, now) {
            (Some(threshold), Some(start), Some(now)) => {
                now.saturating_duration_since(start) >= threshold
            }
            _ => false,
        };
        let failure = outcome == Outcome::Failure;
        match (failure, slow) {
            (true, _) => s.calls.failure.increment(1),
            (false, true) => s.calls.slow.increment(1),
            (false, false) => s.calls.success.increment(1),
        }

        let mut inner = s.lock();
        if s.packed.load(Ordering::Acquire) != ticket.packed {
            // Admitted in an earlier state or generation: that bookkeeping is gone.
            return;
        }
        let now = now.unwrap_or(s.epoch);
        let cfg = &s.config;
        match admitted_in {
            State::Closed => {
                inner.window.record(now, failure, slow);
                let counts = inner.window.counts(now);
                let reason = (counts.calls >= cfg.minimum_calls)
                    .then(|| self.trips(&counts))
                    .flatten();
                if let Some(reason) = reason {
                    let now = Instant::now();
                    self.transition(&mut inner, ticket.packed, State::Open, reason, now);
                }
            }
            State::HalfOpen => {
                inner.trials.add(failure, slow);
                if inner.trials.calls >= cfg.permitted_calls_in_half_open {
                    let trials = inner.trials;
                    let (to, reason) = match self.trips(&trials) {
                        Some(_) => (State::Open, TransitionReason::TrialsFailed),
                        None => (State::Closed, TransitionReason::TrialsSucceeded),
                    };
                    self.transition(&mut inner, ticket.packed, to, reason, now);
                }
            }
            State::Open | State::ForcedOpen => {}
        }
    }

    /// Whether the rates in `counts` reach a threshold, and which (the caller decides whether
    /// there are enough calls to judge).
    fn trips(&self, counts: &Counts) -> Option<TransitionReason> {
        let cfg = &self.shared.config;
        if counts.failure_rate() >= cfg.failure_rate_threshold {
            Some(TransitionReason::FailureRate)
        } else if cfg.slow_call_duration.is_some()
            && counts.slow_rate() >= cfg.slow_call_rate_threshold
        {
            Some(TransitionReason::SlowCallRate)
        } else {
            None
        }
    }

    /// A permit dropped without an outcome: its call was cancelled (rules in the module docs).
    fn cancelled(&self, ticket: Ticket, fate: Option<&Fate>) {
        let s = &*self.shared;
        if fate.is_some_and(Fate::is_superseded) {
            self.record(ticket, Outcome::Failure);
            return;
        }
        let slow = match (s.config.slow_call_duration, ticket.start) {
            (Some(threshold), Some(start)) => {
                Instant::now().saturating_duration_since(start) >= threshold
            }
            _ => false,
        };
        if slow {
            // `record` measures the duration again and counts it as a slow call.
            self.record(ticket, Outcome::Success);
        } else {
            s.calls.cancelled.increment(1);
            self.release(ticket);
        }
    }

    /// Gives a half-open trial slot back (a cancelled call that decided nothing).
    fn release(&self, ticket: Ticket) {
        if State::from_bits(ticket.packed) != State::HalfOpen {
            return;
        }
        let s = &*self.shared;
        let mut inner = s.lock();
        if s.packed.load(Ordering::Acquire) == ticket.packed {
            inner.trials_admitted = inner.trials_admitted.saturating_sub(1);
        }
    }

    /// Moves to `to` (caller holds the lock and has checked `from` is current); publishes the
    /// change under the lock so observers see transitions in order. Returns the new packed
    /// value.
    fn transition(
        &self,
        inner: &mut MutexGuard<'_, Inner>,
        from: u64,
        to: State,
        reason: TransitionReason,
        now: Instant,
    ) -> u64 {
        let s = &*self.shared;
        let from_state = State::from_bits(from);
        let counts = match from_state {
            State::HalfOpen => inner.trials,
            _ => inner.window.counts(now),
        };
        match to {
            State::Open => {
                let until = s
                    .nanos_since_epoch(now)
                    .saturating_add(s.config.wait_in_open.as_nanos() as u64);
                s.open_until.store(until, Ordering::Release);
            }
            State::ForcedOpen => s.open_until.store(u64::MAX, Ordering::Release),
            State::HalfOpen => {
                inner.trials_admitted = 0;
                inner.trials = Counts::default();
            }
            State::Closed => inner.window.clear(),
        }
        let next = pack(to, (from >> 2).wrapping_add(1));
        s.packed.store(next, Ordering::Release);
        inner.since = now;
        inner.since_wall = SystemTime::now();

        let change = StateChange {
            name: s.name.to_string(),
            from: from_state,
            to,
            reason,
            failure_rate: counts.failure_rate(),
            slow_rate: counts.slow_rate(),
            at_unix_ms: unix_ms(inner.since_wall),
        };
        if to == State::Closed {
            tracing::info!(breaker = %s.name, %from_state, %to, ?reason, "circuit breaker closed");
        } else {
            tracing::warn!(
                breaker = %s.name, %from_state, %to, ?reason,
                failure_rate = change.failure_rate, slow_rate = change.slow_rate,
                "circuit breaker state change"
            );
        }
        metrics::counter!(
            "resilience_circuitbreaker_transitions_total",
            "name" => s.name.to_string(),
            "from" => from_state.as_str(),
            "to" => to.as_str()
        )
        .increment(1);
        publish_state_gauges(&s.name, to);
        // No receiver is not an error: events are optional.
        let _ = s.events.send(change);
        next
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` inconsistent in a way that matters
        // more than refusing to work, so keep going.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// Registers the automatic transitions at zero, so `increase()` over them is 0 (not "no
/// data") on dashboards and alerts before the first transition happens.
fn register_transition_counters(name: &Arc<str>) {
    for (from, to) in [
        (State::Closed, State::Open),
        (State::Open, State::HalfOpen),
        (State::HalfOpen, State::Closed),
        (State::HalfOpen, State::Open),
    ] {
        let _ = metrics::counter!(
            "resilience_circuitbreaker_transitions_total",
            "name" => name.to_string(),
            "from" => from.as_str(),
            "to" => to.as_str()
        );
    }
}

fn publish_state_gauges(name: &Arc<str>, current: State) {
    for state in State::ALL {
        metrics::gauge!(
            "resilience_circuitbreaker_state",
            "name" => name.to_string(),
            "state" => state.as_str()
        )
        .set(if state == current { 1.0 } else { 0.0 });
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Permission to make one call, borrowed from a [`CircuitBreaker`]. Report the outcome with
/// [`success`](Self::success), [`failure`](Self::failure) or [`record`](Self::record); dropping
/// it unreported means the call was cancelled: a hedge loser that started first counts as a
/// failure, a call that ran for the slow-call threshold counts as slow, any other is counted
/// as `cancelled` and frees its half-open trial slot (see the [module docs](self)).
#[must_use = "report the outcome of the call; dropping the permit reports a cancelled call"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    ticket: Option<Ticket>,
    /// The hedge attempt it was admitted in, if any (to learn whether it was superseded).
    fate: Option<Arc<Fate>>,
}

impl Permit<'_> {
    /// The call succeeded.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The call failed.
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// Reports `outcome`.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.record(ticket, outcome);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.cancelled(ticket, self.fate.as_deref());
        }
    }
}

/// Like [`Permit`] but owning a clone of the breaker.
#[must_use = "report the outcome of the call; dropping the permit reports a cancelled call"]
#[derive(Debug)]
pub struct OwnedPermit {
    breaker: CircuitBreaker,
    ticket: Option<Ticket>,
    fate: Option<Arc<Fate>>,
}

impl OwnedPermit {
    /// Reports `outcome`.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.record(ticket, outcome);
        }
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.cancelled(ticket, self.fate.as_deref());
        }
    }
}
