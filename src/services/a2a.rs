//! Google A2A over JSON-RPC (`POST /v1/a2a`, `POST /v1/a2a/{agent}`), mapped onto an agent.
//!
//! `message/send` and `message/stream` carry a user [`Message`](https://a2a-protocol.org) of
//! text parts. nenya turns it into an OpenAI chat request for the agent (named by the path, by
//! `params.metadata.agent`, or the only agent configured) and sends it through the whole chat
//! pipeline (auth scopes, redaction, routing, failover, limits, usage). `message/send` answers
//! a JSON-RPC result that is an agent message; `message/stream` answers SSE where every event is
//! a JSON-RPC response: a `task` (state `working`), `artifact-update` events with the text as it
//! arrives, then a final `status-update` (`completed`, or `failed` with the error's message).
//! Protocol errors are JSON-RPC errors (`-32700` parse, `-32600` invalid request, `-32601`
//! unknown method, `-32602` invalid params) with nenya's `error_kind` in `data`.
//!
//! ```
//! use nenya::services::a2a::to_chat;
//! let rpc = br#"{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":
//!   {"kind":"message","role":"user","messageId":"m1","parts":[{"kind":"text","text":"hi"}]}}}"#;
//! let call = to_chat(rpc, Some("build"), &[]).unwrap();
//! assert!(!call.stream);
//! assert_eq!(call.chat["model"], "build");
//! assert_eq!(call.chat["messages"][0]["content"], "hi");
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use serde_json::{Value, json};

use crate::sse::Decoder;
use crate::{Body, BoxError};

/// A JSON-RPC error, answered with HTTP 200 as JSON-RPC does.
///
/// ```
/// let e = nenya::services::a2a::RpcError { code: -32601, message: "no".into(), kind: "not_found" };
/// assert!(e.body(&serde_json::Value::Null).contains("-32601"));
/// ```
#[derive(Debug, Clone)]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i64,
    /// What went wrong.
    pub message: String,
    /// nenya's `error_kind`.
    pub kind: &'static str,
}

impl RpcError {
    fn new(code: i64, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            kind,
        }
    }

    /// The JSON-RPC error response for request `id`.
    pub fn body(&self, id: &Value) -> String {
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": self.code,
            "message": self.message, "data": {"error_kind": self.kind}}})
        .to_string()
    }
}

/// A `message/send` or `message/stream` call as a chat request.
#[derive(Debug, Clone)]
pub struct ChatCall {
    /// The JSON-RPC id.
    pub id: Value,
    /// `message/stream`.
    pub stream: bool,
    /// The OpenAI chat request body.
    pub chat: Value,
    /// The A2A context id (the client's, or a new one).
    pub context_id: String,
}

fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos:x}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Parses a JSON-RPC call; `agent` is the path's agent, `agents` the configured ones (the only
/// one is the default).
pub fn to_chat(
    body: &[u8],
    agent: Option<&str>,
    agents: &[&str],
) -> Result<ChatCall, (Value, RpcError)> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        (
            Value::Null,
            RpcError::new(-32700, "invalid_json", format!("parse error: {e}")),
        )
    })?;
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let fail = |code, kind, msg: &str| Err((id.clone(), RpcError::new(code, kind, msg)));
    if v.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return fail(-32600, "invalid_request", "not a JSON-RPC 2.0 request");
    }
    let stream = match v.get("method").and_then(Value::as_str) {
        Some("message/send") => false,
        Some("message/stream") => true,
        Some(m) => {
            return Err((
                id.clone(),
                RpcError::new(
                    -32601,
                    "not_found",
                    format!("method `{m}` is not supported"),
                ),
            ));
        }
        None => return fail(-32600, "invalid_request", "no method"),
    };
    let params = &v["params"];
    let message = &params["message"];
    let Some(parts) = message.get("parts").and_then(Value::as_array) else {
        return fail(
            -32602,
            "invalid_request",
            "params.message.parts is required",
        );
    };
    let text: Vec<&str> = parts
        .iter()
        .filter(|p| {
            p.get("kind")
                .and_then(Value::as_str)
                .is_none_or(|k| k == "text")
        })
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    if text.is_empty() {
        return fail(-32602, "invalid_request", "the message has no text part");
    }
    let named = agent
        .map(str::to_owned)
        .or_else(|| {
            params["metadata"]["agent"]
                .as_str()
                .or(message["metadata"]["agent"].as_str())
                .map(str::to_owned)
        })
        .or_else(|| (agents.len() == 1).then(|| agents[0].to_owned()));
    let Some(model) = named else {
        return fail(
            -32602,
            "invalid_request",
            "name the agent: POST /v1/a2a/{agent}, or params.metadata.agent",
        );
    };
    let context_id = message["contextId"]
        .as_str()
        .map_or_else(|| new_id("ctx"), str::to_owned);
    let mut chat =
        json!({"model": model, "messages": [{"role": "user", "content": text.join("\n")}]});
    if stream {
        chat["stream"] = true.into();
    }
    Ok(ChatCall {
        id,
        stream,
        chat,
        context_id,
    })
}

