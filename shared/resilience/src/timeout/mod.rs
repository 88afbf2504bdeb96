//! Timeouts and request deadlines.
//!
//! A purchase has one budget (1 s for `/buy`) that every hop must share, so a fixed per-call
//! timeout is not enough: a call late in the request must get only what is left. Two tools:
//!
//! - [`with_deadline`] runs a future with a task-local deadline. Every [`Policy`](crate::Policy)
//!   call and every [`Timeout`] service polled inside it stops at
//!   `min(own timeout, deadline)`, and [`remaining`] tells an HTTP client what to forward to the
//!   next hop. Nested scopes keep the earlier deadline. (Spawned tasks do not inherit it: pass
//!   [`current_deadline`] along explicitly.)
//! - [`timeout_at`] wraps one future with an explicit [`Instant`].
//!
//! The timer is armed lazily: a future that completes on its first poll never touches the
//! timer wheel, which keeps the common fast path cheap (see `docs/benchmarks/resilience.md`).

mod future;
mod layer;

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

pub use self::future::{ResponseFuture, TimeoutFuture};
pub use self::layer::TimeoutLayer;
use crate::error::BoxError;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `fut` with `deadline` as the task-local request deadline (or the current one if that is
/// earlier: a callee can never extend its caller's budget).
pub fn with_deadline<F: Future>(deadline: Instant, fut: F) -> impl Future<Output = F::Output> {
    let effective = match current_deadline() {
        Some(outer) if outer < deadline => outer,
        _ => deadline,
    };
    DEADLINE.scope(effective, fut)
}

/// The deadline set by the innermost enclosing [`with_deadline`], if any.
pub fn current_deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Time left until [`current_deadline`] (zero once it has passed), or `None` without a deadline.
pub fn remaining() -> Option<Duration> {
    current_deadline().map(|d| d.saturating_duration_since(Instant::now()))
}

/// Wraps `fut` so it fails with [`Elapsed`](crate::error::Elapsed) at `deadline`.
///
/// The inner future is polled first, so a value that is already available wins even at the
/// deadline; the timer is only registered if the future returns `Pending`.
pub fn timeout_at<F: Future>(deadline: Instant, fut: F) -> TimeoutFuture<F> {
    TimeoutFuture::new(fut, Some(deadline))
}

/// The earliest of `now + timeout`, the explicit deadline and the task-local deadline.
pub(crate) fn effective_deadline(
    now: Instant,
    timeout: Option<Duration>,
    explicit: Option<Instant>,
) -> Option<Instant> {
    let mut deadline = timeout.and_then(|t| now.checked_add(t));
    for candidate in [explicit, current_deadline()].into_iter().flatten() {
        deadline = Some(match deadline {
            Some(d) if d <= candidate => d,
            _ => candidate,
        });
    }
    deadline
}

/// Tower middleware: fails a call with a boxed [`Elapsed`](crate::error::Elapsed) after a
/// fixed timeout or at the task-local deadline, whichever comes first (the deadline in scope
/// when the call is made or when its future is first polled).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Timeout<S> {
    /// Wraps `inner` with a per-call `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Timeout { inner, timeout }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the middleware, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> tower::Service<Req> for Timeout<S>
where
    S: tower::Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let deadline = effective_deadline(Instant::now(), Some(self.timeout), None);
        ResponseFuture::new(TimeoutFuture::inheriting(self.inner.call(req), deadline))
    }
}
