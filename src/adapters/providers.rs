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

/// One built-in provider.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinProvider {
    /// Config name.
    pub name: &'static str,
    /// Full chat endpoint URL.
    pub url: &'static str,
    /// Auth style.
    pub auth: AuthStyle,
    /// Wire format of `url`.
    pub format: ApiFormat,
}

const fn p(name: &'static str, url: &'static str, auth: AuthStyle) -> BuiltinProvider {
    BuiltinProvider {
        name,
        url,
        auth,
        format: ApiFormat::OpenAi,
    }
}

/// The providers nenya knows without configuration (URLs as Nenya documents them).
pub const BUILTIN_PROVIDERS: &[BuiltinProvider] = &[
    p(
        "openai",
        "https://api.openai.com/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    BuiltinProvider {
        name: "anthropic",
        url: "https://api.anthropic.com/v1/messages",
        auth: AuthStyle::Anthropic,
        format: ApiFormat::Anthropic,
    },
    p(
        "gemini",
        "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
        AuthStyle::BearerXGoog,
    ),
    p(
        "deepseek",
        "https://api.deepseek.com/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "moonshot",
        "https://api.moonshot.cn/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "zai",
        "https://api.z.ai/api/paas/v4/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "groq",
        "https://api.groq.com/openai/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "together",
        "https://api.together.xyz/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "mistral",
        "https://api.mistral.ai/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "xai",
        "https://api.x.ai/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "perplexity",
        "https://api.perplexity.ai/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "cohere",
        "https://api.cohere.com/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "deepinfra",
        "https://api.deepinfra.com/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "openrouter",
        "https://openrouter.ai/api/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "nvidia_free",
        "https://integrate.api.nvidia.com/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "qwen_free",
        "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "minimax_free",
        "https://api.minimax.chat/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "sambanova",
        "https://api.sambanova.ai/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "cerebras",
        "https://api.cerebras.ai/v1/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "github",
        "https://models.inference.ai.azure.com/chat/completions",
        AuthStyle::Bearer,
    ),
    p(
        "ollama",
        "http://127.0.0.1:11434/v1/chat/completions",
        AuthStyle::None,
    ),
    p(
        "zen",
        "https://opencode.ai/zen/v1/chat/completions",
        AuthStyle::Bearer,
    ),
];

/// Looks up a built-in provider by name.
///
/// ```
/// let a = nenya::adapters::providers::builtin_provider("anthropic").unwrap();
/// assert_eq!(a.format, nenya::model::ApiFormat::Anthropic);
/// ```
pub fn builtin_provider(name: &str) -> Option<&'static BuiltinProvider> {
    BUILTIN_PROVIDERS.iter().find(|p| p.name == name)
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
}

const fn m(
    id: &'static str,
    provider: &'static str,
    max_context: u32,
    max_output: u32,
) -> KnownModel {
    KnownModel {
        id,
        provider,
        max_context,
        max_output,
    }
}

/// Well-known models, so a config may name them as plain strings.
pub const KNOWN_MODELS: &[KnownModel] = &[
    m("gpt-4o", "openai", 128_000, 16_384),
    m("gpt-4o-mini", "openai", 128_000, 16_384),
    m("gpt-4.1", "openai", 1_047_576, 32_768),
    m("gpt-4.1-mini", "openai", 1_047_576, 32_768),
    m("o3", "openai", 200_000, 100_000),
    m("o4-mini", "openai", 200_000, 100_000),
    m("gpt-5", "openai", 400_000, 128_000),
    m("claude-sonnet-4-20250514", "anthropic", 200_000, 64_000),
    m("claude-opus-4-20250514", "anthropic", 200_000, 32_000),
    m("claude-sonnet-4-5", "anthropic", 200_000, 64_000),
    m("claude-haiku-4-5", "anthropic", 200_000, 64_000),
    m("claude-3-5-haiku-latest", "anthropic", 200_000, 8_192),
    m("gemini-2.5-pro", "gemini", 1_048_576, 65_536),
    m("gemini-2.5-flash", "gemini", 1_048_576, 65_536),
    m("deepseek-chat", "deepseek", 128_000, 8_192),
    m("deepseek-reasoner", "deepseek", 128_000, 65_536),
    m("mistral-large-latest", "mistral", 128_000, 8_192),
    m("grok-4", "xai", 256_000, 32_768),
    m("llama-3.3-70b-versatile", "groq", 131_072, 32_768),
    m("glm-4.6", "zai", 200_000, 128_000),
    m("kimi-k2-0905-preview", "moonshot", 262_144, 16_384),
];

/// Looks up a model in the static registry.
pub fn known_model(id: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.id == id)
}
