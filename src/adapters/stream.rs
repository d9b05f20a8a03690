//! Streaming conversion as incremental state machines: an upstream decoder turns SSE events
//! into neutral [`StreamEvent`]s, a client encoder turns those into the client's SSE, one event
//! per frame.
//!
//! ```
//! use nenya::adapters::stream::StreamConverter;
//! use nenya::model::ApiFormat;
//! use nenya::sse::Event;
//! let mut c = StreamConverter::new(ApiFormat::OpenAi, ApiFormat::Anthropic, false);
//! let mut out = Vec::new();
//! let ev = |d: &str| Event { data: d.to_owned(), ..Event::default() };
//! c.push(ev(r#"{"id":"x","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}"#), &mut out).unwrap();
//! c.push(ev(r#"{"id":"x","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#), &mut out).unwrap();
//! c.push(ev("[DONE]"), &mut out).unwrap();
//! let text: String = out.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
//! assert!(text.starts_with("event: message_start\n"));
//! assert!(text.contains(r#""stop_reason":"end_turn""#));
//! assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
//! ```

use bytes::Bytes;
use serde_json::{Value, json};

use super::{anthropic, gemini, openai};
use crate::error::{Error, ErrorKind, error_json};
use crate::model::{
    ApiFormat, BlockStart, ChatResponse, Delta, JsonMap, Part, StopReason, StreamEvent, Usage,
};
use crate::sse::{self, Event};

fn protocol(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::UpstreamProtocol, msg.into())
}

/// Converts an upstream event stream into the client's format.
#[derive(Debug)]
pub struct StreamConverter {
    decoder: Decoder,
    encoder: Encoder,
    events: Vec<StreamEvent>,
}

impl StreamConverter {
    /// From upstream format `from` to client format `to`; `include_usage` says whether an
    /// OpenAI client asked for the usage chunk.
    pub fn new(from: ApiFormat, to: ApiFormat, include_usage: bool) -> Self {
        let decoder = match from {
            ApiFormat::Anthropic => Decoder::Anthropic(AnthropicDecoder::default()),
            ApiFormat::Gemini => Decoder::Gemini(GeminiDecoder::default()),
            ApiFormat::OpenAi => Decoder::OpenAi(OpenAiDecoder::default()),
        };
        let encoder = match to {
            ApiFormat::Anthropic => Encoder::Anthropic(AnthropicEncoder::default()),
            _ => Encoder::OpenAi(OpenAiEncoder {
                include_usage,
                ..OpenAiEncoder::default()
            }),
        };
        Self {
            decoder,
            encoder,
            events: Vec::new(),
        }
    }

    /// Converts one upstream event, appending client frames to `out`.
    pub fn push(&mut self, ev: Event, out: &mut Vec<Bytes>) -> Result<(), Error> {
        match &mut self.decoder {
            Decoder::OpenAi(d) => d.push(&ev, &mut self.events)?,
            Decoder::Anthropic(d) => d.push(&ev, &mut self.events)?,
            Decoder::Gemini(d) => d.push(&ev, &mut self.events)?,
        }
        self.flush(out);
        Ok(())
    }

    /// The upstream stream ended; completes the client stream or reports truncation.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<(), Error> {
        let res = match &mut self.decoder {
            Decoder::OpenAi(d) => d.finish(&mut self.events),
            Decoder::Anthropic(d) => d.finish(),
            Decoder::Gemini(d) => d.finish(&mut self.events),
        };
        self.flush(out);
        res
    }

    /// Whether the client stream is complete.
    pub fn is_done(&self) -> bool {
        match &self.encoder {
            Encoder::OpenAi(e) => e.done,
            Encoder::Anthropic(e) => e.done,
        }
    }

    /// A client-format error event that ends the stream.
    pub fn error_event(&mut self, kind: ErrorKind, message: &str) -> Bytes {
        let fmt = match &mut self.encoder {
            Encoder::OpenAi(e) => {
                e.done = true;
                ApiFormat::OpenAi
            }
            Encoder::Anthropic(e) => {
                e.done = true;
                ApiFormat::Anthropic
            }
        };
        crate::error::sse_error_event(fmt, kind, message)
    }

    fn flush(&mut self, out: &mut Vec<Bytes>) {
        for ev in self.events.drain(..) {
            match &mut self.encoder {
                Encoder::OpenAi(e) => e.encode(ev, out),
                Encoder::Anthropic(e) => e.encode(ev, out),
            }
        }
    }
}

