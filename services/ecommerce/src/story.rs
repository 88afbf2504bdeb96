//! The stories of recent purchases, for the control room (`ftshop up`): for every step of a
//! `POST /buy`, which replica answered, each attempt's outcome and timing, hedges and breaker
//! rejections; plus the recent breaker transitions. Served behind the admin token by
//! `GET /admin/purchases` and `GET /admin/breakers/transitions`.
//!
//! Cost on the `/buy` hot path, by design: nothing is recorded unless a purchase runs inside
//! [`record`], which sets a task-local [`Recording`] (one `Vec` of [`Attempt`]s with room for
//! eight, 12-byte `Copy` records, no strings). The hooks ([`AttemptGuard`], [`rejected`],
//! [`hedged`]) are one task-local lookup each. At the end the record moves into a ring of
//! [`CAPACITY`] stories under a mutex held for one `push_back`; the strings it needs (order
//! id, product, user, degraded) were already allocated by the handler and are moved, not copied.
//! Hedges and failovers poll their attempts in the caller's task (`ftshop_resilience` spawns
//! nothing), so the task-local sees every attempt.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::time::Instant;

use crate::downstream::Step;

/// Stories kept; the oldest goes when a new one comes.
pub const CAPACITY: usize = 200;
/// Breaker transitions kept.
pub const TRANSITIONS: usize = 500;
/// Attempts recorded per purchase at most (a pathological purchase keeps its first ones).
const MAX_ATTEMPTS: usize = 32;

tokio::task_local! {
    static CURRENT: Recording;
}

/// What one purchase recorded so far (task-local while it runs).
pub struct Recording {
    started: Instant,
    attempts: RefCell<Vec<Attempt>>,
    order_id: RefCell<Option<String>>,
    degraded: RefCell<Vec<String>>,
    hedge_next: std::cell::Cell<bool>,
}

/// One call to one replica, or one call a breaker refused.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Attempt {
    /// `product`, `exchange`, `sell` or `bonus`.
    #[serde(serialize_with = "step_name")]
    pub step: Step,
    /// 1-based replica number of the service (`store-2` is 2); 1 for Fidelity.
    pub replica: u8,
    /// Microseconds from the purchase's start to the attempt's start.
    pub start_us: u32,
    /// Microseconds the attempt took (0 for a breaker rejection).
    pub duration_us: u32,
    pub outcome: AttemptOutcome,
    /// A hedged request (sent because the first attempt was slow).
    pub hedge: bool,
}

fn step_name<S: serde::Serializer>(step: &Step, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(step.as_str())
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Success,
    /// A 4xx: the dependency worked and said no (unknown product, out of stock).
    ClientError,
    ServerError,
    Timeout,
    Unreachable,
    DecodeError,
    /// Dropped before it ended: it lost a hedge race, or the purchase's deadline passed.
    Cancelled,
    /// Never sent: the replica's breaker was open.
    BreakerRejected,
}

/// One purchase as the control room shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Story {
    /// The order id, when the purchase got as far as claiming one.
    pub order_id: Option<String>,
    pub product: String,
    pub user: String,
    pub ft: bool,
    /// HTTP status of the answer.
    pub status: u16,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
    /// Microseconds from the start to the answer.
    pub duration_us: u32,
    /// The fallbacks that saved it (the answer's `degraded`).
    pub degraded: Vec<String>,
    /// Every attempt in start order.
    #[schema(value_type = Vec<Object>)]
    pub attempts: Vec<Attempt>,
}

/// The rings the control room reads.
pub struct Stories {
    recent: Mutex<VecDeque<Arc<Story>>>,
    transitions: Arc<Mutex<VecDeque<ftshop_resilience::breaker::StateChange>>>,
}

