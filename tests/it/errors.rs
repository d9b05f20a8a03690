//! Every error case answers in the client's own format with the right status and a stable
//! `error_kind`; none panics or hangs, and the gateway keeps serving afterwards.

use crate::common;

use common::*;
use http::Request;
use nenya::Body;
use nenya::services::{Fault, MockConfig};
use serde_json::{Value, json};

const OPENAI: &str = "/v1/chat/completions";
const ANTHROPIC: &str = "/v1/messages";

/// Asserts status, shape and kind for a reply on `path`.
fn assert_error(r: &Reply, path: &str, status: u16, kind: &str) {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.text());
    assert_eq!(r.headers["x-nenya-error-kind"], kind);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    if path.starts_with(ANTHROPIC) {
        assert_eq!(v["type"], "error", "Anthropic shape: {v}");
        assert!(v["error"]["type"].is_string());
        assert!(v["error"]["message"].is_string());
    } else {
        assert!(v["error"]["message"].is_string(), "OpenAI shape: {v}");
        assert!(v["error"]["type"].is_string());
        assert_eq!(v["error"]["code"], kind);
    }
    assert_eq!(v["error"]["error_kind"], kind);
}

fn auth_for(path: &str) -> (&'static str, String) {
    if path == ANTHROPIC {
        ("x-api-key", CLIENT_TOKEN.to_owned())
    } else {
        bearer()
    }
}

fn valid_body(path: &str, model: &str) -> String {
    if path == ANTHROPIC {
        json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
    } else {
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
    }
}

fn agent(path: &str) -> &'static str {
    if path == ANTHROPIC {
        "claude-agent"
    } else {
        "coder"
    }
}

#[tokio::test]
async fn invalid_json_is_400_invalid_json() {
    let (_m, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    for path in [OPENAI, ANTHROPIC] {
        let (k, v) = auth_for(path);
        let r = post(&gw.url(path), &[(k, &v)], "{\"model\": \"coder\", ").await;
        assert_error(&r, path, 400, "invalid_json");
    }
}

#[tokio::test]
async fn wrong_types_are_400_invalid_request_naming_the_field() {
    let (_m, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    let cases = [
        (
            OPENAI,
            json!({"model": 5, "messages": []}),
            "`model` must be a string",
        ),
        (OPENAI, json!({"model": "coder"}), "`messages` is required"),
        (
            OPENAI,
            json!({"model": "coder", "messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            OPENAI,
            json!({"model": "coder", "messages": [], "stream": "yes"}),
            "`stream` must be a boolean",
        ),
        (
            ANTHROPIC,
            json!({"model": "claude-agent", "messages": {}}),
            "`messages` must be an array",
        ),
        (
            ANTHROPIC,
            json!({"model": "claude-agent", "max_tokens": -1, "messages": []}),
            "max_tokens",
        ),
        (ANTHROPIC, json!([1, 2]), "JSON object"),
        // Paths below the top level name the message, and the call inside it.
        (
            OPENAI,
            json!({"model": "coder", "messages": [{"role": "user", "content": "x"}, 7]}),
            "`messages[1]` must be an object",
        ),
        (
            OPENAI,
            json!({"model": "coder", "messages": [{"role": "user", "content": "x"},
                {"role": "user", "content": 3}]}),
            "`messages[1].content` must be a string or an array",
        ),
        (
            OPENAI,
            json!({"model": "coder", "messages": [{"role": "user", "content": "x"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
                "function": {"arguments": "{}"}}]}]}),
            "`messages[1].tool_calls[0].function.name` is required",
        ),
        (
            ANTHROPIC,
            json!({"model": "claude-agent", "max_tokens": 9, "messages": [
                {"role": "user", "content": "x"}, {"role": "user", "content": false}]}),
            "`messages[1].content` must be a string or an array",
        ),
        (
            ANTHROPIC,
            json!({"model": "claude-agent", "max_tokens": 9, "messages": [
                {"role": "user", "content": "x"}, {"role": 1}]}),
            "`messages[1].role` must be a string",
        ),
    ];
    for (path, body, needle) in cases {
        let (k, v) = auth_for(path);
        let r = post(&gw.url(path), &[(k, &v)], body.to_string()).await;
        assert_error(&r, path, 400, "invalid_request");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(needle), "`{msg}` should mention `{needle}`");
    }
}

#[tokio::test]
async fn body_over_the_limit_is_413_whether_declared_or_chunked() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await; // max_body_bytes = 65536
    let big = format!(
        r#"{{"model":"coder","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(70_000)
    );
    for path in [OPENAI, ANTHROPIC] {
        let (k, v) = auth_for(path);
        // With Content-Length.
        let r = post(&gw.url(path), &[(k, &v)], big.clone()).await;
        assert_error(&r, path, 413, "body_too_large");
        // Chunked, no Content-Length: the limit is enforced while reading.
        let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> = big
            .as_bytes()
            .chunks(8192)
            .map(|c| Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(c))))
            .collect();
        let body = Body::new(http_body_util::StreamBody::new(futures_stream(chunks)));
        let req = Request::post(gw.url(path))
            .header(k, &v)
            .body(body)
            .unwrap();
        let r = send(req).await;
        assert_error(&r, path, 413, "body_too_large");
    }
    assert!(mock.received().is_empty(), "nothing reached the upstream");
}

