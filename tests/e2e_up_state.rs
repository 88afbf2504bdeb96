//! The supervisor's own state, end to end on the real binary: the data dir and every file in
//! it are owner-only from the moment they exist, and a SIGTERM (or a SIGKILL) at any moment of
//! `ftshop up`'s life leaves no child running.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

/// Every directory under the data dir (itself included) must be 0700 and every file 0600 at
/// every observation, from the supervisor's first `mkdir` to its exit, although it runs under
/// the permissive umask 022 of an ordinary shell. The test buys once meanwhile, so the
/// databases and their `-wal` files hold customer data while they are watched.
#[tokio::test]
async fn every_file_in_the_data_dir_is_private_from_its_creation() {
    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = fresh_data_dir(&root);
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (dir, watching) = (data_dir.clone(), watching.clone());
        std::thread::spawn(move || watch_modes(&dir, &watching))
    };
    // `sh -c 'umask 022; exec ...'`: the caller's umask must not be what makes the files private.
    let mut supervisor = Command::new("sh")
        .args(["-c", "umask 022 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_ftshop"))
        .args(up_args(&data_dir))
        .envs(up_env())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("FTSHOP_FAULTS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ftshop up");
    let guard = Cleanup::new(&data_dir);
    let http = reqwest::Client::new();
    wait_until_ready(&http, &data_dir, &mut supervisor).await;
    let ecommerce = member_url(&data_dir, "ecommerce");
    let response = http
        .post(format!("{ecommerce}/buy"))
        .json(&serde_json::json!({"product": "1", "user": "mode-check", "ft": true}))
        .send()
        .await
        .expect("POST /buy");
    assert!(response.status().is_success(), "{}", response.status());
    stop_and_wait(&mut supervisor, Signal::SIGTERM);
    watching.store(false, Ordering::Release);
    let (violations, seen) = watcher.join().expect("watcher");
    assert!(violations.is_empty(), "loose modes seen: {violations:#?}");
    guard.assert_no_member_left_after("the stop");
    for expected in ["up.json", "logs/ecommerce.log", "store.db", "store.db-wal"] {
        assert!(
            seen.contains(expected),
            "{expected} never seen; seen: {seen:?}"
        );
    }
    let up = std::fs::read_to_string(data_dir.join("up.json")).expect("up.json");
    assert!(up.contains(common::ADMIN_TOKEN), "up.json holds the token");
}

/// SIGTERM at several moments of start-up and after the banner: the supervisor exits and no
/// process of the suite (found by its unique data dir on its command line) outlives it.
#[tokio::test]
async fn sigterm_at_any_moment_of_start_up_leaves_no_child() {
    let mut orphans = Vec::new();
    for moment in [
        Moment::RightAfterSpawn,
        Moment::FirstChildRunning,
        Moment::SomePidsInUpJson,
        Moment::AfterBanner,
    ] {
        let root = tempfile::tempdir().expect("tempdir");
        let data_dir = fresh_data_dir(&root);
        let (mut supervisor, banner) = spawn_up(&data_dir);
        let guard = Cleanup::new(&data_dir);
        moment.wait(&data_dir, &mut supervisor, &banner).await;
        stop_and_wait(&mut supervisor, Signal::SIGTERM);
        let left = guard.members_left();
        if !left.is_empty() {
            orphans.push(format!("{moment:?}: {left:?}"));
        }
    }
    assert!(
        orphans.is_empty(),
        "members still running 20 s after the supervisor exited, by moment of the SIGTERM: \
         {orphans:#?}"
    );
}

/// A SIGKILLed supervisor cannot stop anyone: its children stop themselves (Linux
/// `PR_SET_PDEATHSIG`) instead of running on as orphans.
#[tokio::test]
async fn sigkill_of_the_supervisor_leaves_no_child() {
    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = fresh_data_dir(&root);
    let (mut supervisor, banner) = spawn_up(&data_dir);
    let guard = Cleanup::new(&data_dir);
    Moment::AfterBanner
        .wait(&data_dir, &mut supervisor, &banner)
        .await;
    stop_and_wait(&mut supervisor, Signal::SIGKILL);
    guard.assert_no_member_left_after("SIGKILL after the banner");
}

#[derive(Debug, Clone, Copy)]
enum Moment {
    /// As soon as the process exists: possibly before `main`.
    RightAfterSpawn,
    /// The first `ftshop serve` child is running.
    FirstChildRunning,
    /// up.json lists at least three pids, the banner is not printed yet (the children are
    /// still migrating their databases).
    SomePidsInUpJson,
    /// The banner is printed and every member is ready: the supervisor's steady state.
    AfterBanner,
}

