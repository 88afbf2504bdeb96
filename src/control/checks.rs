//! The invariants button: the same checks as `ftshop chaos` ([`crate::chaos::invariants`]) on
//! the live suite, over the purchases made from this page (the "buy one" form and the load
//! runs): no oversold unit (stock fell by exactly the completed orders since the control room
//! started), no lost acknowledged order, no double-credited bonus (each user's balance is the sum
//! of its completed orders' points), pending bonuses drained.
//!
//! Stock is compared with a reading taken when the control room started, so purchases made
//! elsewhere meanwhile (curl, `ftshop load`) show up as a stock difference; so do bonus points
//! of a user who also bought elsewhere. The evidence says what was compared. Purchases whose
//! answer did not say whether they sold (5xx, timeout) are first replayed with their own
//! Idempotency-Key, as `ftshop chaos` does, so the order they may have created is counted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use ftshop_platform::Problem;
use ftshop_platform::extract::Json;
use futures::StreamExt;
use serde_json::{Value, json};

use super::Room;
use crate::chaos::invariants::{AckedOrder, Drain, Observed, StockSamples, check};
use crate::chaos::suite::{MemberInfo, SuiteApi};
use crate::chaos::traffic::Attempt;
use crate::load::live::UnsettledPurchase;

/// How long the check waits for deferred sales and pending bonuses to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long unsettled purchases are replayed at most.
const RECONCILE_LIMIT: Duration = Duration::from_secs(20);
/// Orders read at once.
const READS_IN_FLIGHT: usize = 16;

/// The page's own acknowledged purchases ("buy one"), the stock at start, the last verdicts.
#[derive(Default)]
pub struct Ledger {
    acked: Mutex<Vec<Acked>>,
    /// Purchases whose answer did not say whether they sold: replayed before the check.
    unsettled: Mutex<Vec<UnsettledPurchase>>,
    baseline: Mutex<Option<BTreeMap<String, i64>>>,
    last: Mutex<Option<Value>>,
    running: tokio::sync::Mutex<()>,
}

/// One acknowledged purchase made from the page.
#[derive(Debug, Clone)]
pub struct Acked {
    pub order_id: String,
    pub user: String,
    pub product: String,
    pub status: u16,
}

impl Ledger {
    pub fn acknowledged(&self, purchase: Acked) {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(purchase);
    }

    pub fn unsettled(&self, purchase: UnsettledPurchase) {
        self.unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(purchase);
    }

