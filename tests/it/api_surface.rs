//! The OpenAI API beyond chat and the passthrough proxy, black-box over loopback (issue 10):
//! each endpoint reaches the mock with the provider's key and never the client's, model
//! routing and redaction on JSON endpoints, binary and SSE answers streamed back, a 50 MiB
//! multipart upload through the real binary with flat memory, and SSRF attempts on `/proxy`
//! all refused before anything is sent.

use crate::common;

use std::time::Duration;

use common::*;
use http::Request;
use nenya::Body;
use nenya::services::MockConfig;
use serde_json::{Value, json};

async fn call(
    gw: &Running,
    method: &str,
    path: &str,
    content_type: &str,
    body: impl Into<Body>,
) -> Reply {
    let (k, v) = bearer();
    send(
        Request::builder()
            .method(method)
            .uri(gw.url(path))
            .header(k, v)
            .header("content-type", content_type)
            .body(body.into())
            .unwrap(),
    )
    .await
}

fn assert_upstream_auth(r: &nenya::services::Recorded) {
    assert_eq!(r.headers["authorization"], format!("Bearer {PROVIDER_KEY}"));
    let all = format!("{:?}", r.headers);
    assert!(!all.contains(CLIENT_TOKEN), "client token leaked: {all}");
}

#[tokio::test]
async fn json_endpoints_route_by_model_redact_and_reach_the_provider_with_its_key() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    for (path, body) in [
        (
            "/v1/embeddings",
            json!({"model": "coder", "input": ["deploy with AKIAQ3EXAMPLE7Z9K2LP", "ok"]}),
        ),
        (
            "/v1/moderations",
            json!({"model": "coder", "input": "is this fine?"}),
        ),
        (
            "/v1/images/generations",
            json!({"model": "coder", "prompt": "a sunset"}),
        ),
        (
            "/v1/rerank",
            json!({"model": "coder", "query": "capital of France",
                               "documents": ["Paris is the capital.", "Berlin is not."]}),
        ),
        ("/v1/responses", json!({"model": "coder", "input": "hi"})),
    ] {
        let r = call(&gw, "POST", path, "application/json", body.to_string()).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let sent = mock.received().last().unwrap().clone();
        assert_eq!(sent.uri, path);
        assert_eq!(
            sent.json()["model"],
            "upstream-model-1",
            "the agent's model"
        );
    }
    let got = mock.received();
    assert_eq!(got.len(), 5);
    for r in &got {
        assert_upstream_auth(r);
    }
    let emb = String::from_utf8_lossy(&got[0].body);
    assert!(
        emb.contains("[REDACTED:aws_access_key_id]") && !emb.contains("AKIAQ3EXAMPLE7Z9K2LP"),
        "{emb}"
    );
    // An unknown model goes to the default provider as it is.
    let r = call(
        &gw,
        "POST",
        "/v1/embeddings",
        "application/json",
        json!({"model": "text-embedding-3-small", "input": "x"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        mock.received().last().unwrap().json()["model"],
        "text-embedding-3-small"
    );
    // Bad JSON is a 400 in the OpenAI shape.
    let r = call(&gw, "POST", "/v1/embeddings", "application/json", "{nope").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["error_kind"], "invalid_json");
}

