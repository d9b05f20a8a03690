//! The `window` section (SummarizeLayer): older turns summarised by an engine model, relevant
//! excerpts, or a note; engine failure and stalls never fail the request.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use nenya::services::{MockConfig, MockProvider};
use serde_json::{Value, json};

/// A main upstream (echo) and an engine upstream, both recording; a gateway whose agent
/// `coder` has an 8,000-token window and whose `window` section is `window`.
async fn setup(engine: MockConfig, window: &str) -> (MockProvider, MockProvider, Gw) {
    let (main, up) = start_mock(MockConfig {
        echo: true,
        ..MockConfig::default()
    })
    .await;
    let (eng, eng_up) = start_mock(engine).await;
    let cfg = Config::from_json_str(&format!(
        r#"{{"providers": {{
              "up": {{"url": "http://{}/v1/chat/completions", "auth_style": "bearer"}},
              "eng": {{"url": "http://{}/v1/chat/completions", "auth_style": "none"}}}},
            "agents": {{
              "coder": {{"models": [{{"provider": "up", "model": "gpt-4o", "max_context": 8000}}]}},
              "summarizer": {{"models": [{{"provider": "eng", "model": "small-summarizer"}}]}}}},
            "window": {window}}}"#,
        up.addr, eng_up.addr
    ))
    .unwrap();
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"up": "{PROVIDER_KEY}"}}}}"#
    ))
    .unwrap();
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    (
        main,
        eng,
        Gw {
            gw,
            _upstreams: [up, eng_up],
        },
    )
}

/// The gateway, and the upstreams it needs kept serving.
struct Gw {
    gw: Running,
    _upstreams: [Running; 2],
}

impl std::ops::Deref for Gw {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.gw
    }
}

/// `turns` user/assistant pairs of ~`size` bytes, then a final question.
fn conversation(turns: usize, size: usize) -> Value {
    let mut m = vec![json!({"role": "system", "content": "You are a careful assistant."})];
    for i in 0..turns {
        m.push(json!({"role": "user", "content": format!("question {i}: {}", "please look at the parser and the lexer ".repeat(size / 40))}));
        m.push(json!({"role": "assistant", "content": format!("answer {i}: {}", "the lexer splits tokens and the parser builds trees ".repeat(size / 52))}));
    }
    m.push(json!({"role": "user", "content": "so what is left to do?"}));
    json!({"model": "coder", "max_tokens": 500, "messages": m})
}

fn sent(main: &MockProvider, i: usize) -> Value {
    serde_json::from_slice(&main.received()[i].body).unwrap()
}

