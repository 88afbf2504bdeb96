//! The scenarios applied while the load runs, each a task that ends when `stop` is cancelled.
//! Every action is logged as an [`Event`] for the report.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::bail;
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::disk;
use super::suite::{SuiteApi, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The default fault profile on every process.
    Faults,
    /// SIGKILL of a random member every `--kill-every`.
    Kill,
    /// SIGSTOP of both exchange processes for `--freeze-for`, then SIGCONT.
    FreezeExchange,
    /// SIGKILL of ecommerce itself halfway through the load.
    KillEcommerce,
    /// PostgreSQL and/or Redis unreachable for `--cut-for` (through scripts/tcp-proxy.py).
    ProxyCut,
    /// The data dir's filesystem filled but a small margin for `--disk-full-for`, every
    /// `--disk-full-every` (only on a filesystem of at most 1 GiB; see `disk.rs`).
    DiskFull,
    /// A SQLite database file renamed away for `--db-gone-for`, then back (SQLite only).
    DbFileGone,
}

impl Scenario {
    /// Every scenario that needs no extra setup (the default of `--scenarios`).
    pub const DEFAULT: [Scenario; 4] = [
        Scenario::Faults,
        Scenario::Kill,
        Scenario::FreezeExchange,
        Scenario::KillEcommerce,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Faults => "faults",
            Scenario::Kill => "kill",
            Scenario::FreezeExchange => "freeze-exchange",
            Scenario::KillEcommerce => "kill-ecommerce",
            Scenario::ProxyCut => "proxy-cut",
            Scenario::DiskFull => "disk-full",
            Scenario::DbFileGone => "db-file-gone",
        }
    }

    pub fn parse_list(text: &str) -> anyhow::Result<ScenarioList> {
        let mut list = BTreeSet::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let scenario = match name {
                "all" => {
                    list.extend(Scenario::DEFAULT);
                    continue;
                }
                "faults" => Scenario::Faults,
                "kill" => Scenario::Kill,
                "freeze-exchange" => Scenario::FreezeExchange,
                "kill-ecommerce" => Scenario::KillEcommerce,
                "proxy-cut" => Scenario::ProxyCut,
                "disk-full" => Scenario::DiskFull,
                "db-file-gone" => Scenario::DbFileGone,
                other => bail!(
                    "unknown scenario {other:?}: use faults, kill, freeze-exchange, \
                     kill-ecommerce, proxy-cut, disk-full, db-file-gone (comma-separated) or all \
                     (every one but proxy-cut, which needs --database-url or --redis-url, \
                     disk-full, which needs a small filesystem, and db-file-gone)"
                ),
            };
            list.insert(scenario);
        }
        if list.is_empty() {
            bail!("--scenarios is empty: name at least one, or `all`");
        }
        Ok(ScenarioList(list.into_iter().collect()))
    }
}

/// The `--scenarios` list: distinct, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioList(pub Vec<Scenario>);

/// Something a scenario did, at `at_s` seconds since the load started.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_s: f64,
    pub scenario: Scenario,
    pub action: String,
    pub target: Option<String>,
    pub pid: Option<u32>,
    pub detail: String,
}

/// The events so far, shared by the scenario tasks.
#[derive(Clone)]
pub struct Timeline {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Timeline {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            events: Arc::default(),
        }
    }

    pub fn log(
        &self,
        scenario: Scenario,
        action: &str,
        target: Option<&str>,
        pid: Option<u32>,
        detail: String,
    ) {
        let event = Event {
            at_s: self.start.elapsed().as_secs_f64(),
            scenario,
            action: action.to_owned(),
            target: target.map(str::to_owned),
            pid,
            detail,
        };
        eprintln!(
            "[chaos] t={:>5.1}s {:<15} {}{}{} {}",
            event.at_s,
            scenario.name(),
            event.action,
            event
                .target
                .as_deref()
                .map(|t| format!(" {t}"))
                .unwrap_or_default(),
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            event.detail,
        );
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Processes held by a signal (SIGSTOP: frozen; SIGUSR1: a proxy cut) and not yet released
/// (SIGCONT; SIGUSR2). Whoever ends the run calls [`Held::release_all`]; dropping the last
/// handle does it too, so nothing stays frozen or cut even when the run fails or panics.
#[derive(Clone)]
pub struct Held {
    pids: Arc<Mutex<BTreeSet<u32>>>,
    hold: Signal,
    release: Signal,
}

impl Held {
    /// SIGSTOP / SIGCONT.
    pub fn frozen() -> Self {
        Self::new(Signal::SIGSTOP, Signal::SIGCONT)
    }

    /// tcp-proxy.py: SIGUSR1 cuts, SIGUSR2 restores.
    pub fn cut() -> Self {
        Self::new(Signal::SIGUSR1, Signal::SIGUSR2)
    }

    fn new(hold: Signal, release: Signal) -> Self {
        Self {
            pids: Arc::default(),
            hold,
            release,
        }
    }

    pub fn hold(&self, pid: u32) -> bool {
        let mut held = self.pids.lock().unwrap_or_else(PoisonError::into_inner);
        // Recorded before the signal: a hold that happened is never forgotten.
        held.insert(pid);
        signal(pid, self.hold)
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&pid)
    }

    /// Releases every held process; returns their pids.
    pub fn release_all(&self) -> Vec<u32> {
        let mut held = self.pids.lock().unwrap_or_else(PoisonError::into_inner);
        let pids: Vec<u32> = held.iter().copied().collect();
        for pid in &pids {
            signal(*pid, self.release);
        }
        held.clear();
        pids
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if Arc::strong_count(&self.pids) == 1 {
            self.release_all();
        }
    }
}

