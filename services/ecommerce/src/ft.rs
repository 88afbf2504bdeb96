//! The fault-tolerant path (`ft=true`): every downstream call goes through the resilience
//! crate, each Store and Exchange replica has its own circuit breakers (one per route, since
//! faults are per route), and the whole purchase runs under one deadline.
//!
//! - `/product`: catalog cache first (TTL, stale allowed); on a miss, a hedged request: if the
//!   first replica has not answered after a short delay, the other one is asked too. A first
//!   attempt that loses to the hedge counts as a failure of its replica, so a replica that
//!   swallows requests is ejected instead of costing every purchase the hedge delay.
//! - `/exchange`: rate cache first (short TTL); on a miss, failover across replicas whose breaker
//!   admits calls; when none answers, the last known good rate (bounded age).
//! - `/sell`: failover across Store replicas with an idempotency key derived from the order, so
//!   a retried or failed-over sale never sells twice.
//! - `/bonus`: one short attempt, only while Fidelity's breaker is closed; otherwise the bonus
//!   goes straight to the durable outbox without a call. The outbox dispatcher's deliveries are
//!   the breaker's trial calls (see [`Resilient::bonus_delivery_permit`]), so a 30 s latency
//!   window on Fidelity costs a purchase nothing once the breaker has opened: no request waits
//!   out a timeout to learn that Fidelity is still slow.
//!
//! Failover between replicas is a retry, so it spends the shared retry budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ftshop_resilience::{
    BreakerConfig, BreakerRegistry, CacheConfig, CacheSource, CircuitBreaker, HedgePolicy,
    LatencyEstimator, Policy, ResilienceError, RetryBudget, RetryPolicy, State, TieredCache,
};
use tokio::time::Instant;

use crate::downstream::{Downstreams, Product, Rate, Sale, Step, StepError};

/// Tunables of the fault-tolerant path (see `Config` for the flags).
#[derive(Debug, Clone)]
pub struct FtSettings {
    pub product_timeout: Duration,
    pub hedge_after: Duration,
    pub exchange_timeout: Duration,
    pub sell_timeout: Duration,
    pub bonus_timeout: Duration,
    pub catalog_ttl: Duration,
    pub catalog_max_stale: Duration,
    pub rate_ttl: Duration,
    pub rate_max_stale: Duration,
}

impl Default for FtSettings {
    fn default() -> Self {
        Self {
            product_timeout: Duration::from_millis(250),
            hedge_after: Duration::from_millis(40),
            exchange_timeout: Duration::from_millis(200),
            sell_timeout: Duration::from_millis(300),
            bonus_timeout: Duration::from_millis(150),
            catalog_ttl: Duration::from_secs(30),
            catalog_max_stale: Duration::from_secs(3600),
            rate_ttl: Duration::from_secs(1),
            rate_max_stale: Duration::from_secs(600),
        }
    }
}

/// One replica of a service and the policies guarding each of its routes.
struct Replica {
    base: String,
    /// Per route: (policy with timeout + breaker, the breaker itself for health-aware picking).
    routes: Vec<(Policy<StepError>, CircuitBreaker)>,
}

impl Replica {
    fn route(&self, i: usize) -> &(Policy<StepError>, CircuitBreaker) {
        &self.routes[i]
    }
}

const PRODUCT: usize = 0;
/// Hedged rounds for a product that is not in the catalog cache at all.
const PRODUCT_ROUNDS: usize = 3;
const SELL: usize = 1;
const RATE: usize = 0;

/// What the fault-tolerant calls learned besides their value: the fallbacks they used.
#[derive(Debug, Default)]
pub struct Degradations(pub Vec<String>);

impl Degradations {
    pub fn add(&mut self, what: &str) {
        if !self.0.iter().any(|d| d == what) {
            // `what` is one of a handful of fixed strings, so the label stays bounded.
            metrics::counter!("shop_fallbacks_total", "kind" => what.to_owned()).increment(1);
            // An event of the purchase's span: which fallback saved it.
            tracing::info!(degraded = what, "fallback used");
            self.0.push(what.to_owned());
        }
    }
}

