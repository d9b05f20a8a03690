//! `GET /metrics` after a scripted mix of requests: the counts match what happened, and the
//! text is valid Prometheus exposition (checked here; also by `promtool` when installed).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use nenya::Gateway;
use nenya::services::MockConfig;
use serde_json::json;

/// Parses exposition text into `series -> value`, asserting the format rules promtool checks
/// that matter here: HELP and TYPE before a family's samples, valid names, no duplicate series,
/// numeric values, histogram buckets cumulative.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut typed = BTreeSet::new();
    let mut series = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(typed.insert(name.to_string()), "family typed twice: {name}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap();
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its TYPE: {line}");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        assert!(
            series.insert(key.to_string(), v).is_none(),
            "duplicate series {key}"
        );
    }
    series
}

#[tokio::test]
async fn metrics_match_a_scripted_mix_of_requests() {
    let (_mock, up) = start_mock(MockConfig::default()).await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let chat = gw.url("/v1/chat/completions");
    let ok = json!({"model": "coder", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    for _ in 0..3 {
        assert_eq!(post(&chat, &[(k, &v)], ok.clone()).await.status, 200);
    }
    let secret = json!({"model": "coder", "messages": [{"role": "user",
        "content": "key AKIAQ3EXAMPLE7Z9K2LP and ghp_R8mWq2ZpX4cV7bN1kL9sD3fG6hJ0aQ5eT2yU"}]});
    assert_eq!(
        post(&chat, &[(k, &v)], secret.to_string()).await.status,
        200
    );
    assert_eq!(post(&chat, &[(k, &v)], "{not json").await.status, 400);
    let unknown = json!({"model": "nope/nothing", "messages": []}).to_string();
    assert_eq!(post(&chat, &[(k, &v)], unknown).await.status, 404);
    assert_eq!(post(&chat, &[], ok.clone()).await.status, 401);
    let msgs =
        json!({"model": "coder", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        post(&gw.url("/v1/messages"), &[(k, &v)], msgs.to_string())
            .await
            .status,
        200
    );

    let scrape = send(
        http::Request::get(gw.url("/metrics"))
            .body(nenya::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(scrape.status, 200, "/metrics needs no token");
    assert!(
        scrape.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = scrape.text();
    let m = parse(&text);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("missing {k}\n{text}"))
    };
    assert_eq!(
        get(r#"nenya_requests_total{endpoint="/v1/chat/completions",status="200"}"#),
        4.0
    );
    assert_eq!(
        get(r#"nenya_requests_total{endpoint="/v1/chat/completions",status="400"}"#),
        1.0
    );
    assert_eq!(
        get(r#"nenya_requests_total{endpoint="/v1/chat/completions",status="404"}"#),
        1.0
    );
    assert_eq!(
        get(r#"nenya_requests_total{endpoint="/v1/chat/completions",status="401"}"#),
        1.0
    );
    assert_eq!(
        get(r#"nenya_requests_total{endpoint="/v1/messages",status="200"}"#),
        1.0
    );
    assert_eq!(get(r#"nenya_errors_total{error_kind="invalid_json"}"#), 1.0);
    assert_eq!(
        get(r#"nenya_errors_total{error_kind="model_not_found"}"#),
        1.0
    );
    assert_eq!(get(r#"nenya_errors_total{error_kind="unauthorized"}"#), 1.0);
    assert_eq!(
        get(r#"nenya_redactions_total{kind="aws_access_key_id"}"#),
        1.0
    );
    assert_eq!(get(r#"nenya_redactions_total{kind="github_pat"}"#), 1.0);
    assert_eq!(get("nenya_request_duration_seconds_count"), 8.0);
    assert_eq!(
        get(r#"nenya_request_duration_seconds_bucket{le="+Inf"}"#),
        8.0
    );
    assert_eq!(get("nenya_failovers_total"), 0.0);
    assert!(
        !text.contains("AKIAQ3EXAMPLE7Z9K2LP"),
        "never the secret itself"
    );

    // scripts/test.sh unpacks promtool into .tools/ and sets NENYA_REQUIRE_PROMTOOL.
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/promtool");
    let promtool = if local.is_file() {
        local
    } else {
        std::path::PathBuf::from("promtool")
    };
    if let Ok(out) = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
    {
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert!(
            std::env::var_os("NENYA_REQUIRE_PROMTOOL").is_none(),
            "promtool is required here but was not found"
        );
        println!("promtool not installed: format checked by this test's own parser only");
    }
}

#[tokio::test]
async fn failovers_and_open_circuits_are_counted() {
    let (_ma, _a, _mb, _b, cfg, secrets) = failing_first_chain(503).await;
    let gateway = Gateway::from_config(&cfg, &secrets).unwrap().build();
    let metrics = gateway.metrics().clone();
    let gw = start_gateway(gateway).await;
    let (k, v) = bearer();
    for _ in 0..6 {
        let body = json!({"model": "chain", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            post(
                &gw.url("/v1/chat/completions"),
                &[(k, &v)],
                body.to_string()
            )
            .await
            .status,
            200
        );
    }
    let m = parse(&metrics.render());
    assert_eq!(m["nenya_failovers_total"], 6.0);
    assert_eq!(
        m[r#"nenya_circuit_open{circuit="chain:a/m-a"}"#], 1.0,
        "5 failures opened it"
    );
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_statsz_summarises() {
    let (mock, up) = start_mock(MockConfig {
        echo: true,
        ..MockConfig::default()
    })
    .await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let chat = gw.url("/v1/chat/completions");
    let body = json!({"model": "coder", "messages": [{"role": "user", "content": "token ghp_R8mWq2ZpX4cV7bN1kL9sD3fG6hJ0aQ5eT2yU"}]}).to_string();
    let r = post(
        &chat,
        &[(k, &v), ("x-request-id", "trace-123")],
        body.clone(),
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "trace-123");
    let r = post(&chat, &[(k, &v)], body.clone()).await;
    let made = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 32);
    let r2 = post(&chat, &[(k, &v)], body.clone()).await;
    assert_ne!(r2.headers["x-request-id"].to_str().unwrap(), made, "unique");
    // A hostile id (too long) is replaced, and errors carry an id too.
    let long = "x".repeat(500);
    let r = post(&chat, &[(k, &v), ("x-request-id", &long)], "{").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.headers["x-request-id"].len(), 32);
    // The id is not sent upstream.
    assert!(
        mock.received()
            .iter()
            .all(|rec| !rec.headers.contains_key("x-request-id"))
    );

    let s = send(
        http::Request::get(gw.url("/statsz"))
            .body(nenya::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s.status, 200);
    let j = s.json();
    assert_eq!(j["status"], "ok");
    assert_eq!(j["requests"], 4);
    assert_eq!(j["errors"]["invalid_json"], 1);
    assert_eq!(j["redactions"]["github_pat"], 3);
    assert_eq!(j["open_circuits"], json!([]));
    assert!(!s.text().contains("ghp_"), "never the secret");
}
