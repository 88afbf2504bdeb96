//! What the page can do: signal a process, reset or force open a breaker, change fault rules,
//! apply a preset, buy one. Everything is checked here before anything is sent, so a refused
//! action (bad input) changes nothing; what is sent goes to the admin API with the admin token.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ftshop_platform::Problem;
use ftshop_platform::extract::{Json, Path, validate_id};
use ftshop_platform::faults::{FaultProfile, FaultRule, RuleStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Room;

/// One preset of the faults panel.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Preset {
    pub name: &'static str,
    pub label: &'static str,
    pub description: &'static str,
}

/// The presets: the two profiles and each scenario of `scripts/`.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "off",
        label: "Faults off",
        description: "Every rule removed on every process (scripts/faults-off.sh).",
    },
    Preset {
        name: "default",
        label: "Exercise default",
        description: "The exercise's four faults: Store /product omission, Exchange crash, \
                      Store /sell error, Fidelity /bonus latency (scripts/faults-default.sh).",
    },
    Preset {
        name: "kill-replica",
        label: "Kill a replica",
        description: "SIGKILL store-2; the supervisor starts it again (scripts/kill-replica.sh).",
    },
    Preset {
        name: "exchange-down",
        label: "Exchange down",
        description: "Both Exchange replicas frozen (SIGSTOP) for the given seconds, then resumed \
                      (scripts/exchange-down.sh).",
    },
    Preset {
        name: "slow-fidelity",
        label: "Slow Fidelity",
        description: "POST /bonus 2 s slower for the given seconds, then the rule removes itself \
                      (scripts/slow-fidelity.sh).",
    },
    Preset {
        name: "dependency-cut",
        label: "Dependency cut",
        description: "Redis or PostgreSQL unreachable for the given seconds, through \
                      scripts/tcp-proxy.py (scripts/dependency-unreachable.sh): needs the suite \
                      started behind that proxy.",
    },
];

/// Longest scenario a preset runs.
const MAX_PRESET_SECONDS: u64 = 600;

/// `POST /api/processes/{name}/{action}`: `kill` (SIGKILL), `restart` (SIGTERM: drains, then
/// the supervisor starts it again) or `resume` (SIGCONT a frozen process).
pub async fn process(
    State(room): State<Arc<Room>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, Problem> {
    use nix::sys::signal::Signal;
    let signal = match action.as_str() {
        "kill" => Signal::SIGKILL,
        "restart" => Signal::SIGTERM,
        "resume" => Signal::SIGCONT,
        other => {
            return Err(Problem::not_found(format!(
                "no process action `{other}` (kill, restart, resume)"
            )));
        }
    };
    if room.member(&name).is_none() {
        return Err(Problem::not_found(format!("no process named `{name}`")));
    }
    let Some(pid) = room.topology.pid(&name) else {
        return Err(Problem::conflict(
            "not-running",
            format!("{name} is not running now (the supervisor is restarting it)"),
        ));
    };
    send_signal(pid, signal)?;
    if signal == Signal::SIGCONT {
        thaw(&room, &name);
    }
    eprintln!("[control] {action} {name} (pid {pid})");
    Ok(Json(json!({ "process": name, "pid": pid, "signal": signal.as_str() })).into_response())
}

fn send_signal(pid: u32, signal: nix::sys::signal::Signal) -> Result<(), Problem> {
    let raw = i32::try_from(pid).map_err(Problem::internal)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal)
        .map_err(|e| Problem::internal(format!("cannot signal pid {pid}: {e}")))
}

/// `POST /api/breakers/{name}/{reset|force-open}`.
pub async fn breaker(
    State(room): State<Arc<Room>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, Problem> {
    if !matches!(action.as_str(), "reset" | "force-open") {
        return Err(Problem::not_found(format!(
            "no breaker action `{action}` (reset, force-open)"
        )));
    }
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(Problem::validation(
            "a breaker name is up to 64 letters, digits, `.`, `-` or `_` (e.g. `store-1.sell`)",
        ));
    }
    let ecommerce = ecommerce(&room)?;
    forward(
        room.http
            .post(format!("{ecommerce}/admin/breakers/{name}/{action}"))
            .bearer_auth(&room.admin_token),
    )
    .await
}

/// `POST /api/breakers/reset`: closes every breaker.
pub async fn reset_breakers(State(room): State<Arc<Room>>) -> Result<Response, Problem> {
    let ecommerce = ecommerce(&room)?;
    forward(
        room.http
            .post(format!("{ecommerce}/admin/breakers/reset"))
            .bearer_auth(&room.admin_token),
    )
    .await
}

