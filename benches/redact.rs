//! Redaction throughput over ordinary source code with no secrets (the common case: every
//! request pays it). Input: this crate's own sources, repeated to 1 MiB.
//!
//! `cargo bench --bench redact`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nenya::layers::{EntropyDetector, Redactor};

fn source_mib() -> String {
    let mut files = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                // The redaction code and its docs are full of (fake) credentials on purpose.
                && !p.to_string_lossy().contains("/redact/")
                && !p.to_string_lossy().contains("/entropy/")
                && !p.ends_with("layers/scrub.rs")
                && !p.ends_with("src/telemetry.rs")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut s = String::new();
    while s.len() < 1 << 20 {
        for f in &files {
            s.push_str(&std::fs::read_to_string(f).unwrap());
        }
    }
    let mut cut = 1 << 20;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

fn bench(c: &mut Criterion) {
    let text = source_mib();
    let redactor = Redactor::builtin();
    let entropy = EntropyDetector::default();
    assert!(
        redactor.find(&text).is_empty(),
        "{:?}",
        redactor
            .find(&text)
            .iter()
            .take(3)
            .map(|f| &text[f.range.clone()])
            .collect::<Vec<_>>()
    );
    let mut g = c.benchmark_group("redact_1MiB_source");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("patterns", |b| b.iter(|| redactor.find(black_box(&text))));
    g.bench_function("entropy", |b| b.iter(|| entropy.find(black_box(&text))));
    g.bench_function("patterns+entropy", |b| {
        b.iter(|| {
            let r = redactor.find(black_box(&text));
            let e = entropy.find(black_box(&text));
            (r, e)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
