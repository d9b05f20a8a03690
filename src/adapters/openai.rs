//! OpenAI Chat Completions wire format.

use serde_json::{Value, json};

use super::json_in::Msg;
use super::{At, Fields, as_object, copy_shared, invalid};
use crate::error::Error;
use crate::model::{
    ApiFormat, ChatFields, ChatResponse, Content, ImageSource, JsonMap, Message, Part, Role, Shape,
    StopReason, Tool, ToolChoice, Usage,
};

/// Fields the decoder reads and drops when they are `null` (an encoded request leaves them out).
const NULLABLE_TOP: &[&str] = &[
    "stream",
    "tools",
    "tool_choice",
    "max_completion_tokens",
    "max_tokens",
    "stop",
];

/// Decodes an OpenAI request object. `as_sent` is cleared when the fields, encoded again,
/// would differ from the object beyond key order and spacing (a `null` left out, a default
/// filled in, a tool call's `index` dropped...): such a request is never forwarded as it came.
pub(crate) fn decode_request(map: JsonMap, as_sent: &mut bool) -> Result<ChatFields, Error> {
    decode_read(map, None, None, as_sent)
}

/// [`decode_request`] for a body read by [`super::json_in::parse_openai`]: `model`, when a
/// string, and `messages`, when an array, read apart from `map`, plain messages typed.
pub(crate) fn decode_read(
    mut map: JsonMap,
    model: Option<String>,
    messages: Option<Vec<Msg>>,
    as_sent: &mut bool,
) -> Result<ChatFields, Error> {
    if *as_sent && super::null_among(&map, NULLABLE_TOP) {
        *as_sent = false;
    }
    let mut f = Fields {
        map: &mut map,
        at: At::Root,
    };
    let model = match model {
        Some(m) => m,
        None => f.req_string("model")?,
    };
    let stream_field = f.bool("stream")?;
    let raw_messages = match messages {
        Some(m) => m,
        None => f
            .array("messages")?
            .ok_or_else(|| invalid("`messages` is required"))?
            .into_iter()
            .map(Msg::Value)
            .collect(),
    };
    let tools = f.array("tools")?;
    let tool_choice = f.take("tool_choice");
    let (max_tokens, max_completion_tokens) = match f.u64("max_completion_tokens")? {
        Some(n) => (Some(n), true),
        None => (f.u64("max_tokens")?, false),
    };
    let stop = f.stop("stop")?;

    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, m) in raw_messages.into_iter().enumerate() {
        let at = At::Message(i);
        messages.push(match m {
            // Written back as it came (see `content_as_sent`).
            Msg::Plain(role, text) => Message {
                role,
                content: Content::Text(text),
                extra: JsonMap::new(),
            },
            Msg::Value(m) => decode_message(as_object(m, at)?, at, as_sent)?,
        });
    }
    let tools = tools.map(|t| {
        t.into_iter()
            .map(|t| decode_tool(t, as_sent))
            .collect::<Vec<_>>()
    });
    let (stop, stop_as_string) = match stop {
        Some((s, as_str)) => (Some(s), as_str),
        None => (None, false),
    };
    Ok(ChatFields {
        source: ApiFormat::OpenAi,
        model,
        stream: stream_field.unwrap_or(false),
        messages,
        tools,
        tool_choice: tool_choice.map(decode_tool_choice),
        max_tokens,
        stop,
        extra: map,
        shape: Shape {
            max_completion_tokens,
            stop_as_string,
            system_as_string: false,
            stream_present: stream_field.is_some(),
        },
    })
}

fn decode_role(s: &str, at: At<'_>) -> Result<Role, Error> {
    Ok(match s {
        "system" => Role::System,
        "developer" => Role::Developer,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => return Err(invalid(format!("`{at}.role` has unknown value `{other}`"))),
    })
}

fn decode_content(v: Option<Value>, at: At<'_>, as_sent: &mut bool) -> Result<Content, Error> {
    match v {
        None => Ok(Content::Parts(Vec::new())),
        Some(Value::String(s)) => Ok(Content::Text(s)),
        Some(Value::Array(parts)) => Ok(Content::Parts(
            parts
                .into_iter()
                .map(|p| decode_part(p, as_sent))
                .collect::<Vec<_>>(),
        )),
        Some(_) => Err(invalid(format!(
            "`{at}.content` must be a string or an array"
        ))),
    }
}

