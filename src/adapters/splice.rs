//! Rewritten texts written into the client's body in place, so that a request a redaction
//! layer changed can still be forwarded as the client wrote it.
//!
//! Encoding a whole request again because one text in it changed is most of what a redacted
//! 100 KB conversation costs; a secret pasted once stays in every later turn of it. Instead,
//! each JSON string of the body whose text is one that changed is replaced by the new text,
//! and everything else is kept byte for byte.
//!
//! The replacement is only made when it is exact. Every changed text must be found in the body
//! as many times as the request's text slots hold it, each time as the string value of a key
//! that holds message text (`content`, `text`, `arguments`, …), and never as a key. Anything
//! else (a text the body holds in another form, such as an Anthropic `tool_use` input object;
//! the same text in a field no layer reads; one old text given two new ones) answers `None`,
//! and the caller drops the client's body: the request is then encoded from its fields, as
//! before. The body was parsed whole with no key twice, so a value found by its text is the
//! value the upstream reads.

use bytes::Bytes;

use super::json_out;
use crate::sse::skip_ws;

/// The keys whose string values are message text in either client format.
const TEXT_KEYS: [&[u8]; 7] = [
    b"content",
    b"text",
    b"arguments",
    b"thinking",
    b"system",
    b"reasoning_content",
    b"reasoning",
];

/// `raw` with every string value whose text is an old text of `edits` written as its new text,
/// when each such text is found exactly as many times as `edits` counts it (see the module
/// docs); `None` otherwise. `edits` holds (old text, new text, how many text slots of the
/// request held it), one entry per old text.
pub(crate) fn splice_texts(raw: &[u8], edits: &[(&str, &str, usize)]) -> Option<Bytes> {
    if edits.is_empty() {
        return None;
    }
    let mut found = vec![0usize; edits.len()];
    let s = raw;
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut copied = 0;
    // The key a string value directly follows (`"key": "value"`), if any.
    let mut key_of_next: Option<&[u8]> = None;
    let mut i = 0;
    while let Some(q) = memchr::memchr(b'"', &s[i..]) {
        let start = i + q;
        let end = string_end(s, start)?;
        let after = skip_ws(s, end);
        let is_key = s.get(after) == Some(&b':');
        let inner = &s[start + 1..end - 1];
        let old = edits
            .iter()
            .position(|(old, _, _)| reads_as(inner, old.as_bytes()));
        if is_key {
            if old.is_some() {
                return None;
            }
            let value = skip_ws(s, after + 1);
            key_of_next = (s.get(value) == Some(&b'"')).then_some(inner);
            i = after + 1;
            continue;
        }
        let keyed = key_of_next.take();
        if let Some(n) = old {
            if !keyed.is_some_and(|k| TEXT_KEYS.contains(&k)) {
                return None;
            }
            found[n] += 1;
            out.extend_from_slice(&s[copied..start]);
            json_out::write_str(&mut out, edits[n].1);
            copied = end;
        }
        i = end;
    }
    if edits
        .iter()
        .zip(&found)
        .any(|((_, _, want), got)| got != want)
    {
        return None;
    }
    out.extend_from_slice(&s[copied..]);
    Some(Bytes::from(out))
}

/// The index after the JSON string whose opening quote is at `start`: the next quote not
/// escaped (preceded by an even number of backslashes). The body was parsed whole, so the
/// string is well formed.
fn string_end(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let q = i + memchr::memchr(b'"', &s[i..])?;
        let backslashes = s[i..q].iter().rev().take_while(|&&b| b == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(q + 1);
        }
        i = q + 1;
    }
}

/// Whether the JSON string contents `inner` (between its quotes) decode to exactly `text`,
/// compared as they are decoded: a string that differs is left at its first differing byte,
/// without being decoded whole or copied.
fn reads_as(inner: &[u8], text: &[u8]) -> bool {
    // An escape is longer than what it stands for.
    if inner.len() < text.len() {
        return false;
    }
    let (mut i, mut t) = (0, 0);
    while i < inner.len() {
        let b = inner[i];
        if b != b'\\' {
            if text.get(t) != Some(&b) {
                return false;
            }
            i += 1;
            t += 1;
            continue;
        }
        let mut utf8 = [0u8; 4];
        let (unescaped, len): (&[u8], usize) = match inner.get(i + 1) {
            Some(b'"') => (b"\"", 2),
            Some(b'\\') => (b"\\", 2),
            Some(b'/') => (b"/", 2),
            Some(b'b') => (b"\x08", 2),
            Some(b'f') => (b"\x0c", 2),
            Some(b'n') => (b"\n", 2),
            Some(b'r') => (b"\r", 2),
            Some(b't') => (b"\t", 2),
            Some(b'u') => match unicode_escape(&inner[i..]) {
                Some((c, len)) => (c.encode_utf8(&mut utf8).as_bytes(), len),
                None => return false,
            },
            _ => return false,
        };
        if text.get(t..t + unescaped.len()) != Some(unescaped) {
            return false;
        }
        i += len;
        t += unescaped.len();
    }
    t == text.len()
}

