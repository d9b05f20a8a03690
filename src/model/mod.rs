//! The typed, format-neutral chat request.
//!
//! Ingress decodes a client's body exactly once into a [`ChatRequest`]; every layer works on
//! that value; the provider service encodes it once into the upstream's wire format.
//! Fields the model does not name are kept in `extra` maps (in their original order), so a
//! request whose client and upstream speak the same format loses nothing on the way.

use bytes::Bytes;
use serde_json::{Map, Value};

mod response;

pub(crate) use response::UsageCounts;
#[cfg(fuzzing)]
pub use response::fuzz_usage_read;
pub use response::{BlockStart, ChatResponse, Delta, StopReason, StreamEvent, Usage};

/// A JSON object that keeps its keys in their original order.
pub type JsonMap = Map<String, Value>;

/// A wire format: what a client speaks, or what an upstream accepts.
///
/// ```
/// use nenya::model::ApiFormat;
/// assert_eq!(ApiFormat::from_path("/v1/messages"), Some(ApiFormat::Anthropic));
/// assert_eq!("openai".parse::<ApiFormat>().unwrap(), ApiFormat::OpenAi);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiFormat {
    /// OpenAI Chat Completions.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
}

impl ApiFormat {
    /// The client format implied by an ingress path, if it is a chat path.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" | "/chat/completions" => Some(Self::OpenAi),
            "/v1/messages" | "/messages" | "/v1/messages/count_tokens" => Some(Self::Anthropic),
            _ => None,
        }
    }

    /// The client format to use for error replies on any path: Anthropic on its paths,
    /// OpenAI everywhere else.
    pub fn for_errors(path: &str) -> Self {
        if path.starts_with("/v1/messages") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }

    /// The config spelling: `openai`, `anthropic`, `gemini`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
        }
    }
}

impl std::fmt::Display for ApiFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ApiFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "openai" => Ok(Self::OpenAi),
            "anthropic" => Ok(Self::Anthropic),
            "gemini" => Ok(Self::Gemini),
            other => Err(format!(
                "unknown format `{other}` (expected openai, anthropic or gemini)"
            )),
        }
    }
}

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// System prompt (Anthropic's top-level `system` decodes to leading system messages).
    System,
    /// OpenAI's `developer` role (a system prompt for reasoning models).
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// An OpenAI tool result message (one [`Part::ToolResult`]).
    Tool,
}

impl Role {
    /// The OpenAI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Developer => "developer",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }

    /// Whether this role carries a system prompt.
    pub fn is_system(self) -> bool {
        matches!(self, Self::System | Self::Developer)
    }
}

/// A message's content: a plain string, or a list of typed parts.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// String-shaped content (`"content": "hi"`).
    Text(String),
    /// Array-shaped content; tool calls and tool results are parts too.
    Parts(Vec<Part>),
}

impl Default for Content {
    fn default() -> Self {
        Self::Parts(Vec::new())
    }
}

impl Content {
    /// All visible text, concatenated (images, tools and thinking excluded).
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text { text, .. } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(""),
        }
    }

    /// The parts, with string content seen as one text part.
    pub fn into_parts(self) -> Vec<Part> {
        match self {
            Self::Text(s) => vec![Part::text(s)],
            Self::Parts(p) => p,
        }
    }

    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Text(s) => s.is_empty(),
            Self::Parts(p) => p.is_empty(),
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// A URL (may be a `data:` URL).
    Url(String),
    /// Inline base64 data.
    Base64 {
        /// e.g. `image/png`.
        media_type: String,
        /// The base64 payload.
        data: String,
    },
}

