//! The four invariants, checked by a pure function over what a chaos run observed, so a
//! fabricated observation can test the checker without starting a single process.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Everything the checker needs, collected after the scenarios stopped and the suite drained.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observed {
    /// Stock per product: before the load, the lowest any sample saw, after the drain.
    pub stock: BTreeMap<String, StockSamples>,
    /// Purchases answered 200/202: the customer was told the order exists.
    pub acknowledged: Vec<AckedOrder>,
    /// Order ids learned by replaying an unanswered or failed purchase with its
    /// Idempotency-Key after the faults stopped (they may have sold a unit too).
    pub reconciled: Vec<String>,
    /// Purchases whose fate stayed unknown (no answer even to the replays): each may or may not
    /// have sold a unit, so stock can only be bounded.
    pub unresolved: Vec<String>,
    /// The final state of every order above, by order id.
    pub orders: BTreeMap<String, OrderLookup>,
    /// Every user the load used, with the balance Fidelity reports (None: unreadable).
    pub balances: BTreeMap<String, Option<i64>>,
    pub drain: Drain,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockSamples {
    pub before: i64,
    pub min_seen: i64,
    pub after: i64,
}

/// One acknowledged purchase, as sent and as answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedOrder {
    pub order_id: String,
    pub user: String,
    pub product: String,
    /// 200 or 202.
    pub status: u16,
}

/// What `GET /orders/{id}` said, or why it could not say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "lookup", rename_all = "snake_case")]
pub enum OrderLookup {
    Found(OrderState),
    NotFound,
    Unreadable { error: String },
}

/// The fields of an order the invariants look at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub status: String,
    pub user: String,
    pub product: String,
    pub transaction_id: Option<String>,
    pub bonus_points: Option<i64>,
    pub bonus_status: Option<String>,
    pub cancel_reason: Option<String>,
}

/// How the backlog drained once the faults stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    pub timeout_s: f64,
    /// Seconds from "faults off" until ecommerce's pending orders and outbox and Fidelity's
    /// pending bonuses were all zero; None when that did not happen within the timeout.
    pub drained_after_s: Option<f64>,
    /// The last backlog read (all zeros when drained).
    pub last: Backlog,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    pub pending_orders: i64,
    pub outbox_bonuses: i64,
    pub fidelity_pending: i64,
}

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.pending_orders == 0 && self.outbox_bonuses == 0 && self.fidelity_pending == 0
    }
}

/// One of the four promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    NoOversold,
    NoLostOrder,
    NoDoubleCredit,
    BonusesDrain,
}

impl Invariant {
    pub fn title(self) -> &'static str {
        match self {
            Invariant::NoOversold => "no oversold unit",
            Invariant::NoLostOrder => "no lost acknowledged order",
            Invariant::NoDoubleCredit => "no double-credited bonus",
            Invariant::BonusesDrain => "pending bonuses drain to zero",
        }
    }
}

/// One broken promise with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub invariant: Invariant,
    /// What is wrong, with ids and expected versus actual values.
    pub evidence: String,
}

/// The verdict for one invariant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub invariant: Invariant,
    pub title: String,
    pub holds: bool,
    /// What was checked (counts), for the report.
    pub checked: String,
    pub violations: Vec<Violation>,
}

/// The order may end like this: completed, or cancelled because the unit could not be sold.
fn acceptable_end(order: &OrderState) -> bool {
    order.status == "completed"
        || (order.status == "cancelled" && order.cancel_reason.as_deref() == Some("out-of-stock"))
}

/// Checks the four invariants. Pure: the same observation always gives the same verdicts.
pub fn check(observed: &Observed) -> Vec<Verdict> {
    // Every known order, acknowledged or reconciled, once.
    let known: BTreeSet<&str> = observed
        .acknowledged
        .iter()
        .map(|a| a.order_id.as_str())
        .chain(observed.reconciled.iter().map(String::as_str))
        .collect();
    let completed: Vec<(&str, &OrderState)> = known
        .iter()
        .filter_map(|id| match observed.orders.get(*id) {
            Some(OrderLookup::Found(order)) if order.status == "completed" => Some((*id, order)),
            _ => None,
        })
        .collect();

    vec![
        oversold(observed, &completed),
        lost(observed),
        double_credit(observed, &completed),
        drain(observed),
    ]
}