/// The character a `\uXXXX` escape (or a surrogate pair of two) at the start of `s` stands for,
/// and how many bytes the escape takes.
fn unicode_escape(s: &[u8]) -> Option<(char, usize)> {
    let hex = |at: usize| -> Option<u32> {
        let h = std::str::from_utf8(s.get(at..at + 4)?).ok()?;
        u32::from_str_radix(h, 16).ok()
    };
    let first = hex(2)?;
    if (0xD800..0xDC00).contains(&first) {
        if s.get(6..8) != Some(b"\\u") {
            return None;
        }
        let second = hex(8)?;
        if !(0xDC00..0xE000).contains(&second) {
            return None;
        }
        let c = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
        return Some((char::from_u32(c)?, 12));
    }
    Some((char::from_u32(first)?, 6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `s` written as JSON with every character escaped as `\uXXXX` (pairs beyond the BMP).
    fn all_escaped(s: &str) -> String {
        s.encode_utf16().map(|u| format!("\\u{u:04x}")).collect()
    }

    proptest! {
        #[test]
        fn a_string_reads_as_its_text_however_it_is_escaped(s in "\\PC{0,12}|[\"\\\\/\n\t\u{1}é😀a]{0,8}", other in "\\PC{0,12}") {
            let plain = serde_json::to_string(&s).unwrap();
            let inner = &plain.as_bytes()[1..plain.len() - 1];
            prop_assert!(reads_as(inner, s.as_bytes()));
            prop_assert!(reads_as(all_escaped(&s).as_bytes(), s.as_bytes()));
            prop_assert_eq!(reads_as(inner, other.as_bytes()), other == s);
            prop_assert_eq!(reads_as(all_escaped(&s).as_bytes(), other.as_bytes()), other == s);
            // The end of the string is found past every escaped quote and backslash.
            let quoted = format!("{plain} ,\"x\"");
            prop_assert_eq!(string_end(quoted.as_bytes(), 0), Some(plain.len()));
        }
    }

    fn splice(raw: &str, edits: &[(&str, &str, usize)]) -> Option<String> {
        splice_texts(raw.as_bytes(), edits).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn a_text_is_replaced_where_it_stands_and_nothing_else_moves() {
        let raw = r#"{ "model" : "m",  "messages":[ {"role":"user", "content" : "key AKIA1"} ] }"#;
        assert_eq!(
            splice(raw, &[("key AKIA1", "key [REDACTED]", 1)]).unwrap(),
            r#"{ "model" : "m",  "messages":[ {"role":"user", "content" : "key [REDACTED]"} ] }"#
        );
        // Written with escapes, found by its text; the new text is written by nenya's writer.
        let raw = r#"{"messages":[{"role":"user","content":"a\u0041\n\"q\""}]}"#;
        assert_eq!(
            splice(raw, &[("aA\n\"q\"", "b\t", 1)]).unwrap(),
            r#"{"messages":[{"role":"user","content":"b\t"}]}"#
        );
    }

    #[test]
    fn anything_not_exactly_the_slots_answers_none() {
        let raw = r#"{"messages":[{"role":"user","content":"s1"},{"role":"user","content":"s1"}]}"#;
        // Both copies counted: replaced; one counted: not exact.
        assert!(splice(raw, &[("s1", "x", 2)]).is_some());
        assert_eq!(splice(raw, &[("s1", "x", 1)]), None);
        // Not there at all (held in another form).
        assert_eq!(splice(raw, &[("s2", "x", 1)]), None);
        // The same text in a field that is not message text, or in a list, or as a key.
        let other = r#"{"metadata":{"note":"s1"},"messages":[{"role":"user","content":"s1"}]}"#;
        assert_eq!(splice(other, &[("s1", "x", 1)]), None);
        let listed = r#"{"stop":["s1"],"messages":[{"role":"user","content":"s1"}]}"#;
        assert_eq!(splice(listed, &[("s1", "x", 1)]), None);
        // Found as often as counted, but not where message text stands.
        let elsewhere = r#"{"note":"s1","messages":[{"role":"user","content":{"t":1}}]}"#;
        assert_eq!(splice(elsewhere, &[("s1", "x", 1)]), None);
        let key = r#"{"s1":1,"messages":[{"role":"user","content":"s1"}]}"#;
        assert_eq!(splice(key, &[("s1", "x", 1)]), None);
        assert_eq!(splice(raw, &[]), None);
    }
}
