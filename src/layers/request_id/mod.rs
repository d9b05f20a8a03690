//! A request id on every request: the client's `x-request-id` when it sent a sane one, else a
//! fresh random one. It is put in the request (header and [`RequestId`] extension), echoed on
//! the response, and every log line of the request carries it (a `tracing` span).
//!
//! ```
//! use nenya::layers::RequestIdLayer;
//! use nenya::Body;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .service(service_fn(|_req: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
//!     }));
//! let resp = svc.clone().oneshot(http::Request::new(Body::empty())).await.unwrap();
//! assert_eq!(resp.headers()["x-request-id"].len(), 32);
//! let mine = http::Request::get("/").header("x-request-id", "req-42").body(Body::empty()).unwrap();
//! assert_eq!(svc.oneshot(mine).await.unwrap().headers()["x-request-id"], "req-42");
//! # }
//! ```

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::Service;
use tower_layer::Layer;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::layers::guard::WithHeader;

const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, as a request extension.
///
/// ```
/// let id = nenya::layers::RequestId::new("abc");
/// assert_eq!(id.as_str(), "abc");
/// ```
#[derive(Debug, Clone)]
pub struct RequestId(Id);

/// The layer keeps the header value it checked (a reference count to copy); [`RequestId::new`]
/// keeps any string.
#[derive(Debug, Clone)]
enum Id {
    Header(HeaderValue),
    Owned(String),
}

impl RequestId {
    /// Wraps an id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(Id::Owned(id.into()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only values that passed `acceptable` or came from `fresh`: visible ASCII.
            Id::Header(v) => v.to_str().unwrap_or("invalid"),
            Id::Owned(s) => s,
        }
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RequestId {}

/// Layer that applies [`RequestIdService`].
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer {
    _priv: (),
}

impl RequestIdLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> RequestIdService<S> {
        RequestIdService {
            inner,
            key: {
                let seed = RandomState::new();
                [seed.hash_one(0u8), seed.hash_one(1u8)]
            },
        }
    }
}

/// Sets, propagates and echoes the request id.
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
    /// The key of the ids this service makes (see [`fresh`]).
    key: [u64; 2],
}

/// A client id is kept when it is short and printable (it ends up in logs and headers).
fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// A fresh id: 128 bits, two 64-bit halves each mixed (the SplitMix64 finaliser, a
/// bijection) from a process-wide counter and a key the layer drew at random. Counter values
/// never repeat, so neither do the halves made with one key; ids are unique, unpredictable
/// across runs, and not secret. Two multiplies a half where hashing the counter and the clock
/// took two SipHash runs and a clock read.
fn fresh(key: [u64; 2]) -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let a = mix(n.wrapping_add(key[0]));
    let b = mix(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key[1]);
    // 32 lowercase hex digits, written straight into the header (no `format!` machinery).
    let mut hex = [0u8; 32];
    for (i, byte) in a
        .to_be_bytes()
        .into_iter()
        .chain(b.to_be_bytes())
        .enumerate()
    {
        hex[2 * i] = b"0123456789abcdef"[usize::from(byte >> 4)];
        hex[2 * i + 1] = b"0123456789abcdef"[usize::from(byte & 15)];
    }
    // Owned by the `Bytes` itself: one allocation, and clones of the value (the request's
    // header, its extension, the echo) share it.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The SplitMix64 finaliser: a bijection on `u64` whose outputs look random.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl<S, B, R> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let value = match req.headers().get(&HEADER) {
            Some(v) if acceptable(v) => v.clone(),
            _ => fresh(self.key),
        };
        let span = tracing::info_span!("request", request_id = %value.to_str().unwrap_or("invalid"), method = %req.method(), path = %req.uri().path());
        req.headers_mut().insert(HEADER, value.clone());
        req.extensions_mut()
            .insert(RequestId(Id::Header(value.clone())));
        let fut = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        WithHeader::new(fut.instrument(span), HEADER, Some(value))
    }
}

/// Response future of [`RequestIdService`]: the request's span, and the id echoed.
pub type ResponseFuture<F> = WithHeader<Instrumented<F>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Body;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    /// What the inner service saw: the extension's id and the header's.
    async fn seen(req: Request<Body>) -> (String, String, String) {
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .service(service_fn(|req: Request<Body>| async move {
                let ext = req
                    .extensions()
                    .get::<RequestId>()
                    .map(|r| r.as_str().to_owned());
                let hdr = req.headers()[&HEADER]
                    .to_str()
                    .unwrap_or_default()
                    .to_owned();
                let mut resp = Response::new(Body::empty());
                resp.headers_mut().insert(
                    "x-seen",
                    HeaderValue::from_str(&format!("{}|{hdr}", ext.unwrap_or_default())).unwrap(),
                );
                Ok::<_, std::convert::Infallible>(resp)
            }));
        let resp = svc.oneshot(req).await.unwrap();
        let seen = resp.headers()["x-seen"].to_str().unwrap().to_owned();
        let (ext, hdr) = seen.split_once('|').unwrap();
        let echoed = resp.headers()[&HEADER].to_str().unwrap().to_owned();
        (ext.to_owned(), hdr.to_owned(), echoed)
    }

    #[tokio::test]
    async fn the_extension_the_header_and_the_echo_are_the_same_id() {
        let (ext, hdr, echoed) = seen(Request::new(Body::empty())).await;
        assert_eq!(ext.len(), 32);
        assert!(ext.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!((&ext, &hdr), (&echoed, &echoed));

        let mine = Request::get("/")
            .header("x-request-id", "req-42")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            seen(mine).await,
            ("req-42".into(), "req-42".into(), "req-42".into())
        );

        let bad = Request::get("/")
            .header("x-request-id", "has space")
            .body(Body::empty())
            .unwrap();
        let (ext, hdr, echoed) = seen(bad).await;
        assert_ne!(ext, "has space");
        assert_eq!((&ext, &hdr), (&echoed, &echoed));
    }

    #[test]
    fn fresh_ids_never_repeat_and_do_not_count_up() {
        let mut seen = std::collections::HashSet::new();
        let mut last = fresh([1, 2]);
        for key in [[1, 2], [1, 2], [3, 4], [0, 0]] {
            for _ in 0..5000 {
                let id = fresh(key);
                // Neighbours share no long run of digits: the counter does not show.
                let same = (id.as_bytes().iter())
                    .zip(last.as_bytes())
                    .filter(|(a, b)| a == b)
                    .count();
                assert!(same < 14, "{id:?} after {last:?}");
                assert!(seen.insert(id.clone()), "{id:?} twice");
                last = id;
            }
        }
    }

    #[test]
    fn ids_compare_by_their_text() {
        let from_header = RequestId(Id::Header(HeaderValue::from_static("abc")));
        assert_eq!(from_header, RequestId::new("abc"));
        assert_ne!(from_header, RequestId::new("abd"));
        assert_eq!(from_header.as_str(), "abc");
    }
}
