use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::Bulkhead;
use super::future::ResponseFuture;
use crate::error::BoxError;

/// Applies a [`Bulkhead`]: calls beyond its capacity fail at once with a boxed
/// [`BulkheadFull`](crate::error::BulkheadFull) (unlike `tower::limit::ConcurrencyLimit`, which
/// makes callers wait in `poll_ready`). The tower form never waits for a slot.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer sharing `bulkhead`'s slots.
    pub fn new(bulkhead: Bulkhead) -> Self {
        BulkheadLayer { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.bulkhead.clone(),
        }
    }
}

/// The service produced by [`BulkheadLayer`].
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.bulkhead.try_acquire() {
            Ok(permit) => ResponseFuture::admitted(self.inner.call(req), permit),
            Err(full) => ResponseFuture::rejected(full),
        }
    }
}
