//! Format-neutral responses: a whole answer, and the events of a streamed one.

use super::{JsonMap, Part};

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Natural end (`end_turn` / `stop` / `STOP`).
    EndTurn,
    /// Output token limit (`max_tokens` / `length` / `MAX_TOKENS`).
    MaxTokens,
    /// The model called tools (`tool_use` / `tool_calls`).
    ToolUse,
    /// A stop sequence matched.
    StopSequence,
    /// Refused or filtered (`refusal` / `content_filter` / `SAFETY`).
    Refusal,
    /// Anthropic `pause_turn`.
    PauseTurn,
    /// Anything else, verbatim.
    Other(String),
}

impl StopReason {
    /// From an OpenAI `finish_reason`.
    pub fn from_openai(s: &str) -> Self {
        match s {
            "stop" => Self::EndTurn,
            "length" => Self::MaxTokens,
            "tool_calls" | "function_call" => Self::ToolUse,
            "content_filter" => Self::Refusal,
            other => Self::Other(other.to_owned()),
        }
    }

    /// As an OpenAI `finish_reason`.
    pub fn to_openai(&self) -> &str {
        match self {
            Self::EndTurn | Self::StopSequence | Self::PauseTurn => "stop",
            Self::MaxTokens => "length",
            Self::ToolUse => "tool_calls",
            Self::Refusal => "content_filter",
            Self::Other(s) => s,
        }
    }

    /// From an Anthropic `stop_reason`.
    pub fn from_anthropic(s: &str) -> Self {
        match s {
            "end_turn" => Self::EndTurn,
            "max_tokens" => Self::MaxTokens,
            "tool_use" => Self::ToolUse,
            "stop_sequence" => Self::StopSequence,
            "refusal" => Self::Refusal,
            "pause_turn" => Self::PauseTurn,
            other => Self::Other(other.to_owned()),
        }
    }

    /// As an Anthropic `stop_reason`.
    pub fn to_anthropic(&self) -> &str {
        match self {
            Self::EndTurn => "end_turn",
            Self::MaxTokens => "max_tokens",
            Self::ToolUse => "tool_use",
            Self::StopSequence => "stop_sequence",
            Self::Refusal => "refusal",
            Self::PauseTurn => "pause_turn",
            Self::Other(_) => "end_turn",
        }
    }
}

/// Token usage. `input` excludes cached tokens (Anthropic's convention); OpenAI's
/// `prompt_tokens` is `input + cache_read + cache_write`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Uncached prompt tokens.
    pub input: u64,
    /// Output tokens (reasoning included).
    pub output: u64,
    /// Prompt tokens read from the provider's cache.
    pub cache_read: u64,
    /// Prompt tokens written to the provider's cache.
    pub cache_write: u64,
    /// Reasoning tokens, when reported.
    pub reasoning: u64,
}

impl Usage {
    /// Reads an OpenAI `usage` object (`prompt_tokens` includes cached tokens there).
    ///
    /// ```
    /// let u = nenya::model::Usage::from_openai(serde_json::json!({"prompt_tokens": 10,
    ///     "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}).as_object().unwrap());
    /// assert_eq!((u.input, u.cache_read, u.output), (6, 4, 3));
    /// ```
    pub fn from_openai(u: &JsonMap) -> Self {
        UsageCounts::from_map(u).openai()
    }

    /// Reads an Anthropic `usage` object.
    ///
    /// ```
    /// let u = nenya::model::Usage::from_anthropic(serde_json::json!({"input_tokens": 10,
    ///     "output_tokens": 3, "cache_read_input_tokens": 4}).as_object().unwrap());
    /// assert_eq!((u.input, u.cache_read, u.output), (10, 4, 3));
    /// ```
    pub fn from_anthropic(u: &JsonMap) -> Self {
        UsageCounts::from_map(u).anthropic()
    }

    /// All prompt tokens, cached or not.
    pub fn prompt_total(&self) -> u64 {
        self.input + self.cache_read + self.cache_write
    }
}

