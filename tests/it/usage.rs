//! Token usage read from answers as they stream by, per agent, provider and model, in both
//! client formats, streamed and not; estimated when the upstream reports none.

use crate::common;

use common::*;
use nenya::services::MockConfig;
use serde_json::{Value, json};

async fn statsz_usage(gw: &Running) -> Vec<Value> {
    let s = send(
        http::Request::get(gw.url("/statsz"))
            .body(nenya::Body::empty())
            .unwrap(),
    )
    .await;
    s.json()["usage"].as_array().unwrap().clone()
}

/// The usage the client itself saw in an answer (OpenAI or Anthropic, streamed or not).
fn client_usage(text: &str) -> (u64, u64) {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let u = &v["usage"];
        let p = u["prompt_tokens"]
            .as_u64()
            .or(u["input_tokens"].as_u64())
            .unwrap();
        let c = u["completion_tokens"]
            .as_u64()
            .or(u["output_tokens"].as_u64())
            .unwrap();
        return (p, c);
    }
    let (mut p, mut c) = (0, 0);
    for (_, data) in sse_events(text) {
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        if let Some(u) = v["usage"].as_object() {
            p = u
                .get("prompt_tokens")
                .or(u.get("input_tokens"))
                .and_then(Value::as_u64)
                .unwrap_or(p);
            c = u
                .get("completion_tokens")
                .or(u.get("output_tokens"))
                .and_then(Value::as_u64)
                .unwrap_or(c);
        }
        if let Some(n) = v["message"]["usage"]["input_tokens"].as_u64() {
            p = n;
        }
    }
    (p, c)
}

#[tokio::test]
async fn usage_is_counted_per_agent_in_both_formats_streamed_and_not() {
    let (_mock, up) = start_mock(MockConfig {
        chunks: 6,
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let mut expected = (0u64, 0u64);
    for (path, model, body) in [
        (
            "/v1/chat/completions",
            "coder",
            json!({"model": "coder", "messages": [{"role": "user", "content": "hello there"}]}),
        ),
        (
            "/v1/chat/completions",
            "coder",
            json!({"model": "coder", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hello there again"}]}),
        ),
        (
            "/v1/messages",
            "coder",
            json!({"model": "coder", "max_tokens": 50, "stream": true,
            "messages": [{"role": "user", "content": "and once more"}]}),
        ),
        (
            "/v1/messages",
            "coder",
            json!({"model": "coder", "max_tokens": 50,
            "messages": [{"role": "user", "content": "last one"}]}),
        ),
    ] {
        let r = post(&gw.url(path), &[(k, &v)], body.to_string()).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let (p, c) = client_usage(&r.text());
        assert!(p > 0 && c > 0, "{model} {path}: {}", r.text());
        expected.0 += p;
        expected.1 += c;
    }
    let usage = statsz_usage(&gw).await;
    assert_eq!(usage.len(), 1, "{usage:?}");
    let u = &usage[0];
    assert_eq!(
        (
            u["agent"].as_str(),
            u["provider"].as_str(),
            u["model"].as_str()
        ),
        (Some("coder"), Some("up"), Some("upstream-model-1"))
    );
    assert_eq!(u["answers"], 4);
    assert_eq!(u["estimated"], 0);
    assert_eq!(
        (
            u["prompt_tokens"].as_u64().unwrap(),
            u["completion_tokens"].as_u64().unwrap()
        ),
        expected,
        "the gateway counted what the client was told"
    );

    let metrics = scrape_metrics(&gw).await;
    let line = format!(
        r#"nenya_tokens_total{{key="client_token",agent="coder",provider="up",model="upstream-model-1",kind="completion"}} {}"#,
        expected.1
    );
    assert!(metrics.contains(&line), "{line}\n{metrics}");
}

#[tokio::test]
async fn a_stream_without_usage_is_estimated() {
    let (_mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let body = json!({"model": "coder", "stream": true, "messages": [{"role": "user", "content": "x".repeat(400)}]});
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        !r.text().contains("\"usage\":{"),
        "the client did not ask for usage and got none"
    );
    let u = &statsz_usage(&gw).await[0];
    assert_eq!(u["estimated"], 1);
    assert_eq!(u["prompt_tokens"], 104, "400 bytes / 4 + framing");
}

#[tokio::test]
async fn usage_is_read_from_a_json_answer_that_arrives_in_pieces() {
    use http_body_util::BodyExt;
    use nenya::layers::{UsageLabels, UsageLayer, UsageMeter};
    use nenya::model::{ApiFormat, ChatRequest};
    use tower::{ServiceBuilder, ServiceExt, service_fn};
    // An answer cut anywhere, even inside its `usage`: the tap joins the pieces before reading.
    let answer = r#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":5}}"#;
    for cuts in [vec![], vec![10], vec![60, 95], vec![1, 2, 3, 90, 100]] {
        let mut pieces = Vec::new();
        let mut from = 0;
        for &at in &cuts {
            pieces.push(bytes::Bytes::copy_from_slice(&answer.as_bytes()[from..at]));
            from = at;
        }
        pieces.push(bytes::Bytes::copy_from_slice(&answer.as_bytes()[from..]));
        let meter = UsageMeter::new();
        let svc = ServiceBuilder::new()
            .layer(UsageLayer::new(
                meter.clone(),
                |_: &http::Request<ChatRequest>| UsageLabels::new("a", "p", "m"),
            ))
            .service(service_fn(move |_req: http::Request<ChatRequest>| {
                let pieces = pieces.clone();
                async move {
                    let mut r = http::Response::new(nenya::Body::chunks(pieces));
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, nenya::Error>(r)
                }
            }));
        let req =
            nenya::adapters::decode_request(ApiFormat::OpenAi, br#"{"model":"a","messages":[]}"#)
                .unwrap();
        let resp = svc.oneshot(http::Request::new(req)).await.unwrap();
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, answer.as_bytes());
        let t = meter.totals();
        assert_eq!(
            (t[0].1.prompt, t[0].1.completion),
            (12, 5),
            "cut at {cuts:?}"
        );
    }
}
