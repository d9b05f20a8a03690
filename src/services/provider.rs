//! The provider service: sends one typed request to one upstream and streams the answer back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body::Frame;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::convert::TranscodeBody;
use super::transport::{Transport, TransportFuture};
use crate::adapters::anthropic::DEFAULT_VERSION;
use crate::adapters::providers::{AuthStyle, Capabilities, Quirks};
use crate::adapters::stream::StreamConverter;
use crate::adapters::{encode_request_cached, forward_as_sent_chunks};
use crate::config::Secret;
use crate::error::{Error, ErrorKind, sse_error_event};
use crate::model::{ApiFormat, CacheBreakpoints, ChatRequest, CountTokens};
use crate::{Body, BoxError};
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Limited};

/// Upstream time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Until the upstream's response headers arrive (non-streaming answers send theirs last).
    pub first_byte: Duration,
    /// Longest silence allowed between body frames.
    pub idle: Duration,
    /// Longest whole exchange, headers to the end of the body (`None`: unbounded; a long
    /// reasoning stream can run for many minutes).
    pub total: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            first_byte: Duration::from_secs(300),
            idle: Duration::from_secs(300),
            total: None,
        }
    }
}

/// Everything needed to talk to one upstream provider.
///
/// ```
/// use nenya::services::{ProviderSpec, Transport, MockProvider, MockConfig};
/// use nenya::model::ApiFormat;
/// let spec = ProviderSpec::new("mock", Transport::Mock(MockProvider::new(MockConfig::default())))
///     .with_endpoint(ApiFormat::OpenAi, "http://mock.invalid/v1/chat/completions".parse().unwrap());
/// assert!(spec.endpoint(ApiFormat::OpenAi).is_some());
/// ```
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    /// Config name.
    pub name: String,
    /// Endpoints per wire format; the first is the provider's default format.
    pub endpoints: Vec<(ApiFormat, Uri)>,
    /// How the key is sent.
    pub auth: AuthStyle,
    /// The provider key.
    pub key: Option<Secret>,
    /// Time limits.
    pub timeouts: Timeouts,
    /// `User-Agent` sent upstream.
    pub user_agent: HeaderValue,
    /// Where requests go.
    pub transport: Transport,
    /// What the upstream accepts.
    pub caps: Capabilities,
    /// Its quirks.
    pub quirks: Quirks,
    /// In-flight requests allowed per model of this provider (`None`: no cap).
    pub max_concurrent: Option<usize>,
    /// Statuses that fail over for this provider (`None`: the router's list).
    pub retryable_status: Option<Arc<[u16]>>,
    /// Several accounts (`accounts`), used in place of `key` by the
    /// [`AccountsLayer`](crate::layers::AccountsLayer).
    pub accounts: Option<Arc<[crate::layers::accounts::Account]>>,
}

impl ProviderSpec {
    /// A provider with no endpoints yet, bearer auth and default timeouts.
    pub fn new(name: impl Into<String>, transport: Transport) -> Self {
        Self {
            name: name.into(),
            endpoints: Vec::new(),
            auth: AuthStyle::Bearer,
            key: None,
            timeouts: Timeouts::default(),
            user_agent: HeaderValue::from_static(concat!("nenya/", env!("CARGO_PKG_VERSION"))),
            transport,
            caps: Capabilities::ALL,
            quirks: Quirks::NONE,
            max_concurrent: None,
            retryable_status: None,
            accounts: None,
        }
    }

    /// Adds an endpoint for a wire format.
    pub fn with_endpoint(mut self, format: ApiFormat, uri: Uri) -> Self {
        self.endpoints.push((format, uri));
        self
    }

    /// Sets the auth style and key.
    pub fn with_auth(mut self, auth: AuthStyle, key: Option<Secret>) -> Self {
        self.auth = auth;
        self.key = key;
        self
    }

