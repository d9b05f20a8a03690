//! Secrets never in logs, metrics or error bodies (issue 12 §4).
//!
//! The real binary runs the whole default stack at `trace` level (hyper, rustls and every
//! nenya span included) and is driven through every path that sees a credential: auth success
//! and failure (Bearer and `x-api-key`), an RBAC key, secrets in prompts (redacted), streamed
//! and not, a provider that quotes the key it was sent and the prompt back in its error (same
//! and cross format), `/metrics` and `/statsz`. Then no secret, client token, wrong token or
//! provider key may appear in its log or in anything a client received.
//!
//! A panic in a layer is checked in process: the panic hook and the log writer the binary
//! installs, around a layer that panics with a secret in its message.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use http::Request;
use nenya::config::Secret;
use nenya::layers::{CatchPanicLayer, ErrorResponseLayer};
use nenya::services::{Fault, MockConfig};
use nenya::telemetry::{ScrubbingMakeWriter, SecretFilter, install_panic_hook};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt, service_fn};

const RBAC_TOKEN: &str = "nk-rbac-token-4c1e9a7b2d";
const WRONG_TOKEN: &str = "wrong-client-token-8e2f61";
const ANT_KEY: &str = "sk-ant-provider-key-91b3f0c7";
const AWS: &str = "AKIAQ3EXAMPLE7Z9K2LP";
const GH: &str = "ghp_R8mWq2ZpX4cV7bN1kL9sD3fG6hJ0aQ5eT2yU";

