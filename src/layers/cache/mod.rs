//! Exact-match response cache.
//!
//! [`ResponseCacheLayer`] wraps a service of `Request<ChatRequest>` → `Response<Body>`. The key
//! is a SHA-256 of the normalised request — model, messages, tools, tool choice, limits, stop
//! sequences, sampling parameters and the streaming flag; not credentials, not `user` /
//! `metadata` / request ids (none of those are in the typed request's key fields). Only
//! deterministic requests (`temperature: 0`) are cached unless `cache_nondeterministic` is set,
//! and a client's `Cache-Control: no-cache` or `no-store` bypasses the cache.
//!
//! A miss tees the answer into the cache as it streams (frames are reference-counted, nothing
//! waits); only a complete `200` answer is stored, so an interrupted stream never is. A hit
//! replays the stored frames — a streamed answer comes back as the same SSE events with the
//! same framing. Entries live `ttl` and the cache holds at most `max_bytes`, evicting the least
//! recently used. Answers carry `x-nenya-cache: hit` or `miss`.
//!
//! ```
//! use std::time::Duration;
//! use nenya::layers::{CacheConfig, ResponseCache, ResponseCacheLayer};
//! use nenya::model::{ApiFormat, ChatRequest};
//! use nenya::{Body, Error};
//! use http_body_util::BodyExt;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ResponseCacheLayer::new(ResponseCache::new(CacheConfig::default())))
//!     .service(service_fn(|_req: http::Request<ChatRequest>| async {
//!         Ok::<_, Error>(http::Response::new(Body::from("answer")))
//!     }));
//! let req = || http::Request::new(nenya::adapters::decode_request(ApiFormat::OpenAi,
//!     br#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#).unwrap());
//! let first = svc.clone().oneshot(req()).await.unwrap();
//! assert_eq!(first.headers()["x-nenya-cache"], "miss");
//! first.into_body().collect().await.unwrap(); // the answer completes: now it is stored
//! let second = svc.oneshot(req()).await.unwrap();
//! assert_eq!(second.headers()["x-nenya-cache"], "hit");
//! assert_eq!(&second.into_body().collect().await.unwrap().to_bytes()[..], b"answer");
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tower::Service;
use tower_layer::Layer;

pub mod semantic;

use crate::body::{Observed, Observer};
use crate::model::{ChatRequest, CountTokens};
use crate::{Body, BoxError};

/// Cache settings.
///
/// ```
/// let c = nenya::layers::CacheConfig::default();
/// assert_eq!(c.max_bytes, 64 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Total size of stored answers.
    pub max_bytes: usize,
    /// Largest single answer stored.
    pub max_entry_bytes: usize,
    /// How long an answer stays valid.
    pub ttl: Duration,
    /// Also cache requests without `temperature: 0`.
    pub cache_nondeterministic: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_entry_bytes: 4 << 20,
            ttl: Duration::from_secs(300),
            cache_nondeterministic: false,
        }
    }
}

type Key = [u8; 32];

/// Request extension: the exact tier's key of a request that missed it.
#[derive(Clone, Copy)]
struct ExactKey(Key);

struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    frames: Arc<[Bytes]>,
    size: usize,
    stored: Instant,
    tick: u64,
}

#[derive(Default)]
struct Store {
    entries: HashMap<Key, Entry>,
    /// Recency order: tick → key.
    lru: BTreeMap<u64, Key>,
    bytes: usize,
    tick: u64,
    hits: u64,
    misses: u64,
}

/// The cache itself. Cheap to clone (shared).
#[derive(Clone)]
pub struct ResponseCache {
    cfg: CacheConfig,
    store: Arc<Mutex<Store>>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// An empty cache.
    pub fn new(cfg: CacheConfig) -> Self {
        Self {
            cfg,
            store: Arc::default(),
        }
    }

    /// `(hits, misses, stored bytes, entries)` so far.
    pub fn stats(&self) -> (u64, u64, usize, usize) {
        let s = self.store.lock().unwrap_or_else(|p| p.into_inner());
        (s.hits, s.misses, s.bytes, s.entries.len())
    }

