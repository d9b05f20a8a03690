//! A deterministic mock upstream that speaks OpenAI and Anthropic, streams with a configurable
//! chunk count and delay, can echo and records what it received, and injects faults.
//!
//! Use it in-process as a `Service` (the binary does when nothing is configured) or as a real
//! HTTP server (`nenya mock --listen 127.0.0.1:PORT`, or [`MockProvider::serve`]).
//!
//! ```
//! use nenya::services::{MockProvider, MockConfig};
//! use tower::ServiceExt;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mock = MockProvider::new(MockConfig::default());
//! let req = http::Request::post("/v1/chat/completions")
//!     .body(nenya::Body::from(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#))
//!     .unwrap();
//! let resp = mock.clone().oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 200);
//! assert_eq!(mock.received().len(), 1);
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::Service;

use crate::model::ApiFormat;
use crate::{Body, BoxError};

/// A fault the mock injects.
///
/// ```
/// use nenya::services::Fault;
/// assert_eq!("status:503".parse::<Fault>().unwrap(), Fault::Status(503));
/// assert_eq!("drop-after:2".parse::<Fault>().unwrap(), Fault::DropAfter(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an error body in the request's format.
    Status(u16),
    /// Never send response headers.
    StallBeforeHeaders,
    /// Send this many stream events, then go silent.
    StallAfter(usize),
    /// Send this many stream events, then drop the connection.
    DropAfter(usize),
    /// Send one event, then a malformed one, then end.
    MalformedSse,
    /// Answer `200` and a stream whose first event is an error (an overloaded upstream that
    /// committed its headers first).
    ErrorEvent,
    /// Answer `400` saying the prompt exceeds the model's context window.
    ContextExceeded,
    /// Answer `200` with the stream's headers and an empty body.
    EmptyStream,
    /// Answer normally, after this many milliseconds.
    Slow(u64),
    /// Answer this status with `Retry-After: 1`.
    StatusRetryAfter(u16),
    /// After the first event, send one whose data is not valid UTF-8, then the rest.
    InvalidUtf8,
    /// After the first event, send one event of this many bytes, then the rest.
    HugeEvent(usize),
    /// Answer `200` with `text/html` and an HTML page.
    WrongContentType,
    /// Refuse (as [`Fault::ContextExceeded`], naming the limit) a request body of more than
    /// this many o200k tokens; answer the others.
    ContextLimit(usize),
    /// Answer `401` quoting the key it was sent and the start of the request body in the
    /// message, as careless providers do.
    EchoKey,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, v) = s.split_once(':').unwrap_or((s, ""));
        let n = || {
            v.parse::<usize>()
                .map_err(|_| format!("fault `{s}` needs a number"))
        };
        Ok(match k {
            "status" => Self::Status(
                v.parse()
                    .map_err(|_| format!("fault `{s}` needs a status"))?,
            ),
            "stall" => Self::StallBeforeHeaders,
            "stall-after" => Self::StallAfter(n()?),
            "drop-after" => Self::DropAfter(n()?),
            "malformed" => Self::MalformedSse,
            "error-event" => Self::ErrorEvent,
            "context-exceeded" => Self::ContextExceeded,
            "context-limit" => Self::ContextLimit(n()?),
            "empty" => Self::EmptyStream,
            "slow" => Self::Slow(n()? as u64),
            "status-retry-after" => Self::StatusRetryAfter(
                v.parse()
                    .map_err(|_| format!("fault `{s}` needs a status"))?,
            ),
            "invalid-utf8" => Self::InvalidUtf8,
            "huge-event" => Self::HugeEvent(n()?),
            "wrong-content-type" => Self::WrongContentType,
            "echo-key" => Self::EchoKey,
            _ => {
                return Err(format!(
                    "unknown fault `{s}` (status:N, stall, stall-after:N, drop-after:N, malformed, error-event, context-exceeded, context-limit:N, empty, slow:MS, status-retry-after:N, invalid-utf8, huge-event:N, wrong-content-type, echo-key)"
                ));
            }
        })
    }
}

