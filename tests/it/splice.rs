//! A request whose texts a redaction layer rewrote keeps the client's body with the new texts
//! written in place (`adapters::splice`), when that is exact: the body kept must decode to
//! exactly the redacted request, and hold no secret of its texts. Otherwise the client's body
//! is dropped and the request is encoded from its fields.

use bytes::Bytes;
use http::Request;
use nenya::layers::{RedactLayer, Redactor};
use nenya::model::{ApiFormat, ChatRequest};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const AWS: &str = "AKIAZ7TESTKEY0000001";
const GH: &str = "ghp_R8mWq2ZpX4cV7bN1kL9sD3fG6hJ0aQ5eT2yU";

/// The request as the redaction layer hands it on.
async fn redacted(req: ChatRequest) -> ChatRequest {
    let svc = ServiceBuilder::new()
        .layer(RedactLayer::new(Redactor::builtin()))
        .service(service_fn(|r: Request<ChatRequest>| async move {
            Ok::<_, std::convert::Infallible>(r.into_body())
        }));
    svc.oneshot(Request::new(req)).await.unwrap()
}

fn run(req: ChatRequest) -> ChatRequest {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(redacted(req))
}

/// Text that may hold secrets, escapes and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-z ]{1,20}".boxed(),
        1 => Just(format!("key {AWS}")).boxed(),
        1 => Just(format!("token={GH}")).boxed(),
        1 => Just("line\n\t\"quoted\" \\ é".to_owned()).boxed(),
    ];
    prop::collection::vec(piece, 1..4).prop_map(|p| p.join(" "))
}

/// Content as a string or as text parts.
fn content(anthropic: bool) -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::from),
        prop::collection::vec(text(), 1..3).prop_map(move |ts| {
            Value::Array(
                ts.into_iter()
                    .map(|t| json!({"type": "text", "text": t}))
                    .collect(),
            )
        }),
    ]
    .prop_map(move |c| {
        if anthropic && c.is_null() {
            json!("")
        } else {
            c
        }
    })
}

/// A conversation in `format`, with tool calls whose arguments may hold secrets, the same text
/// repeated across messages, and sometimes a text copied into a field no layer reads.
fn conversation(anthropic: bool) -> impl Strategy<Value = Value> {
    let message = prop_oneof![
        (content(anthropic), any::<bool>()).prop_map(|(c, user)| {
            json!({"role": if user { "user" } else { "assistant" }, "content": c})
        }),
        text().prop_map(move |args| {
            if anthropic {
                json!({"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "run", "input": {"cmd": args}}]})
            } else {
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t1", "type": "function",
                     "function": {"name": "run", "arguments": json!({"cmd": args}).to_string()}}]})
            }
        }),
    ];
    (
        prop::collection::vec(message, 1..6),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(mut msgs, repeat, copy_out, pretty)| {
            if repeat {
                let first = msgs[0].clone();
                msgs.push(first);
            }
            // Anthropic wants a user turn last; OpenAI does not mind.
            msgs.push(json!({"role": "user", "content": "go"}));
            let mut body = json!({"model": "m", "max_tokens": 100, "messages": msgs});
            if copy_out {
                // The first text also in a field no layer reads.
                let t = msgs_text(&body);
                body["metadata"] = json!({"note": t});
            }
            if pretty {
                Value::String(serde_json::to_string_pretty(&body).unwrap())
            } else {
                body
            }
        })
}

