//! The gateway: the whole stack assembled from config, as one cloneable, `Infallible` service.
//!
//! # Stack order (outermost first)
//!
//! | # | layer / service | why it sits there |
//! |---|---|---|
//! | 0 | [`RequestIdLayer`] | outermost: every log line of the request, refusals included, carries its id |
//! | 0 | [`MetricsLayer`] | so it counts every answer, refusals and errors included |
//! | 1 | [`ErrorResponseLayer`] | every failure below becomes client-format JSON; hyper never sees an `Err` |
//! | 1½ | [`CatchPanicLayer`] | a panic anywhere below becomes an `internal_error` answer (still in the client's format), not a reset connection |
//! | 2 | [`OriginGuardLayer`] | refuse browser-context requests (DNS rebinding) on every route, before anything else |
//! | 3 | [`AuthLayer`] | refuse unauthenticated clients and forbidden endpoints before reading any body |
//! | 4 | `Dispatch` | `/healthz`, `/statsz`, `/metrics`, `GET /v1/models`, chat paths, the endpoints beyond chat and `/proxy` ([`Passthrough`](crate::services::passthrough::Passthrough)), 404/405 for the rest |
//! | 5 | [`DecodeLayer`] | read the body once (size limit) and parse it once |
//! | 6 | [`RedactLayer`] | credential patterns out of every text, before anything can forward or log it |
//! | 7 | [`EntropyLayer`] | high-entropy tokens no pattern knows (after patterns, so their labels are not re-flagged) |
//! | 7¼ | [`PruneLayer`] | (when enabled) old thinking and stale tool results out of history, before the cache key is taken |
//! | 7⅓ | [`CompactLayer`] | (when enabled) JSON tool results minified, whitespace and duplicate results folded |
//! | 7⅖ | [`PrefixCacheLayer`](crate::layers::PrefixCacheLayer) | (when `prefix_cache` is set) system messages first and tools sorted before the cache key is taken; marks Anthropic breakpoints for the provider service |
//! | 7½ | [`ResponseCacheLayer`] | (when enabled) keyed on the redacted request, before routing: a hit costs no upstream call at all |
//! | 7¾ | [`SummarizeLayer`] | (when `window` is enabled) near the window, older turns become one summary by the engine, which is the routed stack below (so the engine has failover, breakers, limits) |
//! | 8 | [`Router`] | model → agent chain → [`Target`](crate::services::Target); refuses agents outside the caller's scope; fails over along the chain before the first byte |
//! | 8½ | [`BudgetTrimLayer`] | after the router, so each target of a chain gets a request that fits its own window |
//! | 8⅝ | [`QuotaLayer`](crate::layers::QuotaLayer) | (when budgets or a cost ceiling are configured) per target, so the price and the provider budget are the target's; reserves the estimate, and a refusal lets the router try the next target |
//! | 8¾ | [`UsageLayer`] | taps each answer (already in the client's format) for token usage per agent, provider and model |
//! | 9 | [`CircuitBreakerLayer`] | per provider+model, next to the provider so it sees raw upstream outcomes; an open circuit fails fast and the router moves on |
//! | 10 | [`RateLimitLayer`] | per provider RPM/TPM, inside the breaker (a refusal is not an upstream failure, and an open circuit spends no budget) |
//! | 10¼ | [`AccountsLayer`] | a provider's several keys: least recently used per model, a throttled key cools down (its 429 still fails over) |
//! | 10½ | [`ConcurrencyLimitLayer`] | per provider+model in-flight cap (`max_concurrent_requests`); the slot is held until the streamed body ends, so it counts real upstream concurrency |
//! | 11 | [`ProviderService`] | encode once, send with the provider's auth, stream back |
//!
//! # Shared state
//!
//! With a shared [`SharedState`] ([`GatewayBuilder::shared_state`], the `state` config
//! section), the breaker (9), both rate limiters (the per-key one after decode, and 10), the
//! response cache (7½) and the quota ledger (8⅝) share their state with every replica on the
//! same back end; when it is unavailable each falls back to its own (see [`crate::state`]).
//!
//! # Request extensions
//!
//! | extension | inserted by | read by |
//! |---|---|---|
//! | [`Target`](crate::services::Target) | [`Router`] | [`CircuitBreakerLayer`] (its key), [`ProviderService`] |
//! | [`CountTokens`] | `Dispatch` | [`Router`] (answers locally), [`ProviderService`] (endpoint) |
//! | [`Principal`](crate::model::Principal) | [`AuthLayer`] | [`Router`] (`allowed_agents`), the per-key [`RateLimitLayer`], [`RedactLayer`] and [`EntropyLayer`] (each caller's clean-text memory) |
//! | [`TokenCache`](crate::tokens::TokenCache) | [`Router`] (chains that may retry) | [`BudgetTrimLayer`] (each message counted once across attempts) |
//! | [`ContextRetry`](crate::layers::budget::ContextRetry) | [`Router`] (after an upstream context error) | [`BudgetTrimLayer`] (tighter budget) |
//!
//! ```
//! use nenya::{Gateway, services::{RouteTable, MockProvider, MockConfig}};
//! use tower::ServiceExt;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let gw = Gateway::builder(RouteTable::mock(MockProvider::new(MockConfig::default()))).build();
//! let req = http::Request::post("/v1/chat/completions")
//!     .body(nenya::Body::from(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#))
//!     .unwrap();
//! let resp = gw.oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 200);
//! # }
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::erase::Shared;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use pin_project_lite::pin_project;
use tower::{Service, ServiceBuilder};

use crate::config::{BouncerConfig, Config, ConfigError, DEFAULT_MAX_BODY_BYTES, Secret, Secrets};
use crate::error::{Error, ErrorKind};
use crate::layers::budget::{ContextStats, RelevanceQuery, WindowConfig, WindowMode};
use crate::layers::cache::semantic::{EmbedFn, SemanticCacheLayer, SemanticConfig};
use crate::layers::{
    AccountsLayer, CatchPanicLayer, Ledger, PrefixCacheConfig, PrefixCacheLayer, QuotaConfig,
    QuotaLayer, QuotaSubject, SummarizeLayer,
};
use crate::layers::{
    ApiKey, AuthLayer, BreakerConfig, BudgetConfig, BudgetTrimLayer, CacheConfig,
    CircuitBreakerLayer, CompactConfig, CompactLayer, ConcurrencyLimitLayer, DecodeLayer,
    EntropyDetector, EntropyLayer, ErrorResponseLayer, Metrics, MetricsLayer, OriginGuardLayer,
    PruneConfig, PruneLayer, RateLimitConfig, RateLimitLayer, RedactLabel, RedactLayer, Redactor,
    RequestIdLayer, ResponseCache, ResponseCacheLayer, UsageLabels, UsageLayer, UsageMeter,
};
use crate::model::{ApiFormat, ChatRequest, CountTokens};
use crate::pricing::PriceTable;
use crate::services::{
    FailoverPolicy, LatencyTracker, LiveModels, ProviderService, RouteTable, Router, Target,
    http_client,
};
use crate::state::SharedState;
use crate::{Body, BoxError};

/// The typed chat stack, its type erased.
type ChatService = Shared<Request<ChatRequest>, Response<Body>, Error>;

/// Erases the type of a part of the chat stack. Every optional layer is an `Either` that
/// names the service below it twice, so ten of them in a row made type names of megabytes
/// (10 MB symbols, 335 MB test binaries that filled CI's disk). Erasing after every few
/// optional layers bounds the names for one boxed future per group on each request; a clone
/// of an erased part is a reference count ([`Shared`]).
fn erase_chat<S>(svc: S) -> ChatService
where
    S: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Shared::new(svc)
}

/// Lets `POST /admin/reload` ask whoever owns the configuration (the binary's reloader) to
/// reload it, and wait for the verdict. The trigger holds no reference to any gateway.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (trigger, mut requests) = nenya::ReloadTrigger::channel();
/// tokio::spawn(async move {
///     while let Some(reply) = requests.recv().await {
///         let _ = reply.send(Ok(())); // reload here
///     }
/// });
/// assert_eq!(trigger.reload().await, Ok(()));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReloadTrigger {
    tx: tokio::sync::mpsc::Sender<ReloadReply>,
}

/// Where a reload's verdict goes (`Err`: why the configuration was rejected).
pub type ReloadReply = tokio::sync::oneshot::Sender<Result<(), String>>;

impl ReloadTrigger {
    /// A trigger and the receiving end the reloader serves.
    pub fn channel() -> (Self, tokio::sync::mpsc::Receiver<ReloadReply>) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (Self { tx }, rx)
    }

    /// Asks for a reload and waits for the verdict.
    pub async fn reload(&self) -> Result<(), String> {
        let (reply, verdict) = tokio::sync::oneshot::channel();
        self.tx
            .send(reply)
            .await
            .map_err(|_| "no reloader is running".to_owned())?;
        verdict
            .await
            .map_err(|_| "the reloader stopped before answering".to_owned())?
    }
}

