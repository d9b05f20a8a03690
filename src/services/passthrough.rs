//! The OpenAI API beyond chat, and the passthrough proxy.
//!
//! [`Passthrough`] answers
//!
//! * the extension endpoints `POST /v1/embeddings`, `/v1/responses`, `/v1/images/generations`,
//!   `/v1/audio/speech`, `/v1/audio/transcriptions`, `/v1/moderations`, `/v1/rerank`, and
//!   `/v1/files…`, `/v1/batches…` (any method). A JSON body's `model` picks the provider the
//!   way chat does (an agent's first target, `provider/model`, a registry model) and is
//!   rewritten to the upstream model; its text (`input`, `prompt`, `query`, `documents`,
//!   `instructions`) is redacted like a chat prompt. Without a resolvable model (multipart
//!   uploads, files, batches), the endpoint's preferred provider serves (`openai`, `cohere`
//!   for rerank), else the first configured provider with a key, as Nenya does.
//! * `/proxy/{provider}/{path…}`: any method and path under the provider's base URL (its
//!   chat URL without `/v1/chat/completions` or `/v1/messages`). A path that could leave that
//!   base (dot segments, encoded slashes or dots, backslashes, `//`, `@`, control characters)
//!   is refused before anything is sent; an upstream redirect is answered `502`, never
//!   followed.
//!
//! Both inject the provider's key (the client's credentials were stripped by the auth layer),
//! forward only a fixed set of client headers, and stream bodies both ways without buffering
//! them (uploads are bounded by `max_upload_bytes`); a JSON body is read once, bounded by the
//! chat body limit.
//!
//! ```
//! use nenya::services::passthrough::safe_proxy_path;
//! assert!(safe_proxy_path("v1/models").is_ok());
//! assert!(safe_proxy_path("v1/../../admin").is_err());
//! assert!(safe_proxy_path("v1/%2e%2e/x").is_err());
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::Service;

use super::provider::{ProviderSpec, apply_auth, strip_hop_by_hop};
use super::router::RouteTable;
use crate::Body;
use crate::error::{Error, ErrorKind};
use crate::layers::Redactor;
use crate::model::ApiFormat;

/// Client headers sent on (credentials never are: the auth layer removed them).
const FORWARDED: &[&str] = &[
    "content-type",
    "content-length",
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
];

/// What an extension endpoint is.
struct Endpoint {
    /// Path under the provider's `/v1`.
    rest: String,
    /// The body is JSON with a `model` (and text to redact).
    json: bool,
    /// Preferred provider name.
    preferred: &'static str,
}

fn endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix("/v1/")?;
    let json_post = |preferred| {
        (method == Method::POST).then(|| Endpoint {
            rest: rest.to_owned(),
            json: true,
            preferred,
        })
    };
    match rest {
        "embeddings" | "responses" | "images/generations" | "audio/speech" | "moderations" => {
            json_post("openai")
        }
        "rerank" => json_post("cohere"),
        "audio/transcriptions" | "audio/translations" => {
            (method == Method::POST).then(|| Endpoint {
                rest: rest.to_owned(),
                json: false,
                preferred: "openai",
            })
        }
        r if r == "files"
            || r.starts_with("files/")
            || r == "batches"
            || r.starts_with("batches/") =>
        {
            safe_proxy_path(r).ok()?;
            Some(Endpoint {
                rest: r.to_owned(),
                json: false,
                preferred: "openai",
            })
        }
        _ => None,
    }
}

/// Whether `path` is a route [`Passthrough`] answers.
pub fn handles(method: &Method, path: &str) -> bool {
    path.starts_with("/proxy/") || endpoint(method, path).is_some()
}

/// Checks a passthrough path (after `/proxy/{provider}/`): it must stay under the base URL.
pub fn safe_proxy_path(path: &str) -> Result<(), Error> {
    let refuse = |why: &str| {
        Err(Error::new(
            ErrorKind::InvalidRequest,
            format!("refused proxy path: {why}"),
        ))
    };
    if path.is_empty() {
        return refuse("empty");
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%00")
    {
        return refuse("encoded dots, slashes or NUL");
    }
    if path.contains('\\') || path.contains('@') || path.starts_with('/') || path.contains("//") {
        return refuse("backslash, `@` or an empty segment");
    }
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return refuse("control characters");
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return refuse("dot segments");
    }
    if path.split('/').next().is_some_and(|s| s.contains(':')) {
        return refuse("a scheme");
    }
    Ok(())
}