/// The counts of a `usage` object of either format, as sent: what [`Usage::from_openai`] and
/// [`Usage::from_anthropic`] read, and what the usage tap deserialises straight from an
/// answer's bytes (a count of any other type fails that, and the tap reads the object with
/// [`from_map`](Self::from_map), where it counts as 0).
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
pub(crate) struct UsageCounts {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<UsageDetails>,
    completion_tokens_details: Option<UsageDetails>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct UsageDetails {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl UsageCounts {
    /// A `usage` value read from its bytes (`Some(None)`: `null`), without serde when it is
    /// written plainly: counts as unsigned integers or `null`, each key once, unescaped, and
    /// whatever else it holds well-formed. Anything else is left to serde_json, so
    /// the answer is always serde_json's (a property test holds the fast read to that).
    pub(crate) fn read(json: &[u8]) -> serde_json::Result<Option<Self>> {
        match Self::scan(json) {
            Some(counts) => Ok(counts),
            None => serde_json::from_slice(json),
        }
    }

    /// The fast read of [`read`](Self::read); `None` where it leaves the answer to serde_json.
    fn scan(json: &[u8]) -> Option<Option<Self>> {
        // serde_json refuses invalid UTF-8 anywhere, in the keys it ignores too.
        std::str::from_utf8(json).ok()?;
        scan_fields(json, |u: &mut Self, key| match key {
            b"prompt_tokens" => Slot::Count(0, &mut u.prompt_tokens),
            b"completion_tokens" => Slot::Count(1, &mut u.completion_tokens),
            b"input_tokens" => Slot::Count(2, &mut u.input_tokens),
            b"output_tokens" => Slot::Count(3, &mut u.output_tokens),
            b"cache_read_input_tokens" => Slot::Count(4, &mut u.cache_read_input_tokens),
            b"cache_creation_input_tokens" => Slot::Count(5, &mut u.cache_creation_input_tokens),
            b"prompt_tokens_details" => Slot::Details(6, &mut u.prompt_tokens_details),
            b"completion_tokens_details" => Slot::Details(7, &mut u.completion_tokens_details),
            _ => Slot::Ignored,
        })
    }

    /// The counts of a parsed object; a missing count, or one that is not an unsigned
    /// integer, is `None`.
    pub(crate) fn from_map(u: &JsonMap) -> Self {
        use serde_json::Value;
        let n = |m: &JsonMap, k: &str| m.get(k).and_then(Value::as_u64);
        let details = |k: &str| {
            u.get(k).and_then(Value::as_object).map(|d| UsageDetails {
                cached_tokens: n(d, "cached_tokens"),
                reasoning_tokens: n(d, "reasoning_tokens"),
            })
        };
        Self {
            prompt_tokens: n(u, "prompt_tokens"),
            completion_tokens: n(u, "completion_tokens"),
            prompt_tokens_details: details("prompt_tokens_details"),
            completion_tokens_details: details("completion_tokens_details"),
            input_tokens: n(u, "input_tokens"),
            output_tokens: n(u, "output_tokens"),
            cache_read_input_tokens: n(u, "cache_read_input_tokens"),
            cache_creation_input_tokens: n(u, "cache_creation_input_tokens"),
        }
    }

    /// As OpenAI means them: `prompt_tokens` includes the cached ones.
    pub(crate) fn openai(&self) -> Usage {
        let n = |v: Option<u64>| v.unwrap_or(0);
        let detail = |d: &Option<UsageDetails>, f: fn(&UsageDetails) -> Option<u64>| {
            n(d.as_ref().and_then(f))
        };
        let prompt = n(self.prompt_tokens);
        let cached = detail(&self.prompt_tokens_details, |d| d.cached_tokens);
        Usage {
            input: prompt.saturating_sub(cached),
            output: n(self.completion_tokens),
            cache_read: cached,
            cache_write: 0,
            reasoning: detail(&self.completion_tokens_details, |d| d.reasoning_tokens),
        }
    }

    /// As Anthropic means them.
    pub(crate) fn anthropic(&self) -> Usage {
        let n = |v: Option<u64>| v.unwrap_or(0);
        Usage {
            input: n(self.input_tokens),
            output: n(self.output_tokens),
            cache_read: n(self.cache_read_input_tokens),
            cache_write: n(self.cache_creation_input_tokens),
            reasoning: 0,
        }
    }
}

/// For the `sse_decoder` fuzz target: what the fast read of a `usage` value accepts, serde_json
/// reads the same.
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn fuzz_usage_read(json: &[u8]) {
    if let Some(fast) = UsageCounts::scan(json) {
        let serde = serde_json::from_slice::<Option<UsageCounts>>(json).ok();
        assert_eq!(
            Some(fast),
            serde,
            "the fast usage read disagrees with serde_json"
        );
    }
}

/// Where [`scan_fields`] puts a member's value: a count, a details object (each with its bit
/// among the fields read), or nowhere (serde ignores it).
enum Slot<'a> {
    Count(u8, &'a mut Option<u64>),
    Details(u8, &'a mut Option<UsageDetails>),
    Ignored,
}

/// Where a details object's members go.
fn details_slot<'t>(d: &'t mut UsageDetails, key: &[u8]) -> Slot<'t> {
    match key {
        b"cached_tokens" => Slot::Count(0, &mut d.cached_tokens),
        b"reasoning_tokens" => Slot::Count(1, &mut d.reasoning_tokens),
        _ => Slot::Ignored,
    }
}

/// Reads an object of counts the way serde reads it into `T`, its members placed by `slot`;
/// `Some(None)` for `null`; `None` where the answer is serde_json's (a field given twice,
/// which serde refuses, or a value [`count`] or [`ignorable`] leave to it).
fn scan_fields<T: Default>(
    json: &[u8],
    slot: impl for<'t> Fn(&'t mut T, &[u8]) -> Slot<'t>,
) -> Option<Option<T>> {
    let i = crate::sse::skip_ws(json, 0);
    if json.get(i..i + 4) == Some(b"null") && crate::sse::skip_ws(json, i + 4) == json.len() {
        return Some(None);
    }
    let mut t = T::default();
    let mut seen = 0u8;
    crate::sse::each_member(json, |key, value| {
        let bit = match slot(&mut t, key) {
            Slot::Count(bit, s) => {
                *s = count(value)?;
                bit
            }
            Slot::Details(bit, s) => {
                *s = scan_fields(value, details_slot)?;
                bit
            }
            Slot::Ignored => return ignorable(value),
        };
        if seen & 1 << bit != 0 {
            return None;
        }
        seen |= 1 << bit;
        Some(())
    })?;
    Some(Some(t))
}

