//! Built-in providers and models, as data.
//!
//! Each provider differs in base URL, auth style and wire format; those differences live in
//! this table and the provider service handles each *kind* of difference once. Config may
//! override any field or add providers; an unknown provider is treated as OpenAI-compatible.

use crate::model::ApiFormat;

/// How a provider expects its API key.
///
/// ```
/// use nenya::adapters::providers::AuthStyle;
/// assert_eq!("bearer+x-goog".parse::<AuthStyle>().unwrap(), AuthStyle::BearerXGoog);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `x-api-key: <key>` plus `anthropic-version`.
    Anthropic,
    /// `api-key: <key>` (Azure OpenAI).
    Azure,
    /// `Authorization: Bearer <key>` and `x-goog-api-key: <key>` (Gemini).
    BearerXGoog,
    /// No credentials (local servers such as Ollama).
    None,
}

impl std::str::FromStr for AuthStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "bearer" => Self::Bearer,
            "anthropic" => Self::Anthropic,
            "azure" => Self::Azure,
            "bearer+x-goog" => Self::BearerXGoog,
            "none" => Self::None,
            other => {
                return Err(format!(
                    "unknown auth_style `{other}` (expected bearer, anthropic, azure, bearer+x-goog or none)"
                ));
            }
        })
    }
}

/// What an OpenAI-format upstream accepts (Nenya's provider reference table).
///
/// ```
/// use nenya::adapters::providers::{builtin_provider, Capabilities};
/// assert!(!builtin_provider("perplexity").unwrap().caps.tool_calls);
/// assert!(!Capabilities::CONSERVATIVE.stream_options);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `stream_options.include_usage`.
    pub stream_options: bool,
    /// `tool_choice: "auto"`.
    pub auto_tool_choice: bool,
    /// Array-shaped message content.
    pub content_arrays: bool,
    /// Function calling.
    pub tool_calls: bool,
    /// `reasoning_effort`.
    pub reasoning: bool,
    /// Image inputs.
    pub vision: bool,
}

const fn caps(
    stream_options: bool,
    auto_tool_choice: bool,
    content_arrays: bool,
    tool_calls: bool,
    reasoning: bool,
    vision: bool,
) -> Capabilities {
    Capabilities {
        stream_options,
        auto_tool_choice,
        content_arrays,
        tool_calls,
        reasoning,
        vision,
    }
}

impl Capabilities {
    /// Everything supported.
    pub const ALL: Self = caps(true, true, true, true, true, true);
    /// For providers nenya does not know: send nothing optional that might be rejected
    /// (`stream_options`, `reasoning_effort`); keep content and tools as the client sent them.
    pub const CONSERVATIVE: Self = caps(false, true, true, true, false, true);
}

/// Provider differences that are not capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    /// Headers always sent to this provider.
    pub extra_headers: &'static [(&'static str, &'static str)],
    /// Top-level fields this provider rejects.
    pub strip_fields: &'static [&'static str],
    /// A non-standard status meaning "overloaded, try elsewhere" (Anthropic's 529).
    pub overloaded_status: Option<u16>,
}

impl Quirks {
    /// No quirks.
    pub const NONE: Self = Self {
        extra_headers: &[],
        strip_fields: &[],
        overloaded_status: None,
    };
}

/// One built-in provider.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinProvider {
    /// Config name.
    pub name: &'static str,
    /// Full chat endpoint URL (empty: must be configured, e.g. Azure's per-deployment URL).
    pub url: &'static str,
    /// Auth style.
    pub auth: AuthStyle,
    /// Wire format of `url`.
    pub format: ApiFormat,
    /// Capabilities.
    pub caps: Capabilities,
    /// Quirks.
    pub quirks: Quirks,
}

const fn p(
    name: &'static str,
    url: &'static str,
    auth: AuthStyle,
    caps: Capabilities,
) -> BuiltinProvider {
    BuiltinProvider {
        name,
        url,
        auth,
        format: ApiFormat::OpenAi,
        caps,
        quirks: Quirks::NONE,
    }
}

