//! Shared helpers: real listeners on 127.0.0.1:0, a real HTTP client, SSE reading.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use nenya::config::{Config, Secrets};
use nenya::services::{MockConfig, MockProvider};
use nenya::{Body, Gateway};
use serde_json::Value;
use tokio::sync::oneshot;

pub const CLIENT_TOKEN: &str = "client-token-7f3a9c";
pub const PROVIDER_KEY: &str = "sk-provider-key-5d2e8b";

/// A server running in this process; dropping it shuts it down.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// An address only (nothing to stop): for pointing a config at a dead port.
    pub fn at(addr: SocketAddr) -> Self {
        Running {
            addr,
            stop: None,
            task: tokio::spawn(async { Ok(()) }),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    /// Signals shutdown; the caller may then await `task`.
    pub fn signal_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn start_mock(cfg: MockConfig) -> (MockProvider, Running) {
    let mock = MockProvider::new(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let m = mock.clone();
    let task = tokio::spawn(async move {
        m.serve(listener, async {
            let _ = rx.await;
        })
        .await
    });
    (
        mock,
        Running {
            addr,
            stop: Some(tx),
            task,
        },
    )
}

pub async fn start_gateway(gateway: Gateway) -> Running {
    start_gateway_with_grace(gateway, Duration::from_secs(5)).await
}

/// Serves a `ReloadableGateway` on a loopback port.
pub async fn start_gateway_with(svc: nenya::ReloadableGateway) -> Running {
    start_gateway_with_grace(svc, Duration::from_secs(5)).await
}

pub async fn start_gateway_with_grace<S>(gateway: S, grace: Duration) -> Running
where
    S: tower::Service<
            Request<Body>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    // The gateway serves its connections on connection threads, as the binary does (each
    // thread with its own upstream pool); the mocks stay on the test's runtime.
    static WORKERS: std::sync::OnceLock<nenya::server::ConnectionWorkers> =
        std::sync::OnceLock::new();
    let workers = WORKERS
        .get_or_init(|| nenya::server::ConnectionWorkers::new(2).unwrap())
        .clone();
    let task = tokio::spawn(async move {
        nenya::server::serve_on_workers(
            listener,
            gateway,
            async {
                let _ = rx.await;
            },
            grace,
            &workers,
        )
        .await
    });
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

/// A config with one provider `up` pointing at the mock (both formats), an agent `coder`, and
/// the standard client token and provider key.
pub fn config_for(mock: &Running, extra_provider: &str) -> (Config, Secrets) {
    let cfg = Config::from_json_str(&format!(
        r#"{{
          "server": {{"max_body_bytes": 65536}},
          "providers": {{
            "up": {{
              "url": "http://{addr}/v1/chat/completions",
              "format_urls": {{"anthropic": "http://{addr}/v1/messages"}},
              "auth_style": "bearer",
              "capabilities": {{"stream_options": true, "reasoning": true}}
              {extra_provider}
            }},
            "claude": {{
              "url": "http://{addr}/v1/messages",
              "auth_style": "anthropic"
              {extra_provider}
            }}
          }},
          "agents": {{
            "coder": {{"strategy": "fallback", "models": [{{"provider": "up", "model": "upstream-model-1"}}]}},
            "claude-agent": {{"models": [{{"provider": "claude", "model": "claude-upstream"}}]}}
          }}
        }}"#,
        addr = mock.addr
    ))
    .unwrap();
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"up": "{PROVIDER_KEY}", "claude": "{PROVIDER_KEY}"}}}}"#
    ))
    .unwrap();
    (cfg, secrets)
}

