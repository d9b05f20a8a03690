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
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        mut emit: impl FnMut(Event),
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
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, tail) = chunk.split_at(pos);
            self.push_line_bytes(head)?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut emit)?;
            self.line = line;
            self.line.clear();
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
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut emit)?;
        }
        self.dispatch(&mut emit);
        Ok(())
    }

    fn push_line_bytes(&mut self, b: &[u8]) -> Result<(), DecodeError> {
        self.size += b.len();
        if self.size > self.limit {
            return Err(DecodeError::TooLarge { limit: self.limit });
        }
        self.line.extend_from_slice(b);
        Ok(())
    }

    fn dispatch(&mut self, emit: &mut impl FnMut(Event)) {
        if self.has_data {
            emit(std::mem::take(&mut self.current));
        } else {
            self.current = Event::default();
        }
        self.has_data = false;
        self.size = 0;
    }

    fn process_line(
        &mut self,
        line: &[u8],
        emit: &mut impl FnMut(Event),
    ) -> Result<(), DecodeError> {
        if line.is_empty() {
            self.dispatch(emit);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // comment / keep-alive
        }
        let line = std::str::from_utf8(line).map_err(|_| DecodeError::InvalidUtf8)?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
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
