//! Parsing a client body into a JSON tree while noting whether any object names a key twice.
//!
//! serde_json keeps the last of two equal keys; other parsers keep the first, or refuse the
//! body. A body with a repeated key is therefore never forwarded as it came: what nenya read
//! (and redacted) could differ from what the upstream would read.
//!
//! Two parsers build the tree. [`Fast`] takes the bodies clients send: valid UTF-8, ordinary
//! nesting, strings with the usual escapes. It finds each run of string bytes with one SIMD
//! search for `"` or `\` (`memchr2`) and copies the run once, where serde_json steps through
//! 8 bytes at a time, copies escaped strings into a scratch buffer and then again into the
//! `String`. On a coding agent's 100 KB conversation, full of `\n` and `\"`, that was most
//! of the request's instructions (BENCHMARKS.md). Whatever `Fast` is not sure of (an error, a
//! lone surrogate, a float, deep nesting) it hands to serde_json, which parses the whole body
//! again: errors and limits are serde_json's own, and a tree `Fast` returns is the tree
//! serde_json would have built (unit and property tests below, and a check under the fuzzer).
//!
//! An OpenAI request is read one step further ([`parse_openai`]): a message that is just a
//! role and a text, most of any conversation, is typed as it is read, with no map (whose every
//! key is a `String` hashed with SipHash) built and taken apart again by the decoder. Any other
//! message is kept as the value it is; the decoder then treats it as before, and a property
//! test checks that both ways decode every body alike.

use std::borrow::Cow;
use std::cell::Cell;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::model::Role;

/// Parses `body` as one JSON value (trailing whitespace only), as `serde_json::from_slice`
/// does, and tells whether some object in it had a key twice.
pub(crate) fn parse(body: &[u8]) -> Result<(Value, bool), serde_json::Error> {
    let fast = Fast::parse(body);
    #[cfg(fuzzing)]
    if let Some((v, repeated)) = &fast {
        let (sv, srep) = slow(body).expect("the fast parser took a body serde_json refuses");
        assert_eq!(v, &sv);
        assert_eq!(v.to_string(), sv.to_string(), "key order");
        assert_eq!(*repeated, srep);
    }
    match fast {
        Some(found) => Ok(found),
        None => slow(body),
    }
}

/// One element of an OpenAI request's `messages`, as [`parse_openai`] read it.
#[derive(Debug, PartialEq)]
pub(crate) enum Msg {
    /// `{"role": "...", "content": "..."}` and no other key, with a role such a message is
    /// decoded from as it stands (system, developer, user, assistant): read without a map or
    /// a string per key.
    Plain(Role, String),
    /// Any other element, for the full decoder.
    Value(Value),
}

/// An OpenAI request body as [`parse_openai`] reads it for the decoder.
pub(crate) struct Read {
    /// The body's members but `model` when it is a string and `messages` when it is an array.
    pub(crate) map: Map<String, Value>,
    /// `model`, when a string.
    pub(crate) model: Option<String>,
    /// `messages`, when an array, element by element (see [`Msg`]).
    pub(crate) messages: Option<Vec<Msg>>,
    /// Whether some object named a key twice.
    pub(crate) repeated: bool,
}

