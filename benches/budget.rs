//! Context budget: trimming a 200-message, ~500k-token conversation to a 128k budget, and the
//! cost of proving that a request which fits does fit.
//!
//! `cargo bench --bench budget`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use nenya::layers::budget::{BudgetConfig, trim};
use nenya::model::ApiFormat;
use serde_json::json;

/// This repository's own source, cut into `bytes_each` slices: real code and prose, so the
/// tokenizer sees what it would in a coding session (a repeated line would tokenise far
/// faster than anything real).
fn conversation(messages: usize, bytes_each: usize) -> nenya::model::ChatRequest {
    let mut src = String::new();
    for f in [
        "src/gateway.rs",
        "src/services/router.rs",
        "src/layers/budget/mod.rs",
        "README.md",
    ] {
        src.push_str(&std::fs::read_to_string(f).unwrap());
    }
    let mut m = vec![json!({"role": "system", "content": "You are a careful coding assistant."})];
    let mut at = 0;
    for i in 0..messages {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let mut text = String::with_capacity(bytes_each);
        while text.len() < bytes_each {
            let end = (at + bytes_each - text.len()).min(src.len());
            let end = (end..=src.len())
                .find(|e| src.is_char_boundary(*e))
                .unwrap();
            text.push_str(&src[at..end]);
            at = if end >= src.len() { 0 } else { end };
        }
        m.push(json!({"role": role, "content": format!("turn {i}: {text}")}));
    }
    m.push(json!({"role": "user", "content": "and now?"}));
    let body = json!({"model": "gpt-4o", "messages": m});
    nenya::adapters::decode_request(ApiFormat::OpenAi, body.to_string().as_bytes()).unwrap()
}

fn bench(c: &mut Criterion) {
    let cfg = BudgetConfig::default();
    nenya::tokens::warm_up();
    // 200 messages x ~11 KB = ~2.2 MB of code and prose: ~500k o200k tokens.
    let huge = conversation(200, 10_800);
    let counter = nenya::tokens::TokenCounter::for_model("gpt-4o");
    let total: u64 = huge.messages.iter().map(|m| counter.count_message(m)).sum();
    eprintln!("huge conversation: {total} o200k tokens");
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