/// Settings of the scenarios that have any.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub duration: Duration,
    pub kill_every: Duration,
    pub freeze_for: Duration,
    pub cut_for: Duration,
    pub disk_full_for: Duration,
    pub disk_full_every: Duration,
    pub db_gone_for: Duration,
    /// One of [`disk::DB_FILES`].
    pub db_gone_file: &'static str,
    pub fault_seed: u64,
    /// The suite already runs the default profile (started with it).
    pub faults_already_on: bool,
}

/// What the scenario tasks share.
#[derive(Clone)]
pub struct Stage {
    pub api: SuiteApi,
    pub schedule: Schedule,
    pub timeline: Timeline,
    pub frozen: Held,
    pub cut: Held,
    /// The tcp-proxy.py processes in front of PostgreSQL/Redis: (name, pid).
    pub proxies: Arc<Vec<(String, u32)>>,
}

/// Runs one scenario until `stop`.
pub async fn run(scenario: Scenario, stage: Stage, stop: CancellationToken) {
    let Stage {
        api,
        schedule,
        timeline,
        frozen,
        cut,
        proxies,
    } = stage;
    match scenario {
        Scenario::Faults => faults(&api, schedule, &timeline).await,
        Scenario::Kill => kill_random(&api, schedule, &timeline, &frozen, &stop).await,
        Scenario::FreezeExchange => {
            freeze_exchange(&api, schedule, &timeline, &frozen, &stop).await;
        }
        Scenario::KillEcommerce => kill_ecommerce(&api, schedule, &timeline, &stop).await,
        Scenario::ProxyCut => proxy_cut(&proxies, schedule, &timeline, &cut, &stop).await,
        Scenario::DiskFull => disk_full(&api, schedule, &timeline, &stop).await,
        Scenario::DbFileGone => db_file_gone(&api, schedule, &timeline, &stop).await,
    }
}

async fn faults(api: &SuiteApi, schedule: Schedule, timeline: &Timeline) {
    if schedule.faults_already_on {
        timeline.log(
            Scenario::Faults,
            "on",
            None,
            None,
            format!(
                "default profile since start (seed {}); restarted processes keep it",
                schedule.fault_seed
            ),
        );
        return;
    }
    let failed = api.set_profile("default", schedule.fault_seed).await;
    timeline.log(
        Scenario::Faults,
        "on",
        None,
        None,
        if failed.is_empty() {
            format!(
                "default profile on every process (seed {}); a restarted process comes back \
                 with its start profile",
                schedule.fault_seed
            )
        } else {
            format!(
                "default profile (seed {}); not accepted by {}",
                schedule.fault_seed,
                failed.join(", ")
            )
        },
    );
}

/// Waits `delay` or until `stop`; true when stopped.
async fn wait(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => stop.is_cancelled(),
        () = stop.cancelled() => true,
    }
}

async fn kill_random(
    api: &SuiteApi,
    schedule: Schedule,
    timeline: &Timeline,
    frozen: &Held,
    stop: &CancellationToken,
) {
    loop {
        if wait(schedule.kill_every, stop).await {
            return;
        }
        let up = match api.refresh() {
            Ok(up) => up,
            Err(err) => {
                timeline.log(
                    Scenario::Kill,
                    "skip",
                    None,
                    None,
                    format!("cannot read up.json: {err:#}"),
                );
                continue;
            }
        };
        // Running members only (a member being restarted has no pid), never the supervisor,
        // never a process this run froze (it is continued by the freeze scenario).
        let candidates: Vec<(String, u32)> = up
            .members
            .iter()
            .filter_map(|m| m.pid.map(|pid| (m.name.clone(), pid)))
            .filter(|(_, pid)| *pid != up.supervisor_pid && !frozen.contains(*pid))
            .collect();
        if candidates.is_empty() {
            timeline.log(
                Scenario::Kill,
                "skip",
                None,
                None,
                "no running member".into(),
            );
            continue;
        }
        let (name, pid) = &candidates[rand::random_range(0..candidates.len())];
        let sent = signal(*pid, Signal::SIGKILL);
        timeline.log(
            Scenario::Kill,
            if sent { "kill" } else { "kill-failed" },
            Some(name),
            Some(*pid),
            "SIGKILL; ftshop up restarts it".into(),
        );
    }
}

