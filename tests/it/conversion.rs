//! Any client format against any upstream format, streamed or not, over real HTTP: what the
//! client assembles must equal what the upstream meant (text, thinking, tool calls whose
//! arguments arrive in many fragments, stop reasons, usage, errors).

use crate::common;

use std::time::Duration;

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use nenya::services::{Fault, MockConfig};
use serde_json::{Value, json};

const ARGS: &str = r#"{"city":"Paris","units":"metric","days":[1,2,3],"note":"naïve café ☕"}"#;

/// Output tokens the mock reports for a tool answer: the preamble plus the argument fragments.
fn tool_output_tokens(chunks: usize) -> u64 {
    let n = ARGS.chars().count();
    1 + n.div_ceil(n.div_ceil(chunks)) as u64
}

/// A gateway with `oai` (OpenAI-only) and `ant` (Anthropic-only) providers on the mock.
async fn cross_gateway(mock: &Running) -> Running {
    let cfg = Config::from_json_str(&format!(
        r#"{{"providers": {{
              "oai": {{"url": "http://{a}/v1/chat/completions", "auth_style": "bearer",
                       "capabilities": {{"stream_options": true, "reasoning": true}}}},
              "ant": {{"url": "http://{a}/v1/messages", "auth_style": "anthropic"}}}},
            "agents": {{
              "to-oai": {{"models": [{{"provider": "oai", "model": "gpt-up"}}]}},
              "to-ant": {{"models": [{{"provider": "ant", "model": "claude-up"}}]}}}}}}"#,
        a = mock.addr
    ))
    .unwrap();
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"oai": "{PROVIDER_KEY}", "ant": "{PROVIDER_KEY}"}}}}"#
    ))
    .unwrap();
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

fn tool_mock(chunks: usize) -> MockConfig {
    MockConfig {
        chunks,
        tool_call: Some(("get_weather".into(), ARGS.into())),
        thinking: Some("The user wants weather.".into()),
        ..MockConfig::default()
    }
}

async fn anthropic_call(gw: &Running, body: Value) -> Reply {
    post(
        &gw.url("/v1/messages"),
        &[("x-api-key", CLIENT_TOKEN)],
        body.to_string(),
    )
    .await
}

async fn openai_call(gw: &Running, body: Value) -> Reply {
    post_chat(gw, &body).await
}

