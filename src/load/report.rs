//! Recording answers into HDR histograms and counters, and turning them into the run's numbers:
//! result.json (serde) and the markdown summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::outcome::{Details, Outcome};

/// Latencies are recorded in microseconds; one hour is far above any `--timeout`, so nothing is
/// clamped in practice (saturating_record clamps rather than fails if it ever is).
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// Collects one run's answers. Cheap enough to sit behind a mutex that every answer takes.
pub struct Recorder {
    all: Histogram<u64>,
    success: Histogram<u64>,
    counts: Counts,
    dropped: u64,
    seconds: Vec<SecondBucket>,
    degraded_answers: u64,
    degraded: BTreeMap<String, u64>,
    bonus: BonusCounts,
    statuses: BTreeMap<u16, u64>,
    deferred: DeferredCounts,
    /// Completion times of followed 202s that completed (from the purchase being sent).
    completion: Histogram<u64>,
    /// When the last sale (a 200, or a followed 202 seen completed) was observed, since start.
    last_sale_at: Duration,
    /// The latest any order poll ran against its schedule (the poll concurrency bound).
    poll_lag: Duration,
}

/// What became of the 202s, followed with `GET /orders/{id}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeferredCounts {
    pub followed: u64,
    pub completed: u64,
    pub cancelled: u64,
    /// Still pending at the follow timeout (or when the run was interrupted).
    pub unresolved: u64,
    /// The order could not be looked up (no `order_id`, or a 4xx from `/orders/{id}`).
    pub lookup_failed: u64,
    /// Completed or cancelled within the promise.
    pub within_promise: u64,
}

/// The deferred purchases in result.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeferredReport {
    pub promise_s: f64,
    pub follow_timeout_s: f64,
    pub counts: DeferredCounts,
    /// `within_promise / followed`, in percent.
    pub within_promise_pct: Option<f64>,
    /// Completion time (purchase sent → order seen completed) of the completed ones, in ms.
    pub completion_ms: Option<Percentiles>,
    /// The latest any poll ran against its backoff schedule, in ms: a completion time is late
    /// by at most one poll interval (≤ 1 s) plus this (polls in flight are bounded).
    #[serde(default)]
    pub max_poll_lag_ms: f64,
}

/// Units sold: the measured rate beside the analytic cap.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SalesReport {
    /// 200s plus followed 202s seen completed.
    pub units: u64,
    /// Seconds from the start of the run to the last sale observed (at least the run's length).
    pub span_s: f64,
    pub per_s: f64,
    /// The analytic cap under Store's `/sell` error fault, when the fault profile has one.
    pub cap: Option<super::args::SalesCap>,
    /// `per_s / cap`, in percent.
    pub of_cap_pct: Option<f64>,
}

/// One second of the time series. Its histogram has 2 significant digits and u32 counts, so a
/// 30-minute run keeps 1800 of them in a few megabytes.
struct SecondBucket {
    requests: u64,
    acknowledged: u64,
    out_of_stock: u64,
    latency: Histogram<u32>,
}

/// How many answers of each class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Every request sent (each has exactly one class below).
    pub requests: u64,
    pub completed: u64,
    pub accepted: u64,
    pub out_of_stock: u64,
    pub client_error: u64,
    /// 503 with `Retry-After` (an honest refusal; not in `server_error`).
    #[serde(default)]
    pub refused: u64,
    pub server_error: u64,
    pub timeout: u64,
    pub connection_error: u64,
    pub unexpected: u64,
}

impl Counts {
    pub fn add(&mut self, outcome: Outcome) {
        self.requests += 1;
        let slot = match outcome {
            Outcome::Completed => &mut self.completed,
            Outcome::Accepted => &mut self.accepted,
            Outcome::OutOfStock => &mut self.out_of_stock,
            Outcome::ClientError => &mut self.client_error,
            Outcome::Refused => &mut self.refused,
            Outcome::ServerError => &mut self.server_error,
            Outcome::Timeout => &mut self.timeout,
            Outcome::ConnectionError => &mut self.connection_error,
            Outcome::Unexpected => &mut self.unexpected,
        };
        *slot += 1;
    }

