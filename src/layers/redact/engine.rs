//! The redaction engine: keyword prefilter, candidate windows, one multi-pattern regex.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, PatternID, Span};

use super::rules::{Check, RULES};
use crate::layers::scrub::{Finding, RedactLabel, apply};

/// How far before a keyword a match may start (the longest token whose keyword sits inside
/// it, an OpenAI key before `T3BlbkFJ`, is under 200 bytes).
const LOOK_BEHIND: usize = 256;
/// How far after a keyword a match may end (single-line formats).
const LOOK_AHEAD: usize = 1024;
/// How far a PEM block may run before its END line.
const PEM_MAX: usize = 64 * 1024;
const PREFILTER: bool = false;

/// Error building a [`Redactor`] from user patterns.
///
/// ```
/// use nenya::layers::{RedactLabel, Redactor};
/// let e = Redactor::new(&["ok", "(unclosed"], RedactLabel::PerKind).unwrap_err();
/// assert_eq!(e.index, 1);
/// assert!(e.to_string().contains("#1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// Index of the offending pattern in the list given.
    pub index: usize,
    /// Why it does not compile.
    pub message: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "redact pattern #{} does not compile: {}",
            self.index, self.message
        )
    }
}

impl std::error::Error for PatternError {}

/// Secret redaction over plain text: 60+ built-in credential formats (see
/// [`Redactor::kinds`]) plus user patterns, compiled once.
///
/// A keyword pass (one Aho-Corasick automaton) finds the few places a credential could be;
/// only the lines around those are searched with the multi-pattern regex, so text without
/// secrets streams at memory speed. Counts per kind are kept for metrics (never the secret).
/// Cheap to clone (shared).
///
/// ```
/// use nenya::layers::Redactor;
/// let r = Redactor::builtin();
/// let out = r.redact("export GITHUB_TOKEN=ghp_R8mWq2ZpX4cV7bN1kL9sD3fG6hJ0aQ5eT2yU").unwrap();
/// assert_eq!(out, "export GITHUB_TOKEN=[REDACTED:github_pat]");
/// assert!(r.redact("nothing to see here").is_none());
/// ```
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Inner>,
}

struct Inner {
    regex: Regex,
    /// Per pattern: index into `kinds`, its check, and for a rule with a `secret` group that
    /// rule alone, compiled for the capture search on its matches (see [`Redactor::find`]).
    rule_kind: Vec<usize>,
    checks: Vec<Check>,
    secret_re: Vec<Option<Regex>>,
    /// Every keyword, matched regardless of ASCII case in one DFA pass.
    keywords: AhoCorasick,
    /// Per keyword: the literal, whether its case must match (`SK`, `eyJ`), whether it opens a
    /// PEM block.
    kw: Vec<(&'static str, bool, bool)>,
    custom: Option<Regex>,
    custom_kind: usize,
    kinds: Vec<&'static str>,
    counts: Vec<AtomicU64>,
    failures: AtomicU64,
    label: RedactLabel,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("rules", &self.inner.rule_kind.len())
            .field(
                "custom",
                &self.inner.custom.as_ref().map(|r| r.pattern_len()),
            )
            .field("label", &self.inner.label)
            .finish()
    }
}

impl Redactor {
    /// The built-in rules, `[REDACTED:<kind>]` labels.
    pub fn builtin() -> Self {
        Self::new(&[] as &[&str], RedactLabel::PerKind).expect("built-in patterns compile")
    }