fn verdict(invariant: Invariant, checked: String, evidence: Vec<String>) -> Verdict {
    Verdict {
        invariant,
        title: invariant.title().to_owned(),
        holds: evidence.is_empty(),
        checked,
        violations: evidence
            .into_iter()
            .map(|evidence| Violation {
                invariant,
                evidence,
            })
            .collect(),
    }
}

fn oversold(observed: &Observed, completed: &[(&str, &OrderState)]) -> Verdict {
    let mut sold: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, order) in completed {
        *sold.entry(order.product.as_str()).or_default() += 1;
    }
    let unresolved = i64::try_from(observed.unresolved.len()).unwrap_or(i64::MAX);
    let mut evidence = Vec::new();
    for (product, stock) in &observed.stock {
        if stock.min_seen < 0 || stock.after < 0 {
            evidence.push(format!(
                "product {product}: stock went below zero (lowest seen {}, after {})",
                stock.min_seen, stock.after
            ));
        }
        let decrease = stock.before - stock.after;
        let expected = sold.get(product.as_str()).copied().unwrap_or(0);
        // An unresolved purchase may or may not have sold its unit: allow that many more.
        if decrease < expected || decrease > expected + unresolved {
            let allowance = if unresolved > 0 {
                format!(" (+ up to {unresolved} unresolved purchases)")
            } else {
                String::new()
            };
            evidence.push(format!(
                "product {product}: stock fell by {decrease} ({} → {}), expected {expected} completed orders{allowance}",
                stock.before, stock.after
            ));
        }
    }
    for product in sold.keys() {
        if !observed.stock.contains_key(*product) {
            evidence.push(format!(
                "product {product}: completed orders but no stock reading"
            ));
        }
    }
    // Unresolved purchases are not a violation by themselves (the bound above still applies),
    // but they weaken the check, so `checked` says how many there were.
    let total: i64 = sold.values().sum();
    verdict(
        Invariant::NoOversold,
        format!(
            "{} products, {total} completed orders, {} unresolved purchases",
            observed.stock.len(),
            observed.unresolved.len()
        ),
        evidence,
    )
}

fn lost(observed: &Observed) -> Verdict {
    let mut evidence = Vec::new();
    for acked in &observed.acknowledged {
        let id = &acked.order_id;
        match observed.orders.get(id) {
            None | Some(OrderLookup::NotFound) => evidence.push(format!(
                "order {id} (answered {}, user {}, product {}): not found",
                acked.status, acked.user, acked.product
            )),
            Some(OrderLookup::Unreadable { error }) => evidence.push(format!(
                "order {id} (answered {}): could not be read: {error}",
                acked.status
            )),
            Some(OrderLookup::Found(order)) => {
                if !acceptable_end(order) {
                    evidence.push(format!(
                        "order {id} (answered {}): status {}{}, expected completed \
                         (or cancelled: out-of-stock)",
                        acked.status,
                        order.status,
                        order
                            .cancel_reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ));
                }
                if order.user != acked.user || order.product != acked.product {
                    evidence.push(format!(
                        "order {id}: recorded for user {} product {}, sent for user {} product {}",
                        order.user, order.product, acked.user, acked.product
                    ));
                }
            }
        }
    }
    let distinct: BTreeSet<&str> = observed
        .acknowledged
        .iter()
        .map(|a| a.order_id.as_str())
        .collect();
    if distinct.len() != observed.acknowledged.len() {
        evidence.push(format!(
            "{} acknowledgements carry only {} distinct order ids",
            observed.acknowledged.len(),
            distinct.len()
        ));
    }
    verdict(
        Invariant::NoLostOrder,
        format!("{} acknowledged orders", observed.acknowledged.len()),
        evidence,
    )
}

