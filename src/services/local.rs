//! Local engines (Ollama): models preloaded at start, residency tracked, the least recently
//! used evicted beyond a limit, and a model that is still loading skipped rather than waited on.
//!
//! A provider with `local_engine` in its config (a nenya addition) is an Ollama server:
//!
//! ```json
//! {"providers": {"ollama": {"url": "http://127.0.0.1:11434/v1/chat/completions",
//!   "local_engine": {"preload": ["qwen2.5-coder:7b"], "max_loaded": 2, "keep_alive": "30m"}}}}
//! ```
//!
//! At start (and on reload) [`LocalEngines::start`] reads what Ollama already holds
//! (`GET /api/ps`) and loads each `preload` model (`POST /api/generate` with `keep_alive` and
//! no prompt). While one of those loads runs, [`LocalEngineLayer`] refuses requests for that
//! model with [`ErrorKind::ModelLoading`], which the router fails over on: the next target
//! answers instead of the client waiting out a cold load. Each request marks its model used;
//! when more than `max_loaded` models are resident, the least recently used is unloaded
//! (`keep_alive: 0`) in the background.
//!
//! ```
//! use nenya::services::{LocalEngineConfig, LocalEngines};
//! let engines = LocalEngines::default();
//! assert!(!engines.is_loading("ollama", "qwen2.5-coder:7b"));
//! # let _ = LocalEngineConfig::default();
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request, header};
use http_body_util::BodyExt;
use tower::Service;
use tower_layer::Layer;

use super::provider::ProviderSpec;
use crate::Body;
use crate::error::{Error, ErrorKind};
use crate::layers::guard::ErrOr;
use crate::model::ChatRequest;

/// A provider's `local_engine` settings.
///
/// ```
/// assert_eq!(nenya::services::LocalEngineConfig::default().keep_alive, "30m");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEngineConfig {
    /// Models loaded at start, in order.
    pub preload: Vec<String>,
    /// Most models resident at once (0: no limit).
    pub max_loaded: usize,
    /// Ollama `keep_alive` for loads (default `30m`).
    pub keep_alive: String,
}

impl Default for LocalEngineConfig {
    fn default() -> Self {
        Self {
            preload: Vec::new(),
            max_loaded: 0,
            keep_alive: "30m".into(),
        }
    }
}

/// Longest a load may take before it is given up on (big models on slow disks are slow).
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a `GET /api/ps` or an unload may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct EngineState {
    /// Resident models, least recently used first.
    resident: Vec<(String, Instant)>,
    /// Models being loaded by us now.
    loading: Vec<String>,
}

struct Engine {
    spec: Arc<ProviderSpec>,
    base: String,
    cfg: LocalEngineConfig,
    state: Mutex<EngineState>,
}

impl Engine {
    fn lock(&self) -> std::sync::MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<serde_json::Value, String> {
        let mut req = Request::new(body.map_or_else(Body::empty, Body::from));
        *req.method_mut() = method;
        *req.uri_mut() = format!("{}{path}", self.base)
            .parse()
            .map_err(|_| format!("bad URL {}{path}", self.base))?;
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        req.headers_mut()
            .insert(header::USER_AGENT, self.spec.user_agent.clone());
        let resp = self
            .spec
            .transport
            .send(req)
            .await
            .map_err(|_| "unreachable".to_owned())?;
        let ok = resp.status().is_success();
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|_| "unreadable answer".to_owned())?
            .to_bytes();
        if !ok {
            return Err(format!("answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|_| "answer is not JSON".to_owned())
    }

    /// Syncs residency with what the server holds.
    async fn refresh(&self) -> Result<(), String> {
        let v = tokio::time::timeout(CALL_TIMEOUT, self.call(Method::GET, "/api/ps", None))
            .await
            .map_err(|_| "timed out".to_owned())??;
        let names: Vec<String> = v["models"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["model"].as_str().or(m["name"].as_str()))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let mut st = self.lock();
        st.resident.retain(|(m, _)| names.contains(m));
        let now = Instant::now();
        for n in names {
            if !st.resident.iter().any(|(m, _)| *m == n) {
                st.resident.insert(0, (n, now));
            }
        }
        Ok(())
    }

    async fn load(&self, model: &str) -> Result<(), String> {
        self.lock().loading.push(model.to_owned());
        let body =
            serde_json::json!({"model": model, "keep_alive": self.cfg.keep_alive}).to_string();
        let out = tokio::time::timeout(
            LOAD_TIMEOUT,
            self.call(Method::POST, "/api/generate", Some(body)),
        )
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r);
        let evict = {
            let mut st = self.lock();
            st.loading.retain(|m| m != model);
            if out.is_ok() {
                Self::touch_locked(&mut st, model, self.cfg.max_loaded)
            } else {
                Vec::new()
            }
        };
        for m in evict {
            self.unload(&m).await;
        }
        out.map(|_| ())
    }

    async fn unload(&self, model: &str) {
        let body = serde_json::json!({"model": model, "keep_alive": 0}).to_string();
        match tokio::time::timeout(
            CALL_TIMEOUT,
            self.call(Method::POST, "/api/generate", Some(body)),
        )
        .await
        {
            Ok(Ok(_)) => {
                tracing::info!(provider = %self.spec.name, %model, "local model unloaded (least recently used)")
            }
            Ok(Err(e)) => {
                tracing::warn!(provider = %self.spec.name, %model, "unloading failed: {e}")
            }
            Err(_) => tracing::warn!(provider = %self.spec.name, %model, "unloading timed out"),
        }
    }

    /// Marks `model` used now; returns the models to evict beyond `max`.
    fn touch_locked(st: &mut EngineState, model: &str, max: usize) -> Vec<String> {
        st.resident.retain(|(m, _)| m != model);
        st.resident.push((model.to_owned(), Instant::now()));
        let mut evict = Vec::new();
        while max > 0 && st.resident.len() > max {
            // Never the model just used, nor one still loading.
            match st
                .resident
                .iter()
                .position(|(m, _)| m != model && !st.loading.contains(m))
            {
                Some(i) => evict.push(st.resident.remove(i).0),
                None => break,
            }
        }
        evict
    }
}

/// Every local engine of a configuration, by provider name. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct LocalEngines {
    engines: Arc<HashMap<String, Arc<Engine>>>,
}

