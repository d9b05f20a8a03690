//! The generic text-rewriting layer behind [`RedactLayer`](crate::layers::RedactLayer) and
//! [`EntropyLayer`](crate::layers::EntropyLayer): any [`TextScrubber`] becomes a layer over
//! `Request<ChatRequest>` that rewrites every text the upstream will read, in place, and
//! returns the inner future untouched (no boxing, no allocation when nothing matches).
//!
//! ```
//! use nenya::layers::{ScrubLayer, TextScrubber};
//! #[derive(Clone)]
//! struct Shout;
//! impl TextScrubber for Shout {
//!     const NAME: &'static str = "shout";
//!     fn scrub(&self, text: &str) -> Option<String> {
//!         text.contains("psst").then(|| text.replace("psst", "PSST"))
//!     }
//! }
//! let layer = ScrubLayer::new(Shout);
//! # let _ = layer;
//! ```

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use http::Request;
use serde_json::Value;
use tower::Service;
use tower_layer::Layer;

use crate::model::{ChatRequest, TextSlot};

/// One secret found in a text (by [`Redactor::find`](crate::layers::Redactor::find) or
/// [`EntropyDetector::find`](crate::layers::EntropyDetector::find)).
///
/// ```
/// let r = nenya::layers::Redactor::builtin();
/// let f = r.find("key: AKIAZ7TESTKEY0000001");
/// assert_eq!(f[0].kind, "aws_access_key_id");
/// assert_eq!(&"key: AKIAZ7TESTKEY0000001"[f[0].range.clone()], "AKIAZ7TESTKEY0000001");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Byte range of the secret in the text.
    pub range: Range<usize>,
    /// The credential kind (`aws_access_key_id`, `jwt`, `password_assignment`, …).
    pub kind: &'static str,
}

/// What a redacted secret is replaced with.
///
/// ```
/// use nenya::layers::{RedactLabel, Redactor};
/// let fixed = Redactor::new(&[] as &[&str], RedactLabel::Fixed("***".into())).unwrap();
/// assert_eq!(fixed.redact("AKIAQ3EXAMPLE7Z9K2LP").unwrap(), "***");
/// assert_eq!(RedactLabel::default(), RedactLabel::PerKind);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RedactLabel {
    /// `[REDACTED:<kind>]` (the default): the model still knows what kind of value was there.
    #[default]
    PerKind,
    /// A fixed string, e.g. Nenya's `[REDACTED]`.
    Fixed(String),
}

/// Replaces each finding's range with its label.
pub(crate) fn apply(text: &str, found: &[Finding], label: &RedactLabel) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in found {
        if f.range.start < at {
            continue;
        }
        out.push_str(&text[at..f.range.start]);
        match label {
            RedactLabel::PerKind => {
                out.push_str("[REDACTED:");
                out.push_str(f.kind);
                out.push(']');
            }
            RedactLabel::Fixed(s) => out.push_str(s),
        }
        at = f.range.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Something that rewrites a text, or leaves it (`None`).
pub trait TextScrubber: Clone {
    /// Name for logs.
    const NAME: &'static str;
    /// The rewritten text, or `None` when nothing changes.
    fn scrub(&self, text: &str) -> Option<String>;
    /// Called when `scrub` failed internally (the request went on unchanged).
    fn record_failure(&self) {}
}

/// Layer that applies a [`TextScrubber`] to every request text (see the module docs).
#[derive(Debug, Clone)]
pub struct ScrubLayer<T> {
    scrubber: T,
}

impl<T> ScrubLayer<T> {
    /// Scrubs with `scrubber`.
    pub fn new(scrubber: T) -> Self {
        Self { scrubber }
    }
}

impl<S, T: Clone> Layer<S> for ScrubLayer<T> {
    type Service = Scrub<S, T>;
    fn layer(&self, inner: S) -> Scrub<S, T> {
        Scrub {
            inner,
            scrubber: self.scrubber.clone(),
        }
    }
}

/// Rewrites a typed chat request's texts, then calls the inner service. Fails open: should the
/// scrubber fail internally, the request goes on, with a warning and
/// [`TextScrubber::record_failure`].
#[derive(Debug, Clone)]
pub struct Scrub<S, T> {
    inner: S,
    scrubber: T,
}

impl<S, T> Service<Request<ChatRequest>> for Scrub<S, T>
where
    S: Service<Request<ChatRequest>>,
    T: TextScrubber,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ChatRequest>) -> S::Future {
        let t = &self.scrubber;
        match rewrite_texts(T::NAME, req.body_mut(), |s| t.scrub(s)) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                layer = T::NAME,
                texts = n,
                "rewrote texts before forwarding"
            ),
            Err(()) => t.record_failure(),
        }
        self.inner.call(req)
    }
}

