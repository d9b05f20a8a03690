//! Anthropic Messages wire format.

use serde_json::{Value, json};

use super::{At, Fields, as_object, copy_shared, invalid};
use crate::error::Error;
use crate::model::{
    ApiFormat, ChatFields, ChatResponse, Content, ImageSource, JsonMap, Message, Part, Role, Shape,
    StopReason, Tool, ToolChoice, Usage,
};

/// The `anthropic-version` sent when the client gave none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// `max_tokens` is mandatory for Anthropic; used when a foreign-format client set none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Fields the decoder reads and drops when they are `null` (an encoded request leaves them out).
const NULLABLE_TOP: &[&str] = &[
    "stream",
    "system",
    "tools",
    "tool_choice",
    "max_tokens",
    "stop_sequences",
];

/// Decodes an Anthropic request object. `as_sent` is cleared when the fields, encoded again,
/// would differ from the object beyond key order and spacing (see the OpenAI decoder).
pub(crate) fn decode_request(mut map: JsonMap, as_sent: &mut bool) -> Result<ChatFields, Error> {
    if *as_sent
        && (super::null_among(&map, NULLABLE_TOP)
            // A single stop sequence is written back as an array, an empty system left out.
            || map.get("stop_sequences").is_some_and(Value::is_string)
            || map
                .get("system")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty))
    {
        *as_sent = false;
    }
    let mut f = Fields {
        map: &mut map,
        at: At::Root,
    };
    let model = f.req_string("model")?;
    let stream_field = f.bool("stream")?;
    let raw_messages = f
        .array("messages")?
        .ok_or_else(|| invalid("`messages` is required"))?;
    let system = f.take("system");
    let tools = f.array("tools")?;
    let tool_choice = f.take("tool_choice");
    let max_tokens = f.u64("max_tokens")?;
    let stop = f.stop("stop_sequences")?.map(|(s, _)| s);

    let mut messages = Vec::with_capacity(raw_messages.len() + 1);
    let mut system_as_string = false;
    match system {
        None => {}
        Some(Value::String(s)) => {
            system_as_string = true;
            messages.push(Message::text(Role::System, s));
        }
        Some(Value::Array(blocks)) => messages.push(Message {
            role: Role::System,
            content: Content::Parts(
                blocks
                    .into_iter()
                    .map(|b| decode_block(b, as_sent))
                    .collect(),
            ),
            extra: JsonMap::new(),
        }),
        Some(_) => return Err(invalid("`system` must be a string or an array")),
    }
    for (i, m) in raw_messages.into_iter().enumerate() {
        let at = At::Message(i);
        let mut o = as_object(m, at)?;
        let mut mf = Fields { map: &mut o, at };
        let role = match mf.req_string("role")?.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(invalid(format!("`{at}.role` has unknown value `{other}`"))),
        };
        // No `content` (or `null`) is written back as `[]`.
        if *as_sent && mf.map.get("content").is_none_or(Value::is_null) {
            *as_sent = false;
        }
        let content = decode_content(mf.take("content"), at, as_sent)?;
        messages.push(Message {
            role,
            content,
            extra: o,
        });
    }
    let tools = tools.map(|t| t.into_iter().map(|t| decode_tool(t, as_sent)).collect());
    Ok(ChatFields {
        source: ApiFormat::Anthropic,
        model,
        stream: stream_field.unwrap_or(false),
        messages,
        tools,
        tool_choice: tool_choice.map(decode_tool_choice),
        max_tokens,
        stop,
        extra: map,
        shape: Shape {
            max_completion_tokens: false,
            stop_as_string: false,
            system_as_string,
            stream_present: stream_field.is_some(),
        },
    })
}

fn decode_content(v: Option<Value>, at: At<'_>, as_sent: &mut bool) -> Result<Content, Error> {
    match v {
        None => Ok(Content::Parts(Vec::new())),
        Some(Value::String(s)) => Ok(Content::Text(s)),
        Some(Value::Array(blocks)) => Ok(Content::Parts(
            blocks
                .into_iter()
                .map(|b| decode_block(b, as_sent))
                .collect(),
        )),
        Some(_) => Err(invalid(format!(
            "`{at}.content` must be a string or an array"
        ))),
    }
}

fn take_str(o: &mut JsonMap, key: &str) -> Option<String> {
    match o.shift_remove(key) {
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            o.insert(key.to_owned(), other);
            None
        }
        None => None,
    }
}

