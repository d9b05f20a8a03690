//! Fallback chains over real loopback HTTP: a failing first target is skipped before anything
//! reaches the client; client errors never fail over; round-robin spreads the load.

use crate::common;

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use nenya::services::{Fault, MockConfig};
use serde_json::json;

fn faulty(f: Fault) -> MockConfig {
    MockConfig {
        fault: Some(f),
        ..MockConfig::default()
    }
}

/// An agent `chain` over `a` then `b` (both OpenAI format), with `strategy`; `a` gives up on
/// headers after 1 s and on a silent stream after 1 s.
async fn two_target_gateway(a: &Running, b: &Running, strategy: &str) -> Running {
    let (cfg, secrets) = chain_config(
        &a.url("/v1/chat/completions"),
        &b.url("/v1/chat/completions"),
        "bearer",
        strategy,
        r#", "response_header_timeout_seconds": 1, "stream_idle_timeout_seconds": 1"#,
    );
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

async fn ask(gw: &Running, stream: bool) -> Reply {
    let (k, v) = bearer();
    post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        json!({"model": "chain", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    )
    .await
}

/// The request kept for the next target is the client's body when nothing changed it: the
/// second target gets the same bytes as the first, each with its own model.
#[tokio::test]
async fn the_next_target_gets_the_clients_body_as_the_first_did() {
    let (ma, a) = start_mock(faulty(Fault::Status(503))).await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let gw = two_target_gateway(&a, &b, "fallback").await;
    let body = "{ \"model\": \"chain\", \"messages\": [ {\"role\": \"user\", \"content\": \"caf\\u00e9\"} ] }";
    let (k, v) = bearer();
    let r = post(&gw.url("/v1/chat/completions"), &[(k, &v)], body.to_owned()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-nenya-attempts"], "2");
    let first = ma.received().pop().unwrap().body;
    let second = mb.received().pop().unwrap().body;
    assert_eq!(first, body.replacen("\"chain\"", "\"m-a\"", 1).as_bytes());
    assert_eq!(second, body.replacen("\"chain\"", "\"m-b\"", 1).as_bytes());
}

#[tokio::test]
async fn retryable_statuses_fail_over_to_the_next_target() {
    for status in [429u16, 500, 502, 503, 504, 529] {
        let (ma, a) = start_mock(faulty(Fault::Status(status))).await;
        let (mb, b) = start_mock(MockConfig::default()).await;
        let gw = two_target_gateway(&a, &b, "fallback").await;
        for stream in [false, true] {
            let r = ask(&gw, stream).await;
            assert_eq!(r.status, 200, "{status}: {}", r.text());
            assert_eq!(r.headers["x-nenya-attempts"], "2");
        }
        assert_eq!(ma.received().len(), 2, "{status}");
        assert_eq!(mb.received().len(), 2);
        assert_eq!(
            mb.received()[0].json()["model"],
            "m-b",
            "the second target's model"
        );
    }
}

#[tokio::test]
async fn client_errors_never_fail_over() {
    for status in [400u16, 401, 403, 404, 422] {
        let (_ma, a) = start_mock(faulty(Fault::Status(status))).await;
        let (mb, b) = start_mock(MockConfig::default()).await;
        let gw = two_target_gateway(&a, &b, "fallback").await;
        let r = ask(&gw, false).await;
        assert_eq!(r.status.as_u16(), status, "the upstream's own answer");
        assert_eq!(r.headers["x-nenya-attempts"], "1");
        assert!(
            mb.received().is_empty(),
            "{status} must not reach the second target"
        );
    }
}

#[tokio::test]
async fn an_unreachable_or_stalled_target_fails_over() {
    // Unreachable: a port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let (mb, b) = start_mock(MockConfig::default()).await;
    let (_ms, stalled) = start_mock(faulty(Fault::StallBeforeHeaders)).await;
    for a_addr in [dead_addr, stalled.addr] {
        let a = Running::at(a_addr);
        let gw = two_target_gateway(&a, &b, "fallback").await;
        let started = std::time::Instant::now();
        let r = ask(&gw, true).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("data: [DONE]"));
        assert_eq!(r.headers["x-nenya-attempts"], "2");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
    assert_eq!(mb.received().len(), 2);
}

#[tokio::test]
async fn the_last_targets_failure_reaches_the_client_in_its_format() {
    let (_ma, a) = start_mock(faulty(Fault::Status(503))).await;
    let (_mb, b) = start_mock(faulty(Fault::Status(502))).await;
    let gw = two_target_gateway(&a, &b, "fallback").await;
    let r = ask(&gw, false).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["x-nenya-attempts"], "2");
    assert!(r.json()["error"].is_object(), "{}", r.text());
}

#[tokio::test]
async fn round_robin_alternates_the_first_target() {
    let (ma, a) = start_mock(MockConfig::default()).await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let gw = two_target_gateway(&a, &b, "round-robin").await;
    for _ in 0..6 {
        assert_eq!(ask(&gw, false).await.status, 200);
    }
    assert_eq!(ma.received().len(), 3);
    assert_eq!(mb.received().len(), 3);
}

#[test]
fn an_unknown_strategy_is_a_config_error() {
    let cfg = Config::from_json_str(
        r#"{"providers": {"a": {"url": "http://127.0.0.1:9/v1/chat/completions"}},
            "agents": {"x": {"strategy": "random", "models": [{"provider": "a", "model": "m"}]}}}"#,
    )
    .unwrap();
    let err = Gateway::from_config(&cfg, &Secrets::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("agents.x.strategy") && err.contains("random"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_event_fails_over() {
    for fault in [Fault::ErrorEvent, Fault::DropAfter(0), Fault::StallAfter(0)] {
        let (ma, a) = start_mock(faulty(fault.clone())).await;
        let (mb, b) = start_mock(MockConfig {
            chunks: 4,
            ..MockConfig::default()
        })
        .await;
        let gw = two_target_gateway(&a, &b, "fallback").await;
        let r = ask(&gw, true).await;
        assert_eq!(r.status, 200, "{fault:?}");
        assert_eq!(r.headers["x-nenya-attempts"], "2", "{fault:?}");
        let events = sse_events(&r.text());
        assert!(
            events.iter().all(|(_, d)| !d.contains("\"error\"")),
            "{fault:?}: no trace of the first target's failure: {}",
            r.text()
        );
        assert_eq!(events.last().unwrap().1, "[DONE]", "{fault:?}");
        assert_eq!(
            (ma.received().len(), mb.received().len()),
            (1, 1),
            "{fault:?}"
        );
    }
}

#[tokio::test]
async fn an_anthropic_error_event_first_fails_over_for_anthropic_clients() {
    let (_ma, a) = start_mock(faulty(Fault::ErrorEvent)).await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let (cfg, secrets) = chain_config(
        &a.url("/v1/messages"),
        &b.url("/v1/messages"),
        "anthropic",
        "fallback",
        "",
    );
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    let (k, v) = bearer();
    let r = post(
        &gw.url("/v1/messages"),
        &[(k, &v)],
        json!({"model": "chain", "max_tokens": 16, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-nenya-attempts"], "2");
    let events = sse_events(&r.text());
    assert_eq!(events[0].0.as_deref(), Some("message_start"));
    assert!(events.iter().all(|(e, _)| e.as_deref() != Some("error")));
    assert_eq!(mb.received().len(), 1);
}

#[tokio::test]
async fn after_content_has_started_there_is_no_failover() {
    // Paced, so the first events are on the wire before the drop.
    let (_ma, a) = start_mock(MockConfig {
        chunks: 6,
        delay: std::time::Duration::from_millis(20),
        fault: Some(Fault::DropAfter(3)),
        ..MockConfig::default()
    })
    .await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let gw = two_target_gateway(&a, &b, "fallback").await;
    let r = ask(&gw, true).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-nenya-attempts"], "1", "{}", r.text());
    let events = sse_events(&r.text());
    assert!(events.len() >= 3, "the partial stream reached the client");
    assert!(
        events.last().unwrap().1.contains("\"error\""),
        "ends with a well-formed error event: {}",
        r.text()
    );
    assert!(mb.received().is_empty());
}

#[tokio::test]
async fn a_context_window_error_fails_over_and_other_400s_pass_through_intact() {
    let (_ma, a) = start_mock(faulty(Fault::ContextExceeded)).await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let gw = two_target_gateway(&a, &b, "fallback").await;
    for stream in [false, true] {
        let r = ask(&gw, stream).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["x-nenya-attempts"], "2");
    }
    assert_eq!(mb.received().len(), 2);

    // A plain 400 is the client's problem: no failover, and its body arrives whole.
    let (_ma, a) = start_mock(faulty(Fault::Status(400))).await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let gw = two_target_gateway(&a, &b, "fallback").await;
    let r = ask(&gw, false).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "mock: injected failure");
    assert!(mb.received().is_empty());
}

#[test]
fn round_robin_is_the_default_strategy_as_in_nenya() {
    let cfg = Config::from_json_str(
        r#"{"providers": {"a": {"url": "http://127.0.0.1:9/v1/chat/completions"},
                          "b": {"url": "http://127.0.0.1:9/v1/chat/completions"}},
            "agents": {"x": {"models": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}}}"#,
    )
    .unwrap();
    let secrets = Secrets::from_json_str(r#"{"provider_keys": {"a": "k", "b": "k"}}"#).unwrap();
    let table = nenya::services::RouteTable::from_config(
        &cfg,
        &secrets,
        &nenya::services::http_client(std::time::Duration::from_secs(1)),
    )
    .unwrap();
    let first = |t: &nenya::services::RouteTable| {
        t.resolve("x", nenya::model::ApiFormat::OpenAi).unwrap()[0]
            .model
            .clone()
    };
    assert_eq!(
        [first(&table), first(&table), first(&table)],
        ["m1", "m2", "m1"]
    );
}

/// As `two_target_gateway`, with a `governance` section and extra settings for provider `a`.
async fn chain_with(a: &Running, b: &Running, governance: &str, a_extra: &str) -> Running {
    let (mut cfg, secrets) = chain_config(
        &a.url("/v1/chat/completions"),
        &b.url("/v1/chat/completions"),
        "bearer",
        "fallback",
        a_extra,
    );
    cfg.governance = Config::from_json_str(&format!(r#"{{"governance": {governance}}}"#))
        .unwrap()
        .governance;
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

#[tokio::test]
async fn retryable_status_codes_replace_the_defaults_and_a_provider_can_override_them() {
    // Governance: only 503 fails over; a 500 reaches the client.
    for (status, governance, a_extra, fails_over) in [
        (500u16, r#"{"retryable_status_codes": [503]}"#, "", false),
        (503, r#"{"retryable_status_codes": [503]}"#, "", true),
        (418, r#"{"retryable_status_codes": [418]}"#, "", true),
        // The provider's own list wins for its targets.
        (
            503,
            r#"{"retryable_status_codes": [503]}"#,
            r#", "retryable_status_codes": [500]"#,
            false,
        ),
        (500, "{}", r#", "retryable_status_codes": [500]"#, true),
    ] {
        let (ma, a) = start_mock(faulty(Fault::Status(status))).await;
        let (mb, b) = start_mock(MockConfig::default()).await;
        let gw = chain_with(&a, &b, governance, a_extra).await;
        let r = ask(&gw, false).await;
        let case = format!("{status} {governance} {a_extra}");
        if fails_over {
            assert_eq!(r.status, 200, "{case}");
            assert_eq!(mb.received().len(), 1, "{case}");
        } else {
            assert_eq!(r.status.as_u16(), status, "{case}");
            assert!(mb.received().is_empty(), "{case}");
        }
        assert_eq!(ma.received().len(), 1, "{case}");
    }
}

#[tokio::test]
async fn an_empty_stream_fails_over_unless_configured_not_to() {
    for (governance, fails_over) in [("{}", true), (r#"{"empty_stream_as_error": false}"#, false)] {
        let (_ma, a) = start_mock(faulty(Fault::EmptyStream)).await;
        let (mb, b) = start_mock(MockConfig::default()).await;
        let gw = chain_with(&a, &b, governance, "").await;
        let r = ask(&gw, true).await;
        assert_eq!(r.status, 200, "{governance}");
        assert_eq!(mb.received().len(), usize::from(fails_over), "{governance}");
        if !fails_over {
            assert_eq!(r.text(), "", "the empty stream is passed through");
        }
    }
}

#[tokio::test]
async fn an_early_error_event_is_forwarded_when_failover_on_it_is_off() {
    let (_ma, a) = start_mock(faulty(Fault::ErrorEvent)).await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let gw = chain_with(&a, &b, r#"{"early_stream_error_failover": false}"#, "").await;
    let r = ask(&gw, true).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"error\""), "{}", r.text());
    assert!(mb.received().is_empty());
}

#[tokio::test]
async fn with_latency_ordering_the_faster_target_takes_the_traffic() {
    // `a` answers after 150 ms, `b` at once; fallback order would always ask `a` first.
    let (ma, a) = start_mock(faulty(Fault::Slow(150))).await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let (mut cfg, secrets) = chain_config(
        &a.url("/v1/chat/completions"),
        &b.url("/v1/chat/completions"),
        "bearer",
        "fallback",
        "",
    );
    cfg.context = Config::from_json_str(r#"{"context": {"auto_reorder_by_latency": true}}"#)
        .unwrap()
        .context;
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    for _ in 0..12 {
        let r = ask(&gw, false).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers["x-nenya-attempts"], "1",
            "no failover, only ordering"
        );
    }
    // Both are measured once (unmeasured targets go first), then `b` wins every time.
    assert_eq!(
        ma.received().len(),
        1,
        "the slow target was asked only to measure it"
    );
    assert_eq!(mb.received().len(), 11);
}

#[tokio::test]
async fn a_stream_past_the_total_timeout_ends_with_a_clean_error_event() {
    // 8 events 300 ms apart: lively (no idle timeout) but 2.4 s in all; the limit is 1 s.
    let (_ma, a) = start_mock(MockConfig {
        delay: std::time::Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let gw = chain_with(&a, &b, "{}", r#", "upstream_timeout_seconds": 1"#).await;
    let started = std::time::Instant::now();
    let r = ask(&gw, true).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    let events = sse_events(&r.text());
    assert!(
        events.iter().any(|(_, d)| d.contains("word0")),
        "the partial answer arrived"
    );
    let last_error = events
        .iter()
        .rev()
        .find(|(_, d)| d.contains("\"error\""))
        .unwrap();
    assert!(
        last_error.1.contains("upstream_timeout"),
        "{}",
        last_error.1
    );
    assert!(took < std::time::Duration::from_millis(2_000), "{took:?}");
    assert!(
        mb.received().is_empty(),
        "no failover once content has started"
    );
}
