//! Background work that makes acknowledged orders whole after faults:
//!
//! - the **order worker** drives deferred sales (`pending`, answered 202) and abandoned
//!   `processing` orders (their process died mid-purchase) to `completed`, or to `cancelled`
//!   when Store says the unit can never be sold. Every attempt uses the order's sale key, so
//!   a unit is sold at most once however often it retries;
//! - the **bonus dispatcher** delivers the outbox to Fidelity until it acknowledges (Fidelity
//!   credits once per transaction id, so a delivery repeated after a lost answer is harmless).
//!
//! The bonus dispatcher, and the order worker for failures before the sale, retry with
//! exponential backoff and full jitter, so a recovering dependency is not met by a thundering
//! herd. A deferred sale is different: it waits under a completion promise
//! ([`crate::promise`]), so the order worker drains the backlog at Store's physical rate:
//! - no idle gaps: it looks again at once while orders are due, is woken by each new deferral,
//!   polls every [`BACKLOG_POLL`] while the backlog is not empty, and retries a sale Store could
//!   not make after [`SALE_RETRY`] (not an exponential backoff of up to seconds);
//! - no wasted attempts: the per-replica `/sell` breakers gate it. A replica inside an error
//!   window opens its breaker and is not tried ([`Resilient::sell`] puts it last and its open
//!   breaker refuses without a request); while every replica's breaker is open the worker
//!   leases nothing and makes no attempt until a breaker lets a probe through;
//! - concurrency matched to replicas: as many sales at once as replicas whose breaker admits
//!   calls, so a window that opens on one replica costs one attempt, not a batch.
//!
//! All their state is in the database: killing the process at any moment loses nothing, and the
//! next start carries on.

use ftshop_resilience::{Outcome, full_jitter};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use ftshop_platform::db::now_millis;
use futures::StreamExt;
use tokio::time::Instant;

use crate::AppState;
use crate::downstream::StepError;
use crate::ft::{Degradations, SellFailure};
use crate::money::{cents_to_decimal, to_cents};
use crate::orders::{self, Completion, DueOrder, Lease, OutboxEntry};
use crate::routes::{BonusView, BuyResponse, ProductView, sale_key, total};

