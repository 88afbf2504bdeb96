use std::time::Duration;

use tower::Layer;

use super::Timeout;

/// Applies [`Timeout`] to a service: each call gets `timeout`, cut short by the task-local
/// deadline of [`with_deadline`](super::with_deadline).
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A layer with a per-call `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.timeout)
    }
}
