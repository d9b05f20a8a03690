//! The SSE decoder yields the same events however the byte stream is split, and the stream
//! converters yield the same client stream however the upstream's bytes are split.

use nenya::adapters::stream::StreamConverter;
use nenya::model::ApiFormat;
use nenya::sse::{Decoder, Event, encode};
use proptest::prelude::*;

const FIXTURE: &str = "event: message_start\r\ndata: {\"a\":\"naïve ☕ 中文\"}\r\n\r\n\
: keep-alive comment\n\n\
data: line one\ndata: line two\n\n\
id: 7\rdata: cr only\r\r\
data:no-space\n\
retry: 100\n\n\
event: x\ndata\n\n\
data: last without blank line";

fn decode_all(chunks: &[&[u8]]) -> Vec<Event> {
    let mut d = Decoder::new(1 << 16);
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c, |e| out.push(e)).unwrap();
    }
    d.finish(|e| out.push(e)).unwrap();
    out
}

#[test]
fn fixture_decodes_to_the_expected_events() {
    let events = decode_all(&[FIXTURE.as_bytes()]);
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(
        data,
        [
            "{\"a\":\"naïve ☕ 中文\"}",
            "line one\nline two",
            "cr only",
            "no-space",
            "",
            "last without blank line"
        ]
    );
    assert_eq!(events[0].event.as_deref(), Some("message_start"));
    assert_eq!(events[2].id.as_deref(), Some("7"));
    assert_eq!(events[4].event.as_deref(), Some("x"));
}

#[test]
fn every_single_split_point_gives_the_same_events() {
    let bytes = FIXTURE.as_bytes();
    let whole = decode_all(&[bytes]);
    for i in 0..=bytes.len() {
        let (a, b) = bytes.split_at(i);
        assert_eq!(decode_all(&[a, b]), whole, "split at byte {i}");
    }
}

#[test]
fn an_event_over_the_limit_is_an_error_not_unbounded_memory() {
    let mut d = Decoder::new(64);
    let big = format!("data: {}\n\n", "x".repeat(100));
    assert!(d.feed(big.as_bytes(), |_| {}).is_err());
    let mut d = Decoder::new(64);
    let mut err = false;
    for _ in 0..100 {
        if d.feed(b"data: xx\n", |_| {}).is_err() {
            err = true;
            break;
        }
    }
    assert!(
        err,
        "many data lines in one event also count against the limit"
    );
}

#[test]
fn invalid_utf8_is_an_error() {
    let mut d = Decoder::new(1024);
    assert!(d.feed(b"data: \xff\xfe\n\n", |_| {}).is_err());
}

#[test]
fn encode_then_decode_round_trips_multiline_data() {
    let frame = encode(Some("delta"), "a\nb\n\nc");
    let events = decode_all(&[&frame]);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "a\nb\n\nc");
    assert_eq!(events[0].event.as_deref(), Some("delta"));
}

/// An upstream OpenAI stream with a tool call in fragments.
fn openai_stream() -> String {
    let mut s = String::new();
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"c\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    s += &chunk(r#"{"role":"assistant","content":""}"#, "null");
    s += &chunk(r#"{"content":"héllo "}"#, "null");
    s += &chunk(
        r#"{"tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"f","arguments":""}}]}"#,
        "null",
    );
    for frag in ["{\\\"a\\\"", ":1,", "\\\"b\\\":\\\"☕\\\"}"] {
        s += &chunk(
            &format!(r#"{{"tool_calls":[{{"index":0,"function":{{"arguments":"{frag}"}}}}]}}"#),
            "null",
        );
    }
    s += &chunk("{}", "\"tool_calls\"");
    s += "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":4}}\n\n";
    s += "data: [DONE]\n\n";
    s
}

fn convert(bytes: &[u8], cuts: &[usize], to: ApiFormat) -> String {
    let mut conv = StreamConverter::new(ApiFormat::OpenAi, to, true);
    let mut dec = Decoder::new(1 << 16);
    let mut out = Vec::new();
    let mut start = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());
    for c in cuts {
        let mut evs = Vec::new();
        dec.feed(&bytes[start..c], |e| evs.push(e)).unwrap();
        for e in evs {
            conv.push(e, &mut out).unwrap();
        }
        start = c;
    }
    conv.finish(&mut out).unwrap();
    // `created` differs between runs; compare the rest.
    let re = |s: String| {
        s.split("\"created\":")
            .enumerate()
            .map(|(i, p)| {
                if i == 0 {
                    p.to_owned()
                } else {
                    p.trim_start_matches(char::is_numeric).to_owned()
                }
            })
            .collect::<String>()
    };
    re(out
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect())
}

