//! `ftshop chaos`: purchases under load while processes are killed, frozen and faulted, then a
//! check that the product's promises held: no oversold unit, no lost acknowledged order, no
//! double-credited bonus, and a backlog that drains once the faults stop.
//!
//! The run starts its own suite (`ftshop up` on free ports, in a temporary data dir) or attaches
//! to a running one through its up.json (loopback only). The checker
//! ([`invariants::check`]) is a pure function over what the run collected, so it is tested on
//! fabricated data. See docs/chaos.md.

mod disk;
pub(crate) mod invariants;
mod proxy;
mod report;
mod scenarios;
pub(crate) mod suite;
pub(crate) mod traffic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::load::{Products, ThinkTime, loopback_url, parse_duration, parse_products};
use invariants::{
    AckedOrder, Backlog, Drain, Observed, OrderLookup, OrderState, StockSamples, check,
};
use report::{ChaosReport, Settings};
use scenarios::{Held, Scenario, ScenarioList, Schedule, Stage, Timeline};
use suite::{OwnSuite, SuiteApi};
use traffic::{Attempt, Traffic};

/// The longest load `--duration` accepts.
const MAX_DURATION: Duration = Duration::from_secs(30 * 60);
const MAX_VUS: u32 = 1_000;

#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Attach to the suite whose `ftshop up` wrote <DIR>/up.json instead of starting one
    /// (loopback URLs only; the run assumes no other traffic buys meanwhile).
    #[arg(long, value_name = "DIR")]
    pub attach_data_dir: Option<PathBuf>,

    /// Data dir of the suite this run starts (default: a new temporary directory).
    #[arg(long, conflicts_with = "attach_data_dir")]
    pub data_dir: Option<PathBuf>,

    /// Keep the data dir of the suite this run started (it is also kept on a violation).
    #[arg(long, conflicts_with = "attach_data_dir")]
    pub keep: bool,

    /// Fault profile the started suite runs with: `default` or `off` (the `faults` scenario
    /// turns the default profile on at run time).
    #[arg(long, default_value = "default", value_parser = ["default", "off"], conflicts_with = "attach_data_dir")]
    pub faults: String,

    /// Seed of the fault draws (random and printed when unset).
    #[arg(long)]
    pub fault_seed: Option<u64>,

    /// Scenarios to apply while the load runs, comma-separated: faults, kill, freeze-exchange,
    /// kill-ecommerce, proxy-cut, disk-full, db-file-gone; `all` is every one but proxy-cut
    /// (which needs --database-url or --redis-url), disk-full (which needs a data dir on a
    /// filesystem of at most 1 GiB, or root to mount a tmpfs) and db-file-gone.
    #[arg(long, default_value = "all", value_parser = Scenario::parse_list)]
    pub scenarios: ScenarioList,

    /// Virtual users (closed loop, ft=true).
    #[arg(long, default_value_t = 20)]
    pub vus: u32,

    /// How long the load and the scenarios run (`30s`, `2m`; at most 30m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Think time between a VU's answer and its next purchase (`MIN..MAX` or a fixed value).
    #[arg(long, default_value = "200ms..1s", value_parser = ThinkTime::parse)]
    pub think: ThinkTime,

    /// Least share of the purchases (out-of-stock answers aside) that must be acknowledged
    /// (200 or 202) for a verdict: below it, or with none at all, the invariants hold
    /// vacuously and the run is INCONCLUSIVE (exit non-zero). 0.0..=1.0; see docs/chaos.md.
    #[arg(long, default_value_t = report::MIN_ACKNOWLEDGED_SHARE, value_parser = parse_share)]
    pub min_acknowledged_share: f64,

    /// `kill`: SIGKILL one random member this often.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub kill_every: Duration,

    /// `freeze-exchange`: how long both exchange processes stay stopped.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub freeze_for: Duration,

    /// `proxy-cut`: how long PostgreSQL/Redis stay unreachable.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub cut_for: Duration,

    /// `disk-full`: how long the data dir's filesystem stays full.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub disk_full_for: Duration,

    /// `disk-full`: the filesystem is filled at t = this, 2 × this, ... (longer than
    /// `--disk-full-for`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub disk_full_every: Duration,

    /// `db-file-gone`: how long the database file stays renamed away.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub db_gone_for: Duration,

    /// `db-file-gone`: which SQLite file of the data dir is taken away.
    #[arg(long, default_value = "store.db", value_parser = disk::DB_FILES)]
    pub db_gone_file: String,

    /// PostgreSQL for the suite this run starts (instead of SQLite files), e.g.
    /// `postgres://postgres@127.0.0.1:5432/ftshop_chaos`; loopback only. With `proxy-cut` the
    /// suite reaches it through scripts/tcp-proxy.py. Use a database nothing else writes to.
    #[arg(long, conflicts_with = "attach_data_dir")]
    pub database_url: Option<String>,

    /// Redis for the suite this run starts (the shared cache tier); loopback only. With
    /// `proxy-cut` the suite reaches it through scripts/tcp-proxy.py.
    #[arg(long, conflicts_with = "attach_data_dir")]
    pub redis_url: Option<String>,

    /// The TCP proxy `proxy-cut` runs (python3); default: this checkout's scripts/tcp-proxy.py.
    #[arg(long)]
    pub proxy_script: Option<PathBuf>,

    /// Products to buy (`1-12`, `1-3,7`). Product 12 has 5 units: it sells out, which puts the
    /// "never below zero" check to work.
    #[arg(long, default_value = "1-12", value_parser = parse_products)]
    pub products: Products,

    /// Client timeout of one purchase.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Longest wait, after the faults stop, for pending orders and bonuses to drain to zero.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Longest time spent replaying unacknowledged purchases after the faults stop.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub reconcile_timeout: Duration,

    /// Where chaos.json and chaos.md go (default `./chaos-results/<timestamp>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs chaos as `args` asks; an error (exit non-zero) on any violation.
pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    ensure!(
        !args.duration.is_zero() && args.duration <= MAX_DURATION,
        "--duration must be within (0s, 30m]"
    );
    ensure!(
        (1..=MAX_VUS).contains(&args.vus),
        "--vus must be within 1..={MAX_VUS}"
    );
    ensure!(
        args.kill_every >= Duration::from_millis(500),
        "--kill-every must be at least 500ms"
    );
    ensure!(
        args.freeze_for <= Duration::from_secs(60),
        "--freeze-for must be at most 60s"
    );
    ensure!(
        !args.timeout.is_zero() && args.timeout <= Duration::from_secs(60),
        "--timeout must be within (0s, 60s]"
    );
    let scenarios = args.scenarios.0.clone();
    if scenarios.contains(&Scenario::ProxyCut) {
        ensure!(
            args.attach_data_dir.is_none(),
            "proxy-cut needs a suite started by this run (it puts the proxies in front of \
             PostgreSQL/Redis): drop --attach-data-dir"
        );
        ensure!(
            args.database_url.is_some() || args.redis_url.is_some(),
            "proxy-cut needs --database-url and/or --redis-url (the servers to cut)"
        );
        ensure!(
            args.cut_for <= Duration::from_secs(60),
            "--cut-for must be at most 60s"
        );
    }
    let disk_full = scenarios.contains(&Scenario::DiskFull);
    if disk_full {
        ensure!(
            !args.disk_full_for.is_zero() && args.disk_full_for <= Duration::from_secs(60),
            "--disk-full-for must be within (0s, 60s]"
        );
        ensure!(
            args.disk_full_every > args.disk_full_for,
            "--disk-full-every must be longer than --disk-full-for (the disk is freed in between)"
        );
    }
    let db_gone = scenarios.contains(&Scenario::DbFileGone);
    if db_gone {
        ensure!(
            args.database_url.is_none(),
            "db-file-gone takes a SQLite file away: it needs the embedded databases, drop \
             --database-url"
        );
        ensure!(
            !args.db_gone_for.is_zero() && args.db_gone_for <= Duration::from_secs(60),
            "--db-gone-for must be within (0s, 60s]"
        );
    }
    if let Some(url) = &args.database_url {
        proxy::ensure_loopback("postgres", url)?;
    }
    if let Some(url) = &args.redis_url {
        proxy::ensure_loopback("redis", url)?;
    }
    let out = match &args.out {
        Some(out) => out.clone(),
        None => PathBuf::from("chaos-results").join(timestamp()?.replace(':', "")),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let http = reqwest::Client::builder()
        // Loopback only: no proxy from the environment, no redirect elsewhere.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("building the HTTP client")?;
    let started_at = timestamp()?;
    let run_tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();

    // Ctrl-C / SIGTERM: stop the load and the scenarios, thaw, faults off, report, exit non-zero.
    let interrupt = CancellationToken::new();
    let signals = tokio::spawn({
        let interrupt = interrupt.clone();
        async move {
            ftshop_platform::server::shutdown_signal().await;
            eprintln!("[chaos] interrupted: stopping the scenarios and cleaning up");
            interrupt.cancel();
        }
    });

    let mut proxies: Vec<proxy::Proxy> = Vec::new();
    // Declared before the suite, so an early return stops the suite before unmounting.
    let mut tmpfs: Option<disk::Tmpfs> = None;
    let (mut own, data_dir, seed) = match &args.attach_data_dir {
        Some(dir) => {
            let up = suite::attach(dir)?;
            if disk_full {
                disk::ensure_small(dir)?;
            }
            (None, dir.clone(), args.fault_seed.unwrap_or(up.fault_seed))
        }
        None => {
            let dir = args
                .data_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join(format!("ftshop-chaos-{run_tag}")));
            let seed = args
                .fault_seed
                .unwrap_or_else(|| rand::random_range(0..1_000_000));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if disk_full {
                // Never a real disk: a tmpfs of our own when we may mount one and the user
                // named no data dir; otherwise the named dir must already be on a small one.
                if args.data_dir.is_none() && disk::is_root() {
                    let mounted = disk::Tmpfs::mount(&dir)?;
                    eprintln!(
                        "[chaos] disk-full: mounted a {} tmpfs on {}",
                        disk::TMPFS_SIZE,
                        mounted.dir().display()
                    );
                    tmpfs = Some(mounted);
                }
                let size = disk::ensure_small(&dir)?;
                eprintln!(
                    "[chaos] disk-full: {} is on a filesystem of {:.1} MiB",
                    dir.display(),
                    size as f64 / f64::from(1 << 20)
                );
            }
            eprintln!(
                "[chaos] starting ftshop up (faults {}, seed {seed}) in {}",
                args.faults,
                dir.display()
            );
            let mut backends = suite::Backends {
                database_url: args.database_url.clone(),
                redis_url: args.redis_url.clone(),
            };
            if scenarios.contains(&Scenario::ProxyCut) {
                let script = proxy::script(args.proxy_script.as_deref());
                for (name, url) in [
                    ("postgres", &mut backends.database_url),
                    ("redis", &mut backends.redis_url),
                ] {
                    if let Some(target) = url.as_mut() {
                        let started = proxy::Proxy::start(name, target, &script, &dir).await?;
                        eprintln!(
                            "[chaos] {name} through scripts/tcp-proxy.py (pid {}) on {}",
                            started.pid,
                            started.url.split('@').next_back().unwrap_or_default()
                        );
                        target.clone_from(&started.url);
                        proxies.push(started);
                    }
                }
            }
            let suite = tokio::select! {
                suite = OwnSuite::start(dir.clone(), &args.faults, seed, &backends, &http) => suite?,
                () = interrupt.cancelled() => bail!("interrupted while the suite was starting"),
            };
            (Some(suite), dir, seed)
        }
    };
    let up = suite::read_up_file(&data_dir)?;
    let api = SuiteApi {
        http: http.clone(),
        data_dir: data_dir.clone(),
        token: up.admin_token.clone(),
        members: up.members.clone(),
    };
    let settings = Settings {
        suite: if own.is_some() {
            "started by this run".to_owned()
        } else {
            "attached".to_owned()
        },
        data_dir: data_dir.display().to_string(),
        database: backend(
            own.is_some(),
            args.database_url.is_some(),
            "sqlite",
            "postgres",
            &proxies,
            "postgres",
        ),
        cache: backend(
            own.is_some(),
            args.redis_url.is_some(),
            "in-process",
            "redis",
            &proxies,
            "redis",
        ),
        faults_at_start: up.faults.clone(),
        fault_seed: seed,
        min_acknowledged_share: args.min_acknowledged_share,
        scenarios: scenarios.clone(),
        vus: args.vus,
        duration_s: args.duration.as_secs_f64(),
        think: args.think.to_string(),
        products: args.products.0.clone(),
        kill_every_s: args.kill_every.as_secs_f64(),
        freeze_for_s: args.freeze_for.as_secs_f64(),
        disk_full_for_s: disk_full.then_some(args.disk_full_for.as_secs_f64()),
        disk_full_every_s: disk_full.then_some(args.disk_full_every.as_secs_f64()),
        db_gone_file: db_gone.then(|| args.db_gone_file.clone()),
        db_gone_for_s: db_gone.then_some(args.db_gone_for.as_secs_f64()),
        drain_timeout_s: args.drain_timeout.as_secs_f64(),
    };

    let proxy_pids: Vec<(String, u32)> = proxies.iter().map(|p| (p.name.clone(), p.pid)).collect();
    let result = drive(
        &args, &api, &scenarios, seed, &up.faults, &run_tag, proxy_pids, &interrupt,
    )
    .await;
    signals.abort();

    let report = match result {
        Ok(collected) => build_report(collected, &api, settings, started_at, &interrupt),
        Err(err) => {
            if let Some(suite) = own.as_mut() {
                suite.stop().await;
            }
            for proxy in proxies {
                proxy.stop().await;
            }
            return Err(err);
        }
    };
    let summary = report::markdown(&report);
    write_outputs(&out, &report, &summary)?;
    crate::print_report(&summary);
    eprintln!(
        "[chaos] results: {0}/chaos.json, {0}/chaos.md",
        out.display()
    );

    if let Some(mut suite) = own.take() {
        suite.stop().await;
        // After the suite: its processes must not lose their database before they stop.
        for proxy in proxies {
            proxy.stop().await;
        }
        // Kept on a violation: its databases and logs are the rest of the evidence.
        if args.keep || (!report.passed && !report.interrupted) {
            eprintln!("[chaos] data dir kept: {}", suite.data_dir.display());
            if let Some(mounted) = tmpfs.take() {
                eprintln!(
                    "[chaos] it is a tmpfs, left mounted: `umount {}` when done",
                    mounted.dir().display()
                );
                mounted.keep();
            }
        } else if let Some(mounted) = tmpfs.take() {
            // Unmounting discards its files and removes the mount point.
            drop(mounted);
        } else if let Err(err) = std::fs::remove_dir_all(&suite.data_dir) {
            eprintln!(
                "[chaos] could not remove {}: {err}",
                suite.data_dir.display()
            );
        }
    }

    if report.interrupted {
        bail!("interrupted: the invariants were not checked");
    }
    if !report.passed && report.violations() > 0 {
        bail!(
            "{} invariant violation(s); evidence in {}/chaos.md",
            report.violations(),
            out.display()
        );
    }
    if let Some(reason) = &report.inconclusive {
        bail!(
            "inconclusive: {reason}; evidence in {}/chaos.md",
            out.display()
        );
    }
    if !report.passed {
        bail!("failed; evidence in {}/chaos.md", out.display());
    }
    Ok(())
}

