//! The live snapshot: gathered once a second while at least one page listens (and on demand by
//! `GET /api/state`), pushed as server-sent events. A supervisor change is pushed at once with
//! the last gathered service data, so a killed process shows within the same second.
//!
//! Each second: ecommerce's breakers, and the `/admin/faults` of half of the processes in turn
//! (so each process's rules, and its liveness, every 2 s); the breakers' transitions when a
//! breaker changed; the recent purchases, and the backlog with the pending bonuses, every 2 s
//! each (alternating); the products every 10 s; all on loopback: about 5 small requests a
//! second, none while no page is open. A killed process still shows at once (the supervisor
//! says so, not a poll). Measured: +1.25 to +1.7 % of a core for the
//! whole suite (debug build), see README.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::Room;

/// The stream every open page listens to.
pub struct Feed {
    tx: watch::Sender<Arc<str>>,
    /// The last gathered service data.
    deps: Mutex<(Option<Instant>, Arc<Deps>)>,
    /// A new listener: gather now instead of at the next tick.
    wake: Notify,
    /// Gatherings so far.
    ticks: std::sync::atomic::AtomicU64,
    /// The breakers' names, states and starts when their transitions were last read.
    breaker_signature: Mutex<Option<String>>,
}

/// What the services said at the last gathering.
#[derive(Debug, Default, Serialize)]
pub struct Deps {
    at_unix_ms: i64,
    breakers: Value,
    transitions: Value,
    faults: BTreeMap<String, Value>,
    backlog: Value,
    fidelity_pending: Value,
    purchases: Value,
    products: Value,
    /// What could not be read, one line each (a process down, say).
    unreachable: Vec<String>,
}

impl Feed {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::from("{}"));
        Self {
            tx,
            deps: Mutex::new((None, Arc::new(Deps::default()))),
            wake: Notify::new(),
            ticks: std::sync::atomic::AtomicU64::new(0),
            breaker_signature: Mutex::new(None),
        }
    }

    fn cached(&self) -> (Option<Instant>, Arc<Deps>) {
        self.deps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Gathers and publishes while pages listen, until the suite stops.
pub async fn run(room: Arc<Room>) {
    loop {
        if room.feed.tx.receiver_count() == 0 {
            tokio::select! {
                () = room.feed.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = room.stop.cancelled() => return,
            }
            continue;
        }
        let next = tokio::time::Instant::now() + Duration::from_secs(1);
        refresh(&room).await;
        publish(&room);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                () = room.topology.changed.notified() => publish(&room),
                () = room.stop.cancelled() => return,
            }
        }
    }
}

/// Gathers the services' data into the cache.
async fn refresh(room: &Room) {
    let tick = room
        .feed
        .ticks
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let deps = gather(room, tick).await;
    *room
        .feed
        .deps
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = (Some(Instant::now()), Arc::new(deps));
}

fn publish(room: &Room) {
    let snapshot = render(room);
    room.feed.tx.send_replace(Arc::from(snapshot.to_string()));
}

/// The whole snapshot the page renders.
pub(super) fn render(room: &Room) -> Value {
    let order: Vec<String> = room.members.iter().map(|m| m.name.clone()).collect();
    let processes: Vec<Value> = room
        .topology
        .view(&order)
        .into_iter()
        .zip(&room.members)
        .map(|(view, member)| {
            let mut value = serde_json::to_value(view).unwrap_or_default();
            value["service"] = json!(member.service);
            value["url"] = json!(member.url);
            value
        })
        .collect();
    let (_, deps) = room.feed.cached();
    json!({
        "at_unix_ms": ftshop_platform::db::now_millis(),
        "control_room": room.base_url,
        "processes": processes,
        "services": deps,
        "traffic": room.traffic.view(),
        "presets": super::actions::PRESETS,
        "frozen": room.frozen.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "checks": room.ledger.last_verdicts(),
    })
}