    /// Sets the time limits.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The API prefix of the endpoint serving `format`: its URL without the query and without
    /// `/chat/completions` or `/messages` (`https://api.openai.com/v1`); `None` when it has no
    /// such endpoint or the URL ends otherwise. Other endpoints (`/models`, `/embeddings`, …)
    /// hang off it.
    ///
    /// ```
    /// use nenya::model::ApiFormat;
    /// use nenya::services::{ProviderSpec, Transport, MockProvider, MockConfig};
    /// let p = ProviderSpec::new("x", Transport::Mock(MockProvider::new(MockConfig::default())))
    ///     .with_endpoint(ApiFormat::OpenAi, "https://api.example.com/v1/chat/completions".parse().unwrap());
    /// assert_eq!(p.api_prefix(ApiFormat::OpenAi).as_deref(), Some("https://api.example.com/v1"));
    /// assert_eq!(p.api_base().as_deref(), Some("https://api.example.com"));
    /// ```
    pub fn api_prefix(&self, format: ApiFormat) -> Option<String> {
        let s = self.endpoint(format)?.to_string();
        let s = s.split('?').next().unwrap_or_default();
        s.strip_suffix("/chat/completions")
            .or_else(|| s.strip_suffix("/messages"))
            .map(|p| p.trim_end_matches('/').to_owned())
    }

    /// The provider's base URL: the API prefix of its OpenAI endpoint (else its first one)
    /// without a trailing `/v1`; the endpoint URL itself when it ends otherwise.
    pub fn api_base(&self) -> Option<String> {
        let (format, uri) = self
            .endpoints
            .iter()
            .find(|(f, _)| *f == ApiFormat::OpenAi)
            .or_else(|| self.endpoints.first())?;
        let prefix = self.api_prefix(*format).unwrap_or_else(|| {
            let s = uri.to_string();
            s.split('?')
                .next()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned()
        });
        Some(prefix.strip_suffix("/v1").unwrap_or(&prefix).to_owned())
    }

    /// The endpoint serving `format`, if any.
    pub fn endpoint(&self, format: ApiFormat) -> Option<&Uri> {
        self.endpoints
            .iter()
            .find(|(f, _)| *f == format)
            .map(|(_, u)| u)
    }

    /// The provider's default wire format.
    pub fn default_format(&self) -> ApiFormat {
        self.endpoints
            .first()
            .map(|(f, _)| *f)
            .unwrap_or(ApiFormat::OpenAi)
    }
}

/// The upstream chosen for a request: inserted into request extensions by the router, read by
/// the provider service (and by per-target layers such as breakers).
#[derive(Debug, Clone)]
pub struct Target {
    /// The provider.
    pub provider: Arc<ProviderSpec>,
    /// Model id sent upstream.
    pub model: String,
    /// Wire format spoken to the upstream.
    pub format: ApiFormat,
    /// Endpoint URL.
    pub url: Uri,
    /// Context window in tokens (config `max_context`, else the model registry), when known.
    pub max_context: Option<u64>,
    /// `agent:provider/model` (`provider/model` outside agents): the circuit-breaker key
    /// (made once per configured target).
    pub circuit_key: Arc<str>,
    /// `provider/model`: the concurrency-pool key.
    pub model_key: Arc<str>,
    /// The provider's name: the rate-limit bucket key.
    pub provider_key: Arc<str>,
}

/// Client headers forwarded upstream (everything else, credentials included, is dropped).
static FORWARDED_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("anthropic-beta"),
    HeaderName::from_static("anthropic-version"),
    HeaderName::from_static("openai-beta"),
];

/// Sends a [`ChatRequest`] to the [`Target`] in its extensions.
///
/// It encodes the request once in the target's wire format, applies the provider's auth style
/// (the client's own credentials are never forwarded), bounds time-to-first-byte and stream
/// idleness, and streams the upstream body back without buffering it.
///
/// ```no_run
/// use nenya::services::{ProviderService, Target};
/// let svc = ProviderService::new();
/// # drop(svc);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProviderService {
    _priv: (),
}

impl ProviderService {
    /// A provider service; targets carry their own transport.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Service<Request<ChatRequest>> for ProviderService {
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Transports are always ready; see `Transport`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ChatRequest>) -> ResponseFuture {
        match build_upstream_request(req) {
            Ok((target, upstream, ctx, upstream_key, spent)) => ResponseFuture {
                state: State::Waiting {
                    fut: target.provider.transport.send(upstream),
                    key: upstream_key,
                    spent,
                    deadline: tokio::time::sleep(
                        target
                            .provider
                            .timeouts
                            .total
                            .map_or(target.provider.timeouts.first_byte, |t| {
                                t.min(target.provider.timeouts.first_byte)
                            }),
                    ),
                    ctx,
                },
            },
            Err(e) => ResponseFuture {
                state: State::Failed { err: Some(e) },
            },
        }
    }
}

