//! The two standard Rust BPE tokenizers for OpenAI models, on the same 1 MB of code and prose:
//! `bpe-openai` (what nenya uses) and `tiktoken-rs`. Also the cost of loading each.
//!
//! `cargo bench --bench tokenizers`

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn text() -> String {
    let mut s = String::new();
    for f in [
        "src/gateway.rs",
        "src/services/router.rs",
        "src/layers/budget/mod.rs",
        "README.md",
    ] {
        s.push_str(&std::fs::read_to_string(f).unwrap());
    }
    let base = s.clone();
    while s.len() < 1 << 20 {
        s.push_str(&base);
    }
    s
}

fn bench(c: &mut Criterion) {
    let t = Instant::now();
    let bpe = bpe_openai::o200k_base();
    let _ = bpe.count("load");
    eprintln!("bpe-openai o200k load: {:?}", t.elapsed());
    let t = Instant::now();
    let tk = tiktoken_rs::o200k_base().unwrap();
    eprintln!("tiktoken-rs o200k load: {:?}", t.elapsed());
    let text = text();
    assert_eq!(
        bpe.count(&text),
        tk.encode_ordinary(&text).len(),
        "same counts"
    );
    let mut g = c.benchmark_group("o200k_count_1MiB");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(20);
    g.bench_function("bpe-openai", |b| {
        b.iter(|| black_box(bpe.count(black_box(&text))))
    });
    g.bench_function("tiktoken-rs", |b| {
        b.iter(|| black_box(tk.encode_ordinary(black_box(&text)).len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