/// Assembles a [`Gateway`].
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    table: Arc<RouteTable>,
    max_body_bytes: u64,
    body_read_timeout: Duration,
    tokens: Vec<Secret>,
    api_keys: Vec<ApiKey>,
    origins: Vec<String>,
    redactor: Option<Redactor>,
    entropy: Option<EntropyDetector>,
    remember_clean: usize,
    breaker: BreakerConfig,
    limits: RateLimitConfig,
    limit_overrides: BTreeMap<String, RateLimitConfig>,
    key_limits: BTreeMap<String, RateLimitConfig>,
    concurrency_queue: Duration,
    budget: BudgetConfig,
    metrics: Metrics,
    usage: UsageMeter,
    cache: Option<CacheConfig>,
    prune: PruneConfig,
    compact: CompactConfig,
    context_retry: bool,
    auto_context_skip: bool,
    failover: FailoverPolicy,
    reorder_by_latency: bool,
    latency: LatencyTracker,
    context_stats: ContextStats,
    window: Option<WindowConfig>,
    reload: Option<ReloadTrigger>,
    generation: u64,
    live_models: LiveModels,
    quota: QuotaConfig,
    prices: PriceTable,
    ledger: Ledger,
    prefix_cache: Option<PrefixCacheConfig>,
    balance: Option<(f64, f64)>,
    max_upload_bytes: u64,
    local_engines: crate::services::LocalEngines,
    semantic: Option<SemanticTier>,
    state: (Option<crate::config::StateSection>, SharedState),
    #[cfg(feature = "mcp")]
    mcp: Option<McpSettings>,
    carried: Option<Carried>,
}

/// The `mcp_servers` section and the agents' tool settings.
#[cfg(feature = "mcp")]
type McpSettings = (
    BTreeMap<String, crate::config::McpServerSection>,
    std::collections::HashMap<String, crate::layers::mcp::AgentTools>,
);

/// Default limit of streamed uploads (OpenAI's file limit).
const DEFAULT_MAX_UPLOAD_BYTES: u64 = 512 << 20;

/// The semantic tier's settings and embedder (a closure, so `Debug` by hand).
#[derive(Clone)]
struct SemanticTier(SemanticConfig, EmbedFn);

impl std::fmt::Debug for SemanticTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SemanticTier")
            .field(&self.0)
            .finish_non_exhaustive()
    }
}

/// The breaker's settings: the default, and each agent circuit's own.
type BreakerSettings = (BreakerConfig, Vec<(Arc<str>, BreakerConfig)>);

/// What a reloaded gateway keeps from the one it replaces.
#[derive(Clone)]
struct Carried {
    generation: u64,
    live_models: LiveModels,
    context_stats: ContextStats,
    latency: LatencyTracker,
    breaker: (BreakerSettings, CircuitBreakerLayer<KeyFn>),
    limiter: (
        (RateLimitConfig, BTreeMap<String, RateLimitConfig>),
        RateLimitLayer<KeyFn>,
    ),
    cache: Option<(CacheConfig, ResponseCache)>,
    ledger: Ledger,
    state: (Option<crate::config::StateSection>, SharedState),
    #[cfg(feature = "mcp")]
    mcp: Option<(
        BTreeMap<String, crate::config::McpServerSection>,
        crate::services::mcp::McpServers,
    )>,
}

impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carried").finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// Sets the limit of streamed uploads (`/v1/files`, audio, `/proxy`; default 512 MiB).
    pub fn max_upload_bytes(mut self, n: u64) -> Self {
        self.max_upload_bytes = n;
        self
    }

    /// Sets the request body limit (default 10 MiB).
    pub fn max_body_bytes(mut self, n: u64) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// How long a client may take to send its body (default 60 s; then `request_timeout`).
    pub fn body_read_timeout(mut self, t: Duration) -> Self {
        self.body_read_timeout = t;
        self
    }

    /// Requires clients to present one of these tokens.
    pub fn client_tokens(mut self, tokens: impl IntoIterator<Item = Secret>) -> Self {
        self.tokens = tokens.into_iter().collect();
        self
    }

    /// Also accepts these RBAC API keys.
    pub fn api_keys(mut self, keys: impl IntoIterator<Item = ApiKey>) -> Self {
        self.api_keys = keys.into_iter().collect();
        self
    }

    /// Lets browser requests from these origins through (default: none).
    pub fn allowed_browser_origins<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        origins: I,
    ) -> Self {
        self.origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// The secret redactor (default [`Redactor::builtin`]); `None` turns redaction off.
    pub fn redactor(mut self, r: Option<Redactor>) -> Self {
        self.redactor = r;
        self
    }

    /// The entropy detector (default on); `None` turns it off.
    pub fn entropy(mut self, e: Option<EntropyDetector>) -> Self {
        self.entropy = e;
        self
    }

    /// How many texts redaction and entropy detection each remember as clean, to skip
    /// scanning them again when a conversation is re-sent (see
    /// [`ScrubLayer::remember_clean`](crate::layers::ScrubLayer::remember_clean); default
    /// 32,768, `0` scans every text of every request).
    pub fn remember_clean_texts(mut self, texts: usize) -> Self {
        self.remember_clean = texts;
        self
    }

    /// Redaction and entropy detection as the `bouncer` config section sets them; a user
    /// pattern that does not compile is an error naming it.
    pub fn bouncer(self, b: &BouncerConfig) -> Result<Self, ConfigError> {
        let label = match &b.redaction_label {
            Some(l) => RedactLabel::Fixed(l.clone()),
            None => RedactLabel::PerKind,
        };
        let redactor = if b.enabled {
            let r = Redactor::new(&b.redact_patterns, label.clone()).map_err(|e| {
                ConfigError::new(
                    None,
                    Some(format!("bouncer.redact_patterns[{}]", e.index)),
                    e.message,
                )
            })?;
            Some(r)
        } else {
            None
        };
        let entropy = (b.enabled && b.entropy_enabled).then(|| {
            EntropyDetector::new(b.entropy_threshold, b.entropy_min_token).with_label(label)
        });
        Ok(self
            .redactor(redactor)
            .entropy(entropy)
            .remember_clean_texts(b.remember_clean_texts))
    }

    /// Circuit-breaker settings for every upstream target.
    pub fn circuit_breaker(mut self, cfg: BreakerConfig) -> Self {
        self.breaker = cfg;
        self
    }

    /// Request rates of some API keys, by key name (`api_keys.<id>.ratelimit_max_rpm`); over
    /// it a key gets `429 rate_limited` with `Retry-After`.
    pub fn key_limits(mut self, limits: BTreeMap<String, RateLimitConfig>) -> Self {
        self.key_limits = limits;
        self
    }

    /// Other limits for some providers (by name).
    pub fn rate_limit_overrides(mut self, overrides: BTreeMap<String, RateLimitConfig>) -> Self {
        self.limit_overrides = overrides;
        self
    }

    /// How long a request waits for a concurrency slot of its provider and model (the caps
    /// come from each provider's `max_concurrent`; default 30 s).
    pub fn concurrency_queue(mut self, wait: Duration) -> Self {
        self.concurrency_queue = wait;
        self
    }

    /// Requests and tokens per minute for each upstream provider (default: no limits).
    pub fn rate_limits(mut self, limits: RateLimitConfig) -> Self {
        self.limits = limits;
        self
    }

    /// History pruning (default: off).
    pub fn prune(mut self, cfg: PruneConfig) -> Self {
        self.prune = cfg;
        self
    }

    /// Tool-result and whitespace compaction (default: off).
    pub fn compact(mut self, cfg: CompactConfig) -> Self {
        self.compact = cfg;
        self
    }

    /// An exact-match response cache (default: none).
    pub fn response_cache(mut self, cfg: Option<CacheConfig>) -> Self {
        self.cache = cfg;
        self
    }

    /// Context-budget trimming settings (every request is kept within its target's window).
    pub fn context_budget(mut self, budget: BudgetConfig) -> Self {
        self.budget = budget;
        self
    }

    /// Whether an upstream's context-exceeded refusal is retried once on the same target with
    /// a tighter budget (default on; `governance.auto_retry_on_context_limit`).
    pub fn context_retry(mut self, on: bool) -> Self {
        self.context_retry = on;
        self
    }

    /// Orders each agent's chain by recent median latency (`context.auto_reorder_by_latency`).
    pub fn reorder_by_latency(mut self, on: bool) -> Self {
        self.reorder_by_latency = on;
        self
    }

    /// When the router moves on to a chain's next target.
    pub fn failover_policy(mut self, policy: FailoverPolicy) -> Self {
        self.failover = policy;
        self
    }

    /// Serves `POST /admin/reload` (admin keys only) through `trigger`.
    pub fn reload_trigger(mut self, trigger: Option<ReloadTrigger>) -> Self {
        self.reload = trigger;
        self
    }

    /// Summarises older turns near the window (`window` section; default off).
    pub fn window(mut self, window: Option<WindowConfig>) -> Self {
        self.window = window;
        self
    }

    /// Whether targets whose window is smaller than the prompt are skipped (default off;
    /// `context.auto_context_skip`).
    pub fn auto_context_skip(mut self, on: bool) -> Self {
        self.auto_context_skip = on;
        self
    }

    /// Keeps `previous`'s metrics, circuit states and limiter budgets (where their settings did
    /// not change), for a configuration reload.
    pub fn carry_state_from(mut self, previous: &Gateway) -> Self {
        self.metrics = previous.kept.metrics.clone();
        self.context_stats = previous.kept.carried.context_stats.clone();
        self.generation = previous.kept.carried.generation + 1;
        // Until the new fetch answers, the previous lists stand (of providers still configured).
        self.live_models = previous.kept.carried.live_models.seeded_for(&self.table);
        self.latency = previous.kept.carried.latency.clone();
        self.usage = previous.kept.usage.clone();
        self.ledger = previous.kept.carried.ledger.clone();
        // The same `state` section keeps its connection (and subscriptions).
        if self.state.0.is_some() && self.state.0 == previous.kept.carried.state.0 {
            self.state = previous.kept.carried.state.clone();
        }
        self.carried = Some(previous.kept.carried.clone());
        self
    }

    /// State shared with other replicas (see [`crate::state`]): rate-limit buckets, breaker
    /// states and the response cache. Default: [`SharedState::memory`], nothing shared.
    pub fn shared_state(mut self, state: SharedState) -> Self {
        self.state = (None, state);
        self
    }

    /// MCP servers and the agents that use their tools (see
    /// [`McpLayer`](crate::layers::mcp::McpLayer)); the servers start when the gateway is
    /// built, and a reload with the same `mcp_servers` keeps them running. Default: none.
    #[cfg(feature = "mcp")]
    pub fn mcp(
        mut self,
        servers: BTreeMap<String, crate::config::McpServerSection>,
        agents: std::collections::HashMap<String, crate::layers::mcp::AgentTools>,
    ) -> Self {
        self.mcp = (!servers.is_empty() || !agents.is_empty()).then_some((servers, agents));
        self
    }

    /// Records the `state` section `shared_state` came from, so a reload with the same
    /// section keeps the connection (call after [`Self::shared_state`]).
    pub fn state_section(mut self, section: crate::config::StateSection) -> Self {
        self.state.0 = Some(section);
        self
    }

    /// Daily token budgets per key and provider, and the cost ceiling per request (see
    /// [`QuotaLayer`]); default: none.
    pub fn quota(mut self, quota: QuotaConfig) -> Self {
        self.quota = quota;
        self
    }

    /// Stable prompt prefixes for provider prompt caches (see
    /// [`PrefixCacheLayer`](crate::layers::PrefixCacheLayer)); default off.
    pub fn prefix_cache(mut self, cfg: Option<PrefixCacheConfig>) -> Self {
        self.prefix_cache = cfg;
        self
    }

    /// Balanced routing: each chain ordered by `latency_weight` × normalised median latency
    /// plus `cost_weight` × normalised price (see [`Balance`](crate::services::Balance));
    /// implies latency tracking. Default: off.
    pub fn balanced(mut self, weights: Option<(f64, f64)>) -> Self {
        self.balance = weights;
        self
    }

    /// Ollama providers whose models nenya preloads, tracks and evicts (see
    /// [`LocalEngines`](crate::services::LocalEngines)); started when the gateway is built.
    pub fn local_engines(mut self, engines: crate::services::LocalEngines) -> Self {
        self.local_engines = engines;
        self
    }

    /// The response cache's semantic tier (needs the exact tier, [`Self::response_cache`]):
    /// similar prompts in the same context reuse an answer (see
    /// [`SemanticCacheLayer`](crate::layers::cache::semantic::SemanticCacheLayer)).
    pub fn semantic_cache(mut self, tier: Option<(SemanticConfig, EmbedFn)>) -> Self {
        self.semantic = tier.map(|(c, e)| SemanticTier(c, e));
        self
    }

    /// Prices for cost accounting and the cost ceiling (default: the registry's list prices).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// The ledger budgets are kept in (default: a new one on the system clock); a test passes
    /// one on its own clock.
    pub fn ledger(mut self, ledger: Ledger) -> Self {
        self.ledger = ledger;
        self
    }

    /// Builds the stack (see the module docs for its order).
    pub fn build(self) -> Gateway {
        // Stateful layers are carried over a reload only while they share state the same way.
        let carried = self.carried.as_ref().filter(|c| {
            c.state.0 == self.state.0 && c.state.1.is_shared() == self.state.1.is_shared()
        });
        let shared = self.state.1.clone();
        // Agents with their own `failure_threshold` / `cooldown_seconds`.
        let breaker_cfg = (self.breaker, self.table.breaker_overrides(self.breaker));
        let breaker = match carried {
            Some(c) if c.breaker.0 == breaker_cfg => c.breaker.1.clone(),
            _ => CircuitBreakerLayer::new(self.breaker, target_key as KeyFn)
                .with_overrides(breaker_cfg.1.iter().cloned())
                .with_shared_state(shared.clone()),
        };
        let limiter = match carried {
            Some(c) if c.limiter.0 == (self.limits, self.limit_overrides.clone()) => {
                c.limiter.1.clone()
            }
            _ => RateLimitLayer::new(self.limits, provider_key as KeyFn)
                .with_overrides(self.limit_overrides.clone())
                .with_shared_state(shared.clone(), "provider"),
        };
        let cache = self
            .cache
            .map(|cfg| match carried.and_then(|c| c.cache.as_ref()) {
                Some((old, cache)) if *old == cfg => cache.clone(),
                _ => ResponseCache::new(cfg).with_shared_state(shared.clone()),
            });
        if let Some(c) = &cache {
            register_cache(&self.metrics, c);
        }
        // MCP servers (carried over a reload that kept their section).
        #[cfg(feature = "mcp")]
        let mcp_servers = self.mcp.as_ref().map(|(servers, _)| {
            match self.carried.as_ref().and_then(|c| c.mcp.as_ref()) {
                Some((old, running)) if old == servers => {
                    // Same servers: keep their sessions, list their tools again.
                    running.refresh();
                    running.clone()
                }
                _ => crate::services::mcp::McpServers::start(servers),
            }
        });
        #[cfg(feature = "mcp")]
        let mcp_status: Option<StatusFn> = mcp_servers.clone().map(|m| {
            Arc::new(move || {
                serde_json::Value::Object(
                    m.status()
                        .into_iter()
                        .map(|(n, s)| {
                            let v = serde_json::json!({"connected": s.connected, "tools": s.tools,
                                "connections": s.connections, "last_error": s.last_error});
                            (n, v)
                        })
                        .collect(),
                )
            }) as StatusFn
        });
        #[cfg(not(feature = "mcp"))]
        let mcp_status: Option<StatusFn> = None;
        let statsz = statsz(
            mcp_status,
            &self.metrics,
            &self.usage,
            self.redactor.clone(),
            &breaker,
            (self.generation, &shared),
            (&self.ledger, &self.quota),
        );
        register_usage(&self.metrics, &self.usage);
        register_state(&self.metrics, &shared);
        self.ledger.share(&shared);
        register_context(&self.metrics, &self.context_stats);
        let (pruned, compacted) = (Arc::<AtomicU64>::default(), Arc::<AtomicU64>::default());
        register_rewrites(&self.metrics, &pruned, &compacted);
        register_collectors(
            &self.metrics,
            self.redactor.as_ref(),
            self.entropy.as_ref(),
            &breaker,
        );
        let table = self.table.clone();
        // Each provider's live model list, fetched in the background (at start and on every
        // reload); `GET /v1/models` merges what has arrived.
        let discoverable = table.discoverable();
        if !discoverable.is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(crate::services::refresh_models(
                discoverable,
                self.live_models.clone(),
            ));
        }
        // Per key and provider budgets and the cost ceiling, only when configured.
        let quota = (!self.quota.is_empty()).then(|| {
            QuotaLayer::new(
                self.quota.clone(),
                self.ledger.clone(),
                self.prices.clone(),
                quota_subject as SubjectFn,
            )
        });
        let local = (!self.local_engines.is_empty()).then(|| {
            self.local_engines.start();
            crate::services::LocalEngineLayer::new(
                self.local_engines.clone(),
                local_subject as LocalFn,
            )
        });
        let upstream = ServiceBuilder::new()
            .option_layer(local)
            .layer(
                UsageLayer::new(self.usage.clone(), usage_labels as LabelFn)
                    .with_prices(self.prices.clone()),
            )
            .layer(breaker.clone())
            .layer(limiter.clone())
            .layer(AccountsLayer::new(account_pool))
            .layer(ConcurrencyLimitLayer::new(
                self.concurrency_queue,
                concurrency_key,
            ))
            .service(ProviderService::new());
        let routed = erase_chat(
            Router::new(
                self.table,
                ServiceBuilder::new()
                    .layer(
                        BudgetTrimLayer::new(self.budget, target_window as WindowFn)
                            .with_stats(self.context_stats.clone()),
                    )
                    .option_layer(quota)
                    .service(upstream),
            )
            .context_retry(self.context_retry)
            .auto_context_skip(self.auto_context_skip)
            .failover_policy(self.failover)
            .reorder_by_latency(
                (self.reorder_by_latency || self.balance.is_some()).then(|| self.latency.clone()),
            )
            .balanced(
                self.balance
                    .map(|(latency_weight, cost_weight)| crate::services::Balance {
                        latency_weight,
                        cost_weight,
                        prices: self.prices.clone(),
                    }),
            ),
        );
        // The window engine is the same routed stack: an agent name or `provider/model` picks
        // it, with its failover, breaker, limits and usage accounting.
        let window_table = table.clone();
        let summarize = self.window.map(|w| {
            SummarizeLayer::new(w, routed.clone(), move |req: &Request<ChatRequest>| {
                window_table.window_of(&req.body().model)
            })
            .with_stats(self.context_stats.clone())
        });
        #[cfg(feature = "mcp")]
        // MCP tools for agents that have them, around the routed stack: every round of the
        // tool loop gets failover, breakers, limits and usage accounting.
        #[cfg(feature = "mcp")]
        let mcp = self
            .mcp
            .as_ref()
            .zip(mcp_servers.clone())
            .map(|((_, agents), s)| crate::layers::mcp::McpLayer::new(Arc::new(s), agents.clone()));
        #[cfg(not(feature = "mcp"))]
        let mcp: Option<crate::layers::mcp::McpLayer> = None;
        // Per-key request rates (only keys that have one are limited).
        let key_limiter = (!self.key_limits.is_empty()).then(|| {
            RateLimitLayer::new(RateLimitConfig::default(), principal_key as KeyFn)
                .with_overrides(self.key_limits.clone())
                .with_shared_state(shared.clone(), "key")
        });
        let passthrough_redactor = self.redactor.clone();
        let chat = ServiceBuilder::new()
            .layer(DecodeLayer::new(self.max_body_bytes).with_read_timeout(self.body_read_timeout))
            .option_layer(key_limiter)
            .option_layer(
                self.redactor
                    .map(|r| RedactLayer::new(r).remember_clean(self.remember_clean)),
            )
            .option_layer(
                self.entropy
                    .map(|e| EntropyLayer::new(e).remember_clean(self.remember_clean)),
            )
            .layer_fn(erase_chat)
            .option_layer(
                (self.prune.thoughts || self.prune.stale_tool_results)
                    .then(|| PruneLayer::new(self.prune).counting(pruned.clone())),
            )
            .option_layer(
                (self.compact != CompactConfig::default())
                    .then(|| CompactLayer::new(self.compact).counting(compacted.clone())),
            )
            .option_layer(self.prefix_cache.map(PrefixCacheLayer::new))
            .layer_fn(erase_chat)
            .option_layer(cache.clone().map(ResponseCacheLayer::new))
            .option_layer(
                cache
                    .clone()
                    .zip(self.semantic)
                    .map(|(c, SemanticTier(cfg, embed))| SemanticCacheLayer::new(c, cfg, embed)),
            )
            .option_layer(summarize)
            .option_layer(mcp)
            .service(routed);
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .layer(MetricsLayer::new(self.metrics.clone()))
            .layer(ErrorResponseLayer::new())
            .layer(CatchPanicLayer::new())
            .layer(OriginGuardLayer::new(&self.origins))
            .layer(AuthLayer::new(self.tokens).with_api_keys(self.api_keys))
            .service(Dispatch {
                chat,
                passthrough: crate::services::passthrough::Passthrough::new(
                    table.clone(),
                    passthrough_redactor,
                    self.max_body_bytes,
                    self.max_upload_bytes,
                ),
                table,
                metrics: self.metrics.clone(),
                statsz,
                reload: self.reload,
                live_models: self.live_models.clone(),
            });
        Gateway {
            svc: Shared::new(svc),
            kept: Arc::new(Kept {
                metrics: self.metrics,
                usage: self.usage,
                carried: Carried {
                    generation: self.generation,
                    live_models: self.live_models.clone(),
                    context_stats: self.context_stats,
                    latency: self.latency.clone(),
                    breaker: (breaker_cfg, breaker),
                    limiter: ((self.limits, self.limit_overrides), limiter),
                    cache: self.cache.zip(cache),
                    ledger: self.ledger.clone(),
                    state: self.state,
                    #[cfg(feature = "mcp")]
                    mcp: self.mcp.map(|(c, _)| c).zip(mcp_servers),
                },
            }),
        }
    }
}