/// What the response side needs to know about the request.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    idle: Duration,
    /// `empty_stream_as_error` is off: an empty stream is passed on as it is.
    allow_empty: bool,
    /// When the whole exchange must be over.
    deadline: Option<Instant>,
    client: ApiFormat,
    upstream: ApiFormat,
    stream: bool,
    include_usage: bool,
}

/// Largest non-streamed upstream answer converted between formats.
const MAX_CONVERTED_BODY: usize = 32 << 20;

/// The upstream request, and the decoded request when its client body went as it was: that
/// one is dropped only once the upstream has the request (see `State::Waiting::spent`).
type Built = (
    Target,
    Request<Body>,
    Ctx,
    Option<Secret>,
    Option<Box<ChatRequest>>,
);

fn build_upstream_request(req: Request<ChatRequest>) -> Result<Built, Error> {
    let (mut parts, mut chat) = req.into_parts();
    // Taken, not cloned: the request's parts end here.
    let target = parts
        .extensions
        .remove::<Target>()
        .ok_or_else(|| Error::new(ErrorKind::Internal, "no upstream target was selected"))?;
    let client_format = chat.source;
    let count_tokens = parts.extensions.get::<CountTokens>().is_some();
    let stream = chat.stream && !count_tokens;
    let include_usage = chat
        .extra
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    if stream && target.format == ApiFormat::OpenAi && client_format != ApiFormat::OpenAi {
        // The client bills from the final usage; ask the OpenAI-format upstream for it.
        chat.extra.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    }
    let breakpoints = parts.extensions.get::<CacheBreakpoints>();
    let as_sent = if count_tokens {
        None
    } else {
        forward_as_sent_chunks(
            &chat,
            target.format,
            &target.model,
            &target.provider.caps,
            &target.provider.quirks,
            breakpoints,
        )
    };
    let (body, spent) = match as_sent {
        // The client's buffer around the new model name, sent without joining them.
        Some(chunks) => (Body::chunks(chunks), Some(Box::new(chat))),
        None => {
            chat.model.clone_from(&target.model);
            let body = encode_request_cached(
                chat,
                target.format,
                &target.provider.caps,
                &target.provider.quirks,
                breakpoints,
            )?;
            (Body::full(body), None)
        }
    };

    let mut upstream = Request::new(body);
    *upstream.method_mut() = Method::POST;
    *upstream.uri_mut() = if target.format == ApiFormat::Gemini {
        gemini_url(&target.url, &target.model, stream)?
    } else if count_tokens {
        format!(
            "{}/count_tokens",
            target.url.to_string().trim_end_matches('/')
        )
        .parse()
        .map_err(|_| Error::new(ErrorKind::Internal, "invalid count_tokens URL"))?
    } else {
        target.url.clone()
    };
    // Room for what is set below (grown once, not insert by insert).
    *upstream.headers_mut() = HeaderMap::with_capacity(8);
    let h = upstream.headers_mut();
    // Values checked at compile time (`from_static` checks every byte when called).
    const JSON: HeaderValue = HeaderValue::from_static("application/json");
    const SSE: HeaderValue = HeaderValue::from_static("text/event-stream");
    h.insert(header::CONTENT_TYPE, JSON);
    h.insert(header::ACCEPT, if stream { SSE } else { JSON });
    h.insert(header::USER_AGENT, target.provider.user_agent.clone());
    // One pass over the few headers the client sent, not a hashed lookup per forwarded
    // name; every line of a forwarded header goes on.
    for (name, v) in &parts.headers {
        if FORWARDED_HEADERS.contains(name) {
            h.append(name.clone(), v.clone());
        }
    }
    for (k, v) in target.provider.quirks.extra_headers {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let account = parts
        .extensions
        .get::<crate::layers::accounts::Credential>()
        .map(|c| &c.key);
    apply_auth(h, &target.provider, target.format, account)?;
    let key = account.or(target.provider.key.as_ref()).cloned();
    let ctx = Ctx {
        allow_empty: parts.extensions.get::<AllowEmptyStream>().is_some(),
        idle: target.provider.timeouts.idle,
        deadline: target.provider.timeouts.total.map(|t| Instant::now() + t),
        client: client_format,
        upstream: target.format,
        stream,
        include_usage,
    };
    Ok((target, upstream, ctx, key, spent))
}

/// `body` with every occurrence of `key` replaced by `[REDACTED:provider_key]`.
fn scrub_key(body: Bytes, key: Option<&Secret>) -> Bytes {
    let Some(key) = key.map(Secret::expose).filter(|k| k.len() >= 8) else {
        return body;
    };
    let Ok(ac) = aho_corasick::AhoCorasick::new([key]) else {
        return body;
    };
    if !ac.is_match(&body[..]) {
        return body;
    }
    let mut out = Vec::with_capacity(body.len());
    ac.replace_all_with_bytes(&body, &mut out, |_, _, dst| {
        dst.extend_from_slice(b"[REDACTED:provider_key]");
        true
    });
    Bytes::from(out)
}

/// The Gemini method URL for `model`: a base URL gets `/models/{model}:method`, a URL with a
/// `{model}` placeholder has it filled, a method URL is switched to the streaming variant.
fn gemini_url(base: &Uri, model: &str, stream: bool) -> Result<Uri, Error> {
    let method = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    let s = base.to_string();
    let s = s.split('?').next().unwrap_or_default();
    let url = if s.contains("{model}") {
        let s = s.replace("{model}", model);
        match s.rsplit_once(':') {
            Some((head, tail)) if tail.contains("enerateContent") => format!("{head}:{method}"),
            _ => format!("{s}:{method}"),
        }
    } else if let Some((head, _)) = s
        .rsplit_once(":generateContent")
        .or_else(|| s.rsplit_once(":streamGenerateContent"))
    {
        format!("{head}:{method}")
    } else {
        format!("{}/models/{model}:{method}", s.trim_end_matches('/'))
    };
    url.parse().map_err(|_| {
        Error::new(
            ErrorKind::InvalidRequest,
            format!("model `{model}` makes an invalid Gemini URL"),
        )
    })
}

pub(crate) fn apply_auth(
    h: &mut HeaderMap,
    p: &ProviderSpec,
    format: ApiFormat,
    account: Option<&Secret>,
) -> Result<(), Error> {
    if p.auth == AuthStyle::Anthropic && !h.contains_key("anthropic-version") {
        h.insert(
            "anthropic-version",
            HeaderValue::from_static(DEFAULT_VERSION),
        );
    }
    let Some(key) = account.or(p.key.as_ref()) else {
        return Ok(());
    };
    let bad = || {
        Error::new(
            ErrorKind::Internal,
            format!(
                "provider `{}` key contains invalid header characters",
                p.name
            ),
        )
    };
    // Both made once per key and shared by every request (no copy of the key per request).
    let plain = || key.header_value().ok_or_else(bad);
    let bearer = || key.bearer_value().ok_or_else(bad);
    match p.auth {
        AuthStyle::Bearer => {
            h.insert(header::AUTHORIZATION, bearer()?);
        }
        AuthStyle::Anthropic => {
            h.insert("x-api-key", plain()?);
        }
        AuthStyle::Azure => {
            h.insert("api-key", plain()?);
        }
        // Native Gemini reads a Bearer value as an OAuth token: send only the API-key header.
        AuthStyle::BearerXGoog if format == ApiFormat::Gemini => {
            h.insert("x-goog-api-key", plain()?);
        }
        AuthStyle::BearerXGoog => {
            h.insert(header::AUTHORIZATION, bearer()?);
            h.insert("x-goog-api-key", plain()?);
        }
        AuthStyle::None => {}
    }
    Ok(())
}

pin_project! {
    /// Response future of [`ProviderService`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Waiting {
            #[pin] fut: TransportFuture,
            #[pin] deadline: Sleep,
            ctx: Ctx,
            // The key sent upstream, so an error body that echoes it can be scrubbed.
            key: Option<Secret>,
            // The decoded request, freed once the first poll has handed the request to the
            // upstream and is waiting for its answer: freeing the tree of a coding agent's
            // request (tens of KB of tool schemas and turns) costs tens of microseconds, which
            // the upstream's own time then hides instead of the request waiting for it. Boxed:
            // this future is moved up through every layer's.
            spent: Option<Box<ChatRequest>>,
        },
        // A non-streamed answer (or an error) from an upstream of another format, read whole
        // so it can be re-encoded with the right status and length.
        Converting {
            #[pin] fut: Collect<Limited<IdleTimeoutBody<Body>>>,
            parts: Option<http::response::Parts>,
            ctx: Ctx,
            key: Option<Secret>,
        },
        Failed { err: Option<Error> },
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Failed { err } => {
                    return Poll::Ready(Err(err.take().unwrap_or_else(|| {
                        Error::new(ErrorKind::Internal, "future polled after completion")
                    })));
                }
                StateProj::Waiting {
                    fut,
                    deadline,
                    ctx,
                    key,
                    spent,
                } => {
                    let polled = fut.poll(cx);
                    if polled.is_pending() {
                        drop(spent.take());
                    }
                    let resp = match polled {
                        Poll::Ready(Ok(resp)) => resp,
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Err(Error::new(
                                ErrorKind::UpstreamUnreachable,
                                "the upstream could not be reached",
                            )
                            .with_source(e)));
                        }
                        Poll::Pending => {
                            ready!(deadline.poll(cx));
                            return Poll::Ready(Err(Error::new(
                                ErrorKind::UpstreamTimeout,
                                "the upstream did not answer in time",
                            )));
                        }
                    };
                    // A success that is neither JSON nor an event stream (a proxy's HTML error
                    // page, say) is not an answer a client could read.
                    let unexpected = resp.status().is_success()
                        && resp
                            .headers()
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|ct| {
                                !ct.contains("json") && !ct.starts_with("text/event-stream")
                            });
                    if unexpected {
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::UpstreamProtocol,
                            "the upstream answered with neither JSON nor an event stream",
                        )));
                    }
                    match respond(resp, *ctx) {
                        Respond::Done(r) => return Poll::Ready(Ok(r)),
                        Respond::Convert(parts, body) => State::Converting {
                            fut: Limited::new(body, MAX_CONVERTED_BODY).collect(),
                            parts: Some(parts),
                            ctx: *ctx,
                            key: key.take(),
                        },
                    }
                }
                StateProj::Converting {
                    fut,
                    parts,
                    ctx,
                    key,
                } => {
                    let bytes = match ready!(fut.poll(cx)) {
                        Ok(c) => c.to_bytes(),
                        Err(e) => {
                            let e = Error::from_boxed(e);
                            let kind = match e.kind() {
                                ErrorKind::UpstreamTimeout => ErrorKind::UpstreamTimeout,
                                _ => ErrorKind::UpstreamProtocol,
                            };
                            return Poll::Ready(Err(Error::new(
                                kind,
                                "the upstream answer could not be read",
                            )
                            .with_source(e)));
                        }
                    };
                    let Some(mut parts) = parts.take() else {
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::Internal,
                            "future polled after completion",
                        )));
                    };
                    let body = if parts.status.is_success() {
                        match crate::adapters::convert_response(&bytes, ctx.upstream, ctx.client) {
                            Ok(b) => b,
                            Err(e) => return Poll::Ready(Err(e)),
                        }
                    } else {
                        // Some providers quote the key they were sent in their error message.
                        let bytes = scrub_key(bytes, key.as_ref());
                        if ctx.client == ctx.upstream {
                            bytes
                        } else {
                            crate::adapters::convert_error(&bytes, ctx.client)
                        }
                    };
                    if ctx.client != ctx.upstream || parts.status.is_success() {
                        parts.headers.insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                    }
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                    return Poll::Ready(Ok(Response::from_parts(parts, Body::full(body))));
                }
            };
            state.set(next);
        }
    }
}