/// A count as serde reads it into an `Option<u64>`: `null`, or an unsigned integer written
/// plainly (no sign, fraction or exponent; no leading zero; fitting 64 bits). `None` for
/// anything else, which is serde_json's to judge.
fn count(value: &[u8]) -> Option<Option<u64>> {
    match value {
        b"null" => Some(None),
        b"0" => Some(Some(0)),
        [b'1'..=b'9', ..] => {
            let mut n = 0u64;
            for &b in value {
                if !b.is_ascii_digit() {
                    return None;
                }
                n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            }
            Some(Some(n))
        }
        _ => None,
    }
}

/// Whether a member serde ignores may be stepped over without it: a well-formed value (serde
/// skips one without a nesting limit; the scan leaves past 256 levels to it).
fn ignorable(value: &[u8]) -> Option<()> {
    crate::sse::surely_json(value).then_some(())
}

/// A complete, non-streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// Upstream id.
    pub id: String,
    /// Model that answered.
    pub model: String,
    /// Text, thinking and tool calls, in order.
    pub content: Vec<Part>,
    /// Why it stopped.
    pub stop_reason: Option<StopReason>,
    /// The stop sequence that matched, if any.
    pub stop_sequence: Option<String>,
    /// Token usage.
    pub usage: Usage,
    /// Unknown top-level fields in the upstream's vocabulary.
    pub extra: JsonMap,
}