impl Stories {
    /// Starts listening to `registry`'s transitions (a task that ends with the registry).
    pub fn new(registry: &ftshop_resilience::BreakerRegistry) -> Arc<Self> {
        let transitions = Arc::new(Mutex::new(VecDeque::with_capacity(TRANSITIONS)));
        let mut events = registry.subscribe();
        let ring = transitions.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(change) => push(&ring, change, TRANSITIONS),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Arc::new(Self {
            recent: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            transitions,
        })
    }

    /// The newest `limit` stories, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Arc<Story>> {
        let ring = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().take(limit).cloned().collect()
    }

    /// The story of `order_id`, if it is still in the ring.
    pub fn find(&self, order_id: &str) -> Option<Arc<Story>> {
        let ring = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter()
            .rev()
            .find(|s| s.order_id.as_deref() == Some(order_id))
            .cloned()
    }

    /// The newest `limit` breaker transitions, oldest first.
    pub fn transitions(&self, limit: usize) -> Vec<ftshop_resilience::breaker::StateChange> {
        let ring = self
            .transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let skip = ring.len().saturating_sub(limit);
        ring.iter().skip(skip).cloned().collect()
    }
}

fn push<T>(ring: &Mutex<VecDeque<T>>, item: T, capacity: usize) {
    let mut ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
    if ring.len() >= capacity {
        ring.pop_front();
    }
    ring.push_back(item);
}

/// Runs one purchase (`purchase` answers with an HTTP status) with a recording, then keeps its
/// story in `stories`.
pub async fn record<F>(
    stories: &Stories,
    product: String,
    user: String,
    ft: bool,
    purchase: F,
) -> axum::response::Response
where
    F: std::future::Future<Output = axum::response::Response>,
{
    let recording = Recording {
        started: Instant::now(),
        attempts: RefCell::new(Vec::with_capacity(8)),
        order_id: RefCell::new(None),
        degraded: RefCell::new(Vec::new()),
        hedge_next: std::cell::Cell::new(false),
    };
    let at_unix_ms = ftshop_platform::db::now_millis();
    let (response, recording) = CURRENT
        .scope(recording, async {
            let response = purchase.await;
            // Taken out of the task-local before the scope ends.
            let taken = CURRENT.with(|r| Recording {
                started: r.started,
                attempts: RefCell::new(r.attempts.take()),
                order_id: RefCell::new(r.order_id.take()),
                degraded: RefCell::new(r.degraded.take()),
                hedge_next: std::cell::Cell::new(false),
            });
            (response, taken)
        })
        .await;
    let story = Story {
        order_id: recording.order_id.into_inner(),
        product,
        user,
        ft,
        status: response.status().as_u16(),
        at_unix_ms,
        duration_us: micros(recording.started.elapsed()),
        degraded: recording.degraded.into_inner(),
        attempts: recording.attempts.into_inner(),
    };
    push(&stories.recent, Arc::new(story), CAPACITY);
    response
}

/// The purchase's order id (called once the order is claimed).
pub fn order_id(id: &str) {
    let _ = CURRENT.try_with(|r| *r.order_id.borrow_mut() = Some(id.to_owned()));
}

/// The answer's fallbacks.
pub fn degraded(labels: &[String]) {
    let _ = CURRENT.try_with(|r| labels.clone_into(&mut r.degraded.borrow_mut()));
}

/// A breaker refused a call of `step` to `replica` (1-based).
pub fn rejected(step: Step, replica: usize) {
    let _ = CURRENT.try_with(|r| {
        let start_us = micros(r.started.elapsed());
        add(
            r,
            Attempt {
                step,
                replica: replica_number(replica),
                start_us,
                duration_us: 0,
                outcome: AttemptOutcome::BreakerRejected,
                hedge: false,
            },
        );
    });
}

/// Awaits one guarded call of `step` to `replica` (1-based) and records a breaker rejection.
pub async fn breaker_guarded<T, E, F>(
    step: Step,
    replica: usize,
    call: F,
) -> Result<T, ftshop_resilience::ResilienceError<E>>
where
    F: std::future::Future<Output = Result<T, ftshop_resilience::ResilienceError<E>>>,
{
    let result = call.await;
    if matches!(
        result,
        Err(ftshop_resilience::ResilienceError::BreakerOpen { .. })
    ) {
        rejected(step, replica);
    }
    result
}

