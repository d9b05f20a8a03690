//! Context-budget trimming: black-box through the gateway (an oversized conversation reaches
//! the upstream within budget, a small one untouched) and properties over random conversations.

use crate::common;

use common::*;
use nenya::Gateway;
use nenya::config::Config;
use nenya::layers::budget::{BudgetConfig, trim};
use nenya::model::{ApiFormat, ChatRequest, Content, Part, Role};
use nenya::services::MockConfig;
use nenya::tokens::TokenCounter;
use proptest::prelude::*;
use serde_json::{Value, json};

/// The prompt's tokens by the real tokenizer of its model.
fn tokens(req: &ChatRequest) -> u64 {
    let c = TokenCounter::for_model(&req.model);
    req.messages.iter().map(|m| c.count_message(m)).sum::<u64>() + c.count_tools(req)
}

/// About `bytes` bytes of varied prose and code (a run of one letter would tokenise far
/// denser than anything real).
fn words(seed: u64, bytes: usize) -> String {
    const W: &[&str] = &[
        "the",
        "gateway",
        "fn",
        "main()",
        "{",
        "}",
        "let",
        "x",
        "=",
        "42;",
        "error:",
        "retry",
        "context",
        "window",
        "tokens",
        "stream",
        "0x7f3a",
        "user_id",
        "println!(\"{}\");",
        "database",
        "migration",
        "failed",
        "->",
        "Result<()>",
        "//",
        "TODO",
        "provider",
        "\n",
    ];
    let mut s = String::with_capacity(bytes + 16);
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    while s.len() < bytes {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(W[(x >> 33) as usize % W.len()]);
        s.push(' ');
    }
    s
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
        messages.push(
            json!({"role": "user", "content": format!("question {i} {}", words(i as u64, size))}),
        );
        messages.push(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{i}"),
            "type": "function", "function": {"name": "read", "arguments": "{\"f\":\"a.rs\"}"}}]}),
        );
        messages.push(json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": words(1000 + i as u64, size)}));
        messages.push(json!({"role": "assistant", "content": format!("answer {i}")}));
    }
    messages.push(json!({"role": "user", "content": "the last question"}));
    json!({"model": "small", "max_tokens": 500, "messages": messages})
}

/// A gateway in front of `up` (provider `up`) with these `agents` and extra top-level sections.
async fn gateway_with(up: &Running, agents: &str, extra: &str) -> Running {
    let cfg = Config::from_json_str(&format!(
        r#"{{"providers": {{"up": {{"url": "http://{}/v1/chat/completions", "auth_style": "bearer"}}}},
            "agents": {agents} {extra}}}"#,
        up.addr
    ))
    .unwrap();
    let (_, secrets) = config_for(up, "");
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

/// Agent `small`: one target with a 3,000-token window.
const SMALL: &str =
    r#"{"small": {"models": [{"provider": "up", "model": "gpt-4o", "max_context": 3000}]}}"#;