/// Why the fault-tolerant sale did not happen.
pub enum SellFailure {
    /// A final answer from Store (unknown product, out of stock): pass it on.
    Final(StepError),
    /// No replica could sell in time; the order may be deferred. `in_doubt`: some attempt may
    /// have sold the unit anyway (it timed out, or its answer was lost or unreadable), so the
    /// order must be driven to its end under the same sale key, never refused as unsold.
    Unavailable { error: StepError, in_doubt: bool },
}

pub struct Resilient {
    calls: Arc<Downstreams>,
    registry: BreakerRegistry,
    stores: Vec<Replica>,
    exchanges: Vec<Replica>,
    fidelity: Policy<StepError>,
    /// Fidelity's breaker: the request path calls only while it is closed.
    fidelity_breaker: CircuitBreaker,
    /// Fidelity's recent answer times: a purchase's bonus call times out at 4 × their p99
    /// (at least [`BONUS_TIMEOUT_FLOOR`], at most `bonus_timeout`), so the calls that meet the
    /// start of a latency window, before the breaker has opened, give up early.
    bonus_latency: LatencyEstimator,
    catalog: TieredCache<Product>,
    rates: TieredCache<Rate>,
    /// The failover across Store replicas for a sale, and across Exchange replicas for the
    /// rate: built once (a policy registers its metric handles when built, five counters for a
    /// retry), sharing one failover budget.
    sell_failover: Policy<ResilienceError<StepError>>,
    rate_failover: Policy<ResilienceError<StepError>>,
    hedges: RetryBudget,
    next: AtomicUsize,
    settings: FtSettings,
    /// Where the last good rate is remembered across restarts (set once at start).
    rate_store: std::sync::OnceLock<ftshop_platform::db::Db>,
    rate_remembered_at: std::sync::atomic::AtomicI64,
}

/// The one currency pair the shop converts.
const RATE_PAIR: &str = "USD-BRL";

/// 4xx answers are the dependency working correctly: not failures for a breaker, never retried.
fn is_failure(err: &StepError) -> bool {
    !matches!(err, StepError::Status { status, .. } if status.is_client_error())
}

/// The shortest adaptive bonus timeout: well above Fidelity's normal answer time (a few ms) and
/// the scheduling noise of a busy 2-core machine, so a healthy Fidelity is never given up on.
const BONUS_TIMEOUT_FLOOR: Duration = Duration::from_millis(50);

/// The share of an attempt's timeout after which a call counts as slow for its breaker.
const SLOW_SHARE_OF_TIMEOUT: f64 = 0.8;
/// The slow-call rate that ejects a replica (opens its breaker).
const SLOW_RATE_THRESHOLD: f64 = 0.8;

/// Breaker settings for one route of one replica whose attempts time out after `timeout`.
///
/// The breaker is also the latency-aware outlier detector of the balancer ([`Resilient`]
/// puts replicas whose breaker is open last): a replica whose calls nearly all (80 %) take
/// at least 80 % of their timeout is ejected like a failing one, whether those calls finish
/// or are cancelled by the request deadline or a client that hung up (a cancelled call past
/// the threshold counts as slow, see `ftshop_resilience::breaker`).
fn breaker_config(wait_in_open: Duration, timeout: Duration) -> BreakerConfig {
    // Small windows and a short wait in open: faults here come in windows of seconds, so the
    // breaker must notice within a handful of calls and probe again soon.
    BreakerConfig::builder()
        .failure_rate_threshold(0.5)
        .slow_call_threshold(timeout.mul_f64(SLOW_SHARE_OF_TIMEOUT), SLOW_RATE_THRESHOLD)
        .count_window(10)
        .minimum_calls(4)
        .wait_in_open(wait_in_open)
        .permitted_calls_in_half_open(2)
        .build()
        .unwrap_or_default()
}

