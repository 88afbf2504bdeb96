use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use super::future::ResponseFuture;
use super::{HedgeMetrics, HedgePolicy};
use crate::error::{BoxError, ResilienceError};

/// Hedges calls of a `Clone` service with a `Clone` request (see [`HedgePolicy`]). Unlike
/// `tower::hedge`, the delay is fixed (no latency histogram) and it composes with the other
/// layers' boxed errors.
#[derive(Debug, Clone)]
pub struct HedgeLayer {
    policy: HedgePolicy,
    metrics: Arc<HedgeMetrics>,
}

impl HedgeLayer {
    /// `name` labels `resilience_hedge_total`.
    pub fn new(name: &str, policy: HedgePolicy) -> Self {
        HedgeLayer {
            policy,
            metrics: Arc::new(HedgeMetrics::new(name)),
        }
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service produced by [`HedgeLayer`].
#[derive(Debug, Clone)]
pub struct Hedge<S> {
    inner: S,
    policy: HedgePolicy,
    metrics: Arc<HedgeMetrics>,
}

impl<S, Req> Service<Req> for Hedge<S>
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
        let clone = self.inner.clone();
        let first = std::mem::replace(&mut self.inner, clone);
        let template = first.clone();
        let policy = self.policy.clone();
        let metrics = self.metrics.clone();
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
                .run(&metrics, attempt)
                .await
                .map_err(ResilienceError::into_boxed)
        }))
    }
}
