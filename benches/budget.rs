//! Context budget: trimming a 200-message, ~500k-token conversation to a 128k budget, and the
//! cost of proving that a request which fits does fit.
//!
//! `cargo bench --bench budget`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use nenya::layers::budget::{BudgetConfig, trim};
use nenya::model::ApiFormat;
use serde_json::json;

fn conversation(messages: usize, bytes_each: usize) -> nenya::model::ChatRequest {
    let mut m = vec![json!({"role": "system", "content": "You are a careful coding assistant."})];
    for i in 0..messages {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        m.push(json!({"role": role, "content": format!("turn {i}: {}", "fn main() { println!(\"hi\"); }\n".repeat(bytes_each / 32))}));
    }
    m.push(json!({"role": "user", "content": "and now?"}));
    let body = json!({"model": "m", "messages": m});
    nenya::adapters::decode_request(ApiFormat::OpenAi, body.to_string().as_bytes()).unwrap()
}

fn bench(c: &mut Criterion) {
    let cfg = BudgetConfig::default();
    // 200 messages x ~10 KB = ~2 MB of text, ~500k estimated tokens.
    let huge = conversation(200, 10_000);
    c.bench_function("budget/trim_500k_to_128k_tokens", |b| {
        b.iter_batched(
            || huge.clone(),
            |mut req| black_box(trim(&mut req, 128_000, &cfg)),
            BatchSize::LargeInput,
        )
    });
    let fits = conversation(40, 2_000);
    c.bench_function("budget/request_that_fits_40_messages", |b| {
        b.iter_batched(
            || fits.clone(),
            |mut req| black_box(trim(&mut req, 128_000, &cfg)),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
