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