fn decode_part(v: Value, as_sent: &mut bool) -> Part {
    let Value::Object(mut o) = v else {
        return Part::Other(v);
    };
    match o.get("type").and_then(Value::as_str) {
        Some("text") if o.get("text").is_some_and(Value::is_string) => {
            o.shift_remove("type");
            let Some(Value::String(text)) = o.shift_remove("text") else {
                unreachable!("checked above")
            };
            Part::Text { text, extra: o }
        }
        Some("image_url") => {
            let url = o
                .get_mut("image_url")
                .and_then(Value::as_object_mut)
                .and_then(|iu| match iu.shift_remove("url") {
                    Some(Value::String(u)) => Some(u),
                    _ => None,
                });
            match url {
                Some(url) => {
                    // The part's own fields besides `type` and `image_url` are encoded inside
                    // `image_url`.
                    if o.len() > 2 {
                        *as_sent = false;
                    }
                    let mut extra = match o.shift_remove("image_url") {
                        Some(Value::Object(rest)) => rest,
                        _ => JsonMap::new(),
                    };
                    o.shift_remove("type");
                    extra.extend(o);
                    Part::Image {
                        source: ImageSource::Url(url),
                        extra,
                    }
                }
                None => {
                    // A `url` that was not a string has been taken out of `image_url`.
                    *as_sent = false;
                    Part::Other(Value::Object(o))
                }
            }
        }
        _ => Part::Other(Value::Object(o)),
    }
}

fn decode_message(mut o: JsonMap, at: At<'_>, as_sent: &mut bool) -> Result<Message, Error> {
    let mut f = Fields { map: &mut o, at };
    let role_s = f.req_string("role")?;
    let role = decode_role(&role_s, at)?;
    if *as_sent {
        *as_sent = content_as_sent(role, f.map.get("content"), f.map);
    }
    let content = decode_content(f.take("content"), at, as_sent)?;
    match role {
        Role::Assistant => {
            let reasoning = f.string("reasoning_content")?;
            let calls = f.array("tool_calls")?;
            if reasoning.is_none() && calls.is_none() {
                return Ok(Message {
                    role,
                    content,
                    extra: o,
                });
            }
            let mut parts = Vec::new();
            if let Some(thinking) = reasoning {
                parts.push(Part::Thinking {
                    thinking,
                    signature: None,
                    extra: JsonMap::new(),
                });
            }
            parts.extend(content.into_parts());
            for (i, c) in calls.unwrap_or_default().into_iter().enumerate() {
                let cat = format!("{at}.tool_calls[{i}]");
                let mut c = as_object(c, At::Path(&cat))?;
                if *as_sent && !call_as_sent(&c) {
                    *as_sent = false;
                }
                let mut cf = Fields {
                    map: &mut c,
                    at: At::Path(&cat),
                };
                let id = cf.string("id")?.unwrap_or_default();
                cf.take("type");
                let fat = format!("{cat}.function");
                let mut func = cf
                    .object("function")?
                    .ok_or_else(|| invalid(format!("`{fat}` is required")))?;
                let mut ff = Fields {
                    map: &mut func,
                    at: At::Path(&fat),
                };
                let name = ff.req_string("name")?;
                let arguments = match ff.take("arguments") {
                    None => String::new(),
                    Some(Value::String(s)) => s,
                    // Some clients send an object; keep its JSON text.
                    Some(other) => other.to_string(),
                };
                c.shift_remove("index");
                parts.push(Part::ToolUse {
                    id,
                    name,
                    arguments,
                    extra: c,
                });
            }
            Ok(Message {
                role,
                content: Content::Parts(parts),
                extra: o,
            })
        }
        Role::Tool => {
            let tool_use_id = f.string("tool_call_id")?.unwrap_or_default();
            Ok(Message {
                role,
                content: Content::Parts(vec![Part::ToolResult {
                    tool_use_id,
                    content,
                    is_error: None,
                    extra: JsonMap::new(),
                }]),
                extra: o,
            })
        }
        _ => Ok(Message {
            role,
            content,
            extra: o,
        }),
    }
}

