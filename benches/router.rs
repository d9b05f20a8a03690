//! The routing hot path with healthy targets: resolve the agent, pick the target, pass the
//! circuit breaker and the RPM/TPM limiter, reach the provider service (here a ready no-op), answer. Separately, the
//! request layers that touch every text (redact + entropy) on a typical small request.
//!
//! `cargo bench --bench router`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use nenya::config::{Config, Secrets};
use nenya::layers::{
    BreakerConfig, CircuitBreakerLayer, EntropyDetector, RateLimitConfig, RateLimitLayer, Redactor,
    TextScrubber,
};
use nenya::model::{ApiFormat, ChatRequest};
use nenya::services::{RouteTable, Router, Target, http_client};
use nenya::{Body, Error};
use tower::{Layer, Service, ServiceExt, service_fn};

fn request() -> ChatRequest {
    nenya::adapters::decode_request(
        ApiFormat::OpenAi,
        br#"{"model":"coder","messages":[{"role":"system","content":"You are a careful coding assistant."},
            {"role":"user","content":"Refactor this function to return a Result instead of panicking:\nfn parse(s: &str) -> u32 { s.parse().unwrap() }"}]}"#,
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = Config::from_json_str(
        r#"{"providers": {"a": {"url": "http://127.0.0.1:9/v1/chat/completions"},
                          "b": {"url": "http://127.0.0.1:9/v1/chat/completions"}},
            "agents": {"coder": {"models": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}}}"#,
    )
    .unwrap();
    let secrets = Secrets::from_json_str(r#"{"provider_keys": {"a": "ka", "b": "kb"}}"#).unwrap();
    let table =
        RouteTable::from_config(&cfg, &secrets, &http_client(Duration::from_secs(1))).unwrap();
    let key = |r: &http::Request<ChatRequest>| {
        r.extensions()
            .get::<Target>()
            .map(|t| Arc::from(format!("{}/{}", t.provider.name, t.model)))
    };
    let provider = service_fn(|_r: http::Request<ChatRequest>| async {
        Ok::<_, Error>(http::Response::new(Body::empty()))
    });
    let provider_key = |r: &http::Request<ChatRequest>| {
        r.extensions()
            .get::<Target>()
            .map(|t| Arc::from(t.provider.name.as_str()))
    };
    // Limits high enough never to refuse, so the limiter's full check is on the path.
    let limits = RateLimitConfig {
        rpm: 1_000_000_000,
        tpm: 1_000_000_000,
    };
    let svc = Router::new(
        Arc::new(table),
        CircuitBreakerLayer::new(BreakerConfig::default(), key)
            .layer(RateLimitLayer::new(limits, provider_key).layer(provider)),
    );
    let template = request();

    c.bench_function("router+breaker+limiter/healthy_two_target_chain", |b| {
        b.iter_batched(
            || http::Request::new(template.clone()),
            |req| {
                rt.block_on(async {
                    let mut s = svc.clone();
                    let resp = s.ready().await.unwrap().call(req).await.unwrap();
                    black_box(resp)
                })
            },
            BatchSize::SmallInput,
        )
    });

    let redactor = Redactor::builtin();
    let entropy = EntropyDetector::default();
    c.bench_function("redact+entropy/small_request", |b| {
        b.iter(|| {
            let mut n = 0;
            template.for_each_text(|t| {
                n += usize::from(redactor.scrub(t).is_some());
                n += usize::from(entropy.scrub(t).is_some());
            });
            black_box(n)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
