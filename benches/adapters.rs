//! Decode + encode cost of the typed model (the gateway's one parse and one serialise).
//!
//! `cargo bench --bench adapters`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nenya::adapters::stream::StreamConverter;
use nenya::adapters::{decode_request, encode_request};
use nenya::model::ApiFormat;
use nenya::sse::Decoder;
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
        g.bench_with_input(BenchmarkId::new("decode_only", turns), &body, |b, body| {
            b.iter(|| decode_request(ApiFormat::OpenAi, body).unwrap())
        });
        // The floor under decode_only: the same bytes into plain JSON values, nothing else.
        g.bench_with_input(
            BenchmarkId::new("serde_json_value", turns),
            &body,
            |b, body| b.iter(|| serde_json::from_slice::<serde_json::Value>(body).unwrap()),
        );
        g.bench_with_input(BenchmarkId::new("to_anthropic", turns), &body, |b, body| {
            b.iter(|| {
                let req = decode_request(ApiFormat::OpenAi, body).unwrap();
                encode_request(req, ApiFormat::Anthropic).unwrap()
            })
        });
    }
    g.finish();
}

/// A 200-event upstream stream in `format`, as bytes.
fn stream_bytes(format: ApiFormat) -> Vec<u8> {
    let mut s = String::new();
    match format {
        ApiFormat::Anthropic => {
            s += "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"c\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n";
            s += "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
            for i in 0..196 {
                s += &format!(
                    "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token{i} \"}}}}\n\n"
                );
            }
            s += "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
            s += "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":196}}\n\n";
            s += "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        }
        _ => {
            for i in 0..198 {
                s += &format!(
                    "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}]}}\n\n"
                );
            }
            s += "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
            s += "data: [DONE]\n\n";
        }
    }
    s.into_bytes()
}

fn bench_streams(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream_200_events");
    g.throughput(Throughput::Elements(200));
    for from in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
        let bytes = stream_bytes(from);
        // Pass-through: what a same-format stream costs (nothing is parsed; bytes are forwarded).
        g.bench_function(BenchmarkId::new("pass_through", from), |b| {
            let all = bytes::Bytes::from(bytes.clone());
            b.iter(|| {
                // Forward 512-byte frames as zero-copy slices, as a same-format stream does.
                let mut n = 0;
                let mut i = 0;
                while i < all.len() {
                    let frame = all.slice(i..(i + 512).min(all.len()));
                    n += std::hint::black_box(frame).len();
                    i += 512;
                }
                n
            })
        });
        g.bench_function(BenchmarkId::new("sse_decode_only", from), |b| {
            b.iter(|| {
                let mut d = Decoder::new(1 << 20);
                let mut n = 0;
                for c in bytes.chunks(512) {
                    d.feed(c, |_| n += 1).unwrap();
                }
                n
            })
        });
        let to = if from == ApiFormat::OpenAi {
            ApiFormat::Anthropic
        } else {
            ApiFormat::OpenAi
        };
        g.bench_function(BenchmarkId::new(format!("convert_to_{to}"), from), |b| {
            b.iter(|| {
                let mut d = Decoder::new(1 << 20);
                let mut conv = StreamConverter::new(from, to, true);
                let mut out = Vec::with_capacity(256);
                let mut evs = Vec::new();
                for c in bytes.chunks(512) {
                    d.feed(c, |e| evs.push(e)).unwrap();
                    for e in evs.drain(..) {
                        conv.push(e, &mut out).unwrap();
                    }
                }
                conv.finish(&mut out).unwrap();
                out.len()
            })
        });
    }
    g.finish();
}

/// An upstream body that has all its frames ready, one per event.
struct Frames(std::collections::VecDeque<bytes::Bytes>);

impl http_body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// The same-format stream guard's per-event check: the one-pass scan (`sse::is_json`) against
/// serde_json skipping the same event, and the whole guard over a stream sent event by event.
fn bench_guard(c: &mut Criterion) {
    let bytes = stream_bytes(ApiFormat::OpenAi);
    let mut events = Vec::new();
    Decoder::new(1 << 20)
        .feed(&bytes, |e| events.push(e.data))
        .unwrap();
    let mut g = c.benchmark_group("sse_guard_200_events");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("json_check/scan", |b| {
        b.iter(|| events.iter().filter(|d| nenya::sse::is_json(d)).count())
    });
    g.bench_function("json_check/serde_ignored_any", |b| {
        b.iter(|| {
            events
                .iter()
                .filter(|d| serde_json::from_str::<serde::de::IgnoredAny>(d).is_ok())
                .count()
        })
    });
    let frames: Vec<bytes::Bytes> = bytes
        .split_inclusive(|&c| c == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|event| bytes::Bytes::from(event.concat()))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    g.bench_function("guard_event_frames", |b| {
        b.iter(|| {
            use http_body_util::BodyExt;
            let body = Frames(frames.iter().cloned().collect());
            let guard = nenya::services::SseGuard::new(body, ApiFormat::OpenAi);
            rt.block_on(guard.collect()).unwrap().to_bytes().len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_streams, bench_guard);
criterion_main!(benches);
