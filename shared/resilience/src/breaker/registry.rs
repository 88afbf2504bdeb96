//! Breakers by name, so an admin endpoint can list, reset and force-open them and one
//! subscriber sees every state change.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::broadcast;

use super::{BreakerConfig, BreakerStatus, CircuitBreaker, EVENT_CAPACITY, StateChange};

/// No breaker is registered under that name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no circuit breaker named `{0}`")]
pub struct UnknownBreaker(pub String);

/// A set of named breakers sharing one state-change channel. Cheap to clone.
#[derive(Clone)]
pub struct BreakerRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    breakers: RwLock<BTreeMap<String, CircuitBreaker>>,
    events: broadcast::Sender<StateChange>,
}

impl Default for BreakerRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("breakers", &self.names())
            .finish()
    }
}

impl BreakerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        BreakerRegistry {
            inner: Arc::new(RegistryInner {
                breakers: RwLock::new(BTreeMap::new()),
                events,
            }),
        }
    }

    /// The breaker called `name`, created with `config` if it does not exist yet. An existing
    /// breaker keeps its original configuration (a differing one is logged).
    pub fn get_or_create(&self, name: impl AsRef<str>, config: BreakerConfig) -> CircuitBreaker {
        let name = name.as_ref();
        if let Some(existing) = self.get(name) {
            if existing.config() != &config {
                tracing::warn!(
                    breaker = name,
                    "breaker exists with another config; keeping it"
                );
            }
            return existing;
        }
        let mut map = self
            .inner
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(name.to_owned())
            .or_insert_with(|| {
                CircuitBreaker::with_events(name.into(), config, self.inner.events.clone())
            })
            .clone()
    }

    /// The breaker called `name`, if registered.
    pub fn get(&self, name: &str) -> Option<CircuitBreaker> {
        self.inner
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Status of every breaker, sorted by name.
    pub fn snapshot(&self) -> Vec<BreakerStatus> {
        self.breakers().iter().map(CircuitBreaker::status).collect()
    }

    /// Closes `name` and clears its window.
    pub fn reset(&self, name: &str) -> Result<BreakerStatus, UnknownBreaker> {
        let breaker = self.lookup(name)?;
        breaker.reset();
        Ok(breaker.status())
    }

    /// Forces `name` open until it is reset.
    pub fn force_open(&self, name: &str) -> Result<BreakerStatus, UnknownBreaker> {
        let breaker = self.lookup(name)?;
        breaker.force_open();
        Ok(breaker.status())
    }

    /// Resets every breaker.
    pub fn reset_all(&self) {
        for breaker in self.breakers() {
            breaker.reset();
        }
    }

    /// State changes of every breaker in the registry, including ones created later.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.inner.events.subscribe()
    }

    fn lookup(&self, name: &str) -> Result<CircuitBreaker, UnknownBreaker> {
        self.get(name)
            .ok_or_else(|| UnknownBreaker(name.to_owned()))
    }

    fn breakers(&self) -> Vec<CircuitBreaker> {
        // Clone out so status() never runs under the registry lock.
        self.inner
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}