    fn get(&self, key: &Key) -> Option<(StatusCode, HeaderMap, Arc<[Bytes]>)> {
        let mut s = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = s
            .entries
            .get(key)
            .is_some_and(|e| e.stored.elapsed() < self.cfg.ttl);
        if !fresh {
            if let Some(e) = s.entries.remove(key) {
                s.lru.remove(&e.tick);
                s.bytes -= e.size;
            }
            s.misses += 1;
            return None;
        }
        s.tick += 1;
        let tick = s.tick;
        s.hits += 1;
        let e = s.entries.get_mut(key)?;
        let old = std::mem::replace(&mut e.tick, tick);
        let out = (e.status, e.headers.clone(), e.frames.clone());
        s.lru.remove(&old);
        s.lru.insert(tick, *key);
        Some(out)
    }

    fn put(
        &self,
        key: Key,
        status: StatusCode,
        headers: HeaderMap,
        frames: Vec<Bytes>,
        size: usize,
    ) {
        if size > self.cfg.max_entry_bytes || size > self.cfg.max_bytes {
            return;
        }
        let mut s = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = s.entries.remove(&key) {
            s.lru.remove(&e.tick);
            s.bytes -= e.size;
        }
        while s.bytes + size > self.cfg.max_bytes {
            let Some((_, victim)) = s.lru.pop_first() else {
                break;
            };
            if let Some(e) = s.entries.remove(&victim) {
                s.bytes -= e.size;
            }
        }
        s.tick += 1;
        let tick = s.tick;
        s.lru.insert(tick, key);
        s.bytes += size;
        s.entries.insert(
            key,
            Entry {
                status,
                headers,
                frames: frames.into(),
                size,
                stored: Instant::now(),
                tick,
            },
        );
    }
}

/// The cache key of a request, or `None` when it must not be cached.
fn key(req: &Request<ChatRequest>, cfg: &CacheConfig) -> Option<Key> {
    if req.extensions().get::<CountTokens>().is_some() {
        return None;
    }
    let bypass = req
        .headers()
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("no-cache") || v.contains("no-store")
        });
    if bypass {
        return None;
    }
    let chat = req.body();
    let deterministic = chat
        .extra
        .get("temperature")
        .and_then(serde_json::Value::as_f64)
        .is_some_and(|t| t == 0.0);
    if !deterministic && !cfg.cache_nondeterministic {
        return None;
    }
    Some(fingerprint(chat, &chat.messages))
}

/// SHA-256 of everything in `chat` that changes the answer, with `messages` standing for its
/// conversation (the exact tier passes all of them, the semantic tier all but the last).
fn fingerprint(chat: &ChatRequest, messages: &[crate::model::Message]) -> Key {
    let mut h = Sha256::new();
    // Debug output of the typed fields is stable and complete; `extra` is filtered to the
    // fields that change the answer.
    h.update(format!("{:?}|{}|{}|", chat.source, chat.model, chat.stream).as_bytes());
    h.update(
        format!(
            "{messages:?}|{:?}|{:?}|{:?}|",
            chat.tools, chat.tool_choice, chat.max_tokens
        )
        .as_bytes(),
    );
    h.update(format!("{:?}|", chat.stop).as_bytes());
    for (k, v) in &chat.extra {
        if matches!(
            k.as_str(),
            "user" | "metadata" | "request_id" | "stream_options"
        ) {
            continue;
        }
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.to_string().as_bytes());
        h.update(b"|");
    }
    h.finalize().into()
}

/// Layer that applies [`ResponseCacheService`].
#[derive(Debug, Clone)]
pub struct ResponseCacheLayer {
    cache: ResponseCache,
}

impl ResponseCacheLayer {
    /// Caches into `cache`.
    pub fn new(cache: ResponseCache) -> Self {
        Self { cache }
    }
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCacheService<S>;
    fn layer(&self, inner: S) -> ResponseCacheService<S> {
        ResponseCacheService {
            inner,
            cache: self.cache.clone(),
        }
    }
}

/// Answers from the cache, or tees the inner service's answer into it.
#[derive(Debug, Clone)]
pub struct ResponseCacheService<S> {
    inner: S,
    cache: ResponseCache,
}

impl<S> Service<Request<ChatRequest>> for ResponseCacheService<S>
where
    S: Service<Request<ChatRequest>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ChatRequest>) -> Self::Future {
        let Some(k) = key(&req, &self.cache.cfg) else {
            return ResponseFuture {
                state: CacheState::Pass {
                    fut: self.inner.call(req),
                },
            };
        };
        if let Some((status, headers, frames)) = self.cache.get(&k) {
            let mut resp = Response::new(Body::new(Replay { frames, next: 0 }));
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            resp.headers_mut()
                .insert("x-nenya-cache", HeaderValue::from_static("hit"));
            return ResponseFuture {
                state: CacheState::Hit { resp: Some(resp) },
            };
        }
        // The semantic tier below keys its index by the same exact key: hand it on.
        let mut req = req;
        req.extensions_mut().insert(ExactKey(k));
        ResponseFuture {
            state: CacheState::Miss {
                fut: self.inner.call(req),
                key: k,
                cache: Some(self.cache.clone()),
            },
        }
    }
}