proptest! {
    /// What the usage tap relies on to skip frames: between events, a chunk decodes exactly as
    /// it would alone, and a chunk ending in a blank line leaves the decoder between events.
    #[test]
    fn between_events_a_chunk_stands_alone(cuts in prop::collection::vec(0usize..400, 0..12)) {
        let bytes = FIXTURE.as_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let mut dec = Decoder::new(1 << 20);
        let mut start = 0;
        for c in cuts {
            let chunk = &bytes[start..c];
            start = c;
            let idle = dec.is_between_events();
            let mut got = Vec::new();
            dec.feed(chunk, |e| got.push(e)).unwrap();
            if idle {
                let mut fresh = Decoder::new(1 << 20);
                let mut alone = Vec::new();
                fresh.feed(chunk, |e| alone.push(e)).unwrap();
                prop_assert_eq!(&got, &alone);
                if chunk.ends_with(b"\n\n") {
                    prop_assert!(dec.is_between_events());
                }
            }
        }
    }

    #[test]
    fn sse_decoder_is_split_invariant(cuts in prop::collection::vec(0usize..400, 0..12)) {
        let bytes = FIXTURE.as_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for c in cuts {
            chunks.push(&bytes[start..c]);
            start = c;
        }
        chunks.push(&bytes[start..]);
        prop_assert_eq!(decode_all(&chunks), decode_all(&[bytes]));
    }

    #[test]
    fn stream_conversion_is_split_invariant(cuts in prop::collection::vec(0usize..2000, 0..16)) {
        let s = openai_stream();
        for to in [ApiFormat::Anthropic, ApiFormat::OpenAi] {
            prop_assert_eq!(convert(s.as_bytes(), &cuts, to), convert(s.as_bytes(), &[], to));
        }
    }
}

/// Runs `frames` through an `SseGuard` for `format` and concatenates what comes out.
fn guarded(frames: Vec<Vec<u8>>, format: ApiFormat) -> Vec<u8> {
    use http_body_util::BodyExt;
    let frames: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> = frames
        .into_iter()
        .map(|f| Ok(http_body::Frame::data(bytes::Bytes::from(f))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_stream(frames));
    let guard = nenya::services::SseGuard::new(body, format);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async { guard.collect().await.unwrap().to_bytes().to_vec() })
}

fn futures_stream<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Unpin {
    struct Iter<T>(std::collections::VecDeque<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.pop_front())
        }
    }
    Iter(items.into())
}

fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        out.push(bytes[at..c].to_vec());
        at = c;
    }
    out.push(bytes[at..].to_vec());
    out
}

const OPENAI_STREAM: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"na\u{ef}ve \u{2615}\"}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" two\"}}]}\r\n\r\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n\
data: [DONE]\n\n";

