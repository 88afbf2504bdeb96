//! A live view of a running load, one bucket per second, for the control room (`ftshop up`):
//! purchases by outcome and latency p50/p99 of each second, and the acknowledged orders (for
//! the invariants). The runner feeds it through [`super::runner::run_observed`]; the
//! `ftshop load` report itself does not use it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use super::outcome::Outcome;

/// Acknowledged orders kept per run at most (a 10-minute run at 150/s).
const MAX_ACKED: usize = 100_000;

/// One second of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveSecond {
    /// Seconds since the run started (the bucket's start).
    pub t: u32,
    /// 200: completed.
    pub completed: u32,
    /// 202: accepted, the sale deferred.
    pub accepted: u32,
    /// 503 with Retry-After: refused honestly.
    pub refused: u32,
    /// Other 5xx, timeouts, connection errors, unexpected statuses.
    pub failed: u32,
    /// 409 out of stock and other 4xx.
    pub rejected: u32,
    /// Latency percentiles of the second's answers, milliseconds (None: no answer).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    #[serde(skip)]
    latencies_us: Vec<u32>,
}

/// An acknowledged (200/202) purchase of the run.
#[derive(Debug, Clone, Serialize)]
pub struct AckedPurchase {
    pub order_id: String,
    pub user: String,
    pub product: String,
    pub status: u16,
}

/// A purchase whose answer does not say whether it sold (a 5xx, a timeout, no connection): the
/// invariants replay it with its Idempotency-Key to learn its order.
#[derive(Debug, Clone, Serialize)]
pub struct UnsettledPurchase {
    pub key: String,
    pub user: String,
    pub product: String,
    pub ft: bool,
    pub status: Option<u16>,
}

/// The live series of one run (one `ft` value).
#[derive(Debug, Default)]
pub struct LiveSeries {
    seconds: Mutex<Vec<LiveSecond>>,
    acked: Mutex<Vec<AckedPurchase>>,
    unsettled: Mutex<Vec<UnsettledPurchase>>,
}

impl LiveSeries {
    /// One answer, `at` after the run started, that took `latency`.
    pub fn record(&self, at: Duration, latency: Duration, outcome: Outcome) {
        let second = usize::try_from(at.as_secs())
            .unwrap_or(usize::MAX)
            .min(24 * 3600);
        let mut seconds = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        while seconds.len() <= second {
            let t = u32::try_from(seconds.len()).unwrap_or(u32::MAX);
            // The seconds before the previous one are complete: their percentiles are final
            // and their samples can go.
            if let Some(done) = seconds
                .len()
                .checked_sub(2)
                .and_then(|i| seconds.get_mut(i))
            {
                done.finalize();
            }
            seconds.push(LiveSecond {
                t,
                ..LiveSecond::default()
            });
        }
        let bucket = &mut seconds[second];
        match outcome {
            Outcome::Completed => bucket.completed += 1,
            Outcome::Accepted => bucket.accepted += 1,
            Outcome::Refused => bucket.refused += 1,
            Outcome::OutOfStock | Outcome::ClientError => bucket.rejected += 1,
            Outcome::ServerError
            | Outcome::Timeout
            | Outcome::ConnectionError
            | Outcome::Unexpected => bucket.failed += 1,
        }
        bucket
            .latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// An acknowledged purchase, for the invariants.
    pub fn acknowledged(&self, purchase: AckedPurchase) {
        let mut acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        if acked.len() < MAX_ACKED {
            acked.push(purchase);
        }
    }

    /// A purchase that may have sold without saying so.
    pub fn unsettled(&self, purchase: UnsettledPurchase) {
        let mut unsettled = self
            .unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if unsettled.len() < MAX_ACKED {
            unsettled.push(purchase);
        }
    }

    pub fn unsettled_list(&self) -> Vec<UnsettledPurchase> {
        self.unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every second so far, with percentiles (computed on a copy for unfinished seconds).
    pub fn seconds(&self) -> Vec<LiveSecond> {
        let seconds = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        seconds
            .iter()
            .map(|s| {
                let mut copy = s.clone();
                copy.finalize();
                copy
            })
            .collect()
    }

    pub fn acked(&self) -> Vec<AckedPurchase> {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl LiveSecond {
    fn finalize(&mut self) {
        if self.latencies_us.is_empty() {
            return;
        }
        self.latencies_us.sort_unstable();
        let pick = |q: f64| {
            let n = self.latencies_us.len();
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            f64::from(self.latencies_us[i]) / 1000.0
        };
        self.p50_ms = Some(pick(0.50));
        self.p99_ms = Some(pick(0.99));
        self.latencies_us = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_land_in_their_second_with_nearest_rank_percentiles() {
        let live = LiveSeries::default();
        for ms in 1..=100u64 {
            live.record(
                Duration::from_millis(200),
                Duration::from_millis(ms),
                Outcome::Completed,
            );
        }
        live.record(
            Duration::from_millis(2500),
            Duration::from_millis(7),
            Outcome::Refused,
        );
        live.record(
            Duration::from_millis(2600),
            Duration::from_millis(9),
            Outcome::Timeout,
        );
        let seconds = live.seconds();
        assert_eq!(seconds.len(), 3);
        assert_eq!(seconds[0].completed, 100);
        assert_eq!(seconds[0].p50_ms, Some(50.0));
        assert_eq!(seconds[0].p99_ms, Some(99.0));
        assert_eq!((seconds[1].completed, seconds[1].p50_ms), (0, None));
        assert_eq!((seconds[2].refused, seconds[2].failed), (1, 1));
        assert_eq!(seconds[2].p99_ms, Some(9.0));
    }
}