#[tokio::test]
async fn streamed_and_binary_answers_come_back_as_sent() {
    let (_mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    let r = call(
        &gw,
        "POST",
        "/v1/responses",
        "application/json",
        json!({"model": "coder", "input": "hi", "stream": true}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&r.text());
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[3].1, "[DONE]");
    let r = call(
        &gw,
        "POST",
        "/v1/audio/speech",
        "application/json",
        json!({"model": "coder", "input": "hello", "voice": "alloy"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "audio/mpeg");
    assert_eq!(r.body.len(), 64 << 10);
}

#[tokio::test]
async fn files_and_batches_pass_through_with_any_method() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    for (method, path) in [
        ("GET", "/v1/files"),
        ("GET", "/v1/files/file-abc"),
        ("DELETE", "/v1/files/file-abc"),
        ("GET", "/v1/files/file-abc/content"),
        ("POST", "/v1/batches"),
        ("POST", "/v1/batches/batch_1/cancel"),
    ] {
        let r = call(&gw, method, path, "application/json", "{}").await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        assert_eq!(
            (r.json()["method"].as_str(), r.json()["path"].as_str()),
            (Some(method), Some(path))
        );
    }
    for r in mock.received() {
        assert_upstream_auth(&r);
    }
    let r = call(
        &gw,
        "GET",
        "/v1/files/..%2f..%2fadmin",
        "application/json",
        "",
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test]
async fn the_proxy_reaches_only_paths_under_the_providers_base() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    // The gateway's own model discovery also lists; count from here.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listed = mock.listings().len();
    let r = call(&gw, "GET", "/proxy/up/v1/models", "application/json", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.listings().len(), listed + 1);
    let l = mock.listings().last().unwrap().clone();
    assert_eq!(l.uri, "/v1/models");
    assert_eq!(l.headers["authorization"], format!("Bearer {PROVIDER_KEY}"));
    let r = call(
        &gw,
        "PUT",
        "/proxy/up/v1/anything?x=1",
        "application/json",
        "{}",
    )
    .await;
    assert_eq!(
        (r.json()["method"].as_str(), r.json()["query"].as_str()),
        (Some("PUT"), Some("x=1"))
    );
    let before = mock.received().len();
    for attack in [
        "/proxy/up/../../etc/passwd",
        "/proxy/up/v1/../../admin",
        "/proxy/up/%2e%2e/%2e%2e/admin",
        "/proxy/up/v1/%2E%2E/x",
        "/proxy/up/..%2fadmin",
        "/proxy/up/%2fetc",
        "/proxy/up//evil.invalid/x",
        "/proxy/up/@evil.invalid/x",
        "/proxy/up/http://evil.invalid/x",
        "/proxy/up/http:%2f%2fevil.invalid",
        "/proxy/up/v1\\..\\admin",
        "/proxy/up/v1/%00",
        "/proxy/nowhere/v1/models",
    ] {
        let r = call(&gw, "GET", attack, "application/json", "").await;
        assert!(
            r.status.is_client_error(),
            "{attack}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            r.json()["error"]["error_kind"].is_string(),
            "{attack}: {}",
            r.text()
        );
    }
    assert_eq!(
        mock.received().len(),
        before,
        "no attack reached the upstream"
    );
    let metrics = scrape_metrics(&gw).await;
    assert!(
        metrics.contains(r#"nenya_requests_total{endpoint="/proxy",status="400"}"#),
        "{metrics}"
    );
    // A redirect is not followed.
    let r = call(&gw, "GET", "/proxy/up/redirect", "application/json", "").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.headers.contains_key("location"));
}

fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_50_mib_multipart_upload_streams_through_with_flat_memory() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let dir = temp_dir("upload");
    let cfg = dir.join("nenya.json");
    std::fs::write(
        &cfg,
        json!({"providers": {"openai": {"url": format!("http://{}/v1/chat/completions", up.addr),
            "auth_style": "none"}}})
        .to_string(),
    )
    .unwrap();
    let bin = spawn_nenya(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("NENYA_CONFIG_FILE", cfg.to_str().unwrap())],
    );
    // Warm up, then take the high-water mark.
    let r = post(&bin.url("/v1/files"), &[], "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = peak_rss_kib(bin.child.id());
    const SIZE: usize = 50 << 20;
    let boundary = "nenyaboundary7";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    // Sent in 1 MiB chunks, as a client streaming a file would.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>(4);
    let total = head.len() + SIZE + tail.len();
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(http_body::Frame::data(bytes::Bytes::from(head))))
            .await;
        let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
        for _ in 0..(SIZE >> 20) {
            let _ = tx.send(Ok(http_body::Frame::data(chunk.clone()))).await;
        }
        let _ = tx
            .send(Ok(http_body::Frame::data(bytes::Bytes::from(tail))))
            .await;
    });
    let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let r = send(
        Request::post(bin.url("/v1/files"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .header("content-length", total)
            .body(Body::new(stream))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["bytes"], total, "every byte arrived");
    assert_eq!(mock.received().last().unwrap().body.len(), total);
    let grew = peak_rss_kib(bin.child.id()).saturating_sub(before);
    assert!(
        grew < 16 << 10,
        "peak RSS grew {grew} KiB for a 50 MiB upload"
    );
}

/// An mpsc receiver as a `Stream` (no extra crate).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send + 'static {
    struct S<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for S<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    let _ = &mut rx;
    S(rx)
}

#[tokio::test]
async fn a_declared_upload_over_the_limit_is_413_before_anything_is_sent() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let (cfg, secrets) = config_for(&up, "");
    let gw = start_gateway(
        nenya::Gateway::from_config(&cfg, &secrets)
            .unwrap()
            .max_upload_bytes(1024)
            .build(),
    )
    .await;
    let r = call(
        &gw,
        "POST",
        "/v1/files",
        "multipart/form-data; boundary=x",
        vec![b'a'; 4096],
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["error_kind"], "body_too_large");
    assert!(mock.received().is_empty());
    let _: Value = r.json();
}

fn a2a_call(method: &str, text: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": {"message": {
        "kind": "message", "role": "user", "messageId": "m-1",
        "parts": [{"kind": "text", "text": text}]}}})
    .to_string()
}

