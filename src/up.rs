//! `ftshop up`: the whole suite as supervised child processes of this binary.
//!
//! Each process is `ftshop serve <service> ...`; when one exits (a crash fault, a SIGKILL from a
//! chaos script) the supervisor starts it again after an exponential backoff (100 ms doubling,
//! jittered, at most 5 s), which resets once the process has stayed up for 10 s, as Docker's
//! restart policy does. Ctrl-C, SIGTERM or SIGHUP stops every child: SIGTERM first,
//! SIGKILL for any that has not drained within 10 s.
//!
//! Right at every moment of the supervisor's life:
//! - **Signals**: the handlers are installed before the data dir is touched and before the first
//!   child is spawned, so a signal during start-up stops the children already started and exits
//!   (no banner) instead of killing the supervisor and orphaning them.
//! - **Children**: each runs in its own process group (a terminal's Ctrl-C reaches only the
//!   supervisor, which stops them in order) and, on Linux, asks the kernel for SIGTERM when the
//!   supervisor dies (`PR_SET_PDEATHSIG`, see [`exit_with_supervisor`]), so even a SIGKILLed
//!   supervisor leaves no child running.
//! - **State**: `<data-dir>/up.json` (URLs, pids, admin token) has one writer, [`UpJson`]: every
//!   change takes a generation number under one lock, and a snapshot is written only if no newer
//!   one is on disk, atomically (0600 temporary file, then rename). Scripts and tests find the
//!   processes there, including on free ports (`--port-base 0`).
//! - **Files**: the data dir is 0700 and every file in it 0600 from its creation
//!   ([`ftshop_platform::private_fs`]).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
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
/// Set by the supervisor on each child: the pid the child must die with.
const SUPERVISOR_PID_ENV: &str = "FTSHOP_SUPERVISOR_PID";

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Where the SQLite databases, logs and up.json go.
    #[arg(long, env = "FTSHOP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Address every service listens on.
    #[arg(long, env = "FTSHOP_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Ports: ecommerce = base, store replicas base+1, base+11, base+21, ..., exchange replicas
    /// base+2, base+12, ..., fidelity = base+3 (8080, 8081/8091, 8082/8092, 8083). 0 picks
    /// free ports.
    #[arg(long, default_value_t = 8080)]
    pub port_base: u16,

    /// Store replicas (`store-1` ... `store-N`): the sales capacity under Store's error fault
    /// grows with them (docs/design.md, "Completion promise").
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=MAX_REPLICAS))]
    pub stores: u16,

    /// Exchange replicas (`exchange-1` ... `exchange-M`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=MAX_REPLICAS))]
    pub exchanges: u16,

    /// Ecommerce's completion promise for a deferred (202) sale, e.g. `60s`, `2m`
    /// (`ftshop serve ecommerce --defer-promise`).
    #[arg(long, env = "FTSHOP_DEFER_PROMISE", default_value = "60s", value_parser = parse_promise)]
    pub defer_promise: String,

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

    /// Async runtime threads of each service process (`ftshop serve --runtime-threads`). Unset
    /// (the default): ecommerce, the hub that does most of a purchase's work, gets one worker
    /// per core, and each leaf service (Store, Exchange, Fidelity) a current-thread runtime,
    /// which costs less CPU per request (no hand-offs between worker threads) and is enough
    /// for its share of the work (docs/benchmarks/happy-path.md). A number applies to every
    /// process: 0 one worker per core, 1 current-thread, N workers.
    #[arg(long, env = "FTSHOP_RUNTIME_THREADS")]
    pub runtime_threads: Option<usize>,

    /// `files` writes each process's log to <data-dir>/logs/<name>.log; `inherit` prints them here.
    #[arg(long, default_value = "files", value_parser = ["files", "inherit"])]
    pub logs: String,

    /// Port of the control room, the browser page to watch and steer the suite (default: the
    /// port base minus 10, so 8070; 0 picks a free one). Its URL, with a login token, is
    /// printed at start and written to up.json as `control_room`.
    #[arg(long, env = "FTSHOP_CONTROL_PORT")]
    pub control_port: Option<u16>,
}

/// Most replicas of one service: their ports, base+1+10k, stay below the next hundred's.
const MAX_REPLICAS: i64 = 9;