#[tokio::test]
async fn older_turns_are_replaced_by_the_engines_summary() {
    let (main, eng, gw) = setup(
        MockConfig::default(),
        r#"{"enabled": true, "engine": "summarizer", "active_messages": 4}"#,
    )
    .await;
    let body = conversation(20, 1_000);
    let r = post_chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.headers["x-nenya-window"].to_str().unwrap();
    assert!(h.starts_with("summarized messages="), "{h}");
    // The engine got the older turns as a transcript, not the recent ones.
    let asked: Value = serde_json::from_slice(&eng.received()[0].body).unwrap();
    assert_eq!(asked["model"], "small-summarizer");
    assert_eq!(asked["stream"], Value::Null);
    let transcript = asked["messages"][1]["content"].as_str().unwrap();
    assert!(transcript.contains("question 0:") && transcript.contains("answer 17:"));
    assert!(!transcript.contains("question 19:"));
    // The upstream got: system prompt, the summary, then the recent turns untouched.
    let got = sent(&main, 0);
    let msgs = got["messages"].as_array().unwrap();
    assert_eq!(msgs[0], body["messages"][0]);
    assert_eq!(msgs[1]["role"], "system");
    let summary = msgs[1]["content"].as_str().unwrap();
    assert!(
        summary.starts_with("[Summary of 36 earlier messages"),
        "{summary}"
    );
    assert!(
        summary.contains("word0 word1"),
        "the engine's words: {summary}"
    );
    let n = body["messages"].as_array().unwrap().len();
    assert_eq!(&msgs[2..], &body["messages"].as_array().unwrap()[n - 5..]);
    let m = scrape_metrics(&gw).await;
    assert!(
        m.contains("nenya_context_summaries_total{outcome=\"ok\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_conversation_below_the_trigger_is_untouched_and_costs_no_engine_call() {
    let (main, eng, gw) = setup(
        MockConfig::default(),
        r#"{"enabled": true, "engine": "summarizer"}"#,
    )
    .await;
    let body = conversation(3, 500);
    let r = post_chat(&gw, &body).await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("x-nenya-window"));
    assert!(eng.received().is_empty());
    assert_eq!(sent(&main, 0)["messages"], body["messages"]);
}

#[tokio::test]
async fn an_engine_that_fails_leaves_the_request_to_the_trimmer() {
    let (main, eng, gw) = setup(
        MockConfig {
            fault: Some("status:500".parse().unwrap()),
            ..MockConfig::default()
        },
        r#"{"enabled": true, "engine": "summarizer"}"#,
    )
    .await;
    let r = post_chat(&gw, &conversation(20, 1_000)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-nenya-window"], "summarize-failed");
    assert!(
        r.headers["x-nenya-context"]
            .to_str()
            .unwrap()
            .starts_with("trimmed")
    );
    assert_eq!(eng.received().len(), 1);
    let got = sent(&main, 0);
    assert_eq!(
        got["messages"].as_array().unwrap().last().unwrap()["content"],
        "so what is left to do?"
    );
    let m = scrape_metrics(&gw).await;
    assert!(
        m.contains("nenya_context_summaries_total{outcome=\"failed\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn an_engine_that_stalls_times_out_and_the_request_goes_on() {
    let (_main, _eng, gw) = setup(
        MockConfig {
            fault: Some("stall".parse().unwrap()),
            ..MockConfig::default()
        },
        r#"{"enabled": true, "engine": {"provider": "eng", "model": "slow", "timeout_seconds": 1}}"#,
    )
    .await;
    let t = Instant::now();
    let r = post_chat(&gw, &conversation(20, 1_000)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-nenya-window"], "summarize-failed");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn tfidf_mode_keeps_relevant_excerpts_without_an_engine() {
    let (main, eng, gw) = setup(
        MockConfig::default(),
        r#"{"enabled": true, "mode": "tfidf", "active_messages": 2}"#,
    )
    .await;
    let mut body = conversation(20, 1_000);
    body["messages"][5]["content"] =
        json!("the flaky test is tests/io.rs line 42, it races on the socket");
    let n = body["messages"].as_array().unwrap().len();
    body["messages"][n - 1]["content"] = json!("fix the flaky socket test in tests/io.rs");
    let r = post_chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.headers["x-nenya-window"]
            .to_str()
            .unwrap()
            .starts_with("excerpted")
    );
    assert!(eng.received().is_empty());
    let got = sent(&main, 0);
    let excerpt = got["messages"][1]["content"].as_str().unwrap();
    assert!(excerpt.contains("races on the socket"), "{excerpt}");
    assert!(excerpt.len() < 5_000);
}

#[test]
fn a_summarize_window_without_a_reachable_engine_is_a_config_error() {
    let secrets = Secrets::default();
    for (window, needle) in [
        (r#"{"enabled": true}"#, "needs an engine"),
        (r#"{"enabled": true, "engine": "nobody"}"#, "nobody"),
        (
            r#"{"enabled": true, "mode": "sometimes", "engine": "x"}"#,
            "unknown window mode",
        ),
    ] {
        let cfg = Config::from_json_str(&format!(r#"{{"window": {window}}}"#)).unwrap();
        let e = Gateway::from_config(&cfg, &secrets)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle) && e.contains("window."), "{e}");
    }
}
