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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Wraps an id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

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
            seed: RandomState::new(),
        }
    }
}

/// Sets, propagates and echoes the request id.
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
    seed: RandomState,
}

/// A client id is kept when it is short and printable (it ends up in logs and headers).
fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

fn fresh(seed: &RandomState) -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let a = seed.hash_one((n, std::time::SystemTime::now()));
    let b = seed.hash_one((a, n));
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
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
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
            _ => fresh(&self.seed),
        };
        let id = value.to_str().unwrap_or("invalid").to_owned();
        let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
        req.headers_mut().insert(HEADER, value.clone());
        req.extensions_mut().insert(RequestId(id));
        let fut = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        WithHeader::new(fut.instrument(span), HEADER, Some(value))
    }
}

/// Response future of [`RequestIdService`]: the request's span, and the id echoed.
pub type ResponseFuture<F> = WithHeader<Instrumented<F>>;