impl Resilient {
    pub fn new(calls: Arc<Downstreams>, settings: FtSettings) -> anyhow::Result<Self> {
        let registry = BreakerRegistry::new();
        let replica = |kind: &str, i: usize, base: &str, routes: &[(&str, Duration)]| Replica {
            base: base.to_owned(),
            routes: routes
                .iter()
                .map(|(route, timeout)| {
                    let name = format!("{kind}-{}.{route}", i + 1);
                    let breaker = registry
                        .get_or_create(&name, breaker_config(Duration::from_millis(500), *timeout));
                    let policy = Policy::named(name)
                        .timeout(*timeout)
                        .breaker(breaker.clone())
                        .failure_if(is_failure)
                        .span_attempts();
                    (policy, breaker)
                })
                .collect(),
        };
        let stores: Vec<Replica> = calls
            .stores()
            .iter()
            .enumerate()
            .map(|(i, base)| {
                replica(
                    "store",
                    i,
                    base,
                    &[
                        ("product", settings.product_timeout),
                        ("sell", settings.sell_timeout),
                    ],
                )
            })
            .collect();
        let exchanges: Vec<Replica> = calls
            .exchanges()
            .iter()
            .enumerate()
            .map(|(i, base)| {
                replica(
                    "exchange",
                    i,
                    base,
                    &[("exchange", settings.exchange_timeout)],
                )
            })
            .collect();
        let fidelity_breaker = registry.get_or_create(
            "fidelity.bonus",
            breaker_config(Duration::from_secs(1), settings.bonus_timeout),
        );
        let fidelity = Policy::named("fidelity.bonus")
            .timeout(settings.bonus_timeout)
            .breaker(fidelity_breaker.clone())
            .failure_if(is_failure)
            .span_attempts();
        let catalog = TieredCache::new(
            CacheConfig::builder("catalog")
                .ttl(settings.catalog_ttl)
                .max_staleness(settings.catalog_max_stale)
                .capacity(10_000)
                .build()?,
        );
        let rates = TieredCache::new(
            CacheConfig::builder("exchange_rate")
                .ttl(settings.rate_ttl)
                .max_staleness(settings.rate_max_stale)
                .capacity(16)
                .build()?,
        );
        // Failover may add up to 50 % more calls, with a floor for quiet periods.
        let failover = RetryBudget::new(Duration::from_secs(10), 5, 0.5)?;
        let (stores_len, exchanges_len) = (stores.len(), exchanges.len());
        Ok(Self {
            calls,
            registry,
            stores,
            exchanges,
            fidelity,
            // Starting at the floor, not the ceiling: Fidelity's normal answer is a few ms, so
            // the purchases made before 20 answers are known (a fresh process under a latency
            // window may wait long for them) give up at 50 ms like later ones, not at 150 ms
            // (docs/benchmarks/sustained-faults.md).
            bonus_latency: LatencyEstimator::try_new(
                100,
                20,
                4.0,
                BONUS_TIMEOUT_FLOOR.min(settings.bonus_timeout),
                settings.bonus_timeout,
            )?
            .starting_at(BONUS_TIMEOUT_FLOOR),
            fidelity_breaker,
            catalog,
            rates,
            sell_failover: failover_policy(Step::Sell, stores_len, &failover),
            rate_failover: failover_policy(Step::Exchange, exchanges_len, &failover),
            hedges: RetryBudget::new(Duration::from_secs(10), 5, 0.3)?,
            next: AtomicUsize::new(0),
            settings,
            rate_store: std::sync::OnceLock::new(),
            rate_remembered_at: std::sync::atomic::AtomicI64::new(0),
        })
    }

    pub fn registry(&self) -> &BreakerRegistry {
        &self.registry
    }

    pub fn settings(&self) -> &FtSettings {
        &self.settings
    }