fn futures_stream<T>(items: Vec<T>) -> impl futures_core::Stream<Item = T> {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    impl<T> Unpin for Iter<T> {}
    Iter(items.into_iter())
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_and_nothing_reaches_upstream() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    for path in [OPENAI, ANTHROPIC] {
        let body = valid_body(path, agent(path));
        let r = post(&gw.url(path), &[], body.clone()).await;
        assert_error(&r, path, 401, "unauthorized");
        let r = post(
            &gw.url(path),
            &[("authorization", "Bearer wrong-token")],
            body.clone(),
        )
        .await;
        assert_error(&r, path, 401, "unauthorized");
        let r = post(
            &gw.url(path),
            &[("x-api-key", "client-token-7f3a9")],
            body.clone(),
        )
        .await;
        assert_error(&r, path, 401, "unauthorized");
        assert!(!r.text().contains(CLIENT_TOKEN));
    }
    // Unknown paths are behind auth too.
    let r = post(&gw.url("/v1/whatever"), &[], "{}").await;
    assert_error(&r, "/v1/whatever", 401, "unauthorized");
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let (_m, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    for path in [OPENAI, ANTHROPIC] {
        let (k, v) = auth_for(path);
        let r = post(&gw.url(path), &[(k, &v)], valid_body(path, "no-such-model")).await;
        assert_error(&r, path, 404, "model_not_found");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no-such-model")
        );
    }
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_is_405() {
    let (_m, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let r = post(&gw.url("/v1/nope"), &[(k, &v)], "{}").await;
    assert_error(&r, "/v1/nope", 404, "not_found");
    let r = send(
        Request::get(gw.url(OPENAI))
            .header(k, &v)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_error(&r, OPENAI, 405, "method_not_allowed");
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // Bind and drop a listener to get a port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (_m, up) = start_mock(MockConfig::default()).await;
    let (mut cfg, secrets) = config_for(&up, "");
    for p in cfg.providers.values_mut() {
        p.url = Some(format!("http://{addr}/v1/chat/completions"));
        p.format_urls.clear();
        p.format = None;
    }
    cfg.providers.get_mut("claude").unwrap().url = Some(format!("http://{addr}/v1/messages"));
    let gw = start_gateway(nenya::Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    for path in [OPENAI, ANTHROPIC] {
        let (k, v) = auth_for(path);
        let r = post(&gw.url(path), &[(k, &v)], valid_body(path, agent(path))).await;
        assert_error(&r, path, 502, "upstream_unreachable");
        assert!(!r.text().contains(PROVIDER_KEY));
    }
}

#[tokio::test]
async fn upstream_that_never_answers_is_504() {
    let (_m, up) = start_mock(MockConfig {
        fault: Some(Fault::StallBeforeHeaders),
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_for_mock(&up, r#", "response_header_timeout_seconds": 1"#).await;
    for path in [OPENAI, ANTHROPIC] {
        let (k, v) = auth_for(path);
        let start = std::time::Instant::now();
        let r = post(&gw.url(path), &[(k, &v)], valid_body(path, agent(path))).await;
        assert_error(&r, path, 504, "upstream_timeout");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}

#[tokio::test]
async fn the_gateway_keeps_serving_after_errors() {
    let (_m, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    for _ in 0..3 {
        let r = post(&gw.url(OPENAI), &[(k, &v)], "not json").await;
        assert_eq!(r.status, 400);
    }
    let r = post(&gw.url(OPENAI), &[(k, &v)], valid_body(OPENAI, "coder")).await;
    assert_eq!(r.status, 200);
    let v: Value = r.json();
    assert_eq!(v["object"], "chat.completion");
}
