//! Sliding windows of call outcomes. Not thread-safe: the breaker keeps one behind its mutex.

use std::time::Duration;

use tokio::time::Instant;

use super::config::SlidingWindow;

/// Calls, failures and slow calls in a window or a half-open trial.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Counts {
    pub(crate) fn add(&mut self, failure: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failure);
        self.slow += u32::from(slow);
    }

    fn remove(&mut self, failure: bool, slow: bool) {
        self.calls -= 1;
        self.failures -= u32::from(failure);
        self.slow -= u32::from(slow);
    }

    fn merge(&mut self, other: &Counts) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.slow += other.slow;
    }

    pub(crate) fn failure_rate(&self) -> f64 {
        rate(self.failures, self.calls)
    }

    pub(crate) fn slow_rate(&self) -> f64 {
        rate(self.slow, self.calls)
    }
}

fn rate(part: u32, calls: u32) -> f64 {
    if calls == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(calls)
    }
}

const FAILURE: u8 = 1;
const SLOW: u8 = 2;

#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(kind: SlidingWindow, epoch: Instant) -> Self {
        match kind {
            SlidingWindow::Count { size } => Window::Count(CountWindow {
                ring: vec![0; size as usize],
                next: 0,
                len: 0,
                counts: Counts::default(),
            }),
            SlidingWindow::Time { length, buckets } => {
                let width = (length / buckets).max(Duration::from_nanos(1));
                Window::Time(TimeWindow {
                    buckets: vec![Bucket::default(); buckets as usize],
                    width_nanos: width.as_nanos().max(1),
                    epoch,
                })
            }
        }
    }

    /// Records one outcome; `now` is required by time windows (count windows ignore it).
    pub(crate) fn record(&mut self, now: Instant, failure: bool, slow: bool) {
        match self {
            Window::Count(w) => w.record(failure, slow),
            Window::Time(w) => w.record(now, failure, slow),
        }
    }

    pub(crate) fn counts(&self, now: Instant) -> Counts {
        match self {
            Window::Count(w) => w.counts,
            Window::Time(w) => w.counts(now),
        }
    }

    pub(crate) fn clear(&mut self) {
        match self {
            Window::Count(w) => {
                w.next = 0;
                w.len = 0;
                w.counts = Counts::default();
            }
            Window::Time(w) => w.buckets.fill(Bucket::default()),
        }
    }
}

/// Ring buffer of the last `size` outcomes with running totals: O(1) per call.
#[derive(Debug)]
pub(crate) struct CountWindow {
    ring: Vec<u8>,
    next: usize,
    len: usize,
    counts: Counts,
}

impl CountWindow {
    fn record(&mut self, failure: bool, slow: bool) {
        let cap = self.ring.len();
        if self.len == cap {
            let old = self.ring[self.next];
            self.counts.remove(old & FAILURE != 0, old & SLOW != 0);
        } else {
            self.len += 1;
        }
        self.ring[self.next] = (u8::from(failure) * FAILURE) | (u8::from(slow) * SLOW);
        self.counts.add(failure, slow);
        self.next = (self.next + 1) % cap;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (since the epoch) this bucket currently holds.
    index: u128,
    counts: Counts,
}

/// Ring of time slices; a slice is reused (and zeroed) when time moves a full turn past it.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Vec<Bucket>,
    width_nanos: u128,
    epoch: Instant,
}

impl TimeWindow {
    fn slice(&self, now: Instant) -> u128 {
        now.saturating_duration_since(self.epoch).as_nanos() / self.width_nanos
    }

    fn record(&mut self, now: Instant, failure: bool, slow: bool) {
        let index = self.slice(now);
        let n = self.buckets.len() as u128;
        let bucket = &mut self.buckets[(index % n) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                counts: Counts::default(),
            };
        }
        bucket.counts.add(failure, slow);
    }

    fn counts(&self, now: Instant) -> Counts {
        let current = self.slice(now);
        let n = self.buckets.len() as u128;
        let mut total = Counts::default();
        for b in &self.buckets {
            if b.index <= current && current - b.index < n {
                total.merge(&b.counts);
            }
        }
        total
    }
}
