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
#[derive(Debug, Default, serde::Deserialize)]
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

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct UsageDetails {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl UsageCounts {
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
