//! The fault matrix: every way an upstream is known to break, for both client formats, streamed
//! and not, to an upstream of the same format and of the other one. Whatever happens, the
//! client gets a well-formed answer in its own format (a complete stream, a stream that ends
//! with an error event, or a JSON error in its shape), within a bound, and the gateway goes on
//! serving the next request.

use crate::common;

use std::time::Duration;

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use nenya::model::ApiFormat;
use nenya::services::{Fault, MockConfig};
use serde_json::{Value, json};

/// Upstream faults, by their mock spelling (`refuse`: nothing listens).
const FAULTS: &[&str] = &[
    "refuse",
    "status:500",
    "status:503",
    "status:529",
    "status:429",
    "status-retry-after:429",
    "status-retry-after:503",
    "stall",
    "stall-after:2",
    "drop-after:2",
    "malformed",
    "invalid-utf8",
    "huge-event:2000000",
    "empty",
    "wrong-content-type",
    "error-event",
];

struct Setup {
    gw: Running,
    _upstreams: Vec<Running>,
}

/// A gateway whose agents reach a faulty upstream in the client's own format (`same-openai`,
/// `same-anthropic`) or the other one (`to-openai`, `to-anthropic`), and a healthy one
/// (`healthy`). Timeouts are short so stalls end quickly.
async fn setup(fault: &str) -> Setup {
    let mut upstreams = Vec::new();
    let faulty_addr = if fault == "refuse" {
        // Bound, then closed: connecting is refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        a
    } else {
        let (_m, up) = start_mock(MockConfig {
            fault: Some(fault.parse::<Fault>().unwrap()),
            chunks: 4,
            ..MockConfig::default()
        })
        .await;
        let a = up.addr;
        upstreams.push(up);
        a
    };
    let (_h, healthy) = start_mock(MockConfig::default()).await;
    let t = r#""response_header_timeout_seconds": 1, "stream_idle_timeout_seconds": 1"#;
    let cfg = Config::from_json_str(&format!(
        r#"{{"providers": {{
              "bad": {{"url": "http://{faulty_addr}/v1/chat/completions",
                       "format_urls": {{"anthropic": "http://{faulty_addr}/v1/messages"}},
                       "auth_style": "bearer", {t}}},
              "ok": {{"url": "http://{}/v1/chat/completions",
                      "format_urls": {{"anthropic": "http://{}/v1/messages"}}, "auth_style": "bearer"}}}},
            "agents": {{
              "same": {{"models": [{{"provider": "bad", "model": "m"}}]}},
              "to-openai": {{"models": [{{"provider": "bad", "model": "m", "format": "openai"}}]}},
              "to-anthropic": {{"models": [{{"provider": "bad", "model": "m", "format": "anthropic"}}]}},
              "healthy": {{"models": [{{"provider": "ok", "model": "m"}}]}}}}}}"#,
        healthy.addr, healthy.addr
    ))
    .unwrap();
    upstreams.push(healthy);
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"bad": "k", "ok": "k"}}}}"#
    ))
    .unwrap();
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    Setup {
        gw,
        _upstreams: upstreams,
    }
}

async fn ask(gw: &Running, client: ApiFormat, agent: &str, stream: bool) -> Reply {
    let (k, v) = bearer();
    match client {
        ApiFormat::Anthropic => {
            let body = json!({"model": agent, "max_tokens": 100, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]});
            post(
                &gw.url("/v1/messages"),
                &[(k, &v), ("anthropic-version", "2023-06-01")],
                body.to_string(),
            )
            .await
        }
        _ => {
            let body = json!({"model": agent, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]});
            post(
                &gw.url("/v1/chat/completions"),
                &[(k, &v)],
                body.to_string(),
            )
            .await
        }
    }
}