fn ecommerce(room: &Room) -> Result<String, Problem> {
    room.url_of("ecommerce")
        .map(str::to_owned)
        .ok_or_else(|| Problem::unavailable("the suite has no ecommerce process"))
}

/// Sends `request` and answers with its status and JSON body (a problem passes through); an
/// unreachable service is 502 problem+json.
async fn forward(request: reqwest::RequestBuilder) -> Result<Response, Problem> {
    let (status, body) = send(request).await?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    if status.is_success() {
        Ok((status, Json(body)).into_response())
    } else {
        let detail = body["detail"].as_str().unwrap_or("no detail").to_owned();
        let kind = body["type"]
            .as_str()
            .and_then(|t| t.rsplit('/').next())
            .unwrap_or("upstream-error")
            .to_owned();
        Err(Problem::new(status, &kind, detail))
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<(u16, Value), Problem> {
    let response = request.send().await.map_err(|e| {
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "service-unreachable",
            format!("the service did not answer: {e}"),
        )
    })?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// `POST /api/faults/rules`: adds one rule to every process of `rule.service` (or only
/// `rule.instance`), replacing a rule with the same route, method, kind and instance (what
/// `ftshop fault set` does).
pub async fn add_rule(
    State(room): State<Arc<Room>>,
    Json(rule): Json<FaultRule>,
) -> Result<Response, Problem> {
    rule.validate().map_err(Problem::validation)?;
    let Some(service) = rule.service.clone() else {
        return Err(Problem::validation(
            "`service` is required (store, exchange, fidelity, ecommerce)",
        ));
    };
    let targets: Vec<_> = room
        .members
        .iter()
        .filter(|m| m.service == service)
        .filter(|m| rule.instance.as_ref().is_none_or(|i| *i == m.name))
        .cloned()
        .collect();
    if targets.is_empty() {
        return Err(Problem::validation(format!(
            "no process of service `{service}`{} in this suite",
            rule.instance
                .as_deref()
                .map(|i| format!(" named `{i}`"))
                .unwrap_or_default()
        )));
    }
    let mut results = Vec::new();
    for target in &targets {
        let current = super::feed::admin_get(&room, format!("{}/admin/faults", target.url))
            .await
            .map_err(|e| {
                Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "service-unreachable",
                    format!("{}: {e}", target.name),
                )
            })?;
        let mut rules: Vec<FaultRule> = current["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| serde_json::from_value::<RuleStatus>(r.clone()).ok())
            .map(|r| r.rule)
            .filter(|r| !r.same_target(&rule))
            .collect();
        rules.push(rule.clone());
        put_rules(&room, &target.url, &rules).await?;
        results.push(target.name.clone());
    }
    eprintln!(
        "[control] fault rule {} {} p={} on {}",
        rule.kind,
        rule.route,
        rule.probability,
        results.join(", ")
    );
    Ok(Json(json!({ "applied_to": results, "rule": rule })).into_response())
}

async fn put_rules(room: &Room, url: &str, rules: &[FaultRule]) -> Result<(), Problem> {
    forward(
        room.http
            .put(format!("{url}/admin/faults"))
            .bearer_auth(&room.admin_token)
            .json(&json!({ "rules": rules })),
    )
    .await
    .map(|_| ())
}

/// `PUT /api/faults/{process}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleList {
    rules: Vec<FaultRule>,
}

/// `PUT /api/faults/{process}`: the process's whole rule list (change or remove rules).
pub async fn replace_rules(
    State(room): State<Arc<Room>>,
    Path(process): Path<String>,
    Json(list): Json<RuleList>,
) -> Result<Response, Problem> {
    let Some(target) = room.member(&process).cloned() else {
        return Err(Problem::not_found(format!("no process named `{process}`")));
    };
    if list.rules.len() > 64 {
        return Err(Problem::validation("at most 64 rules per process"));
    }
    for (i, rule) in list.rules.iter().enumerate() {
        rule.validate()
            .map_err(|e| Problem::validation(format!("rule {}: {e}", i + 1)))?;
    }
    put_rules(&room, &target.url, &list.rules).await?;
    eprintln!("[control] {} rule(s) now on {process}", list.rules.len());
    Ok(Json(json!({ "process": process, "rules": list.rules.len() })).into_response())
}

/// `POST /api/faults/preset` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetRequest {
    name: String,
    /// How long a timed scenario lasts (exchange-down, slow-fidelity, dependency-cut).
    #[serde(default)]
    seconds: Option<u64>,
}