/// One typed piece of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Visible text.
    Text {
        /// The text.
        text: String,
        /// Unknown fields (`cache_control`, `citations`, …).
        extra: JsonMap,
    },
    /// An image.
    Image {
        /// Its source.
        source: ImageSource,
        /// Unknown fields (OpenAI `detail`, `cache_control`, …).
        extra: JsonMap,
    },
    /// A tool call made by the assistant.
    ToolUse {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments as JSON text (OpenAI sends a string; Anthropic's object is serialised).
        arguments: String,
        /// Unknown fields.
        extra: JsonMap,
    },
    /// The result of a tool call.
    ToolResult {
        /// The call this answers.
        tool_use_id: String,
        /// What the tool returned.
        content: Content,
        /// Whether the tool failed.
        is_error: Option<bool>,
        /// Unknown fields.
        extra: JsonMap,
    },
    /// Model reasoning (Anthropic `thinking`, OpenAI-compatible `reasoning_content`).
    Thinking {
        /// The reasoning text.
        thinking: String,
        /// Anthropic's signature, passed back unchanged.
        signature: Option<String>,
        /// Unknown fields.
        extra: JsonMap,
    },
    /// A part type nenya does not model, kept verbatim.
    Other(Value),
}

impl Part {
    /// A plain text part.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            extra: JsonMap::new(),
        }
    }
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: Content,
    /// Unknown message-level fields (`name`, …).
    pub extra: JsonMap,
}

impl Message {
    /// A fast token estimate for this message: text bytes / 4 plus framing (the same rule as
    /// [`ChatFields::estimate_tokens`]; images count a flat 85).
    ///
    /// ```
    /// use nenya::model::{Message, Role};
    /// assert_eq!(Message::text(Role::User, "x".repeat(400)).estimate_tokens(), 104);
    /// ```
    pub fn estimate_tokens(&self) -> u64 {
        let mut bytes = 0usize;
        let mut images = 0u64;
        content_texts(&self.content, &mut |s: &str| bytes += s.len());
        if let Content::Parts(parts) = &self.content {
            images = parts
                .iter()
                .filter(|p| matches!(p, Part::Image { .. }))
                .count() as u64;
        }
        (bytes as u64).div_ceil(4) + 4 + 85 * images
    }

    /// Calls `f` on every string of this message an upstream reads as text (text, tool-call
    /// arguments, tool results, reasoning), as [`ChatFields::for_each_text`] does.
    ///
    /// ```
    /// use nenya::model::{Message, Role};
    /// let mut n = 0;
    /// Message::text(Role::User, "four").for_each_text(|s| n += s.len());
    /// assert_eq!(n, 4);
    /// ```
    pub fn for_each_text(&self, mut f: impl FnMut(&str)) {
        content_texts(&self.content, &mut f);
    }

    /// Whether this message carries tool calls (an assistant turn the next tool results answer).
    pub fn has_tool_calls(&self) -> bool {
        matches!(&self.content, Content::Parts(p) if p.iter().any(|p| matches!(p, Part::ToolUse { .. })))
    }

    /// Whether this message carries tool results (OpenAI `tool` messages, Anthropic user turns
    /// of `tool_result` blocks).
    pub fn has_tool_results(&self) -> bool {
        self.role == Role::Tool
            || matches!(&self.content, Content::Parts(p) if p.iter().any(|p| matches!(p, Part::ToolResult { .. })))
    }

    /// A message with string content.
    ///
    /// ```
    /// use nenya::model::{Message, Role};
    /// let m = Message::text(Role::User, "hi");
    /// assert_eq!(m.content.text(), "hi");
    /// ```
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: Content::Text(text.into()),
            extra: JsonMap::new(),
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub enum Tool {
    /// A function tool with a JSON schema.
    Function {
        /// Tool name.
        name: String,
        /// What it does.
        description: Option<String>,
        /// JSON schema of its arguments.
        parameters: Value,
        /// Unknown fields (`strict`, `cache_control`, …).
        extra: JsonMap,
    },
    /// A provider-defined tool (e.g. Anthropic server tools), kept verbatim.
    Other(Value),
}

impl Tool {
    /// The bytes of this definition the model reads (name, description, parameters as compact
    /// JSON; a tool nenya does not model, whole as JSON), and how many of those parts there
    /// are, measured without encoding anything.
    pub(crate) fn definition_len(&self) -> (usize, usize) {
        match self {
            Tool::Function {
                name,
                description,
                parameters,
                ..
            } => (
                name.len() + description.as_ref().map_or(0, String::len) + json_len(parameters),
                2 + usize::from(description.is_some()),
            ),
            Tool::Other(v) => (json_len(v), 1),
        }
    }
}

/// How the model must use tools.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tools.
    None,
    /// Some tool must be called (Anthropic `any`).
    Required,
    /// This tool must be called.
    Tool(String),
    /// Anything else, kept verbatim.
    Other(Value),
}

