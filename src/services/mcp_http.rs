//! The HTTP transports of an MCP client, on nenya's own pooled hyper client (no second HTTP
//! stack): **streamable HTTP** (MCP 2025-03-26 and later: every message is a `POST` to the
//! endpoint, answered by `202`, a JSON body or an SSE stream; the session is the
//! `Mcp-Session-Id` header) and, as the specification's backwards-compatibility section
//! describes, the legacy **HTTP+SSE** transport (2024-11-05) when the server refuses the
//! first `POST` with a `4xx`: a `GET` opens the event stream, whose `endpoint` event names
//! the URL messages are posted to, and answers arrive on that stream.
//!
//! It is an `rmcp` [`Transport`], so the SDK runs the protocol over it exactly as over stdio.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::BodyExt;
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;

use super::transport::HttpClient;
use crate::Body;
use crate::sse::Decoder;

const SESSION: &str = "mcp-session-id";
/// Largest single SSE event or JSON answer read from an MCP server.
const MAX_MESSAGE: usize = 16 << 20;

/// Why an HTTP MCP exchange failed.
#[derive(Debug)]
pub struct HttpTransportError(String);

impl std::fmt::Display for HttpTransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpTransportError {}

fn err(msg: impl Into<String>) -> HttpTransportError {
    HttpTransportError(msg.into())
}

struct Shared {
    client: HttpClient,
    url: Uri,
    headers: HeaderMap,
    session: Mutex<Option<HeaderValue>>,
    /// The legacy transport's `POST` URL, once its event stream named it.
    legacy: Mutex<Option<Uri>>,
    inbox: tokio::sync::mpsc::Sender<RxJsonRpcMessage<RoleClient>>,
}

/// An MCP client transport over HTTP (see the [module docs](self)).
pub struct HttpTransport {
    shared: Arc<Shared>,
    rx: tokio::sync::mpsc::Receiver<RxJsonRpcMessage<RoleClient>>,
    /// Ends the readers of event streams when the transport is dropped.
    _stop: tokio::sync::watch::Sender<()>,
    stopped: tokio::sync::watch::Receiver<()>,
}

impl HttpTransport {
    /// A transport to `url` sending `headers` (credentials included) with every request.
    pub fn new(client: HttpClient, url: &str, headers: HeaderMap) -> Result<Self, String> {
        let url: Uri = url
            .parse()
            .map_err(|e| format!("`url` is not a URL: {e}"))?;
        let (inbox, rx) = tokio::sync::mpsc::channel(64);
        let (stop, stopped) = tokio::sync::watch::channel(());
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                url,
                headers,
                session: Mutex::new(None),
                legacy: Mutex::new(None),
                inbox,
            }),
            rx,
            _stop: stop,
            stopped,
        })
    }
}

impl Transport<RoleClient> for HttpTransport {
    type Error = HttpTransportError;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let shared = self.shared.clone();
        let stopped = self.stopped.clone();
        async move {
            let body = serde_json::to_vec(&item).map_err(|e| err(e.to_string()))?;
            let body = Bytes::from(body);
            let legacy = shared
                .legacy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(endpoint) = legacy {
                return post_legacy(&shared, endpoint, body).await;
            }
            let resp = shared
                .client
                .request(shared.request(Method::POST, &shared.url, Some(body.clone())))
                .await
                .map_err(|e| err(format!("cannot reach the MCP server: {e}")))?;
            let status = resp.status();
            if let Some(s) = resp.headers().get(SESSION) {
                *shared.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
            }
            let initialize = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .is_some_and(|v| v.get("method").and_then(|m| m.as_str()) == Some("initialize"));
            if status.is_client_error() && initialize {
                // Not a streamable-HTTP server: the legacy HTTP+SSE transport.
                let endpoint = open_legacy(&shared, stopped).await?;
                return post_legacy(&shared, endpoint, body).await;
            }
            if !status.is_success() {
                return Err(err(format!("the MCP server answered {status}")));
            }
            let sse = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if status == StatusCode::ACCEPTED {
                return Ok(());
            }
            let body = resp.into_body();
            if sse {
                tokio::spawn(read_events(shared.clone(), Body::new(body), stopped, false));
                return Ok(());
            }
            let bytes = http_body_util::Limited::new(body, MAX_MESSAGE)
                .collect()
                .await
                .map_err(|e| err(format!("reading the MCP answer failed: {e}")))?
                .to_bytes();
            if !bytes.is_empty() {
                shared.deliver(&bytes).await;
            }
            Ok(())
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.rx.recv()
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let shared = self.shared.clone();
        async move {
            // A streamable-HTTP session is ended explicitly, best effort.
            if shared.session_id().is_some() {
                let _ = shared
                    .client
                    .request(shared.request(Method::DELETE, &shared.url, None))
                    .await;
            }
            Ok(())
        }
    }
}