/// `POST /api/faults/preset`.
pub async fn preset(
    State(room): State<Arc<Room>>,
    Json(request): Json<PresetRequest>,
) -> Result<Response, Problem> {
    if !PRESETS.iter().any(|p| p.name == request.name) {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        return Err(Problem::validation(format!(
            "no preset `{}` ({})",
            request.name,
            names.join(", ")
        )));
    }
    let seconds = request.seconds.unwrap_or(30);
    if !(1..=MAX_PRESET_SECONDS).contains(&seconds) {
        return Err(Problem::validation(format!(
            "seconds must be within 1..={MAX_PRESET_SECONDS}"
        )));
    }
    eprintln!("[control] preset {} ({seconds} s)", request.name);
    let detail = match request.name.as_str() {
        "off" => {
            for m in &room.members {
                forward(
                    room.http
                        .post(format!("{}/admin/faults/reset", m.url))
                        .bearer_auth(&room.admin_token),
                )
                .await?;
            }
            "every rule removed".to_owned()
        }
        "default" => {
            let profile = FaultProfile::load("default").map_err(Problem::internal)?;
            for m in &room.members {
                put_rules(&room, &m.url, &profile.rules).await?;
            }
            format!("{} rules sent to every process", profile.rules.len())
        }
        "kill-replica" => {
            let name = if room.member("store-2").is_some() {
                "store-2"
            } else {
                "store-1"
            };
            let pid = room.topology.pid(name).ok_or_else(|| {
                Problem::conflict("not-running", format!("{name} is not running now"))
            })?;
            send_signal(pid, nix::sys::signal::Signal::SIGKILL)?;
            format!("SIGKILL {name} (pid {pid})")
        }
        "exchange-down" => freeze_exchanges(&room, seconds)?,
        "slow-fidelity" => {
            let rule = FaultRule {
                service: Some("fidelity".to_owned()),
                instance: None,
                route: "/bonus".to_owned(),
                method: Some("POST".to_owned()),
                kind: ftshop_platform::faults::FaultKind::Latency,
                probability: 1.0,
                window_ms: seconds * 1000,
                latency_ms: 2000,
                ttl_secs: Some(seconds),
            };
            add_rule(State(room.clone()), Json(rule)).await?;
            format!("POST /bonus +2 s for {seconds} s")
        }
        "dependency-cut" => cut_dependency(&room, seconds)?,
        _ => return Err(Problem::internal("preset list out of step")),
    };
    Ok(Json(json!({ "preset": request.name, "detail": detail })).into_response())
}

fn freeze_exchanges(room: &Arc<Room>, seconds: u64) -> Result<String, Problem> {
    let mut frozen = room.frozen.lock().unwrap_or_else(PoisonError::into_inner);
    if !frozen.is_empty() {
        return Err(Problem::conflict(
            "already-frozen",
            "a freeze is running; resume those processes first",
        ));
    }
    let targets: Vec<(String, u32)> = room
        .members
        .iter()
        .filter(|m| m.service == "exchange")
        .filter_map(|m| Some((m.name.clone(), room.topology.pid(&m.name)?)))
        .collect();
    if targets.is_empty() {
        return Err(Problem::conflict(
            "not-running",
            "no Exchange process is running now",
        ));
    }
    for (name, pid) in &targets {
        send_signal(*pid, nix::sys::signal::Signal::SIGSTOP)?;
        frozen.push((name.clone(), *pid));
    }
    drop(frozen);
    for (name, _) in &targets {
        room.topology.set_frozen(name, true);
    }
    let names: Vec<String> = targets.iter().map(|(n, _)| n.clone()).collect();
    let room = room.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
            () = room.stop.cancelled() => {}
        }
        thaw_all(&room);
    });
    Ok(format!("{} frozen for {seconds} s", names.join(" and ")))
}

/// Continues `name` if a preset froze it.
fn thaw(room: &Room, name: &str) {
    let mut frozen = room.frozen.lock().unwrap_or_else(PoisonError::into_inner);
    frozen.retain(|(n, _)| n != name);
    drop(frozen);
    room.topology.set_frozen(name, false);
}

/// Continues every process a preset froze (at its end, and when the suite stops).
pub fn thaw_all(room: &Room) {
    let frozen = std::mem::take(&mut *room.frozen.lock().unwrap_or_else(PoisonError::into_inner));
    for (name, pid) in frozen {
        // Only the process that was frozen: a restarted one has another pid.
        if room.topology.pid(&name) == Some(pid) {
            let _ = send_signal(pid, nix::sys::signal::Signal::SIGCONT);
        }
        room.topology.set_frozen(&name, false);
        eprintln!("[control] {name} resumed");
    }
}

/// Where scripts/tcp-proxy.py writes its pid (scripts/dependency-unreachable.sh's defaults).
const PROXY_PIDFILES: [(&str, &str); 2] = [
    ("redis", "/tmp/ftshop-redis-proxy.pid"),
    ("postgres", "/tmp/ftshop-postgres-proxy.pid"),
];

