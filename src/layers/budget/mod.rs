//! Keeps a request inside its target model's context window.
//!
//! [`BudgetTrimLayer`] wraps a service of `Request<ChatRequest>`; a function tells it the
//! context window of the request's target (the gateway sits it after the router, so each target
//! of a chain gets a request that fits *it*). The budget is the window minus the requested
//! output (`max_tokens`, else a default reserve), capped by `hard_limit_tokens`. A request that
//! fits is not touched: its byte length bounds its tokens, so proving most requests fit costs
//! one pass over the text lengths and no tokenizer. Otherwise:
//!
//! 1. the oldest turns go first, a *unit* at a time: an assistant turn with tool calls and the
//!    tool results that answer it go together, so no call loses its result or the reverse;
//! 2. the system prompt and the last turn are never dropped, and the conversation still starts
//!    with a user turn (Anthropic requires it);
//! 3. if that is not enough, the largest remaining text is cut: to its blocks most relevant to
//!    the user's words when [`BudgetConfig::relevance`] is set (TF-IDF over paragraphs and code
//!    fences, the first `keep_first_pct` and last `keep_last_pct` of blocks pinned), else
//!    middle-out, keeping its first `keep_first_pct` and last `keep_last_pct`; either way with a
//!    visible marker of what was cut.
//!
//! Counting uses the target model's tokenizer ([`crate::tokens`]): exact for OpenAI models,
//! a scaled o200k count for others, each message counted once per request (the
//! [`TokenCache`] a failover chain shares). A [`ContextRetry`] extension (an upstream said an
//! earlier attempt did not fit) tightens the budget. What was done is reported in the
//! `x-nenya-context` response header and in [`ContextStats`].
//!
//! ```
//! use nenya::layers::{BudgetConfig, BudgetTrimLayer};
//! use nenya::model::{ApiFormat, ChatRequest};
//! use nenya::{Body, Error};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(BudgetTrimLayer::new(BudgetConfig::default(), |_: &http::Request<ChatRequest>| Some(2_000)))
//!     .service(service_fn(|req: http::Request<ChatRequest>| async move {
//!         assert!(req.body().estimate_tokens() <= 1_000);
//!         Ok::<_, Error>(http::Response::new(Body::empty()))
//!     }));
//! let big = "x".repeat(4_000);
//! let body = serde_json::json!({"model": "m", "max_tokens": 1000, "messages": [
//!     {"role": "user", "content": big}, {"role": "assistant", "content": big},
//!     {"role": "user", "content": "and now?"}]});
//! let req = nenya::adapters::decode_request(ApiFormat::OpenAi, body.to_string().as_bytes()).unwrap();
//! let resp = svc.oneshot(http::Request::new(req)).await.unwrap();
//! assert!(resp.headers()["x-nenya-context"].to_str().unwrap().starts_with("trimmed"));
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::Service;
use tower_layer::Layer;

use crate::layers::guard::WithHeader;
use crate::model::{ChatRequest, Content, Part, Role};
use crate::tokens::{TokenCache, TokenCounter};

mod relevance;
mod summarize;

pub use summarize::{Summarize, SummarizeFuture, SummarizeLayer, WindowConfig, WindowMode};

/// Trimming settings (Nenya's `context` section names).
///
/// ```
/// let c = nenya::layers::BudgetConfig::default();
/// assert_eq!((c.keep_first_pct, c.keep_last_pct), (15.0, 25.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Share of an oversized text kept from its start (`truncation_keep_first_pct`).
    pub keep_first_pct: f64,
    /// Share kept from its end (`truncation_keep_last_pct`).
    pub keep_last_pct: f64,
    /// Absolute cap on prompt tokens (`hard_limit_tokens`; `None`: the window decides).
    pub hard_limit_tokens: Option<u64>,
    /// Output reserved when the request names no `max_tokens`.
    pub default_output_reserve: u64,
    /// Relevance truncation (`tfidf_query_source`); `None`: middle-out only.
    pub relevance: Option<RelevanceQuery>,
}

