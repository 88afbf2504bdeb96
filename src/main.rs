//! `ftshop`: one binary, many roles. This file only parses the command line; the work lives in
//! the service crates (`serve`) and in [`up`] (the supervisor).

mod chaos;
mod control;
mod fault;
mod load;
mod up;

use clap::{Parser, Subcommand};
use ftshop_platform::server::shutdown_signal;

#[derive(Parser)]
#[command(
    name = "ftshop",
    version,
    about = "A fault-tolerant e-commerce suite: one binary, many roles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one service in the foreground.
    Serve {
        /// Threads of the service's async runtime. 0: one worker per core (tokio's default);
        /// 1: everything on the main thread (a current-thread runtime: fewer thread hand-offs
        /// and ~6 % less CPU per purchase, slower answers when the cores are contended:
        /// docs/benchmarks/happy-path.md); N: N workers. `ftshop up --runtime-threads` sets it.
        #[arg(long, env = "FTSHOP_RUNTIME_THREADS", default_value_t = 0)]
        runtime_threads: usize,
        #[command(subcommand)]
        service: Service,
    },
    /// Run the whole suite (store x2, exchange x2, fidelity, ecommerce) as supervised processes.
    Up(up::UpArgs),
    /// Load generator for POST /buy: closed-loop VUs with think time or an open-loop rate;
    /// writes result.json, summary.md and chart.svg (loopback targets only).
    Load(load::LoadArgs),
    /// Chaos run: load with ft=true while processes are killed, frozen and faulted, then checks
    /// no oversold unit, no lost acknowledged order, no double credit, and the drain; writes
    /// chaos.json and chaos.md and exits non-zero on any violation.
    Chaos(chaos::ChaosArgs),
    /// Fault injection at run time: `list`, `set` (a profile or one rule), `clear`.
    Fault(fault::FaultArgs),
}

#[derive(Subcommand)]
enum Service {
    /// The orchestrator: POST /buy (default port 8080).
    Ecommerce(ftshop_ecommerce::Config),
    /// Catalog, stock and sales (default port 8081).
    Store(ftshop_store::Config),
    /// USD→BRL rates with cache and stale fallback (default port 8082).
    Exchange(ftshop_exchange::Config),
    /// Bonus points ledger (default port 8083).
    Fidelity(ftshop_fidelity::Config),
}

/// Writes a report to stdout. A closed pipe (`ftshop load ... | head -3`) is not an error: the
/// report is also in the files the command wrote, and the exit status must still say whether
/// the run passed, so the write error is ignored instead of panicking like `println!`.
pub(crate) fn print_report(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = writeln!(stdout, "{text}").and_then(|()| stdout.flush())
        && err.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("could not print the report to stdout: {err}");
    }
}

/// Before anything else, in the main thread and before the runtime starts any: umask 077, so
/// every file this process, its libraries (SQLite's `-wal`/`-shm`) and its children create is
/// owner-only from its first byte (the data dir, databases, logs and up.json hold the admin
/// token and customer data; a report left 0600 costs nothing). Then a child of `ftshop up` ties
/// its life to the supervisor's.
fn main() -> anyhow::Result<()> {
    ftshop_platform::private_fs::restrict_umask();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. }) {
        up::exit_with_supervisor()?;
        // Still single-threaded: it reads and removes LISTEN_FDS.
        ftshop_platform::server::adopt_inherited_listener();
    }
    let threads = match &cli.command {
        Command::Serve {
            runtime_threads, ..
        } => *runtime_threads,
        _ => 0,
    };
    runtime(threads)?.block_on(run(cli))
}

/// The async runtime: current-thread for `threads == 1`, else multi-threaded with `threads`
/// workers (0: tokio's default, one per core).
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { service, .. } => {
            let (role, instance) = match &service {
                Service::Ecommerce(c) => ("ecommerce", c.common.instance.as_deref()),
                Service::Store(c) => ("store", c.common.instance.as_deref()),
                Service::Exchange(c) => ("exchange", c.common.instance.as_deref()),
                Service::Fidelity(c) => ("fidelity", c.common.instance.as_deref()),
            };
            ftshop_platform::telemetry::init(role, instance);
            // Metrics recorded while a service starts (stock gauges, say) must not be lost.
            ftshop_platform::http_metrics::prometheus();
            // Pools are closed after the server drained, so the WAL is checkpointed and
            // truncated at every clean stop (SIGTERM, Ctrl-C).
            ftshop_platform::db::close_at_exit();
            let result = match service {
                Service::Ecommerce(config) => {
                    ftshop_ecommerce::run(config, shutdown_signal()).await
                }
                Service::Store(config) => ftshop_store::run(config, shutdown_signal()).await,
                Service::Exchange(config) => ftshop_exchange::run(config, shutdown_signal()).await,
                Service::Fidelity(config) => ftshop_fidelity::run(config, shutdown_signal()).await,
            };
            ftshop_platform::db::close_all(std::time::Duration::from_secs(5)).await;
            // The spans of the last requests: sent from the exporter's thread, off the runtime.
            tokio::task::spawn_blocking(ftshop_platform::telemetry::shutdown)
                .await
                .ok();
            if let Err(err) = &result {
                tracing::error!(error = format!("{err:#}"), "service stopped with an error");
            }
            result
        }
        Command::Up(args) => up::run(args).await,
        Command::Load(args) => load::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
        Command::Fault(args) => fault::run(args).await,
    }
}