type KeyFn = fn(&Request<ChatRequest>) -> Option<Arc<str>>;

/// A circuit per upstream provider and model.
fn target_key(req: &Request<ChatRequest>) -> Option<Arc<str>> {
    req.extensions()
        .get::<Target>()
        .map(|t| t.circuit_key.clone())
}

type WindowFn = fn(&Request<ChatRequest>) -> Option<u64>;
type SubjectFn = fn(&Request<ChatRequest>) -> QuotaSubject;
type LocalFn = fn(&Request<ChatRequest>) -> Option<(Arc<str>, String)>;

/// A local engine is known by the target's provider; the model is the upstream one.
fn local_subject(req: &Request<ChatRequest>) -> Option<(Arc<str>, String)> {
    req.extensions()
        .get::<Target>()
        .map(|t| (t.provider_key.clone(), t.model.clone()))
}

/// Budgets are charged to the caller's key and the target's provider; priced by its model.
fn quota_subject(req: &Request<ChatRequest>) -> QuotaSubject {
    let key = req
        .extensions()
        .get::<crate::model::Principal>()
        .map_or_else(|| Arc::from(""), |p| p.name.clone());
    match req.extensions().get::<Target>() {
        Some(t) => QuotaSubject {
            key,
            provider: t.provider_key.clone(),
            model: t.model.as_str().into(),
        },
        None => QuotaSubject {
            key,
            provider: "unknown".into(),
            model: "unknown".into(),
        },
    }
}
type LabelFn = fn(&Request<ChatRequest>) -> UsageLabels;

/// Usage is counted per requested agent (or model), provider and upstream model.
fn usage_labels(req: &Request<ChatRequest>) -> UsageLabels {
    let key = req
        .extensions()
        .get::<crate::model::Principal>()
        .map_or_else(|| Arc::from(""), |p| p.name.clone());
    match req.extensions().get::<Target>() {
        Some(t) => UsageLabels {
            agent: req.body().model.as_str().into(),
            provider: t.provider_key.clone(),
            model: t.model.as_str().into(),
            key,
        },
        None => UsageLabels::new(&req.body().model, "unknown", "unknown").with_key(key),
    }
}

/// The `window` section as layer settings; an enabled `summarize` window needs an engine the
/// routes can reach.
fn window_config(cfg: &Config, table: &RouteTable) -> Result<Option<WindowConfig>, ConfigError> {
    let w = &cfg.window;
    if !w.enabled {
        return Ok(None);
    }
    let err =
        |field: &str, msg: String| ConfigError::new(None, Some(format!("window.{field}")), msg);
    let mode: WindowMode = w
        .mode
        .as_deref()
        .unwrap_or("summarize")
        .parse()
        .map_err(|e| err("mode", e))?;
    let (engine_model, system_prompt, timeout) = match &w.engine {
        Some(e) => {
            let (prompt, timeout) = match e {
                crate::config::EngineRef::Inline {
                    system_prompt,
                    timeout_seconds,
                    ..
                } => (system_prompt.clone(), timeout_seconds.unwrap_or(60)),
                crate::config::EngineRef::Agent(_) => (None, 60),
            };
            (e.model_name(), prompt, Duration::from_secs(timeout.max(1)))
        }
        None => (String::new(), None, Duration::from_secs(60)),
    };
    if mode == WindowMode::Summarize {
        if engine_model.is_empty() {
            return Err(err(
                "engine",
                "mode `summarize` needs an engine (an agent name or {provider, model})".into(),
            ));
        }
        if !table.can_resolve(&engine_model) {
            return Err(err(
                "engine",
                format!("no agent or provider/model named `{engine_model}`"),
            ));
        }
    }
    if !(0.0..=1.0).contains(&w.trigger_ratio) || w.trigger_ratio == 0.0 {
        return Err(err("trigger_ratio", "must be in (0, 1]".into()));
    }
    Ok(Some(WindowConfig {
        mode,
        active_messages: w.active_messages.max(1),
        trigger_ratio: w.trigger_ratio,
        summary_max_chars: w.summary_max_runes.max(200),
        default_window: w.max_context,
        engine_model,
        system_prompt,
        timeout,
    }))
}

fn register_rewrites(metrics: &Metrics, pruned: &Arc<AtomicU64>, compacted: &Arc<AtomicU64>) {
    use crate::layers::metrics::family;
    use std::fmt::Write as _;
    let (p, c) = (pruned.clone(), compacted.clone());
    metrics.register("rewrites", move |out| {
        family(
            out,
            "nenya_context_rewrites_total",
            "counter",
            "Requests changed by the history layers, by layer.",
        );
        for (layer, n) in [("prune", &p), ("compact", &c)] {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "nenya_context_rewrites_total{{layer=\"{layer}\"}} {n}");
        }
    });
}