/// How the mock behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Number of content chunks in a streamed answer (and words in a plain one).
    pub chunks: usize,
    /// Delay before each streamed event.
    pub delay: Duration,
    /// Reply with a JSON description of the request received instead of fixed text.
    pub echo: bool,
    /// A fault to inject on every request.
    pub fault: Option<Fault>,
    /// Answer with a call of this tool (name, JSON arguments) after a short text; streamed
    /// arguments arrive in `chunks` fragments.
    pub tool_call: Option<(String, String)>,
    /// With `tool_call`: once the conversation holds this many tool results (default 1), the
    /// answer is `tool said: <the last results>` instead of another call.
    pub tool_rounds: usize,
    /// Reasoning to send before the answer (Anthropic `thinking` with a signature, OpenAI
    /// `reasoning_content`).
    pub thinking: Option<String>,
    /// How long loading a model takes on the mock's Ollama API (`POST /api/generate`).
    pub load_delay: Duration,
    /// How many requests [`MockProvider::received`] (and [`MockProvider::listings`]) keep,
    /// the oldest dropped first (default 10,000). `0` keeps none: what `nenya mock` and the
    /// gateway's built-in mock use, so a long-running mock holds no memory per request.
    pub keep_received: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            chunks: 8,
            delay: Duration::ZERO,
            echo: false,
            fault: None,
            tool_call: None,
            tool_rounds: 1,
            thinking: None,
            load_delay: Duration::ZERO,
            keep_received: 10_000,
        }
    }
}

impl MockConfig {
    /// The defaults, keeping none of the requests it receives: a mock that only serves (the
    /// `nenya mock` command, the gateway's built-in mock), whose memory does not grow with
    /// the requests it has answered.
    ///
    /// ```
    /// let cfg = nenya::services::MockConfig::unrecorded();
    /// assert_eq!(cfg.keep_received, 0);
    /// assert_eq!(cfg.chunks, nenya::services::MockConfig::default().chunks);
    /// ```
    pub fn unrecorded() -> Self {
        Self {
            keep_received: 0,
            ..Self::default()
        }
    }
}

/// How many tool results the request's conversation holds, and the text of those it ends
/// with (`None` when it does not end with any).
fn tool_results(format: ApiFormat, req: &Value) -> Option<(usize, String)> {
    let text_of = |c: &Value| match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        other => other.to_string(),
    };
    let count = |list: &str, pred: &dyn Fn(&Value) -> bool| {
        req.get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|m| {
                let own = usize::from(pred(m));
                let inner = ["content", "parts"]
                    .iter()
                    .filter_map(|k| m.get(*k).and_then(Value::as_array))
                    .flatten()
                    .filter(|b| pred(b))
                    .count();
                [own, inner]
            })
            .sum::<usize>()
    };
    let total = match format {
        ApiFormat::OpenAi => count("messages", &|m| {
            m.get("role").and_then(Value::as_str) == Some("tool")
        }),
        ApiFormat::Anthropic => count("messages", &|b| {
            b.get("type").and_then(Value::as_str) == Some("tool_result")
        }),
        ApiFormat::Gemini => count("contents", &|p| p.get("functionResponse").is_some()),
    };
    let results: Vec<String> = match format {
        ApiFormat::OpenAi => {
            let msgs = req.get("messages")?.as_array()?;
            let tail: Vec<&Value> = msgs
                .iter()
                .rev()
                .take_while(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
                .collect();
            tail.iter()
                .rev()
                .map(|m| text_of(m.get("content").unwrap_or(&Value::Null)))
                .collect()
        }
        ApiFormat::Anthropic => {
            let last = req.get("messages")?.as_array()?.last()?;
            last.get("content")?
                .as_array()?
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                .map(|b| text_of(b.get("content").unwrap_or(&Value::Null)))
                .collect()
        }
        ApiFormat::Gemini => {
            let last = req.get("contents")?.as_array()?.last()?;
            last.get("parts")?
                .as_array()?
                .iter()
                .filter_map(|p| p.pointer("/functionResponse/response"))
                .map(Value::to_string)
                .collect()
        }
    };
    (!results.is_empty()).then(|| (total, results.join(" | ")))
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// Headers, exactly as received.
    pub headers: HeaderMap,
    /// Body, exactly as received.
    pub body: Bytes,
}

