//! The router: resolves a request's `model` (an agent, `provider/model`, or a known model) to
//! upstream targets and hands the request to the provider service.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body as _;
use tower::Service;

use super::mock::MockProvider;
use super::provider::{ProviderSpec, Target, Timeouts};
use super::transport::{HttpClient, Transport};
use crate::Body;
use crate::adapters::providers::{
    AuthStyle, BUILTIN_PROVIDERS, Capabilities, KNOWN_MODELS, Quirks, builtin_provider, known_model,
};
use crate::config::{Config, ConfigError, ModelEntry, Secrets};
use crate::error::{Error, ErrorKind};
use crate::layers::BreakerConfig;
use crate::layers::budget::ContextRetry;
use crate::model::{ApiFormat, ChatRequest, CountTokens, Principal};
use crate::sse::Decoder;
use crate::tokens::TokenCache;

/// An agent: its chain and how to walk it.
#[derive(Debug)]
struct Agent {
    chain: Vec<TargetSpec>,
    round_robin: bool,
    /// The agent's own breaker settings (`failure_threshold`, `cooldown_seconds`).
    failure_threshold: Option<u32>,
    cooldown: Option<Duration>,
    /// Where the next round-robin walk starts.
    next: AtomicUsize,
}

/// One entry of the model list (`GET /v1/models`).
///
/// ```
/// use nenya::services::{RouteTable, MockProvider, MockConfig};
/// let t = RouteTable::mock(MockProvider::new(MockConfig::default()));
/// assert!(t.models().is_empty()); // the mock serves any name, it lists none
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name a client sends as `model`.
    pub id: String,
    /// The provider, or `nenya-agent` for an agent.
    pub owned_by: String,
    /// Context window in tokens, when known.
    pub context_window: Option<u32>,
    /// Maximum output tokens, when known.
    pub max_output_tokens: Option<u32>,
}

/// One configured entry of an agent's chain.
#[derive(Debug, Clone)]
struct TargetSpec {
    provider: Arc<ProviderSpec>,
    model: String,
    format: Option<ApiFormat>,
    url: Option<Uri>,
    max_context: Option<u64>,
    /// `agent:provider/model` (or `provider/model` outside agents), `provider/model` and
    /// `provider`, made once (per-target layers key on them).
    circuit_key: Arc<str>,
    model_key: Arc<str>,
    provider_key: Arc<str>,
}

impl TargetSpec {
    fn new(
        provider: Arc<ProviderSpec>,
        model: String,
        format: Option<ApiFormat>,
        url: Option<Uri>,
        max_context: Option<u64>,
    ) -> Self {
        let model_key: Arc<str> = format!("{}/{}", provider.name, model).into();
        Self {
            circuit_key: model_key.clone(),
            model_key,
            provider_key: provider.name.as_str().into(),
            provider,
            model,
            format,
            url,
            max_context,
        }
    }

    /// The target as a member of `agent`'s chain: its circuit is the agent's own.
    fn in_agent(mut self, agent: &str) -> Self {
        self.circuit_key = format!("{agent}:{}", self.model_key).into();
        self
    }
}

/// Agents and providers, resolved from config.
///
/// ```
/// use nenya::services::{RouteTable, MockProvider, MockConfig};
/// let table = RouteTable::mock(MockProvider::new(MockConfig::default()));
/// let targets = table.resolve("any-model", nenya::model::ApiFormat::Anthropic).unwrap();
/// assert_eq!(targets[0].provider.name, "mock");
/// ```
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    agents: HashMap<String, Arc<Agent>>,
    providers: HashMap<String, Arc<ProviderSpec>>,
    /// Serves every model no other rule matched (the mock, when nothing is configured).
    catch_all: Option<Arc<ProviderSpec>>,
    /// Providers whose live `/models` list is fetched: configured or given a key, usable.
    discoverable: Vec<Arc<ProviderSpec>>,
}

/// The in-process mock's endpoints (the host is never contacted).
const MOCK_OPENAI: &str = "http://mock.nenya.invalid/v1/chat/completions";
const MOCK_ANTHROPIC: &str = "http://mock.nenya.invalid/v1/messages";

impl RouteTable {
    /// A table that routes every model to the in-process mock provider, in either format.
    pub fn mock(mock: MockProvider) -> Self {
        let spec = ProviderSpec::new("mock", Transport::Mock(mock))
            .with_endpoint(ApiFormat::OpenAi, Uri::from_static(MOCK_OPENAI))
            .with_endpoint(ApiFormat::Anthropic, Uri::from_static(MOCK_ANTHROPIC));
        let spec = Arc::new(spec);
        let mut providers = HashMap::new();
        providers.insert("mock".to_owned(), spec.clone());
        Self {
            agents: HashMap::new(),
            providers,
            catch_all: Some(spec),
            discoverable: Vec::new(),
        }
    }