enum Respond {
    Done(Response<Body>),
    Convert(http::response::Parts, IdleTimeoutBody<Body>),
}

fn respond(resp: Response<Body>, ctx: Ctx) -> Respond {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, &[]);
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if ctx.client == ctx.upstream && (is_sse || parts.status.is_success()) {
        if is_sse {
            // The body may grow by an error event; a stale length would corrupt the framing.
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let sse_format =
            (is_sse || (ctx.stream && parts.status.is_success())).then_some(ctx.client);
        let body = IdleTimeoutBody::new(body, ctx.idle, sse_format).with_deadline(ctx.deadline);
        let body = if is_sse && parts.status.is_success() {
            Body::new(SseGuard::new(body, ctx.client).allow_empty(ctx.allow_empty))
        } else {
            Body::new(body)
        };
        return Respond::Done(Response::from_parts(parts, body));
    }
    let body = IdleTimeoutBody::new(body, ctx.idle, None).with_deadline(ctx.deadline);
    if is_sse && parts.status.is_success() {
        parts.headers.remove(header::CONTENT_LENGTH);
        let conv = StreamConverter::new(ctx.upstream, ctx.client, ctx.include_usage);
        let body = Body::new(TranscodeBody::new(body, conv));
        return Respond::Done(Response::from_parts(parts, body));
    }
    Respond::Convert(parts, body)
}