fn cut_dependency(room: &Arc<Room>, seconds: u64) -> Result<String, Problem> {
    let proxies: Vec<(&str, i32)> = PROXY_PIDFILES
        .iter()
        .filter_map(|(what, file)| {
            let pid = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
            // Alive (signal 0) and ours to signal.
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
            Some((*what, pid))
        })
        .collect();
    if proxies.is_empty() {
        return Err(Problem::conflict(
            "no-proxy",
            "no dependency proxy is running: start the suite behind scripts/tcp-proxy.py as \
             scripts/dependency-unreachable.sh explains (pidfile /tmp/ftshop-redis-proxy.pid or \
             /tmp/ftshop-postgres-proxy.pid)",
        ));
    }
    for (_, pid) in &proxies {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGUSR1,
        );
    }
    let names: Vec<&str> = proxies.iter().map(|(w, _)| *w).collect();
    let detail = format!("{} cut for {seconds} s", names.join(" and "));
    let room = room.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
            () = room.stop.cancelled() => {}
        }
        for (_, pid) in proxies {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGUSR2,
            );
        }
    });
    Ok(detail)
}

/// `POST /api/buy` body: the "buy one" form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuyOne {
    product: String,
    user: String,
    #[serde(default = "yes")]
    ft: bool,
}

fn yes() -> bool {
    true
}

/// `POST /api/buy`: one purchase through ecommerce; answers its status, the answer, and its
/// story (from ecommerce's ring).
pub async fn buy(
    State(room): State<Arc<Room>>,
    Json(request): Json<BuyOne>,
) -> Result<Response, Problem> {
    validate_id("product", &request.product)?;
    validate_id("user", &request.user)?;
    let ecommerce = ecommerce(&room)?;
    let sent_at = ftshop_platform::db::now_millis();
    let key = format!("control-{}", uuid::Uuid::new_v4());
    let sent = send(
        room.http
            .post(format!("{ecommerce}/buy"))
            .header("Idempotency-Key", &key)
            .timeout(Duration::from_secs(10))
            .json(&json!({ "product": request.product, "user": request.user, "ft": request.ft })),
    )
    .await;
    let unsettled = |status| crate::load::live::UnsettledPurchase {
        key: key.clone(),
        user: request.user.clone(),
        product: request.product.clone(),
        ft: request.ft,
        status,
    };
    let (status, answer) = match sent {
        Ok(answer) => answer,
        Err(problem) => {
            // No answer: it may have sold; the invariants replay it.
            room.ledger.unsettled(unsettled(None));
            return Err(problem);
        }
    };
    // A 5xx may have sold (but not a refused deferral: it says nothing was sold).
    let refused = answer["type"]
        .as_str()
        .is_some_and(|t| t.ends_with("/deferral-refused"));
    if status >= 500 && !refused {
        room.ledger.unsettled(unsettled(Some(status)));
    }
    let order_id = answer["order_id"].as_str().map(str::to_owned);
    if let (200 | 202, Some(id)) = (status, &order_id) {
        room.ledger.acknowledged(super::checks::Acked {
            order_id: id.clone(),
            user: request.user.clone(),
            product: request.product.clone(),
            status,
        });
    }
    let story = match &order_id {
        Some(id) => super::feed::admin_get(&room, format!("{ecommerce}/admin/purchases/{id}"))
            .await
            .ok(),
        None => super::feed::admin_get(&room, format!("{ecommerce}/admin/purchases?limit=50"))
            .await
            .ok()
            .and_then(|list| {
                list.as_array()?
                    .iter()
                    .find(|s| {
                        s["user"] == request.user.as_str()
                            && s["product"] == request.product.as_str()
                            && s["at_unix_ms"].as_i64().unwrap_or(0) >= sent_at - 1000
                    })
                    .cloned()
            }),
    };
    eprintln!(
        "[control] buy product {} for {} ft={}: {status}",
        request.product, request.user, request.ft
    );
    Ok(Json(json!({ "status": status, "answer": answer, "story": story })).into_response())
}

/// `GET /api/purchases/{order_id}`: one purchase's story.
pub async fn story(
    State(room): State<Arc<Room>>,
    Path(order_id): Path<String>,
) -> Result<Response, Problem> {
    validate_id("order_id", &order_id)?;
    let ecommerce = ecommerce(&room)?;
    forward(
        room.http
            .get(format!("{ecommerce}/admin/purchases/{order_id}"))
            .bearer_auth(&room.admin_token),
    )
    .await
}