    /// 200 + 202: purchases the shop acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.completed + self.accepted
    }

    /// Everything that is neither acknowledged, nor a correct out-of-stock rejection, nor an
    /// honest refusal (503 + `Retry-After`).
    pub fn errors(&self) -> u64 {
        self.requests - self.acknowledged() - self.out_of_stock - self.refused
    }

    /// 200 / (200 + 202), in percent: the share of acknowledged purchases sold synchronously.
    pub fn sync_share(&self) -> Option<f64> {
        percent(self.completed, self.acknowledged())
    }

    /// Acknowledged / (all − 409), in percent: a 409 is a correct answer, not a failure, so it
    /// counts on neither side. None when there is nothing to divide.
    pub fn success_rate(&self) -> Option<f64> {
        percent(self.acknowledged(), self.requests - self.out_of_stock)
    }

    /// Acknowledged / all, in percent.
    pub fn acknowledged_rate(&self) -> Option<f64> {
        percent(self.acknowledged(), self.requests)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BonusCounts {
    pub credited: u64,
    pub pending: u64,
    /// A 200 without a recognised `bonus.status`.
    pub other: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// None for an empty histogram (no request of that kind).
    pub fn of<T: hdrhistogram::Counter>(histogram: &Histogram<T>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |q: f64| micros_to_ms(histogram.value_at_quantile(q) as f64);
        Some(Self {
            p50: ms(0.50),
            p90: ms(0.90),
            p95: ms(0.95),
            p99: ms(0.99),
            p99_9: ms(0.999),
            max: micros_to_ms(histogram.max() as f64),
            mean: micros_to_ms(histogram.mean()),
        })
    }
}

/// One run (one `ft` value) as written to result.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub ft: bool,
    /// From the first request to the last answer, in seconds.
    pub elapsed_s: f64,
    pub counts: Counts,
    pub acknowledged: u64,
    pub errors: u64,
    /// Open loop only: arrivals not sent because `--max-in-flight` requests were outstanding.
    pub dropped: u64,
    pub success_rate_pct: Option<f64>,
    pub acknowledged_rate_pct: Option<f64>,
    pub requests_per_s: f64,
    pub latency_ms: LatencyReport,
    pub degraded: DegradedReport,
    pub bonus: BonusCounts,
    /// Answers by exact HTTP status (timeouts and connection errors have none).
    pub status_codes: BTreeMap<u16, u64>,
    pub timeseries: Vec<SecondPoint>,
    /// 200 / (200 + 202), in percent.
    #[serde(default)]
    pub sync_share_pct: Option<f64>,
    /// What became of the 202s (absent in results written before they were followed).
    #[serde(default)]
    pub deferred: Option<DeferredReport>,
    #[serde(default)]
    pub sales: Option<SalesReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyReport {
    /// Every request, whatever its answer (timeouts count as the time waited).
    pub all: Option<Percentiles>,
    /// Acknowledged purchases (200 and 202) only.
    pub success: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DegradedReport {
    /// 200 answers with at least one `degraded` label.
    pub answers: u64,
    /// How often each label appeared.
    pub labels: BTreeMap<String, u64>,
}

/// One second of the run, by the time each answer arrived.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecondPoint {
    pub second: u64,
    pub requests: u64,
    pub acknowledged: u64,
    pub out_of_stock: u64,
    pub success_rate_pct: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The whole of result.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    pub tool: String,
    pub version: String,
    pub started_at: String,
    /// Ctrl-C ended the load early: the runs cover less than the settings ask for.
    pub interrupted: bool,
    pub settings: Settings,
    pub runs: Vec<RunReport>,
}

/// The command line, resolved, so a result can be rerun and compared.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub url: String,
    /// `closed` (VUs with think time) or `open` (fixed arrival rate).
    pub mode: String,
    pub vus: Option<u32>,
    pub think: Option<String>,
    pub rate_per_s: Option<f64>,
    pub max_in_flight: Option<usize>,
    pub duration_s: f64,
    pub max_requests: Option<u64>,
    pub products: Vec<String>,
    pub timeout_s: f64,
    pub ft: Vec<bool>,
}