fn register_context(metrics: &Metrics, stats: &ContextStats) {
    use crate::layers::metrics::family;
    use std::fmt::Write as _;
    let stats = stats.clone();
    metrics.register("context", move |out| {
        let t = stats.snapshot();
        for (name, help, v) in [
            (
                "nenya_context_trimmed_total",
                "Requests trimmed to their target's context budget.",
                t.trimmed,
            ),
            (
                "nenya_context_messages_dropped_total",
                "Messages dropped by context trimming.",
                t.dropped,
            ),
            (
                "nenya_context_truncations_total",
                "Texts cut (relevance or middle-out) by context trimming.",
                t.truncated,
            ),
            (
                "nenya_context_tokens_removed_total",
                "Prompt tokens removed by context trimming.",
                t.tokens_removed,
            ),
            (
                "nenya_context_retries_total",
                "Attempts retried with a tighter budget after an upstream context error.",
                t.retries,
            ),
        ] {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
        family(
            out,
            "nenya_context_summaries_total",
            "counter",
            "Older turns summarised by the window engine, by outcome.",
        );
        let _ = writeln!(
            out,
            "nenya_context_summaries_total{{outcome=\"ok\"}} {}",
            t.summarized
        );
        let _ = writeln!(
            out,
            "nenya_context_summaries_total{{outcome=\"failed\"}} {}",
            t.summary_failures
        );
    });
}

/// The routed target's context window.
fn target_window(req: &Request<ChatRequest>) -> Option<u64> {
    req.extensions().get::<Target>().and_then(|t| t.max_context)
}

/// A provider's accounts, one pool per model.
fn account_pool(
    req: &Request<ChatRequest>,
) -> Option<(Arc<str>, Arc<[crate::layers::accounts::Account]>)> {
    let t = req.extensions().get::<Target>()?;
    Some((t.model_key.clone(), t.provider.accounts.clone()?))
}

/// One slot pool per upstream provider and model, sized by the provider's cap.
fn concurrency_key(req: &Request<ChatRequest>) -> Option<(Arc<str>, usize)> {
    let t = req.extensions().get::<Target>()?;
    Some((t.model_key.clone(), t.provider.max_concurrent?))
}

/// One rate-limit bucket per API key.
fn principal_key(req: &Request<ChatRequest>) -> Option<Arc<str>> {
    req.extensions()
        .get::<crate::model::Principal>()
        .map(|p| p.name.clone())
}

/// One rate-limit bucket per upstream provider.
fn provider_key(req: &Request<ChatRequest>) -> Option<Arc<str>> {
    req.extensions()
        .get::<Target>()
        .map(|t| t.provider_key.clone())
}

/// `GET /statsz`: a JSON summary for humans and health checks.
/// A section of `/statsz` computed on demand.
type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

fn statsz(
    mcp: Option<StatusFn>,
    metrics: &Metrics,
    usage: &UsageMeter,
    redactor: Option<Redactor>,
    breaker: &CircuitBreakerLayer<KeyFn>,
    (generation, state): (u64, &SharedState),
    (ledger, quota): (&Ledger, &QuotaConfig),
) -> Arc<dyn Fn() -> String + Send + Sync> {
    let started = std::time::Instant::now();
    let state = state.clone();
    let (metrics, usage, breaker) = (metrics.clone(), usage.clone(), breaker.clone());
    let (ledger, quota) = (ledger.clone(), quota.clone());
    Arc::new(move || {
        let m = metrics.snapshot();
        let redactions: serde_json::Map<String, serde_json::Value> = redactor
            .as_ref()
            .map(|r| r.counts())
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_owned(), n.into()))
            .collect();
        let totals = usage.totals();
        let mut cost_total = 0.0;
        let usage: Vec<serde_json::Value> = totals
            .iter()
            .map(|(l, t)| {
                cost_total += t.cost_usd();
                serde_json::json!({"key": &*l.key, "agent": &*l.agent, "provider": &*l.provider,
                    "model": &*l.model, "answers": t.requests, "estimated": t.estimated,
                    "prompt_tokens": t.prompt, "completion_tokens": t.completion,
                    "cached_tokens": t.cached, "reasoning_tokens": t.reasoning,
                    "cost_usd": t.cost_usd()})
            })
            .collect();
        let key_usage = key_usage(&totals, &ledger, &quota);
        let mut open: Vec<String> = breaker
            .open_circuits()
            .iter()
            .map(|k| k.to_string())
            .collect();
        open.sort();
        serde_json::json!({
            "status": "ok",
            "config_generation": generation,
            "uptime_seconds": started.elapsed().as_secs(),
            "requests": m.requests,
            "errors": m.errors,
            "failovers": m.failovers,
            "redactions": redactions,
            "usage": usage,
            "cost_usd": cost_total,
            "key_usage": key_usage,
            "provider_budgets": provider_budgets(&ledger, &quota),
            "open_circuits": open,
            "mcp_servers": mcp.as_ref().map(|f| f()),
            "state": {
                "backend": state.health().backend(),
                "up": state.health().is_up(),
                "fallbacks": state.health().fallbacks(),
                "errors": state.health().errors(),
            },
        })
        .to_string()
    })
}

/// The `state` section as a back end.
fn state_from_config(s: &crate::config::StateSection) -> Result<SharedState, ConfigError> {
    let err =
        |field: &str, msg: String| ConfigError::new(None, Some(format!("state.{field}")), msg);
    match s.backend.as_str() {
        "memory" => Ok(SharedState::memory()),
        #[cfg(feature = "redis")]
        "redis" => {
            let url = s
                .url
                .clone()
                .ok_or_else(|| err("url", "the redis back end needs a url".into()))?;
            let mut rc = crate::state::RedisConfig::new(url);
            rc.cluster_nodes = s.cluster_nodes.clone();
            rc.key_prefix = s.key_prefix.clone();
            rc.timeout = Duration::from_millis(s.timeout_ms.max(1));
            SharedState::redis(rc).map_err(|e| err("url", e))
        }
        #[cfg(not(feature = "redis"))]
        "redis" => Err(err(
            "backend",
            "this build has no Redis back end (cargo feature `redis`)".into(),
        )),
        other => Err(err(
            "backend",
            format!("unknown back end `{other}` (memory or redis)"),
        )),
    }
}

/// `governance.routing_strategy` and its weights.
fn balance_config(cfg: &Config) -> Result<Option<(f64, f64)>, ConfigError> {
    let g = &cfg.governance;
    let err =
        |field: &str, msg: String| ConfigError::new(None, Some(format!("governance.{field}")), msg);
    match g.routing_strategy.as_deref() {
        None | Some("") | Some("latency") => Ok(None),
        Some("balanced") => {
            let weight = |field: &str, v: Option<f64>, default: f64| {
                let v = v.unwrap_or(default);
                if (0.0..=10.0).contains(&v) {
                    Ok(v)
                } else {
                    Err(err(field, format!("{v} is outside 0.0–10.0")))
                }
            };
            Ok(Some((
                weight("routing_latency_weight", g.routing_latency_weight, 1.0)?,
                weight("routing_cost_weight", g.routing_cost_weight, 0.0)?,
            )))
        }
        Some(other) => Err(err(
            "routing_strategy",
            format!("`{other}` is not a routing strategy (expected `latency` or `balanced`)"),
        )),
    }
}

/// `response_cache.semantic`: the tier's settings and an embedder on the named provider's
/// OpenAI-compatible `/embeddings` endpoint.
fn semantic_config(
    cfg: &Config,
    table: &RouteTable,
) -> Result<Option<(SemanticConfig, EmbedFn)>, ConfigError> {
    let Some(s) = cfg
        .response_cache
        .semantic
        .as_ref()
        .filter(|_| cfg.response_cache.enabled)
    else {
        return Ok(None);
    };
    let err = |field: &str, msg: String| {
        ConfigError::new(None, Some(format!("response_cache.semantic.{field}")), msg)
    };
    let spec = table.provider(&s.provider).ok_or_else(|| {
        err(
            "provider",
            format!("`{}` is not a configured provider", s.provider),
        )
    })?;
    let prefix = spec.api_prefix(ApiFormat::OpenAi).ok_or_else(|| {
        err(
            "provider",
            format!(
                "`{}` has no OpenAI-compatible `…/chat/completions` URL",
                s.provider
            ),
        )
    })?;
    let url: http::Uri = format!("{prefix}/embeddings")
        .parse()
        .map_err(|_| err("provider", "its URL makes no embeddings URL".into()))?;
    let threshold = s.threshold.unwrap_or(0.9);
    if !(0.0..=1.0).contains(&threshold) {
        return Err(err("threshold", format!("{threshold} is outside 0–1")));
    }
    let model = s.model.clone();
    let embed: EmbedFn = Arc::new(move |text: String| {
        let (spec, url, model) = (spec.clone(), url.clone(), model.clone());
        Box::pin(async move { embed_one(&spec, url, &model, text).await })
    });
    Ok(Some((
        SemanticConfig {
            threshold,
            max_entries: s.max_entries.unwrap_or(1024),
            timeout: Duration::from_secs(s.timeout_seconds.unwrap_or(2).max(1)),
        },
        embed,
    )))
}