/// The `message/send` result for an OpenAI chat answer (or the JSON-RPC error for an error
/// answer).
pub fn send_result(call: &ChatCall, status: u16, answer: &[u8]) -> String {
    let v: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        let message = v["error"]["message"].as_str().unwrap_or("the agent failed");
        let kind = v["error"]["error_kind"]
            .as_str()
            .unwrap_or("upstream_error");
        return json!({"jsonrpc": "2.0", "id": call.id, "error": {"code": -32603,
            "message": message, "data": {"error_kind": kind, "status": status}}})
        .to_string();
    }
    let text = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
    json!({"jsonrpc": "2.0", "id": call.id, "result": {"kind": "message", "role": "agent",
        "messageId": new_id("msg"), "contextId": call.context_id,
        "parts": [{"kind": "text", "text": text}]}})
    .to_string()
}

/// An OpenAI chat stream re-told as A2A `message/stream` events.
pub struct A2aStream {
    inner: Body,
    decoder: Decoder,
    id: Value,
    task: String,
    context: String,
    artifact: String,
    started: bool,
    done: bool,
    out: std::collections::VecDeque<Bytes>,
}

impl A2aStream {
    /// Wraps the chat stream `inner` for `call`.
    pub fn new(inner: Body, call: &ChatCall) -> Self {
        Self {
            inner,
            decoder: Decoder::new(1 << 20),
            id: call.id.clone(),
            task: new_id("task"),
            context: call.context_id.clone(),
            artifact: new_id("artifact"),
            started: false,
            done: false,
            out: std::collections::VecDeque::new(),
        }
    }

    fn push(&mut self, result: Value) {
        let v = json!({"jsonrpc": "2.0", "id": self.id, "result": result});
        self.out.push_back(Bytes::from(format!("data: {v}\n\n")));
    }

    fn start(&mut self) {
        if !self.started {
            self.started = true;
            let task = json!({"kind": "task", "id": self.task, "contextId": self.context,
                "status": {"state": "working"}});
            self.push(task);
        }
    }

    fn finish(&mut self, failed: Option<String>) {
        if self.done {
            return;
        }
        self.start();
        self.done = true;
        let status = match failed {
            None => json!({"state": "completed"}),
            Some(m) => json!({"state": "failed", "message": {"kind": "message", "role": "agent",
                "messageId": new_id("msg"), "parts": [{"kind": "text", "text": m}]}}),
        };
        let ev = json!({"kind": "status-update", "taskId": self.task, "contextId": self.context,
            "status": status, "final": true});
        self.push(ev);
    }

    fn event(&mut self, data: &str) {
        if data == "[DONE]" {
            self.finish(None);
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(e) = v.get("error") {
            let m = e["message"]
                .as_str()
                .unwrap_or("the agent failed")
                .to_owned();
            self.finish(Some(m));
            return;
        }
        let delta = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
        self.start();
        if !delta.is_empty() {
            let ev = json!({"kind": "artifact-update", "taskId": self.task, "contextId": self.context,
                "artifact": {"artifactId": self.artifact, "parts": [{"kind": "text", "text": delta}]},
                "append": true, "lastChunk": false});
            self.push(ev);
        }
    }
}

impl http_body::Body for A2aStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let mut events = Vec::new();
                        let this = &mut *self;
                        if this.decoder.feed(&data, |e| events.push(e.data)).is_err() {
                            this.finish(Some("the agent's stream broke".into()));
                        }
                        for e in events {
                            self.event(&e);
                        }
                    }
                }
                Poll::Ready(Some(Err(_))) => self.finish(Some("the agent's stream broke".into())),
                // Ended without `[DONE]`: say so rather than claim completion.
                Poll::Ready(None) => self.finish(Some("the agent's stream ended early".into())),
            }
        }
    }
}
