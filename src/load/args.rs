//! The command line of `ftshop load` and its validation into a [`Plan`].
//!
//! Every limit that keeps a load run bounded (duration, request count, in-flight cap, loopback
//! target) is checked here, once, before any request is sent.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use reqwest::Url;

/// The longest run `--duration` accepts: a load run is a measurement, never a soak that
/// somebody forgot about.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 60);
/// Upper bounds that keep a typo (`--vus 100000`) from exhausting this machine's sockets.
pub const MAX_VUS: u32 = 10_000;
pub const MAX_RATE_PER_SEC: f64 = 10_000.0;
pub const MAX_IN_FLIGHT: usize = 10_000;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Ecommerce base URL. Only loopback addresses and `localhost` are accepted.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Closed loop: number of virtual users, each sending one purchase, waiting for the answer,
    /// then thinking.
    #[arg(long, default_value_t = 10)]
    pub vus: u32,

    /// How long each run lasts (e.g. `60s`, `2m`, `1m30s`; at most 30m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Think time between a VU's answer and its next purchase: `MIN..MAX` drawn uniformly, or a
    /// single fixed value (`0s` for none).
    #[arg(long, default_value = "1s..4s", value_parser = ThinkTime::parse)]
    pub think: ThinkTime,

    /// Fault tolerance flag sent in every purchase; `both` runs ft=true, then ft=false, with
    /// the same settings, and reports them side by side.
    #[arg(long, value_enum, default_value_t = FtMode::On)]
    pub ft: FtMode,

    /// Open loop instead of VUs: a fixed arrival rate (`50/s`, `600/m`, `50`); requests are sent
    /// on schedule whether or not earlier ones have answered.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Open loop: most requests in flight at once; an arrival beyond it is dropped and counted.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,

    /// Stop each run after this many requests, even before `--duration` ends.
    #[arg(long)]
    pub max_requests: Option<u64>,

    /// Products to buy, drawn uniformly: ranges and lists such as `1-11` or `1-3,7`.
    #[arg(long, default_value = "1-11", value_parser = parse_products)]
    pub products: Products,

    /// Client timeout for one request (connect + answer + body).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Where result.json, summary.md and chart.svg go (default `./load-results/<timestamp>`).
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Exit non-zero when a run's success rate (percent, 409s excluded) is below this.
    #[arg(long)]
    pub min_success: Option<f64>,

    /// The completion promise of a `202 pending`: the report counts the deferred orders that
    /// completed within it (`GET /orders/{id}` is polled until each ends).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub promise: Duration,

    /// How long after its purchase a 202 is followed before it is reported unresolved
    /// (default: the promise + 30 s; at most 30m).
    #[arg(long, value_parser = parse_duration)]
    pub follow_timeout: Option<Duration>,

    /// For the analytic sales cap printed beside the measured sales/s: the number of Store
    /// replicas the suite runs (`ftshop up --stores`).
    #[arg(long, default_value_t = 2)]
    pub stores: u32,

    /// For the analytic sales cap: the probability of Store's `/sell` error fault per request
    /// (0 for a suite without it: no cap is printed).
    #[arg(long, default_value_t = 0.1)]
    pub sell_error_p: f64,

    /// For the analytic sales cap: how long one `/sell` error window lasts.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub sell_error_window: Duration,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FtMode {
    On,
    Off,
    Both,
}

impl FtMode {
    /// The `ft` values to run, in order.
    pub fn runs(self) -> Vec<bool> {
        match self {
            FtMode::On => vec![true],
            FtMode::Off => vec![false],
            FtMode::Both => vec![true, false],
        }
    }
}

/// Uniform think time in `[min, max]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThinkTime {
    pub min: Duration,
    pub max: Duration,
}

impl ThinkTime {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (parse_duration(min)?, parse_duration(max)?),
            None => {
                let fixed = parse_duration(text)?;
                (fixed, fixed)
            }
        };
        ensure!(
            min <= max,
            "think time {text:?}: the minimum is above the maximum"
        );
        ensure!(
            max <= Duration::from_secs(600),
            "think time {text:?}: at most 10m"
        );
        Ok(Self { min, max })
    }

    /// Draws one think time.
    pub fn sample(&self) -> Duration {
        if self.min == self.max {
            return self.min;
        }
        let micros = rand::random_range(self.min.as_micros() as u64..=self.max.as_micros() as u64);
        Duration::from_micros(micros)
    }
}

