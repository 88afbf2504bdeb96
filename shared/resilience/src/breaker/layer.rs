use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::CircuitBreaker;
use super::future::ResponseFuture;
use crate::error::BoxError;

/// Decides whether a result counts as a failure for the breaker.
///
/// Implemented by [`AnyError`] (every `Err` is a failure) and by closures
/// `Fn(&Result<T, E>) -> bool`, e.g. to count HTTP 5xx responses as failures and 4xx as
/// successes.
pub trait FailurePredicate<T, E> {
    /// True if `result` is a failure.
    fn is_failure(&self, result: &Result<T, E>) -> bool;
}

/// Every `Err` is a failure, every `Ok` a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyError;

impl<T, E> FailurePredicate<T, E> for AnyError {
    fn is_failure(&self, result: &Result<T, E>) -> bool {
        result.is_err()
    }
}

impl<T, E, F> FailurePredicate<T, E> for F
where
    F: Fn(&Result<T, E>) -> bool,
{
    fn is_failure(&self, result: &Result<T, E>) -> bool {
        self(result)
    }
}

/// Guards a service with a [`CircuitBreaker`]; rejected calls fail with a boxed
/// [`BreakerOpen`](crate::error::BreakerOpen) without reaching the service.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<P = AnyError> {
    breaker: CircuitBreaker,
    predicate: P,
}

impl CircuitBreakerLayer {
    /// A layer where every `Err` counts as a failure.
    pub fn new(breaker: CircuitBreaker) -> Self {
        CircuitBreakerLayer {
            breaker,
            predicate: AnyError,
        }
    }
}

impl<P> CircuitBreakerLayer<P> {
    /// Uses `predicate` to decide what a failure is.
    pub fn failure_if<P2>(self, predicate: P2) -> CircuitBreakerLayer<P2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            predicate,
        }
    }
}

impl<S, P: Clone> Layer<S> for CircuitBreakerLayer<P> {
    type Service = CircuitBreakerService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            predicate: self.predicate.clone(),
        }
    }
}

/// The service produced by [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, P = AnyError> {
    inner: S,
    breaker: CircuitBreaker,
    predicate: P,
}

impl<S, P> CircuitBreakerService<S, P> {
    /// The breaker guarding this service.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, P, Req> Service<Req> for CircuitBreakerService<S, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: FailurePredicate<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Ok(permit) => {
                ResponseFuture::admitted(self.inner.call(req), permit, self.predicate.clone())
            }
            Err(open) => ResponseFuture::rejected(open, self.predicate.clone()),
        }
    }
}
