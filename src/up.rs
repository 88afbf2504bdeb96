//! `ftshop up`: the whole suite as supervised child processes of this binary.
//!
//! Each process is `ftshop serve <service> ...`; when one exits (a crash fault, a SIGKILL from a
//! chaos script) the supervisor starts it again after an exponential backoff (100 ms doubling,
//! jittered, at most 5 s), which resets once the process has stayed up for 10 s, as Docker's
//! restart policy does. Ctrl-C (or SIGTERM) stops every child: SIGTERM first,
//! SIGKILL for any that has not drained within 10 s.
//!
//! The supervisor writes `<data-dir>/up.json` (URLs, pids, admin token; mode 0600) so scripts
//! and tests can find the processes, including on free ports (`--port-base 0`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// A process that has stayed up this long gets a fresh backoff on its next exit.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How long a child may drain after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Where the SQLite databases, logs and up.json go.
    #[arg(long, env = "FTSHOP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Address every service listens on.
    #[arg(long, env = "FTSHOP_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Ports: ecommerce = base, store = base+1 and base+11, exchange = base+2 and base+12,
    /// fidelity = base+3 (8080, 8081/8091, 8082/8092, 8083). 0 picks free ports.
    #[arg(long, default_value_t = 8080)]
    pub port_base: u16,

    /// PostgreSQL for every service instead of the embedded SQLite files.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Admin API token; generated and printed when unset.
    #[arg(long, env = "FTSHOP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Redis as the shared cache tier for every service (Exchange replicas share rates).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Fault profile for every process: `default` (the exercise's four faults), `off`, or a
    /// TOML/JSON file (docs/faults.md). Change it at run time with `ftshop fault`.
    #[arg(long, env = "FTSHOP_FAULTS", default_value = "default")]
    pub faults: String,

    /// Seed for the fault draws (printed at start, so a run can be repeated); random when unset.
    #[arg(long, env = "FTSHOP_FAULT_SEED")]
    pub fault_seed: Option<u64>,

    /// `files` writes each process's log to <data-dir>/logs/<name>.log; `inherit` prints them here.
    #[arg(long, default_value = "files", value_parser = ["files", "inherit"])]
    pub logs: String,
}

/// One process of the suite.
#[derive(Debug, Clone, Serialize)]
struct Member {
    name: String,
    service: &'static str,
    url: String,
    port: u16,
    #[serde(skip)]
    args: Vec<String>,
}

#[derive(Debug, Serialize)]
struct UpFile<'a> {
    supervisor_pid: u32,
    admin_token: &'a str,
    faults: &'a str,
    fault_seed: u64,
    data_dir: String,
    members: Vec<MemberState<'a>>,
}

#[derive(Debug, Serialize)]
struct MemberState<'a> {
    #[serde(flatten)]
    member: &'a Member,
    pid: Option<u32>,
    restarts: u32,
}

/// Pids and restart counts, shared by the member tasks and written to up.json.
type Registry = Arc<Mutex<BTreeMap<String, (Option<u32>, u32)>>>;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let token = args.admin_token.clone().unwrap_or_else(generate_token);
    // Fail before starting anything when the profile is unreadable; children get an absolute
    // path, so they read the same file whatever their working directory.
    let profile = ftshop_platform::faults::FaultProfile::load(&args.faults)?;
    let faults = match args.faults.as_str() {
        "off" | "default" => args.faults.clone(),
        path => std::fs::canonicalize(path)
            .with_context(|| format!("fault profile {path}"))?
            .display()
            .to_string(),
    };
    let fault_seed = args
        .fault_seed
        .or(profile.seed)
        .unwrap_or_else(|| rand::random_range(0..1_000_000));
    let members = plan(&args, &data_dir, &faults, fault_seed)?;
    let exe = std::env::current_exe().context("cannot find the ftshop executable")?;
    if args.logs == "files" {
        std::fs::create_dir_all(data_dir.join("logs"))?;
    }

    let registry: Registry = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for member in &members {
        let env = ChildEnv {
            exe: exe.clone(),
            token: token.clone(),
            database_url: args.database_url.clone(),
            redis_url: args.redis_url.clone(),
            log_file: (args.logs == "files")
                .then(|| data_dir.join("logs").join(format!("{}.log", member.name))),
        };
        let write = UpWriter {
            member: member.name.clone(),
            path: data_dir.join("up.json"),
            token: token.clone(),
            faults: faults.clone(),
            fault_seed,
            data_dir: data_dir.clone(),
            members: members.clone(),
        };
        tasks.push(tokio::spawn(supervise(
            member.clone(),
            env,
            registry.clone(),
            write,
            stop.clone(),
        )));
    }

    let ready = wait_until_live(&members, Duration::from_secs(60)).await;
    let faults_line = if profile.rules.is_empty() {
        "off".to_owned()
    } else {
        format!(
            "{} ({} rules, seed {fault_seed}); `ftshop fault list`, `ftshop fault clear`",
            args.faults,
            profile.rules.len()
        )
    };
    print_banner(
        &members,
        &token,
        &data_dir,
        args.logs == "files",
        ready,
        &faults_line,
    );

    ftshop_platform::server::shutdown_signal().await;
    println!("stopping ftshop...");
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    println!("all processes stopped");
    Ok(())
}

