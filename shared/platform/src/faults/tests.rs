//! Engine tests: draw rates, reproducibility, windows and time-to-live on a paused clock.

use super::*;

fn rule(route: &str, kind: FaultKind, probability: f64, window_ms: u64) -> FaultRule {
    FaultRule {
        service: None,
        instance: None,
        route: route.into(),
        method: None,
        kind,
        probability,
        window_ms,
        latency_ms: if kind == FaultKind::Latency { 2_000 } else { 0 },
        ttl_secs: None,
    }
}

fn engine_with(rules: Vec<FaultRule>, seed: u64) -> Arc<FaultEngine> {
    let profile = FaultProfile {
        name: "test".into(),
        seed: None,
        rules,
    };
    FaultEngine::new("store", Some("store-1".into()), &profile, Some(seed))
}

fn draws(engine: &FaultEngine, route: &str, n: usize) -> Vec<bool> {
    (0..n)
        .map(|_| engine.decide(&http::Method::GET, route).is_some())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn drawn_rate_over_10000_requests_is_within_statistical_bounds() {
    for (seed, p) in [(1_u64, 0.2), (7, 0.1), (42, 0.5), (2026, 0.01)] {
        let engine = engine_with(vec![rule("/product", FaultKind::Omission, p, 0)], seed);
        let hits = draws(&engine, "/product", 10_000)
            .into_iter()
            .filter(|h| *h)
            .count();
        // Binomial(10 000, p): 4.5 standard deviations either side (a false alarm once in
        // ~150 000 seeds; the seeds here are fixed, so the test is also deterministic).
        let mean = 10_000.0 * p;
        let sd = (10_000.0 * p * (1.0 - p)).sqrt();
        let hits = hits as f64;
        assert!(
            (hits - mean).abs() <= 4.5 * sd,
            "seed {seed}, p {p}: {hits} hits, expected {mean} ± {:.0}",
            4.5 * sd
        );
    }
}

#[tokio::test(start_paused = true)]
async fn same_seed_repeats_the_same_faults_and_other_routes_do_not_shift_them() {
    let rules = vec![
        rule("/product", FaultKind::Omission, 0.2, 0),
        rule("/sell", FaultKind::Error, 0.3, 0),
    ];
    let a = engine_with(rules.clone(), 99);
    let b = engine_with(rules.clone(), 99);
    let c = engine_with(rules, 100);
    let seq_a = draws(&a, "/product", 500);
    // b sees extra traffic on /sell in between: /product's stream must not move.
    let seq_b: Vec<bool> = (0..500)
        .map(|_| {
            let _ = b.decide(&http::Method::POST, "/sell");
            b.decide(&http::Method::GET, "/product").is_some()
        })
        .collect();
    let seq_c = draws(&c, "/product", 500);
    assert_eq!(seq_a, seq_b);
    assert_ne!(seq_a, seq_c);
}

#[tokio::test(start_paused = true)]
async fn once_drawn_a_window_faults_every_request_until_it_ends() {
    // Requests every 100 ms; a 5 s window covers exactly 50 of them, then draws resume.
    let engine = engine_with(vec![rule("/sell", FaultKind::Error, 0.3, 5_000)], 3);
    let mut pattern = Vec::new();
    for _ in 0..5_000 {
        pattern.push(engine.decide(&http::Method::POST, "/sell").is_some());
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let mut runs = Vec::new();
    let mut current = 0;
    for hit in pattern.iter().copied().chain([false]) {
        if hit {
            current += 1;
        } else if current > 0 {
            runs.push(current);
            current = 0;
        }
    }
    assert!(runs.len() > 10, "windows drawn: {}", runs.len());
    for run in &runs[..runs.len() - 1] {
        assert_eq!(run % 50, 0, "a window lasted {run} requests: {runs:?}");
    }
    assert!(pattern.iter().any(|h| !h), "the fault never turned off");
}

#[tokio::test(start_paused = true)]
async fn status_reports_an_open_window_and_the_gauge_inputs() {
    let engine = engine_with(vec![rule("/sell", FaultKind::Error, 1.0, 5_000)], 1);
    assert!(engine.decide(&http::Method::POST, "/sell").is_some());
    tokio::time::advance(Duration::from_secs(2)).await;
    let status = engine.status();
    assert_eq!(status.rules.len(), 1);
    assert!(status.rules[0].active);
    assert_eq!(status.rules[0].active_remaining_ms, 3_000);
    assert_eq!(status.rules[0].injected, 1);
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(!engine.status().rules[0].active);
}

#[tokio::test(start_paused = true)]
async fn status_counts_the_windows_a_rule_opened() {
    let engine = engine_with(vec![rule("/sell", FaultKind::Error, 1.0, 5_000)], 1);
    let sell = || engine.decide(&http::Method::POST, "/sell").is_some();
    assert!(sell()); // opens the first window
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(sell()); // inside it
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(sell()); // the first has ended: a second opens
    let status = engine.status();
    assert_eq!(status.rules[0].injected, 3);
    assert_eq!(status.rules[0].windows, 2);
    // A rule without a window opens none, however often it fires.
    let each = engine_with(vec![rule("/product", FaultKind::Omission, 1.0, 0)], 1);
    for _ in 0..4 {
        assert!(each.decide(&http::Method::GET, "/product").is_some());
    }
    assert_eq!(each.status().rules[0].injected, 4);
    assert_eq!(each.status().rules[0].windows, 0);
}

#[tokio::test(start_paused = true)]
async fn a_rule_with_a_ttl_turns_itself_off() {
    let mut forgotten = rule("/product", FaultKind::Error, 1.0, 0);
    forgotten.ttl_secs = Some(60);
    let engine = engine_with(vec![forgotten], 5);
    assert!(engine.decide(&http::Method::GET, "/product").is_some());
    assert_eq!(engine.status().rules[0].expires_in_secs, Some(60));
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(engine.decide(&http::Method::GET, "/product").is_some());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(engine.decide(&http::Method::GET, "/product").is_none());
    assert!(engine.status().rules.is_empty());
}

#[tokio::test(start_paused = true)]
async fn rules_match_route_method_service_and_instance() {
    let mut post_only = rule("/sell", FaultKind::Error, 1.0, 0);
    post_only.method = Some("POST".into());
    let mut other_service = rule("*", FaultKind::Error, 1.0, 0);
    other_service.service = Some("exchange".into());
    let mut other_replica = rule("*", FaultKind::Error, 1.0, 0);
    other_replica.instance = Some("store-2".into());
    let mut latency = rule("/product", FaultKind::Latency, 1.0, 0);
    latency.latency_ms = 750;
    let engine = engine_with(vec![post_only, other_service, other_replica, latency], 1);

    assert_eq!(
        engine.status().rules.len(),
        2,
        "rules for others are dropped"
    );
    assert!(engine.decide(&http::Method::GET, "/sell").is_none());
    assert_eq!(
        engine.decide(&http::Method::POST, "/sell"),
        Some(Injection {
            kind: FaultKind::Error,
            latency: Duration::ZERO,
            window: Duration::ZERO,
        })
    );
    assert_eq!(
        engine.decide(&http::Method::GET, "/product"),
        Some(Injection {
            kind: FaultKind::Latency,
            latency: Duration::from_millis(750),
            window: Duration::ZERO,
        })
    );
    assert!(engine.decide(&http::Method::GET, "/products").is_none());
}

#[tokio::test(start_paused = true)]
async fn wildcard_route_and_reset() {
    let engine = engine_with(vec![rule("*", FaultKind::Error, 1.0, 0)], 1);
    assert!(engine.decide(&http::Method::GET, "/anything").is_some());
    engine.reset();
    assert!(engine.decide(&http::Method::GET, "/anything").is_none());
    assert_eq!(engine.status().profile, "off");
}

#[test]
fn validation_rejects_absurd_rules() {
    let ok = rule("/sell", FaultKind::Error, 0.1, 5_000);
    assert!(ok.validate().is_ok());
    for (bad, why) in [
        (
            FaultRule {
                probability: 1.5,
                ..ok.clone()
            },
            "probability",
        ),
        (
            FaultRule {
                probability: f64::NAN,
                ..ok.clone()
            },
            "probability",
        ),
        (
            FaultRule {
                probability: -0.1,
                ..ok.clone()
            },
            "probability",
        ),
        (
            FaultRule {
                route: "sell".into(),
                ..ok.clone()
            },
            "route",
        ),
        (
            FaultRule {
                window_ms: u64::MAX,
                ..ok.clone()
            },
            "window",
        ),
        (
            FaultRule {
                kind: FaultKind::Latency,
                latency_ms: 0,
                ..ok.clone()
            },
            "latency",
        ),
        (
            FaultRule {
                latency_ms: 600_000,
                ..ok.clone()
            },
            "latency",
        ),
        (
            FaultRule {
                ttl_secs: Some(0),
                ..ok.clone()
            },
            "ttl",
        ),
        (
            FaultRule {
                method: Some("GE T".into()),
                ..ok.clone()
            },
            "method",
        ),
    ] {
        let err = bad.validate().expect_err(why);
        assert!(err.contains(why), "{err} should mention {why}");
    }
}

#[test]
fn profiles_parse_from_toml_and_json_and_default_is_the_exercise() {
    let default = FaultProfile::load("default").expect("default");
    assert_eq!(default.rules.len(), 4);
    assert!(default.rules.iter().all(|r| r.validate().is_ok()));
    assert!(FaultProfile::load("off").expect("off").rules.is_empty());

    let toml = r#"
        seed = 42
        [[rules]]
        service = "fidelity"
        route = "/bonus"
        kind = "latency"
        probability = 1.0
        window_ms = 60000
        latency_ms = 2000
        ttl_secs = 60
    "#;
    let parsed = FaultProfile::parse(toml, false, "slow.toml").expect("toml");
    assert_eq!(parsed.seed, Some(42));
    assert_eq!(parsed.rules[0].kind, FaultKind::Latency);
    let json = serde_json::to_string(&parsed).expect("json");
    let back = FaultProfile::parse(&json, true, "slow.json").expect("json back");
    assert_eq!(back.rules, parsed.rules);

    let typo = "[[rules]]\nroute = \"/bonus\"\nkind = \"latency\"\nprobabilty = 1.0\n";
    let err = FaultProfile::parse(typo, false, "typo.toml").expect_err("unknown field");
    assert!(err.to_string().contains("probabilty"), "{err}");
    let bad = "[[rules]]\nroute = \"/bonus\"\nkind = \"latency\"\nprobability = 1.0\n";
    let err = FaultProfile::parse(bad, false, "bad.toml").expect_err("no latency");
    assert!(err.to_string().contains("rule 0"), "{err}");
    assert!(FaultProfile::load("/nonexistent/faults.toml").is_err());
}

/// Request number (1-based) of the first crash `/exchange` draws, in lifetime `epoch` of
/// exchange-1 under the default profile and `seed`.
fn first_crash(seed: u64, epoch: u64) -> Option<usize> {
    let profile = FaultProfile::load("default").ok()?;
    let engine = FaultEngine::with_epoch(
        "exchange",
        Some("exchange-1".into()),
        &profile,
        Some(seed),
        epoch,
    );
    (1..=1_000).find(|_| {
        engine
            .decide(&http::Method::GET, "/exchange")
            .is_some_and(|i| i.kind == FaultKind::Crash)
    })
}

/// Reviewer finding F1, the class: a restarted process used to replay its fault draws, so every
/// lifetime of a replica crashed at the same request (seed 839658: the 1st request, every start).
/// Each lifetime (epoch) must draw its own stream, and the same epoch the same one.
#[tokio::test(start_paused = true)]
async fn each_lifetime_draws_its_own_crash_point_and_the_same_epoch_repeats_it() {
    for seed in [839_658_u64, 42] {
        let points: Vec<Option<usize>> = (0..8).map(|epoch| first_crash(seed, epoch)).collect();
        for (epoch, point) in points.iter().enumerate() {
            assert!(
                point.is_some(),
                "seed {seed} epoch {epoch}: no crash in 1000"
            );
            assert_eq!(
                *point,
                first_crash(seed, epoch as u64),
                "seed {seed} epoch {epoch} is not reproducible"
            );
        }
        let distinct: BTreeSet<_> = points.iter().collect();
        assert!(
            distinct.len() >= 4,
            "seed {seed}: 8 lifetimes crash at only {} distinct requests: {points:?}",
            distinct.len()
        );
    }
    // The reported case: seed 839658 crashed exchange-1 on its 1st request; a restart must not.
    assert_eq!(first_crash(839_658, 0), Some(1));
    assert_ne!(first_crash(839_658, 1), Some(1));
}

/// Sales between two `/sell` error windows for `windows` windows of the default profile's rule on
/// `instance` with `seed`: the requests that pass (a request drawn outside a window either opens
/// one or passes; inside a window every request fails, so time is moved past each window).
async fn passes_between_windows(instance: &str, seed: u64, windows: usize) -> Vec<u64> {
    let profile = FaultProfile::default_profile();
    let engine = FaultEngine::new("store", Some(instance.to_owned()), &profile, Some(seed));
    let mut runs = Vec::with_capacity(windows);
    let mut passed = 0;
    while runs.len() < windows {
        if engine.decide(&http::Method::POST, "/sell").is_some() {
            runs.push(passed);
            passed = 0;
            tokio::time::advance(Duration::from_millis(5_001)).await;
        } else {
            passed += 1;
        }
    }
    runs
}

/// The analytic sales cap (`N × (1/p − 1) / window`, docs/benchmarks/sustained-faults.md)
/// assumes a replica passes `1/p − 1` = 9 sales per window cycle on average: over 400 streams
/// (200 seeds × 2 replicas) of 50 windows the mean is within 5 standard errors of 9. The
/// 5-minute benchmark measured 10.3-10.8 with seed 42 on both replicas; this prints seed 42's
/// first 63 cycles, which are the same in every run with that seed.
#[tokio::test(start_paused = true)]
async fn the_sell_fault_passes_one_over_p_minus_one_sales_per_window_on_average() {
    let mut total = 0u64;
    let mut count = 0u64;
    for seed in 0..200 {
        for instance in ["store-1", "store-2"] {
            let runs = passes_between_windows(instance, seed, 50).await;
            total += runs.iter().sum::<u64>();
            count += runs.len() as u64;
        }
    }
    let mean = total as f64 / count as f64;
    // Geometric with p = 0.1: variance 90, standard error √(90 / 20 000) = 0.067.
    assert!(
        (mean - 9.0).abs() < 5.0 * 0.067,
        "mean sales per window {mean}"
    );
    for instance in ["store-1", "store-2"] {
        let runs = passes_between_windows(instance, 42, 63).await;
        let mean = runs.iter().sum::<u64>() as f64 / runs.len() as f64;
        eprintln!("seed 42, {instance}: {mean:.2} sales per window over the first 63 windows");
    }
}