    /// How many Store replicas' `/sell` breakers admit calls now (closed, half-open, or open
    /// with its wait over, so the next call is a probe): the order worker's concurrency, and 0
    /// when every replica is ejected.
    pub fn sell_replicas_admitting(&self) -> usize {
        self.stores
            .iter()
            .filter(|r| {
                let breaker = &r.route(SELL).1;
                match breaker.state() {
                    State::Closed | State::HalfOpen => true,
                    State::ForcedOpen => false,
                    // `state()` says Open until a call asks; the status knows the wait.
                    State::Open => breaker.status().retry_after_ms == Some(0),
                }
            })
            .count()
    }

    /// Replica indices starting at the round-robin position, those whose breaker for `route`
    /// admits calls first (health-aware balancing; an open breaker is an ejected outlier: it
    /// opens on failures, on slow calls, and on first attempts that lost a hedge race, so a
    /// replica that swallows requests stops getting first attempts).
    fn order(&self, replicas: &[Replica], route: usize) -> Vec<usize> {
        let n = replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        order.sort_by_key(|&i| {
            matches!(
                replicas[i].route(route).1.state(),
                State::Open | State::ForcedOpen
            )
        });
        order
    }

    /// The product, from the catalog cache or a hedged request across Store replicas.
    pub async fn product(
        self: &Arc<Self>,
        id: &str,
        request_id: &str,
        deadline: Instant,
        degraded: &mut Degradations,
    ) -> Result<Product, StepError> {
        // A failed load serves a stale catalog entry when there is one; only a product never
        // seen (cold cache) gets further hedged rounds, while the deadline leaves room for one
        // (an omission costs a whole attempt timeout, so two omitted replicas are 4 % of loads).
        let mut round = 0;
        let loaded = loop {
            round += 1;
            let this = self.clone();
            let (id_owned, rid) = (id.to_owned(), request_id.to_owned());
            let loaded = self
                .catalog
                .get_or_store(id, move || async move {
                    this.fetch_product(&id_owned, &rid, deadline).await
                })
                .await;
            let room = Instant::now() + self.settings.product_timeout + self.settings.hedge_after
                < deadline;
            match loaded {
                Err(ftshop_resilience::CacheError::Load(err))
                    if round < PRODUCT_ROUNDS && room && is_failure(&err) =>
                {
                    tracing::debug!(
                        product = id,
                        round,
                        "product not loaded; another hedged round"
                    );
                }
                other => break other,
            }
        };
        match loaded {
            Ok(cached) => {
                if cached.source == CacheSource::Stale {
                    degraded.add("product:stale-catalog");
                }
                Ok(cached.value)
            }
            Err(ftshop_resilience::CacheError::Load(err)) => Err((*err).clone()),
            Err(other) => Err(StepError::Transport {
                step: Step::Product,
                cause: other.to_string(),
                never_sent: false,
            }),
        }
    }

    async fn fetch_product(
        &self,
        id: &str,
        request_id: &str,
        deadline: Instant,
    ) -> Result<Product, StepError> {
        let order = self.order(&self.stores, PRODUCT);
        let attempt = AtomicUsize::new(0);
        let hedged: Policy<ResilienceError<StepError>> = Policy::named("store.product")
            .hedge(HedgePolicy::after(self.settings.hedge_after).budget(self.hedges.clone()));
        let result = hedged
            .call_with_deadline(deadline, || {
                // The first attempt goes to the healthiest replica, the hedge to the next one.
                let k = attempt.fetch_add(1, Ordering::Relaxed);
                let index = order[k % order.len()];
                let replica = &self.stores[index];
                let (policy, _) = replica.route(PRODUCT);
                if k > 0 {
                    crate::story::hedged();
                }
                crate::story::breaker_guarded(
                    Step::Product,
                    index + 1,
                    policy.call(|| {
                        self.calls.product_at(
                            &replica.base,
                            id,
                            request_id,
                            self.settings.product_timeout,
                        )
                    }),
                )
            })
            .await;
        flatten(result, Step::Product)
    }

