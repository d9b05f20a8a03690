//! Security layers over real loopback HTTP: secrets never reach the upstream (every text
//! position, both client formats, same- and cross-format upstreams), benign text reaches it
//! byte-identical, browser-origin refusal, RBAC, fail-open scrubbing, no upstream hop-by-hop
//! header reaching the client.

use crate::common;

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use nenya::layers::{ScrubLayer, TextScrubber};
use nenya::model::{ChatRequest, Content};
use nenya::services::{MockConfig, MockProvider};
use serde_json::{Value, json};

const AWS: &str = "AKIAQ3EXAMPLE7Z9K2LP";
const GH: &str = "ghp_R8mWq2ZpX4cV7bN1kL9sD3fG6hJ0aQ5eT2yU";
const PG_PASS: &str = "Xk9mQ2pL7vN4";
const ANT: &str =
    "sk-ant-api03-Zx8Kq2Lm9Vn4Bc7Xz1Qw5Er8Ty2Ui6Op3As9Df4Gh7Jk1Lz5Xc8Vb2Nm6Qw9Er3Ty7Ui1Op5As";
const RANDOM: &str = "q8Zr2LmX7vKp3NwT9bYc4HdF6sJa1";

fn echo() -> MockConfig {
    MockConfig {
        echo: true,
        ..MockConfig::default()
    }
}

fn assert_clean(body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    for s in [AWS, GH, PG_PASS, ANT, RANDOM] {
        assert!(!text.contains(s), "`{s}` reached the upstream: {text}");
    }
    assert!(text.contains("[REDACTED:"), "{text}");
}

fn openai_request(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": format!("deploy with AWS_ACCESS_KEY_ID={AWS}")},
            {"role": "user", "content": [{"type": "text", "text": format!("my token is {GH}, db postgres://app:{PG_PASS}@db.internal/x")}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "write_file", "arguments": json!({"path": ".env", "content": format!("A=1\n{ANT}\n")}).to_string()}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": format!("ok, wrote key {RANDOM}")}
        ]
    })
}

fn anthropic_request(model: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 64,
        "system": [{"type": "text", "text": format!("deploy with AWS_ACCESS_KEY_ID={AWS}")}],
        "messages": [
            {"role": "user", "content": format!("my token is {GH}, db postgres://app:{PG_PASS}@db.internal/x")},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "write_file",
                "input": {"path": ".env", "content": format!("A=1\n{ANT}\n")}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                "content": [{"type": "text", "text": format!("ok, wrote key {RANDOM}")}]}]}
        ]
    })
}