/// An OpenAI request body read for the decoder (see [`Read`]): a plain request (a model and
/// plain messages) is read with no map and no string per key. `None` when the fast parser
/// declines the body or `model` or `messages` is given twice: the caller then reads the body
/// with [`parse`], which says the same as this in another form.
pub(crate) fn parse_openai(body: &[u8]) -> Option<Read> {
    let mut p = Fast::new(body)?;
    p.ws();
    if p.b.get(p.i) != Some(&b'{') {
        return None;
    }
    let mut read = Read {
        map: Map::new(),
        model: None,
        messages: None,
        repeated: false,
    };
    let (mut model_seen, mut messages_seen) = (false, false);
    if !p.open(1, b'}')? {
        loop {
            let k = p.key_str()?;
            p.ws();
            let next = p.b.get(p.i).copied();
            let seen = match &*k {
                "model" => Some((&mut model_seen, next == Some(b'"'))),
                "messages" => Some((&mut messages_seen, next == Some(b'['))),
                _ => None,
            };
            if let Some((seen, typed)) = seen {
                if std::mem::replace(seen, true) {
                    return None;
                }
                if typed {
                    if next == Some(b'"') {
                        read.model = Some(p.string()?);
                    } else {
                        read.messages = Some(p.messages(1)?);
                    }
                    if p.close_or_next(b'}')? {
                        break;
                    }
                    continue;
                }
            }
            p.member(1, k.into_owned(), &mut read.map)?;
            if p.close_or_next(b'}')? {
                break;
            }
        }
    }
    p.ws();
    read.repeated = p.repeated;
    (p.i == body.len()).then_some(read)
}

/// serde_json's parse, noting repeated keys: the reference, and the way for whatever [`Fast`]
/// declines.
pub(crate) fn slow(body: &[u8]) -> Result<(Value, bool), serde_json::Error> {
    let repeated = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Seed(&repeated).deserialize(&mut de)?;
    de.end()?;
    Ok((v, repeated.get()))
}

#[derive(Clone, Copy)]
struct Seed<'a>(&'a Cell<bool>);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(self)?;
            if out.insert(k, v).is_some() {
                self.0.set(true);
            }
        }
        Ok(Value::Object(out))
    }
}

/// The string members a message was read with so far, as an object.
fn read_map(read: [Option<(&'static str, Cow<'_, str>)>; 2]) -> Map<String, Value> {
    let mut map = Map::new();
    for (k, v) in read.into_iter().flatten() {
        map.insert(k.to_owned(), Value::String(v.into_owned()));
    }
    map
}

/// Deeper bodies go to serde_json (whose limit is 128 levels).
const MAX_DEPTH: u32 = 100;

/// The fast parser: `None` for anything it does not take, never a different tree.
struct Fast<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    repeated: bool,
    /// Whether the body holds a byte under 0x20 anywhere. SDKs send compact JSON, which holds
    /// none, and then no string needs checking for a raw control character.
    controls: bool,
}

impl<'a> Fast<'a> {
    fn new(body: &'a [u8]) -> Option<Self> {
        // One UTF-8 check for the body: a string's bytes are then valid as they are (every run
        // starts and ends next to an ASCII byte), and a non-ASCII byte outside a string is an
        // error `value` declines.
        let s = std::str::from_utf8(body).ok()?;
        Some(Fast {
            s,
            b: body,
            i: 0,
            repeated: false,
            controls: body.iter().copied().min().unwrap_or(b' ') < b' ',
        })
    }