fn generate_token() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

/// The six processes, their ports and arguments.
fn plan(
    args: &UpArgs,
    data_dir: &Path,
    faults: &str,
    fault_seed: u64,
) -> anyhow::Result<Vec<Member>> {
    let offsets = [
        ("ecommerce", "ecommerce", 0u16),
        ("store-1", "store", 1),
        ("store-2", "store", 11),
        ("exchange-1", "exchange", 2),
        ("exchange-2", "exchange", 12),
        ("fidelity", "fidelity", 3),
    ];
    let ports: Vec<u16> = if args.port_base == 0 {
        free_ports(args.host, offsets.len())?
    } else {
        offsets
            .iter()
            .map(|(_, _, off)| {
                args.port_base
                    .checked_add(*off)
                    .context("--port-base too high")
            })
            .collect::<anyhow::Result<_>>()?
    };
    let shown_host = if args.host.is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        args.host.to_string()
    };
    let url_of = |port: u16| format!("http://{shown_host}:{port}");
    let mut members: Vec<Member> = offsets
        .iter()
        .zip(&ports)
        .map(|((name, service, _), port)| Member {
            name: (*name).to_owned(),
            service,
            url: url_of(*port),
            port: *port,
            args: vec![
                "serve".into(),
                (*service).into(),
                "--port".into(),
                port.to_string(),
                "--host".into(),
                args.host.to_string(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--instance".into(),
                (*name).into(),
                "--faults".into(),
                faults.to_owned(),
                "--fault-seed".into(),
                fault_seed.to_string(),
            ],
        })
        .collect();
    let urls = |service: &str| {
        members
            .iter()
            .filter(|m| m.service == service)
            .map(|m| m.url.clone())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (stores, exchanges, fidelity) = (urls("store"), urls("exchange"), urls("fidelity"));
    if let Some(ecommerce) = members.iter_mut().find(|m| m.service == "ecommerce") {
        ecommerce.args.extend([
            "--store-url".into(),
            stores,
            "--exchange-url".into(),
            exchanges,
            "--fidelity-url".into(),
            fidelity,
        ]);
    }
    Ok(members)
}

/// Asks the OS for `n` free ports by binding port 0, then releases them for the children.
fn free_ports(host: IpAddr, n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind((host, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.port())
        .collect())
}

struct ChildEnv {
    exe: PathBuf,
    token: String,
    database_url: Option<String>,
    redis_url: Option<String>,
    log_file: Option<PathBuf>,
}

struct UpWriter {
    /// The member whose task owns this writer (names its temporary file).
    member: String,
    path: PathBuf,
    token: String,
    faults: String,
    fault_seed: u64,
    data_dir: PathBuf,
    members: Vec<Member>,
}

impl UpWriter {
    fn write(&self, registry: &Registry) {
        let Ok(states) = registry.lock().map(|r| r.clone()) else {
            return;
        };
        let file = UpFile {
            supervisor_pid: std::process::id(),
            admin_token: &self.token,
            faults: &self.faults,
            fault_seed: self.fault_seed,
            data_dir: self.data_dir.display().to_string(),
            members: self
                .members
                .iter()
                .map(|m| {
                    let (pid, restarts) = states.get(&m.name).copied().unwrap_or((None, 0));
                    MemberState {
                        member: m,
                        pid,
                        restarts,
                    }
                })
                .collect(),
        };
        let Ok(json) = serde_json::to_vec_pretty(&file) else {
            return;
        };
        // Write then rename, so readers never see half a file.
        // One temporary file per member task, so concurrent writers never interleave.
        let tmp = self
            .path
            .with_extension(format!("json.{}.tmp", self.member));
        if std::fs::write(&tmp, json).is_ok() {
            restrict_permissions(&tmp);
            let _ = std::fs::rename(&tmp, &self.path);
        }
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}
#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) {}

/// Keeps one member running until `stop` turns true.
async fn supervise(
    member: Member,
    env: ChildEnv,
    registry: Registry,
    writer: UpWriter,
    stop: CancellationToken,
) {
    let new_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    let mut restarts = 0u32;
    loop {
        let started = Instant::now();
        let mut child = match spawn(&member, &env) {
            Ok(child) => child,
            Err(err) => {
                eprintln!("[up] cannot start {}: {err:#}", member.name);
                if wait_or_stop(backoff.next().unwrap_or(Duration::from_secs(10)), &stop).await {
                    return;
                }
                continue;
            }
        };
        if let Ok(mut r) = registry.lock() {
            r.insert(member.name.clone(), (child.id(), restarts));
        }
        writer.write(&registry);

        tokio::select! {
            status = child.wait() => {
                if stop.is_cancelled() { return; }
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = new_backoff();
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                restarts += 1;
                eprintln!("[up] {} exited ({status}); restart #{restarts} in {} ms", member.name, delay.as_millis());
                if let Ok(mut r) = registry.lock() {
                    r.insert(member.name.clone(), (None, restarts));
                }
                writer.write(&registry);
                if wait_or_stop(delay, &stop).await {
                    return;
                }
            }
            () = stop.cancelled() => {
                terminate(&mut child, &member.name).await;
                return;
            }
        }
    }
}

/// Sleeps for `delay`; true when a stop was requested meanwhile.
async fn wait_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => stop.is_cancelled(),
        () = stop.cancelled() => true,
    }
}

