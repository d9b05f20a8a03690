//! High-entropy token redaction: the backstop for credentials no pattern knows.
//!
//! [`EntropyLayer`] wraps a service of `Request<ChatRequest>` like
//! [`RedactLayer`](crate::layers::RedactLayer) and replaces random-looking tokens with
//! `[REDACTED:high_entropy]`. A token is a run of base64/URL-safe characters; it is redacted
//! when it is long enough, mixes letters and digits, is not made of words, and its Shannon
//! entropy clears the threshold (scaled down for short tokens, whose entropy is bounded by
//! their length). Hex tokens are redacted only next to a credential word (`key`, `token`,
//! `secret`, …) and never next to a hash word (`sha`, `commit`, `checksum`, …).
//!
//! What real scanners learned to leave alone is left alone: UUIDs, git SHAs and digests,
//! lockfile integrity hashes (`sha512-…`, `h1:…`), base64 after `base64,` (data URLs; image
//! parts are never scanned), URL paths, file paths and long identifiers in code.
//!
//! ```
//! use nenya::layers::EntropyDetector;
//! let e = EntropyDetector::default();
//! assert_eq!(
//!     e.redact("token: q8Zr2LmX7vKp3NwT9bYc4HdF6sJa1").unwrap(),
//!     "token: [REDACTED:high_entropy]"
//! );
//! assert!(e.redact("fn handle_gateway_response_stream2(&self)").is_none());
//! assert!(e.redact("id 123e4567-e89b-12d3-a456-426614174000").is_none());
//! ```

