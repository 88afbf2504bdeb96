//! Why an attempt future was dropped, for the breaker permits created inside it.
//!
//! A breaker [`Permit`](crate::breaker::Permit) that is dropped without an outcome cannot see
//! why its caller stopped polling. Most reasons (an outer deadline, a client that hung up) say
//! nothing about the dependency, but one does: a hedged attempt that *started first* and lost
//! the race to a later one did not answer within the hedge delay plus the winner's latency.
//! The hedge runs each attempt inside a [`Fate`] scope (a tokio task-local) and marks the
//! loser's fate `superseded` before dropping it; a permit admitted inside that scope remembers
//! the fate and reads it when it is dropped.
//!
//! Scopes nest (a hedge inside a hedged attempt): an attempt is superseded when its own fate
//! or any enclosing one is.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

tokio::task_local! {
    static FATE: Arc<Fate>;
    /// The number of the attempt being polled (1 for the first) in the innermost retry or
    /// hedge around it, for the attempt spans of the policies inside.
    static NUMBER: u32;
}

/// Runs `fut` as attempt number `n` (1-based) of the enclosing retry or hedge.
pub(crate) fn numbered<F: Future>(n: u32, fut: F) -> impl Future<Output = F::Output> {
    NUMBER.scope(n, fut)
}

/// The number of the attempt being polled: 1 outside any retry or hedge.
pub(crate) fn number() -> u32 {
    NUMBER.try_with(|n| *n).unwrap_or(1)
}

/// The fate of one attempt, shared between the hedge that runs it and the permits inside it.
#[derive(Debug, Default)]
pub(crate) struct Fate {
    superseded: AtomicBool,
    parent: Option<Arc<Fate>>,
}

impl Fate {
    /// A fate nested in the current one (if any).
    pub(crate) fn nested() -> Arc<Fate> {
        Arc::new(Fate {
            superseded: AtomicBool::new(false),
            parent: current(),
        })
    }

    /// Marks the attempt as having lost the race to an attempt that started after it.
    pub(crate) fn supersede(&self) {
        self.superseded.store(true, Ordering::Release);
    }

    /// Whether this attempt, or one enclosing it, lost a hedge race it started first.
    pub(crate) fn is_superseded(&self) -> bool {
        let mut fate = Some(self);
        while let Some(f) = fate {
            if f.superseded.load(Ordering::Acquire) {
                return true;
            }
            fate = f.parent.as_deref();
        }
        false
    }
}

/// Runs `fut` with `fate` as the current attempt fate.
pub(crate) fn scope<F: Future>(fate: Arc<Fate>, fut: F) -> impl Future<Output = F::Output> {
    FATE.scope(fate, fut)
}

/// The fate of the attempt being polled, if it runs inside a hedge.
pub(crate) fn current() -> Option<Arc<Fate>> {
    FATE.try_with(Arc::clone).ok()
}
