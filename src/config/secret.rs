//! Secrets: values that are zeroised on drop and never printed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use http::HeaderValue;
use serde::Deserialize;
use serde_json::Value;
use std::sync::OnceLock;
use zeroize::Zeroizing;

use super::{ConfigError, deep_merge};

/// A credential. Its memory is zeroised when the last clone drops (clones share it, so
/// handing one to a request costs no copy of the key) and `Debug` never shows it.
///
/// ```
/// use nenya::config::Secret;
/// let s = Secret::new("sk-live-123");
/// assert_eq!(format!("{s:?}"), "Secret(***)");
/// assert_eq!(s.expose(), "sk-live-123");
/// ```
#[derive(Clone)]
pub struct Secret(std::sync::Arc<Inner>);

struct Inner {
    value: Zeroizing<String>,
    /// The header values sending it, made on first use and shared by every request after:
    /// a request then costs no copy of the key (copies that would stay in freed memory).
    /// `HeaderValue` bytes cannot be zeroised; these two copies live as long as the secret.
    header: OnceLock<Option<HeaderValue>>,
    bearer: OnceLock<Option<HeaderValue>>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl Secret {
    /// Wraps a credential.
    pub fn new(s: impl Into<String>) -> Self {
        Self(std::sync::Arc::new(Inner {
            value: Zeroizing::new(s.into()),
            header: OnceLock::new(),
            bearer: OnceLock::new(),
        }))
    }

    /// The credential itself; call only where it is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0.value
    }

    /// The credential as a header value, marked sensitive (left out of HPACK tables and
    /// `Debug`); `None` when it holds bytes a header cannot carry. Made once per secret.
    ///
    /// ```
    /// let s = nenya::config::Secret::new("sk-1");
    /// let v = s.header_value().unwrap();
    /// assert_eq!(v, "sk-1");
    /// assert!(v.is_sensitive());
    /// assert!(nenya::config::Secret::new("a\nb").header_value().is_none());
    /// ```
    pub fn header_value(&self) -> Option<HeaderValue> {
        self.0
            .header
            .get_or_init(|| sensitive(self.expose().as_bytes()))
            .clone()
    }

    /// `Bearer <credential>` as a header value, marked sensitive; made once per secret.
    ///
    /// ```
    /// let v = nenya::config::Secret::new("sk-1").bearer_value().unwrap();
    /// assert_eq!(v, "Bearer sk-1");
    /// assert!(v.is_sensitive());
    /// ```
    pub fn bearer_value(&self) -> Option<HeaderValue> {
        self.0
            .bearer
            .get_or_init(|| {
                let mut text = Zeroizing::new(Vec::with_capacity(7 + self.expose().len()));
                text.extend_from_slice(b"Bearer ");
                text.extend_from_slice(self.expose().as_bytes());
                sensitive(&text)
            })
            .clone()
    }
}

