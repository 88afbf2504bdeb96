//! The purchases of a chaos run: closed-loop virtual users (`ft=true`) that record every
//! attempt with its Idempotency-Key, so each can be accounted for afterwards, and a replay pass
//! that resolves the attempts that got no acknowledgement.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::Client;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::load::{Products, ThinkTime};

/// One `POST /buy` as sent and as answered.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub key: String,
    pub user: String,
    pub product: String,
    /// Seconds since the load started.
    pub at_s: f64,
    /// HTTP status, or None for a timeout / connection error.
    pub status: Option<u16>,
    /// `order_id` of a 200/202 answer.
    pub order_id: Option<String>,
    /// The problem type of an error answer, or the transport error.
    pub error: Option<String>,
    /// The purchase's `ft` flag (a replay must send the same body).
    pub ft: bool,
}

impl Attempt {
    pub fn acknowledged(&self) -> bool {
        matches!(self.status, Some(200 | 202)) && self.order_id.is_some()
    }

    /// Out of stock: a correct, final rejection (nothing sold).
    pub fn out_of_stock(&self) -> bool {
        self.status == Some(409)
            && self
                .error
                .as_deref()
                .is_some_and(|e| e.contains("/out-of-stock"))
    }
}

/// The closed loop's settings.
pub struct Traffic {
    pub buy_url: String,
    pub vus: u32,
    pub think: ThinkTime,
    pub products: Products,
    pub timeout: Duration,
    pub run_tag: String,
}

impl Traffic {
    pub fn user(&self, vu: u32) -> String {
        format!("chaos-{}-vu{vu}", self.run_tag)
    }

    /// Runs until `stop` is cancelled; returns every attempt. Requests in flight are awaited.
    pub async fn run(
        self: Arc<Self>,
        client: Client,
        start: Instant,
        stop: CancellationToken,
        attempts: Arc<Mutex<Vec<Attempt>>>,
    ) {
        let mut users = JoinSet::new();
        for vu in 0..self.vus {
            let (traffic, client, stop, attempts) = (
                Arc::clone(&self),
                client.clone(),
                stop.clone(),
                Arc::clone(&attempts),
            );
            users.spawn(async move {
                let user = traffic.user(vu);
                // Staggered arrival: each VU starts after one think time (see docs/load.md).
                let mut pause = traffic.think.sample();
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.cancelled() => break,
                    }
                    let product = traffic.products.sample().to_owned();
                    let key = format!("chaos-{}", uuid::Uuid::new_v4());
                    let at_s = start.elapsed().as_secs_f64();
                    let (status, order_id, error) = buy(
                        &client,
                        &traffic.buy_url,
                        &key,
                        &user,
                        &product,
                        true,
                        traffic.timeout,
                    )
                    .await;
                    attempts
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Attempt {
                            key,
                            user: user.clone(),
                            product,
                            at_s,
                            status,
                            order_id,
                            error,
                            ft: true,
                        });
                    pause = traffic.think.sample();
                }
            });
        }
        while users.join_next().await.is_some() {}
    }
}

/// One purchase: (status, order id of a 200/202, problem type or transport error).
pub async fn buy(
    client: &Client,
    url: &str,
    key: &str,
    user: &str,
    product: &str,
    ft: bool,
    timeout: Duration,
) -> (Option<u16>, Option<String>, Option<String>) {
    let body = serde_json::json!({"product": product, "user": user, "ft": ft});
    let sent = client
        .post(url)
        .header("Idempotency-Key", key)
        .json(&body)
        .timeout(timeout)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            let value: serde_json::Value = response.json().await.unwrap_or_default();
            let order_id = value["order_id"].as_str().map(str::to_owned);
            // `https://ftshop.dev/problems/<kind>`, plus the failed step when one is named.
            let error = value["type"]
                .as_str()
                .map(|kind| match value["step"].as_str() {
                    Some(step) => format!("{kind} step={step}"),
                    None => kind.to_owned(),
                });
            (Some(status), order_id, error)
        }
        Err(err) if err.is_timeout() => (None, None, Some("timeout".to_owned())),
        Err(_) => (None, None, Some("connection error".to_owned())),
    }
}

