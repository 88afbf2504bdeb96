//! `ftshop fault list|set|clear`: the admin API of every process, from the command line.
//!
//! Targets come from `<data-dir>/up.json` (written by `ftshop up`) or from `--url` (compose,
//! Kubernetes, one `ftshop serve`). The token comes from `--token`, `FTSHOP_ADMIN_TOKEN` or
//! up.json, in that order.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ftshop_platform::faults::{FaultKind, FaultProfile, FaultRule, FaultsStatus};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct FaultArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Show every process's rules, windows and injection counts.
    List(Targets),
    /// Load a profile, or add/replace one rule on the processes of one service.
    Set(SetArgs),
    /// Remove every rule (faults off) on all processes, or on one service's.
    Clear {
        #[command(flatten)]
        targets: Targets,
        /// Only this service (`store`, `exchange`, `fidelity`, `ecommerce`).
        #[arg(long)]
        service: Option<String>,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct Targets {
    /// Where `ftshop up` wrote up.json.
    #[arg(long, env = "FTSHOP_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// A process's base URL instead of up.json (repeat for several).
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Admin token (default: FTSHOP_ADMIN_TOKEN, then up.json).
    #[arg(long, env = "FTSHOP_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Args, Debug)]
struct SetArgs {
    #[command(flatten)]
    targets: Targets,
    /// `off`, `default` or a TOML/JSON file: replaces every rule on every target.
    #[arg(long, conflicts_with_all = ["service", "route", "kind"])]
    profile: Option<String>,
    /// Restart the random draws from this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Service the rule is for.
    #[arg(long, requires_all = ["route", "kind", "probability"])]
    service: Option<String>,
    /// Only this replica (`store-2`).
    #[arg(long)]
    instance: Option<String>,
    /// Route template (`/sell`) or `*`.
    #[arg(long)]
    route: Option<String>,
    /// HTTP method (any when omitted).
    #[arg(long)]
    method: Option<String>,
    #[arg(long, value_parser = parse_kind)]
    kind: Option<FaultKind>,
    /// Chance per request, 0..1.
    #[arg(long)]
    probability: Option<f64>,
    /// How long the fault stays on once drawn (`5s`, `30s`, `0s`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    window: Duration,
    /// Delay of a latency fault (`2s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    latency: Option<Duration>,
    /// The rule removes itself after this long (`10m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
}

/// `println!` that ends the process quietly when stdout is a closed pipe (`ftshop fault list |
/// head`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { emit(format_args!($($arg)*)) };
}

fn emit(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(err) = writeln!(std::io::stdout().lock(), "{line}")
        && err.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

fn parse_kind(text: &str) -> Result<FaultKind, String> {
    serde_json::from_value(json!(text.to_ascii_lowercase()))
        .map_err(|_| format!("`{text}` is not one of omission, crash, error, latency"))
}

/// One process to talk to.
struct Target {
    name: String,
    service: Option<String>,
    url: String,
}

pub async fn run(args: FaultArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    match args.action {
        Action::List(targets) => {
            let (targets, token) = resolve(&targets)?;
            let mut failures = 0;
            for target in &targets {
                match get_status(&client, target, &token).await {
                    Ok(status) => print_status(&target.name, &status),
                    Err(err) => {
                        failures += 1;
                        eprintln!("{}: {err:#}", target.name);
                    }
                }
            }
            finish(failures, targets.len())
        }
        Action::Clear { targets, service } => {
            let (targets, token) = resolve(&targets)?;
            let mut failures = 0;
            let mut touched = 0;
            for target in &targets {
                let tally = (&mut touched, &mut failures);
                if !selected(&client, target, &token, service.as_deref(), tally).await {
                    continue;
                }
                touched += 1;
                let url = format!("{}/admin/faults/reset", target.url);
                match send(client.post(&url).bearer_auth(&token)).await {
                    Ok(_) => out!("{}: faults cleared", target.name),
                    Err(err) => {
                        failures += 1;
                        eprintln!("{}: {err:#}", target.name);
                    }
                }
            }
            finish(failures, touched)
        }
        Action::Set(set) => set_rules(&client, set).await,
    }
}

async fn set_rules(client: &reqwest::Client, set: SetArgs) -> anyhow::Result<()> {
    let (targets, token) = resolve(&set.targets)?;
    let mut failures = 0;
    let mut touched = 0;
    if let Some(spec) = &set.profile {
        // Files are read here, so the processes never need the file; every process keeps the
        // rules addressed to it.
        let profile = FaultProfile::load(spec)?;
        let seed = set.seed.or(profile.seed);
        for target in &targets {
            touched += 1;
            let mut body = json!({ "rules": profile.rules });
            if let Some(seed) = seed {
                body["seed"] = json!(seed);
            }
            match put_rules(client, target, &token, &body).await {
                Ok(status) => out!(
                    "{}: profile {spec}: {} rule(s) for this process",
                    target.name,
                    status.rules.len()
                ),
                Err(err) => {
                    failures += 1;
                    eprintln!("{}: {err:#}", target.name);
                }
            }
        }
        return finish(failures, touched);
    }

    let (Some(service), Some(route), Some(kind), Some(probability)) =
        (&set.service, &set.route, set.kind, set.probability)
    else {
        bail!("give --profile, or --service, --route, --kind and --probability");
    };
    let rule = FaultRule {
        service: Some(service.clone()),
        instance: set.instance.clone(),
        route: route.clone(),
        method: set.method.as_ref().map(|m| m.to_ascii_uppercase()),
        kind,
        probability,
        window_ms: millis(set.window),
        latency_ms: set.latency.map_or(0, millis),
        ttl_secs: set.ttl.map(|t| t.as_secs().max(1)),
    };
    rule.validate().map_err(|e| anyhow::anyhow!(e))?;
    for target in &targets {
        let tally = (&mut touched, &mut failures);
        if !selected(client, target, &token, Some(service), tally).await {
            continue;
        }
        touched += 1;
        let result = async {
            let current = get_status(client, target, &token).await?;
            let mut rules: Vec<FaultRule> = current
                .rules
                .into_iter()
                .map(|r| r.rule)
                .filter(|r| !r.same_target(&rule))
                .collect();
            rules.push(rule.clone());
            let mut body = json!({ "rules": rules });
            if let Some(seed) = set.seed {
                body["seed"] = json!(seed);
            }
            put_rules(client, target, &token, &body).await
        }
        .await;
        match result {
            Ok(status) => out!(
                "{}: {} {} p={} window={}{} ({} rule(s) now)",
                target.name,
                rule.kind,
                rule.route,
                rule.probability,
                humantime::format_duration(set.window),
                set.ttl
                    .map(|t| format!(" ttl={}", humantime::format_duration(t)))
                    .unwrap_or_default(),
                status.rules.len()
            ),
            Err(err) => {
                failures += 1;
                eprintln!("{}: {err:#}", target.name);
            }
        }
    }
    if touched == 0 {
        bail!("no process of service `{service}` among the targets");
    }
    finish(failures, touched)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn finish(failures: usize, total: usize) -> anyhow::Result<()> {
    if failures > 0 {
        bail!("{failures} of {total} process(es) failed");
    }
    Ok(())
}

/// Targets and token from the flags, the environment and up.json.
fn resolve(targets: &Targets) -> anyhow::Result<(Vec<Target>, String)> {
    let up_path = targets.data_dir.join("up.json");
    let up: Option<serde_json::Value> = std::fs::read_to_string(&up_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let list = if targets.urls.is_empty() {
        let up = up.as_ref().with_context(|| {
            format!(
                "no --url given and {} is not readable: is `ftshop up` running with this data dir?",
                up_path.display()
            )
        })?;
        up["members"]
            .as_array()
            .context("up.json has no members")?
            .iter()
            .filter_map(|m| {
                Some(Target {
                    name: m["name"].as_str()?.to_owned(),
                    service: m["service"].as_str().map(str::to_owned),
                    url: m["url"].as_str()?.trim_end_matches('/').to_owned(),
                })
            })
            .collect()
    } else {
        targets
            .urls
            .iter()
            .map(|url| Target {
                name: url.clone(),
                service: None,
                url: url.trim_end_matches('/').to_owned(),
            })
            .collect()
    };
    let token = targets
        .token
        .clone()
        .or_else(|| {
            up.as_ref()
                .and_then(|u| u["admin_token"].as_str().map(str::to_owned))
        })
        .context("no admin token: pass --token or set FTSHOP_ADMIN_TOKEN")?;
    Ok((list, token))
}

/// [`is_service`], counting a target that does not answer as touched and failed (and saying so).
async fn selected(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    service: Option<&str>,
    (touched, failures): (&mut usize, &mut usize),
) -> bool {
    match is_service(client, target, token, service).await {
        Ok(wanted) => wanted,
        Err(err) => {
            *touched += 1;
            *failures += 1;
            eprintln!("{}: {err:#}", target.name);
            false
        }
    }
}

/// Whether `target` runs `service` (any process if `None`). Asks the process when up.json did
/// not say, so `--url` targets work too; one that does not answer is an error, not skipped.
async fn is_service(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    service: Option<&str>,
) -> anyhow::Result<bool> {
    let Some(wanted) = service else {
        return Ok(true);
    };
    match &target.service {
        Some(known) => Ok(known == wanted),
        None => Ok(get_status(client, target, token).await?.service == wanted),
    }
}

async fn get_status(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
) -> anyhow::Result<FaultsStatus> {
    let url = format!("{}/admin/faults", target.url);
    let body = send(client.get(&url).bearer_auth(token)).await?;
    serde_json::from_str(&body).context("unexpected answer from /admin/faults")
}

async fn put_rules(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<FaultsStatus> {
    let url = format!("{}/admin/faults", target.url);
    let text = send(client.put(&url).bearer_auth(token).json(body)).await?;
    serde_json::from_str(&text).context("unexpected answer from /admin/faults")
}

/// Sends and returns the body of a 2xx; otherwise the problem's detail.
async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<String> {
    let response = request.send().await.context("not reachable")?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(body);
    }
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or(body);
    bail!("{status}: {detail}")
}

fn print_status(name: &str, status: &FaultsStatus) {
    out!(
        "{name} ({}{}) profile={} seed={}",
        status.service,
        status
            .instance
            .as_deref()
            .map(|i| format!(", {i}"))
            .unwrap_or_default(),
        status.profile,
        status.seed
    );
    if status.rules.is_empty() {
        out!("  no faults");
        return;
    }
    out!(
        "  {:<18} {:<6} {:<9} {:>5} {:>8} {:>8} {:<10} {:>8} {:>7}",
        "ROUTE",
        "METHOD",
        "KIND",
        "P",
        "WINDOW",
        "LATENCY",
        "ACTIVE",
        "INJECTED",
        "TTL"
    );
    for r in &status.rules {
        let active = if r.active {
            format!("{:.1}s left", r.active_remaining_ms as f64 / 1000.0)
        } else {
            "no".to_owned()
        };
        out!(
            "  {:<18} {:<6} {:<9} {:>5.2} {:>7}s {:>7}ms {:<10} {:>8} {:>7}",
            r.rule.route,
            r.rule.method.as_deref().unwrap_or("*"),
            r.rule.kind.as_str(),
            r.rule.probability,
            r.rule.window_ms as f64 / 1000.0,
            r.rule.latency_ms,
            active,
            r.injected,
            r.expires_in_secs
                .map(|s| format!("{s}s"))
                .unwrap_or_else(|| "-".into()),
        );
    }
}
