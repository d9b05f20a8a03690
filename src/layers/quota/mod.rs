//! [`QuotaLayer`]: daily token budgets per caller key and per provider, budget tiers, and a
//! cost ceiling per request.
//!
//! Before a request goes to its target, the layer
//!
//! 1. refuses it with [`ErrorKind::CostLimitExceeded`] when its estimated cost at the target's
//!    price (estimated prompt tokens, plus `max_tokens` when the client set it) exceeds
//!    `max_cost_per_request`;
//! 2. refuses it with [`ErrorKind::BudgetExceeded`] when the caller key's daily budget cannot
//!    hold the estimate, or, for a key of the [`BudgetTier::Fill`] tier, when the provider's
//!    daily budget cannot (keys of the `always` tier are served past it: the provider budget
//!    is what the others may fill);
//! 3. otherwise *reserves* the estimate on both budgets and hands the reservation on as a
//!    [`UsageHook`]. The usage tap settles it with the answer's real usage when the answer
//!    ends; an attempt that fails releases it.
//!
//! Both refusals are errors the router fails over on: another target may have budget, or be
//! cheaper. Days are UTC days of the [`Ledger`]'s clock, which tests can drive.
//!
//! ```
//! use std::sync::Arc;
//! use nenya::layers::quota::{Ledger, QuotaConfig, QuotaLayer, QuotaSubject, KeyQuota};
//! use nenya::model::{ApiFormat, ChatRequest};
//! use nenya::pricing::PriceTable;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut cfg = QuotaConfig::default();
//! cfg.keys.insert("ci".into(), KeyQuota { token_budget_daily: Some(1), ..KeyQuota::default() });
//! let svc = ServiceBuilder::new()
//!     .layer(QuotaLayer::new(cfg, Ledger::new(), PriceTable::default(), |_: &http::Request<ChatRequest>| {
//!         QuotaSubject { key: "ci".into(), provider: "openai".into(), model: "gpt-4o".into() }
//!     }))
//!     .service(service_fn(|_req: http::Request<ChatRequest>| async {
//!         Ok::<_, nenya::Error>(http::Response::new(nenya::Body::empty()))
//!     }));
//! let req = nenya::adapters::decode_request(ApiFormat::OpenAi,
//!     br#"{"model":"m","messages":[{"role":"user","content":"a prompt of some tokens"}]}"#).unwrap();
//! let err = svc.oneshot(http::Request::new(req)).await.unwrap_err();
//! assert_eq!(err.kind(), nenya::ErrorKind::BudgetExceeded);
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use http::Request;
use tower::Service;
use tower_layer::Layer;

use crate::error::{Error, ErrorKind};
use crate::layers::guard::ErrOr;
use crate::model::{ChatRequest, SettleUsage, Settlement, UsageHook};
use crate::pricing::PriceTable;

/// Which requests a provider's daily budget stops.
///
/// ```
/// assert_eq!("fill".parse::<nenya::layers::quota::BudgetTier>().unwrap(), nenya::layers::quota::BudgetTier::Fill);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BudgetTier {
    /// Served whatever the provider budget says (the default).
    #[default]
    Always,
    /// Served only while the provider's daily budget has room.
    Fill,
}

impl std::str::FromStr for BudgetTier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Self::Always),
            "fill" => Ok(Self::Fill),
            _ => Err(format!(
                "unknown budget tier `{s}` (expected `always` or `fill`)"
            )),
        }
    }
}

/// One caller key's limits.
///
/// ```
/// assert_eq!(nenya::layers::quota::KeyQuota::default().token_budget_daily, None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyQuota {
    /// Tokens (prompt + completion) per UTC day; `None` is unlimited.
    pub token_budget_daily: Option<u64>,
    /// Whether provider budgets stop this key.
    pub tier: BudgetTier,
}

/// What the layer enforces.
///
/// ```
/// let cfg = nenya::layers::quota::QuotaConfig::default();
/// assert!(cfg.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaConfig {
    /// Per caller key (by key name).
    pub keys: HashMap<Arc<str>, KeyQuota>,
    /// Daily token budget per provider.
    pub providers: HashMap<Arc<str>, u64>,
    /// Refuse a target when the request's estimated cost there exceeds this (USD).
    pub max_cost_per_request: Option<f64>,
}

