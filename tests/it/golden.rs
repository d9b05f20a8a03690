//! Golden conversion tests: every `tests/fixtures/golden/*.json` holds an input in one wire
//! format and the exact expected output in another (requests, whole answers, streams).
//! `NENYA_BLESS=1 cargo test --test it golden::` writes the current output as the expectation, to be
//! reviewed by eye before it is committed.

use std::path::Path;

use nenya::adapters::stream::StreamConverter;
use nenya::adapters::{convert_response, decode_request, encode_request};
use nenya::model::{ApiFormat, StopReason};
use nenya::sse::Decoder;
use serde_json::{Value, json};

fn format(v: &Value) -> ApiFormat {
    v.as_str().unwrap().parse().unwrap()
}

/// `created` is a timestamp: zero it for comparison.
fn scrub(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut()
        && o.contains_key("created")
    {
        o.insert("created".into(), json!(0));
    }
    v
}

fn run(case: &Value) -> Value {
    let from = format(&case["from"]);
    let to = format(&case["to"]);
    let input = &case["input"];
    match case["kind"].as_str().unwrap() {
        "request" => {
            let req = decode_request(from, &serde_json::to_vec(input).unwrap()).unwrap();
            serde_json::from_slice(&encode_request(req, to).unwrap()).unwrap()
        }
        "response" => {
            let out = convert_response(&serde_json::to_vec(input).unwrap(), from, to).unwrap();
            scrub(serde_json::from_slice(&out).unwrap())
        }
        "stream" => {
            let include_usage = case["include_usage"].as_bool().unwrap_or(false);
            let mut conv = StreamConverter::new(from, to, include_usage);
            let mut dec = Decoder::new(1 << 20);
            let mut frames = Vec::new();
            let mut evs = Vec::new();
            dec.feed(input.as_str().unwrap().as_bytes(), |e| evs.push(e))
                .unwrap();
            dec.finish(|e| evs.push(e)).unwrap();
            let mut result = Ok(());
            for e in evs {
                result = result.and(conv.push(e, &mut frames));
            }
            result = result.and(conv.finish(&mut frames));
            let mut out: Vec<Value> = Vec::new();
            for f in &frames {
                let mut d = Decoder::new(1 << 20);
                let mut events = Vec::new();
                d.feed(f, |e| events.push(e)).unwrap();
                assert_eq!(events.len(), 1, "one event per frame");
                let e = events.remove(0);
                let data = serde_json::from_str(&e.data)
                    .map(scrub)
                    .unwrap_or(Value::String(e.data));
                out.push(json!({"event": e.event, "data": data}));
            }
            if let Err(e) = result {
                out.push(json!({"converter_error": e.kind().as_str()}));
            }
            Value::Array(out)
        }
        other => panic!("unknown kind {other}"),
    }
}

#[test]
fn golden_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
    let bless = std::env::var_os("NENYA_BLESS").is_some();
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut case: Value = serde_json::from_str(&text).unwrap();
        let actual = run(&case);
        if bless {
            case["expected"] = actual;
            std::fs::write(&path, serde_json::to_string_pretty(&case).unwrap() + "\n").unwrap();
        } else {
            assert_eq!(
                actual,
                case["expected"],
                "{}: output differs from the golden expectation",
                path.display()
            );
        }
        n += 1;
    }
    assert!(n >= 9, "fixtures found: {n}");
}

#[test]
fn every_stop_reason_maps_both_ways() {
    let anthropic_to_openai = [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ];
    for (a, o) in anthropic_to_openai {
        assert_eq!(StopReason::from_anthropic(a).to_openai(), o, "{a}");
        assert_eq!(
            StopReason::from_anthropic(a).to_anthropic(),
            a,
            "{a} round trip"
        );
    }
    let openai_to_anthropic = [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
    ];
    for (o, a) in openai_to_anthropic {
        assert_eq!(StopReason::from_openai(o).to_anthropic(), a, "{o}");
    }
    // Through whole-answer conversion too, for each reason.
    for (a, o) in anthropic_to_openai {
        let body = json!({"id": "m", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "text", "text": "x"}], "stop_reason": a, "usage": {"input_tokens": 1, "output_tokens": 1}});
        let out = convert_response(
            body.to_string().as_bytes(),
            ApiFormat::Anthropic,
            ApiFormat::OpenAi,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], o, "{a}");
    }
    for (o, a) in openai_to_anthropic {
        let body = json!({"id": "c", "model": "g", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": o}]});
        let out = convert_response(
            body.to_string().as_bytes(),
            ApiFormat::OpenAi,
            ApiFormat::Anthropic,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stop_reason"], a, "{o}");
    }
}