/// Marks the next attempt to begin as a hedge (the hedge policy calls its attempt factory a
/// second time; that attempt begins on its first poll, after the first one began).
pub fn hedged() {
    let _ = CURRENT.try_with(|r| r.hedge_next.set(true));
}

/// One attempt in flight: recorded when finished, or as cancelled when dropped unfinished.
pub struct AttemptGuard {
    step: Step,
    replica: u8,
    hedge: bool,
    start: Instant,
    done: bool,
}

impl AttemptGuard {
    /// An attempt of `step` to replica `replica` (1-based) starts now.
    pub fn begin(step: Step, replica: usize) -> Self {
        Self {
            step,
            replica: replica_number(replica),
            hedge: CURRENT
                .try_with(|r| r.hedge_next.replace(false))
                .unwrap_or(false),
            start: Instant::now(),
            done: false,
        }
    }

    pub fn finish(mut self, outcome: AttemptOutcome) {
        self.done = true;
        self.save(outcome);
    }

    fn save(&self, outcome: AttemptOutcome) {
        let _ = CURRENT.try_with(|r| {
            add(
                r,
                Attempt {
                    step: self.step,
                    replica: self.replica,
                    start_us: micros(self.start.saturating_duration_since(r.started)),
                    duration_us: micros(self.start.elapsed()),
                    outcome,
                    hedge: self.hedge,
                },
            );
        });
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if !self.done {
            self.save(AttemptOutcome::Cancelled);
        }
    }
}

fn add(recording: &Recording, attempt: Attempt) {
    let mut attempts = recording.attempts.borrow_mut();
    if attempts.len() < MAX_ATTEMPTS {
        attempts.push(attempt);
    }
}

fn replica_number(index: usize) -> u8 {
    u8::try_from(index).unwrap_or(u8::MAX)
}

fn micros(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recorded_purchase_keeps_its_attempts_in_order_and_the_ring_is_bounded() {
        let registry = ftshop_resilience::BreakerRegistry::new();
        let stories = Stories::new(&registry);
        for i in 0..(CAPACITY + 5) {
            let response = record(&stories, "1".into(), format!("u{i}"), true, async {
                order_id("o-1");
                AttemptGuard::begin(Step::Sell, 1).finish(AttemptOutcome::ServerError);
                rejected(Step::Sell, 1);
                hedged();
                drop(AttemptGuard::begin(Step::Sell, 2));
                degraded(&["store:failover".to_owned()]);
                axum::response::IntoResponse::into_response(axum::http::StatusCode::OK)
            })
            .await;
            assert_eq!(response.status(), 200);
        }
        let recent = stories.recent(usize::MAX);
        assert_eq!(recent.len(), CAPACITY);
        let newest = &recent[0];
        assert_eq!(newest.user, format!("u{}", CAPACITY + 4));
        assert_eq!(newest.order_id.as_deref(), Some("o-1"));
        assert_eq!(newest.degraded, vec!["store:failover".to_owned()]);
        let outcomes: Vec<_> = newest.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                AttemptOutcome::ServerError,
                AttemptOutcome::BreakerRejected,
                AttemptOutcome::Cancelled
            ]
        );
        assert!(newest.attempts[2].hedge && !newest.attempts[0].hedge);
        assert_eq!(std::mem::size_of::<Attempt>(), 12, "the record stays small");
        assert_eq!(newest.attempts[2].replica, 2);
        // Outside a recording the hooks do nothing.
        AttemptGuard::begin(Step::Sell, 1).finish(AttemptOutcome::Success);
        assert_eq!(stories.recent(usize::MAX).len(), CAPACITY);
    }
}