async fn freeze_exchange(
    api: &SuiteApi,
    schedule: Schedule,
    timeline: &Timeline,
    frozen: &Held,
    stop: &CancellationToken,
) {
    // A third of the way in, so the load sees the freeze and the recovery.
    if wait(schedule.duration / 3, stop).await {
        return;
    }
    // An exchange may be between a crash (fault or kill) and its restart: give it up to 3 s
    // to be back, so both are frozen whenever possible.
    let ready_by = Instant::now() + Duration::from_secs(3);
    let up = loop {
        match api.refresh() {
            Ok(up)
                if Instant::now() >= ready_by
                    || up
                        .members
                        .iter()
                        .filter(|m| m.service == "exchange")
                        .all(|m| m.pid.is_some()) =>
            {
                break up;
            }
            Ok(_) => {}
            Err(err) if Instant::now() >= ready_by => {
                timeline.log(
                    Scenario::FreezeExchange,
                    "skip",
                    None,
                    None,
                    format!("cannot read up.json: {err:#}"),
                );
                return;
            }
            Err(_) => {}
        }
        if wait(Duration::from_millis(100), stop).await {
            return;
        }
    };
    let mut targets: Vec<(String, u32)> = Vec::new();
    for member in up.members.iter().filter(|m| m.service == "exchange") {
        match member.pid {
            Some(pid) => targets.push((member.name.clone(), pid)),
            None => timeline.log(
                Scenario::FreezeExchange,
                "skip",
                Some(&member.name),
                None,
                "not running at that moment (being restarted)".into(),
            ),
        }
    }
    for (name, pid) in &targets {
        let sent = frozen.hold(*pid);
        timeline.log(
            Scenario::FreezeExchange,
            if sent { "sigstop" } else { "sigstop-failed" },
            Some(name),
            Some(*pid),
            format!("frozen for {:.1} s", schedule.freeze_for.as_secs_f64()),
        );
    }
    // Continued after `freeze_for`, or at once when the run stops earlier.
    let _ = wait(schedule.freeze_for, stop).await;
    let thawed = frozen.release_all();
    for (name, pid) in targets.iter().filter(|(_, pid)| thawed.contains(pid)) {
        timeline.log(
            Scenario::FreezeExchange,
            "sigcont",
            Some(name),
            Some(*pid),
            "continued".into(),
        );
    }
}

async fn kill_ecommerce(
    api: &SuiteApi,
    schedule: Schedule,
    timeline: &Timeline,
    stop: &CancellationToken,
) {
    // Just past halfway, away from the freeze at one third.
    if wait(schedule.duration.mul_f64(0.55), stop).await {
        return;
    }
    let pid = api.refresh().ok().and_then(|up| {
        up.members
            .iter()
            .find(|m| m.service == "ecommerce")
            .and_then(|m| m.pid)
    });
    match pid {
        Some(pid) => {
            let sent = signal(pid, Signal::SIGKILL);
            timeline.log(
                Scenario::KillEcommerce,
                if sent { "kill" } else { "kill-failed" },
                Some("ecommerce"),
                Some(pid),
                "SIGKILL mid-load; acknowledged orders must survive in its database".into(),
            );
        }
        None => timeline.log(
            Scenario::KillEcommerce,
            "skip",
            Some("ecommerce"),
            None,
            "not running at that moment".into(),
        ),
    }
}

async fn proxy_cut(
    proxies: &[(String, u32)],
    schedule: Schedule,
    timeline: &Timeline,
    cut: &Held,
    stop: &CancellationToken,
) {
    // Late in the load (the freeze is at one third, the ecommerce kill just past half), so
    // purchases meet the outage and the restore while the load still runs.
    if wait(schedule.duration.mul_f64(0.7), stop).await {
        return;
    }
    for (name, pid) in proxies {
        let sent = cut.hold(*pid);
        timeline.log(
            Scenario::ProxyCut,
            if sent { "cut" } else { "cut-failed" },
            Some(name),
            Some(*pid),
            format!(
                "{name} unreachable for {:.1} s (connections closed, new ones refused)",
                schedule.cut_for.as_secs_f64()
            ),
        );
    }
    let _ = wait(schedule.cut_for, stop).await;
    let restored = cut.release_all();
    for (name, pid) in proxies.iter().filter(|(_, pid)| restored.contains(pid)) {
        timeline.log(
            Scenario::ProxyCut,
            "restore",
            Some(name),
            Some(*pid),
            format!("{name} reachable again"),
        );
    }
}