#[tokio::test]
async fn openai_client_secrets_in_every_position_never_reach_either_upstream() {
    let (mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    for model in ["coder", "claude-agent"] {
        let r = post(
            &gw.url("/v1/chat/completions"),
            &[(k, &v)],
            openai_request(model).to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
    }
    let got = mock.received();
    assert_eq!(got.len(), 2);
    for rec in &got {
        assert_clean(&rec.body);
    }
    // Redacted tool arguments are still valid JSON with the other fields intact.
    let args = got[0].json()["messages"][2]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap()
        .to_string();
    let args: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(args["path"], ".env");
    assert_eq!(args["content"], "A=1\n[REDACTED:anthropic_api_key]\n");
}

#[tokio::test]
async fn anthropic_client_secrets_in_every_position_never_reach_either_upstream() {
    let (mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    for model in ["claude-agent", "coder"] {
        let r = post(
            &gw.url("/v1/messages"),
            &[(k, &v)],
            anthropic_request(model).to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
    }
    let got = mock.received();
    assert_eq!(got.len(), 2);
    for rec in &got {
        assert_clean(&rec.body);
    }
}

#[tokio::test]
async fn streamed_requests_are_redacted_too() {
    let (mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let mut body = openai_request("coder");
    body["stream"] = json!(true);
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("data: [DONE]"));
    assert_clean(&mock.received()[0].body);
}

/// Sends `texts` as one conversation of user messages to the gateway's OpenAI ingress and
/// returns the body the upstream received.
async fn send_user_turns(gw: &Running, mock: &MockProvider, texts: &[impl AsRef<str>]) -> Value {
    let (k, v) = bearer();
    let messages: Vec<Value> = texts
        .iter()
        .map(|t| json!({"role": "user", "content": t.as_ref()}))
        .collect();
    let body = json!({"model": "coder", "messages": messages}).to_string();
    let r = post(&gw.url("/v1/chat/completions"), &[(k, &v)], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    mock.received().pop().unwrap().json()
}

#[tokio::test]
async fn the_benign_corpus_reaches_the_upstream_byte_identical() {
    let (mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/secrets/negatives.jsonl"
    );
    let texts: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Batches under the test config's 64 KiB body limit.
    let mut sent = 0;
    for batch in texts.chunks(150) {
        let got = send_user_turns(&gw, &mock, batch).await;
        for (i, t) in batch.iter().enumerate() {
            assert_eq!(got["messages"][i]["content"].as_str(), Some(t.as_str()));
        }
        sent += batch.len();
    }
    assert_eq!(sent, texts.len());
}

/// A coding agent re-sends its whole conversation every turn, and the gateway remembers the
/// long texts it found clean so as not to scan them again: a remembered text changed in any
/// way (even to one of the same length) is a new text and is scanned, and a text with a secret
/// is redacted every time it is sent.
#[tokio::test]
async fn a_re_sent_conversation_is_redacted_however_its_remembered_texts_change() {
    let (mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let code = "fn handler(req: Request) -> Response { route(req).unwrap_or_default() }\n";
    let clean = format!("Review this file:\n{}", code.repeat(8));
    assert!(clean.len() >= 512);
    // The same length as `clean`, with a key written over part of it.
    let mut same_len = clean.clone();
    let key = format!(" {AWS} ");
    same_len.replace_range(40..40 + key.len(), &key);
    assert_eq!(same_len.len(), clean.len());
    let appended = format!("{clean}token {GH}");
    let turns: [&[&str]; 4] = [
        &[&clean],
        &[&clean, &same_len],
        &[&clean, &same_len, &appended],
        &[&clean, &same_len, &appended, &clean],
    ];
    for (turn, texts) in turns.iter().enumerate() {
        let got = send_user_turns(&gw, &mock, texts).await;
        for (i, t) in texts.iter().enumerate() {
            let sent = got["messages"][i]["content"].as_str().unwrap();
            if *t == clean {
                assert_eq!(sent, clean, "turn {turn}, message {i}");
            } else {
                assert!(
                    !sent.contains(AWS) && !sent.contains(GH),
                    "turn {turn}: {sent}"
                );
                assert!(sent.contains("[REDACTED:"), "turn {turn}: {sent}");
            }
        }
    }
}

#[tokio::test]
async fn custom_patterns_and_a_fixed_label_from_config() {
    let (mock, up) = start_mock(echo()).await;
    let (mut cfg, secrets) = config_for(&up, "");
    let extra = Config::from_json_str(
        r#"{"bouncer": {"redact_patterns": ["ACME-[0-9]{6}"], "redaction_label": "[REDACTED]"}}"#,
    )
    .unwrap();
    cfg.bouncer = extra.bouncer;
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    let (k, v) = bearer();
    let body = json!({"model": "coder", "messages": [{"role": "user",
        "content": format!("order ACME-123456 paid with {GH}")}]});
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        mock.received()[0].json()["messages"][0]["content"],
        "order [REDACTED] paid with [REDACTED]"
    );

    let bad =
        Config::from_json_str(r#"{"bouncer": {"redact_patterns": ["ok", "(unclosed"]}}"#).unwrap();
    cfg.bouncer = bad.bouncer;
    let err = Gateway::from_config(&cfg, &secrets)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bouncer.redact_patterns[1]"), "{err}");
}

#[tokio::test]
async fn redaction_can_be_switched_off() {
    let (mock, up) = start_mock(echo()).await;
    let (mut cfg, secrets) = config_for(&up, "");
    cfg.bouncer.enabled = false;
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    let (k, v) = bearer();
    let body = json!({"model": "coder", "messages": [{"role": "user", "content": GH}]});
    post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        body.to_string(),
    )
    .await;
    assert_eq!(mock.received()[0].json()["messages"][0]["content"], GH);
}

#[derive(Clone)]
struct Exploding;
impl TextScrubber for Exploding {
    const NAME: &'static str = "exploding";
    fn scrub(&self, _: &str) -> Option<String> {
        panic!("scrubber bug")
    }
}

#[tokio::test]
async fn a_failing_scrubber_fails_open() {
    use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
    let mut svc = ServiceBuilder::new()
        .layer(ScrubLayer::new(Exploding))
        .service(service_fn(|req: http::Request<ChatRequest>| async move {
            Ok::<_, nenya::Error>(req.into_body())
        }));
    let req = nenya::adapters::decode_request(
        nenya::model::ApiFormat::OpenAi,
        br#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#,
    )
    .unwrap();
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(req))
        .await
        .unwrap();
    assert!(matches!(&out.messages[0].content, Content::Text(t) if t == "hello"));
}

#[tokio::test]
async fn browser_origin_requests_are_refused_on_every_route_unless_allowlisted() {
    let (_mock, up) = start_mock(echo()).await;
    let (mut cfg, secrets) = config_for(&up, "");
    cfg.governance.allowed_browser_origins = vec!["https://console.example.com".into()];
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    let (k, v) = bearer();
    let chat =
        json!({"model": "coder", "messages": [{"role": "user", "content": "hi"}]}).to_string();

    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v), ("origin", "http://evil.example")],
        chat.clone(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["error_kind"], "forbidden_origin");
    assert_eq!(r.json()["error"]["type"], "permission_error");

    let r = post(
        &gw.url("/v1/messages"),
        &[(k, &v), ("sec-fetch-site", "cross-site")],
        json!({"model": "coder", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["type"], "error", "Anthropic shape: {}", r.text());

    let health = http::Request::get(gw.url("/healthz"))
        .header("sec-fetch-mode", "no-cors")
        .body(nenya::Body::empty())
        .unwrap();
    assert_eq!(send(health).await.status, 403);

    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v), ("origin", "https://CONSOLE.example.com:443")],
        chat.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&gw.url("/v1/chat/completions"), &[(k, &v)], chat).await;
    assert_eq!(r.status, 200, "no browser metadata: a program");
}

async fn rbac_gateway(up: &Running) -> Running {
    let (cfg, _) = config_for(up, "");
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"up": "{PROVIDER_KEY}", "claude": "{PROVIDER_KEY}"}},
            "api_keys": {{
              "dev": {{"name": "dev", "token": "nk-dev-0123456789abcdef", "roles": ["user"], "allowed_agents": ["coder"]}},
              "ro": {{"name": "ro", "token": "nk-ro-0123456789abcdef", "roles": ["read-only"]}},
              "off": {{"name": "off", "token": "nk-off-0123456789abcdef", "roles": ["user"], "enabled": false}},
              "old": {{"name": "old", "token": "nk-old-0123456789abcdef", "roles": ["admin"], "expires_at": "2020-01-01T00:00:00Z"}},
              "msg": {{"name": "msg", "token": "nk-msg-0123456789abcdef", "roles": ["user"], "allowed_endpoints": ["POST /v1/messages"]}}
            }}}}"#
    ))
    .unwrap();
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

