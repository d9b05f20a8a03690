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
    pub fn from_openai(u: &crate::model::JsonMap) -> Self {
        use serde_json::Value;
        let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let prompt = n(u.get("prompt_tokens"));
        let cached = n(u
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens")));
        Self {
            input: prompt.saturating_sub(cached),
            output: n(u.get("completion_tokens")),
            cache_read: cached,
            cache_write: 0,
            reasoning: n(u
                .get("completion_tokens_details")
                .and_then(|d| d.get("reasoning_tokens"))),
        }
    }

    /// Reads an Anthropic `usage` object.
    ///
    /// ```
    /// let u = nenya::model::Usage::from_anthropic(serde_json::json!({"input_tokens": 10,
    ///     "output_tokens": 3, "cache_read_input_tokens": 4}).as_object().unwrap());
    /// assert_eq!((u.input, u.cache_read, u.output), (10, 4, 3));
    /// ```
    pub fn from_anthropic(u: &crate::model::JsonMap) -> Self {
        let n = |k: &str| u.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Self {
            input: n("input_tokens"),
            output: n("output_tokens"),
            cache_read: n("cache_read_input_tokens"),
            cache_write: n("cache_creation_input_tokens"),
            reasoning: 0,
        }
    }

    /// All prompt tokens, cached or not.
    pub fn prompt_total(&self) -> u64 {
        self.input + self.cache_read + self.cache_write
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