/// One text's embedding from an OpenAI-compatible `/embeddings` endpoint.
async fn embed_one(
    spec: &crate::services::ProviderSpec,
    url: http::Uri,
    model: &str,
    text: String,
) -> Option<Vec<f32>> {
    use http_body_util::BodyExt;
    let body = serde_json::json!({"model": model, "input": text}).to_string();
    let mut req = Request::new(Body::from(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = url;
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    crate::services::provider::apply_auth(req.headers_mut(), spec, ApiFormat::OpenAi, None).ok()?;
    let resp = spec.transport.send(req).await.ok()?;
    if !resp.status().is_success() {
        tracing::debug!(status = resp.status().as_u16(), "embedding failed");
        return None;
    }
    let bytes = http_body_util::Limited::new(resp.into_body(), 8 << 20)
        .collect()
        .await
        .ok()?
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.pointer("/data/0/embedding")?
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect()
}

/// The `prefix_cache` section as layer settings.
fn prefix_cache_config(cfg: &Config) -> Result<Option<PrefixCacheConfig>, ConfigError> {
    let Some(p) = cfg.prefix_cache.as_ref().filter(|p| p.enabled) else {
        return Ok(None);
    };
    let ttl_1h = match p.cache_control_ttl.as_deref() {
        None | Some("ephemeral") => false,
        Some("1h") => true,
        Some(other) => {
            return Err(ConfigError::new(
                None,
                Some("prefix_cache.cache_control_ttl".into()),
                format!("`{other}` is not a TTL (expected `ephemeral` or `1h`)"),
            ));
        }
    };
    Ok(Some(PrefixCacheConfig {
        pin_system_first: p.pin_system_first,
        stable_tools: p.stable_tools,
        breakpoints: crate::model::CacheBreakpoints {
            system: p.cache_system,
            tools: p.cache_tools,
            messages: p.cache_messages,
            ttl_1h,
        },
    }))
}

/// `/statsz` `key_usage`: per caller key, all-time totals from the usage meter and today's
/// budget from the ledger.
fn key_usage(
    totals: &[(UsageLabels, crate::layers::UsageTotals)],
    ledger: &Ledger,
    quota: &QuotaConfig,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out: BTreeMap<&str, (u64, u64, u64, u64)> = BTreeMap::new();
    for (l, t) in totals {
        let e = out.entry(&l.key).or_default();
        e.0 += t.requests;
        e.1 += t.prompt;
        e.2 += t.completion;
        e.3 += t.cost_nano_usd;
    }
    let today: BTreeMap<Arc<str>, crate::layers::quota::DailyUse> =
        ledger.keys().into_iter().collect();
    let mut map = serde_json::Map::new();
    let names: std::collections::BTreeSet<&str> = out
        .keys()
        .copied()
        .chain(quota.keys.keys().map(|k| &**k))
        .collect();
    for name in names {
        let (requests, prompt, completion, cost) = out.get(name).copied().unwrap_or_default();
        let mut v = serde_json::json!({"requests": requests, "prompt_tokens": prompt,
            "completion_tokens": completion, "cost_usd": cost as f64 / 1e9});
        if let Some(q) = quota.keys.get(name) {
            let d = today.get(name).copied().unwrap_or_default();
            v["budget"] = serde_json::json!({
                "token_budget_daily": q.token_budget_daily,
                "tier": match q.tier { crate::layers::BudgetTier::Always => "always", crate::layers::BudgetTier::Fill => "fill" },
                "used_today": d.used, "reserved": d.reserved,
                "remaining_today": q.token_budget_daily.map(|b| b.saturating_sub(d.used + d.reserved)),
            });
        }
        map.insert(name.to_owned(), v);
    }
    map
}

/// `/statsz` `provider_budgets`: providers with a daily budget, and today's use.
fn provider_budgets(ledger: &Ledger, quota: &QuotaConfig) -> serde_json::Value {
    let today: BTreeMap<Arc<str>, crate::layers::quota::DailyUse> =
        ledger.providers().into_iter().collect();
    let mut map = serde_json::Map::new();
    let mut names: Vec<&Arc<str>> = quota.providers.keys().collect();
    names.sort();
    for name in names {
        let budget = quota.providers[name];
        let d = today.get(name).copied().unwrap_or_default();
        map.insert(
            name.to_string(),
            serde_json::json!({"token_budget_daily": budget, "used_today": d.used,
                "reserved": d.reserved, "remaining_today": budget.saturating_sub(d.used + d.reserved)}),
        );
    }
    serde_json::Value::Object(map)
}

/// Cache hits and misses as metrics.
fn register_cache(metrics: &Metrics, cache: &ResponseCache) {
    use crate::layers::metrics::family;
    use std::fmt::Write as _;
    let cache = cache.clone();
    metrics.register("cache", move |out| {
        let (hits, misses, bytes, entries) = cache.stats();
        family(
            out,
            "nenya_cache_lookups_total",
            "counter",
            "Response-cache lookups by result.",
        );
        let _ = writeln!(out, "nenya_cache_lookups_total{{result=\"hit\"}} {hits}");
        let _ = writeln!(out, "nenya_cache_lookups_total{{result=\"miss\"}} {misses}");
        family(
            out,
            "nenya_cache_bytes",
            "gauge",
            "Bytes of answers held by the response cache.",
        );
        let _ = writeln!(out, "nenya_cache_bytes {bytes}");
        family(
            out,
            "nenya_cache_entries",
            "gauge",
            "Answers held by the response cache.",
        );
        let _ = writeln!(out, "nenya_cache_entries {entries}");
    });
}

/// The shared-state back end's health as metrics.
fn register_state(metrics: &Metrics, state: &SharedState) {
    use crate::layers::metrics::family;
    use std::fmt::Write as _;
    let state = state.clone();
    metrics.register("state", move |out| {
        let h = state.health();
        let backend = h.backend();
        family(
            out,
            "nenya_state_backend_up",
            "gauge",
            "Whether the shared-state back end answered its last call (1) or replicas use local state (0).",
        );
        let up = u8::from(h.is_up());
        let _ = writeln!(out, "nenya_state_backend_up{{backend=\"{backend}\"}} {up}");
        family(
            out,
            "nenya_state_fallbacks_total",
            "counter",
            "Shared-state calls answered from local state because the back end was unavailable.",
        );
        let _ = writeln!(
            out,
            "nenya_state_fallbacks_total{{backend=\"{backend}\"}} {}",
            h.fallbacks()
        );
        family(
            out,
            "nenya_state_errors_total",
            "counter",
            "Shared-state calls that failed or timed out.",
        );
        let _ = writeln!(
            out,
            "nenya_state_errors_total{{backend=\"{backend}\"}} {}",
            h.errors()
        );
    });
}

/// Token usage as metrics.
fn register_usage(metrics: &Metrics, usage: &UsageMeter) {
    use crate::layers::metrics::{escape, family};
    use std::fmt::Write as _;
    let usage = usage.clone();
    metrics.register("usage", move |out| {
        let totals = usage.totals();
        family(
            out,
            "nenya_tokens_total",
            "counter",
            "Tokens by requested agent, provider, upstream model and kind.",
        );
        // `key` is the caller's key name ("" without named keys): two keys on one agent are
        // two series.
        let labels = |l: &UsageLabels| {
            format!(
                "key=\"{}\",agent=\"{}\",provider=\"{}\",model=\"{}\"",
                escape(&l.key),
                escape(&l.agent),
                escape(&l.provider),
                escape(&l.model)
            )
        };
        for (l, t) in &totals {
            let labels = labels(l);
            for (kind, n) in [
                ("prompt", t.prompt),
                ("completion", t.completion),
                ("cached", t.cached),
                ("reasoning", t.reasoning),
            ] {
                let _ = writeln!(out, "nenya_tokens_total{{{labels},kind=\"{kind}\"}} {n}");
            }
        }
        family(
            out,
            "nenya_usage_answers_total",
            "counter",
            "Successful answers counted for usage, by whether the upstream reported it.",
        );
        for (l, t) in &totals {
            let labels = labels(l);
            let _ = writeln!(
                out,
                "nenya_usage_answers_total{{{labels},source=\"reported\"}} {}",
                t.requests - t.estimated
            );
            let _ = writeln!(
                out,
                "nenya_usage_answers_total{{{labels},source=\"estimated\"}} {}",
                t.estimated
            );
        }
        family(
            out,
            "nenya_cost_usd_total",
            "counter",
            "Cost in USD at the target's price (registry list price or config `pricing`), by caller key, agent, provider and model.",
        );
        for (l, t) in &totals {
            let _ = writeln!(
                out,
                "nenya_cost_usd_total{{{}}} {}",
                labels(l),
                t.cost_usd()
            );
        }
    });
}

/// The stack's own counters, rendered with the request metrics.
fn register_collectors(
    metrics: &Metrics,
    redactor: Option<&Redactor>,
    entropy: Option<&EntropyDetector>,
    breaker: &CircuitBreakerLayer<KeyFn>,
) {
    use crate::layers::metrics::{escape, family};
    use std::fmt::Write as _;
    if let Some(r) = redactor.cloned() {
        metrics.register("redact", move |out| {
            family(
                out,
                "nenya_redactions_total",
                "counter",
                "Secrets redacted before forwarding, by kind.",
            );
            for (kind, n) in r.counts() {
                let _ = writeln!(out, "nenya_redactions_total{{kind=\"{kind}\"}} {n}");
            }
            family(
                out,
                "nenya_redact_failures_total",
                "counter",
                "Texts forwarded unscanned after an internal redaction error.",
            );
            let _ = writeln!(out, "nenya_redact_failures_total {}", r.failures());
        });
    }
    if let Some(e) = entropy.cloned() {
        metrics.register("entropy", move |out| {
            family(
                out,
                "nenya_entropy_redactions_total",
                "counter",
                "High-entropy tokens redacted before forwarding.",
            );
            let _ = writeln!(out, "nenya_entropy_redactions_total {}", e.redacted());
        });
    }
    let b = breaker.clone();
    metrics.register("circuit_breaker", move |out| {
        family(
            out,
            "nenya_circuit_open",
            "gauge",
            "1 for each provider/model circuit that is open or half-open.",
        );
        for key in b.open_circuits() {
            let _ = writeln!(out, "nenya_circuit_open{{circuit=\"{}\"}} 1", escape(&key));
        }
    });
}

/// The assembled gateway service. Cheap to clone; never fails (errors are responses).
#[derive(Clone)]
pub struct Gateway {
    svc: GatewayService,
    /// What a reload carries over: shared, so that a clone (one per request, by the serving
    /// glue or a router such as axum's) copies only the service stack.
    kept: Arc<Kept>,
}

/// The whole erased stack a [`Gateway`] serves with.
type GatewayService = Shared<Request<Body>, Response<Body>, Infallible>;

/// The parts of a [`Gateway`] a reload reads, none of them used on a request.
struct Kept {
    metrics: Metrics,
    usage: UsageMeter,
    carried: Carried,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// The gateway's metrics (what `GET /metrics` renders), for embedders that serve them
    /// elsewhere.
    pub fn metrics(&self) -> &Metrics {
        &self.kept.metrics
    }

    /// A builder over a route table.
    pub fn builder(table: RouteTable) -> GatewayBuilder {
        GatewayBuilder {
            table: Arc::new(table),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            body_read_timeout: crate::layers::decode::DEFAULT_BODY_READ_TIMEOUT,
            tokens: Vec::new(),
            api_keys: Vec::new(),
            origins: Vec::new(),
            redactor: Some(Redactor::builtin()),
            entropy: Some(EntropyDetector::default()),
            remember_clean: crate::config::DEFAULT_REMEMBER_CLEAN_TEXTS,
            breaker: BreakerConfig::default(),
            limits: RateLimitConfig::default(),
            limit_overrides: BTreeMap::new(),
            key_limits: BTreeMap::new(),
            concurrency_queue: Duration::from_secs(30),
            budget: BudgetConfig::default(),
            metrics: Metrics::new(),
            usage: UsageMeter::new(),
            cache: None,
            prune: PruneConfig::default(),
            compact: CompactConfig::default(),
            context_retry: true,
            auto_context_skip: false,
            failover: FailoverPolicy::default(),
            reorder_by_latency: false,
            latency: LatencyTracker::default(),
            context_stats: ContextStats::default(),
            window: None,
            reload: None,
            generation: 1,
            live_models: LiveModels::default(),
            quota: QuotaConfig::default(),
            prices: PriceTable::default(),
            ledger: Ledger::new(),
            prefix_cache: None,
            balance: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            local_engines: crate::services::LocalEngines::default(),
            semantic: None,
            state: (None, SharedState::memory()),
            #[cfg(feature = "mcp")]
            mcp: None,
            carried: None,
        }
    }

    /// A builder from config and secrets (upstreams over the shared pooled HTTP client).
    pub fn from_config(cfg: &Config, secrets: &Secrets) -> Result<GatewayBuilder, ConfigError> {
        let client = http_client(crate::services::transport::DEFAULT_CONNECT_TIMEOUT);
        let table = RouteTable::from_config(cfg, secrets, &client)?;
        let window = window_config(cfg, &table)?;
        let semantic = semantic_config(cfg, &table)?;
        let local =
            crate::services::LocalEngines::new(cfg.providers.iter().filter_map(|(n, p)| {
                let l = p.local_engine.as_ref()?;
                Some((
                    table.provider(n)?,
                    crate::services::LocalEngineConfig {
                        preload: l.preload.clone(),
                        max_loaded: l.max_loaded,
                        keep_alive: l.keep_alive.clone().unwrap_or_else(|| "30m".into()),
                    },
                ))
            }));
        let state = state_from_config(&cfg.state)?;
        #[cfg(feature = "mcp")]
        let agent_tools = crate::services::mcp::agent_tools(cfg)?;
        #[cfg(not(feature = "mcp"))]
        if !cfg.mcp_servers.is_empty() {
            return Err(ConfigError::new(
                None,
                Some("mcp_servers".into()),
                "this build has no MCP client (cargo feature `mcp`)".to_owned(),
            ));
        }
        let builder = Self::builder(table);
        #[cfg(feature = "mcp")]
        let builder = builder.mcp(cfg.mcp_servers.clone(), agent_tools);
        builder
            .shared_state(state)
            .state_section(cfg.state.clone())
            .local_engines(local)
            .window(window)
            .max_body_bytes(cfg.server.max_body_bytes)
            .max_upload_bytes(cfg.server.max_upload_bytes)
            .body_read_timeout(Duration::from_secs(
                cfg.server.body_read_timeout_seconds.max(1),
            ))
            .client_tokens(secrets.client_token.clone())
            .api_keys(secrets.rbac_keys()?)
            .key_limits(secrets.key_limits())
            .quota(QuotaConfig {
                keys: secrets
                    .key_quotas()?
                    .into_iter()
                    .map(|(k, q)| (Arc::from(k), q))
                    .collect(),
                providers: cfg
                    .providers
                    .iter()
                    .filter_map(|(n, p)| Some((Arc::from(n.as_str()), p.token_budget_daily?)))
                    .collect(),
                max_cost_per_request: cfg.governance.max_cost_per_request.filter(|c| *c > 0.0),
            })
            .prices(PriceTable::new(cfg.pricing.clone()))
            .prefix_cache(prefix_cache_config(cfg)?)
            .semantic_cache(semantic)
            .balanced(balance_config(cfg)?)
            .allowed_browser_origins(cfg.governance.allowed_browser_origins.iter().cloned())
            .rate_limit_overrides(
                cfg.providers
                    .iter()
                    .filter(|(_, p)| p.ratelimit_max_rpm.is_some() || p.ratelimit_max_tpm.is_some())
                    .map(|(n, p)| {
                        let limits = RateLimitConfig {
                            rpm: p
                                .ratelimit_max_rpm
                                .unwrap_or(cfg.governance.ratelimit_max_rpm),
                            tpm: p
                                .ratelimit_max_tpm
                                .unwrap_or(cfg.governance.ratelimit_max_tpm),
                        };
                        (n.clone(), limits)
                    })
                    .collect(),
            )
            .concurrency_queue(Duration::from_secs(
                cfg.governance.concurrency_queue_seconds,
            ))
            .failover_policy(FailoverPolicy {
                retryable_status: cfg
                    .governance
                    .retryable_status_codes
                    .as_deref()
                    .map_or_else(|| FailoverPolicy::default().retryable_status, Arc::from),
                early_stream_error_failover: cfg.governance.early_stream_error_failover,
                empty_stream_as_error: cfg.governance.empty_stream_as_error,
            })
            .rate_limits(RateLimitConfig {
                rpm: cfg.governance.ratelimit_max_rpm,
                tpm: cfg.governance.ratelimit_max_tpm,
            })
            .prune(PruneConfig {
                thoughts: cfg.compaction.prune_thoughts,
                stale_tool_results: cfg.compaction.prune_stale_tools,
                keep_recent: cfg.compaction.keep_recent_tool_results,
                ..PruneConfig::default()
            })
            .compact(CompactConfig {
                json_minify: cfg.compaction.json_minify,
                whitespace: cfg.compaction.collapse_whitespace,
                fold_duplicates: cfg.compaction.fold_duplicates,
            })
            .response_cache(cfg.response_cache.enabled.then(|| CacheConfig {
                max_bytes: cfg.response_cache.max_bytes,
                max_entry_bytes: cfg.response_cache.max_entry_bytes,
                ttl: Duration::from_secs(cfg.response_cache.ttl_seconds),
                cache_nondeterministic: cfg.response_cache.cache_nondeterministic,
            }))
            .context_budget(BudgetConfig {
                keep_first_pct: cfg.context.truncation_keep_first_pct,
                keep_last_pct: cfg.context.truncation_keep_last_pct,
                hard_limit_tokens: cfg.context.hard_limit_tokens.filter(|n| *n > 0),
                relevance: RelevanceQuery::from_config(&cfg.context.tfidf_query_source),
                ..BudgetConfig::default()
            })
            .context_retry(cfg.governance.auto_retry_on_context_limit)
            .auto_context_skip(cfg.context.auto_context_skip)
            .reorder_by_latency(cfg.context.auto_reorder_by_latency)
            .bouncer(&cfg.bouncer)
    }
}

impl<B> Service<Request<B>> for Gateway
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = crate::erase::BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.svc.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.svc.call_shared(req.map(Body::new))
    }
}

