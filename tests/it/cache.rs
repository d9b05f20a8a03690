//! The response cache over real loopback HTTP: a repeated deterministic request is answered
//! from the cache byte for byte (streamed or not); interrupted streams, non-deterministic
//! requests and `Cache-Control: no-cache` never hit; concurrent identical requests all get
//! correct answers.

use crate::common;

use std::time::Duration;

use common::*;
use nenya::Gateway;
use nenya::services::{Fault, MockConfig, MockProvider};
use serde_json::{Value, json};

async fn cached_gateway(mock: MockConfig) -> (MockProvider, Running, Running) {
    let (m, up) = start_mock(mock).await;
    let (mut cfg, secrets) = config_for(&up, "");
    cfg.response_cache.enabled = true;
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    (m, up, gw)
}

fn body(stream: bool, temperature: Option<f64>) -> String {
    let mut b = json!({"model": "coder", "stream": stream, "messages": [{"role": "user", "content": "cache me"}]});
    if let Some(t) = temperature {
        b["temperature"] = json!(t);
    }
    b.to_string()
}

async fn ask(gw: &Running, body: &str, extra: &[(&str, &str)]) -> Reply {
    let (k, v) = bearer();
    let mut h = vec![(k, v.as_str())];
    h.extend_from_slice(extra);
    post(&gw.url("/v1/chat/completions"), &h, body.to_string()).await
}

#[tokio::test]
async fn a_repeated_deterministic_request_is_a_byte_identical_hit() {
    let (mock, _up, gw) = cached_gateway(MockConfig {
        chunks: 5,
        ..MockConfig::default()
    })
    .await;
    for stream in [false, true] {
        let b = body(stream, Some(0.0));
        let first = ask(&gw, &b, &[]).await;
        assert_eq!(first.status, 200);
        assert_eq!(first.headers["x-nenya-cache"], "miss");
        let second = ask(&gw, &b, &[]).await;
        assert_eq!(second.headers["x-nenya-cache"], "hit", "stream={stream}");
        assert_eq!(first.body, second.body, "stream={stream}");
        assert_eq!(
            first.headers["content-type"],
            second.headers["content-type"]
        );
        if stream {
            assert_eq!(sse_events(&first.text()), sse_events(&second.text()));
        }
    }
    assert_eq!(
        mock.received().len(),
        2,
        "one upstream call per distinct request"
    );
}

#[tokio::test]
async fn an_interrupted_stream_is_never_cached() {
    let (mock, _up, gw) = cached_gateway(MockConfig {
        chunks: 6,
        delay: Duration::from_millis(10),
        fault: Some(Fault::DropAfter(3)),
        ..MockConfig::default()
    })
    .await;
    let b = body(true, Some(0.0));
    for _ in 0..2 {
        let r = ask(&gw, &b, &[]).await;
        assert_eq!(r.headers["x-nenya-cache"], "miss");
        assert!(r.text().contains("\"error\""), "the client saw the break");
    }
    assert_eq!(mock.received().len(), 2);
}

#[tokio::test]
async fn non_deterministic_and_no_cache_requests_bypass() {
    let (mock, _up, gw) = cached_gateway(MockConfig::default()).await;
    let warm = body(false, Some(0.0));
    ask(&gw, &warm, &[]).await;
    let r = ask(&gw, &warm, &[("cache-control", "no-cache")]).await;
    assert!(!r.headers.contains_key("x-nenya-cache"), "bypassed");
    let hot = body(false, Some(0.7));
    for _ in 0..2 {
        let r = ask(&gw, &hot, &[]).await;
        assert!(!r.headers.contains_key("x-nenya-cache"));
    }
    assert_eq!(mock.received().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_all_get_correct_answers() {
    let (_mock, _up, gw) = cached_gateway(MockConfig {
        chunks: 4,
        ..MockConfig::default()
    })
    .await;
    let b = body(true, Some(0.0));
    let reference = ask(
        &gw,
        &body(true, Some(0.0)),
        &[("cache-control", "no-store")],
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (url, b) = (url.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let (k, v) = bearer();
            post(&url, &[(k, &v)], b).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        let events: Vec<Value> = sse_events(&r.text())
            .into_iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(&d).unwrap())
            .collect();
        let reference: Vec<Value> = sse_events(&reference.text())
            .into_iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(&d).unwrap())
            .collect();
        assert_eq!(events.len(), reference.len());
        for (a, b) in events.iter().zip(&reference) {
            assert_eq!(a["choices"], b["choices"]);
        }
    }
}
