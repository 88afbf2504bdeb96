//! A service no one scrapes must not keep every histogram observation. metrics-exporter-
//! prometheus appends each observation to a buffer (its value and an `Instant`) that only the
//! recorder's upkeep drains into the histogram's buckets, and leaves running the upkeep to the
//! caller; `http_metrics::prometheus()` starts it. With no upkeep but a scrape's, the buffered
//! bytes below never went down (the test failed), and `ftshop up` without Prometheus grew by
//! ~60 bytes per purchase in ecommerce. Its own test binary: it counts the process's live heap.

use std::alloc::System;
use std::time::{Duration, Instant};

use ftshop_platform::http_metrics::{UPKEEP_PERIOD, prometheus};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed by the whole test process.
fn live() -> isize {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated
}

#[test]
fn histogram_observations_are_drained_without_a_scrape() {
    let _recorder = prometheus();
    let histogram = metrics::histogram!("upkeep_test_duration_seconds");
    const OBSERVATIONS: usize = 200_000;
    let before = live();
    for i in 0..OBSERVATIONS {
        histogram.record(i as f64 * 1e-6);
    }
    let buffered = live() - before;
    assert!(
        buffered >= (OBSERVATIONS * 16) as isize,
        "each observation is buffered until the upkeep: {buffered} bytes for {OBSERVATIONS}"
    );
    // A trickle of observations goes on meanwhile, as in a service: besides being realistic, it
    // lets the buffer's epoch-based reclamation (crossbeam-epoch) advance and free the blocks
    // an upkeep drained. Two upkeeps at most, and slack.
    let deadline = Instant::now() + UPKEEP_PERIOD * 3;
    loop {
        histogram.record(1e-3);
        let live = live() - before;
        if live < buffered / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{live} of {buffered} bytes still buffered {:?} after the observations, with no scrape",
            UPKEEP_PERIOD * 3
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