impl Recorded {
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The mock's Ollama API: models loaded now (in load order), and every load and unload.
type OllamaState = (Vec<String>, Vec<(String, String)>);

struct Inner {
    cfg: MockConfig,
    received: Mutex<VecDeque<Recorded>>,
    listings: Mutex<VecDeque<Recorded>>,
    /// Ollama API: models loaded now (in load order), and every load/unload in order.
    ollama: Mutex<OllamaState>,
    /// Streams being sent now, and the most seen at once.
    streaming: Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
}

/// The mock provider service. Clones share the record of received requests.
#[derive(Clone)]
pub struct MockProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockProvider")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

/// Response future of [`MockProvider`] (the mock is not on the hot path, so it is boxed).
pub type MockFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl MockProvider {
    /// A mock with this behaviour.
    pub fn new(cfg: MockConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                received: Mutex::default(),
                listings: Mutex::default(),
                ollama: Mutex::default(),
                streaming: Arc::default(),
            }),
        }
    }

    /// Everything received so far, oldest first.
    /// Streamed answers in flight now.
    pub fn streams_in_flight(&self) -> usize {
        self.inner
            .streaming
            .0
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most streamed answers that were in flight at once (a stream counts from its
    /// headers until its body ends or is dropped).
    pub fn max_concurrent_streams(&self) -> usize {
        self.inner
            .streaming
            .1
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The Ollama API calls so far, in order: (`load` or `unload`, model).
    pub fn ollama_events(&self) -> Vec<(String, String)> {
        self.inner
            .ollama
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// The `GET …/models` requests received so far (not in [`MockProvider::received`]).
    pub fn listings(&self) -> Vec<Recorded> {
        Self::kept(&self.inner.listings)
    }

    /// Every other request received so far, in order.
    pub fn received(&self) -> Vec<Recorded> {
        Self::kept(&self.inner.received)
    }

    fn kept(log: &Mutex<VecDeque<Recorded>>) -> Vec<Recorded> {
        let log = log.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().cloned().collect()
    }

    /// Keeps `record()` in `log`, dropping the oldest beyond [`MockConfig::keep_received`]
    /// (and building nothing when it is 0).
    fn keep(&self, log: &Mutex<VecDeque<Recorded>>, record: impl FnOnce() -> Recorded) {
        let keep = self.inner.cfg.keep_received;
        if keep == 0 {
            return;
        }
        let record = record();
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        while log.len() >= keep {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// Serves the mock over HTTP on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        crate::server::serve(listener, self, shutdown, Duration::from_secs(1)).await
    }

    /// The slice of Ollama's native API a local-engine manager uses: `POST /api/generate`
    /// with no prompt loads (`keep_alive` > 0, after `load_delay`) or unloads
    /// (`keep_alive: 0`) a model; `GET /api/ps` lists the loaded ones.
    async fn ollama(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<Response<Body>, BoxError> {
        if method == Method::GET && path.ends_with("/api/ps") {
            let loaded = self
                .inner
                .ollama
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .clone();
            let models: Vec<Value> = loaded
                .iter()
                .map(|m| json!({"name": m, "model": m, "size": 1, "size_vram": 1}))
                .collect();
            return Ok(json_response(StatusCode::OK, json!({"models": models})));
        }
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let Some(model) = v.get("model").and_then(Value::as_str).map(str::to_owned) else {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "model is required"}),
            ));
        };
        let unload = v.get("keep_alive").is_some_and(|k| k == 0 || k == "0");
        if !unload && !self.inner.cfg.load_delay.is_zero() {
            tokio::time::sleep(self.inner.cfg.load_delay).await;
        }
        let mut st = self
            .inner
            .ollama
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.0.retain(|m| *m != model);
        if unload {
            st.1.push(("unload".into(), model.clone()));
        } else {
            st.0.push(model.clone());
            st.1.push(("load".into(), model.clone()));
        }
        let reason = if unload { "unload" } else { "load" };
        Ok(json_response(
            StatusCode::OK,
            json!({"model": model, "response": "", "done": true, "done_reason": reason}),
        ))
    }

    async fn handle(self, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let record = || Recorded {
            method: parts.method.clone(),
            uri: parts.uri.to_string(),
            headers: parts.headers.clone(),
            body: body.clone(),
        };
        // Model-list fetches (a gateway's discovery, in the background) are kept apart, so
        // `received()` counts exactly the requests clients caused.
        let listing = parts.method == Method::GET && parts.uri.path().ends_with("/models");
        if parts.method == Method::POST && parts.uri.path().ends_with("/embeddings") {
            self.keep(&self.inner.received, record);
            return Ok(embeddings(&body));
        }
        if parts.uri.path().ends_with("/api/generate") || parts.uri.path().ends_with("/api/ps") {
            return self.ollama(&parts.method, parts.uri.path(), &body).await;
        }
        let log = if listing {
            &self.inner.listings
        } else {
            &self.inner.received
        };
        self.keep(log, record);
        let cfg = &self.inner.cfg;
        let path = parts.uri.path();
        let gemini_stream = path.ends_with(":streamGenerateContent");
        let format = if path.ends_with(":generateContent") || gemini_stream {
            Some(ApiFormat::Gemini)
        } else {
            ApiFormat::from_path(path)
        };
        if parts.method == Method::GET && path.ends_with("/models") {
            // A provider's live model list (OpenAI's shape; Anthropic's has the same `data`).
            return Ok(json_response(
                StatusCode::OK,
                json!({"object": "list", "data": [
                    {"id": "mock-live-1", "object": "model", "owned_by": "mock"},
                    {"id": "mock-live-2", "object": "model", "owned_by": "mock"}]}),
            ));
        }
        if format.is_none()
            && let Some(r) = other_endpoint(&parts.method, &parts.uri, &parts.headers, &body)
        {
            return Ok(r);
        }
        let Some(format) = format else {
            return Ok(json_response(
                StatusCode::NOT_FOUND,
                json!({"error": {"message": "mock: no such route"}}),
            ));
        };
        let Ok(req_json) = serde_json::from_slice::<Value>(&body) else {
            return Ok(error_response(format, 400, "mock: body is not JSON"));
        };
        if path.ends_with("/count_tokens") {
            return Ok(json_response(
                StatusCode::OK,
                json!({"input_tokens": body.len() / 4}),
            ));
        }
        match cfg.fault {
            Some(Fault::Status(code)) => {
                return Ok(error_response(format, code, "mock: injected failure"));
            }
            Some(Fault::ContextExceeded) => {
                return Ok(error_response(
                    format,
                    400,
                    "This model's maximum context length is 8192 tokens. However, your messages \
                     resulted in 9000 tokens (context_length_exceeded).",
                ));
            }
            Some(Fault::ContextLimit(limit)) => {
                let text = String::from_utf8_lossy(&body);
                let n = crate::tokens::TokenCounter::new(crate::tokens::Family::O200k).count(&text);
                if n > limit as u64 {
                    return Ok(error_response(
                        format,
                        400,
                        &format!(
                            "This model's maximum context length is {limit} tokens. However, your \
                             messages resulted in {n} tokens (context_length_exceeded)."
                        ),
                    ));
                }
            }
            Some(Fault::EchoKey) => {
                let key = ["authorization", "x-api-key", "api-key", "x-goog-api-key"]
                    .iter()
                    .find_map(|h| parts.headers.get(*h))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none");
                let start = String::from_utf8_lossy(&body[..body.len().min(400)]);
                return Ok(error_response(
                    format,
                    401,
                    &format!("Incorrect API key provided: {key}. Request was: {start}"),
                ));
            }
            Some(Fault::StallBeforeHeaders) => {
                std::future::pending::<()>().await;
            }
            Some(Fault::Slow(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Some(Fault::StatusRetryAfter(code)) => {
                let mut r = error_response(format, code, "mock: injected failure");
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(r);
            }
            Some(Fault::WrongContentType) => {
                let mut r =
                    Response::new(Body::from("<html><body>upstream proxy error</body></html>"));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                return Ok(r);
            }
            _ => {}
        }
        let model = match format {
            ApiFormat::Gemini => path
                .rsplit_once("/models/")
                .and_then(|(_, m)| m.split(':').next())
                .unwrap_or("mock")
                .to_owned(),
            _ => req_json
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("mock")
                .to_owned(),
        };
        let stream = gemini_stream
            || req_json
                .get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let pieces: Vec<String> = if cfg.echo {
            let headers: serde_json::Map<String, Value> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                    )
                })
                .collect();
            let echo = json!({
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "headers": headers,
                "body": req_json,
            })
            .to_string();
            split_chars(&echo, cfg.chunks.max(1))
        } else {
            (0..cfg.chunks.max(1))
                .map(|i| format!("word{i} "))
                .collect()
        };
        let prompt_tokens = (body.len() / 4) as u64;
        let completion_tokens = pieces.len() as u64;
        // A scripted tool user: it calls the tool until the conversation holds
        // `tool_rounds` results, then answers with the last ones.
        let answered = cfg
            .tool_call
            .as_ref()
            .and_then(|_| tool_results(format, &req_json))
            .filter(|(n, _)| *n >= cfg.tool_rounds.max(1))
            .map(|(_, last)| last);
        let script = Script {
            pieces: match (&answered, &cfg.tool_call) {
                (Some(result), _) => vec![format!("tool said: {result}")],
                (None, Some(_)) => vec![TOOL_PREAMBLE.to_owned()],
                (None, None) => pieces,
            },
            tool: cfg.tool_call.clone().filter(|_| answered.is_none()),
            thinking: cfg.thinking.clone(),
            chunks: cfg.chunks.max(1),
        };
        if !stream {
            let text: String = script.pieces.concat();
            let v = match format {
                ApiFormat::Gemini => {
                    gemini_answer(&model, &script, &text, prompt_tokens, completion_tokens)
                }
                ApiFormat::Anthropic => {
                    let mut content = Vec::new();
                    if let Some(t) = &script.thinking {
                        content.push(
                            json!({"type": "thinking", "thinking": t, "signature": MOCK_SIGNATURE}),
                        );
                    }
                    content.push(json!({"type": "text", "text": text}));
                    if let Some((name, args)) = &script.tool {
                        let input: Value = serde_json::from_str(args).unwrap_or(json!({}));
                        content.push(json!({"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": input}));
                    }
                    json!({
                        "id": "msg_mock",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": content,
                        "stop_reason": if script.tool.is_some() { "tool_use" } else { "end_turn" },
                        "stop_sequence": null,
                        "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
                    })
                }
                _ => json!({
                    "id": "chatcmpl-mock",
                    "object": "chat.completion",
                    "created": 1_700_000_000,
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "message": script.openai_message(&text),
                        "logprobs": null,
                        "finish_reason": if script.tool.is_some() { "tool_calls" } else { "stop" },
                    }],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }),
            };
            return Ok(json_response(StatusCode::OK, v));
        }
        let include_usage = req_json
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let events = match format {
            _ if self.inner.cfg.fault == Some(Fault::EmptyStream) => Vec::new(),
            _ if self.inner.cfg.fault == Some(Fault::ErrorEvent) => vec![error_event(format)],
            ApiFormat::Gemini => gemini_events(&model, &script, prompt_tokens),
            ApiFormat::Anthropic => anthropic_events(&model, &script, prompt_tokens),
            _ => openai_events(&model, &script, include_usage, prompt_tokens),
        };
        let mut resp = Response::new(Body::new(MockStream {
            events: events.into(),
            delay: cfg.delay,
            sleep: None,
            sent: 0,
            fault: cfg.fault.clone(),
            _live: Live::new(self.inner.streaming.clone()),
        }));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(resp)
    }
}