    /// The built-in rules plus `custom` patterns (regex syntax; kind `custom`; a `secret`
    /// named group redacts only that group).
    ///
    /// ```
    /// use nenya::layers::{Redactor, RedactLabel};
    /// let r = Redactor::new(&[r"ACME-[0-9]{6}"], RedactLabel::Fixed("[REDACTED]".into())).unwrap();
    /// assert_eq!(r.redact("id ACME-123456").unwrap(), "id [REDACTED]");
    /// assert_eq!(Redactor::new(&["("], RedactLabel::PerKind).unwrap_err().index, 0);
    /// ```
    pub fn new<P: AsRef<str>>(custom: &[P], label: RedactLabel) -> Result<Self, PatternError> {
        let mut kinds: Vec<&'static str> = Vec::new();
        let kind_index = |k: &'static str, kinds: &mut Vec<&'static str>| {
            kinds.iter().position(|x| *x == k).unwrap_or_else(|| {
                kinds.push(k);
                kinds.len() - 1
            })
        };
        let rule_kind: Vec<usize> = RULES
            .iter()
            .map(|r| kind_index(r.kind, &mut kinds))
            .collect();
        let custom_kind = kind_index("custom", &mut kinds);

        let patterns: Vec<&str> = RULES.iter().map(|r| r.pattern).collect();
        // Bytes, not UTF-8 text: the same syntax for the combined regex and each rule's own.
        let bytes_syntax = syntax::Config::new().unicode(false).utf8(false);
        let regex = Regex::builder()
            .syntax(bytes_syntax)
            .configure(meta::Config::new().utf8_empty(false))
            .build_many(&patterns)
            .map_err(|e| PatternError {
                index: usize::MAX,
                message: e.to_string(),
            })?;
        // The combined regex is only ever asked where a match is (its lazy DFA, no capture
        // groups: a capture search over all 60+ rules at once copies every rule's slots at
        // every step, ~47k instructions a match). The `secret` group is then read by the
        // matching rule's own regex on just the match: an NFA of one rule, whose bounded
        // backtracker clears a visited set sized for that rule and that match only.
        let mut secret_re = Vec::with_capacity(RULES.len());
        for (i, rule) in RULES.iter().enumerate() {
            let has_secret = regex
                .group_info()
                .to_index(PatternID::must(i), "secret")
                .is_some();
            secret_re.push(if has_secret {
                let re = Regex::builder()
                    .syntax(bytes_syntax)
                    .configure(
                        meta::Config::new()
                            .utf8_empty(false)
                            .hybrid(false)
                            .dfa(false),
                    )
                    .build(rule.pattern)
                    .map_err(|e| PatternError {
                        index: usize::MAX,
                        message: e.to_string(),
                    })?;
                Some(re)
            } else {
                None
            });
        }

        let mut kw: Vec<(&'static str, bool)> = Vec::new();
        for rule in RULES {
            for k in rule.keywords {
                match kw.iter_mut().find(|(x, _)| x.eq_ignore_ascii_case(k)) {
                    // Shared keyword: case-insensitive if any rule wants it so.
                    Some(e) => e.1 &= rule.case_sensitive && e.0 == *k,
                    None => kw.push((k, rule.case_sensitive)),
                }
            }
        }
        // One DFA (no prefilter: with this many short keywords none pays off) runs at a
        // steady ~1 GB/s; exact-case keywords are checked on the few hits.
        let keywords = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .prefilter(PREFILTER)
            .build(kw.iter().map(|k| k.0))
            .map_err(|e| PatternError {
                index: usize::MAX,
                message: e.to_string(),
            })?;
        let kw = kw
            .into_iter()
            .map(|(k, cs)| (k, cs, k == "-----BEGIN"))
            .collect();

        let custom = if custom.is_empty() {
            None
        } else {
            for (index, p) in custom.iter().enumerate() {
                Regex::new(p.as_ref()).map_err(|e| PatternError {
                    index,
                    message: e.to_string(),
                })?;
            }
            let ps: Vec<&str> = custom.iter().map(AsRef::as_ref).collect();
            Some(Regex::new_many(&ps).map_err(|e| PatternError {
                index: 0,
                message: e.to_string(),
            })?)
        };

        let counts = kinds.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                regex,
                rule_kind,
                checks: RULES.iter().map(|r| r.check).collect(),
                secret_re,
                keywords,
                kw,
                custom,
                custom_kind,
                kinds,
                counts,
                failures: AtomicU64::new(0),
                label,
            }),
        })
    }

    /// Every kind this redactor can report.
    pub fn kinds(&self) -> &[&'static str] {
        &self.inner.kinds
    }

    /// Secrets redacted so far, per kind (kinds never seen are included with 0).
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        self.inner
            .kinds
            .iter()
            .zip(&self.inner.counts)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Times the redactor failed internally and let a text through unchanged.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn record_failure(&self) {
        self.inner.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The secrets in `text`, in order, not overlapping.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let inner = &*self.inner;
        let bytes = text.as_bytes();
        let mut windows = inner.hit_windows(bytes, true);
        let mut found = Vec::new();
        if !windows.is_empty() {
            windows.sort_unstable();
            let mut merged: Vec<(usize, usize)> = Vec::with_capacity(windows.len());
            for w in windows {
                match merged.last_mut() {
                    Some(last) if w.0 <= last.1 => last.1 = last.1.max(w.1),
                    _ => merged.push(w),
                }
            }
            for (start, end) in merged {
                let mut input = Input::new(bytes).span(start..end);
                while let Some(m) = inner.regex.search(&input) {
                    let pid = m.pattern().as_usize();
                    let span = inner.secret_span(bytes, pid, m.span());
                    let ok = check(inner.checks[pid], bytes, span.range());
                    if ok {
                        found.push(Finding {
                            range: char_aligned(text, span.range()),
                            kind: inner.kinds[inner.rule_kind[inner.refine(bytes, pid, span)]],
                        });
                    }
                    // A rejected candidate may hide a real one that starts inside it.
                    let next = if ok && m.end() > m.start() {
                        m.end()
                    } else {
                        m.start() + 1
                    };
                    if next >= end {
                        break;
                    }
                    input.set_start(next);
                }
            }
        }
        let mut unordered = false;
        if let Some(custom) = &inner.custom {
            for m in custom.find_iter(text) {
                if m.is_empty() {
                    continue;
                }
                found.push(Finding {
                    range: m.range(),
                    kind: inner.kinds[inner.custom_kind],
                });
                unordered = true;
            }
        }
        // A value found once (`password = …`) is a secret wherever else it appears in the
        // text (`… connect with …`), even where no pattern's context surrounds it.
        unordered |= repeat_occurrences(text, &mut found);
        if unordered {
            found.sort_by_key(|f| (f.range.start, std::cmp::Reverse(f.range.end)));
            found.dedup_by(|b, a| {
                // `b` follows `a`: fold an overlap into the earlier finding.
                if b.range.start < a.range.end {
                    a.range.end = a.range.end.max(b.range.end);
                    true
                } else {
                    false
                }
            });
        }
        found
    }

    /// `text` with every secret replaced by its label, or `None` when there is none (no
    /// allocation). Counts each finding.
    pub fn redact(&self, text: &str) -> Option<String> {
        let found = self.find(text);
        if found.is_empty() {
            return None;
        }
        for f in &found {
            if let Some(i) = self.inner.kinds.iter().position(|k| *k == f.kind) {
                self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(apply(text, &found, &self.inner.label))
    }
}

impl Inner {
    /// The part of rule `pid`'s match at `span` to redact: its `secret` group when it has one,
    /// else the whole match. The rule's own regex, anchored at the match and bounded by its
    /// end, finds the same match (leftmost-first, same look-around context) that the combined
    /// regex reported.
    fn secret_span(&self, bytes: &[u8], pid: usize, span: Span) -> Span {
        let Some(re) = &self.secret_re[pid] else {
            return span;
        };
        let mut caps = re.create_captures();
        let input = Input::new(bytes)
            .range(span.range())
            .anchored(Anchored::Yes);
        re.search_captures(&input, &mut caps);
        caps.get_group_by_name("secret").unwrap_or(span)
    }

    /// An assignment whose value is itself a known format (`TOKEN=ghp_…`) reports that format.
    fn refine(&self, bytes: &[u8], pid: usize, span: Span) -> usize {
        if !matches!(self.checks[pid], Check::Assignment { .. }) {
            return pid;
        }
        let input = Input::new(bytes)
            .range(span.range())
            .anchored(Anchored::Yes);
        match self.regex.search(&input) {
            Some(m)
                if !matches!(
                    self.checks[m.pattern().as_usize()],
                    Check::Assignment { .. }
                ) =>
            {
                m.pattern().as_usize()
            }
            _ => pid,
        }
    }
}

/// `-----`, where a PEM block's armour could begin; the searcher built once, not per window.
static PEM_DASHES: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"-----"));