impl Shared {
    fn session_id(&self) -> Option<HeaderValue> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn request(&self, method: Method, url: &Uri, body: Option<Bytes>) -> Request<Body> {
        let mut r = Request::new(body.map_or_else(Body::empty, Body::from));
        *r.method_mut() = method;
        *r.uri_mut() = url.clone();
        let h = r.headers_mut();
        h.extend(self.headers.clone());
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        if r.method() == Method::POST {
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(s) = self.session_id() {
            r.headers_mut().insert(HeaderName::from_static(SESSION), s);
        }
        r
    }

    /// One JSON-RPC message (or a batch) from the server.
    async fn deliver(&self, data: &[u8]) {
        let msgs: Vec<RxJsonRpcMessage<RoleClient>> =
            match serde_json::from_slice::<serde_json::Value>(data) {
                Ok(serde_json::Value::Array(items)) => items
                    .into_iter()
                    .filter_map(|v| serde_json::from_value(v).ok())
                    .collect(),
                Ok(v) => serde_json::from_value(v).into_iter().collect(),
                Err(_) => Vec::new(),
            };
        for m in msgs {
            let _ = self.inbox.send(m).await;
        }
    }
}

/// Opens the legacy event stream and waits for its `endpoint` event.
async fn open_legacy(
    shared: &Arc<Shared>,
    stopped: tokio::sync::watch::Receiver<()>,
) -> Result<Uri, HttpTransportError> {
    // Nenya's `url` is the server's base; its event stream is `/sse` there.
    let url = if matches!(shared.url.path(), "" | "/") {
        resolve(&shared.url, "/sse").unwrap_or_else(|| shared.url.clone())
    } else {
        shared.url.clone()
    };
    let mut req = shared.request(Method::GET, &url, None);
    req.headers_mut().insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    let resp = shared
        .client
        .request(req)
        .await
        .map_err(|e| err(format!("cannot reach the MCP server: {e}")))?;
    if !resp.status().is_success() {
        return Err(err(format!(
            "the MCP server answered {} to both transports",
            resp.status()
        )));
    }
    tokio::spawn(read_events(
        shared.clone(),
        Body::new(resp.into_body()),
        stopped,
        true,
    ));
    // The reader stores the endpoint as soon as it arrives.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(u) = shared
            .legacy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(u);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(err("the MCP event stream named no endpoint"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn post_legacy(
    shared: &Shared,
    endpoint: Uri,
    body: Bytes,
) -> Result<(), HttpTransportError> {
    let mut req = shared.request(Method::POST, &endpoint, Some(body));
    req.headers_mut().remove(SESSION);
    let resp = shared
        .client
        .request(req)
        .await
        .map_err(|e| err(format!("cannot reach the MCP server: {e}")))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(err(format!("the MCP server answered {}", resp.status())))
    }
}

/// Reads an event stream: `message` events (or unnamed ones) are JSON-RPC messages; on the
/// legacy stream the `endpoint` event names the `POST` URL.
async fn read_events(
    shared: Arc<Shared>,
    mut body: Body,
    mut stopped: tokio::sync::watch::Receiver<()>,
    legacy: bool,
) {
    let mut decoder = Decoder::new(MAX_MESSAGE);
    loop {
        let frame = tokio::select! {
            _ = stopped.changed() => return,
            f = body.frame() => f,
        };
        let Some(Ok(frame)) = frame else { return };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let mut events = Vec::new();
        if decoder.feed(&data, |e| events.push(e)).is_err() {
            return;
        }
        for e in events {
            match e.event.as_deref() {
                Some("endpoint") if legacy => {
                    if let Some(u) = resolve(&shared.url, e.data.trim()) {
                        *shared.legacy.lock().unwrap_or_else(|p| p.into_inner()) = Some(u);
                    }
                }
                None | Some("message") if !e.data.is_empty() => {
                    shared.deliver(e.data.as_bytes()).await;
                }
                _ => {}
            }
        }
    }
}

/// `reference` (absolute, or a path on the server) against `base`.
fn resolve(base: &Uri, reference: &str) -> Option<Uri> {
    if reference.starts_with("http://") || reference.starts_with("https://") {
        return reference.parse().ok();
    }
    let mut parts = base.clone().into_parts();
    let path = if reference.starts_with('/') {
        reference.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{reference}")
    };
    parts.path_and_query = Some(path.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn endpoints_resolve_against_the_stream_url() {
        let base: http::Uri = "http://127.0.0.1:3001/sse".parse().unwrap();
        assert_eq!(
            resolve(&base, "/messages?sessionId=abc")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:3001/messages?sessionId=abc"
        );
        assert_eq!(
            resolve(&base, "message?x=1").unwrap().to_string(),
            "http://127.0.0.1:3001/message?x=1"
        );
        assert_eq!(
            resolve(&base, "http://other:1/m").unwrap().to_string(),
            "http://other:1/m"
        );
    }
}
