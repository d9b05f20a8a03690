//! Configuration: a Nenya-compatible JSON schema, loaded from a file or a directory, plus
//! secrets from `NENYA_SECRETS_DIR`.
//!
//! ```
//! let cfg: nenya::config::Config = nenya::config::Config::from_json_str(r#"{
//!   "agents": {"build": {"strategy": "fallback", "models": ["gpt-4o", {"provider": "ollama", "model": "qwen"}]}}
//! }"#).unwrap();
//! assert_eq!(cfg.agents["build"].models.len(), 2);
//! assert_eq!(cfg.server.max_body_bytes, 10 * 1024 * 1024);
//! ```

mod secret;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

pub use secret::{ApiKeyConfig, Secret, Secrets};

use crate::model::ApiFormat;

/// Default request body limit (10 MiB), as Nenya.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// Default of `bouncer.remember_clean_texts`: texts found clean that redaction and entropy
/// detection each remember (two generations of up to 16,384 128-bit keys: ~1.1 MiB a layer when full).
///
/// ```
/// assert_eq!(nenya::config::DEFAULT_REMEMBER_CLEAN_TEXTS, 32_768);
/// ```
pub const DEFAULT_REMEMBER_CLEAN_TEXTS: usize = 32_768;

/// Top-level sections nenya reads; anything else is accepted with a warning.
const KNOWN_SECTIONS: &[&str] = &[
    "server",
    "agents",
    "providers",
    "bouncer",
    "governance",
    "context",
    "response_cache",
    "compaction",
    "window",
];

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    /// `server` section.
    #[serde(default)]
    pub server: ServerConfig,
    /// Named agents (model chains).
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
    /// Provider definitions and overrides of the built-in table.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Secret redaction (`bouncer`).
    #[serde(default)]
    pub bouncer: BouncerConfig,
    /// Context budget (`context`; trimming only so far).
    #[serde(default)]
    pub context: ContextConfig,
    /// Exact-match response cache (`response_cache`).
    #[serde(default)]
    pub response_cache: ResponseCacheConfig,
    /// History pruning (`compaction`; pruning only so far).
    #[serde(default)]
    pub compaction: CompactionConfig,
    /// Request governance (`governance`).
    #[serde(default)]
    pub governance: GovernanceConfig,
    /// Sliding context window with summarisation (`window`).
    #[serde(default)]
    pub window: WindowSection,
    /// Price overrides in USD per million tokens, keyed by `provider/model` or a model id
    /// (`{"input_cost_per_1m", "output_cost_per_1m", "cached_input_cost_per_1m"}`); the
    /// registry's list prices cover the rest. A nenya addition.
    #[serde(default)]
    pub pricing: BTreeMap<String, crate::adapters::providers::Price>,
    /// Stable prompt prefixes for provider prompt caches (`prefix_cache`). Off unless the
    /// section is present (Nenya turns it on by default; nenya leaves what reaches the
    /// upstream untouched unless asked).
    #[serde(default)]
    pub prefix_cache: Option<PrefixCacheSection>,
    /// Where state shared by replicas lives (`state`; default in process). A nenya addition.
    #[serde(default)]
    pub state: StateSection,
    /// MCP tool servers agents may use (`mcp_servers`), by name.
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, McpServerSection>,
    /// Sections nenya does not implement yet (kept so nothing fails to load).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `state` section: where rate-limit buckets, breaker states, the response cache and usage