/// A complete answer as the client's stream: the frames a streamed answer with the same
/// content would have had, ending the way a finished stream ends. For answers nenya has to
/// see whole before it may send them (an MCP tool loop).
///
/// ```
/// use nenya::adapters::stream::response_frames;
/// use nenya::model::{ApiFormat, ChatResponse, Part, StopReason, Usage};
/// let resp = ChatResponse { id: "x".into(), model: "m".into(), content: vec![Part::text("hi")],
///     stop_reason: Some(StopReason::EndTurn), stop_sequence: None, usage: Usage::default(),
///     extra: Default::default() };
/// let text: String = response_frames(resp, ApiFormat::OpenAi, false).iter()
///     .map(|b| String::from_utf8_lossy(b).into_owned()).collect();
/// assert!(text.contains(r#""content":"hi""#) && text.ends_with("data: [DONE]\n\n"));
/// ```
pub fn response_frames(resp: ChatResponse, to: ApiFormat, include_usage: bool) -> Vec<Bytes> {
    let mut encoder = match to {
        ApiFormat::Anthropic => Encoder::Anthropic(AnthropicEncoder::default()),
        _ => Encoder::OpenAi(OpenAiEncoder {
            include_usage,
            ..OpenAiEncoder::default()
        }),
    };
    let start_usage = Usage {
        output: 0,
        reasoning: 0,
        ..resp.usage
    };
    let mut events = vec![StreamEvent::MessageStart {
        id: resp.id,
        model: resp.model,
        usage: start_usage,
    }];
    let mut index = 0;
    for part in resp.content {
        let (block, deltas) = match part {
            Part::Text { text, .. } => (BlockStart::Text, vec![Delta::Text(text)]),
            Part::Thinking {
                thinking,
                signature,
                ..
            } => {
                let mut d = vec![Delta::Thinking(thinking)];
                d.extend(signature.map(Delta::Signature));
                (BlockStart::Thinking, d)
            }
            Part::ToolUse {
                id,
                name,
                arguments,
                ..
            } => (
                BlockStart::ToolUse { id, name },
                vec![Delta::ToolArgs(arguments)],
            ),
            Part::Other(v) => (BlockStart::Other(v), Vec::new()),
            // Answers carry no images or tool results.
            Part::Image { .. } | Part::ToolResult { .. } => continue,
        };
        events.push(StreamEvent::BlockStart { index, block });
        events.extend(
            deltas
                .into_iter()
                .map(|delta| StreamEvent::BlockDelta { index, delta }),
        );
        events.push(StreamEvent::BlockStop { index });
        index += 1;
    }
    events.push(StreamEvent::MessageDelta {
        stop_reason: resp.stop_reason,
        usage: resp.usage,
    });
    events.push(StreamEvent::MessageStop);
    let mut out = Vec::new();
    for ev in events {
        match &mut encoder {
            Encoder::OpenAi(e) => e.encode(ev, &mut out),
            Encoder::Anthropic(e) => e.encode(ev, &mut out),
        }
    }
    out
}

#[derive(Debug)]
enum Decoder {
    OpenAi(OpenAiDecoder),
    Anthropic(AnthropicDecoder),
    Gemini(GeminiDecoder),
}

/// Gemini `GenerateContentResponse` chunks → neutral events. Function calls arrive whole.
#[derive(Debug, Default)]
struct GeminiDecoder {
    started: bool,
    open: Option<(usize, Open)>,
    next: usize,
    calls: usize,
    stop: Option<String>,
    usage: Usage,
    finished: bool,
}

