//! Load runs started from the page, with the engine of `ftshop load` ([`crate::load`]): closed
//! loop, `users` virtual users with `think` time, for `duration`. `ft: both` runs ft=true and
//! ft=false side by side (at the same time, `users` each), so the two series can be compared
//! under the same faults. One run at a time; the last one stays on the charts.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use clap::Parser;
use ftshop_platform::Problem;
use ftshop_platform::extract::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Room;
use crate::load::live::{AckedPurchase, LiveSeries, UnsettledPurchase};

const MAX_USERS: u32 = 200;
const MAX_SECONDS: u64 = 600;
const MAX_THINK_MS: u64 = 10_000;

#[derive(Default)]
pub struct Traffic {
    current: Mutex<Option<Arc<Run>>>,
}

/// `POST /api/traffic/start` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// Virtual users (per ft value), 1..=200.
    pub users: u32,
    /// Think time between a user's answer and next purchase, milliseconds, 0..=10000.
    pub think_ms: u64,
    /// `on`, `off` or `both`.
    pub ft: String,
    /// Seconds, 1..=600.
    pub duration_s: u64,
}

/// One load run.
pub struct Run {
    settings: RunSettings,
    started_unix_ms: i64,
    started: tokio::time::Instant,
    stop: CancellationToken,
    /// (ft, series), ft=true first.
    series: Vec<(bool, Arc<LiveSeries>)>,
    /// Backlog samples once a second: (t seconds, pending orders, outbox bonuses, Fidelity's
    /// pending bonuses).
    backlog: Mutex<Vec<[i64; 4]>>,
    state: Mutex<(&'static str, Option<String>)>,
}

/// Wraps `ftshop load`'s arguments so they are parsed and validated exactly as on the CLI.
#[derive(Parser)]
struct LoadCli {
    #[command(flatten)]
    args: crate::load::LoadArgs,
}

impl Traffic {
    pub fn view(&self) -> Value {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(run) = current.as_ref() else {
            return json!({ "state": "idle" });
        };
        let (state, error) = run
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let series: serde_json::Map<String, Value> = run
            .series
            .iter()
            .map(|(ft, live)| {
                (
                    if *ft { "on" } else { "off" }.to_owned(),
                    serde_json::to_value(live.seconds()).unwrap_or_default(),
                )
            })
            .collect();
        json!({
            "state": state,
            "error": error,
            "settings": run.settings,
            "started_unix_ms": run.started_unix_ms,
            "elapsed_s": run.started.elapsed().as_secs_f64(),
            "series": series,
            "backlog": *run.backlog.lock().unwrap_or_else(PoisonError::into_inner),
        })
    }

    /// The acknowledged purchases of the current (or last) run; earlier runs' are in the
    /// ledger.
    pub fn acked(&self) -> (Vec<AckedPurchase>, Vec<UnsettledPurchase>) {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let series = || current.iter().flat_map(|run| run.series.iter());
        (
            series().flat_map(|(_, s)| s.acked()).collect(),
            series().flat_map(|(_, s)| s.unsettled_list()).collect(),
        )
    }

    pub fn stop_all(&self) {
        if let Some(run) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            run.stop.cancel();
        }
    }
}