fn double_credit(observed: &Observed, completed: &[(&str, &OrderState)]) -> Verdict {
    let mut evidence = Vec::new();
    let mut by_transaction: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for (id, order) in completed {
        match order.transaction_id.as_deref() {
            Some(tx) if !tx.is_empty() => by_transaction.entry(tx).or_default().push(id),
            _ => evidence.push(format!("order {id}: completed without a transaction id")),
        }
        *expected.entry(order.user.as_str()).or_default() += order.bonus_points.unwrap_or(0);
    }
    for (tx, ids) in &by_transaction {
        if ids.len() > 1 {
            evidence.push(format!(
                "transaction id {tx} appears in {} orders: {}",
                ids.len(),
                ids.join(", ")
            ));
        }
    }
    for (user, balance) in &observed.balances {
        let want = expected.get(user.as_str()).copied().unwrap_or(0);
        match balance {
            Some(points) if *points == want => {}
            Some(points) => {
                let orders: Vec<&str> = completed
                    .iter()
                    .filter(|(_, o)| o.user == *user)
                    .map(|(id, _)| *id)
                    .collect();
                evidence.push(format!(
                    "user {user}: balance {points} points, expected {want} (sum of bonus_points \
                     of {} completed orders{})",
                    orders.len(),
                    if orders.len() <= 10 {
                        format!(": {}", orders.join(", "))
                    } else {
                        String::new()
                    }
                ));
            }
            None => evidence.push(format!("user {user}: balance could not be read")),
        }
    }
    for user in expected.keys() {
        if !observed.balances.contains_key(*user) {
            evidence.push(format!("user {user}: completed orders but no balance read"));
        }
    }
    verdict(
        Invariant::NoDoubleCredit,
        format!(
            "{} transaction ids, {} users' balances",
            by_transaction.len(),
            observed.balances.len()
        ),
        evidence,
    )
}