/// What an oversized text's blocks are scored against (Nenya's `tfidf_query_source`).
///
/// ```
/// use nenya::layers::budget::RelevanceQuery;
/// assert_eq!(RelevanceQuery::from_config("prior_messages"), Some(RelevanceQuery::PriorMessages));
/// assert_eq!(RelevanceQuery::from_config(""), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelevanceQuery {
    /// The user's other messages in the conversation.
    PriorMessages,
    /// The first 500 characters of the text itself.
    SelfStart,
}

impl RelevanceQuery {
    /// From the config spelling (`prior_messages`, `self`; anything else: off).
    pub fn from_config(s: &str) -> Option<Self> {
        match s {
            "prior_messages" => Some(Self::PriorMessages),
            "self" => Some(Self::SelfStart),
            _ => None,
        }
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            keep_first_pct: 15.0,
            keep_last_pct: 25.0,
            hard_limit_tokens: None,
            default_output_reserve: 4_096,
            relevance: None,
        }
    }
}

/// What [`trim`] did.
///
/// ```
/// let r = nenya::layers::TrimReport { before: 9, after: 5, dropped: 2, truncated: 0 };
/// assert_eq!(r.header(), "trimmed tokens=9->5 dropped=2 truncated=0");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrimReport {
    /// Estimated prompt tokens before.
    pub before: u64,
    /// After.
    pub after: u64,
    /// Messages dropped.
    pub dropped: usize,
    /// Texts cut middle-out.
    pub truncated: usize,
}

impl TrimReport {
    /// The `x-nenya-context` header value.
    pub fn header(&self) -> String {
        format!(
            "trimmed tokens={}->{} dropped={} truncated={}",
            self.before, self.after, self.dropped, self.truncated
        )
    }
}

/// Trims `req` to at most `budget` prompt tokens (see the module docs for the order), counting
/// with the tokenizer of `req.model`. Returns `None` when it already fit.
///
/// ```
/// use nenya::layers::budget::{trim, BudgetConfig};
/// use nenya::model::{ChatRequest, Message, Role, ApiFormat};
/// let mut req = nenya::adapters::decode_request(ApiFormat::OpenAi,
///     br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
/// assert!(trim(&mut req, 1_000, &BudgetConfig::default()).is_none());
/// ```
pub fn trim(req: &mut ChatRequest, budget: u64, cfg: &BudgetConfig) -> Option<TrimReport> {
    let counter = TokenCounter::for_model(&req.model);
    trim_with(req, budget, cfg, counter, None)
}