    /// The USD→BRL rate: cached briefly, else failover across Exchange replicas, else the last
    /// known good rate (reported in `degraded`).
    pub async fn rate(
        self: &Arc<Self>,
        request_id: &str,
        deadline: Instant,
        degraded: &mut Degradations,
    ) -> Result<Rate, StepError> {
        let this = self.clone();
        let rid = request_id.to_owned();
        let loaded = self
            .rates
            .get_or_store("USD-BRL", move || async move {
                let order = this.order(&this.exchanges, RATE);
                let (this, rid) = (&this, &rid);
                this.failover(
                    &this.rate_failover,
                    &this.exchanges,
                    &order,
                    RATE,
                    Step::Exchange,
                    deadline,
                    |base| async move {
                        this.calls
                            .exchange_at(&base, rid, this.settings.exchange_timeout)
                            .await
                    },
                )
                .await
            })
            .await;
        let result = match loaded {
            Ok(cached) => {
                if cached.source == CacheSource::Stale {
                    degraded.add("exchange:last-known-rate");
                }
                if cached.value.source.as_deref() == Some("stale") {
                    degraded.add("exchange:stale-upstream-rate");
                }
                if cached.source == CacheSource::Loaded {
                    self.remember_rate(cached.value.rate);
                }
                return Ok(cached.value);
            }
            Err(ftshop_resilience::CacheError::Load(err)) => (*err).clone(),
            Err(other) => StepError::Transport {
                step: Step::Exchange,
                cause: other.to_string(),
                never_sent: false,
            },
        };
        // Nothing in memory (this process has just started): the rate remembered in the
        // database, if it is not older than the staleness bound.
        match self.remembered_rate().await {
            Some(rate) => {
                degraded.add("exchange:last-known-rate");
                Ok(rate)
            }
            None => Err(result),
        }
    }

    /// Writes a freshly loaded rate to the database, at most once a second.
    fn remember_rate(&self, rate: ftshop_platform::money::Decimal) {
        let Some(db) = self.rate_store.get().cloned() else {
            return;
        };
        let now = ftshop_platform::db::now_millis();
        let last = self.rate_remembered_at.load(Ordering::Relaxed);
        if now - last < 1_000
            || self
                .rate_remembered_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        tokio::spawn(async move {
            if let Err(err) = crate::orders::store_last_rate(&db, RATE_PAIR, rate).await {
                tracing::debug!(error = %err, "could not remember the last rate");
            }
        });
    }