/// The provider's API prefix (`https://api.openai.com/v1`) and base (`https://api.openai.com`).
fn prefix_and_base(spec: &ProviderSpec) -> Option<(String, String)> {
    let base = spec.api_base()?;
    let prefix = spec
        .api_prefix(ApiFormat::OpenAi)
        .or_else(|| {
            spec.endpoints
                .first()
                .and_then(|(f, _)| spec.api_prefix(*f))
        })
        .unwrap_or_else(|| base.clone());
    Some((prefix, base))
}

/// The endpoints beyond chat and the passthrough proxy. Cheap to clone.
///
/// ```no_run
/// use std::sync::Arc;
/// use nenya::services::{RouteTable, passthrough::Passthrough};
/// let p = Passthrough::new(Arc::new(RouteTable::default()), None, 10 << 20, 512 << 20);
/// # drop(p);
/// ```
#[derive(Clone)]
pub struct Passthrough {
    table: Arc<RouteTable>,
    redactor: Option<Redactor>,
    max_json: u64,
    max_upload: u64,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough").finish_non_exhaustive()
    }
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>>;

impl Passthrough {
    /// Routes with `table`; redacts JSON text with `redactor`; bounds JSON bodies by
    /// `max_json` and streamed uploads by `max_upload` bytes.
    pub fn new(
        table: Arc<RouteTable>,
        redactor: Option<Redactor>,
        max_json: u64,
        max_upload: u64,
    ) -> Self {
        Self {
            table,
            redactor,
            max_json,
            max_upload,
        }
    }

    /// The preferred provider, else the first (by name) with a key and a usable endpoint.
    fn default_provider(&self, preferred: &str) -> Option<Arc<ProviderSpec>> {
        let usable = |p: &ProviderSpec| {
            (p.key.is_some()
                || p.accounts.is_some()
                || p.auth == crate::adapters::providers::AuthStyle::None)
                && !p.endpoints.is_empty()
        };
        if let Some(p) = self.table.provider(preferred).filter(|p| usable(p)) {
            return Some(p);
        }
        // Configured providers (or given a key) only: a built-in one nobody set up is no default.
        let mut all: Vec<Arc<ProviderSpec>> = self
            .table
            .discoverable()
            .into_iter()
            .filter(|p| usable(p) && p.endpoints.iter().any(|(f, _)| *f == ApiFormat::OpenAi))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter().next()
    }

