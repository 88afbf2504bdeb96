//! Sends the purchases: closed-loop virtual users or an open-loop arrival schedule.
//!
//! Both stop at the same three bounds: `--duration` (or Ctrl-C), `--max-requests`, and, for
//! requests already sent, the client timeout. Requests in flight when the run stops are awaited,
//! so every request sent has exactly one recorded answer.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Client, Url};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::args::{LoadModel, Plan, Products};
use super::live::{AckedPurchase, LiveSeries, UnsettledPurchase};
use super::outcome::{self, Outcome};
use super::report::{Recorder, RunReport};

/// Open loop: how many distinct customers the arrivals are spread over.
const OPEN_LOOP_USERS: u64 = 100;

/// Runs one `ft` value to the end and reports it. `stop` is cancelled by Ctrl-C: the run then
/// ends early but still reports what it measured.
pub async fn run(
    plan: &Plan,
    ft: bool,
    client: &Client,
    stop: &CancellationToken,
) -> anyhow::Result<RunReport> {
    run_observed(plan, ft, client, stop, None).await
}

/// [`run`], also feeding every answer to `live` (the control room's charts) when given.
pub async fn run_observed(
    plan: &Plan,
    ft: bool,
    client: &Client,
    stop: &CancellationToken,
    live: Option<Arc<LiveSeries>>,
) -> anyhow::Result<RunReport> {
    let start = Instant::now();
    let run_stop = stop.child_token();
    let ctx = Arc::new(RunContext {
        client: client.clone(),
        buy_url: plan.buy_url.clone(),
        products: plan.products.clone(),
        ft,
        start,
        // A short random tag keeps user ids distinct between runs, so a run's bonus points
        // can be told apart in Fidelity.
        run_tag: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        recorder: Mutex::new(Recorder::new()?),
        sent: AtomicU64::new(0),
        max_requests: plan.max_requests,
        stop: run_stop.clone(),
        interrupt: stop.clone(),
        orders_base: plan.orders_base.clone(),
        promise: plan.promise,
        follow_timeout: plan.follow_timeout,
        followers: Mutex::new(JoinSet::new()),
        polls: Semaphore::new(super::follow::MAX_POLLS_IN_FLIGHT),
        live,
    });

    // The duration bound: one timer for the whole run, shared by every VU through `stop`.
    let timer = tokio::spawn({
        let stop = run_stop.clone();
        let deadline = start + plan.duration;
        async move {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => stop.cancel(),
                () = stop.cancelled() => {}
            }
        }
    });
    let progress = tokio::spawn(show_progress(Arc::clone(&ctx), plan.duration));

    let result = match plan.load {
        LoadModel::Closed { vus, think } => {
            let mut users = JoinSet::new();
            for vu in 0..vus {
                let ctx = Arc::clone(&ctx);
                users.spawn(async move {
                    let user = format!("load-{}-vu{vu}", ctx.run_tag);
                    // Each user arrives after one think time, as if it had just finished an
                    // earlier purchase: without this, every user clicks at the same instant at
                    // t=0, a thundering herd no real shop sees, which would dominate the tail.
                    let arrival = think.sample();
                    if !arrival.is_zero() {
                        tokio::select! {
                            () = tokio::time::sleep(arrival) => {}
                            () = ctx.stop.cancelled() => return,
                        }
                    }
                    while !ctx.stop.is_cancelled() && ctx.take_ticket() {
                        ctx.purchase(&user, Instant::now()).await;
                        let think = think.sample();
                        if !think.is_zero() {
                            tokio::select! {
                                () = tokio::time::sleep(think) => {}
                                () = ctx.stop.cancelled() => break,
                            }
                        }
                    }
                });
            }
            join_all(users).await
        }
        LoadModel::Open {
            per_sec,
            max_in_flight,
        } => open_loop(&ctx, per_sec, max_in_flight).await,
    };
    let elapsed = start.elapsed();
    run_stop.cancel();
    timer.abort();
    progress.abort();
    // The progress task may have been aborted mid-draw; wait so its bar is cleared before the
    // summary prints.
    let _ = progress.await;
    result?;

    let mut report = ctx.recorder().finish(ft, elapsed);
    // Every 202 is followed to its end (each follower is bounded by the follow timeout and by
    // Ctrl-C), after the load itself has stopped.
    let followers =
        std::mem::take(&mut *ctx.followers.lock().unwrap_or_else(PoisonError::into_inner));
    if !followers.is_empty() {
        eprintln!(
            "ft={ft}: following {} deferred orders to their end (at most {} s each)",
            followers.len(),
            plan.follow_timeout.as_secs()
        );
    }
    join_all(followers).await?;
    ctx.recorder().finish_followed(
        &mut report,
        plan.promise,
        plan.follow_timeout,
        plan.sales_cap,
    );
    Ok(report)
}