/// The format-neutral chat request every layer works on: its [`ChatFields`] (read and written
/// through `Deref`/`DerefMut`), and the body the client sent for as long as nothing has changed
/// them.
///
/// Any mutable access to the fields drops the client's body (`DerefMut` is the only way to
/// them), so a layer cannot change the request and have the original bytes forwarded anyway;
/// a layer that only reads keeps them, and the provider may then forward them as they came
/// (with the model name replaced) instead of encoding the request again.
///
/// ```
/// use nenya::model::{ApiFormat, ChatRequest, Role};
/// let mut req = nenya::adapters::decode_client_body(
///     ApiFormat::OpenAi,
///     r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":7}"#.into(),
/// ).unwrap();
/// assert_eq!(req.model, "m");
/// assert_eq!(req.messages[0].role, Role::User);
/// assert_eq!(req.extra["seed"], 7); // unknown fields are kept
/// assert!(req.client_body().is_some()); // reading keeps the client's bytes
/// req.messages[0].content = nenya::model::Content::Text("changed".into());
/// assert!(req.client_body().is_none()); // writing drops them
/// ```
#[derive(Debug, Clone)]
pub struct ChatRequest {
    fields: ChatFields,
    /// The client's body, while it still says what `fields` say.
    raw: Option<Bytes>,
    /// The tool definitions' measure ([`Tool::definition_len`] summed), taken once while no
    /// layer changes the request: several layers estimate tokens, and a coding agent's tool
    /// list is tens of KB.
    tools_len: std::sync::OnceLock<(usize, usize)>,
}

impl ChatRequest {
    /// A request with no client body behind it (built in code, or rebuilt): it is always encoded.
    pub fn new(fields: ChatFields) -> Self {
        Self {
            fields,
            raw: None,
            tools_len: std::sync::OnceLock::new(),
        }
    }

    /// A request decoded from `raw`, which an upstream of the same format would read exactly
    /// as `fields` (the decoder checks that: no duplicate keys, nothing normalised).
    pub(crate) fn with_client_body(fields: ChatFields, raw: Bytes) -> Self {
        Self {
            fields,
            raw: Some(raw),
            tools_len: std::sync::OnceLock::new(),
        }
    }

    /// The body the client sent, if no layer has had mutable access to the request since it
    /// was decoded (and the decoder found it safe to forward as it is); after redaction, the
    /// client's body with the new texts written in place, when that could be done exactly.
    pub fn client_body(&self) -> Option<&Bytes> {
        self.raw.as_ref()
    }

    /// Gives back a client body after a change that was also written into it, so that it
    /// says exactly what the fields now say (see `adapters::splice`).
    pub(crate) fn keep_client_body(&mut self, raw: Bytes) {
        self.raw = Some(raw);
    }

    /// The fields, without the client's body.
    pub fn into_fields(self) -> ChatFields {
        self.fields
    }