    pub fn last_verdicts(&self) -> Option<Value> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn api(room: &Room) -> SuiteApi {
    SuiteApi {
        http: room.http.clone(),
        data_dir: std::path::PathBuf::new(),
        token: room.admin_token.clone(),
        members: room
            .members
            .iter()
            .map(|m| MemberInfo {
                name: m.name.clone(),
                service: m.service.clone(),
                url: m.url.clone(),
                pid: None,
                restarts: 0,
            })
            .collect(),
    }
}

/// Reads the stock once the suite answers: the baseline of the oversold check.
pub async fn take_baseline(room: Arc<Room>) {
    let api = api(&room);
    loop {
        tokio::select! {
            stock = api.stock(Duration::from_secs(5)) => {
                if let Ok(stock) = stock {
                    *room.ledger.baseline.lock().unwrap_or_else(PoisonError::into_inner) = Some(stock);
                    return;
                }
            }
            () = room.stop.cancelled() => return,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `POST /api/invariants`: waits for the drain (at most 30 s), reads every order and balance,
/// and answers the verdicts with their evidence.
pub async fn run(State(room): State<Arc<Room>>) -> Result<Response, Problem> {
    let Ok(_one_at_a_time) = room.ledger.running.try_lock() else {
        return Err(Problem::conflict(
            "check-running",
            "the invariants are being checked already",
        ));
    };
    let Some(before) = room
        .ledger
        .baseline
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    else {
        return Err(Problem::unavailable(
            "no stock reading yet (Store has not answered since the control room started)",
        ));
    };
    let api = api(&room);
    let ecommerce = room
        .url_of("ecommerce")
        .ok_or_else(|| Problem::unavailable("the suite has no ecommerce process"))?
        .to_owned();

    let mut acknowledged: Vec<AckedOrder> = room
        .ledger
        .acked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|a| AckedOrder {
            order_id: a.order_id.clone(),
            user: a.user.clone(),
            product: a.product.clone(),
            status: a.status,
        })
        .collect();
    let from_page = acknowledged.len();
    let (from_runs, unsettled_in_run) = room.traffic.acked();
    acknowledged.extend(from_runs.into_iter().map(|a| AckedOrder {
        order_id: a.order_id,
        user: a.user,
        product: a.product,
        status: a.status,
    }));

    // What a careful client does after an error or a timeout, as `ftshop chaos` does: replay
    // each unsettled purchase with its own Idempotency-Key and body until it gets a final
    // answer; an order it sold is then known, and one that never answers bounds the stock.
    let mut unsettled: Vec<UnsettledPurchase> = room
        .ledger
        .unsettled
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    unsettled.extend(unsettled_in_run);
    let attempts: Vec<Attempt> = unsettled
        .iter()
        .map(|u| Attempt {
            key: u.key.clone(),
            user: u.user.clone(),
            product: u.product.clone(),
            at_s: 0.0,
            status: u.status,
            order_id: None,
            error: None,
            ft: u.ft,
        })
        .collect();
    let replayed = crate::chaos::traffic::reconcile(
        &room.http,
        &format!("{ecommerce}/buy"),
        &attempts,
        Duration::from_secs(5),
        RECONCILE_LIMIT,
    )
    .await;
    // A replayed purchase's user is checked too: its points are part of the balance.
    let replayed_users: BTreeSet<String> = unsettled.iter().map(|u| u.user.clone()).collect();

    let started = tokio::time::Instant::now();
    let interrupt = room.stop.child_token();
    let (drained, last) =
        crate::chaos::wait_for_drain(&api, started, DRAIN_LIMIT, &interrupt).await;

    let ids: Vec<String> = acknowledged
        .iter()
        .map(|a| a.order_id.clone())
        .chain(replayed.orders.iter().cloned())
        .collect();
    let orders: BTreeMap<_, _> = futures::stream::iter(ids)
        .map(|id| {
            let (api, ecommerce) = (api.clone(), ecommerce.clone());
            async move {
                let lookup = crate::chaos::read_order(&api, &ecommerce, &id).await;
                (id, lookup)
            }
        })
        .buffer_unordered(READS_IN_FLIGHT)
        .collect()
        .await;
    let users: BTreeSet<String> = acknowledged
        .iter()
        .map(|a| a.user.clone())
        .chain(replayed_users)
        .collect();
    let fidelity = api.urls_of("fidelity");
    let mut balances = BTreeMap::new();
    for user in users {
        let balance = api
            .get_retrying(
                &fidelity,
                &format!("/balance/{user}"),
                Duration::from_secs(5),
            )
            .await
            .ok()
            .and_then(|v| v["points"].as_i64());
        balances.insert(user, balance);
    }
    let after = api
        .stock(Duration::from_secs(10))
        .await
        .map_err(|e| Problem::unavailable(format!("cannot read the stock now: {e:#}")))?;
    let stock = before
        .iter()
        .map(|(product, before)| {
            let after = after.get(product).copied().unwrap_or(*before);
            (
                product.clone(),
                StockSamples {
                    before: *before,
                    min_seen: after.min(*before),
                    after,
                },
            )
        })
        .collect();
    let observed = Observed {
        stock,
        acknowledged,
        reconciled: replayed.orders.clone(),
        unresolved: replayed.unresolved.clone(),
        orders,
        balances,
        drain: Drain {
            timeout_s: DRAIN_LIMIT.as_secs_f64(),
            drained_after_s: drained.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
            last,
        },
    };
    let verdicts = check(&observed);
    let passed = verdicts.iter().all(|v| v.holds);
    let result = json!({
        "passed": passed,
        "checked_at_unix_ms": ftshop_platform::db::now_millis(),
        "purchases": {
            "from_buy_one": from_page,
            "from_load_runs": observed.acknowledged.len() - from_page,
            "replayed": unsettled.len(),
            "replayed_to_orders": replayed.orders.len(),
            "replayed_out_of_stock": replayed.out_of_stock,
            "unresolved": replayed.unresolved.len(),
        },
        "drained_after_s": observed.drain.drained_after_s,
        "backlog": observed.drain.last,
        "verdicts": verdicts,
        "note": "Over the purchases made from this page since the control room started; \
                 stock is compared with its reading at that start.",
    });
    *room
        .ledger
        .last
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(result.clone());
    eprintln!(
        "[control] invariants: {}",
        if passed { "all hold" } else { "VIOLATED" }
    );
    Ok(Json(result).into_response())
}