struct RunContext {
    client: Client,
    buy_url: Url,
    products: Products,
    ft: bool,
    start: Instant,
    run_tag: String,
    recorder: Mutex<Recorder>,
    sent: AtomicU64,
    max_requests: Option<u64>,
    stop: CancellationToken,
    /// Ctrl-C: also ends the following of 202s.
    interrupt: CancellationToken,
    orders_base: Url,
    promise: Duration,
    follow_timeout: Duration,
    /// One task per 202, polling its order to the end.
    followers: Mutex<JoinSet<()>>,
    /// Bounds the `GET /orders/{id}` in flight over all followers.
    polls: Semaphore,
    /// The control room's live view of this run, if any.
    live: Option<Arc<LiveSeries>>,
}

impl RunContext {
    /// Claims one request of the `--max-requests` budget; false once it is spent (and then
    /// stops the run, so open loop and idle VUs end too).
    fn take_ticket(&self) -> bool {
        let Some(max) = self.max_requests else {
            self.sent.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        let claimed = self
            .sent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sent| {
                (sent < max).then_some(sent + 1)
            })
            .is_ok();
        if !claimed {
            self.stop.cancel();
        }
        claimed
    }

    fn recorder(&self) -> std::sync::MutexGuard<'_, Recorder> {
        // A panic while recording cannot leave the counters half-updated in a way that
        // matters more than losing the run, so a poisoned lock is simply taken over.
        self.recorder.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One purchase with a fresh Idempotency-Key. `started` is when it should have been sent:
    /// in open loop that is the scheduled arrival, so a late send counts against latency
    /// instead of being hidden (coordinated omission).
    async fn purchase(self: &Arc<Self>, user: &str, started: Instant) {
        let product = self.products.sample();
        let body = serde_json::json!({
            "product": product,
            "user": user,
            "ft": self.ft,
        });
        let key = format!("load-{}", uuid::Uuid::new_v4());
        let answer = self
            .client
            .post(self.buy_url.clone())
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        let mut status = None;
        let mut pending_order = None;
        let mut acked_order = None;
        let (outcome, details) = match answer {
            Ok(response) => {
                status = Some(response.status().as_u16());
                let outcome = outcome::classify_answer(
                    response.status().as_u16(),
                    response
                        .headers()
                        .contains_key(reqwest::header::RETRY_AFTER),
                );
                // The body is read for every answer: it is part of the latency a customer
                // sees, and an unread body keeps the connection out of the pool.
                match response.bytes().await {
                    Ok(body) if outcome == Outcome::Completed => {
                        if self.live.is_some() {
                            acked_order = outcome::order_id(&body);
                        }
                        (outcome, Some(outcome::details(&body)))
                    }
                    Ok(body) if outcome == Outcome::Accepted => {
                        // None (no order id) is followed too: it ends as a failed lookup.
                        pending_order = Some(outcome::order_id(&body));
                        if self.live.is_some() {
                            acked_order = outcome::order_id(&body);
                        }
                        (outcome, None)
                    }
                    Ok(_) => (outcome, None),
                    Err(err) => (outcome::classify_error(&err), None),
                }
            }
            Err(err) => (outcome::classify_error(&err), None),
        };
        if let Some(order_id) = pending_order {
            self.follow(order_id, started);
        }
        let now = Instant::now();
        let mut recorder = self.recorder();
        if let Some(status) = status {
            recorder.record_status(status);
        }
        let recorded = recorder.record(now - self.start, now - started, outcome, details.as_ref());
        drop(recorder);
        if let Some(live) = &self.live {
            live.record(now - self.start, now - started, outcome);
            if let (Some(order_id), Some(status)) = (acked_order, status) {
                live.acknowledged(AckedPurchase {
                    order_id,
                    user: user.to_owned(),
                    product: product.to_owned(),
                    status,
                });
            } else if matches!(
                outcome,
                Outcome::ServerError
                    | Outcome::Timeout
                    | Outcome::ConnectionError
                    | Outcome::Unexpected
            ) || outcome.is_acknowledged()
            {
                live.unsettled(UnsettledPurchase {
                    key,
                    user: user.to_owned(),
                    product: product.to_owned(),
                    ft: self.ft,
                    status,
                });
            }
        }
        if let Err(err) = recorded {
            // Only a histogram allocation can fail here; the run goes on without this answer.
            eprintln!("could not record an answer: {err:#}");
        }
    }
}