/// A promise humantime can read and above zero, kept as written for the child's flag.
fn parse_promise(text: &str) -> Result<String, String> {
    let promise = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if promise.is_zero() {
        return Err("the completion promise must be above zero".to_owned());
    }
    Ok(text.to_owned())
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
    /// Grows with every change; a reader can tell a newer snapshot from an older one.
    generation: u64,
    supervisor_pid: u32,
    admin_token: &'a str,
    faults: &'a str,
    fault_seed: u64,
    data_dir: String,
    /// The control room's URL with its login token.
    #[serde(skip_serializing_if = "Option::is_none")]
    control_room: Option<&'a str>,
    members: Vec<MemberState<'a>>,
}

#[derive(Debug, Serialize)]
struct MemberState<'a> {
    #[serde(flatten)]
    member: &'a Member,
    pid: Option<u32>,
    restarts: u32,
}

/// Runs the suite until Ctrl-C, SIGTERM or SIGHUP.
///
/// # Errors
/// The signal handlers cannot be installed, the data dir cannot be made private (see
/// [`ftshop_platform::private_fs::ensure_private_dir`]), or the fault profile is unreadable.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // First of all, before any child exists: from here on a signal cancels `stop` instead of
    // killing the supervisor, and everything below watches `stop`.
    let stop = CancellationToken::new();
    stop_on_signals(stop.clone())?;
    ftshop_platform::private_fs::ensure_private_dir(&args.data_dir)
        .with_context(|| format!("data dir {}", args.data_dir.display()))?;
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
    // The control room is bound before the children's ports are picked: with `--port-base 0`
    // those are found free and released for the children to bind, and a later bind of port 0
    // in this process (the control room's, with `--control-port 0`) could be handed one of
    // them, leaving that child unable to bind, restarting until the suite gives up on it.
    let control = bind_control_room(&args, &data_dir).await?;
    let members = plan(&args, &data_dir, &faults, fault_seed)?;
    let exe = std::env::current_exe().context("cannot find the ftshop executable")?;
    if args.logs == "files" {
        ftshop_platform::private_fs::ensure_private_dir(&data_dir.join("logs"))?;
    }

    let topology = Arc::new(crate::control::Topology::default());
    let up_json = Arc::new(
        UpJson::new(
            data_dir.join("up.json"),
            UpFixed {
                admin_token: token.clone(),
                faults: faults.clone(),
                fault_seed,
                data_dir: data_dir.clone(),
                members: members.clone(),
                control_room: Some(control.login_url()),
            },
        )
        .observed_by(topology.clone()),
    );
    // This run's up.json (no pids yet) replaces a previous run's before any child exists, so
    // no script reads the pids of a stopped suite, which may belong to other processes by now.
    // A full disk must not keep the suite down (the services heal once space is back, see
    // `Db::reclaim_wal`): the stale file is removed (which needs no space), a loud warning says
    // why, and the write is retried each second until it lands.
    if let Err(err) = up_json.commit(|_| ()) {
        let path = data_dir.join("up.json");
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(gone) if gone.kind() == std::io::ErrorKind::NotFound => {}
            Err(gone) => {
                return Err(err.context(format!(
                    "cannot write {} nor remove the previous run's copy ({gone}); free space \
                     in {} or fix its permissions, then start again",
                    path.display(),
                    data_dir.display()
                )));
            }
        }
        eprintln!(
            "[up] WARNING: cannot write {} ({err:#}). Is the disk of {} full? Starting anyway; \
             `ftshop fault`, scripts and the control room need up.json, which is written as \
             soon as space allows (retried every second). Free space in the data dir.",
            path.display(),
            data_dir.display()
        );
        tokio::spawn(retry_up_json(up_json.clone(), stop.clone()));
    }
    let control_url = control.login_url();
    let control_task = crate::control::start(
        control,
        crate::control::Settings {
            admin_token: token.clone(),
            members: members
                .iter()
                .map(|m| crate::control::Target {
                    name: m.name.clone(),
                    service: m.service.to_owned(),
                    url: m.url.clone(),
                })
                .collect(),
            topology,
            stop: stop.clone(),
        },
    )?;
    let mut tasks = vec![control_task];
    for member in &members {
        let env = ChildEnv {
            exe: exe.clone(),
            token: token.clone(),
            database_url: args.database_url.clone(),
            redis_url: args.redis_url.clone(),
            runtime_threads: args.runtime_threads,
            log_file: (args.logs == "files")
                .then(|| data_dir.join("logs").join(format!("{}.log", member.name))),
        };
        tasks.push(tokio::spawn(supervise(
            member.clone(),
            env,
            up_json.clone(),
            stop.clone(),
        )));
    }

    let ready = tokio::select! {
        ready = wait_until_live(&members, Duration::from_secs(60)) => ready,
        () = stop.cancelled() => return stop_all(tasks).await,
    };
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
        &control_url,
    );

    stop.cancelled().await;
    stop_all(tasks).await
}