impl std::fmt::Debug for LocalEngines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngines")
            .field("providers", &self.engines.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LocalEngines {
    /// Engines for these providers (an Ollama base URL is derived from the provider's
    /// OpenAI-compatible endpoint, `…/v1/chat/completions`).
    pub fn new(engines: impl IntoIterator<Item = (Arc<ProviderSpec>, LocalEngineConfig)>) -> Self {
        let map = engines
            .into_iter()
            .filter_map(|(spec, cfg)| {
                let base = spec.api_base()?;
                Some((
                    spec.name.clone(),
                    Arc::new(Engine {
                        spec,
                        base,
                        cfg,
                        state: Mutex::default(),
                    }),
                ))
            })
            .collect();
        Self {
            engines: Arc::new(map),
        }
    }

    /// Whether there are any engines.
    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
    }

    /// Reads each server's resident models, then preloads the configured ones (in the
    /// background; nothing waits on it).
    pub fn start(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for engine in self.engines.values() {
            let e = engine.clone();
            rt.spawn(async move {
                if let Err(err) = e.refresh().await {
                    tracing::warn!(provider = %e.spec.name, "local engine unavailable: {err}");
                }
                for model in e.cfg.preload.clone() {
                    let started = Instant::now();
                    match e.load(&model).await {
                        Ok(()) => tracing::info!(provider = %e.spec.name, %model,
                            took_ms = started.elapsed().as_millis() as u64, "local model preloaded"),
                        Err(err) => tracing::warn!(provider = %e.spec.name, %model, "preload failed: {err}"),
                    }
                }
            });
        }
    }

    /// Whether `model` of `provider` is being loaded by a preload now.
    pub fn is_loading(&self, provider: &str, model: &str) -> bool {
        self.engines
            .get(provider)
            .is_some_and(|e| e.lock().loading.iter().any(|m| m == model))
    }

    /// Resident models of `provider`, least recently used first.
    pub fn resident(&self, provider: &str) -> Vec<String> {
        self.engines.get(provider).map_or_else(Vec::new, |e| {
            e.lock().resident.iter().map(|(m, _)| m.clone()).collect()
        })
    }

    /// Marks `model` used; unloads what falls beyond `max_loaded` in the background.
    fn touch(&self, provider: &str, model: &str) {
        let Some(e) = self.engines.get(provider) else {
            return;
        };
        let evict = Engine::touch_locked(&mut e.lock(), model, e.cfg.max_loaded);
        if !evict.is_empty() {
            let e = e.clone();
            tokio::spawn(async move {
                for m in evict {
                    e.unload(&m).await;
                }
            });
        }
    }
}

/// Layer that applies [`LocalEngine`]: `subject` names each request's provider and model.
#[derive(Clone)]
pub struct LocalEngineLayer<F> {
    engines: LocalEngines,
    subject: F,
}

impl<F> std::fmt::Debug for LocalEngineLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngineLayer").finish_non_exhaustive()
    }
}

impl<F> LocalEngineLayer<F> {
    /// Guards requests to `engines`.
    pub fn new(engines: LocalEngines, subject: F) -> Self {
        Self { engines, subject }
    }
}

impl<S, F: Clone> Layer<S> for LocalEngineLayer<F> {
    type Service = LocalEngine<S, F>;
    fn layer(&self, inner: S) -> LocalEngine<S, F> {
        LocalEngine {
            inner,
            engines: self.engines.clone(),
            subject: self.subject.clone(),
        }
    }
}

/// Skips a model still loading; marks each used model for LRU eviction.
#[derive(Clone)]
pub struct LocalEngine<S, F> {
    inner: S,
    engines: LocalEngines,
    subject: F,
}

impl<S: std::fmt::Debug, F> std::fmt::Debug for LocalEngine<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngine")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F> Service<Request<ChatRequest>> for LocalEngine<S, F>
where
    S: Service<Request<ChatRequest>, Error = Error>,
    F: Fn(&Request<ChatRequest>) -> Option<(Arc<str>, String)>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ErrOr<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ChatRequest>) -> Self::Future {
        if let Some((provider, model)) = (self.subject)(&req) {
            if self.engines.is_loading(&provider, &model) {
                return ErrOr::err(Error::new(
                    ErrorKind::ModelLoading,
                    format!("model `{model}` is still loading on `{provider}`"),
                ));
            }
            self.engines.touch(&provider, &model);
        }
        ErrOr::inner(self.inner.call(req))
    }
}