impl Service<Request<Body>> for MockProvider {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = MockFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> MockFuture {
        Box::pin(self.clone().handle(req))
    }
}

fn split_chars(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let per = chars.len().div_ceil(n).max(1);
    chars.chunks(per).map(|c| c.iter().collect()).collect()
}

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(format: ApiFormat, code: u16, msg: &str) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let v = match format {
        ApiFormat::Anthropic => {
            json!({"type": "error", "error": {"type": "api_error", "message": msg}})
        }
        _ => json!({"error": {"message": msg, "type": "server_error", "code": code}}),
    };
    json_response(status, v)
}

fn sse(event: Option<&str>, data: &Value) -> Bytes {
    let mut s = String::new();
    if let Some(e) = event {
        s.push_str("event: ");
        s.push_str(e);
        s.push('\n');
    }
    s.push_str("data: ");
    s.push_str(&data.to_string());
    s.push_str("\n\n");
    Bytes::from(s)
}

/// Text sent before a scripted tool call.
const TOOL_PREAMBLE: &str = "Let me check.";
/// The signature on scripted thinking.
pub const MOCK_SIGNATURE: &str = "bW9jay1zaWduYXR1cmU=";

/// What a scripted answer contains.
struct Script {
    pieces: Vec<String>,
    tool: Option<(String, String)>,
    thinking: Option<String>,
    chunks: usize,
}