/// Whether a message encodes back to what it was, as far as its `content` and the fields read
/// with it go (`rest` is the message's other fields). Anything this does not
/// recognise as round-tripping exactly answers false: the request is then encoded again, which
/// is always correct.
fn content_as_sent(role: Role, content: Option<&Value>, rest: &JsonMap) -> bool {
    match role {
        Role::Assistant => {
            let reasoning = rest.get("reasoning_content");
            let calls = rest.get("tool_calls");
            if reasoning.is_none() && calls.is_none() {
                // Written back as it was: a string, `null`, or an array of parts that are not
                // images (an array with an image, or an empty one, is folded into a string).
                return match content {
                    Some(Value::String(_) | Value::Null) => true,
                    Some(Value::Array(parts)) => {
                        !parts.is_empty()
                            && parts
                                .iter()
                                .all(|p| p.get("type").and_then(Value::as_str) != Some("image_url"))
                    }
                    _ => false,
                };
            }
            // With reasoning or tool calls the text is written as one string (or `null`).
            matches!(content, Some(Value::String(_) | Value::Null))
                && reasoning.is_none_or(Value::is_string)
                && calls.is_none_or(|c| c.as_array().is_some_and(|a| !a.is_empty()))
        }
        // An empty user message is dropped; an absent `content` is written as `[]`.
        Role::User => match content {
            Some(Value::String(_)) => true,
            Some(Value::Array(parts)) => !parts.is_empty(),
            _ => false,
        },
        Role::Tool => {
            matches!(content, Some(Value::String(_) | Value::Array(_)))
                && rest.get("tool_call_id").is_some_and(Value::is_string)
        }
        Role::System | Role::Developer => {
            matches!(content, Some(Value::String(_) | Value::Array(_)))
        }
    }
}

/// Whether a tool call encodes back to what it was: `{"id", "type": "function", "function":
/// {"name", "arguments"}}` with strings, and no `index` (which is dropped).
fn call_as_sent(c: &JsonMap) -> bool {
    c.get("id").is_some_and(Value::is_string)
        && c.get("type").and_then(Value::as_str) == Some("function")
        && !c.contains_key("index")
        && c.get("function")
            .and_then(Value::as_object)
            .is_some_and(|f| {
                f.len() == 2
                    && f.get("name").is_some_and(Value::is_string)
                    && f.get("arguments").is_some_and(Value::is_string)
            })
}

fn decode_tool(v: Value, as_sent: &mut bool) -> Tool {
    let Value::Object(mut o) = v else {
        return Tool::Other(v);
    };
    if o.get("type").and_then(Value::as_str) != Some("function") {
        return Tool::Other(Value::Object(o));
    }
    // Encoded back as it was only with exactly `type` and `function`, a string `name`, a
    // string or no `description`, and `parameters` given (a default is filled in).
    if *as_sent
        && !(o.len() == 2
            && o.get("function")
                .and_then(Value::as_object)
                .is_some_and(|f| {
                    f.get("name").is_some_and(Value::is_string)
                        && f.get("description").is_none_or(Value::is_string)
                        && f.get("parameters").is_some()
                }))
    {
        *as_sent = false;
    }
    let Some(Value::Object(mut func)) = o.shift_remove("function") else {
        return Tool::Other(Value::Object(o));
    };
    let Some(Value::String(name)) = func.shift_remove("name") else {
        o.insert("function".into(), Value::Object(func));
        return Tool::Other(Value::Object(o));
    };
    let description = match func.shift_remove("description") {
        Some(Value::String(d)) => Some(d),
        _ => None,
    };
    let parameters = func
        .shift_remove("parameters")
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    Tool::Function {
        name,
        description,
        parameters,
        extra: func,
    }
}

fn decode_tool_choice(v: Value) -> ToolChoice {
    match &v {
        Value::String(s) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => ToolChoice::Other(v),
        },
        Value::Object(o)
            if o.len() == 2 && o.get("type").and_then(Value::as_str) == Some("function") =>
        {
            match o
                .get("function")
                .and_then(Value::as_object)
                .filter(|f| f.len() == 1)
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => ToolChoice::Tool(name.to_owned()),
                None => ToolChoice::Other(v),
            }
        }
        _ => ToolChoice::Other(v),
    }
}

