//! [`SummarizeLayer`]: Nenya's sliding `window`. When a conversation grows past
//! `trigger_ratio` of its window, the turns older than the last `active_messages` are replaced
//! by one system message: a summary written by an *engine* model (`summarize`), the excerpts
//! most relevant to the recent turns (`tfidf`, no network call), or a plain note of what was
//! removed (`truncate`). The engine is any `Service` of chat requests (the gateway gives it its
//! own router, so an agent name or `provider/model` picks it and its failover applies); an
//! engine that fails, times out or answers nonsense leaves the request as it was, for
//! [`BudgetTrimLayer`](super::BudgetTrimLayer) to trim. The request never fails because of it.
//!
//! What happened is reported in the `x-nenya-window` response header and in
//! [`ContextStats`](super::ContextStats).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use super::ContextStats;
use super::relevance;
use crate::model::{ApiFormat, ChatRequest, Content, Message, Part, Role, Shape};
use crate::{Body, Error};

/// How older turns are replaced.
///
/// ```
/// use nenya::layers::budget::WindowMode;
/// assert_eq!("tfidf".parse::<WindowMode>().unwrap(), WindowMode::Relevance);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowMode {
    /// A summary by the engine model.
    Summarize,
    /// Dropped, with a note saying so.
    Truncate,
    /// The excerpts most relevant to the recent turns (TF-IDF), no engine call.
    Relevance,
}

impl std::str::FromStr for WindowMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "summarize" | "" => Ok(Self::Summarize),
            "truncate" => Ok(Self::Truncate),
            "tfidf" => Ok(Self::Relevance),
            o => Err(format!(
                "unknown window mode `{o}` (summarize, truncate, tfidf)"
            )),
        }
    }
}

/// Settings of [`SummarizeLayer`] (Nenya's `window` section).
///
/// ```
/// let c = nenya::layers::budget::WindowConfig::default();
/// assert_eq!((c.active_messages, c.trigger_ratio), (6, 0.8));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WindowConfig {
    /// How older turns are replaced.
    pub mode: WindowMode,
    /// Recent messages kept unchanged.
    pub active_messages: usize,
    /// Acts when the prompt's estimate exceeds this share of the window.
    pub trigger_ratio: f64,
    /// Longest summary, in characters.
    pub summary_max_chars: usize,
    /// The window when the request's targets name none.
    pub default_window: u64,
    /// The engine: an agent name or `provider/model`.
    pub engine_model: String,
    /// The engine's instructions (`None`: the built-in prompt).
    pub system_prompt: Option<String>,
    /// How long the engine may take.
    pub timeout: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            mode: WindowMode::Summarize,
            active_messages: 6,
            trigger_ratio: 0.8,
            summary_max_chars: 4000,
            default_window: 128_000,
            engine_model: String::new(),
            system_prompt: None,
            timeout: Duration::from_secs(60),
        }
    }
}

const DEFAULT_PROMPT: &str = "You summarise the earlier part of a conversation between a user and \
a coding assistant so the assistant can carry on without it. Keep the user's goals and \
constraints, decisions made, file paths, identifiers, commands, errors and how they were \
resolved, and open questions. Leave out pleasantries. Reply with the summary only.";

/// Largest engine answer read.
const MAX_ENGINE_ANSWER: usize = 1 << 20;

/// Summarises older turns when a conversation nears its window (see the module docs).
///
/// ```
/// use nenya::layers::budget::{SummarizeLayer, WindowConfig, WindowMode};
/// use nenya::model::{ApiFormat, ChatRequest};
/// use nenya::{Body, Error};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // The `truncate` mode needs no engine; any service stands in for one.
/// let engine = service_fn(|_: http::Request<ChatRequest>| async { Ok::<_, Error>(http::Response::new(Body::empty())) });
/// let cfg = WindowConfig { mode: WindowMode::Truncate, active_messages: 2, ..WindowConfig::default() };
/// let svc = ServiceBuilder::new()
///     .layer(SummarizeLayer::new(cfg, engine, |_: &http::Request<ChatRequest>| Some(1_000)))
///     .service(service_fn(|req: http::Request<ChatRequest>| async move {
///         assert_eq!(req.body().messages.len(), 3); // the note, then the last two turns
///         Ok::<_, Error>(http::Response::new(Body::empty()))
///     }));
/// let long = "x".repeat(4_000);
/// let body = serde_json::json!({"model": "m", "messages": [
///     {"role": "user", "content": long}, {"role": "assistant", "content": long},
///     {"role": "user", "content": "recent"}, {"role": "assistant", "content": "ok"}]});
/// let req = nenya::adapters::decode_request(ApiFormat::OpenAi, body.to_string().as_bytes()).unwrap();
/// let resp = svc.oneshot(http::Request::new(req)).await.unwrap();
/// assert!(resp.headers()["x-nenya-window"].to_str().unwrap().starts_with("truncate"));
/// # }
/// ```
pub struct SummarizeLayer<E, W> {
    cfg: Arc<WindowConfig>,
    engine: E,
    window: Arc<W>,
    stats: Option<ContextStats>,
}

