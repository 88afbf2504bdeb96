//! Errors shared by every policy.
//!
//! Two shapes, on purpose:
//! - [`ResilienceError<E>`] is what [`Policy::call`](crate::Policy::call) returns: a closed enum the
//!   caller can `match` on to pick a status code (504 for `Timeout`, 503 for `BreakerOpen`, ...)
//!   while keeping the typed error of the wrapped call in `Inner`.
//! - The tower middlewares follow tower's convention and return a [`BoxError`]; the small error
//!   structs below ([`Elapsed`], [`BreakerOpen`], [`BulkheadFull`], [`BudgetExhausted`]) are what
//!   they box, and [`ResilienceError::from_boxed`] turns such a box back into the enum.

use std::sync::Arc;

/// The boxed error type the tower middlewares return (same as `tower::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a call guarded by a [`Policy`](crate::Policy) did not produce a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResilienceError<E> {
    /// The per-attempt timeout or the request deadline elapsed first.
    #[error("deadline exceeded")]
    Timeout,
    /// The circuit breaker `name` rejected the call without running it.
    #[error("circuit breaker `{name}` is open")]
    BreakerOpen {
        /// Name of the breaker (as registered in the [`BreakerRegistry`](crate::BreakerRegistry)).
        name: Arc<str>,
    },
    /// The bulkhead had no free slot; the call was not run.
    #[error("bulkhead is full")]
    BulkheadFull,
    /// A retryable error happened but the retry budget allows no more retries right now.
    #[error("retry budget exhausted")]
    BudgetExhausted,
    /// The wrapped call itself failed.
    #[error(transparent)]
    Inner(E),
}

impl<E> ResilienceError<E> {
    /// A short, bounded label for logs and metrics: `timeout`, `breaker_open`, `bulkhead_full`,
    /// `budget_exhausted` or `inner`.
    pub fn kind(&self) -> &'static str {
        match self {
            ResilienceError::Timeout => "timeout",
            ResilienceError::BreakerOpen { .. } => "breaker_open",
            ResilienceError::BulkheadFull => "bulkhead_full",
            ResilienceError::BudgetExhausted => "budget_exhausted",
            ResilienceError::Inner(_) => "inner",
        }
    }

    /// True for [`ResilienceError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, ResilienceError::Timeout)
    }

    /// True when a policy rejected the call without running it (breaker open, bulkhead full,
    /// budget exhausted): the dependency was not touched.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            ResilienceError::BreakerOpen { .. }
                | ResilienceError::BulkheadFull
                | ResilienceError::BudgetExhausted
        )
    }

    /// The error of the wrapped call, if that is what failed.
    pub fn inner(&self) -> Option<&E> {
        match self {
            ResilienceError::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// Consumes the error, returning the wrapped call's error if that is what failed.
    pub fn into_inner(self) -> Option<E> {
        match self {
            ResilienceError::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// Maps the wrapped error, keeping the policy variants.
    pub fn map_inner<F, E2>(self, f: F) -> ResilienceError<E2>
    where
        F: FnOnce(E) -> E2,
    {
        match self {
            ResilienceError::Timeout => ResilienceError::Timeout,
            ResilienceError::BreakerOpen { name } => ResilienceError::BreakerOpen { name },
            ResilienceError::BulkheadFull => ResilienceError::BulkheadFull,
            ResilienceError::BudgetExhausted => ResilienceError::BudgetExhausted,
            ResilienceError::Inner(e) => ResilienceError::Inner(f(e)),
        }
    }
}

impl ResilienceError<BoxError> {
    /// Recovers the policy variant from an error returned by one of the tower middlewares
    /// (which box [`Elapsed`], [`BreakerOpen`], [`BulkheadFull`] or [`BudgetExhausted`]);
    /// anything else becomes `Inner`.
    pub fn from_boxed(err: BoxError) -> Self {
        if err.is::<Elapsed>() {
            return ResilienceError::Timeout;
        }
        if err.is::<BulkheadFull>() {
            return ResilienceError::BulkheadFull;
        }
        if err.is::<BudgetExhausted>() {
            return ResilienceError::BudgetExhausted;
        }
        match err.downcast::<BreakerOpen>() {
            Ok(open) => ResilienceError::BreakerOpen { name: open.name },
            Err(other) => ResilienceError::Inner(other),
        }
    }
}

impl<E: Into<BoxError>> ResilienceError<E> {
    /// The tower-style boxed form: policy variants become [`Elapsed`], [`BreakerOpen`],
    /// [`BulkheadFull`] or [`BudgetExhausted`], `Inner(e)` becomes `e` boxed (the inverse of
    /// [`from_boxed`](ResilienceError::from_boxed)).
    pub fn into_boxed(self) -> BoxError {
        match self {
            ResilienceError::Timeout => Box::new(Elapsed(())),
            ResilienceError::BreakerOpen { name } => Box::new(BreakerOpen { name }),
            ResilienceError::BulkheadFull => Box::new(BulkheadFull(())),
            ResilienceError::BudgetExhausted => Box::new(BudgetExhausted(())),
            ResilienceError::Inner(e) => e.into(),
        }
    }
}

/// The timeout or deadline elapsed (boxed by [`TimeoutLayer`](crate::timeout::TimeoutLayer)).
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("deadline exceeded")]
pub struct Elapsed(pub(crate) ());

impl Elapsed {
    /// Creates the error.
    pub fn new() -> Self {
        Elapsed(())
    }
}

/// A circuit breaker rejected the call (boxed by
/// [`CircuitBreakerLayer`](crate::breaker::CircuitBreakerLayer), returned by
/// [`CircuitBreaker::try_acquire`](crate::CircuitBreaker::try_acquire)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{name}` is open")]
pub struct BreakerOpen {
    /// Name of the breaker.
    pub name: Arc<str>,
}

/// The bulkhead had no free slot (boxed by [`BulkheadLayer`](crate::bulkhead::BulkheadLayer)).
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead is full")]
pub struct BulkheadFull(pub(crate) ());

impl BulkheadFull {
    /// Creates the error.
    pub fn new() -> Self {
        BulkheadFull(())
    }
}

/// The retry budget denied a retry (boxed by [`RetryLayer`](crate::retry::RetryLayer)).
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("retry budget exhausted")]
pub struct BudgetExhausted(pub(crate) ());

impl BudgetExhausted {
    /// Creates the error.
    pub fn new() -> Self {
        BudgetExhausted(())
    }
}

/// A configuration value was rejected by a builder or constructor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConfigError {
    /// The setting that was rejected.
    pub field: &'static str,
    /// Why it was rejected.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
}
