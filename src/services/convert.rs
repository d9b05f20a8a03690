//! The transcoding body: upstream SSE in one format, client SSE in another, event by event.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::adapters::stream::StreamConverter;
use crate::error::{Error, ErrorKind};
use crate::sse;

/// Largest upstream SSE event accepted (a bigger one ends the stream with an error event).
pub const MAX_EVENT_BYTES: usize = 4 << 20;

pin_project! {
    /// Converts an upstream event stream into the client's format without buffering it: each
    /// upstream frame is decoded as it arrives and each client event goes out as its own frame.
    /// An upstream failure, a malformed event or a truncated stream ends the client stream with
    /// a well-formed error event in the client's format.
    pub struct TranscodeBody<B> {
        #[pin]
        inner: B,
        decoder: sse::Decoder,
        conv: StreamConverter,
        queue: VecDeque<Bytes>,
        scratch: Vec<Bytes>,
        finished: bool,
    }
}

impl<B> TranscodeBody<B> {
    /// Wraps an upstream body with a converter.
    pub fn new(inner: B, conv: StreamConverter) -> Self {
        Self {
            inner,
            decoder: sse::Decoder::new(MAX_EVENT_BYTES),
            conv,
            queue: VecDeque::new(),
            scratch: Vec::new(),
            finished: false,
        }
    }
}

impl<B> http_body::Body for TranscodeBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(b) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if *this.finished || this.conv.is_done() {
                return Poll::Ready(None);
            }
            let fail = |conv: &mut StreamConverter, kind: ErrorKind, msg: &str| {
                tracing::warn!(
                    error_kind = kind.as_str(),
                    "converted stream ended early: {msg}"
                );
                conv.error_event(kind, msg)
            };
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let mut events = Vec::new();
                    if let Err(e) = this.decoder.feed(&data, |ev| events.push(ev)) {
                        *this.finished = true;
                        let ev = fail(this.conv, ErrorKind::UpstreamProtocol, &e.to_string());
                        this.queue.push_back(ev);
                        continue;
                    }
                    for ev in events {
                        if let Err(e) = this.conv.push(ev, this.scratch) {
                            *this.finished = true;
                            let ev = fail(this.conv, e.kind(), e.message());
                            this.scratch.push(ev);
                            break;
                        }
                    }
                    this.queue.extend(this.scratch.drain(..));
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.finished = true;
                    let e = Error::from_boxed(e.into());
                    let kind = match e.kind() {
                        ErrorKind::UpstreamTimeout => ErrorKind::UpstreamTimeout,
                        _ => ErrorKind::UpstreamProtocol,
                    };
                    let ev = fail(this.conv, kind, e.message());
                    this.queue.push_back(ev);
                }
                Poll::Ready(None) => {
                    *this.finished = true;
                    let mut events = Vec::new();
                    let _ = this.decoder.finish(|ev| events.push(ev));
                    let mut res = Ok(());
                    for ev in events {
                        res = res.and(this.conv.push(ev, this.scratch));
                    }
                    if res.is_ok() {
                        res = this.conv.finish(this.scratch);
                    }
                    if let Err(e) = res {
                        let ev = fail(this.conv, e.kind(), e.message());
                        this.scratch.push(ev);
                    }
                    this.queue.extend(this.scratch.drain(..));
                }
            }
        }
    }
}
