//! OpenTelemetry export (cargo feature `otlp`): the real binary, pointed at a recording HTTP
//! server as its OTLP collector, exports its request spans as OTLP/HTTP protobuf.
//!
//! `cargo test --features otlp --test otlp` (scripts/test.sh runs it).
#![cfg(feature = "otlp")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use nenya::services::MockConfig;
use serde_json::json;

#[tokio::test]
async fn request_spans_are_exported_over_otlp_http() {
    // The mock records every request it gets, whatever the path: it stands in for a collector.
    let (collector, c) = start_mock(MockConfig::default()).await;
    let endpoint = format!("http://{}", c.addr);
    let bin = spawn_nenya(
        &["--listen", "127.0.0.1:0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let r = post(
        &bin.url("/v1/chat/completions"),
        &[("x-request-id", "trace-me-42")],
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(15);
    let export = loop {
        if let Some(e) = collector
            .received()
            .into_iter()
            .find(|r| r.uri.ends_with("/v1/traces"))
        {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no OTLP export; log:\n{}",
            bin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(export.method, http::Method::POST);
    assert_eq!(export.headers["content-type"], "application/x-protobuf");
    let body = String::from_utf8_lossy(&export.body);
    assert!(body.contains("nenya"), "the service name is in the export");
    assert!(
        body.contains("trace-me-42"),
        "the request's span carries its id"
    );
}