pin_project! {
    /// Response future of [`ResponseCacheService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: CacheState<F>,
    }
}

pin_project! {
    #[project = CacheProj]
    enum CacheState<F> {
        Pass { #[pin] fut: F },
        Hit { resp: Option<Response<Body>> },
        Miss { #[pin] fut: F, key: Key, cache: Option<ResponseCache> },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            CacheProj::Pass { fut } => fut.poll(cx),
            CacheProj::Hit { resp } => Poll::Ready(Ok(resp.take().unwrap_or_default())),
            CacheProj::Miss { fut, key, cache } => {
                let out = ready!(fut.poll(cx));
                let Ok(mut resp) = out else {
                    return Poll::Ready(out);
                };
                if resp.headers().contains_key("x-nenya-cache") {
                    // Answered by the semantic tier from a stored answer: nothing to store.
                    return Poll::Ready(Ok(resp));
                }
                resp.headers_mut()
                    .insert("x-nenya-cache", HeaderValue::from_static("miss"));
                let Some(cache) = cache.take().filter(|_| resp.status() == StatusCode::OK) else {
                    return Poll::Ready(Ok(resp));
                };
                let mut headers = resp.headers().clone();
                headers.remove("x-nenya-cache");
                headers.remove("x-request-id");
                headers.remove("x-nenya-attempts");
                headers.remove(http::header::CONTENT_LENGTH);
                let status = resp.status();
                let key = *key;
                Poll::Ready(Ok(resp.map(|body| {
                    Body::new(Observed::new(
                        body,
                        Tee {
                            frames: Vec::new(),
                            size: 0,
                            sink: Some((cache, key, status, headers)),
                        },
                    ))
                })))
            }
        }
    }
}

/// Replays stored frames.
struct Replay {
    frames: Arc<[Bytes]>,
    next: usize,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let i = self.next;
        self.next += 1;
        Poll::Ready(self.frames.get(i).cloned().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.frames.len()
    }
}

/// Keeps a copy of an answer's frames as they pass; stores them when it ends cleanly.
struct Tee {
    frames: Vec<Bytes>,
    size: usize,
    sink: Option<(ResponseCache, Key, StatusCode, HeaderMap)>,
}

impl Tee {
    fn store(&mut self) {
        if let Some((cache, key, status, headers)) = self.sink.take() {
            let frames = std::mem::take(&mut self.frames);
            let sse = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if sse && !complete_stream(&frames) {
                return; // ended with an error event, or without its terminal event
            }
            cache.put(key, status, headers, frames, self.size);
        }
    }
}

/// Whether a stored SSE answer ended the way a successful stream does (OpenAI `[DONE]`,
/// Anthropic `message_stop`) with no error event on the way. The gateway turns an upstream
/// failure mid-stream into a well-formed error event, so a clean end of body is not enough.
fn complete_stream(frames: &[Bytes]) -> bool {
    let mut dec = crate::sse::Decoder::new(usize::MAX);
    let (mut error, mut done) = (false, false);
    for f in frames {
        let fed = dec.feed(f, |ev| {
            if ev.event.as_deref() == Some("error") || ev.data.starts_with("{\"error\"") {
                error = true;
            }
            if ev.data == "[DONE]" || ev.event.as_deref() == Some("message_stop") {
                done = true;
            }
        });
        if fed.is_err() {
            return false;
        }
    }
    done && !error
}

impl Observer for Tee {
    fn on_data(&mut self, data: &Bytes) {
        let limit = self.sink.as_ref().map_or(0, |s| s.0.cfg.max_entry_bytes);
        self.size += data.len();
        if self.size > limit {
            self.sink = None; // too big to keep: stop collecting
            self.frames = Vec::new();
        } else if self.sink.is_some() {
            self.frames.push(data.clone());
        }
    }

    fn on_end(&mut self, complete: bool) {
        // An error or a hang-up means an incomplete answer: never stored.
        if complete {
            self.store();
        }
    }
}