/// [`trim`] with an explicit tokenizer and a per-request count cache.
///
/// Cost: a request whose byte-length bound fits is proven to fit without tokenising; otherwise
/// messages are counted newest first and counting stops at the first unit that no longer
/// fits, so a 500k-token conversation trimmed to 128k tokenises about 128k tokens.
///
/// ```
/// use nenya::layers::budget::{trim_with, BudgetConfig};
/// use nenya::tokens::{TokenCache, TokenCounter};
/// let body = serde_json::json!({"model": "gpt-4o", "messages": [
///     {"role": "system", "content": "be brief"},
///     {"role": "user", "content": "word ".repeat(5_000)},
///     {"role": "assistant", "content": "ok"},
///     {"role": "user", "content": "and now?"}]});
/// let mut req = nenya::adapters::decode_request(nenya::model::ApiFormat::OpenAi,
///     body.to_string().as_bytes()).unwrap();
/// let counter = TokenCounter::for_model("gpt-4o");
/// let report = trim_with(&mut req, 100, &BudgetConfig::default(), counter, Some(&TokenCache::default())).unwrap();
/// assert!(report.after <= 100);
/// assert_eq!(req.messages.len(), 2); // the system prompt and the last user turn
/// ```
pub fn trim_with(
    req: &mut ChatRequest,
    budget: u64,
    cfg: &BudgetConfig,
    counter: TokenCounter,
    cache: Option<&TokenCache>,
) -> Option<TrimReport> {
    // 1. The byte-length bound: most requests stop here, untokenised.
    let bound = counter.tools_upper_bound(req)
        + req
            .messages
            .iter()
            .map(|m| counter.message_upper_bound(m))
            .sum::<u64>();
    if bound <= budget {
        // Within reach of the budget: have the exact tables ready before they are needed.
        if bound > budget / 4 {
            crate::tokens::warm_up_in_background(counter.family());
        }
        return None;
    }
    let tools = counter.count_tools(req);
    let mut counts: Vec<Option<u64>> = vec![None; req.messages.len()];
    let count = |counts: &mut Vec<Option<u64>>, req: &ChatRequest, i: usize| -> u64 {
        *counts[i].get_or_insert_with(|| counter.count_message_cached(&req.messages[i], cache))
    };
    let pinned_head = req
        .messages
        .iter()
        .take_while(|m| m.role.is_system())
        .count();
    // Units after the system prompt: [start, end) ranges, a tool-call turn with its results.
    let mut units: Vec<(usize, usize)> = Vec::new();
    let mut i = pinned_head;
    while i < req.messages.len() {
        let start = i;
        i += 1;
        if req.messages[start].has_tool_calls() {
            while i < req.messages.len() && req.messages[i].has_tool_results() {
                i += 1;
            }
        }
        units.push((start, i));
    }
    // Never dropped: the last unit (the turn being answered), and the last user text turn and
    // everything after it (an agent's tool loop answers that turn).
    let last_user = req
        .messages
        .iter()
        .rposition(|m| m.role == Role::User && !m.has_tool_results());
    let keep_from = units
        .iter()
        .position(|(s, e)| last_user.is_some_and(|u| (*s..*e).contains(&u)))
        .unwrap_or(units.len())
        .min(units.len().saturating_sub(1));
    let pinned_tail = units.get(keep_from).map_or(req.messages.len(), |u| u.0);
    let mut kept = tools
        + (0..pinned_head)
            .chain(pinned_tail..req.messages.len())
            .map(|i| count(&mut counts, req, i))
            .sum::<u64>();
    // 2. Older units, newest first, while they fit; counting stops at the first that does not.
    let mut first_kept = keep_from;
    while first_kept > 0 && kept <= budget {
        let (s, e) = units[first_kept - 1];
        let c: u64 = (s..e).map(|i| count(&mut counts, req, i)).sum();
        if kept + c > budget {
            break;
        }
        kept += c;
        first_kept -= 1;
    }
    if first_kept == 0 && kept <= budget {
        return None; // counted in full: it fits
    }
    // What was not counted is reported by its estimate.
    let dropped_tokens: u64 = units[..first_kept]
        .iter()
        .flat_map(|&(s, e)| s..e)
        .map(|i| counts[i].unwrap_or_else(|| req.messages[i].estimate_tokens()))
        .sum();
    let mut report = TrimReport {
        before: kept + dropped_tokens,
        ..TrimReport::default()
    };
    // The relevance query is taken before older turns go: the question that makes a pasted log
    // relevant is often in a turn that is dropped.
    let query = match cfg.relevance {
        Some(RelevanceQuery::PriorMessages) => Some(prior_user_text(req)),
        _ => None,
    };
    let mut drop_until = units.get(first_kept).map_or(pinned_head, |u| u.0);
    // The conversation must open with a user turn that is not a dangling tool result: drop
    // whole units until it does (never the kept tail).
    while let Some(&(start, end)) = units.iter().find(|(s, _)| *s == drop_until) {
        let m = &req.messages[start];
        if (m.role == Role::User && !m.has_tool_results()) || start >= pinned_tail {
            break;
        }
        kept -= (start..end)
            .map(|i| count(&mut counts, req, i))
            .sum::<u64>();
        drop_until = end;
    }
    if drop_until > pinned_head {
        req.messages.drain(pinned_head..drop_until);
        counts.drain(pinned_head..drop_until);
        report.dropped = drop_until - pinned_head;
    }
    // 3. Still too big: cut the largest texts (relevance-scored or middle-out) until it fits.
    let mut guard = 0;
    while kept > budget && guard < 16 {
        guard += 1;
        let Some(idx) = cut_largest(req, kept - budget, cfg, &counts, query.as_deref()) else {
            break;
        };
        let before = counts[idx].unwrap_or(0);
        let after = counter.count_message_cached(&req.messages[idx], cache);
        counts[idx] = Some(after);
        kept = kept - before + after;
        report.truncated += 1;
    }
    report.after = kept;
    Some(report)
}