const ANTHROPIC_STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A well-formed stream passes the guard byte for byte, however it is framed.
    #[test]
    fn a_valid_stream_passes_the_guard_unchanged(cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        for (text, format) in [(OPENAI_STREAM, ApiFormat::OpenAi), (ANTHROPIC_STREAM, ApiFormat::Anthropic)] {
            let out = guarded(split(text.as_bytes(), &cuts), format);
            prop_assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    /// A stream cut short anywhere ends with exactly one error event after whole events only.
    #[test]
    fn a_truncated_stream_ends_with_an_error_event(cut in 0usize..200, cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let full = OPENAI_STREAM.as_bytes();
        let cut = cut % (full.len() - 1);
        let out = String::from_utf8(guarded(split(&full[..cut], &cuts), ApiFormat::OpenAi)).unwrap();
        let events = decode_all(&[out.as_bytes()]);
        let last = events.last().unwrap();
        prop_assert!(last.data.contains("upstream_protocol_error"), "{}", out);
        prop_assert_eq!(events.iter().filter(|e| e.data.contains("\"error\"")).count(), 1);
        for e in &events[..events.len() - 1] {
            prop_assert!(e.data == "[DONE]" || serde_json::from_str::<serde_json::Value>(&e.data).is_ok());
        }
    }
}

/// Any JSON value, nested a few levels, with strings that need escapes.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "(\\PC|[\"\\\\\n\t\u{1}\u{7f}])*".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            prop::collection::vec(("\\PC*", inner), 0..8)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// serde_json's verdict on `s`, the reference the stream guard's scan must agree with.
fn serde_says(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The scan accepts every JSON document serde_json writes (compact or pretty, with
    /// whitespace around it): the fast path is the path ordinary events take.
    #[test]
    fn the_json_scan_accepts_what_serde_writes(v in json_value(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
        prop_assert!(nenya::sse::surely_json(text.as_bytes()), "{text}");
        let padded = format!(" \n\t{text}\r\n ");
        prop_assert!(nenya::sse::surely_json(padded.as_bytes()));
        prop_assert!(nenya::sse::is_json(&padded));
    }

    /// Damaged JSON (cut short, a byte replaced or inserted): the scan never accepts what
    /// serde_json refuses, and `is_json` is exactly serde_json's answer.
    #[test]
    fn the_json_scan_never_accepts_what_serde_refuses(
        v in json_value(),
        at in any::<prop::sample::Index>(),
        op in 0u8..3,
        byte in prop::sample::select(b"{}[]\",:\\ 0-+.eEtfnu1\x01x".to_vec()),
    ) {
        let text = serde_json::to_string(&v).unwrap();
        let mut b = text.into_bytes();
        let i = at.index(b.len() + 1);
        match op {
            0 => b.truncate(i),
            1 if i < b.len() => b[i] = byte,
            _ => b.insert(i, byte),
        }
        // Only text reaches the scan (the SSE decoder hands it UTF-8 lines).
        if let Ok(s) = std::str::from_utf8(&b) {
            if nenya::sse::surely_json(s.as_bytes()) {
                prop_assert!(serde_says(s), "scan accepted what serde refuses: {s:?}");
            }
            prop_assert_eq!(nenya::sse::is_json(s), serde_says(s), "{:?}", s);
        }
    }
}

#[test]
fn the_json_scan_on_edge_cases_agrees_with_serde() {
    let deep_ok = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let cases = [
        "",
        " ",
        "0",
        "-0",
        "01",
        "-",
        "1.",
        "1.5e",
        "1e+5",
        "-0.0E-0",
        "\"\\u12g4\"",
        "\"\\u00e9\"",
        "\"\\x\"",
        "\"a\u{1}\"",
        "tru",
        "true ",
        "nul",
        "[1,]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{1:2}",
        "[]]",
        "{}}",
        "[1 2]",
        "\"unterminated",
        "{\"a\":[{\"b\":null}]}",
        "[[[[]]]]",
        "1 2",
        &deep_ok,
    ];
    for c in cases {
        let fast = nenya::sse::surely_json(c.as_bytes());
        assert!(!fast || serde_says(c), "scan accepted {c:?}");
        assert_eq!(nenya::sse::is_json(c), serde_says(c), "{c:?}");
    }
    // Past 256 levels the scan steps aside and serde_json decides.
    assert!(!nenya::sse::surely_json(deep_ok.as_bytes()));
    assert!(nenya::sse::is_json(&deep_ok));
}

/// The string scan reads eight bytes at a time: a quote, a backslash, an escape or a control
/// character at every offset of a word, and around word ends, is judged exactly as serde_json
/// judges it.
#[test]
fn the_string_scan_agrees_with_serde_at_every_offset() {
    let specials = [
        "\"", "\\", "\\\"", "\\\\", "\\n", "\\u00e9", "\\u12", "\\x", "\u{0}", "\u{1}", "\u{1f}",
        " ", "\u{7f}", "é", "€", "/", "\\/",
    ];
    for len in 0..20 {
        for pos in 0..=len {
            for sp in specials {
                let body = format!("{}{sp}{}", "a".repeat(pos), "b".repeat(len - pos));
                for doc in [
                    format!("\"{body}\""),
                    format!("{{\"k\":\"{body}\",\"z\":1}}"),
                ] {
                    let fast = nenya::sse::surely_json(doc.as_bytes());
                    assert_eq!(fast, serde_says(&doc), "{doc:?}");
                    assert_eq!(nenya::sse::is_json(&doc), serde_says(&doc), "{doc:?}");
                }
            }
        }
    }
}
