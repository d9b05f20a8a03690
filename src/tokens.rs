//! Token counting for the context layers.
//!
//! Three prices, used in this order so a request is tokenised only where a count decides
//! something:
//!
//! 1. [`TokenCounter::upper_bound`]: a BPE tokenizer never makes more tokens than bytes, so
//!    the byte length (times the family's scale) bounds the count. A request whose bound fits
//!    its budget is proven to fit without tokenising anything.
//! 2. [`estimate`]: bytes divided by a ratio calibrated against o200k on this repository's
//!    code and prose (median 3.7 bytes/token; `tests/it/tokens.rs` checks the total stays within
//!    15% and every file within -15%/+40%). Used for triggers and reporting.
//! 3. [`TokenCounter::count`]: exact for OpenAI-family models (o200k or cl100k, GitHub's
//!    linear-time `bpe-openai`); for other families (Anthropic, Gemini, open models) whose
//!    tokenizers are not public, the o200k count times a family scale (an approximation on the
//!    safe side; an upstream that still says the context was exceeded gets one tighter retry).
//!
//! Counts are cached per message text in a [`TokenCache`] shared by the clones a failover
//! chain makes, so no text is tokenised twice for one request.
//!
//! ```
//! use nenya::tokens::TokenCounter;
//! let gpt = TokenCounter::for_model("gpt-4o-mini");
//! assert!(gpt.is_exact());
//! assert_eq!(gpt.count("hello world"), 2);
//! assert!(gpt.upper_bound(11) >= 2);
//! let claude = TokenCounter::for_model("claude-sonnet-4-5");
//! assert!(!claude.is_exact() && claude.count("hello world") >= 2);
//! ```

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::model::{ChatRequest, Content, Message, Part, Tool};

/// Bytes per token of the fast estimate: the median of o200k over 43 files of Rust and
/// Markdown (3.35 for dense prose to 4.95 for deeply indented code).
pub const ESTIMATE_BYTES_PER_TOKEN: f64 = 3.7;

/// Tokens of framing per message (role and separators), as OpenAI's counting guide adds.
pub const MESSAGE_FRAMING: u64 = 4;

/// Tokens counted for an image part (OpenAI's low-detail price; providers differ).
pub const IMAGE_TOKENS: u64 = 85;

/// A fast token estimate of `text`: no tokenizer, one division.
///
/// ```
/// assert_eq!(nenya::tokens::estimate("x".repeat(37).as_str()), 10);
/// ```
pub fn estimate(text: &str) -> u64 {
    (text.len() as f64 / ESTIMATE_BYTES_PER_TOKEN).ceil() as u64
}

/// The tokenizer family of a model.
///
/// ```
/// use nenya::tokens::Family;
/// assert_eq!(Family::for_model("openai/gpt-4.1"), Family::O200k);
/// assert_eq!(Family::for_model("gpt-4-turbo"), Family::Cl100k);
/// assert_eq!(Family::for_model("claude-opus-4-1"), Family::Anthropic);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// OpenAI o200k_base (GPT-4o, 4.1, 4.5, 5, o-series, gpt-oss): exact.
    O200k,
    /// OpenAI cl100k_base (GPT-4, GPT-3.5, embeddings v3): exact.
    Cl100k,
    /// Anthropic Claude: o200k × 1.15.
    Anthropic,
    /// Google Gemini and Gemma: o200k × 1.05.
    Gemini,
    /// Every other model (DeepSeek, Qwen, Llama, Mistral, …): o200k × 1.10.
    Other,
}

impl Family {
    /// The family of a model name (an `org/` prefix, as OpenRouter spells models, is ignored).
    pub fn for_model(model: &str) -> Self {
        let m = model
            .rsplit('/')
            .next()
            .unwrap_or(model)
            .to_ascii_lowercase();
        let starts = |p: &[&str]| p.iter().any(|p| m.starts_with(p));
        if starts(&[
            "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-oss", "chatgpt", "o1", "o3", "o4",
            "codex",
        ]) {
            Self::O200k
        } else if starts(&["gpt-4", "gpt-3.5", "text-embedding"]) {
            Self::Cl100k
        } else if m.contains("claude") {
            Self::Anthropic
        } else if m.contains("gemini") || m.contains("gemma") {
            Self::Gemini
        } else {
            Self::Other
        }
    }

    /// Multiplier applied to the o200k count (1.0 for the exact families).
    pub fn scale(self) -> f64 {
        match self {
            Self::O200k | Self::Cl100k => 1.0,
            Self::Anthropic => 1.15,
            Self::Gemini => 1.05,
            Self::Other => 1.10,
        }
    }
}

/// Counts tokens for one model family (cheap to copy; the BPE tables are loaded once per
/// process, on first use or by [`warm_up`]).
///
/// ```
/// use nenya::tokens::TokenCounter;
/// let c = TokenCounter::for_model("gpt-5");
/// assert_eq!(c.count("fn main() {}"), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenCounter {
    family: Family,
}

impl TokenCounter {
    /// The counter for `model`.
    pub fn for_model(model: &str) -> Self {
        Self {
            family: Family::for_model(model),
        }
    }

    /// The counter for a family.
    pub fn new(family: Family) -> Self {
        Self { family }
    }

    /// Its family.
    pub fn family(self) -> Family {
        self.family
    }

    /// Whether [`TokenCounter::count`] is the model's own tokenizer.
    pub fn is_exact(self) -> bool {
        matches!(self.family, Family::O200k | Family::Cl100k)
    }

