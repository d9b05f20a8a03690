//! A cap on in-flight requests per upstream (Nenya's `max_concurrent_requests`), so a burst
//! of agent sessions queues at the gateway instead of tripping the provider's own concurrency
//! limit.
//!
//! [`ConcurrencyLimitLayer`] wraps any service of `Request<B>` returning `Response<Body>`; a key
//! function names the request's slot pool and its size (the gateway keys by provider and model).
//! A request takes a slot before it is sent and holds it until its answer's body has been read
//! to the end or dropped, so a long stream counts for as long as it runs. When every slot is
//! taken, the request waits up to `queue_timeout` for one, then fails with `rate_limited` and a
//! `Retry-After` (the router moves on to the chain's next target).
//!
//! Unlike `tower::limit::ConcurrencyLimit`, pools are per key, the slot lives as long as the
//! streamed body, and a waiting request does not hold up `poll_ready` for requests of other
//! keys.
//!
//! ```
//! use std::time::Duration;
//! use nenya::layers::ConcurrencyLimitLayer;
//! use nenya::{Body, Error};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = ConcurrencyLimitLayer::new(Duration::from_millis(10), |_: &http::Request<()>| Some(("up".into(), 1)));
//! let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, Error>(http::Response::new(Body::from("streaming…")))
//! }));
//! let held = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! // The first answer's body is still unread: its slot is taken.
//! let err = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap_err();
//! assert_eq!(err.kind().as_str(), "rate_limited");
//! drop(held);
//! assert!(svc.ready().await.unwrap().call(http::Request::new(())).await.is_ok());
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;
use tower_layer::Layer;

use crate::error::{Error, ErrorKind};
use crate::{Body, BoxError};

#[derive(Default)]
struct Pools {
    pools: Mutex<HashMap<Arc<str>, Arc<Semaphore>>>,
}

impl Pools {
    fn pool(&self, key: &Arc<str>, size: usize) -> Arc<Semaphore> {
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(size.max(1))))
            .clone()
    }

    /// `(in use, size)` per key, for `/statsz` and metrics.
    fn usage(&self) -> Vec<(Arc<str>, usize)> {
        let map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, s)| (k.clone(), s.available_permits()))
            .collect()
    }
}

/// Layer that applies [`ConcurrencyLimit`].
pub struct ConcurrencyLimitLayer<K> {
    pools: Arc<Pools>,
    key: Arc<K>,
    queue_timeout: Duration,
}

impl<K> Clone for ConcurrencyLimitLayer<K> {
    fn clone(&self) -> Self {
        Self {
            pools: self.pools.clone(),
            key: self.key.clone(),
            queue_timeout: self.queue_timeout,
        }
    }
}

impl<K> std::fmt::Debug for ConcurrencyLimitLayer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("queue_timeout", &self.queue_timeout)
            .finish_non_exhaustive()
    }
}

impl<K> ConcurrencyLimitLayer<K> {
    /// `key` names a request's pool and its size (`None`: not limited); a request waits up to
    /// `queue_timeout` for a slot.
    pub fn new(queue_timeout: Duration, key: K) -> Self {
        Self {
            pools: Arc::default(),
            key: Arc::new(key),
            queue_timeout,
        }
    }

    /// Free slots per pool seen so far.
    pub fn available(&self) -> Vec<(Arc<str>, usize)> {
        self.pools.usage()
    }
}

impl<S, K> Layer<S> for ConcurrencyLimitLayer<K> {
    type Service = ConcurrencyLimit<S, K>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// Holds a slot of its pool for each request, until the answer's body ends.
pub struct ConcurrencyLimit<S, K> {
    inner: S,
    layer: ConcurrencyLimitLayer<K>,
}

impl<S: Clone, K> Clone for ConcurrencyLimit<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, K> std::fmt::Debug for ConcurrencyLimit<S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type Acquire = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

impl<S, K, B> Service<Request<B>> for ConcurrencyLimit<S, K>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Error> + Clone,
    K: Fn(&Request<B>) -> Option<(Arc<str>, usize)>,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ConcurrencyFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some((key, size)) = (self.layer.key)(&req) else {
            return ConcurrencyFuture::calling(self.inner.call(req), None);
        };
        let pool = self.layer.pools.pool(&key, size);
        // Fast path: a free slot, no allocation, no wait.
        if let Ok(permit) = pool.clone().try_acquire_owned() {
            return ConcurrencyFuture::calling(self.inner.call(req), Some(permit));
        }
        tracing::debug!(pool = %key, "all slots taken; queueing");
        let wait = self.layer.queue_timeout;
        let acquire: Acquire = Box::pin(async move {
            tokio::time::timeout(wait, pool.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        });
        // The ready inner service goes with the waiting request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ConcurrencyFuture {
            state: State::Waiting {
                acquire,
                inner: Some(inner),
                req: Some(req),
                key,
                wait,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`ConcurrencyLimit`].
    pub struct ConcurrencyFuture<S: Service<Request<B>>, B> {
        #[pin]
        state: State<S, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<B>>, B> {
        Waiting { acquire: Acquire, inner: Option<S>, req: Option<Request<B>>, key: Arc<str>, wait: Duration },
        Calling { #[pin] fut: S::Future, permit: Option<OwnedSemaphorePermit> },
    }
}

impl<S: Service<Request<B>>, B> ConcurrencyFuture<S, B> {
    fn calling(fut: S::Future, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            state: State::Calling { fut, permit },
        }
    }
}

impl<S, B> Future for ConcurrencyFuture<S, B>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Error>,
{
    type Output = Result<Response<Body>, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting {
                    acquire,
                    inner,
                    req,
                    key,
                    wait,
                } => {
                    let permit = std::task::ready!(acquire.as_mut().poll(cx));
                    let Some(permit) = permit else {
                        let msg = format!(
                            "`{key}` is at its concurrency limit; no slot freed within {} s",
                            wait.as_secs_f32()
                        );
                        return Poll::Ready(Err(Error::new(ErrorKind::RateLimited, msg)
                            .with_retry_after(Duration::from_secs(1))));
                    };
                    let (Some(mut svc), Some(r)) = (inner.take(), req.take()) else {
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::Internal,
                            "future polled after completion",
                        )));
                    };
                    let fut = svc.call(r);
                    this.state.set(State::Calling {
                        fut,
                        permit: Some(permit),
                    });
                }
                StateProj::Calling { fut, permit } => {
                    let out = std::task::ready!(fut.poll(cx));
                    return Poll::Ready(out.map(|resp| match permit.take() {
                        None => resp,
                        Some(p) => resp.map(|b| {
                            Body::new(Holding {
                                inner: b,
                                _permit: p,
                            })
                        }),
                    }));
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that keeps its request's slot until it ends or is dropped.
    struct Holding {
        #[pin]
        inner: Body,
        _permit: OwnedSemaphorePermit,
    }
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
