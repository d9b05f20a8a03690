//! Parsing a client body into a JSON tree while noting whether any object names a key twice.
//!
//! serde_json keeps the last of two equal keys; other parsers keep the first, or refuse the
//! body. A body with a repeated key is therefore never forwarded as it came: what nenya read
//! (and redacted) could differ from what the upstream would read.

use std::cell::Cell;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `body` as one JSON value (trailing whitespace only), as `serde_json::from_slice`
/// does, and tells whether some object in it had a key twice.
pub(crate) fn parse(body: &[u8]) -> Result<(Value, bool), serde_json::Error> {
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

#[cfg(test)]
mod tests {
    use super::parse;

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
