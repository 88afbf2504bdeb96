//! `compose.yaml` checked against the real binary, without a container engine.
//!
//! Every ftshop container's command and environment must be accepted by `ftshop` as it is
//! built now (a renamed flag or env var fails here, not on a user's first `docker compose up`);
//! published ports follow DESIGN.md; every healthcheck URL answers 200 on a freshly started
//! service of that role; every `depends_on` target exists, has a healthcheck when the
//! condition needs one, and there is no cycle; every `${VAR}` the file needs is in `.env.example`.
//! The Kubernetes base gets the same command/env/probe checks (`deploy/k8s`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_norway::Value;

/// Published ports, as DESIGN.md and README.md give them.
const DESIGN_PORTS: &[(&str, u16)] = &[
    ("ecommerce", 8080),
    ("store-1", 8081),
    ("store-2", 8091),
    ("exchange-1", 8082),
    ("exchange-2", 8092),
    ("fidelity", 8083),
    ("prometheus", 9090),
    ("alertmanager", 9093),
    ("grafana", 3000),
    ("tempo", 3200),
];

/// Variables a service reads without clap: the tracing filter, and the OpenTelemetry SDK's
/// standard variables (shared/platform/src/telemetry.rs).
const NON_CLAP_ENV: &[&str] = &[
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SERVICE_NAME",
];

/// The health listener's port (`FTSHOP_HEALTH_PORT`) in the image, compose and Kubernetes: every
/// healthcheck and probe calls it, so a connection flood on the public port cannot fail them.
const HEALTH_PORT: u16 = 8099;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut value: Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    value.apply_merge().expect("YAML merge keys");
    value
}

fn compose() -> Value {
    load_yaml(&root().join("compose.yaml"))
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("compose.yaml has services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_owned(), v.clone()))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|seq| {
            seq.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => panic!("expected a string, found {other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `environment:` as a map, from either the mapping or the `KEY=value` list form.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_norway::to_string(other)
                        .expect("scalar")
                        .trim()
                        .to_owned(),
                };
                (k.as_str().expect("env name").to_owned(), value)
            })
            .collect(),
        Value::Sequence(_) => strings(&service["environment"])
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The ftshop containers: those that run `ftshop serve <role>` from this repository's image.
fn ftshop_services(compose: &Value) -> BTreeMap<String, Value> {
    services(compose)
        .into_iter()
        .filter(|(_, s)| strings(&s["command"]).first().map(String::as_str) == Some("serve"))
        .collect()
}

/// `ftshop <args> --help`, which fails on an unknown subcommand or flag before printing help.
fn help(args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ftshop"))
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .expect("run ftshop");
    assert!(
        out.status.success(),
        "`ftshop {} --help` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// The long flags and env vars a `--help` text documents.
fn documented(help: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for word in help.split(|c: char| c.is_whitespace() || c == ',') {
        if let Some(flag) = word.strip_prefix("--") {
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() {
                flags.insert(name);
            }
        }
    }
    for part in help.split("[env: ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        envs.insert(name);
    }
    (flags, envs)
}

/// Asserts that `ftshop` accepts `command` and documents every flag in it and every env var.
fn assert_accepted(who: &str, command: &[String], env: impl IntoIterator<Item = String>) {
    let text = help(command);
    let (flags, envs) = documented(&text);
    for arg in command {
        if let Some(flag) = arg.strip_prefix("--") {
            let name = flag.split('=').next().unwrap_or(flag);
            assert!(
                flags.contains(name),
                "{who}: `ftshop {}` has no flag --{name}",
                command.join(" ")
            );
        }
    }
    for key in env {
        assert!(
            envs.contains(&key) || NON_CLAP_ENV.contains(&key.as_str()),
            "{who}: `ftshop {}` reads no env var {key} (documented: {envs:?})",
            command.join(" ")
        );
    }
}

fn flag_value(command: &[String], flag: &str) -> Option<String> {
    command
        .iter()
        .position(|a| a == flag)
        .and_then(|i| command.get(i + 1).cloned())
}

#[test]
fn every_ftshop_command_and_env_var_is_accepted_by_the_binary() {
    let compose = compose();
    let ftshop = ftshop_services(&compose);
    assert_eq!(
        ftshop.keys().cloned().collect::<BTreeSet<_>>(),
        [
            "ecommerce",
            "store-1",
            "store-2",
            "exchange-1",
            "exchange-2",
            "fidelity"
        ]
        .map(String::from)
        .into(),
        "compose.yaml runs store x2, exchange x2, fidelity and ecommerce"
    );
    for (name, service) in &ftshop {
        assert_eq!(
            service["build"]["dockerfile"].as_str(),
            Some("deploy/Dockerfile"),
            "{name} builds the one image"
        );
        let command = strings(&service["command"]);
        assert_accepted(name, &command, environment(service).into_keys());
        assert_eq!(
            flag_value(&command, "--instance").as_deref(),
            Some(name.as_str()),
            "{name}: --instance names the replica in logs and metrics"
        );
    }
}

#[test]
fn the_image_environment_is_understood_by_every_role() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    let mut keys = Vec::new();
    let mut in_env = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        let rest = if let Some(rest) = line.strip_prefix("ENV ") {
            rest
        } else if in_env {
            line
        } else {
            continue;
        };
        in_env = rest.ends_with('\\');
        for pair in rest.trim_end_matches('\\').split_whitespace() {
            if let Some((key, _)) = pair.split_once('=') {
                keys.push(key.to_owned());
            }
        }
    }
    assert!(
        keys.contains(&"FTSHOP_HOST".to_owned()),
        "the image listens on every interface: {keys:?}"
    );
    for role in ["ecommerce", "store", "exchange", "fidelity"] {
        let command = ["serve", role].map(String::from);
        assert_accepted(&format!("image ({role})"), &command, keys.clone());
    }
}

