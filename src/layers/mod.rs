//! Gateway features as `tower` layers. Each works alone in any tower/hyper/axum server.
//! Layers never import one another; they share only the typed request, the response, and two
//! building blocks: [`scrub`] (the text-rewriting layer behind redaction and entropy) and
//! [`guard`] (the pass-or-refuse futures of auth, the origin guard and the rate limiter).
//!
//! | layer | request type | does |
//! |---|---|---|
//! | [`ErrorResponseLayer`] | any `Request<B>` | turns errors into client-format JSON; makes the stack `Infallible` |
//! | [`CatchPanicLayer`] | any `Request<B>` | a panic below becomes `internal_error` instead of a reset connection |
//! | [`RequestIdLayer`] | any `Request<B>` → `Response<R>` | keeps or makes an `x-request-id`, echoes it, one `tracing` span per request |
//! | [`MetricsLayer`] | any `Request<B>` → `Response<R>` | requests, errors by `error_kind`, failovers, latency; [`Metrics::render`] is `GET /metrics` |
//! | [`OriginGuardLayer`] | any `Request<B>` | refuses browser-context requests (DNS rebinding) unless the origin is allowlisted |
//! | [`AuthLayer`] | any `Request<B>` | client token and RBAC keys (constant time), endpoint scopes, strips client credentials, inserts [`Principal`] |
//! | [`DecodeLayer`] | `Request<B>` → `Request<ChatRequest>` | reads the body once (size-limited) and parses it once |
//! | [`RedactLayer`] | `Request<ChatRequest>` | replaces credentials (60+ formats, user patterns) in every text the upstream reads |
//! | [`EntropyLayer`] | `Request<ChatRequest>` | replaces high-entropy tokens no pattern knows |
//! | [`BudgetTrimLayer`] | `Request<ChatRequest>` | keeps the prompt within the target's context window: oldest turns first (tool pairs together), then middle-out |
//! | [`SummarizeLayer`] | `Request<ChatRequest>` → `Response<Body>` | near the window, replaces older turns with an engine model's summary (or relevant excerpts, or a note); engine failure leaves the request as it was |
//! | [`CompactLayer`] | `Request<ChatRequest>` | minifies JSON tool results, folds whitespace outside code fences and duplicate results |
//! | [`PruneLayer`] | `Request<ChatRequest>` | drops old thinking and summarises stale tool results in history (never the current tool loop) |
//! | [`PrefixCacheLayer`] | `Request<ChatRequest>` | system messages first, tools sorted, Anthropic `cache_control` breakpoints when the client set none: provider prompt caches hit |
//! | [`ResponseCacheLayer`] | `Request<ChatRequest>` → `Response<Body>` | exact-match cache of complete answers (deterministic requests), replayed frame for frame |
//! | [`SemanticCacheLayer`](cache::semantic::SemanticCacheLayer) | `Request<ChatRequest>` → `Response<Body>` | (optional) inside the exact cache: a paraphrased last user message in the same context reuses a stored answer above a cosine threshold |
//! | [`CircuitBreakerLayer`] | any `Request<B>` → `Response<R>` | per-target circuit: fail fast while an upstream keeps failing, probe, close |
//! | [`AccountsLayer`] | any `Request<B>` → `Response<R>` | several keys per provider: least recently used per model, throttled accounts cool down |
//! | [`ConcurrencyLimitLayer`] | any `Request<B>` → `Response<Body>` | in-flight cap per key (provider+model); a slot is held until the streamed body ends; excess requests queue, then `rate_limited` |
//! | [`RateLimitLayer`] | `Request<ChatRequest>` | RPM / TPM per upstream (governor); over the limit → `rate_limited` + `Retry-After` |
//! | [`QuotaLayer`] | `Request<ChatRequest>` | daily token budgets per key and provider (`fill` / `always` tiers), reserved before dispatch and settled from the usage tap; `max_cost_per_request` |
//! | [`UsageLayer`] | `Request<ChatRequest>` → `Response<Body>` | token usage per agent/provider/model from answers as they stream by (estimated when unreported) |
//! | [`ScrubLayer`] | `Request<ChatRequest>` | any [`TextScrubber`] of your own, with the same fail-open handling |
//!
//! **Writing a layer that changes the request.** Read the request through `req.body()` and take
//! `req.body_mut()` (or any `&mut` to a field) only for a change you have decided to make: a
//! [`ChatRequest`](crate::model::ChatRequest) keeps the client's own bytes until its first
//! mutable access, and a request nothing wrote to is forwarded upstream as the client sent it
//! ([`forward_as_sent`](crate::adapters::forward_as_sent)). A mutable access that changes
//! nothing is always correct, only slower: the request is then encoded again. Every built-in
//! layer that changes requests (redaction, entropy, budget, prefix cache, compaction, pruning)
//! looks before it writes. Redaction and entropy go one step further: the texts they rewrite
//! are also written into the client's bytes, in place, when that can be done exactly (the same
//! texts found where message text stands, as often as the request holds them), so a
//! conversation with a secret in its history is still forwarded as the client sent it, with
//! only the secret replaced.

pub mod accounts;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod catch_panic;
pub mod circuit_breaker;
pub mod compact;
pub mod concurrency;
pub mod decode;
pub mod entropy;
pub mod error_response;
pub mod guard;
pub mod mcp;
pub mod metrics;
pub mod origin;
pub mod prefix_cache;
pub mod prune;
pub mod quota;
pub mod rate_limit;
pub mod redact;
pub mod request_id;
pub mod scrub;
pub mod usage;

pub use accounts::{Accounts, AccountsLayer};
pub use auth::{ApiKey, Auth, AuthLayer, Principal, Role};
pub use budget::{BudgetConfig, BudgetTrim, BudgetTrimLayer, SummarizeLayer, TrimReport};
pub use cache::{CacheConfig, ResponseCache, ResponseCacheLayer, ResponseCacheService};
pub use catch_panic::{CatchPanic, CatchPanicFuture, CatchPanicLayer};
pub use circuit_breaker::{BreakerConfig, CircuitBreaker, CircuitBreakerLayer, CircuitOpen};
pub use compact::{Compact, CompactConfig, CompactLayer};
pub use concurrency::{ConcurrencyFuture, ConcurrencyLimit, ConcurrencyLimitLayer};
pub use decode::{Decode, DecodeLayer};
pub use entropy::{Entropy, EntropyDetector, EntropyLayer};
pub use error_response::{ErrorResponse, ErrorResponseLayer};
pub use mcp::{AgentTools, Mcp, McpLayer, ToolHost};
pub use metrics::{Metrics, MetricsLayer, MetricsService, MetricsSnapshot};
pub use origin::{OriginGuard, OriginGuardLayer};
pub use prefix_cache::{PrefixCache, PrefixCacheConfig, PrefixCacheLayer};
pub use prune::{Prune, PruneConfig, PruneLayer};
pub use quota::{BudgetTier, KeyQuota, Ledger, Quota, QuotaConfig, QuotaLayer, QuotaSubject};
pub use rate_limit::{RateLimit, RateLimitConfig, RateLimitLayer};
pub use redact::{PatternError, Redact, RedactLayer, Redactor};
pub use request_id::{RequestId, RequestIdLayer, RequestIdService};
pub use scrub::{
    Finding, RedactLabel, RequestRewriter, Rewrite, RewriteLayer, Scrub, ScrubLayer, TextScrubber,
};
pub use usage::{UsageLabels, UsageLayer, UsageMeter, UsageTap, UsageTotals};
