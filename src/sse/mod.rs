//! Server-sent events: an incremental decoder and a one-event-per-frame encoder.
//!
//! The decoder never assumes one network chunk is one event: it carries partial lines across
//! chunks in a bounded buffer (an event larger than the limit is an error, not unbounded
//! memory), accepts LF, CRLF and CR line ends, joins multi-line `data:`, skips comments, and
//! decodes text only once a line is complete, so a UTF-8 character split across chunks is fine.
//!
//! ```
//! use nenya::sse::Decoder;
//! let mut d = Decoder::new(1 << 20);
//! let mut events = Vec::new();
//! for chunk in [&b"event: ping\nda"[..], b"ta: {}\r\n\r", b"\n: keep-alive\n\ndata: a\ndata: b\n\n"] {
//!     d.feed(chunk, |e| events.push(e)).unwrap();
//! }
//! assert_eq!(events.len(), 2);
//! assert_eq!(events[0].event.as_deref(), Some("ping"));
//! assert_eq!(events[0].data, "{}");
//! assert_eq!(events[1].data, "a\nb");
//! ```

use bytes::Bytes;

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
}

/// Why decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A line or event exceeded the size limit.
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A line is not valid UTF-8.
    InvalidUtf8,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { limit } => write!(f, "SSE event larger than {limit} bytes"),
            Self::InvalidUtf8 => f.write_str("SSE line is not valid UTF-8"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Incremental SSE decoder.
#[derive(Debug)]
pub struct Decoder {
    line: Vec<u8>,
    /// The previous chunk ended in CR: a leading LF in the next one belongs to it.
    after_cr: bool,
    current: Event,
    has_data: bool,
    /// Bytes of the event being assembled (lines included), bounded by `limit`.
    size: usize,
    limit: usize,
}

impl Decoder {
    /// A decoder refusing events larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            current: Event::default(),
            has_data: false,
            size: 0,
            limit,
        }
    }

    /// Whether the decoder holds nothing of a half-read line or event: a chunk of whole events
    /// may then be looked at (or skipped) on its own.
    pub fn is_between_events(&self) -> bool {
        self.line.is_empty()
            && !self.after_cr
            && !self.has_data
            && self.size == 0
            && self.current.event.is_none()
            && self.current.id.is_none()
    }

    /// Feeds a chunk, calling `emit` for each complete event.
    pub fn feed(&mut self, chunk: &[u8], mut emit: impl FnMut(Event)) -> Result<(), DecodeError> {
        self.feed_inner(chunk, &mut |ev: &mut Event| emit(std::mem::take(ev)))
    }

    /// [`feed`](Self::feed) for a caller that only looks at each event: the event is lent,
    /// and its buffers are kept for the next one (no allocation per event).
    ///
    /// ```
    /// let mut d = nenya::sse::Decoder::new(1 << 20);
    /// let mut seen = Vec::new();
    /// d.feed_ref(b"data: {}\n\nevent: x\ndata: 1\n\n", |e| seen.push((e.event.clone(), e.data.len()))).unwrap();
    /// assert_eq!(seen, [(None, 2), (Some("x".into()), 1)]);
    /// ```
    pub fn feed_ref(
        &mut self,
        chunk: &[u8],
        mut emit: impl FnMut(&Event),
    ) -> Result<(), DecodeError> {
        self.feed_inner(chunk, &mut |ev: &mut Event| {
            emit(ev);
            ev.data.clear();
            ev.event = None;
            ev.id = None;
        })
    }

    fn feed_inner(
        &mut self,
        mut chunk: &[u8],
        emit: &mut impl FnMut(&mut Event),
    ) -> Result<(), DecodeError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', chunk) {
            let (head, tail) = chunk.split_at(pos);
            if self.line.is_empty() {
                // The whole line is in this chunk: read it in place.
                self.count(head.len())?;
                self.process_line(head, emit)?;
            } else {
                self.push_line_bytes(head)?;
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, emit)?;
                self.line = line;
                self.line.clear();
            }
            let is_cr = tail[0] == b'\r';
            chunk = &tail[1..];
            if is_cr {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.push_line_bytes(chunk)
    }

    /// Signals the end of input: a final event without its blank line is dispatched.
    pub fn finish(&mut self, mut emit: impl FnMut(Event)) -> Result<(), DecodeError> {
        let emit = &mut |ev: &mut Event| emit(std::mem::take(ev));
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, emit)?;
        }
        self.dispatch(emit);
        Ok(())
    }

    fn count(&mut self, n: usize) -> Result<(), DecodeError> {
        self.size += n;
        if self.size > self.limit {
            return Err(DecodeError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    fn push_line_bytes(&mut self, b: &[u8]) -> Result<(), DecodeError> {
        self.count(b.len())?;
        self.line.extend_from_slice(b);
        Ok(())
    }

    /// Hands the assembled event to `emit` (which takes it or clears it) and starts the next.
    fn dispatch(&mut self, emit: &mut impl FnMut(&mut Event)) {
        if self.has_data {
            emit(&mut self.current);
        } else {
            self.current.data.clear();
            self.current.event = None;
            self.current.id = None;
        }
        self.has_data = false;
        self.size = 0;
    }

    fn process_line(
        &mut self,
        line: &[u8],
        emit: &mut impl FnMut(&mut Event),
    ) -> Result<(), DecodeError> {
        if line.is_empty() {
            self.dispatch(emit);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // comment / keep-alive
        }
        let line = std::str::from_utf8(line).map_err(|_| DecodeError::InvalidUtf8)?;
        // The field name is a few bytes: a plain loop finds its colon sooner than a searcher
        // is set up.
        let (field, value) = match line.bytes().position(|b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.current.event = Some(value.to_owned()),
            "id" => self.current.id = Some(value.to_owned()),
            _ => {} // `retry` and unknown fields are ignored, as the spec says
        }
        Ok(())
    }
}

/// Encodes one event as its own frame: `event: NAME\ndata: DATA\n\n`.
///
/// ```
/// assert_eq!(&nenya::sse::encode(Some("ping"), "{}")[..], b"event: ping\ndata: {}\n\n");
/// ```
pub fn encode(event: Option<&str>, data: &str) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + event.map_or(0, str::len) + 16);
    if let Some(e) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e.as_bytes());
        out.push(b'\n');
    }
    for (i, line) in data.split('\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Whether `data` is one JSON value (RFC 8259, whitespace around it allowed): what the stream
/// guard asks of every event it passes through. Exactly serde_json's answer, mostly without
/// asking it: a one-pass byte scan accepts the ordinary event, and only what the scan does not
/// accept (malformed, or nested deeper than 256) goes to the full parser, which has the last
/// word.
///
/// ```
/// assert!(nenya::sse::is_json(r#"{"choices":[{"delta":{"content":"hi\n"}}]}"#));
/// assert!(!nenya::sse::is_json(r#"{"choices":[{"delta":"#));
/// ```
pub fn is_json(data: &str) -> bool {
    surely_json(data.as_bytes()) || serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok()
}

/// The scan behind [`is_json`]: `true` only for a well-formed JSON value; `false` for anything
/// else and for nesting past 256 levels (the caller then asks serde_json). Public for the fuzz
/// target and the property tests, which check that it never accepts what serde_json refuses.
#[doc(hidden)]
pub fn surely_json(s: &[u8]) -> bool {
    // One bit per open container: 1 = object, 0 = array.
    let mut stack = [0u64; 4];
    let mut depth = 0usize;
    let n = s.len();
    let mut i = 0usize;
    let ws = |s: &[u8], mut i: usize| {
        while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    'value: loop {
        i = ws(s, i);
        if i >= n {
            return false;
        }
        match s[i] {
            b'{' | b'[' => {
                if depth == 256 {
                    return false;
                }
                let obj = s[i] == b'{';
                if obj {
                    stack[depth / 64] |= 1 << (depth % 64);
                } else {
                    stack[depth / 64] &= !(1 << (depth % 64));
                }
                depth += 1;
                i = ws(s, i + 1);
                if i < n && s[i] == if obj { b'}' } else { b']' } {
                    depth -= 1;
                    i += 1;
                } else if obj {
                    match key(s, i) {
                        Some(next) => {
                            i = next;
                            continue 'value;
                        }
                        None => return false,
                    }
                } else {
                    continue 'value;
                }
            }
            b'"' => match string(s, i) {
                Some(next) => i = next,
                None => return false,
            },
            b't' if s[i..].starts_with(b"true") => i += 4,
            b'f' if s[i..].starts_with(b"false") => i += 5,
            b'n' if s[i..].starts_with(b"null") => i += 4,
            b'-' | b'0'..=b'9' => match number(s, i) {
                Some(next) => i = next,
                None => return false,
            },
            _ => return false,
        }
        // After a value: close containers, or go on to the next element.
        loop {
            i = ws(s, i);
            if depth == 0 {
                return i == n;
            }
            if i >= n {
                return false;
            }
            let top = depth - 1;
            let in_obj = stack[top / 64] >> (top % 64) & 1 == 1;
            match (s[i], in_obj) {
                (b',', true) => match key(s, ws(s, i + 1)) {
                    Some(next) => {
                        i = next;
                        continue 'value;
                    }
                    None => return false,
                },
                (b',', false) => {
                    i += 1;
                    continue 'value;
                }
                (b'}', true) | (b']', false) => {
                    depth -= 1;
                    i += 1;
                }
                _ => return false,
            }
        }
    }
}

/// The values of the `keys` of a top-level JSON object, as slices of `json` (the last one of a
/// key sent twice), with everything else skipped, not parsed: brackets are counted and
/// strings stepped over. `None` when `json` is not an object, when a key is written with
/// escapes, or when the object is not followed by only whitespace; the caller then parses
/// the whole document. The slices are not validated: the caller parses them.
pub(crate) fn top_level_fields<'a, const N: usize>(
    json: &'a [u8],
    keys: [&[u8]; N],
) -> Option<[Option<&'a [u8]>; N]> {
    let mut out = [None; N];
    each_member(json, |key, value| {
        if let Some(n) = keys.iter().position(|k| *k == key) {
            out[n] = Some(value);
        }
        Some(())
    })?;
    Some(out)
}