impl Moment {
    async fn wait(self, data_dir: &Path, supervisor: &mut Child, banner: &AtomicBool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let http = reqwest::Client::new();
        loop {
            let reached = match self {
                Moment::RightAfterSpawn => true,
                Moment::FirstChildRunning => !members_running(data_dir, supervisor.id()).is_empty(),
                Moment::SomePidsInUpJson => pids_in_up_json(data_dir) >= 3,
                Moment::AfterBanner if banner.load(Ordering::Acquire) => {
                    wait_until_ready(&http, data_dir, supervisor).await;
                    true
                }
                Moment::AfterBanner => false,
            };
            if reached {
                return;
            }
            assert!(
                supervisor.try_wait().ok().flatten().is_none(),
                "ftshop up exited before {self:?}"
            );
            assert!(Instant::now() < deadline, "{self:?} not reached in 90 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// `<root>/data`, not created yet, by its canonical path (the one the children are given).
fn fresh_data_dir(root: &tempfile::TempDir) -> PathBuf {
    root.path()
        .canonicalize()
        .expect("canonical tempdir")
        .join("data")
}

fn up_args(data_dir: &Path) -> Vec<String> {
    ["up", "--port-base", "0", "--faults", "off", "--data-dir"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([data_dir.display().to_string()])
        .collect()
}

fn up_env() -> Vec<(&'static str, &'static str)> {
    vec![("FTSHOP_ADMIN_TOKEN", common::ADMIN_TOKEN)]
}

/// Starts `ftshop up`; the flag turns true once its banner ("ftshop is up: ...") is printed.
fn spawn_up(data_dir: &Path) -> (Child, Arc<AtomicBool>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ftshop"))
        .args(up_args(data_dir))
        .envs(up_env())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("FTSHOP_FAULTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ftshop up");
    let banner = Arc::new(AtomicBool::new(false));
    if let Some(stdout) = child.stdout.take() {
        let banner = banner.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with("ftshop is up") || line.starts_with("ftshop started") {
                    banner.store(true, Ordering::Release);
                }
            }
        });
    }
    (child, banner)
}

/// Sends `signal` to the supervisor and waits (30 s at most) until it has exited.
fn stop_and_wait(supervisor: &mut Child, signal: Signal) {
    common::signal(supervisor.id() as i32, signal);
    let deadline = Instant::now() + Duration::from_secs(30);
    while supervisor.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "ftshop up did not exit in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of the live processes (other than `supervisor`) whose command line names `data_dir`:
/// the `ftshop serve` children, whoever their parent is now. Zombies have no command line.
fn members_running(data_dir: &Path, supervisor: u32) -> Vec<i32> {
    let needle = data_dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid as u32 != supervisor && *pid as u32 != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                cmd.split(|b| *b == 0)
                    .any(|arg| arg == needle.as_bytes() || arg.starts_with(needle.as_bytes()))
            })
        })
        .collect()
}

/// Finds leftover members, and SIGKILLs them when dropped so a failing run leaves nothing behind.
struct Cleanup {
    data_dir: PathBuf,
}

impl Cleanup {
    fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
        }
    }

    fn assert_no_member_left_after(&self, what: &str) {
        let left = self.members_left();
        assert!(
            left.is_empty(),
            "after {what}, members still running 20 s later: {left:?}"
        );
    }

    /// Polls (20 s at most: the children's own drain, 10 s, and a margin) until no member
    /// runs; returns those still running then.
    fn members_left(&self) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = members_running(&self.data_dir, 0);
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cleanup {
    /// Also kills a supervisor a failed assertion left running (its command line names the dir).
    fn drop(&mut self) {
        for pid in members_running(&self.data_dir, 0) {
            common::signal(pid, Signal::SIGKILL);
        }
    }
}

/// Walks `dir` until `watching` turns false; returns every loose mode seen (once each) and the
/// relative path of every file seen.
fn watch_modes(dir: &Path, watching: &AtomicBool) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut violations = BTreeSet::new();
    let mut seen = BTreeSet::new();
    while watching.load(Ordering::Acquire) {
        let mut stack = vec![dir.to_owned()];
        while let Some(path) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue; // not created yet, or a temporary file already renamed
            };
            let mode = meta.mode() & 0o7777;
            let relative = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .display()
                .to_string();
            let want = if meta.is_dir() { 0o700 } else { 0o600 };
            if mode != want {
                violations.insert(format!("{relative:?} mode {mode:o}, want {want:o}"));
            }
            if meta.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&path) {
                    stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
                }
            } else {
                seen.insert(relative);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (violations, seen)
}

fn up_json(data_dir: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(data_dir.join("up.json")).ok()?).ok()
}

fn pids_in_up_json(data_dir: &Path) -> usize {
    up_json(data_dir)
        .and_then(|up| up["members"].as_array().cloned())
        .map(|members| members.iter().filter(|m| m["pid"].is_u64()).count())
        .unwrap_or(0)
}

fn member_url(data_dir: &Path, name: &str) -> String {
    up_json(data_dir)
        .and_then(|up| {
            up["members"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == name)?["url"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no {name} in up.json"))
}

/// Polls until up.json lists six members that all answer `/health/ready` (90 s at most).
async fn wait_until_ready(http: &reqwest::Client, data_dir: &Path, supervisor: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let members = up_json(data_dir)
            .and_then(|up| up["members"].as_array().cloned())
            .unwrap_or_default();
        let mut ready = members.len() == 6;
        for m in &members {
            let url = format!("{}/health/ready", m["url"].as_str().unwrap_or_default());
            ready &= http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
        }
        if ready {
            return;
        }
        assert!(
            supervisor.try_wait().ok().flatten().is_none(),
            "ftshop up exited before it was ready; logs in {}/logs",
            data_dir.display()
        );
        assert!(
            Instant::now() < deadline,
            "suite not ready in 90 s; logs in {}/logs",
            data_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