/// counters shared by replicas live (see [`crate::state`]).
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(
///     r#"{"state": {"backend": "redis", "url": "redis://127.0.0.1:6379"}}"#).unwrap();
/// assert_eq!(cfg.state.backend, "redis");
/// assert_eq!(cfg.state.timeout_ms, 250);
/// assert_eq!(nenya::config::Config::from_json_str("{}").unwrap().state.backend, "memory");
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct StateSection {
    /// `memory` (default: nothing shared) or `redis` (Redis, Valkey or a Redis Cluster).
    #[serde(default = "default_state_backend")]
    pub backend: String,
    /// `redis://[user:password@]host:port[/db]` (for a cluster: one node).
    #[serde(default)]
    pub url: Option<String>,
    /// More Redis Cluster nodes; non-empty selects cluster mode.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key (replicas sharing state use the same one).
    #[serde(default = "default_state_prefix")]
    pub key_prefix: String,
    /// Deadline of each back-end call in milliseconds; past it, local state answers.
    #[serde(default = "default_state_timeout")]
    pub timeout_ms: u64,
}

impl std::fmt::Debug for StateSection {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSection")
            .field("backend", &self.backend)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl Default for StateSection {
    fn default() -> Self {
        Self {
            backend: default_state_backend(),
            url: None,
            cluster_nodes: Vec::new(),
            key_prefix: default_state_prefix(),
            timeout_ms: default_state_timeout(),
        }
    }
}

fn default_state_backend() -> String {
    "memory".into()
}
fn default_state_prefix() -> String {
    "nenya".into()
}
fn default_state_timeout() -> u64 {
    250
}

/// `mcp_servers.<name>`: an MCP server over HTTP (`url`) or a child process speaking on its
/// standard input and output (`command`).
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(r#"{"mcp_servers": {
///   "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"], "timeout": 10},
///   "palace": {"url": "http://localhost:6060", "headers": {"Authorization": "Bearer t"}}}}"#).unwrap();
/// assert_eq!(cfg.mcp_servers["memory"].timeout, 10);
/// assert_eq!(cfg.mcp_servers["palace"].timeout, 30);
/// assert!(!format!("{:?}", cfg.mcp_servers["palace"]).contains("Bearer"));
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct McpServerSection {
    /// The server's MCP endpoint: streamable HTTP, or the base URL of a legacy HTTP+SSE
    /// server (`/sse`, then the endpoint it names).
    #[serde(default)]
    pub url: Option<String>,
    /// Per-call timeout in seconds (default 30).
    #[serde(default = "default_mcp_timeout")]
    pub timeout: u64,
    /// Headers sent to an HTTP server (credentials: never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Keep-alive ping interval in seconds (accepted; the stdio transport needs none).
    #[serde(default)]
    pub keep_alive_interval: Option<u64>,
    /// A program to start, speaking MCP on stdin/stdout.
    #[serde(default)]
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its extra environment (values never logged).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for McpServerSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServerSection")
            .field("url", &self.url)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn default_mcp_timeout() -> u64 {
    30
}

/// `agents.<name>.mcp`: the MCP servers whose tools the agent's model may call, and the loop
/// nenya runs for it.
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(r#"{"agents": {"build": {"models": ["gpt-4o"],
///   "mcp": {"servers": ["memory"], "auto_search": true}}}}"#).unwrap();
/// let m = cfg.agents["build"].mcp.as_ref().unwrap();
/// assert_eq!(m.max_iterations, 10);
/// assert!(m.auto_search && !m.auto_save);
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct AgentMcpSection {
    /// Names of `mcp_servers`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Most tool rounds per request (default 10).
    #[serde(default = "default_mcp_iterations")]
    pub max_iterations: u32,
    /// Search a server with the last user message first and add what it finds as context.
    #[serde(default)]
    pub auto_search: bool,
    /// Store each completed answer with a server's memory tool.
    #[serde(default)]
    pub auto_save: bool,
    /// The search tool (default: the first whose name contains `search`).
    #[serde(default)]
    pub search_tool: Option<String>,
    /// The save tool (default: the first whose name contains `add`, then `save`).
    #[serde(default)]
    pub save_tool: Option<String>,
    /// Time for the whole tool loop in seconds (default 300; a nenya addition): past it the
    /// last answer is returned.
    #[serde(default = "default_mcp_budget")]
    pub time_budget_seconds: u64,
}

fn default_mcp_iterations() -> u32 {
    10
}
fn default_mcp_budget() -> u64 {
    300
}

/// `server` section.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    /// Bind address, e.g. `":8080"` or `"127.0.0.1:8080"`.
    #[serde(default)]
    pub listen_addr: Option<String>,
    /// Maximum request body size in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Log level (`debug`, `info`, `warn`, `error`).
    #[serde(default)]
    pub log_level: Option<String>,
    /// `User-Agent` sent upstream.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// Largest streamed upload (`/v1/files`, audio, `/proxy`), default 512 MiB (a nenya
    /// addition; uploads are never held in memory).
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: u64,
    /// How long a client may take to send its request body (default 60; a nenya addition).
    #[serde(default = "default_body_read")]
    pub body_read_timeout_seconds: u64,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn default_max_upload() -> u64 {
    512 << 20
}

fn default_body_read() -> u64 {
    60
}

fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_addr: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            log_level: None,
            user_agent: None,
            body_read_timeout_seconds: default_body_read(),
            max_upload_bytes: default_max_upload(),
            other: BTreeMap::new(),
        }
    }
}

/// `bouncer` section: secret redaction before a request leaves.
///
/// Differences from Nenya, on purpose: `redact_patterns` *adds* to the built-in patterns
/// (a custom list never switches the built-ins off), the default label names the kind
/// (`[REDACTED:aws_access_key_id]`; set `redaction_label` for a fixed one), and entropy
/// detection is on by default.
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(
///     r#"{"bouncer":{"redact_patterns":["ACME-[0-9]+"],"entropy_threshold":4.2}}"#).unwrap();
/// assert!(cfg.bouncer.enabled && cfg.bouncer.entropy_enabled);
/// assert_eq!(cfg.bouncer.redact_patterns, ["ACME-[0-9]+"]);
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct BouncerConfig {
    /// Redaction on or off (default on).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Extra regex patterns (kind `custom`).
    #[serde(default)]
    pub redact_patterns: Vec<String>,
    /// Fixed replacement label; default `[REDACTED:<kind>]`.
    #[serde(default)]
    pub redaction_label: Option<String>,
    /// High-entropy token detection (default on).
    #[serde(default = "yes")]
    pub entropy_enabled: bool,
    /// Bits per character (default 4.5).
    #[serde(default = "default_entropy_threshold")]
    pub entropy_threshold: f64,
    /// Minimum token length (default 20).
    #[serde(default = "default_entropy_min_token")]
    pub entropy_min_token: usize,
    /// How many texts (of 256 bytes or more) redaction and entropy detection each remember as
    /// found clean, by a seeded 128-bit hash, so that a conversation re-sent with every turn
    /// is scanned only for its new texts (default 32,768; `0` scans every text every time).
    /// Each API key's texts are remembered apart from the others'.
    #[serde(default = "default_remember_clean_texts")]
    pub remember_clean_texts: usize,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn yes() -> bool {
    true
}

fn default_entropy_threshold() -> f64 {
    crate::layers::entropy::DEFAULT_THRESHOLD
}

fn default_remember_clean_texts() -> usize {
    DEFAULT_REMEMBER_CLEAN_TEXTS
}

fn default_entropy_min_token() -> usize {
    crate::layers::entropy::DEFAULT_MIN_TOKEN
}

impl Default for BouncerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            redact_patterns: Vec::new(),
            redaction_label: None,
            entropy_enabled: true,
            entropy_threshold: default_entropy_threshold(),
            entropy_min_token: default_entropy_min_token(),
            remember_clean_texts: default_remember_clean_texts(),
            other: BTreeMap::new(),
        }
    }
}

/// `context` section. Implemented: `hard_limit_tokens`, `truncation_keep_first_pct`,
/// `truncation_keep_last_pct`, `truncation_strategy` (`middle-out`), `tfidf_query_source`
/// (`prior_messages`, `self`: relevance truncation), `auto_context_skip` (every request is
/// also kept within its target's `max_context`).
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(r#"{"context":{"hard_limit_tokens":64000}}"#).unwrap();
/// assert_eq!(cfg.context.hard_limit_tokens, Some(64000));
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct ContextConfig {
    /// Absolute prompt budget in tokens (0 or absent: the model's window decides).
    #[serde(default)]
    pub hard_limit_tokens: Option<u64>,
    /// Share of an oversized text kept from its start.
    #[serde(default = "default_keep_first")]
    pub truncation_keep_first_pct: f64,
    /// Share kept from its end.
    #[serde(default = "default_keep_last")]
    pub truncation_keep_last_pct: f64,
    /// `middle-out` (the only positional strategy; relevance scoring is chosen by
    /// `tfidf_query_source`).
    #[serde(default)]
    pub truncation_strategy: Option<String>,
    /// What TF-IDF truncation scores blocks against: `prior_messages`, `self`, or empty (off).
    #[serde(default)]
    pub tfidf_query_source: String,
    /// Skip a target whose `max_context` is smaller than the request's prompt.
    #[serde(default)]
    pub auto_context_skip: bool,
    /// Order each chain by recent median latency, fastest first (±5% jitter).
    #[serde(default)]
    pub auto_reorder_by_latency: bool,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn default_keep_first() -> f64 {
    15.0
}

fn default_keep_last() -> f64 {
    25.0
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            hard_limit_tokens: None,
            truncation_keep_first_pct: default_keep_first(),
            truncation_keep_last_pct: default_keep_last(),
            truncation_strategy: None,
            tfidf_query_source: String::new(),
            auto_context_skip: false,
            auto_reorder_by_latency: false,
            other: BTreeMap::new(),
        }
    }
}

/// `window` section: older turns summarised (or excerpted, or dropped with a note) when a
/// conversation nears its window. Off unless `enabled`.
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(r#"{"window":{"enabled":true,
///   "engine":{"provider":"ollama","model":"qwen2.5-coder:7b","timeout_seconds":20}}}"#).unwrap();
/// assert!(cfg.window.enabled);
/// assert_eq!(cfg.window.engine.unwrap().model_name(), "ollama/qwen2.5-coder:7b");
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct WindowSection {
    /// Master switch (default off).
    #[serde(default)]
    pub enabled: bool,
    /// `summarize` (engine), `truncate`, or `tfidf` (relevant excerpts, no engine).
    #[serde(default)]
    pub mode: Option<String>,
    /// Recent messages kept unchanged (default 6).
    #[serde(default = "default_active")]
    pub active_messages: usize,
    /// Acts above this share of the window (default 0.8).
    #[serde(default = "default_trigger")]
    pub trigger_ratio: f64,
    /// Longest summary in characters (default 4000).
    #[serde(default = "default_summary_runes")]
    pub summary_max_runes: usize,
    /// The window when the agent's models name none (default 128000).
    #[serde(default = "default_window_context")]
    pub max_context: u64,
    /// The summarising model: an agent name, or `{provider, model, system_prompt,
    /// timeout_seconds}`.
    #[serde(default)]
    pub engine: Option<EngineRef>,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A provider's `local_engine` settings.
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(r#"{"providers": {"ollama": {"url": "http://127.0.0.1:11434/v1/chat/completions",
///   "local_engine": {"preload": ["qwen2.5-coder:7b"], "max_loaded": 2}}}}"#).unwrap();
/// assert_eq!(cfg.providers["ollama"].local_engine.as_ref().unwrap().max_loaded, 2);
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct LocalEngineSection {
    /// Models loaded at start, in order.
    #[serde(default)]
    pub preload: Vec<String>,
    /// Most models resident at once (0 or absent: no limit).
    #[serde(default)]
    pub max_loaded: usize,
    /// Ollama `keep_alive` for loads (default `30m`).
    #[serde(default)]
    pub keep_alive: Option<String>,
}

/// `prefix_cache` section (every switch on by default once the section is present).
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(r#"{"prefix_cache": {"cache_messages": false, "cache_control_ttl": "1h"}}"#).unwrap();
/// let p = cfg.prefix_cache.unwrap();
/// assert!(p.enabled && p.stable_tools && !p.cache_messages);
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct PrefixCacheSection {
    /// Master switch.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// System messages first.
    #[serde(default = "yes")]
    pub pin_system_first: bool,
    /// Tools sorted by name.
    #[serde(default = "yes")]
    pub stable_tools: bool,
    /// Anthropic breakpoint on the system prompt.
    #[serde(default = "yes")]
    pub cache_system: bool,
    /// Anthropic breakpoint on the tool list.
    #[serde(default = "yes")]
    pub cache_tools: bool,
    /// Anthropic breakpoint on the last message.
    #[serde(default = "yes")]
    pub cache_messages: bool,
    /// `ephemeral` (five minutes, the default) or `1h`.
    #[serde(default)]
    pub cache_control_ttl: Option<String>,
    /// `explicit` (block breakpoints, the only mode implemented).
    #[serde(default)]
    pub cache_mode: Option<String>,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn default_queue_seconds() -> u64 {
    30
}

fn default_active() -> usize {
    6
}
fn default_trigger() -> f64 {
    0.8
}
fn default_summary_runes() -> usize {
    4000
}
fn default_window_context() -> u64 {
    128_000
}

impl Default for WindowSection {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: None,
            active_messages: default_active(),
            trigger_ratio: default_trigger(),
            summary_max_runes: default_summary_runes(),
            max_context: default_window_context(),
            engine: None,
            other: BTreeMap::new(),
        }
    }
}

/// An engine: an agent's name, or an inline provider and model.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EngineRef {
    /// An agent of the `agents` section (its chain is the engine's fallback chain).
    Agent(String),
    /// One provider and model.
    Inline {
        /// Provider name.
        provider: String,
        /// Model id.
        model: String,
        /// Instructions (default: the built-in summariser prompt).
        #[serde(default)]
        system_prompt: Option<String>,
        /// Per-call timeout (default 60).
        #[serde(default)]
        timeout_seconds: Option<u64>,
    },
}

impl EngineRef {
    /// The name the router resolves: the agent, or `provider/model`.
    pub fn model_name(&self) -> String {
        match self {
            Self::Agent(a) => a.clone(),
            Self::Inline {
                provider, model, ..
            } => format!("{provider}/{model}"),
        }
    }
}

/// `compaction` section. Implemented: `prune_thoughts`, `prune_stale_tools`,
/// `keep_recent_tool_results`, `json_minify`, `collapse_whitespace`, `fold_duplicates` (all
/// off unless set: each changes what the model sees).
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(r#"{"compaction":{"prune_thoughts":true}}"#).unwrap();
/// assert!(cfg.compaction.prune_thoughts && !cfg.compaction.prune_stale_tools);
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct CompactionConfig {
    /// Drop thinking from history.
    #[serde(default)]
    pub prune_thoughts: bool,
    /// Summarise old tool results.
    #[serde(default)]
    pub prune_stale_tools: bool,
    /// Tool results kept whole, newest first (default 3).
    #[serde(default = "default_keep_recent")]
    pub keep_recent_tool_results: usize,
    /// Minify JSON tool results.
    #[serde(default)]
    pub json_minify: bool,
    /// Trim trailing spaces and fold blank lines outside code fences.
    #[serde(default)]
    pub collapse_whitespace: bool,
    /// Replace repeated identical tool results with a pointer.
    #[serde(default)]
    pub fold_duplicates: bool,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn default_keep_recent() -> usize {
    3
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            prune_thoughts: false,
            prune_stale_tools: false,
            keep_recent_tool_results: default_keep_recent(),
            json_minify: false,
            collapse_whitespace: false,
            fold_duplicates: false,
            other: BTreeMap::new(),
        }
    }
}

/// `response_cache` section (off unless `enabled`).
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(
///     r#"{"response_cache":{"enabled":true,"ttl_seconds":60}}"#).unwrap();
/// assert!(cfg.response_cache.enabled);
/// assert_eq!(cfg.response_cache.max_bytes, 64 << 20);
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct ResponseCacheConfig {
    /// Cache on or off (default off).
    #[serde(default)]
    pub enabled: bool,
    /// Total bytes of stored answers (default 64 MiB).
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: usize,
    /// Largest answer stored (default 4 MiB).
    #[serde(default = "default_cache_entry_bytes")]
    pub max_entry_bytes: usize,
    /// Lifetime of an answer in seconds (default 300).
    #[serde(default = "default_cache_ttl")]
    pub ttl_seconds: u64,
    /// Also cache requests without `temperature: 0` (default false).
    #[serde(default)]
    pub cache_nondeterministic: bool,
    /// The semantic tier (a nenya addition, off unless present): `{"provider", "model",
    /// "threshold", "max_entries", "timeout_seconds"}`; embeddings come from the provider's
    /// OpenAI-compatible `/embeddings` endpoint.
    #[serde(default)]
    pub semantic: Option<SemanticCacheSection>,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `response_cache.semantic`.
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(r#"{"response_cache": {"enabled": true,
///   "semantic": {"provider": "openai", "model": "text-embedding-3-small", "threshold": 0.95}}}"#).unwrap();
/// assert_eq!(cfg.response_cache.semantic.unwrap().threshold, Some(0.95));
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct SemanticCacheSection {
    /// The provider whose `/embeddings` endpoint embeds prompts.
    pub provider: String,
    /// The embedding model.
    pub model: String,
    /// Cosine similarity for a hit (default 0.9).
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Embeddings kept (default 1024).
    #[serde(default)]
    pub max_entries: Option<usize>,
    /// Longest an embedding may take (default 2 s).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

fn default_cache_bytes() -> usize {
    64 << 20
}

fn default_cache_entry_bytes() -> usize {
    4 << 20
}

fn default_cache_ttl() -> u64 {
    300
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_bytes: default_cache_bytes(),
            max_entry_bytes: default_cache_entry_bytes(),
            ttl_seconds: default_cache_ttl(),
            cache_nondeterministic: false,
            semantic: None,
            other: BTreeMap::new(),
        }
    }
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        Self {
            allowed_browser_origins: Vec::new(),
            ratelimit_max_rpm: 0,
            ratelimit_max_tpm: 0,
            auto_retry_on_context_limit: true,
            retryable_status_codes: None,
            upstream_timeout_seconds: None,
            stream_idle_timeout_seconds: None,
            early_stream_error_failover: true,
            empty_stream_as_error: true,
            max_concurrent_requests: 0,
            concurrency_queue_seconds: default_queue_seconds(),
            max_cost_per_request: None,
            routing_strategy: None,
            routing_latency_weight: None,
            routing_cost_weight: None,
            other: BTreeMap::new(),
        }
    }
}

/// `governance` section. Implemented: `allowed_browser_origins`, `ratelimit_max_rpm`,
/// `ratelimit_max_tpm` (per upstream provider).
///
/// Unlike Nenya (15 rpm / 250,000 tpm unless set), limits are off unless configured: a copied
/// config that never mentions them should not start refusing a coding session at 15 requests.
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(
///     r#"{"governance":{"allowed_browser_origins":["https://app.example.com"]}}"#).unwrap();
/// assert_eq!(cfg.governance.allowed_browser_origins.len(), 1);
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct GovernanceConfig {
    /// Origins whose browser requests are let through (default: none).
    #[serde(default)]
    pub allowed_browser_origins: Vec<String>,
    /// Requests per minute per upstream provider (0 or absent: no limit).
    #[serde(default)]
    pub ratelimit_max_rpm: u32,
    /// Estimated input tokens per minute per upstream provider (0 or absent: no limit).
    #[serde(default)]
    pub ratelimit_max_tpm: u32,
    /// Retry once with a tighter budget when an upstream says the prompt exceeded its context
    /// window (before failing over). Nenya's default is off; nenya's is on, as trimming already
    /// aims at the window and a refusal means the count was off.
    #[serde(default = "yes")]
    pub auto_retry_on_context_limit: bool,
    /// Statuses that fail over to the next target (replaces the default 429, 500, 502, 503,
    /// 504, 529 entirely, as in Nenya).
    #[serde(default)]
    pub retryable_status_codes: Option<Vec<u16>>,
    /// A `200` stream whose first event is an error fails over (default true).
    #[serde(default = "yes")]
    pub early_stream_error_failover: bool,
    /// A `200` stream without any event fails over (default true).
    #[serde(default = "yes")]
    pub empty_stream_as_error: bool,
    /// Longest whole upstream exchange, headers to the end of the stream (0 or absent:
    /// unbounded; Nenya defaults to 300 s, which cuts long reasoning streams).
    #[serde(default)]
    pub upstream_timeout_seconds: Option<u64>,
    /// Longest silence in an upstream stream (default 300; providers may override).
    #[serde(default)]
    pub stream_idle_timeout_seconds: Option<u64>,
    /// In-flight requests per provider and model (0: no cap); excess requests queue.
    #[serde(default)]
    pub max_concurrent_requests: usize,
    /// How long a request queues for a concurrency slot before it counts as rate limited (and
    /// the router moves on); default 30. A nenya addition.
    #[serde(default = "default_queue_seconds")]
    pub concurrency_queue_seconds: u64,
    /// Refuse a target when the request's estimated cost there exceeds this many USD (0 or
    /// absent: no ceiling); the router tries the next target.
    #[serde(default)]
    pub max_cost_per_request: Option<f64>,
    /// `latency` (the default: with `context.auto_reorder_by_latency`, fastest first) or
    /// `balanced` (chains ordered by weighted latency and price; implies the reordering).
    #[serde(default)]
    pub routing_strategy: Option<String>,
    /// Weight of latency in balanced routing (default 1.0).
    #[serde(default)]
    pub routing_latency_weight: Option<f64>,
    /// Weight of price in balanced routing (default 0.0).
    #[serde(default)]
    pub routing_cost_weight: Option<f64>,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One agent: a named chain of models.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentConfig {
    /// `fallback`, `round-robin` or `sticky`.
    #[serde(default)]
    pub strategy: Option<String>,
    /// The chain.
    pub models: Vec<ModelEntry>,
    /// Consecutive failures that open a circuit of this agent (default 5).
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    /// First cool-down of an opened circuit, in seconds (doubles on each re-opening).
    #[serde(default)]
    pub cooldown_seconds: Option<u64>,
    /// MCP tools for this agent (`mcp`).
    #[serde(default)]
    pub mcp: Option<AgentMcpSection>,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A model in an agent's chain: a registry name, or an explicit object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModelEntry {
    /// A model of the built-in registry, e.g. `"gpt-4o"`.
    Name(String),
    /// An explicit target.
    Object(ModelObject),
}

/// An explicit model target.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelObject {
    /// Provider name.
    #[serde(default)]
    pub provider: Option<String>,
    /// Model id sent upstream.
    #[serde(default)]
    pub model: Option<String>,
    /// Wire format override.
    #[serde(default, deserialize_with = "de_format")]
    pub format: Option<ApiFormat>,
    /// URL override for this model.
    #[serde(default)]
    pub url: Option<String>,
    /// Context window.
    #[serde(default)]
    pub max_context: Option<u64>,
    /// Max output tokens.
    #[serde(default)]
    pub max_output: Option<u64>,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A provider definition (or override of a built-in one).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProviderConfig {
    /// Full chat endpoint URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Auth style (`bearer`, `anthropic`, `azure`, `bearer+x-goog`, `none`).
    #[serde(default)]
    pub auth_style: Option<String>,
    /// Wire format of `url` (default: inferred, else `openai`).
    #[serde(default, deserialize_with = "de_format")]
    pub format: Option<ApiFormat>,
    /// Extra endpoints per wire format, e.g. `{"anthropic": "https://…/v1/messages"}`.
    #[serde(default)]
    pub format_urls: BTreeMap<String, String>,
    /// Legacy inline key (prefer `provider_keys` in secrets).
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Overall timeout for non-streaming requests, and the first-byte default.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Time to the upstream's response headers.
    #[serde(default)]
    pub response_header_timeout_seconds: Option<u64>,
    /// Longest silence allowed inside a streamed body.
    #[serde(default)]
    pub stream_idle_timeout_seconds: Option<u64>,
    /// TCP connect timeout.
    #[serde(default)]
    pub connect_timeout_seconds: Option<u64>,
    /// In-flight requests per model of this provider (overrides
    /// `governance.max_concurrent_requests`; 0: no cap).
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
    /// Requests per minute to this provider (overrides `governance.ratelimit_max_rpm`).
    #[serde(default)]
    pub ratelimit_max_rpm: Option<u32>,
    /// Estimated input tokens per minute (overrides `governance.ratelimit_max_tpm`).
    #[serde(default)]
    pub ratelimit_max_tpm: Option<u32>,
    /// Statuses that fail over for this provider (replaces the governance list).
    #[serde(default)]
    pub retryable_status_codes: Option<Vec<u16>>,
    /// Longest whole exchange with this provider, headers to the end of the stream
    /// (overrides `governance.upstream_timeout_seconds`; 0: unbounded).
    #[serde(default)]
    pub upstream_timeout_seconds: Option<u64>,
    /// Several accounts: the least recently used per model is sent; a throttled one cools
    /// down. Takes precedence over `provider_keys` / `api_key`.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// Tokens per UTC day this provider may spend on `fill`-tier keys (keys of the `always`
    /// tier are served past it, and their use counts towards it).
    #[serde(default)]
    pub token_budget_daily: Option<u64>,
    /// This provider is an Ollama server whose models nenya manages (a nenya addition):
    /// `{"preload": [models], "max_loaded": n, "keep_alive": "30m"}`.
    #[serde(default)]
    pub local_engine: Option<LocalEngineSection>,
    /// Capability overrides (`stream_options`, `auto_tool_choice`, `content_arrays`,
    /// `tool_calls`, `reasoning`, `vision`); unset ones keep the built-in or conservative value.
    #[serde(default)]
    pub capabilities: BTreeMap<String, bool>,
    /// Fields not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One account of a provider (`{"id", "type": "apikey", "credential"}`).
///
/// ```
/// let cfg = nenya::config::Config::from_json_str(r#"{"providers":{"openai":{"accounts":[
///   {"id":"a1","type":"apikey","credential":"sk-one"},{"id":"a2","credential":"sk-two"}]}}}"#).unwrap();
/// assert_eq!(cfg.providers["openai"].accounts.len(), 2);
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct AccountConfig {
    /// Its name in logs.
    pub id: String,
    /// `apikey` (the only kind nenya sends; OAuth tokens are sent the same way).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The key.
    pub credential: Secret,
}

fn de_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ApiFormat>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// A configuration error that names the file, the field and what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    /// The file at fault, when known.
    pub file: Option<PathBuf>,
    /// Dotted path of the field at fault (`agents.build.models[1].provider`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(
        file: Option<&Path>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("config error")?;
        if let Some(file) = &self.file {
            write!(f, " in {}", file.display())?;
        }
        if let Some(field) = &self.field {
            write!(f, " at `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses one JSON document.
    pub fn from_json_str(s: &str) -> Result<Self, ConfigError> {
        parse_value(
            None,
            serde_json::from_str(s).map_err(|e| json_err(None, e))?,
        )
    }

    /// Loads a config file, or a directory (`config.d/*.json` deep-merged in name order, else
    /// `config.json`, else its own `*.json`).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if path.is_dir() {
            let files = dir_files(path)?;
            if files.is_empty() {
                return Err(ConfigError::new(
                    Some(path),
                    None,
                    "no *.json config files in this directory",
                ));
            }
            let mut merged = Value::Object(Default::default());
            for file in &files {
                let v = read_json(file)?;
                // Validate each file alone first, so an error names the file it is in.
                parse_value(Some(file), v.clone())?;
                deep_merge(&mut merged, v);
            }
            parse_value(Some(path), merged)
        } else {
            parse_value(Some(path), read_json(path)?)
        }
    }

    /// One warning per section or field that is accepted but not implemented yet.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for k in self.other.keys() {
            if KNOWN_SECTIONS.contains(&k.as_str()) {
                continue;
            }
            w.push(format!(
                "config section `{k}` is accepted but not implemented yet; it has no effect"
            ));
        }
        let sections = [
            ("server", &self.server.other),
            ("bouncer", &self.bouncer.other),
            ("governance", &self.governance.other),
            ("context", &self.context.other),
            ("response_cache", &self.response_cache.other),
            ("compaction", &self.compaction.other),
            ("window", &self.window.other),
        ];
        if let Some(p) = &self.prefix_cache {
            for k in p.other.keys() {
                w.push(format!(
                    "config field `prefix_cache.{k}` is accepted but not implemented yet"
                ));
            }
            if p.cache_mode.as_deref().is_some_and(|m| m != "explicit") {
                w.push(
                    "`prefix_cache.cache_mode` other than `explicit` is not implemented; block breakpoints are used"
                        .to_owned(),
                );
            }
        }
        for (section, other) in sections {
            for k in other.keys() {
                w.push(format!(
                    "config field `{section}.{k}` is accepted but not implemented yet"
                ));
            }
        }
        w
    }
}

fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let list = |d: &Path| -> Result<Vec<PathBuf>, ConfigError> {
        let rd = std::fs::read_dir(d)
            .map_err(|e| ConfigError::new(Some(d), None, format!("cannot read directory: {e}")))?;
        let mut v: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && p.file_name().is_some_and(|n| n != "secrets.json")
                    && p.is_file()
            })
            .collect();
        v.sort();
        Ok(v)
    };
    let d = dir.join("config.d");
    if d.is_dir() {
        let files = list(&d)?;
        if !files.is_empty() {
            return Ok(files);
        }
    }
    let single = dir.join("config.json");
    if single.is_file() {
        return Ok(vec![single]);
    }
    list(dir)
}

fn read_json(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(Some(path), None, format!("cannot read file: {e}")))?;
    serde_json::from_str(&text).map_err(|e| json_err(Some(path), e))
}

fn json_err(file: Option<&Path>, e: serde_json::Error) -> ConfigError {
    ConfigError::new(
        file,
        None,
        format!(
            "invalid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        ),
    )
}

fn parse_value(file: Option<&Path>, v: Value) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize::<_, Config>(v).map_err(|e| {
        let field = e.path().to_string();
        ConfigError::new(
            file,
            (field != ".").then_some(field),
            e.into_inner().to_string(),
        )
    })
}

/// Objects merge key by key (recursively); any other value is replaced by the later one.
pub fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}