impl std::fmt::Display for ThinkTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", format_duration(self.min))
        } else {
            write!(
                f,
                "{}..{}",
                format_duration(self.min),
                format_duration(self.max)
            )
        }
    }
}

/// Product ids to draw from, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Products(pub Vec<String>);

impl Products {
    pub fn sample(&self) -> &str {
        let index = rand::random_range(0..self.0.len());
        &self.0[index]
    }
}

/// What a validated command line asks for.
#[derive(Debug, Clone)]
pub struct Plan {
    pub buy_url: Url,
    pub base_url: String,
    pub load: LoadModel,
    pub duration: Duration,
    pub max_requests: Option<u64>,
    pub products: Products,
    pub timeout: Duration,
    pub ft_runs: Vec<bool>,
    pub out: PathBuf,
    pub min_success: Option<f64>,
    /// Where `orders/{id}` is looked up (the shop's base URL with a trailing slash).
    pub orders_base: Url,
    pub promise: Duration,
    pub follow_timeout: Duration,
    /// Units per second Store can sell under the `/sell` error fault (see
    /// [`super::follow::analytic_sales_cap`]), with the inputs it came from.
    pub sales_cap: Option<SalesCap>,
}

/// The analytic sales cap and its inputs, for the report.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SalesCap {
    pub stores: u32,
    pub sell_error_p: f64,
    pub sell_error_window_s: f64,
    pub units_per_s: f64,
}

#[derive(Debug, Clone, Copy)]
pub enum LoadModel {
    /// `vus` users, each waiting for its answer and then thinking.
    Closed { vus: u32, think: ThinkTime },
    /// A fixed arrival rate, at most `max_in_flight` outstanding.
    Open { per_sec: f64, max_in_flight: usize },
}

impl LoadArgs {
    /// Checks every bound and resolves defaults.
    pub fn plan(&self) -> anyhow::Result<Plan> {
        let base = loopback_url(&self.url)?;
        let buy_url = base.join("buy").context("building the /buy URL")?;
        ensure!(
            !self.duration.is_zero(),
            "--duration must be above zero (e.g. 60s)"
        );
        ensure!(
            self.duration <= MAX_DURATION,
            "--duration {} is above the 30m limit",
            format_duration(self.duration)
        );
        ensure!(
            !self.timeout.is_zero() && self.timeout <= Duration::from_secs(120),
            "--timeout must be within (0s, 2m]"
        );
        if let Some(max) = self.max_requests {
            ensure!(max > 0, "--max-requests must be at least 1");
        }
        if let Some(min) = self.min_success {
            ensure!(
                (0.0..=100.0).contains(&min),
                "--min-success is a percentage between 0 and 100"
            );
        }
        let load = match self.rate {
            Some(per_sec) => {
                ensure!(
                    (1..=MAX_IN_FLIGHT).contains(&self.max_in_flight),
                    "--max-in-flight must be within 1..={MAX_IN_FLIGHT}"
                );
                LoadModel::Open {
                    per_sec,
                    max_in_flight: self.max_in_flight,
                }
            }
            None => {
                ensure!(
                    (1..=MAX_VUS).contains(&self.vus),
                    "--vus must be within 1..={MAX_VUS}"
                );
                LoadModel::Closed {
                    vus: self.vus,
                    think: self.think,
                }
            }
        };
        ensure!(
            !self.promise.is_zero() && self.promise <= MAX_DURATION,
            "--promise must be within (0s, 30m]"
        );
        let follow_timeout = self
            .follow_timeout
            .unwrap_or(self.promise + Duration::from_secs(30));
        ensure!(
            !follow_timeout.is_zero() && follow_timeout <= MAX_DURATION,
            "--follow-timeout must be within (0s, 30m]"
        );
        ensure!(
            (1..=64).contains(&self.stores),
            "--stores must be within 1..=64"
        );
        ensure!(
            (0.0..=1.0).contains(&self.sell_error_p),
            "--sell-error-p is a probability between 0 and 1"
        );
        let sales_cap = super::follow::analytic_sales_cap(
            self.stores,
            self.sell_error_p,
            self.sell_error_window,
        )
        .map(|units_per_s| SalesCap {
            stores: self.stores,
            sell_error_p: self.sell_error_p,
            sell_error_window_s: self.sell_error_window.as_secs_f64(),
            units_per_s,
        });
        let orders_base = buy_url.join(".").context("building the /orders URL")?;
        let out = match &self.out {
            Some(out) => out.clone(),
            None => PathBuf::from("load-results").join(timestamp_dir_name()?),
        };
        Ok(Plan {
            base_url: base.as_str().trim_end_matches('/').to_owned(),
            buy_url,
            load,
            duration: self.duration,
            max_requests: self.max_requests,
            products: self.products.clone(),
            timeout: self.timeout,
            ft_runs: self.ft.runs(),
            out,
            min_success: self.min_success,
            orders_base,
            promise: self.promise,
            follow_timeout,
            sales_cap,
        })
    }
}

