//! Property tests for the wire adapters: lossless same-format round trips, cross-format
//! round trips that keep every field both formats support, and no panic on any input.

use nenya::adapters::providers::{Capabilities, Quirks};
use nenya::adapters::{
    decode_client_body, decode_request, encode_request, encode_request_cached, forward_as_sent,
};
use nenya::model::ApiFormat;
use proptest::prelude::*;
use serde_json::{Value, json};

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,!?'\"\\\\/\n{}é中🙂-]{0,24}"
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,10}"
}

/// Compact JSON object text, as tool-call arguments usually are.
fn args() -> impl Strategy<Value = String> {
    prop::collection::btree_map(
        ident(),
        prop_oneof![
            text().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from)
        ],
        0..4,
    )
    .prop_map(|m| serde_json::to_string(&m.into_iter().collect::<serde_json::Map<_, _>>()).unwrap())
}

fn openai_message(cross: bool) -> BoxedStrategy<Value> {
    let tool_call = (ident(), ident(), args()).prop_map(|(id, name, a)| {
        json!({"id": format!("call_{id}"), "type": "function", "function": {"name": name, "arguments": a}})
    });
    let shared = prop_oneof![
        text().prop_map(|t| json!({"role": "user", "content": t})),
        prop::collection::vec(text(), 1..3).prop_map(|ts| json!({"role": "user",
            "content": ts.into_iter().map(|t| json!({"type": "text", "text": t})).collect::<Vec<_>>()})),
        text().prop_map(|t| json!({"role": "assistant", "content": t})),
        (prop::option::of(text()), prop::collection::vec(tool_call, 1..3)).prop_map(|(t, calls)| {
            json!({"role": "assistant", "content": t, "tool_calls": calls})
        }),
        (ident(), text()).prop_map(|(id, t)| json!({"role": "tool", "tool_call_id": format!("call_{id}"), "content": t})),
    ];
    if cross {
        return shared.boxed();
    }
    // Shapes that only OpenAI has: a named user, image detail.
    prop_oneof![
        4 => shared,
        1 => text().prop_map(|t| json!({"role": "user", "content": t, "name": "bob"})),
        1 => text().prop_map(|t| json!({"role": "user", "content": [
                {"type": "text", "text": t},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}}]})),
        1 => prop::collection::vec(text(), 1..3).prop_map(|ts| json!({"role": "assistant",
            "content": ts.into_iter().map(|t| json!({"type": "text", "text": t})).collect::<Vec<_>>()})),
    ]
    .boxed()
}