    fn parse(body: &'a [u8]) -> Option<(Value, bool)> {
        let mut p = Fast::new(body)?;
        let v = p.value(0)?;
        p.ws();
        (p.i == body.len()).then_some((v, p.repeated))
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.i += 1;
        }
    }

    fn value(&mut self, depth: u32) -> Option<Value> {
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Value::String),
            b't' => self.word(b"true", Value::Bool(true)),
            b'f' => self.word(b"false", Value::Bool(false)),
            b'n' => self.word(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn word(&mut self, w: &[u8], v: Value) -> Option<Value> {
        self.b[self.i..].starts_with(w).then(|| {
            self.i += w.len();
            v
        })
    }

    /// Eats `c` if it comes next (after whitespace).
    #[inline]
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        let here = self.b.get(self.i) == Some(&c);
        self.i += usize::from(here);
        here
    }

    /// Eats `c` (after whitespace) or declines.
    #[inline]
    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// Steps past the `{` or `[` at `self.i` (declining past [`MAX_DEPTH`]); whether `close`
    /// follows at once (an empty object or array).
    fn open(&mut self, depth: u32, close: u8) -> Option<bool> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        Some(self.eat(close))
    }

    /// After a member or an element: `false` on a comma, `true` on `close`, else declines.
    fn close_or_next(&mut self, close: u8) -> Option<bool> {
        if self.eat(b',') {
            return Some(false);
        }
        self.expect(close).map(|()| true)
    }

    fn object(&mut self, depth: u32) -> Option<Value> {
        let mut map = Map::new();
        if !self.open(depth, b'}')? {
            self.members(depth, &mut map)?;
        }
        Some(Value::Object(map))
    }

    /// The next member's key, and its colon (after whitespace), or declines.
    fn key(&mut self) -> Option<String> {
        self.key_str().map(Cow::into_owned)
    }

    /// [`Self::key`], borrowed when it holds no escape.
    fn key_str(&mut self) -> Option<Cow<'a, str>> {
        self.ws();
        if self.b.get(self.i) != Some(&b'"') {
            return None;
        }
        let k = self.str()?;
        self.expect(b':')?;
        Some(k)
    }

    /// The members of an object from the next key to its closing brace, into `map`.
    fn members(&mut self, depth: u32, map: &mut Map<String, Value>) -> Option<()> {
        loop {
            let k = self.key()?;
            self.member(depth, k, map)?;
            if self.close_or_next(b'}')? {
                return Some(());
            }
        }
    }

    /// The value of key `k` (the colon read), into `map`.
    fn member(&mut self, depth: u32, k: String, map: &mut Map<String, Value>) -> Option<()> {
        let v = self.value(depth)?;
        if map.insert(k, v).is_some() {
            self.repeated = true;
        }
        Some(())
    }

    /// The `messages` array whose `[` is at `self.i`, in an object at `depth`.
    fn messages(&mut self, depth: u32) -> Option<Vec<Msg>> {
        let mut out = Vec::new();
        if !self.open(depth + 1, b']')? {
            loop {
                out.push(self.message(depth + 1)?);
                if self.close_or_next(b']')? {
                    break;
                }
            }
        }
        Some(out)
    }

    /// One element of `messages` (in an array at `depth`): [`Msg::Plain`] when it is one, else
    /// the value it is. What was read before it turned out not to be plain is kept, so
    /// nothing is read twice.
    fn message(&mut self, depth: u32) -> Option<Msg> {
        self.ws();
        if self.b.get(self.i) != Some(&b'{') {
            return self.value(depth).map(Msg::Value);
        }
        let depth = depth + 1;
        if self.open(depth, b'}')? {
            return Some(Msg::Value(Value::Object(Map::new())));
        }
        // The members read so far, in their order: `role` and `content`, each a string.
        let mut read: [Option<(&'static str, Cow<'a, str>)>; 2] = [None, None];
        for slot in 0.. {
            let k = self.key_str()?;
            self.ws();
            let name = match &*k {
                "role" => "role",
                "content" => "content",
                _ => "",
            };
            // A third key is never plain (`slot == 2` keeps `read[slot]` in bounds).
            if slot == 2
                || name.is_empty()
                || read.iter().flatten().any(|(n, _)| *n == name)
                || self.b.get(self.i) != Some(&b'"')
            {
                let mut map = read_map(read);
                self.member(depth, k.into_owned(), &mut map)?;
                if !self.close_or_next(b'}')? {
                    self.members(depth, &mut map)?;
                }
                return Some(Msg::Value(Value::Object(map)));
            }
            read[slot] = Some((name, self.str()?));
            if self.close_or_next(b'}')? {
                break;
            }
        }
        let role = read.iter().flatten().find(|(n, _)| *n == "role");
        let role = match role.map(|(_, r)| &**r) {
            Some("system") => Role::System,
            Some("developer") => Role::Developer,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            _ => return Some(Msg::Value(Value::Object(read_map(read)))),
        };
        if !read.iter().flatten().any(|(n, _)| *n == "content") {
            return Some(Msg::Value(Value::Object(read_map(read))));
        }
        let content = read.into_iter().flatten().find(|(n, _)| *n == "content");
        content.map(|(_, c)| Msg::Plain(role, c.into_owned()))
    }

    fn array(&mut self, depth: u32) -> Option<Value> {
        let mut out = Vec::new();
        if !self.open(depth, b']')? {
            loop {
                out.push(self.value(depth)?);
                if self.close_or_next(b']')? {
                    break;
                }
            }
        }
        Some(Value::Array(out))
    }

    /// The string whose opening quote is at `self.i`.
    fn string(&mut self) -> Option<String> {
        self.str().map(Cow::into_owned)
    }

    /// [`Self::string`], borrowed from the body when it holds no escape: for a key or a value
    /// that is only compared, no allocation.
    fn str(&mut self) -> Option<Cow<'a, str>> {
        let b = self.b;
        let start = self.i + 1;
        let first = self.special(start)?;
        if b[first] == b'"' {
            self.i = first + 1;
            return self.s.get(start..first).map(Cow::Borrowed);
        }
        self.escaped(start, first).map(Cow::Owned)
    }

    /// The rest of a string from `first`, its first escape (`start`: its first byte).
    fn escaped(&mut self, start: usize, first: usize) -> Option<String> {
        let b = self.b;
        // An escaped string: decoded 8 bytes at a time into one buffer sized from the raw
        // bytes left (plus a word of slack for the last whole-word copy).
        let mut out = Vec::with_capacity(self.raw_len(first) + (first - start) + 8);
        out.extend_from_slice(&b[start..first]);
        let mut at = first;
        loop {
            if b[at] == b'"' {
                self.i = at + 1;
                // Runs of the checked body and whole escaped characters: valid, and checked
                // again here at memory speed (no unsafe in this crate).
                return String::from_utf8(out).ok();
            }
            if b[at] != b'\\' {
                return None; // a control character
            }
            at = self.escape(at + 1, &mut out)?;
            // Copy whole words while they hold no special byte; on the word that does, copy
            // it whole too and cut the buffer back to the special byte (no short copies).
            loop {
                let Some(word) = b.get(at..at + 8) else {
                    let end = self.special(at)?;
                    out.extend_from_slice(&b[at..end]);
                    at = end;
                    break;
                };
                let word: &[u8; 8] = word.try_into().ok()?;
                let m = special_bytes(u64::from_le_bytes(*word));
                out.extend_from_slice(word);
                if m == 0 {
                    at += 8;
                    continue;
                }
                let k = m.trailing_zeros() as usize / 8;
                out.truncate(out.len() - 8 + k);
                at += k;
                break;
            }
        }
    }

    /// An upper bound on what is left of the string's decoded length from `at` (a backslash):
    /// the raw bytes up to its closing quote, found with SIMD `memchr` (a quote after an odd
    /// run of backslashes is escaped), so an escaped string is decoded into one allocation.
    fn raw_len(&self, at: usize) -> usize {
        let mut from = at;
        while let Some(n) = memchr::memchr(b'"', &self.b[from..]) {
            let quote = from + n;
            let backslashes = self.b[at..quote]
                .iter()
                .rev()
                .take_while(|&&c| c == b'\\')
                .count();
            if backslashes % 2 == 0 {
                return quote - at;
            }
            from = quote + 1;
        }
        self.b.len() - at
    }

    /// The index of the first `"`, `\` or control character from `at` on: two words tested
    /// in place (keys and short values end there), then SIMD `memchr2` for long runs.
    #[inline]
    fn special(&self, mut at: usize) -> Option<usize> {
        let b = self.b;
        for _ in 0..2 {
            let Some(word) = b.get(at..at + 8) else { break };
            let m = special_bytes(u64::from_le_bytes(word.try_into().ok()?));
            if m != 0 {
                return Some(at + m.trailing_zeros() as usize / 8);
            }
            at += 8;
        }
        let n = memchr::memchr2(b'"', b'\\', &b[at..])?;
        // The smallest byte of the run: a reduction the compiler vectorises (it does not
        // vectorise an early-exit search). Only for bodies that hold a control byte at all.
        if self.controls && b[at..at + n].iter().copied().min().unwrap_or(b' ') < b' ' {
            return None;
        }
        Some(at + n)
    }

    /// Decodes the escape whose letter is at `at` into `out`; the index after it.
    #[inline]
    fn escape(&self, at: usize, out: &mut Vec<u8>) -> Option<usize> {
        let c = match *self.b.get(at)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let hi = self.hex4(at + 1)?;
                let (cp, next) = match hi {
                    0xD800..=0xDBFF => {
                        if self.b.get(at + 5..at + 7)? != b"\\u" {
                            return None;
                        }
                        let lo = self.hex4(at + 7)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return None;
                        }
                        (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), at + 11)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => (hi, at + 5),
                };
                let c = char::from_u32(cp)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                return Some(next);
            }
            _ => return None,
        };
        out.push(c);
        Some(at + 1)
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        self.b
            .get(at..at + 4)?
            .iter()
            .try_fold(0, |n, &d| Some(n << 4 | char::from(d).to_digit(16)?))
    }

    /// Integers of up to 18 digits here; any other number (fractions, exponents, `-0`, big
    /// integers) parsed by serde_json on its own span, so it rounds and refuses as serde_json does.
    fn number(&mut self) -> Option<Value> {
        let b = self.b;
        let start = self.i;
        let neg = b[start] == b'-';
        let digits_from = start + usize::from(neg);
        let mut j = digits_from;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        let digits = j - digits_from;
        if digits == 0 || (digits > 1 && b[digits_from] == b'0') {
            return None;
        }
        let plain = !matches!(b.get(j), Some(b'.' | b'e' | b'E'));
        if plain && digits <= 18 {
            let n = b[digits_from..j]
                .iter()
                .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            if !(neg && n == 0) {
                self.i = j;
                return Some(Value::Number(if neg {
                    (-(n as i64)).into()
                } else {
                    n.into()
                }));
            }
        }
        if b.get(j) == Some(&b'.') {
            j += 1;
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
        }
        if matches!(b.get(j), Some(b'e' | b'E')) {
            j += 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
        }
        let n: Number = serde_json::from_str(self.s.get(start..j)?).ok()?;
        self.i = j;
        Some(Value::Number(n))
    }
}