fn spawn(member: &Member, env: &ChildEnv) -> anyhow::Result<Child> {
    let mut cmd = Command::new(&env.exe);
    cmd.args(&member.args)
        .env("FTSHOP_ADMIN_TOKEN", &env.token)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(url) = &env.database_url {
        cmd.env("DATABASE_URL", url);
    }
    if let Some(url) = &env.redis_url {
        cmd.env("REDIS_URL", url);
    }
    if let Some(path) = &env.log_file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        cmd.stdout(file.try_clone()?).stderr(file);
    }
    // Own process group: a Ctrl-C in the terminal reaches only the supervisor, which then
    // stops the children in order instead of racing them.
    #[cfg(unix)]
    cmd.process_group(0);
    cmd.spawn()
        .with_context(|| format!("spawning {}", member.name))
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`].
async fn terminate(child: &mut Child, name: &str) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
        eprintln!("[up] {name} did not stop within {STOP_GRACE:?}; killing it");
    }
    let _ = child.kill().await;
}

/// Polls every member's `/health/live` until all answer or `limit` passes.
async fn wait_until_live(members: &[Member], limit: Duration) -> bool {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    for member in members {
        loop {
            let url = format!("{}/health/live", member.url);
            let ok = client
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    true
}

fn print_banner(
    members: &[Member],
    token: &str,
    data_dir: &Path,
    log_files: bool,
    ready: bool,
    faults: &str,
) {
    if ready {
        println!("ftshop is up:");
    } else {
        println!("ftshop started, but some processes are not answering yet (see logs):");
    }
    for m in members {
        println!("  {:<11} {}   docs: {}/docs", m.name, m.url, m.url);
    }
    println!("admin token: {token}");
    println!("faults:      {faults}");
    println!("data dir:    {}", data_dir.display());
    if log_files {
        println!("logs:        {}/logs/<name>.log", data_dir.display());
    }
    if let Some(ecommerce) = members.iter().find(|m| m.service == "ecommerce") {
        println!(
            "try:         curl -s -X POST {}/buy -H 'content-type: application/json' -d '{{\"product\":\"1\",\"user\":\"alice\",\"ft\":true}}'",
            ecommerce.url
        );
    }
    println!("Ctrl-C stops everything.");
}