fn tool_def() -> impl Strategy<Value = Value> {
    (ident(), prop::option::of(text())).prop_map(|(name, desc)| {
        let mut f = json!({"name": name, "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}});
        if let Some(d) = desc {
            f["description"] = json!(d);
        }
        json!({"type": "function", "function": f})
    })
}

fn openai_request(cross: bool) -> impl Strategy<Value = Value> {
    (
        prop::option::of(text()),
        prop::collection::vec(openai_message(cross), 1..8),
        prop::option::of(any::<bool>()),
        prop::option::of(1u64..100_000),
        prop::option::of(prop::collection::vec(text(), 1..3)),
        prop::option::of(prop::collection::vec(tool_def(), 1..3)),
        prop::option::of(prop_oneof![
            Just(json!("auto")),
            Just(json!("none")),
            Just(json!("required")),
            ident().prop_map(|n| json!({"type": "function", "function": {"name": n}}))
        ]),
        prop::option::of(0.0f64..2.0),
        prop::option::of(ident()),
    )
        .prop_map(
            move |(system, messages, stream, max_tokens, stop, tools, tool_choice, temp, user)| {
                let mut all = Vec::new();
                if let Some(s) = system {
                    all.push(json!({"role": "system", "content": s}));
                }
                all.extend(messages);
                let mut o = json!({"model": "m", "messages": all});
                if let Some(s) = stream {
                    o["stream"] = json!(s);
                }
                if let Some(n) = max_tokens {
                    o["max_tokens"] = json!(n);
                }
                if let Some(s) = stop {
                    o["stop"] = json!(s);
                }
                if let Some(t) = tools {
                    o["tools"] = json!(t);
                }
                if let Some(t) = tool_choice {
                    o["tool_choice"] = t;
                }
                if let Some(t) = temp {
                    o["temperature"] = json!(t);
                }
                if let Some(u) = user {
                    o["user"] = json!(u);
                }
                if !cross {
                    o["seed"] = json!(42);
                    o["x_vendor_field"] = json!({"nested": [1, 2, {"k": null}]});
                }
                o
            },
        )
}

fn anthropic_block(assistant: bool) -> BoxedStrategy<Value> {
    if assistant {
        prop_oneof![
            text().prop_map(|t| json!({"type": "text", "text": t})),
            (text(), "[A-Za-z0-9+/=]{4,16}")
                .prop_map(|(t, s)| json!({"type": "thinking", "thinking": t, "signature": s})),
            (ident(), ident(), args()).prop_map(
                |(id, n, a)| json!({"type": "tool_use", "id": format!("toolu_{id}"), "name": n,
                "input": serde_json::from_str::<Value>(&a).unwrap()})
            ),
            Just(json!({"type": "redacted_thinking", "data": "abc"})),
        ]
        .boxed()
    } else {
        prop_oneof![
            text().prop_map(|t| json!({"type": "text", "text": t})),
            text().prop_map(|t| json!({"type": "text", "text": t, "cache_control": {"type": "ephemeral"}})),
            Just(json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})),
            (ident(), text(), prop::option::of(any::<bool>())).prop_map(|(id, t, e)| {
                let mut b = json!({"type": "tool_result", "tool_use_id": format!("toolu_{id}"), "content": t});
                if let Some(e) = e { b["is_error"] = json!(e); }
                b
            }),
            (ident(), text()).prop_map(|(id, t)| json!({"type": "tool_result", "tool_use_id": format!("toolu_{id}"),
                "content": [{"type": "text", "text": t}]})),
            Just(json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}})),
        ]
        .boxed()
    }
}

