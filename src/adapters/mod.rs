//! Wire formats: decoding client bodies into the [`ChatRequest`] and
//! encoding it for an upstream, plus the built-in provider and model tables.
//!
//! Decoding parses the JSON once into a tree and *moves* its strings into the typed model; no
//! text is copied. `extra` fields are emitted only toward an upstream of the same format as the
//! client (they are in the client's vocabulary); a few well-known fields are mapped across.
//!
//! ```
//! use nenya::adapters::{decode_request, encode_request};
//! use nenya::model::ApiFormat;
//! let body = br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
//! let req = decode_request(ApiFormat::Anthropic, body).unwrap();
//! let out = encode_request(req, ApiFormat::Anthropic).unwrap();
//! let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
//! assert_eq!(v, serde_json::from_slice::<serde_json::Value>(body).unwrap());
//! ```

pub mod anthropic;
pub mod gemini;
mod json_in;
mod json_out;
pub mod openai;
pub mod providers;
pub(crate) mod splice;
pub mod stream;

use bytes::Bytes;
use serde_json::Value;

use crate::error::{Error, ErrorKind};
use crate::model::{ApiFormat, ChatFields, ChatRequest, ChatResponse, JsonMap};
use providers::{Capabilities, Quirks};

/// Parses a client body of `format` into the typed request (with no client body kept: see
/// [`decode_client_body`]).
pub fn decode_request(format: ApiFormat, body: &[u8]) -> Result<ChatRequest, Error> {
    decode_fields(format, body).map(|(fields, _)| ChatRequest::new(fields))
}

/// [`decode_request`] for a body the gateway received: the request keeps `body` (see
/// [`ChatRequest::client_body`]) when an upstream of the same format would read it exactly as
/// the decoded fields say: no key appears twice in an object (upstreams differ in which of two
/// they keep, and a redaction layer must see what the upstream will read), and the decoder
/// normalised nothing.
///
/// ```
/// use nenya::adapters::decode_client_body;
/// use nenya::model::ApiFormat;
/// let plain = decode_client_body(ApiFormat::OpenAi,
///     r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.into()).unwrap();
/// assert!(plain.client_body().is_some());
/// // A key given twice: the request is encoded again, from what nenya read.
/// let twice = decode_client_body(ApiFormat::OpenAi,
///     r#"{"model":"m","messages":[{"role":"user","content":"a","content":"b"}]}"#.into()).unwrap();
/// assert!(twice.client_body().is_none());
/// assert_eq!(twice.messages[0].content.text(), "b");
/// ```
pub fn decode_client_body(format: ApiFormat, body: Bytes) -> Result<ChatRequest, Error> {
    let (fields, as_sent) = decode_fields(format, &body)?;
    Ok(if as_sent {
        ChatRequest::with_client_body(fields, body)
    } else {
        ChatRequest::new(fields)
    })
}