    /// Resolves config and secrets into a table; errors name the field at fault.
    pub fn from_config(
        cfg: &Config,
        secrets: &Secrets,
        client: &HttpClient,
    ) -> Result<Self, ConfigError> {
        let user_agent = match &cfg.server.user_agent {
            Some(ua) => HeaderValue::from_str(ua).map_err(|_| {
                ConfigError::new(
                    None,
                    Some("server.user_agent".into()),
                    "not a valid header value",
                )
            })?,
            None => HeaderValue::from_static(concat!("nenya/", env!("CARGO_PKG_VERSION"))),
        };
        let mut providers = HashMap::new();
        let mut names: Vec<&str> = BUILTIN_PROVIDERS.iter().map(|p| p.name).collect();
        for k in cfg.providers.keys() {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
        for name in names {
            let field = |f: &str| Some(format!("providers.{name}.{f}"));
            let pc = cfg.providers.get(name).cloned().unwrap_or_default();
            let builtin = builtin_provider(name);
            let url_s = pc
                .url
                .clone()
                .or_else(|| builtin.map(|b| b.url.to_owned()).filter(|u| !u.is_empty()));
            // A built-in without a default URL (Azure) exists only when configured.
            if url_s.is_none() && builtin.is_some() && !cfg.providers.contains_key(name) {
                continue;
            }
            let url_s = url_s.ok_or_else(|| {
                ConfigError::new(
                    None,
                    field("url"),
                    "is required for a provider nenya does not know",
                )
            })?;
            let url = parse_url(&url_s).map_err(|m| ConfigError::new(None, field("url"), m))?;
            let format = pc
                .format
                .or_else(|| {
                    if pc.url.is_none() {
                        builtin.map(|b| b.format)
                    } else {
                        None
                    }
                })
                .unwrap_or_else(|| infer_format(&url));
            let auth = match &pc.auth_style {
                Some(s) => s
                    .parse::<AuthStyle>()
                    .map_err(|m| ConfigError::new(None, field("auth_style"), m))?,
                None => builtin
                    .map(|b| b.auth)
                    .unwrap_or(if format == ApiFormat::Anthropic {
                        AuthStyle::Anthropic
                    } else {
                        AuthStyle::Bearer
                    }),
            };
            // A provider with its own connect timeout gets a client of its own.
            let (client, connect_timeout) = match pc.connect_timeout_seconds.filter(|s| *s > 0) {
                Some(s) => (
                    super::http_client(Duration::from_secs(s)),
                    Duration::from_secs(s),
                ),
                None => (client.clone(), super::transport::DEFAULT_CONNECT_TIMEOUT),
            };
            let transport = Transport::Pooled {
                client,
                connect_timeout,
            };
            let mut spec = ProviderSpec::new(name, transport)
                .with_endpoint(format, url)
                .with_auth(
                    auth,
                    secrets
                        .provider_keys
                        .get(name)
                        .cloned()
                        .or(pc.api_key.clone()),
                );
            for (fname, furl) in &pc.format_urls {
                let f: ApiFormat = fname.parse().map_err(|m: String| {
                    ConfigError::new(None, field(&format!("format_urls.{fname}")), m)
                })?;
                let u = parse_url(furl).map_err(|m| {
                    ConfigError::new(None, field(&format!("format_urls.{fname}")), m)
                })?;
                match spec.endpoints.iter_mut().find(|(ef, _)| *ef == f) {
                    Some(slot) => slot.1 = u,
                    None => spec.endpoints.push((f, u)),
                }
            }
            let secs = Duration::from_secs;
            let mut t = Timeouts::default();
            if let Some(s) = pc.response_header_timeout_seconds.or(pc.timeout_seconds) {
                t.first_byte = secs(s.max(1));
            }
            if let Some(s) = pc
                .stream_idle_timeout_seconds
                .or(cfg.governance.stream_idle_timeout_seconds)
                .filter(|s| *s > 0)
            {
                t.idle = secs(s);
            }
            t.total = pc
                .upstream_timeout_seconds
                .or(cfg.governance.upstream_timeout_seconds)
                .filter(|s| *s > 0)
                .map(secs);
            spec = spec.with_timeouts(t);
            // Known providers keep their capabilities even at a custom URL; unknown ones are
            // treated as conservative OpenAI-compatible upstreams.
            spec.caps = builtin.map_or(Capabilities::CONSERVATIVE, |b| b.caps);
            for (k, v) in &pc.capabilities {
                let c = &mut spec.caps;
                let slot = match k.as_str() {
                    "stream_options" => &mut c.stream_options,
                    "auto_tool_choice" => &mut c.auto_tool_choice,
                    "content_arrays" => &mut c.content_arrays,
                    "tool_calls" => &mut c.tool_calls,
                    "reasoning" => &mut c.reasoning,
                    "vision" => &mut c.vision,
                    other => {
                        return Err(ConfigError::new(
                            None,
                            field(&format!("capabilities.{other}")),
                            "unknown capability (stream_options, auto_tool_choice, content_arrays, tool_calls, reasoning, vision)",
                        ));
                    }
                };
                *slot = *v;
            }
            spec.quirks = builtin.map_or(Quirks::NONE, |b| b.quirks);
            spec.user_agent = user_agent.clone();
            if !pc.accounts.is_empty() {
                let accounts: Vec<crate::layers::accounts::Account> = pc
                    .accounts
                    .iter()
                    .map(|a| {
                        crate::layers::accounts::Account::new(a.id.as_str(), a.credential.clone())
                    })
                    .collect();
                spec.accounts = Some(accounts.into());
            }
            spec.retryable_status = pc.retryable_status_codes.as_deref().map(Arc::<[u16]>::from);
            spec.max_concurrent = pc
                .max_concurrent_requests
                .or(Some(cfg.governance.max_concurrent_requests))
                .filter(|n| *n > 0);
            providers.insert(name.to_owned(), Arc::new(spec));
        }

        let mut agents = HashMap::new();
        for (agent, ac) in &cfg.agents {
            let mut chain = Vec::with_capacity(ac.models.len());
            for (i, entry) in ac.models.iter().enumerate() {
                let at = format!("agents.{agent}.models[{i}]");
                match entry {
                    ModelEntry::Name(name) => {
                        let known = known_model(name).ok_or_else(|| {
                            ConfigError::new(
                                None,
                                Some(at.clone()),
                                format!("`{name}` is not in the model registry; use {{\"provider\": …, \"model\": …}}"),
                            )
                        })?;
                        chain.push(
                            TargetSpec::new(
                                providers[known.provider].clone(),
                                name.clone(),
                                None,
                                None,
                                None,
                            )
                            .in_agent(agent),
                        );
                    }
                    ModelEntry::Object(o) => {
                        let pname = match (&o.provider, &o.model) {
                            (Some(p), _) => p.clone(),
                            (None, Some(m)) => known_model(m)
                                .map(|k| k.provider.to_owned())
                                .ok_or_else(|| {
                                    ConfigError::new(
                                        None,
                                        Some(format!("{at}.provider")),
                                        "is required (model not in the registry)",
                                    )
                                })?,
                            (None, None) => {
                                return Err(ConfigError::new(
                                    None,
                                    Some(at),
                                    "needs `provider` and `model`",
                                ));
                            }
                        };
                        let provider = providers.get(&pname).cloned().ok_or_else(|| {
                            ConfigError::new(
                                None,
                                Some(format!("{at}.provider")),
                                format!("unknown provider `{pname}`"),
                            )
                        })?;
                        let model = o.model.clone().ok_or_else(|| {
                            ConfigError::new(
                                None,
                                Some(format!("{at}.model")),
                                "is required (provider-wide selectors need model discovery, not implemented yet)",
                            )
                        })?;
                        let url =
                            o.url.as_deref().map(parse_url).transpose().map_err(|m| {
                                ConfigError::new(None, Some(format!("{at}.url")), m)
                            })?;
                        chain.push(
                            TargetSpec::new(provider, model, o.format, url, o.max_context)
                                .in_agent(agent),
                        );
                    }
                }
            }
            if chain.is_empty() {
                return Err(ConfigError::new(
                    None,
                    Some(format!("agents.{agent}.models")),
                    "must list at least one model",
                ));
            }
            // Nenya's default is round-robin; `sticky` (session pinning) is not implemented
            // and walks the chain in order, like `fallback`.
            let round_robin = match ac.strategy.as_deref() {
                Some("fallback" | "sticky") => false,
                None | Some("round-robin" | "round_robin") => true,
                Some(other) => {
                    return Err(ConfigError::new(
                        None,
                        Some(format!("agents.{agent}.strategy")),
                        format!(
                            "unknown strategy `{other}` (expected round-robin, fallback or sticky)"
                        ),
                    ));
                }
            };
            agents.insert(
                agent.clone(),
                Arc::new(Agent {
                    chain,
                    round_robin,
                    failure_threshold: ac.failure_threshold.filter(|n| *n > 0),
                    cooldown: ac
                        .cooldown_seconds
                        .filter(|n| *n > 0)
                        .map(Duration::from_secs),
                    next: AtomicUsize::new(0),
                }),
            );
        }
        let mut discoverable: Vec<Arc<ProviderSpec>> = providers
            .iter()
            .filter(|(name, p)| {
                (cfg.providers.contains_key(*name) || secrets.provider_keys.contains_key(*name))
                    && (p.key.is_some() || p.accounts.is_some() || p.auth == AuthStyle::None)
                    && matches!(p.transport, Transport::Http(_) | Transport::Pooled { .. })
            })
            .map(|(_, p)| p.clone())
            .collect();
        discoverable.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            agents,
            providers,
            catch_all: None,
            discoverable,
        })
    }

    /// Providers whose live model list is worth fetching (configured, usable, over HTTP).
    pub(crate) fn discoverable(&self) -> Vec<Arc<ProviderSpec>> {
        self.discoverable.clone()
    }

    /// The targets for `model`, in order, for a client speaking `client`.
    pub fn resolve(&self, model: &str, client: ApiFormat) -> Result<Vec<Target>, Error> {
        if let Some(agent) = self.agents.get(model) {
            let n = agent.chain.len();
            // Round-robin rotates where the walk starts; the rest of the chain stays the
            // fallback order.
            let start = if agent.round_robin && n > 1 {
                agent.next.fetch_add(1, Ordering::Relaxed) % n
            } else {
                0
            };
            return (0..n)
                .map(|i| target(&agent.chain[(start + i) % n], client))
                .collect();
        }
        if let Some((p, m)) = model.split_once('/')
            && let Some(provider) = self.providers.get(p)
        {
            return Ok(vec![target(
                &TargetSpec::new(provider.clone(), m.to_owned(), None, None, None),
                client,
            )?]);
        }
        let provider = known_model(model)
            .and_then(|k| self.providers.get(k.provider))
            .filter(|p| p.key.is_some() || p.accounts.is_some() || p.auth == AuthStyle::None)
            .or(self.catch_all.as_ref());
        match provider {
            Some(p) => Ok(vec![target(
                &TargetSpec::new(p.clone(), model.to_owned(), None, None, None),
                client,
            )?]),
            None => Err(Error::new(
                ErrorKind::ModelNotFound,
                format!("no agent, provider/model or configured model is named `{model}`"),
            )),
        }
    }

    /// The smallest known context window among the targets `model` resolves to, without
    /// resolving them (no allocation): what a layer before the router can plan with.
    ///
    /// ```
    /// use nenya::services::{RouteTable, MockProvider, MockConfig};
    /// let t = RouteTable::mock(MockProvider::new(MockConfig::default()));
    /// assert_eq!(t.window_of("anything"), None);
    /// ```
    pub fn window_of(&self, model: &str) -> Option<u64> {
        let known = |m: &str| known_model(m).map(|k| u64::from(k.max_context));
        match self.agents.get(model) {
            Some(agent) => agent
                .chain
                .iter()
                .filter_map(|t| t.max_context.or_else(|| known(&t.model)))
                .min(),
            None => known(model.rsplit('/').next().unwrap_or(model)),
        }
    }

    /// Whether `model` names an agent, a `provider/model`, or a model some configured
    /// provider serves (what [`RouteTable::resolve`] would accept).
    pub fn can_resolve(&self, model: &str) -> bool {
        self.resolve(model, ApiFormat::OpenAi).is_ok()
    }

    /// Every configured provider's name.
    pub fn provider_names(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }

    /// The provider named `name`, as configured.
    pub fn provider(&self, name: &str) -> Option<Arc<ProviderSpec>> {
        self.providers.get(name).cloned()
    }

    /// What `GET /v1/models` lists: every agent, then every registry model whose provider is
    /// configured and usable (has a key, or needs none), in a stable order.
    pub fn models(&self) -> Vec<ModelInfo> {
        let mut out: Vec<ModelInfo> = self
            .agent_names()
            .into_iter()
            .map(|a| ModelInfo {
                id: a.to_owned(),
                owned_by: "nenya-agent".to_owned(),
                context_window: None,
                max_output_tokens: None,
            })
            .collect();
        for k in KNOWN_MODELS {
            let usable = self.providers.get(k.provider).is_some_and(|p| {
                p.key.is_some() || p.accounts.is_some() || p.auth == AuthStyle::None
            });
            if usable && !self.agents.contains_key(k.id) {
                out.push(ModelInfo {
                    id: k.id.to_owned(),
                    owned_by: k.provider.to_owned(),
                    context_window: Some(k.max_context),
                    max_output_tokens: Some(k.max_output),
                });
            }
        }
        out
    }

    /// Breaker settings of the circuits of agents that set their own (`failure_threshold`,
    /// `cooldown_seconds`), on top of `base`; sorted by circuit key.
    pub fn breaker_overrides(&self, base: BreakerConfig) -> Vec<(Arc<str>, BreakerConfig)> {
        let mut out: Vec<(Arc<str>, BreakerConfig)> = self
            .agents
            .values()
            .filter(|a| a.failure_threshold.is_some() || a.cooldown.is_some())
            .flat_map(|a| {
                let cfg = BreakerConfig {
                    failure_threshold: a.failure_threshold.unwrap_or(base.failure_threshold),
                    base_cooldown: a.cooldown.unwrap_or(base.base_cooldown),
                    max_cooldown: base.max_cooldown.max(a.cooldown.unwrap_or_default()),
                    ..base
                };
                a.chain.iter().map(move |t| (t.circuit_key.clone(), cfg))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Agent names, sorted.
    pub fn agent_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.agents.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

fn target(t: &TargetSpec, client: ApiFormat) -> Result<Target, Error> {
    // Prefer the client's own format when the provider serves it: nothing is lost that way.
    let format = t.format.unwrap_or_else(|| {
        if t.provider.endpoint(client).is_some() {
            client
        } else {
            t.provider.default_format()
        }
    });
    let url = match (&t.url, t.provider.endpoint(format)) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) => u.clone(),
        (None, None) => {
            return Err(Error::new(
                ErrorKind::UnsupportedConversion,
                format!("provider `{}` has no {format} endpoint", t.provider.name),
            ));
        }
    };
    Ok(Target {
        provider: t.provider.clone(),
        model: t.model.clone(),
        format,
        url,
        max_context: t
            .max_context
            .or_else(|| known_model(&t.model).map(|k| u64::from(k.max_context))),
        circuit_key: t.circuit_key.clone(),
        model_key: t.model_key.clone(),
        provider_key: t.provider_key.clone(),
    })
}

fn parse_url(s: &str) -> Result<Uri, String> {
    let u: Uri = s
        .parse()
        .map_err(|e| format!("`{s}` is not a valid URL: {e}"))?;
    match u.scheme_str() {
        Some("http" | "https") if u.host().is_some() => Ok(u),
        _ => Err(format!("`{s}` must be an absolute http(s) URL")),
    }
}

fn infer_format(u: &Uri) -> ApiFormat {
    let p = u.path();
    if p.ends_with("/messages") {
        ApiFormat::Anthropic
    } else if p.contains(":generateContent") || p.contains(":streamGenerateContent") {
        ApiFormat::Gemini
    } else {
        ApiFormat::OpenAi
    }
}

/// Resolves the request's model and calls the inner (provider) service with each
/// [`Target`] of the chain in turn, in the request extensions.
///
/// Failover: while nothing has reached the client, a connect error, a time-to-first-byte
/// timeout, an open circuit, a local rate limit or a retryable status (429, 500, 502, 503,
/// 504, 529) moves on to the next target; a client error (400, 401, 403, 404, 422, …) never
/// does, except a `400` whose body says the prompt exceeded the target's context window (the
/// next target may have a larger one). The last target's
/// answer, whatever it is, goes to the client. Every answer carries `x-nenya-attempts`.
/// The request is cloned for a retry only when the chain has another target.
///
/// Context: with [`Router::context_retry`] (the gateway's default), an upstream's
/// context-exceeded answer is retried once on the same target with a
/// [`ContextRetry`] extension, which the budget layer below turns into a tighter budget; with
/// [`Router::auto_context_skip`], targets whose window is smaller than the prompt's estimate
/// are skipped (unless every target is).
#[derive(Debug, Clone)]
pub struct Router<S> {
    inner: S,
    table: Arc<RouteTable>,
    context_retry: bool,
    auto_context_skip: bool,
    policy: Arc<FailoverPolicy>,
    latency: Option<LatencyTracker>,
    balance: Option<Arc<Balance>>,
}

/// Weights of balanced routing (`governance.routing_strategy: "balanced"`): each target of a
/// chain scores `latency_weight × median / slowest median + cost_weight × price / dearest
/// price` (lower is better; the price is input plus output per million tokens, an unknown
/// price counts as the dearest), scaled by a random ±5%.
///
/// ```
/// let b = nenya::services::Balance { latency_weight: 1.0, cost_weight: 2.0, prices: Default::default() };
/// assert_eq!(b.cost_weight, 2.0);
/// ```
#[derive(Debug, Clone)]
pub struct Balance {
    /// Weight of the normalised median latency.
    pub latency_weight: f64,
    /// Weight of the normalised price.
    pub cost_weight: f64,
    /// Where prices come from.
    pub prices: crate::pricing::PriceTable,
}

/// Recent response times per upstream provider+model, for latency-aware ordering (Nenya's
/// `auto_reorder_by_latency`). Cheap to clone (shared); it survives a config reload when the
/// gateway carries it over.
///
/// ```
/// use std::time::Duration;
/// let t = nenya::services::LatencyTracker::default();
/// t.record("up/m".into(), Duration::from_millis(30));
/// t.record("up/m".into(), Duration::from_millis(10));
/// t.record("up/m".into(), Duration::from_millis(20));
/// assert_eq!(t.median("up/m"), Some(Duration::from_millis(20)));
/// ```
#[derive(Debug, Clone, Default)]
pub struct LatencyTracker {
    inner: Arc<std::sync::Mutex<HashMap<Arc<str>, VecDeque<u32>>>>,
}

/// Samples kept per target.
const LATENCY_WINDOW: usize = 32;

impl LatencyTracker {
    /// Adds a time to response headers for `key` (`provider/model`).
    pub fn record(&self, key: Arc<str>, took: Duration) {
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let w = map.entry(key).or_default();
        if w.len() == LATENCY_WINDOW {
            w.pop_front();
        }
        w.push_back(micros);
    }

    /// The median of the recent times of `key`, if any were recorded.
    pub fn median(&self, key: &str) -> Option<Duration> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let w = map.get(key)?;
        let mut v: Vec<u32> = w.iter().copied().collect();
        let mid = v.len() / 2;
        let (_, m, _) = v.select_nth_unstable(mid);
        Some(Duration::from_micros(u64::from(*m)))
    }

    /// Orders `targets` fastest first by median, each scaled by a random ±5% so replicas do
    /// not all pick the same target; targets never measured go first (so they get measured).
    /// With `balance`, by its weighted score of latency and price instead.
    fn order(&self, targets: &mut VecDeque<Target>, balance: Option<&Balance>) {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new();
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let medians: Vec<Option<f64>> = targets
            .iter()
            .map(|t| {
                map.get(&t.model_key).map(|w| {
                    let mut v: Vec<u32> = w.iter().copied().collect();
                    let mid = v.len() / 2;
                    f64::from(*v.select_nth_unstable(mid).1)
                })
            })
            .collect();
        drop(map);
        let scores: Vec<f64> = match balance {
            None => medians.iter().map(|m| m.unwrap_or(-1.0)).collect(),
            Some(b) => {
                let prices: Vec<Option<f64>> = targets
                    .iter()
                    .map(|t| {
                        b.prices
                            .price(&t.provider_key, &t.model)
                            .map(|p| p.input + p.output)
                    })
                    .collect();
                let slowest = medians.iter().flatten().fold(0.0f64, |a, m| a.max(*m));
                let dearest = prices.iter().flatten().fold(0.0f64, |a, p| a.max(*p));
                let norm = |v: f64, max: f64| if max > 0.0 { v / max } else { 0.0 };
                medians
                    .iter()
                    .zip(&prices)
                    .map(|(m, p)| {
                        // Unmeasured: no latency penalty (it gets measured); unknown price:
                        // the dearest (never favoured for being unknown).
                        b.latency_weight * norm(m.unwrap_or(0.0), slowest)
                            + b.cost_weight * norm(p.unwrap_or(dearest), dearest)
                    })
                    .collect()
            }
        };
        let mut scored: Vec<(f64, Target)> = targets
            .drain(..)
            .zip(scores)
            .enumerate()
            .map(|(i, (t, score))| {
                let jitter = 0.95 + (seed.hash_one(i) % 1001) as f64 / 10_000.0;
                (score * jitter, t)
            })
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        targets.extend(scored.into_iter().map(|(_, t)| t));
    }
}