/// Shortest found value whose other occurrences are redacted too (shorter ones would catch
/// ordinary words).
const MIN_REPEAT_LEN: usize = 8;

/// Adds a finding for every other occurrence of an already found value; `true` when any was
/// added (the findings are then no longer in order). Runs only when something was found.
fn repeat_occurrences(text: &str, found: &mut Vec<Finding>) -> bool {
    let values = found_values(text, found);
    if values.is_empty() {
        return false;
    }
    // What is already found, by start, for `covered`: an occurrence inside one is not new.
    let mut spans: Vec<(usize, usize)> =
        found.iter().map(|f| (f.range.start, f.range.end)).collect();
    spans.sort_unstable();
    let mut covered = Covered {
        spans: &spans,
        next: 0,
        reach: 0,
    };
    let before = found.len();
    let mut add = |start: usize, end: usize, value: usize| {
        if !covered.covers(start, end) {
            found.push(Finding {
                range: start..end,
                kind: values[value].1,
            });
        }
    };
    if values.len() <= FEW_VALUES {
        // Few values: Aho-Corasick's vectorised prefilters find them fastest; the automaton is
        // small to build.
        let Ok(ac) = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::NoncontiguousNFA))
            .build(values.iter().map(|(v, _)| v))
        else {
            return false;
        };
        for m in ac.find_iter(text) {
            add(m.start(), m.end(), m.pattern().as_usize());
        }
    } else {
        // Many values (a pasted `.env` file): building an automaton for all of them cost more
        // than the rest of the redaction. Every value is at least 8 bytes, so its first 8
        // bytes index it: one filter bit test per position of the text.
        PrefixIndex::new(values.iter().map(|(v, _)| v.as_bytes()))
            .for_each_leftmost_longest(text.as_bytes(), &mut add);
    }
    found.len() > before
}

