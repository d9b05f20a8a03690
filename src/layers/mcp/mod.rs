//! MCP tools for agents, without the client knowing MCP exists: tool injection, the
//! multi-turn tool loop, auto-search and auto-save.
//!
//! [`McpLayer`] wraps the router (a service of `Request<ChatRequest>` answering in the
//! client's format). For a request naming an agent that has tools ([`AgentTools`]), it
//!
//! 1. adds the tools of the agent's servers to the request's tools, named `server__tool` so
//!    they never collide with the client's own;
//! 2. with auto-search, calls the search tool with the last user message first and adds what
//!    it returns as a system message (best effort: a failure only logs);
//! 3. sends the request on as a complete (not streamed) answer; when the model calls tools of
//!    the agent's servers, runs them (in parallel, each within its server's timeout), appends
//!    the call and the results to the conversation and asks again — up to `max_iterations`
//!    rounds and within `time_budget`. A tool's error, timeout or crashed server becomes a tool
//!    result the model reads (`is_error`), never a failed request;
//! 4. answers the client with the final answer in its format. A streaming client gets a
//!    `200` event stream at once, kept alive by SSE comments (`: keep-alive`, and one per
//!    round naming the tools called) while the loop runs, then the answer as the events a
//!    streamed answer has. When the answer also calls the *client's* tools, those are passed
//!    to the client and the agent's own calls are dropped from it (the model may repeat them
//!    next turn); past the round limit or the time budget the last answer is returned with
//!    the agent's calls dropped;
//! 5. with auto-save, hands the final answer's text to the save tool in the background.
//!
//! A token count (`/v1/messages/count_tokens`) for such an agent counts the tools it would
//! carry and runs none.
//!
//! The tools come from a [`ToolHost`] (the gateway's is the MCP client,
//! [`McpServers`](crate::services::mcp::McpServers)), so this layer knows nothing of MCP
//! transports. Every other request passes through untouched, at no cost.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Arc;
//! use nenya::layers::mcp::{AgentTools, McpLayer, ToolCall, ToolHost};
//! use nenya::model::{ApiFormat, ChatRequest, Tool};
//! use nenya::{Body, Error};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! struct Clock;
//! impl ToolHost for Clock {
//!     fn tools(&self, _servers: &[String]) -> Vec<Tool> {
//!         vec![Tool::Function { name: "clock__now".into(), description: None,
//!             parameters: serde_json::json!({"type": "object"}), extra: Default::default() }]
//!     }
//!     fn call(&self, _name: &str, _args: serde_json::Value) -> ToolCall {
//!         Box::pin(async { Ok("12:00".to_owned()) })
//!     }
//! }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let agents = HashMap::from([("timekeeper".to_owned(), AgentTools::new(vec!["clock".into()]))]);
//! let svc = ServiceBuilder::new()
//!     .layer(McpLayer::new(Arc::new(Clock), agents))
//!     .service(service_fn(|req: http::Request<ChatRequest>| async move {
//!         // The model sees the injected tool and answers plainly.
//!         assert_eq!(req.body().tools.as_ref().map(Vec::len), Some(1));
//!         Ok::<_, Error>(http::Response::new(Body::from(r#"{"id":"x","model":"m","choices":[{"index":0,
//!             "message":{"role":"assistant","content":"noon"},"finish_reason":"stop"}]}"#)))
//!     }));
//! let req = nenya::adapters::decode_request(ApiFormat::OpenAi,
//!     br#"{"model":"timekeeper","messages":[{"role":"user","content":"time?"}]}"#).unwrap();
//! let resp = svc.oneshot(http::Request::new(req)).await.unwrap();
//! assert_eq!(resp.status(), 200);
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use crate::error::{Error, ErrorKind};
use crate::model::{
    ApiFormat, ChatRequest, ChatResponse, Content, Message, Part, Role, StopReason, Tool,
};
use crate::{Body, BoxError};

/// A tool call in flight: the tool's text, or the error text the model should read.
pub type ToolCall = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where tools come from and are run.
pub trait ToolHost: Send + Sync + 'static {
    /// The tools of `servers`, each named `server__tool`.
    fn tools(&self, servers: &[String]) -> Vec<Tool>;
    /// Runs tool `name` (`server__tool`) with `arguments` within the server's timeout.
    fn call(&self, name: &str, arguments: Value) -> ToolCall;
}