/// When the router moves on to the next target (Nenya's `governance` names).
///
/// ```
/// let p = nenya::services::FailoverPolicy::default();
/// assert_eq!(&*p.retryable_status, &[429, 500, 502, 503, 504, 529]);
/// assert!(p.early_stream_error_failover && p.empty_stream_as_error);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverPolicy {
    /// Upstream statuses that fail over (`retryable_status_codes`; a provider's own list, when
    /// it has one, replaces this for its targets).
    pub retryable_status: Arc<[u16]>,
    /// A `200` stream whose first event is an error fails over.
    pub early_stream_error_failover: bool,
    /// A `200` stream that ends without any event fails over.
    pub empty_stream_as_error: bool,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        Self {
            retryable_status: RETRYABLE_STATUS.into(),
            early_stream_error_failover: true,
            empty_stream_as_error: true,
        }
    }
}

impl<S> Router<S> {
    /// A router over `table` in front of `inner`.
    pub fn new(table: Arc<RouteTable>, inner: S) -> Self {
        Self {
            inner,
            table,
            context_retry: false,
            auto_context_skip: false,
            policy: Arc::default(),
            latency: None,
            balance: None,
        }
    }

    /// Orders each chain by the targets' recent median latency (±5% jitter), recording into
    /// and reading from `tracker`.
    pub fn reorder_by_latency(mut self, tracker: Option<LatencyTracker>) -> Self {
        self.latency = tracker;
        self
    }

