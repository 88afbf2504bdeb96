//! `ftshop chaos`, the real binary: a short run that starts its own suite under the default
//! faults, kills processes, freezes both exchanges and kills ecommerce mid-load, and must find
//! every invariant holding; and the refusals that happen before anything starts.
mod common;

use std::process::{Command, Output};

use serde_json::Value;

fn chaos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftshop"))
        .arg("chaos")
        .args(args)
        .env_remove("FTSHOP_FAULTS")
        .env_remove("FTSHOP_FAULT_SEED")
        .env_remove("FTSHOP_ADMIN_TOKEN")
        .env_remove("FTSHOP_DATA_DIR")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .expect("run ftshop chaos")
}

#[test]
fn a_short_chaos_run_kills_processes_and_every_invariant_holds() {
    let out = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let output = chaos(&[
        "--duration",
        "10s",
        "--vus",
        "8",
        "--kill-every",
        "2s",
        "--fault-seed",
        "42",
        "--data-dir",
        data.path().to_str().expect("utf-8 path"),
        "--out",
        out.path().to_str().expect("utf-8 path"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ftshop chaos failed ({}):\n{stderr}\n{stdout}",
        output.status
    );

    let report: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("chaos.json")).expect("chaos.json written"),
    )
    .expect("chaos.json is JSON");
    assert_eq!(report["passed"], true, "{stdout}");
    assert!(
        report["kills"].as_u64().unwrap_or(0) > 0,
        "no process was killed:\n{stderr}"
    );
    let verdicts = report["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 4);
    assert!(verdicts.iter().all(|v| v["holds"] == true), "{stdout}");
    assert!(report["load"]["acknowledged"].as_u64().unwrap_or(0) > 0);
    assert!(report["observed"]["drain"]["drained_after_s"].is_number());
    // The ecommerce kill happened, and the supervisor restarted it.
    let events = report["scenario_events"].as_array().expect("events");
    assert!(
        events
            .iter()
            .any(|e| e["scenario"] == "kill-ecommerce" && e["action"] == "kill"),
        "{stderr}"
    );
    assert!(report["restarts"]["ecommerce"].as_u64().unwrap_or(0) >= 1);
    // The exchanges were frozen (both, unless one was being restarted after a crash fault at
    // that moment) and every frozen one was continued.
    let count = |action: &str| {
        events
            .iter()
            .filter(|e| e["scenario"] == "freeze-exchange" && e["action"] == action)
            .count()
    };
    assert!(count("sigstop") >= 1, "{stderr}");
    assert_eq!(count("sigcont"), count("sigstop"), "{stderr}");

    let summary = std::fs::read_to_string(out.path().join("chaos.md")).expect("chaos.md");
    assert!(summary.contains("### ftshop chaos: PASS"), "{summary}");
    assert!(
        summary.contains("| no oversold unit | ✅ holds |"),
        "{summary}"
    );
    assert_eq!(summary.trim(), stdout.trim());
}

#[test]
fn attaching_to_a_suite_that_is_not_on_this_machine_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = serde_json::json!({
        "supervisor_pid": 1,
        "admin_token": "t",
        "faults": "default",
        "fault_seed": 1,
        "data_dir": dir.path(),
        "members": [
            {"name": "ecommerce", "service": "ecommerce", "url": "http://10.1.2.3:8080",
             "port": 8080, "pid": null, "restarts": 0}
        ]
    });
    std::fs::write(dir.path().join("up.json"), up.to_string()).expect("write up.json");
    let output = chaos(&[
        "--attach-data-dir",
        dir.path().to_str().expect("utf-8 path"),
        "--duration",
        "1s",
        "--out",
        dir.path().join("out").to_str().expect("utf-8 path"),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback URL"), "{stderr}");
}

#[test]
fn unknown_scenarios_proxy_cut_without_servers_and_remote_servers_are_refused() {
    for (scenario, message) in [
        ("kill,explode", "unknown scenario"),
        ("proxy-cut", "needs --database-url and/or --redis-url"),
    ] {
        let output = chaos(&["--scenarios", scenario, "--duration", "1s"]);
        assert!(!output.status.success(), "{scenario}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{scenario}: {stderr}");
    }
    // Nor may the suite's servers be elsewhere.
    for (flag, url) in [
        ("--database-url", "postgres://postgres@10.1.2.3:5432/shop"),
        ("--redis-url", "redis://cache.example.com:6379"),
    ] {
        let output = chaos(&[flag, url, "--duration", "1s"]);
        assert!(!output.status.success(), "{flag}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("must be on this machine"),
            "{flag}: {stderr}"
        );
    }
}

#[test]
fn a_disk_full_run_on_a_tmpfs_fills_and_frees_it_and_every_invariant_holds() {
    let out = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let Some(_tmpfs) = ftshop_platform::db::testing::Tmpfs::mount(data.path(), "48m") else {
        return;
    };
    let output = chaos(&[
        "--scenarios",
        "disk-full",
        "--duration",
        "12s",
        "--vus",
        "8",
        "--disk-full-every",
        "4s",
        "--disk-full-for",
        "2s",
        "--fault-seed",
        "42",
        "--data-dir",
        data.path().to_str().expect("utf-8 path"),
        "--out",
        out.path().to_str().expect("utf-8 path"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ftshop chaos failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    let report: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("chaos.json")).expect("chaos.json written"),
    )
    .expect("chaos.json is JSON");
    assert_eq!(report["passed"], true, "{stdout}");
    let verdicts = report["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 4);
    assert!(verdicts.iter().all(|v| v["holds"] == true), "{stdout}");
    // Filled at 4 s and 8 s (a fill at 12 s would not fit), each freed again.
    let events = report["scenario_events"].as_array().expect("events");
    let count = |action: &str| {
        events
            .iter()
            .filter(|e| e["scenario"] == "disk-full" && e["action"] == action)
            .count()
    };
    assert_eq!(count("fill"), 2, "{stderr}");
    assert_eq!(count("free"), 2, "{stderr}");
    assert!(
        !data.path().join("chaos-disk-filler").exists(),
        "the filler is gone"
    );
    // The full disk was met: some purchases failed honestly and were replayed afterwards.
    assert!(
        report["load"]["by_status"]["503"].as_u64().unwrap_or(0) > 0,
        "no purchase met the full disk:\n{stderr}"
    );
    assert!(report["load"]["acknowledged"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn disk_full_refuses_a_data_dir_on_a_large_filesystem() {
    let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let stat = nix::sys::statvfs::statvfs(data.path()).expect("statvfs");
    let size = stat.blocks() * stat.fragment_size();
    if size <= 1 << 30 {
        eprintln!(
            "SKIPPED: {} is on a small filesystem",
            data.path().display()
        );
        return;
    }
    let output = chaos(&[
        "--scenarios",
        "disk-full",
        "--duration",
        "1s",
        "--data-dir",
        data.path().to_str().expect("utf-8 path"),
        "--out",
        data.path().join("out").to_str().expect("utf-8 path"),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("so it can never fill a real disk"),
        "{stderr}"
    );
    assert!(!data.path().join("chaos-disk-filler").exists());
    assert!(
        !data.path().join("up.json").exists(),
        "no suite was started"
    );
}

#[test]
fn a_database_file_taken_away_mid_run_is_refused_honestly_and_every_invariant_holds() {
    let out = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let output = chaos(&[
        "--scenarios",
        "db-file-gone",
        "--db-gone-for",
        "3s",
        "--duration",
        "10s",
        "--vus",
        "8",
        "--fault-seed",
        "42",
        "--keep",
        "--data-dir",
        data.path().to_str().expect("utf-8 path"),
        "--out",
        out.path().to_str().expect("utf-8 path"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ftshop chaos failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    let report: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("chaos.json")).expect("chaos.json written"),
    )
    .expect("chaos.json is JSON");
    assert_eq!(report["passed"], true, "{stdout}");
    let verdicts = report["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 4);
    assert!(verdicts.iter().all(|v| v["holds"] == true), "{stdout}");
    let events = report["scenario_events"].as_array().expect("events");
    for action in ["remove", "restore"] {
        assert!(
            events
                .iter()
                .any(|e| e["scenario"] == "db-file-gone" && e["action"] == action),
            "no {action}:\n{stderr}"
        );
    }
    assert!(data.path().join("store.db").exists(), "store.db is back");
    // The Store noticed: it refused requests while its file was away (it used to go on
    // selling into a file that had lost its name).
    let refused = ["store-1", "store-2"].iter().any(|member| {
        std::fs::read_to_string(data.path().join("logs").join(format!("{member}.log")))
            .unwrap_or_default()
            .contains("database file lost; request refused")
    });
    assert!(
        refused,
        "no Store request was refused while store.db was away"
    );
}