fn sensitive(bytes: &[u8]) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_bytes(bytes).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// Secrets, as Nenya lays them out: `client_token` and `provider_keys.<provider>`, merged from
/// every `*.json` in the secrets directory.
///
/// ```
/// let s = nenya::config::Secrets::from_json_str(
///     r#"{"client_token":"t","provider_keys":{"openai":"sk-1"}}"#).unwrap();
/// assert_eq!(s.client_token.unwrap().expose(), "t");
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Secrets {
    /// The token clients must present.
    #[serde(default)]
    pub client_token: Option<Secret>,
    /// API keys per provider name.
    #[serde(default)]
    pub provider_keys: BTreeMap<String, Secret>,
    /// RBAC API keys by id (see [`ApiKeyConfig`]).
    #[serde(default)]
    pub api_keys: BTreeMap<String, ApiKeyConfig>,
    /// Everything else.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One RBAC API key, as Nenya's `secrets.api_keys.<id>` lays it out.
///
/// ```
/// let s = nenya::config::Secrets::from_json_str(r#"{"api_keys":{"dev":{"name":"dev",
///   "token":"nk-0123456789abcdef","roles":["user"],"allowed_agents":["build"]}}}"#).unwrap();
/// let keys = s.rbac_keys().unwrap();
/// assert_eq!(keys.len(), 1);
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct ApiKeyConfig {
    /// Name for logs and metrics (defaults to the id).
    #[serde(default)]
    pub name: Option<String>,
    /// The token (at least 16 characters).
    pub token: Secret,
    /// `admin`, `user`, `read-only` (at least one).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Agents this key may use (empty: all).
    #[serde(default)]
    pub allowed_agents: Vec<String>,
    /// `"METHOD /path"` allowlist (empty: the role's default).
    #[serde(default)]
    pub allowed_endpoints: Vec<String>,
    /// RFC 3339 expiry.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Off switch (default on).
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Requests per minute this key may make (0 or absent: no limit of its own).
    #[serde(default)]
    pub ratelimit_max_rpm: Option<u32>,
    /// Tokens (prompt + completion) this key may use per UTC day (absent: no budget).
    #[serde(default)]
    pub token_budget_daily: Option<u64>,
    /// `always` (default: served past a provider's daily budget) or `fill` (served only while
    /// the provider's daily budget has room).
    #[serde(default)]
    pub budget_tier: Option<String>,
    /// Other fields (`created_at`, `cache_salt`, …), accepted and ignored.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn enabled_default() -> bool {
    true
}

impl Secrets {
    /// The RBAC keys, validated: errors name the key and field, never the token.
    pub fn rbac_keys(&self) -> Result<Vec<crate::layers::ApiKey>, ConfigError> {
        use crate::layers::{ApiKey, Role};
        let mut out = Vec::new();
        for (id, k) in &self.api_keys {
            let err = |field: &str, msg: String| {
                ConfigError::new(None, Some(format!("api_keys.{id}.{field}")), msg)
            };
            if k.token.expose().chars().count() < 16 {
                return Err(err("token", "must be at least 16 characters".into()));
            }
            if k.roles.is_empty() {
                return Err(err("roles", "at least one role is required".into()));
            }
            let roles = k
                .roles
                .iter()
                .map(|r| r.parse::<Role>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err("roles", e))?;
            let mut key = ApiKey::new(
                k.name.clone().unwrap_or_else(|| id.clone()),
                k.token.clone(),
                roles,
            )
            .allowed_agents(k.allowed_agents.iter().cloned())
            .allowed_endpoints(k.allowed_endpoints.iter().cloned())
            .enabled(k.enabled);
            if let Some(t) = &k.expires_at {
                let at = crate::layers::auth::parse_rfc3339(t)
                    .ok_or_else(|| err("expires_at", format!("`{t}` is not an RFC 3339 time")))?;
                key = key.expires_at(at);
            }
            out.push(key);
        }
        Ok(out)
    }
}

impl Secrets {
    /// Each RBAC key's own request rate (`api_keys.<id>.ratelimit_max_rpm`), by key name.
    ///
    /// ```
    /// let s = nenya::config::Secrets::from_json_str(r#"{"api_keys": {"dev": {"token": "nk-0123456789abcdef",
    ///   "roles": ["user"], "ratelimit_max_rpm": 30}}}"#).unwrap();
    /// assert_eq!(s.key_limits()["dev"].rpm, 30);
    /// ```
    pub fn key_limits(&self) -> std::collections::BTreeMap<String, crate::layers::RateLimitConfig> {
        self.api_keys
            .iter()
            .filter_map(|(id, k)| {
                let rpm = k.ratelimit_max_rpm.filter(|n| *n > 0)?;
                let name = k.name.clone().unwrap_or_else(|| id.clone());
                Some((name, crate::layers::RateLimitConfig { rpm, tpm: 0 }))
            })
            .collect()
    }

    /// Each RBAC key's daily token budget and tier, by key name (keys with neither are left
    /// out); errors name the field.
    ///
    /// ```
    /// let s = nenya::config::Secrets::from_json_str(r#"{"api_keys": {"ci": {"token": "nk-0123456789abcdef",
    ///   "roles": ["user"], "token_budget_daily": 1000, "budget_tier": "fill"}}}"#).unwrap();
    /// let q = s.key_quotas().unwrap();
    /// assert_eq!(q["ci"].token_budget_daily, Some(1000));
    /// ```
    pub fn key_quotas(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::layers::KeyQuota>, ConfigError> {
        let mut out = std::collections::BTreeMap::new();
        for (id, k) in &self.api_keys {
            let tier = match &k.budget_tier {
                Some(t) => t.parse().map_err(|e: String| {
                    ConfigError::new(None, Some(format!("api_keys.{id}.budget_tier")), e)
                })?,
                None => crate::layers::BudgetTier::Always,
            };
            let q = crate::layers::KeyQuota {
                token_budget_daily: k.token_budget_daily,
                tier,
            };
            if q != crate::layers::KeyQuota::default() {
                out.insert(k.name.clone().unwrap_or_else(|| id.clone()), q);
            }
        }
        Ok(out)
    }

    /// Parses one JSON document.
    pub fn from_json_str(s: &str) -> Result<Self, ConfigError> {
        let v: Value = serde_json::from_str(s)
            .map_err(|e| ConfigError::new(None, None, format!("invalid secrets JSON: {e}")))?;
        parse(None, v)
    }

    /// Loads and merges every `*.json` file of `dir` in name order (or reads `dir` itself when
    /// it is a file).
    pub fn load_dir(dir: &Path) -> Result<Self, ConfigError> {
        // One file (a systemd credential, or `NENYA_SECRETS_DIR` naming a file) is read as is.
        let mut files: Vec<_> = if dir.is_file() {
            vec![dir.to_path_buf()]
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| {
                ConfigError::new(
                    Some(dir),
                    None,
                    format!("cannot read secrets directory: {e}"),
                )
            })?;
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                // A config.json in a secrets directory is configuration, not secrets.
                .filter(|p| p.file_name().is_none_or(|n| n != "config.json"))
                .collect()
        };
        files.sort();
        let mut merged = Value::Object(Default::default());
        for f in &files {
            let text =
                Zeroizing::new(std::fs::read_to_string(f).map_err(|e| {
                    ConfigError::new(Some(f), None, format!("cannot read file: {e}"))
                })?);
            // The error names the position only: serde's message could quote a secret.
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                ConfigError::new(
                    Some(f),
                    None,
                    format!("invalid JSON at line {} column {}", e.line(), e.column()),
                )
            })?;
            parse(Some(f), v.clone())?;
            deep_merge(&mut merged, v);
        }
        parse(Some(dir), merged)
    }
}

fn parse(file: Option<&Path>, v: Value) -> Result<Secrets, ConfigError> {
    serde_path_to_error::deserialize::<_, Secrets>(v).map_err(|e| {
        let field = e.path().to_string();
        // Do not echo serde's message: it may quote the offending (secret) value.
        ConfigError::new(
            file,
            Some(field),
            "wrong type (expected a string or an object of strings)",
        )
    })
}