/// Hop-by-hop headers never forwarded in either direction.
pub(crate) static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers (and any of `extra`) from `headers`. One pass over the
/// names that are there, usually a handful, and a removal only for those present: cheaper
/// than one hashed removal per name, for headers that are almost never sent.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, extra: &[HeaderName]) {
    let present = |k: &HeaderName| HOP_BY_HOP.contains(k) || extra.contains(k);
    if !headers.keys().any(present) {
        return;
    }
    for name in HOP_BY_HOP.iter().chain(extra) {
        headers.remove(name);
    }
}

pin_project! {
    /// Bounds the silence between upstream body frames. On an SSE body, an idle timeout or an
    /// upstream failure ends the stream with a well-formed error event in the client's format.
    #[project = IdleProj]
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        idle: Duration,
        // Boxed: only bodies with a total limit pay for a second timer.
        total: Option<Pin<Box<Sleep>>>,
        sse_format: Option<ApiFormat>,
        done: bool,
    }
}

impl<B> IdleTimeoutBody<B> {
    /// Wraps `inner`; `sse_format` is the client format of an event stream, if it is one.
    pub fn new(inner: B, idle: Duration, sse_format: Option<ApiFormat>) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep(idle),
            idle,
            total: None,
            sse_format,
            done: false,
        }
    }

    /// Also ends the body (with a timeout error) at `deadline`, however lively it is.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.total = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
        self
    }
}