    /// [`ChatFields::estimate_tokens`], with the tool definitions measured once per request
    /// (until a layer changes it), however many layers ask.
    ///
    /// ```
    /// let req = nenya::adapters::decode_request(nenya::model::ApiFormat::OpenAi,
    ///     br#"{"model":"m","messages":[{"role":"user","content":"twelve chars"}]}"#).unwrap();
    /// assert_eq!(req.estimate_tokens(), nenya::model::ChatFields::estimate_tokens(&req));
    /// ```
    pub fn estimate_tokens(&self) -> u64 {
        self.fields.estimate_with_tools(self.tools_len().0)
    }

    /// The tool definitions' bytes and parts ([`Tool::definition_len`] summed), cached.
    pub(crate) fn tools_len(&self) -> (usize, usize) {
        *self.tools_len.get_or_init(|| self.fields.tools_len())
    }
}

impl From<ChatFields> for ChatRequest {
    fn from(fields: ChatFields) -> Self {
        Self::new(fields)
    }
}

impl std::ops::Deref for ChatRequest {
    type Target = ChatFields;
    fn deref(&self) -> &ChatFields {
        &self.fields
    }
}

impl std::ops::DerefMut for ChatRequest {
    /// Drops the client's body: from here on the request may differ from it.
    fn deref_mut(&mut self) -> &mut ChatFields {
        self.raw = None;
        self.tools_len.take();
        &mut self.fields
    }
}

/// Two requests are equal when their fields are (whether a client body is kept is not part of
/// what the request says).
impl PartialEq for ChatRequest {
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields
    }
}

/// What a chat request says, in no wire format: [`ChatRequest`] derefs to it.
///
/// ```
/// use nenya::model::{ApiFormat, ChatFields, ChatRequest, Message, Role, Shape};
/// let req = ChatRequest::new(ChatFields {
///     source: ApiFormat::OpenAi,
///     model: "m".into(),
///     stream: false,
///     messages: vec![Message::text(Role::User, "hi")],
///     tools: None,
///     tool_choice: None,
///     max_tokens: None,
///     stop: None,
///     extra: Default::default(),
///     shape: Shape::default(),
/// });
/// assert!(req.client_body().is_none());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ChatFields {
    /// The format the client spoke: `extra` fields are in its vocabulary.
    pub source: ApiFormat,
    /// The model (or agent) named by the client; the router rewrites it for the upstream.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The conversation, system prompt included as leading system messages.
    pub messages: Vec<Message>,
    /// Tools offered to the model.
    pub tools: Option<Vec<Tool>>,
    /// Tool choice.
    pub tool_choice: Option<ToolChoice>,
    /// Maximum output tokens.
    pub max_tokens: Option<u64>,
    /// Stop sequences.
    pub stop: Option<Vec<String>>,
    /// Every other top-level field, in the client's vocabulary and order.
    pub extra: JsonMap,
    /// How the client spelled some fields, so a same-format upstream sees the same spelling.
    pub shape: Shape,
}

/// Spelling hints recorded at decode time; they never change meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// OpenAI: `max_completion_tokens` rather than `max_tokens`.
    pub max_completion_tokens: bool,
    /// OpenAI: `stop` was a single string.
    pub stop_as_string: bool,
    /// Anthropic: `system` was a string rather than blocks.
    pub system_as_string: bool,
    /// `stream` was present in the body (even if false).
    pub stream_present: bool,
}

/// Request extension marking an Anthropic `count_tokens` call (inserted by the gateway's
/// dispatcher; the router answers it locally when the upstream has no such endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountTokens;

impl ChatFields {
    /// A fast estimate of the prompt's tokens (about four bytes of text per token, tools
    /// included). Used where no upstream count exists.
    ///
    /// ```
    /// let req = nenya::adapters::decode_request(nenya::model::ApiFormat::OpenAi,
    ///     br#"{"model":"m","messages":[{"role":"user","content":"twelve chars"}]}"#).unwrap();
    /// assert_eq!(req.estimate_tokens(), 3 + 4);
    /// ```
    pub fn estimate_tokens(&self) -> u64 {
        self.estimate_with_tools(self.tools_len().0)
    }