use crate::layers::scrub::{Finding, RedactLabel, Scrub, ScrubLayer, TextScrubber, apply};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Default entropy threshold in bits per character (Nenya's `entropy_threshold`).
pub const DEFAULT_THRESHOLD: f64 = 4.5;
/// Default minimum token length (Nenya's `entropy_min_token`).
pub const DEFAULT_MIN_TOKEN: usize = 20;

/// Finds and redacts high-entropy tokens. Cheap to clone (shared counters).
///
/// ```
/// use nenya::layers::EntropyDetector;
/// let strict = EntropyDetector::new(4.0, 16);
/// assert!(strict.redact("k=Zq8r2LmX7vKp3NwT").is_some());
/// ```
#[derive(Debug, Clone)]
pub struct EntropyDetector {
    threshold: f64,
    min_len: usize,
    label: RedactLabel,
    redacted: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

impl Default for EntropyDetector {
    fn default() -> Self {
        Self::new(DEFAULT_THRESHOLD, DEFAULT_MIN_TOKEN)
    }
}

impl EntropyDetector {
    /// Tokens of at least `min_len` characters at or above `threshold` bits per character.
    pub fn new(threshold: f64, min_len: usize) -> Self {
        Self {
            threshold,
            min_len: min_len.max(8),
            label: RedactLabel::PerKind,
            redacted: Arc::default(),
            failures: Arc::default(),
        }
    }

    /// Uses a different replacement label.
    pub fn with_label(mut self, label: RedactLabel) -> Self {
        self.label = label;
        self
    }

    /// Tokens redacted so far.
    pub fn redacted(&self) -> u64 {
        self.redacted.load(Ordering::Relaxed)
    }

    /// Times the detector failed internally and let a text through unchanged.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The high-entropy tokens in `text`, in order.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let b = text.as_bytes();
        let mut out = Vec::new();
        long_runs(b, self.min_len, |start, end| {
            self.token(b, start, end, &mut out)
        });
        out
    }

    /// `text` with high-entropy tokens replaced, or `None` when there is none.
    pub fn redact(&self, text: &str) -> Option<String> {
        let found = self.find(text);
        if found.is_empty() {
            return None;
        }
        self.redacted
            .fetch_add(found.len() as u64, Ordering::Relaxed);
        Some(apply(text, &found, &self.label))
    }

    fn token(&self, b: &[u8], start: usize, end: usize, out: &mut Vec<Finding>) {
        // Trim separators and base64 padding off the ends.
        let mut s = start;
        let mut e = end;
        while s < e && matches!(b[s], b'-' | b'_' | b'/' | b'+' | b'=') {
            s += 1;
        }
        while e > s && matches!(b[e - 1], b'-' | b'_' | b'/' | b'+' | b'=') {
            e -= 1;
        }
        if e - s < self.min_len {
            return;
        }
        // The cheap verdict first, the context (prefix checks and a scan back to the start of
        // the word) only for what looks like a secret: most long tokens in code are
        // identifiers and paths the verdict already clears. A finding needs both, either way.
        let mark = out.len();
        let tok = &b[s..e];
        let slashes = tok.iter().filter(|&&c| c == b'/').count();
        if b[start] == b'/' || slashes >= 2 {
            // A path: judge each segment on its own.
            let mut at = s;
            for seg in tok.split(|&c| c == b'/') {
                let (ss, se) = (at, at + seg.len());
                at = se + 1;
                if seg.len() >= self.min_len
                    && self.secret(b, ss, se)
                    && !skipped_by_context(b, ss, se)
                {
                    out.push(finding(ss, se));
                }
            }
        } else if self.secret(b, s, e) {
            out.push(finding(s, e));
        }
        if out.len() > mark
            && (skipped_by_context(b, start, end)
                || ((s, e) != (start, end) && skipped_by_context(b, s, e)))
        {
            out.truncate(mark);
        }
    }

    /// Whether `b[s..e]` is a secret by its own look (hex also by the words before it).
    fn secret(&self, b: &[u8], s: usize, e: usize) -> bool {
        let tok = &b[s..e];
        let hex = tok.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-');
        if hex {
            tok.len() >= 32 && !is_uuid(tok) && hex_in_credential_context(b, s)
        } else {
            self.random_looking(tok)
        }
    }

    fn random_looking(&self, tok: &[u8]) -> bool {
        let letters = tok.iter().filter(|c| c.is_ascii_alphabetic()).count();
        let digits = tok.iter().filter(|c| c.is_ascii_digit()).count();
        if letters == 0 || digits == 0 {
            return false;
        }
        if word_fraction(tok) > 0.5 {
            return false; // identifiers, prose glued by `_`/`-`
        }
        // Entropy is bounded by log2(len): scale the threshold for short tokens, where random
        // 20-character keys average ~4.0 bits.
        let bound = (tok.len() as f64).log2() * 0.87;
        shannon(tok) >= self.threshold.min(bound)
    }
}

/// Calls `f` with each maximal run of token bytes at least `min` long, in order.
///
/// Only long runs matter, and most of a text is short ones, so the scan looks at every
/// `min`-th byte: where `b[i + min - 1]` is not a token byte, no run of `min` starts anywhere in
/// `i..i + min` (it would cover that byte), and the scan jumps past it; where it is one, that
/// byte's run is measured both ways and the scan goes on after it. The byte before `i` is
/// always outside any run (or `i` is 0), so every run found starts where it really starts.
fn long_runs(b: &[u8], min: usize, mut f: impl FnMut(usize, usize)) {
    let min = min.max(1);
    let mut i = 0;
    while i + min <= b.len() {
        let j = i + min - 1;
        if !is_token_byte(b[j]) {
            i = j + 1;
            continue;
        }
        let mut start = j;
        while start > i && is_token_byte(b[start - 1]) {
            start -= 1;
        }
        let mut end = j + 1;
        while end < b.len() && is_token_byte(b[end]) {
            end += 1;
        }
        if end - start >= min {
            f(start, end);
        }
        i = end + 1;
    }
}

fn finding(s: usize, e: usize) -> Finding {
    Finding {
        range: s..e,
        kind: "high_entropy",
    }
}

/// The bytes a token is made of: ASCII letters and digits, and `+ / = _ -`.
static TOKEN_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-');
        c += 1;
    }
    t
};

fn is_token_byte(c: u8) -> bool {
    TOKEN_BYTES[c as usize]
}