impl Script {
    fn openai_message(&self, text: &str) -> Value {
        let mut m = json!({"role": "assistant", "content": text});
        if let Some(t) = &self.thinking {
            m["reasoning_content"] = json!(t);
        }
        if let Some((name, args)) = &self.tool {
            m["tool_calls"] = json!([{"id": "call_mock_1", "type": "function",
                                      "function": {"name": name, "arguments": args}}]);
        }
        m
    }

    /// The tool arguments cut into `chunks` fragments (on char boundaries).
    fn arg_fragments(&self) -> Vec<String> {
        self.tool
            .as_ref()
            .map(|(_, a)| split_chars(a, self.chunks))
            .unwrap_or_default()
    }
}

fn gemini_parts(script: &Script, text: &str) -> Vec<Value> {
    let mut parts = Vec::new();
    if let Some(t) = &script.thinking {
        parts.push(json!({"text": t, "thought": true}));
    }
    if !text.is_empty() {
        parts.push(json!({"text": text}));
    }
    if let Some((name, args)) = &script.tool {
        let args: Value = serde_json::from_str(args).unwrap_or(json!({}));
        parts.push(json!({"functionCall": {"name": name, "args": args}, "thoughtSignature": MOCK_SIGNATURE}));
    }
    parts
}

fn gemini_answer(model: &str, script: &Script, text: &str, prompt: u64, out: u64) -> Value {
    json!({
        "candidates": [{"content": {"role": "model", "parts": gemini_parts(script, text)},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": prompt + out},
        "modelVersion": model,
        "responseId": "gemini-mock",
    })
}

fn gemini_events(model: &str, script: &Script, prompt: u64) -> Vec<Bytes> {
    let chunk = |parts: Value| {
        json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
               "modelVersion": model, "responseId": "gemini-mock"})
    };
    let mut out = Vec::new();
    if let Some(t) = &script.thinking {
        out.push(sse(None, &chunk(json!([{"text": t, "thought": true}]))));
    }
    for p in &script.pieces {
        out.push(sse(None, &chunk(json!([{"text": p}]))));
    }
    if let Some((name, args)) = &script.tool {
        let args: Value = serde_json::from_str(args).unwrap_or(json!({}));
        out.push(sse(
            None,
            &chunk(json!([{"functionCall": {"name": name, "args": args},
                                          "thoughtSignature": MOCK_SIGNATURE}])),
        ));
    }
    let n = script.pieces.len() as u64 + u64::from(script.tool.is_some());
    let mut last = chunk(json!([{"text": ""}]));
    last["candidates"][0]["finishReason"] = json!("STOP");
    last["usageMetadata"] = json!({"promptTokenCount": prompt, "candidatesTokenCount": n, "totalTokenCount": prompt + n});
    out.push(sse(None, &last));
    out
}