impl<B> http_body::Body for IdleTimeoutBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let fail = |this: &mut IdleProj<'_, B>, kind: ErrorKind, msg: &'static str| {
            *this.done = true;
            match this.sse_format {
                Some(f) => {
                    tracing::warn!(
                        error_kind = kind.as_str(),
                        "upstream stream ended early: {msg}"
                    );
                    Poll::Ready(Some(Ok(Frame::data(sse_error_event(*f, kind, msg)))))
                }
                None => Poll::Ready(Some(Err(Error::new(kind, msg).into()))),
            }
        };
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = Instant::now() + *this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                tracing::debug!(cause = %e, "upstream body failed");
                fail(
                    &mut this,
                    ErrorKind::UpstreamProtocol,
                    "the upstream connection failed mid-stream",
                )
            }
            Poll::Ready(None) => {
                *this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(total) = this.total.as_mut()
                    && total.as_mut().poll(cx).is_ready()
                {
                    return fail(
                        &mut this,
                        ErrorKind::UpstreamTimeout,
                        "the upstream answer ran past the total timeout",
                    );
                }
                ready!(this.sleep.as_mut().poll(cx));
                fail(
                    &mut this,
                    ErrorKind::UpstreamTimeout,
                    "the upstream stream stalled past the idle timeout",
                )
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

/// Request extension (inserted by the router when `empty_stream_as_error` is off): an upstream
/// stream without a single byte reaches the client as it is, not as an error event.
#[derive(Debug, Clone, Copy)]
pub struct AllowEmptyStream;

/// Largest partial event held while waiting for its end (a larger one ends the stream).
const MAX_PENDING_EVENT: usize = 8 << 20;

pin_project! {
    /// A same-format event stream passed through with its events checked: frames go on as
    /// whole events (a partial event waits for its end), each event's data must be JSON (or
    /// `[DONE]`), and the stream must end with its format's final event (`[DONE]`,
    /// `message_stop`) or an error event. A malformed event, an oversized one, or an early end
    /// becomes a well-formed error event in the client's format, and the stream ends there.
    /// Cost: one JSON validation per event (no allocation), no re-encoding.
    pub struct SseGuard<B> {
        #[pin]
        inner: B,
        format: ApiFormat,
        pending: bytes::BytesMut,
        decoder: crate::sse::Decoder,
        finished: bool,
        done: bool,
        allow_empty: bool,
        seen_bytes: bool,
    }
}

impl<B> SseGuard<B> {
    /// Lets a stream with no bytes at all end without an error event (`empty_stream_as_error`
    /// off: the client gets the upstream's empty stream).
    pub fn allow_empty(mut self, allow: bool) -> Self {
        self.allow_empty = allow;
        self
    }
}

impl<B> SseGuard<B> {
    /// Guards `inner`, a stream in `format`.
    pub fn new(inner: B, format: ApiFormat) -> Self {
        Self {
            inner,
            format,
            pending: bytes::BytesMut::new(),
            decoder: crate::sse::Decoder::new(MAX_PENDING_EVENT),
            finished: false,
            done: false,
            allow_empty: false,
            seen_bytes: false,
        }
    }
}

/// End of the last complete event in `buf` (after its blank line), if any.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf
        .windows(4)
        .rposition(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    lf.max(crlf)
}

/// The searcher for `error` in stream events, built once (a one-shot `memmem::find` builds
/// one per call: ~300 instructions an event).
static ERROR_WORD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"error"));