async fn gateway(up: &Running) -> Running {
    gateway_with(up, SMALL, "").await
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
    let r = post_chat(&gw, body).await;
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
    let text = format!("HEAD {} TAIL", words(7, 40_000));
    let body = json!({"model": "gpt-4o", "messages": [
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
        (0usize..3000, any::<u64>()).prop_map(|(n, s)| vec![json!({"role": "user", "content": words(s, n)})]),
        (0usize..3000, any::<u64>()).prop_map(|(n, s)| vec![json!({"role": "assistant", "content": words(s, n)})]),
        (1usize..3, 0usize..4000, any::<u16>()).prop_map(|(k, n, id)| {
            let mut v = vec![json!({"role": "assistant", "content": null, "tool_calls": (0..k).map(|j| json!(
                {"id": format!("c{id}_{j}"), "type": "function", "function": {"name": "t", "arguments": "{}"}})).collect::<Vec<_>>()})];
            for j in 0..k {
                v.push(json!({"role": "tool", "tool_call_id": format!("c{id}_{j}"), "content": words(u64::from(id) + j as u64, n)}));
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
        messages.push(json!({"role": "user", "content": words(last as u64, last)}));
        json!({"model": "gpt-4o", "messages": messages})
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn trimming_fits_the_budget_and_keeps_what_matters(conv in arb_conversation(), budget in 700u64..20_000) {
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
            let last = before.messages.last().unwrap();
            if TokenCounter::for_model("gpt-4o").count_message(last) * 2 <= budget {
                prop_assert_eq!(req.messages.last().unwrap(), last, "the last user turn is intact");
            }
            prop_assert!(pairs_intact(&req));
            if req.messages.len() > 2 {
                prop_assert_eq!(req.messages[1].role, Role::User, "opens with a user turn");
            }
        }
    }
}

/// A gateway in front of `up` whose agent `big` claims a 100k window (the upstream's real one
/// is smaller), with extra `context` / `governance` settings.
async fn gateway_claiming_100k(up: &Running, extra: &str) -> Running {
    let big =
        r#"{"big": {"models": [{"provider": "up", "model": "gpt-4o", "max_context": 100000}]}}"#;
    gateway_with(up, big, extra).await
}

#[tokio::test]
async fn an_upstream_context_refusal_is_retried_once_with_a_tighter_budget() {
    let (mock, up) = start_mock(MockConfig {
        echo: true,
        fault: Some("context-limit:3000".parse().unwrap()),
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_claiming_100k(&up, "").await;
    let mut body = conversation(20, 800);
    body["model"] = json!("big");
    let r = post_chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-nenya-attempts"], "2");
    let got = mock.received();
    assert_eq!(got.len(), 2, "one refusal, one tighter retry");
    assert!(got[1].body.len() < got[0].body.len() / 2);
    let sent = nenya::adapters::decode_request(ApiFormat::OpenAi, &got[1].body).unwrap();
    assert!(tokens(&sent) <= 3000 - 500, "{}", tokens(&sent));
    assert!(pairs_intact(&sent));
    let m = scrape_metrics(&gw).await;
    assert!(m.contains("nenya_context_retries_total 1"), "{m}");
    assert!(m.contains("nenya_context_trimmed_total 1"), "{m}");
}

#[tokio::test]
async fn the_tighter_retry_can_be_turned_off() {
    let (mock, up) = start_mock(MockConfig {
        fault: Some("context-limit:3000".parse().unwrap()),
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_claiming_100k(
        &up,
        r#", "governance": {"auto_retry_on_context_limit": false}"#,
    )
    .await;
    let mut body = conversation(20, 800);
    body["model"] = json!("big");
    let r = post_chat(&gw, &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("maximum context length"));
    assert_eq!(mock.received().len(), 1);
}

#[tokio::test]
async fn relevance_truncation_keeps_the_blocks_the_user_asked_about() {
    let (mock, up) = start_mock(MockConfig {
        echo: true,
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_with(
        &up,
        SMALL,
        r#", "context": {"tfidf_query_source": "prior_messages"}"#,
    )
    .await;
    // A pasted log of 300 paragraphs; one says what went wrong with the migration.
    let mut log = String::from("BEGIN build log\n\n");
    for i in 0..300 {
        if i == 150 {
            log.push_str("ERROR migration users_table failed: duplicate key E1234\n\n");
        } else {
            log.push_str(&format!(
                "step {i}: compiled crate number {i} in release mode\n\n"
            ));
        }
    }
    log.push_str("END build log");
    let body = json!({"model": "small", "max_tokens": 500, "messages": [
        {"role": "user", "content": "why did the migration of users_table fail?"},
        {"role": "assistant", "content": "Please paste the log."},
        {"role": "user", "content": log}]});
    let r = post_chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent =
        nenya::adapters::decode_request(ApiFormat::OpenAi, &mock.received()[0].body).unwrap();
    assert!(tokens(&sent) <= 2500, "{}", tokens(&sent));
    let last = sent.messages.last().unwrap().content.text();
    assert!(last.starts_with("BEGIN build log") && last.ends_with("END build log"));
    assert!(
        last.contains("E1234"),
        "the relevant block was kept: {last}"
    );
    assert!(last.contains("less relevant block"));
    // Middle-out would have lost it: the same request without relevance scoring.
    let mut plain = nenya::adapters::decode_request(
        ApiFormat::OpenAi,
        body.to_string().replace("small", "gpt-4o").as_bytes(),
    )
    .unwrap();
    trim(&mut plain, 2500, &BudgetConfig::default()).unwrap();
    assert!(
        !plain
            .messages
            .last()
            .unwrap()
            .content
            .text()
            .contains("E1234")
    );
}

#[tokio::test]
async fn auto_context_skip_passes_over_a_target_whose_window_is_too_small() {
    let (mock, up) = start_mock(MockConfig {
        echo: true,
        ..MockConfig::default()
    })
    .await;
    let chain = r#"{"chain": {"strategy": "fallback", "models": [
        {"provider": "up", "model": "tiny-model", "max_context": 2000},
        {"provider": "up", "model": "roomy-model", "max_context": 200000}]}}"#;
    let gw = gateway_with(&up, chain, r#", "context": {"auto_context_skip": true}"#).await;
    let mut body = conversation(10, 800);
    body["model"] = json!("chain");
    let r = post_chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !r.headers.contains_key("x-nenya-context"),
        "not trimmed: the roomy model took it"
    );
    let got = mock.received();
    assert_eq!(got.len(), 1);
    let sent: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(sent["model"], "roomy-model");
    // A small request still goes to the first target.
    let small = json!({"model": "chain", "messages": [{"role": "user", "content": "hi"}]});
    let r = post_chat(&gw, &small).await;
    assert_eq!(r.status, 200);
    let sent: Value = serde_json::from_slice(&mock.received()[1].body).unwrap();
    assert_eq!(sent["model"], "tiny-model");
}
