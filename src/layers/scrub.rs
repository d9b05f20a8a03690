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

use std::collections::HashSet;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Request;
use serde_json::Value;
use tower::Service;
use tower_layer::Layer;

use crate::model::{ApiFormat, ChatRequest, Content, JsonMap, Part, TextSlot, Tool};

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
    /// Whether the strings of tool definitions and of the fields the decoder keeps as they came
    /// (unknown top-level and per-message fields: `metadata`, `user`, …) are scrubbed too: the
    /// upstream reads them as well. Off by default: a scrubber that flags random-looking strings
    /// would rewrite the ids such fields hold; the secret patterns of
    /// [`Redactor`](crate::layers::Redactor) do not.
    const SCRUBS_FIELDS: bool = false;
}

/// Layer that applies a [`TextScrubber`] to every request text (see the module docs).
#[derive(Debug, Clone)]
pub struct ScrubLayer<T> {
    scrubber: T,
    clean: Option<Arc<CleanTexts>>,
}

impl<T> ScrubLayer<T> {
    /// Scrubs with `scrubber`.
    pub fn new(scrubber: T) -> Self {
        Self {
            scrubber,
            clean: None,
        }
    }

    /// Remembers up to about `texts` texts the scrubber found nothing in (those of at least
    /// 256 bytes, by a seeded 128-bit hash), and does not scan them again: a
    /// coding agent re-sends its whole conversation with every turn, and only what is new in
    /// it then costs a scan. `0` remembers nothing. Every service this layer makes shares the
    /// one memory, in which each caller (the auth layer's [`Principal`](crate::model::Principal):
    /// each API key; requests without one, such as those with a client token, are one caller)
    /// has entries of its own, so no caller can time whether another sent a text; a text with
    /// a finding is always scanned (and rewritten) again. A scrubber that reads tool
    /// definitions too ([`TextScrubber::SCRUBS_FIELDS`]) remembers each definition found clean
    /// whole, by the same kind of key over all its strings: a coding agent's tool list, sent
    /// with every turn, is then scanned once.
    ///
    /// ```
    /// use nenya::layers::{RedactLayer, Redactor};
    /// let layer = RedactLayer::new(Redactor::builtin()).remember_clean(32_768);
    /// # let _ = layer;
    /// ```
    pub fn remember_clean(mut self, texts: usize) -> Self {
        self.clean = (texts > 0).then(|| Arc::new(CleanTexts::new(texts)));
        self
    }
}

impl<S, T: Clone> Layer<S> for ScrubLayer<T> {
    type Service = Scrub<S, T>;
    fn layer(&self, inner: S) -> Scrub<S, T> {
        Scrub {
            inner,
            scrubber: self.scrubber.clone(),
            clean: self.clean.clone(),
        }
    }
}

/// The texts a scrubber found nothing in, remembered by a seeded 128-bit XXH3 hash (random
/// seed per memory, so the keys cannot be computed ahead; mixed with the caller's, so one
/// caller's texts never answer for another's). Two generations of at most half
/// the capacity each: a full current generation becomes the previous one (dropping the older),
/// and a text found in the previous generation moves back to the current one, so the texts of
/// the conversations in use stay while those no longer sent age out. The lock is held for one
/// set lookup or insert, never across a scan or an `.await`.
///
/// A hash collision would pass a text with a secret unscanned; at 128 bits the chance is
/// about 2^-128 per pair of texts. Redaction guards against accidents, not against a client
/// set on sending its own secret (which could encode it past any pattern anyway).
pub(crate) struct CleanTexts {
    seed: u64,
    half: usize,
    sets: Mutex<[HashSet<u128, PassThrough>; 2]>,
}

impl std::fmt::Debug for CleanTexts {
    /// The sizes only: the seed stays out of logs, and the keys are of no use to read.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sets = self.sets();
        f.debug_struct("CleanTexts")
            .field("capacity", &(self.half * 2))
            .field("remembered", &(sets[0].len() + sets[1].len()))
            .finish_non_exhaustive()
    }
}

impl CleanTexts {
    /// Texts shorter than this are scanned every time: for them a scan costs about what the
    /// hash and the lookup would.
    const MIN_LEN: usize = 256;

