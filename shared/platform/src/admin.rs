//! The admin API's gate: `Authorization: Bearer <token>`, compared in constant time.
//!
//! Without a configured token every admin request is refused: an admin API must never be open
//! by accident. `ftshop up` generates a token and prints it when `FTSHOP_ADMIN_TOKEN` is unset.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::Problem;

/// The configured admin token, if any.
#[derive(Clone, Default)]
pub struct AdminToken(Option<Arc<str>>);

impl AdminToken {
    pub fn new(token: Option<&str>) -> Self {
        Self(token.filter(|t| !t.is_empty()).map(Arc::from))
    }

    /// Whether `presented` equals the token. The comparison time does not depend on where the
    /// strings differ (only on their lengths), so the token cannot be guessed byte by byte.
    pub fn accepts(&self, presented: &str) -> bool {
        match &self.0 {
            Some(token) => bool::from(token.as_bytes().ct_eq(presented.as_bytes())),
            None => false,
        }
    }

    /// Checks a request's `Authorization` header; the error is the 401 to send.
    pub fn check(&self, headers: &axum::http::HeaderMap) -> Result<(), Problem> {
        if self.0.is_none() {
            return Err(Problem::unauthorized(
                "the admin API is disabled: no admin token is configured (set FTSHOP_ADMIN_TOKEN)",
            ));
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match presented {
            Some(token) if self.accepts(token) => Ok(()),
            Some(_) => Err(Problem::unauthorized(
                "the bearer token is not the admin token",
            )),
            None => Err(Problem::unauthorized(
                "admin endpoints need `Authorization: Bearer <admin token>`",
            )),
        }
    }
}

/// Middleware for admin routes: `axum::middleware::from_fn_with_state(token, require)`.
pub async fn require(State(token): State<AdminToken>, request: Request, next: Next) -> Response {
    match token.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(problem) => {
            tracing::warn!(path = %request.uri().path(), "admin request refused");
            let mut response = problem.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ftshop-admin\""),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_accepted() {
        let token = AdminToken::new(Some("s3cret-token"));
        assert!(token.accepts("s3cret-token"));
        assert!(!token.accepts("s3cret-tokem"));
        assert!(!token.accepts("s3cret"));
        assert!(!token.accepts(""));
        assert!(!AdminToken::new(None).accepts(""));
        assert!(!AdminToken::new(Some("")).accepts(""));
    }

    #[test]
    fn header_forms() {
        let token = AdminToken::new(Some("abc"));
        let mut headers = axum::http::HeaderMap::new();
        assert!(token.check(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(token.check(&headers).is_ok());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(token.check(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abd"),
        );
        assert!(token.check(&headers).is_err());
    }
}
