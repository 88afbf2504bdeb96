use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::BulkheadPermit;
use crate::error::{BoxError, BulkheadFull};

pin_project! {
    /// Response future of [`BulkheadService`](super::BulkheadService); holds the slot until the
    /// inner future completes or is dropped.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<BulkheadPermit>,
        rejected: Option<BulkheadFull>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn admitted(inner: F, permit: BulkheadPermit) -> Self {
        ResponseFuture {
            inner: Some(inner),
            permit: Some(permit),
            rejected: None,
        }
    }

    pub(crate) fn rejected(full: BulkheadFull) -> Self {
        ResponseFuture {
            inner: None,
            permit: None,
            rejected: Some(full),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(full) = this.rejected.take() {
            return Poll::Ready(Err(Box::new(full)));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(
                "bulkhead response future polled after completion".into()
            ));
        };
        let result = ready!(inner.poll(cx));
        this.permit.take();
        Poll::Ready(result.map_err(Into::into))
    }
}