/// Fills the data dir's filesystem at t = every, 2 × every, ... (all but
/// [`disk::MARGIN_BYTES`], so purchases take the rest), holds it for `disk_full_for`, frees it.
/// The filler is removed when the run stops, or when this task is dropped.
async fn disk_full(
    api: &SuiteApi,
    schedule: Schedule,
    timeline: &Timeline,
    stop: &CancellationToken,
) {
    let start = Instant::now();
    let target = api.data_dir.display().to_string();
    let mut round: u32 = 0;
    loop {
        round += 1;
        // Only a fill whose whole hold fits in the load: the load must meet the freeing too.
        let offset = schedule.disk_full_every * round;
        if offset + schedule.disk_full_for > schedule.duration {
            return;
        }
        let at = start + offset;
        if wait(at.saturating_duration_since(Instant::now()), stop).await {
            return;
        }
        let dir = api.data_dir.clone();
        let filled =
            tokio::task::spawn_blocking(move || disk::Filler::fill(&dir, disk::MARGIN_BYTES)).await;
        let filler = match filled {
            Ok(Ok(filler)) => filler,
            Ok(Err(err)) => {
                timeline.log(
                    Scenario::DiskFull,
                    "fill-failed",
                    Some(&target),
                    None,
                    format!("{err:#}"),
                );
                continue;
            }
            Err(err) => {
                timeline.log(
                    Scenario::DiskFull,
                    "fill-failed",
                    Some(&target),
                    None,
                    err.to_string(),
                );
                continue;
            }
        };
        timeline.log(
            Scenario::DiskFull,
            "fill",
            Some(&target),
            None,
            format!(
                "filesystem full but {} KiB (filler {:.1} MiB) for {:.1} s",
                disk::MARGIN_BYTES >> 10,
                filler.bytes() as f64 / f64::from(1 << 20),
                schedule.disk_full_for.as_secs_f64()
            ),
        );
        // Freed after `disk_full_for`, or at once when the run stops earlier.
        let stopped = wait(schedule.disk_full_for, stop).await;
        let freed = filler.free();
        timeline.log(
            Scenario::DiskFull,
            if freed.is_ok() { "free" } else { "free-failed" },
            Some(&target),
            None,
            match freed {
                Ok(()) => "filler removed".to_owned(),
                Err(err) => format!("cannot remove the filler: {err}"),
            },
        );
        if stopped {
            return;
        }
    }
}

/// Renames `<data dir>/<db_gone_file>` away at t = 0.4 × duration (after the freeze at one
/// third, before the ecommerce kill just past half) for `db_gone_for`, then back. The running
/// services keep their open handles on it under the other name; what they must do meanwhile
/// is refuse (503, readiness not_ready), and a process restarted meanwhile must refuse to
/// start rather than create an empty database.
async fn db_file_gone(
    api: &SuiteApi,
    schedule: Schedule,
    timeline: &Timeline,
    stop: &CancellationToken,
) {
    if wait(schedule.duration.mul_f64(0.4), stop).await {
        return;
    }
    let path = api.data_dir.join(schedule.db_gone_file);
    let moved = match disk::MovedAway::rename(&path) {
        Ok(moved) => moved,
        Err(err) => {
            timeline.log(
                Scenario::DbFileGone,
                "remove-failed",
                Some(schedule.db_gone_file),
                None,
                format!("{err:#}"),
            );
            return;
        }
    };
    timeline.log(
        Scenario::DbFileGone,
        "remove",
        Some(schedule.db_gone_file),
        None,
        format!(
            "renamed away for {:.1} s (open handles keep it under another name)",
            schedule.db_gone_for.as_secs_f64()
        ),
    );
    let _ = wait(schedule.db_gone_for, stop).await;
    let restored = moved.restore();
    timeline.log(
        Scenario::DbFileGone,
        if restored.is_ok() {
            "restore"
        } else {
            "restore-failed"
        },
        Some(schedule.db_gone_file),
        None,
        match restored {
            Ok(()) => "renamed back".to_owned(),
            Err(err) => format!("cannot rename it back: {err}"),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_leaves_out_the_scenarios_that_need_setup() {
        let all = Scenario::parse_list("all").expect("all");
        assert_eq!(all.0, Scenario::DEFAULT.to_vec());
        assert!(!all.0.contains(&Scenario::DiskFull));
        assert!(!all.0.contains(&Scenario::ProxyCut));
        assert!(!all.0.contains(&Scenario::DbFileGone));
        let list = Scenario::parse_list("disk-full,all").expect("disk-full,all");
        assert_eq!(list.0.len(), 5);
        assert!(list.0.contains(&Scenario::DiskFull));
        assert_eq!(Scenario::DiskFull.name(), "disk-full");
    }
}
