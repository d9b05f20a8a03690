use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, header};
use pin_project_lite::pin_project;
use subtle::{Choice, ConstantTimeEq};
use tower::Service;
use tower_layer::Layer;

use bytes::Bytes;

use crate::config::Secret;
use crate::error::{ErrorKind, error_response_with};
use crate::model::ApiFormat;

/// Paths that never require a token.
const OPEN_PATHS: &[&str] = &["/healthz", "/statsz", "/metrics"];

/// Layer that applies [`Auth`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    tokens: Arc<[Secret]>,
}

impl AuthLayer {
    /// Accepts any of `tokens`. An empty list disables the check.
    pub fn new(tokens: impl IntoIterator<Item = Secret>) -> Self {
        Self {
            tokens: tokens
                .into_iter()
                .filter(|t| !t.expose().is_empty())
                .collect(),
        }
    }

    /// Whether any token is configured.
    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// Checks the client token before calling the inner service.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Arc<[Secret]>,
}

fn presented<B>(req: &Request<B>) -> Option<&[u8]> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(v[7..].trim_ascii());
        }
        return None;
    }
    req.headers()
        .get("x-api-key")
        .map(|v| v.as_bytes().trim_ascii())
}

impl<S> Auth<S> {
    fn accepts(&self, token: &[u8]) -> bool {
        // Every configured token is compared, so timing does not reveal which one matched.
        let mut ok = Choice::from(0);
        for t in self.tokens.iter() {
            ok |= t.expose().as_bytes().ct_eq(token);
        }
        ok.into()
    }
}

impl<S, B, ResBody> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        if !self.tokens.is_empty() && !OPEN_PATHS.contains(&path) {
            let format = ApiFormat::for_errors(path);
            let verdict = match presented(&req) {
                None => {
                    Some("missing client token (send `Authorization: Bearer …` or `x-api-key`)")
                }
                Some(t) if !self.accepts(t) => Some("invalid client token"),
                Some(_) => None,
            };
            if let Some(msg) = verdict {
                tracing::info!(path, "client authentication failed");
                return ResponseFuture {
                    state: State::Reject {
                        resp: Some(error_response_with(format, ErrorKind::Unauthorized, msg)),
                    },
                };
            }
        }
        req.headers_mut().remove(header::AUTHORIZATION);
        req.headers_mut().remove("x-api-key");
        ResponseFuture {
            state: State::Inner {
                fut: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    /// Response future of [`Auth`].
    pub struct ResponseFuture<F, ResBody> {
        #[pin]
        state: State<F, ResBody>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<F, ResBody> {
        Inner { #[pin] fut: F },
        Reject { resp: Option<Response<ResBody>> },
    }
}

impl<F, E, ResBody> Future for ResponseFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Proj::Inner { fut } => fut.poll(cx),
            Proj::Reject { resp } => Poll::Ready(Ok(resp.take().unwrap_or_else(|| {
                error_response_with(
                    ApiFormat::OpenAi,
                    ErrorKind::Internal,
                    "future polled after completion",
                )
            }))),
        }
    }
}