/// Runs `f` over every redactable text, replacing those it returns a new text for. Tool-call
/// arguments are JSON: when they hold escapes, `f` sees each decoded string in them (a secret
/// after `\n` is still found) and the arguments are re-serialised only if one changed.
/// Returns how many texts changed, or `Err` when `f` panicked (the request is then left as it
/// was at that point, and the caller fails open).
pub(crate) fn rewrite_texts(
    layer: &'static str,
    req: &mut ChatRequest,
    mut f: impl FnMut(&str) -> Option<String>,
) -> Result<usize, ()> {
    let mut changed = 0usize;
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        req.for_each_text_slot_mut(false, |slot, s| {
            let new = match slot {
                TextSlot::ToolArguments if s.contains('\\') => rewrite_json(s, &mut f),
                _ => f(s),
            };
            if let Some(new) = new {
                *s = new;
                changed += 1;
            }
        });
    }));
    match run {
        Ok(()) => Ok(changed),
        Err(_) => {
            tracing::warn!(
                layer,
                "internal error while scanning the request; forwarding it unchanged"
            );
            Err(())
        }
    }
}

fn rewrite_json(s: &str, f: &mut impl FnMut(&str) -> Option<String>) -> Option<String> {
    let Ok(mut v) = serde_json::from_str::<Value>(s) else {
        return f(s); // not (yet) JSON: scan it as text
    };
    fn walk(v: &mut Value, f: &mut impl FnMut(&str) -> Option<String>) -> bool {
        match v {
            Value::String(s) => f(s).map(|new| *s = new).is_some(),
            Value::Array(a) => a.iter_mut().fold(false, |c, x| walk(x, f) | c),
            Value::Object(o) => o.values_mut().fold(false, |c, x| walk(x, f) | c),
            _ => false,
        }
    }
    if walk(&mut v, f) {
        serde_json::to_string(&v).ok()
    } else {
        None
    }
}

/// A whole-request rewrite that reports what it did in a response header (pruning,
/// compaction): the building block behind [`PruneLayer`](crate::layers::PruneLayer) and
/// [`CompactLayer`](crate::layers::CompactLayer).
pub trait RequestRewriter: Clone {
    /// The response header that reports the rewrite.
    const HEADER: &'static str;
    /// Rewrites `req` in place; the header value when something changed.
    fn rewrite(&self, req: &mut ChatRequest) -> Option<String>;
}

/// Layer that applies a [`RequestRewriter`] to every request.
///
/// ```
/// use nenya::layers::{PruneConfig, PruneLayer, RewriteLayer};
/// let layer: PruneLayer = RewriteLayer::new(PruneConfig::default());
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Default)]
pub struct RewriteLayer<T> {
    rewriter: T,
    rewritten: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl<T> RewriteLayer<T> {
    /// Rewrites with `rewriter`.
    pub fn new(rewriter: T) -> Self {
        Self {
            rewriter,
            rewritten: None,
        }
    }

    /// Counts the requests it changed into `counter` (for metrics).
    pub fn counting(mut self, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.rewritten = Some(counter);
        self
    }
}

impl<S, T: Clone> Layer<S> for RewriteLayer<T> {
    type Service = Rewrite<S, T>;
    fn layer(&self, inner: S) -> Rewrite<S, T> {
        Rewrite {
            inner,
            rewriter: self.rewriter.clone(),
            rewritten: self.rewritten.clone(),
        }
    }
}

/// Rewrites a typed chat request, then calls the inner service; adds the report header.
#[derive(Debug, Clone)]
pub struct Rewrite<S, T> {
    inner: S,
    rewriter: T,
    rewritten: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl<S, T, R> Service<Request<ChatRequest>> for Rewrite<S, T>
where
    S: Service<Request<ChatRequest>, Response = http::Response<R>>,
    T: RequestRewriter,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = crate::layers::guard::WithHeader<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ChatRequest>) -> Self::Future {
        let report = self.rewriter.rewrite(req.body_mut());
        if let Some(r) = &report {
            tracing::debug!(report = %r, header = T::HEADER, "rewrote the request");
            if let Some(c) = &self.rewritten {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        crate::layers::guard::WithHeader::new(
            self.inner.call(req),
            http::HeaderName::from_static(T::HEADER),
            report.and_then(|r| http::HeaderValue::try_from(r).ok()),
        )
    }
}