fn anthropic_request() -> impl Strategy<Value = Value> {
    let message = prop_oneof![
        text().prop_map(|t| json!({"role": "user", "content": t})),
        text().prop_map(|t| json!({"role": "assistant", "content": t})),
        prop::collection::vec(anthropic_block(false), 1..4)
            .prop_map(|b| json!({"role": "user", "content": b})),
        prop::collection::vec(anthropic_block(true), 1..4)
            .prop_map(|b| json!({"role": "assistant", "content": b})),
    ];
    (
        prop::option::of(prop_oneof![
            text().prop_map(Value::from),
            prop::collection::vec(anthropic_block(false).prop_filter("text only", |b| b["type"] == "text"), 1..3).prop_map(Value::from),
        ]),
        prop::collection::vec(message, 1..8),
        1u64..64_000,
        prop::option::of(any::<bool>()),
        prop::option::of(prop::collection::vec(text(), 1..3)),
        prop::option::of(prop_oneof![Just(json!({"type": "auto"})), Just(json!({"type": "any"})),
            Just(json!({"type": "none"})), ident().prop_map(|n| json!({"type": "tool", "name": n})),
            Just(json!({"type": "auto", "disable_parallel_tool_use": true}))]),
    )
        .prop_map(|(system, messages, max_tokens, stream, stop, tool_choice)| {
            let mut o = json!({"model": "claude", "max_tokens": max_tokens, "messages": messages,
                               "metadata": {"user_id": "u"}, "top_k": 5,
                               "tools": [{"name": "ls", "description": "list", "input_schema": {"type": "object"},
                                          "cache_control": {"type": "ephemeral"}},
                                         {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]});
            if let Some(s) = system { o["system"] = s; }
            if let Some(s) = stream { o["stream"] = json!(s); }
            if let Some(s) = stop { o["stop_sequences"] = json!(s); }
            if let Some(t) = tool_choice { o["tool_choice"] = t; }
            o
        })
}

fn roundtrip(v: &Value, from: ApiFormat, to: ApiFormat) -> Value {
    let bytes = serde_json::to_vec(v).unwrap();
    let req = decode_request(from, &bytes).unwrap();
    serde_json::from_slice(&encode_request(req, to).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn openai_same_format_round_trip_is_lossless(v in openai_request(false)) {
        prop_assert_eq!(roundtrip(&v, ApiFormat::OpenAi, ApiFormat::OpenAi), v);
    }

    #[test]
    fn anthropic_same_format_round_trip_is_lossless(v in anthropic_request()) {
        prop_assert_eq!(roundtrip(&v, ApiFormat::Anthropic, ApiFormat::Anthropic), v);
    }

    #[test]
    fn openai_to_anthropic_and_back_keeps_every_shared_field(v in openai_request(true)) {
        let anthropic = roundtrip(&v, ApiFormat::OpenAi, ApiFormat::Anthropic);
        let back = roundtrip(&anthropic, ApiFormat::Anthropic, ApiFormat::OpenAi);
        // Anthropic requires max_tokens: one is added when the client set none.
        let mut expected = v.clone();
        if expected.get("max_tokens").is_none() {
            expected["max_tokens"] = json!(4096);
        }
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_request(ApiFormat::OpenAi, &bytes);
        let _ = decode_request(ApiFormat::Anthropic, &bytes);
    }

    #[test]
    fn decoding_wrongly_typed_json_never_panics(v in arbitrary_json(3)) {
        let bytes = serde_json::to_vec(&v).unwrap();
        for f in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            if let Ok(req) = decode_request(f, &bytes) {
                let _ = encode_request(req.clone(), ApiFormat::OpenAi);
                let _ = encode_request(req, ApiFormat::Anthropic);
            }
        }
    }
}

/// The shapes the OpenAI decoder normalises (a `null` left out, a default filled in, a tool
/// call's `index` dropped, an empty user message dropped...), applied to a valid request.
fn perturbed_openai_request() -> impl Strategy<Value = Value> {
    (
        openai_request(false),
        prop::collection::vec((0usize..16, any::<prop::sample::Index>()), 0..3),
    )
        .prop_map(|(mut v, edits)| {
            for (kind, at) in edits {
                match kind {
                    0 => v["tools"] = Value::Null,
                    1 => v["max_tokens"] = Value::Null,
                    2 => v["stream"] = Value::Null,
                    14 => {
                        v["tools"] = json!([{"type": "function", "strict": true,
                            "function": {"name": "f", "description": 3}}])
                    }
                    _ => {}
                }
                let i = at.index(v["messages"].as_array().unwrap().len());
                let m = &mut v["messages"][i];
                match kind {
                    0..=2 | 14 => {}
                    3 => m["content"] = Value::Null,
                    4 => {
                        m.as_object_mut().unwrap().remove("content");
                    }
                    5 => m["content"] = json!([]),
                    6 => m["reasoning_content"] = Value::Null,
                    7 => m["reasoning_content"] = json!("thought"),
                    8 => m["tool_calls"] = json!([]),
                    9 => {
                        m["tool_calls"] = json!([{"id": "c", "type": "function", "index": 0,
                            "function": {"name": "f", "arguments": "{}"}}])
                    }
                    10 => {
                        m["tool_calls"] =
                            json!([{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}])
                    }
                    11 => {
                        m["content"] =
                            json!([{"type": "image_url", "image_url": {"url": "u"}, "x": 1}])
                    }
                    12 => {
                        m["content"] = json!([{"type": "text", "text": "t"},
                            {"type": "image_url", "image_url": {"url": 5}}])
                    }
                    13 => {
                        m.as_object_mut().unwrap().remove("tool_call_id");
                    }
                    _ => {
                        m["tool_calls"] = json!([{"id": "c", "type": "function",
                            "function": {"name": "f", "arguments": "{}", "x": 1}}])
                    }
                }
            }
            v
        })
}

/// The shapes the Anthropic decoder normalises, applied to a valid request.
fn perturbed_anthropic_request() -> impl Strategy<Value = Value> {
    (anthropic_request(), prop::collection::vec((0usize..13, any::<prop::sample::Index>()), 0..3))
        .prop_map(|(mut v, edits)| {
            for (kind, at) in edits {
                match kind {
                    0 => v["system"] = Value::Null,
                    1 => v["system"] = json!([]),
                    2 => v["stop_sequences"] = json!("END"),
                    3 => v["tools"] = json!([{"name": "f"}]),
                    4 => v["tool_choice"] = Value::Null,
                    _ => {}
                }
                let i = at.index(v["messages"].as_array().unwrap().len());
                let m = &mut v["messages"][i];
                match kind {
                    5 => m["content"] = Value::Null,
                    6 => { m.as_object_mut().unwrap().remove("content"); }
                    7 => m["content"] = json!([{"type": "tool_use", "id": "t", "name": "n"}]),
                    8 => m["content"] = json!([{"type": "tool_result", "tool_use_id": "t"}]),
                    9 => m["content"] = json!([{"type": "thinking", "thinking": "hm"}]),
                    10 => m["content"] = json!([{"type": "thinking", "thinking": "hm", "signature": ""}]),
                    11 => m["content"] = json!([{"type": "image", "source": {"type": "url", "url": "data:image/png;base64,AAAA"}}]),
                    12 => m["content"] = json!([{"type": "tool_result", "tool_use_id": "t", "content": null, "is_error": "x"}]),
                    _ => {}
                }
            }
            v
        })
}

/// Any capabilities, and models with and without a model-family rule.
fn provider_rules() -> impl Strategy<Value = (Capabilities, &'static str)> {
    (
        // Mostly one capability missing at a time, so that many requests still go as sent.
        prop::array::uniform6(prop::bool::weighted(0.8)),
        prop_oneof![
            3 => Just("m"),
            1 => prop::sample::select(vec!["gpt-5-mini", "o3", "openrouter/o1", "gemini-3-pro"]),
        ],
    )
        .prop_map(|(b, model)| {
            let caps = Capabilities {
                stream_options: b[0],
                auto_tool_choice: b[1],
                content_arrays: b[2],
                tool_calls: b[3],
                reasoning: b[4],
                vision: b[5],
            };
            (caps, model)
        })
}

/// A valid or perturbed request with some of the fields capabilities and model-family rules
/// act on.
fn request_with_rule_fields() -> impl Strategy<Value = Value> {
    (
        prop_oneof![openai_request(false), perturbed_openai_request()],
        prop::collection::vec(0usize..9, 0..3),
    )
        .prop_map(|(mut v, adds)| {
            for a in adds {
                match a {
                    0 => v["top_p"] = json!(0.9),
                    1 => v["presence_penalty"] = json!(0.1),
                    2 => v["max_completion_tokens"] = json!(64),
                    3 => v["stream_options"] = json!({"include_usage": true}),
                    4 => v["reasoning_effort"] = json!("low"),
                    5 => v["parallel_tool_calls"] = json!(false),
                    6 => v["top_k"] = json!(3),
                    // Array content in the roles not generated above.
                    7 => v["messages"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"role": "tool",
                        "tool_call_id": "call_9", "content": [{"type": "text", "text": "out"}]})),
                    _ => {
                        v["messages"]
                            .as_array_mut()
                            .unwrap()
                            .push(json!({"role": "system",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}))
                    }
                }
            }
            v
        })
}

