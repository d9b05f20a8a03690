//! Keeps a request inside its target model's context window.
//!
//! [`BudgetTrimLayer`] wraps a service of `Request<ChatRequest>`; a function tells it the
//! context window of the request's target (the gateway sits it after the router, so each target
//! of a chain gets a request that fits *it*). The budget is the window minus the requested
//! output (`max_tokens`, else a default reserve), capped by `hard_limit_tokens`. A request that
//! fits is not touched: proving it fits costs one pass over the text lengths. Otherwise:
//!
//! 1. the oldest turns go first, a *unit* at a time: an assistant turn with tool calls and the
//!    tool results that answer it go together, so no call loses its result or the reverse;
//! 2. the system prompt and the last turn are never dropped, and the conversation still starts
//!    with a user turn (Anthropic requires it);
//! 3. if that is not enough, the largest remaining text is cut middle-out, keeping its first
//!    `keep_first_pct` and last `keep_last_pct`, with a visible marker of what was cut.
//!
//! Counting uses [`Message::estimate_tokens`] (bytes / 4 + framing), which over-counts code and
//! English for OpenAI-family tokenizers, so a trimmed request errs on the small side. What was
//! done is reported in the `x-nenya-context` response header.
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
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::Service;
use tower_layer::Layer;

use crate::layers::guard::WithHeader;
use crate::model::{ChatRequest, Content, Message, Part, Role};

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
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            keep_first_pct: 15.0,
            keep_last_pct: 25.0,
            hard_limit_tokens: None,
            default_output_reserve: 4_096,
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

fn total(req: &ChatRequest) -> u64 {
    req.messages.iter().map(Message::estimate_tokens).sum()
}

/// Trims `req` to at most `budget` estimated prompt tokens (see the module docs for the
/// order). Returns `None` when it already fit.
///
/// ```
/// use nenya::layers::budget::{trim, BudgetConfig};
/// use nenya::model::{ChatRequest, Message, Role, ApiFormat};
/// let mut req = nenya::adapters::decode_request(ApiFormat::OpenAi,
///     br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
/// assert!(trim(&mut req, 1_000, &BudgetConfig::default()).is_none());
/// ```
pub fn trim(req: &mut ChatRequest, budget: u64, cfg: &BudgetConfig) -> Option<TrimReport> {
    let before = total(req);
    if before <= budget {
        return None;
    }
    let mut report = TrimReport {
        before,
        ..TrimReport::default()
    };
    let pinned_head = req
        .messages
        .iter()
        .take_while(|m| matches!(m.role, Role::System | Role::Developer))
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
    let mut now = before;
    let mut drop_until = pinned_head; // messages [pinned_head, drop_until) go
    // Never the last unit (the turn being answered), nor the last user text turn and anything
    // after it (an agent's tool loop answers that turn).
    let last_user = req
        .messages
        .iter()
        .rposition(|m| m.role == Role::User && !m.has_tool_results());
    let keep_from = units
        .iter()
        .position(|(s, e)| last_user.is_some_and(|u| (*s..*e).contains(&u)))
        .unwrap_or(units.len())
        .min(units.len().saturating_sub(1));
    for &(_, end) in units.iter().take(keep_from) {
        if now <= budget {
            break;
        }
        now -= req.messages[drop_until..end]
            .iter()
            .map(Message::estimate_tokens)
            .sum::<u64>();
        drop_until = end;
    }
    // The conversation must open with a user turn that is not a dangling tool result: drop
    // whole units until it does (never the last one).
    while let Some(&(start, end)) = units.iter().find(|(s, _)| *s == drop_until) {
        let m = &req.messages[start];
        let kept = units.get(keep_from).is_some_and(|(s, _)| start >= *s);
        if (m.role == Role::User && !m.has_tool_results()) || end >= req.messages.len() || kept {
            break;
        }
        drop_until = end;
    }
    if drop_until > pinned_head {
        req.messages.drain(pinned_head..drop_until);
        report.dropped = drop_until - pinned_head;
    }
    // Still too big: cut the largest texts middle-out until it fits.
    let mut guard = 0;
    while total(req) > budget && guard < 16 {
        guard += 1;
        let over = total(req) - budget;
        if !cut_largest(req, over, cfg) {
            break;
        }
        report.truncated += 1;
    }
    report.after = total(req);
    Some(report)
}

