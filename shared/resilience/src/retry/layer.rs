use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use super::future::ResponseFuture;
use super::{RetryMetrics, RetryPolicy};
use crate::error::{BoxError, ResilienceError};

/// Retries failed calls of a `Clone` service with a `Clone` request, using a
/// [`RetryPolicy<BoxError>`](RetryPolicy). The classifier sees the error as a
/// [`ResilienceError<BoxError>`] (so `Timeout`/`BreakerOpen` from inner layers are recognised),
/// and the error returned is boxed again.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: RetryPolicy<BoxError>,
    metrics: Arc<RetryMetrics>,
}

impl RetryLayer {
    /// `name` labels `resilience_retry_calls_total`.
    pub fn new(name: &str, policy: RetryPolicy<BoxError>) -> Self {
        RetryLayer {
            policy,
            metrics: Arc::new(RetryMetrics::new(name)),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service produced by [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: RetryPolicy<BoxError>,
    metrics: Arc<RetryMetrics>,
}

impl<S, Req> Service<Req> for Retry<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Use the service that was driven ready for the first attempt; clones for the rest.
        let clone = self.inner.clone();
        let first = std::mem::replace(&mut self.inner, clone);
        let template = first.clone();
        let policy = self.policy.clone();
        let metrics = self.metrics.clone();
        let deadline = crate::timeout::current_deadline();
        ResponseFuture::new(Box::pin(async move {
            let mut first = Some(first);
            let attempt = move || {
                let ready = first.take();
                let mut svc = template.clone();
                let req = req.clone();
                async move {
                    let result: Result<S::Response, BoxError> = match ready {
                        Some(mut svc) => svc.call(req).await.map_err(Into::into),
                        None => match svc.ready().await.map_err(Into::into) {
                            Ok(svc) => svc.call(req).await.map_err(Into::into),
                            Err(e) => Err(e),
                        },
                    };
                    result.map_err(ResilienceError::from_boxed)
                }
            };
            policy
                .run(&metrics, deadline, attempt)
                .await
                .map_err(ResilienceError::into_boxed)
        }))
    }
}