/// The high bit of each byte of `w` (little-endian) that is `"`, `\` or a control character,
/// exact up to the first such byte (the has-zero-byte trick: a borrow can only mark bytes
/// above a true one), which is all `trailing_zeros` reads.
#[inline]
fn special_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    ((quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash)
        | (w.wrapping_sub(ONES * 0x20) & !w))
        & (ONES << 7)
}

#[cfg(test)]
mod tests {
    use super::{Fast, Msg, Read, parse, parse_openai, slow};
    use crate::model::Role;
    use proptest::prelude::*;
    use serde_json::Value;

    /// What the fast parser says of `body`, checked against serde_json: when it gives a tree,
    /// serde_json gives the same (key order and repeats included); when serde_json refuses the
    /// body, it declines too.
    fn fast_agrees(body: &[u8]) -> Option<(Value, bool)> {
        let fast = Fast::parse(body);
        match (&fast, slow(body)) {
            (Some((v, rep)), Ok((sv, srep))) => {
                assert_eq!(v, &sv, "{:?}", String::from_utf8_lossy(body));
                assert_eq!(v.to_string(), sv.to_string(), "key order");
                assert_eq!(*rep, srep, "{:?}", String::from_utf8_lossy(body));
            }
            (Some(_), Err(e)) => panic!(
                "fast parser took {:?}, which serde_json refuses: {e}",
                String::from_utf8_lossy(body)
            ),
            (None, _) => {}
        }
        fast
    }

