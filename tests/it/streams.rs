//! Streams stay streams: events arrive as the upstream sends them, mid-stream upstream failures
//! end the client's stream with a well-formed error event in its own format, and shutdown
//! drains in-flight streams.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use nenya::services::{Fault, MockConfig};
use serde_json::{Value, json};

fn stream_body(path: &str) -> String {
    if path == "/v1/messages" {
        json!({"model": "claude-agent", "max_tokens": 5, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
    } else {
        json!({"model": "coder", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
    }
    .to_string()
}

fn auth(path: &str) -> (&'static str, String) {
    if path == "/v1/messages" {
        ("x-api-key", CLIENT_TOKEN.to_owned())
    } else {
        bearer()
    }
}

#[tokio::test]
async fn upstream_drop_mid_stream_ends_with_an_error_event_in_client_format() {
    let (_m, up) = start_mock(MockConfig {
        chunks: 10,
        // Paced so headers and events are on the wire before the drop.
        delay: Duration::from_millis(20),
        fault: Some(Fault::DropAfter(4)),
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_for_mock(&up, "").await;
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let (k, v) = auth(path);
        let r = post(&gw.url(path), &[(k, &v)], stream_body(path)).await;
        assert_eq!(r.status, 200);
        let events = sse_events(&r.text());
        assert_eq!(
            events.len(),
            5,
            "4 upstream events then the error: {}",
            r.text()
        );
        let (name, data) = events.last().unwrap();
        let err: Value = serde_json::from_str(data).unwrap();
        assert_eq!(err["error"]["error_kind"], "upstream_protocol_error");
        if path == "/v1/messages" {
            assert_eq!(name.as_deref(), Some("error"));
            assert_eq!(err["type"], "error");
        } else {
            assert_eq!(name, &None);
        }
    }
}

#[tokio::test]
async fn upstream_stall_mid_stream_hits_the_idle_timeout() {
    let (_m, up) = start_mock(MockConfig {
        chunks: 10,
        fault: Some(Fault::StallAfter(3)),
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_for_mock(&up, r#", "stream_idle_timeout_seconds": 1"#).await;
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let (k, v) = auth(path);
        let start = Instant::now();
        let r = post(&gw.url(path), &[(k, &v)], stream_body(path)).await;
        assert!(start.elapsed() < Duration::from_secs(4));
        let events = sse_events(&r.text());
        assert_eq!(events.len(), 4, "{}", r.text());
        let err: Value = serde_json::from_str(&events[3].1).unwrap();
        assert_eq!(err["error"]["error_kind"], "upstream_timeout");
    }
}

#[tokio::test]
async fn events_are_forwarded_as_they_arrive_not_buffered() {
    let (_m, up) = start_mock(MockConfig {
        chunks: 4,
        delay: Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header(k, v)
        .body(nenya::Body::from(stream_body("/v1/chat/completions")))
        .unwrap();
    let client = nenya::services::http_client(Duration::from_secs(5));
    let start = Instant::now();
    let resp = client.request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = start.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("\"role\":\"assistant\""));
    // The whole stream takes 8 × 300 ms; the first event must not wait for it.
    assert!(
        first_at < Duration::from_millis(1000),
        "first event after {first_at:?}"
    );
    while let Some(f) = body.frame().await {
        f.unwrap();
    }
    assert!(start.elapsed() >= Duration::from_millis(2000));
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_stream_and_refuses_new_connections() {
    let (_m, up) = start_mock(MockConfig {
        chunks: 6,
        delay: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    let (cfg, secrets) = config_for(&up, "");
    let mut gw = start_gateway(nenya::Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    let url = gw.url("/v1/chat/completions");
    let in_flight = tokio::spawn(async move {
        let (k, v) = bearer();
        post(&url, &[(k, &v)], stream_body("/v1/chat/completions")).await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.signal_stop();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    let events = sse_events(&r.text());
    assert_eq!(
        events.last().unwrap().1,
        "[DONE]",
        "the stream completed: {}",
        r.text()
    );
    (&mut gw.task).await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "no longer accepting"
    );
}
