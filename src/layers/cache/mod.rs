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
use crate::state::SharedState;
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
    /// Entries shared with other replicas (read on a local miss, written on every store).
    state: Option<SharedState>,
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
            state: None,
        }
    }

    /// Shares entries with every replica on the same [`SharedState`]: an answer stored by
    /// one is a hit on the others (the shared store keeps the same TTL and `max_bytes`,
    /// evicting the oldest). A local miss then costs one back-end lookup; while the back end
    /// is unavailable the cache is local only.
    ///
    /// ```
    /// use nenya::layers::{CacheConfig, ResponseCache};
    /// let cache = ResponseCache::new(CacheConfig::default())
    ///     .with_shared_state(nenya::state::SharedState::memory());
    /// assert_eq!(cache.stats().3, 0);
    /// ```
    pub fn with_shared_state(mut self, state: SharedState) -> Self {
        self.state = state.is_shared().then_some(state);
        self
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
        if let Some(state) = &self.state {
            let value = encode_entry(status, &headers, &frames);
            state.cache_put(&key, value, self.cfg.ttl, self.cfg.max_bytes);
        }
        self.put_local(key, status, headers, frames, size);
    }

    /// A hit in the shared store: counted as a hit, kept locally too.
    fn shared_hit(&self, key: Key, value: &Bytes) -> Option<(StatusCode, HeaderMap, Arc<[Bytes]>)> {
        let (status, headers, frames) = decode_entry(value)?;
        {
            let mut s = self.store.lock().unwrap_or_else(|p| p.into_inner());
            s.hits += 1;
            s.misses = s.misses.saturating_sub(1);
        }
        let size = frames.iter().map(Bytes::len).sum();
        let frames = self.put_local(key, status, headers.clone(), frames, size);
        Some((status, headers, frames))
    }

    /// Stores in this process only; the stored frames.
    fn put_local(
        &self,
        key: Key,
        status: StatusCode,
        headers: HeaderMap,
        frames: Vec<Bytes>,
        size: usize,
    ) -> Arc<[Bytes]> {
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
        let frames: Arc<[Bytes]> = frames.into();
        s.entries.insert(
            key,
            Entry {
                status,
                headers,
                frames: frames.clone(),
                size,
                stored: Instant::now(),
                tick,
            },
        );
        frames
    }
}

/// An entry as bytes for the shared store: `NC1`, status (u16), header count (u16), each
/// header as name (u16 length) and value (u32 length), frame count (u32), each frame (u32
/// length). Big-endian.
fn encode_entry(status: StatusCode, headers: &HeaderMap, frames: &[Bytes]) -> Vec<u8> {
    let size: usize = frames.iter().map(|f| f.len() + 4).sum::<usize>()
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 6)
            .sum::<usize>();
    let mut out = Vec::with_capacity(size + 11);
    out.extend_from_slice(b"NC1");
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    let headers: Vec<_> = headers
        .iter()
        .filter(|(n, v)| n.as_str().len() <= usize::from(u16::MAX) && v.len() <= u32::MAX as usize)
        .take(usize::from(u16::MAX))
        .collect();
    out.extend_from_slice(&(headers.len() as u16).to_be_bytes());
    for (n, v) in headers {
        out.extend_from_slice(&(n.as_str().len() as u16).to_be_bytes());
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(&(frames.len() as u32).to_be_bytes());
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// The inverse of [`encode_entry`]; `None` for anything malformed (then it is a miss). Frames
/// are slices of `value`, not copies.
fn decode_entry(value: &Bytes) -> Option<(StatusCode, HeaderMap, Vec<Bytes>)> {
    let mut at = 0usize;
    let mut take = |n: usize| {
        let s = value.get(at..at.checked_add(n)?)?;
        at += n;
        Some((s, at - n))
    };
    if take(3)?.0 != b"NC1" {
        return None;
    }
    let u16_at = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let u32_at = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let status = StatusCode::from_u16(u16_at(take(2)?.0)).ok()?;
    let mut headers = HeaderMap::new();
    for _ in 0..u16_at(take(2)?.0) {
        let n = usize::from(u16_at(take(2)?.0));
        let name = http::HeaderName::from_bytes(take(n)?.0).ok()?;
        let n = u32_at(take(4)?.0);
        let val = HeaderValue::from_bytes(take(n)?.0).ok()?;
        headers.append(name, val);
    }
    let count = u32_at(take(4)?.0);
    let mut frames = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let n = u32_at(take(4)?.0);
        let (_, start) = take(n)?;
        frames.push(value.slice(start..start + n));
    }
    (at == value.len()).then_some((status, headers, frames))
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
    S: Service<Request<ChatRequest>, Response = Response<Body>> + Clone,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S>;

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
        if let Some(stored) = self.cache.get(&k) {
            return ResponseFuture {
                state: CacheState::Hit {
                    resp: Some(replay(stored)),
                },
            };
        }
        // The semantic tier below keys its index by the same exact key: hand it on.
        let mut req = req;
        req.extensions_mut().insert(ExactKey(k));
        if let Some(lookup) = self.cache.state.as_ref().and_then(|s| s.cache_get(&k)) {
            // The ready service goes into the future; a clone stays for the next call.
            let clone = self.inner.clone();
            let svc = std::mem::replace(&mut self.inner, clone);
            return ResponseFuture {
                state: CacheState::Lookup {
                    lookup: Box::pin(lookup),
                    svc: Some(Box::new((svc, req))),
                    key: k,
                    cache: self.cache.clone(),
                },
            };
        }
        ResponseFuture {
            state: CacheState::Miss {
                fut: self.inner.call(req),
                key: k,
                cache: Some(self.cache.clone()),
            },
        }
    }
}