#[tokio::test]
async fn no_credential_reaches_the_trace_log_metrics_or_error_bodies() {
    // Not the echo mode: that would hand the key it was sent back as the answer.
    let (_ok_mock, ok) = start_mock(MockConfig::default()).await;
    let (echo_mock, echo) = start_mock(MockConfig {
        fault: Some(Fault::EchoKey),
        ..MockConfig::default()
    })
    .await;
    let dir = temp_dir("log-secrets");
    let cfg = dir.join("nenya.json");
    std::fs::write(
        &cfg,
        json!({
            "providers": {
                "up": {"url": format!("http://{}/v1/chat/completions", ok.addr), "auth_style": "bearer"},
                "leaky": {"url": format!("http://{}/v1/chat/completions", echo.addr), "auth_style": "bearer"},
                "leaky-ant": {"url": format!("http://{}/v1/messages", echo.addr), "auth_style": "anthropic"}
            },
            "agents": {
                "build": {"models": [{"provider": "up", "model": "m-1"}]},
                "leak": {"models": [{"provider": "leaky", "model": "m-2"}]},
                "leak-ant": {"models": [{"provider": "leaky-ant", "model": "claude-x"}]}
            }
        })
        .to_string(),
    )
    .unwrap();
    let secrets = dir.join("secrets.json");
    std::fs::write(
        &secrets,
        json!({
            "client_token": CLIENT_TOKEN,
            "provider_keys": {"up": PROVIDER_KEY, "leaky": PROVIDER_KEY, "leaky-ant": ANT_KEY},
            "api_keys": {"ci": {"name": "ci", "token": RBAC_TOKEN, "roles": ["user"]}}
        })
        .to_string(),
    )
    .unwrap();
    let bin = spawn_nenya(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("NENYA_CONFIG_FILE", cfg.to_str().unwrap()),
            ("NENYA_SECRETS_DIR", secrets.to_str().unwrap()),
            ("RUST_LOG", "trace"),
        ],
    );
    let chat = bin.url("/v1/chat/completions");
    let messages = bin.url("/v1/messages");
    let prompt = format!("deploy with {AWS} and {GH}");
    let openai = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream,
               "messages": [{"role": "user", "content": prompt}]})
        .to_string()
    };
    let anthropic = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream, "max_tokens": 32,
               "messages": [{"role": "user", "content": prompt}]})
        .to_string()
    };
    let good = format!("Bearer {CLIENT_TOKEN}");
    let rbac = format!("Bearer {RBAC_TOKEN}");
    let wrong = format!("Bearer {WRONG_TOKEN}");
    let mut replies = Vec::new();

    // Auth success, both formats, streamed and not; secrets in the prompt.
    for stream in [false, true] {
        let r = post(&chat, &[("authorization", &good)], openai("build", stream)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        replies.push(r);
        let r = post(
            &messages,
            &[("x-api-key", CLIENT_TOKEN)],
            anthropic("build", stream),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        replies.push(r);
    }
    // An RBAC key.
    let r = post(&chat, &[("authorization", &rbac)], openai("build", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    replies.push(r);
    // Auth failures: a wrong token in each header, both formats.
    for (url, h) in [
        (&chat, ("authorization", wrong.as_str())),
        (&messages, ("x-api-key", WRONG_TOKEN)),
        (&chat, ("x-api-key", WRONG_TOKEN)),
    ] {
        let r = post(url, &[h], openai("build", false)).await;
        assert_eq!(r.status, 401, "{}", r.text());
        replies.push(r);
    }
    // Providers that quote the key they were sent (and the prompt) in their error: same
    // format and cross format, streamed and not.
    for stream in [false, true] {
        for model in ["leak", "leak-ant"] {
            let r = post(&chat, &[("authorization", &good)], openai(model, stream)).await;
            assert!(r.status.is_client_error(), "{model}: {}", r.text());
            replies.push(r);
            let r = post(
                &messages,
                &[("x-api-key", CLIENT_TOKEN)],
                anthropic(model, stream),
            )
            .await;
            assert!(r.status.is_client_error(), "{model}: {}", r.text());
            replies.push(r);
        }
    }
    let quoted = echo_mock
        .received()
        .iter()
        .filter(|r| {
            r.headers.get("authorization").is_some() || r.headers.get("x-api-key").is_some()
        })
        .count();
    assert_eq!(quoted, 8, "the leaky upstream was sent a key every time");
    // Metrics and statsz.
    for path in ["/metrics", "/statsz"] {
        let r = send(
            Request::get(bin.url(path))
                .header("authorization", &good)
                .body(nenya::Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        replies.push(r);
    }

    // The error the client got says what happened, without the key.
    let leak = replies
        .iter()
        .map(Reply::text)
        .find(|t| t.contains("Incorrect API key provided"))
        .expect("the upstream's message reaches the client");
    assert!(leak.contains("[REDACTED:provider_key]"), "{leak}");

    let forbidden = [
        CLIENT_TOKEN,
        RBAC_TOKEN,
        WRONG_TOKEN,
        PROVIDER_KEY,
        ANT_KEY,
        AWS,
        GH,
    ];
    for r in &replies {
        let text = r.text();
        let headers = format!("{:?}", r.headers);
        for s in forbidden {
            assert!(!text.contains(s), "`{s}` in a reply body: {text}");
            assert!(!headers.contains(s), "`{s}` in reply headers: {headers}");
        }
    }
    // The binary logs asynchronously; give the last lines a moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = bin.log();
    assert!(
        log.lines().count() > 50 && log.contains("TRACE"),
        "the log really is at trace level ({} lines)",
        log.lines().count()
    );
    for s in forbidden {
        assert!(
            !log.contains(s),
            "`{s}` in the log: {}",
            log.lines().find(|l| l.contains(s)).unwrap_or_default()
        );
    }
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process-wide subscriber of this test binary: trace level, through the scrubbing writer
/// and the panic hook, exactly as the reference binary sets them up.
fn captured_log(secret: &str) -> Buffer {
    static BUF: OnceLock<Buffer> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Buffer::default();
        let filter = Arc::new(SecretFilter::new());
        filter.set([&Secret::new(secret)]);
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(ScrubbingMakeWriter::new(
                move || writer.clone(),
                filter.clone(),
            ))
            .init();
        install_panic_hook(filter);
        buf
    })
    .clone()
}

#[tokio::test]
async fn a_panicking_layer_answers_500_in_the_client_format_and_its_message_is_scrubbed() {
    const KEY: &str = "sk-live-panic-key-0a9b8c7d";
    let log = captured_log(KEY);
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(CatchPanicLayer::new())
        .service(service_fn(|req: Request<nenya::Body>| async move {
            if req.uri().path() == "/v1/messages" {
                panic!("bug while handling key {KEY} and {GH}");
            }
            Ok::<_, nenya::Error>(http::Response::new(nenya::Body::empty()))
        }));
    let resp = svc
        .clone()
        .oneshot(
            Request::post("/v1/messages")
                .body(nenya::Body::from("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "error", "Anthropic error shape: {v}");
    assert_eq!(v["error"]["error_kind"], "internal_error", "{v}");
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(KEY) && !text.contains(GH), "{text}");
    // The service keeps serving.
    let resp = svc
        .oneshot(
            Request::post("/v1/chat/completions")
                .body(nenya::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(
        logged.contains("panic") && logged.contains("bug while handling key"),
        "{logged}"
    );
    assert!(logged.contains("[REDACTED:secret]"), "{logged}");
    assert!(!logged.contains(KEY) && !logged.contains(GH), "{logged}");
}
