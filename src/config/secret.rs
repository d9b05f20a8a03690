//! Secrets: values that are zeroised on drop and never printed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{ConfigError, deep_merge};

/// A credential. Its memory is zeroised on drop and `Debug` never shows it.
///
/// ```
/// use nenya::config::Secret;
/// let s = Secret::new("sk-live-123");
/// assert_eq!(format!("{s:?}"), "Secret(***)");
/// assert_eq!(s.expose(), "sk-live-123");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a credential.
    pub fn new(s: impl Into<String>) -> Self {
        Self(Zeroizing::new(s.into()))
    }

    /// The credential itself; call only where it is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
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
    /// Everything else (e.g. `api_keys`, not implemented yet).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl Secrets {
    /// Parses one JSON document.
    pub fn from_json_str(s: &str) -> Result<Self, ConfigError> {
        let v: Value = serde_json::from_str(s)
            .map_err(|e| ConfigError::new(None, None, format!("invalid secrets JSON: {e}")))?;
        parse(None, v)
    }

    /// Loads and merges every `*.json` file of `dir` in name order.
    pub fn load_dir(dir: &Path) -> Result<Self, ConfigError> {
        let rd = std::fs::read_dir(dir).map_err(|e| {
            ConfigError::new(
                Some(dir),
                None,
                format!("cannot read secrets directory: {e}"),
            )
        })?;
        let mut files: Vec<_> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
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