fn openai_events(model: &str, script: &Script, include_usage: bool, prompt: u64) -> Vec<Bytes> {
    let pieces = &script.pieces;
    let chunk = |delta: Value, finish: Value| {
        sse(
            None,
            &json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            }),
        )
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if let Some(t) = &script.thinking {
        for p in split_chars(t, 2) {
            out.push(chunk(json!({"reasoning_content": p}), Value::Null));
        }
    }
    for p in pieces {
        out.push(chunk(json!({"content": p}), Value::Null));
    }
    let frags = script.arg_fragments();
    if let Some((name, _)) = &script.tool {
        out.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_mock_1", "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        for f in &frags {
            out.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}),
                Value::Null,
            ));
        }
    }
    let finish = if script.tool.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    out.push(chunk(json!({}), json!(finish)));
    if include_usage {
        let n = (pieces.len() + frags.len()) as u64;
        out.push(sse(
            None,
            &json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
            }),
        ));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn anthropic_events(model: &str, script: &Script, prompt: u64) -> Vec<Bytes> {
    let pieces = &script.pieces;
    let mut out = vec![sse(
        Some("message_start"),
        &json!({"type": "message_start", "message": {
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": prompt, "output_tokens": 1},
        }}),
    )];
    let mut index = 0;
    if let Some(t) = &script.thinking {
        out.push(sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ));
        for p in split_chars(t, 2) {
            out.push(sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": p}}),
            ));
        }
        out.push(sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": MOCK_SIGNATURE}}),
        ));
        out.push(sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    out.push(sse(
        Some("content_block_start"),
        &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
    ));
    out.push(sse(Some("ping"), &json!({"type": "ping"})));
    for p in pieces {
        out.push(sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    out.push(sse(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": index}),
    ));
    let frags = script.arg_fragments();
    if let Some((name, _)) = &script.tool {
        index += 1;
        out.push(sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {}}}),
        ));
        for f in &frags {
            out.push(sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": f}}),
            ));
        }
        out.push(sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }
    let stop = if script.tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    out.push(sse(
        Some("message_delta"),
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": pieces.len() + frags.len()}}),
    ));
    out.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
    out
}