    async fn extension(self, req: Request<Body>, ep: Endpoint) -> Result<Response<Body>, Error> {
        let (parts, body) = req.into_parts();
        let (spec, body) = if ep.json {
            let bytes = http_body_util::Limited::new(body, self.max_json as usize)
                .collect()
                .await
                .map_err(|e| {
                    let e = Error::from_boxed(e);
                    if e.kind() == ErrorKind::RequestTimeout {
                        e
                    } else {
                        Error::new(ErrorKind::BodyTooLarge, "the request body is too large")
                    }
                })?
                .to_bytes();
            let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidJson,
                    format!("the body is not valid JSON: {e}"),
                )
            })?;
            let obj = v.as_object_mut().ok_or_else(|| {
                Error::new(ErrorKind::InvalidRequest, "the body must be a JSON object")
            })?;
            let model = obj.get("model").and_then(Value::as_str).map(str::to_owned);
            let target = model.as_deref().and_then(|m| {
                self.table
                    .resolve(m, ApiFormat::OpenAi)
                    .ok()?
                    .into_iter()
                    .find(|t| {
                        t.provider
                            .endpoints
                            .iter()
                            .any(|(f, _)| *f == ApiFormat::OpenAi)
                    })
            });
            let spec = match target {
                Some(t) => {
                    obj.insert("model".into(), Value::String(t.model.clone()));
                    t.provider.clone()
                }
                None => self.default_provider(ep.preferred).ok_or_else(|| {
                    Error::new(
                        ErrorKind::ModelNotFound,
                        format!("no provider serves /v1/{}", ep.rest),
                    )
                })?,
            };
            if let Some(r) = &self.redactor {
                for k in ["input", "prompt", "query", "documents", "instructions"] {
                    if let Some(x) = obj.get_mut(k) {
                        redact_strings(x, r);
                    }
                }
            }
            (spec, Body::from(serde_json::to_vec(&v).unwrap_or_default()))
        } else {
            let spec = self.default_provider(ep.preferred).ok_or_else(|| {
                Error::new(
                    ErrorKind::ModelNotFound,
                    format!("no provider serves /v1/{}", ep.rest),
                )
            })?;
            (spec, self.bounded(&parts.headers, body)?)
        };
        let (prefix, _) = prefix_and_base(&spec)
            .ok_or_else(|| Error::new(ErrorKind::ModelNotFound, "the provider has no URL"))?;
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let url = format!("{prefix}/{}{query}", ep.rest);
        self.send(&spec, parts.method, &parts.headers, url, body, ep.json)
            .await
    }

    async fn proxy(self, req: Request<Body>) -> Result<Response<Body>, Error> {
        let (parts, body) = req.into_parts();
        let rest = parts.uri.path().strip_prefix("/proxy/").unwrap_or_default();
        let (provider, path) = rest.split_once('/').unwrap_or((rest, ""));
        let spec = self.table.provider(provider).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no provider `{provider}` to proxy to"),
            )
        })?;
        safe_proxy_path(path)?;
        let (_, base) = prefix_and_base(&spec)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "the provider has no URL"))?;
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let url = format!("{base}/{path}{query}");
        // Belt and braces: the URL must still name the provider's host, under its base path.
        let parsed: Uri = url
            .parse()
            .map_err(|_| Error::new(ErrorKind::InvalidRequest, "refused proxy path: not a URL"))?;
        let base_uri: Uri = base
            .parse()
            .map_err(|_| Error::new(ErrorKind::Internal, "provider base URL"))?;
        if parsed.authority() != base_uri.authority()
            || parsed.scheme() != base_uri.scheme()
            || !parsed
                .path()
                .starts_with(base_uri.path().trim_end_matches('/'))
        {
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                "refused proxy path: it leaves the provider's base URL",
            ));
        }
        let body = self.bounded(&parts.headers, body)?;
        self.send(&spec, parts.method, &parts.headers, url, body, false)
            .await
    }

    /// A streamed body, refused up front when its declared length is over the upload limit
    /// and cut off when it runs over.
    fn bounded(&self, headers: &HeaderMap, body: Body) -> Result<Body, Error> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_upload) {
            return Err(Error::new(
                ErrorKind::BodyTooLarge,
                format!("the upload is larger than {} bytes", self.max_upload),
            ));
        }
        Ok(Body::new(http_body_util::Limited::new(
            body,
            self.max_upload as usize,
        )))
    }

    async fn send(
        &self,
        spec: &ProviderSpec,
        method: Method,
        client: &HeaderMap,
        url: String,
        body: Body,
        rewritten: bool,
    ) -> Result<Response<Body>, Error> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = url
            .parse()
            .map_err(|_| Error::new(ErrorKind::InvalidRequest, "the upstream URL is not valid"))?;
        let h = req.headers_mut();
        for name in FORWARDED {
            // A rewritten JSON body has a new length.
            if rewritten && *name == "content-length" {
                continue;
            }
            if let Some(v) = client.get(*name) {
                h.insert(HeaderName::from_static(name), v.clone());
            }
        }
        if rewritten {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        h.insert(header::USER_AGENT, spec.user_agent.clone());
        let format = spec
            .endpoints
            .first()
            .map_or(ApiFormat::OpenAi, |(f, _)| *f);
        apply_auth(h, spec, format, None)?;
        let resp = tokio::time::timeout(spec.timeouts.first_byte, spec.transport.send(req))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::UpstreamTimeout,
                    "the upstream did not answer in time",
                )
            })?
            .map_err(|e| {
                Error::new(
                    ErrorKind::UpstreamUnreachable,
                    "the upstream could not be reached",
                )
                .with_source(e)
            })?;
        if resp.status().is_redirection() {
            return Err(Error::new(
                ErrorKind::UpstreamProtocol,
                "the upstream answered with a redirect, which is not followed",
            ));
        }
        let (mut parts, body) = resp.into_parts();
        // Hop-by-hop headers, and no upstream cookie is set on the gateway's clients.
        strip_hop_by_hop(&mut parts.headers, &[http::header::SET_COOKIE]);
        Ok(Response::from_parts(parts, body))
    }
}

/// Redacts every string inside `v`.
fn redact_strings(v: &mut Value, r: &Redactor) {
    match v {
        Value::String(s) => {
            if let Some(out) = r.redact(s) {
                *s = out;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact_strings(x, r)),
        Value::Object(o) => o.values_mut().for_each(|x| redact_strings(x, r)),
        _ => {}
    }
}

impl Service<Request<Body>> for Passthrough {
    type Response = Response<Body>;
    type Error = Error;
    type Future = BoxFut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFut {
        let this = self.clone();
        if req.uri().path().starts_with("/proxy/") {
            return Box::pin(this.proxy(req));
        }
        match endpoint(req.method(), req.uri().path()) {
            Some(ep) => Box::pin(this.extension(req, ep)),
            None => Box::pin(std::future::ready(Err(Error::new(
                ErrorKind::MethodNotAllowed,
                format!("{} is not accepted on {}", req.method(), req.uri().path()),
            )))),
        }
    }
}