/// Routes paths: health, stats, metrics, chat endpoints, and 404/405 for everything else.
#[derive(Clone)]
struct Dispatch<C> {
    chat: C,
    passthrough: crate::services::passthrough::Passthrough,
    table: Arc<RouteTable>,
    metrics: Metrics,
    statsz: Arc<dyn Fn() -> String + Send + Sync>,
    reload: Option<ReloadTrigger>,
    live_models: LiveModels,
}

impl<C: std::fmt::Debug> std::fmt::Debug for Dispatch<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field("chat", &self.chat)
            .finish_non_exhaustive()
    }
}

impl<C> Service<Request<Body>> for Dispatch<C>
where
    C: Service<Request<Body>, Response = Response<Body>, Error = Error> + Clone + Send + 'static,
    C::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = DispatchFuture<C::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.chat.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let ready = |r: Result<Response<Body>, Error>| DispatchFuture::Ready { res: Some(r) };
        if path == "/healthz" {
            return ready(Ok(json_ok(r#"{"status":"ok"}"#)));
        }
        if path == "/v1/models" {
            if req.method() != Method::GET {
                return ready(Err(Error::new(
                    ErrorKind::MethodNotAllowed,
                    "/v1/models only accepts GET",
                )));
            }
            return ready(Ok(model_list(&self.table, &self.live_models, &req)));
        }
        if path == "/statsz" && req.method() == Method::GET {
            let mut r = Response::new(Body::from((self.statsz)()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return ready(Ok(r));
        }
        if path == "/metrics" && req.method() == Method::GET {
            let mut r = Response::new(Body::from(self.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return ready(Ok(r));
        }
        if path == "/admin/reload" {
            // The auth layer lets only admin keys reach `/admin`.
            if req.method() != Method::POST {
                return ready(Err(Error::new(
                    ErrorKind::MethodNotAllowed,
                    "/admin/reload only accepts POST",
                )));
            }
            let Some(trigger) = self.reload.clone() else {
                return ready(Err(Error::new(
                    ErrorKind::NotFound,
                    "this gateway was not started with a reloadable configuration",
                )));
            };
            return DispatchFuture::Reload {
                fut: Box::pin(async move {
                    match trigger.reload().await {
                        Ok(()) => Ok(json_ok(r#"{"reloaded":true}"#)),
                        Err(e) => {
                            let mut r = Response::new(Body::from(
                                serde_json::json!({"reloaded": false, "error": {
                                    "message": format!("reload rejected, the previous configuration keeps serving: {e}"),
                                    "error_kind": "invalid_config"}})
                                .to_string(),
                            ));
                            *r.status_mut() = http::StatusCode::UNPROCESSABLE_ENTITY;
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/json"),
                            );
                            Ok(r)
                        }
                    }
                }),
            };
        }
        if path == "/v1/a2a" || path.starts_with("/v1/a2a/") {
            if req.method() != Method::POST {
                return ready(Err(Error::new(
                    ErrorKind::MethodNotAllowed,
                    "/v1/a2a only accepts POST",
                )));
            }
            let agent = path.strip_prefix("/v1/a2a/").map(str::to_owned);
            let agents: Vec<String> = self
                .table
                .agent_names()
                .into_iter()
                .map(str::to_owned)
                .collect();
            return DispatchFuture::Reload {
                fut: Box::pin(a2a(self.chat.clone(), req, agent, agents)),
            };
        }
        if crate::services::passthrough::handles(req.method(), path) {
            return DispatchFuture::Reload {
                fut: self.passthrough.call(req),
            };
        }
        if ApiFormat::from_path(path).is_some() {
            if req.method() != Method::POST {
                return ready(Err(Error::new(
                    ErrorKind::MethodNotAllowed,
                    format!("{} only accepts POST", path),
                )));
            }
            let count = path.ends_with("/count_tokens");
            let mut req = req;
            if count {
                req.extensions_mut().insert(CountTokens);
            }
            return DispatchFuture::Chat {
                fut: self.chat.call(req),
            };
        }
        ready(Err(Error::new(
            ErrorKind::NotFound,
            format!("no route for {} {}", req.method(), path),
        )))
    }
}

/// `POST /v1/a2a[/{agent}]`: the JSON-RPC call becomes a chat request through the whole chat
/// stack (it keeps the caller's identity and scopes), its answer a JSON-RPC result or stream.
async fn a2a<C>(
    mut chat: C,
    req: Request<Body>,
    agent: Option<String>,
    agents: Vec<String>,
) -> Result<Response<Body>, Error>
where
    C: Service<Request<Body>, Response = Response<Body>, Error = Error>,
{
    use crate::services::a2a::{A2aStream, send_result, to_chat};
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let json = |s: String| {
        let mut r = Response::new(Body::from(s));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let (mut parts, body) = req.into_parts();
    let bytes = http_body_util::Limited::new(body, DEFAULT_MAX_BODY_BYTES as usize)
        .collect()
        .await
        .map_err(|_| Error::new(ErrorKind::BodyTooLarge, "the request body is too large"))?
        .to_bytes();
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    let call = match to_chat(&bytes, agent.as_deref(), &names) {
        Ok(c) => c,
        Err((id, e)) => return Ok(json(e.body(&id))),
    };
    parts.uri = http::Uri::from_static("/v1/chat/completions");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let inner = Request::from_parts(parts, Body::from(call.chat.to_string()));
    let resp = match chat.ready().await {
        Ok(svc) => svc.call(inner).await,
        Err(e) => Err(e),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let err = crate::services::a2a::RpcError {
                code: -32603,
                message: e.to_string(),
                kind: e.kind().as_str(),
            };
            return Ok(json(err.body(&call.id)));
        }
    };
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if call.stream && sse && resp.status().is_success() {
        let mut r = Response::new(Body::new(A2aStream::new(resp.into_body(), &call)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(r);
    }
    let status = resp.status().as_u16();
    let answer = http_body_util::Limited::new(resp.into_body(), 32 << 20)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Ok(json(send_result(&call, status, &answer)))
}

/// `GET /v1/models` in the client's format (Anthropic's when it sent `anthropic-version`),
/// limited to the agents a scoped API key may use.
fn model_list(table: &RouteTable, live: &LiveModels, req: &Request<Body>) -> Response<Body> {
    let principal = req.extensions().get::<crate::model::Principal>();
    let mut models = table.models();
    // The providers' own lists add what the static registry does not know.
    let mut seen: std::collections::HashSet<String> = models.iter().map(|m| m.id.clone()).collect();
    for (provider, ids) in live.snapshot() {
        for id in ids {
            if seen.insert(id.clone()) {
                let known = crate::adapters::providers::known_model(&id);
                models.push(crate::services::ModelInfo {
                    owned_by: provider.clone(),
                    context_window: known.map(|k| k.max_context),
                    max_output_tokens: known.map(|k| k.max_output),
                    id,
                });
            }
        }
    }
    let models: Vec<_> = models
        .into_iter()
        .filter(|m| principal.is_none_or(|p| p.may_use(&m.id)))
        .collect();
    let v = if req.headers().contains_key("anthropic-version") {
        let data: Vec<_> = models
            .iter()
            .map(|m| {
                serde_json::json!({"type": "model", "id": m.id, "display_name": m.id,
                    "created_at": "1970-01-01T00:00:00Z"})
            })
            .collect();
        serde_json::json!({
            "data": data,
            "has_more": false,
            "first_id": models.first().map(|m| m.id.clone()),
            "last_id": models.last().map(|m| m.id.clone()),
        })
    } else {
        let data: Vec<_> = models
            .iter()
            .map(|m| {
                let mut o = serde_json::json!({"id": m.id, "object": "model", "created": 0,
                    "owned_by": m.owned_by});
                if let Some(c) = m.context_window {
                    o["context_window"] = c.into();
                }
                if let Some(c) = m.max_output_tokens {
                    o["max_output_tokens"] = c.into();
                }
                o
            })
            .collect();
        serde_json::json!({"object": "list", "data": data})
    };
    let mut r = Response::new(Body::from(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn json_ok(body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pin_project! {
    #[project = DispatchProj]
    enum DispatchFuture<F> {
        Chat { #[pin] fut: F },
        Ready { res: Option<Result<Response<Body>, Error>> },
        Reload { fut: Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>> },
    }
}

impl<F> Future for DispatchFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = Result<Response<Body>, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DispatchProj::Chat { fut } => fut.poll(cx),
            DispatchProj::Reload { fut } => fut.as_mut().poll(cx),
            DispatchProj::Ready { res } => Poll::Ready(res.take().unwrap_or_else(|| {
                Err(Error::new(
                    ErrorKind::Internal,
                    "future polled after completion",
                ))
            })),
        }
    }
}

/// A [`Gateway`] that can be replaced while it serves: each request runs on the gateway
/// current when it arrived, so in-flight requests (streams included) finish on the old one.
/// The binary swaps in a new one on `SIGHUP`.
///
/// ```
/// use nenya::{Gateway, ReloadableGateway, services::{RouteTable, MockProvider, MockConfig}};
/// use tower::ServiceExt;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let first = Gateway::builder(RouteTable::mock(MockProvider::new(MockConfig::default()))).build();
/// let gw = ReloadableGateway::new(first);
/// let next = Gateway::builder(RouteTable::mock(MockProvider::new(MockConfig::default())))
///     .carry_state_from(&gw.current())
///     .build();
/// gw.replace(next);
/// let req = http::Request::get("/healthz").body(nenya::Body::empty()).unwrap();
/// assert_eq!(gw.oneshot(req).await.unwrap().status(), 200);
/// # }
/// ```
#[derive(Clone)]
pub struct ReloadableGateway {
    current: Arc<arc_swap::ArcSwap<Gateway>>,
}

impl std::fmt::Debug for ReloadableGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableGateway").finish_non_exhaustive()
    }
}

impl ReloadableGateway {
    /// Starts serving `gateway`.
    pub fn new(gateway: Gateway) -> Self {
        Self {
            current: Arc::new(arc_swap::ArcSwap::from_pointee(gateway)),
        }
    }

    /// The gateway serving new requests now.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Serves new requests with `gateway` from now on.
    pub fn replace(&self, gateway: Gateway) {
        self.current.store(Arc::new(gateway));
    }
}

impl<B> Service<Request<B>> for ReloadableGateway
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = crate::erase::BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the serving gateway's, checked in the oneshot.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // No copy of the gateway: its stack is called through a shared reference.
        self.current.load().svc.call_shared(req.map(Body::new))
    }
}
