//! Properties of the history rewriters over random conversations: pruning and compaction never
//! drop a message, never separate a tool call from its result, never touch the current tool
//! loop, and JSON minification never changes a JSON value.

use nenya::layers::{CompactConfig, PruneConfig, RequestRewriter};
use nenya::model::{ApiFormat, ChatRequest, Content, Part, Role};
use proptest::prelude::*;
use serde_json::{Value, json};

fn calls_and_results(req: &ChatRequest) -> (Vec<String>, Vec<String>) {
    let (mut calls, mut results) = (Vec::new(), Vec::new());
    for m in &req.messages {
        if let Content::Parts(ps) = &m.content {
            for p in ps {
                match p {
                    Part::ToolUse { id, .. } => calls.push(id.clone()),
                    Part::ToolResult { tool_use_id, .. } => results.push(tool_use_id.clone()),
                    _ => {}
                }
            }
        }
    }
    (calls, results)
}

/// Every text of a message, tool results included.
fn all_text(m: &nenya::model::Message) -> String {
    let mut s = String::new();
    if let Content::Parts(ps) = &m.content {
        for p in ps {
            if let Part::ToolResult { content, .. } = p {
                s.push_str(&content.text());
            }
        }
    }
    s + &m.content.text()
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(Value::from),
        "[a-z ]{0,12}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_conversation() -> impl Strategy<Value = Value> {
    let result = prop_oneof![
        "[a-z \n]{0,600}".prop_map(Value::from),
        arb_json().prop_map(|v| Value::from(serde_json::to_string_pretty(&v).unwrap())),
    ];
    let unit = prop_oneof![
        "[a-z ]{1,80}".prop_map(|t| vec![json!({"role": "user", "content": t})]),
        ("[a-z ]{1,80}", proptest::option::of("[a-z ]{1,200}")).prop_map(|(t, r)| {
            let mut m = json!({"role": "assistant", "content": t});
            if let Some(r) = r {
                m["reasoning_content"] = json!(r);
            }
            vec![m]
        }),
        (prop::collection::vec(result, 1..3), any::<u32>()).prop_map(|(rs, id)| {
            let calls: Vec<Value> = (0..rs.len())
                .map(|j| {
                    json!({"id": format!("c{id}_{j}"), "type": "function",
                    "function": {"name": "tool", "arguments": "{\"path\": \"a.rs\"}"}})
                })
                .collect();
            let mut v = vec![json!({"role": "assistant", "content": null, "tool_calls": calls})];
            for (j, r) in rs.into_iter().enumerate() {
                v.push(json!({"role": "tool", "tool_call_id": format!("c{id}_{j}"), "content": r}));
            }
            v
        }),
    ];
    prop::collection::vec(unit, 1..20).prop_map(|units| {
        let mut messages = vec![json!({"role": "system", "content": "sys"})];
        let mut seen = std::collections::HashSet::new();
        for u in units {
            let id = u[0]["tool_calls"][0]["id"].as_str().map(str::to_owned);
            if id.is_some_and(|i| !seen.insert(i)) {
                continue;
            }
            messages.extend(u);
        }
        json!({"model": "m", "messages": messages})
    })
}

fn decode(v: &Value) -> ChatRequest {
    nenya::adapters::decode_request(ApiFormat::OpenAi, v.to_string().as_bytes()).unwrap()
}

/// Index of the last user text turn: what follows it is the current tool loop.
fn loop_start(req: &ChatRequest) -> usize {
    req.messages
        .iter()
        .rposition(|m| m.role == Role::User && !m.has_tool_results())
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn pruning_keeps_every_message_pair_and_the_current_loop(conv in arb_conversation(), keep in 0usize..4) {
        let before = decode(&conv);
        let mut req = before.clone();
        let cfg = PruneConfig { thoughts: true, stale_tool_results: true, keep_recent: keep, min_bytes: 0 };
        cfg.rewrite(&mut req);
        prop_assert_eq!(req.messages.len(), before.messages.len());
        prop_assert_eq!(calls_and_results(&req), calls_and_results(&before));
        let start = loop_start(&before);
        prop_assert_eq!(&req.messages[start..], &before.messages[start..]);
        for (a, b) in req.messages.iter().zip(&before.messages) {
            prop_assert_eq!(a.role, b.role);
        }
    }

    #[test]
    fn a_conversation_is_written_to_only_when_something_changes(
        conv in arb_conversation(),
        switches in prop::array::uniform5(any::<bool>()),
    ) {
        let body = bytes::Bytes::from(conv.to_string());
        let before = nenya::adapters::decode_client_body(ApiFormat::OpenAi, body).unwrap();
        prop_assume!(before.client_body().is_some());
        let prune = PruneConfig { thoughts: switches[0], stale_tool_results: switches[1], keep_recent: 1, min_bytes: 0 };
        let compact = CompactConfig { json_minify: switches[2], whitespace: switches[3], fold_duplicates: switches[4] };
        let mut req = before.clone();
        let report = (prune.rewrite(&mut req), compact.rewrite(&mut req));
        if report == (None, None) {
            // Nothing to do: the client's bytes are still there to be forwarded as sent.
            prop_assert!(req.client_body().is_some());
            prop_assert_eq!(&*req, &*before);
        } else {
            prop_assert!(req.client_body().is_none());
            prop_assert_ne!(&*req, &*before);
        }
    }

    #[test]
    fn compaction_keeps_json_values_and_every_pair(conv in arb_conversation()) {
        let before = decode(&conv);
        let mut req = before.clone();
        let cfg = CompactConfig { json_minify: true, whitespace: true, fold_duplicates: false };
        cfg.rewrite(&mut req);
        prop_assert_eq!(req.messages.len(), before.messages.len());
        prop_assert_eq!(calls_and_results(&req), calls_and_results(&before));
        for (a, b) in req.messages.iter().zip(&before.messages) {
            let (after, orig) = (all_text(a), all_text(b));
            if let Ok(v) = serde_json::from_str::<Value>(&orig) {
                let w: Value = serde_json::from_str(&after).map_err(|e| TestCaseError::fail(format!("{e}: {after}")))?;
                prop_assert_eq!(w, v, "a JSON text keeps its value");
            }
        }
    }
}