/// Encodes the typed request as an OpenAI request object.
pub(crate) fn encode_request(req: ChatFields) -> JsonMap {
    let same = req.source == ApiFormat::OpenAi;
    let mut out = JsonMap::new();
    out.insert("model".into(), Value::String(req.model));
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        encode_message(m, same, &mut messages);
    }
    out.insert("messages".into(), Value::Array(messages));
    if req.stream || req.shape.stream_present {
        out.insert("stream".into(), Value::Bool(req.stream));
    }
    if let Some(tools) = req.tools {
        let tools = tools
            .into_iter()
            .filter_map(|t| encode_tool(t, same))
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = req.tool_choice {
        out.insert("tool_choice".into(), encode_tool_choice(tc, same));
    }
    if let Some(n) = req.max_tokens {
        let key = if same && req.shape.max_completion_tokens {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        out.insert(key.into(), n.into());
    }
    if let Some(mut stop) = req.stop {
        let v = if same && req.shape.stop_as_string && stop.len() == 1 {
            Value::String(stop.remove(0))
        } else {
            Value::Array(stop.into_iter().map(Value::String).collect())
        };
        out.insert("stop".into(), v);
    }
    if same {
        out.extend(req.extra);
    } else {
        copy_shared(
            &req.extra,
            &mut out,
            &["metadata", "thinking", "stream_options"],
        );
        if let Some(b) = super::reasoning_budget(req.source, &req.extra)
            && out
                .get("model")
                .and_then(Value::as_str)
                .is_some_and(super::accepts_reasoning_effort)
        {
            out.insert(
                "reasoning_effort".into(),
                super::effort_for_budget(b).into(),
            );
        }
        if req.stream
            && let Some(so) = req.extra.get("stream_options")
        {
            out.insert("stream_options".into(), so.clone());
        }
        if let Some(user) = req
            .extra
            .get("metadata")
            .and_then(|m| m.get("user_id"))
            .cloned()
        {
            out.insert("user".into(), user);
        }
    }
    out
}

fn encode_part(p: Part, same: bool) -> Option<Value> {
    match p {
        Part::Text { text, extra } => {
            let mut o = JsonMap::new();
            o.insert("type".into(), "text".into());
            o.insert("text".into(), Value::String(text));
            if same {
                o.extend(extra);
            }
            Some(Value::Object(o))
        }
        Part::Image { source, extra } => {
            let url = match source {
                ImageSource::Url(u) => u,
                ImageSource::Base64 { media_type, data } => {
                    format!("data:{media_type};base64,{data}")
                }
            };
            let mut iu = JsonMap::new();
            iu.insert("url".into(), Value::String(url));
            if same {
                iu.extend(extra);
            }
            Some(json!({"type": "image_url", "image_url": Value::Object(iu)}))
        }
        Part::Other(v) if same => Some(v),
        _ => None,
    }
}

fn encode_content(c: Content, same: bool) -> Value {
    match c {
        Content::Text(s) => Value::String(s),
        Content::Parts(parts) => Value::Array(
            parts
                .into_iter()
                .filter_map(|p| encode_part(p, same))
                .collect(),
        ),
    }
}

/// Whether [`encode_message`] may write any of `m`'s content as an array (the message's own,
/// or a tool result's): false only when it surely writes strings, `null` or nothing. A
/// provider without image or content-array support rewrites arrays, so a request with none
/// can go to it as sent. Errs toward true, which only means encoding again.
pub(crate) fn may_write_array(m: &Message) -> bool {
    match &m.content {
        Content::Text(_) => false,
        // An empty assistant content is written as `null`; elsewhere it may be `[]`.
        Content::Parts(parts) if parts.is_empty() => m.role != Role::Assistant,
        Content::Parts(parts) => parts.iter().any(|p| match (m.role, p) {
            // Written as `tool_calls` and `reasoning_content`, the text beside them as one string.
            (Role::Assistant, Part::ToolUse { .. } | Part::Thinking { .. }) => false,
            // Its own `tool` message, whose content is written as the result's content.
            (Role::Tool | Role::User, Part::ToolResult { content, .. }) => {
                matches!(content, Content::Parts(_))
            }
            _ => true,
        }),
    }
}

fn encode_message(m: Message, same: bool, out: &mut Vec<Value>) {
    let extra = if same { m.extra } else { JsonMap::new() };
    match m.role {
        Role::Assistant => {
            let mut o = JsonMap::new();
            o.insert("role".into(), "assistant".into());
            match m.content {
                Content::Text(s) => {
                    o.insert("content".into(), Value::String(s));
                }
                // Array content with nothing OpenAI keeps elsewhere keeps its array shape.
                Content::Parts(parts)
                    if !parts.is_empty()
                        && parts
                            .iter()
                            .all(|p| matches!(p, Part::Text { .. } | Part::Other(_))) =>
                {
                    o.insert(
                        "content".into(),
                        encode_content(Content::Parts(parts), same),
                    );
                }
                Content::Parts(parts) => {
                    let mut text: Option<String> = None;
                    let mut reasoning: Option<String> = None;
                    let mut calls = Vec::new();
                    for p in parts {
                        match p {
                            Part::Text { text: t, .. } => {
                                text.get_or_insert_with(String::new).push_str(&t)
                            }
                            Part::Thinking { thinking, .. } if same => reasoning
                                .get_or_insert_with(String::new)
                                .push_str(&thinking),
                            Part::ToolUse {
                                id,
                                name,
                                arguments,
                                extra,
                            } => {
                                let mut c = JsonMap::new();
                                c.insert("id".into(), Value::String(id));
                                c.insert("type".into(), "function".into());
                                c.insert(
                                    "function".into(),
                                    json!({"name": name, "arguments": arguments}),
                                );
                                if same {
                                    c.extend(extra);
                                }
                                calls.push(Value::Object(c));
                            }
                            _ => {}
                        }
                    }
                    o.insert(
                        "content".into(),
                        text.map(Value::String).unwrap_or(Value::Null),
                    );
                    if let Some(r) = reasoning {
                        o.insert("reasoning_content".into(), Value::String(r));
                    }
                    if !calls.is_empty() {
                        o.insert("tool_calls".into(), Value::Array(calls));
                    }
                }
            }
            o.extend(extra);
            out.push(Value::Object(o));
        }
        Role::Tool | Role::User => {
            // Tool results become `tool` messages; anything else stays a user message.
            let mut rest = Vec::new();
            let mut text_content = None;
            match m.content {
                Content::Text(s) => text_content = Some(s),
                Content::Parts(parts) => {
                    for p in parts {
                        match p {
                            Part::ToolResult {
                                tool_use_id,
                                content,
                                ..
                            } => {
                                let mut o = JsonMap::new();
                                o.insert("role".into(), "tool".into());
                                o.insert("tool_call_id".into(), Value::String(tool_use_id));
                                o.insert("content".into(), encode_content(content, same));
                                if m.role == Role::Tool {
                                    o.extend(extra.clone());
                                }
                                out.push(Value::Object(o));
                            }
                            other => rest.push(other),
                        }
                    }
                }
            }
            if m.role == Role::User && (text_content.is_some() || !rest.is_empty()) {
                let content = match text_content {
                    Some(s) => Value::String(s),
                    None => encode_content(Content::Parts(rest), same),
                };
                let mut o = JsonMap::new();
                o.insert("role".into(), "user".into());
                o.insert("content".into(), content);
                o.extend(extra);
                out.push(Value::Object(o));
            }
        }
        Role::System | Role::Developer => {
            let mut o = JsonMap::new();
            o.insert("role".into(), m.role.as_str().into());
            o.insert("content".into(), encode_content(m.content, same));
            o.extend(extra);
            out.push(Value::Object(o));
        }
    }
}

fn encode_tool(t: Tool, same: bool) -> Option<Value> {
    match t {
        Tool::Function {
            name,
            description,
            parameters,
            extra,
        } => {
            let mut func = JsonMap::new();
            func.insert("name".into(), Value::String(name));
            if let Some(d) = description {
                func.insert("description".into(), Value::String(d));
            }
            func.insert("parameters".into(), parameters);
            if same {
                func.extend(extra);
            }
            Some(json!({"type": "function", "function": Value::Object(func)}))
        }
        Tool::Other(v) if same => Some(v),
        Tool::Other(_) => None,
    }
}

fn encode_tool_choice(tc: ToolChoice, same: bool) -> Value {
    match tc {
        // A foreign choice nenya kept verbatim (e.g. Anthropic's with
        // `disable_parallel_tool_use`): map its `type`.
        ToolChoice::Other(v) if !same => match v.get("type").and_then(Value::as_str) {
            Some("any") => "required".into(),
            Some("none") => "none".into(),
            Some("tool") => match v.get("name") {
                Some(name) => json!({"type": "function", "function": {"name": name}}),
                None => "required".into(),
            },
            _ => "auto".into(),
        },
        ToolChoice::Auto => "auto".into(),
        ToolChoice::None => "none".into(),
        ToolChoice::Required => "required".into(),
        ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        ToolChoice::Other(v) => v,
    }
}

/// Decodes an OpenAI `chat.completion` object.
pub(crate) fn decode_response(mut o: JsonMap) -> Result<ChatResponse, Error> {
    let id = take_string(&mut o, "id");
    let model = take_string(&mut o, "model");
    let mut content = Vec::new();
    let mut stop_reason = None;
    if let Some(Value::Array(choices)) = o.shift_remove("choices")
        && let Some(Value::Object(mut choice)) = choices.into_iter().next()
    {
        stop_reason = match choice.shift_remove("finish_reason") {
            Some(Value::String(s)) => Some(StopReason::from_openai(&s)),
            _ => None,
        };
        if let Some(Value::Object(msg)) = choice.shift_remove("message") {
            let m = decode_message(msg, At::Path("choices[0].message"), &mut false)?;
            content = m.content.into_parts();
        }
    }
    let usage = match o.shift_remove("usage") {
        Some(Value::Object(u)) => decode_usage(&u),
        _ => Usage::default(),
    };
    for k in ["object", "created", "system_fingerprint", "service_tier"] {
        o.shift_remove(k);
    }
    Ok(ChatResponse {
        id,
        model,
        content,
        stop_reason,
        stop_sequence: None,
        usage,
        extra: o,
    })
}

fn take_string(o: &mut JsonMap, k: &str) -> String {
    match o.shift_remove(k) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Reads an OpenAI `usage` object.
pub(crate) fn decode_usage(u: &JsonMap) -> Usage {
    Usage::from_openai(u)
}

/// An OpenAI `usage` object.
pub(crate) fn encode_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_total(),
        "completion_tokens": u.output,
        "total_tokens": u.prompt_total() + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    })
}

