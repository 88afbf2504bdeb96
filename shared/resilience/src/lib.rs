//! Fault-tolerance building blocks for async Rust services: circuit breaker (with a registry,
//! status and state-change events), timeout and request deadline, retry with exponential
//! backoff, full jitter and a retry budget, hedged requests, bulkhead, and a tiered cache
//! (in-process L1 + optional Redis L2) with single-flight loading and last-known-good
//! fallback.
//!
//! Each policy is usable alone, as a tower [`Layer`](tower::Layer) (one module per middleware,
//! like tower: `mod.rs` / `layer.rs` / `future.rs`), or composed in a [`Policy`]:
//!
//! ```no_run
//! use std::time::Duration;
//! use ftshop_resilience::{BreakerConfig, BreakerRegistry, Policy, RetryBudget, RetryPolicy};
//!
//! # async fn sell() -> Result<u64, std::io::Error> { Ok(1) }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = BreakerRegistry::new();
//! let config = BreakerConfig::builder().failure_rate_threshold(0.5).build()?;
//! let policy: Policy<std::io::Error> = Policy::named("store.sell")
//!     .timeout(Duration::from_millis(300))
//!     .breaker(registry.get_or_create("store-1", config))
//!     .retry(RetryPolicy::exponential(Duration::from_millis(20)).budget(RetryBudget::default()));
//! let transaction = policy.call(|| sell()).await?;
//! # let _ = transaction; Ok(()) }
//! ```
//!
//! Time comes from [`tokio::time::Instant`], so everything is testable with a paused clock.
//! Metrics go through the `metrics` facade (the application installs the exporter); names are
//! listed in the README.

mod attempt;
pub mod breaker;
pub mod bulkhead;
pub mod cache;
pub mod error;
pub mod hedge;
pub mod latency;
mod policy;
pub mod retry;
pub mod timeout;

pub use crate::breaker::{
    BreakerConfig, BreakerRegistry, BreakerStatus, CircuitBreaker, Outcome, SlidingWindow, State,
    StateChange,
};
pub use crate::bulkhead::Bulkhead;
pub use crate::cache::{CacheConfig, CacheError, CacheSource, Cached, RedisL2, TieredCache};

pub use crate::error::{BoxError, ConfigError, ResilienceError};
pub use crate::hedge::HedgePolicy;
pub use crate::latency::LatencyEstimator;
pub use crate::policy::Policy;
pub use crate::retry::{Jitter, RetryBudget, RetryPolicy, full_jitter};
pub use crate::timeout::{current_deadline, remaining, timeout_at, with_deadline};

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