/// `POST /api/traffic/start`.
pub async fn start(
    State(room): State<Arc<Room>>,
    Json(settings): Json<RunSettings>,
) -> Result<Response, Problem> {
    if !(1..=MAX_USERS).contains(&settings.users) {
        return Err(Problem::validation(format!(
            "users must be within 1..={MAX_USERS}"
        )));
    }
    if settings.think_ms > MAX_THINK_MS {
        return Err(Problem::validation(format!(
            "think_ms must be within 0..={MAX_THINK_MS}"
        )));
    }
    if !(1..=MAX_SECONDS).contains(&settings.duration_s) {
        return Err(Problem::validation(format!(
            "duration_s must be within 1..={MAX_SECONDS}"
        )));
    }
    let fts: Vec<bool> = match settings.ft.as_str() {
        "on" => vec![true],
        "off" => vec![false],
        "both" => vec![true, false],
        other => {
            return Err(Problem::validation(format!(
                "ft must be on, off or both, not `{other}`"
            )));
        }
    };
    let ecommerce = room
        .url_of("ecommerce")
        .ok_or_else(|| Problem::unavailable("the suite has no ecommerce process"))?
        .to_owned();
    let cli = LoadCli::try_parse_from([
        "load".to_owned(),
        "--url".to_owned(),
        ecommerce,
        "--vus".to_owned(),
        settings.users.to_string(),
        "--think".to_owned(),
        format!("{}ms", settings.think_ms),
        "--duration".to_owned(),
        format!("{}s", settings.duration_s),
        // Deferred orders are followed for a short while only: the page shows the backlog.
        "--follow-timeout".to_owned(),
        "5s".to_owned(),
    ])
    .map_err(|e| Problem::validation(e.to_string()))?;
    let plan = cli
        .args
        .plan()
        .map_err(|e| Problem::validation(format!("{e:#}")))?;
    let client = crate::load::loopback_client(plan.timeout).map_err(Problem::internal)?;

    let run = {
        let mut current = room
            .traffic
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(run) = current.as_ref()
            && run.state.lock().unwrap_or_else(PoisonError::into_inner).0 == "running"
        {
            return Err(Problem::conflict(
                "load-running",
                "a load run is going on; stop it first",
            ));
        }
        let run = Arc::new(Run {
            settings: settings.clone(),
            started_unix_ms: ftshop_platform::db::now_millis(),
            started: tokio::time::Instant::now(),
            stop: room.stop.child_token(),
            series: fts
                .iter()
                .map(|ft| (*ft, Arc::new(LiveSeries::default())))
                .collect(),
            backlog: Mutex::new(Vec::new()),
            state: Mutex::new(("running", None)),
        });
        // The previous run's purchases stay checked by the invariants.
        if let Some(previous) = current.replace(run.clone()) {
            for (_, series) in &previous.series {
                for u in series.unsettled_list() {
                    room.ledger.unsettled(u);
                }
                for a in series.acked() {
                    room.ledger.acknowledged(super::checks::Acked {
                        order_id: a.order_id,
                        user: a.user,
                        product: a.product,
                        status: a.status,
                    });
                }
            }
        }
        run
    };
    eprintln!(
        "[control] load: {} users, think {} ms, ft {}, {} s",
        settings.users, settings.think_ms, settings.ft, settings.duration_s
    );
    tokio::spawn(sample_backlog(room.clone(), run.clone()));
    tokio::spawn({
        let run = run.clone();
        async move {
            let runs = run.series.iter().map(|(ft, live)| {
                crate::load::run_observed(&plan, *ft, &client, &run.stop, Some(live.clone()))
            });
            let results = futures::future::join_all(runs).await;
            let error = results
                .into_iter()
                .find_map(|r| r.err())
                .map(|e| format!("{e:#}"));
            *run.state.lock().unwrap_or_else(PoisonError::into_inner) = (
                if error.is_some() {
                    "failed"
                } else {
                    "finished"
                },
                error,
            );
            run.stop.cancel();
        }
    });
    Ok(Json(json!({ "state": "running", "settings": settings })).into_response())
}

/// `POST /api/traffic/stop`: ends the current run early (requests in flight are awaited).
pub async fn stop(State(room): State<Arc<Room>>) -> Result<Response, Problem> {
    let current = room
        .traffic
        .current
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match current {
        Some(run) if run.state.lock().unwrap_or_else(PoisonError::into_inner).0 == "running" => {
            run.stop.cancel();
            Ok(Json(json!({ "state": "stopping" })).into_response())
        }
        _ => Err(Problem::conflict(
            "no-load-running",
            "no load run is going on",
        )),
    }
}

/// The backlog once a second while the run lasts (and 10 s more, to show it draining).
async fn sample_backlog(room: Arc<Room>, run: Arc<Run>) {
    let ecommerce = room.url_of("ecommerce").unwrap_or_default().to_owned();
    let fidelity = room.url_of("fidelity").unwrap_or_default().to_owned();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut after_end = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = room.stop.cancelled() => return,
        }
        if run.stop.is_cancelled() {
            after_end += 1;
            if after_end > 10 {
                return;
            }
        }
        let (backlog, pending) = tokio::join!(
            super::feed::public_get(&room, format!("{ecommerce}/backlog")),
            super::feed::public_get(&room, format!("{fidelity}/bonus/pending")),
        );
        let read = |v: &Result<Value, String>, field: &str| {
            v.as_ref()
                .ok()
                .and_then(|v| v[field].as_i64())
                .unwrap_or(-1)
        };
        let sample = [
            i64::try_from(run.started.elapsed().as_secs()).unwrap_or(i64::MAX),
            read(&backlog, "pending_orders"),
            read(&backlog, "outbox_bonuses"),
            read(&pending, "depth"),
        ];
        run.backlog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sample);
    }
}