impl<E: Clone, W> Clone for SummarizeLayer<E, W> {
    fn clone(&self) -> Self {
        Self {
            cfg: self.cfg.clone(),
            engine: self.engine.clone(),
            window: self.window.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<E, W> std::fmt::Debug for SummarizeLayer<E, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SummarizeLayer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<E, W> SummarizeLayer<E, W> {
    /// `engine` writes summaries; `window` gives a request's context window (`None`:
    /// [`WindowConfig::default_window`]).
    pub fn new(cfg: WindowConfig, engine: E, window: W) -> Self {
        Self {
            cfg: Arc::new(cfg),
            engine,
            window: Arc::new(window),
            stats: None,
        }
    }

    /// Counts summaries and failures into `stats`.
    pub fn with_stats(mut self, stats: ContextStats) -> Self {
        self.stats = Some(stats);
        self
    }
}

impl<S, E: Clone, W> Layer<S> for SummarizeLayer<E, W> {
    type Service = Summarize<S, E, W>;
    fn layer(&self, inner: S) -> Self::Service {
        Summarize {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`SummarizeLayer`].
pub struct Summarize<S, E, W> {
    inner: S,
    layer: SummarizeLayer<E, W>,
}

impl<S: Clone, E: Clone, W> Clone for Summarize<S, E, W> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, E, W> std::fmt::Debug for Summarize<S, E, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Summarize")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, E, W> Service<Request<ChatRequest>> for Summarize<S, E, W>
where
    S: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    E: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error>
        + Clone
        + Send
        + 'static,
    E::Future: Send,
    W: Fn(&Request<ChatRequest>) -> Option<u64> + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = SummarizeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ChatRequest>) -> Self::Future {
        let cfg = &self.layer.cfg;
        let window = (self.layer.window)(&req).unwrap_or(cfg.default_window);
        let bytes: usize = req.body().messages.iter().map(text_bytes).sum();
        let estimate = (bytes as f64 / crate::tokens::ESTIMATE_BYTES_PER_TOKEN) as u64;
        let split = (estimate as f64 > window as f64 * cfg.trigger_ratio)
            .then(|| split_point(&req.body().messages, cfg.active_messages))
            .flatten();
        let Some((head, boundary)) = split else {
            return SummarizeFuture {
                state: State::Direct {
                    fut: self.inner.call(req),
                },
            };
        };
        // The ready inner service goes with the future; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let engine = self.layer.engine.clone();
        let cfg = self.layer.cfg.clone();
        let stats = self.layer.stats.clone();
        SummarizeFuture {
            state: State::Boxed {
                fut: Box::pin(replace_older(
                    req, head, boundary, estimate, inner, engine, cfg, stats,
                )),
            },
        }
    }
}

/// Where the older turns are: `(head, boundary)` with `messages[head..boundary]` older, the
/// recent part starting at a user text turn (so no tool result loses its call and the
/// conversation still opens with the user). `None` when there is nothing older to replace.
fn split_point(messages: &[Message], active: usize) -> Option<(usize, usize)> {
    let head = messages.iter().take_while(|m| m.role.is_system()).count();
    let latest = messages.len().saturating_sub(active.max(1));
    let boundary = (head..=latest)
        .rev()
        .find(|&i| messages[i].role == Role::User && !messages[i].has_tool_results())?;
    (boundary > head).then_some((head, boundary))
}

fn text_bytes(m: &Message) -> usize {
    let mut n = 0;
    m.for_each_text(|s| n += s.len());
    n
}

/// The older turns as a plain transcript (tool results capped at 2 KB each).
fn transcript(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        let role = m.role.as_str();
        match &m.content {
            Content::Text(s) => out.push_str(&format!("{role}: {s}\n\n")),
            Content::Parts(ps) => {
                for p in ps {
                    match p {
                        Part::Text { text, .. } => out.push_str(&format!("{role}: {text}\n\n")),
                        Part::ToolUse {
                            name, arguments, ..
                        } => out.push_str(&format!("{role} called {name}({arguments})\n\n")),
                        Part::ToolResult { content, .. } => {
                            let t = content.text();
                            let mut end = t.len().min(2048);
                            while !t.is_char_boundary(end) {
                                end -= 1;
                            }
                            out.push_str(&format!("tool result: {}\n\n", &t[..end]));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn replace_older<S, E>(
    mut req: Request<ChatRequest>,
    head: usize,
    boundary: usize,
    estimate: u64,
    mut inner: S,
    engine: E,
    cfg: Arc<WindowConfig>,
    stats: Option<ContextStats>,
) -> Result<Response<Body>, Error>
where
    S: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error>,
    E: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error>,
{
    let older = &req.body().messages[head..boundary];
    let n = older.len();
    let text = match cfg.mode {
        WindowMode::Truncate => Ok(format!(
            "[{n} earlier messages were removed by nenya to fit the context window]"
        )),
        WindowMode::Relevance => {
            let recent: String = req.body().messages[boundary..]
                .iter()
                .filter(|m| m.role == Role::User)
                .map(|m| m.content.text())
                .collect::<Vec<_>>()
                .join("\n");
            let all = transcript(older);
            let picked = relevance::select(&all, &recent, cfg.summary_max_chars, 0.0, 0.0)
                .unwrap_or_else(|| {
                    let mut end = all.len().min(cfg.summary_max_chars);
                    while !all.is_char_boundary(end) {
                        end -= 1;
                    }
                    all[..end].to_owned()
                });
            Ok(format!(
                "[Excerpts of {n} earlier messages, chosen by nenya for relevance]\n{picked}"
            ))
        }
        WindowMode::Summarize => {
            let ask = engine_request(&req, &cfg, transcript(older));
            match tokio::time::timeout(cfg.timeout, summarize(engine, ask)).await {
                Ok(Ok(s)) => Ok(format!(
                    "[Summary of {n} earlier messages, written for nenya by {}]\n{s}",
                    cfg.engine_model
                )),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("no summary within {:?}", cfg.timeout)),
            }
        }
    };
    let header = match text {
        Ok(text) => {
            let chat = req.body_mut();
            chat.messages.drain(head..boundary);
            chat.messages
                .insert(head, Message::text(Role::System, text));
            if let Some(s) = &stats {
                s.record_summary(true);
            }
            let after: usize = chat.messages.iter().map(text_bytes).sum();
            let after = (after as f64 / crate::tokens::ESTIMATE_BYTES_PER_TOKEN) as u64;
            let mode = match cfg.mode {
                WindowMode::Summarize => "summarized",
                WindowMode::Truncate => "truncated",
                WindowMode::Relevance => "excerpted",
            };
            tracing::info!(
                messages = n,
                before = estimate,
                after,
                mode,
                "replaced older turns"
            );
            format!("{mode} messages={n} tokens~{estimate}->{after}")
        }
        Err(why) => {
            if let Some(s) = &stats {
                s.record_summary(false);
            }
            tracing::warn!(reason = %why, "window engine failed; the request goes on untouched");
            "summarize-failed".to_owned()
        }
    };
    let mut resp = inner.ready().await?.call(req).await?;
    if let Ok(v) = HeaderValue::try_from(header) {
        resp.headers_mut().insert("x-nenya-window", v);
    }
    Ok(resp)
}

fn engine_request(
    req: &Request<ChatRequest>,
    cfg: &WindowConfig,
    transcript: String,
) -> Request<ChatRequest> {
    let prompt = cfg.system_prompt.as_deref().unwrap_or(DEFAULT_PROMPT);
    let chat = ChatRequest::new(crate::model::ChatFields {
        source: ApiFormat::OpenAi,
        model: cfg.engine_model.clone(),
        stream: false,
        messages: vec![
            Message::text(
                Role::System,
                format!("{prompt}\nAt most {} characters.", cfg.summary_max_chars),
            ),
            Message::text(Role::User, transcript),
        ],
        tools: None,
        tool_choice: None,
        max_tokens: Some((cfg.summary_max_chars / 3).max(256) as u64),
        stop: None,
        extra: Default::default(),
        shape: Shape::default(),
    });
    let mut out = Request::new(chat);
    // The caller's identity (RBAC) and request id carry over; the engine is nenya's own call.
    if let Some(p) = req.extensions().get::<crate::model::Principal>() {
        let mut p = p.clone();
        p.unrestricted = true;
        out.extensions_mut().insert(p);
    }
    out
}

/// Calls the engine and reads its answer's text (OpenAI shape, as the request was).
async fn summarize<E>(engine: E, ask: Request<ChatRequest>) -> Result<String, String>
where
    E: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error>,
{
    let resp = engine
        .oneshot(ask)
        .await
        .map_err(|e| format!("engine error: {}", e.kind().as_str()))?;
    if !resp.status().is_success() {
        return Err(format!("engine answered {}", resp.status().as_u16()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_ENGINE_ANSWER)
        .collect()
        .await
        .map_err(|_| "engine answer unreadable or too large".to_owned())?
        .to_bytes();
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| "engine answer is not JSON".to_owned())?;
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "engine answer has no text".to_owned())?;
    Ok(text.to_owned())
}

pin_project_lite::pin_project! {
    /// Response future of [`Summarize`]: the inner call directly, or the engine round first.
    pub struct SummarizeFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Direct { #[pin] fut: F },
        Boxed { fut: BoxFuture<Result<Response<Body>, Error>> },
    }
}

impl<F> Future for SummarizeFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Direct { fut } => fut.poll(cx),
            StateProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}
