//! The `proxy-cut` scenario's plumbing: PostgreSQL and Redis reached through
//! scripts/tcp-proxy.py, which closes every connection and refuses new ones on SIGUSR1 and
//! accepts them again on SIGUSR2. The proxies listen on 127.0.0.1 and only forward to a
//! loopback server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use reqwest::Url;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::load::has_loopback_host;

/// Where tcp-proxy.py is when `--proxy-script` is not given: this checkout's copy.
pub const DEFAULT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tcp-proxy.py");

/// One running proxy.
pub struct Proxy {
    /// `postgres` or `redis`.
    pub name: String,
    pub pid: u32,
    /// The server's URL rewritten to go through the proxy.
    pub url: String,
    child: Child,
}

impl Proxy {
    /// Starts tcp-proxy.py in front of the server of `url` and waits until it accepts.
    pub async fn start(
        name: &str,
        url: &str,
        script: &Path,
        data_dir: &Path,
    ) -> anyhow::Result<Proxy> {
        let mut through = ensure_loopback(name, url)?;
        let host = through.host_str().unwrap_or_default().to_owned();
        let port = through
            .port_or_known_default()
            .or(match name {
                "postgres" => Some(5432),
                "redis" => Some(6379),
                _ => None,
            })
            .with_context(|| format!("{name} URL has no port"))?;
        ensure!(
            script.is_file(),
            "{} not found (pass --proxy-script)",
            script.display()
        );
        let listen = free_port()?;
        let log = ftshop_platform::private_fs::create_private(
            &data_dir.join(format!("{name}-proxy.log")),
        )?;
        let mut cmd = Command::new("python3");
        // Own process group: a Ctrl-C in the terminal must not take the database away from the
        // suite while this run is stopping it in order.
        #[cfg(unix)]
        cmd.process_group(0);
        let child = cmd
            .arg(script)
            .arg(listen.to_string())
            .arg(format!("{host}:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning python3 scripts/tcp-proxy.py")?;
        let pid = child.id().context("the proxy exited at once")?;
        let mut proxy = Proxy {
            name: name.to_owned(),
            pid,
            url: String::new(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", listen))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                bail!("the {name} proxy exited ({status}); see {name}-proxy.log");
            }
            if Instant::now() >= deadline {
                bail!("the {name} proxy did not listen within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        through
            .set_host(Some("127.0.0.1"))
            .with_context(|| format!("rewriting the {name} URL"))?;
        through
            .set_port(Some(listen))
            .map_err(|()| anyhow::anyhow!("rewriting the {name} URL's port"))?;
        proxy.url = through.to_string();
        Ok(proxy)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Parses a server URL (`postgres://...`, `redis://...`) and refuses any host but this machine.
pub fn ensure_loopback(name: &str, url: &str) -> anyhow::Result<Url> {
    let parsed = Url::parse(url).with_context(|| format!("the {name} URL is not a URL"))?;
    ensure!(
        has_loopback_host(&parsed),
        "the {name} server must be on this machine (127.0.0.1, [::1] or localhost)"
    );
    Ok(parsed)
}

/// The default proxy script, or the one given.
pub fn script(given: Option<&Path>) -> PathBuf {
    given.map_or_else(|| PathBuf::from(DEFAULT_SCRIPT), Path::to_path_buf)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