#[tokio::test]
async fn rbac_roles_agents_endpoints_expiry() {
    let (mock, up) = start_mock(echo()).await;
    let gw = rbac_gateway(&up).await;
    let chat = |model: &str| {
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
    };
    let call = |token: &'static str, path: &'static str, model: &'static str| {
        let url = gw.url(path);
        let body = if path.starts_with("/v1/messages") {
            json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
                .to_string()
        } else {
            chat(model)
        };
        async move {
            let auth = format!("Bearer {token}");
            post(&url, &[("authorization", &auth)], body).await
        }
    };
    let r = call("nk-dev-0123456789abcdef", "/v1/chat/completions", "coder").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        "nk-dev-0123456789abcdef",
        "/v1/chat/completions",
        "claude-agent",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["error_kind"], "forbidden");
    assert!(!r.text().contains("nk-dev"), "the token never echoes");

    // Agent scoping holds on every ingress, count_tokens included.
    let r = call("nk-dev-0123456789abcdef", "/v1/messages", "claude-agent").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["type"], "error", "Anthropic shape: {}", r.text());
    let r = call(
        "nk-dev-0123456789abcdef",
        "/v1/messages/count_tokens",
        "claude-agent",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = call("nk-dev-0123456789abcdef", "/v1/messages", "coder").await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = call("nk-ro-0123456789abcdef", "/v1/chat/completions", "coder").await;
    assert_eq!(r.status, 403, "read-only may not POST");

    for t in [
        "nk-off-0123456789abcdef",
        "nk-old-0123456789abcdef",
        "nk-nope-0123456789abc",
    ] {
        let r = call(t, "/v1/chat/completions", "coder").await;
        assert_eq!(r.status, 401, "{t}");
        assert_eq!(r.json()["error"]["error_kind"], "unauthorized");
    }

    let r = call("nk-msg-0123456789abcdef", "/v1/messages", "claude-agent").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call("nk-msg-0123456789abcdef", "/v1/chat/completions", "coder").await;
    assert_eq!(r.status, 403);

    // The admin client token reaches every agent; no client credential goes upstream.
    let (k, v) = bearer();
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        chat("claude-agent"),
    )
    .await;
    assert_eq!(r.status, 200);
    for rec in mock.received() {
        let seen = format!("{:?}", rec.headers);
        assert!(
            !seen.contains("nk-") && !seen.contains(CLIENT_TOKEN),
            "{seen}"
        );
    }
}