impl RunContext {
    /// Follows one 202 to its end in the background and records its fate.
    fn follow(self: &Arc<Self>, order_id: Option<String>, sent_at: Instant) {
        let ctx = Arc::clone(self);
        let task = async move {
            let mut lag = Duration::ZERO;
            let (fate, took) = match order_id {
                Some(id) => {
                    let with = super::follow::Following {
                        client: &ctx.client,
                        base: &ctx.orders_base,
                        timeout: ctx.follow_timeout,
                        interrupt: &ctx.interrupt,
                        polls: &ctx.polls,
                    };
                    super::follow::follow(&with, &id, sent_at, &mut lag).await
                }
                None => (super::follow::Fate::LookupFailed, None),
            };
            let at = ctx.start.elapsed();
            let mut recorder = ctx.recorder();
            recorder.record_followed(fate, took, at, ctx.promise);
            recorder.record_poll_lag(lag);
        };
        self.followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spawn(task);
    }
}

/// Sends arrival n at `start + n / rate`, never waiting for answers; an arrival that finds
/// `max_in_flight` requests outstanding is dropped and counted instead of queued, so the
/// generator never builds a backlog that would blur the schedule.
async fn open_loop(
    ctx: &Arc<RunContext>,
    per_sec: f64,
    max_in_flight: usize,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut in_flight = JoinSet::new();
    let mut arrival: u64 = 0;
    loop {
        let due = ctx.start + Duration::from_secs_f64(arrival as f64 / per_sec);
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = ctx.stop.cancelled() => break,
        }
        if ctx.stop.is_cancelled() {
            break;
        }
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                if !ctx.take_ticket() {
                    break;
                }
                let ctx = Arc::clone(ctx);
                let user = format!("load-{}-u{}", ctx.run_tag, arrival % OPEN_LOOP_USERS);
                in_flight.spawn(async move {
                    ctx.purchase(&user, due).await;
                    drop(slot);
                });
            }
            Err(_) => ctx.recorder().record_dropped(),
        }
        arrival += 1;
        // Reap finished requests so the set stays as small as what is in flight.
        while let Some(done) = in_flight.try_join_next() {
            done.context("a request task failed")?;
        }
    }
    join_all(in_flight).await
}

async fn join_all(mut tasks: JoinSet<()>) -> anyhow::Result<()> {
    while let Some(done) = tasks.join_next().await {
        done.context("a load task failed")?;
    }
    Ok(())
}

/// A progress bar on a terminal; one status line per 5 s otherwise (CI logs), since indicatif
/// hides its bar when stderr is not a terminal.
async fn show_progress(ctx: Arc<RunContext>, duration: Duration) {
    let label = format!("ft={}", ctx.ft);
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(duration.as_secs().max(1));
        if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len}s {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        // Cleared on drop, which also happens when this task is aborted at the run's end.
        let _clear = ClearOnDrop(bar.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            bar.set_position(ctx.start.elapsed().as_secs().min(duration.as_secs()));
            bar.set_message(ctx.recorder().status_line());
        }
    } else {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            let line = ctx.recorder().status_line();
            eprintln!(
                "[{label}] {:>4}s/{}s {line}",
                ctx.start.elapsed().as_secs(),
                duration.as_secs()
            );
        }
    }
}

struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
