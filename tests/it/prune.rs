//! History pruning through the gateway: old thinking and stale tool results go, the current
//! tool loop stays exactly as sent, every call keeps its result.

use crate::common;

use common::*;
use nenya::Gateway;
use nenya::config::Config;
use nenya::services::MockConfig;
use serde_json::{Value, json};

/// An echo mock and a gateway with this `compaction` section.
async fn with_compaction(section: &str) -> (nenya::services::MockProvider, Running, Running) {
    let (mock, up) = start_mock(MockConfig {
        echo: true,
        ..MockConfig::default()
    })
    .await;
    let (mut cfg, secrets) = config_for(&up, "");
    cfg.compaction = Config::from_json_str(&format!(r#"{{"compaction": {section}}}"#))
        .unwrap()
        .compaction;
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    (mock, up, gw)
}

#[tokio::test]
async fn old_thoughts_and_stale_results_are_pruned_the_current_loop_is_not() {
    let (mock, _up, gw) = with_compaction(
        r#"{"prune_thoughts": true, "prune_stale_tools": true, "keep_recent_tool_results": 0}"#,
    )
    .await;
    let big = "line of output\n".repeat(100);
    let sent = json!({"model": "coder", "messages": [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": null, "reasoning_content": "I should call ls",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": big},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "now read a.rs"},
        {"role": "assistant", "content": null, "reasoning_content": "read it",
         "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c2", "content": big}
    ]});
    let (k, v) = bearer();
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        sent.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-nenya-pruned"], "thoughts=1 tool_results=1");
    let got: Value = serde_json::from_slice(&mock.received()[0].body).unwrap();
    let m = got["messages"].as_array().unwrap();
    assert_eq!(m.len(), 7, "no message dropped");
    assert!(
        m[1].get("reasoning_content").is_none(),
        "old thinking gone: {}",
        m[1]
    );
    assert_eq!(m[1]["tool_calls"][0]["id"], "c1", "the call stays");
    assert_eq!(
        m[2]["content"],
        "[nenya pruned this old result: `ls` succeeded, 1500 bytes]"
    );
    assert_eq!(m[5], sent["messages"][5], "the current loop is untouched");
    assert_eq!(m[6], sent["messages"][6]);
    let metrics = scrape_metrics(&gw).await;
    assert!(
        metrics.contains("nenya_context_rewrites_total{layer=\"prune\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn compaction_minifies_json_results_and_folds_duplicates() {
    let (mock, _up, gw) = with_compaction(
        r#"{"json_minify": true, "collapse_whitespace": true, "fold_duplicates": true}"#,
    )
    .await;
    let pretty = serde_json::to_string_pretty(&json!({"files": (0..30).map(|i| format!("src/f{i}.rs")).collect::<Vec<_>>(), "n": 12345678901234567890u64})).unwrap();
    let call = |id: &str| json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function", "function": {"name": "ls", "arguments": "{\"d\": \"/\"}"}}]});
    let sent = json!({"model": "coder", "messages": [
        {"role": "user", "content": "look  \n\n\n\nhere\n```\nkeep   \n\n\n\n```"},
        call("c1"), {"role": "tool", "tool_call_id": "c1", "content": pretty},
        call("c2"), {"role": "tool", "tool_call_id": "c2", "content": pretty},
        {"role": "user", "content": "thanks"}
    ]});
    let (k, v) = bearer();
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        sent.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers.contains_key("x-nenya-compacted"));
    let got: Value = serde_json::from_slice(&mock.received()[0].body).unwrap();
    let m = got["messages"].as_array().unwrap();
    assert_eq!(
        m[0]["content"], "look\n\nhere\n```\nkeep   \n\n\n\n```",
        "fences untouched"
    );
    let minified = m[2]["content"].as_str().unwrap();
    assert!(
        !minified.contains('\n') && minified.contains("12345678901234567890"),
        "{minified}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(minified).unwrap(),
        serde_json::from_str::<Value>(&pretty).unwrap()
    );
    assert_eq!(
        m[4]["content"],
        "[nenya: identical to the result of call `c1` above]"
    );
    assert_eq!(
        m[1]["tool_calls"][0]["function"]["arguments"], "{\"d\": \"/\"}",
        "arguments untouched"
    );
}

#[tokio::test]
async fn a_request_with_nothing_to_prune_or_compact_goes_upstream_as_sent() {
    let (mock, _up, gw) = with_compaction(
        r#"{"prune_thoughts": true, "prune_stale_tools": true, "keep_recent_tool_results": 0,
            "json_minify": true, "collapse_whitespace": true, "fold_duplicates": true}"#,
    )
    .await;
    // Old results too small to summarise, compact JSON, no blank-line runs, no repeats, no
    // thinking: every switch is on and none applies. Spacing and key order that encoding again
    // would change show that the body went as it came.
    let sent = r#"{ "messages": [ {"role":"user","content":"list files"},
        {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"ls","arguments":"{}"}}]},
        {"role":"tool","tool_call_id":"c1","content":"{\"files\":[\"a.rs\"]}"},
        {"role":"user","content":"thanks"} ], "model" : "coder" }"#;
    let (k, v) = bearer();
    let r = post(&gw.url("/v1/chat/completions"), &[(k, &v)], sent.to_owned()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers.get("x-nenya-pruned").is_none());
    assert!(r.headers.get("x-nenya-compacted").is_none());
    assert_eq!(
        String::from_utf8_lossy(&mock.received()[0].body),
        sent.replacen("\"coder\"", "\"upstream-model-1\"", 1)
    );
}