    /// The tool definitions' bytes and parts ([`Tool::definition_len`] summed).
    pub(crate) fn tools_len(&self) -> (usize, usize) {
        self.tools.iter().flatten().fold((0, 0), |(b, p), t| {
            let (tb, tp) = t.definition_len();
            (b + tb, p + tp)
        })
    }

    /// [`ChatFields::estimate_tokens`] with the tool definitions' bytes already measured.
    fn estimate_with_tools(&self, tool_bytes: usize) -> u64 {
        let mut bytes = tool_bytes;
        self.for_each_text(|s| bytes += s.len());
        // Per-message framing overhead, as the OpenAI tokenizer guidance counts it.
        (bytes as u64).div_ceil(4) + 4 * self.messages.len() as u64
    }

    /// Calls `f` on every string an upstream will read as text: system prompts, message text,
    /// tool-call arguments, tool results and reasoning. Redaction layers build on this.
    ///
    /// ```
    /// use nenya::model::{ApiFormat, ChatRequest};
    /// let mut req = nenya::adapters::decode_request(
    ///     ApiFormat::OpenAi,
    ///     br#"{"model":"m","messages":[{"role":"user","content":"secret"}]}"#,
    /// ).unwrap();
    /// req.for_each_text_mut(|s| *s = s.replace("secret", "[gone]"));
    /// assert_eq!(req.messages[0].content.text(), "[gone]");
    /// ```
    pub fn for_each_text(&self, mut f: impl FnMut(&str)) {
        for m in &self.messages {
            content_texts(&m.content, &mut f);
        }
    }

    /// Like [`ChatFields::for_each_text`], with mutable access (redaction rewrites in place).
    pub fn for_each_text_mut(&mut self, mut f: impl FnMut(&mut String)) {
        self.for_each_text_slot_mut(true, |_, s| f(s));
    }

    /// Like [`ChatFields::for_each_text_mut`], telling `f` what each text is. Thinking blocks
    /// that carry a provider signature are skipped unless `signed_thinking` (the provider
    /// rejects a request whose signed thinking was changed).
    ///
    /// ```
    /// use nenya::model::{ApiFormat, TextSlot};
    /// let mut req = nenya::adapters::decode_request(ApiFormat::OpenAi, br#"{"model":"m",
    ///   "messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function",
    ///   "function":{"name":"f","arguments":"{\"a\":1}"}}]}]}"#).unwrap();
    /// let mut seen = vec![];
    /// req.for_each_text_slot_mut(false, |slot, s| seen.push((slot, s.clone())));
    /// assert_eq!(seen, [(TextSlot::ToolArguments, r#"{"a":1}"#.to_string())]);
    /// ```
    pub fn for_each_text_slot_mut(
        &mut self,
        signed_thinking: bool,
        mut f: impl FnMut(TextSlot, &mut String),
    ) {
        for m in &mut self.messages {
            content_texts_mut(&mut m.content, signed_thinking, &mut f);
        }
    }

    /// [`ChatFields::for_each_text_slot_mut`] without mutable access: the same texts, in the
    /// same order (a layer looks before it writes, so that a request it leaves alone keeps the
    /// client's body).
    ///
    /// ```
    /// use nenya::model::{ApiFormat, TextSlot};
    /// let req = nenya::adapters::decode_request(ApiFormat::OpenAi,
    ///     br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
    /// let mut seen = vec![];
    /// req.for_each_text_slot(false, |slot, s| seen.push((slot, s.to_owned())));
    /// assert_eq!(seen, [(TextSlot::Text, "hi".to_string())]);
    /// ```
    pub fn for_each_text_slot(&self, signed_thinking: bool, mut f: impl FnMut(TextSlot, &str)) {
        for m in &self.messages {
            content_texts_slot(&m.content, signed_thinking, &mut |slot, s: &String| {
                f(slot, s)
            });
        }
    }
}