/// The value of the first `key` of a top-level JSON object, as a slice of `json`, found
/// without looking past it (a request's `model` usually comes before its whole conversation).
/// `None` when a key before it is written with escapes, or it is not there. For a document
/// already parsed whole and known to repeat no key (the slice is then its only value).
pub(crate) fn first_top_level_field<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let s = json;
    let ws = |i: usize| skip_ws(s, i);
    let mut i = ws(0);
    if s.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    loop {
        let (k, value, value_end) = member(s, i)?;
        if k == key {
            return Some(&s[value..value_end]);
        }
        i = ws(value_end);
        if s.get(i) != Some(&b',') {
            return None;
        }
        i = ws(i + 1);
    }
}

/// The last member of a top-level JSON object, read from the document's end: its key (written
/// without escapes) and its value, as slices of `json`. Answers put `usage` last, so this reads
/// it without stepping over the rest (see [`top_level_fields`], which does). Only the member's
/// own bytes are looked at: the caller must not mind that a document broken before them is
/// not noticed. `None` when the document does not end with such a member.
pub(crate) fn last_top_level_member(json: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = json;
    let end = ws_back(s, s.len());
    if end == 0 || s[end - 1] != b'}' {
        return None;
    }
    let value_end = ws_back(s, end - 1);
    let value = value_back(s, value_end)?;
    let colon = ws_back(s, value).checked_sub(1)?;
    if s[colon] != b':' {
        return None;
    }
    let close = ws_back(s, colon).checked_sub(1)?;
    if s[close] != b'"' {
        return None;
    }
    let open = string_back(s, close)?;
    let key = &s[open + 1..close];
    if key.contains(&b'\\') {
        return None;
    }
    let before = ws_back(s, open).checked_sub(1)?;
    match s[before] {
        b',' => {}
        b'{' if ws_back(s, before) == 0 => {}
        _ => return None,
    }
    Some((key, &s[value..value_end]))
}