/// Cuts `over` estimated tokens (and the marker's) out of the largest text, middle-out. The
/// system prompt and the last user turn are cut only when nothing else is left to cut.
fn cut_largest(req: &mut ChatRequest, over: u64, cfg: &BudgetConfig) -> bool {
    let last_user = req
        .messages
        .iter()
        .rposition(|m| m.role == Role::User && !m.has_tool_results());
    let mut largest_in = |pinned_ok: bool| {
        let mut best: Option<(usize, usize)> = None; // (len, message index)
        for (i, m) in req.messages.iter_mut().enumerate() {
            let pinned = matches!(m.role, Role::System | Role::Developer) || Some(i) == last_user;
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
    let best = largest_in(false).or_else(|| largest_in(true));
    let Some((len, idx)) = best else { return false };
    let mut done = false;
    each_text_mut(&mut req.messages[idx].content, &mut |s: &mut String| {
        if done || s.len() != len {
            return;
        }
        done = true;
        let cut_bytes = usize::try_from(over * 4 + 64)
            .unwrap_or(usize::MAX)
            .min(len);
        let keep = len - cut_bytes;
        let first_share = cfg.keep_first_pct / (cfg.keep_first_pct + cfg.keep_last_pct).max(1.0);
        let mut head = (keep as f64 * first_share) as usize;
        let mut tail_start = len - (keep - head);
        while !s.is_char_boundary(head) {
            head -= 1;
        }
        while !s.is_char_boundary(tail_start) {
            tail_start += 1;
        }
        let cut_tokens = (tail_start - head).div_ceil(4);
        let marker =
            format!("\n[… nenya trimmed ~{cut_tokens} tokens to fit the context window …]\n");
        let mut out = String::with_capacity(head + marker.len() + (len - tail_start));
        out.push_str(&s[..head]);
        out.push_str(&marker);
        out.push_str(&s[tail_start..]);
        *s = out;
    });
    done
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

/// Layer that applies [`BudgetTrim`].
pub struct BudgetTrimLayer<W> {
    cfg: BudgetConfig,
    window: Arc<W>,
}

impl<W> Clone for BudgetTrimLayer<W> {
    fn clone(&self) -> Self {
        Self {
            cfg: self.cfg,
            window: self.window.clone(),
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
        }
    }
}

impl<S, W> Layer<S> for BudgetTrimLayer<W> {
    type Service = BudgetTrim<S, W>;
    fn layer(&self, inner: S) -> BudgetTrim<S, W> {
        BudgetTrim {
            inner,
            cfg: self.cfg,
            window: self.window.clone(),
        }
    }
}

/// Trims an oversized request to its target's budget, then calls the inner service.
pub struct BudgetTrim<S, W> {
    inner: S,
    cfg: BudgetConfig,
    window: Arc<W>,
}

impl<S: Clone, W> Clone for BudgetTrim<S, W> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cfg: self.cfg,
            window: self.window.clone(),
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
        let budget = match (window, self.cfg.hard_limit_tokens) {
            (Some(w), Some(h)) => Some(w.min(h)),
            (w, h) => w.or(h),
        };
        let report = budget.and_then(|b| {
            let r = trim(req.body_mut(), b, &self.cfg);
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
        WithHeader::new(
            self.inner.call(req),
            HeaderName::from_static("x-nenya-context"),
            report.and_then(|r| HeaderValue::try_from(r.header()).ok()),
        )
    }
}

/// Response future of [`BudgetTrim`]: adds `x-nenya-context` when it trimmed.
pub type ResponseFuture<F> = WithHeader<F>;