const fn with_quirks(mut b: BuiltinProvider, quirks: Quirks) -> BuiltinProvider {
    b.quirks = quirks;
    b
}

const B: AuthStyle = AuthStyle::Bearer;

/// The 23 providers nenya knows without configuration (URLs, auth styles and capabilities as
/// Nenya documents them).
pub const BUILTIN_PROVIDERS: &[BuiltinProvider] = &[
    p(
        "openai",
        "https://api.openai.com/v1/chat/completions",
        B,
        Capabilities::ALL,
    ),
    BuiltinProvider {
        name: "anthropic",
        url: "https://api.anthropic.com/v1/messages",
        auth: AuthStyle::Anthropic,
        format: ApiFormat::Anthropic,
        caps: caps(false, true, false, true, true, true),
        quirks: Quirks {
            extra_headers: &[],
            strip_fields: &[],
            overloaded_status: Some(529),
        },
    },
    p(
        "gemini",
        "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
        AuthStyle::BearerXGoog,
        caps(false, true, true, true, true, true),
    ),
    p(
        "zai",
        "https://api.z.ai/api/paas/v4/chat/completions",
        B,
        Capabilities::ALL,
    ),
    with_quirks(
        p(
            "ollama",
            "http://127.0.0.1:11434/v1/chat/completions",
            AuthStyle::None,
            caps(false, true, false, true, true, false),
        ),
        Quirks {
            extra_headers: &[],
            strip_fields: &["tool_choice"],
            overloaded_status: None,
        },
    ),
    with_quirks(
        p(
            "openrouter",
            "https://openrouter.ai/api/v1/chat/completions",
            B,
            Capabilities::ALL,
        ),
        Quirks {
            extra_headers: &[
                ("http-referer", "https://github.com/nenya-gateway/nenya"),
                ("x-title", "nenya"),
            ],
            strip_fields: &[],
            overloaded_status: None,
        },
    ),
    p(
        "azure",
        "",
        AuthStyle::Azure,
        caps(false, true, true, true, true, true),
    ),
    p(
        "perplexity",
        "https://api.perplexity.ai/chat/completions",
        B,
        caps(false, false, true, false, false, true),
    ),
    p(
        "cohere",
        "https://api.cohere.com/v1/chat/completions",
        B,
        caps(false, true, true, true, false, true),
    ),
    p(
        "deepinfra",
        "https://api.deepinfra.com/v1/chat/completions",
        B,
        caps(false, true, true, true, false, true),
    ),
    p(
        "deepseek",
        "https://api.deepseek.com/chat/completions",
        B,
        caps(true, true, true, true, true, false),
    ),
    p(
        "mistral",
        "https://api.mistral.ai/v1/chat/completions",
        B,
        caps(false, true, true, true, true, true),
    ),
    p(
        "xai",
        "https://api.x.ai/v1/chat/completions",
        B,
        Capabilities::ALL,
    ),
    p(
        "groq",
        "https://api.groq.com/openai/v1/chat/completions",
        B,
        Capabilities::ALL,
    ),
    p(
        "together",
        "https://api.together.xyz/v1/chat/completions",
        B,
        caps(false, true, true, false, true, true),
    ),
    p(
        "sambanova",
        "https://api.sambanova.ai/v1/chat/completions",
        B,
        Capabilities::ALL,
    ),
    p(
        "cerebras",
        "https://api.cerebras.ai/v1/chat/completions",
        B,
        caps(true, true, true, true, true, false),
    ),
    p(
        "nvidia_free",
        "https://integrate.api.nvidia.com/v1/chat/completions",
        B,
        caps(false, false, true, true, false, true),
    ),
    p(
        "github",
        "https://models.inference.ai.azure.com/chat/completions",
        B,
        caps(false, true, true, true, true, true),
    ),
    p(
        "qwen_free",
        "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions",
        B,
        caps(true, false, true, true, true, false),
    ),
    p(
        "minimax_free",
        "https://api.minimax.chat/v1/chat/completions",
        B,
        caps(true, true, true, true, true, false),
    ),
    p(
        "moonshot",
        "https://api.moonshot.cn/v1/chat/completions",
        B,
        Capabilities::ALL,
    ),
    p(
        "zen",
        "https://opencode.ai/zen/v1/chat/completions",
        B,
        Capabilities::ALL,
    ),
];