/// The start of the whitespace that ends at `end` (`end` itself when there is none).
fn ws_back(s: &[u8], mut end: usize) -> usize {
    while end > 0 && matches!(s[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    end
}

/// The opening quote of the string whose closing quote is at `close`: the nearest quote before
/// it that is not escaped (not after an odd run of backslashes).
fn string_back(s: &[u8], close: usize) -> Option<usize> {
    let mut to = close;
    loop {
        let q = memchr::memrchr(b'"', &s[..to])?;
        let backslashes = s[..q].iter().rev().take_while(|&&c| c == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(q);
        }
        to = q;
    }
}

/// The start of the value that ends at `end`, found without parsing it: brackets counted and
/// strings stepped over, backwards.
fn value_back(s: &[u8], end: usize) -> Option<usize> {
    let last = end.checked_sub(1)?;
    match s[last] {
        b'"' => string_back(s, last),
        b'}' | b']' => {
            let mut depth = 0usize;
            let mut i = end;
            loop {
                i = i.checked_sub(1)?;
                match s[i] {
                    b'"' => i = string_back(s, i)?,
                    b'}' | b']' => depth += 1,
                    b'{' | b'[' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {
            let mut i = end;
            while i > 0
                && !matches!(
                    s[i - 1],
                    b':' | b',' | b'{' | b'[' | b' ' | b'\t' | b'\n' | b'\r'
                )
            {
                i -= 1;
            }
            (i < end).then_some(i)
        }
    }
}

pub(crate) fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The object member starting at `i` (its key's opening quote): the key, written without
/// escapes, and where its value starts and ends. `None` for anything else.
fn member(s: &[u8], i: usize) -> Option<(&[u8], usize, usize)> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let end = string(s, i)?;
    let key = &s[i + 1..end - 1];
    if key.contains(&b'\\') {
        return None;
    }
    let i = skip_ws(s, end);
    if s.get(i) != Some(&b':') {
        return None;
    }
    let i = skip_ws(s, i + 1);
    Some((key, i, skip_value(s, i)?))
}

/// Calls `f` with each member of the object that is all of `json` (whitespace around it
/// allowed): its key, written without escapes, and its value, a slice found without parsing
/// it (see [`top_level_fields`]). `None` when `json` is not such an object, or when `f` says
/// `None`.
pub(crate) fn each_member<'a>(
    json: &'a [u8],
    mut f: impl FnMut(&'a [u8], &'a [u8]) -> Option<()>,
) -> Option<()> {
    let s = json;
    let mut i = skip_ws(s, 0);
    if s.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(s, i + 1);
    if s.get(i) == Some(&b'}') {
        return (skip_ws(s, i + 1) == s.len()).then_some(());
    }
    loop {
        let (key, value, value_end) = member(s, i)?;
        f(key, &s[value..value_end])?;
        i = skip_ws(s, value_end);
        match s.get(i)? {
            b',' => i = skip_ws(s, i + 1),
            b'}' => return (skip_ws(s, i + 1) == s.len()).then_some(()),
            _ => return None,
        }
    }
}

/// The end of the value starting at `i`, found without parsing it (see [`top_level_fields`]).
fn skip_value(s: &[u8], mut i: usize) -> Option<usize> {
    match *s.get(i)? {
        b'"' => string(s, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match *s.get(i)? {
                    b'"' => {
                        i = string(s, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let start = i;
            while i < s.len() && !matches!(s[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

/// An object key at `i` and its colon: the index after the colon.
fn key(s: &[u8], i: usize) -> Option<usize> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let mut i = string(s, i)?;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    (s.get(i) == Some(&b':')).then_some(i + 1)
}

/// A string starting at the quote at `i`: the index after its closing quote.
fn string(s: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        i = plain_run(s, i);
        match *s.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *s.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = s.get(i + 2..i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

/// From `i`, the index of the first byte a string cannot hold as it is (a quote, a backslash
/// or a control character), or of the last few bytes: eight bytes at a time, each word tested
/// for all three at once (the classic "has a byte less than n" bit trick, which is exact for
/// the lowest byte it flags). Most of an event is string text, so this is most of the scan.
pub(crate) fn plain_run(s: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u64| w.wrapping_sub(LO * n) & !w;
    while let Some(word) = s.get(i..i + 8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(word);
        let w = u64::from_le_bytes(b);
        let special = (below(w ^ (LO * u64::from(b'"')), 1)
            | below(w ^ (LO * u64::from(b'\\')), 1)
            | below(w, 0x20))
            & HI;
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i
}

/// A number starting at `i`: the index after it.
fn number(s: &[u8], mut i: usize) -> Option<usize> {
    let digits = |s: &[u8], mut i: usize| {
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if s[i] == b'-' {
        i += 1;
    }
    match s.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(s, i)?,
        _ => return None,
    }
    if s.get(i) == Some(&b'.') {
        i = digits(s, i + 1)?;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(s, i)?;
    }
    Some(i)
}
