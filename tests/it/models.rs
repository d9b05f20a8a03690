//! `GET /v1/models`: agents plus the registry models of configured providers, in the client's
//! format, limited to what a scoped key may use.

use crate::common;

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use serde_json::Value;

async fn gateway() -> Running {
    let cfg = Config::from_json_str(
        r#"{"providers": {"mine": {"url": "http://127.0.0.1:9/v1/chat/completions"}},
            "agents": {"build": {"models": [{"provider": "mine", "model": "m"}]},
                       "plan": {"models": ["gpt-4o"]}}}"#,
    )
    .unwrap();
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"openai": "sk-x", "mine": "k"}},
            "api_keys": {{"dev": {{"token": "nk-dev-0123456789abcdef", "roles": ["read-only"], "allowed_agents": ["build"]}}}}}}"#
    ))
    .unwrap();
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

async fn list(gw: &Running, headers: &[(&str, &str)]) -> Reply {
    let mut b = http::Request::get(gw.url("/v1/models"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(nenya::Body::empty()).unwrap()).await
}

fn ids(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn lists_agents_then_models_of_configured_providers() {
    let gw = gateway().await;
    let (k, v) = bearer();
    let r = list(&gw, &[(k, &v)]).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["object"], "list");
    let ids = ids(&j);
    assert_eq!(&ids[..2], ["build", "plan"]);
    assert!(
        ids.contains(&"gpt-4o-mini".to_string()),
        "openai has a key: {ids:?}"
    );
    assert!(
        !ids.iter().any(|i| i.starts_with("claude")),
        "anthropic has no key"
    );
    let gpt = j["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "gpt-4o-mini")
        .unwrap();
    assert_eq!(gpt["owned_by"], "openai");
    assert_eq!(gpt["context_window"], 128_000);
}

#[tokio::test]
async fn anthropic_clients_get_anthropic_shape() {
    let gw = gateway().await;
    let r = list(
        &gw,
        &[
            ("x-api-key", CLIENT_TOKEN),
            ("anthropic-version", "2023-06-01"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["has_more"], false);
    assert_eq!(j["data"][0]["type"], "model");
    assert_eq!(j["first_id"], "build");
}

#[tokio::test]
async fn a_scoped_key_sees_only_its_agents_and_writes_are_refused() {
    let gw = gateway().await;
    let r = list(&gw, &[("authorization", "Bearer nk-dev-0123456789abcdef")]).await;
    assert_eq!(r.status, 200, "read-only may GET");
    assert_eq!(ids(&r.json()), ["build"]);
    let (k, v) = bearer();
    let r = post(&gw.url("/v1/models"), &[(k, &v)], "{}").await;
    assert_eq!(r.status, 405);
    assert_eq!(list(&gw, &[]).await.status, 401, "not an open route");
}

#[tokio::test]
async fn live_provider_lists_are_merged_and_a_dead_provider_is_skipped() {
    let (mock, up) = start_mock(nenya::services::MockConfig::default()).await;
    let cfg = Config::from_json_str(&format!(
        r#"{{"providers": {{
              "up": {{"url": "http://{}/v1/chat/completions", "auth_style": "bearer"}},
              "dead": {{"url": "http://127.0.0.1:9/v1/chat/completions", "auth_style": "none"}}}},
            "agents": {{"build": {{"models": [{{"provider": "up", "model": "m"}}]}}}}}}"#,
        up.addr
    ))
    .unwrap();
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"up": "{PROVIDER_KEY}"}}}}"#
    ))
    .unwrap();
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    let (k, v) = bearer();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let r = list(&gw, &[(k, &v)]).await;
        assert_eq!(r.status, 200);
        let body = r.json();
        if ids(&body).contains(&"mock-live-2".to_string()) {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no live models: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let got = ids(&body);
    assert_eq!(got[0], "build", "agents first");
    assert_eq!(got.iter().filter(|i| *i == "mock-live-1").count(), 1);
    let m = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "mock-live-1")
        .unwrap();
    assert_eq!(m["owned_by"], "up");
    // The fetch used the provider's auth, as a GET to the /models next to its chat URL.
    let fetched = mock
        .listings()
        .into_iter()
        .find(|r| r.uri.ends_with("/v1/models"))
        .unwrap();
    assert!(mock.received().is_empty(), "no chat request was made");
    assert_eq!(fetched.method, http::Method::GET);
    assert_eq!(
        fetched.headers["authorization"],
        format!("Bearer {PROVIDER_KEY}")
    );
}
