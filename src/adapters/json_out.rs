//! JSON values written out byte for byte as `serde_json::to_writer` writes them, with string
//! text copied in runs: the stretch up to the next byte that needs escaping is found eight
//! bytes at a time (`sse::plain_run`), where serde_json looks each byte up in a table. Request
//! bodies are mostly string text (code, with a newline or quote every few dozen bytes), so this
//! is most of what encoding a large request costs.

use serde_json::Value;

/// Appends `v` to `out` as compact JSON, exactly the bytes `serde_json::to_writer` writes.
pub(crate) fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // serde_json's own digits (itoa, ryu); writing to a Vec cannot fail.
        Value::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// `s` as a JSON string: `"` and `\` escaped, `\b \t \n \f \r` by name, other control bytes as
/// `\u00xx` (lowercase hex), everything else (including `/` and non-ASCII) as it is.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    loop {
        i = crate::sse::plain_run(b, i);
        // `plain_run` stops at a byte to escape, or where fewer than eight bytes are left.
        while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
            i += 1;
        }
        let Some(&c) = b.get(i) else { break };
        out.extend_from_slice(&b[start..i]);
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xf)],
            ]),
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value: strings of any characters (control characters, quotes, backslashes,
    /// astral ones), integers and floats of any size, nesting (the JSON parser's tests too).
    pub(crate) fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[\\x00-\\x1f\"\\\\/a-z\u{e9}\u{1f600} ]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The same bytes as serde_json, for any value.
        #[test]
        fn writes_what_serde_json_writes(v in value()) {
            let mut ours = Vec::new();
            write_value(&mut ours, &v);
            prop_assert_eq!(ours, serde_json::to_vec(&v).unwrap());
        }
    }

    #[test]
    fn every_byte_escapes_as_serde_json_escapes_it() {
        for c in 0u8..0x80 {
            // At each offset of an eight-byte word, and in the short tail.
            for pad in 0..10 {
                let s = format!("{}{}{}", "a".repeat(pad), c as char, "b".repeat(9 - pad));
                let v = Value::String(s);
                let mut ours = Vec::new();
                write_value(&mut ours, &v);
                assert_eq!(
                    ours,
                    serde_json::to_vec(&v).unwrap(),
                    "byte {c:#x} at {pad}"
                );
            }
        }
    }
}