    #[test]
    fn the_fast_parser_takes_what_clients_send_and_declines_the_rest() {
        for body in [
            r#"{"model":"m","messages":[{"role":"user","content":"line\nnext \"q\" \\ \/ \b\f\r\t"}]}"#,
            r#"{"a":"\u00e9\u4e2d\ud83d\ude00\u0000","b":"é中😀"}"#,
            "{\"pretty\": [1, -2, 18446744073709551615, -9223372036854775808, 0, -0, 0.5, 1e3, -1.5E-7],\n  \"t\": true, \"f\": false, \"n\": null}\n",
            r#"{"k\u0041":1,"kA":2}"#,
            r#"{"a":{},"b":[],"c":[{}],"d":"","e":"\\"}"#,
            " [ ] ",
            r#""top-level string""#,
            "123456789012345678",
            "1234567890123456789012",
        ] {
            assert!(fast_agrees(body.as_bytes()).is_some(), "{body}");
        }
        // Deep but within serde_json's limit: declined here, parsed by serde_json.
        let deep = format!("{}{}", "[".repeat(110), "]".repeat(110));
        assert!(fast_agrees(deep.as_bytes()).is_none());
        assert!(parse(deep.as_bytes()).is_ok());
        for bad in [
            &b"{\"a\":1} x"[..],
            br#"{"a":"\ud800"}"#,
            br#"{"a":"\udc00"}"#,
            br#"{"a":"\ud800\u0041"}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12G4"}"#,
            b"{\"a\":\"raw\ncontrol\"}",
            b"{\"a\":\"\xff\"}",
            b"\xef\xbb\xbf{}",
            b"[1,]",
            b"{\"a\":1,}",
            b"[01]",
            b"[1.]",
            b"[-]",
            b"[1e]",
            br#"{"a":1e999}"#,
            b"[tru]",
            b"{\"a\" 1}",
            b"{1:2}",
            b"\"open",
            b"",
            b"   ",
        ] {
            assert!(
                fast_agrees(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    const PIECES: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b"\\",
        b",",
        b":",
        b" ",
        b"\n",
        b"\t",
        b"\x01",
        b"0",
        b"7",
        b"-",
        b".",
        b"e",
        b"+",
        b"u",
        b"D800",
        b"DC00",
        b"00e9",
        b"n",
        b"/",
        b"true",
        b"null",
        b"a",
        b"\"k\"",
        b"\xc3\xa9",
        b"\xff",
        b"\xf0\x9f\x98\x80",
    ];

    proptest! {
        /// Every JSON document, compact or pretty, is taken by the fast parser, as serde_json
        /// reads it.
        #[test]
        fn any_document_is_taken_as_serde_json_reads_it(v in super::super::json_out::tests::value()) {
            for text in [serde_json::to_string(&v).unwrap(), serde_json::to_string_pretty(&v).unwrap()] {
                let (got, repeated) = fast_agrees(text.as_bytes()).expect("declined a valid document");
                prop_assert_eq!(got.to_string(), v.to_string());
                prop_assert!(!repeated);
            }
        }

        /// Bytes made of JSON's pieces, mostly invalid: whatever the fast parser takes, serde_json
        /// takes alike, and what serde_json refuses it declines.
        #[test]
        fn pieces_of_json_never_parse_differently(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..40),
        ) {
            let body = pieces.concat();
            fast_agrees(&body);
            let _ = parse(&body);
        }

        /// Objects with keys drawn from a few, so that some repeat (also spelled with escapes).
        #[test]
        fn repeated_keys_are_found_as_serde_json_would_keep_them(
            keys in proptest::collection::vec(prop_oneof![
                Just("a"), Just("b"), Just("\\u0061"), Just("\\n"), Just("\\u000a")
            ], 0..6),
            nested in any::<bool>(),
        ) {
            let members: Vec<String> = keys.iter().enumerate().map(|(i, k)| format!("\"{k}\":{i}")).collect();
            let mut body = format!("{{{}}}", members.join(","));
            if nested {
                body = format!("[{{\"x\":{body}}}]");
            }
            prop_assert!(fast_agrees(body.as_bytes()).is_some());
        }
    }

    /// What [`parse_openai`] and the typed messages make of `body` is what the whole tree
    /// makes of it: the same request or the same error, the same "as sent" verdict. Whether
    /// it took the body.
    fn read_agrees(body: &[u8]) -> bool {
        let Some(Read {
            map,
            model,
            messages,
            repeated,
        }) = parse_openai(body)
        else {
            return false;
        };
        let text = String::from_utf8_lossy(body);
        let (tree, tree_repeated) = parse(body).expect("parse_openai took a body parse refuses");
        assert_eq!(repeated, tree_repeated, "{text}");
        let Value::Object(tree) = tree else {
            panic!("parse_openai took {text}, not an object");
        };
        let (mut a, mut b) = (!repeated, !tree_repeated);
        let read = super::super::openai::decode_read(map, model, messages, &mut a);
        let whole = super::super::openai::decode_request(tree, &mut b);
        match (&read, &whole) {
            (Ok(r), Ok(w)) => {
                assert_eq!(format!("{r:?}"), format!("{w:?}"), "{text}");
                assert_eq!(a, b, "as sent: {text}");
            }
            (Err(r), Err(w)) => assert_eq!(r.to_string(), w.to_string(), "{text}"),
            _ => panic!("{text}: {read:?} against {whole:?}"),
        }
        true
    }

    /// A request body in pieces: messages of every shape (plain, with more keys, odd roles
    /// and contents, keys repeated or written with escapes), `messages` missing, given twice
    /// or not an array, compact or spaced.
    fn openai_body() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "role",
            "content",
            "name",
            "tool_call_id",
            "tool_calls",
            "reasoning_content",
            r"r\u006fle",
            r"c\u006fntent",
        ]);
        let value = prop::sample::select(vec![
            r#""user""#,
            r#""assistant""#,
            r#""system""#,
            r#""developer""#,
            r#""tool""#,
            r#""robot""#,
            r#""us\u0065r""#,
            "5",
            "null",
            r#""hi""#,
            r#""a\nb \"q\" \\""#,
            "[]",
            r#"[{"type":"text","text":"x"}]"#,
            r#"[{"type":"image_url","image_url":{"url":"u"}}]"#,
            "{}",
            r#"[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]"#,
        ]);
        let role = prop::sample::select(vec![
            r#""user""#,
            r#""assistant""#,
            r#""system""#,
            r#""developer""#,
            r#""tool""#,
            r#""x""#,
        ]);
        let plain = (
            role,
            prop::sample::select(vec![r#""hi""#, r#""\u00e9\n""#, r#""""#]),
            any::<bool>(),
        )
            .prop_map(|(r, c, swap)| {
                if swap {
                    format!(r#"{{"content":{c},"role":{r}}}"#)
                } else {
                    format!(r#"{{"role":{r},"content":{c}}}"#)
                }
            });
        let other = prop::collection::vec((key, value), 0..4).prop_map(|kv| {
            let m: Vec<String> = kv.iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
            format!("{{{}}}", m.join(","))
        });
        let message = prop_oneof![4 => plain, 4 => other, 1 => Just("1".to_owned()), 1 => Just("null".to_owned())];
        let messages = prop_oneof![
            8 => prop::collection::vec(message, 0..5).prop_map(|m| format!("[{}]", m.join(","))),
            1 => Just("null".to_owned()),
            1 => Just(r#""x""#.to_owned()),
        ];
        let extra = prop::sample::select(vec![
            r#""stream":true"#,
            r#""tools":null"#,
            r#""x":{"y":[1,"z"]}"#,
            r#""model":"n""#,
            r#""max_tokens":9"#,
            r#""stop":"s""#,
        ]);
        (
            prop::option::of(prop::sample::select(vec![r#""m""#, "5"])),
            prop::collection::vec(messages, 0..3),
            prop::collection::vec(extra, 0..3),
            any::<prop::sample::Index>(),
            any::<bool>(),
        )
            .prop_map(|(model, messages, extra, at, spaced)| {
                let mut members: Vec<String> = extra.into_iter().map(str::to_owned).collect();
                for m in messages {
                    let i = at.index(members.len() + 1);
                    members.insert(i, format!(r#""messages":{m}"#));
                }
                if let Some(m) = model {
                    members.insert(0, format!(r#""model":{m}"#));
                }
                let body = format!("{{{}}}", members.join(","));
                if spaced {
                    body.replace(',', ",\n  ")
                        .replace(':', ": ")
                        .replace('{', "{ ")
                } else {
                    body
                }
            })
    }

    proptest! {
        /// Any request body, plain or odd: the typed messages say what the tree says.
        #[test]
        fn an_openai_body_read_with_typed_messages_says_what_the_tree_says(body in openai_body()) {
            read_agrees(body.as_bytes());
        }
    }

    #[test]
    fn plain_messages_are_typed_and_the_rest_kept_as_read() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"s"},{"content":"c","role":"user"},{"role":"tool","content":"t","tool_call_id":"x"},{"role":"assistant","content":null},{"role":"user","content":"a","role":"user"}]}"#;
        assert!(read_agrees(body.as_bytes()));
        let read = parse_openai(body.as_bytes()).unwrap();
        assert!(read.repeated);
        assert!(read.map.is_empty());
        assert_eq!(read.model.as_deref(), Some("m"));
        let messages = read.messages.unwrap();
        assert_eq!(messages[0], Msg::Plain(Role::System, "s".into()));
        assert_eq!(messages[1], Msg::Plain(Role::User, "c".into()));
        let kept = |m: &Msg| match m {
            Msg::Value(v) => v.to_string(),
            Msg::Plain(..) => panic!("{m:?} typed"),
        };
        // Kept in the order read, the members read before the odd one included.
        assert_eq!(
            kept(&messages[2]),
            r#"{"role":"tool","content":"t","tool_call_id":"x"}"#
        );
        assert_eq!(kept(&messages[3]), r#"{"role":"assistant","content":null}"#);
        assert_eq!(kept(&messages[4]), r#"{"role":"user","content":"a"}"#);
        // `messages` twice, or a body that is not an object: the tree reads it.
        for body in [
            r#"{"messages":[],"messages":[]}"#,
            "[]",
            r#"{"messages":[{"role":"user","content":"\ud800"}]}"#,
        ] {
            assert!(parse_openai(body.as_bytes()).is_none(), "{body}");
        }
    }

    #[test]
    fn same_tree_as_serde_json_and_repeats_found_at_any_depth() {
        for (body, repeated) in [
            (r#"{"a":1,"b":[1,-2,3.5,"x\n",null,true,{"c":{}}]}"#, false),
            (r#"{"a":1,"a":2}"#, true),
            (
                r#"{"m":[{"role":"user","content":"x","content":"y"}]}"#,
                true,
            ),
            (r#"{"a":{"b":1},"c":{"b":2}}"#, false),
            (r#"{"k\u0041":1,"kA":2}"#, true),
        ] {
            let (v, rep) = parse(body.as_bytes()).unwrap();
            assert_eq!(
                v,
                serde_json::from_str::<serde_json::Value>(body).unwrap(),
                "{body}"
            );
            assert_eq!(rep, repeated, "{body}");
        }
        for bad in [
            r#"{"a":1} x"#,
            r#"{"a":"\ud800"}"#,
            "[1,]",
            r#"{"a":1e999}"#,
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