    async fn remembered_rate(&self) -> Option<Rate> {
        let db = self.rate_store.get()?;
        match crate::orders::last_rate(db, RATE_PAIR).await {
            Ok(Some((rate, age_ms)))
                if u128::try_from(age_ms).unwrap_or(u128::MAX)
                    <= self.settings.rate_max_stale.as_millis()
                    && ftshop_platform::money::RateBand::DEFAULT
                        .check(rate)
                        .is_ok() =>
            {
                Some(Rate {
                    rate,
                    source: Some("remembered".to_owned()),
                })
            }
            Ok(_) => None,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the remembered rate");
                None
            }
        }
    }

    /// Keeps the last good rate in `db` too, so a restarted process has a fallback.
    pub fn remember_rates_in(&self, db: ftshop_platform::db::Db) {
        let _ = self.rate_store.set(db);
    }

    /// Sells one unit through the first Store replica that can, within `deadline`.
    pub async fn sell(
        &self,
        product: &str,
        idempotency_key: &str,
        request_id: &str,
        deadline: Instant,
        timeout: Duration,
        degraded: &mut Degradations,
    ) -> Result<Sale, SellFailure> {
        let order = self.order(&self.stores, SELL);
        let first = order[0];
        let attempts = AtomicUsize::new(0);
        // Attempts sent whose outcome is unknown: counted before the request, uncounted once an
        // answer says nothing was sold; an attempt dropped by its timeout or the deadline stays
        // counted.
        let in_doubt = AtomicUsize::new(0);
        let result = self
            .failover_counting(
                &self.sell_failover,
                &self.stores,
                &order,
                SELL,
                Step::Sell,
                deadline,
                &attempts,
                |base| {
                    let in_doubt = &in_doubt;
                    async move {
                        in_doubt.fetch_add(1, Ordering::Relaxed);
                        let result = self
                            .calls
                            .sell_at(&base, product, idempotency_key, request_id, timeout)
                            .await;
                        if !matches!(&result, Err(e) if e.may_have_happened()) {
                            in_doubt.fetch_sub(1, Ordering::Relaxed);
                        }
                        result
                    }
                },
            )
            .await;
        match result {
            Ok(sale) => {
                if attempts.load(Ordering::Relaxed) > 1
                    || self.stores[first].route(SELL).1.state() != State::Closed
                {
                    degraded.add("store:failover");
                }
                Ok(sale)
            }
            Err(err) if !is_failure(&err) => Err(SellFailure::Final(err)),
            Err(error) => Err(SellFailure::Unavailable {
                error,
                in_doubt: in_doubt.load(Ordering::Relaxed) > 0,
            }),
        }
    }

    /// One short attempt to credit the bonus, made only while Fidelity's breaker is closed.
    ///
    /// With the breaker open or half-open the call is not made at all and the answer is an
    /// error at once (the caller queues the bonus in the outbox): the trial calls that decide
    /// whether Fidelity has recovered are the outbox dispatcher's deliveries, which have time
    /// to wait (see [`Self::bonus_delivery_permit`]), never a customer's purchase. Without this,
    /// every `wait_in_open` a purchase would pay a whole `bonus_timeout` as a half-open trial
    /// during a latency window (the source of most of the p99 under the default faults).
    ///
    /// Errors: [`StepError::Transport`] (step `bonus`) when the breaker is not closed, else the
    /// call's own error or timeout.
    pub async fn bonus(
        &self,
        user: &str,
        points: i64,
        transaction_id: &str,
        request_id: &str,
    ) -> Result<(), StepError> {
        let state = self.fidelity_breaker.state();
        if state != State::Closed {
            metrics::counter!("shop_bonus_calls_skipped_total").increment(1);
            crate::story::rejected(Step::Bonus, 1);
            return Err(StepError::Transport {
                step: Step::Bonus,
                cause: format!(
                    "Fidelity's breaker is {}; the outbox dispatcher delivers",
                    state.as_str()
                ),
                // Skipped: Fidelity never saw it.
                never_sent: true,
            });
        }
        let fidelity = self.calls.fidelity();
        // The timeout from Fidelity's observed latency; the policy carries it so a timeout
        // still counts as a failure for the breaker.
        let (policy, timeout) = self.bonus_policy();
        let started = Instant::now();
        let result = policy
            .call(|| {
                self.calls
                    .bonus_at(fidelity, user, points, transaction_id, request_id, timeout)
            })
            .await;
        if result.is_ok() {
            self.bonus_latency.record(started.elapsed());
        }
        result.map_err(|e| from_resilience(e, Step::Bonus))
    }

    /// The policy of the next purchase's bonus call and its timeout, derived from Fidelity's
    /// observed latency (see `bonus_latency`).
    fn bonus_policy(&self) -> (Policy<StepError>, Duration) {
        let timeout = self.bonus_latency.timeout();
        (self.fidelity.clone().timeout(timeout), timeout)
    }

    /// A permit for one outbox delivery to Fidelity, when the breaker admits one: the
    /// dispatcher reports the delivery's outcome on it, so its deliveries are the breaker's
    /// trial calls while it is open (the request path makes none, see [`Self::bonus`]) and
    /// count in its window while it is closed. `None` (open and still waiting, or the half-open
    /// trial slots taken): deliver anyway and report nothing, as before.
    pub fn bonus_delivery_permit(&self) -> Option<ftshop_resilience::breaker::OwnedPermit> {
        self.fidelity_breaker.try_acquire_owned().ok()
    }

    /// Whether `err` from Fidelity counts against its breaker (4xx answers do not).
    pub fn is_failure(err: &StepError) -> bool {
        is_failure(err)
    }

    #[allow(clippy::too_many_arguments)]
    async fn failover<T, F, Fut>(
        &self,
        failover: &Policy<ResilienceError<StepError>>,
        replicas: &[Replica],
        order: &[usize],
        route: usize,
        step: Step,
        deadline: Instant,
        call: F,
    ) -> Result<T, StepError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, StepError>>,
    {
        let attempts = AtomicUsize::new(0);
        self.failover_counting(
            failover, replicas, order, route, step, deadline, &attempts, call,
        )
        .await
    }

    /// Tries the replicas in `order`, one attempt each, moving on after a failure or an open
    /// breaker (spending the failover budget), stopping at a final (4xx) answer or the deadline.
    #[allow(clippy::too_many_arguments)]
    async fn failover_counting<T, F, Fut>(
        &self,
        failover: &Policy<ResilienceError<StepError>>,
        replicas: &[Replica],
        order: &[usize],
        route: usize,
        step: Step,
        deadline: Instant,
        attempts: &AtomicUsize,
        call: F,
    ) -> Result<T, StepError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, StepError>>,
    {
        debug_assert_eq!(order.len(), replicas.len(), "one attempt per replica");
        let result = failover
            .call_with_deadline(deadline, || {
                let k = attempts.fetch_add(1, Ordering::Relaxed);
                let index = order[k % order.len()];
                let replica = &replicas[index];
                let (policy, _) = replica.route(route);
                crate::story::breaker_guarded(
                    step,
                    index + 1,
                    policy.call(|| call(replica.base.clone())),
                )
            })
            .await;
        flatten(result, step)
    }
}