/// An agent's tool settings (`agents.<name>.mcp`).
///
/// ```
/// let t = nenya::layers::mcp::AgentTools::new(vec!["memory".into()]);
/// assert_eq!(t.max_iterations, 10);
/// assert!(t.auto_search.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTools {
    /// The servers whose tools the agent's model may call.
    pub servers: Vec<String>,
    /// Most tool rounds per request.
    pub max_iterations: u32,
    /// Time for the whole loop.
    pub time_budget: Duration,
    /// Auto-search: `Some("")` picks the first tool whose name contains `search`, `Some(name)`
    /// that tool; `None` is off.
    pub auto_search: Option<String>,
    /// Auto-save: `Some("")` picks the first tool whose name contains `add`, then `save`.
    pub auto_save: Option<String>,
}

impl AgentTools {
    /// Tools of `servers`, ten rounds, five minutes, no auto-search or auto-save.
    pub fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            max_iterations: 10,
            time_budget: Duration::from_secs(300),
            auto_search: None,
            auto_save: None,
        }
    }
}

/// Layer that applies [`Mcp`].
#[derive(Clone)]
pub struct McpLayer {
    shared: Arc<Shared>,
}

struct Shared {
    host: Arc<dyn ToolHost>,
    agents: HashMap<String, AgentTools>,
    keep_alive: Duration,
}

impl std::fmt::Debug for McpLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpLayer")
            .field("agents", &self.shared.agents.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl McpLayer {
    /// Tools from `host` for the agents named in `agents`.
    pub fn new(host: Arc<dyn ToolHost>, agents: HashMap<String, AgentTools>) -> Self {
        Self {
            shared: Arc::new(Shared {
                host,
                agents,
                keep_alive: Duration::from_secs(5),
            }),
        }
    }

    /// How often a streaming client gets a keep-alive comment while the loop runs (default
    /// 5 s). Call before the layer is cloned.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # struct None_;
    /// # impl nenya::layers::mcp::ToolHost for None_ {
    /// #     fn tools(&self, _: &[String]) -> Vec<nenya::model::Tool> { Vec::new() }
    /// #     fn call(&self, _: &str, _: serde_json::Value) -> nenya::layers::mcp::ToolCall { Box::pin(async { Err("none".into()) }) }
    /// # }
    /// let layer = nenya::layers::mcp::McpLayer::new(Arc::new(None_), Default::default())
    ///     .keep_alive(std::time::Duration::from_secs(2));
    /// # drop(layer);
    /// ```
    pub fn keep_alive(mut self, every: Duration) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.keep_alive = every.max(Duration::from_millis(10));
        }
        self
    }
}

impl<S> Layer<S> for McpLayer {
    type Service = Mcp<S>;
    fn layer(&self, inner: S) -> Mcp<S> {
        Mcp {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Runs the tool loop for agents with tools; passes everything else on.
#[derive(Clone)]
pub struct Mcp<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Mcp<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mcp")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type LoopFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>>;

impl<S> Service<Request<ChatRequest>> for Mcp<S>
where
    S: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ChatRequest>) -> Self::Future {
        let Some(agent) = self.shared.agents.get(&req.body().model) else {
            return ResponseFuture {
                state: State::Pass {
                    fut: self.inner.call(req),
                },
            };
        };
        // A token count (`/v1/messages/count_tokens`) counts the tools the request would
        // carry, and runs none.
        if req
            .extensions()
            .get::<crate::model::CountTokens>()
            .is_some()
        {
            let mut req = req;
            let tools = self.shared.host.tools(&agent.servers);
            req.body_mut()
                .tools
                .get_or_insert_with(Vec::new)
                .extend(tools);
            return ResponseFuture {
                state: State::Pass {
                    fut: self.inner.call(req),
                },
            };
        }
        // The ready service goes into the loop; a clone stays for the next call.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        let run = Run {
            shared: self.shared.clone(),
            agent: agent.clone(),
        };
        ResponseFuture {
            state: State::Loop {
                fut: Box::pin(run.start(svc, req)),
            },
        }
    }
}

