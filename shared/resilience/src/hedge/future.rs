use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::BoxError;

type BoxedResponse<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Response future of [`Hedge`](super::Hedge). Boxed: two attempts race in one `async` block
/// that owns clones of the service and request; the allocation is per call.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<T> {
    inner: BoxedResponse<T>,
}

impl<T> ResponseFuture<T> {
    pub(crate) fn new(inner: BoxedResponse<T>) -> Self {
        ResponseFuture { inner }
    }
}

impl<T> std::fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