    fn new(texts: usize) -> Self {
        let seed =
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8);
        Self {
            seed,
            half: (texts / 2).max(1),
            sets: Mutex::new(Default::default()),
        }
    }

    /// `text`'s key for the caller `scope` (see [`scope_of`]): another seed per caller.
    fn key(&self, scope: u64, text: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128_with_seed(text.as_bytes(), self.seed ^ scope)
    }

    /// The key of a whole tool definition for the caller `scope`: every string and key the
    /// scan of its fields reads, each framed by a tag and its length, so two different
    /// definitions never feed the hash the same bytes, and another seed than texts', so a
    /// definition's key is never a text's. A coding agent sends the same tool list with every
    /// turn: remembered clean, its few hundred short strings are not scanned again.
    fn tool_key(&self, scope: u64, tool: &Tool) -> u128 {
        fn str(h: &mut xxhash_rust::xxh3::Xxh3, tag: u8, s: &str) {
            h.update(&[tag]);
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        fn map(h: &mut xxhash_rust::xxh3::Xxh3, m: &JsonMap) {
            h.update(b"{");
            h.update(&(m.len() as u64).to_le_bytes());
            for (k, v) in m {
                str(h, b'k', k);
                value(h, v);
            }
        }
        fn value(h: &mut xxhash_rust::xxh3::Xxh3, v: &Value) {
            match v {
                Value::String(s) => str(h, b's', s),
                Value::Array(a) => {
                    h.update(b"[");
                    h.update(&(a.len() as u64).to_le_bytes());
                    for x in a {
                        value(h, x);
                    }
                }
                Value::Object(o) => map(h, o),
                // Numbers, booleans and nulls are not scanned; only their place counts.
                _ => h.update(b"0"),
            }
        }
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(self.seed ^ scope ^ Self::TOOL_DOMAIN);
        match tool {
            Tool::Function {
                description,
                parameters,
                extra,
                ..
            } => {
                h.update(b"f");
                match description {
                    Some(d) => str(&mut h, b'd', d),
                    None => h.update(b"-"),
                }
                value(&mut h, parameters);
                map(&mut h, extra);
            }
            Tool::Other(v) => {
                h.update(b"o");
                value(&mut h, v);
            }
        }
        h.digest128()
    }

    /// Mixed into the seed of tool keys.
    const TOOL_DOMAIN: u64 = 0x746f_6f6c_5f64_6566;

    fn sets(&self) -> std::sync::MutexGuard<'_, [HashSet<u128, PassThrough>; 2]> {
        // A panic while held cannot leave a set half-updated in a way that matters: at worst a
        // text is scanned again.
        self.sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `key` is remembered (moving it into the current generation).
    fn contains(&self, key: u128) -> bool {
        let mut sets = self.sets();
        if sets[0].contains(&key) {
            return true;
        }
        if sets[1].remove(&key) {
            self.insert_locked(&mut sets, key);
            return true;
        }
        false
    }

    fn insert(&self, key: u128) {
        let mut sets = self.sets();
        self.insert_locked(&mut sets, key);
    }

    fn insert_locked(&self, sets: &mut [HashSet<u128, PassThrough>; 2], key: u128) {
        if sets[0].len() >= self.half {
            sets[1] = std::mem::take(&mut sets[0]);
        }
        sets[0].insert(key);
    }

    /// `scrub` for `text`, skipped when the caller `scope` had `text` found clean before; a
    /// clean result of a long enough text is remembered for that caller.
    fn scrub(
        &self,
        scope: u64,
        text: &str,
        scrub: impl FnOnce(&str) -> Option<String>,
    ) -> Option<String> {
        if text.len() < Self::MIN_LEN {
            return scrub(text);
        }
        let key = self.key(scope, text);
        if self.contains(key) {
            return None;
        }
        let out = scrub(text);
        if out.is_none() {
            self.insert(key);
        }
        out
    }
}

/// Who a request's texts are remembered for: the caller's key name as the auth layer set it
/// ([`Principal`](crate::model::Principal)), hashed; 0 without one (no auth configured: one
/// caller).
fn scope_of<B>(req: &Request<B>) -> u64 {
    req.extensions()
        .get::<crate::model::Principal>()
        .map_or(0, |p| xxhash_rust::xxh3::xxh3_64(p.name.as_bytes()))
}

/// The keys are already uniform hashes: their low 64 bits index the set as they are.
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough(u64);