/// The start of a content block in a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockStart {
    /// Visible text.
    Text,
    /// Reasoning.
    Thinking,
    /// A tool call.
    ToolUse {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
    },
    /// A block type nenya does not model (e.g. `redacted_thinking`), verbatim.
    Other(serde_json::Value),
}

/// An increment of a content block.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// Text.
    Text(String),
    /// Reasoning text.
    Thinking(String),
    /// Anthropic thinking signature.
    Signature(String),
    /// A fragment of tool-call arguments (JSON text).
    ToolArgs(String),
}

/// A format-neutral stream event (Anthropic's event model, the richest of the three).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The answer begins.
    MessageStart {
        /// Upstream id.
        id: String,
        /// Model.
        model: String,
        /// Usage known at the start (prompt tokens).
        usage: Usage,
    },
    /// A block opens at `index`.
    BlockStart {
        /// Block index (0-based, increasing).
        index: usize,
        /// What kind of block.
        block: BlockStart,
    },
    /// A block grows.
    BlockDelta {
        /// Block index.
        index: usize,
        /// The increment.
        delta: Delta,
    },
    /// A block closes.
    BlockStop {
        /// Block index.
        index: usize,
    },
    /// Stop reason and final usage.
    MessageDelta {
        /// Why it stopped.
        stop_reason: Option<StopReason>,
        /// Final usage.
        usage: Usage,
    },
    /// The answer is complete.
    MessageStop,
    /// Keep-alive.
    Ping,
    /// The upstream reported an error mid-stream.
    Error {
        /// Upstream error type, when given.
        kind: String,
        /// Upstream message.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_usage_is_read_without_serde_and_odd_usage_left_to_it() {
        let fast = |s: &str| UsageCounts::scan(s.as_bytes());
        let u = fast(
            r#" {"prompt_tokens": 12, "completion_tokens":3 ,"total_tokens":15,
                "prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},
                "completion_tokens_details": null} "#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(u.openai(), UsageCounts::read(br#"{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}"#).unwrap().unwrap().openai());
        assert_eq!(
            (u.openai().input, u.openai().cache_read, u.openai().output),
            (8, 4, 3)
        );
        assert_eq!(fast("null"), Some(None));
        assert_eq!(fast("{}"), Some(Some(UsageCounts::default())));
        // Left to serde_json: a count it refuses or reads another way, a key given twice or
        // written with escapes, a large or malformed member it would ignore.
        for odd in [
            r#"{"prompt_tokens":1.0}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt_tokens":"1"}"#,
            r#"{"prompt_tokens":01}"#,
            r#"{"prompt_tokens":18446744073709551616}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt\u005ftokens":1}"#,
            r#"{"x":[1,]}"#,
            r#"{"prompt_tokens":1}x"#,
            r#"[1]"#,
        ] {
            assert_eq!(fast(odd), None, "{odd}");
        }
        let deep = |d: usize| format!(r#"{{"x":{}{}}}"#, "[".repeat(d), "]".repeat(d));
        assert_eq!(fast(&deep(150)), Some(Some(UsageCounts::default())));
        assert_eq!(fast(&deep(300)), None);
        let read = UsageCounts::read(deep(300).as_bytes()).unwrap();
        assert_eq!(read, Some(UsageCounts::default()));
    }

    /// A `usage` text of bytes: a well-formed object of counts, details and members serde
    /// ignores, whitespace anywhere, and (most of the time) one flaw: an odd value, in a
    /// count or in the details, a known key given twice, a key written with escapes, a deeply
    /// nested member, a byte that is not UTF-8, a malformed member serde would skip,
    /// something after the object; or `null`.
    fn usage_text() -> impl Strategy<Value = Vec<u8>> {
        let ws = prop::sample::select(vec!["", " ", "\n  ", "\t"]);
        let count = prop_oneof![
            3 => any::<u64>().prop_map(|n| n.to_string()),
            3 => (0u64..100).prop_map(|n| n.to_string()),
            1 => Just("null".to_owned()),
        ];
        let count_key = prop::sample::select(vec![
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "total_tokens",
            "x\u{e9}",
        ]);
        let details_key =
            prop::sample::select(vec!["prompt_tokens_details", "completion_tokens_details"]);
        let object = |members: Vec<(String, String, &str)>| {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                .collect();
            format!("{{{}}}", body.join(","))
        };
        let details = prop::collection::vec(
            (
                prop::sample::select(vec!["cached_tokens", "reasoning_tokens", "audio_tokens"])
                    .prop_map(str::to_owned),
                count.clone(),
                ws.clone(),
            ),
            0..3,
        )
        .prop_map(object);
        let member = prop_oneof![
            4 => (count_key.prop_map(str::to_owned), count),
            1 => (
                details_key.prop_map(str::to_owned),
                prop_oneof![3 => details, 1 => Just("null".to_owned())],
            ),
        ];
        let odd = prop::sample::select(vec![
            "00",
            "01",
            "-1",
            "-0",
            "1.0",
            "1e2",
            "1E+2",
            "true",
            "\"7\"",
            "18446744073709551616",
            "12x",
            "tru",
            "\"\\x\"",
            "[1,]",
            "\"\u{1}\"",
            "{}",
            "[]",
            "[1,2,{\"a\":null}]",
            "\"a\\u00e9\\n\"",
        ]);
        (
            prop::collection::vec((member, ws.clone()), 1..6),
            ws,
            0u8..11,
            any::<prop::sample::Index>(),
            odd,
            1usize..300,
        )
            .prop_map(move |(members, w, flaw, at, odd, depth)| {
                let mut m: Vec<(String, String, &str)> =
                    members.into_iter().map(|((k, v), w)| (k, v, w)).collect();
                let i = at.index(m.len());
                let mut tail = "";
                match flaw {
                    1 => m[i].1 = odd.to_owned(),
                    2 => m.push((
                        "prompt_tokens_details".into(),
                        format!("{{\"cached_tokens\":{odd}}}"),
                        "",
                    )),
                    3 => m.push(m[i].clone()),
                    4 => m[i].0 = m[i].0.replacen('_', "\\u005f", 1),
                    5 => m.push((
                        "x".into(),
                        format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
                        "",
                    )),
                    // `¤` (C2 A4) loses its second byte below: a key that is not UTF-8.
                    6 => m.push(("x¤".into(), "1".into(), "")),
                    9 => m.push(("total_tokens".into(), odd.to_owned(), "")),
                    7 => tail = [",", "}", "x", "\u{a4}"][i % 4],
                    8 => return format!("{w}null{w}").into_bytes(),
                    _ => {}
                }
                let mut out = format!("{w}{}{w}{tail}", object(m)).into_bytes();
                if let Some(at) = out.windows(2).position(|p| p == [0xC2, 0xA4]) {
                    out.remove(at + 1);
                }
                out
            })
    }

    proptest! {
        /// What the fast read accepts, serde_json reads the same; what it leaves, serde_json
        /// answers.
        #[test]
        fn usage_read_without_serde_is_what_serde_reads(text in usage_text()) {
            let serde = serde_json::from_slice::<Option<UsageCounts>>(&text);
            if let Some(fast) = UsageCounts::scan(&text) {
                prop_assert_eq!(Some(&fast), serde.as_ref().ok(), "{}", String::from_utf8_lossy(&text));
            }
            let read = UsageCounts::read(&text);
            prop_assert_eq!(read.as_ref().ok(), serde.as_ref().ok());
        }
    }
}