/// Installs the handlers for SIGTERM, SIGINT and SIGHUP (a closed terminal) now, and cancels
/// `stop` on the first of them. Returns only once all three are installed.
fn stop_on_signals(stop: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        };
        println!("stopping ftshop ({name})...");
        stop.cancel();
    });
    Ok(())
}

/// Waits for every member task, each of which stops its child once `stop` is cancelled.
async fn stop_all(tasks: Vec<tokio::task::JoinHandle<()>>) -> anyhow::Result<()> {
    for task in tasks {
        let _ = task.await;
    }
    println!("all processes stopped");
    Ok(())
}

/// Called first thing by `ftshop serve`: a child of `ftshop up` (which sets
/// `FTSHOP_SUPERVISOR_PID`) asks Linux for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`,
/// prctl(2)), then checks that the parent is still the supervisor, since it may have died
/// before the request was made. Without the variable (a service run on its own) it does nothing.
///
/// Linux sends the signal when the *thread* that spawned the child exits, not only the process:
/// `up` spawns from tokio worker threads, which live as long as its runtime, and stops every
/// child before the runtime ends. Done in the child (not in a `pre_exec` hook) because the
/// workspace forbids `unsafe`.
///
/// # Errors
/// The variable is not a pid, the request fails, or the supervisor is already gone.
pub fn exit_with_supervisor() -> anyhow::Result<()> {
    let Ok(pid) = std::env::var(SUPERVISOR_PID_ENV) else {
        return Ok(());
    };
    let pid: i32 = pid
        .parse()
        .with_context(|| format!("{SUPERVISOR_PID_ENV}={pid:?} is not a pid"))?;
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .context("cannot ask to be stopped with the supervisor")?;
    let parent = nix::unistd::getppid().as_raw();
    anyhow::ensure!(
        parent == pid,
        "the supervisor (pid {pid}) is gone (parent is now {parent}); not starting"
    );
    Ok(())
}

/// Binds the control room: `--control-port`, else the port base minus 10 (0 with a port base
/// of 0). The default port falls back to a free one when taken (said on stderr); an explicit
/// port that cannot be bound is an error.
async fn bind_control_room(
    args: &UpArgs,
    data_dir: &Path,
) -> anyhow::Result<crate::control::Bound> {
    let shown_host = if args.host.is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        args.host.to_string()
    };
    let port = args
        .control_port
        .unwrap_or_else(|| args.port_base.saturating_sub(10));
    match crate::control::bind(args.host, port, &shown_host, data_dir).await {
        Ok(bound) => Ok(bound),
        Err(err) if args.control_port.is_none() && port != 0 => {
            eprintln!("[up] control room: {err:#}; using a free port instead");
            crate::control::bind(args.host, 0, &shown_host, data_dir).await
        }
        Err(err) => Err(err.context("--control-port")),
    }
}

fn generate_token() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

/// The processes (ecommerce, `--stores` Store replicas, `--exchanges` Exchange replicas,
/// fidelity), their ports and arguments.
fn plan(
    args: &UpArgs,
    data_dir: &Path,
    faults: &str,
    fault_seed: u64,
) -> anyhow::Result<Vec<Member>> {
    let mut offsets: Vec<(String, &'static str, u16)> =
        vec![("ecommerce".to_owned(), "ecommerce", 0u16)];
    for k in 0..args.stores {
        offsets.push((format!("store-{}", k + 1), "store", 1 + 10 * k));
    }
    for k in 0..args.exchanges {
        offsets.push((format!("exchange-{}", k + 1), "exchange", 2 + 10 * k));
    }
    offsets.push(("fidelity".to_owned(), "fidelity", 3));
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
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        args.host
    };
    // `SocketAddr` writes an IPv6 host in brackets (`http://[::1]:8081`).
    let url_of = |port: u16| format!("http://{}", std::net::SocketAddr::new(shown_host, port));
    let mut members: Vec<Member> = offsets
        .iter()
        .zip(&ports)
        .map(|((name, service, _), port)| Member {
            name: name.clone(),
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
                name.clone(),
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
            "--defer-promise".into(),
            args.defer_promise.clone(),
        ]);
    }
    Ok(members)
}