    /// A bound no count of `bytes` bytes of text exceeds.
    pub fn upper_bound(self, bytes: usize) -> u64 {
        (bytes as f64 * self.family.scale()).ceil() as u64
    }

    /// Tokens in `text` (exact for OpenAI families, scaled o200k otherwise).
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        let n = match self.family {
            Family::Cl100k => bpe_openai::cl100k_base().count(text),
            _ => bpe_openai::o200k_base().count(text),
        } as u64;
        if self.is_exact() {
            n
        } else {
            (n as f64 * self.family.scale()).ceil() as u64
        }
    }

    /// Tokens of one message: its texts, framing, and a flat price per image.
    ///
    /// ```
    /// use nenya::model::{Message, Role};
    /// let c = nenya::tokens::TokenCounter::for_model("gpt-4o");
    /// assert_eq!(c.count_message(&Message::text(Role::User, "hello world")), 2 + 4);
    /// ```
    pub fn count_message(self, m: &Message) -> u64 {
        let mut n = MESSAGE_FRAMING;
        m.for_each_text(|s| n += self.count(s));
        n + IMAGE_TOKENS * images(&m.content)
    }

    /// [`TokenCounter::count_message`], looked up in (and stored into) `cache`.
    pub fn count_message_cached(self, m: &Message, cache: Option<&TokenCache>) -> u64 {
        match cache {
            None => self.count_message(m),
            Some(c) => c.get_or_count(self, m),
        }
    }

    /// The byte-length bound of one message ([`TokenCounter::upper_bound`] plus framing).
    pub fn message_upper_bound(self, m: &Message) -> u64 {
        let mut bytes = 0;
        m.for_each_text(|s| bytes += s.len());
        self.upper_bound(bytes) + MESSAGE_FRAMING + IMAGE_TOKENS * images(&m.content)
    }

    /// Tokens of the tool definitions (their JSON, counted once per request).
    pub fn count_tools(self, req: &ChatRequest) -> u64 {
        tools_text(req).map_or(0, |t| self.count(&t))
    }

    /// The byte-length bound of the tool definitions (of the text [`TokenCounter::count_tools`]
    /// counts, measured without writing it).
    pub fn tools_upper_bound(self, req: &ChatRequest) -> u64 {
        tools_text_len(req).map_or(0, |n| self.upper_bound(n))
    }
}

/// `tools_text(req).map(|t| t.len())`, without writing the text: each part of a definition
/// on a line of its own.
fn tools_text_len(req: &ChatRequest) -> Option<usize> {
    req.tools.as_ref().filter(|t| !t.is_empty())?;
    let (bytes, parts) = req.tools_len();
    Some(bytes + parts)
}

fn tools_text(req: &ChatRequest) -> Option<String> {
    let tools = req.tools.as_ref().filter(|t| !t.is_empty())?;
    let mut s = String::new();
    for t in tools {
        match t {
            Tool::Function {
                name,
                description,
                parameters,
                ..
            } => {
                s.push_str(name);
                s.push('\n');
                if let Some(d) = description {
                    s.push_str(d);
                    s.push('\n');
                }
                s.push_str(&parameters.to_string());
            }
            Tool::Other(v) => s.push_str(&v.to_string()),
        }
        s.push('\n');
    }
    Some(s)
}

fn images(c: &Content) -> u64 {
    match c {
        Content::Parts(ps) => ps
            .iter()
            .filter(|p| matches!(p, Part::Image { .. }))
            .count() as u64,
        Content::Text(_) => 0,
    }
}

/// Loads the o200k tables now (about 50 ms) rather than on the first large request. (cl100k,
/// for GPT-4 and GPT-3.5 only, loads on first use: each table costs tens of MiB of memory.)
pub fn warm_up() {
    let _ = bpe_openai::o200k_base().count("warm");
}

/// Starts loading `family`'s table on a background thread, once per process: called when a
/// request comes within reach of its budget, so the table is usually ready before any
/// request needs an exact count, and a gateway whose requests never come close never pays
/// its memory (o200k is about 75 MiB of RSS).
pub fn warm_up_in_background(family: Family) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static O200K: AtomicBool = AtomicBool::new(false);
    static CL100K: AtomicBool = AtomicBool::new(false);
    let flag = if family == Family::Cl100k {
        &CL100K
    } else {
        &O200K
    };
    if flag.swap(true, Ordering::Relaxed) {
        return;
    }
    std::thread::spawn(move || {
        let _ = TokenCounter::new(family).count("warm");
    });
}

/// Per-request cache of message counts, keyed by family and a hash of the message's texts.
/// Clones share it (a failover chain's attempts count each message once).
///
/// ```
/// use nenya::model::{Message, Role};
/// use nenya::tokens::{TokenCache, TokenCounter};
/// let cache = TokenCache::default();
/// let c = TokenCounter::for_model("gpt-4o");
/// let m = Message::text(Role::User, "hello world");
/// assert_eq!(c.count_message_cached(&m, Some(&cache)), 6);
/// assert_eq!(cache.len(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct TokenCache {
    counts: Arc<Mutex<HashMap<(Family, u64), u64>>>,
}

impl TokenCache {
    fn get_or_count(&self, counter: TokenCounter, m: &Message) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        m.for_each_text(|s| s.hash(&mut h));
        images(&m.content).hash(&mut h);
        let key = (counter.family, h.finish());
        if let Some(n) = self.lock().get(&key) {
            return *n;
        }
        // Counted without the lock held: a long message does not block another attempt.
        let n = counter.count_message(m);
        self.lock().insert(key, n);
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Family, u64), u64>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many message counts it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
