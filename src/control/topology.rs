//! The six processes as the supervisor sees them: pid, restarts, since when; plus whether each
//! answers `/health/live` (checked by the feed while a page is open).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

/// Fed by `ftshop up`'s supervisor ([`Topology::record`], one call per start and exit).
#[derive(Default)]
pub struct Topology {
    members: Mutex<BTreeMap<String, Proc>>,
    /// Woken on every change, so the page hears of a killed process at once.
    pub(super) changed: Notify,
}

#[derive(Debug, Clone)]
struct Proc {
    pid: Option<u32>,
    restarts: u32,
    since: Instant,
    ever_started: bool,
    live: Option<bool>,
    frozen: bool,
}

/// One process in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct ProcView {
    pub name: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// `up`, `starting`, `restarting`, `crashed` (exited; the supervisor restarts it after its
    /// backoff), `frozen` (SIGSTOP by a preset), `unresponsive` (running, not answering).
    pub state: &'static str,
    /// Seconds since the current process started (or since it exited, when it is down).
    pub uptime_s: Option<f64>,
    pub down_s: Option<f64>,
    /// Whether `/health/live` answered at the last check (None: not checked yet).
    pub live: Option<bool>,
}

/// A process that has not answered for this long after starting is `unresponsive`.
const START_GRACE: Duration = Duration::from_secs(20);

impl Topology {
    /// The supervisor started (`pid` Some) or lost (`None`) `member`'s process.
    pub fn record(&self, member: &str, pid: Option<u32>, restarts: u32) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = members.entry(member.to_owned()).or_insert(Proc {
            pid: None,
            restarts: 0,
            since: Instant::now(),
            ever_started: false,
            live: None,
            frozen: false,
        });
        if entry.pid != pid {
            entry.since = Instant::now();
            entry.live = None;
            entry.frozen = false;
        }
        entry.ever_started |= pid.is_some();
        entry.pid = pid;
        entry.restarts = restarts;
        drop(members);
        self.changed.notify_one();
    }

    pub(super) fn pid(&self, member: &str) -> Option<u32> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members.get(member).and_then(|p| p.pid)
    }

    pub(super) fn set_live(&self, member: &str, pid: Option<u32>, live: bool) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        // A check that began before a restart says nothing about the new process.
        if let Some(entry) = members.get_mut(member)
            && entry.pid == pid
        {
            entry.live = Some(live);
        }
    }

    pub(super) fn set_frozen(&self, member: &str, frozen: bool) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = members.get_mut(member) {
            entry.frozen = frozen;
        }
        drop(members);
        self.changed.notify_one();
    }

    /// Every process in `order`.
    pub(super) fn view(&self, order: &[String]) -> Vec<ProcView> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        order
            .iter()
            .map(|name| {
                let Some(p) = members.get(name) else {
                    return ProcView {
                        name: name.clone(),
                        pid: None,
                        restarts: 0,
                        state: "starting",
                        uptime_s: None,
                        down_s: None,
                        live: None,
                    };
                };
                let age = p.since.elapsed();
                let state = match (p.pid, p.live) {
                    _ if p.frozen && p.pid.is_some() => "frozen",
                    (None, _) if p.ever_started => "crashed",
                    (None, _) => "starting",
                    (Some(_), Some(true)) => "up",
                    (Some(_), _) if age < START_GRACE && p.restarts > 0 => "restarting",
                    (Some(_), _) if age < START_GRACE => "starting",
                    (Some(_), _) => "unresponsive",
                };
                let secs = (age.as_secs_f64() * 10.0).round() / 10.0;
                ProcView {
                    name: name.clone(),
                    pid: p.pid,
                    restarts: p.restarts,
                    state,
                    uptime_s: p.pid.map(|_| secs),
                    down_s: p.pid.is_none().then_some(secs),
                    live: p.live,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_exits_shows_as_crashed_then_restarting_then_up() {
        let topology = Topology::default();
        let order = vec!["store-1".to_owned()];
        topology.record("store-1", Some(10), 0);
        assert_eq!(topology.view(&order)[0].state, "starting");
        topology.set_live("store-1", Some(10), true);
        assert_eq!(topology.view(&order)[0].state, "up");
        topology.record("store-1", None, 1);
        assert_eq!(topology.view(&order)[0].state, "crashed");
        topology.record("store-1", Some(11), 1);
        // A health answer of the old process does not make the new one up.
        topology.set_live("store-1", Some(10), true);
        assert_eq!(topology.view(&order)[0].state, "restarting");
        topology.set_live("store-1", Some(11), true);
        let view = &topology.view(&order)[0];
        assert_eq!((view.state, view.pid, view.restarts), ("up", Some(11), 1));
    }
}
