//! A request no layer changed reaches a same-format upstream as the client wrote it, with only
//! the model name replaced; a request a layer changed, or one an upstream could read otherwise
//! than nenya did (a key sent twice), or one the decoder normalised, is encoded again.

use crate::common::*;
use nenya::Gateway;
use nenya::config::Config;
use nenya::services::MockConfig;
use serde_json::Value;

const GH: &str = "ghp_R8mWq2ZpX4cV7bN1kL9sD3fG6hJ0aQ5eT2yU";

/// Sends `body` to `path` through the full default stack, on the test config changed by
/// `tweak`; the bytes the upstream received.
async fn received(path: &str, body: &str, tweak: impl FnOnce(&mut Config)) -> bytes::Bytes {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let (mut cfg, secrets) = config_for(&up, "");
    tweak(&mut cfg);
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    let (k, v) = bearer();
    let r = post(&gw.url(path), &[(k, &v)], body.to_owned()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    mock.received().pop().unwrap().body
}

async fn upstream_bytes(body: &str) -> bytes::Bytes {
    received("/v1/chat/completions", body, |_| {}).await
}

/// An Anthropic body, with the prefix cache section when given.
async fn anthropic_upstream_bytes(body: &str, prefix_cache: Option<&str>) -> bytes::Bytes {
    received("/v1/messages", body, |cfg| {
        if let Some(s) = prefix_cache {
            cfg.prefix_cache = Config::from_json_str(&format!(r#"{{"prefix_cache": {s}}}"#))
                .unwrap()
                .prefix_cache;
        }
    })
    .await
}

#[tokio::test]
async fn a_clean_request_reaches_the_upstream_byte_for_byte_with_the_model_replaced() {
    // Spacing, key order, escapes and number spelling that encoding again would all change.
    for body in [
        "{ \"messages\" : [ {\"content\": \"caf\\u00e9 \\\"quoted\\\" \\/ ok\", \"role\":\"user\"} ],\n \"model\":\"coder\", \"temperature\": 0.50, \"seed\": 7e0 }",
        r#"{"model":"coder","stream":true,"messages":[{"role":"system","content":"Be terse."},
            {"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"read","arguments":"{\"path\":\"a.rs\"}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"fn main() {}"}]}"#,
    ] {
        let got = upstream_bytes(body).await;
        let expected = body.replacen("\"coder\"", "\"upstream-model-1\"", 1);
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }
}

#[tokio::test]
async fn a_redacted_request_reaches_the_upstream_as_sent_with_the_new_text_in_place() {
    let body = format!(
        "{{ \"model\": \"coder\", \"messages\": [ {{\"role\": \"user\", \"content\": \"token {GH}\"}} ] }}"
    );
    let got = upstream_bytes(&body).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "{ \"model\": \"upstream-model-1\", \"messages\": [ {\"role\": \"user\", \"content\": \"token [REDACTED:github_pat]\"} ] }"
    );
}

#[tokio::test]
async fn a_request_a_layer_changed_is_encoded_from_what_the_layer_left() {
    // The secret also stands in a field the gateway does not know: it is redacted there too,
    // which the client's body cannot take in place, so the request is encoded.
    let body = format!(
        "{{ \"model\": \"coder\", \"metadata\": {{\"note\": \"token {GH}\"}}, \"messages\": [ {{\"role\": \"user\", \"content\": \"token {GH}\"}} ] }}"
    );
    let got = upstream_bytes(&body).await;
    let text = String::from_utf8_lossy(&got);
    let sent: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(
        sent["messages"][0]["content"],
        "token [REDACTED:github_pat]"
    );
    assert_eq!(sent["metadata"]["note"], "token [REDACTED:github_pat]");
    assert!(!text.contains(GH), "{text}");
    assert!(
        text.starts_with(r#"{"model":"upstream-model-1","#),
        "{text}"
    );
}

#[tokio::test]
async fn a_key_sent_twice_never_reaches_the_upstream_as_sent() {
    // serde_json keeps the last `content`, other parsers the first: whichever one the secret
    // is in, the upstream must not get it.
    for body in [
        format!(
            r#"{{"model":"coder","messages":[{{"role":"user","content":"{GH}","content":"hi"}}]}}"#
        ),
        format!(
            r#"{{"model":"coder","messages":[{{"role":"user","content":"hi","content":"{GH}"}}]}}"#
        ),
        format!(
            r#"{{"model":"coder","model":"coder","messages":[{{"role":"user","content":"{GH}","content":"hi"}}]}}"#
        ),
    ] {
        let got = upstream_bytes(&body).await;
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains(GH), "{text}");
        let v: Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["messages"][0].as_object().unwrap().len(), 2, "{text}");
    }
}

#[tokio::test]
async fn a_body_the_decoder_normalised_is_encoded_again() {
    // A tool call's `index` (a streaming field) is dropped, an object `arguments` becomes text.
    let body = r#"{"model":"coder","messages":[{"role":"user","content":"go"},
        {"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"c1","type":"function",
        "function":{"name":"f","arguments":{"a":1}}}]},
        {"role":"tool","tool_call_id":"c1","content":"done"}]}"#;
    let got = upstream_bytes(body).await;
    let v: Value = serde_json::from_slice(&got).unwrap();
    let call = &v["messages"][1]["tool_calls"][0];
    assert!(call.get("index").is_none(), "{v}");
    assert_eq!(call["function"]["arguments"], r#"{"a":1}"#);
    assert_eq!(v["model"], "upstream-model-1");
}