impl Recorder {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            all: latency_histogram()?,
            success: latency_histogram()?,
            counts: Counts::default(),
            dropped: 0,
            seconds: Vec::new(),
            degraded_answers: 0,
            degraded: BTreeMap::new(),
            bonus: BonusCounts::default(),
            statuses: BTreeMap::new(),
            deferred: DeferredCounts::default(),
            completion: latency_histogram()?,
            last_sale_at: Duration::ZERO,
            poll_lag: Duration::ZERO,
        })
    }

    /// How late a follower's polls ran against their schedule, at worst.
    pub fn record_poll_lag(&mut self, lag: Duration) {
        self.poll_lag = self.poll_lag.max(lag);
    }

    /// A followed 202 ended as `fate`, `took` after its purchase was sent (for an ended order),
    /// observed `at` after the run started; `promise` is the bound it was given.
    pub fn record_followed(
        &mut self,
        fate: super::follow::Fate,
        took: Option<Duration>,
        at: Duration,
        promise: Duration,
    ) {
        use super::follow::Fate;
        let d = &mut self.deferred;
        d.followed += 1;
        match fate {
            Fate::Completed => d.completed += 1,
            Fate::Cancelled => d.cancelled += 1,
            Fate::Unresolved => d.unresolved += 1,
            Fate::LookupFailed => d.lookup_failed += 1,
        }
        if let Some(took) = took {
            if took <= promise {
                d.within_promise += 1;
            }
            if fate == Fate::Completed {
                let micros = took.as_micros().clamp(1, u128::from(HIGHEST_MICROS)) as u64;
                self.completion.saturating_record(micros);
                self.last_sale_at = self.last_sale_at.max(at);
            }
        }
    }

    /// The deferred and sales parts of the report, once every 202 has been followed.
    pub fn finish_followed(
        &self,
        report: &mut RunReport,
        promise: Duration,
        follow_timeout: Duration,
        cap: Option<super::args::SalesCap>,
    ) {
        let d = self.deferred;
        report.deferred = Some(DeferredReport {
            promise_s: promise.as_secs_f64(),
            follow_timeout_s: follow_timeout.as_secs_f64(),
            counts: d,
            within_promise_pct: percent(d.within_promise, d.followed),
            completion_ms: Percentiles::of(&self.completion),
            max_poll_lag_ms: round3(self.poll_lag.as_secs_f64() * 1000.0),
        });
        let units = self.counts.completed + d.completed;
        let span = self
            .last_sale_at
            .as_secs_f64()
            .max(report.elapsed_s)
            .max(f64::EPSILON);
        let per_s = round3(units as f64 / span);
        report.sales = Some(SalesReport {
            units,
            span_s: round3(span),
            per_s,
            cap,
            of_cap_pct: cap
                .filter(|c| c.units_per_s > 0.0)
                .map(|c| round3(per_s * 100.0 / c.units_per_s)),
        });
    }

    /// Records one answer that arrived `at` after the run started and took `latency`.
    pub fn record(
        &mut self,
        at: Duration,
        latency: Duration,
        outcome: Outcome,
        details: Option<&Details>,
    ) -> anyhow::Result<()> {
        let micros = latency.as_micros().clamp(1, u128::from(HIGHEST_MICROS)) as u64;
        self.counts.add(outcome);
        self.all.saturating_record(micros);
        if outcome.is_acknowledged() {
            self.success.saturating_record(micros);
        }
        if let Some(details) = details {
            if !details.degraded.is_empty() {
                self.degraded_answers += 1;
            }
            for label in &details.degraded {
                *self.degraded.entry(label.clone()).or_default() += 1;
            }
            match details.bonus.as_deref() {
                Some("credited") => self.bonus.credited += 1,
                Some("pending") => self.bonus.pending += 1,
                _ => self.bonus.other += 1,
            }
        }

        let second = at.as_secs() as usize;
        while self.seconds.len() <= second {
            self.seconds.push(SecondBucket {
                requests: 0,
                acknowledged: 0,
                out_of_stock: 0,
                latency: Histogram::new_with_bounds(1, HIGHEST_MICROS, 2)
                    .context("creating a per-second histogram")?,
            });
        }
        if outcome == Outcome::Completed {
            self.last_sale_at = self.last_sale_at.max(at);
        }
        let bucket = &mut self.seconds[second];
        bucket.requests += 1;
        bucket.acknowledged += u64::from(outcome.is_acknowledged());
        bucket.out_of_stock += u64::from(outcome == Outcome::OutOfStock);
        bucket.latency.saturating_record(micros);
        Ok(())
    }

    /// The exact status of an answer, next to its class from [`Recorder::record`].
    pub fn record_status(&mut self, status: u16) {
        *self.statuses.entry(status).or_default() += 1;
    }

    /// An open-loop arrival that was not sent (in-flight cap reached).
    pub fn record_dropped(&mut self) {
        self.dropped += 1;
    }

    /// A one-line status for the progress bar and CI logs.
    pub fn status_line(&self) -> String {
        let rate = self
            .counts
            .success_rate()
            .map_or("-".to_owned(), |r| format!("{r:.1}%"));
        let p95 = Percentiles::of(&self.all).map_or("-".to_owned(), |p| format_ms(p.p95));
        let mut line = format!(
            "requests {} | success {rate} | 409 {} | errors {} | p95 {p95}",
            self.counts.requests,
            self.counts.out_of_stock,
            self.counts.errors()
        );
        if self.dropped > 0 {
            let _ = write!(line, " | dropped {}", self.dropped);
        }
        line
    }

    /// The run's report; `elapsed` is the wall time from start to the last answer.
    pub fn finish(&self, ft: bool, elapsed: Duration) -> RunReport {
        let secs = elapsed.as_secs_f64();
        let timeseries = self
            .seconds
            .iter()
            .enumerate()
            .map(|(second, bucket)| {
                let pct = Percentiles::of(&bucket.latency);
                SecondPoint {
                    second: second as u64,
                    requests: bucket.requests,
                    acknowledged: bucket.acknowledged,
                    out_of_stock: bucket.out_of_stock,
                    success_rate_pct: percent(
                        bucket.acknowledged,
                        bucket.requests - bucket.out_of_stock,
                    ),
                    p50_ms: pct.map(|p| p.p50),
                    p95_ms: pct.map(|p| p.p95),
                    p99_ms: pct.map(|p| p.p99),
                }
            })
            .collect();
        RunReport {
            ft,
            elapsed_s: round3(secs),
            counts: self.counts,
            acknowledged: self.counts.acknowledged(),
            errors: self.counts.errors(),
            dropped: self.dropped,
            success_rate_pct: self.counts.success_rate(),
            acknowledged_rate_pct: self.counts.acknowledged_rate(),
            requests_per_s: if secs > 0.0 {
                round3(self.counts.requests as f64 / secs)
            } else {
                0.0
            },
            latency_ms: LatencyReport {
                all: Percentiles::of(&self.all),
                success: Percentiles::of(&self.success),
            },
            degraded: DegradedReport {
                answers: self.degraded_answers,
                labels: self.degraded.clone(),
            },
            bonus: self.bonus,
            status_codes: self.statuses.clone(),
            timeseries,
            sync_share_pct: self.counts.sync_share(),
            deferred: None,
            sales: None,
        }
    }
}

