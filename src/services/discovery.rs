//! Live model lists: each configured provider's own `GET …/models`, fetched when a gateway is
//! built (at start and on every reload) and merged into `GET /v1/models`. A provider that fails
//! to answer is logged and skipped; nothing waits for it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{Method, Request, header};
use http_body_util::BodyExt;

use super::provider::{ProviderSpec, apply_auth};
use crate::Body;
use crate::model::ApiFormat;

/// Model ids per provider, as the providers listed them. Cheap to clone (shared).
///
/// ```
/// let live = nenya::services::LiveModels::default();
/// assert!(live.snapshot().is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct LiveModels {
    inner: Arc<RwLock<BTreeMap<String, Vec<String>>>>,
}

impl LiveModels {
    /// Provider name → its model ids, sorted by provider.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<String>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A new set holding this one's lists of the providers `table` still fetches.
    pub fn seeded_for(&self, table: &super::RouteTable) -> Self {
        let names: Vec<String> = table
            .discoverable()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let mut map = self.snapshot();
        map.retain(|k, _| names.contains(k));
        Self {
            inner: Arc::new(RwLock::new(map)),
        }
    }

    fn set(&self, provider: &str, ids: Vec<String>) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(provider.to_owned(), ids);
    }
}

/// Longest a provider's list may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest list read.
const MAX_LIST_BYTES: usize = 4 << 20;

/// Fetches every provider's list into `live`, concurrently, logging failures.
pub(crate) async fn refresh_models(providers: Vec<Arc<ProviderSpec>>, live: LiveModels) {
    let mut tasks = tokio::task::JoinSet::new();
    for p in providers {
        let live = live.clone();
        tasks.spawn(async move {
            match tokio::time::timeout(FETCH_TIMEOUT, fetch(&p)).await {
                Ok(Ok(ids)) => {
                    tracing::info!(provider = %p.name, models = ids.len(), "live model list fetched");
                    live.set(&p.name, ids);
                }
                Ok(Err(e)) => {
                    tracing::warn!(provider = %p.name, "live model list unavailable: {e}")
                }
                Err(_) => tracing::warn!(provider = %p.name, "live model list timed out"),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The `/models` URL next to a provider's chat endpoint (`…/v1/chat/completions` →
/// `…/v1/models`, `…/v1/messages` → `…/v1/models`); `None` for native Gemini.
fn models_url(p: &ProviderSpec) -> Option<(ApiFormat, String)> {
    let (format, _) = p.endpoints.iter().find(|(f, _)| *f != ApiFormat::Gemini)?;
    Some((*format, format!("{}/models", p.api_prefix(*format)?)))
}

async fn fetch(p: &ProviderSpec) -> Result<Vec<String>, String> {
    let (format, url) = models_url(p).ok_or("no OpenAI or Anthropic endpoint")?;
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = url.parse().map_err(|_| format!("bad URL {url}"))?;
    let h = req.headers_mut();
    h.insert(header::USER_AGENT, p.user_agent.clone());
    let account = p
        .accounts
        .as_ref()
        .and_then(|a| a.first())
        .map(|a| &a.credential);
    apply_auth(h, p, format, account).map_err(|e| e.to_string())?;
    let resp = p
        .transport
        .send(req)
        .await
        .map_err(|_| "unreachable".to_owned())?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status().as_u16()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_LIST_BYTES)
        .collect()
        .await
        .map_err(|_| "unreadable or too large".to_owned())?
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| "not JSON".to_owned())?;
    let ids: Vec<String> = v["data"]
        .as_array()
        .ok_or("no `data` list")?
        .iter()
        .filter_map(|m| m["id"].as_str())
        // Gemini's OpenAI-compatible list spells ids `models/…`.
        .map(|id| id.strip_prefix("models/").unwrap_or(id).to_owned())
        .collect();
    Ok(ids)
}