/// Who is calling, as far as routing cares: a request extension inserted by the auth layer
/// ([`AuthLayer`](crate::layers::AuthLayer)) and read where the model is resolved (the
/// router answers 403 for an agent outside `allowed_agents`).
///
/// ```
/// use nenya::model::Principal;
/// let p = Principal { name: "dev".into(), unrestricted: false, allowed_agents: vec!["build".to_string()].into() };
/// assert!(p.may_use("build") && !p.may_use("plan"));
/// ```
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's name (for logs and metrics; never the token).
    pub name: std::sync::Arc<str>,
    /// Admin: no agent scoping.
    pub unrestricted: bool,
    /// Agents (model names) this caller may use; empty means all.
    pub allowed_agents: std::sync::Arc<[String]>,
}

impl Principal {
    /// Whether this caller may use the agent or model `name`.
    pub fn may_use(&self, name: &str) -> bool {
        self.unrestricted
            || self.allowed_agents.is_empty()
            || self.allowed_agents.iter().any(|a| a == name)
    }
}

/// What an answer used, as the usage tap settles it: tokens (reported, or the prompt estimate
/// when the upstream reported none) and the cost at the target's price.
///
/// ```
/// let s = nenya::model::Settlement { prompt: 10, cached: 0, completion: 5, estimated: false, cost_usd: None };
/// assert_eq!(s.tokens(), 15);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settlement {
    /// Prompt tokens, cached included.
    pub prompt: u64,
    /// Of which read from the provider's cache.
    pub cached: u64,
    /// Output tokens.
    pub completion: u64,
    /// The upstream reported no usage: `prompt` is the estimate, `completion` unknown (0).
    pub estimated: bool,
    /// The cost in USD, when the target has a price.
    pub cost_usd: Option<f64>,
}

impl Settlement {
    /// Prompt plus completion tokens.
    pub fn tokens(&self) -> u64 {
        self.prompt + self.completion
    }
}

/// Something that wants to know what an answer used: implemented by a budget reservation.
pub trait SettleUsage: Send + Sync {
    /// Called at most once, when the answer has ended (or the client went away), with what
    /// the usage tap saw. Never called for a failed attempt: dropping the hook instead is the
    /// signal that nothing was used.
    fn settle(&self, used: Settlement);
}

/// Request extension carrying a [`SettleUsage`] from a layer that reserves before dispatch
/// (the quota layer) to the layer that sees the usage after (the usage tap), without either
/// knowing the other.
///
/// ```
/// use std::sync::Arc;
/// use nenya::model::{Settlement, SettleUsage, UsageHook};
/// struct Print;
/// impl SettleUsage for Print { fn settle(&self, used: Settlement) { println!("{}", used.tokens()); } }
/// let hook = UsageHook(Arc::new(Print));
/// # drop(hook);
/// ```
#[derive(Clone)]
pub struct UsageHook(pub std::sync::Arc<dyn SettleUsage>);

impl std::fmt::Debug for UsageHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UsageHook")
    }
}

/// Request extension: where an Anthropic-format upstream gets prompt-cache breakpoints
/// (`cache_control`) when the client set none (inserted by the prefix-cache layer, applied by
/// the provider service when it encodes for an Anthropic target).
///
/// ```
/// let bp = nenya::model::CacheBreakpoints { system: true, tools: true, messages: false, ttl_1h: false };
/// assert!(bp.any());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheBreakpoints {
    /// On the last system block.
    pub system: bool,
    /// On the last tool.
    pub tools: bool,
    /// On the last block of the last message.
    pub messages: bool,
    /// `"ttl": "1h"` instead of the default five minutes.
    pub ttl_1h: bool,
}

impl CacheBreakpoints {
    /// Whether any breakpoint is wanted.
    pub fn any(&self) -> bool {
        self.system || self.tools || self.messages
    }
}