/// The distinct values of `found` long enough to look for elsewhere, sorted, with a kind each.
fn found_values<'t>(text: &'t str, found: &[Finding]) -> Vec<(&'t str, &'static str)> {
    let mut values: Vec<(&str, &'static str)> = found
        .iter()
        .map(|f| (&text[f.range.clone()], f.kind))
        .filter(|(v, _)| v.len() >= MIN_REPEAT_LEN)
        .collect();
    values.sort_unstable();
    values.dedup_by(|b, a| a.0 == b.0);
    values
}

/// Up to this many distinct values, [`repeat_occurrences`] searches with Aho-Corasick.
const FEW_VALUES: usize = 8;

/// Whether an occurrence lies inside one of the spans found before it, asked with starts that
/// never decrease: the spans that start at or before it are folded into the furthest end they
/// reach, so each span is looked at once.
struct Covered<'a> {
    /// Sorted by start.
    spans: &'a [(usize, usize)],
    next: usize,
    reach: usize,
}

impl Covered<'_> {
    fn covers(&mut self, start: usize, end: usize) -> bool {
        while let Some(&(s, e)) = self.spans.get(self.next) {
            if s > start {
                break;
            }
            self.reach = self.reach.max(e);
            self.next += 1;
        }
        self.next > 0 && self.reach >= end
    }
}

/// Byte strings of at least 8 bytes indexed by their first 8: a 4,096-bit filter of the
/// prefixes' hashes in front of the prefixes sorted with their values, longest first.
struct PrefixIndex<'a> {
    filter: Box<[u64; 64]>,
    /// (prefix, value, index of the value), by prefix then longest value first.
    sorted: Vec<(u64, &'a [u8], usize)>,
}