/// An upstream's in-stream error, in its format.
fn error_event(format: ApiFormat) -> Bytes {
    match format {
        ApiFormat::Anthropic => sse(
            Some("error"),
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "mock: overloaded"}}),
        ),
        _ => sse(
            None,
            &json!({"error": {"type": "server_error", "message": "mock: overloaded", "code": 503}}),
        ),
    }
}

/// Counts a stream in flight while it lives.
struct Live(
    Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
);

impl Live {
    fn new(
        c: Arc<(
            std::sync::atomic::AtomicUsize,
            std::sync::atomic::AtomicUsize,
        )>,
    ) -> Self {
        let now = c.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        c.1.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        Self(c)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The endpoints beyond chat, as an upstream would answer them, echoing what arrived:
/// `…/redirect` answers `302` to another host; `…/audio/speech` answers 64 KiB of
/// `audio/mpeg`; a JSON body with `"stream": true` gets a three-event SSE stream; anything
/// else under `/v1/` gets a JSON echo (method, path, query, content type, body length and
/// `model`).
fn other_endpoint(
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response<Body>> {
    let path = uri.path();
    if path.ends_with("/redirect") {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::FOUND;
        r.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_static("http://evil.invalid/steal"),
        );
        return Some(r);
    }
    if !path.contains("/v1/") {
        return None;
    }
    if path.ends_with("/audio/speech") {
        let mut r = Response::new(Body::from(vec![0x49u8; 64 << 10]));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
        return Some(r);
    }
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if json["stream"] == true {
        let events: String = (0..3)
            .map(|i| {
                format!(
                    "data: {}\n\n",
                    json!({"type": "response.output_text.delta", "delta": format!("part {i}")})
                )
            })
            .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
            .collect();
        let mut r = Response::new(Body::from(events));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        return Some(r);
    }
    Some(json_response(
        StatusCode::OK,
        json!({"object": "echo", "method": method.as_str(), "path": path,
               "query": uri.query(), "bytes": body.len(), "model": json["model"],
               "content_type": headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())}),
    ))
}

/// OpenAI's `POST /v1/embeddings`, deterministic: each input becomes its lower-cased words
/// hashed into 64 buckets (a bag of words, L2-normalised), so texts sharing words are close and
/// texts sharing none are orthogonal.
fn embeddings(body: &[u8]) -> Response<Body> {
    use std::hash::{Hash, Hasher};
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let inputs: Vec<String> = match &v["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut e = [0f32; 64];
            let lower = text.to_lowercase();
            for w in lower
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                // FNV-1a: stable across runs and platforms.
                let mut h = FnvHasher(0xcbf2_9ce4_8422_2325);
                w.hash(&mut h);
                e[(h.finish() % 64) as usize] += 1.0;
            }
            let norm = e
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
                .max(f32::MIN_POSITIVE);
            let e: Vec<f32> = e.iter().map(|x| x / norm).collect();
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"object": "list", "data": data, "model": v["model"],
               "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
    )
}

struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The mock's streamed body: one event per frame, with an optional delay and fault.
struct MockStream {
    _live: Live,
    events: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sent: usize,
    fault: Option<Fault>,
}

impl http_body::Body for MockStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if matches!(this.fault, Some(Fault::StallAfter(n)) if this.sent >= n) {
            return Poll::Pending;
        }
        if this.events.is_empty() {
            return Poll::Ready(None);
        }
        // Pace before every frame, faults included, so what was sent before is flushed.
        if !this.delay.is_zero() {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        match this.fault {
            Some(Fault::DropAfter(n)) if this.sent >= n => {
                return Poll::Ready(Some(Err("mock: injected connection drop".into())));
            }
            Some(Fault::InvalidUtf8) if this.sent == 1 => {
                this.sent += 1;
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    b"data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"\xff\xfe\"}}]}\n\n",
                )))));
            }
            Some(Fault::HugeEvent(n)) if this.sent == 1 => {
                this.sent += 1;
                let mut e = Vec::with_capacity(n + 100);
                e.extend_from_slice(
                    b"data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"",
                );
                e.resize(e.len() + n, b'x');
                e.extend_from_slice(b"\"}}]}\n\n");
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(e)))));
            }
            Some(Fault::MalformedSse) if this.sent == 1 => {
                this.sent += 1;
                this.events.clear();
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    b"data: {\"choices\": [{\"delta\": {\"content\": \"tru\n\n",
                )))));
            }
            _ => {}
        }
        this.sent += 1;
        Poll::Ready(this.events.pop_front().map(|b| Ok(Frame::data(b))))
    }
}
