use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::error::ConfigError;

/// Limits retries to a ratio of recent requests (plus a floor), shared by the policies that
/// hold clones of it. A thin, validated wrapper over tower's `TpsBudget`.
///
/// Every call deposits; every retry withdraws. With `ratio = 0.2`, at most one retry per five
/// calls over the last `ttl`, plus `min_per_sec * ttl` retries that are always allowed so a
/// low-traffic client can still retry.
///
/// Concurrent withdrawals never overdraw it: tower's `TpsBudget::withdraw` reads the balance
/// and then subtracts (check-then-act), so N callers racing on the last token could all get
/// it; withdrawals here are serialized by a lock (deposits stay lock-free: they only add).
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<TpsBudget>,
    withdrawals: Arc<Mutex<()>>,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Default for RetryBudget {
    /// 20 % of the requests of the last 10 s, with a floor of 10 retries per second.
    fn default() -> Self {
        RetryBudget {
            inner: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
            withdrawals: Arc::default(),
        }
    }
}

impl RetryBudget {
    /// `ttl`: how long a deposit counts (1 s ..= 60 s). `min_per_sec`: retries per second
    /// always allowed. `ratio`: retries allowed per request (0.0 ..= 1000.0; 0.2 = 20 %).
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f32) -> Result<Self, ConfigError> {
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return Err(ConfigError::new("ttl", "must be between 1 s and 60 s"));
        }
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(ConfigError::new("ratio", "must be between 0 and 1000"));
        }
        if min_per_sec >= i32::MAX as u32 {
            return Err(ConfigError::new("min_per_sec", "too large"));
        }
        Ok(RetryBudget {
            inner: Arc::new(TpsBudget::new(ttl, min_per_sec, ratio)),
            withdrawals: Arc::default(),
        })
    }

    /// Records a request (done once per call by the retry policy).
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes one retry from the budget; `false` means do not retry.
    pub fn try_withdraw(&self) -> bool {
        // The guarded data is tower's atomics: a panic under the lock leaves nothing torn.
        let _serialized = self
            .withdrawals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner.withdraw()
    }
}