impl<'a> PrefixIndex<'a> {
    fn new(values: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut filter = Box::new([0u64; 64]);
        let mut sorted: Vec<(u64, &[u8], usize)> =
            values.enumerate().map(|(i, v)| (prefix(v), v, i)).collect();
        for &(p, _, _) in &sorted {
            let h = bucket(p);
            filter[h / 64] |= 1 << (h % 64);
        }
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())));
        PrefixIndex { filter, sorted }
    }

    /// Calls `f(start, end, value)` for each occurrence in `text`, leftmost first, the longest
    /// value where several start at the same place, and not overlapping (as Aho-Corasick's
    /// leftmost-longest search reports them).
    fn for_each_leftmost_longest(&self, text: &[u8], f: &mut impl FnMut(usize, usize, usize)) {
        let mut i = 0;
        while i + 8 <= text.len() {
            let p = prefix(&text[i..]);
            let h = bucket(p);
            if self.filter[h / 64] & (1 << (h % 64)) != 0 {
                let from = self.sorted.partition_point(|e| e.0 < p);
                let hit = self.sorted[from..]
                    .iter()
                    .take_while(|e| e.0 == p)
                    .find(|e| text[i..].starts_with(e.1));
                if let Some(&(_, v, n)) = hit {
                    f(i, i + v.len(), n);
                    i += v.len();
                    continue;
                }
            }
            i += 1;
        }
    }
}

