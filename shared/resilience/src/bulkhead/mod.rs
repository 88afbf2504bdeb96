//! Bulkhead: a cap on concurrent calls to one dependency.
//!
//! Why: a slow dependency should use up a bounded number of in-flight requests and task
//! memory, not all of them; callers beyond the cap are rejected at once (or after a short,
//! bounded wait) instead of queueing without limit. Built on [`tokio::sync::Semaphore`].

mod future;
mod layer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use self::future::ResponseFuture;
pub use self::layer::{BulkheadLayer, BulkheadService};
pub use crate::error::BulkheadFull;
use crate::error::{ConfigError, ResilienceError};

/// A named concurrency limit. Cheap to clone: clones share the slots.
#[derive(Clone)]
pub struct Bulkhead {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    semaphore: Arc<Semaphore>,
    max_concurrent: usize,
    max_wait: Duration,
    rejected: Counter,
}

impl std::fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.inner.name)
            .field("max_concurrent", &self.inner.max_concurrent)
            .field("available", &self.available())
            .finish()
    }
}

/// A slot in a [`Bulkhead`]; the slot is freed on drop.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct BulkheadPermit {
    _permit: OwnedSemaphorePermit,
}

impl Bulkhead {
    /// At most `max_concurrent` calls at once; extra calls are rejected immediately.
    pub fn new(name: impl Into<Arc<str>>, max_concurrent: usize) -> Result<Self, ConfigError> {
        if max_concurrent == 0 {
            return Err(ConfigError::new("max_concurrent", "must be at least 1"));
        }
        if max_concurrent > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new("max_concurrent", "too large"));
        }
        let name = name.into();
        let rejected =
            metrics::counter!("resilience_bulkhead_rejected_total", "name" => name.to_string());
        Ok(Bulkhead {
            inner: Arc::new(Inner {
                name,
                semaphore: Arc::new(Semaphore::new(max_concurrent)),
                max_concurrent,
                max_wait: Duration::ZERO,
                rejected,
            }),
        })
    }

    /// Lets [`acquire`](Self::acquire) (and so [`Policy`](crate::Policy) calls) wait up to
    /// `max_wait` for a slot before rejecting. Call before cloning.
    pub fn with_max_wait(self, max_wait: Duration) -> Self {
        let inner = &self.inner;
        Bulkhead {
            inner: Arc::new(Inner {
                name: inner.name.clone(),
                semaphore: inner.semaphore.clone(),
                max_concurrent: inner.max_concurrent,
                max_wait,
                rejected: inner.rejected.clone(),
            }),
        }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Free slots right now.
    pub fn available(&self) -> usize {
        self.inner.semaphore.available_permits()
    }

    /// Calls in flight right now.
    pub fn in_flight(&self) -> usize {
        self.inner.max_concurrent - self.available()
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        match self.inner.semaphore.clone().try_acquire_owned() {
            Ok(permit) => Ok(BulkheadPermit { _permit: permit }),
            Err(_) => Err(self.reject()),
        }
    }

    /// Takes a slot, waiting up to the configured `max_wait`.
    pub async fn acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        if let Ok(permit) = self.try_acquire_quiet() {
            return Ok(permit);
        }
        if self.inner.max_wait.is_zero() {
            return Err(self.reject());
        }
        let wait = self.inner.semaphore.clone().acquire_owned();
        match tokio::time::timeout(self.inner.max_wait, wait).await {
            Ok(Ok(permit)) => Ok(BulkheadPermit { _permit: permit }),
            _ => Err(self.reject()),
        }
    }

    /// Runs `fut` in a slot (waiting up to `max_wait` for one).
    pub async fn call<T, E, Fut>(&self, fut: Fut) -> Result<T, ResilienceError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let _permit = self
            .acquire()
            .await
            .map_err(|_| ResilienceError::BulkheadFull)?;
        fut.await.map_err(ResilienceError::Inner)
    }

    fn try_acquire_quiet(&self) -> Result<BulkheadPermit, ()> {
        self.inner
            .semaphore
            .clone()
            .try_acquire_owned()
            .map(|permit| BulkheadPermit { _permit: permit })
            .map_err(|_| ())
    }

    fn reject(&self) -> BulkheadFull {
        self.inner.rejected.increment(1);
        BulkheadFull::new()
    }
}