impl GeminiDecoder {
    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    fn push(&mut self, ev: &Event, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        if ev.data.trim().is_empty() || self.finished {
            return Ok(());
        }
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| protocol(format!("upstream sent an invalid stream event: {e}")))?;
        if let Some(err) = v.get("error") {
            self.finished = true;
            out.push(StreamEvent::Error {
                kind: err
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("api_error")
                    .to_owned(),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error")
                    .to_owned(),
            });
            return Ok(());
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::MessageStart {
                id: v
                    .get("responseId")
                    .and_then(Value::as_str)
                    .unwrap_or("gemini")
                    .to_owned(),
                model: v
                    .get("modelVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                usage: Usage::default(),
            });
        }
        if let Some(u) = v.get("usageMetadata") {
            self.usage = gemini::decode_usage(u);
        }
        let cand = v.pointer("/candidates/0");
        let parts = cand
            .and_then(|c| c.pointer("/content/parts"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for p in gemini::decode_parts(parts, &mut self.calls) {
            match p {
                crate::model::Part::Text { text, .. }
                | crate::model::Part::Thinking { thinking: text, .. }
                    if text.is_empty() => {}
                crate::model::Part::Text { text, .. } => {
                    let index = self.ensure(Open::Text, out);
                    out.push(StreamEvent::BlockDelta {
                        index,
                        delta: Delta::Text(text),
                    });
                }
                crate::model::Part::Thinking { thinking, .. } => {
                    let index = self.ensure(Open::Thinking, out);
                    out.push(StreamEvent::BlockDelta {
                        index,
                        delta: Delta::Thinking(thinking),
                    });
                }
                crate::model::Part::ToolUse {
                    id,
                    name,
                    arguments,
                    ..
                } => {
                    self.close(out);
                    let index = self.next;
                    self.next += 1;
                    out.push(StreamEvent::BlockStart {
                        index,
                        block: BlockStart::ToolUse { id, name },
                    });
                    out.push(StreamEvent::BlockDelta {
                        index,
                        delta: Delta::ToolArgs(arguments),
                    });
                    out.push(StreamEvent::BlockStop { index });
                }
                _ => {}
            }
        }
        if let Some(r) = cand
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
        {
            self.stop = Some(r.to_owned());
        }
        Ok(())
    }

    fn ensure(&mut self, kind: Open, out: &mut Vec<StreamEvent>) -> usize {
        if let Some((i, k)) = self.open
            && k == kind
        {
            return i;
        }
        self.close(out);
        let index = self.next;
        self.next += 1;
        let block = if kind == Open::Text {
            BlockStart::Text
        } else {
            BlockStart::Thinking
        };
        out.push(StreamEvent::BlockStart { index, block });
        self.open = Some((index, kind));
        index
    }

    /// Gemini streams end without a terminal event: the finish reason completes them.
    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        if self.finished {
            return Ok(());
        }
        let Some(stop) = self.stop.take() else {
            return Err(protocol(
                "the upstream stream ended before the answer was complete",
            ));
        };
        self.close(out);
        out.push(StreamEvent::MessageDelta {
            stop_reason: Some(gemini::stop_reason(&stop, self.calls > 0)),
            usage: self.usage,
        });
        out.push(StreamEvent::MessageStop);
        self.finished = true;
        Ok(())
    }
}

#[derive(Debug)]
enum Encoder {
    OpenAi(OpenAiEncoder),
    Anthropic(AnthropicEncoder),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    Tool,
}

/// OpenAI `chat.completion.chunk`s → neutral events.
#[derive(Debug, Default)]
struct OpenAiDecoder {
    started: bool,
    open: Option<(usize, Open)>,
    /// (OpenAI tool-call index, block index).
    tools: Vec<(u64, usize)>,
    next: usize,
    stop: Option<StopReason>,
    usage: Usage,
    finished: bool,
}

impl OpenAiDecoder {
    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    fn ensure(&mut self, kind: Open, out: &mut Vec<StreamEvent>) -> usize {
        if let Some((i, k)) = self.open
            && k == kind
        {
            return i;
        }
        self.close(out);
        let index = self.next;
        self.next += 1;
        out.push(StreamEvent::BlockStart {
            index,
            block: if kind == Open::Text {
                BlockStart::Text
            } else {
                BlockStart::Thinking
            },
        });
        self.open = Some((index, kind));
        index
    }

    fn complete(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        self.close(out);
        out.push(StreamEvent::MessageDelta {
            stop_reason: Some(self.stop.clone().unwrap_or(StopReason::EndTurn)),
            usage: self.usage,
        });
        out.push(StreamEvent::MessageStop);
        self.finished = true;
    }