/// Counts of the load's answers, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadCounts {
    pub requests: usize,
    pub acknowledged: usize,
    pub completed_200: usize,
    pub accepted_202: usize,
    pub out_of_stock_409: usize,
    pub errors: usize,
    /// Answers by status (`200`, `502`, `timeout`, `connection error`).
    pub by_status: BTreeMap<String, usize>,
    /// Failed purchases by status, problem type and step (`502 bad-gateway step=exchange`).
    pub errors_by_kind: BTreeMap<String, usize>,
}

pub fn count(attempts: &[Attempt]) -> LoadCounts {
    let mut counts = LoadCounts {
        requests: attempts.len(),
        ..LoadCounts::default()
    };
    for attempt in attempts {
        let label = match attempt.status {
            Some(status) => status.to_string(),
            None => attempt.error.clone().unwrap_or_else(|| "error".to_owned()),
        };
        *counts.by_status.entry(label).or_default() += 1;
        match attempt.status {
            Some(200) if attempt.acknowledged() => counts.completed_200 += 1,
            Some(202) if attempt.acknowledged() => counts.accepted_202 += 1,
            _ if attempt.out_of_stock() => counts.out_of_stock_409 += 1,
            _ => {
                counts.errors += 1;
                let kind = attempt
                    .error
                    .as_deref()
                    .unwrap_or("-")
                    .trim_start_matches("https://ftshop.dev/problems/");
                let label = match attempt.status {
                    Some(status) => format!("{status} {kind}"),
                    None => kind.to_owned(),
                };
                *counts.errors_by_kind.entry(label).or_default() += 1;
            }
        }
    }
    counts.acknowledged = counts.completed_200 + counts.accepted_202;
    counts
}

/// What replaying the unacknowledged attempts found.
#[derive(Debug, Default)]
pub struct Reconciliation {
    /// Order ids the replays answered with (200/202).
    pub orders: Vec<String>,
    /// Keys whose replay said out of stock (nothing sold).
    pub out_of_stock: usize,
    /// Keys with no final answer by the deadline.
    pub unresolved: Vec<String>,
}

/// Replays every attempt that was neither acknowledged nor rejected as out of stock, with its
/// own Idempotency-Key and body, until each gets a final answer or `limit` passes. This is what
/// a careful client does after an error or a timeout, and it is what the contract promises:
/// the same key never sells twice, and a failed or abandoned order is re-driven under its own
/// order id. Without it, a purchase whose answer was lost (ecommerce killed mid-request) could
/// have sold a unit no known order accounts for.
pub async fn reconcile(
    client: &Client,
    buy_url: &str,
    attempts: &[Attempt],
    timeout: Duration,
    limit: Duration,
) -> Reconciliation {
    let mut open: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| !a.acknowledged() && !a.out_of_stock())
        .collect();
    let deadline = Instant::now() + limit;
    let mut result = Reconciliation::default();
    while !open.is_empty() {
        let mut still_open = Vec::new();
        for attempt in open {
            let (status, order_id, error) = buy(
                client,
                buy_url,
                &attempt.key,
                &attempt.user,
                &attempt.product,
                attempt.ft,
                timeout,
            )
            .await;
            match (status, order_id) {
                (Some(200 | 202), Some(order_id)) => result.orders.push(order_id),
                (Some(409), _)
                    if error
                        .as_deref()
                        .is_some_and(|e| e.contains("/out-of-stock")) =>
                {
                    result.out_of_stock += 1;
                }
                // 409 request-in-progress, 5xx, no answer: try again (an order abandoned by a
                // killed process is re-driven after 10 s).
                _ => still_open.push(attempt),
            }
        }
        open = still_open;
        if open.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    result.unresolved = open.iter().map(|a| a.key.clone()).collect();
    result
}
