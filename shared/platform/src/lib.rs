//! The plumbing every ftshop service shares: configuration, server bootstrap with graceful
//! shutdown, problem+json errors, request ids, body limits, health, metrics, OpenAPI docs and
//! the database connection (SQLite by default, PostgreSQL through `DATABASE_URL`).
//!
//! A service crate builds its own `axum::Router` and hands it to [`server::Service`], which adds
//! the standard layers and endpoints, so every service answers the same way to the same things.

pub mod admin;
pub mod config;
pub mod db;
pub mod exemplars;
pub mod extract;
pub mod faults;
pub mod health;
pub mod http_metrics;
pub mod limits;
pub mod money;
pub mod private_fs;
pub mod problem;
pub mod repository;
pub mod server;
pub mod sql;
pub mod telemetry;

pub use problem::Problem;

/// Header carrying the request id across every hop.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Largest request body any service accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An error and its causes, `error: cause: root cause`: an HTTP client's own message alone
/// ("error sending request", "client error (Connect)") does not say what went wrong.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
