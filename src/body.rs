//! The one body type the gateway hands around.
//!
//! [`Body`] wraps any `http_body::Body<Data = Bytes>` behind one boxed type so the stack has a
//! single, nameable response body without exposing `http-body-util` combinators in the public API.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;

/// A streaming HTTP body of [`Bytes`] frames, used for every request and response in nenya.
///
/// ```
/// use nenya::Body;
/// use http_body_util::BodyExt;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let body = Body::from("hello");
/// let bytes = body.collect().await.unwrap().to_bytes();
/// assert_eq!(&bytes[..], b"hello");
/// # }
/// ```
pub struct Body {
    inner: UnsyncBoxBody<Bytes, BoxError>,
}

impl Body {
    /// Wraps any body whose data is [`Bytes`]. A `Body` is returned as it is, not boxed again
    /// (layers generic over their body type call this on what may already be one).
    ///
    /// ```
    /// use nenya::Body;
    /// use http_body::Body as _;
    /// let body = Body::new(Body::from("hello"));
    /// assert_eq!(body.size_hint().exact(), Some(5));
    /// ```
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Each box is an allocation and one more dynamic call per frame.
        let mut slot = Some(body);
        if let Some(b) = (&mut slot as &mut dyn std::any::Any)
            .downcast_mut::<Option<Body>>()
            .and_then(Option::take)
        {
            return b;
        }
        match slot {
            Some(body) => Self {
                inner: body.map_err(Into::into).boxed_unsync(),
            },
            // Only taken above, when it was a `Body`.
            None => Self::empty(),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::new(http_body_util::Empty::new())
    }

    /// A body holding exactly `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::new(http_body_util::Full::new(bytes.into()))
    }

    /// A body of these chunks in order, one frame each (empty ones skipped), with its exact
    /// length known up front (a `Content-Length`, not chunked encoding). Pieces of a buffer
    /// sent without joining them: hyper hands them to one vectored write.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body as _;
    /// use http_body_util::BodyExt;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let body = nenya::Body::chunks([Bytes::from("{\"model\": "), Bytes::new(), Bytes::from("\"m\"}")]);
    /// assert_eq!(body.size_hint().exact(), Some(14));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), r#"{"model": "m"}"#);
    /// # }
    /// ```
    pub fn chunks(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        // Up to three chunks (a forwarded request's) are kept in the body itself; more go in
        // a queue after them.
        let mut few: [Option<Bytes>; 3] = Default::default();
        let mut rest = std::collections::VecDeque::new();
        let mut n = 0;
        for c in chunks.into_iter().filter(|c| !c.is_empty()) {
            match few.get_mut(n) {
                Some(slot) => *slot = Some(c),
                None => rest.push_back(c),
            }
            n += 1;
        }
        match n {
            0 => Self::empty(),
            1 => Self::full(few[0].take().unwrap_or_default()),
            _ => Self::new(Chunks { few, next: 0, rest }),
        }
    }
}

/// The body of [`Body::chunks`]: `few` from `next` on, then `rest`.
struct Chunks {
    few: [Option<Bytes>; 3],
    next: usize,
    rest: std::collections::VecDeque<Bytes>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let c = match this.few.get_mut(this.next).and_then(Option::take) {
            Some(c) => {
                this.next += 1;
                Some(c)
            }
            None => this.rest.pop_front(),
        };
        Poll::Ready(c.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.few.iter().all(Option::is_none) && self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        let few = self.few.iter().flatten();
        SizeHint::with_exact(few.chain(&self.rest).map(|c| c.len() as u64).sum())
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}
impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Self {
        Self::full(b)
    }
}
impl From<String> for Body {
    fn from(b: String) -> Self {
        Self::full(b)
    }
}
impl From<&'static str> for Body {
    fn from(b: &'static str) -> Self {
        Self::full(Bytes::from_static(b.as_bytes()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Watches a body's frames as they pass by, without changing or delaying them (see
/// [`Observed`]).
pub trait Observer: Send + 'static {
    /// Each data frame, in order.
    fn on_data(&mut self, data: &Bytes);
    /// Called once: `complete` when the body ended cleanly, `false` on an error or when it was
    /// dropped before its end.
    fn on_end(&mut self, complete: bool);
}

/// A [`Body`] with an [`Observer`] looking at it (the usage tap, the cache's tee).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::BodyExt;
/// use nenya::body::{Observed, Observer};
/// struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);
/// impl Observer for Count {
///     fn on_data(&mut self, d: &Bytes) { self.0.fetch_add(d.len(), std::sync::atomic::Ordering::SeqCst); }
///     fn on_end(&mut self, _complete: bool) {}
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
/// let body = Observed::new(nenya::Body::from("hello"), Count(n.clone()));
/// body.collect().await.unwrap();
/// assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 5);
/// # }
/// ```
pub struct Observed<O: Observer> {
    inner: Body,
    observer: O,
    ended: bool,
}

impl<O: Observer> Observed<O> {
    /// `inner`, watched by `observer`.
    pub fn new(inner: Body, observer: O) -> Self {
        Self {
            inner,
            observer,
            ended: false,
        }
    }

    fn end(&mut self, complete: bool) {
        if !self.ended {
            self.ended = true;
            self.observer.on_end(complete);
        }
    }
}

impl<O: Observer + Unpin> http_body::Body for Observed<O> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.observer.on_data(&data);
                }
                // A sized body says it is done without a final `None` poll.
                if self.inner.is_end_stream() {
                    self.end(true);
                }
            }
            Some(Err(_)) => self.end(false),
            None => self.end(true),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<O: Observer> Drop for Observed<O> {
    fn drop(&mut self) {
        self.end(false);
    }
}