/// A string [`block_kind`] has checked is there.
fn take_checked(o: &mut JsonMap, key: &str) -> String {
    match o.shift_remove(key) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The kind of content block `o` is, when it has the shape nenya reads into a typed part
/// (anything else is kept verbatim as [`Part::Other`]). Checked before anything is taken out
/// of the block, so a block that does not fit is kept as it came, without a copy.
fn block_kind(o: &JsonMap) -> Option<&'static str> {
    let is_str = |m: &JsonMap, k: &str| m.get(k).is_some_and(Value::is_string);
    Some(match o.get("type")?.as_str()? {
        "text" if is_str(o, "text") => "text",
        "image" => {
            let src = o.get("source")?.as_object()?;
            match src.get("type")?.as_str()? {
                "base64" if src.len() == 3 && is_str(src, "media_type") && is_str(src, "data") => {}
                "url" if src.len() == 2 && is_str(src, "url") => {}
                _ => return None,
            }
            "image"
        }
        "tool_use" if is_str(o, "id") && is_str(o, "name") => "tool_use",
        "tool_result"
            if is_str(o, "tool_use_id")
                && o.get("content")
                    .is_none_or(|c| c.is_string() || c.is_array())
                && o.get("is_error").is_none_or(Value::is_boolean) =>
        {
            "tool_result"
        }
        "thinking" if is_str(o, "thinking") => "thinking",
        _ => return None,
    })
}

fn decode_block(v: Value, as_sent: &mut bool) -> Part {
    let Value::Object(mut o) = v else {
        return Part::Other(v);
    };
    let Some(kind) = block_kind(&o) else {
        return Part::Other(Value::Object(o));
    };
    o.shift_remove("type");
    match kind {
        "text" => Part::Text {
            text: take_checked(&mut o, "text"),
            extra: o,
        },
        "image" => {
            let Some(Value::Object(mut src)) = o.shift_remove("source") else {
                unreachable!("checked by block_kind")
            };
            let source = if src.get("type").and_then(Value::as_str) == Some("base64") {
                ImageSource::Base64 {
                    media_type: take_checked(&mut src, "media_type"),
                    data: take_checked(&mut src, "data"),
                }
            } else {
                let url = take_checked(&mut src, "url");
                // A `data:` URL is written back as a base64 source.
                if url.starts_with("data:") {
                    *as_sent = false;
                }
                ImageSource::Url(url)
            };
            Part::Image { source, extra: o }
        }
        "tool_use" => {
            let id = take_checked(&mut o, "id");
            let name = take_checked(&mut o, "name");
            let arguments = match o.shift_remove("input") {
                Some(i) => i.to_string(),
                None => {
                    *as_sent = false; // written back as `{}`
                    "{}".to_owned()
                }
            };
            Part::ToolUse {
                id,
                name,
                arguments,
                extra: o,
            }
        }
        "tool_result" => {
            let tool_use_id = take_checked(&mut o, "tool_use_id");
            let content = match o.shift_remove("content") {
                Some(Value::String(s)) => Content::Text(s),
                Some(Value::Array(b)) => {
                    Content::Parts(b.into_iter().map(|b| decode_block(b, as_sent)).collect())
                }
                _ => {
                    *as_sent = false; // written back as `[]`
                    Content::Parts(Vec::new())
                }
            };
            let is_error = o.shift_remove("is_error").and_then(|e| e.as_bool());
            Part::ToolResult {
                tool_use_id,
                content,
                is_error,
                extra: o,
            }
        }
        _ => {
            let thinking = take_checked(&mut o, "thinking");
            let signature = take_str(&mut o, "signature");
            // Thinking without a signature is not sent to Anthropic.
            if signature.as_deref().is_none_or(str::is_empty) {
                *as_sent = false;
            }
            Part::Thinking {
                thinking,
                signature,
                extra: o,
            }
        }
    }
}

fn decode_tool(v: Value, as_sent: &mut bool) -> Tool {
    let Value::Object(mut o) = v else {
        return Tool::Other(v);
    };
    // Custom tools have no `type` (or `custom`); anything else is a server tool.
    match o.get("type").and_then(Value::as_str) {
        None | Some("custom") => {}
        Some(_) => return Tool::Other(Value::Object(o)),
    }
    let Some(name) = take_str(&mut o, "name") else {
        return Tool::Other(Value::Object(o));
    };
    let description = take_str(&mut o, "description");
    let parameters = o.shift_remove("input_schema").unwrap_or_else(|| {
        *as_sent = false; // a default is written back
        json!({"type": "object", "properties": {}})
    });
    Tool::Function {
        name,
        description,
        parameters,
        extra: o,
    }
}

