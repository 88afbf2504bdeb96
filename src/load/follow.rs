//! Following a `202 pending` purchase to its end: `GET /orders/{id}` polled with backoff until
//! the order is `completed` or `cancelled`, or the follow timeout passes.
//!
//! A 202 is a promise (docs/design.md, "A 202 is a promise bounded in time"): the load report
//! says how long the promise took to keep (completion time from the purchase being sent to the
//! first poll that saw the order end) and how many were kept within `--promise`. The time is
//! observed by the client, so it is late by at most one poll interval (at most
//! [`MAX_POLL_INTERVAL`]); the server's `updated_at_ms` is not used because a bonus delivered
//! after the sale moves it too.

use std::time::Duration;

use reqwest::{Client, Url};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The first poll comes this long after the 202; each later one waits 1.5 times longer.
pub const FIRST_POLL: Duration = Duration::from_millis(100);
/// Polls never wait longer than this apart, which bounds both the error of a completion time
/// and how few GETs a long-pending order costs the shop (about one a second).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many `GET /orders/{id}` in flight at once, over all the followed orders of a
/// run: following thousands of 202s must not become a load test of its own (unbounded, 10,000
/// pending orders polled once a second each made the shop shed connections). With a large
/// backlog each order is then polled less often than [`MAX_POLL_INTERVAL`], which the report
/// shows as `poll_lag_ms` (how late polls ran against their schedule).
pub const MAX_POLLS_IN_FLIGHT: usize = 4;

/// How a followed order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// `status: completed`: the deferred sale was made.
    Completed,
    /// `status: cancelled` (out of stock, unknown product, ...): ended, nothing sold.
    Cancelled,
    /// Still pending when the follow timeout passed (or the run was interrupted).
    Unresolved,
    /// `GET /orders/{id}` answered 4xx (no such order, or a shop without the endpoint), or the
    /// 202 carried no `order_id`: nothing more can be learned.
    LookupFailed,
}

/// What every follower of a run shares.
pub struct Following<'a> {
    pub client: &'a Client,
    /// The shop's base URL (`orders/{id}` is joined to it).
    pub base: &'a Url,
    /// How long after its purchase an order is followed.
    pub timeout: Duration,
    /// Ctrl-C: the order is left `Unresolved`.
    pub interrupt: &'a CancellationToken,
    /// Bounds the polls in flight across all followers (see [`MAX_POLLS_IN_FLIGHT`]).
    pub polls: &'a tokio::sync::Semaphore,
}

/// Polls `orders/{order_id}` until the order ends, `timeout` after `sent_at` passes, or
/// `interrupt` is cancelled. Returns the fate and, for an ended order, the time from `sent_at`
/// to the poll that saw it end; `lag` receives how late the polls ran against their schedule,
/// at worst. Transport errors and 5xx answers are retried (the shop may be restarting); they
/// never end the follow early.
pub async fn follow(
    with: &Following<'_>,
    order_id: &str,
    sent_at: Instant,
    lag: &mut Duration,
) -> (Fate, Option<Duration>) {
    let Following {
        client,
        base,
        timeout,
        interrupt,
        polls,
    } = *with;
    let Ok(url) = base.join(&format!("orders/{order_id}")) else {
        return (Fate::LookupFailed, None);
    };
    let give_up = sent_at + timeout;
    let mut wait = FIRST_POLL;
    loop {
        let next = (Instant::now() + wait).min(give_up);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = interrupt.cancelled() => return (Fate::Unresolved, None),
        }
        let slot = tokio::select! {
            slot = polls.acquire() => slot,
            () = interrupt.cancelled() => return (Fate::Unresolved, None),
        };
        *lag = (*lag).max(Instant::now() - next);
        let answer = poll(client, &url).await;
        drop(slot);
        match answer {
            Poll::Ended(fate) => return (fate, Some(sent_at.elapsed())),
            Poll::Gone => return (Fate::LookupFailed, None),
            Poll::Pending => {}
        }
        if Instant::now() >= give_up {
            return (Fate::Unresolved, None);
        }
        wait = wait.mul_f64(1.5).min(MAX_POLL_INTERVAL);
    }
}

enum Poll {
    Ended(Fate),
    Gone,
    Pending,
}

async fn poll(client: &Client, url: &Url) -> Poll {
    let Ok(response) = client.get(url.clone()).send().await else {
        return Poll::Pending;
    };
    let status = response.status();
    if status.is_client_error() {
        return Poll::Gone;
    }
    if !status.is_success() {
        return Poll::Pending;
    }
    let Ok(view) = response.json::<serde_json::Value>().await else {
        return Poll::Pending;
    };
    match view.get("status").and_then(serde_json::Value::as_str) {
        Some("completed") => Poll::Ended(Fate::Completed),
        Some("cancelled") => Poll::Ended(Fate::Cancelled),
        _ => Poll::Pending,
    }
}

/// The analytic sales cap under Store's `/sell` error fault, in units per second.
///
/// A replica draws the fault with probability `p` per request while no window is open, so it
/// serves on average `1/p − 1` sales between windows and is then dead for `window`; `replicas`
/// replicas sell at most `replicas × (1/p − 1) / window` units per second, whatever the routing
/// (docs/benchmarks/ft-under-faults.md, "the physics of `/sell`"). The time to make those
/// sales is left out (it is milliseconds against a 5 s window), so this is an upper bound.
/// `None` when `p` is not in (0, 1] or the window is zero (no fault, no cap from it).
pub fn analytic_sales_cap(replicas: u32, p: f64, window: Duration) -> Option<f64> {
    if !(p > 0.0 && p <= 1.0) || window.is_zero() {
        return None;
    }
    Some(f64::from(replicas) * (1.0 / p - 1.0) / window.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_of_the_default_profile_is_3_6_units_per_second_for_two_replicas() {
        let cap = |n, p, w| analytic_sales_cap(n, p, Duration::from_secs(w));
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(cap(2, 0.1, 5), 3.6));
        assert!(close(cap(4, 0.1, 5), 7.2));
        assert!(close(cap(1, 0.5, 1), 1.0));
        assert_eq!(cap(2, 0.0, 5), None);
        assert_eq!(cap(2, 0.1, 0), None);
        assert_eq!(cap(2, 1.5, 5), None);
    }
}