/// The fields, and whether the body says exactly what they say (see [`decode_client_body`]).
fn decode_fields(format: ApiFormat, body: &[u8]) -> Result<(ChatFields, bool), Error> {
    if format == ApiFormat::OpenAi
        && let Some(read) = json_in::parse_openai(body)
    {
        let mut as_sent = !read.repeated;
        let fields = openai::decode_read(read.map, read.model, read.messages, &mut as_sent);
        #[cfg(fuzzing)]
        fuzz_check_read(body, &fields, as_sent);
        return fields.map(|f| (f, as_sent));
    }
    // An OpenAI body `parse_openai` declined was declined by the fast path already (or names
    // `model` or `messages` twice, which is rare): serde_json reads it, not the fast path again.
    let parsed = match format {
        ApiFormat::OpenAi => json_in::slow(body),
        _ => json_in::parse(body),
    };
    let (value, repeated) = parsed.map_err(|e| {
        Error::new(
            ErrorKind::InvalidJson,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(map) = value else {
        return Err(invalid("request body must be a JSON object"));
    };
    match format {
        ApiFormat::OpenAi => {
            let mut as_sent = !repeated;
            let fields = openai::decode_request(map, &mut as_sent)?;
            Ok((fields, as_sent))
        }
        ApiFormat::Anthropic => {
            let mut as_sent = !repeated;
            let fields = anthropic::decode_request(map, &mut as_sent)?;
            Ok((fields, as_sent))
        }
        ApiFormat::Gemini => Err(Error::new(
            ErrorKind::UnsupportedConversion,
            "the Gemini ingress is not implemented",
        )),
    }
}

/// Under the fuzzer: what [`json_in::parse_openai`] and the typed messages gave is what the
/// whole tree gives, errors included.
#[cfg(fuzzing)]
fn fuzz_check_read(body: &[u8], fields: &Result<ChatFields, Error>, as_sent: bool) {
    let (value, repeated) = json_in::parse(body).expect("parse_openai took a body parse refuses");
    let Value::Object(map) = value else {
        panic!("parse_openai took a body that is not an object");
    };
    let mut tree_as_sent = !repeated;
    let tree = openai::decode_request(map, &mut tree_as_sent);
    match (fields, &tree) {
        (Ok(a), Ok(b)) => {
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            assert_eq!(as_sent, tree_as_sent);
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("parse_openai and the tree disagree: {fields:?} against {tree:?}"),
    }
}

/// Serialises the typed request into the `target` wire format.
pub fn encode_request(req: ChatRequest, target: ApiFormat) -> Result<Bytes, Error> {
    encode_request_for(req, target, &Capabilities::ALL, &Quirks::NONE)
}

/// Serialises the typed request for a provider: the `target` wire format, then the provider's
/// capabilities, quirks and model-family rules applied as generic rules.
///
/// ```
/// use nenya::adapters::{decode_request, encode_request_for, providers::builtin_provider};
/// use nenya::model::ApiFormat;
/// let req = decode_request(ApiFormat::OpenAi, br#"{"model":"sonar","stream":true,
///   "stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}],
///   "tools":[{"type":"function","function":{"name":"f","parameters":{}}}]}"#).unwrap();
/// let pplx = builtin_provider("perplexity").unwrap();
/// let out = encode_request_for(req, ApiFormat::OpenAi, &pplx.caps, &pplx.quirks).unwrap();
/// let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
/// assert!(v.get("tools").is_none() && v.get("stream_options").is_none());
/// ```
pub fn encode_request_for(
    req: ChatRequest,
    target: ApiFormat,
    caps: &Capabilities,
    quirks: &Quirks,
) -> Result<Bytes, Error> {
    encode_request_cached(req, target, caps, quirks, None)
}

/// [`encode_request_for`], placing prompt-cache breakpoints on an Anthropic-format request
/// when the client set none (other formats cache prefixes without markers).
///
/// ```
/// use nenya::adapters::{decode_request, encode_request_cached, providers::{Capabilities, Quirks}};
/// use nenya::model::{ApiFormat, CacheBreakpoints};
/// let req = decode_request(ApiFormat::OpenAi, br#"{"model":"m","messages":[
///   {"role":"system","content":"You are terse."},{"role":"user","content":"hi"}]}"#).unwrap();
/// let bp = CacheBreakpoints { system: true, ..Default::default() };
/// let out = encode_request_cached(req, ApiFormat::Anthropic, &Capabilities::ALL, &Quirks::NONE, Some(&bp)).unwrap();
/// let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
/// assert_eq!(v["system"][0]["cache_control"]["type"], "ephemeral");
/// ```
pub fn encode_request_cached(
    req: ChatRequest,
    target: ApiFormat,
    caps: &Capabilities,
    quirks: &Quirks,
    breakpoints: Option<&crate::model::CacheBreakpoints>,
) -> Result<Bytes, Error> {
    let req = req.into_fields();
    let mut map = match target {
        ApiFormat::OpenAi => openai::encode_request(req),
        ApiFormat::Anthropic => anthropic::encode_request(req),
        ApiFormat::Gemini => gemini::encode_request(req),
    };
    if let (ApiFormat::Anthropic, Some(bp)) = (target, breakpoints) {
        anthropic::place_breakpoints(&mut map, bp);
    }
    for f in quirks.strip_fields {
        map.shift_remove(*f);
    }
    if target == ApiFormat::OpenAi {
        apply_openai_rules(&mut map, caps);
    }
    // Room for an ordinary request up front: the writer's doubling from empty was five
    // reallocations and copies of the growing body.
    let mut out = Vec::with_capacity(1024);
    json_out::write_value(&mut out, &Value::Object(map));
    Ok(Bytes::from(out))
}

/// The client's own body, with `model` written in place of the model it named, when that is
/// exactly what [`encode_request_cached`] would send (up to key order and spacing): the
/// request still holds its client body ([`ChatRequest::client_body`]: decoded with nothing
/// normalised, no key twice, and no layer has had mutable access since), the upstream speaks
/// the client's format, and no capability, quirk, model-family rule or cache breakpoint of the
/// provider applies to it. `None` otherwise: the caller encodes the request.
///
/// Forwarding the body as it came skips building and writing the whole request again: for a
/// coding agent's 100 KB conversation that is most of what the gateway does to it.
///
/// ```
/// use nenya::adapters::{decode_client_body, forward_as_sent, providers::{Capabilities, Quirks}};
/// use nenya::model::ApiFormat;
/// let req = decode_client_body(ApiFormat::OpenAi,
///     r#"{"model": "coder", "messages": [{"role": "user", "content": "hi"}]}"#.into()).unwrap();
/// let out = forward_as_sent(&req, ApiFormat::OpenAi, "llama-3.3", &Capabilities::ALL, &Quirks::NONE, None);
/// assert_eq!(out.unwrap(), r#"{"model": "llama-3.3", "messages": [{"role": "user", "content": "hi"}]}"#);
/// // Toward an Anthropic upstream the request is converted, so it is encoded.
/// assert!(forward_as_sent(&req, ApiFormat::Anthropic, "c", &Capabilities::ALL, &Quirks::NONE, None).is_none());
/// ```
pub fn forward_as_sent(
    req: &ChatRequest,
    target: ApiFormat,
    model: &str,
    caps: &Capabilities,
    quirks: &Quirks,
    breakpoints: Option<&crate::model::CacheBreakpoints>,
) -> Option<Bytes> {
    let [head, name, tail] = forward_as_sent_chunks(req, target, model, caps, quirks, breakpoints)?;
    if name.is_empty() && tail.is_empty() {
        return Some(head);
    }
    let mut out = Vec::with_capacity(head.len() + name.len() + tail.len());
    for c in [head, name, tail] {
        out.extend_from_slice(&c);
    }
    Some(Bytes::from(out))
}

/// [`forward_as_sent`] in three pieces, not joined: the client's bytes up to the value of
/// `model`, the new value, and the client's bytes after it (the first alone, the others
/// empty, when the model is the one the client named). The first and last share the client's
/// buffer, so a large body is sent as it came without being copied ([`crate::Body::chunks`]).
///
/// ```
/// use nenya::adapters::{decode_client_body, forward_as_sent_chunks, providers::{Capabilities, Quirks}};
/// use nenya::model::ApiFormat;
/// let req = decode_client_body(ApiFormat::OpenAi,
///     r#"{"model": "coder", "messages": []}"#.into()).unwrap();
/// let [head, name, tail] = forward_as_sent_chunks(&req, ApiFormat::OpenAi, "m", &Capabilities::ALL, &Quirks::NONE, None).unwrap();
/// assert_eq!((&head[..], &name[..], &tail[..]), (&br#"{"model": "#[..], &br#""m""#[..], &br#", "messages": []}"#[..]));
/// ```
pub fn forward_as_sent_chunks(
    req: &ChatRequest,
    target: ApiFormat,
    model: &str,
    caps: &Capabilities,
    quirks: &Quirks,
    breakpoints: Option<&crate::model::CacheBreakpoints>,
) -> Option<[Bytes; 3]> {
    let raw = req.client_body()?;
    if req.source != target || !quirks.strip_fields.is_empty() {
        return None;
    }
    match target {
        ApiFormat::OpenAi => {
            // What `apply_openai_rules` would change sends the request the long way: a field
            // a missing capability removes, content written as an array toward a provider
            // without images or content arrays, a field a model-family rule drops or renames.
            let has = |k: &str| req.extra.contains_key(k);
            let changed = (!caps.stream_options && has("stream_options"))
                || (!caps.reasoning && has("reasoning_effort"))
                || (!caps.tool_calls
                    && (req.tools.is_some()
                        || req.tool_choice.is_some()
                        || has("parallel_tool_calls")))
                || (!caps.auto_tool_choice && req.tool_choice.is_some())
                || ((!caps.vision || !caps.content_arrays)
                    && req.messages.iter().any(openai::may_write_array))
                || providers::param_rule(model).is_some_and(|rule| {
                    rule.drop.iter().any(|f| has(f))
                        || (rule.max_completion_tokens
                            && (has("max_tokens")
                                || (req.max_tokens.is_some() && !req.shape.max_completion_tokens)))
                });
            if changed {
                return None;
            }
        }
        // Breakpoints are placed only when the client set none.
        ApiFormat::Anthropic
            if breakpoints.is_some_and(|b| b.any()) && !anthropic::client_marked(req) =>
        {
            return None;
        }
        ApiFormat::Anthropic => {}
        ApiFormat::Gemini => return None,
    }
    // The decoder parsed the whole body and found no key twice: the first `model` is the one.
    let found = crate::sse::first_top_level_field(raw, b"model")?;
    let start = found.as_ptr() as usize - raw.as_ptr() as usize;
    let end = start + found.len();
    let mut quoted = Vec::with_capacity(model.len() + 2);
    json_out::write_str(&mut quoted, model);
    if found == quoted.as_slice() {
        return Some([raw.clone(), Bytes::new(), Bytes::new()]);
    }
    Some([raw.slice(..start), Bytes::from(quoted), raw.slice(end..)])
}

/// Converts a complete (non-streamed) upstream answer from `from` into the client's `to` format.
///
/// ```
/// use nenya::adapters::convert_response;
/// use nenya::model::ApiFormat;
/// let anthropic = br#"{"id":"msg_1","type":"message","role":"assistant","model":"c",
///   "content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}"#;
/// let out = convert_response(anthropic, ApiFormat::Anthropic, ApiFormat::OpenAi).unwrap();
/// let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
/// assert_eq!(v["choices"][0]["message"]["content"], "hi");
/// assert_eq!(v["choices"][0]["finish_reason"], "stop");
/// assert_eq!(v["usage"]["prompt_tokens"], 3);
/// ```
pub fn convert_response(body: &[u8], from: ApiFormat, to: ApiFormat) -> Result<Bytes, Error> {
    Ok(encode_response(decode_response(body, from)?, to))
}

/// Decodes a complete answer in `format` (an upstream's, or one already converted for the
/// client).
///
/// ```
/// use nenya::model::{ApiFormat, Part};
/// let r = nenya::adapters::decode_response(br#"{"id":"x","model":"m","choices":[{"index":0,
///   "message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#, ApiFormat::OpenAi).unwrap();
/// assert_eq!(r.content, vec![Part::text("hi")]);
/// ```
pub fn decode_response(body: &[u8], format: ApiFormat) -> Result<ChatResponse, Error> {
    let bad = |e: String| {
        Error::new(
            ErrorKind::UpstreamProtocol,
            format!("the upstream answer is not valid: {e}"),
        )
    };
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let Value::Object(map) = v else {
        return Err(bad("not a JSON object".into()));
    };
    match format {
        ApiFormat::Anthropic => anthropic::decode_response(map),
        ApiFormat::Gemini => gemini::decode_response(map),
        ApiFormat::OpenAi => openai::decode_response(map),
    }
    .map_err(|e| bad(e.message().to_owned()))
}

/// Encodes a complete answer for a client of `format` (OpenAI or Anthropic).
///
/// ```
/// use nenya::model::ApiFormat;
/// let r = nenya::adapters::decode_response(br#"{"id":"x","type":"message","role":"assistant","model":"m",
///   "content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}"#,
///   ApiFormat::Anthropic).unwrap();
/// let out = nenya::adapters::encode_response(r, ApiFormat::OpenAi);
/// assert!(std::str::from_utf8(&out).unwrap().contains(r#""finish_reason":"stop""#));
/// ```
pub fn encode_response(resp: ChatResponse, format: ApiFormat) -> Bytes {
    let out = match format {
        ApiFormat::Anthropic => anthropic::encode_response(resp),
        _ => openai::encode_response(resp),
    };
    Bytes::from(out.to_string())
}

/// Re-renders an upstream's error body (any format) in the client's format, keeping its message.
pub fn convert_error(body: &[u8], to: ApiFormat) -> Bytes {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .pointer("/error/message")
        .or_else(|| v.pointer("/message"))
        .or_else(|| v.get(0).and_then(|e| e.pointer("/error/message")))
        .and_then(Value::as_str)
        .unwrap_or("the upstream returned an error");
    let mut out: Value = serde_json::from_slice(&crate::error::error_json(
        to,
        ErrorKind::UpstreamProtocol,
        message,
    ))
    .unwrap_or(Value::Null);
    if let Some(e) = out.get_mut("error").and_then(Value::as_object_mut) {
        e.insert("error_kind".into(), "upstream_error".into());
        if to == ApiFormat::OpenAi {
            e.insert("code".into(), "upstream_error".into());
        }
        if let Some(t) = v.pointer("/error/type").and_then(Value::as_str) {
            e.insert("type".into(), t.into());
        }
    }
    Bytes::from(out.to_string())
}

/// Capability and model-family rules for an OpenAI-format request object.
fn apply_openai_rules(map: &mut JsonMap, caps: &Capabilities) {
    if !caps.stream_options {
        map.shift_remove("stream_options");
    }
    if !caps.reasoning {
        map.shift_remove("reasoning_effort");
    }
    if !caps.tool_calls {
        for f in ["tools", "tool_choice", "parallel_tool_calls"] {
            map.shift_remove(f);
        }
    } else if !caps.auto_tool_choice
        && map.get("tool_choice").and_then(Value::as_str) == Some("auto")
    {
        map.shift_remove("tool_choice");
    }
    if (!caps.vision || !caps.content_arrays)
        && let Some(Value::Array(messages)) = map.get_mut("messages")
    {
        let mut dropped_images = 0usize;
        for m in messages.iter_mut() {
            let Some(Value::Array(parts)) = m.get_mut("content") else {
                continue;
            };
            if !caps.vision {
                let before = parts.len();
                parts.retain(|p| p.get("type").and_then(Value::as_str) != Some("image_url"));
                dropped_images += before - parts.len();
            }
            if !caps.content_arrays
                && parts
                    .iter()
                    .all(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            {
                let text: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                let joined = text.join("\n");
                m["content"] = Value::String(joined);
            }
        }
        if dropped_images > 0 {
            tracing::warn!(
                dropped_images,
                "the upstream does not accept images; they were removed"
            );
        }
    }
    let model = map
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(rule) = providers::param_rule(&model) {
        for f in rule.drop {
            map.shift_remove(*f);
        }
        if rule.max_completion_tokens
            && let Some(n) = map.shift_remove("max_tokens")
        {
            map.insert("max_completion_tokens".into(), n);
        }
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidRequest, msg.into())
}

/// Where a value sits in the request, for error messages: written out only when an error
/// names it (a request's messages are decoded without formatting a path for each).
#[derive(Debug, Clone, Copy)]
pub(crate) enum At<'a> {
    /// The top-level object.
    Root,
    /// `messages[i]`.
    Message(usize),
    /// Any other path, already written.
    Path(&'a str),
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Root => Ok(()),
            Self::Message(i) => write!(f, "messages[{i}]"),
            Self::Path(p) => f.write_str(p),
        }
    }
}

/// Whether any of `keys` is `null` in `map`: one pass over the members (a request has few),
/// not a hashed lookup per key.
pub(crate) fn null_among(map: &JsonMap, keys: &[&str]) -> bool {
    map.iter()
        .any(|(k, v)| v.is_null() && keys.contains(&k.as_str()))
}

/// Field access on a JSON object that moves values out and names the field on type errors.
pub(crate) struct Fields<'a> {
    pub(crate) map: &'a mut JsonMap,
    pub(crate) at: At<'a>,
}

impl Fields<'_> {
    fn path(&self, key: &str) -> String {
        match self.at {
            At::Root => key.to_owned(),
            at => format!("{at}.{key}"),
        }
    }

    pub(crate) fn take(&mut self, key: &str) -> Option<Value> {
        match self.map.shift_remove(key) {
            Some(Value::Null) | None => None,
            Some(v) => Some(v),
        }
    }

    pub(crate) fn string(&mut self, key: &str) -> Result<Option<String>, Error> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(format!("`{}` must be a string", self.path(key)))),
        }
    }

    pub(crate) fn req_string(&mut self, key: &str) -> Result<String, Error> {
        self.string(key)?
            .ok_or_else(|| invalid(format!("`{}` is required", self.path(key))))
    }

    pub(crate) fn bool(&mut self, key: &str) -> Result<Option<bool>, Error> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(invalid(format!("`{}` must be a boolean", self.path(key)))),
        }
    }

    pub(crate) fn u64(&mut self, key: &str) -> Result<Option<u64>, Error> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(_) => Err(invalid(format!(
                "`{}` must be a non-negative integer",
                self.path(key)
            ))),
        }
    }

    pub(crate) fn array(&mut self, key: &str) -> Result<Option<Vec<Value>>, Error> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(invalid(format!("`{}` must be an array", self.path(key)))),
        }
    }

    pub(crate) fn object(&mut self, key: &str) -> Result<Option<JsonMap>, Error> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(invalid(format!("`{}` must be an object", self.path(key)))),
        }
    }

    /// Stop sequences: a string or an array of strings.
    pub(crate) fn stop(&mut self, key: &str) -> Result<Option<(Vec<String>, bool)>, Error> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some((vec![s], true))),
            Some(Value::Array(a)) => {
                let mut out = Vec::with_capacity(a.len());
                for v in a {
                    match v {
                        Value::String(s) => out.push(s),
                        _ => {
                            return Err(invalid(format!(
                                "`{}` must contain only strings",
                                self.path(key)
                            )));
                        }
                    }
                }
                Ok(Some((out, false)))
            }
            Some(_) => Err(invalid(format!(
                "`{}` must be a string or an array of strings",
                self.path(key)
            ))),
        }
    }
}