impl QuotaConfig {
    /// Nothing to enforce (the gateway then leaves the layer out).
    pub fn is_empty(&self) -> bool {
        self.max_cost_per_request.is_none()
            && self.providers.is_empty()
            && self
                .keys
                .values()
                .all(|k| k.token_budget_daily.is_none() && k.tier == BudgetTier::Always)
    }
}

/// Whom a request is charged to.
///
/// ```
/// let s = nenya::layers::quota::QuotaSubject { key: "ci".into(), provider: "openai".into(), model: "gpt-4o".into() };
/// assert_eq!(&*s.provider, "openai");
/// ```
#[derive(Debug, Clone)]
pub struct QuotaSubject {
    /// The caller key's name (empty: no key).
    pub key: Arc<str>,
    /// The target provider.
    pub provider: Arc<str>,
    /// The target's upstream model (for its price).
    pub model: Arc<str>,
}

/// Seconds since the Unix epoch; the ledger's notion of now.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counter {
    used: u64,
    reserved: u64,
    requests: u64,
    /// Tokens used today by every replica (this one included), as last read from the shared
    /// counters; 0 when nothing is shared.
    shared_used: u64,
}

impl Counter {
    /// Today's use: this replica's, or all replicas' when that is known and larger.
    fn used(&self) -> u64 {
        self.used.max(self.shared_used)
    }

    fn fits(&self, budget: u64, more: u64) -> bool {
        self.used() + self.reserved + more <= budget
    }
}

#[derive(Debug, Default)]
struct State {
    day: u64,
    keys: HashMap<Arc<str>, Counter>,
    providers: HashMap<Arc<str>, Counter>,
    /// Where settled use is added up across replicas (see [`Ledger::share`]).
    shared: Option<crate::state::SharedState>,
}

impl State {
    /// Starts a new UTC day: what was used is forgotten, what is in flight stays reserved.
    fn roll(&mut self, day: u64) {
        if day != self.day {
            self.day = day;
            for c in self.keys.values_mut().chain(self.providers.values_mut()) {
                c.used = 0;
                c.requests = 0;
                c.shared_used = 0;
            }
        }
    }
}

/// Today's token use per key and per provider, with reservations in flight. Shared by the
/// gateway's layers and carried over reloads; cheap to clone.
///
/// ```
/// let ledger = nenya::layers::quota::Ledger::new();
/// assert!(ledger.keys().is_empty());
/// ```
#[derive(Clone)]
pub struct Ledger {
    state: Arc<Mutex<State>>,
    clock: Clock,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

/// One line of [`Ledger::keys`] / [`Ledger::providers`].
///
/// ```
/// let u = nenya::layers::quota::DailyUse::default();
/// assert_eq!(u.used + u.reserved, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DailyUse {
    /// Tokens settled today.
    pub used: u64,
    /// Tokens reserved by answers still in flight.
    pub reserved: u64,
    /// Requests settled today.
    pub requests: u64,
}