/// `(host port, container port)` pairs from the short `ports:` syntax, with `${...}` hosts.
fn published(service: &Value) -> Vec<(u16, u16)> {
    strings(&service["ports"])
        .iter()
        .map(|spec| {
            let mut parts: Vec<&str> = spec.rsplitn(3, ':').collect();
            parts.reverse();
            let n = parts.len();
            assert!(n >= 2, "port spec {spec} publishes host:container");
            let port = |s: &str| {
                s.parse::<u16>()
                    .unwrap_or_else(|_| panic!("port in {spec}"))
            };
            (port(parts[n - 2]), port(parts[n - 1]))
        })
        .collect()
}

#[test]
fn published_ports_and_downstream_urls_match_the_design() {
    let compose = compose();
    let services = services(&compose);
    for (name, port) in DESIGN_PORTS {
        let service = services
            .get(*name)
            .unwrap_or_else(|| panic!("compose.yaml has no service {name}"));
        assert_eq!(
            published(service),
            vec![(*port, *port)],
            "{name} is published on {port}"
        );
        let command = strings(&service["command"]);
        if command.first().map(String::as_str) == Some("serve") {
            assert_eq!(
                flag_value(&command, "--port"),
                Some(port.to_string()),
                "{name} listens on {port}"
            );
        }
        for spec in strings(&service["ports"]) {
            assert!(
                spec.starts_with("${FTSHOP_BIND:-127.0.0.1}:"),
                "{name}: {spec} binds to loopback unless FTSHOP_BIND says otherwise"
            );
        }
    }

    let env = environment(&services["ecommerce"]);
    let expect = [
        (
            "FTSHOP_STORE_URLS",
            "http://store-1:8081,http://store-2:8091",
        ),
        (
            "FTSHOP_EXCHANGE_URLS",
            "http://exchange-1:8082,http://exchange-2:8092",
        ),
        ("FTSHOP_FIDELITY_URL", "http://fidelity:8083"),
    ];
    for (key, value) in expect {
        assert_eq!(env.get(key).map(String::as_str), Some(value), "{key}");
    }
}

