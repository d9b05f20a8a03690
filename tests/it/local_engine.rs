//! Local engines against a mock Ollama API over loopback (issue 13 §4): preload at start,
//! least-recently-used eviction beyond `max_loaded`, and a model still loading is skipped for
//! the next target instead of being waited on.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use nenya::services::{MockConfig, MockProvider};
use serde_json::json;

fn gateway_config(local: &Running, other: &Running, engine: serde_json::Value) -> Config {
    Config::from_json_str(
        &json!({
            "providers": {
                "ollama": {"url": format!("http://{}/v1/chat/completions", local.addr),
                           "auth_style": "none", "local_engine": engine},
                "other": {"url": format!("http://{}/v1/chat/completions", other.addr), "auth_style": "none"}
            },
            "agents": {
                "big-first": {"strategy": "fallback", "models": [
                    {"provider": "ollama", "model": "big"}, {"provider": "other", "model": "m"}]}
            }
        })
        .to_string(),
    )
    .unwrap()
}

async fn wait_for(mock: &MockProvider, event: (&str, &str)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = (event.0.to_owned(), event.1.to_owned());
    while !mock.ollama_events().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "no {event:?}: {:?}",
            mock.ollama_events()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ask(gw: &Running, model: &str) -> Reply {
    post_chat(
        gw,
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

#[tokio::test]
async fn preloads_at_start_and_evicts_the_least_recently_used_beyond_the_limit() {
    let (ollama, local) = start_mock(MockConfig::default()).await;
    let (_o, other) = start_mock(MockConfig::default()).await;
    let cfg = gateway_config(
        &local,
        &other,
        json!({"preload": ["a", "b"], "max_loaded": 2, "keep_alive": "10m"}),
    );
    let gw = start_gateway(
        Gateway::from_config(&cfg, &Secrets::default())
            .unwrap()
            .build(),
    )
    .await;
    wait_for(&ollama, ("load", "a")).await;
    wait_for(&ollama, ("load", "b")).await;
    // c is used: three resident, so the least recently used (a) goes.
    assert_eq!(ask(&gw, "ollama/c").await.status, 200);
    wait_for(&ollama, ("unload", "a")).await;
    // b is used again, then d: now c is the least recently used, though b was loaded first.
    assert_eq!(ask(&gw, "ollama/b").await.status, 200);
    assert_eq!(ask(&gw, "ollama/d").await.status, 200);
    wait_for(&ollama, ("unload", "c")).await;
    assert!(
        !ollama
            .ollama_events()
            .contains(&("unload".into(), "b".into())),
        "{:?}",
        ollama.ollama_events()
    );
    // Loads and unloads went to Ollama's own API; the chat route saw only the chat requests.
    assert_eq!(ollama.received().len(), 3, "only the three chat requests");
}

#[tokio::test]
async fn a_model_still_loading_is_skipped_for_the_next_target() {
    let (ollama, local) = start_mock(MockConfig {
        load_delay: Duration::from_millis(1500),
        ..MockConfig::default()
    })
    .await;
    let (other_mock, other) = start_mock(MockConfig::default()).await;
    let cfg = gateway_config(&local, &other, json!({"preload": ["big"]}));
    let gw = start_gateway(
        Gateway::from_config(&cfg, &Secrets::default())
            .unwrap()
            .build(),
    )
    .await;
    // While `big` loads, the chain's next target answers at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = ask(&gw, "big-first").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "it did not wait for the load"
    );
    assert_eq!(
        (ollama.received().len(), other_mock.received().len()),
        (0, 1)
    );
    // Alone, it is a 503 `model_loading` in the client's shape, not a hang.
    let r = ask(&gw, "ollama/big").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["error_kind"], "model_loading");
    // Once loaded, the local model serves.
    wait_for(&ollama, ("load", "big")).await;
    assert_eq!(ask(&gw, "big-first").await.status, 200);
    assert_eq!(ollama.received().len(), 1);
}