/// Shannon entropy in bits per byte.
fn shannon(tok: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &c in tok {
        counts[c as usize] += 1;
    }
    let n = tok.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Share of the token in word-like runs: four or more lowercase letters, optionally after
/// one capital (`Module`, `handler`).
fn word_fraction(tok: &[u8]) -> f64 {
    let mut in_words = 0usize;
    let mut i = 0;
    while i < tok.len() {
        let start = i;
        if tok[i].is_ascii_uppercase() {
            i += 1;
        }
        let lower_start = i;
        while i < tok.len() && tok[i].is_ascii_lowercase() {
            i += 1;
        }
        if i - lower_start >= 4 {
            in_words += i - start;
        }
        if i == start {
            i += 1;
        }
    }
    in_words as f64 / tok.len() as f64
}

fn is_uuid(t: &[u8]) -> bool {
    t.len() == 36
        && t.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn ends_with_ci(hay: &[u8], suffix: &[u8]) -> bool {
    hay.len() >= suffix.len() && hay[hay.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Contexts where long random-looking tokens are expected and harmless.
fn skipped_by_context(b: &[u8], s: usize, e: usize) -> bool {
    let before = &b[s.saturating_sub(16)..s];
    let tok = &b[s..e];
    // Data URLs, lockfile and go.sum hashes, image digests.
    for p in [
        &b"base64,"[..],
        b"sha1-",
        b"sha256-",
        b"sha384-",
        b"sha512-",
        b"sha1:",
        b"sha256:",
        b"sha512:",
        b"md5:",
        b"h1:",
    ] {
        if ends_with_ci(before, p) || tok.len() > p.len() && tok[..p.len()].eq_ignore_ascii_case(p)
        {
            return true;
        }
    }
    // A URL's path (its query string is still scanned).
    let word_start = b[..s]
        .iter()
        .rposition(|c| c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'(' | b'<'))
        .map_or(0, |i| i + 1);
    let word = &b[word_start..s];
    if let Some(scheme) = word.windows(3).position(|w| w == b"://")
        && !word[scheme..]
            .iter()
            .any(|c| matches!(c, b'?' | b'&' | b'=' | b'#'))
    {
        return true;
    }
    false
}

const CREDENTIAL_WORDS: &[&[u8]] = &[
    b"key",
    b"token",
    b"secret",
    b"passw",
    b"auth",
    b"credential",
    b"bearer",
];
const HASH_WORDS: &[&[u8]] = &[
    b"sha",
    b"hash",
    b"commit",
    b"checksum",
    b"digest",
    b"integrity",
    b"md5",
    b"etag",
    b"rev",
    b"id",
];

/// Hex is usually a hash: only a credential word before it, on its line, and no hash word,
/// makes it a secret.
fn hex_in_credential_context(b: &[u8], s: usize) -> bool {
    let line_start = b[..s]
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |i| i + 1);
    let prefix = b[line_start.max(s.saturating_sub(64))..s].to_ascii_lowercase();
    let has = |words: &[&[u8]]| {
        words
            .iter()
            .any(|w| prefix.windows(w.len()).any(|x| x == *w))
    };
    has(CREDENTIAL_WORDS) && !has(HASH_WORDS)
}

/// Layer that redacts high-entropy tokens from every request text:
/// `EntropyLayer::new(EntropyDetector::default())`.
pub type EntropyLayer = ScrubLayer<EntropyDetector>;

/// The service [`EntropyLayer`] produces.
pub type Entropy<S> = Scrub<S, EntropyDetector>;

impl TextScrubber for EntropyDetector {
    const NAME: &'static str = "entropy";
    fn scrub(&self, text: &str) -> Option<String> {
        self.redact(text)
    }
    fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runs the skipping scan finds are the ones a byte-by-byte scan finds.
    fn runs_byte_by_byte(b: &[u8], min: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            while i < b.len() && !is_token_byte(b[i]) {
                i += 1;
            }
            let start = i;
            while i < b.len() && is_token_byte(b[i]) {
                i += 1;
            }
            if i - start >= min.max(1) {
                out.push((start, i));
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn the_skipping_scan_finds_every_long_run(
            text in "[a-z0-9_/+= .:;\\n-]{0,300}",
            min in 1usize..40,
        ) {
            let mut got = Vec::new();
            long_runs(text.as_bytes(), min, |s, e| got.push((s, e)));
            proptest::prop_assert_eq!(got, runs_byte_by_byte(text.as_bytes(), min));
        }

        #[test]
        fn the_skipping_scan_finds_every_long_run_in_long_runs(
            parts in proptest::collection::vec(("[A-Za-z0-9_-]{0,45}", "[ .:(]{1,3}"), 0..20),
            min in 8usize..30,
        ) {
            let text: String = parts.iter().map(|(a, b)| format!("{a}{b}")).collect();
            let mut got = Vec::new();
            long_runs(text.as_bytes(), min, |s, e| got.push((s, e)));
            proptest::prop_assert_eq!(got, runs_byte_by_byte(text.as_bytes(), min));
        }
    }

    #[test]
    fn word_fraction_tells_identifiers_from_keys() {
        assert!(word_fraction(b"refactorModule2ResponseHandler") > 0.8);
        assert!(word_fraction(b"q8Zr2LmX7vKp3NwT9bYc4HdF6sJa1") < 0.2);
    }

    #[test]
    fn hex_needs_a_credential_word_and_no_hash_word() {
        let e = EntropyDetector::default();
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert!(e.redact(&format!("api_key {hex}")).is_some());
        assert!(e.redact(&format!("commit {hex}")).is_none());
        assert!(e.redact(&format!("sha256 key {hex}")).is_none());
        assert!(e.redact(hex).is_none());
    }
}
