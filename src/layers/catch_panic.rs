//! [`CatchPanicLayer`]: a panic in any layer or service below becomes an `internal_error`
//! answer instead of a reset connection.
//!
//! The panic is reported by the process's panic hook (the binary installs
//! [`install_panic_hook`](crate::telemetry::install_panic_hook), which logs it through the
//! secret filter); the error sent to the client names no detail of it. Only the response
//! future is guarded: a panic while a body streams ends that one connection (tokio contains it
//! to the connection's task), which no layer here can turn into a well-formed answer any more.
//!
//! ```
//! use nenya::layers::CatchPanicLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new().layer(CatchPanicLayer::new()).service(service_fn(
//!     |_req: http::Request<()>| async move {
//!         if true { panic!("a bug") }
//!         Ok::<_, nenya::Error>(http::Response::new(nenya::Body::empty()))
//!     },
//! ));
//! # std::panic::set_hook(Box::new(|_| {}));
//! let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
//! assert_eq!(err.kind(), nenya::ErrorKind::Internal);
//! # }
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Request;
use pin_project_lite::pin_project;
use tower::Service;
use tower_layer::Layer;

use crate::error::{Error, ErrorKind};

/// Layer that applies [`CatchPanic`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer {
    _priv: (),
}

impl CatchPanicLayer {
    /// A new layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// Turns a panic in `call` or in the response future into [`ErrorKind::Internal`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CatchPanic<S>
where
    S: Service<Request<B>>,
    S::Error: Into<Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = CatchPanicFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(fut) => CatchPanicFuture { inner: Some(fut) },
            Err(_) => CatchPanicFuture { inner: None },
        }
    }
}

pin_project! {
    /// Response future of [`CatchPanic`].
    pub struct CatchPanicFuture<F> {
        #[pin]
        inner: Option<F>,
    }
}

fn panicked() -> Error {
    Error::new(ErrorKind::Internal, "the gateway failed on this request")
}

impl<F, R, E> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<Error>,
{
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(fut) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(panicked()));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(r)) => Poll::Ready(r.map_err(Into::into)),
            Err(_) => {
                // Never poll a future that panicked again.
                this.inner.set(None);
                Poll::Ready(Err(panicked()))
            }
        }
    }
}
