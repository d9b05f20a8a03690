//! Upstream connections over real loopback TCP: reused across requests and streams, an upstream
//! that closes them (with or without saying so) costs no request, requests go out in origin
//! form with a `Host` header, and a streamed answer arrives whole. The upstream here is raw TCP,
//! so it can count connections and see the exact bytes of each request head.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::common;

use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// What the raw upstream does after each answer.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Keeps the connection open for the next request.
    KeepAlive,
    /// Says `connection: close` and closes.
    CloseSaid,
    /// Closes without a word, as a server whose keep-alive timer fired right then would.
    CloseSilently,
}

struct RawUpstream {
    running: Running,
    /// Connections opened for chat requests.
    accepted: Arc<AtomicUsize>,
    /// The head of every chat request.
    heads: Arc<Mutex<Vec<String>>>,
}

const COMPLETION: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

/// An OpenAI-format upstream on raw TCP: a JSON completion, or (for `"stream":true`) a chunked
/// event stream of `events` content events, a usage event and `[DONE]`, written in one go.
async fn raw_upstream(after: After, events: usize) -> RawUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (acc, hs) = (accepted.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (acc, hs) = (acc.clone(), hs.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut first = true;
                while let Some((head, body)) = read_request(&mut sock, &mut buf).await {
                    let stream = String::from_utf8_lossy(&body).contains("\"stream\":true");
                    // The gateway's model discovery (a GET at start, on connections of its
                    // own) is not what these tests count.
                    if head.starts_with("POST ") {
                        if first {
                            acc.fetch_add(1, Ordering::SeqCst);
                        }
                        hs.lock().unwrap().push(head);
                    }
                    first = false;
                    let close = if after == After::CloseSaid {
                        "connection: close\r\n"
                    } else {
                        ""
                    };
                    let resp = if stream {
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n{close}\r\n"
                        );
                        let mut chunk = |data: &str| {
                            let ev = format!("data: {data}\n\n");
                            out.push_str(&format!("{:x}\r\n{ev}\r\n", ev.len()));
                        };
                        for i in 0..events {
                            chunk(&format!(
                                r#"{{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"w{i} "}},"finish_reason":null}}]}}"#
                            ));
                        }
                        chunk(
                            r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}"#,
                        );
                        chunk("[DONE]");
                        out.push_str("0\r\n\r\n");
                        out
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{close}\r\n{COMPLETION}",
                            COMPLETION.len()
                        )
                    };
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    if after != After::KeepAlive {
                        let _ = sock.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    RawUpstream {
        running: Running::at(addr),
        accepted,
        heads,
    }
}

fn ask(stream: bool) -> serde_json::Value {
    json!({"model": "coder", "stream": stream,
           "messages": [{"role": "user", "content": "hi"}]})
}

/// The text of a streamed OpenAI answer, and whether it ended with `[DONE]`.
fn streamed_text(body: &str) -> (String, bool) {
    let mut text = String::new();
    let mut done = false;
    for (_, data) in sse_events(body) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    (text, done)
}

/// Sequential requests, plain and streamed, share the gateway's upstream connections: one per
/// connection thread that served them (the test client connects anew for every request, so
/// both of the helper's two threads take turns), not one per request.
#[tokio::test]
async fn upstream_connections_are_reused_across_requests_and_streams() {
    let up = raw_upstream(After::KeepAlive, 5).await;
    let gw = gateway_for_mock(&up.running, "").await;
    for i in 0..24 {
        let stream = i % 3 == 0;
        let r = post_chat(&gw, &ask(stream)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        if stream {
            let (text, done) = streamed_text(&r.text());
            assert_eq!(text, "w0 w1 w2 w3 w4 ", "request {i}");
            assert!(done, "request {i} ended without [DONE]: {}", r.text());
        } else {
            assert_eq!(r.json()["choices"][0]["message"]["content"], "hi");
        }
    }
    assert_eq!(up.heads.lock().unwrap().len(), 24);
    let conns = up.accepted.load(Ordering::SeqCst);
    assert!(
        conns <= 2,
        "24 requests opened {conns} upstream connections"
    );
}

/// An upstream that closes each connection after its answer, saying so or not, costs no
/// request: a connection it closed is never sent another.
#[tokio::test]
async fn an_upstream_closing_its_connections_costs_no_request() {
    for after in [After::CloseSaid, After::CloseSilently] {
        let up = raw_upstream(after, 3).await;
        let gw = gateway_for_mock(&up.running, "").await;
        for i in 0..12 {
            let stream = i % 2 == 0;
            let r = post_chat(&gw, &ask(stream)).await;
            assert_eq!(r.status, 200, "request {i}: {}", r.text());
            if stream {
                assert_eq!(streamed_text(&r.text()), ("w0 w1 w2 ".into(), true));
            } else {
                assert_eq!(r.json()["choices"][0]["message"]["content"], "hi");
            }
        }
        assert_eq!(
            up.accepted.load(Ordering::SeqCst),
            12,
            "one connection per answer"
        );
    }
}

/// Requests reach the upstream in origin form (`POST /path HTTP/1.1`), with a `Host` header
/// naming it, and without the client's credentials.
#[tokio::test]
async fn upstream_requests_are_origin_form_with_a_host_header() {
    let up = raw_upstream(After::KeepAlive, 1).await;
    let gw = gateway_for_mock(&up.running, "").await;
    for stream in [false, true] {
        let r = post_chat(&gw, &ask(stream)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let heads = up.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2);
    for head in heads {
        let mut lines = head.lines();
        assert_eq!(
            lines.next(),
            Some("POST /v1/chat/completions HTTP/1.1"),
            "{head}"
        );
        let hosts: Vec<_> = lines
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.trim().to_owned())
            .collect();
        assert_eq!(hosts, [up.running.addr.to_string()], "{head}");
        assert!(
            !head.contains(CLIENT_TOKEN),
            "client token sent upstream: {head}"
        );
        assert!(head.contains(PROVIDER_KEY), "provider key missing: {head}");
    }
}

/// A long burst (more events than hyper writes in one go) reaches the client whole and in
/// order, with the final usage event.
#[tokio::test]
async fn a_long_streamed_burst_arrives_whole_and_in_order() {
    let up = raw_upstream(After::KeepAlive, 200).await;
    let gw = gateway_for_mock(&up.running, "").await;
    let r = post_chat(&gw, &ask(true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let want: String = (0..200).map(|i| format!("w{i} ")).collect();
    assert_eq!(streamed_text(&r.text()), (want, true));
    let usage = sse_events(&r.text())
        .into_iter()
        .filter(|(_, d)| d != "[DONE]")
        .filter_map(|(_, d)| serde_json::from_str::<serde_json::Value>(&d).ok())
        .find(|v| v["usage"].is_object())
        .expect("no usage event");
    assert_eq!(usage["usage"]["total_tokens"], 10);
}
