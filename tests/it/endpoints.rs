//! Both ingress endpoints, streaming and not, over real loopback HTTP against the mock
//! upstream in echo mode: what the client gets, and exactly what the upstream received.

use crate::common;

use common::*;
use nenya::services::MockConfig;
use serde_json::{Value, json};

fn echo() -> MockConfig {
    MockConfig {
        echo: true,
        chunks: 5,
        ..MockConfig::default()
    }
}

#[tokio::test]
async fn openai_request_reaches_upstream_with_provider_key_and_nothing_lost() {
    let (mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let sent = json!({
        "model": "coder",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                          {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "ls", "arguments": "{\"d\":\"/\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a b c"}
        ],
        "temperature": 0.2,
        "seed": 7,
        "stream_options": null,
        "tools": [{"type": "function", "function": {"name": "ls", "description": "list", "parameters": {"type": "object"}, "strict": true}}],
        "tool_choice": "required",
        "max_completion_tokens": 99,
        "stop": "END",
        "user": "u-1"
    });
    let (k, v) = bearer();
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[
            (k, &v),
            ("x-custom-header", "private"),
            ("cookie", "session=abc"),
        ],
        sent.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    let got = mock.received();
    assert_eq!(got.len(), 1);
    let rec = &got[0];
    assert_eq!(rec.uri, "/v1/chat/completions");
    assert_eq!(
        rec.headers["authorization"],
        format!("Bearer {PROVIDER_KEY}"),
        "the provider key is sent"
    );
    let all_headers = format!("{:?}", rec.headers);
    assert!(
        !all_headers.contains(CLIENT_TOKEN),
        "client token leaked upstream"
    );
    assert!(rec.headers.get("x-custom-header").is_none());
    assert!(rec.headers.get("cookie").is_none());

    // The upstream sees the same request, with the agent replaced by the upstream model.
    let mut expected = sent.clone();
    expected["model"] = json!("upstream-model-1");
    assert_eq!(rec.json(), expected);
}

#[tokio::test]
async fn anthropic_request_keeps_cache_control_and_uses_x_api_key() {
    let (mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let sent = json!({
        "model": "claude-agent",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig=="},
                {"type": "tool_use", "id": "tu_1", "name": "ls", "input": {"d": "/", "n": 2}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "ok", "is_error": false}]}
        ],
        "metadata": {"user_id": "u-9"},
        "context_management": {"edits": []},
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "tools": [{"name": "ls", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        "stop_sequences": ["X"],
        "top_k": 3
    });
    let r = post(
        &gw.url("/v1/messages?beta=true"),
        &[
            ("x-api-key", CLIENT_TOKEN),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "tools-2024"),
            ("anthropic-beta", "files-2025"),
        ],
        sent.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");

    let rec = &mock.received()[0];
    assert_eq!(rec.uri, "/v1/messages");
    assert_eq!(rec.headers["x-api-key"], PROVIDER_KEY);
    assert!(rec.headers.get("authorization").is_none());
    assert_eq!(rec.headers["anthropic-version"], "2023-06-01");
    // Each line of a forwarded header goes on, in order.
    let betas: Vec<_> = rec
        .headers
        .get_all("anthropic-beta")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(betas, ["tools-2024", "files-2025"]);
    let mut expected = sent.clone();
    expected["model"] = json!("claude-upstream");
    assert_eq!(rec.json(), expected);
}

#[tokio::test]
async fn anthropic_version_is_added_when_the_client_sends_none() {
    let (mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let body = json!({"model": "claude-agent", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let r = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", CLIENT_TOKEN)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        mock.received()[0].headers["anthropic-version"],
        "2023-06-01"
    );
}

#[tokio::test]
async fn openai_stream_passes_through_event_by_event() {
    let (mock, up) = start_mock(MockConfig {
        chunks: 6,
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let body = json!({"model": "coder", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&r.text());
    // role chunk + 6 content + finish + usage + [DONE]
    assert_eq!(events.len(), 10, "{}", r.text());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let text: String = events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "word0 word1 word2 word3 word4 word5 ");
    let usage: Value = serde_json::from_str(&events[8].1).unwrap();
    assert_eq!(
        usage["usage"]["completion_tokens"], 6,
        "the usage chunk survives"
    );
    assert_eq!(mock.received()[0].json()["stream"], true);
}

#[tokio::test]
async fn anthropic_stream_passes_through_with_event_names() {
    let (_mock, up) = start_mock(MockConfig {
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_for_mock(&up, "").await;
    let body = json!({"model": "claude-agent", "max_tokens": 5, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = post(
        &gw.url("/v1/messages"),
        &[("x-api-key", CLIENT_TOKEN)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let names: Vec<String> = sse_events(&r.text())
        .into_iter()
        .filter_map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let events = sse_events(&r.text());
    let delta: Value = serde_json::from_str(&events[7].1).unwrap();
    assert_eq!(
        delta["usage"]["output_tokens"], 3,
        "message_delta usage survives"
    );
}

#[tokio::test]
async fn provider_slash_model_and_registry_names_route() {
    let (mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let body = json!({"model": "up/some-model", "messages": [{"role": "user", "content": "hi"}]});
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(mock.received()[0].json()["model"], "some-model");
}

#[tokio::test]
async fn healthz_is_open_without_a_token() {
    let (_mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let r = send(
        http::Request::get(gw.url("/healthz"))
            .body(nenya::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
}

#[tokio::test]
async fn upstream_error_status_and_body_are_passed_on() {
    let (_mock, up) = start_mock(MockConfig {
        fault: Some(nenya::services::Fault::Status(429)),
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let body = json!({"model": "coder", "messages": [{"role": "user", "content": "hi"}]});
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["message"], "mock: injected failure");
}
