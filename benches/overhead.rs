//! End-to-end overhead: the same request straight to the mock upstream, and through nenya to
//! that mock, over real loopback HTTP with keep-alive, in one run.
//!
//! `cargo bench --bench overhead`. The gateway here runs the foundation stack (error response,
//! auth, decode, router, provider); figures go to BENCHMARKS.md.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use nenya::config::{Config, Secrets};
use nenya::services::{MockConfig, MockProvider};
use nenya::{Body, Gateway};

const TOKEN: &str = "bench-token";

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mock_addr, gw_addr) = rt.block_on(async {
        let mock = MockProvider::new(MockConfig {
            chunks: 20,
            ..MockConfig::default()
        });
        let ml = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock_addr = ml.local_addr().unwrap();
        tokio::spawn(mock.serve(ml, std::future::pending()));
        let cfg = Config::from_json_str(&format!(
            r#"{{"providers": {{"up": {{"url": "http://{mock_addr}/v1/chat/completions", "auth_style": "bearer"}}}},
                "agents": {{"coder": {{"models": [{{"provider": "up", "model": "m"}}]}}}}}}"#
        ))
        .unwrap();
        let secrets = Secrets::from_json_str(&format!(
            r#"{{"client_token": "{TOKEN}", "provider_keys": {{"up": "sk-bench"}}}}"#
        ))
        .unwrap();
        let gw = Gateway::from_config(&cfg, &secrets).unwrap().build();
        let gl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_addr = gl.local_addr().unwrap();
        tokio::spawn(nenya::server::serve(gl, gw, std::future::pending(), Duration::from_secs(1)));
        (mock_addr, gw_addr)
    });
    let client = nenya::services::http_client(Duration::from_secs(5));
    let plain = r#"{"model":"coder","messages":[{"role":"system","content":"You are a coding assistant."},{"role":"user","content":"Write a function that adds two numbers."}],"temperature":0.2}"#;
    let streamed = r#"{"model":"coder","stream":true,"messages":[{"role":"system","content":"You are a coding assistant."},{"role":"user","content":"Write a function that adds two numbers."}],"temperature":0.2}"#;

    let call = |addr: std::net::SocketAddr, body: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            assert!(resp.status().is_success());
            resp.into_body().collect().await.unwrap().to_bytes().len()
        }
    };

    let mut g = c.benchmark_group("e2e");
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("direct_to_mock/plain", |b| {
        b.iter(|| rt.block_on(call(mock_addr, plain)))
    });
    g.bench_function("through_nenya/plain", |b| {
        b.iter(|| rt.block_on(call(gw_addr, plain)))
    });
    g.bench_function("direct_to_mock/stream_20_events", |b| {
        b.iter(|| rt.block_on(call(mock_addr, streamed)))
    });
    g.bench_function("through_nenya/stream_20_events", |b| {
        b.iter(|| rt.block_on(call(gw_addr, streamed)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
