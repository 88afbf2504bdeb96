//! Harness for the end-to-end tests: runs the real `ftshop up` on free ports with its own
//! temporary data dir, and stops it (SIGTERM, then SIGKILL) when dropped.

#![allow(dead_code)] // each test file uses part of the harness

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";

pub struct Suite {
    pub dir: tempfile::TempDir,
    pub supervisor: Child,
    pub http: reqwest::Client,
}

impl Suite {
    /// Starts `ftshop up --port-base 0` with `extra` arguments and waits until every process
    /// is ready (at most 90 s: the first start compiles nothing but migrates six databases).
    /// Faults are off unless `extra` sets `--faults`.
    pub async fn start(extra: &[&str]) -> Suite {
        Suite::start_in(tempfile::tempdir().expect("tempdir"), extra).await
    }

    /// Like [`Suite::start`], with `dir` as the data dir (a restart keeps its data).
    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Suite {
        Suite::start_with_env(dir, extra, &[]).await
    }

    /// Like [`Suite::start_in`], with extra environment variables for every process.
    pub async fn start_with_env(
        dir: tempfile::TempDir,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Suite {
        let faults_off: &[&str] = if extra.contains(&"--faults") {
            &[]
        } else {
            &["--faults", "off"]
        };
        let supervisor = Command::new(env!("CARGO_BIN_EXE_ftshop"))
            .args(["up", "--port-base", "0", "--data-dir"])
            .arg(dir.path())
            .args(faults_off)
            .args(extra)
            .env_remove("FTSHOP_FAULTS")
            .env_remove("FTSHOP_FAULT_SEED")
            .env("FTSHOP_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ftshop up");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let suite = Suite {
            dir,
            supervisor,
            http,
        };
        suite.wait_until_ready(Duration::from_secs(90)).await;
        suite
    }

    pub fn up_file(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("up.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The member named `name` in up.json (`ecommerce`, `store-1`, `exchange-2`, ...).
    pub fn member(&self, name: &str) -> Value {
        let up = self.up_file().expect("up.json");
        up["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no member {name} in up.json"))
    }

    pub fn url(&self, name: &str) -> String {
        self.member(name)["url"].as_str().expect("url").to_owned()
    }

    pub fn pid(&self, name: &str) -> Option<i32> {
        self.member(name)["pid"].as_i64().map(|p| p as i32)
    }

    async fn wait_until_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(up) = self.up_file() {
                let members = up["members"].as_array().cloned().unwrap_or_default();
                let mut all = !members.is_empty();
                for m in &members {
                    let url = format!("{}/health/ready", m["url"].as_str().unwrap_or_default());
                    let ok = self
                        .http
                        .get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    all &= ok;
                }
                if all {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "suite not ready within {limit:?}; logs in {}",
                self.logs_dir().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the suite and hands back its data dir, for a restart on the same data.
    pub fn stop_and_keep_data(mut self) -> tempfile::TempDir {
        self.stop();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// True when a GET of `url` answers 2xx.
    pub async fn answers_ok(&self, url: &str) -> bool {
        self.http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Sends SIGTERM to the supervisor and waits for it to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        signal(
            self.supervisor.id() as i32,
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.supervisor.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "supervisor did not stop within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        if let Ok(None) = self.supervisor.try_wait() {
            self.stop();
        }
    }
}

pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// GETs `url` and returns its JSON body, failing the test on a non-2xx answer.
pub async fn get_json(suite: &Suite, url: String) -> Value {
    let response = suite.http.get(&url).send().await.expect("GET");
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.json().await.expect("json")
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
