//! Google Gemini `generateContent` / `streamGenerateContent?alt=sse` wire format (upstream side).
//!
//! Tool results are matched to their calls by name (Gemini has no call ids in older models), and
//! Gemini's thought signatures ride on tool calls as `extra_content.google.thought_signature`,
//! the form OpenAI-compatible clients echo back, so multi-turn function calling keeps them.

use serde_json::{Value, json};

use crate::error::Error;
use crate::model::{
    ChatFields, ChatResponse, Content, ImageSource, JsonMap, Part, Role, StopReason, Tool,
    ToolChoice, Usage,
};

/// Where a thought signature lives on a neutral tool call.
fn signature_of(extra: &JsonMap) -> Option<&str> {
    extra
        .get("extra_content")
        .and_then(|e| e.pointer("/google/thought_signature"))
        .or_else(|| extra.get("thought_signature"))
        .or_else(|| extra.get("thoughtSignature"))
        .and_then(Value::as_str)
}

fn text_parts(c: Content) -> Vec<Value> {
    c.into_parts()
        .into_iter()
        .filter_map(|p| match p {
            Part::Text { text, .. } => Some(json!({"text": text})),
            _ => None,
        })
        .collect()
}

/// Encodes the typed request as a Gemini request object.
pub(crate) fn encode_request(req: ChatFields) -> JsonMap {
    let mut names: Vec<(String, String)> = Vec::new(); // (call id, tool name)
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    let push = |role: &str, parts: Vec<Value>, contents: &mut Vec<Value>| {
        if parts.is_empty() {
            return;
        }
        // Gemini wants alternating turns: merge into the previous turn of the same role.
        if let Some(last) = contents.last_mut()
            && last["role"] == role
            && let Some(arr) = last["parts"].as_array_mut()
        {
            arr.extend(parts);
            return;
        }
        contents.push(json!({"role": role, "parts": parts}));
    };
    for m in req.messages {
        match m.role {
            Role::System | Role::Developer => system.extend(text_parts(m.content)),
            Role::User | Role::Tool | Role::Assistant => {
                let role = if m.role == Role::Assistant {
                    "model"
                } else {
                    "user"
                };
                let mut parts = Vec::new();
                for p in m.content.into_parts() {
                    match p {
                        Part::Text { text, .. } => parts.push(json!({"text": text})),
                        Part::Image { source, .. } => parts.push(match source {
                            ImageSource::Base64 { media_type, data } => {
                                json!({"inlineData": {"mimeType": media_type, "data": data}})
                            }
                            ImageSource::Url(u) => {
                                match u.strip_prefix("data:").and_then(|r| r.split_once(',')) {
                                    Some((meta, data)) => json!({"inlineData": {
                                    "mimeType": meta.trim_end_matches(";base64"), "data": data}}),
                                    None => json!({"fileData": {"fileUri": u}}),
                                }
                            }
                        }),
                        Part::ToolUse {
                            id,
                            name,
                            arguments,
                            extra,
                        } => {
                            let args: Value =
                                serde_json::from_str(&arguments).unwrap_or_else(|_| json!({}));
                            let mut part = json!({"functionCall": {"name": name, "args": args}});
                            if let Some(sig) = signature_of(&extra) {
                                part["thoughtSignature"] = json!(sig);
                            }
                            names.push((id, name));
                            parts.push(part);
                        }
                        Part::ToolResult {
                            tool_use_id,
                            content,
                            ..
                        } => {
                            let name = names
                                .iter()
                                .rev()
                                .find(|(id, _)| *id == tool_use_id)
                                .map(|(_, n)| n.clone())
                                .unwrap_or_else(|| tool_use_id.clone());
                            let text = content.text();
                            let response = match serde_json::from_str::<Value>(&text) {
                                Ok(Value::Object(o)) => Value::Object(o),
                                _ => json!({"content": text}),
                            };
                            parts.push(
                                json!({"functionResponse": {"name": name, "response": response}}),
                            );
                        }
                        // Reasoning is not sent back to Gemini (its signatures ride on calls).
                        Part::Thinking { .. } | Part::Other(_) => {}
                    }
                }
                push(role, parts, &mut contents);
            }
        }
    }
    let mut out = JsonMap::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if let Some(tools) = req.tools {
        let decls: Vec<Value> = tools
            .into_iter()
            .filter_map(|t| match t {
                Tool::Function {
                    name,
                    description,
                    parameters,
                    ..
                } => {
                    let mut d = json!({"name": name, "parameters": parameters});
                    if let Some(desc) = description {
                        d["description"] = json!(desc);
                    }
                    Some(d)
                }
                Tool::Other(_) => None,
            })
            .collect();
        if !decls.is_empty() {
            out.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        }
    }
    if let Some(tc) = req.tool_choice {
        let cfg = match tc {
            ToolChoice::Auto | ToolChoice::Other(_) => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(n) => json!({"mode": "ANY", "allowedFunctionNames": [n]}),
        };
        out.insert("toolConfig".into(), json!({"functionCallingConfig": cfg}));
    }
    let mut generation = JsonMap::new();
    if let Some(n) = req.max_tokens {
        generation.insert("maxOutputTokens".into(), n.into());
    }
    if let Some(s) = req.stop {
        generation.insert("stopSequences".into(), json!(s));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
    ] {
        if let Some(v) = req.extra.get(from) {
            generation.insert(to.into(), v.clone());
        }
    }
    if let Some(b) = super::reasoning_budget(req.source, &req.extra) {
        generation.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": b, "includeThoughts": true}),
        );
    }
    if !generation.is_empty() {
        out.insert("generationConfig".into(), Value::Object(generation));
    }
    out
}

