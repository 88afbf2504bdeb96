//! `ftshop load`: a load generator for `POST /buy`.
//!
//! Closed loop (`--vus` users with `--think` time, the way people shop) or open loop (`--rate`,
//! a fixed arrival rate that does not slow down when the shop does). Each run records HDR
//! latency histograms and a per-second time series, then writes `result.json`, `summary.md` and
//! `chart.svg` into `--out`, and prints the summary. `--ft both` runs ft=true then ft=false with
//! the same settings and reports them side by side.
//!
//! Why this is written here rather than on goose, rlt or balter: see docs/load.md.

mod args;
mod follow;
pub(crate) mod live;
mod outcome;
mod report;
mod runner;
mod svg;

use std::path::Path;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

pub use args::LoadArgs;
use args::{LoadModel, Plan, format_duration};
/// Shared with `ftshop chaos`, which drives purchases the same way.
pub(crate) use args::{
    Products, ThinkTime, has_loopback_host, loopback_url, parse_duration, parse_products,
};
use report::{LoadResult, RunReport, Settings};
/// The control room drives loads with the same engine.
pub(crate) use runner::run_observed;

/// Runs the load described by `args` and writes its results.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("creating the output directory {}", plan.out.display()))?;
    let client = loopback_client(plan.timeout).context("building the HTTP client")?;

    // Ctrl-C ends the current run early; what was measured is still reported.
    let stop = CancellationToken::new();
    let ctrl_c = tokio::spawn({
        let stop = stop.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: finishing the requests in flight and reporting");
                stop.cancel();
            }
        }
    });

    let started_at = now_rfc3339()?;
    eprintln!("{}", describe(&plan));
    let mut runs = Vec::new();
    for &ft in &plan.ft_runs {
        if stop.is_cancelled() {
            break;
        }
        let report = runner::run(&plan, ft, &client, &stop).await?;
        eprintln!(
            "ft={ft}: {} requests in {:.1}s",
            report.counts.requests, report.elapsed_s
        );
        if report.counts.requests > 0 && report.counts.connection_error == report.counts.requests {
            eprintln!(
                "every request failed to connect: is the suite running at {}? \
                 (`ftshop up` in another terminal)",
                plan.base_url
            );
        }
        runs.push(report);
    }
    ctrl_c.abort();

    let result = LoadResult {
        tool: "ftshop load".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at,
        interrupted: stop.is_cancelled(),
        settings: settings(&plan),
        runs,
    };
    let summary = report::summary_markdown(&result);
    write_outputs(&plan.out, &result, &summary)?;
    crate::print_report(&summary);
    eprintln!(
        "results: {0}/result.json, {0}/summary.md, {0}/chart.svg",
        plan.out.display()
    );

    if result.interrupted {
        // A partial run must not pass a CI gate by accident.
        bail!("interrupted by Ctrl-C: the results cover only part of the planned load");
    }
    if let Some(min) = plan.min_success {
        check_threshold(&result.runs, min)?;
    }
    Ok(())
}

fn check_threshold(runs: &[RunReport], min: f64) -> anyhow::Result<()> {
    let below: Vec<String> = runs
        .iter()
        .filter(|run| run.success_rate_pct.unwrap_or(0.0) < min)
        .map(|run| {
            format!(
                "ft={}: {}",
                run.ft,
                run.success_rate_pct
                    .map_or("no request counted".to_owned(), |r| format!("{r:.3} %"))
            )
        })
        .collect();
    if !below.is_empty() {
        bail!(
            "success rate below --min-success {min} %: {}",
            below.join("; ")
        );
    }
    Ok(())
}

fn write_outputs(dir: &Path, result: &LoadResult, summary: &str) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(result).context("serialising result.json")?;
    let files = [
        ("result.json", json),
        ("summary.md", summary.as_bytes().to_vec()),
        ("chart.svg", svg::chart(result).into_bytes()),
    ];
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn settings(plan: &Plan) -> Settings {
    let (mode, vus, think, rate, in_flight) = match plan.load {
        LoadModel::Closed { vus, think } => {
            ("closed", Some(vus), Some(think.to_string()), None, None)
        }
        LoadModel::Open {
            per_sec,
            max_in_flight,
        } => ("open", None, None, Some(per_sec), Some(max_in_flight)),
    };
    Settings {
        url: plan.base_url.clone(),
        mode: mode.to_owned(),
        vus,
        think,
        rate_per_s: rate,
        max_in_flight: in_flight,
        duration_s: plan.duration.as_secs_f64(),
        max_requests: plan.max_requests,
        products: plan.products.0.clone(),
        timeout_s: plan.timeout.as_secs_f64(),
        ft: plan.ft_runs.clone(),
    }
}

fn describe(plan: &Plan) -> String {
    let load = match plan.load {
        LoadModel::Closed { vus, think } => format!("{vus} VUs, think {think}"),
        LoadModel::Open {
            per_sec,
            max_in_flight,
        } => format!("{per_sec}/s open loop, at most {max_in_flight} in flight"),
    };
    let ft: Vec<String> = plan.ft_runs.iter().map(|ft| format!("ft={ft}")).collect();
    format!(
        "ftshop load: {load} for {} per run ({}) against {}",
        format_duration(plan.duration),
        ft.join(" then "),
        plan.buy_url
    )
}

fn now_rfc3339() -> anyhow::Result<String> {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .context("truncating the start time")?
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting the start time")
}

/// The HTTP client of a load run (`ftshop load` and the control room's traffic panel): each
/// request and each connect gives up after `timeout`.
pub(crate) fn loopback_client(timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        // Loopback only: a proxy from the environment must never carry this traffic elsewhere.
        .no_proxy()
        // Nor may a redirect: /buy never redirects, so a 3xx is reported as unexpected instead
        // of followed to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
}