/// Unwraps an array element that must be an object.
pub(crate) fn as_object(v: Value, at: At<'_>) -> Result<JsonMap, Error> {
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(invalid(format!("`{at}` must be an object"))),
    }
}

/// Sampling fields that mean the same in OpenAI and Anthropic and so cross formats unchanged.
pub(crate) const SHARED_SAMPLING_FIELDS: &[&str] = &["temperature", "top_p"];

/// Copies the shared fields of a foreign-format `extra` into `out`, and logs (at debug) the
/// fields that have no equivalent in the target format and are dropped.
pub(crate) fn copy_shared(extra: &JsonMap, out: &mut JsonMap, mapped: &[&str]) {
    for k in SHARED_SAMPLING_FIELDS {
        if let Some(v) = extra.get(*k) {
            out.insert((*k).to_owned(), v.clone());
        }
    }
    let dropped: Vec<&str> = extra
        .keys()
        .map(String::as_str)
        .filter(|k| !SHARED_SAMPLING_FIELDS.contains(k) && !mapped.contains(k))
        .collect();
    if !dropped.is_empty() {
        tracing::debug!(
            ?dropped,
            "fields without an equivalent in the upstream format were dropped"
        );
    }
}

/// Reasoning effort buckets and the Anthropic-style budgets they stand for.
const EFFORT_BUDGETS: &[(&str, u64)] = &[("low", 1024), ("medium", 4096), ("high", 16384)];

/// The reasoning budget (tokens) the client asked for, from either vocabulary: OpenAI
/// `reasoning_effort` or Anthropic `thinking: {type: enabled, budget_tokens}`.
pub(crate) fn reasoning_budget(source: ApiFormat, extra: &JsonMap) -> Option<u64> {
    match source {
        ApiFormat::Anthropic => {
            let t = extra.get("thinking")?;
            (t.get("type").and_then(Value::as_str) == Some("enabled")).then(|| {
                t.get("budget_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(1024)
            })
        }
        _ => {
            let e = extra.get("reasoning_effort")?.as_str()?;
            EFFORT_BUDGETS
                .iter()
                .find(|(n, _)| *n == e)
                .map(|(_, b)| *b)
        }
    }
}

/// The OpenAI `reasoning_effort` closest to a budget.
pub(crate) fn effort_for_budget(budget: u64) -> &'static str {
    match budget {
        0..=2048 => "low",
        2049..=8192 => "medium",
        _ => "high",
    }
}

/// Whether an OpenAI-format model accepts `reasoning_effort` (o-series and gpt-5 families).
pub(crate) fn accepts_reasoning_effort(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    ["o1", "o3", "o4", "gpt-5"].iter().any(|p| m.starts_with(p))
}