#[test]
fn rbac_config_errors_name_the_field_not_the_token() {
    let err =
        Secrets::from_json_str(r#"{"api_keys":{"k":{"token":"short-secret","roles":["user"]}}}"#)
            .unwrap()
            .rbac_keys()
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("api_keys.k.token") && !err.contains("short-secret"),
        "{err}"
    );
    let err = Secrets::from_json_str(
        r#"{"api_keys":{"k":{"token":"nk-0123456789abcdef","roles":["root"]}}}"#,
    )
    .unwrap()
    .rbac_keys()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("api_keys.k.roles") && err.contains("root"),
        "{err}"
    );
}

#[tokio::test]
async fn absurdly_deep_json_is_a_400_not_a_crash() {
    let (_mock, up) = start_mock(echo()).await;
    let gw = gateway_for_mock(&up, "").await;
    let (k, v) = bearer();
    let deep = format!(
        r#"{{"model":"coder","messages":[{{"role":"user","content":"x","extra":{}{}}}]}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let r = post(&gw.url("/v1/chat/completions"), &[(k, &v)], deep).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["error_kind"], "invalid_json");
    let ok = post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        json!({"model": "coder", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(ok.status, 200, "still serving");
}

/// An upstream answering every request with `head` and a JSON completion, on raw TCP so that
/// it can send the hop-by-hop headers a real server or proxy in front of it might.
async fn raw_upstream(head: &'static str) -> Running {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_request(&mut sock, &mut buf).await.is_some() {
                    let body = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{head}\r\n{body}",
                        body.len()
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Running::at(addr)
}

/// Hop-by-hop headers describe one connection, not the answer: an upstream's never reach the
/// client (chat and the passthrough proxy), nor does its `Set-Cookie` through the proxy, while
/// its other headers do.
#[tokio::test]
async fn upstream_hop_by_hop_headers_never_reach_the_client() {
    const HEAD: &str = "connection: keep-alive\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\ntrailer: x-checksum\r\nset-cookie: upstream=1\r\nx-upstream-id: kept\r\n";
    let up = raw_upstream(HEAD).await;
    let gw = gateway_for_mock(&up, "").await;
    let hop = ["keep-alive", "proxy-connection", "upgrade", "trailer"];

    let r = post_chat(&gw, &openai_request("coder")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "hi");
    for h in hop {
        assert!(r.headers.get(h).is_none(), "chat answer carried `{h}`");
    }
    assert_eq!(r.headers["x-upstream-id"], "kept");

    let (k, v) = bearer();
    let r = send(
        http::Request::get(gw.url("/proxy/up/v1/anything"))
            .header(k, v)
            .body(nenya::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for h in hop.iter().chain(&["set-cookie"]) {
        assert!(r.headers.get(*h).is_none(), "proxied answer carried `{h}`");
    }
    assert_eq!(r.headers["x-upstream-id"], "kept");
}