/// Cuts about `over` tokens (and the marker's) out of the largest text: the blocks least
/// relevant to the query when relevance truncation is on and can keep the pinned blocks,
/// middle-out otherwise. The system prompt and the last user turn are cut only when nothing
/// else is left to cut. Returns the index of the message it cut.
fn cut_largest(
    req: &mut ChatRequest,
    over: u64,
    cfg: &BudgetConfig,
    counts: &[Option<u64>],
    query: Option<&str>,
) -> Option<usize> {
    let last_user = req
        .messages
        .iter()
        .rposition(|m| m.role == Role::User && !m.has_tool_results());
    let largest_in = |req: &mut ChatRequest, pinned_ok: bool| {
        let mut best: Option<(usize, usize)> = None; // (len, message index)
        for (i, m) in req.messages.iter_mut().enumerate() {
            let pinned = m.role.is_system() || Some(i) == last_user;
            if pinned && !pinned_ok {
                continue;
            }
            let mut largest = 0;
            each_text_mut(&mut m.content, &mut |s: &mut String| {
                largest = largest.max(s.len())
            });
            if best.is_none_or(|(l, _)| largest > l) {
                best = Some((largest, i));
            }
        }
        best.filter(|(l, _)| *l >= 64)
    };
    let (len, idx) = largest_in(req, false).or_else(|| largest_in(req, true))?;
    // Bytes per token of this message, from its count (the estimate's ratio if uncounted).
    let mut bytes = 0;
    each_text_mut(&mut req.messages[idx].content, &mut |s: &mut String| {
        bytes += s.len()
    });
    let ratio = match counts.get(idx).copied().flatten() {
        Some(c) if c > 0 => (bytes as f64 / c as f64).max(1.0),
        _ => crate::tokens::ESTIMATE_BYTES_PER_TOKEN,
    };
    let cut_bytes = ((over as f64 * ratio * 1.02) as usize + 96).min(len);
    let mut done = false;
    each_text_mut(&mut req.messages[idx].content, &mut |s: &mut String| {
        if done || s.len() != len {
            return;
        }
        done = true;
        let keep = len - cut_bytes;
        if cfg.relevance.is_some() {
            let q = match query {
                Some(q) => q,
                None => {
                    let mut end = s.len().min(500);
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    &s[..end]
                }
            };
            if let Some(out) = relevance::select(s, q, keep, cfg.keep_first_pct, cfg.keep_last_pct)
            {
                *s = out;
                return;
            }
        }
        *s = middle_out(s, keep, cfg, ratio);
    });
    done.then_some(idx)
}

/// The user's own words: every user text turn short enough to be a question or an instruction
/// rather than pasted material (up to 4 KiB each), newest first, at most 16 KiB.
fn prior_user_text(req: &ChatRequest) -> String {
    let mut q = String::new();
    for m in req.messages.iter().rev() {
        if m.role != Role::User || m.has_tool_results() {
            continue;
        }
        let t = m.content.text();
        if t.len() <= 4096 && q.len() + t.len() <= 16 * 1024 {
            q.push_str(&t);
            q.push('\n');
        }
    }
    q
}

/// `s` cut to about `keep` bytes: its first and last shares, with a marker between.
fn middle_out(s: &str, keep: usize, cfg: &BudgetConfig, ratio: f64) -> String {
    let len = s.len();
    let first_share = cfg.keep_first_pct / (cfg.keep_first_pct + cfg.keep_last_pct).max(1.0);
    let mut head = (keep as f64 * first_share) as usize;
    let mut tail_start = len - (keep - head);
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    while !s.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let cut_tokens = ((tail_start - head) as f64 / ratio).ceil() as u64;
    let marker = format!("\n[… nenya trimmed ~{cut_tokens} tokens to fit the context window …]\n");
    let mut out = String::with_capacity(head + marker.len() + (len - tail_start));
    out.push_str(&s[..head]);
    out.push_str(&marker);
    out.push_str(&s[tail_start..]);
    out
}