#[test]
fn depends_on_targets_exist_are_healthchecked_and_acyclic() {
    let compose = compose();
    let services = services(&compose);
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, service) in &services {
        let deps: Vec<(String, Option<String>)> = match &service["depends_on"] {
            Value::Mapping(map) => map
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().expect("name").to_owned(),
                        v["condition"].as_str().map(str::to_owned),
                    )
                })
                .collect(),
            Value::Sequence(_) => strings(&service["depends_on"])
                .into_iter()
                .map(|d| (d, None))
                .collect(),
            _ => Vec::new(),
        };
        for (dep, condition) in &deps {
            let target = services
                .get(dep)
                .unwrap_or_else(|| panic!("{name} depends on {dep}, which is not a service"));
            if condition.as_deref() == Some("service_healthy") {
                assert!(
                    !target["healthcheck"]["test"].is_null(),
                    "{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                );
            }
        }
        graph.insert(name.clone(), deps.into_iter().map(|(d, _)| d).collect());
        assert!(
            service["restart"].as_str().is_some(),
            "{name} has a restart policy"
        );
        assert!(
            !service["healthcheck"]["test"].is_null(),
            "{name} has a healthcheck"
        );
    }
    // Every ftshop service waits for the database it migrates at start.
    for (name, service) in ftshop_services(&compose) {
        assert_eq!(
            service["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy"),
            "{name} waits for PostgreSQL"
        );
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(node) {
            return;
        }
        assert!(
            !path.iter().any(|p| p == node),
            "depends_on cycle: {} -> {node}",
            path.join(" -> ")
        );
        path.push(node.to_owned());
        for dep in graph.get(node).into_iter().flatten() {
            visit(dep, graph, path, done);
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let mut done = BTreeSet::new();
    for name in graph.keys() {
        visit(name, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn env_example_documents_every_variable_compose_reads() {
    let compose = std::fs::read_to_string(root().join("compose.yaml")).expect("compose.yaml");
    let example = std::fs::read_to_string(root().join(".env.example")).expect(".env.example");
    let documented: BTreeSet<String> = example
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    // `$${X}` is an escaped dollar for the container's shell, not a compose variable.
    let text = compose.replace("$${", "");
    let mut used = BTreeSet::new();
    for part in text.split("${").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        used.insert(name);
    }
    assert!(used.contains("FTSHOP_ADMIN_TOKEN"), "{used:?}");
    for name in &used {
        assert!(
            documented.contains(name),
            "compose.yaml reads ${{{name}}}, which .env.example does not document"
        );
    }
    // The example file must never carry a real secret.
    for secret in [
        "FTSHOP_ADMIN_TOKEN",
        "POSTGRES_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "SLACK_WEBHOOK_URL_FILE",
    ] {
        let line = example
            .lines()
            .find(|l| l.starts_with(&format!("{secret}=")))
            .unwrap_or_else(|| panic!(".env.example has no {secret}="));
        assert_eq!(line, format!("{secret}="), "{secret} is left empty");
    }
}

// ---------------------------------------------------------------------------------------------
// Healthcheck and probe URLs answer on a real process of each role.

/// A `ftshop serve` child killed on drop.
struct Served {
    child: Child,
    port: u16,
    health_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts one role on SQLite in a fresh directory, downstream URLs pointing nowhere.
fn serve(role: &str) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let health_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ftshop"))
        .args(["serve", role, "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("--health-port")
        .arg(health_port.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("FTSHOP_FAULTS", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ftshop serve");
    Served {
        child,
        port,
        health_port,
        _dir: dir,
    }
}

/// The status of `GET path` once the process answers (at most 30 s); with `until_ok`, polls
/// until it is a success, since readiness may follow the listener by a moment.
async fn status_of(port: u16, path: &str, until_ok: bool) -> u16 {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = http.get(&url).send().await
            && (!until_ok || resp.status().is_success() || Instant::now() >= deadline)
        {
            return resp.status().as_u16();
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(role, listen port, path)` of every compose healthcheck that targets an ftshop service.
fn compose_health_urls() -> Vec<(String, String, u16, String)> {
    ftshop_services(&compose())
        .into_iter()
        .map(|(name, service)| {
            let command = strings(&service["command"]);
            let role = command.get(1).cloned().expect("serve <role>");
            let port: u16 = environment(&service)
                .get("FTSHOP_HEALTH_PORT")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{name}: FTSHOP_HEALTH_PORT"));
            assert_eq!(port, HEALTH_PORT, "{name}: the health listener's port");
            let test = strings(&service["healthcheck"]["test"]);
            let url = test
                .iter()
                .find(|a| a.starts_with("http://"))
                .unwrap_or_else(|| panic!("{name}: healthcheck has no URL: {test:?}"));
            let rest = url
                .strip_prefix("http://127.0.0.1:")
                .unwrap_or_else(|| panic!("{name}: healthcheck must call the container itself"));
            let (p, path) = rest.split_at(rest.find('/').expect("path"));
            assert_eq!(
                p.parse::<u16>().ok(),
                Some(port),
                "{name}: the healthcheck calls the health listener"
            );
            (name, role, port, path.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_urls_answer_200_on_a_fresh_process_of_each_role() {
    let mut by_role: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, role, _, path) in compose_health_urls() {
        by_role.entry(role).or_default().insert(path);
    }
    // The Kubernetes probes too, so both deployments check routes that exist.
    for (role, paths) in k8s_probe_paths() {
        by_role.entry(role).or_default().extend(paths);
    }
    // Ecommerce is up and live without its downstreams; its readiness follows them, so only
    // existence (not 404) is asked of that one route.
    let servers: Vec<(String, Served)> = by_role
        .keys()
        .map(|role| (role.clone(), serve(role)))
        .collect();
    // On the health listener, which the probes call, and on the public port (kept there for
    // compatibility).
    for (role, served) in &servers {
        for path in &by_role[role] {
            for port in [served.health_port, served.port] {
                let only_exists = role == "ecommerce" && path == "/health/ready";
                let status = status_of(port, path, !only_exists).await;
                if only_exists {
                    assert_ne!(status, 404, "{role}: {path} is a route (port {port})");
                } else {
                    assert_eq!(status, 200, "{role}: GET {path} (port {port})");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes base: the same checks on the Deployments' containers.

/// Every document of the base and of the examples (the Secret's keys).
fn k8s_documents() -> Vec<Value> {
    let mut files: Vec<PathBuf> = ["deploy/k8s/base", "deploy/k8s/examples"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(root().join(dir)).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc).expect("YAML document");
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    docs
}

fn k8s_containers() -> Vec<(String, Value)> {
    k8s_documents()
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some("Deployment"))
        .flat_map(|d| {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            d["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |c| (name.clone(), c))
        })
        .collect()
}

/// `role -> probe paths` of every Deployment's ftshop container.
fn k8s_probe_paths() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, container) in k8s_containers() {
        let args = strings(&container["args"]);
        let Some(role) = args.get(1).cloned() else {
            continue;
        };
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            if let Some(path) = container[probe]["httpGet"]["path"].as_str() {
                assert_eq!(
                    container[probe]["httpGet"]["port"].as_str(),
                    Some("health"),
                    "{name}: {probe} calls the health listener"
                );
                out.entry(role.clone()).or_default().insert(path.to_owned());
            } else {
                assert!(
                    probe == "startupProbe",
                    "{name}: {probe} is an httpGet probe"
                );
            }
        }
    }
    out
}

#[test]
fn k8s_deployments_run_accepted_commands_with_the_compose_replicas() {
    let containers = k8s_containers();
    if !root().join("deploy/k8s/base").exists() {
        return;
    }
    assert!(!containers.is_empty(), "deploy/k8s/base has Deployments");
    let configmap_keys: BTreeSet<String> = k8s_documents()
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ConfigMap") | Some("Secret")))
        .flat_map(|d| {
            ["data", "stringData"]
                .into_iter()
                .flat_map(|field| {
                    d[field]
                        .as_mapping()
                        .map(|m| {
                            m.keys()
                                .filter_map(|k| k.as_str().map(str::to_owned))
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let health_port = k8s_documents()
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .and_then(|d| d["data"]["FTSHOP_HEALTH_PORT"].as_str().map(str::to_owned));
    assert_eq!(
        health_port,
        Some(HEALTH_PORT.to_string()),
        "the ConfigMap sets the health listener's port the probes call"
    );
    let mut roles = BTreeMap::new();
    for (name, container) in &containers {
        let args = strings(&container["args"]);
        assert_eq!(args.first().map(String::as_str), Some("serve"), "{name}");
        let env: Vec<String> = container["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str().map(str::to_owned))
            .collect();
        // envFrom a ConfigMap or Secret brings its keys in as variables.
        let env_from: Vec<String> = if container["envFrom"].is_sequence() {
            configmap_keys.iter().cloned().collect()
        } else {
            Vec::new()
        };
        assert_accepted(name, &args, env.into_iter().chain(env_from));
        let port = flag_value(&args, "--port").expect("--port");
        let declared: Vec<String> = container["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| p["containerPort"].as_u64().map(|n| n.to_string()))
            .collect();
        assert_eq!(
            declared,
            vec![port.clone(), HEALTH_PORT.to_string()],
            "{name}: containerPort (http, health)"
        );
        roles.insert(name.clone(), args[1].clone());
    }
    // Replicas as in compose: two Store and two Exchange pods, one of each other role.
    let replicas: BTreeMap<String, u64> = k8s_documents()
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Deployment"))
        .map(|d| {
            (
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                d["spec"]["replicas"].as_u64().unwrap_or(1),
            )
        })
        .collect();
    for (role, want) in [
        ("store", 2),
        ("exchange", 2),
        ("fidelity", 1),
        ("ecommerce", 1),
    ] {
        let total: u64 = roles
            .iter()
            .filter(|(_, r)| r.as_str() == role)
            .map(|(name, _)| replicas.get(name).copied().unwrap_or(1))
            .sum();
        assert_eq!(total, want, "{role} replicas");
    }
}

// ---------------------------------------------------------------------------------------------
// Files compose mounts, and the observability config that names compose's services.

/// `(source, target)` of every `./...` bind mount of `service`.
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .into_iter()
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            let source = parts.next().unwrap_or_default().to_owned();
            let target = parts.next().unwrap_or_default().to_owned();
            (source, target)
        })
        .collect()
}

#[test]
fn bind_mounted_files_exist() {
    // A missing source would be created by Docker as an empty directory, and Prometheus,
    // Alertmanager or Grafana would start without their configuration.
    for (name, service) in services(&compose()) {
        for (source, _) in bind_mounts(&service) {
            assert!(
                root().join(&source).exists(),
                "{name} mounts {source}, which does not exist"
            );
        }
    }
}

#[test]
fn prometheus_scrapes_every_ftshop_container_by_its_compose_name() {
    let compose = compose();
    let services = services(&compose);
    let prometheus = load_yaml(&root().join("prometheus/prometheus.yml"));
    let mut targets = BTreeSet::new();
    for job in prometheus["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        for config in job["static_configs"].as_sequence().into_iter().flatten() {
            targets.extend(strings(&config["targets"]));
        }
    }
    for (name, service) in ftshop_services(&compose) {
        let port = flag_value(&strings(&service["command"]), "--port").expect("--port");
        assert!(
            targets.contains(&format!("{name}:{port}")),
            "prometheus.yml does not scrape {name}:{port} (targets: {targets:?})"
        );
    }
    for target in &targets {
        let host = target.split(':').next().unwrap_or_default();
        assert!(
            host == "localhost" || services.contains_key(host),
            "prometheus.yml scrapes {target}, which is no compose service"
        );
    }
    let alerting = &prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"];
    assert_eq!(strings(alerting), vec!["alertmanager:9093".to_owned()]);
}

#[test]
fn alertmanager_and_grafana_read_what_compose_provides() {
    let services = services(&compose());
    // Where Alertmanager reads the webhook: the_slack_webhook_is_a_file_never_an_environment_variable.

    let grafana = &services["grafana"];
    let mounts = bind_mounts(grafana);
    let dashboards_target = mounts
        .iter()
        .find(|(s, _)| s == "./grafana/dashboards")
        .map(|(_, t)| t.clone())
        .expect("grafana mounts ./grafana/dashboards");
    let provisioning = root().join("grafana/provisioning/dashboards");
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(&provisioning).expect("dashboard providers") {
        let provider = load_yaml(&entry.expect("entry").path());
        for p in provider["providers"].as_sequence().into_iter().flatten() {
            paths.extend(p["options"]["path"].as_str().map(str::to_owned));
        }
    }
    assert!(
        paths.contains(&dashboards_target),
        "a dashboard provider reads {dashboards_target} (providers read {paths:?})"
    );
    for dir in ["./grafana/provisioning", "./grafana/dashboards"] {
        assert!(mounts.iter().any(|(s, _)| s == dir), "grafana mounts {dir}");
    }
}

#[test]
fn traces_reach_tempo_and_grafana_reads_them() {
    // What each part says about the others: the ftshop containers export to Tempo's OTLP/HTTP
    // receiver, compose mounts the config Tempo reads, Grafana's Tempo datasource is Tempo's
    // query port, and Prometheus exemplars open traces in that datasource.
    let services = services(&compose());
    let tempo_config = load_yaml(&root().join("deploy/tempo/tempo.yaml"));
    let receiver =
        tempo_config["distributor"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
            .as_str()
            .expect("tempo.yaml has an OTLP/HTTP receiver");
    let receiver_port = receiver.rsplit(':').next().expect("a port");
    let query_port = tempo_config["server"]["http_listen_port"]
        .as_u64()
        .expect("tempo.yaml sets server.http_listen_port");
    let tempo = &services["tempo"];
    let command = strings(&tempo["command"]).join(" ");
    let config_target = command
        .split("-config.file=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("tempo runs with -config.file");
    assert!(
        bind_mounts(tempo)
            .iter()
            .any(|(s, t)| s == "./deploy/tempo/tempo.yaml" && t == config_target),
        "compose mounts deploy/tempo/tempo.yaml at {config_target}"
    );
    for (name, service) in ftshop_services(&compose()) {
        let env = environment(&service);
        let endpoint = env
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or_else(|| panic!("{name} sets no OTEL_EXPORTER_OTLP_ENDPOINT"));
        assert_eq!(
            default_of(endpoint),
            format!("http://tempo:{receiver_port}"),
            "{name} exports where Tempo receives"
        );
    }
    let datasources = load_yaml(&root().join("grafana/provisioning/datasources/ftshop.yml"));
    let list = datasources["datasources"]
        .as_sequence()
        .expect("datasources");
    let tempo_ds = list
        .iter()
        .find(|d| d["type"].as_str() == Some("tempo"))
        .expect("a Tempo datasource");
    assert_eq!(
        tempo_ds["url"].as_str(),
        Some(format!("http://tempo:{query_port}").as_str())
    );
    let uid = tempo_ds["uid"].as_str().expect("uid");
    let prometheus = list
        .iter()
        .find(|d| d["type"].as_str() == Some("prometheus"))
        .expect("a Prometheus datasource");
    assert!(
        prometheus["jsonData"]["exemplarTraceIdDestinations"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|d| d["datasourceUid"].as_str() == Some(uid)),
        "exemplars lead to the Tempo datasource"
    );
}

// ---------------------------------------------------------------------------------------------
// Without a registry: compose.offline.yaml and deploy/Dockerfile's base images
// (scripts/compose-proof.sh, docs/deploy.md "Offline").

/// The default of a `${VAR:-default}` reference, or the value itself.
fn default_of(value: &str) -> &str {
    value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .and_then(|v| v.split_once(":-"))
        .map_or(value, |(_, default)| default)
}

#[test]
fn the_offline_override_runs_every_service_from_a_local_image_or_not_at_all() {
    // Every service compose.yaml runs must come from an image built on this machine
    // (`ftshop-local/...`, never an upstream name) with pulls refused, or be switched off by a
    // profile; a service added to compose.yaml without its offline image fails here.
    let upstream = services(&compose());
    let offline = services(&load_yaml(&root().join("compose.offline.yaml")));
    for name in offline.keys() {
        assert!(
            upstream.contains_key(name),
            "compose.offline.yaml names {name}, which compose.yaml does not run"
        );
    }
    for name in upstream.keys() {
        let Some(local) = offline.get(name) else {
            panic!("compose.offline.yaml says nothing about {name}: it would be pulled");
        };
        if !strings(&local["profiles"]).is_empty() {
            assert!(
                local.get("image").is_none(),
                "{name} is switched off by a profile and names no image"
            );
            continue;
        }
        let image = local["image"].as_str().unwrap_or_default();
        assert!(
            default_of(image).starts_with("ftshop-local/"),
            "{name} runs {image:?} offline: expected an ftshop-local/ image"
        );
        assert_eq!(
            local["pull_policy"].as_str(),
            Some("never"),
            "{name}: a missing local image must fail, not be pulled"
        );
    }
}

#[test]
fn dockerfile_base_images_are_build_arguments_defaulting_to_the_official_images() {
    // A build without a registry passes local bases (scripts/compose-proof.sh); a normal build
    // gets the official images, as before.
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    let mut args = BTreeMap::new();
    let mut stages = BTreeSet::new();
    for line in dockerfile.lines().map(str::trim) {
        if let Some((key, value)) = line.strip_prefix("ARG ").and_then(|a| a.split_once('=')) {
            args.insert(key.to_owned(), value.to_owned());
        }
        let Some(from) = line.strip_prefix("FROM ") else {
            continue;
        };
        let words: Vec<&str> = from.split_whitespace().collect();
        let base = words[0];
        let arg = base.strip_prefix("${").and_then(|b| b.strip_suffix('}'));
        assert!(
            stages.contains(base) || arg.is_some_and(|a| args.contains_key(a)),
            "FROM {base}: neither an earlier stage nor a build argument declared before it"
        );
        if let [_, as_kw, stage] = words.as_slice() {
            assert!(as_kw.eq_ignore_ascii_case("as"), "FROM {from}");
            stages.insert((*stage).to_owned());
        }
    }
    assert_eq!(
        args.get("BUILDER_IMAGE").map(String::as_str),
        Some("rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE}")
    );
    assert_eq!(
        args.get("RUNTIME_IMAGE").map(String::as_str),
        Some("debian:${DEBIAN_RELEASE}-slim")
    );
}

// ---------------------------------------------------------------------------------------------
// The image's build context.

/// Whether `.dockerignore` keeps `path` (relative, `/`-separated) out of the build context.
/// Covers the pattern forms the file uses: `dir/`, `name`, `**/*.ext`, `.env.*`, `!exception`.
fn docker_ignored(patterns: &[String], path: &str) -> bool {
    let matches = |pattern: &str| {
        let pattern = pattern.trim_end_matches('/');
        let name = path.rsplit('/').next().unwrap_or(path);
        if let Some(suffix) = pattern.strip_prefix("**/*") {
            return name.ends_with(suffix);
        }
        if let Some(prefix) = pattern.strip_suffix('*') {
            return !pattern.contains('/') && path.starts_with(prefix);
        }
        path == pattern || path.starts_with(&format!("{pattern}/"))
    };
    let mut ignored = false;
    for pattern in patterns {
        match pattern.strip_prefix('!') {
            Some(exception) if matches(exception) => ignored = false,
            Some(_) => {}
            None if matches(pattern) => ignored = true,
            None => {}
        }
    }
    ignored
}

/// Every `.rs` file of the workspace outside target/.
fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_build_context_holds_every_file_the_build_reads() {
    let patterns: Vec<String> = std::fs::read_to_string(root().join(".dockerignore"))
        .expect(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(docker_ignored(&patterns, "target/debug/ftshop"));
    assert!(docker_ignored(&patterns, ".env"));
    assert!(!docker_ignored(&patterns, ".env.example"));

    let mut sources = Vec::new();
    for dir in ["src", "services", "shared"] {
        rust_sources(&root().join(dir), &mut sources);
    }
    let mut checked = 0;
    for file in &sources {
        let rel = |p: &Path| {
            p.strip_prefix(root())
                .expect("inside the workspace")
                .to_string_lossy()
                .replace('\\', "/")
        };
        if docker_ignored(&patterns, &rel(file)) {
            continue; // not compiled into the image either
        }
        let text = std::fs::read_to_string(file).expect("read source");
        for (needle, from_crate_root) in [
            ("include_str!(\"", false),
            ("include_bytes!(\"", false),
            ("migrate!(\"", true),
        ] {
            for part in text.split(needle).skip(1) {
                let literal = part.split('"').next().unwrap_or_default();
                let base = if from_crate_root {
                    file.ancestors()
                        .find(|d| d.join("Cargo.toml").exists())
                        .expect("crate root")
                        .to_owned()
                } else {
                    file.parent().expect("parent").to_owned()
                };
                let target = base.join(literal);
                let target = target.canonicalize().unwrap_or_else(|_| {
                    panic!("{} reads {literal}, which is missing", file.display())
                });
                let target_rel = rel(&target);
                assert!(
                    !docker_ignored(&patterns, &target_rel),
                    "{} reads {target_rel}, which .dockerignore keeps out of the image build",
                    rel(file)
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 3,
        "found the catalog and the migrations ({checked} files read at compile time)"
    );
}

// ---------------------------------------------------------------------------------------------
// Operations defects found by reading the files (issue 18).

#[test]
fn every_container_rotates_its_logs() {
    // Docker's json-file driver keeps a container's whole log by default: a chatty service
    // under a long load fills the disk. Every service caps it.
    for (name, service) in services(&compose()) {
        let logging = &service["logging"];
        assert_eq!(
            logging["driver"].as_str(),
            Some("json-file"),
            "{name}: logging.driver json-file (with rotation options)"
        );
        for option in ["max-size", "max-file"] {
            assert!(
                logging["options"][option]
                    .as_str()
                    .is_some_and(|v| !v.is_empty()),
                "{name}: logging.options.{option} caps the log"
            );
        }
    }
}

#[test]
fn volumes_are_named_never_anonymous() {
    // An image's VOLUME, or a compose volume with no name, makes a new anonymous volume per
    // container that nothing names or removes: they pile up across `up`s.
    let compose = compose();
    let declared: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for (name, service) in services(&compose) {
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().unwrap_or_default();
            assert!(
                volume.contains(':') && (source.starts_with("./") || declared.contains(source)),
                "{name}: volume {volume:?} is neither a bind mount nor a declared named volume"
            );
        }
    }
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    for line in dockerfile.lines().map(str::trim) {
        assert!(
            !line.to_ascii_uppercase().starts_with("VOLUME"),
            "deploy/Dockerfile: {line:?} gives every ftshop container an anonymous volume"
        );
        // A `# syntax=` directive makes BuildKit pull a frontend image from a registry first.
        assert!(
            !line.replace(' ', "").starts_with("#syntax="),
            "deploy/Dockerfile: {line:?} forces a frontend pull"
        );
    }
}

#[test]
fn postgres_healthcheck_goes_over_tcp() {
    // During the image's first-start initialisation the server listens on its Unix socket
    // only: a socket `pg_isready` passes while the services, which connect over TCP, fail.
    let services = services(&compose());
    let test = strings(&services["postgres"]["healthcheck"]["test"]).join(" ");
    assert!(
        test.contains("pg_isready")
            && (test.contains("-h 127.0.0.1") || test.contains("--host=127.0.0.1")),
        "postgres healthcheck must use TCP (pg_isready -h 127.0.0.1): {test}"
    );
}

#[test]
fn the_slack_webhook_is_a_file_never_an_environment_variable() {
    // `docker inspect` shows a container's environment: the webhook is a secret file instead,
    // and without one Alertmanager runs the null-receiver config (no retries to a dead address).
    let compose = compose();
    for (name, service) in services(&compose) {
        for (key, value) in environment(&service) {
            assert!(
                !key.contains("WEBHOOK") && !value.contains("WEBHOOK"),
                "{name}: environment {key} carries the webhook"
            );
        }
    }
    let alertmanager_yml = load_yaml(&root().join("prometheus/alertmanager.yml"));
    let file = alertmanager_yml["global"]["slack_api_url_file"]
        .as_str()
        .expect("alertmanager.yml reads the webhook from a file");
    let secret = file
        .strip_prefix("/run/secrets/")
        .expect("the webhook file is a compose secret");
    let services = services(&compose);
    let alertmanager = &services["alertmanager"];
    assert!(
        strings(&alertmanager["secrets"]).contains(&secret.to_owned()),
        "alertmanager mounts the secret {secret}"
    );
    assert!(
        compose["secrets"][secret]["file"]
            .as_str()
            .is_some_and(|f| f.contains("SLACK_WEBHOOK_URL_FILE")),
        "the secret's file is SLACK_WEBHOOK_URL_FILE"
    );
    let command = strings(&alertmanager["command"]).join(" ");
    assert!(
        command.contains(&format!("-s {file}")) && command.contains("alertmanager-null.yml"),
        "without a webhook, alertmanager runs alertmanager-null.yml: {command}"
    );
    let null = load_yaml(&root().join("prometheus/alertmanager-null.yml"));
    for receiver in null["receivers"].as_sequence().expect("receivers") {
        let keys: Vec<_> = receiver.as_mapping().expect("receiver").keys().collect();
        assert_eq!(
            keys.len(),
            1,
            "a null receiver has a name only: {receiver:?}"
        );
    }
}