/// Gemini's `finishReason`, given whether the answer called functions.
pub(crate) fn stop_reason(s: &str, called_tools: bool) -> StopReason {
    match s {
        "STOP" if called_tools => StopReason::ToolUse,
        "STOP" => StopReason::EndTurn,
        "MAX_TOKENS" => StopReason::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            StopReason::Refusal
        }
        other => StopReason::Other(other.to_ascii_lowercase()),
    }
}

/// Reads Gemini `usageMetadata`.
pub(crate) fn decode_usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cachedContentTokenCount");
    Usage {
        input: n("promptTokenCount").saturating_sub(cached),
        output: n("candidatesTokenCount") + n("thoughtsTokenCount"),
        cache_read: cached,
        cache_write: 0,
        reasoning: n("thoughtsTokenCount"),
    }
}

/// Converts one candidate's parts; `call_seq` numbers calls without ids.
pub(crate) fn decode_parts(parts: &[Value], call_seq: &mut usize) -> Vec<Part> {
    let mut out = Vec::new();
    for p in parts {
        if let Some(fc) = p.get("functionCall") {
            *call_seq += 1;
            let mut extra = JsonMap::new();
            if let Some(sig) = p.get("thoughtSignature").and_then(Value::as_str) {
                extra.insert(
                    "extra_content".into(),
                    json!({"google": {"thought_signature": sig}}),
                );
            }
            out.push(Part::ToolUse {
                id: fc
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("call_gemini_{call_seq}")),
                name: fc
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                arguments: fc
                    .get("args")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".into()),
                extra,
            });
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                out.push(Part::Thinking {
                    thinking: t.to_owned(),
                    signature: None,
                    extra: JsonMap::new(),
                });
            } else {
                out.push(Part::text(t));
            }
        }
    }
    out
}

/// Decodes a Gemini `generateContent` answer.
pub(crate) fn decode_response(o: JsonMap) -> Result<ChatResponse, Error> {
    let v = Value::Object(o);
    let cand = v.pointer("/candidates/0");
    let parts = cand
        .and_then(|c| c.pointer("/content/parts"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut seq = 0;
    let content = decode_parts(&parts, &mut seq);
    let called = content.iter().any(|p| matches!(p, Part::ToolUse { .. }));
    Ok(ChatResponse {
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
        content,
        stop_reason: cand
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
            .map(|s| stop_reason(s, called)),
        stop_sequence: None,
        usage: v.get("usageMetadata").map(decode_usage).unwrap_or_default(),
        extra: JsonMap::new(),
    })
}
