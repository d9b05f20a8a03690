//! Per-upstream RPM/TPM limits over real loopback HTTP: they hold exactly under 200 concurrent
//! requests (counted at the mock), a limited target is skipped for the next one, and the client
//! gets 429 with `Retry-After` only when every target is limited.

use crate::common;

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use nenya::services::MockConfig;
use serde_json::json;

async fn limited_gateway(a: &Running, b: Option<&Running>, governance: &str) -> Running {
    limited_gateway_with(a, b, governance, "").await
}

/// As `limited_gateway`, with `a_extra` added to provider `a`'s settings.
async fn limited_gateway_with(
    a: &Running,
    b: Option<&Running>,
    governance: &str,
    a_extra: &str,
) -> Running {
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
            "providers": {{"a": {{"url": "http://{}/v1/chat/completions", "auth_style": "bearer"{a_extra}}}{b_provider}}},
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

fn stream_chat() -> String {
    json!({"model": "chain", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_cap_holds_for_whole_streams_and_queues_the_rest() {
    // Each answer streams 8 events 40 ms apart: ~320 ms in flight.
    let (mock, a) = start_mock(MockConfig {
        delay: std::time::Duration::from_millis(40),
        ..MockConfig::default()
    })
    .await;
    let gw = limited_gateway_with(&a, None, "{}", r#", "max_concurrent_requests": 2"#).await;
    let url = gw.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (k, v) = bearer();
            post(&url, &[(k, &v)], stream_chat()).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("[DONE]"), "every stream completes");
    }
    assert_eq!(mock.received().len(), 8, "all were served, none refused");
    assert_eq!(
        mock.max_concurrent_streams(),
        2,
        "never more than the cap at once"
    );
}

#[tokio::test]
async fn a_request_that_waits_too_long_for_a_slot_is_rate_limited() {
    // The first stream stalls after one event and holds the only slot.
    let (_mock, a) = start_mock(MockConfig {
        fault: Some("stall-after:1".parse().unwrap()),
        ..MockConfig::default()
    })
    .await;
    let gw = limited_gateway_with(
        &a,
        None,
        r#"{"concurrency_queue_seconds": 1}"#,
        r#", "max_concurrent_requests": 1"#,
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let (k, v) = bearer();
    // Hold the slot: read the headers of a stream that never ends.
    let holder = tokio::spawn({
        let url = url.clone();
        async move {
            let (k, v) = bearer();
            post(&url, &[(k, &v)], stream_chat()).await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let r = post(&url, &[(k, &v)], chat("hi")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["error_kind"], "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "{waited:?}"
    );
    holder.abort();
}

#[tokio::test]
async fn a_provider_can_override_the_global_rpm() {
    let (mock, a) = start_mock(MockConfig::default()).await;
    let gw = limited_gateway_with(
        &a,
        None,
        r#"{"ratelimit_max_rpm": 100}"#,
        r#", "ratelimit_max_rpm": 2"#,
    )
    .await;
    let (k, v) = bearer();
    let url = gw.url("/v1/chat/completions");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post(&url, &[(k, &v)], chat("hi")).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(mock.received().len(), 2);
}

#[tokio::test]
async fn accounts_rotate_least_recently_used_per_model() {
    let (mock, a) = start_mock(MockConfig::default()).await;
    let accounts = r#", "accounts": [
        {"id": "one", "type": "apikey", "credential": "sk-account-one-111"},
        {"id": "two", "type": "apikey", "credential": "sk-account-two-222"}]"#;
    let gw = limited_gateway_with(&a, None, "{}", accounts).await;
    let (k, v) = bearer();
    let url = gw.url("/v1/chat/completions");
    for _ in 0..4 {
        assert_eq!(post(&url, &[(k, &v)], chat("hi")).await.status, 200);
    }
    let keys: Vec<String> = mock
        .received()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "Bearer sk-account-one-111",
            "Bearer sk-account-two-222",
            "Bearer sk-account-one-111",
            "Bearer sk-account-two-222"
        ],
        "least recently used first; the provider_keys entry is not used"
    );
}

#[tokio::test]
async fn when_every_account_is_throttled_the_gateway_answers_429_without_calling() {
    let (mock, a) = start_mock(MockConfig {
        fault: Some("status:429".parse().unwrap()),
        ..MockConfig::default()
    })
    .await;
    let accounts = r#", "accounts": [
        {"id": "one", "credential": "sk-account-one-111"},
        {"id": "two", "credential": "sk-account-two-222"}]"#;
    let gw = limited_gateway_with(&a, None, "{}", accounts).await;
    let (k, v) = bearer();
    let url = gw.url("/v1/chat/completions");
    // Each account gets one 429 and cools down.
    for _ in 0..2 {
        assert_eq!(post(&url, &[(k, &v)], chat("hi")).await.status, 429);
    }
    assert_eq!(mock.received().len(), 2);
    let r = post(&url, &[(k, &v)], chat("hi")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["error_kind"], "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    assert!(!r.text().contains("sk-account"), "no key in the error");
    assert_eq!(
        mock.received().len(),
        2,
        "no call while every account rests"
    );
}

#[tokio::test]
async fn an_api_key_with_its_own_rpm_is_limited_and_others_are_not() {
    let (mock, a) = start_mock(MockConfig::default()).await;
    let cfg = Config::from_json_str(&format!(
        r#"{{"providers": {{"a": {{"url": "http://{}/v1/chat/completions", "auth_style": "none"}}}},
            "agents": {{"chain": {{"models": [{{"provider": "a", "model": "m"}}]}}}}}}"#,
        a.addr
    ))
    .unwrap();
    let secrets = Secrets::from_json_str(
        r#"{"api_keys": {
            "slow": {"token": "nk-slow-0123456789abcdef", "roles": ["user"], "ratelimit_max_rpm": 2},
            "free": {"token": "nk-free-0123456789abcdef", "roles": ["user"]}}}"#,
    )
    .unwrap();
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    let url = gw.url("/v1/chat/completions");
    let slow = [("authorization", "Bearer nk-slow-0123456789abcdef")];
    let free = [("authorization", "Bearer nk-free-0123456789abcdef")];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(&url, &slow, chat("hi")).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    let r = post(&url, &slow, chat("hi")).await;
    assert_eq!(r.json()["error"]["error_kind"], "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    for _ in 0..5 {
        assert_eq!(
            post(&url, &free, chat("hi")).await.status,
            200,
            "another key is not limited"
        );
    }
    assert_eq!(
        mock.received().len(),
        2 + 5,
        "refused requests never reach the upstream"
    );
}