fn msgs_text(body: &Value) -> Value {
    let c = &body["messages"][0]["content"];
    match c {
        Value::String(_) => c.clone(),
        Value::Array(a) => a[0].get("text").cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn bytes_of(v: &Value) -> Bytes {
    match v {
        Value::String(s) => Bytes::from(s.clone()),
        v => Bytes::from(v.to_string()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn a_body_kept_after_redaction_says_exactly_what_the_redacted_request_says(
        anthropic in any::<bool>(),
        body in any::<bool>().prop_flat_map(conversation),
    ) {
        let format = if anthropic { ApiFormat::Anthropic } else { ApiFormat::OpenAi };
        let raw = bytes_of(&body);
        let Ok(before) = nenya::adapters::decode_client_body(format, raw.clone()) else {
            return Ok(()); // a shape this format refuses
        };
        prop_assume!(before.client_body().is_some());
        let after = run(before.clone());
        let mut texts = Vec::new();
        after.for_each_text_slot(false, |_, s| texts.push(s.to_owned()));
        prop_assert!(texts.iter().all(|t| !t.contains(AWS) && !t.contains(GH)), "{texts:?}");
        let fields = serde_json::to_string(&after.extra).unwrap();
        prop_assert!(!fields.contains(AWS) && !fields.contains(GH), "{fields}");
        if let Some(kept) = after.client_body() {
            // What the upstream would read is what redaction left, to the last field.
            let again = nenya::adapters::decode_client_body(format, kept.clone()).unwrap();
            prop_assert!(again.client_body().is_some(), "the kept body is one the decoder forwards as sent");
            prop_assert_eq!(&*again, &*after);
            if after != before {
                prop_assert_ne!(kept, &raw);
            }
        }
    }
}

#[tokio::test]
async fn an_openai_conversation_with_a_secret_keeps_its_bytes_around_the_redacted_text() {
    let body = format!(
        "{{ \"model\" : \"m\",\n  \"messages\": [ {{\"role\":\"user\", \"content\": \"a\\u0020key {AWS}\"}},\n {{\"role\":\"user\",\"content\":[{{\"type\":\"text\",\"text\":\"{GH}\"}}]}} ] }}"
    );
    let req =
        nenya::adapters::decode_client_body(ApiFormat::OpenAi, Bytes::from(body.clone())).unwrap();
    let after = redacted(req).await;
    let kept = String::from_utf8(after.client_body().expect("kept").to_vec()).unwrap();
    assert_eq!(
        kept,
        "{ \"model\" : \"m\",\n  \"messages\": [ {\"role\":\"user\", \"content\": \"a key [REDACTED:aws_access_key_id]\"},\n {\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"[REDACTED:github_pat]\"}]} ] }"
    );
}

#[tokio::test]
async fn a_secret_in_unknown_fields_is_redacted_there_and_the_request_encoded() {
    // Top-level and per-message fields the gateway does not know still reach the upstream.
    let body = json!({"model": "m", "metadata": {"note": format!("key {AWS}"), "n": 1},
        "user": GH,
        "messages": [{"role": "user", "content": format!("key {AWS}"), "x_note": [format!("key {AWS}")]}]});
    let req = nenya::adapters::decode_client_body(ApiFormat::OpenAi, Bytes::from(body.to_string()))
        .unwrap();
    let after = redacted(req).await;
    assert!(after.client_body().is_none());
    assert!(!after.messages[0].content.text().contains(AWS));
    assert_eq!(
        after.extra["metadata"],
        json!({"note": "key [REDACTED:aws_access_key_id]", "n": 1})
    );
    assert_eq!(after.extra["user"], "[REDACTED:github_pat]");
    assert_eq!(
        after.messages[0].extra["x_note"],
        json!(["key [REDACTED:aws_access_key_id]"])
    );
}

#[tokio::test]
async fn unknown_fields_without_secrets_leave_the_clients_body() {
    let body = json!({"model": "m", "metadata": {"note": "nothing here", "session": "9f86d081884c7d659a2feaa0c55ad015"},
        "messages": [{"role": "user", "content": "hi", "name": "dev"}]});
    let req = nenya::adapters::decode_client_body(ApiFormat::OpenAi, Bytes::from(body.to_string()))
        .unwrap();
    assert!(req.client_body().is_some());
    assert!(redacted(req).await.client_body().is_some());
}

#[tokio::test]
async fn an_anthropic_tool_input_with_a_secret_drops_the_clients_body() {
    // The input is an object in the body, the arguments a text in the request: not spliced.
    let body = json!({"model": "m", "max_tokens": 10, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "run", "input": {"cmd": format!("export K={AWS}")}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]}]});
    let req =
        nenya::adapters::decode_client_body(ApiFormat::Anthropic, Bytes::from(body.to_string()))
            .unwrap();
    assert!(req.client_body().is_some());
    let after = redacted(req).await;
    assert!(after.client_body().is_none());
}

#[tokio::test]
async fn a_secret_in_a_tool_definition_is_redacted_and_clean_tools_keep_the_clients_body() {
    let tool = |note: &str| {
        json!({"type": "function", "function": {"name": "deploy", "description": format!("Deploys. {note}"),
            "parameters": {"type": "object", "properties": {"env": {"type": "string", "description": note}}}}})
    };
    let body = |note: &str| {
        json!({"model": "m", "tools": [tool("plain"), tool(note)],
            "messages": [{"role": "user", "content": "deploy it"}]})
    };
    let decode = |v: Value| {
        nenya::adapters::decode_client_body(ApiFormat::OpenAi, Bytes::from(v.to_string())).unwrap()
    };
    let clean = decode(body("staging or prod"));
    assert!(clean.client_body().is_some());
    assert!(redacted(clean).await.client_body().is_some());

    let after = redacted(decode(body(&format!("uses key {AWS}")))).await;
    assert!(after.client_body().is_none());
    let sent: Value =
        serde_json::from_slice(&nenya::adapters::encode_request(after, ApiFormat::OpenAi).unwrap())
            .unwrap();
    let text = sent["tools"].to_string();
    assert!(!text.contains(AWS), "{text}");
    assert_eq!(
        sent["tools"][1]["function"]["description"],
        "Deploys. uses key [REDACTED:aws_access_key_id]"
    );
    assert_eq!(
        sent["tools"][1]["function"]["parameters"]["properties"]["env"]["description"],
        "uses key [REDACTED:aws_access_key_id]"
    );
    assert_eq!(sent["tools"][0], tool("plain"));
}

#[tokio::test]
async fn secrets_in_parts_nenya_does_not_model_and_in_part_fields_are_redacted() {
    // An Anthropic document with a text source, a document nested in a tool result, and a
    // text part's unknown field: the upstream reads all of them.
    let body = json!({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": format!("deploy notes: key {AWS}")}},
            {"type": "text", "text": "summarise", "x_note": format!("token={GH}")}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "read", "input": {"p": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "search_result", "source": "wiki", "title": "creds", "content": [{"type": "text", "text": format!("key {AWS}")}]}]}]}]});
    let req =
        nenya::adapters::decode_client_body(ApiFormat::Anthropic, Bytes::from(body.to_string()))
            .unwrap();
    let after = redacted(req).await;
    assert!(after.client_body().is_none());
    let sent = String::from_utf8(
        nenya::adapters::encode_request(after, ApiFormat::Anthropic)
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(!sent.contains(AWS) && !sent.contains(GH), "{sent}");
    let sent: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(
        sent["messages"][0]["content"][0]["source"]["data"],
        "deploy notes: key [REDACTED:aws_access_key_id]"
    );
    assert_eq!(
        sent["messages"][0]["content"][1]["x_note"],
        "token=[REDACTED:github_pat]"
    );
    assert_eq!(
        sent["messages"][2]["content"][0]["content"][0]["content"][0]["text"],
        "key [REDACTED:aws_access_key_id]"
    );
}

#[tokio::test]
async fn opaque_values_in_parts_are_left_as_they_came() {
    // Signatures, encrypted content and binary payloads must come back byte for byte, even
    // when a secret pattern happens to match in them: the client's body is kept.
    let b64 = format!("{AWS}{}", "QUJD".repeat(200));
    let body = json!({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": b64}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}, "x": format!("data:text/plain;base64,{AWS}")},
            {"type": "text", "text": "what is in it?"}]},
        {"role": "assistant", "content": [
            {"type": "redacted_thinking", "data": format!("key {AWS}")},
            {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"query": "x"}},
            {"type": "web_search_tool_result", "tool_use_id": "s", "content": [
                {"type": "web_search_result", "url": "https://e.com", "title": "t", "encrypted_content": format!("key {AWS}")}]},
            {"type": "text", "text": "done"}]},
        {"role": "user", "content": "thanks"}]});
    let req =
        nenya::adapters::decode_client_body(ApiFormat::Anthropic, Bytes::from(body.to_string()))
            .unwrap();
    assert!(req.client_body().is_some());
    let before = req.clone();
    let after = redacted(req).await;
    assert!(after.client_body().is_some());
    assert_eq!(after, before);
}