/// A stored answer as a response.
fn replay((status, headers, frames): (StatusCode, HeaderMap, Arc<[Bytes]>)) -> Response<Body> {
    let mut resp = Response::new(Body::new(Replay { frames, next: 0 }));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp.headers_mut()
        .insert("x-nenya-cache", HeaderValue::from_static("hit"));
    resp
}

type Lookup = Pin<Box<dyn Future<Output = Option<Option<Bytes>>> + Send>>;

pin_project! {
    /// Response future of [`ResponseCacheService`].
    pub struct ResponseFuture<S>
    where
        S: Service<Request<ChatRequest>>,
    {
        #[pin]
        state: CacheState<S>,
    }
}

pin_project! {
    #[project = CacheProj]
    enum CacheState<S>
    where
        S: Service<Request<ChatRequest>>,
    {
        Pass { #[pin] fut: S::Future },
        Hit { resp: Option<Response<Body>> },
        Lookup {
            lookup: Lookup,
            // Boxed: a local hit or a plain miss never carries the request here.
            svc: Option<Box<(S, Request<ChatRequest>)>>,
            key: Key,
            cache: ResponseCache,
        },
        Miss { #[pin] fut: S::Future, key: Key, cache: Option<ResponseCache> },
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request<ChatRequest>, Response = Response<Body>>,
{
    type Output = Result<Response<Body>, S::Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                CacheProj::Pass { fut } => return fut.poll(cx),
                CacheProj::Hit { resp } => return Poll::Ready(Ok(resp.take().unwrap_or_default())),
                CacheProj::Lookup {
                    lookup,
                    svc,
                    key,
                    cache,
                } => {
                    let found = ready!(lookup.as_mut().poll(cx)).flatten();
                    let hit = found.and_then(|v| cache.shared_hit(*key, &v));
                    let Some((mut svc, req)) = svc.take().map(|b| *b) else {
                        return Poll::Ready(Ok(Response::default()));
                    };
                    match hit {
                        Some(stored) => CacheState::Hit {
                            resp: Some(replay(stored)),
                        },
                        None => CacheState::Miss {
                            fut: svc.call(req),
                            key: *key,
                            cache: Some(cache.clone()),
                        },
                    }
                }
                CacheProj::Miss { fut, key, cache } => return miss(fut, key, cache, cx),
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// The inner service's answer, teed into the cache when it is a `200`.
fn miss<F, E>(
    fut: Pin<&mut F>,
    key: &Key,
    cache: &mut Option<ResponseCache>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<Body>, E>>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
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
    headers.remove(&crate::services::router::ATTEMPTS_HEADER);
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
        let fed = dec.feed_ref(f, |ev| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What the shared store holds comes back as it went in.
        #[test]
        fn a_shared_entry_decodes_to_what_was_encoded(
            status in 200u16..600,
            headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,20}", "[ -~]{0,40}"), 0..6),
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
        ) {
            let status = StatusCode::from_u16(status).unwrap();
            let mut map = HeaderMap::new();
            for (n, v) in &headers {
                map.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
            let enc = Bytes::from(encode_entry(status, &map, &frames));
            let (s2, h2, f2) = decode_entry(&enc).expect("decodes");
            prop_assert_eq!(s2, status);
            prop_assert_eq!(h2, map);
            prop_assert_eq!(f2, frames);
        }

        /// Anything else in the store (corrupt, truncated, another writer's) is a miss, never
        /// a panic.
        #[test]
        fn any_bytes_decode_or_are_refused_without_panic(
            raw in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 0usize..300,
        ) {
            let _ = decode_entry(&Bytes::from(raw.clone()));
            let mut good = encode_entry(StatusCode::OK, &HeaderMap::new(), &[Bytes::from(raw)]);
            if cut < good.len() {
                good.truncate(cut);
                prop_assert!(decode_entry(&Bytes::from(good)).is_none(), "a truncated entry is refused");
            }
        }
    }
}