    /// Orders each chain by [`Balance`]'s weighted latency and price (needs a latency
    /// tracker: [`Router::reorder_by_latency`]).
    pub fn balanced(mut self, balance: Option<Balance>) -> Self {
        self.balance = balance.map(Arc::new);
        self
    }

    /// When to move on to the next target.
    pub fn failover_policy(mut self, policy: FailoverPolicy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// Retry a context-exceeded attempt once on the same target, tighter (see the type docs).
    pub fn context_retry(mut self, on: bool) -> Self {
        self.context_retry = on;
        self
    }

    /// Skip targets whose known window is smaller than the prompt's estimate.
    pub fn auto_context_skip(mut self, on: bool) -> Self {
        self.auto_context_skip = on;
        self
    }
}

/// Smallest prompt (estimated tokens) for which a single-target chain keeps a retry template
/// (or half the target's window, if smaller): a smaller one is not going to exceed a real
/// model's window, and needs no clone.
const CONTEXT_RETRY_MIN_TOKENS: u64 = 4_096;

impl<S> Service<Request<ChatRequest>> for Router<S>
where
    S: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error> + Clone,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = RouterFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ChatRequest>) -> Self::Future {
        let chat = req.body();
        if let Some(p) = req.extensions().get::<Principal>()
            && !p.may_use(&chat.model)
        {
            let msg = format!("API key `{}` may not use `{}`", p.name, chat.model);
            return RouterFuture::failed(Error::new(ErrorKind::Forbidden, msg));
        }
        let targets = match self.table.resolve(&chat.model, chat.source) {
            Ok(t) => t,
            Err(e) => return RouterFuture::failed(e),
        };
        // Messages only: no allocation (tool schemas would need serialising).
        let estimate = if self.context_retry || self.auto_context_skip {
            req.body()
                .messages
                .iter()
                .map(crate::model::Message::estimate_tokens)
                .sum()
        } else {
            0
        };
        let mut targets = VecDeque::from(targets);
        if self.auto_context_skip
            && targets
                .iter()
                .any(|t| t.max_context.is_none_or(|w| w >= estimate))
        {
            targets.retain(|t| {
                let fits = t.max_context.is_none_or(|w| w >= estimate);
                if !fits {
                    tracing::debug!(provider = %t.provider.name, model = %t.model, estimate, "skipped: context window too small");
                }
                fits
            });
        }
        if let Some(t) = self.latency.as_ref().filter(|_| targets.len() > 1) {
            t.order(&mut targets, self.balance.as_deref());
        }
        let Some(first) = targets.pop_front() else {
            return RouterFuture::failed(Error::new(ErrorKind::ModelNotFound, "empty chain"));
        };
        if req.extensions().get::<CountTokens>().is_some() && first.format != ApiFormat::Anthropic {
            // Only Anthropic upstreams count tokens; answer with nenya's estimate (never
            // zero: Claude Code reads zero as "compaction unavailable").
            let n = req.body().estimate_tokens().max(1);
            let mut resp = Response::new(Body::from(format!(r#"{{"input_tokens":{n}}}"#)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return RouterFuture {
                state: RouterState::Ready { resp: Some(resp) },
                retry: None,
                attempts: 0,
                policy: None,
                retryable: None,
                timing: None,
            };
        }
        if !self.policy.empty_stream_as_error {
            req.extensions_mut()
                .insert(super::provider::AllowEmptyStream);
        }
        // A template for the next attempts, only when there can be one.
        let tighten = self.context_retry
            && estimate
                >= first.max_context.map_or(CONTEXT_RETRY_MIN_TOKENS, |w| {
                    (w / 2).min(CONTEXT_RETRY_MIN_TOKENS)
                });
        if tighten || (!targets.is_empty() && estimate >= CONTEXT_RETRY_MIN_TOKENS) {
            // Message counts are shared by every attempt's budget layer (a small request is
            // never tokenised: its byte length proves it fits).
            req.extensions_mut().insert(TokenCache::default());
        }
        let retry = (!targets.is_empty() || tighten).then(|| {
            Box::new(Retry {
                svc: self.inner.clone(),
                current: tighten.then(|| first.clone()),
                tightened: !tighten,
                next: targets,
                method: req.method().clone(),
                uri: req.uri().clone(),
                headers: req.headers().clone(),
                extensions: req.extensions().clone(),
                body: RetryBody::of(req.body()),
            })
        });
        tracing::debug!(provider = %first.provider.name, model = %first.model, format = %first.format, "routed");
        let retryable = retry.as_ref().map(|_| {
            first
                .provider
                .retryable_status
                .clone()
                .unwrap_or_else(|| self.policy.retryable_status.clone())
        });
        let timing = self.latency.as_ref().map(|t| {
            Box::new(Timing {
                tracker: t.clone(),
                key: first.model_key.clone(),
                started: std::time::Instant::now(),
            })
        });
        req.extensions_mut().insert(first);
        RouterFuture {
            state: RouterState::Calling {
                fut: self.inner.call(req),
            },
            policy: retry.as_ref().map(|_| self.policy.clone()),
            retry,
            attempts: 0,
            retryable,
            timing,
        }
    }
}

/// What latency recording needs for the attempt in flight.
struct Timing {
    tracker: LatencyTracker,
    key: Arc<str>,
    started: std::time::Instant,
}

/// What a retry needs: a service of its own and the request to rebuild.
struct Retry<S> {
    svc: S,
    /// The target being tried, while a tighter retry on it is still possible.
    current: Option<Target>,
    /// Whether this request already had its tighter retry (or may not have one).
    tightened: bool,
    next: VecDeque<Target>,
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    extensions: http::Extensions,
    body: RetryBody,
}

/// The request kept for another attempt: the client's body when the request still says
/// exactly what it does (a reference-counted copy of the bytes, decoded again only if an
/// attempt is needed), else a copy of the fields. A fallback chain keeps one for every request,
/// and a coding agent's conversation is 100 KB of strings.
enum RetryBody {
    Sent(crate::model::ApiFormat, bytes::Bytes),
    Fields(Box<ChatRequest>),
}

impl RetryBody {
    fn of(req: &ChatRequest) -> Self {
        match req.client_body() {
            Some(raw) => Self::Sent(req.source, raw.clone()),
            None => Self::Fields(Box::new(req.clone())),
        }
    }

    fn get(&self) -> Result<ChatRequest, Error> {
        match self {
            Self::Sent(format, raw) => crate::adapters::decode_client_body(*format, raw.clone()),
            Self::Fields(req) => Ok(ChatRequest::clone(req)),
        }
    }
}

impl<S> Retry<S> {
    fn request(&self, target: Target) -> Result<Request<ChatRequest>, Error> {
        let mut req = Request::new(self.body.get()?);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        req.extensions_mut().insert(target);
        Ok(req)
    }
}

/// How much of a stream may be held while deciding whether it starts with an error.
const PEEK_LIMIT: usize = 64 * 1024;

/// How many targets a request took (1 without failover), on every routed answer.
pub(crate) static ATTEMPTS_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-nenya-attempts");

fn with_attempts(mut r: Response<Body>, attempts: u32) -> Response<Body> {
    // The usual counts are static values: no allocation on the way out.
    let v = match attempts {
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        3 => HeaderValue::from_static("3"),
        n => HeaderValue::from(n),
    };
    r.headers_mut().insert(ATTEMPTS_HEADER.clone(), v);
    r
}

fn is_event_stream(r: &Response<Body>) -> bool {
    r.status().is_success()
        && r.headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Whether an upstream's 400 body says the prompt did not fit its context window (OpenAI
/// `context_length_exceeded`, Anthropic "prompt is too long", and their common phrasings).
fn context_exceeded(body: &[u8]) -> bool {
    const MARKERS: &[&str] = &[
        "context_length_exceeded",
        "maximum context length",
        "prompt is too long",
        "context window",
        "too many tokens",
        "exceeds the context",
        "input is too long",
        "reduce the length of the messages",
    ];
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    MARKERS.iter().any(|m| text.contains(m))
}

/// What the start of a stream says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peek {
    /// A real event: commit the stream to the client.
    Content,
    /// An error event (OpenAI `data: {"error": …}`, Anthropic `event: error`) or a broken body.
    Error,
    /// The stream ended without any event.
    Empty,
    /// The body failed before any event.
    Broken,
}

/// What one SSE event says about a stream's start; `None` when it is not meaningful
/// (`ping`, an empty event, `[DONE]`).
fn judge(ev: &crate::sse::Event) -> Option<Peek> {
    match ev.event.as_deref() {
        Some("error") => return Some(Peek::Error),
        Some("ping") => return None,
        _ => {}
    }
    let data = ev.data.trim();
    if data.is_empty() || data == "[DONE]" {
        return None;
    }
    let is_error = serde_json::from_str::<serde_json::Value>(data).is_ok_and(|v| {
        v.get("error").is_some_and(|e| !e.is_null())
            || v.get("type").and_then(|t| t.as_str()) == Some("error")
    });
    Some(if is_error { Peek::Error } else { Peek::Content })
}

/// The held start of a stream, then the rest of it.
struct Replay {
    prefix: VecDeque<Bytes>,
    rest: Body,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(b) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(b))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }
}