/// Failover across `replicas` replicas for `step`: one attempt each, 1-5 ms apart, moving on
/// after a failure, a timeout or an open breaker (not after a 4xx answer), within `budget`.
fn failover_policy(
    step: Step,
    replicas: usize,
    budget: &RetryBudget,
) -> Policy<ResilienceError<StepError>> {
    Policy::named(format!("{}.failover", step.as_str())).retry(
        RetryPolicy::exponential(Duration::from_millis(1))
            .max_delay(Duration::from_millis(5))
            .max_attempts(u32::try_from(replicas).unwrap_or(u32::MAX))
            .budget(budget.clone())
            .retry_if(
                |err: &ResilienceError<ResilienceError<StepError>>| match err {
                    ResilienceError::Inner(inner) => match inner {
                        ResilienceError::Inner(e) => is_failure(e),
                        _ => true,
                    },
                    ResilienceError::Timeout => true,
                    _ => false,
                },
            ),
    )
}

/// Unwraps the two policy layers (outer: hedge or failover, inner: the replica's policy).
fn flatten<T>(
    result: Result<T, ResilienceError<ResilienceError<StepError>>>,
    step: Step,
) -> Result<T, StepError> {
    match result {
        Ok(value) => Ok(value),
        Err(ResilienceError::Inner(inner)) => Err(from_resilience(inner, step)),
        Err(outer) => Err(from_resilience(
            outer.map_inner(|_| unreachable_inner(step)),
            step,
        )),
    }
}

/// The outer layer's own errors never carry an inner value; this only satisfies the types.
fn unreachable_inner(step: Step) -> StepError {
    StepError::Transport {
        step,
        cause: "no replica answered".to_owned(),
        never_sent: false,
    }
}

