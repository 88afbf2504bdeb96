//! RFC 9457 problem details: the one error shape every ftshop endpoint answers with.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer. `type` is a stable URI-ish slug users can match on; `detail` is for humans.
/// Internal causes are logged where the problem is built, never sent to the client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Which downstream step failed (`product`, `exchange`, `sell`, `bonus`), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Seconds after which a retry may succeed, sent as the `Retry-After` header (not in the
    /// body). Set on 503s about the database.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://ftshop.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            step: None,
            retry_after: None,
        }
    }

    /// Adds `Retry-After: seconds` to the answer.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_step(mut self, step: &str) -> Self {
        self.step = Some(step.to_owned());
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }
    pub fn conflict(kind: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, detail)
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// A 500 whose cause is logged here and hidden from the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle this request; see its logs",
        )
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<sqlx::Error> for Problem {
    /// A storage fault ([`crate::db::StorageFault`]: disk full, I/O error, read-only or locked
    /// file, unreachable server) is a 503: the transaction did not commit, so nothing was
    /// changed or acknowledged, and a retry later may succeed. The fault is recorded, which
    /// turns readiness `not_ready` for a while. Anything else is an internal error whose cause
    /// is logged and hidden.
    fn from(err: sqlx::Error) -> Self {
        Problem::of_db_error(&err)
    }
}

impl Problem {
    /// An error with context (`anyhow`): a database error anywhere in its chain is answered as
    /// `From<sqlx::Error>` does (503 for a storage fault); anything else is a 500 whose cause is
    /// logged and hidden.
    pub fn from_anyhow(err: &anyhow::Error) -> Self {
        match err.chain().find_map(|e| e.downcast_ref::<sqlx::Error>()) {
            Some(db_err) => {
                let problem = Problem::of_db_error(db_err);
                if problem.status == 500 {
                    return Problem::internal(format_args!("{err:#}"));
                }
                problem
            }
            None => Problem::internal(format_args!("{err:#}")),
        }
    }

    fn of_db_error(err: &sqlx::Error) -> Self {
        match crate::db::note_storage_error(err) {
            Some(crate::db::StorageFault::Unavailable) => {
                if let Some(open) = crate::repository::CircuitOpen::of(err) {
                    // Logged once per transition by the breaker, not once per request.
                    return Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "database-unavailable",
                        "the database is unreachable (circuit breaker open); nothing was \
                         changed, retry later",
                    )
                    .with_retry_after(open.retry_after.as_secs_f64().ceil().max(1.0) as u64);
                }
                tracing::error!(error = %err, "database unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database-unavailable",
                    "the database is unreachable; nothing was changed, retry later",
                )
                .with_retry_after(1)
            }
            Some(fault) => {
                tracing::error!(error = %err, kind = fault.as_str(), "storage fault");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-unavailable",
                    format!(
                        "the service cannot write its data ({}); nothing was changed, retry later",
                        fault.as_str()
                    ),
                )
                .with_retry_after(1)
            }
            None => Problem::internal(format_args!("database: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_503_and_other_errors_500() {
        let down: Problem = sqlx::Error::PoolTimedOut.into();
        assert_eq!(down.status, 503);
        assert!(down.kind.ends_with("/database-unavailable"));
        let io: Problem =
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)).into();
        assert_eq!(io.status, 503);
        let other: Problem = sqlx::Error::RowNotFound.into();
        assert_eq!(other.status, 500);
    }
}
