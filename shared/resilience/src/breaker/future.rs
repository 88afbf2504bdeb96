use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::layer::FailurePredicate;
use super::{Outcome, OwnedPermit};
use crate::error::{BoxError, BreakerOpen};

pin_project! {
    /// Response future of [`CircuitBreakerService`](super::CircuitBreakerService): records the
    /// outcome when the inner future completes (dropping it early reports a cancelled call,
    /// counted as described on [`Permit`](super::Permit)).
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, P> {
        #[pin]
        inner: Option<F>,
        permit: Option<OwnedPermit>,
        rejected: Option<BreakerOpen>,
        predicate: P,
    }
}

impl<F, P> ResponseFuture<F, P> {
    pub(crate) fn admitted(inner: F, permit: OwnedPermit, predicate: P) -> Self {
        ResponseFuture {
            inner: Some(inner),
            permit: Some(permit),
            rejected: None,
            predicate,
        }
    }

    pub(crate) fn rejected(open: BreakerOpen, predicate: P) -> Self {
        ResponseFuture {
            inner: None,
            permit: None,
            rejected: Some(open),
            predicate,
        }
    }
}

impl<F, P, T, E> Future for ResponseFuture<F, P>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    P: FailurePredicate<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(open) = this.rejected.take() {
            return Poll::Ready(Err(Box::new(open)));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err("breaker response future polled after completion".into()));
        };
        let result = ready!(inner.poll(cx));
        if let Some(permit) = this.permit.take() {
            permit.record(if this.predicate.is_failure(&result) {
                Outcome::Failure
            } else {
                Outcome::Success
            });
        }
        Poll::Ready(result.map_err(Into::into))
    }
}