/// How often each worker looks for due work after a failed pass, and how often the backlog
/// gauges are read (with the pass's own 800 ms).
const POLL: Duration = Duration::from_millis(200);
/// How often a worker with nothing to do looks again: new work wakes it at once (a deferral
/// wakes the order worker, a bonus written to the outbox the dispatcher), so this pace only
/// finds what becomes due by the clock (an order abandoned 10 s ago, a retry whose time came)
/// and costs the idle suite little (docs/benchmarks/happy-path.md, "idle").
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the order worker looks while deferred sales wait (retries not yet due, or every
/// Store breaker open): about the probing pace of a breaker (500 ms in open), so the first
/// replica to admit calls again gets the backlog within a fraction of that.
const BACKLOG_POLL: Duration = Duration::from_millis(50);
/// A deferred sale Store could not make is due again after this (jittered ±50 %): the breakers,
/// not a per-order backoff, keep the worker off a failing replica.
const SALE_RETRY: Duration = Duration::from_millis(200);
/// How many items each worker handles at once.
const CONCURRENCY: usize = 8;
/// A background sale attempt may take longer than a customer-facing one.
const WORKER_SELL_TIMEOUT: Duration = Duration::from_secs(1);
const WORKER_BUDGET: Duration = Duration::from_secs(3);
/// Fidelity may be slow (the latency fault adds 2 s); the dispatcher waits for it.
const BONUS_DELIVERY_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a worker's claim on an order or outbox entry keeps others away: its whole attempt
/// plus a margin. A worker that dies mid-attempt leaves the item due again after this.
const ORDER_HOLD_MS: i64 = (WORKER_BUDGET.as_millis() as i64) + 2_000;
const BONUS_HOLD_MS: i64 = (BONUS_DELIVERY_TIMEOUT.as_millis() as i64) + 2_000;

/// Starts both workers on the current runtime.
pub fn spawn(state: AppState) {
    tokio::spawn(drain_orders_forever(state.clone()));
    let outbox = Arc::clone(&state.outbox);
    tokio::spawn(run_forever(
        "bonus dispatcher",
        state.clone(),
        deliver_due_bonuses,
        IDLE_POLL,
        Some(outbox),
    ));
    tokio::spawn(run_forever(
        "backlog gauges",
        state,
        record_backlog,
        POLL,
        None,
    ));
}

/// Runs `pass` forever: at once again after a pass that found work, else after `idle` or when
/// `wake` is notified, whichever comes first (after a failed pass: [`POLL`]).
async fn run_forever<F, Fut>(
    name: &'static str,
    state: AppState,
    mut pass: F,
    idle: Duration,
    wake: Option<Arc<tokio::sync::Notify>>,
) where
    F: FnMut(AppState) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    loop {
        let wait = match pass(state.clone()).await {
            // Work was found: look again at once, there may be more.
            Ok(n) if n > 0 => continue,
            Ok(_) => idle,
            Err(err) => {
                note_storage_fault(&err);
                tracing::warn!(worker = name, error = format!("{err:#}"), "pass failed");
                POLL
            }
        };
        match &wake {
            Some(wake) => tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            },
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// The order worker's loop: a pass right after a pass that found work; otherwise the next pass
/// when a sale is deferred, or after [`BACKLOG_POLL`] while deferred sales wait, or
/// [`IDLE_POLL`] ([`POLL`] after a failed pass).
async fn drain_orders_forever(state: AppState) {
    loop {
        let wait = match drive_due_orders(state.clone()).await {
            Ok(n) if n > 0 => continue,
            Ok(_) if state.promise.view(Instant::now()).backlog > 0 => BACKLOG_POLL,
            Ok(_) => IDLE_POLL,
            Err(err) => {
                // A storage fault: no faster than the usual pace.
                note_storage_fault(&err);
                tracing::warn!(
                    worker = "order worker",
                    error = format!("{err:#}"),
                    "pass failed"
                );
                POLL
            }
        };
        tokio::select! {
            () = state.deferred.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A storage fault met by a worker counts for readiness like one met by a request.
fn note_storage_fault(err: &anyhow::Error) {
    if let Some(db_err) = err.chain().find_map(|e| e.downcast_ref::<sqlx::Error>()) {
        ftshop_platform::db::note_storage_error(db_err);
    }
}

fn later(delay: Duration) -> i64 {
    now_millis() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2)
}

/// One pass over the due orders, oldest first. Returns how many were attempted.
async fn drive_due_orders(state: AppState) -> anyhow::Result<usize> {
    // Every Store replica's /sell breaker is open (each is inside an error window, or was a
    // moment ago): an attempt now could only fail, so none is made.
    let ready = state.resilient.sell_replicas_admitting();
    if ready == 0 {
        return Ok(0);
    }
    let due = orders::due_orders(&state.db, 32).await?;
    let attempted = std::sync::atomic::AtomicUsize::new(0);
    futures::stream::iter(due)
        .for_each_concurrent(ready, |order| {
            let state = state.clone();
            let attempted = &attempted;
            async move {
                // The replicas closed meanwhile: leave the rest due for the next pass.
                if state.resilient.sell_replicas_admitting() == 0 {
                    return;
                }
                attempted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let id = order.order_id.clone();
                // Its own trace, linked to the purchase that deferred it.
                let span = tracing::info_span!(
                    target: "ftshop::work",
                    "deferred order",
                    otel.name = "drive deferred order",
                    order_id = %id,
                    order.status = %order.status,
                );
                ftshop_platform::telemetry::link_to(&span, order.traceparent.as_deref());
                if let Err(err) = drive_order(&state, order).instrument(span).await {
                    note_storage_fault(&err);
                    tracing::warn!(
                        order_id = id,
                        error = format!("{err:#}"),
                        "order worker: attempt failed"
                    );
                }
            }
        })
        .await;
    Ok(attempted.into_inner())
}

async fn drive_order(state: &AppState, order: DueOrder) -> anyhow::Result<()> {
    // Compare-and-set claim: a replay that took the order over, or another worker, wins
    // cleanly and this attempt does nothing.
    let Some(lease) = orders::lease_due(&state.db, &order, ORDER_HOLD_MS).await? else {
        metrics::counter!("shop_order_claims_lost_total", "by" => "order_worker").increment(1);
        return Ok(());
    };
    // Ending a deferred order changes the backlog: no database count is applied meanwhile
    // (`CompletionPromise::set_backlog`).
    let _ending = state.promise.writing();
    let request_id = format!("order-worker-{}", order.order_id);
    let deadline = Instant::now() + WORKER_BUDGET;
    let ft = &state.resilient;
    let mut degraded = Degradations::default();

    // The answer the customer got (202), or, for an order abandoned before it had one, a new
    // answer from the catalog and the current rate.
    let stored: Option<BuyResponse> = order
        .response
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok());
    let mut answer = match stored {
        Some(answer) => answer,
        None => {
            let product = ft
                .product(&order.product, &request_id, deadline, &mut degraded)
                .await;
            let rate = ft.rate(&request_id, deadline, &mut degraded).await;
            // A rate that prices this product beyond any total is the Exchange step failing; a
            // price whose bonus Fidelity would refuse cancels the order before any sale.
            let priced = match (product, rate) {
                (Ok(product), Ok(rate)) => product.checked_bonus().and_then(|points| {
                    total(product.value_cents, rate.rate)
                        .map(|total| (product, rate, total, points))
                }),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            match priced {
                Ok((product, rate, total, points)) => BuyResponse {
                    order_id: order.order_id.clone(),
                    status: "pending".to_owned(),
                    transaction_id: None,
                    product: ProductView {
                        id: product.id.clone(),
                        name: product.name.clone(),
                        value: cents_to_decimal(product.value_cents),
                    },
                    rate: rate.rate,
                    total,
                    bonus: BonusView {
                        points,
                        status: "pending".to_owned(),
                    },
                    degraded: degraded.0.clone(),
                    expected_completion_at: None,
                    expected_completion_seconds: None,
                    promised_by: None,
                },
                Err(e) if !is_final(&e) => {
                    retry_later(state, &order, &lease, backoff(order.attempts)).await?;
                    return Ok(());
                }
                Err(e) => return cancel(state, &order, &lease, &e).await,
            }
        }
    };

    let sale = ft
        .sell(
            &order.product,
            &sale_key(&order.order_id),
            &request_id,
            deadline,
            WORKER_SELL_TIMEOUT,
            &mut degraded,
        )
        .await;
    match sale {
        Ok(sale) => {
            answer.status = "completed".to_owned();
            answer.transaction_id = Some(sale.transaction_id.clone());
            answer.bonus.status = "pending".to_owned();
            let body = serde_json::to_string(&answer)?;
            let (Some(value_cents), Some(total_cents)) = (
                order.value_cents.or_else(|| to_cents(answer.product.value)),
                to_cents(answer.total),
            ) else {
                anyhow::bail!("order {}: amounts beyond i64 cents", order.order_id);
            };
            let written = orders::complete(
                &state.db,
                &lease,
                &Completion {
                    user: &order.user,
                    transaction_id: &sale.transaction_id,
                    value_cents,
                    rate: order.rate.unwrap_or(answer.rate),
                    total_cents,
                    bonus_points: answer.bonus.points,
                    // The dispatcher credits it: the outbox row is written with the completion.
                    bonus_status: "pending",
                    completed_sync: false,
                    response: &body,
                },
            )
            .await?;
            if !written {
                lease_lost(&lease);
                return Ok(());
            }
            state.outbox.notify_one();
            metrics::counter!("shop_orders_total", "outcome" => "completed_deferred", "ft" => "on")
                .increment(1);
            order_ended(state, &order, "completed");
            tracing::info!(
                order_id = order.order_id,
                was = order.status,
                attempts = order.attempts + 1,
                "deferred order completed"
            );
            Ok(())
        }
        Err(SellFailure::Final(e)) => cancel(state, &order, &lease, &e).await,
        Err(SellFailure::Unavailable { error: e, .. }) => {
            tracing::debug!(order_id = order.order_id, error = %e, "sale still impossible; retrying soon");
            let retry = SALE_RETRY.mul_f64(rand::random_range(0.5..1.5));
            retry_later(state, &order, &lease, retry).await?;
            Ok(())
        }
    }
}

/// A deferred order ended (completed or cancelled): it leaves the backlog and counts for the
/// drain rate; one that ended after its promise is counted as a missed promise.
fn order_ended(state: &AppState, order: &DueOrder, outcome: &'static str) {
    if order.status != "pending" {
        // An abandoned order never had a 202: not part of the promised backlog.
        return;
    }
    state.promise.completed(Instant::now());
    if orders::misses_promise(order.promised_by) {
        metrics::counter!("shop_promise_missed_total", "outcome" => outcome).increment(1);
        tracing::warn!(
            order_id = order.order_id,
            outcome,
            "deferred order ended after its completion promise"
        );
    }
}

/// The worker's claim was superseded mid-attempt (its hold ran out and someone else took the
/// order): that holder decides; this attempt wrote nothing.
fn lease_lost(lease: &Lease) {
    metrics::counter!("shop_order_claims_superseded_total").increment(1);
    tracing::warn!(
        order_id = lease.order_id,
        "order worker: claim superseded; outcome left to the new holder"
    );
}

/// Exponential backoff with full jitter for failures before the sale (product, rate).
fn backoff(attempts: i64) -> Duration {
    full_jitter(
        attempts,
        Duration::from_millis(200),
        Duration::from_secs(10),
    )
}

async fn retry_later(
    state: &AppState,
    order: &DueOrder,
    lease: &Lease,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    if !orders::reschedule_order(&state.db, lease, order.attempts + 1, later(delay)).await? {
        lease_lost(lease);
    }
    Ok(())
}

/// An order step that will fail the same way however often it is retried: a 4xx from Store
/// (unknown product, out of stock) or a product outside the suite's limits.
fn is_final(err: &StepError) -> bool {
    matches!(err, StepError::Status { status, .. } if status.is_client_error())
        || matches!(err, StepError::OutsideLimits { .. })
}

/// Fidelity refuses this very request for good, so sending it again can only be refused again:
/// 400 (malformed), 409 (`transaction-conflict`: the transaction id was credited with another
/// user or amount), 413, 415, 422 (a user, transaction id or bonus outside its limits). Other
/// 4xx (401/403 a token or route misconfiguration, 404, 408, 429) can heal and are retried with
/// backoff like a 5xx.
fn is_final_refusal(err: &StepError) -> bool {
    matches!(err, StepError::Status { status, .. } if matches!(status.as_u16(), 400 | 409 | 413 | 415 | 422))
}

async fn cancel(
    state: &AppState,
    order: &DueOrder,
    lease: &Lease,
    err: &StepError,
) -> anyhow::Result<()> {
    let reason = match err {
        StepError::OutsideLimits { .. } => "outside-limits",
        StepError::Status { status, .. } if status.as_u16() == 409 => "out-of-stock",
        StepError::Status { status, .. } if status.as_u16() == 404 => "unknown-product",
        _ => "rejected-by-store",
    };
    let problem = err.to_problem();
    let body = serde_json::to_string(&problem)?;
    if !orders::cancel(&state.db, lease, reason, problem.status, &body).await? {
        lease_lost(lease);
        return Ok(());
    }
    metrics::counter!("shop_orders_total", "outcome" => "cancelled", "ft" => "on").increment(1);
    order_ended(state, order, "cancelled");
    tracing::info!(
        order_id = order.order_id,
        reason,
        "deferred order cancelled"
    );
    Ok(())
}

async fn deliver_due_bonuses(state: AppState) -> anyhow::Result<usize> {
    let due = orders::due_bonuses(&state.db, 64).await?;
    let n = due.len();
    futures::stream::iter(due)
        .for_each_concurrent(CONCURRENCY, |entry| {
            let state = state.clone();
            async move {
                let tx = entry.transaction_id.clone();
                // Its own trace, linked to the purchase whose bonus it delivers.
                let span = tracing::info_span!(
                    target: "ftshop::work",
                    "outbox delivery",
                    otel.name = "deliver outbox bonus",
                    transaction_id = %tx,
                    attempts = entry.attempts,
                );
                ftshop_platform::telemetry::link_to(&span, entry.traceparent.as_deref());
                if let Err(err) = deliver(&state, entry).instrument(span).await {
                    note_storage_fault(&err);
                    tracing::warn!(
                        transaction_id = tx,
                        error = format!("{err:#}"),
                        "bonus dispatcher: attempt failed"
                    );
                }
            }
        })
        .await;
    Ok(n)
}

async fn deliver(state: &AppState, entry: OutboxEntry) -> anyhow::Result<()> {
    if !orders::lease_bonus(&state.db, &entry, BONUS_HOLD_MS).await? {
        metrics::counter!("shop_order_claims_lost_total", "by" => "bonus_dispatcher").increment(1);
        return Ok(());
    }
    let calls = &state.downstreams;
    let request_id = format!("bonus-dispatcher-{}", entry.transaction_id);
    // The delivery is one of the breaker's observations (and its trial call while it is open:
    // purchases never make those, see `Resilient::bonus`).
    let permit = state.resilient.bonus_delivery_permit();
    let result = calls
        .bonus_at(
            calls.fidelity(),
            &entry.user,
            entry.points,
            &entry.transaction_id,
            &request_id,
            BONUS_DELIVERY_TIMEOUT,
        )
        .await;
    if let Some(permit) = permit {
        let failed = result.as_ref().is_err_and(crate::ft::Resilient::is_failure);
        permit.record(if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        });
    }
    match result {
        Ok(()) => {
            orders::bonus_delivered(&state.db, &entry.transaction_id, &entry.order_id).await?;
            metrics::counter!("shop_bonus_outbox_total", "outcome" => "delivered").increment(1);
        }
        Err(err) if is_final_refusal(&err) => {
            // Fidelity refuses this bonus for good (e.g. a conflicting credit): retrying can
            // only be refused again, so it goes to the dead letters after this one attempt,
            // kept for an operator (GET /backlog, shop_outbox_dead_letters, the
            // FtshopBonusDeadLettered alert; the order says `dead-letter`).
            tracing::error!(transaction_id = entry.transaction_id, order_id = entry.order_id, error = %err, "Fidelity refuses a bonus for good; dead-lettered, needs attention");
            if orders::dead_letter_bonus(&state.db, &entry, &err.to_string()).await? {
                metrics::counter!("shop_bonus_outbox_total", "outcome" => "dead_letter")
                    .increment(1);
            }
        }
        Err(err) => {
            metrics::counter!("shop_bonus_outbox_total", "outcome" => "retry").increment(1);
            let delay = full_jitter(
                entry.attempts,
                Duration::from_millis(500),
                Duration::from_secs(30),
            );
            orders::reschedule_bonus(&state.db, &entry, later(delay), &err.to_string()).await?;
        }
    }
    Ok(())
}

/// Keeps the backlog gauges current (about once a second).
async fn record_backlog(state: AppState) -> anyhow::Result<usize> {
    // Marked before the count: see `CompletionPromise::set_backlog`.
    let mark = state.promise.mark();
    let b = orders::backlog(&state.db).await?;
    metrics::gauge!("shop_pending_orders").set(b.pending_orders as f64);
    metrics::gauge!("shop_pending_order_oldest_age_seconds")
        .set(b.oldest_pending_order_age_seconds);
    metrics::gauge!("shop_outbox_bonuses").set(b.outbox_bonuses as f64);
    metrics::gauge!("shop_outbox_oldest_age_seconds").set(b.oldest_outbox_bonus_age_seconds);
    metrics::gauge!("shop_outbox_dead_letters").set(b.dead_letter_bonuses as f64);
    metrics::gauge!("shop_outbox_oldest_dead_letter_age_seconds")
        .set(b.oldest_dead_letter_bonus_age_seconds);
    metrics::gauge!("shop_pending_orders_past_promise").set(b.pending_orders_past_promise as f64);
    let now = Instant::now();
    let (pending, oldest) = b.pending();
    state.promise.set_backlog(now, mark, pending, oldest);
    let drain = state.promise.view(now);
    metrics::gauge!("shop_defer_drain_rate_per_second").set(drain.rate_per_second);
    metrics::gauge!("shop_defer_projected_drain_seconds").set(drain.projected_drain_seconds);
    metrics::gauge!("shop_defer_promise_seconds").set(drain.promise_seconds);
    tokio::time::sleep(Duration::from_millis(800)).await;
    Ok(0)
}