impl Ledger {
    /// A ledger on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(system_clock))
    }

    /// A ledger on `clock` (seconds since the epoch), e.g. a test's.
    pub fn with_clock(clock: Clock) -> Self {
        let day = clock() / 86_400;
        Self {
            state: Arc::new(Mutex::new(State {
                day,
                ..State::default()
            })),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.roll((self.clock)() / 86_400);
        s
    }

    fn list(map: &HashMap<Arc<str>, Counter>) -> Vec<(Arc<str>, DailyUse)> {
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    DailyUse {
                        used: c.used(),
                        reserved: c.reserved,
                        requests: c.requests,
                    },
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Adds settled use to `state`'s per-day counters and reads every replica's totals back
    /// each second, so budgets hold across replicas (to within a second of the others' use).
    /// Nothing changes when `state` shares nothing. Needs a tokio runtime.
    ///
    /// ```
    /// let ledger = nenya::layers::quota::Ledger::new();
    /// ledger.share(&nenya::state::SharedState::memory());
    /// assert!(ledger.keys().is_empty());
    /// ```
    pub fn share(&self, state: &crate::state::SharedState) {
        let mut s = self.lock();
        if !state.is_shared() {
            s.shared = None;
            return;
        }
        if s.shared.as_ref().is_some_and(|x| x.same_as(state)) {
            return; // already shared there (a reload that kept the back end)
        }
        s.shared = Some(state.clone());
        drop(s);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.state);
        let clock = self.clock.clone();
        let state = state.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let day = clock() / 86_400;
                let read = state.usage_get(day);
                let totals = match read {
                    Some(f) => f.await,
                    None => None,
                };
                let Some(ledger) = weak.upgrade() else { return };
                let mut s = ledger.lock().unwrap_or_else(|p| p.into_inner());
                // Replaced by another back end (a reload), or the day turned meanwhile.
                if !s.shared.as_ref().is_some_and(|x| x.same_as(&state)) {
                    return;
                }
                let (Some(totals), true) = (totals, s.day == day) else {
                    continue;
                };
                for (name, n) in totals {
                    let counter = match name.split_once(':') {
                        Some(("key", k)) => s.keys.entry(Arc::from(k)).or_default(),
                        Some(("provider", p)) => s.providers.entry(Arc::from(p)).or_default(),
                        _ => continue,
                    };
                    counter.shared_used = n.max(0.0) as u64;
                }
            }
        });
    }

    /// Today's use per caller key, by name.
    pub fn keys(&self) -> Vec<(Arc<str>, DailyUse)> {
        Self::list(&self.lock().keys)
    }

    /// Today's use per provider, by name.
    pub fn providers(&self) -> Vec<(Arc<str>, DailyUse)> {
        Self::list(&self.lock().providers)
    }

    /// Checks the budgets and reserves `tokens` on the key and the provider.
    fn reserve(
        &self,
        subject: &QuotaSubject,
        quota: KeyQuota,
        provider_budget: Option<u64>,
        tokens: u64,
    ) -> Result<Reservation, Error> {
        let mut s = self.lock();
        let day = s.day;
        if let Some(budget) = quota.token_budget_daily {
            let c = s.keys.get(&subject.key).copied().unwrap_or_default();
            if !c.fits(budget, tokens) {
                return Err(Error::new(
                    ErrorKind::BudgetExceeded,
                    format!(
                        "the daily token budget of key `{}` is spent ({} of {budget} used; resets at 00:00 UTC)",
                        subject.key,
                        c.used + c.reserved
                    ),
                ));
            }
        }
        if let (BudgetTier::Fill, Some(budget)) = (quota.tier, provider_budget) {
            let c = s
                .providers
                .get(&subject.provider)
                .copied()
                .unwrap_or_default();
            if !c.fits(budget, tokens) {
                return Err(Error::new(
                    ErrorKind::BudgetExceeded,
                    format!(
                        "provider `{}` has spent its daily token budget for fill-tier keys",
                        subject.provider
                    ),
                ));
            }
        }
        s.keys.entry(subject.key.clone()).or_default().reserved += tokens;
        s.providers
            .entry(subject.provider.clone())
            .or_default()
            .reserved += tokens;
        Ok(Reservation {
            ledger: self.clone(),
            key: subject.key.clone(),
            provider: subject.provider.clone(),
            day,
            tokens,
            settled: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// Tokens held on a key's and a provider's budget until the answer's usage is known. Settled
/// by the usage tap; released when dropped unsettled (a failed attempt).
struct Reservation {
    ledger: Ledger,
    key: Arc<str>,
    provider: Arc<str>,
    day: u64,
    tokens: u64,
    settled: std::sync::atomic::AtomicBool,
}

impl Reservation {
    fn close(&self, used: Option<u64>) {
        if self.settled.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let mut s = self.ledger.lock();
        // Use settled after midnight counts for the day it was reserved on, which is gone.
        let used = used.filter(|_| s.day == self.day);
        let apply = |c: &mut Counter| {
            c.reserved = c.reserved.saturating_sub(self.tokens);
            if let Some(u) = used {
                c.used += u;
                c.requests += 1;
            }
        };
        if let Some(c) = s.keys.get_mut(&self.key) {
            apply(c);
        }
        if let Some(c) = s.providers.get_mut(&self.provider) {
            apply(c);
        }
        if let (Some(shared), Some(u)) = (&s.shared, used) {
            shared.usage_add(
                self.day,
                vec![
                    (format!("key:{}", self.key), u as f64),
                    (format!("provider:{}", self.provider), u as f64),
                ],
            );
        }
    }
}

impl SettleUsage for Reservation {
    fn settle(&self, used: Settlement) {
        // An answer with no reported usage still used at least its reservation's worth.
        let tokens = if used.estimated {
            used.tokens().max(self.tokens)
        } else {
            used.tokens()
        };
        self.close(Some(tokens));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.close(None);
    }
}

/// Layer that applies [`Quota`].
pub struct QuotaLayer<F> {
    cfg: Arc<QuotaConfig>,
    ledger: Ledger,
    prices: PriceTable,
    subject: Arc<F>,
}

impl<F> Clone for QuotaLayer<F> {
    fn clone(&self) -> Self {
        Self {
            cfg: self.cfg.clone(),
            ledger: self.ledger.clone(),
            prices: self.prices.clone(),
            subject: self.subject.clone(),
        }
    }
}

impl<F> std::fmt::Debug for QuotaLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaLayer").finish_non_exhaustive()
    }
}

impl<F> QuotaLayer<F> {
    /// Enforces `cfg` on `ledger`, pricing with `prices`; `subject` says whom each request
    /// is charged to.
    pub fn new(cfg: QuotaConfig, ledger: Ledger, prices: PriceTable, subject: F) -> Self {
        Self {
            cfg: Arc::new(cfg),
            ledger,
            prices,
            subject: Arc::new(subject),
        }
    }
}

impl<S, F> Layer<S> for QuotaLayer<F> {
    type Service = Quota<S, F>;
    fn layer(&self, inner: S) -> Quota<S, F> {
        Quota {
            inner,
            layer: self.clone(),
        }
    }
}

/// Budgets and the cost ceiling in front of one target.
pub struct Quota<S, F> {
    inner: S,
    layer: QuotaLayer<F>,
}

impl<S: Clone, F> Clone for Quota<S, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, F> std::fmt::Debug for Quota<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F> Service<Request<ChatRequest>> for Quota<S, F>
where
    S: Service<Request<ChatRequest>, Error = Error>,
    F: Fn(&Request<ChatRequest>) -> QuotaSubject,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ErrOr<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ChatRequest>) -> Self::Future {
        let l = &self.layer;
        let subject = (l.subject)(&req);
        let prompt = req.body().estimate_tokens();
        let output = req.body().max_tokens.unwrap_or(0);
        if let Some(max) = l.cfg.max_cost_per_request
            && let Some(price) = l.prices.price(&subject.provider, &subject.model)
        {
            let cost = price.cost(prompt, 0, output);
            if cost > max {
                return ErrOr::err(Error::new(
                    ErrorKind::CostLimitExceeded,
                    format!(
                        "the estimated cost of this request on {}/{} (${cost:.4}) exceeds governance.max_cost_per_request (${max})",
                        subject.provider, subject.model
                    ),
                ));
            }
        }
        let quota = l.cfg.keys.get(&subject.key).copied().unwrap_or_default();
        let provider_budget = l.cfg.providers.get(&subject.provider).copied();
        if quota.token_budget_daily.is_none() && provider_budget.is_none() {
            return ErrOr::inner(self.inner.call(req));
        }
        match l
            .ledger
            .reserve(&subject, quota, provider_budget, prompt + output)
        {
            Ok(r) => {
                req.extensions_mut().insert(UsageHook(Arc::new(r)));
                ErrOr::inner(self.inner.call(req))
            }
            Err(e) => ErrOr::err(e),
        }
    }
}
