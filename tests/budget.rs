//! Context-budget trimming: black-box through the gateway (an oversized conversation reaches
//! the upstream within budget, a small one untouched) and properties over random conversations.

mod common;

use common::*;
use nenya::Gateway;
use nenya::config::Config;
use nenya::layers::budget::{BudgetConfig, trim};
use nenya::model::{ApiFormat, ChatRequest, Content, Message, Part, Role};
use nenya::services::MockConfig;
use proptest::prelude::*;
use serde_json::{Value, json};

fn tokens(req: &ChatRequest) -> u64 {
    req.messages.iter().map(Message::estimate_tokens).sum()
}

/// Every tool result answers a call still present before it, and every call kept its results.
fn pairs_intact(req: &ChatRequest) -> bool {
    let mut calls = std::collections::HashSet::new();
    let mut answered = std::collections::HashSet::new();
    for m in &req.messages {
        if let Content::Parts(ps) = &m.content {
            for p in ps {
                match p {
                    Part::ToolUse { id, .. } => {
                        calls.insert(id.clone());
                    }
                    Part::ToolResult { tool_use_id, .. } => {
                        if !calls.contains(tool_use_id) {
                            return false;
                        }
                        answered.insert(tool_use_id.clone());
                    }
                    _ => {}
                }
            }
        }
    }
    calls == answered
}

/// A conversation: system, then `turns` of (user, assistant tool call, tool result, assistant),
/// then a final user question. Sizes in bytes.
fn conversation(turns: usize, size: usize) -> Value {
    let mut messages = vec![json!({"role": "system", "content": "You are a careful assistant."})];
    for i in 0..turns {
        messages
            .push(json!({"role": "user", "content": format!("question {i} {}", "q".repeat(size))}));
        messages.push(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{i}"),
            "type": "function", "function": {"name": "read", "arguments": "{\"f\":\"a.rs\"}"}}]}),
        );
        messages.push(json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": "r".repeat(size)}));
        messages.push(json!({"role": "assistant", "content": format!("answer {i}")}));
    }
    messages.push(json!({"role": "user", "content": "the last question"}));
    json!({"model": "small", "max_tokens": 500, "messages": messages})
}

async fn gateway(up: &Running) -> Running {
    let cfg = Config::from_json_str(&format!(
        r#"{{"providers": {{"up": {{"url": "http://{}/v1/chat/completions", "auth_style": "bearer"}}}},
            "agents": {{"small": {{"models": [{{"provider": "up", "model": "m", "max_context": 3000}}]}}}}}}"#,
        up.addr
    ))
    .unwrap();
    let (_, secrets) = config_for(up, "");
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

/// Sends `body` through a gateway whose agent `small` has a 3,000-token window; returns the
/// answer and the body the upstream received.
async fn through_small_window(body: &Value) -> (Reply, bytes::Bytes) {
    let (mock, up) = start_mock(MockConfig {
        echo: true,
        ..MockConfig::default()
    })
    .await;
    let gw = gateway(&up).await;
    let (k, v) = bearer();
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = mock.received()[0].body.clone();
    (r, sent)
}

#[tokio::test]
async fn an_oversized_conversation_reaches_the_upstream_within_budget() {
    let (r, sent) = through_small_window(&conversation(20, 800)).await;
    let header = r.headers["x-nenya-context"].to_str().unwrap().to_string();
    assert!(header.starts_with("trimmed tokens="), "{header}");
    let got = nenya::adapters::decode_request(ApiFormat::OpenAi, &sent).unwrap();
    assert!(tokens(&got) <= 2500, "{} > 3000 - 500", tokens(&got));
    assert_eq!(got.messages[0].role, Role::System);
    assert!(
        matches!(&got.messages[0].content, Content::Text(t) if t == "You are a careful assistant.")
    );
    let last = got.messages.last().unwrap();
    assert!(matches!(&last.content, Content::Text(t) if t == "the last question"));
    assert_eq!(got.messages[1].role, Role::User, "opens with a user turn");
    assert!(pairs_intact(&got));
}

#[tokio::test]
async fn a_conversation_that_fits_is_untouched() {
    let body = conversation(2, 100);
    let (r, sent) = through_small_window(&body).await;
    assert!(!r.headers.contains_key("x-nenya-context"));
    let got: Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(got["messages"], body["messages"]);
}

#[test]
fn one_huge_last_message_is_cut_middle_out_with_a_marker() {
    let text = format!("HEAD{}TAIL", "m".repeat(40_000));
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": text}]});
    let mut req =
        nenya::adapters::decode_request(ApiFormat::OpenAi, body.to_string().as_bytes()).unwrap();
    let report = trim(&mut req, 2_000, &BudgetConfig::default()).unwrap();
    assert!(report.after <= 2_000 && report.truncated >= 1, "{report:?}");
    let Content::Text(t) = &req.messages[1].content else {
        panic!()
    };
    assert!(t.starts_with("HEAD") && t.ends_with("TAIL"));
    assert!(t.contains("nenya trimmed"));
}

fn arb_conversation() -> impl Strategy<Value = Value> {
    // Units: plain user/assistant text, or a tool call with 1-2 results.
    let unit = prop_oneof![
        (0usize..3000).prop_map(|n| vec![json!({"role": "user", "content": "u".repeat(n)})]),
        (0usize..3000).prop_map(|n| vec![json!({"role": "assistant", "content": "a".repeat(n)})]),
        (1usize..3, 0usize..4000, any::<u16>()).prop_map(|(k, n, id)| {
            let mut v = vec![json!({"role": "assistant", "content": null, "tool_calls": (0..k).map(|j| json!(
                {"id": format!("c{id}_{j}"), "type": "function", "function": {"name": "t", "arguments": "{}"}})).collect::<Vec<_>>()})];
            for j in 0..k {
                v.push(json!({"role": "tool", "tool_call_id": format!("c{id}_{j}"), "content": "t".repeat(n)}));
            }
            v
        }),
    ];
    (prop::collection::vec(unit, 0..30), 1usize..2000).prop_map(|(units, last)| {
        let mut messages = vec![json!({"role": "system", "content": "system prompt"})];
        let mut seen = std::collections::HashSet::new();
        for u in units {
            // Tool ids must be unique across the conversation.
            let id = u[0]["tool_calls"][0]["id"].as_str().map(str::to_owned);
            if id.is_some_and(|i| !seen.insert(i)) {
                continue;
            }
            messages.extend(u);
        }
        messages.push(json!({"role": "user", "content": "L".repeat(last)}));
        json!({"model": "m", "messages": messages})
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn trimming_fits_the_budget_and_keeps_what_matters(conv in arb_conversation(), budget in 600u64..20_000) {
        let mut req = nenya::adapters::decode_request(ApiFormat::OpenAi, conv.to_string().as_bytes()).unwrap();
        let before = req.clone();
        let report = trim(&mut req, budget, &BudgetConfig::default());
        if tokens(&before) <= budget {
            prop_assert!(report.is_none());
            prop_assert_eq!(&req, &before);
        } else {
            prop_assert!(tokens(&req) <= budget, "{} > {}", tokens(&req), budget);
            prop_assert_eq!(req.messages[0].role, Role::System);
            prop_assert!(matches!(&req.messages[0].content, Content::Text(t) if t == "system prompt"));
            prop_assert_eq!(req.messages.last().unwrap().role, Role::User);
            prop_assert!(pairs_intact(&req));
            if req.messages.len() > 2 {
                prop_assert_eq!(req.messages[1].role, Role::User, "opens with a user turn");
            }
        }
    }
}
