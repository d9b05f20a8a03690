use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, header};
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower::Service;
use tower_layer::Layer;

use crate::adapters::decode_client_body;
use crate::error::{Error, ErrorKind};
use crate::model::{ApiFormat, ChatRequest};
use crate::{Body, BoxError};

/// Layer that applies [`Decode`].
#[derive(Debug, Clone, Copy)]
pub struct DecodeLayer {
    max_body_bytes: usize,
    read_timeout: Duration,
}

/// How long a client may take to send its whole body, by default.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

impl DecodeLayer {
    /// Decodes bodies of at most `max_body_bytes`, read within
    /// [`DEFAULT_BODY_READ_TIMEOUT`].
    pub fn new(max_body_bytes: u64) -> Self {
        Self {
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            read_timeout: DEFAULT_BODY_READ_TIMEOUT,
        }
    }

    /// A client that has not sent its whole body within `timeout` gets `request_timeout`
    /// (408), so a slow sender cannot hold a connection and its buffer forever.
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }
}

impl<S> Layer<S> for DecodeLayer {
    type Service = Decode<S>;
    fn layer(&self, inner: S) -> Decode<S> {
        Decode {
            inner,
            max_body_bytes: self.max_body_bytes,
            read_timeout: self.read_timeout,
        }
    }
}

/// Decodes `Request<B>` into `Request<ChatRequest>` for the inner service.
#[derive(Debug, Clone)]
pub struct Decode<S> {
    inner: S,
    max_body_bytes: usize,
    read_timeout: Duration,
}

impl<S, B> Service<Request<B>> for Decode<S>
where
    S: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture<B, S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(format) = ApiFormat::from_path(req.uri().path()) else {
            return ResponseFuture::failed(Error::new(ErrorKind::NotFound, "not a chat endpoint"));
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return ResponseFuture::failed(too_large(self.max_body_bytes));
        }
        // The ready service goes into the future; a fresh clone stays behind for the next call.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        ResponseFuture {
            state: State::Reading {
                fut: Limited::new(body, self.max_body_bytes).collect(),
                parts: Some(parts),
                svc: Some(svc),
                format,
                limit: self.max_body_bytes,
                deadline: tokio::time::sleep(self.read_timeout),
                timeout: self.read_timeout,
            },
        }
    }
}

fn too_large(limit: usize) -> Error {
    Error::new(
        ErrorKind::BodyTooLarge,
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

pin_project! {
    /// Response future of [`Decode`].
    pub struct ResponseFuture<B, S, F>
    where
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<B, S, F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, S, F>
    where
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        Reading {
            #[pin] fut: Collect<Limited<B>>,
            parts: Option<Parts>,
            svc: Option<S>,
            format: ApiFormat,
            limit: usize,
            #[pin] deadline: tokio::time::Sleep,
            timeout: Duration,
        },
        Calling { #[pin] fut: F },
        Failed { err: Option<Error> },
    }
}

impl<B, S, F> ResponseFuture<B, S, F>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    fn failed(err: Error) -> Self {
        Self {
            state: State::Failed { err: Some(err) },
        }
    }
}

impl<B, S> Future for ResponseFuture<B, S, S::Future>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    S: Service<Request<ChatRequest>, Response = Response<Body>, Error = Error>,
{
    type Output = Result<Response<Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Reading {
                    fut,
                    parts,
                    svc,
                    format,
                    limit,
                    deadline,
                    timeout,
                } => {
                    let read = match fut.poll(cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            ready!(deadline.poll(cx));
                            return Poll::Ready(Err(Error::new(
                                ErrorKind::RequestTimeout,
                                format!(
                                    "the request body did not arrive within {} s",
                                    timeout.as_secs()
                                ),
                            )));
                        }
                    };
                    let bytes = match read {
                        Ok(c) => c.to_bytes(),
                        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                            return Poll::Ready(Err(too_large(*limit)));
                        }
                        Err(e) => {
                            return Poll::Ready(Err(Error::new(
                                ErrorKind::InvalidRequest,
                                "the request body could not be read",
                            )
                            .with_source(e)));
                        }
                    };
                    let chat = match decode_client_body(*format, bytes) {
                        Ok(c) => c,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    let (Some(parts), Some(mut svc)) = (parts.take(), svc.take()) else {
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::Internal,
                            "future polled after completion",
                        )));
                    };
                    State::Calling {
                        fut: svc.call(Request::from_parts(parts, chat)),
                    }
                }
                StateProj::Calling { fut } => return fut.poll(cx),
                StateProj::Failed { err } => {
                    return Poll::Ready(Err(err.take().unwrap_or_else(|| {
                        Error::new(ErrorKind::Internal, "future polled after completion")
                    })));
                }
            };
            this.state.set(next);
        }
    }
}