/// What the run collected, before the verdict.
struct Collected {
    observed: Observed,
    attempts: Vec<Attempt>,
    events: Vec<scenarios::Event>,
    faults_off_unconfirmed: Vec<String>,
    reconciled_out_of_stock: usize,
    interrupted: bool,
}

/// Load + scenarios, then faults off, replays, drain and the reads the checker needs.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn drive(
    args: &ChaosArgs,
    api: &SuiteApi,
    scenarios: &[Scenario],
    seed: u64,
    start_profile: &str,
    run_tag: &str,
    proxies: Vec<(String, u32)>,
    interrupt: &CancellationToken,
) -> anyhow::Result<Collected> {
    let ecommerce = api.url("ecommerce")?.to_owned();
    let buy_url = loopback_url(&ecommerce)?
        .join("buy")
        .context("building the /buy URL")?
        .to_string();
    let stock_before = api.stock(Duration::from_secs(30)).await?;

    let start = Instant::now();
    let stop = interrupt.child_token();
    let timeline = Timeline::new(start);
    let proxies = Arc::new(proxies);
    let frozen = Held::frozen();
    let cut = Held::cut();
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let traffic = Arc::new(Traffic {
        buy_url: buy_url.clone(),
        vus: args.vus,
        think: args.think,
        products: args.products.clone(),
        timeout: args.timeout,
        run_tag: run_tag.to_owned(),
    });
    let users: Vec<String> = (0..args.vus).map(|vu| traffic.user(vu)).collect();
    eprintln!(
        "[chaos] {} VUs (ft=true), think {}, for {:.0} s against {buy_url}; scenarios: {}",
        args.vus,
        args.think,
        args.duration.as_secs_f64(),
        scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let load = tokio::spawn(Arc::clone(&traffic).run(
        api.http.clone(),
        start,
        stop.clone(),
        Arc::clone(&attempts),
    ));
    let sampler = tokio::spawn(sample_stock(api.clone(), stop.clone()));
    let schedule = Schedule {
        duration: args.duration,
        kill_every: args.kill_every,
        freeze_for: args.freeze_for,
        cut_for: args.cut_for,
        disk_full_for: args.disk_full_for,
        disk_full_every: args.disk_full_every,
        db_gone_for: args.db_gone_for,
        db_gone_file: disk::DB_FILES
            .into_iter()
            .find(|name| *name == args.db_gone_file)
            .unwrap_or(disk::DB_FILES[0]),
        fault_seed: seed,
        faults_already_on: start_profile == "default",
    };
    let mut tasks = tokio::task::JoinSet::new();
    for scenario in scenarios {
        let stage = Stage {
            api: api.clone(),
            schedule,
            timeline: timeline.clone(),
            frozen: frozen.clone(),
            cut: cut.clone(),
            proxies: Arc::clone(&proxies),
        };
        tasks.spawn(scenarios::run(*scenario, stage, stop.clone()));
    }
    let progress = tokio::spawn(progress(Arc::clone(&attempts), start, stop.clone()));

    tokio::select! {
        () = tokio::time::sleep(args.duration) => {}
        () = stop.cancelled() => {}
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    // Whatever happened to the freeze task, nothing stays stopped.
    for pid in frozen.release_all() {
        eprintln!("[chaos] SIGCONT to pid {pid} (left frozen)");
    }
    for pid in cut.release_all() {
        eprintln!("[chaos] SIGUSR2 to proxy pid {pid} (left cut)");
    }
    if disk::remove_leftover(&api.data_dir) {
        eprintln!("[chaos] removed a disk-full filler left in the data dir");
    }
    if disk::restore_leftover(&api.data_dir) {
        eprintln!("[chaos] renamed back a database file db-file-gone left away");
    }
    let _ = load.await;
    progress.abort();
    let min_seen = sampler.await.unwrap_or_default();
    let attempts: Vec<Attempt> =
        std::mem::take(&mut *attempts.lock().unwrap_or_else(PoisonError::into_inner));
    eprintln!(
        "[chaos] load stopped after {:.1} s: {} purchases, {} acknowledged",
        start.elapsed().as_secs_f64(),
        attempts.len(),
        attempts.iter().filter(|a| a.acknowledged()).count()
    );

    // Faults stop: every process, until each has answered (restarted ones come back faulted).
    let faults_off_at = Instant::now();
    let unconfirmed = api.faults_off(Duration::from_secs(60)).await;
    eprintln!(
        "[chaos] faults off on every process in {:.1} s{}",
        faults_off_at.elapsed().as_secs_f64(),
        if unconfirmed.is_empty() {
            String::new()
        } else {
            format!(" (not confirmed: {})", unconfirmed.join(", "))
        }
    );
    let interrupted = interrupt.is_cancelled();
    let mut observed = Observed {
        balances: BTreeMap::new(),
        drain: Drain {
            timeout_s: args.drain_timeout.as_secs_f64(),
            ..Drain::default()
        },
        ..Observed::default()
    };
    let mut reconciled_out_of_stock = 0;
    if !interrupted {
        let replayed = traffic::reconcile(
            &api.http,
            &buy_url,
            &attempts,
            args.timeout,
            args.reconcile_timeout,
        )
        .await;
        eprintln!(
            "[chaos] replayed the unacknowledged purchases: {} orders, {} out of stock, {} unresolved",
            replayed.orders.len(),
            replayed.out_of_stock,
            replayed.unresolved.len()
        );
        reconciled_out_of_stock = replayed.out_of_stock;
        observed.reconciled = replayed.orders;
        observed.unresolved = replayed.unresolved;

        let (drained_after, last) =
            wait_for_drain(api, faults_off_at, args.drain_timeout, interrupt).await;
        match drained_after {
            Some(after) => eprintln!(
                "[chaos] backlog drained {:.1} s after the faults stopped",
                after.as_secs_f64()
            ),
            None => eprintln!("[chaos] backlog not drained: {last:?}"),
        }
        observed.drain.drained_after_s = drained_after.map(|d| d.as_secs_f64());
        observed.drain.last = last;

        collect(api, &ecommerce, &attempts, &users, &mut observed).await;
        let stock_after = api.stock(Duration::from_secs(30)).await?;
        for (product, before) in &stock_before {
            let after = stock_after.get(product).copied().unwrap_or(*before);
            let lowest = min_seen.get(product).copied().unwrap_or(after).min(after);
            observed.stock.insert(
                product.clone(),
                StockSamples {
                    before: *before,
                    min_seen: lowest,
                    after,
                },
            );
        }
    }
    Ok(Collected {
        observed,
        attempts,
        events: timeline.events(),
        faults_off_unconfirmed: unconfirmed,
        reconciled_out_of_stock,
        interrupted,
    })
}

/// Reads every known order and every user's balance.
async fn collect(
    api: &SuiteApi,
    ecommerce: &str,
    attempts: &[Attempt],
    users: &[String],
    observed: &mut Observed,
) {
    observed.acknowledged = attempts
        .iter()
        .filter(|a| a.acknowledged())
        .filter_map(|a| {
            Some(AckedOrder {
                order_id: a.order_id.clone()?,
                user: a.user.clone(),
                product: a.product.clone(),
                status: a.status?,
            })
        })
        .collect();
    let ids: Vec<String> = observed
        .acknowledged
        .iter()
        .map(|a| a.order_id.clone())
        .chain(observed.reconciled.iter().cloned())
        .collect();
    for id in ids {
        if observed.orders.contains_key(&id) {
            continue;
        }
        let lookup = read_order(api, ecommerce, &id).await;
        observed.orders.insert(id, lookup);
    }
    let fidelity = api.urls_of("fidelity");
    for user in users {
        let balance = match api
            .get_retrying(
                &fidelity,
                &format!("/balance/{user}"),
                Duration::from_secs(10),
            )
            .await
        {
            Ok(value) => value["points"].as_i64(),
            Err(_) => None,
        };
        observed.balances.insert(user.clone(), balance);
    }
}

pub(crate) async fn read_order(api: &SuiteApi, ecommerce: &str, id: &str) -> OrderLookup {
    let url = format!("{ecommerce}/orders/{id}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match api.get_json(&url).await {
            Ok(None) => return OrderLookup::NotFound,
            Ok(Some(order)) => {
                let text = |field: &str| order[field].as_str().map(str::to_owned);
                return OrderLookup::Found(OrderState {
                    status: text("status").unwrap_or_default(),
                    user: text("user").unwrap_or_default(),
                    product: text("product").unwrap_or_default(),
                    transaction_id: text("transaction_id"),
                    bonus_points: order["bonus_points"].as_i64(),
                    bonus_status: text("bonus_status"),
                    cancel_reason: text("cancel_reason"),
                });
            }
            Err(err) if Instant::now() >= deadline => {
                return OrderLookup::Unreadable {
                    error: format!("{err:#}"),
                };
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Polls the backlog until ecommerce's pending orders and outbox and Fidelity's pending
/// bonuses are all zero; returns how long that took after `since`, and the last reading.
pub(crate) async fn wait_for_drain(
    api: &SuiteApi,
    since: Instant,
    limit: Duration,
    interrupt: &CancellationToken,
) -> (Option<Duration>, Backlog) {
    let deadline = since + limit;
    let ecommerce = api.urls_of("ecommerce");
    let fidelity = api.urls_of("fidelity");
    let mut last = Backlog::default();
    loop {
        let backlog = api.get_any(&ecommerce, "/backlog").await;
        let pending = api.get_any(&fidelity, "/bonus/pending").await;
        if let (Ok(backlog), Ok(pending)) = (backlog, pending) {
            last = Backlog {
                pending_orders: backlog["pending_orders"].as_i64().unwrap_or(-1),
                outbox_bonuses: backlog["outbox_bonuses"].as_i64().unwrap_or(-1),
                fidelity_pending: pending["depth"].as_i64().unwrap_or(-1),
            };
            if last.is_empty() {
                return (Some(since.elapsed()), last);
            }
        }
        if Instant::now() >= deadline || interrupt.is_cancelled() {
            return (None, last);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The lowest stock of each product seen while the load runs, read once a second.
async fn sample_stock(api: SuiteApi, stop: CancellationToken) -> BTreeMap<String, i64> {
    let mut lowest: BTreeMap<String, i64> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return lowest,
        }
        if let Ok(stock) = api.stock(Duration::ZERO).await {
            for (product, units) in stock {
                let entry = lowest.entry(product).or_insert(units);
                *entry = (*entry).min(units);
            }
        }
    }
}

/// One status line every 5 s.
async fn progress(attempts: Arc<Mutex<Vec<Attempt>>>, start: Instant, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let counts = traffic::count(&attempts.lock().unwrap_or_else(PoisonError::into_inner));
        eprintln!(
            "[chaos] t={:>5.1}s purchases {} | acknowledged {} | 409 {} | errors {}",
            start.elapsed().as_secs_f64(),
            counts.requests,
            counts.acknowledged,
            counts.out_of_stock_409,
            counts.errors
        );
    }
}

fn build_report(
    collected: Collected,
    api: &SuiteApi,
    settings: Settings,
    started_at: String,
    interrupt: &CancellationToken,
) -> ChaosReport {
    let interrupted = collected.interrupted || interrupt.is_cancelled();
    let verdicts = if interrupted {
        Vec::new()
    } else {
        check(&collected.observed)
    };
    let mut actions: BTreeMap<String, usize> = BTreeMap::new();
    for event in &collected.events {
        *actions
            .entry(format!("{}:{}", event.scenario.name(), event.action))
            .or_default() += 1;
    }
    let kills = collected
        .events
        .iter()
        .filter(|e| e.action == "kill")
        .count();
    let restarts = api
        .refresh()
        .map(|up| {
            up.members
                .iter()
                .map(|m| (m.name.clone(), m.restarts))
                .collect()
        })
        .unwrap_or_default();
    let load = traffic::count(&collected.attempts);
    let inconclusive = if interrupted {
        None
    } else {
        report::inconclusive(&load, settings.min_acknowledged_share)
    };
    ChaosReport {
        tool: "ftshop chaos".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at,
        passed: report::passed(interrupted, &verdicts, inconclusive.as_deref()),
        interrupted,
        inconclusive,
        settings,
        load,
        scenario_events: collected.events,
        actions,
        kills,
        restarts,
        faults_off_unconfirmed: collected.faults_off_unconfirmed,
        acknowledged_ended: report::acknowledged_ended(&collected.observed),
        reconciled_orders: collected.observed.reconciled.len(),
        reconciled_out_of_stock: collected.reconciled_out_of_stock,
        verdicts,
        observed: collected.observed,
    }
}

/// A share `0.0..=1.0` (`--min-acknowledged-share`).
fn parse_share(value: &str) -> Result<f64, String> {
    let share: f64 = value.parse().map_err(|e| format!("{value}: {e}"))?;
    if !(0.0..=1.0).contains(&share) {
        return Err(format!("{value} is not between 0 and 1"));
    }
    Ok(share)
}

/// How the suite reaches a backend, for the report.
fn backend(
    own: bool,
    configured: bool,
    embedded: &str,
    server: &str,
    proxies: &[proxy::Proxy],
    proxy_name: &str,
) -> String {
    if !own {
        "as the attached suite runs".to_owned()
    } else if proxies.iter().any(|p| p.name == proxy_name) {
        format!("{server} via tcp-proxy")
    } else if configured {
        server.to_owned()
    } else {
        embedded.to_owned()
    }
}

fn write_outputs(dir: &Path, report: &ChaosReport, summary: &str) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(report).context("serialising chaos.json")?;
    for (name, bytes) in [
        ("chaos.json", json),
        ("chaos.md", summary.as_bytes().to_vec()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn timestamp() -> anyhow::Result<String> {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .context("truncating the time")?
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting the time")
}