/// A model-family rule: parameters newer models reject (Nenya's `param_compat`).
#[derive(Debug, Clone, Copy)]
pub struct ParamRule {
    /// Model id prefix, matched on the last path segment (`openrouter/o3` matches `o3`).
    pub model_prefix: &'static str,
    /// Top-level parameters removed.
    pub drop: &'static [&'static str],
    /// `max_tokens` is sent as `max_completion_tokens`.
    pub max_completion_tokens: bool,
}

const REASONING_DROPS: &[&str] = &[
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
];

/// Built-in model-family rules (first match wins).
pub const PARAM_RULES: &[ParamRule] = &[
    ParamRule {
        model_prefix: "o1",
        drop: REASONING_DROPS,
        max_completion_tokens: true,
    },
    ParamRule {
        model_prefix: "o3",
        drop: REASONING_DROPS,
        max_completion_tokens: true,
    },
    ParamRule {
        model_prefix: "o4",
        drop: REASONING_DROPS,
        max_completion_tokens: true,
    },
    ParamRule {
        model_prefix: "gpt-5",
        drop: REASONING_DROPS,
        max_completion_tokens: true,
    },
    ParamRule {
        model_prefix: "gemini-3",
        drop: &[
            "temperature",
            "top_p",
            "top_k",
            "candidate_count",
            "presence_penalty",
            "frequency_penalty",
        ],
        max_completion_tokens: false,
    },
];

/// The rule for a model, if any.
pub fn param_rule(model: &str) -> Option<&'static ParamRule> {
    let m = model.rsplit('/').next().unwrap_or(model);
    PARAM_RULES.iter().find(|r| m.starts_with(r.model_prefix))
}

/// Looks up a built-in provider by name.
///
/// ```
/// let a = nenya::adapters::providers::builtin_provider("anthropic").unwrap();
/// assert_eq!(a.format, nenya::model::ApiFormat::Anthropic);
/// ```
pub fn builtin_provider(name: &str) -> Option<&'static BuiltinProvider> {
    BUILTIN_PROVIDERS.iter().find(|p| p.name == name)
}

/// A model's list price in USD per million tokens.
///
/// ```
/// use nenya::adapters::providers::Price;
/// let p = Price { input: 2.5, output: 10.0, cached_input: Some(1.25) };
/// // 1,000 prompt tokens (400 of them cached) and 200 completion tokens:
/// let usd = p.cost(1_000, 400, 200);
/// assert!((usd - (600.0 * 2.5 + 400.0 * 1.25 + 200.0 * 10.0) / 1e6).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct Price {
    /// Input (prompt) tokens, per million (Nenya: `input_cost_per_1m`).
    #[serde(rename = "input_cost_per_1m")]
    pub input: f64,
    /// Output (completion) tokens, per million (`output_cost_per_1m`).
    #[serde(rename = "output_cost_per_1m")]
    pub output: f64,
    /// Prompt tokens read from the provider's cache, per million (`cached_input_cost_per_1m`);
    /// `None` bills them at the input price.
    #[serde(default, rename = "cached_input_cost_per_1m")]
    pub cached_input: Option<f64>,
}

impl Price {
    /// The cost in USD of `prompt` prompt tokens (of which `cached` were cache reads) and
    /// `completion` output tokens.
    pub fn cost(&self, prompt: u64, cached: u64, completion: u64) -> f64 {
        let cached = cached.min(prompt);
        let cached_rate = self.cached_input.unwrap_or(self.input);
        ((prompt - cached) as f64 * self.input
            + cached as f64 * cached_rate
            + completion as f64 * self.output)
            / 1e6
    }
}

