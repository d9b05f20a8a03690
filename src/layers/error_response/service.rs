use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;
use tower_layer::Layer;

use crate::Body;
use crate::error::Error;
use crate::model::ApiFormat;

/// Layer that applies [`ErrorResponse`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorResponseLayer {
    _priv: (),
}

impl ErrorResponseLayer {
    /// A new layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;
    fn layer(&self, inner: S) -> ErrorResponse<S> {
        ErrorResponse { inner }
    }
}

/// Maps the inner service's errors to client-format error responses.
#[derive(Debug, Clone)]
pub struct ErrorResponse<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ErrorResponse<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Into<Error>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // An inner readiness error cannot be answered per request; treat it as ready and let
        // `call` surface the failure.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                let e: Error = e.into();
                tracing::error!(error = %e, "inner service failed readiness");
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let format = ApiFormat::for_errors(req.uri().path());
        ResponseFuture {
            inner: self.inner.call(req),
            format,
        }
    }
}

pin_project! {
    /// Response future of [`ErrorResponse`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        format: ApiFormat,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<Error>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(r) => r,
            Err(e) => {
                let e: Error = e.into();
                tracing::info!(
                    error_kind = e.kind().as_str(),
                    message = e.message(),
                    "request failed"
                );
                e.into_response(*this.format)
            }
        }))
    }
}