    fn push(&mut self, ev: &Event, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.complete(out);
            return Ok(());
        }
        if data.is_empty() || self.finished {
            return Ok(());
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| protocol(format!("upstream sent an invalid stream event: {e}")))?;
        if let Some(err) = v.get("error") {
            out.push(StreamEvent::Error {
                kind: err
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("api_error")
                    .to_owned(),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error")
                    .to_owned(),
            });
            self.finished = true;
            return Ok(());
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::MessageStart {
                id: v
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                model: v
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                usage: Usage::default(),
            });
        }
        if let Some(u) = v.get("usage").and_then(Value::as_object) {
            self.usage = openai::decode_usage(u);
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            return Ok(());
        };
        if let Some(delta) = choice.get("delta") {
            for key in ["reasoning_content", "reasoning"] {
                if let Some(t) = delta
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    let index = self.ensure(Open::Thinking, out);
                    out.push(StreamEvent::BlockDelta {
                        index,
                        delta: Delta::Thinking(t.to_owned()),
                    });
                    break;
                }
            }
            if let Some(t) = delta
                .get("content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                let index = self.ensure(Open::Text, out);
                out.push(StreamEvent::BlockDelta {
                    index,
                    delta: Delta::Text(t.to_owned()),
                });
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for (pos, c) in calls.iter().enumerate() {
                    let tidx = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
                    let f = c.get("function");
                    let block = match self.tools.iter().find(|(t, _)| *t == tidx) {
                        Some((_, b)) => *b,
                        None => {
                            self.close(out);
                            let index = self.next;
                            self.next += 1;
                            out.push(StreamEvent::BlockStart {
                                index,
                                block: BlockStart::ToolUse {
                                    id: c
                                        .get("id")
                                        .and_then(Value::as_str)
                                        .unwrap_or_default()
                                        .to_owned(),
                                    name: f
                                        .and_then(|f| f.get("name"))
                                        .and_then(Value::as_str)
                                        .unwrap_or_default()
                                        .to_owned(),
                                },
                            });
                            self.tools.push((tidx, index));
                            self.open = Some((index, Open::Tool));
                            index
                        }
                    };
                    if let Some(a) = f
                        .and_then(|f| f.get("arguments"))
                        .and_then(Value::as_str)
                        .filter(|a| !a.is_empty())
                    {
                        out.push(StreamEvent::BlockDelta {
                            index: block,
                            delta: Delta::ToolArgs(a.to_owned()),
                        });
                    }
                }
            }
        }
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = Some(StopReason::from_openai(r));
            self.close(out);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        if self.finished {
            return Ok(());
        }
        if self.stop.is_some() {
            // Some providers omit `[DONE]`; a finish reason is enough to complete.
            self.complete(out);
            return Ok(());
        }
        Err(protocol(
            "the upstream stream ended before the answer was complete",
        ))
    }
}

/// Anthropic events → neutral events.
#[derive(Debug, Default)]
struct AnthropicDecoder {
    start_usage: Usage,
    finished: bool,
}

