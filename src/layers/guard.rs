//! The response future shared by layers that either pass a request on or answer it
//! themselves ([`Auth`](crate::layers::Auth), [`OriginGuard`](crate::layers::OriginGuard)).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use crate::error::{ErrorKind, error_response_with};
use crate::model::ApiFormat;

pin_project! {
    /// Either the inner service's future or a ready refusal.
    ///
    /// ```
    /// use nenya::layers::guard::GuardFuture;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let f: GuardFuture<std::future::Ready<Result<http::Response<nenya::Body>, ()>>, nenya::Body> =
    ///     GuardFuture::reject(http::Response::new(nenya::Body::empty()));
    /// assert!(f.await.is_ok());
    /// # }
    /// ```
    pub struct GuardFuture<F, ResBody> {
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

impl<F, ResBody> GuardFuture<F, ResBody> {
    /// Passes the request on.
    pub fn inner(fut: F) -> Self {
        Self {
            state: State::Inner { fut },
        }
    }

    /// Answers with `resp`.
    pub fn reject(resp: Response<ResBody>) -> Self {
        Self {
            state: State::Reject { resp: Some(resp) },
        }
    }
}

impl<F, E, ResBody> Future for GuardFuture<F, ResBody>
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

pin_project! {
    /// Either the inner service's future or a ready [`Error`](crate::Error), for layers on the
    /// typed request whose refusals travel as errors (the router may fail over on them).
    ///
    /// ```
    /// use nenya::layers::guard::ErrOr;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let f: ErrOr<std::future::Ready<Result<(), nenya::Error>>> =
    ///     ErrOr::err(nenya::Error::new(nenya::ErrorKind::RateLimited, "slow down"));
    /// assert!(f.await.is_err());
    /// # }
    /// ```
    pub struct ErrOr<F> {
        #[pin]
        state: ErrState<F>,
    }
}

pin_project! {
    #[project = ErrProj]
    enum ErrState<F> {
        Inner { #[pin] fut: F },
        Err { err: Option<crate::Error> },
    }
}

impl<F> ErrOr<F> {
    /// Passes the request on.
    pub fn inner(fut: F) -> Self {
        Self {
            state: ErrState::Inner { fut },
        }
    }

    /// Fails with `err`.
    pub fn err(err: crate::Error) -> Self {
        Self {
            state: ErrState::Err { err: Some(err) },
        }
    }
}

impl<F, T> Future for ErrOr<F>
where
    F: Future<Output = Result<T, crate::Error>>,
{
    type Output = Result<T, crate::Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ErrProj::Inner { fut } => fut.poll(cx),
            ErrProj::Err { err } => Poll::Ready(Err(err.take().unwrap_or_else(|| {
                crate::Error::new(ErrorKind::Internal, "future polled after completion")
            }))),
        }
    }
}

pin_project! {
    /// The inner future, with one header added to its response (when there is one to add).
    ///
    /// ```
    /// use nenya::layers::guard::WithHeader;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let inner = std::future::ready(Ok::<_, ()>(http::Response::new(())));
    /// let f = WithHeader::new(inner, http::HeaderName::from_static("x-a"), Some(http::HeaderValue::from_static("1")));
    /// assert_eq!(f.await.unwrap().headers()["x-a"], "1");
    /// # }
    /// ```
    pub struct WithHeader<F> {
        #[pin]
        fut: F,
        name: http::HeaderName,
        value: Option<http::HeaderValue>,
    }
}

impl<F> WithHeader<F> {
    /// Adds `name: value` (if `Some`) to `fut`'s response.
    pub fn new(fut: F, name: http::HeaderName, value: Option<http::HeaderValue>) -> Self {
        Self { fut, name, value }
    }
}

impl<F, R, E> Future for WithHeader<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.fut.poll(cx));
        if let (Ok(resp), Some(v)) = (&mut out, this.value.take()) {
            resp.headers_mut().insert(this.name.clone(), v);
        }
        Poll::Ready(out)
    }
}