fn decode_tool_choice(v: Value) -> ToolChoice {
    let Some(o) = v.as_object() else {
        return ToolChoice::Other(v);
    };
    let t = o.get("type").and_then(Value::as_str);
    match (t, o.len()) {
        (Some("auto"), 1) => ToolChoice::Auto,
        (Some("any"), 1) => ToolChoice::Required,
        (Some("none"), 1) => ToolChoice::None,
        (Some("tool"), 2) => match o.get("name").and_then(Value::as_str) {
            Some(n) => ToolChoice::Tool(n.to_owned()),
            None => ToolChoice::Other(v),
        },
        _ => ToolChoice::Other(v),
    }
}

/// Encodes the typed request as an Anthropic request object.
pub(crate) fn encode_request(req: ChatFields) -> JsonMap {
    let same = req.source == ApiFormat::Anthropic;
    let mut out = JsonMap::new();
    out.insert("model".into(), Value::String(req.model));

    let mut system_parts: Vec<Part> = Vec::new();
    let mut system_text: Option<String> = None;
    let mut messages: Vec<Value> = Vec::with_capacity(req.messages.len());
    // Consecutive tool results (OpenAI `tool` messages) coalesce into one user turn.
    let mut pending_results: Vec<Value> = Vec::new();
    for m in req.messages {
        if m.role != Role::Tool && !pending_results.is_empty() {
            messages.push(json!({"role": "user", "content": std::mem::take(&mut pending_results)}));
        }
        match m.role {
            Role::System | Role::Developer => match m.content {
                Content::Text(s) if system_parts.is_empty() && system_text.is_none() => {
                    system_text = Some(s)
                }
                c => {
                    if let Some(t) = system_text.take() {
                        system_parts.push(Part::text(t));
                    }
                    system_parts.extend(c.into_parts());
                }
            },
            Role::Tool => {
                for p in m.content.into_parts() {
                    if let Some(b) = encode_block(p, same) {
                        pending_results.push(b);
                    }
                }
            }
            Role::User | Role::Assistant => {
                let role = if m.role == Role::User {
                    "user"
                } else {
                    "assistant"
                };
                let content = match m.content {
                    Content::Text(s) => Value::String(s),
                    Content::Parts(parts) => Value::Array(
                        parts
                            .into_iter()
                            .filter_map(|p| encode_block(p, same))
                            .collect(),
                    ),
                };
                let mut o = JsonMap::new();
                o.insert("role".into(), role.into());
                o.insert("content".into(), content);
                if same {
                    o.extend(m.extra);
                }
                messages.push(Value::Object(o));
            }
        }
    }
    if !pending_results.is_empty() {
        messages.push(json!({"role": "user", "content": pending_results}));
    }
    if let Some(t) = system_text {
        out.insert("system".into(), Value::String(t));
    } else if !system_parts.is_empty() {
        let blocks = system_parts
            .into_iter()
            .filter_map(|p| encode_block(p, same))
            .collect();
        out.insert("system".into(), Value::Array(blocks));
    }
    out.insert("messages".into(), Value::Array(messages));
    let budget = if same {
        None
    } else {
        super::reasoning_budget(req.source, &req.extra)
    };
    match (req.max_tokens, budget) {
        (max, Some(b)) => {
            // Anthropic wants 1024 <= budget_tokens < max_tokens.
            let b = b.max(1024);
            let max = max.unwrap_or(DEFAULT_MAX_TOKENS);
            let max = if max <= b { b + max } else { max };
            out.insert("max_tokens".into(), max.into());
            out.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": b}),
            );
        }
        (Some(n), None) => {
            out.insert("max_tokens".into(), n.into());
        }
        (None, None) if !same => {
            out.insert("max_tokens".into(), DEFAULT_MAX_TOKENS.into());
        }
        (None, None) => {}
    }
    if let Some(stop) = req.stop {
        out.insert(
            "stop_sequences".into(),
            Value::Array(stop.into_iter().map(Value::String).collect()),
        );
    }
    if req.stream || req.shape.stream_present {
        out.insert("stream".into(), Value::Bool(req.stream));
    }
    if let Some(tools) = req.tools {
        let tools = tools
            .into_iter()
            .filter_map(|t| match t {
                Tool::Function {
                    name,
                    description,
                    parameters,
                    extra,
                } => {
                    let mut o = JsonMap::new();
                    o.insert("name".into(), Value::String(name));
                    if let Some(d) = description {
                        o.insert("description".into(), Value::String(d));
                    }
                    o.insert("input_schema".into(), parameters);
                    if same {
                        o.extend(extra);
                    }
                    Some(Value::Object(o))
                }
                Tool::Other(v) if same => Some(v),
                Tool::Other(_) => None,
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = req.tool_choice {
        let v = match tc {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
            ToolChoice::Other(v) if same => v,
            ToolChoice::Other(_) => json!({"type": "auto"}),
        };
        out.insert("tool_choice".into(), v);
    }
    if same {
        out.extend(req.extra);
    } else {
        copy_shared(
            &req.extra,
            &mut out,
            &["user", "reasoning_effort", "stream_options"],
        );
        if let Some(user) = req.extra.get("user").cloned() {
            out.insert("metadata".into(), json!({"user_id": user}));
        }
        if out.contains_key("thinking") {
            // Extended thinking rejects sampling overrides.
            out.shift_remove("temperature");
            out.shift_remove("top_p");
        }
    }
    out
}

fn has_marker(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.contains_key("cache_control") || o.values().any(has_marker),
        Value::Array(a) => a.iter().any(has_marker),
        _ => false,
    }
}

/// Whether the client placed a `cache_control` of its own on a message, a block or a tool, in
/// which case [`place_breakpoints`] leaves the request alone. Not every place it looks is
/// searched (a tool's input, say): `false` may miss one, and the caller then encodes.
pub(crate) fn client_marked(req: &ChatFields) -> bool {
    fn part(p: &Part) -> bool {
        match p {
            Part::Text { extra, .. }
            | Part::Image { extra, .. }
            | Part::ToolUse { extra, .. }
            | Part::Thinking { extra, .. } => extra.contains_key("cache_control"),
            Part::ToolResult { extra, content, .. } => {
                extra.contains_key("cache_control") || content_marked(content)
            }
            Part::Other(v) => has_marker(v),
        }
    }
    fn content_marked(c: &Content) -> bool {
        matches!(c, Content::Parts(parts) if parts.iter().any(part))
    }
    req.messages
        .iter()
        .any(|m| m.extra.contains_key("cache_control") || content_marked(&m.content))
        || req.tools.iter().flatten().any(|t| match t {
            Tool::Function { extra, .. } => extra.contains_key("cache_control"),
            Tool::Other(v) => has_marker(v),
        })
}

/// Puts `cache_control` on the last system block, the last tool and the last message's last
/// block (as `bp` asks), unless the request already carries a breakpoint anywhere: then the
/// client placed its own and they are left alone.
pub(crate) fn place_breakpoints(map: &mut JsonMap, bp: &crate::model::CacheBreakpoints) {
    if !bp.any()
        || ["system", "tools", "messages"]
            .iter()
            .any(|k| map.get(*k).is_some_and(has_marker))
    {
        return;
    }
    let marker = || {
        if bp.ttl_1h {
            json!({"type": "ephemeral", "ttl": "1h"})
        } else {
            json!({"type": "ephemeral"})
        }
    };
    // A string becomes one text block, which can carry the marker.
    let mark_last = |v: &mut Value| match v {
        Value::String(s) => {
            *v = json!([{"type": "text", "text": std::mem::take(s), "cache_control": marker()}]);
        }
        Value::Array(a) => {
            if let Some(Value::Object(o)) = a.last_mut() {
                o.insert("cache_control".into(), marker());
            }
        }
        _ => {}
    };
    if bp.system
        && let Some(v) = map.get_mut("system")
    {
        mark_last(v);
    }
    if bp.tools
        && let Some(Value::Array(tools)) = map.get_mut("tools")
        && let Some(Value::Object(o)) = tools.last_mut()
    {
        o.insert("cache_control".into(), marker());
    }
    if bp.messages
        && let Some(Value::Array(msgs)) = map.get_mut("messages")
        && let Some(c) = msgs.last_mut().and_then(|m| m.get_mut("content"))
    {
        mark_last(c);
    }
}

fn encode_block(p: Part, same: bool) -> Option<Value> {
    let (mut o, extra) = match p {
        Part::Text { text, extra } => (
            json_obj([("type", "text".into()), ("text", Value::String(text))]),
            extra,
        ),
        Part::Image { source, extra } => {
            let src = match source {
                ImageSource::Url(u) => match parse_data_url(&u) {
                    Some((media_type, data)) => {
                        json!({"type": "base64", "media_type": media_type, "data": data})
                    }
                    None => json!({"type": "url", "url": u}),
                },
                ImageSource::Base64 { media_type, data } => {
                    json!({"type": "base64", "media_type": media_type, "data": data})
                }
            };
            (json_obj([("type", "image".into()), ("source", src)]), extra)
        }
        Part::ToolUse {
            id,
            name,
            arguments,
            extra,
        } => {
            let input = if arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&arguments).unwrap_or_else(|_| {
                    tracing::warn!(tool = %name, "tool-call arguments are not valid JSON; sent as {{}}");
                    json!({})
                })
            };
            (
                json_obj([
                    ("type", "tool_use".into()),
                    ("id", Value::String(id)),
                    ("name", Value::String(name)),
                    ("input", input),
                ]),
                extra,
            )
        }
        Part::ToolResult {
            tool_use_id,
            content,
            is_error,
            extra,
        } => {
            let content = match content {
                Content::Text(s) => Value::String(s),
                Content::Parts(parts) => Value::Array(
                    parts
                        .into_iter()
                        .filter_map(|p| encode_block(p, same))
                        .collect(),
                ),
            };
            let mut o = json_obj([
                ("type", "tool_result".into()),
                ("tool_use_id", Value::String(tool_use_id)),
                ("content", content),
            ]);
            if let Some(e) = is_error {
                o.insert("is_error".into(), Value::Bool(e));
            }
            (o, extra)
        }
        Part::Thinking {
            thinking,
            signature,
            extra,
        } => {
            // Anthropic rejects unsigned thinking; reasoning from another format is dropped.
            let signature = signature.filter(|s| !s.is_empty())?;
            (
                json_obj([
                    ("type", "thinking".into()),
                    ("thinking", Value::String(thinking)),
                    ("signature", Value::String(signature)),
                ]),
                extra,
            )
        }
        Part::Other(v) => return same.then_some(v),
    };
    if same {
        o.extend(extra);
    }
    Some(Value::Object(o))
}