/// What an upstream reads from a body the gateway forwards as the client sent it must be what
/// encoding the decoded request would have sent: checked on every body the decoder keeps.
fn check_as_sent(v: &Value) -> Result<bool, TestCaseError> {
    check_as_sent_in(v, ApiFormat::OpenAi)
}

fn check_as_sent_in(v: &Value, format: ApiFormat) -> Result<bool, TestCaseError> {
    let body = serde_json::to_vec(v).unwrap();
    let Ok(req) = decode_client_body(format, body.into()) else {
        return Ok(false);
    };
    let Some(raw) = req.client_body().cloned() else {
        return Ok(false);
    };
    let encoded = encode_request(req, format).unwrap();
    let raw: Value = serde_json::from_slice(&raw).unwrap();
    let encoded: Value = serde_json::from_slice(&encoded).unwrap();
    prop_assert_eq!(raw, encoded);
    Ok(true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn a_body_kept_as_sent_says_exactly_what_its_encoding_says(v in perturbed_openai_request()) {
        check_as_sent(&v)?;
    }

    #[test]
    fn requests_of_the_common_shapes_are_kept_as_sent(v in openai_request(false)) {
        prop_assert!(check_as_sent(&v)?, "{}", v);
    }

    #[test]
    fn texts_are_seen_in_the_same_order_with_and_without_mutable_access(
        v in prop_oneof![openai_request(false), anthropic_request()],
        signed in any::<bool>(),
    ) {
        let body = serde_json::to_vec(&v).unwrap();
        for format in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            let Ok(mut req) = decode_request(format, &body) else { continue };
            let mut seen = Vec::new();
            req.for_each_text_slot(signed, |slot, s| seen.push((slot, s.to_owned())));
            let mut seen_mut = Vec::new();
            req.for_each_text_slot_mut(signed, |slot, s| seen_mut.push((slot, s.clone())));
            prop_assert_eq!(seen, seen_mut);
        }
    }

    #[test]
    fn a_body_forwarded_as_sent_is_what_the_provider_rules_would_have_sent(
        v in request_with_rule_fields(),
        (caps, model) in provider_rules(),
    ) {
        let body = serde_json::to_vec(&v).unwrap();
        let Ok(req) = decode_client_body(ApiFormat::OpenAi, body.into()) else {
            return Ok(());
        };
        let Some(out) = forward_as_sent(&req, ApiFormat::OpenAi, model, &caps, &Quirks::NONE, None) else {
            return Ok(());
        };
        let mut long = req.clone();
        long.model = model.to_owned();
        let encoded = encode_request_cached(long, ApiFormat::OpenAi, &caps, &Quirks::NONE, None).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        let encoded: Value = serde_json::from_slice(&encoded).unwrap();
        prop_assert_eq!(out, encoded);
    }

    #[test]
    fn any_json_kept_as_sent_says_what_its_encoding_says(v in arbitrary_json(3)) {
        check_as_sent(&v)?;
        check_as_sent_in(&v, ApiFormat::Anthropic)?;
    }

    #[test]
    fn an_anthropic_body_kept_as_sent_says_exactly_what_its_encoding_says(v in perturbed_anthropic_request()) {
        check_as_sent_in(&v, ApiFormat::Anthropic)?;
    }

    #[test]
    fn anthropic_requests_of_the_common_shapes_are_kept_as_sent(v in anthropic_request()) {
        prop_assert!(check_as_sent_in(&v, ApiFormat::Anthropic)?, "{}", v);
    }
}

