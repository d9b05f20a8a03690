//! Prefix-cache ordering over loopback HTTP (issue 13 §3): requests whose tools come in a
//! different order, or with a system reminder between turns, reach the upstream with the same
//! prefix; an Anthropic-format upstream gets `cache_control` breakpoints when the client set
//! none, and the client's own breakpoints are left exactly as they were.

use crate::common;

use common::*;
use nenya::Gateway;
use nenya::config::Config;
use nenya::services::MockConfig;
use serde_json::{Value, json};

async fn gateway(up: &Running, section: Option<&str>) -> Running {
    let (mut cfg, secrets) = config_for(up, "");
    if let Some(s) = section {
        cfg.prefix_cache = Config::from_json_str(&format!(r#"{{"prefix_cache": {s}}}"#))
            .unwrap()
            .prefix_cache;
    }
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

fn tool(name: &str) -> Value {
    json!({"type": "function", "function": {"name": name, "description": format!("{name} a file"),
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}})
}

fn request(model: &str, tools: &[&str], reminder_late: bool) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": "You are a careful coding agent."}),
        json!({"role": "user", "content": "open main.rs"}),
    ];
    let reminder = json!({"role": "system", "content": "Reminder: answer briefly."});
    if reminder_late {
        messages.push(reminder);
    } else {
        messages.insert(1, reminder);
    }
    json!({"model": model, "messages": messages,
           "tools": tools.iter().map(|t| tool(t)).collect::<Vec<_>>()})
}

fn body(mock: &nenya::services::MockProvider, i: usize) -> Value {
    serde_json::from_slice(&mock.received()[i].body).unwrap()
}

#[tokio::test]
async fn tools_in_any_order_and_late_system_messages_reach_the_upstream_as_one_prefix() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway(&up, Some("{}")).await;
    for (tools, late) in [
        (["write", "read", "grep"], false),
        (["grep", "write", "read"], true),
    ] {
        let r = post_chat(&gw, &request("coder", &tools, late)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (a, b) = (&mock.received()[0].body, &mock.received()[1].body);
    assert_eq!(a, b, "byte-identical upstream requests");
    let v = body(&mock, 0);
    let names: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["grep", "read", "write"]);
    let roles: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "system", "user"]);
    // No breakpoints for an OpenAI-format upstream.
    assert!(!String::from_utf8_lossy(a).contains("cache_control"));
}

#[tokio::test]
async fn without_the_section_the_upstream_sees_the_clients_order() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway(&up, None).await;
    let r = post_chat(&gw, &request("coder", &["write", "read"], true)).await;
    assert_eq!(r.status, 200);
    let v = body(&mock, 0);
    assert_eq!(v["tools"][0]["function"]["name"], "write");
    assert_eq!(v["messages"][2]["role"], "system");
}

#[tokio::test]
async fn an_anthropic_upstream_gets_breakpoints_unless_the_client_placed_its_own() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway(&up, Some(r#"{"cache_control_ttl": "1h"}"#)).await;
    // An OpenAI client, an Anthropic-format upstream.
    let r = post_chat(&gw, &request("claude-agent", &["write", "read"], false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = body(&mock, 0);
    let marker = json!({"type": "ephemeral", "ttl": "1h"});
    let system = v["system"].as_array().expect("system blocks");
    assert_eq!(system.last().unwrap()["cache_control"], marker, "{v}");
    assert_eq!(v["tools"][1]["name"], "write");
    assert_eq!(v["tools"][1]["cache_control"], marker, "{v}");
    assert!(v["tools"][0].get("cache_control").is_none());
    let last = v["messages"].as_array().unwrap().last().unwrap();
    let block = last["content"].as_array().unwrap().last().unwrap();
    assert_eq!(block["cache_control"], marker, "{v}");
    assert_eq!(
        String::from_utf8_lossy(&mock.received()[0].body)
            .matches("cache_control")
            .count(),
        3
    );

    // An Anthropic client with its own breakpoint: left exactly as it was, nothing added.
    let (k, t) = bearer();
    let client = json!({"model": "claude-agent", "max_tokens": 32,
        "system": [{"type": "text", "text": "You are a careful coding agent.",
                    "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "write", "input_schema": {"type": "object"}},
                  {"name": "read", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "open main.rs"}]});
    let r = post(&gw.url("/v1/messages"), &[(k, &t)], client.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = body(&mock, 1);
    assert_eq!(
        v["system"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(
        String::from_utf8_lossy(&mock.received()[1].body)
            .matches("cache_control")
            .count(),
        1,
        "{v}"
    );
    assert_eq!(v["tools"][0]["name"], "read", "tools are still sorted");
}

#[test]
fn a_bad_ttl_is_a_config_error_naming_the_field() {
    let cfg = Config::from_json_str(r#"{"prefix_cache": {"cache_control_ttl": "2h"}}"#).unwrap();
    let e = Gateway::from_config(&cfg, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("prefix_cache.cache_control_ttl") && e.contains("2h"),
        "{e}"
    );
}