#[tokio::test]
async fn a2a_message_send_and_stream_map_onto_an_agent() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    let r = call(
        &gw,
        "POST",
        "/v1/a2a/coder",
        "application/json",
        a2a_call("message/send", "hello agent"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["jsonrpc"].as_str(), v["id"].as_i64()),
        (Some("2.0"), Some(7))
    );
    let result = &v["result"];
    assert_eq!(
        (result["kind"].as_str(), result["role"].as_str()),
        (Some("message"), Some("agent")),
        "{v}"
    );
    let text = result["parts"][0]["text"].as_str().unwrap();
    assert!(!text.is_empty());
    let sent = mock.received().last().unwrap().json();
    assert_eq!(sent["model"], "upstream-model-1");
    assert_eq!(sent["messages"][0]["content"], "hello agent");

    let r = call(
        &gw,
        "POST",
        "/v1/a2a/coder",
        "application/json",
        a2a_call("message/stream", "stream it"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events: Vec<Value> = sse_events(&r.text())
        .into_iter()
        .map(|(_, d)| serde_json::from_str(&d).unwrap())
        .collect();
    assert_eq!(events[0]["result"]["kind"], "task");
    assert_eq!(events[0]["result"]["status"]["state"], "working");
    let streamed: String = events
        .iter()
        .filter(|e| e["result"]["kind"] == "artifact-update")
        .map(|e| {
            e["result"]["artifact"]["parts"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(!streamed.is_empty(), "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(
        (
            last["result"]["kind"].as_str(),
            last["result"]["final"].as_bool()
        ),
        (Some("status-update"), Some(true))
    );
    assert_eq!(last["result"]["status"]["state"], "completed");
    assert!(events.iter().all(|e| e["id"] == 7));

    // Protocol errors are JSON-RPC errors.
    for (path, body, code) in [
        ("/v1/a2a/coder", "{not json".to_owned(), -32700),
        ("/v1/a2a/coder", a2a_call("tasks/get", "x"), -32601),
        ("/v1/a2a", a2a_call("message/send", "which agent?"), -32602),
        (
            "/v1/a2a/coder",
            json!({"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {}}).to_string(),
            -32602,
        ),
    ] {
        let r = call(&gw, "POST", path, "application/json", body).await;
        assert_eq!(r.json()["error"]["code"], code, "{}", r.text());
    }
    // An agent that does not exist comes back as the chat error, in JSON-RPC.
    let r = call(
        &gw,
        "POST",
        "/v1/a2a/nope",
        "application/json",
        a2a_call("message/send", "x"),
    )
    .await;
    assert_eq!(
        r.json()["error"]["data"]["error_kind"],
        "model_not_found",
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn an_audio_transcription_upload_reaches_the_provider_byte_for_byte() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    let boundary = "b0undary";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n"
    )
    .into_bytes();
    form.extend((0..=255u8).cycle().take(300_000));
    form.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = call(&gw, "POST", "/v1/audio/transcriptions", &ct, form.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = mock.received().last().unwrap().clone();
    assert_eq!(got.uri, "/v1/audio/transcriptions");
    assert_eq!(
        got.headers["content-type"],
        ct.as_str(),
        "the boundary is kept"
    );
    assert_eq!(&got.body[..], &form[..], "byte for byte");
    assert_upstream_auth(&got);
}

/// The mock keeps the requests it received for tests to read, up to `keep_received`, oldest
/// dropped first; with 0 (the standalone `nenya mock`, the gateway's built-in mock) it keeps
/// none, so a long-running mock does not grow with every request.
#[tokio::test]
async fn the_mock_keeps_at_most_keep_received_requests() {
    for keep in [0usize, 2, 10] {
        let (mock, up) = start_mock(MockConfig {
            keep_received: keep,
            ..MockConfig::default()
        })
        .await;
        for i in 0..5 {
            let body =
                json!({"model": "m", "messages": [{"role": "user", "content": format!("n{i}")}]});
            let r = post(&up.url("/v1/chat/completions"), &[], body.to_string()).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let got: Vec<String> = mock
            .received()
            .iter()
            .map(|r| {
                r.json()["messages"][0]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let want: Vec<String> = (5 - keep.min(5)..5).map(|i| format!("n{i}")).collect();
        assert_eq!(got, want, "keep_received {keep}");
    }
}

#[tokio::test]
async fn a_body_of_chunks_gives_them_in_order_with_the_length_left() {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    // Empty pieces are dropped; the first three are held apart from the rest.
    let pieces = ["a", "", "bc", "def", "", "ghij", "k"];
    let mut body = Body::chunks(pieces.iter().map(|p| bytes::Bytes::from(*p)));
    let mut seen = Vec::new();
    let mut left = 11;
    assert!(!body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(left));
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        left -= data.len() as u64;
        assert_eq!(body.size_hint().exact(), Some(left));
        seen.push(String::from_utf8(data.to_vec()).unwrap());
    }
    assert_eq!(seen, ["a", "bc", "def", "ghij", "k"]);
    assert!(body.is_end_stream());
}