/// Listeners `free_ports` bound, by port, until the child that serves the port is spawned with
/// it ([`spawn`]); a port is never free between being picked and being served, so another
/// process (a second `ftshop up --port-base 0`, a client's ephemeral port) cannot take it.
/// Before, the ports were released for the children to bind, and another suite started at the
/// same moment could be handed one: its service then answered for this suite's (a `/sell`
/// answered 404 by a Fidelity).
static HELD_LISTENERS: std::sync::Mutex<Option<HashMap<u16, std::net::TcpListener>>> =
    std::sync::Mutex::new(None);

/// Asks the OS for `n` free ports by binding port 0, and keeps the listeners for the children
/// (see [`HELD_LISTENERS`]).
fn free_ports(host: IpAddr, n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind((host, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = Vec::with_capacity(n);
    let mut held = HELD_LISTENERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let held = held.get_or_insert_with(HashMap::new);
    for listener in listeners {
        let port = listener.local_addr()?.port();
        ports.push(port);
        held.insert(port, listener);
    }
    Ok(ports)
}

/// The listener held for `port`, once (the first start of its member).
fn held_listener(port: u16) -> Option<std::net::TcpListener> {
    HELD_LISTENERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_mut()?
        .remove(&port)
}

struct ChildEnv {
    exe: PathBuf,
    token: String,
    database_url: Option<String>,
    redis_url: Option<String>,
    runtime_threads: Option<usize>,
    log_file: Option<PathBuf>,
}

/// Writes up.json every second until it lands or the suite stops: the start found no room for
/// it (see `run`).
async fn retry_up_json(up_json: Arc<UpJson>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
        if up_json.commit(|_| ()).is_ok() {
            eprintln!("[up] wrote {} (space is back)", up_json.path.display());
            return;
        }
    }
}

/// What up.json says that never changes while `up` runs.
struct UpFixed {
    admin_token: String,
    faults: String,
    fault_seed: u64,
    data_dir: PathBuf,
    members: Vec<Member>,
    /// The control room's URL with its login token.
    control_room: Option<String>,
}

/// The one writer of up.json. Member tasks report their child's pid and restart count with
/// [`UpJson::record`]; each change gets the next generation number under the `live` lock, and a
/// snapshot reaches the disk only if no newer generation is there already, so two tasks
/// reporting at once can never leave the older snapshot on disk.
struct UpJson {
    path: PathBuf,
    fixed: UpFixed,
    live: Mutex<Live>,
    /// The generation on disk (0: none yet). Held while writing, so writes never overlap.
    written: Mutex<u64>,
    /// The control room's view of the processes, told of every start and exit.
    topology: Option<Arc<crate::control::Topology>>,
}

/// Pids and restart counts by member name, and the generation of the last change.
#[derive(Default)]
struct Live {
    generation: u64,
    members: BTreeMap<String, (Option<u32>, u32)>,
}

impl UpJson {
    fn new(path: PathBuf, fixed: UpFixed) -> Self {
        Self {
            path,
            fixed,
            live: Mutex::new(Live::default()),
            written: Mutex::new(0),
            topology: None,
        }
    }

    /// Also tells `topology` of every start and exit ([`UpJson::report`]).
    fn observed_by(mut self, topology: Arc<crate::control::Topology>) -> Self {
        self.topology = Some(topology);
        self
    }

    /// Records `member`'s pid (None while it is not running) and restart count, and writes
    /// up.json unless a newer snapshot is already on disk. Returns the generation written, or
    /// None when this snapshot was superseded. Blocking file I/O of a few hundred bytes.
    ///
    /// # Errors
    /// up.json cannot be serialized or replaced (the previous file stays as it was).
    fn record(&self, member: &str, pid: Option<u32>, restarts: u32) -> anyhow::Result<Option<u64>> {
        self.commit(|live| {
            live.members.insert(member.to_owned(), (pid, restarts));
        })
    }

    /// Applies `change` as the next generation and writes that snapshot unless a newer one is
    /// on disk already; see [`UpJson::record`].
    fn commit(&self, change: impl FnOnce(&mut Live)) -> anyhow::Result<Option<u64>> {
        let (generation, json) = {
            let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
            live.generation += 1;
            change(&mut live);
            (live.generation, self.render(&live)?)
        };
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if *written >= generation {
            return Ok(None);
        }
        ftshop_platform::private_fs::write_private_atomic(&self.path, &json)?;
        *written = generation;
        Ok(Some(generation))
    }

    fn render(&self, live: &Live) -> anyhow::Result<Vec<u8>> {
        let fixed = &self.fixed;
        let file = UpFile {
            generation: live.generation,
            supervisor_pid: std::process::id(),
            admin_token: &fixed.admin_token,
            faults: &fixed.faults,
            fault_seed: fixed.fault_seed,
            data_dir: fixed.data_dir.display().to_string(),
            control_room: fixed.control_room.as_deref(),
            members: fixed
                .members
                .iter()
                .map(|m| {
                    let (pid, restarts) = live.members.get(&m.name).copied().unwrap_or((None, 0));
                    MemberState {
                        member: m,
                        pid,
                        restarts,
                    }
                })
                .collect(),
        };
        Ok(serde_json::to_vec_pretty(&file)?)
    }

    /// [`UpJson::record`], reporting a failure on stderr: a stale up.json must not stop the
    /// supervisor from keeping the suite running.
    fn report(&self, member: &str, pid: Option<u32>, restarts: u32) {
        if let Some(topology) = &self.topology {
            topology.record(member, pid, restarts);
        }
        if let Err(err) = self.record(member, pid, restarts) {
            eprintln!("[up] cannot write {}: {err:#}", self.path.display());
        }
    }
}

/// Keeps one member running until `stop` turns true.
async fn supervise(member: Member, env: ChildEnv, up_json: Arc<UpJson>, stop: CancellationToken) {
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
        // Each lifetime draws its own faults (docs/faults.md, "Epochs"): with the same epoch a
        // restarted replica would crash at the same request every time.
        let mut child = match spawn(&member, &env, u64::from(restarts)) {
            Ok(child) => child,
            Err(err) => {
                eprintln!("[up] cannot start {}: {err:#}", member.name);
                if wait_or_stop(backoff.next().unwrap_or(Duration::from_secs(10)), &stop).await {
                    return;
                }
                continue;
            }
        };
        up_json.report(&member.name, child.id(), restarts);

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
                up_json.report(&member.name, None, restarts);
                if wait_or_stop(delay, &stop).await {
                    return;
                }
            }
            () = stop.cancelled() => {
                terminate(&mut child, &member.name).await;
                // No pid of a stopped process stays in up.json for a script to signal.
                up_json.report(&member.name, None, restarts);
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

/// Starts `member` for its lifetime number `epoch` (its restart count), passed as
/// `FTSHOP_FAULT_EPOCH` so each lifetime draws a different, reproducible fault stream.
fn spawn(member: &Member, env: &ChildEnv, epoch: u64) -> anyhow::Result<Child> {
    let mut cmd = Command::new(&env.exe);
    cmd.args(&member.args)
        .env("FTSHOP_ADMIN_TOKEN", &env.token)
        .env("FTSHOP_FAULT_EPOCH", epoch.to_string())
        .env(SUPERVISOR_PID_ENV, std::process::id().to_string())
        // Each member is its own service in a trace (one variable for all would name them all
        // alike); `--instance` gives the replica its `service.instance.id`.
        .env("OTEL_SERVICE_NAME", member.service)
        .env(
            "FTSHOP_RUNTIME_THREADS",
            env.runtime_threads
                .unwrap_or(if member.service == "ecommerce" { 0 } else { 1 })
                .to_string(),
        )
        // One port per process: members of one `up` would all try to bind the same one.
        .env_remove("FTSHOP_HEALTH_PORT")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(url) = &env.database_url {
        cmd.env("DATABASE_URL", url);
    }
    if let Some(url) = &env.redis_url {
        cmd.env("REDIS_URL", url);
    }
    if let Some(path) = &env.log_file {
        let file = ftshop_platform::private_fs::open_private_append(path)?;
        cmd.stdout(file.try_clone()?).stderr(file);
    }
    // Own process group: a Ctrl-C in the terminal reaches only the supervisor, which then
    // stops the children in order instead of racing them.
    #[cfg(unix)]
    cmd.process_group(0);
    // The listener picked for it (`--port-base 0`), as fd 3 with `LISTEN_FDS=1` (systemd's
    // socket activation; `ftshop_platform::server::bind` takes it). Only the first start: the
    // supervisor's copy closes with `cmd`, so a killed child frees its port (callers see
    // refused connections, not a silent queue) and a restart binds the port by number.
    cmd.env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS_FIRST_FD");
    if let Some(listener) = held_listener(member.port) {
        use command_fds::{CommandFdExt, FdMapping};
        cmd.env("LISTEN_FDS", "1")
            .fd_mappings(vec![FdMapping {
                parent_fd: std::os::fd::OwnedFd::from(listener),
                child_fd: 3,
            }])
            .context("passing the listener")?;
    }
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

/// The HTTP client settings for talking to the members (liveness at start, the control room):
/// they answer plain HTTP on this host, so no proxy from the environment applies and no TLS
/// roots are loaded. reqwest's default loads the system's roots (rustls-platform-verifier reads
/// and parses every certificate under /etc/ssl/certs): under callgrind that was 85 % of the
/// supervisor's start-up instructions, twice (one per client), with the roots kept in memory.
pub(crate) fn member_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(std::iter::empty::<reqwest::Certificate>())
}

/// Polls every member's `/health/live` until all answer or `limit` passes.
async fn wait_until_live(members: &[Member], limit: Duration) -> bool {
    let client = match member_client().build() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("[up] cannot build the HTTP client for the liveness checks: {e:?}");
            return false;
        }
    };
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
    control_room: &str,
) {
    if ready {
        println!("ftshop is up:");
    } else {
        println!("ftshop started, but some processes are not answering yet (see logs):");
    }
    for m in members {
        println!("  {:<11} {}   docs: {}/docs", m.name, m.url, m.url);
    }
    println!("control room: {control_room}");
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

#[cfg(test)]
mod tests {
    use super::*;

    const WRITERS: u32 = 6;
    const CHANGES: u32 = 150;

    fn up_json(dir: &Path) -> UpJson {
        let members = (0..WRITERS)
            .map(|i| Member {
                name: format!("m{i}"),
                service: "store",
                url: format!("http://127.0.0.1:{}", 9000 + i),
                port: 9000 + i as u16,
                args: Vec::new(),
            })
            .collect();
        UpJson::new(
            dir.join("up.json"),
            UpFixed {
                admin_token: "t".into(),
                faults: "off".into(),
                fault_seed: 1,
                data_dir: dir.to_owned(),
                members,
                control_room: None,
            },
        )
    }

    /// The pids up.json lists, by member name, and its generation.
    fn read(path: &Path) -> Option<(u64, BTreeMap<String, u64>)> {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let pids = v["members"]
            .as_array()?
            .iter()
            .filter_map(|m| Some((m["name"].as_str()?.to_owned(), m["pid"].as_u64()?)))
            .collect();
        Some((v["generation"].as_u64()?, pids))
    }

    /// Six member tasks report at once, each its own rising pid. Whatever the interleaving, a
    /// reader never sees up.json go back (no member's pid and no generation ever decreases), and
    /// the last file holds every member's last pid under the last generation.
    #[test]
    fn concurrent_writers_never_put_an_older_snapshot_over_a_newer_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = up_json(dir.path());
        let path = dir.path().join("up.json");
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut last: Option<(u64, BTreeMap<String, u64>)> = None;
                let mut reads = 0u32;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let Some((generation, pids)) = read(&path) else {
                        continue;
                    };
                    reads += 1;
                    if let Some((last_generation, last_pids)) = &last {
                        assert!(generation >= *last_generation, "generation went back");
                        for (name, pid) in last_pids {
                            let now = pids.get(name).copied().unwrap_or(0);
                            assert!(now >= *pid, "{name}'s pid went back from {pid} to {now}");
                        }
                    }
                    last = Some((generation, pids));
                }
                reads
            });
            let writers: Vec<_> = (0..WRITERS)
                .map(|i| {
                    let up = &up;
                    scope.spawn(move || {
                        for pid in 1..=CHANGES {
                            up.record(&format!("m{i}"), Some(pid), 0).expect("record");
                        }
                    })
                })
                .collect();
            for writer in writers {
                writer.join().expect("writer");
            }
            done.store(true, std::sync::atomic::Ordering::Release);
            assert!(reader.join().expect("reader") > 0, "the reader saw up.json");
        });
        let (generation, pids) = read(&path).expect("up.json");
        assert_eq!(generation, u64::from(WRITERS * CHANGES));
        for i in 0..WRITERS {
            assert_eq!(
                pids.get(&format!("m{i}")),
                Some(&u64::from(CHANGES)),
                "m{i}"
            );
        }
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(&path).expect("stat").mode() & 0o7777;
        assert_eq!(format!("{mode:o}"), "600");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| n != "up.json")
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