/// The markdown summary: one column per run, ready to paste into docs/benchmarks.
pub fn summary_markdown(result: &LoadResult) -> String {
    let s = &result.settings;
    let load = match s.mode.as_str() {
        "open" => format!(
            "open loop {}/s (max {} in flight)",
            trim_float(s.rate_per_s.unwrap_or_default()),
            s.max_in_flight.unwrap_or_default()
        ),
        _ => format!(
            "{} VUs, think {}",
            s.vus.unwrap_or_default(),
            s.think.as_deref().unwrap_or("-")
        ),
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### ftshop load: {load}, {} s, against {}\n",
        trim_float(s.duration_s),
        s.url
    );
    let _ = writeln!(
        md,
        "Started {} · timeout {} s · products {} · ftshop {}{}\n",
        result.started_at,
        trim_float(s.timeout_s),
        product_list(&s.products),
        result.version,
        s.max_requests
            .map(|n| format!(" · at most {n} requests per run"))
            .unwrap_or_default()
    );
    let mut header = "| metric |".to_owned();
    let mut rule = "|---|".to_owned();
    for run in &result.runs {
        let _ = write!(header, " ft={} |", run.ft);
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");

    let mut row = |name: &str, cell: &dyn Fn(&RunReport) -> String| {
        let mut line = format!("| {name} |");
        for run in &result.runs {
            let _ = write!(line, " {} |", cell(run));
        }
        let _ = writeln!(md, "{line}");
    };
    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} %"));
    let lat = |p: Option<Percentiles>, f: fn(&Percentiles) -> f64| {
        p.map_or("-".to_owned(), |p| format_ms(f(&p)))
    };
    row("**success** (acknowledged / (all − 409))", &|r| {
        format!("**{}**", pct(r.success_rate_pct))
    });
    row("acknowledged / all", &|r| pct(r.acknowledged_rate_pct));
    row("requests", &|r| r.counts.requests.to_string());
    row("requests/s", &|r| format!("{:.1}", r.requests_per_s));
    row("200 completed", &|r| r.counts.completed.to_string());
    row("202 accepted (pending)", &|r| r.counts.accepted.to_string());
    row("409 out of stock", &|r| r.counts.out_of_stock.to_string());
    row("other 4xx", &|r| r.counts.client_error.to_string());
    if result.runs.iter().any(|r| r.counts.refused > 0) {
        row("503 refused (Retry-After)", &|r| {
            r.counts.refused.to_string()
        });
    }
    row("5xx", &|r| r.counts.server_error.to_string());
    row("timeouts", &|r| r.counts.timeout.to_string());
    row("connection errors", &|r| {
        r.counts.connection_error.to_string()
    });
    if result.runs.iter().any(|r| r.counts.unexpected > 0) {
        row("unexpected status", &|r| r.counts.unexpected.to_string());
    }
    if s.mode == "open" {
        row("dropped (in-flight cap)", &|r| r.dropped.to_string());
    }
    row("latency p50 (all)", &|r| lat(r.latency_ms.all, |p| p.p50));
    row("latency p90 (all)", &|r| lat(r.latency_ms.all, |p| p.p90));
    row("latency p95 (all)", &|r| lat(r.latency_ms.all, |p| p.p95));
    row("latency p99 (all)", &|r| lat(r.latency_ms.all, |p| p.p99));
    row("latency p99.9 (all)", &|r| {
        lat(r.latency_ms.all, |p| p.p99_9)
    });
    row("latency max (all)", &|r| lat(r.latency_ms.all, |p| p.max));
    row("latency p50 / p95 / p99 (acknowledged)", &|r| {
        r.latency_ms.success.map_or("-".to_owned(), |p| {
            format!(
                "{} / {} / {}",
                format_ms(p.p50),
                format_ms(p.p95),
                format_ms(p.p99)
            )
        })
    });
    row("200s with `degraded` labels", &|r| {
        r.degraded.answers.to_string()
    });
    row("bonus credited / pending", &|r| {
        format!("{} / {}", r.bonus.credited, r.bonus.pending)
    });
    row("duration (s)", &|r| format!("{:.1}", r.elapsed_s));
    if result.runs.iter().any(|r| r.deferred.is_some()) {
        row(
            "sync share (200 / acknowledged)",
            &|r| pct(r.sync_share_pct),
        );
        let deferred = |r: &RunReport, f: &dyn Fn(&DeferredReport) -> String| {
            r.deferred.as_ref().map_or("-".to_owned(), f)
        };
        row(
            "202 followed: completed / cancelled / unresolved / lookup failed",
            &|r| {
                deferred(r, &|d| {
                    let c = d.counts;
                    format!(
                        "{} / {} / {} / {}",
                        c.completed, c.cancelled, c.unresolved, c.lookup_failed
                    )
                })
            },
        );
        row("202 completion p50 / p99 / max", &|r| {
            deferred(r, &|d| {
                d.completion_ms.map_or("-".to_owned(), |p| {
                    format!(
                        "{} / {} / {} (polls up to {} late)",
                        format_ms(p.p50),
                        format_ms(p.p99),
                        format_ms(p.max),
                        format_ms(d.max_poll_lag_ms)
                    )
                })
            })
        });
        row("202 ended within the promise", &|r| {
            deferred(r, &|d| {
                format!(
                    "{} of {} ({}, promise {} s)",
                    d.counts.within_promise,
                    d.counts.followed,
                    pct(d.within_promise_pct),
                    trim_float(d.promise_s)
                )
            })
        });
        row("sales/s (measured / analytic cap)", &|r| {
            r.sales.as_ref().map_or("-".to_owned(), |s| match s.cap {
                Some(cap) => format!(
                    "{:.2} / {:.2} ({}; N={}, p={}, window {} s)",
                    s.per_s,
                    cap.units_per_s,
                    pct(s.of_cap_pct),
                    cap.stores,
                    trim_float(cap.sell_error_p),
                    trim_float(cap.sell_error_window_s)
                ),
                None => format!("{:.2} / -", s.per_s),
            })
        });
    }

    let _ = writeln!(md, "\nAnswers by HTTP status:");
    for run in &result.runs {
        let statuses: Vec<String> = run
            .status_codes
            .iter()
            .map(|(status, n)| format!("{status} × {n}"))
            .collect();
        let none = if statuses.is_empty() { "none" } else { "" };
        let _ = writeln!(md, "- ft={}: {}{none}", run.ft, statuses.join(", "));
    }

    let labelled: Vec<&RunReport> = result
        .runs
        .iter()
        .filter(|r| !r.degraded.labels.is_empty())
        .collect();
    if !labelled.is_empty() {
        let _ = writeln!(md, "\nDegraded labels in 200 answers:");
        for run in labelled {
            let labels: Vec<String> = run
                .degraded
                .labels
                .iter()
                .map(|(label, n)| format!("`{label}` {n}"))
                .collect();
            let _ = writeln!(md, "- ft={}: {}", run.ft, labels.join(", "));
        }
    }
    md
}

fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).context("creating a latency histogram")
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| round3(part as f64 * 100.0 / whole as f64))
}

fn micros_to_ms(micros: f64) -> f64 {
    round3(micros / 1000.0)
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// `0.84 ms`, `12.3 ms`, `2.51 s`.
pub fn format_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `1-11` instead of eleven ids, when the ids are a run of numbers.
fn product_list(products: &[String]) -> String {
    let numbers: Option<Vec<u64>> = products.iter().map(|p| p.parse().ok()).collect();
    if let Some(numbers) = numbers
        && numbers.len() > 2
        && numbers.windows(2).all(|w| w[1] == w[0] + 1)
    {
        return format!("{}-{}", numbers[0], numbers[numbers.len() - 1]);
    }
    products.join(",")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests state their expectations by unwrapping
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_of_a_known_histogram() {
        let mut recorder = Recorder::new().unwrap();
        // 1..=1000 ms, one each: p50 = 500 ms, p99 = 990 ms, max = 1000 ms.
        for n in 1..=1000 {
            recorder
                .record(ms(n), ms(n), Outcome::Completed, None)
                .unwrap();
        }
        let report = recorder.finish(true, Duration::from_secs(10));
        let all = report.latency_ms.all.unwrap();
        let close = |actual: f64, expected: f64| {
            // 3 significant digits: within 0.1 % of the true value.
            assert!(
                (actual - expected).abs() <= expected * 0.001 + 0.001,
                "{actual} vs {expected}"
            );
        };
        close(all.p50, 500.0);
        close(all.p90, 900.0);
        close(all.p95, 950.0);
        close(all.p99, 990.0);
        close(all.p99_9, 999.0);
        close(all.max, 1000.0);
        close(all.mean, 500.5);
        assert_eq!(report.latency_ms.success, Some(all));
        assert_eq!(report.requests_per_s, 100.0);
    }

    #[test]
    fn success_rate_excludes_out_of_stock() {
        let mut recorder = Recorder::new().unwrap();
        let mut add = |n: u32, outcome: Outcome, latency: u64| {
            for _ in 0..n {
                recorder.record(ms(1), ms(latency), outcome, None).unwrap();
            }
        };
        add(85, Outcome::Completed, 10);
        add(5, Outcome::Accepted, 10);
        add(10, Outcome::OutOfStock, 10);
        add(4, Outcome::ServerError, 1000);
        add(1, Outcome::Timeout, 5000);
        let report = recorder.finish(true, Duration::from_secs(1));
        assert_eq!(report.counts.requests, 105);
        assert_eq!(report.acknowledged, 90);
        assert_eq!(report.errors, 5);
        // 90 / (105 - 10) = 94.737 %; 90 / 105 = 85.714 %.
        assert_eq!(report.success_rate_pct, Some(94.737));
        assert_eq!(report.acknowledged_rate_pct, Some(85.714));
        // Successes alone are all 10 ms; the failures lift the all-requests tail.
        assert!((report.latency_ms.success.unwrap().max - 10.0).abs() < 0.01);
        assert!(report.latency_ms.all.unwrap().max >= 4990.0);

        let only_409 = Counts {
            requests: 3,
            out_of_stock: 3,
            ..Counts::default()
        };
        assert_eq!(only_409.success_rate(), None);
        assert_eq!(only_409.acknowledged_rate(), Some(0.0));
    }

    #[test]
    fn time_series_and_details() {
        let mut recorder = Recorder::new().unwrap();
        let degraded = Details {
            degraded: vec!["exchange:stale-rate".into()],
            bonus: Some("pending".into()),
        };
        let clean = Details {
            degraded: vec![],
            bonus: Some("credited".into()),
        };
        recorder
            .record(ms(100), ms(20), Outcome::Completed, Some(&degraded))
            .unwrap();
        recorder
            .record(ms(200), ms(40), Outcome::Completed, Some(&clean))
            .unwrap();
        recorder
            .record(ms(2500), ms(30), Outcome::OutOfStock, None)
            .unwrap();
        recorder.record_dropped();
        let report = recorder.finish(true, ms(2600));
        assert_eq!(report.timeseries.len(), 3);
        assert_eq!(report.timeseries[0].requests, 2);
        assert_eq!(report.timeseries[0].success_rate_pct, Some(100.0));
        assert!((report.timeseries[0].p99_ms.unwrap() - 40.0).abs() < 0.5);
        assert_eq!(report.timeseries[1].requests, 0);
        assert_eq!(report.timeseries[1].p50_ms, None);
        assert_eq!(report.timeseries[2].out_of_stock, 1);
        assert_eq!(report.timeseries[2].success_rate_pct, None);
        assert_eq!(report.degraded.answers, 1);
        assert_eq!(report.degraded.labels["exchange:stale-rate"], 1);
        assert_eq!(report.bonus.pending, 1);
        assert_eq!(report.bonus.credited, 1);
        assert_eq!(report.dropped, 1);
    }

    #[test]
    fn markdown_has_a_column_per_run() {
        let mut on = Recorder::new().unwrap();
        on.record(ms(1), ms(12), Outcome::Completed, None).unwrap();
        on.record_status(200);
        let mut off = Recorder::new().unwrap();
        off.record(ms(1), ms(12), Outcome::ServerError, None)
            .unwrap();
        off.record_status(504);
        let result = LoadResult {
            tool: "ftshop load".into(),
            version: "0.1.0".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            interrupted: false,
            settings: Settings {
                url: "http://127.0.0.1:8080".into(),
                mode: "closed".into(),
                vus: Some(10),
                think: Some("1s..4s".into()),
                rate_per_s: None,
                max_in_flight: None,
                duration_s: 60.0,
                max_requests: None,
                products: (1..=11).map(|n| n.to_string()).collect(),
                timeout_s: 5.0,
                ft: vec![true, false],
            },
            runs: vec![on.finish(true, ms(1000)), off.finish(false, ms(1000))],
        };
        let md = summary_markdown(&result);
        assert!(md.contains("| metric | ft=true | ft=false |"), "{md}");
        assert!(
            md.contains("| **success** (acknowledged / (all − 409)) | **100.00 %** | **0.00 %** |"),
            "{md}"
        );
        assert!(md.contains("products 1-11"), "{md}");
        assert!(md.contains("- ft=false: 504 × 1\n"), "{md}");
        assert!(md.contains("10 VUs, think 1s..4s"), "{md}");
        assert_eq!(format_ms(2510.0), "2.51 s");
        assert_eq!(format_ms(0.84), "0.84 ms");
    }
}
