//! The page: plain HTML, CSS and JS embedded in the binary (no CDN, no build step).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ftshop_platform::Problem;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// The page never runs anything but its own script, and never sits in another site's frame.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// No icon: 204 instead of a 404 in the browser's console.
pub async fn favicon() -> StatusCode {
    StatusCode::NO_CONTENT
}

pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!(
        "no control room page or endpoint at {}",
        uri.path()
    ))
}