/// Whether `url` points at this machine: 127.0.0.0/8, `[::1]` or `localhost`.
pub fn has_loopback_host(url: &Url) -> bool {
    // `host_str` brackets IPv6 literals; the url crate has already normalised IPv4 forms such
    // as `127.1` and lower-cased domain names.
    let host = url.host_str().unwrap_or_default();
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost",
    }
}

/// Parses the target and refuses anything but this machine: a load generator pointed at
/// somebody else's server is an attack, whatever the intent.
pub fn loopback_url(text: &str) -> anyhow::Result<Url> {
    let mut url = Url::parse(text).with_context(|| format!("--url {text:?} is not a URL"))?;
    ensure!(
        matches!(url.scheme(), "http" | "https"),
        "--url {text:?}: only http and https are supported"
    );
    if !has_loopback_host(&url) {
        bail!(
            "--url {text:?}: refusing a non-loopback host; ftshop load only targets 127.0.0.0/8, \
             [::1] or localhost"
        );
    }
    // `Url::join` replaces the last segment unless the path ends with a slash.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// `60s`, `500ms`, `2m`, `1h`, `1m30s`, `0s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    ensure!(!text.is_empty(), "empty duration");
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs, text);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .with_context(|| format!("duration {text:?}: a number needs a unit (ms, s, m, h)"))?;
        ensure!(number_len > 0, "duration {text:?}: expected a number");
        let number: f64 = rest[..number_len]
            .parse()
            .with_context(|| format!("duration {text:?}: bad number"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => bail!("duration {text:?}: unknown unit {unit:?} (ms, s, m, h)"),
        };
        total += seconds(number * scale, text)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn seconds(secs: f64, text: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).with_context(|| format!("duration {text:?} is out of range"))
}

/// `50/s`, `600/m`, `50` (per second).
pub fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let (number, per) = match text.split_once('/') {
        Some((number, unit)) => {
            let per = match unit.trim() {
                "s" | "sec" => 1.0,
                "m" | "min" => 60.0,
                other => bail!("rate {text:?}: unknown unit {other:?} (use R/s or R/m)"),
            };
            (number, per)
        }
        None => (text, 1.0),
    };
    let number: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("rate {text:?}: expected a number such as 50/s"))?;
    let per_sec = number / per;
    ensure!(
        per_sec.is_finite() && per_sec > 0.0,
        "rate {text:?} must be above zero"
    );
    ensure!(
        per_sec <= MAX_RATE_PER_SEC,
        "rate {text:?} is above the {MAX_RATE_PER_SEC}/s limit"
    );
    Ok(per_sec)
}

/// `1-11`, `1-3,7`, `5`.
pub fn parse_products(text: &str) -> anyhow::Result<Products> {
    let mut ids = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((low, high)) => {
                let low: u32 = low
                    .trim()
                    .parse()
                    .with_context(|| format!("products {text:?}: bad range start"))?;
                let high: u32 = high
                    .trim()
                    .parse()
                    .with_context(|| format!("products {text:?}: bad range end"))?;
                ensure!(low <= high, "products {text:?}: empty range {part}");
                ensure!(high - low < 10_000, "products {text:?}: range too large");
                ids.extend((low..=high).map(|id| id.to_string()));
            }
            None => ids.push(part.to_owned()),
        }
    }
    ensure!(!ids.is_empty(), "products {text:?}: no product");
    Ok(Products(ids))
}

/// `1m30s`, `500ms`, `0s`: the inverse of [`parse_duration`] for reports.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let secs = millis / 1000;
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

