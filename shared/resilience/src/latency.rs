//! A timeout derived from observed latency: the last calls' durations in a ring, and a timeout
//! at a multiple of their p99, clamped to a floor and the configured ceiling.
//!
//! Idea from Finagle's and Envoy's latency-aware timeouts and Dean & Barroso, "The Tail at
//! Scale" (CACM 2013): a fixed timeout sized for the worst case makes every call to a dependency
//! that has just become slow wait out that worst case; one sized from what the dependency
//! normally answers in gives up on it as soon as it is clearly abnormal. Only successful calls
//! are recorded (a timed-out call says only "at least the timeout", which would ratchet the
//! estimate up), so a dependency that turns slow but still answers moves the estimate up
//! towards the ceiling, and the breaker's slow-call rate takes over from there.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Recent successful call durations and the adaptive timeout derived from them.
#[derive(Debug)]
pub struct LatencyEstimator {
    samples: Mutex<VecDeque<Duration>>,
    capacity: usize,
    min_samples: usize,
    multiple: f64,
    floor: Duration,
    ceiling: Duration,
    /// The timeout while fewer than `min_samples` calls are known.
    initial: Duration,
}

impl LatencyEstimator {
    /// Keeps the last `capacity` durations; [`timeout`](Self::timeout) is
    /// `clamp(multiple × p99, floor, ceiling)` once `min_samples` are known, `ceiling` before.
    /// Errors when `capacity` or `min_samples` is 0, `min_samples > capacity`, `multiple` is not
    /// at least 1, or `floor > ceiling`.
    pub fn try_new(
        capacity: usize,
        min_samples: usize,
        multiple: f64,
        floor: Duration,
        ceiling: Duration,
    ) -> Result<Self, crate::ConfigError> {
        let invalid = |what: &str| Err(crate::ConfigError::new("latency estimator", what));
        if capacity == 0 || min_samples == 0 || min_samples > capacity {
            return invalid("need 0 < min_samples <= capacity");
        }
        if !(multiple >= 1.0 && multiple.is_finite()) {
            return invalid("the multiple of p99 must be a finite number >= 1");
        }
        if floor > ceiling {
            return invalid("the floor is above the ceiling");
        }
        Ok(Self {
            samples: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            min_samples,
            multiple,
            floor,
            ceiling,
            initial: ceiling,
        })
    }

    /// The timeout while fewer than `min_samples` calls are known: `initial`, clamped to
    /// `[floor, ceiling]`, instead of the ceiling. For a dependency whose normal answer time is
    /// known to be far below the floor, starting at the floor means the calls made before
    /// enough answers were seen (a process just started, a dependency slow since) give up as
    /// early as later ones would, instead of each waiting out the ceiling.
    #[must_use]
    pub fn starting_at(mut self, initial: Duration) -> Self {
        self.initial = initial.clamp(self.floor, self.ceiling);
        self
    }

    /// Records the duration of a call that succeeded.
    pub fn record(&self, took: Duration) {
        let mut samples = self.lock();
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(took);
    }

    /// The `q` quantile (0..=1) of the recorded durations (nearest rank); `None` below
    /// `min_samples`. Called for every guarded call: a selection of the one rank (`O(n)`), not a
    /// sort of the window.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let mut samples: Vec<Duration> = self.lock().iter().copied().collect();
        if samples.len() < self.min_samples {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * samples.len() as f64).ceil() as usize).max(1);
        let index = rank.min(samples.len()) - 1;
        let (_, nth, _) = samples.select_nth_unstable(index);
        Some(*nth)
    }

    /// The timeout for the next call: `multiple × p99` clamped to `[floor, ceiling]`, or the
    /// initial timeout (the ceiling unless [`starting_at`](Self::starting_at) said otherwise)
    /// while fewer than `min_samples` calls are known.
    pub fn timeout(&self) -> Duration {
        match self.quantile(0.99) {
            Some(p99) => p99.mul_f64(self.multiple).clamp(self.floor, self.ceiling),
            None => self.initial,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Duration>> {
        // Durations only: a panic elsewhere cannot leave them inconsistent.
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Every quantile is the nearest-rank value of the sorted window, whatever the order the
    /// durations came in.
    #[test]
    fn quantiles_are_the_nearest_rank_of_the_sorted_window() {
        let est = LatencyEstimator::try_new(100, 1, 1.0, ms(0), ms(1000)).unwrap();
        // A permutation of 1..=97 ms (97 is prime, 37 is coprime with it), then 3 repeats.
        let mut seen: Vec<Duration> = Vec::new();
        for i in 0..97u64 {
            let d = ms((i * 37) % 97 + 1);
            est.record(d);
            seen.push(d);
        }
        for d in [ms(5), ms(50), ms(96)] {
            est.record(d);
            seen.push(d);
        }
        seen.sort_unstable();
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0] {
            let rank = ((q * seen.len() as f64).ceil() as usize).max(1);
            assert_eq!(est.quantile(q), Some(seen[rank - 1]), "q = {q}");
        }
    }

    #[test]
    fn the_timeout_follows_p99_within_its_bounds() {
        let est = LatencyEstimator::try_new(64, 10, 4.0, ms(50), ms(150)).unwrap();
        assert_eq!(est.timeout(), ms(150), "the ceiling until enough is known");
        for _ in 0..20 {
            est.record(ms(3));
        }
        assert_eq!(est.quantile(0.99), Some(ms(3)));
        assert_eq!(est.timeout(), ms(50), "4 × 3 ms is below the floor");
        for _ in 0..64 {
            est.record(ms(20));
        }
        assert_eq!(
            est.timeout(),
            ms(80),
            "4 × p99 once the old samples are gone"
        );
        for _ in 0..64 {
            est.record(ms(100));
        }
        assert_eq!(est.timeout(), ms(150), "never above the ceiling");
    }

    #[test]
    fn a_starting_timeout_holds_until_enough_is_known() {
        let est = LatencyEstimator::try_new(64, 10, 4.0, ms(50), ms(150))
            .unwrap()
            .starting_at(ms(50));
        assert_eq!(
            est.timeout(),
            ms(50),
            "the starting timeout, not the ceiling"
        );
        for _ in 0..9 {
            est.record(ms(30));
        }
        assert_eq!(est.timeout(), ms(50), "still fewer than min_samples");
        est.record(ms(30));
        assert_eq!(est.timeout(), ms(120), "4 × p99 once enough is known");
        let clamped = LatencyEstimator::try_new(64, 10, 4.0, ms(50), ms(150))
            .unwrap()
            .starting_at(ms(1));
        assert_eq!(clamped.timeout(), ms(50), "clamped to the floor");
    }

    #[test]
    fn invalid_settings_are_refused() {
        assert!(LatencyEstimator::try_new(0, 1, 4.0, ms(1), ms(2)).is_err());
        assert!(LatencyEstimator::try_new(4, 5, 4.0, ms(1), ms(2)).is_err());
        assert!(LatencyEstimator::try_new(4, 2, 0.5, ms(1), ms(2)).is_err());
        assert!(LatencyEstimator::try_new(4, 2, 4.0, ms(3), ms(2)).is_err());
    }
}
