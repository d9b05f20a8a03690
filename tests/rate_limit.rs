//! Per-upstream RPM/TPM limits over real loopback HTTP: they hold exactly under 200 concurrent
//! requests (counted at the mock), a limited target is skipped for the next one, and the client
//! gets 429 with `Retry-After` only when every target is limited.

mod common;

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use nenya::services::MockConfig;
use serde_json::json;

async fn limited_gateway(a: &Running, b: Option<&Running>, governance: &str) -> Running {
    let b_provider = b.map_or(String::new(), |b| {
        format!(
            r#", "b": {{"url": "http://{}/v1/chat/completions", "auth_style": "bearer"}}"#,
            b.addr
        )
    });
    let b_model = if b.is_some() {
        r#", {"provider": "b", "model": "m"}"#
    } else {
        ""
    };
    let cfg = Config::from_json_str(&format!(
        r#"{{"governance": {governance},
            "providers": {{"a": {{"url": "http://{}/v1/chat/completions", "auth_style": "bearer"}}{b_provider}}},
            "agents": {{"chain": {{"strategy": "fallback", "models": [{{"provider": "a", "model": "m"}}{b_model}]}}}}}}"#,
        a.addr
    ))
    .unwrap();
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"a": "ka", "b": "kb"}}}}"#
    ))
    .unwrap();
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

fn chat(content: &str) -> String {
    json!({"model": "chain", "messages": [{"role": "user", "content": content}]}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_holds_exactly_under_200_concurrent_requests() {
    let (mock, a) = start_mock(MockConfig::default()).await;
    let gw = limited_gateway(&a, None, r#"{"ratelimit_max_rpm": 50}"#).await;
    let url = gw.url("/v1/chat/completions");
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (k, v) = bearer();
            post(&url, &[(k, &v)], chat("hi")).await
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(r.json()["error"]["error_kind"], "rate_limited");
                let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&after), "{after}");
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    // 50 at once, then one more per 1.2 s: the bound depends only on the elapsed time.
    let refills = (started.elapsed().as_millis() / 1200) as usize;
    let received = mock.received().len();
    assert_eq!(
        ok, received,
        "every admitted request reached the upstream, no other"
    );
    assert!(
        (50..=50 + refills).contains(&received),
        "{received} with {refills} refills"
    );
    assert_eq!(ok + limited, 200);
}

#[tokio::test]
async fn tpm_counts_estimated_tokens_and_admits_one_oversized_request() {
    let (mock, a) = start_mock(MockConfig::default()).await;
    let gw = limited_gateway(&a, None, r#"{"ratelimit_max_tpm": 1000}"#).await;
    let (k, v) = bearer();
    let url = gw.url("/v1/chat/completions");
    // ~303 estimated tokens each (1,196 bytes / 4 + framing): three fit in 1,000.
    let text = "x".repeat(1196);
    for i in 0..3 {
        assert_eq!(
            post(&url, &[(k, &v)], chat(&text)).await.status,
            200,
            "#{i}"
        );
    }
    let r = post(&url, &[(k, &v)], chat(&text)).await;
    assert_eq!(r.status, 429);
    assert_eq!(mock.received().len(), 3);

    // A fresh gateway: a request bigger than the whole budget is admitted once and drains it.
    let (mock, a) = start_mock(MockConfig::default()).await;
    let gw = limited_gateway(&a, None, r#"{"ratelimit_max_tpm": 1000}"#).await;
    let url = gw.url("/v1/chat/completions");
    let huge = "y".repeat(20_000);
    assert_eq!(post(&url, &[(k, &v)], chat(&huge)).await.status, 200);
    assert_eq!(post(&url, &[(k, &v)], chat("hi")).await.status, 429);
    assert_eq!(mock.received().len(), 1);
}

#[tokio::test]
async fn a_limited_target_is_skipped_and_429_only_when_all_are_limited() {
    let (ma, a) = start_mock(MockConfig::default()).await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let gw = limited_gateway(&a, Some(&b), r#"{"ratelimit_max_rpm": 1}"#).await;
    let (k, v) = bearer();
    let url = gw.url("/v1/chat/completions");
    let r1 = post(&url, &[(k, &v)], chat("one")).await;
    assert_eq!(
        (r1.status.as_u16(), &r1.headers["x-nenya-attempts"]),
        (200, &"1".parse().unwrap())
    );
    let r2 = post(&url, &[(k, &v)], chat("two")).await;
    assert_eq!(r2.status, 200);
    assert_eq!(r2.headers["x-nenya-attempts"], "2");
    let r3 = post(&url, &[(k, &v)], chat("three")).await;
    assert_eq!(r3.status, 429);
    assert!(r3.headers.contains_key("retry-after"));
    assert_eq!((ma.received().len(), mb.received().len()), (1, 1));

    // The Anthropic ingress gets the same refusal in its own shape.
    let r = post(
        &gw.url("/v1/messages"),
        &[(k, &v)],
        json!({"model": "chain", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
}