/// Arbitrary JSON biased towards request-like keys, so decoding goes deep.
fn arbitrary_json(depth: u32) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        text().prop_map(Value::from),
        prop_oneof![
            Just("user"),
            Just("assistant"),
            Just("tool"),
            Just("system"),
            Just("text"),
            Just("tool_use"),
            Just("tool_result"),
            Just("image_url"),
            Just("function"),
            Just("thinking"),
            Just("image")
        ]
        .prop_map(Value::from),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let key = prop_oneof![
        Just("model"),
        Just("messages"),
        Just("role"),
        Just("content"),
        Just("type"),
        Just("text"),
        Just("tool_calls"),
        Just("function"),
        Just("arguments"),
        Just("name"),
        Just("id"),
        Just("tool_call_id"),
        Just("tools"),
        Just("tool_choice"),
        Just("system"),
        Just("input"),
        Just("source"),
        Just("image_url"),
        Just("url"),
        Just("stop"),
        Just("max_tokens"),
        Just("stream"),
        Just("tool_use_id"),
        Just("is_error"),
        Just("signature"),
    ]
    .prop_map(str::to_owned);
    prop_oneof![
        leaf,
        prop::collection::vec(arbitrary_json(depth - 1), 0..4).prop_map(Value::from),
        prop::collection::btree_map(key, arbitrary_json(depth - 1), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    ]
    .boxed()
}