/// Seconds since the epoch, for `created`.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Encodes a neutral answer as an OpenAI `chat.completion` object.
pub(crate) fn encode_response(r: ChatResponse) -> Value {
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut calls = Vec::new();
    for p in r.content {
        match p {
            Part::Text { text: t, .. } => text.get_or_insert_with(String::new).push_str(&t),
            Part::Thinking { thinking, .. } => reasoning
                .get_or_insert_with(String::new)
                .push_str(&thinking),
            Part::ToolUse {
                id,
                name,
                arguments,
                extra,
            } => {
                let mut c = json!({"id": id, "type": "function",
                                   "function": {"name": name, "arguments": arguments}});
                // Gemini thought signatures, in the form OpenAI-compatible clients echo back.
                if let Some(ec) = extra.get("extra_content") {
                    c["extra_content"] = ec.clone();
                }
                calls.push(c);
            }
            _ => {}
        }
    }
    let mut message = JsonMap::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        text.map(Value::String).unwrap_or(Value::Null),
    );
    if let Some(r) = reasoning {
        message.insert("reasoning_content".into(), Value::String(r));
    }
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let finish = r
        .stop_reason
        .as_ref()
        .map(|s| Value::String(s.to_openai().to_owned()))
        .unwrap_or(Value::Null);
    json!({
        "id": openai_id(&r.id),
        "object": "chat.completion",
        "created": now_secs(),
        "model": r.model,
        "choices": [{"index": 0, "message": Value::Object(message), "logprobs": null, "finish_reason": finish}],
        "usage": encode_usage(&r.usage),
    })
}

/// OpenAI-style ids for answers that came from elsewhere.
pub(crate) fn openai_id(id: &str) -> String {
    if id.starts_with("chatcmpl-") {
        id.to_owned()
    } else {
        format!("chatcmpl-{id}")
    }
}