#[tokio::test]
async fn anthropic_client_openai_upstream_plain() {
    let (mock, up) = start_mock(MockConfig {
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = cross_gateway(&up).await;
    let r = anthropic_call(
        &gw,
        json!({"model": "to-oai", "max_tokens": 50, "system": "be brief",
        "stop_sequences": ["END"], "metadata": {"user_id": "u-7"},
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "word0 word1 word2 "}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    // The upstream received OpenAI format.
    let sent = mock.received()[0].json();
    assert_eq!(mock.received()[0].uri, "/v1/chat/completions");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(sent["max_tokens"], 50);
    assert_eq!(sent["stop"], json!(["END"]));
    assert_eq!(sent["user"], "u-7");
    assert_eq!(
        mock.received()[0].headers["authorization"],
        format!("Bearer {PROVIDER_KEY}")
    );
}

#[tokio::test]
async fn openai_client_anthropic_upstream_plain_with_tool_call_and_thinking() {
    let (mock, up) = start_mock(tool_mock(4)).await;
    let gw = cross_gateway(&up).await;
    let r = openai_call(&gw, json!({"model": "to-ant", "messages": [
            {"role": "system", "content": "sys"}, {"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "required"}))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let msg = &v["choices"][0]["message"];
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(msg["content"], "Let me check.");
    assert_eq!(
        msg["reasoning_content"], "The user wants weather.",
        "thinking is not folded into text"
    );
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(
        msg["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, serde_json::from_str::<Value>(ARGS).unwrap());
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let sent = mock.received()[0].json();
    assert_eq!(sent["system"], "sys");
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "any"}),
        "required → any"
    );
    assert_eq!(sent["tools"][0]["input_schema"], json!({"type": "object"}));
    assert_eq!(sent["max_tokens"], 4096, "Anthropic needs max_tokens");
    assert_eq!(mock.received()[0].headers["x-api-key"], PROVIDER_KEY);
}

/// Assembles an Anthropic stream the way the SDKs do.
fn assemble_anthropic(text: &str) -> (Vec<Value>, Value, Vec<String>) {
    let mut blocks: Vec<Value> = Vec::new();
    let mut partial: Vec<String> = Vec::new();
    let mut delta = Value::Null;
    let mut names = Vec::new();
    for (name, data) in sse_events(text) {
        let v: Value = serde_json::from_str(&data).unwrap();
        names.push(name.clone().unwrap_or_default());
        assert_eq!(
            name.as_deref(),
            v["type"].as_str(),
            "event name matches type"
        );
        match v["type"].as_str().unwrap() {
            "content_block_start" => {
                assert_eq!(
                    v["index"].as_u64().unwrap() as usize,
                    blocks.len(),
                    "indices increase"
                );
                blocks.push(v["content_block"].clone());
                partial.push(String::new());
            }
            "content_block_delta" => {
                let i = v["index"].as_u64().unwrap() as usize;
                let d = &v["delta"];
                match d["type"].as_str().unwrap() {
                    "text_delta" => {
                        let t = blocks[i]["text"].as_str().unwrap().to_owned()
                            + d["text"].as_str().unwrap();
                        blocks[i]["text"] = json!(t);
                    }
                    "thinking_delta" => {
                        let t = blocks[i]["thinking"].as_str().unwrap().to_owned()
                            + d["thinking"].as_str().unwrap();
                        blocks[i]["thinking"] = json!(t);
                    }
                    "input_json_delta" => partial[i].push_str(d["partial_json"].as_str().unwrap()),
                    "signature_delta" => blocks[i]["signature"] = d["signature"].clone(),
                    other => panic!("unexpected delta {other}"),
                }
            }
            "message_delta" => delta = v.clone(),
            _ => {}
        }
    }
    for (b, p) in blocks.iter_mut().zip(&partial) {
        if b["type"] == "tool_use" {
            b["input"] = serde_json::from_str(p).unwrap();
        }
    }
    (blocks, delta, names)
}

#[tokio::test]
async fn anthropic_client_openai_upstream_streams_tool_call_fragments() {
    let (mock, up) = start_mock(tool_mock(16)).await;
    let gw = cross_gateway(&up).await;
    let r = anthropic_call(
        &gw,
        json!({"model": "to-oai", "max_tokens": 200, "stream": true,
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let (blocks, delta, names) = assemble_anthropic(&r.text());
    assert_eq!(names.first().unwrap(), "message_start");
    assert_eq!(names.last().unwrap(), "message_stop");
    assert_eq!(blocks[0]["type"], "thinking");
    assert_eq!(blocks[0]["thinking"], "The user wants weather.");
    assert_eq!(blocks[1], json!({"type": "text", "text": "Let me check."}));
    assert_eq!(blocks[2]["type"], "tool_use");
    assert_eq!(blocks[2]["id"], "call_mock_1");
    assert_eq!(blocks[2]["name"], "get_weather");
    assert_eq!(
        blocks[2]["input"],
        serde_json::from_str::<Value>(ARGS).unwrap()
    );
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        delta["usage"]["output_tokens"],
        tool_output_tokens(16),
        "usage from the upstream's final chunk"
    );
    // nenya asked the OpenAI upstream for the usage chunk.
    assert_eq!(
        mock.received()[0].json()["stream_options"],
        json!({"include_usage": true})
    );
    // Every frame is one event.
    assert_eq!(r.text().matches("\n\n").count(), names.len());
}

#[tokio::test]
async fn openai_client_anthropic_upstream_streams_tool_call_fragments() {
    let (_mock, up) = start_mock(tool_mock(16)).await;
    let gw = cross_gateway(&up).await;
    let r = openai_call(
        &gw,
        json!({"model": "to-ant", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "weather?"}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let events = sse_events(&r.text());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let (mut text, mut reasoning, mut args, mut finish, mut usage) = (
        String::new(),
        String::new(),
        String::new(),
        Value::Null,
        Value::Null,
    );
    let mut call_id = Value::Null;
    for (_, d) in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
        let Some(c) = v["choices"].get(0) else {
            continue;
        };
        text += c["delta"]["content"].as_str().unwrap_or("");
        reasoning += c["delta"]["reasoning_content"].as_str().unwrap_or("");
        if let Some(tc) = c["delta"]["tool_calls"].get(0) {
            assert_eq!(tc["index"], 0);
            if !tc["id"].is_null() {
                call_id = tc["id"].clone();
                assert_eq!(tc["function"]["name"], "get_weather");
            }
            args += tc["function"]["arguments"].as_str().unwrap_or("");
        }
        if !c["finish_reason"].is_null() {
            finish = c["finish_reason"].clone();
        }
    }
    assert_eq!(text, "Let me check.");
    assert_eq!(reasoning, "The user wants weather.");
    assert_eq!(call_id, "toolu_mock_1");
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        serde_json::from_str::<Value>(ARGS).unwrap()
    );
    assert_eq!(finish, "tool_calls");
    assert_eq!(usage["completion_tokens"], tool_output_tokens(16));
}

#[tokio::test]
async fn usage_chunk_is_sent_only_when_the_openai_client_asked() {
    let (_mock, up) = start_mock(MockConfig {
        chunks: 2,
        ..MockConfig::default()
    })
    .await;
    let gw = cross_gateway(&up).await;
    let r = openai_call(
        &gw,
        json!({"model": "to-ant", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert!(!r.text().contains("\"usage\""), "{}", r.text());
    assert!(r.text().ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn upstream_errors_are_re_encoded_in_the_client_format_with_their_status() {
    let (_mock, up) = start_mock(MockConfig {
        fault: Some(Fault::Status(429)),
        ..MockConfig::default()
    })
    .await;
    let gw = cross_gateway(&up).await;
    let r = anthropic_call(
        &gw,
        json!({"model": "to-oai", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["message"], "mock: injected failure");
    assert_eq!(v["error"]["error_kind"], "upstream_error");
    let r = openai_call(
        &gw,
        json!({"model": "to-ant", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["message"], "mock: injected failure");
}

#[tokio::test]
async fn a_truncated_or_malformed_upstream_stream_ends_with_a_client_format_error_event() {
    for fault in [Fault::DropAfter(3), Fault::MalformedSse] {
        let (_mock, up) = start_mock(MockConfig {
            chunks: 6,
            delay: Duration::from_millis(15),
            fault: Some(fault.clone()),
            ..MockConfig::default()
        })
        .await;
        let gw = cross_gateway(&up).await;
        let r = anthropic_call(
            &gw,
            json!({"model": "to-oai", "max_tokens": 5, "stream": true,
            "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        let events = sse_events(&r.text());
        let (name, data) = events.last().unwrap();
        assert_eq!(name.as_deref(), Some("error"), "{fault:?}: {}", r.text());
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["error"]["error_kind"], "upstream_protocol_error");
        assert!(!r.text().contains("message_stop"));

        let r = openai_call(
            &gw,
            json!({"model": "to-ant", "stream": true,
            "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        let events = sse_events(&r.text());
        let v: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
        assert_eq!(
            v["error"]["error_kind"],
            "upstream_protocol_error",
            "{fault:?}: {}",
            r.text()
        );
        assert!(!r.text().contains("[DONE]"));
    }
}

#[tokio::test]
async fn multi_turn_tool_history_converts_to_the_upstream_format() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = cross_gateway(&up).await;
    // OpenAI history with parallel tool calls and their results → Anthropic upstream.
    let r = openai_call(
        &gw,
        json!({"model": "to-ant", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{\"x\":1}"}},
            {"id": "c2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
        {"role": "user", "content": "thanks"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = mock.received()[0].json();
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "c1", "name": "a", "input": {"x": 1}},
                {"type": "tool_use", "id": "c2", "name": "b", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "two"}]},
            {"role": "user", "content": "thanks"}
        ])
    );
}

/// A gateway whose `to-gem` agent uses a native-Gemini provider on the mock.
async fn gemini_gateway(mock: &Running) -> Running {
    let cfg = Config::from_json_str(&format!(
        r#"{{"providers": {{"gem": {{"url": "http://{a}/v1beta", "format": "gemini", "auth_style": "bearer+x-goog"}}}},
            "agents": {{"to-gem": {{"models": [{{"provider": "gem", "model": "gemini-up"}}]}}}}}}"#,
        a = mock.addr
    ))
    .unwrap();
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"gem": "{PROVIDER_KEY}"}}}}"#
    ))
    .unwrap();
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

#[tokio::test]
async fn openai_client_gemini_upstream_plain_keeps_thought_signatures() {
    let (mock, up) = start_mock(tool_mock(4)).await;
    let gw = gemini_gateway(&up).await;
    let r = openai_call(&gw, json!({"model": "to-gem", "max_tokens": 99, "temperature": 0.5,
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = &mock.received()[0];
    assert_eq!(rec.uri, "/v1beta/models/gemini-up:generateContent");
    assert_eq!(rec.headers["x-goog-api-key"], PROVIDER_KEY);
    assert!(
        rec.headers.get("authorization").is_none(),
        "no Bearer for native Gemini"
    );
    let sent = rec.json();
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "sys"}]})
    );
    assert_eq!(
        sent["contents"],
        json!([{"role": "user", "parts": [{"text": "weather?"}]}])
    );
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    assert_eq!(
        sent["toolConfig"]["functionCallingConfig"],
        json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]})
    );
    assert_eq!(
        sent["generationConfig"],
        json!({"maxOutputTokens": 99, "temperature": 0.5})
    );

    let v = r.json();
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], "Let me check.");
    assert_eq!(msg["reasoning_content"], "The user wants weather.");
    let call = &msg["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        serde_json::from_str::<Value>(ARGS).unwrap()
    );
    assert_eq!(
        call["extra_content"]["google"]["thought_signature"],
        nenya::services::mock::MOCK_SIGNATURE
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    // The next turn echoes the call and its result: Gemini gets the signature back and the
    // function response under the tool's name.
    let r2 = openai_call(
        &gw,
        json!({"model": "to-gem", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "{\"temp\": 21}"}]}),
    )
    .await;
    assert_eq!(r2.status, 200, "{}", r2.text());
    let sent = mock.received()[1].json();
    assert_eq!(sent["contents"][1]["role"], "model");
    assert_eq!(
        sent["contents"][1]["parts"][0]["thoughtSignature"],
        nenya::services::mock::MOCK_SIGNATURE
    );
    assert_eq!(
        sent["contents"][2]["parts"][0]["functionResponse"],
        json!({"name": "get_weather", "response": {"temp": 21}})
    );
}

#[tokio::test]
async fn anthropic_client_gemini_upstream_streams_and_completes() {
    let (mock, up) = start_mock(tool_mock(6)).await;
    let gw = gemini_gateway(&up).await;
    let r = anthropic_call(
        &gw,
        json!({"model": "to-gem", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "weather?"}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        mock.received()[0].uri,
        "/v1beta/models/gemini-up:streamGenerateContent?alt=sse"
    );
    let (blocks, delta, names) = assemble_anthropic(&r.text());
    assert_eq!(names.last().unwrap(), "message_stop");
    assert_eq!(blocks[0]["type"], "thinking");
    assert_eq!(blocks[1]["text"], "Let me check.");
    assert_eq!(blocks[2]["name"], "get_weather");
    assert_eq!(
        blocks[2]["input"],
        serde_json::from_str::<Value>(ARGS).unwrap()
    );
    assert_eq!(
        delta["delta"]["stop_reason"], "tool_use",
        "STOP with a function call is tool_use"
    );
    assert_eq!(delta["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn openai_client_gemini_upstream_stream_text_only() {
    let (_mock, up) = start_mock(MockConfig {
        chunks: 5,
        ..MockConfig::default()
    })
    .await;
    let gw = gemini_gateway(&up).await;
    let r = openai_call(
        &gw,
        json!({"model": "to-gem", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let events = sse_events(&r.text());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "word0 word1 word2 word3 word4 ");
    let finish: Vec<Value> = events[..events.len() - 1]
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .map(|v| v["choices"][0]["finish_reason"].clone())
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [json!("stop")]);
}

#[tokio::test]
async fn count_tokens_is_forwarded_to_anthropic_upstreams_and_estimated_otherwise() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = cross_gateway(&up).await;
    let body = json!({"model": "to-ant", "messages": [{"role": "user", "content": "count these words please"}]});
    let r = post(
        &gw.url("/v1/messages/count_tokens?beta=true"),
        &[("x-api-key", CLIENT_TOKEN)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.received()[0].uri, "/v1/messages/count_tokens");
    assert_eq!(mock.received()[0].json()["model"], "claude-up");
    assert!(mock.received()[0].json().get("max_tokens").is_none());
    assert_eq!(
        r.json()["input_tokens"],
        (mock.received()[0].body.len() / 4) as u64
    );

    let body = json!({"model": "to-oai", "system": "s", "messages": [{"role": "user", "content": "count these words please"}]});
    let r = post(
        &gw.url("/v1/messages/count_tokens"),
        &[("x-api-key", CLIENT_TOKEN)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let n = r.json()["input_tokens"].as_u64().unwrap();
    assert!(n > 5 && n < 30, "estimate {n}");
    assert_eq!(mock.received().len(), 1, "answered locally");
}

#[tokio::test]
async fn reasoning_effort_and_thinking_budgets_map_across_formats() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = cross_gateway(&up).await;
    // OpenAI reasoning_effort → Anthropic thinking, within Anthropic's constraints.
    let r = openai_call(
        &gw,
        json!({"model": "to-ant", "reasoning_effort": "high", "max_tokens": 1000,
        "temperature": 0.3, "messages": [{"role": "user", "content": "think"}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let sent = mock.received()[0].json();
    let budget = sent["thinking"]["budget_tokens"].as_u64().unwrap();
    assert_eq!(sent["thinking"]["type"], "enabled");
    assert!(budget >= 1024);
    assert!(
        sent["max_tokens"].as_u64().unwrap() > budget,
        "budget below max_tokens: {sent}"
    );
    assert!(
        sent.get("temperature").is_none(),
        "thinking rejects temperature"
    );
    assert!(sent.get("reasoning_effort").is_none());

    // Anthropic thinking → reasoning_effort for reasoning models only.
    let cfg = Config::from_json_str(&format!(
        r#"{{"providers": {{"oai": {{"url": "http://{a}/v1/chat/completions", "capabilities": {{"reasoning": true}}}}}},
            "agents": {{"o": {{"models": [{{"provider": "oai", "model": "o3-mini"}}]}},
                        "g": {{"models": [{{"provider": "oai", "model": "gpt-4o"}}]}}}}}}"#,
        a = up.addr
    ))
    .unwrap();
    let gw2 = start_gateway(
        Gateway::from_config(&cfg, &Secrets::default())
            .unwrap()
            .build(),
    )
    .await;
    for (agent, effort) in [("o", json!("medium")), ("g", Value::Null)] {
        let r = post(
            &gw2.url("/v1/messages"),
            &[],
            json!({"model": agent, "max_tokens": 9000,
            "thinking": {"type": "enabled", "budget_tokens": 5000},
            "messages": [{"role": "user", "content": "think"}]})
            .to_string(),
        )
        .await;
        assert_eq!(r.status, 200);
        let sent = mock.received().last().unwrap().json();
        assert_eq!(
            sent.get("reasoning_effort").cloned().unwrap_or(Value::Null),
            effort,
            "{agent}: {sent}"
        );
        assert!(sent.get("thinking").is_none());
    }
}

#[tokio::test]
async fn provider_capabilities_and_model_rules_shape_what_the_upstream_gets() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    // Built-in names keep their capability rows at a custom URL; unknown ones are conservative.
    let cfg = Config::from_json_str(&format!(
        r#"{{"providers": {{
              "perplexity": {{"url": "http://{a}/v1/chat/completions"}},
              "ollama": {{"url": "http://{a}/v1/chat/completions"}},
              "openrouter": {{"url": "http://{a}/v1/chat/completions"}},
              "custom": {{"url": "http://{a}/v1/chat/completions"}}}}}}"#,
        a = up.addr
    ))
    .unwrap();
    let gw = start_gateway(
        Gateway::from_config(&cfg, &Secrets::default())
            .unwrap()
            .build(),
    )
    .await;
    let body = |model: &str| {
        json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
               "temperature": 0.2, "max_tokens": 50, "reasoning_effort": "low", "tool_choice": "auto",
               "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
               "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"},
                   {"type": "image_url", "image_url": {"url": "https://x/i.png"}}]}]})
        .to_string()
    };
    let url = gw.url("/v1/chat/completions");
    let send = |m: &str| post(&url, &[], body(m));

    assert_eq!(send("perplexity/sonar").await.status, 200);
    let got = mock.received().last().unwrap().json();
    assert!(
        got.get("tools").is_none() && got.get("tool_choice").is_none(),
        "no tool calls: {got}"
    );
    assert!(got.get("stream_options").is_none());
    assert!(got.get("reasoning_effort").is_none());

    assert_eq!(send("ollama/qwen").await.status, 200);
    let got = mock.received().last().unwrap().json();
    assert!(
        got.get("tool_choice").is_none(),
        "ollama quirk strips tool_choice"
    );
    assert!(got.get("tools").is_some());
    assert_eq!(
        got["messages"][0]["content"], "a\nb",
        "no vision, no content arrays: {got}"
    );

    assert_eq!(send("openrouter/o3-mini").await.status, 200);
    let rec = mock.received().last().unwrap().clone();
    assert_eq!(rec.headers["x-title"], "nenya");
    assert!(rec.headers.get("http-referer").is_some());
    let got = rec.json();
    assert!(
        got.get("temperature").is_none(),
        "o-series reject temperature"
    );
    assert_eq!(got["max_completion_tokens"], 50);
    assert!(got.get("max_tokens").is_none());
    assert_eq!(got["reasoning_effort"], "low");
    assert_eq!(got["stream_options"], json!({"include_usage": true}));
    assert_eq!(got["messages"][0]["content"].as_array().unwrap().len(), 3);

    assert_eq!(send("custom/m").await.status, 200);
    let got = mock.received().last().unwrap().json();
    assert!(
        got.get("stream_options").is_none(),
        "unknown providers are conservative"
    );
    assert!(got.get("reasoning_effort").is_none());
    assert_eq!(got["temperature"], 0.2);
    assert!(got.get("tools").is_some());
}