impl AnthropicDecoder {
    fn push(&mut self, ev: &Event, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        if ev.data.trim().is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| protocol(format!("upstream sent an invalid stream event: {e}")))?;
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        match v.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                let m = v.get("message");
                if let Some(u) = m.and_then(|m| m.get("usage")).and_then(Value::as_object) {
                    self.start_usage = anthropic::decode_usage(u);
                }
                out.push(StreamEvent::MessageStart {
                    id: s(m.and_then(|m| m.get("id"))),
                    model: s(m.and_then(|m| m.get("model"))),
                    usage: self.start_usage,
                });
            }
            "content_block_start" => {
                let b = v.get("content_block").cloned().unwrap_or(Value::Null);
                let (block, initial) = match b.get("type").and_then(Value::as_str) {
                    Some("text") => (
                        BlockStart::Text,
                        b.get("text")
                            .and_then(Value::as_str)
                            .map(|t| Delta::Text(t.to_owned())),
                    ),
                    Some("thinking") => (
                        BlockStart::Thinking,
                        b.get("thinking")
                            .and_then(Value::as_str)
                            .map(|t| Delta::Thinking(t.to_owned())),
                    ),
                    Some("tool_use") => (
                        BlockStart::ToolUse {
                            id: s(b.get("id")),
                            name: s(b.get("name")),
                        },
                        None,
                    ),
                    _ => (BlockStart::Other(b), None),
                };
                out.push(StreamEvent::BlockStart { index, block });
                if let Some(d) = initial
                    .filter(|d| !matches!(d, Delta::Text(t) | Delta::Thinking(t) if t.is_empty()))
                {
                    out.push(StreamEvent::BlockDelta { index, delta: d });
                }
            }
            "content_block_delta" => {
                let d = v.get("delta");
                let delta = match d.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => Delta::Text(s(d.and_then(|d| d.get("text")))),
                    Some("thinking_delta") => Delta::Thinking(s(d.and_then(|d| d.get("thinking")))),
                    Some("signature_delta") => {
                        Delta::Signature(s(d.and_then(|d| d.get("signature"))))
                    }
                    Some("input_json_delta") => {
                        Delta::ToolArgs(s(d.and_then(|d| d.get("partial_json"))))
                    }
                    _ => return Ok(()),
                };
                out.push(StreamEvent::BlockDelta { index, delta });
            }
            "content_block_stop" => out.push(StreamEvent::BlockStop { index }),
            "message_delta" => {
                let mut usage = self.start_usage;
                if let Some(u) = v.get("usage").and_then(Value::as_object) {
                    let d = anthropic::decode_usage(u);
                    usage.output = d.output;
                    if u.contains_key("input_tokens") {
                        usage.input = d.input;
                    }
                    if u.contains_key("cache_read_input_tokens") {
                        usage.cache_read = d.cache_read;
                    }
                    if u.contains_key("cache_creation_input_tokens") {
                        usage.cache_write = d.cache_write;
                    }
                }
                out.push(StreamEvent::MessageDelta {
                    stop_reason: v
                        .pointer("/delta/stop_reason")
                        .and_then(Value::as_str)
                        .map(StopReason::from_anthropic),
                    usage,
                });
            }
            "message_stop" => {
                self.finished = true;
                out.push(StreamEvent::MessageStop);
            }
            "ping" => out.push(StreamEvent::Ping),
            "error" => {
                self.finished = true;
                out.push(StreamEvent::Error {
                    kind: s(v.pointer("/error/type")),
                    message: s(v.pointer("/error/message")),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), Error> {
        if self.finished {
            Ok(())
        } else {
            Err(protocol(
                "the upstream stream ended before the answer was complete",
            ))
        }
    }
}

/// Neutral events → OpenAI chunks.
#[derive(Debug, Default)]
struct OpenAiEncoder {
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    /// (block index, tool-call index).
    tools: Vec<(usize, usize)>,
    usage: Usage,
    done: bool,
}

impl OpenAiEncoder {
    fn chunk(&self, delta: Value, finish: Value) -> Bytes {
        let v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        sse::encode(None, &v.to_string())
    }

    fn encode(&mut self, ev: StreamEvent, out: &mut Vec<Bytes>) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::MessageStart { id, model, .. } => {
                self.id = openai::openai_id(&id);
                self.model = model;
                self.created = openai::now_secs();
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
            }
            StreamEvent::BlockStart {
                index,
                block: BlockStart::ToolUse { id, name },
            } => {
                let t = self.tools.len();
                self.tools.push((index, t));
                out.push(self.chunk(
                    json!({"tool_calls": [{"index": t, "id": id, "type": "function",
                                           "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                ));
            }
            StreamEvent::BlockDelta { index, delta } => {
                let d = match delta {
                    Delta::Text(t) => json!({"content": t}),
                    Delta::Thinking(t) => json!({"reasoning_content": t}),
                    Delta::ToolArgs(a) => {
                        let Some((_, t)) = self.tools.iter().find(|(b, _)| *b == index) else {
                            return;
                        };
                        json!({"tool_calls": [{"index": t, "function": {"arguments": a}}]})
                    }
                    Delta::Signature(_) => return,
                };
                out.push(self.chunk(d, Value::Null));
            }
            StreamEvent::MessageDelta { stop_reason, usage } => {
                self.usage = usage;
                let r = stop_reason.unwrap_or(StopReason::EndTurn);
                out.push(self.chunk(json!({}), Value::String(r.to_openai().to_owned())));
            }
            StreamEvent::MessageStop => {
                if self.include_usage {
                    let v = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": openai::encode_usage(&self.usage),
                    });
                    out.push(sse::encode(None, &v.to_string()));
                }
                out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                self.done = true;
            }
            StreamEvent::Error { kind, message } => {
                self.done = true;
                out.push(upstream_error_event(ApiFormat::OpenAi, &kind, &message));
            }
            StreamEvent::BlockStart { .. } | StreamEvent::BlockStop { .. } | StreamEvent::Ping => {}
        }
    }
}

/// An upstream's mid-stream error, in the client's format.
fn upstream_error_event(fmt: ApiFormat, kind: &str, message: &str) -> Bytes {
    let mut v: Value =
        serde_json::from_slice(&error_json(fmt, ErrorKind::UpstreamProtocol, message))
            .unwrap_or(Value::Null);
    if let Some(e) = v.get_mut("error").and_then(Value::as_object_mut) {
        e.insert("error_kind".into(), "upstream_error".into());
        if !kind.is_empty() {
            e.insert("type".into(), kind.into());
        }
        if fmt == ApiFormat::OpenAi {
            e.insert("code".into(), "upstream_error".into());
        }
    }
    let name = (fmt == ApiFormat::Anthropic).then_some("error");
    sse::encode(name, &v.to_string())
}

/// Neutral events → Anthropic events.
#[derive(Debug, Default)]
struct AnthropicEncoder {
    started: bool,
    open: Vec<usize>,
    done: bool,
}

impl AnthropicEncoder {
    fn event(out: &mut Vec<Bytes>, name: &str, v: Value) {
        out.push(sse::encode(Some(name), &v.to_string()));
    }

    fn encode(&mut self, ev: StreamEvent, out: &mut Vec<Bytes>) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::MessageStart { id, model, usage } => {
                self.started = true;
                Self::event(
                    out,
                    "message_start",
                    json!({"type": "message_start", "message": {
                    "id": anthropic::anthropic_id(&id), "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": anthropic::encode_usage(&usage)}}),
                );
            }
            StreamEvent::BlockStart { index, block } => {
                let b = match block {
                    BlockStart::Text => json!({"type": "text", "text": ""}),
                    BlockStart::Thinking => {
                        json!({"type": "thinking", "thinking": "", "signature": ""})
                    }
                    BlockStart::ToolUse { id, name } => {
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}})
                    }
                    BlockStart::Other(v) => v,
                };
                self.open.push(index);
                Self::event(
                    out,
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": b}),
                );
            }
            StreamEvent::BlockDelta { index, delta } => {
                let d = match delta {
                    Delta::Text(t) => json!({"type": "text_delta", "text": t}),
                    Delta::Thinking(t) => json!({"type": "thinking_delta", "thinking": t}),
                    Delta::Signature(s) => json!({"type": "signature_delta", "signature": s}),
                    Delta::ToolArgs(a) => json!({"type": "input_json_delta", "partial_json": a}),
                };
                Self::event(
                    out,
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": d}),
                );
            }
            StreamEvent::BlockStop { index } => {
                self.open.retain(|i| *i != index);
                Self::event(
                    out,
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                );
            }
            StreamEvent::MessageDelta { stop_reason, usage } => {
                for index in std::mem::take(&mut self.open) {
                    Self::event(
                        out,
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": index}),
                    );
                }
                let mut u = JsonMap::new();
                u.insert("input_tokens".into(), usage.input.into());
                u.insert("output_tokens".into(), usage.output.into());
                u.insert("cache_read_input_tokens".into(), usage.cache_read.into());
                u.insert(
                    "cache_creation_input_tokens".into(),
                    usage.cache_write.into(),
                );
                Self::event(
                    out,
                    "message_delta",
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason.as_ref().map(StopReason::to_anthropic), "stop_sequence": null},
                    "usage": Value::Object(u)}),
                );
            }
            StreamEvent::MessageStop => {
                Self::event(out, "message_stop", json!({"type": "message_stop"}));
                self.done = true;
            }
            StreamEvent::Ping => Self::event(out, "ping", json!({"type": "ping"})),
            StreamEvent::Error { kind, message } => {
                self.done = true;
                out.push(upstream_error_event(ApiFormat::Anthropic, &kind, &message));
            }
        }
    }
}