/// What a text inside a request is (see [`ChatFields::for_each_text_slot_mut`]).
///
/// ```
/// assert_ne!(nenya::model::TextSlot::Text, nenya::model::TextSlot::ToolArguments);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextSlot {
    /// Prose or code: system prompts, message text, tool results.
    Text,
    /// A tool call's arguments: JSON text.
    ToolArguments,
    /// Model reasoning.
    Thinking,
}

fn content_texts(content: &Content, f: &mut impl FnMut(&str)) {
    match content {
        Content::Text(s) => f(s),
        Content::Parts(parts) => {
            for p in parts {
                match p {
                    Part::Text { text, .. } => f(text),
                    Part::ToolUse { arguments, .. } => f(arguments),
                    Part::ToolResult { content, .. } => content_texts(content, f),
                    Part::Thinking { thinking, .. } => f(thinking),
                    Part::Image { .. } | Part::Other(_) => {}
                }
            }
        }
    }
}

/// How many bytes `v` takes as compact JSON (what `v.to_string().len()` is), counted without
/// writing it: token estimates measure tool definitions on every request, and encoding a
/// 30 KB tool list twice a request to take its length cost a third of such a request.
pub(crate) fn json_len(v: &Value) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(b) => 4 + usize::from(!b),
        Value::Number(n) => {
            struct Count(usize);
            impl std::fmt::Write for Count {
                fn write_str(&mut self, s: &str) -> std::fmt::Result {
                    self.0 += s.len();
                    Ok(())
                }
            }
            let mut c = Count(0);
            let _ = std::fmt::write(&mut c, format_args!("{n}"));
            c.0
        }
        Value::String(s) => json_str_len(s),
        Value::Array(a) => 2 + a.len().saturating_sub(1) + a.iter().map(json_len).sum::<usize>(),
        Value::Object(o) => {
            2 + o.len().saturating_sub(1)
                + o.iter()
                    .map(|(k, v)| json_str_len(k) + 1 + json_len(v))
                    .sum::<usize>()
        }
    }
}

/// A string's length as a JSON string, quotes and escapes included (serde_json's escapes:
/// two bytes for `"`, `\` and the five short control escapes, six for other controls).
fn json_str_len(s: &str) -> usize {
    let b = s.as_bytes();
    // Most strings escape nothing: this count vectorises, the walk below does not.
    let escaped = b
        .iter()
        .map(|&b| usize::from(b < 0x20 || b == b'"' || b == b'\\'))
        .sum::<usize>();
    if escaped == 0 {
        return b.len() + 2;
    }
    let mut n = b.len() + 2;
    for &b in b {
        n += match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        };
    }
    n
}

/// The texts of a message's content, in order, by shared or mutable reference: one walk for
/// [`ChatFields::for_each_text_slot`] and [`ChatFields::for_each_text_slot_mut`], which must
/// agree text for text (the redaction layers look with one and write with the other).
macro_rules! text_walk {
    ($name:ident $(, $m:tt)?) => {
        fn $name(
            content: &$($m)? Content,
            signed_thinking: bool,
            f: &mut impl FnMut(TextSlot, &$($m)? String),
        ) {
            match content {
                Content::Text(s) => f(TextSlot::Text, s),
                Content::Parts(parts) => {
                    for p in parts {
                        match p {
                            Part::Text { text, .. } => f(TextSlot::Text, text),
                            Part::ToolUse { arguments, .. } => {
                                f(TextSlot::ToolArguments, arguments)
                            }
                            Part::ToolResult { content, .. } => $name(content, signed_thinking, f),
                            Part::Thinking {
                                thinking,
                                signature,
                                ..
                            } => {
                                if signed_thinking || signature.is_none() {
                                    f(TextSlot::Thinking, thinking)
                                }
                            }
                            Part::Image { .. } | Part::Other(_) => {}
                        }
                    }
                }
            }
        }
    };
}
text_walk!(content_texts_slot);
text_walk!(content_texts_mut, mut);