/// Checks the complete events in `chunk` with the shared SSE decoder: `Some(finished)` (a
/// final or error event was seen), or `None` when an event is malformed (data neither JSON nor
/// `[DONE]`, or not UTF-8).
fn check_events(
    decoder: &mut crate::sse::Decoder,
    chunk: &[u8],
    format: ApiFormat,
    mut finished: bool,
) -> Option<bool> {
    let mut bad = false;
    let fed = decoder.feed_ref(chunk, |ev| {
        if matches!(ev.event.as_deref(), Some("message_stop" | "error")) {
            finished = true;
        }
        let d = ev.data.as_str();
        if bad || d.is_empty() {
            return;
        }
        if d != "[DONE]" && !crate::sse::is_json(d) {
            bad = true;
            return;
        }
        // Only an OpenAI stream ends on an error payload (Anthropic names its events); the
        // word is looked for once before the exact shapes are.
        if format == ApiFormat::OpenAi
            && (d == "[DONE]"
                || (ERROR_WORD.find(d.as_bytes()).is_some()
                    && (d.starts_with("{\"error\"")
                        || d.contains("\"type\":\"error\"")
                        || d.contains("\"type\": \"error\""))))
        {
            finished = true;
        }
    });
    (fed.is_ok() && !bad).then_some(finished)
}

impl<B> http_body::Body for SseGuard<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            let fail = |done: &mut bool, format: ApiFormat, msg: &'static str| {
                *done = true;
                tracing::warn!("upstream stream broken: {msg}");
                Poll::Ready(Some(Ok(Frame::data(sse_error_event(
                    format,
                    ErrorKind::UpstreamProtocol,
                    msg,
                )))))
            };
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(d) => d,
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    };
                    *this.seen_bytes |= !data.is_empty();
                    // The common case: the chunk is whole events and nothing waits. It is
                    // checked and passed on as it came (no copy into the pending buffer).
                    if this.pending.is_empty()
                        && (data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n"))
                    {
                        match check_events(this.decoder, &data, *this.format, *this.finished) {
                            Some(f) => {
                                *this.finished = f;
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                            None => {
                                return fail(
                                    this.done,
                                    *this.format,
                                    "the upstream sent a malformed event",
                                );
                            }
                        }
                    }
                    this.pending.extend_from_slice(&data);
                    let Some(end) = last_event_end(this.pending) else {
                        if this.pending.len() > MAX_PENDING_EVENT {
                            return fail(
                                this.done,
                                *this.format,
                                "an upstream event was too large",
                            );
                        }
                        continue;
                    };
                    let complete = this.pending.split_to(end).freeze();
                    match check_events(this.decoder, &complete, *this.format, *this.finished) {
                        Some(f) => {
                            *this.finished = f;
                            return Poll::Ready(Some(Ok(Frame::data(complete))));
                        }
                        // The whole chunk is held back: the client sees whole, valid events
                        // and then one error event.
                        None => {
                            return fail(
                                this.done,
                                *this.format,
                                "the upstream sent a malformed event",
                            );
                        }
                    }
                }
                // The idle/total timeout body below already turned its own failures into an
                // error event; a transport error is passed on.
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    let empty_ok = *this.allow_empty && !*this.seen_bytes;
                    if (!*this.finished || !this.pending.is_empty()) && !empty_ok {
                        return fail(
                            this.done,
                            *this.format,
                            "the upstream stream ended before its final event",
                        );
                    }
                    *this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
