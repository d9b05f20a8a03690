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