async fn gather(room: &Room, tick: u64) -> Deps {
    // A process's own admin API answering is its liveness check: no separate /health/live.
    // Half of the processes each second, in turn, so each one is read every 2 s.
    let parity = usize::from(!tick.is_multiple_of(2));
    let faults = futures::future::join_all(
        room.members
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, m)| async move {
                let pid = room.topology.pid(&m.name);
                let read = admin_get(room, format!("{}/admin/faults", m.url)).await;
                room.topology.set_live(&m.name, pid, read.is_ok());
                (m.name.clone(), read)
            }),
    );
    let ecommerce = room.url_of("ecommerce").unwrap_or_default();
    let fidelity = room.url_of("fidelity").unwrap_or_default();
    let stores: Vec<&str> = room
        .members
        .iter()
        .filter(|m| m.service == "store")
        .map(|m| m.url.as_str())
        .collect();
    // The catalog changes only by purchases (its stock): every 10 s is enough for the form.
    let products = async {
        if tick.is_multiple_of(10) {
            Some(first_answer(room, &stores, "/products").await)
        } else {
            None
        }
    };
    // The backlog counts are database queries in two services: every 2 s (a load run samples
    // them each second for its chart anyway, see `traffic`).
    let backlog = async {
        if tick.is_multiple_of(2) {
            Some(tokio::join!(
                public_get(room, format!("{ecommerce}/backlog")),
                public_get(room, format!("{fidelity}/bonus/pending")),
            ))
        } else {
            None
        }
    };
    // The recent purchases every 2 s too, on the other ticks than the backlog.
    let purchases = async {
        if tick.is_multiple_of(2) {
            None
        } else {
            Some(admin_get(room, format!("{ecommerce}/admin/purchases?limit=10")).await)
        }
    };
    let (faults, breakers, backlog, purchases, products) = tokio::join!(
        faults,
        public_get(room, format!("{ecommerce}/breakers")),
        backlog,
        purchases,
        products,
    );
    // Transitions are read again only when a breaker's state or its start changed (or every
    // 10 s): most seconds, nothing moved.
    let signature = breakers.as_ref().ok().map(|list| {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|b| format!("{}:{}:{};", b["name"], b["state"], b["since"]))
            .collect::<String>()
    });
    let cached = room.feed.cached().1;
    let transitions = if tick.is_multiple_of(10)
        || signature.is_none()
        || signature
            != *room
                .feed
                .breaker_signature
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        || cached.transitions.is_null()
    {
        let read = admin_get(
            room,
            format!("{ecommerce}/admin/breakers/transitions?limit=100"),
        )
        .await;
        if read.is_ok() {
            *room
                .feed
                .breaker_signature
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = signature;
        }
        read
    } else {
        Ok(cached.transitions.clone())
    };
    let mut deps = Deps {
        at_unix_ms: ftshop_platform::db::now_millis(),
        ..Deps::default()
    };
    let mut keep = |what: &str, read: Result<Value, String>| match read {
        Ok(value) => value,
        Err(err) => {
            deps.unreachable.push(format!("{what}: {err}"));
            Value::Null
        }
    };
    let mut all_faults = room.feed.cached().1.faults.clone();
    for (name, read) in faults {
        let value = keep(&format!("{name} faults"), read);
        all_faults.insert(name, value);
    }
    let faults = all_faults;
    let breakers = keep("ecommerce breakers", breakers);
    let transitions = keep("ecommerce breaker transitions", transitions);
    let (backlog, fidelity_pending) = match backlog {
        Some((backlog, pending)) => (
            keep("ecommerce backlog", backlog),
            keep("fidelity pending bonuses", pending),
        ),
        None => {
            let cached = room.feed.cached().1;
            (cached.backlog.clone(), cached.fidelity_pending.clone())
        }
    };
    let purchases = match purchases {
        Some(read) => keep("ecommerce purchases", read),
        None => room.feed.cached().1.purchases.clone(),
    };
    let products = match products {
        Some(read) => keep("store products", read),
        None => room.feed.cached().1.products.clone(),
    };
    Deps {
        faults,
        breakers,
        transitions,
        backlog,
        fidelity_pending,
        purchases,
        products,
        ..deps
    }
}

/// GET `url` with the admin token; the JSON body of a 2xx, else a one-line reason.
pub(super) async fn admin_get(room: &Room, url: String) -> Result<Value, String> {
    read_json(room.http.get(url).bearer_auth(&room.admin_token)).await
}

pub(super) async fn public_get(room: &Room, url: String) -> Result<Value, String> {
    read_json(room.http.get(url)).await
}

async fn first_answer(room: &Room, bases: &[&str], path: &str) -> Result<Value, String> {
    let mut last = "no replica".to_owned();
    for base in bases {
        match public_get(room, format!("{base}{path}")).await {
            Ok(value) => return Ok(value),
            Err(err) => last = err,
        }
    }
    Err(last)
}

async fn read_json(request: reqwest::RequestBuilder) -> Result<Value, String> {
    let response = request
        .timeout(Duration::from_millis(900))
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "no answer within 0.9 s".to_owned()
            } else {
                "not reachable".to_owned()
            }
        })?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("unreadable answer ({status}): {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!(
            "{status}: {}",
            body["detail"].as_str().unwrap_or_default()
        ))
    }
}

/// `GET /api/state`: one snapshot, gathered now unless a listener keeps it fresh.
pub async fn state(State(room): State<Arc<Room>>) -> Response {
    let (at, _) = room.feed.cached();
    if at.is_none_or(|at| at.elapsed() > Duration::from_millis(1500)) {
        refresh(&room).await;
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(render(&room)),
    )
        .into_response()
}

/// `GET /api/events`: `event: snapshot` with the snapshot JSON, each second and on change. The
/// stream ends when the suite stops; the browser's EventSource reconnects by itself (after a
/// reload, a restarted control room).
pub async fn events(State(room): State<Arc<Room>>) -> Response {
    let rx = room.feed.tx.subscribe();
    room.feed.wake.notify_one();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let data = rx.borrow_and_update().clone();
        Some((
            Ok::<_, Infallible>(Event::default().event("snapshot").data(&*data)),
            rx,
        ))
    })
    .take_until(room.stop.clone().cancelled_owned());
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
        .into_response()
}