impl std::hash::BuildHasher for PassThrough {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys are hashed here (`write_u128`); fold anything else in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// Rewrites a typed chat request's texts, then calls the inner service. Fails open: should the
/// scrubber fail internally, the request goes on, with a warning and
/// [`TextScrubber::record_failure`].
#[derive(Debug, Clone)]
pub struct Scrub<S, T> {
    inner: S,
    scrubber: T,
    clean: Option<Arc<CleanTexts>>,
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
        let clean = self.clean.as_deref();
        // Each caller has memories of its own: a shared one would let a caller time whether
        // someone else sent a text (as shared prompt caches do).
        let scope = clean.map_or(0, |_| scope_of(&req));
        let scrub = |s: &str| match clean {
            Some(c) => c.scrub(scope, s, |s| t.scrub(s)),
            None => t.scrub(s),
        };
        let fields = T::SCRUBS_FIELDS.then_some(clean.map(|c| (c, scope)));
        match rewrite_texts(T::NAME, req.body_mut(), fields, scrub) {
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
/// was at that point, and the caller fails open). With `fields`, the tool definitions and
/// unknown fields are scrubbed too (see [`rewrite_fields`]), whole tool definitions found
/// clean remembered in the memory given, for the caller given.
pub(crate) fn rewrite_texts(
    layer: &'static str,
    req: &mut ChatRequest,
    fields: Option<Option<(&CleanTexts, u64)>>,
    mut f: impl FnMut(&str) -> Option<String>,
) -> Result<usize, ()> {
    let mut changed = 0usize;
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        // Look before writing: a request with nothing to rewrite is left untouched (no mutable
        // access), so it keeps the client's body and may be forwarded as it came. Each text is
        // offered to `f` once.
        let mut edits: Vec<Edit> = Vec::new();
        let mut n = 0usize;
        req.for_each_text_slot(false, |slot, s| {
            let new = match slot {
                TextSlot::ToolArguments if s.contains('\\') => rewrite_json(s, &mut f),
                _ => f(s),
            };
            if let Some(new) = new {
                edits.push(Edit {
                    at: n,
                    slot,
                    old: s.to_owned(),
                    new,
                });
            }
            n += 1;
        });
        if let Some(clean) = fields {
            // Written the long way: the client's body is dropped when one of them changes.
            changed += rewrite_fields(req, &mut f, clean);
        }
        if edits.is_empty() {
            return;
        }
        // The new texts written into the client's body, when that is exact (see
        // `adapters::splice`): the request can then still be forwarded as the client wrote it.
        // Should that ever panic, the new texts are still written (into the fields only).
        let spliced = std::panic::catch_unwind(AssertUnwindSafe(|| spliced_body(req, &edits)))
            .ok()
            .flatten();
        let mut edits = edits.into_iter().peekable();
        let mut n = 0usize;
        req.for_each_text_slot_mut(false, |_, s| {
            if let Some(e) = edits.next_if(|e| e.at == n) {
                *s = e.new;
                changed += 1;
            }
            n += 1;
        });
        if let Some(raw) = spliced {
            req.keep_client_body(raw);
        }
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

/// Scrubs every string value of what else the upstream reads besides the texts: the tool
/// definitions (descriptions, parameter schemas), the unknown fields the request keeps (top
/// level, per message, per content part) and the content parts nenya does not model (an
/// Anthropic `document` with a text source, a `search_result`, an OpenAI `file`, …); how many
/// changed. Opaque values are left alone (see [`opaque_key`], [`opaque_string`]). It looks
/// first, so a request with nothing to change there keeps the client's body and nothing is
/// copied. Tool definitions found clean are remembered whole in `clean` (for its caller).
fn rewrite_fields(
    req: &mut ChatRequest,
    f: &mut impl FnMut(&str) -> Option<String>,
    clean: Option<(&CleanTexts, u64)>,
) -> usize {
    let f = &mut |s: &str| if opaque_string(s) { None } else { f(s) };
    let mut changed = 0;
    if look_map(&req.extra, f) {
        changed += write_map(&mut req.extra, f);
    }
    for i in 0..req.messages.len() {
        let m = &req.messages[i];
        if look_map(&m.extra, f) || look_parts(&m.content, f) {
            let m = &mut req.messages[i];
            changed += write_map(&mut m.extra, f) + write_parts(&mut m.content, f);
        }
    }
    for i in 0..req.tools.as_ref().map_or(0, Vec::len) {
        let key = match (clean, req.tools.as_ref().map(|t| &t[i])) {
            (Some((c, scope)), Some(tool)) => Some((c, c.tool_key(scope, tool))),
            _ => None,
        };
        if key.is_some_and(|(c, k)| c.contains(k)) {
            continue;
        }
        let tool_changes = match req.tools.as_ref().map(|t| &t[i]) {
            Some(Tool::Function {
                description,
                parameters,
                extra,
                ..
            }) => {
                description.as_deref().is_some_and(|d| f(d).is_some())
                    || look(parameters, f)
                    || look_map(extra, f)
            }
            Some(Tool::Other(v)) => look(v, f),
            None => false,
        };
        if !tool_changes {
            if let Some((c, k)) = key {
                c.insert(k);
            }
            continue;
        }
        match req.tools.as_mut().map(|t| &mut t[i]) {
            Some(Tool::Function {
                description,
                parameters,
                extra,
                ..
            }) => {
                if let Some(new) = description.as_deref().and_then(&mut *f) {
                    *description = Some(new);
                    changed += 1;
                }
                changed += write(parameters, f) + write_map(extra, f);
            }
            Some(Tool::Other(v)) => changed += write(v, f),
            None => {}
        }
    }
    changed
}

/// Keys whose values are opaque to the provider's checks and must come back byte for byte
/// (a signature over thinking, encrypted reasoning or tool results): never rewritten.
fn opaque_key(k: &str) -> bool {
    matches!(k, "signature" | "encrypted_content")
}

/// A binary payload carried as text: a base64 `data:` URL, or a long run of base64 (an
/// image, a PDF or audio in a part nenya does not model). A secret pattern could only match
/// such a string by chance, and rewriting it would corrupt the file; scanning megabytes of it
/// would cost for nothing.
fn opaque_string(s: &str) -> bool {
    let b = s.as_bytes();
    if b.starts_with(b"data:") {
        return b[..b.len().min(128)].windows(8).any(|w| w == b";base64,");
    }
    b.len() >= 512
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_'))
}

/// Whether some string in `v` (outside opaque keys) is one `f` rewrites.
fn look(v: &Value, f: &mut impl FnMut(&str) -> Option<String>) -> bool {
    match v {
        Value::String(s) => f(s).is_some(),
        Value::Array(a) => a.iter().any(|x| look(x, f)),
        Value::Object(o) => look_map(o, f),
        _ => false,
    }
}

fn look_map(m: &JsonMap, f: &mut impl FnMut(&str) -> Option<String>) -> bool {
    if m.get("type").and_then(Value::as_str) == Some("redacted_thinking") {
        return false;
    }
    m.iter().any(|(k, x)| !opaque_key(k) && look(x, f))
}

/// [`look`], writing: how many strings changed.
fn write(v: &mut Value, f: &mut impl FnMut(&str) -> Option<String>) -> usize {
    match v {
        Value::Object(o) => write_map(o, f),
        Value::Array(a) => a.iter_mut().map(|x| write(x, f)).sum(),
        v => scrub_strings(v, f),
    }
}

fn write_map(m: &mut JsonMap, f: &mut impl FnMut(&str) -> Option<String>) -> usize {
    if m.get("type").and_then(Value::as_str) == Some("redacted_thinking") {
        return 0;
    }
    m.iter_mut()
        .filter(|(k, _)| !opaque_key(k))
        .map(|(_, x)| write(x, f))
        .sum()
}

/// Whether a string `f` rewrites stands in `content`'s parts outside their texts: in a part
/// nenya does not model, or in a modelled part's unknown fields.
fn look_parts(content: &Content, f: &mut impl FnMut(&str) -> Option<String>) -> bool {
    let Content::Parts(parts) = content else {
        return false;
    };
    parts.iter().any(|p| match p {
        Part::Other(v) => look(v, f),
        Part::ToolResult { content, extra, .. } => look_map(extra, f) || look_parts(content, f),
        Part::Text { extra, .. }
        | Part::Image { extra, .. }
        | Part::ToolUse { extra, .. }
        | Part::Thinking { extra, .. } => look_map(extra, f),
    })
}

/// [`look_parts`], writing: how many strings changed.
fn write_parts(content: &mut Content, f: &mut impl FnMut(&str) -> Option<String>) -> usize {
    let Content::Parts(parts) = content else {
        return 0;
    };
    parts
        .iter_mut()
        .map(|p| match p {
            Part::Other(v) => write(v, f),
            Part::ToolResult { content, extra, .. } => {
                write_map(extra, f) + write_parts(content, f)
            }
            Part::Text { extra, .. }
            | Part::Image { extra, .. }
            | Part::ToolUse { extra, .. }
            | Part::Thinking { extra, .. } => write_map(extra, f),
        })
        .sum()
}

/// A text slot's new text, found in the look pass.
struct Edit {
    /// Its place among the request's text slots.
    at: usize,
    slot: TextSlot,
    old: String,
    new: String,
}

/// The client's body with the `edits` written into it, if the request still has it and the
/// edits can be written exactly (one new text per old text; no Anthropic tool input, which is
/// an object in the body, not a string).
fn spliced_body(req: &ChatRequest, edits: &[Edit]) -> Option<bytes::Bytes> {
    let raw = req.client_body()?;
    // (old, new, how many slots hold old): edits are few, a list does.
    let mut by_old: Vec<(&str, &str, usize)> = Vec::with_capacity(edits.len());
    for e in edits {
        if e.slot == TextSlot::ToolArguments && req.source == ApiFormat::Anthropic {
            return None;
        }
        match by_old.iter_mut().find(|(old, _, _)| *old == e.old) {
            Some((_, new, n)) if *new == e.new => *n += 1,
            Some(_) => return None,
            None => by_old.push((&e.old, &e.new, 1)),
        }
    }
    crate::adapters::splice::splice_texts(raw, &by_old)
}

/// Replaces every string in `v` that `f` rewrites; how many.
fn scrub_strings(v: &mut Value, f: &mut impl FnMut(&str) -> Option<String>) -> usize {
    match v {
        Value::String(s) => f(s).map_or(0, |new| {
            *s = new;
            1
        }),
        Value::Array(a) => a.iter_mut().map(|x| scrub_strings(x, f)).sum(),
        Value::Object(o) => o.values_mut().map(|x| scrub_strings(x, f)).sum(),
        _ => 0,
    }
}

fn rewrite_json(s: &str, f: &mut impl FnMut(&str) -> Option<String>) -> Option<String> {
    let Ok(mut v) = serde_json::from_str::<Value>(s) else {
        return f(s); // not (yet) JSON: scan it as text
    };
    if scrub_strings(&mut v, f) > 0 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its scans; finds a "secret" wherever `SECRET` is.
    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicUsize>);

    impl TextScrubber for Counting {
        const NAME: &'static str = "counting";
        fn scrub(&self, text: &str) -> Option<String> {
            self.0.fetch_add(1, Ordering::Relaxed);
            text.contains("SECRET")
                .then(|| text.replace("SECRET", "[X]"))
        }
    }

    fn long(tag: usize) -> String {
        format!(
            "{tag:>6} {}",
            "fn main() { println!(\"hello\"); }\n".repeat(10)
        )
    }

    /// Scrubs `texts` through a memory of `capacity`; the scans it took and the outputs.
    fn run(mem: &CleanTexts, c: &Counting, texts: &[&str]) -> (usize, Vec<Option<String>>) {
        let before = c.0.load(Ordering::Relaxed);
        let out = texts
            .iter()
            .map(|t| mem.scrub(0, t, |s| c.scrub(s)))
            .collect();
        (c.0.load(Ordering::Relaxed) - before, out)
    }

    #[test]
    fn a_long_clean_text_is_scanned_once() {
        let (mem, c) = (CleanTexts::new(64), Counting::default());
        let (a, b) = (long(1), long(2));
        assert_eq!(run(&mem, &c, &[&a, &b]).0, 2);
        assert_eq!(run(&mem, &c, &[&a, &b, &a]), (0, vec![None, None, None]));
    }

    #[test]
    fn texts_with_findings_short_texts_and_changed_texts_are_scanned_every_time() {
        let (mem, c) = (CleanTexts::new(64), Counting::default());
        let secret = format!("{} SECRET", long(1));
        let short = "SECRET-free and short";
        for _ in 0..3 {
            let (scans, out) = run(&mem, &c, &[&secret, short]);
            assert_eq!(scans, 2);
            assert!(out[0].as_deref().is_some_and(|o| o.ends_with("[X]")));
        }
        // One byte changed in a remembered text: a different text, scanned (and caught).
        let a = long(3);
        run(&mem, &c, &[&a]);
        let changed = a.replacen("hello", "SECRET", 1);
        let (scans, out) = run(&mem, &c, &[&changed]);
        assert_eq!(scans, 1);
        assert!(out[0].is_some());
    }

    #[test]
    fn the_oldest_texts_age_out_and_texts_in_use_stay() {
        // Generations of 4: after 8 newer texts, text 0 is forgotten unless it was used.
        let (mem, c) = (CleanTexts::new(8), Counting::default());
        let texts: Vec<String> = (0..12).map(long).collect();
        run(&mem, &c, &[&texts[0], &texts[1]]);
        for t in &texts[2..10] {
            run(&mem, &c, &[t]);
            // Text 1 is re-sent all along (a conversation in use).
            assert_eq!(run(&mem, &c, &[&texts[1]]).0, 0);
        }
        assert_eq!(run(&mem, &c, &[&texts[1]]).0, 0, "in use: kept");
        assert_eq!(
            run(&mem, &c, &[&texts[0]]).0,
            1,
            "not sent since: forgotten"
        );
        let total: usize = mem.sets().iter().map(HashSet::len).sum();
        assert!(total <= 8, "{total}");
    }

    /// An OpenAI `body` as the auth layer hands it on for the API key named `caller` (none:
    /// no auth configured).
    fn request_from(body: &serde_json::Value, caller: Option<&str>) -> Request<ChatRequest> {
        let mut req = Request::new(
            crate::adapters::decode_request(
                crate::model::ApiFormat::OpenAi,
                body.to_string().as_bytes(),
            )
            .unwrap(),
        );
        if let Some(name) = caller {
            req.extensions_mut().insert(crate::model::Principal {
                name: name.into(),
                unrestricted: false,
                allowed_agents: Vec::new().into(),
            });
        }
        req
    }

    /// Through the layer: a text one caller sent is remembered for that caller only.
    #[tokio::test]
    async fn each_caller_has_its_own_memory() {
        use tower::{ServiceBuilder, ServiceExt, service_fn};
        let c = Counting::default();
        let svc = ServiceBuilder::new()
            .layer(ScrubLayer::new(c.clone()).remember_clean(64))
            .service(service_fn(|_: Request<ChatRequest>| async {
                Ok::<_, std::convert::Infallible>(())
            }));
        let text = long(1);
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": text}]});
        let send = |caller: Option<&str>| svc.clone().oneshot(request_from(&body, caller));
        let scans = || c.0.load(Ordering::Relaxed);
        for (caller, want) in [
            (Some("alice"), 1),
            (Some("alice"), 1),
            (Some("bob"), 2),
            (None, 3),
            (Some("bob"), 3),
            (None, 3),
        ] {
            send(caller).await.unwrap();
            assert_eq!(scans(), want, "after {caller:?}");
        }
    }

    /// [`Counting`] over the tool definitions and unknown fields too.
    #[derive(Clone, Default)]
    struct CountingFields(Counting);

    impl TextScrubber for CountingFields {
        const NAME: &'static str = "counting_fields";
        const SCRUBS_FIELDS: bool = true;
        fn scrub(&self, text: &str) -> Option<String> {
            self.0.scrub(text)
        }
    }

    /// Whole tool definitions found clean are not scanned again for that caller; a definition
    /// changed anywhere (a nested schema string) is scanned again and rewritten.
    #[tokio::test]
    async fn a_clean_tool_definition_is_remembered_whole() {
        use tower::{ServiceBuilder, ServiceExt, service_fn};
        let c = CountingFields::default();
        let svc = ServiceBuilder::new()
            .layer(ScrubLayer::new(c.clone()).remember_clean(64))
            .service(service_fn(|r: Request<ChatRequest>| async move {
                Ok::<_, std::convert::Infallible>(r.into_body())
            }));
        let tool = |n: usize, note: &str| {
            serde_json::json!({"type": "function", "function": {"name": format!("t{n}"), "description": format!("tool {n}"),
                "parameters": {"type": "object", "properties": {"p": {"type": "string", "description": note, "enum": ["a", "b"]}}}}})
        };
        let send = |note: &str, caller: &str| {
            let body = serde_json::json!({"model": "m", "tools": [tool(0, "plain"), tool(1, note)],
                "messages": [{"role": "user", "content": "hi"}]});
            svc.clone().oneshot(request_from(&body, Some(caller)))
        };
        let scans = || c.0.0.load(Ordering::Relaxed);
        // Each tool: its description and 5 schema strings ("object", "string", the note, "a", "b").
        send("plain", "alice").await.unwrap();
        assert_eq!(scans(), 1 + 2 * 6);
        send("plain", "alice").await.unwrap();
        assert_eq!(scans(), 13 + 1, "only the message scanned again");
        // The changed tool: looked at up to its note (4 strings), then written (all 6).
        let out = send("has SECRET", "alice").await.unwrap();
        assert_eq!(scans(), 14 + 1 + 4 + 6);
        let Some(Tool::Function { parameters, .. }) = out.tools.as_ref().map(|t| &t[1]) else {
            panic!("{:?}", out.tools)
        };
        assert_eq!(parameters["properties"]["p"]["description"], "has [X]");
        send("has SECRET", "alice").await.unwrap();
        assert_eq!(
            scans(),
            25 + 11,
            "a tool with a finding is never remembered"
        );
        send("plain", "bob").await.unwrap();
        assert_eq!(scans(), 36 + 13, "another caller's memory");
    }

    /// Answers the same text differently each time it is asked.
    #[derive(Clone, Default)]
    struct Fickle(Arc<AtomicUsize>);

    impl TextScrubber for Fickle {
        const NAME: &'static str = "fickle";
        fn scrub(&self, text: &str) -> Option<String> {
            let n = self.0.fetch_add(1, Ordering::Relaxed);
            text.contains("SECRET")
                .then(|| text.replace("SECRET", &format!("[X{n}]")))
        }
    }

    /// One old text given two different new texts cannot be written into the client's body
    /// (a splice replaces every copy of a text alike): the body is dropped, and each slot keeps
    /// the new text it was given.
    #[tokio::test]
    async fn one_text_rewritten_two_ways_is_not_spliced() {
        use tower::{ServiceExt, service_fn};
        let decode = |v: serde_json::Value| {
            crate::adapters::decode_client_body(
                crate::model::ApiFormat::OpenAi,
                bytes::Bytes::from(v.to_string()),
            )
            .unwrap()
        };
        let scrub = |req: ChatRequest| {
            ScrubLayer::new(Fickle::default())
                .layer(service_fn(|r: Request<ChatRequest>| async move {
                    Ok::<_, std::convert::Infallible>(r.into_body())
                }))
                .oneshot(Request::new(req))
        };
        let req = decode(serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": "a SECRET"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "a SECRET"}]}));
        assert!(req.client_body().is_some());
        let out = scrub(req).await.unwrap();
        assert!(out.client_body().is_none());
        assert_eq!(out.messages[0].content.text(), "a [X0]");
        assert_eq!(out.messages[2].content.text(), "a [X2]");
        // The same scrubber answering alike is spliced (the guard is what refused above).
        let req = decode(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "a SECRET"}]}),
        );
        let out = scrub(req).await.unwrap();
        assert_eq!(
            out.client_body().map(|b| b.as_ref()),
            Some(&br#"{"model":"m","messages":[{"role":"user","content":"a [X0]"}]}"#[..])
        );
    }

    #[test]
    fn debug_shows_sizes_not_the_seed() {
        let mem = CleanTexts::new(8);
        mem.insert(7);
        let shown = format!("{mem:?}");
        assert_eq!(shown, "CleanTexts { capacity: 8, remembered: 1, .. }");
        assert!(!shown.contains(&mem.seed.to_string()));
    }

    #[test]
    fn remember_clean_zero_is_off() {
        let layer = ScrubLayer::new(Counting::default()).remember_clean(0);
        assert!(layer.clean.is_none());
        assert!(
            ScrubLayer::new(Counting::default())
                .remember_clean(1)
                .clean
                .is_some()
        );
    }
}