fn each_text_mut(c: &mut Content, f: &mut impl FnMut(&mut String)) {
    match c {
        Content::Text(s) => f(s),
        Content::Parts(ps) => {
            for p in ps {
                match p {
                    Part::Text { text, .. } => f(text),
                    Part::ToolResult { content, .. } => each_text_mut(content, f),
                    _ => {}
                }
            }
        }
    }
}

/// What the context layers did, for metrics. Cheap to clone (shared counters).
///
/// ```
/// let s = nenya::layers::budget::ContextStats::default();
/// s.record(&nenya::layers::TrimReport { before: 10, after: 4, dropped: 1, truncated: 0 });
/// assert_eq!(s.snapshot().trimmed, 1);
/// assert_eq!(s.snapshot().tokens_removed, 6);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ContextStats {
    inner: Arc<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    trimmed: AtomicU64,
    dropped: AtomicU64,
    truncated: AtomicU64,
    removed: AtomicU64,
    retries: AtomicU64,
    summarized: AtomicU64,
    summary_failures: AtomicU64,
}

/// Totals of [`ContextStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextTotals {
    /// Requests trimmed.
    pub trimmed: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Texts cut.
    pub truncated: u64,
    /// Prompt tokens removed by trimming.
    pub tokens_removed: u64,
    /// Attempts retried with a tighter budget after an upstream context error.
    pub retries: u64,
    /// Requests whose older turns were summarised.
    pub summarized: u64,
    /// Summaries that failed (the request went on, trimmed instead).
    pub summary_failures: u64,
}

impl ContextStats {
    /// Adds one trim.
    pub fn record(&self, r: &TrimReport) {
        let i = &self.inner;
        i.trimmed.fetch_add(1, Ordering::Relaxed);
        i.dropped.fetch_add(r.dropped as u64, Ordering::Relaxed);
        i.truncated.fetch_add(r.truncated as u64, Ordering::Relaxed);
        i.removed
            .fetch_add(r.before.saturating_sub(r.after), Ordering::Relaxed);
    }