pin_project! {
    /// Response future of [`Mcp`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Pass { #[pin] fut: F },
        Loop { fut: LoopFuture },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = Result<Response<Body>, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Pass { fut } => fut.poll(cx),
            StateProj::Loop { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// Largest answer the loop reads whole.
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// The routed stack each round goes to (the bounds of [`Mcp`]'s inner service).
trait Routed:
    Service<Request<ChatRequest>, Response = Response<Body>, Error = Error, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> Routed for S where
    S: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// One request's tool loop.
struct Run {
    shared: Arc<Shared>,
    agent: AgentTools,
}

/// What the loop ends with: an answer for the client, or an upstream response (an error, or
/// an answer nenya could not read) to pass on as it is.
enum Outcome {
    Answer(Box<ChatResponse>, http::HeaderMap, u32),
    Upstream(Response<Body>),
}

impl Run {
    async fn start<S: Routed>(
        self,
        svc: S,
        req: Request<ChatRequest>,
    ) -> Result<Response<Body>, Error> {
        let (parts, mut chat) = req.into_parts();
        let tools = self.shared.host.tools(&self.agent.servers);
        let names: Vec<String> = tools.iter().filter_map(tool_name).collect();
        chat.tools
            .get_or_insert_with(Vec::new)
            .extend(tools.iter().cloned());
        self.auto_search(&mut chat, &tools).await;
        let format = chat.source;
        let stream = chat.stream;
        let include_usage = chat
            .extra
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        chat.stream = false;
        chat.extra.remove("stream_options");
        let save = self.resolve(&self.agent.auto_save, &tools, &["add", "save"]);
        let template = Template::new(parts);
        if !stream {
            let out = self.rounds(svc, &template, chat, &names, None).await?;
            return Ok(self.finish_plain(out, format, save, &tools));
        }
        // A streaming client hears from us at once and stays alive while the loop runs.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let keep_alive = self.shared.keep_alive;
        tokio::spawn(async move {
            let progress = tx.clone();
            let rounds = self.rounds(svc, &template, chat, &names, Some(&progress));
            tokio::pin!(rounds);
            let mut tick = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
            let out = loop {
                tokio::select! {
                    out = &mut rounds => break out,
                    _ = tick.tick() => {
                        if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                            return; // the client left: stop the loop
                        }
                    }
                }
            };
            let frames = match out {
                Ok(Outcome::Answer(answer, _, _)) => {
                    self.auto_save(save, &answer, &tools);
                    crate::adapters::stream::response_frames(*answer, format, include_usage)
                }
                Ok(Outcome::Upstream(resp)) => vec![upstream_error_event(resp, format).await],
                Err(e) => vec![crate::error::sse_error_event(format, e.kind(), e.message())],
            };
            for f in frames {
                if tx.send(f).await.is_err() {
                    return;
                }
            }
        });
        let mut resp = Response::new(Body::new(ChannelBody { rx }));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(resp)
    }

    /// The tool rounds; progress comments go to `progress` (a streaming client).
    async fn rounds<S: Routed>(
        &self,
        mut svc: S,
        template: &Template,
        mut chat: ChatRequest,
        names: &[String],
        progress: Option<&tokio::sync::mpsc::Sender<Bytes>>,
    ) -> Result<Outcome, Error> {
        let deadline = Instant::now() + self.agent.time_budget;
        let format = chat.source;
        let mut round = 0u32;
        loop {
            let resp = svc
                .ready()
                .await?
                .call(template.request(chat.clone()))
                .await?;
            if !resp.status().is_success() {
                return Ok(Outcome::Upstream(resp));
            }
            let (parts, body) = resp.into_parts();
            let bytes = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::UpstreamProtocol,
                        format!("reading the upstream answer failed: {e}"),
                    )
                })?
                .to_bytes();
            let Ok(mut answer) = crate::adapters::decode_response(&bytes, format) else {
                // Not an answer nenya can read: the client gets it as it came.
                return Ok(Outcome::Upstream(Response::from_parts(
                    parts,
                    Body::from(bytes),
                )));
            };
            let ours = |p: &Part| matches!(p, Part::ToolUse { name, .. } if names.contains(name));
            let calls: Vec<(String, String, String)> = answer
                .content
                .iter()
                .filter(|p| ours(p))
                .filter_map(|p| match p {
                    Part::ToolUse {
                        id,
                        name,
                        arguments,
                        ..
                    } => Some((id.clone(), name.clone(), arguments.clone())),
                    _ => None,
                })
                .collect();
            let theirs = answer
                .content
                .iter()
                .any(|p| matches!(p, Part::ToolUse { .. }) && !ours(p));
            let out_of_budget = round >= self.agent.max_iterations || Instant::now() >= deadline;
            if calls.is_empty() || theirs || out_of_budget {
                if !calls.is_empty() {
                    if out_of_budget && !theirs {
                        tracing::warn!(
                            agent = %template.agent(&chat),
                            rounds = round,
                            "MCP tool loop stopped at its round or time limit"
                        );
                    }
                    answer.content.retain(|p| !ours(p));
                    if !theirs {
                        answer.stop_reason = Some(StopReason::EndTurn);
                    }
                }
                return Ok(Outcome::Answer(Box::new(answer), parts.headers, round));
            }
            round += 1;
            if let Some(tx) = progress {
                let list: Vec<&str> = calls.iter().map(|c| c.1.as_str()).collect();
                let note = format!(": mcp round {round}: calling {}\n\n", list.join(", "));
                let _ = tx.try_send(Bytes::from(note));
            }
            let results = self.run_calls(calls, deadline).await;
            chat.messages.push(Message {
                role: Role::Assistant,
                content: Content::Parts(answer.content),
                extra: Default::default(),
            });
            chat.messages.push(Message {
                role: Role::Tool,
                content: Content::Parts(results),
                extra: Default::default(),
            });
        }
    }

    /// Runs the calls in parallel, each bounded by its server's timeout and the loop's time.
    async fn run_calls(
        &self,
        calls: Vec<(String, String, String)>,
        deadline: Instant,
    ) -> Vec<Part> {
        let mut set = tokio::task::JoinSet::new();
        for (i, (id, name, args)) in calls.into_iter().enumerate() {
            let args: Value = if args.trim().is_empty() {
                json!({})
            } else {
                match serde_json::from_str(&args) {
                    Ok(v) => v,
                    Err(e) => {
                        let msg = format!("the arguments are not valid JSON: {e}");
                        set.spawn(async move { (i, id, Err(msg)) });
                        continue;
                    }
                }
            };
            let call = self.shared.host.call(&name, args);
            set.spawn(async move {
                let out = match tokio::time::timeout_at(deadline, call).await {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "`{name}` did not finish within the tool loop's time"
                    )),
                };
                (i, id, out)
            });
        }
        let mut done = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                done.push(r);
            }
        }
        done.sort_by_key(|r| r.0);
        done.into_iter()
            .map(|(_, id, out)| {
                let (text, failed) = match out {
                    Ok(t) => (t, None),
                    Err(e) => (format!("error: {e}"), Some(true)),
                };
                Part::ToolResult {
                    tool_use_id: id,
                    content: Content::Text(text),
                    is_error: failed,
                    extra: Default::default(),
                }
            })
            .collect()
    }

    fn finish_plain(
        &self,
        out: Outcome,
        format: ApiFormat,
        save: Option<String>,
        tools: &[Tool],
    ) -> Response<Body> {
        match out {
            Outcome::Upstream(resp) => resp,
            Outcome::Answer(answer, mut headers, rounds) => {
                self.auto_save(save, &answer, tools);
                headers.remove(header::CONTENT_LENGTH);
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert("x-nenya-mcp-rounds", HeaderValue::from(rounds));
                let mut resp = Response::new(Body::from(crate::adapters::encode_response(
                    *answer, format,
                )));
                *resp.headers_mut() = headers;
                *resp.status_mut() = StatusCode::OK;
                resp
            }
        }
    }

    /// The tool `setting` names among `tools` (`""`: the first containing one of `hints`).
    fn resolve(&self, setting: &Option<String>, tools: &[Tool], hints: &[&str]) -> Option<String> {
        let setting = setting.as_deref()?;
        let names: Vec<String> = tools.iter().filter_map(tool_name).collect();
        let short = |n: &str| n.split_once("__").map_or(n, |(_, t)| t).to_owned();
        if !setting.is_empty() {
            return names
                .into_iter()
                .find(|n| n == setting || short(n) == setting);
        }
        hints
            .iter()
            .find_map(|h| names.iter().find(|n| short(n).contains(h)).cloned())
    }

    async fn auto_search(&self, chat: &mut ChatRequest, tools: &[Tool]) {
        let Some(tool) = self.resolve(&self.agent.auto_search, tools, &["search"]) else {
            return;
        };
        let Some(query) = chat
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.text())
            .filter(|q| !q.trim().is_empty())
        else {
            return;
        };
        let call = self
            .shared
            .host
            .call(&tool, json!({"query": query, "limit": 5}));
        match tokio::time::timeout(self.agent.time_budget, call).await {
            Ok(Ok(found)) if !found.trim().is_empty() => {
                let at = chat
                    .messages
                    .iter()
                    .take_while(|m| m.role.is_system())
                    .count();
                let text = format!("Relevant context found by `{tool}` for this request:\n{found}");
                chat.messages.insert(at, Message::text(Role::System, text));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(tool = %tool, error = %e, "MCP auto-search failed"),
            Err(_) => tracing::warn!(tool = %tool, "MCP auto-search timed out"),
        }
    }

    /// Stores the answer's text with the save tool, in the background, best effort.
    fn auto_save(&self, save: Option<String>, answer: &ChatResponse, tools: &[Tool]) {
        let Some(tool) = save else { return };
        let text: String = answer
            .content
            .iter()
            .filter_map(|p| match p {
                Part::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        if text.trim().is_empty() {
            return;
        }
        let schema = tools.iter().find_map(|t| match t {
            Tool::Function {
                name, parameters, ..
            } if *name == tool => Some(parameters),
            _ => None,
        });
        let args = save_arguments(schema, &self.agent.servers.join(","), &text);
        let call = self.shared.host.call(&tool, args);
        tokio::spawn(async move {
            if let Err(e) = call.await {
                tracing::warn!(tool = %tool, error = %e, "MCP auto-save failed");
            }
        });
    }
}

/// Arguments for a save tool: the knowledge-graph shape when its schema takes `entities`
/// (the reference memory server), else Nenya's drawer convention.
fn save_arguments(schema: Option<&Value>, agent: &str, text: &str) -> Value {
    let takes = |field: &str| {
        schema
            .and_then(|s| s.pointer(&format!("/properties/{field}")))
            .is_some()
    };
    if takes("entities") {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        json!({"entities": [{"name": format!("nenya answer {stamp}"), "entityType": "answer",
            "observations": [text]}]})
    } else {
        json!({"wing": agent, "room": "conversation", "content": text, "added_by": "nenya"})
    }
}

fn tool_name(t: &Tool) -> Option<String> {
    match t {
        Tool::Function { name, .. } => Some(name.clone()),
        Tool::Other(_) => None,
    }
}

/// The client's request line, headers and extensions, to send each round with.
struct Template {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

impl Template {
    fn new(parts: http::request::Parts) -> Self {
        Self {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            extensions: parts.extensions,
        }
    }

    fn request(&self, chat: ChatRequest) -> Request<ChatRequest> {
        let mut r = Request::new(chat);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        *r.extensions_mut() = self.extensions.clone();
        r
    }

    fn agent<'a>(&self, chat: &'a ChatRequest) -> &'a str {
        &chat.model
    }
}

/// An upstream refusal as the client's stream error event.
async fn upstream_error_event(resp: Response<Body>, format: ApiFormat) -> Bytes {
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("the upstream answered {status}"));
    let kind = match status.as_u16() {
        429 => ErrorKind::RateLimited,
        400..=499 => ErrorKind::InvalidRequest,
        _ => ErrorKind::UpstreamUnreachable,
    };
    crate::error::sse_error_event(format, kind, &message)
}

/// A body fed by a channel: the loop's keep-alives, then the answer.
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