/// The first 8 bytes of `b` (at least 8 long) as one word.
fn prefix(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// A prefix's bit in the filter: the top 12 bits of a multiplicative hash.
fn bucket(p: u64) -> usize {
    (p.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize
}

/// Widens a byte range to char boundaries (patterns match bytes).
fn char_aligned(text: &str, mut r: Range<usize>) -> Range<usize> {
    while !text.is_char_boundary(r.start) {
        r.start -= 1;
    }
    while !text.is_char_boundary(r.end) {
        r.end += 1;
    }
    r
}

impl Inner {
    /// The windows of text around the keyword hits, in order (see [`window`]), for the regex
    /// to search. A hit inside the previous window, when that window runs to the end of its
    /// line, adds nothing; with `skip`, the keyword search then goes on from that line's end
    /// instead of reporting those hits one by one (keywords hold no newline, so no match
    /// straddles it and the hits after it are the same), unless a PEM block could begin in
    /// what is skipped (its window runs further). Without `skip` (the tests' reference), every
    /// hit is looked at.
    fn hit_windows(&self, bytes: &[u8], skip: bool) -> Vec<(usize, usize)> {
        let mut windows: Vec<(usize, usize)> = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let Some(m) = self
                .keywords
                .find(aho_corasick::Input::new(bytes).span(pos..bytes.len()))
            else {
                break;
            };
            pos = m.end().max(m.start() + 1);
            let (lit, case_sensitive, pem) = self.kw[m.pattern().as_usize()];
            if case_sensitive && &bytes[m.start()..m.end()] != lit.as_bytes() {
                continue;
            }
            let covered = windows.last().is_some_and(|last: &(usize, usize)| {
                !pem && m.start() >= last.0
                    && m.end() <= last.1
                    && (last.1 == bytes.len() || bytes[last.1] == b'\n')
            });
            if covered {
                continue; // the previous window already runs to the end of this line
            }
            let w = window(bytes, m.start(), m.end(), pem);
            windows.push(w);
            if skip
                && !pem
                && w.1 > pos
                && (w.1 == bytes.len() || bytes[w.1] == b'\n')
                && PEM_DASHES.find(&bytes[pos..w.1]).is_none()
            {
                pos = w.1;
            }
        }
        windows
    }
}

/// The stretch of text around a keyword hit that a match containing it can occupy: its line,
/// bounded on both sides; a PEM block runs to its END line.
fn window(bytes: &[u8], start: usize, end: usize, pem: bool) -> (usize, usize) {
    let lo = start.saturating_sub(LOOK_BEHIND);
    let from = bytes[lo..start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(lo, |i| lo + i + 1);
    if pem {
        let hi = (end + PEM_MAX).min(bytes.len());
        let to = find(&bytes[end..hi], b"-----END").map_or(hi, |i| (end + i + 80).min(bytes.len()));
        return (from, to);
    }
    let hi = (end + LOOK_AHEAD).min(bytes.len());
    let to = bytes[end..hi]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(hi, |i| end + i);
    (from, to)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn check(c: Check, bytes: &[u8], r: Range<usize>) -> bool {
    let v = &bytes[r.clone()];
    match c {
        Check::None => true,
        Check::Mixed => v.iter().any(u8::is_ascii_alphabetic) && v.iter().any(u8::is_ascii_digit),
        Check::UrlPassword => !is_placeholder(v),
        Check::Assignment { min_len } => {
            let quoted = r.start > 0 && matches!(bytes[r.start - 1], b'"' | b'\'' | b'`');
            let next = bytes.get(r.end).copied();
            plausible_assigned_secret(v, quoted, next, min_len)
        }
    }
}

const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change_me",
    "change-me",
    "placeholder",
    "example",
    "your",
    "xxxx",
    "****",
    "....",
    "redacted",
    "dummy",
    "sample",
    "fixme",
    "todo",
    "notasecret",
    "not-a-secret",
    "not_a_secret",
    "replace",
    "insert",
];

fn is_placeholder(v: &[u8]) -> bool {
    if v.is_empty() || v.iter().all(|&b| b == v[0]) {
        return true;
    }
    if matches!(v[0], b'$' | b'<' | b'{' | b'%' | b'*' | b'[' | b'(') {
        return true;
    }
    const WORDS: [&[u8]; 7] = [
        b"password",
        b"pass",
        b"passwd",
        b"secret",
        b"token",
        b"null",
        b"none",
    ];
    if WORDS.iter().any(|w| w.eq_ignore_ascii_case(v)) {
        return true;
    }
    // One pass for all of them (comparing each placeholder at every offset cost ~15k
    // instructions a value, on inputs full of assignments).
    static ANY: std::sync::LazyLock<Option<AhoCorasick>> = std::sync::LazyLock::new(|| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(PLACEHOLDERS)
            .ok()
    });
    ANY.as_ref().is_some_and(|ac| ac.is_match(v))
}

/// Whether an assigned value (`password = v`) looks like a literal credential rather than a
/// placeholder, a reference to one (`os.environ[...]`, `settings.API_KEY`, `${VAR}`), an
/// identifier, a number, a path or a URL.
fn plausible_assigned_secret(v: &[u8], quoted: bool, next: Option<u8>, min_len: usize) -> bool {
    if v.len() < min_len || is_placeholder(v) {
        return false;
    }
    if v.windows(3).any(|w| w == b"://")
        || v.starts_with(b"/")
        || v.starts_with(b"./")
        || v.starts_with(b"../")
        || v.starts_with(b"~/")
    {
        return false;
    }
    if !quoted
        && (matches!(next, Some(b'(' | b'[' | b'{' | b'<'))
            || matches!(v[0], b'&' | b'*' | b'!' | b'@')
            || v.windows(2).any(|w| w == b"::"))
    {
        return false; // a call, an index, a reference, a path: code, not a value
    }
    let alpha = v.iter().any(u8::is_ascii_alphabetic);
    let digit = v.iter().any(u8::is_ascii_digit);
    let upper = v.iter().any(u8::is_ascii_uppercase);
    let sym = v
        .iter()
        .any(|b| !b.is_ascii_alphanumeric() && !matches!(b, b'_' | b'-' | b'.'));
    if !alpha || !(digit || sym) || (!quoted && !digit) {
        return false; // numbers, identifiers made of words, bare words in code
    }
    let separated = v.iter().any(|b| matches!(b, b'_' | b'-' | b'.'));
    if !upper && !sym && separated {
        return false; // `gpt-4o-mini`, `token_v2`, `tok12.json`, `v1.2.3`
    }
    if !quoted && !sym && v.contains(&b'.') {
        // `settings.API_KEY2`, `self.token1`: a dotted path of identifiers.
        let ident = |seg: &[u8]| {
            seg.first()
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        };
        if v.split(|b| *b == b'.').all(ident) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_compiles_and_names_a_kind() {
        let r = Redactor::builtin();
        println!("{} kinds: {:?}", r.kinds().len(), r.kinds());
        assert!(r.kinds().len() >= 40, "{}", r.kinds().len());
    }

    #[test]
    fn no_keyword_holds_a_newline() {
        // What lets the keyword search skip the rest of a line (see `hit_windows`).
        let r = Redactor::builtin();
        assert!(
            r.inner
                .kw
                .iter()
                .all(|(k, _, _)| !k.is_empty() && !k.contains('\n'))
        );
    }

    /// The built-in rules, built once for the tests that need them many times.
    fn builtin() -> &'static Redactor {
        static R: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
        R.get_or_init(Redactor::builtin)
    }

    fn line_piece() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let kws: Vec<&'static str> = builtin().inner.kw.iter().map(|k| k.0).collect();
        prop_oneof![
            3 => proptest::sample::select(kws.clone()).prop_map(str::to_owned),
            2 => proptest::sample::select(kws).prop_map(|k| k.to_ascii_uppercase()),
            1 => Just("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----".to_owned()),
            1 => Just("-----".to_owned()),
            4 => "[a-z0-9_=:\"' ]{0,12}",
            2 => Just("\n".to_owned()),
            1 => "[a-z ]{900,1100}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Skipping the rest of a covered line finds the same windows as looking at every hit.
        #[test]
        fn skipping_covered_lines_finds_the_same_windows(
            pieces in proptest::collection::vec(line_piece(), 0..40),
        ) {
            let r = builtin();
            let text = pieces.concat();
            proptest::prop_assert_eq!(
                r.inner.hit_windows(text.as_bytes(), true),
                r.inner.hit_windows(text.as_bytes(), false)
            );
        }
    }

    fn assignment_piece() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let kws: Vec<&'static str> = builtin().inner.kw.iter().map(|k| k.0).collect();
        prop_oneof![
            3 => proptest::sample::select(kws).prop_map(str::to_owned),
            3 => proptest::sample::select(vec![
                "=", ": ", " = ", " := ", " => ", "?=", "\\\"", "\"", "'", "`", " ", "\n", "_", ".", "-",
            ])
            .prop_map(str::to_owned),
            3 => "[A-Za-z0-9/+_.-]{1,48}",
            1 => "[a-z]{2,10}://[a-z]{1,8}:[A-Za-z0-9]{6,20}@[a-z.]{3,12}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// The `secret` group read by the matching rule's own regex on the match is the one a
        /// capture search of the combined regex reports (what `find` did before).
        #[test]
        fn secret_group_by_its_rule_matches_the_combined_capture_search(
            pieces in proptest::collection::vec(assignment_piece(), 0..24),
        ) {
            let inner = &*builtin().inner;
            let text = pieces.concat();
            let bytes = text.as_bytes();
            let mut caps = inner.regex.create_captures();
            let mut input = Input::new(bytes);
            loop {
                inner.regex.search_captures(&input, &mut caps);
                let Some(m) = caps.get_match() else { break };
                let pid = m.pattern().as_usize();
                let want = inner
                    .regex
                    .group_info()
                    .to_index(m.pattern(), "secret")
                    .and_then(|g| caps.get_group(g))
                    .unwrap_or(m.span());
                proptest::prop_assert_eq!(inner.secret_span(bytes, pid, m.span()), want);
                if m.start() + 1 >= bytes.len() {
                    break;
                }
                input.set_start(m.start() + 1);
            }
        }
    }

    /// The search [`repeat_occurrences`] replaced: one Aho-Corasick automaton for all values,
    /// each occurrence checked against every earlier finding.
    fn repeat_occurrences_reference(text: &str, found: &mut Vec<Finding>) -> bool {
        let values = found_values(text, found);
        if values.is_empty() {
            return false;
        }
        let ac = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(values.iter().map(|(v, _)| v))
            .unwrap();
        let before = found.len();
        for m in ac.find_iter(text) {
            let covered = found[..before]
                .iter()
                .any(|f| f.range.start <= m.start() && m.end() <= f.range.end);
            if !covered {
                found.push(Finding {
                    range: m.range(),
                    kind: values[m.pattern().as_usize()].1,
                });
            }
        }
        found.len() > before
    }

    /// Text of a few short pieces, so that values taken from it repeat, share prefixes,
    /// overlap and nest.
    fn repetitive_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(
            proptest::sample::select(vec!["ab", "ba", "aab", "abab", "=", "\n"]),
            0..150,
        )
        .prop_map(|p| p.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(600))]
        /// Few values (Aho-Corasick) and many (the prefix index) find the same occurrences as
        /// one automaton for all of them, leftmost-longest, and skip the same covered ones.
        #[test]
        fn repeat_occurrences_match_one_automaton(
            text in repetitive_text(),
            picks in proptest::collection::vec((0usize..400, 0usize..24, 0usize..3), 0..30),
        ) {
            let kinds = ["one", "two", "three"];
            let mut found: Vec<Finding> = picks
                .into_iter()
                .filter_map(|(at, len, k)| {
                    let end = at.checked_add(len)?;
                    (end <= text.len()).then(|| Finding { range: at..end, kind: kinds[k] })
                })
                .collect();
            found.sort_by_key(|f| f.range.start);
            let mut want = found.clone();
            let want_added = repeat_occurrences_reference(&text, &mut want);
            let added = repeat_occurrences(&text, &mut found);
            proptest::prop_assert_eq!(added, want_added);
            proptest::prop_assert_eq!(found, want);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(600))]
        /// The prefix index reports what Aho-Corasick's leftmost-longest search reports, for
        /// values taken from the text (so they occur, share prefixes and nest).
        #[test]
        fn prefix_index_is_leftmost_longest(
            text in repetitive_text(),
            picks in proptest::collection::vec((0usize..400, 8usize..20), 1..30),
        ) {
            let mut values: Vec<&[u8]> = picks
                .into_iter()
                .filter_map(|(at, len)| text.as_bytes().get(at..at + len))
                .collect();
            values.sort_unstable();
            values.dedup();
            let ac = aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&values)
                .unwrap();
            let want: Vec<(usize, usize)> = ac.find_iter(&text).map(|m| (m.start(), m.end())).collect();
            let mut got = Vec::new();
            PrefixIndex::new(values.iter().copied())
                .for_each_leftmost_longest(text.as_bytes(), &mut |s, e, n| {
                    assert_eq!(&text.as_bytes()[s..e], values[n]);
                    got.push((s, e));
                });
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn windows_clip_to_lines() {
        let t = b"aaa\nbb token cc\ndd";
        let (s, e) = window(t, 7, 12, false);
        assert_eq!(&t[s..e], b"bb token cc");
    }

    #[test]
    fn assignment_values() {
        let ok = |v: &str, q: bool| plausible_assigned_secret(v.as_bytes(), q, None, 6);
        assert!(ok("Xk9#mQ2!pL", false));
        assert!(ok("a8k2m9x0q1zz", true));
        assert!(!ok("changeme", false));
        assert!(!ok("settings.API_KEY", false));
        assert!(!ok("gpt-4o-mini", true));
        assert!(!ok("1234567890", true));
        assert!(!ok("${DB_PASSWORD}", true));
        assert!(!ok("https://x.example/a1", true));
    }

    #[test]
    fn a_found_value_is_redacted_wherever_else_it_appears() {
        // Found by the `redact` fuzz target: only the assignment was redacted.
        let r = Redactor::builtin();
        let text = "DB_PASSWORD = \"Xk9mQ2pL7vN4wq\"\nthen run: psql -W Xk9mQ2pL7vN4wq; echo Xk9mQ2pL7vN4wq";
        let out = r.redact(text).unwrap();
        assert!(!out.contains("Xk9mQ2pL7vN4wq"), "{out}");
        assert_eq!(out.matches("[REDACTED:").count(), 3, "{out}");
    }
}