    /// Adds one tighter-budget retry.
    pub fn record_retry(&self) {
        self.inner.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds one summarisation (`ok`) or failed attempt.
    pub fn record_summary(&self, ok: bool) {
        let c = if ok {
            &self.inner.summarized
        } else {
            &self.inner.summary_failures
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The totals.
    pub fn snapshot(&self) -> ContextTotals {
        let i = &self.inner;
        ContextTotals {
            trimmed: i.trimmed.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            truncated: i.truncated.load(Ordering::Relaxed),
            tokens_removed: i.removed.load(Ordering::Relaxed),
            retries: i.retries.load(Ordering::Relaxed),
            summarized: i.summarized.load(Ordering::Relaxed),
            summary_failures: i.summary_failures.load(Ordering::Relaxed),
        }
    }
}

/// Layer that applies [`BudgetTrim`].
pub struct BudgetTrimLayer<W> {
    cfg: BudgetConfig,
    window: Arc<W>,
    metrics: Option<ContextStats>,
}

impl<W> Clone for BudgetTrimLayer<W> {
    fn clone(&self) -> Self {
        Self {
            cfg: self.cfg,
            window: self.window.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<W> std::fmt::Debug for BudgetTrimLayer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetTrimLayer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<W> BudgetTrimLayer<W> {
    /// Trims with `cfg`; `window` gives a request's context window in tokens (`None`: unknown,
    /// only `hard_limit_tokens` applies).
    pub fn new(cfg: BudgetConfig, window: W) -> Self {
        Self {
            cfg,
            window: Arc::new(window),
            metrics: None,
        }
    }

    /// Counts what it does into `stats` (the gateway exports them on `/metrics`).
    pub fn with_stats(mut self, stats: ContextStats) -> Self {
        self.metrics = Some(stats);
        self
    }
}

impl<S, W> Layer<S> for BudgetTrimLayer<W> {
    type Service = BudgetTrim<S, W>;
    fn layer(&self, inner: S) -> BudgetTrim<S, W> {
        BudgetTrim {
            inner,
            cfg: self.cfg,
            window: self.window.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Trims an oversized request to its target's budget, then calls the inner service.
pub struct BudgetTrim<S, W> {
    inner: S,
    cfg: BudgetConfig,
    window: Arc<W>,
    metrics: Option<ContextStats>,
}

impl<S: Clone, W> Clone for BudgetTrim<S, W> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cfg: self.cfg,
            window: self.window.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<S: std::fmt::Debug, W> std::fmt::Debug for BudgetTrim<S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetTrim")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, W, R> Service<Request<ChatRequest>> for BudgetTrim<S, W>
where
    S: Service<Request<ChatRequest>, Response = Response<R>>,
    W: Fn(&Request<ChatRequest>) -> Option<u64>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ChatRequest>) -> Self::Future {
        let reserve = req
            .body()
            .max_tokens
            .unwrap_or(self.cfg.default_output_reserve);
        let window = (self.window)(&req).map(|w| w.saturating_sub(reserve));
        let mut budget = match (window, self.cfg.hard_limit_tokens) {
            (Some(w), Some(h)) => Some(w.min(h)),
            (w, h) => w.or(h),
        };
        // The upstream said a previous attempt did not fit: tighten (see `ContextRetry`).
        if let Some(retry) = req.extensions().get::<ContextRetry>() {
            if let Some(m) = &self.metrics {
                m.record_retry();
            }
            let from_error = retry.limit.map(|l| l.saturating_sub(reserve));
            let base = match (budget, from_error) {
                (Some(b), Some(e)) => b.min(e),
                (b, e) => b.or(e).unwrap_or_else(|| req.body().estimate_tokens()),
            };
            budget = Some((base as f64 * retry.factor) as u64);
        }
        // Only a request with a budget needs its tokenizer (and its model name lowercased).
        let report = budget.and_then(|b| {
            let model = req
                .extensions()
                .get::<crate::services::Target>()
                .map_or(req.body().model.as_str(), |t| t.model.as_str());
            let counter = TokenCounter::for_model(model);
            let cache = req.extensions().get::<TokenCache>().cloned();
            let r = trim_with(req.body_mut(), b, &self.cfg, counter, cache.as_ref());
            if let Some(r) = &r {
                tracing::info!(
                    before = r.before,
                    after = r.after,
                    dropped = r.dropped,
                    truncated = r.truncated,
                    budget = b,
                    "trimmed the conversation to the context budget"
                );
            }
            r
        });
        if let (Some(r), Some(m)) = (&report, &self.metrics) {
            m.record(r);
        }
        WithHeader::new(
            self.inner.call(req),
            HeaderName::from_static("x-nenya-context"),
            report.and_then(|r| HeaderValue::try_from(r.header()).ok()),
        )
    }
}

/// Request extension: an earlier attempt of this request was refused by the upstream because
/// its prompt exceeded the context window; [`BudgetTrim`] tightens the budget for this one (to
/// `factor` of the smaller of its own budget and the `limit` the upstream named).
///
/// ```
/// let r = nenya::layers::budget::ContextRetry::from_error_body(
///     br#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens."}}"#);
/// assert_eq!(r.limit, Some(128_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContextRetry {
    /// The window the upstream named, when its error said.
    pub limit: Option<u64>,
    /// Share of the budget to aim for (0.85).
    pub factor: f64,
}

impl ContextRetry {
    /// Reads the limit from an upstream's context-exceeded error: the smallest number of at
    /// least 1024 in it (errors name the limit and the larger count that broke it).
    pub fn from_error_body(body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(body);
        let limit = text
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .filter(|n| *n >= 1024)
            .min();
        Self {
            limit,
            factor: 0.85,
        }
    }
}

/// Response future of [`BudgetTrim`]: adds `x-nenya-context` when it trimmed.
pub type ResponseFuture<F> = WithHeader<F>;