fn timestamp_dir_name() -> anyhow::Result<String> {
    let format = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .context("formatting the output directory's timestamp")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests state their expectations by unwrapping
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))?;
        cli.load.plan()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn think_range() {
        let think = ThinkTime::parse("1s..4s").unwrap();
        assert_eq!(think.min, Duration::from_secs(1));
        assert_eq!(think.max, Duration::from_secs(4));
        for _ in 0..1000 {
            let sample = think.sample();
            assert!(sample >= think.min && sample <= think.max, "{sample:?}");
        }
        assert_eq!(think.to_string(), "1s..4s");

        let none = ThinkTime::parse("0s").unwrap();
        assert_eq!(none.sample(), Duration::ZERO);
        assert_eq!(
            ThinkTime::parse("250ms..1s").unwrap().min,
            Duration::from_millis(250)
        );
        assert!(ThinkTime::parse("4s..1s").is_err(), "min above max");
        assert!(ThinkTime::parse("1s..").is_err());
        assert!(ThinkTime::parse("1h").is_err(), "too long");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50/s").unwrap(), 50.0);
        assert_eq!(parse_rate("600/m").unwrap(), 10.0);
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("-3/s").is_err());
        assert!(parse_rate("50/h").is_err());
        assert!(parse_rate("1000000/s").is_err());
        let plan = parse(&["--rate", "20/s", "--max-in-flight", "5"]).unwrap();
        assert!(matches!(
            plan.load,
            LoadModel::Open { per_sec, max_in_flight: 5 } if per_sec == 20.0
        ));
    }

    #[test]
    fn products() {
        assert_eq!(parse_products("1-3,7").unwrap().0, ["1", "2", "3", "7"]);
        assert_eq!(parse_products("1-11").unwrap().0.len(), 11);
        assert!(parse_products("5-2").is_err());
        assert!(parse_products("").is_err());
    }

    #[test]
    fn loopback_only() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3:9",
            "http://localhost:8080/",
            "http://LOCALHOST",
            "http://[::1]:8080",
            "https://127.0.0.1/shop",
        ] {
            let url = loopback_url(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
            assert!(url.path().ends_with('/'));
        }
        assert_eq!(
            loopback_url("https://127.0.0.1/shop")
                .unwrap()
                .join("buy")
                .unwrap()
                .as_str(),
            "https://127.0.0.1/shop/buy"
        );
        for refused in [
            "http://10.0.0.1:8080",
            "http://192.168.1.10",
            "http://example.com",
            "http://localhost.example.com",
            "http://0.0.0.0:8080",
            "http://[::]:8080",
            "http://8.8.8.8",
            "ftp://127.0.0.1",
            "not a url",
        ] {
            assert!(loopback_url(refused).is_err(), "{refused} must be refused");
        }
        let err = parse(&["--url", "http://10.1.1.1:8080"]).unwrap_err();
        assert!(format!("{err:#}").contains("non-loopback"), "{err:#}");
    }

    #[test]
    fn bounds_and_defaults() {
        let plan = parse(&[]).unwrap();
        assert_eq!(plan.buy_url.as_str(), "http://127.0.0.1:8080/buy");
        assert_eq!(plan.duration, Duration::from_secs(60));
        assert_eq!(plan.timeout, Duration::from_secs(5));
        assert_eq!(plan.ft_runs, [true]);
        assert_eq!(plan.products.0.len(), 11);
        assert!(plan.out.starts_with("load-results"));
        assert!(
            matches!(plan.load, LoadModel::Closed { vus: 10, think } if think.max == Duration::from_secs(4))
        );

        assert_eq!(parse(&["--ft", "both"]).unwrap().ft_runs, [true, false]);
        assert_eq!(parse(&["--ft", "off"]).unwrap().ft_runs, [false]);
        assert!(parse(&["--duration", "31m"]).is_err());
        assert!(parse(&["--duration", "30m"]).is_ok());
        assert!(parse(&["--duration", "0s"]).is_err());
        assert!(parse(&["--vus", "0"]).is_err());
        assert!(parse(&["--max-requests", "0"]).is_err());
        assert!(parse(&["--min-success", "101"]).is_err());
        assert!(parse(&["--rate", "5/s", "--max-in-flight", "0"]).is_err());
    }
}