fn from_resilience(err: ResilienceError<StepError>, step: Step) -> StepError {
    match err {
        ResilienceError::Inner(e) => e,
        ResilienceError::Timeout => StepError::Timeout {
            step,
            after: Duration::ZERO,
        },
        other => StepError::Transport {
            step,
            cause: other.to_string(),
            never_sent: false,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests state their expectations by unwrapping

    use super::*;

    fn resilient() -> Resilient {
        let stores = [
            "http://127.0.0.1:9".to_owned(),
            "http://127.0.0.1:9".to_owned(),
        ];
        let exchanges = ["http://127.0.0.1:9".to_owned()];
        let calls = Downstreams::new(
            &stores,
            &exchanges,
            "http://127.0.0.1:9",
            Duration::from_secs(1),
        )
        .unwrap();
        Resilient::new(Arc::new(calls), FtSettings::default()).unwrap()
    }

    /// The bonus timeout follows Fidelity's observed latency: the 50 ms floor until 20 calls
    /// are known (a cold process does not wait out the 150 ms ceiling), then 4 × p99 with that
    /// floor; a call that meets a Fidelity that has just become slow gives up at that timeout
    /// (not the ceiling) and counts as a failure.
    #[tokio::test(start_paused = true)]
    async fn a_bonus_call_times_out_at_a_multiple_of_observed_latency() {
        let ft = resilient();
        let (cold, timeout) = ft.bonus_policy();
        assert_eq!(
            timeout, BONUS_TIMEOUT_FLOOR,
            "a cold start begins at the floor"
        );
        let started = Instant::now();
        let result = cold
            .call(std::future::pending::<Result<(), StepError>>)
            .await;
        assert!(
            matches!(result, Err(ResilienceError::Timeout)),
            "{result:?}"
        );
        assert_eq!(
            started.elapsed(),
            BONUS_TIMEOUT_FLOOR,
            "not the 150 ms ceiling"
        );
        for _ in 0..20 {
            ft.bonus_latency.record(Duration::from_millis(4));
        }
        let (policy, timeout) = ft.bonus_policy();
        assert_eq!(timeout, BONUS_TIMEOUT_FLOOR);
        let started = Instant::now();
        let result = policy
            .call(std::future::pending::<Result<(), StepError>>)
            .await;
        assert!(
            matches!(result, Err(ResilienceError::Timeout)),
            "{result:?}"
        );
        assert_eq!(started.elapsed(), BONUS_TIMEOUT_FLOOR);
        assert_eq!(ft.fidelity_breaker.status().failures_in_window, 2);

        for _ in 0..100 {
            ft.bonus_latency.record(Duration::from_millis(30));
        }
        assert_eq!(ft.bonus_policy().1, Duration::from_millis(120));
    }

    /// Latency-aware ejection: a Store replica whose product calls succeed but take 90 % of
    /// their timeout, or are dropped by the request deadline that late, is ejected and goes
    /// last in the balancing order.
    #[tokio::test(start_paused = true)]
    async fn a_replica_that_is_only_slow_is_ejected_and_goes_last() {
        let ft = resilient();
        let timeout = ft.settings.product_timeout;
        let (policy, breaker) = ft.stores[0].route(PRODUCT);
        for i in 0..4 {
            let slow = || async move {
                tokio::time::sleep(timeout.mul_f64(0.9)).await;
                Ok::<_, StepError>(i)
            };
            if i % 2 == 0 {
                assert_eq!(policy.call(slow).await.ok(), Some(i));
            } else {
                // The request deadline drops the call just before its own timeout.
                let dropped = tokio::time::timeout(
                    timeout.mul_f64(0.85),
                    policy.call(std::future::pending::<Result<i32, StepError>>),
                )
                .await;
                assert!(dropped.is_err());
            }
        }
        let status = breaker.status();
        assert_eq!(status.state, State::Open, "{status:?}");
        assert_eq!(
            (status.slow_calls_in_window, status.failures_in_window),
            (4, 0)
        );
        for _ in 0..4 {
            assert_eq!(ft.order(&ft.stores, PRODUCT), vec![1, 0]);
        }
        assert_eq!(ft.order(&ft.stores, SELL).len(), 2);
    }
}