#[tokio::test]
async fn fields_the_provider_does_not_accept_are_still_removed() {
    // A configured provider with no capabilities listed: conservative, so no `stream_options`
    // and no `reasoning_effort`. The body is otherwise clean.
    let body = r#"{"model":"coder","stream":true,"stream_options":{"include_usage":true},
        "reasoning_effort":"high","messages":[{"role":"user","content":"hi"}]}"#;
    let got = received("/v1/chat/completions", body, |cfg| {
        let url = cfg.providers["up"].url.clone().unwrap();
        let plain = Config::from_json_str(&format!(
            r#"{{"providers": {{"up": {{"url": "{url}", "auth_style": "bearer"}}}}}}"#
        ))
        .unwrap();
        cfg.providers
            .insert("up".into(), plain.providers["up"].clone());
    })
    .await;
    let v: Value = serde_json::from_slice(&got).unwrap();
    assert!(v.get("stream_options").is_none(), "{v}");
    assert!(v.get("reasoning_effort").is_none(), "{v}");
    assert_eq!(v["messages"][0]["content"], "hi");
}

#[tokio::test]
async fn a_clean_anthropic_request_reaches_the_upstream_byte_for_byte() {
    let body = r#"{ "max_tokens" : 1024, "system": [{"type":"text","text":"Be terse.","cache_control":{"type":"ephemeral"}}],
        "messages": [{"role":"user","content":"read a.rs"},
          {"role":"assistant","content":[{"type":"thinking","thinking":"hm","signature":"c2ln"},
            {"type":"tool_use","id":"toolu_1","name":"read","input":{ "path" : "a.rs" }}]},
          {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"fn main() {}"}]}],
        "tools": [{"name":"read","input_schema":{"type":"object"}}], "model": "claude-agent", "stream": true }"#;
    let expected = body.replacen("\"claude-agent\"", "\"claude-upstream\"", 1);
    let got = anthropic_upstream_bytes(body, None).await;
    assert_eq!(String::from_utf8_lossy(&got), expected);
    // With the prefix cache on, the client's own breakpoint means none are added: still as sent.
    let got = anthropic_upstream_bytes(body, Some("{}")).await;
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

#[tokio::test]
async fn breakpoints_the_client_did_not_place_are_still_added() {
    let body = r#"{"model":"claude-agent","max_tokens":64,"system":"Be terse.",
        "messages":[{"role":"user","content":"hi"}]}"#;
    let got = anthropic_upstream_bytes(body, Some("{}")).await;
    let v: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(v["system"][0]["cache_control"]["type"], "ephemeral", "{v}");
    // Without the section the same body goes as it came.
    let got = anthropic_upstream_bytes(body, None).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        body.replacen("\"claude-agent\"", "\"claude-upstream\"", 1)
    );
}

