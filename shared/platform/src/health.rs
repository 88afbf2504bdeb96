//! Health endpoints. `/health/live` says the process serves HTTP and stays cheap;
//! `/health/ready` runs the service's own dependency checks concurrently, each under a timeout,
//! and answers 503 with the failing checks when any fails.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

type CheckFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// The named checks behind `/health/ready`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, CheckFn)>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckResult {
    pub name: &'static str,
    /// `ok` or `fail`.
    pub status: &'static str,
    pub detail: String,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadyReport {
    pub service: &'static str,
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub checks: Vec<CheckResult>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check: `Ok(detail)` passes, `Err(reason)` fails.
    pub fn check<F, Fut>(mut self, name: &'static str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(f()))));
        self
    }

    pub async fn report(&self, service: &'static str) -> ReadyReport {
        let runs = self.checks.iter().map(|(name, check)| {
            let fut = check();
            async move {
                let started = Instant::now();
                let outcome = tokio::time::timeout(CHECK_TIMEOUT, fut)
                    .await
                    .unwrap_or_else(|_| Err(format!("timed out after {CHECK_TIMEOUT:?}")));
                let duration_ms = started.elapsed().as_millis() as u64;
                match outcome {
                    Ok(detail) => CheckResult {
                        name,
                        status: "ok",
                        detail,
                        duration_ms,
                    },
                    Err(detail) => CheckResult {
                        name,
                        status: "fail",
                        detail,
                        duration_ms,
                    },
                }
            }
        });
        let checks = futures::future::join_all(runs).await;
        let ready = checks.iter().all(|c| c.status == "ok");
        ReadyReport {
            service,
            status: if ready { "ready" } else { "not_ready" },
            checks,
        }
    }
}

impl IntoResponse for ReadyReport {
    fn into_response(self) -> Response {
        let status = if self.status == "ready" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, axum::Json(self)).into_response()
    }
}