/// Why `r` is not a well-formed answer in `client`'s format, if it is not.
fn malformed(client: ApiFormat, stream: bool, r: &Reply) -> Option<String> {
    let text = r.text();
    if r.status != 200 {
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            return Some(format!("error {} is not JSON: {text:.200}", r.status));
        };
        let shaped = match client {
            ApiFormat::Anthropic => v["type"] == "error" && v["error"]["message"].is_string(),
            _ => v["error"]["message"].is_string(),
        };
        return (!shaped).then(|| format!("error {} not in the client's shape: {v}", r.status));
    }
    if !stream {
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            return Some(format!("200 body is not JSON: {text:.200}"));
        };
        let shaped = match client {
            ApiFormat::Anthropic => v["type"] == "message" && v["content"].is_array(),
            _ => v["choices"].is_array(),
        };
        return (!shaped).then(|| format!("200 body not in the client's shape: {v}"));
    }
    let events = sse_events(&text);
    for (_, d) in &events {
        if d != "[DONE]" && serde_json::from_str::<Value>(d).is_err() {
            return Some(format!("an event is not JSON: {d:.200}"));
        }
    }
    let Some((name, data)) = events.last() else {
        return Some("an empty stream".to_owned());
    };
    let ended = match client {
        ApiFormat::Anthropic => {
            matches!(name.as_deref(), Some("message_stop") | Some("error"))
        }
        _ => data == "[DONE]" || data.contains("\"error\""),
    };
    (!ended).then(|| format!("the stream does not end cleanly: {name:?} {data:.200}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_fault_gives_a_well_formed_answer_and_the_gateway_keeps_serving() {
    let mut failures = Vec::new();
    for fault in FAULTS {
        let s = setup(fault).await;
        for client in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            let cross = match client {
                ApiFormat::Anthropic => "to-openai",
                _ => "to-anthropic",
            };
            for agent in ["same", cross] {
                for stream in [false, true] {
                    let case = format!("{fault} {client} client, agent {agent}, stream {stream}");
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        ask(&s.gw, client, agent, stream),
                    )
                    .await;
                    match r {
                        Err(_) => failures.push(format!("{case}: no answer within 10 s")),
                        Ok(r) => {
                            if let Some(why) = malformed(client, stream, &r) {
                                failures.push(format!("{case}: {why}"));
                            }
                        }
                    }
                    let h = ask(&s.gw, client, "healthy", stream).await;
                    if h.status != 200 || malformed(client, stream, &h).is_some() {
                        failures.push(format!("{case}: the next request failed: {}", h.status));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Raw HTTP/1.1 over one TCP connection: writes `raw`, reads until `responses` answers or EOF.
async fn raw_exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn chat_request(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let s = setup("slow:1").await;
    let a =
        json!({"model": "healthy", "messages": [{"role": "user", "content": "first"}]}).to_string();
    let b =
        json!({"model": "nope-no-such-model", "messages": [{"role": "user", "content": "second"}]})
            .to_string();
    let out = raw_exchange(
        s.gw.addr,
        format!("{}{}", chat_request(&a), chat_request(&b)).as_bytes(),
    )
    .await;
    let first = out.find("HTTP/1.1 200").expect(&out);
    let second = out.find("HTTP/1.1 404").expect(&out);
    assert!(first < second, "in order: {out}");
}

#[tokio::test]
async fn headers_over_the_limit_are_refused_and_the_gateway_goes_on() {
    let s = setup("slow:1").await;
    let huge = "a".repeat(512 * 1024);
    let raw = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-huge: {huge}\r\n\r\n");
    let out = raw_exchange(s.gw.addr, raw.as_bytes()).await;
    assert!(
        out.is_empty() || out.starts_with("HTTP/1.1 431"),
        "refused or closed: {:.100}",
        out
    );
    let h = ask(&s.gw, ApiFormat::OpenAi, "healthy", false).await;
    assert_eq!(h.status, 200);
}

#[tokio::test]
async fn a_chunked_body_over_the_size_limit_is_413_in_the_clients_shape() {
    let s = setup("slow:1").await;
    // 11 MiB in 1 MiB chunks, no content-length: the limit (10 MiB) is found while reading.
    let chunk = "x".repeat(1 << 20);
    let mut raw = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n\
         anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    for _ in 0..11 {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("0\r\n\r\n");
    let out = raw_exchange(s.gw.addr, raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{:.300}", out);
    assert!(
        out.contains("\"type\":\"error\"") && out.contains("body_too_large"),
        "{:.600}",
        out
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_cancels_the_upstream_stream() {
    let (mock, up) = start_mock(MockConfig {
        chunks: 200,
        delay: Duration::from_millis(20),
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_for_mock(&up, "").await;
    let body =
        json!({"model": "coder", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let raw = chat_request(&body.to_string());
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        assert_eq!(mock.streams_in_flight(), 1, "the upstream is streaming");
        // Hang up.
    }
    let started = std::time::Instant::now();
    while mock.streams_in_flight() > 0 {
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "the upstream stream was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // One event interval (20 ms) is how long the mock takes to notice; nenya passes it on at once.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(300), "{took:?}");
    let r = post_chat(
        &gw,
        &json!({"model": "coder", "messages": [{"role": "user", "content": "again"}]}),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_client_that_sends_its_body_too_slowly_gets_408_and_the_connection_is_freed() {
    let (_m, up) = start_mock(MockConfig::default()).await;
    let (cfg, secrets) = config_for(&up, "");
    let gw = start_gateway(
        Gateway::from_config(&cfg, &secrets)
            .unwrap()
            .body_read_timeout(Duration::from_secs(1))
            .build(),
    )
    .await;
    // Declares 100 bytes, sends 10, then waits.
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":"
    );
    let started = std::time::Instant::now();
    let out = raw_exchange(gw.addr, raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out:.300}");
    assert!(out.contains("request_timeout"), "{out:.400}");
    // The 408 came after ~1 s and the connection closed right after it (the reader stops at
    // EOF; an open connection would keep it waiting 1.5 s more).
    assert!(
        started.elapsed() < Duration::from_millis(2_400),
        "{:?}",
        started.elapsed()
    );
}