fn json_obj<const N: usize>(pairs: [(&str, Value); N]) -> JsonMap {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Splits a `data:<media>;base64,<data>` URL.
fn parse_data_url(u: &str) -> Option<(&str, &str)> {
    let rest = u.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

/// Decodes an Anthropic `message` object.
pub(crate) fn decode_response(mut o: JsonMap) -> Result<ChatResponse, Error> {
    let id = take_str(&mut o, "id").unwrap_or_default();
    let model = take_str(&mut o, "model").unwrap_or_default();
    let content = match o.shift_remove("content") {
        Some(Value::Array(blocks)) => blocks
            .into_iter()
            .map(|b| decode_block(b, &mut false))
            .collect(),
        _ => Vec::new(),
    };
    let stop_reason = take_str(&mut o, "stop_reason").map(|s| StopReason::from_anthropic(&s));
    let stop_sequence = take_str(&mut o, "stop_sequence");
    let usage = match o.shift_remove("usage") {
        Some(Value::Object(u)) => decode_usage(&u),
        _ => Usage::default(),
    };
    for k in ["type", "role"] {
        o.shift_remove(k);
    }
    Ok(ChatResponse {
        id,
        model,
        content,
        stop_reason,
        stop_sequence,
        usage,
        extra: o,
    })
}

/// Reads an Anthropic `usage` object.
pub(crate) fn decode_usage(u: &JsonMap) -> Usage {
    Usage::from_anthropic(u)
}

/// An Anthropic `usage` object.
pub(crate) fn encode_usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input,
        "output_tokens": u.output,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation_input_tokens": u.cache_write,
    })
}

/// Encodes a neutral answer as an Anthropic `message` object.
pub(crate) fn encode_response(r: ChatResponse) -> Value {
    let content: Vec<Value> = r
        .content
        .into_iter()
        .filter_map(|p| match p {
            // Reasoning from another format has no signature; clients still see it as thinking.
            Part::Thinking {
                thinking,
                signature,
                ..
            } => Some(json!({"type": "thinking", "thinking": thinking,
                             "signature": signature.unwrap_or_default()})),
            other => encode_block(other, false),
        })
        .collect();
    json!({
        "id": anthropic_id(&r.id),
        "type": "message",
        "role": "assistant",
        "model": r.model,
        "content": content,
        "stop_reason": r.stop_reason.as_ref().map(StopReason::to_anthropic),
        "stop_sequence": r.stop_sequence,
        "usage": encode_usage(&r.usage),
    })
}

/// Anthropic-style ids for answers that came from elsewhere.
pub(crate) fn anthropic_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        format!("msg_{id}")
    }
}