fn drain(observed: &Observed) -> Verdict {
    let drain = &observed.drain;
    let mut evidence = Vec::new();
    match drain.drained_after_s {
        Some(seconds) if seconds <= drain.timeout_s => {}
        Some(seconds) => evidence.push(format!(
            "drained after {seconds:.1} s, above the {:.0} s limit",
            drain.timeout_s
        )),
        None => evidence.push(format!(
            "not drained within {:.0} s: {} pending orders, {} outbox bonuses, {} pending in \
             Fidelity",
            drain.timeout_s,
            drain.last.pending_orders,
            drain.last.outbox_bonuses,
            drain.last.fidelity_pending
        )),
    }
    verdict(
        Invariant::BonusesDrain,
        match drain.drained_after_s {
            Some(s) => format!("drained in {s:.1} s (limit {:.0} s)", drain.timeout_s),
            None => format!("limit {:.0} s", drain.timeout_s),
        },
        evidence,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests state their expectations by unwrapping
mod tests {
    use super::*;

    fn order(user: &str, product: &str, tx: &str, points: i64) -> OrderState {
        OrderState {
            status: "completed".into(),
            user: user.into(),
            product: product.into(),
            transaction_id: Some(tx.into()),
            bonus_points: Some(points),
            bonus_status: Some("credited".into()),
            cancel_reason: None,
        }
    }

    /// Two users, three completed orders, one reconciled; everything consistent.
    fn healthy() -> Observed {
        let mut observed = Observed::default();
        observed.stock.insert(
            "1".into(),
            StockSamples {
                before: 10,
                min_seen: 7,
                after: 7,
            },
        );
        observed.stock.insert(
            "2".into(),
            StockSamples {
                before: 5,
                min_seen: 5,
                after: 5,
            },
        );
        for (id, user, tx, status) in [("o1", "u1", "t1", 200), ("o2", "u1", "t2", 202)] {
            observed.acknowledged.push(AckedOrder {
                order_id: id.into(),
                user: user.into(),
                product: "1".into(),
                status,
            });
            observed
                .orders
                .insert(id.into(), OrderLookup::Found(order(user, "1", tx, 200)));
        }
        observed.reconciled.push("o3".into());
        observed
            .orders
            .insert("o3".into(), OrderLookup::Found(order("u2", "1", "t3", 200)));
        observed.balances.insert("u1".into(), Some(400));
        observed.balances.insert("u2".into(), Some(200));
        observed.drain = Drain {
            timeout_s: 120.0,
            drained_after_s: Some(1.5),
            last: Backlog::default(),
        };
        observed
    }

    fn broken(observed: &Observed) -> Vec<Violation> {
        check(observed)
            .into_iter()
            .flat_map(|v| v.violations)
            .collect()
    }

    #[test]
    fn a_consistent_run_passes() {
        let verdicts = check(&healthy());
        assert_eq!(verdicts.len(), 4);
        assert!(verdicts.iter().all(|v| v.holds), "{verdicts:#?}");
    }

    #[test]
    fn a_balance_off_by_one_is_a_double_credit() {
        let mut observed = healthy();
        observed.balances.insert("u1".into(), Some(401));
        let violations = broken(&observed);
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].invariant, Invariant::NoDoubleCredit);
        assert!(violations[0].evidence.contains("u1"));
        assert!(violations[0].evidence.contains("balance 401"));
        assert!(violations[0].evidence.contains("expected 400"));
    }

    #[test]
    fn a_missing_order_is_lost() {
        let mut observed = healthy();
        observed.orders.insert("o2".into(), OrderLookup::NotFound);
        let violations = broken(&observed);
        let lost: Vec<_> = violations
            .iter()
            .filter(|v| v.invariant == Invariant::NoLostOrder)
            .collect();
        assert_eq!(lost.len(), 1, "{violations:#?}");
        assert!(lost[0].evidence.contains("o2"));
        assert!(lost[0].evidence.contains("not found"));
        // The order no longer counts as completed, so stock and balance disagree too.
        assert!(
            violations
                .iter()
                .any(|v| v.invariant == Invariant::NoOversold)
        );
    }

    #[test]
    fn a_stuck_or_wrongly_cancelled_order_is_lost() {
        let mut observed = healthy();
        let mut pending = order("u1", "1", "t2", 200);
        pending.status = "pending".into();
        observed
            .orders
            .insert("o2".into(), OrderLookup::Found(pending.clone()));
        assert!(broken(&observed).iter().any(
            |v| v.invariant == Invariant::NoLostOrder && v.evidence.contains("status pending")
        ));

        // Cancelled for being out of stock is an acceptable end; for another reason it is not.
        pending.status = "cancelled".into();
        pending.cancel_reason = Some("out-of-stock".into());
        observed
            .orders
            .insert("o2".into(), OrderLookup::Found(pending.clone()));
        assert!(
            !broken(&observed)
                .iter()
                .any(|v| v.invariant == Invariant::NoLostOrder)
        );
        pending.cancel_reason = Some("unknown-product".into());
        observed
            .orders
            .insert("o2".into(), OrderLookup::Found(pending));
        assert!(
            broken(&observed)
                .iter()
                .any(|v| v.invariant == Invariant::NoLostOrder)
        );
    }

    #[test]
    fn an_extra_unit_sold_or_negative_stock_is_oversold() {
        let mut observed = healthy();
        observed.stock.get_mut("1").unwrap().after = 6;
        let violations = broken(&observed);
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].invariant, Invariant::NoOversold);
        assert!(violations[0].evidence.contains("stock fell by 4"));
        assert!(violations[0].evidence.contains("expected 3"));

        // One unresolved purchase may account for the extra unit; a second extra one cannot.
        observed.unresolved.push("key-1".into());
        assert!(broken(&observed).is_empty());
        observed.stock.get_mut("1").unwrap().after = 5;
        assert_eq!(broken(&observed).len(), 1);

        let mut observed = healthy();
        observed.stock.get_mut("2").unwrap().min_seen = -1;
        let violations = broken(&observed);
        assert!(
            violations[0].evidence.contains("below zero"),
            "{violations:#?}"
        );
    }

    #[test]
    fn a_transaction_id_twice_is_a_double_credit() {
        let mut observed = healthy();
        observed
            .orders
            .insert("o3".into(), OrderLookup::Found(order("u2", "1", "t1", 200)));
        let violations = broken(&observed);
        assert!(
            violations
                .iter()
                .any(|v| v.invariant == Invariant::NoDoubleCredit
                    && v.evidence.contains("t1")
                    && v.evidence.contains("o1, o3")),
            "{violations:#?}"
        );
    }

    #[test]
    fn a_backlog_that_never_drains_is_reported() {
        let mut observed = healthy();
        observed.drain.drained_after_s = None;
        observed.drain.last = Backlog {
            pending_orders: 0,
            outbox_bonuses: 3,
            fidelity_pending: 1,
        };
        let violations = broken(&observed);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].invariant, Invariant::BonusesDrain);
        assert!(violations[0].evidence.contains("3 outbox bonuses"));
    }
}
