//! Test helpers shared by the integration tests.
#![allow(dead_code)]

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// One metric: name, sorted labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// A recorder installed for the current thread (tokio::test runs on one thread).
pub struct Metrics {
    recorder: &'static DebuggingRecorder,
    snapshotter: Snapshotter,
    _guard: metrics::LocalRecorderGuard<'static>,
}

impl Metrics {
    pub fn install() -> Self {
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        let snapshotter = recorder.snapshotter();
        let guard = metrics::set_default_local_recorder(recorder);
        Metrics {
            recorder,
            snapshotter,
            _guard: guard,
        }
    }

    /// All metrics as (name, sorted labels, value); counters are reset by each call.
    pub fn snapshot(&self) -> Vec<Sample> {
        let _ = self.recorder;
        self.snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let mut labels: Vec<(String, String)> = key
                    .key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                let value = match value {
                    DebugValue::Counter(c) => c as f64,
                    DebugValue::Gauge(g) => g.into_inner(),
                    DebugValue::Histogram(h) => h.len() as f64,
                };
                (key.key().name().to_owned(), labels, value)
            })
            .collect()
    }
}

/// The value of `name` with exactly `labels` in `snapshot`.
pub fn value(snapshot: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    wanted.sort();
    snapshot
        .iter()
        .find(|(n, l, _)| n == name && *l == wanted)
        .map(|(_, _, v)| *v)
}