/// Upstream statuses that move on to the next target.
const RETRYABLE_STATUS: &[u16] = &[429, 500, 502, 503, 504, 529];

/// Whether an attempt's outcome should fail over (when there is a next target).
fn should_fail_over(out: &Result<Response<Body>, Error>, retryable: &[u16]) -> Option<String> {
    match out {
        Ok(r) if retryable.contains(&r.status().as_u16()) => {
            Some(format!("upstream status {}", r.status().as_u16()))
        }
        Ok(_) => None,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::UpstreamUnreachable
                | ErrorKind::UpstreamTimeout
                | ErrorKind::CircuitOpen
                | ErrorKind::RateLimited
                // A provider budget or the cost ceiling refuses this target; another may do.
                | ErrorKind::BudgetExceeded
                | ErrorKind::CostLimitExceeded
                | ErrorKind::ModelLoading
        )
        .then(|| e.kind().as_str().to_owned()),
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Router`].
    pub struct RouterFuture<S, F> {
        #[pin]
        state: RouterState<F>,
        retry: Option<Box<Retry<S>>>,
        attempts: u32,
        policy: Option<Arc<FailoverPolicy>>,
        // The statuses that fail over for the target being tried.
        retryable: Option<Arc<[u16]>>,
        // Latency recording: the tracker, the attempt's target and start.
        timing: Option<Box<Timing>>,
    }
}

pin_project_lite::pin_project! {
    #[project = RouterProj]
    enum RouterState<F> {
        Calling { #[pin] fut: F },
        // A 200 stream held until its first event shows it is not an error.
        Peeking { head: Option<http::response::Parts>, body: Option<Body>, seen: Vec<Bytes>, len: usize, decoder: Box<Decoder> },
        // A 400 read (bounded) to see whether it says the context window was exceeded.
        Inspecting { head: Option<http::response::Parts>, body: Option<Body>, buf: Vec<u8> },
        Retrying,
        Ready { resp: Option<Response<Body>> },
        Failed { err: Option<Error> },
    }
}

impl<S, F> RouterFuture<S, F> {
    fn failed(e: Error) -> Self {
        Self {
            state: RouterState::Failed { err: Some(e) },
            retry: None,
            attempts: 0,
            policy: None,
            retryable: None,
            timing: None,
        }
    }
}

impl<S, F> std::future::Future for RouterFuture<S, F>
where
    S: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error, Future = F>,
    F: std::future::Future<Output = Result<Response<Body>, Error>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                RouterProj::Calling { fut } => {
                    let out = std::task::ready!(fut.poll(cx));
                    *this.attempts += 1;
                    if let Some(t) = this.timing.as_ref() {
                        // Only answers count: a failure's latency says nothing about speed.
                        if out.as_ref().is_ok_and(|r| r.status().is_success()) {
                            t.tracker.record(t.key.clone(), t.started.elapsed());
                        }
                    }
                    let more = this.retry.as_ref().is_some_and(|r| !r.next.is_empty());
                    let can_tighten = this.retry.as_ref().is_some_and(|r| !r.tightened);
                    if more {
                        let statuses = this.retryable.as_deref().unwrap_or(RETRYABLE_STATUS);
                        if let Some(why) = should_fail_over(&out, statuses) {
                            tracing::warn!(attempt = *this.attempts, reason = %why, "failing over to the next target");
                            drop(out); // closes the failed upstream response
                            this.state.set(RouterState::Retrying);
                            continue;
                        }
                    }
                    if (more || can_tighten)
                        && let Ok(resp) = out
                    {
                        if resp.status() == http::StatusCode::BAD_REQUEST {
                            let (head, body) = resp.into_parts();
                            this.state.set(RouterState::Inspecting {
                                head: Some(head),
                                body: Some(body),
                                buf: Vec::new(),
                            });
                            continue;
                        }
                        if !more || !is_event_stream(&resp) {
                            return Poll::Ready(Ok(with_attempts(resp, *this.attempts)));
                        }
                        let (head, body) = resp.into_parts();
                        this.state.set(RouterState::Peeking {
                            head: Some(head),
                            body: Some(body),
                            seen: Vec::new(),
                            len: 0,
                            decoder: Box::new(Decoder::new(PEEK_LIMIT)),
                        });
                        continue;
                    }
                    return Poll::Ready(out.map(|r| with_attempts(r, *this.attempts)));
                }
                RouterProj::Peeking {
                    head,
                    body,
                    seen,
                    len,
                    decoder,
                } => {
                    let Some(b) = body.as_mut() else {
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::Internal,
                            "peek without a body",
                        )));
                    };
                    let verdict = match std::task::ready!(Pin::new(b).poll_frame(cx)) {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                *len += data.len();
                                // The first meaningful event decides; the decoder carries
                                // partial events between frames.
                                let mut first = None;
                                let fed = decoder.feed_ref(&data, |ev| {
                                    if first.is_none() {
                                        first = judge(ev);
                                    }
                                });
                                seen.push(data);
                                match first.or(fed.is_err().then_some(Peek::Content)) {
                                    Some(v) => v,
                                    // Undecided: keep reading, within a bound.
                                    None if *len > PEEK_LIMIT => Peek::Content,
                                    None => continue,
                                }
                            }
                            Err(_trailers) => Peek::Content,
                        },
                        Some(Err(_)) => Peek::Broken,
                        None => Peek::Empty,
                    };
                    let policy = this.policy.as_deref();
                    let forward = match verdict {
                        Peek::Content => true,
                        Peek::Error => policy.is_some_and(|p| !p.early_stream_error_failover),
                        Peek::Empty => policy.is_some_and(|p| !p.empty_stream_as_error),
                        Peek::Broken => false,
                    };
                    if forward {
                        let (Some(h), Some(b)) = (head.take(), body.take()) else {
                            return Poll::Ready(Err(Error::new(ErrorKind::Internal, "peek state")));
                        };
                        let replay = Replay {
                            prefix: std::mem::take(seen).into(),
                            rest: b,
                        };
                        let resp = Response::from_parts(h, Body::new(replay));
                        return Poll::Ready(Ok(with_attempts(resp, *this.attempts)));
                    }
                    tracing::warn!(attempt = *this.attempts, reason = ?verdict, "stream failed before its first content; failing over");
                    this.state.set(RouterState::Retrying);
                }
                RouterProj::Inspecting { head, body, buf } => {
                    let Some(b) = body.as_mut() else {
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::Internal,
                            "inspect without a body",
                        )));
                    };
                    let done = match std::task::ready!(Pin::new(b).poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                buf.extend_from_slice(&data);
                            }
                            buf.len() > PEEK_LIMIT
                        }
                        Some(Err(_)) | None => true,
                    };
                    if !done {
                        continue;
                    }
                    if context_exceeded(buf)
                        && let Some(retry) = this.retry.as_mut()
                    {
                        if let (false, Some(t)) = (retry.tightened, retry.current.take()) {
                            tracing::warn!(
                                attempt = *this.attempts,
                                "the upstream's context window was exceeded; retrying with a tighter budget"
                            );
                            retry.tightened = true;
                            retry.extensions.insert(ContextRetry::from_error_body(buf));
                            retry.next.push_front(t);
                            this.state.set(RouterState::Retrying);
                            continue;
                        }
                        if !retry.next.is_empty() {
                            tracing::warn!(
                                attempt = *this.attempts,
                                "the upstream's context window was exceeded; failing over"
                            );
                            this.state.set(RouterState::Retrying);
                            continue;
                        }
                    }
                    let (Some(h), Some(rest)) = (head.take(), body.take()) else {
                        return Poll::Ready(Err(Error::new(ErrorKind::Internal, "inspect state")));
                    };
                    // Not ours to retry: the client gets the upstream's answer, unchanged.
                    let replay = Replay {
                        prefix: VecDeque::from([Bytes::from(std::mem::take(buf))]),
                        rest,
                    };
                    let resp = Response::from_parts(h, Body::new(replay));
                    return Poll::Ready(Ok(with_attempts(resp, *this.attempts)));
                }
                RouterProj::Retrying => {
                    let Some(retry) = this.retry.as_mut() else {
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::Internal,
                            "retry without a plan",
                        )));
                    };
                    if let Err(e) = std::task::ready!(retry.svc.poll_ready(cx)) {
                        return Poll::Ready(Err(e));
                    }
                    let Some(t) = retry.next.pop_front() else {
                        return Poll::Ready(Err(Error::new(ErrorKind::Internal, "no target left")));
                    };
                    tracing::debug!(provider = %t.provider.name, model = %t.model, "routed (failover)");
                    if !retry.tightened {
                        retry.current = Some(t.clone());
                    }
                    *this.retryable = Some(
                        t.provider
                            .retryable_status
                            .clone()
                            .or_else(|| this.policy.as_ref().map(|p| p.retryable_status.clone()))
                            .unwrap_or_else(|| RETRYABLE_STATUS.into()),
                    );
                    if let Some(timing) = this.timing.as_mut() {
                        timing.key = t.model_key.clone();
                        timing.started = std::time::Instant::now();
                    }
                    // The same bytes decoded once already: an error here is not expected.
                    let req = match retry.request(t) {
                        Ok(req) => req,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    // A tighter budget is for the target that refused, not the ones after it.
                    retry.extensions.remove::<ContextRetry>();
                    let fut = retry.svc.call(req);
                    this.state.set(RouterState::Calling { fut });
                }
                RouterProj::Ready { resp } => {
                    return Poll::Ready(resp.take().ok_or_else(|| {
                        Error::new(ErrorKind::Internal, "future polled after completion")
                    }));
                }
                RouterProj::Failed { err } => {
                    return Poll::Ready(Err(err.take().unwrap_or_else(|| {
                        Error::new(ErrorKind::Internal, "future polled after completion")
                    })));
                }
            }
        }
    }
}