#[tokio::test]
async fn a_provider_without_content_arrays_gets_a_request_of_strings_as_sent() {
    let no_arrays = |cfg: &mut Config| {
        let caps = &mut cfg.providers.get_mut("up").unwrap().capabilities;
        caps.insert("content_arrays".into(), false);
        caps.insert("vision".into(), false);
    };
    // Nothing in it is an array the provider would flatten: as sent.
    let body = r#"{"model":"coder", "messages":[{"role":"system","content":"Be terse."},
        {"role":"user","content":"read a.rs"},
        {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"read","arguments":"{}"}}]},
        {"role":"tool","tool_call_id":"c1","content":"fn main() {}"}]}"#;
    let got = received("/v1/chat/completions", body, no_arrays).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        body.replacen("\"coder\"", "\"upstream-model-1\"", 1)
    );
    // Text parts, in a user and in a tool message, are joined into strings; an image is removed.
    let body = r#"{"model":"coder","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
        {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"read","arguments":"{}"}}]},
        {"role":"tool","tool_call_id":"c1","content":[{"type":"text","text":"out"}]},
        {"role":"user","content":[{"type":"text","text":"see"},{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}"#;
    let got = received("/v1/chat/completions", body, no_arrays).await;
    let v: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(v["messages"][0]["content"], "a\nb", "{v}");
    assert_eq!(v["messages"][2]["content"], "out", "{v}");
    assert_eq!(v["messages"][3]["content"], "see", "{v}");
}

#[tokio::test]
async fn a_model_family_rule_sends_the_long_way_only_requests_it_changes() {
    let gpt5 = |cfg: &mut Config| {
        let entry = &mut cfg.agents.get_mut("coder").unwrap().models[0];
        let nenya::config::ModelEntry::Object(o) = entry else {
            panic!("the test agent names its provider")
        };
        o.model = Some("gpt-5-mini".into());
    };
    // Nothing the rule drops or renames: as sent.
    let body = r#"{"model":"coder", "max_completion_tokens": 64, "seed": 1,
        "messages":[{"role":"user","content":"hi"}]}"#;
    let got = received("/v1/chat/completions", body, gpt5).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        body.replacen("\"coder\"", "\"gpt-5-mini\"", 1)
    );
    // A sampling parameter is dropped; `max_tokens` becomes `max_completion_tokens`, also when
    // both were sent.
    for body in [
        r#"{"model":"coder","temperature":0.2,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"coder","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"coder","max_tokens":32,"max_completion_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#,
    ] {
        let got = received("/v1/chat/completions", body, gpt5).await;
        let v: Value = serde_json::from_slice(&got).unwrap();
        assert!(v.get("temperature").is_none(), "{v}");
        assert!(v.get("max_tokens").is_none(), "{v}");
        assert_eq!(v["model"], "gpt-5-mini", "{v}");
        if body.contains("max_tokens") {
            assert!(v["max_completion_tokens"].is_u64(), "{v}");
        }
    }
}

#[tokio::test]
async fn a_secret_in_an_anthropic_document_reaches_the_upstream_redacted() {
    let body = format!(
        r#"{{"model":"claude-agent","max_tokens":64,"messages":[{{"role":"user","content":[{{"type":"document","source":{{"type":"text","media_type":"text/plain","data":"ci token {GH}"}}}},{{"type":"text","text":"what does it say?"}}]}}]}}"#
    );
    let got = anthropic_upstream_bytes(&body, None).await;
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains(GH), "{text}");
    let sent: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(
        sent["messages"][0]["content"][0]["source"]["data"],
        "ci token [REDACTED:github_pat]"
    );
}

#[tokio::test]
async fn a_large_request_sent_in_pieces_arrives_whole_with_its_length() {
    // The client's buffer is forwarded around the new model name without being joined: the
    // upstream must still see one body, byte for byte, with a Content-Length (not chunked).
    let code = "fn main() {\n    println!(\"hi\");\n}\n".repeat(1200); // under the tests' 64 KiB limit
    let body =
        serde_json::json!({"model": "coder", "messages": [{"role": "user", "content": code}]})
            .to_string();
    let (mock, up) = start_mock(MockConfig::default()).await;
    let (cfg, secrets) = config_for(&up, "");
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    let (k, v) = bearer();
    let r = post(&gw.url("/v1/chat/completions"), &[(k, &v)], body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = mock.received().pop().unwrap();
    let expected = body.replacen("\"coder\"", "\"upstream-model-1\"", 1);
    assert!(got.body == expected.as_bytes(), "the body arrived changed");
    assert_eq!(
        got.headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(expected.len().to_string().as_str())
    );
    assert!(got.headers.get("transfer-encoding").is_none());
}
