//! The response cache's semantic tier over loopback (issue 13 §5), with the mock's
//! deterministic embeddings (a hashed bag of words): a paraphrase in the same context is a hit
//! above the threshold and a miss below it; the exact tier still answers first; a different
//! context or an unrelated prompt is a miss; a failing embedder makes plain misses.

use crate::common;

use common::*;
use nenya::Gateway;
use nenya::config::Config;
use nenya::layers::cache::semantic::cosine;
use nenya::services::MockConfig;
use serde_json::{Value, json};

const ASKED: &str = "How do I reverse a list in Python?";
const PARAPHRASE: &str = "how to reverse a python list";
const UNRELATED: &str = "What is the capital of France?";

async fn gateway(up: &Running, embeddings_from: &Running, threshold: f32) -> Running {
    let (cfg, secrets) = config_for(up, "");
    let v: Value = json!({
        "providers": {"embedder": {"url": format!("http://{}/v1/chat/completions", embeddings_from.addr),
                                   "auth_style": "none"}},
        "response_cache": {"enabled": true,
            "semantic": {"provider": "embedder", "model": "mock-embed", "threshold": threshold}}
    });
    // The common config, plus the embedder and the cache.
    let extra: Config = Config::from_json_str(&v.to_string()).unwrap();
    let mut cfg = cfg;
    cfg.providers.extend(extra.providers);
    cfg.response_cache = extra.response_cache;
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

fn chat(system: &str, prompt: &str) -> Value {
    json!({"model": "coder", "temperature": 0, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": prompt}]})
}

async fn embed(mock: &Running, text: &str) -> Vec<f32> {
    let r = post(
        &mock.url("/v1/embeddings"),
        &[],
        json!({"model": "mock-embed", "input": text}).to_string(),
    )
    .await;
    r.json()["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cache_status(r: &Reply) -> &str {
    r.headers
        .get("x-nenya-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_paraphrase_is_a_hit_above_the_threshold_and_a_miss_below_it() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let similarity = cosine(&embed(&up, ASKED).await, &embed(&up, PARAPHRASE).await);
    let unrelated = cosine(&embed(&up, ASKED).await, &embed(&up, UNRELATED).await);
    assert!(
        similarity > 0.5 && unrelated < similarity - 0.2,
        "{similarity} {unrelated}"
    );
    let chats = |m: &nenya::services::MockProvider| {
        m.received()
            .iter()
            .filter(|r| r.uri.ends_with("/chat/completions"))
            .count()
    };

    // Threshold just under the paraphrase's similarity: a hit.
    let gw = gateway(&up, &up, similarity - 0.05).await;
    let first = post_chat(&gw, &chat("be brief", ASKED)).await;
    assert_eq!((first.status.as_u16(), cache_status(&first)), (200, "miss"));
    let exact = post_chat(&gw, &chat("be brief", ASKED)).await;
    assert_eq!(cache_status(&exact), "hit", "the exact tier answers first");
    let para = post_chat(&gw, &chat("be brief", PARAPHRASE)).await;
    assert_eq!(cache_status(&para), "semantic-hit");
    assert_eq!(
        para.json()["choices"],
        first.json()["choices"],
        "the stored answer"
    );
    assert_eq!(chats(&mock), 1, "one upstream call for three requests");
    // An unrelated prompt, or the paraphrase in another context, goes upstream.
    let other = post_chat(&gw, &chat("be brief", UNRELATED)).await;
    assert_eq!(cache_status(&other), "miss");
    let ctx = post_chat(&gw, &chat("be verbose", PARAPHRASE)).await;
    assert_eq!(cache_status(&ctx), "miss");
    assert_eq!(chats(&mock), 3);

    // Threshold just over it: a miss.
    let (mock2, up2) = start_mock(MockConfig::default()).await;
    let gw = gateway(&up2, &up2, (similarity + 0.05).min(1.0)).await;
    post_chat(&gw, &chat("be brief", ASKED)).await;
    let para = post_chat(&gw, &chat("be brief", PARAPHRASE)).await;
    assert_eq!(cache_status(&para), "miss");
    assert_eq!(chats(&mock2), 2);
}

#[tokio::test]
async fn a_failing_embedder_makes_plain_misses() {
    let (mock, up) = start_mock(MockConfig::default()).await;
    let dead = Running::at("127.0.0.1:9".parse().unwrap());
    let gw = gateway(&up, &dead, 0.1).await;
    for prompt in [ASKED, PARAPHRASE] {
        let r = post_chat(&gw, &chat("be brief", prompt)).await;
        assert_eq!((r.status.as_u16(), cache_status(&r)), (200, "miss"));
    }
    assert_eq!(mock.received().len(), 2);
}