/// One entry of the static model registry.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Model id as clients name it.
    pub id: &'static str,
    /// The provider that serves it by default.
    pub provider: &'static str,
    /// Context window in tokens.
    pub max_context: u32,
    /// Maximum output tokens.
    pub max_output: u32,
    /// List price (standard tier, short context); config `pricing` overrides it.
    pub price: Price,
}

const fn m(
    id: &'static str,
    provider: &'static str,
    max_context: u32,
    max_output: u32,
    (input, output, cached): (f64, f64, f64),
) -> KnownModel {
    KnownModel {
        id,
        provider,
        max_context,
        max_output,
        price: Price {
            input,
            output,
            cached_input: Some(cached),
        },
    }
}

/// Well-known models, so a config may name them as plain strings. Prices are the providers'
/// published list prices in USD per million tokens (input, output, cached input) for the
/// standard tier and short prompts, as of late 2025; they change, so `pricing` in the config
/// overrides any of them.
pub const KNOWN_MODELS: &[KnownModel] = &[
    m("gpt-4o", "openai", 128_000, 16_384, (2.5, 10.0, 1.25)),
    m("gpt-4o-mini", "openai", 128_000, 16_384, (0.15, 0.6, 0.075)),
    m("gpt-4.1", "openai", 1_047_576, 32_768, (2.0, 8.0, 0.5)),
    m("gpt-4.1-mini", "openai", 1_047_576, 32_768, (0.4, 1.6, 0.1)),
    m("o3", "openai", 200_000, 100_000, (2.0, 8.0, 0.5)),
    m("o4-mini", "openai", 200_000, 100_000, (1.1, 4.4, 0.275)),
    m("gpt-5", "openai", 400_000, 128_000, (1.25, 10.0, 0.125)),
    m(
        "claude-sonnet-4-20250514",
        "anthropic",
        200_000,
        64_000,
        (3.0, 15.0, 0.3),
    ),
    m(
        "claude-opus-4-20250514",
        "anthropic",
        200_000,
        32_000,
        (15.0, 75.0, 1.5),
    ),
    m(
        "claude-sonnet-4-5",
        "anthropic",
        200_000,
        64_000,
        (3.0, 15.0, 0.3),
    ),
    m(
        "claude-haiku-4-5",
        "anthropic",
        200_000,
        64_000,
        (1.0, 5.0, 0.1),
    ),
    m(
        "claude-3-5-haiku-latest",
        "anthropic",
        200_000,
        8_192,
        (0.8, 4.0, 0.08),
    ),
    m(
        "gemini-2.5-pro",
        "gemini",
        1_048_576,
        65_536,
        (1.25, 10.0, 0.31),
    ),
    m(
        "gemini-2.5-flash",
        "gemini",
        1_048_576,
        65_536,
        (0.3, 2.5, 0.075),
    ),
    m(
        "deepseek-chat",
        "deepseek",
        128_000,
        8_192,
        (0.28, 0.42, 0.028),
    ),
    m(
        "deepseek-reasoner",
        "deepseek",
        128_000,
        65_536,
        (0.28, 0.42, 0.028),
    ),
    m(
        "mistral-large-latest",
        "mistral",
        128_000,
        8_192,
        (2.0, 6.0, 2.0),
    ),
    m("grok-4", "xai", 256_000, 32_768, (3.0, 15.0, 0.75)),
    m(
        "llama-3.3-70b-versatile",
        "groq",
        131_072,
        32_768,
        (0.59, 0.79, 0.59),
    ),
    m("glm-4.6", "zai", 200_000, 128_000, (0.6, 2.2, 0.11)),
    m(
        "kimi-k2-0905-preview",
        "moonshot",
        262_144,
        16_384,
        (0.6, 2.5, 0.15),
    ),
];

/// Looks up a model in the static registry.
pub fn known_model(id: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.id == id)
}