pub async fn gateway_for_mock(mock: &Running, extra_provider: &str) -> Running {
    let (cfg, secrets) = config_for(mock, extra_provider);
    start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> nenya::services::HttpClient {
    nenya::services::http_client(Duration::from_secs(5))
}

pub async fn send(req: Request<Body>) -> Reply {
    send_with(&client(), req).await
}

/// [`send`] through `client` (a test sending many requests shares one: building a client loads
/// the system's CA roots).
pub async fn send_with(client: &nenya::services::HttpClient, req: Request<Body>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body timed out")
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// POST JSON with the given headers.
pub async fn post(url: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Reply {
    let mut b = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(body.into()).unwrap()).await
}

/// `GET /metrics` of a gateway, as text.
pub async fn scrape_metrics(gw: &Running) -> String {
    send(
        http::Request::get(gw.url("/metrics"))
            .body(nenya::Body::empty())
            .unwrap(),
    )
    .await
    .text()
}

/// Posts `body` to the gateway's OpenAI chat endpoint with the client token.
pub async fn post_chat(gw: &Running, body: &Value) -> Reply {
    let (k, v) = bearer();
    post(
        &gw.url("/v1/chat/completions"),
        &[(k, &v)],
        body.to_string(),
    )
    .await
}

pub fn bearer() -> (&'static str, String) {
    ("authorization", format!("Bearer {CLIENT_TOKEN}"))
}

/// Splits an SSE body into (event name, data) pairs.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = Vec::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

/// Deep-merges JSON object `b` into `a` (other values replace).
pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub fn mock_default() -> MockConfig {
    MockConfig::default()
}

/// The real `nenya` binary, killed on drop.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Binary {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `nenya ARGS` with a clean environment plus `envs`, and waits for its listen line.
pub fn spawn_nenya(args: &[&str], envs: &[(&str, &str)]) -> Binary {
    use std::io::{BufRead, BufReader};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nenya"));
    cmd.args(args)
        .env_remove("NENYA_CONFIG_FILE")
        .env_remove("NENYA_CONFIG_DIR")
        .env_remove("NENYA_SECRETS_DIR")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("PORT")
        .env_remove("HOST")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn nenya");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let log = log.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
                        .collect();
                    let _ = tx.send(addr);
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("nenya did not start; log:\n{}", log.lock().unwrap()));
    Binary {
        child,
        addr: addr.parse().expect("listen address"),
        log,
    }
}

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nenya-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An agent `chain` over provider `a` then `b` (model `m-a`, `m-b`) at these endpoint URLs,
/// with `auth` for both, the agent `strategy`, and extra JSON fields for provider `a`.
pub fn chain_config(
    a_url: &str,
    b_url: &str,
    auth: &str,
    strategy: &str,
    a_extra: &str,
) -> (Config, Secrets) {
    let cfg = Config::from_json_str(&format!(
        r#"{{
          "providers": {{
            "a": {{"url": "{a_url}", "auth_style": "{auth}" {a_extra}}},
            "b": {{"url": "{b_url}", "auth_style": "{auth}"}}
          }},
          "agents": {{"chain": {{"strategy": "{strategy}", "models": [
              {{"provider": "a", "model": "m-a"}}, {{"provider": "b", "model": "m-b"}}]}}}}
        }}"#
    ))
    .unwrap();
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"a": "ka", "b": "kb"}}}}"#
    ))
    .unwrap();
    (cfg, secrets)
}

/// Two mocks — `a` answering `status` to everything, `b` healthy — and the config of an agent
/// `chain` over them (OpenAI format).
pub async fn failing_first_chain(
    status: u16,
) -> (
    MockProvider,
    Running,
    MockProvider,
    Running,
    Config,
    Secrets,
) {
    let (ma, a) = start_mock(MockConfig {
        fault: Some(nenya::services::Fault::Status(status)),
        ..MockConfig::default()
    })
    .await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let (cfg, secrets) = chain_config(
        &a.url("/v1/chat/completions"),
        &b.url("/v1/chat/completions"),
        "bearer",
        "fallback",
        "",
    );
    (ma, a, mb, b, cfg, secrets)
}

/// Reads one HTTP/1.1 request (its head, then a `Content-Length` body) from a raw upstream's
/// socket; what arrived after it stays in `buf` for the next. `None` once the peer is gone.
pub async fn read_request(
    sock: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(sock, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        if !read_more(sock, buf).await {
            return None;
        }
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    Some((head, body))
}

/// Appends what the socket has next to `buf`: `false` at its end.
async fn read_more(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    match sock.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}
