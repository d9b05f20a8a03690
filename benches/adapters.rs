//! Decode + encode cost of the typed model (the gateway's one parse and one serialise).
//!
//! `cargo bench --bench adapters`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nenya::adapters::{decode_request, encode_request};
use nenya::model::ApiFormat;
use serde_json::json;

fn conversation(turns: usize) -> Vec<u8> {
    let mut messages =
        vec![json!({"role": "system", "content": "You are a careful coding assistant."})];
    for i in 0..turns {
        messages.push(json!({"role": "user", "content": format!("Please refactor module {i}: {}", "fn main() { println!(\"hi\"); }\n".repeat(20))}));
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{i}"), "type": "function", "function": {"name": "read_file", "arguments": format!("{{\"path\":\"src/m{i}.rs\"}}")}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": "pub fn add(a: i32, b: i32) -> i32 { a + b }\n".repeat(30)}));
    }
    serde_json::to_vec(
        &json!({"model": "coder", "stream": true, "messages": messages, "temperature": 0.1}),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("openai_decode_encode");
    for turns in [1usize, 20, 100] {
        let body = conversation(turns);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("same_format", turns), &body, |b, body| {
            b.iter(|| {
                let req = decode_request(ApiFormat::OpenAi, body).unwrap();
                encode_request(req, ApiFormat::OpenAi).unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("to_anthropic", turns), &body, |b, body| {
            b.iter(|| {
                let req = decode_request(ApiFormat::OpenAi, body).unwrap();
                encode_request(req, ApiFormat::Anthropic).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
