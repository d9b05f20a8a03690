//! The semantic tier of the response cache (off by default).
//!
//! [`SemanticCacheLayer`] sits inside [`ResponseCacheLayer`](super::ResponseCacheLayer): a
//! request that missed the exact tier has its last user message embedded (by an [`EmbedFn`],
//! the gateway's call to a configured embeddings provider) and compared with the embeddings of
//! earlier requests that had *the same everything else* (model, system prompt, earlier turns,
//! tools, parameters, streaming; a "scope" hash). Above the cosine-similarity threshold, the
//! earlier request's stored answer is replayed (`x-nenya-cache: semantic-hit`). Otherwise the
//! request goes on, and its embedding is indexed under its exact key, which the exact tier
//! fills once the answer completes. An embedding that fails or is slow makes the request a
//! plain miss: the tier can only save a call, never fail or delay one beyond its timeout.
//!
//! ```
//! use std::sync::Arc;
//! use nenya::layers::cache::semantic::{cosine, EmbedFn};
//! assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
//! let embed: EmbedFn = Arc::new(|_text: String| Box::pin(async { Some(vec![1.0, 0.0]) }));
//! # drop(embed);
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tower::Service;
use tower_layer::Layer;

use super::{ExactKey, Key, Replay, ResponseCache, fingerprint, key};
use crate::Body;
use crate::model::{ChatRequest, Role};

/// Embeds a text; `None` when the embedding could not be had.
pub type EmbedFn =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<Vec<f32>>> + Send>> + Send + Sync>;

/// Semantic-tier settings.
///
/// ```
/// let c = nenya::layers::cache::semantic::SemanticConfig::default();
/// assert_eq!(c.threshold, 0.9);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SemanticConfig {
    /// Cosine similarity at or above which an earlier answer is reused.
    pub threshold: f32,
    /// Embeddings kept (oldest dropped first).
    pub max_entries: usize,
    /// Longest an embedding may take before the request goes on as a miss.
    pub timeout: Duration,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        Self {
            threshold: 0.9,
            max_entries: 1024,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Cosine similarity of two vectors (0 when either is zero or they differ in length).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

struct Indexed {
    scope: Key,
    embedding: Vec<f32>,
    key: Key,
}

/// The scope of a request (everything but its last user message) and that message's text;
/// `None` when the request does not end with a user text.
fn scope_and_prompt(req: &ChatRequest) -> Option<(Key, String)> {
    let (last, before) = req.messages.split_last()?;
    if last.role != Role::User {
        return None;
    }
    let prompt = last.content.text();
    if prompt.trim().is_empty() {
        return None;
    }
    Some((fingerprint(req, before), prompt))
}

/// Layer that applies [`SemanticCache`].
#[derive(Clone)]
pub struct SemanticCacheLayer {
    cache: ResponseCache,
    cfg: SemanticConfig,
    embed: EmbedFn,
    index: Arc<Mutex<VecDeque<Indexed>>>,
}

impl std::fmt::Debug for SemanticCacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticCacheLayer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl SemanticCacheLayer {
    /// A semantic tier over `cache` (the exact tier's store), embedding with `embed`.
    pub fn new(cache: ResponseCache, cfg: SemanticConfig, embed: EmbedFn) -> Self {
        Self {
            cache,
            cfg,
            embed,
            index: Arc::default(),
        }
    }
}

impl<S> Layer<S> for SemanticCacheLayer {
    type Service = SemanticCache<S>;
    fn layer(&self, inner: S) -> SemanticCache<S> {
        SemanticCache {
            inner,
            tier: self.clone(),
        }
    }
}

/// Answers from a similar earlier request's stored answer, or passes the request on.
#[derive(Clone)]
pub struct SemanticCache<S> {
    inner: S,
    tier: SemanticCacheLayer,
}

impl<S> std::fmt::Debug for SemanticCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticCache").finish_non_exhaustive()
    }
}

impl SemanticCacheLayer {
    fn lookup(&self, scope: &Key, embedding: &[f32]) -> Option<Response<Body>> {
        let best = {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            index
                .iter()
                .filter(|e| e.scope == *scope)
                .map(|e| (cosine(&e.embedding, embedding), e.key))
                .filter(|(s, _)| *s >= self.cfg.threshold)
                .max_by(|a, b| a.0.total_cmp(&b.0))
        };
        let (_, key) = best?;
        let (status, headers, frames) = self.cache.get(&key)?;
        let mut resp = Response::new(Body::new(Replay { frames, next: 0 }));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp.headers_mut()
            .insert("x-nenya-cache", HeaderValue::from_static("semantic-hit"));
        Some(resp)
    }

    fn remember(&self, scope: Key, embedding: Vec<f32>, key: Key) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index.retain(|e| e.key != key);
        while index.len() >= self.cfg.max_entries.max(1) {
            index.pop_front();
        }
        index.push_back(Indexed {
            scope,
            embedding,
            key,
        });
    }
}

impl<S> Service<Request<ChatRequest>> for SemanticCache<S>
where
    S: Service<Request<ChatRequest>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ChatRequest>) -> Self::Future {
        // Computed once by the exact tier in front; alone, this tier computes it itself.
        let exact = match req.extensions().get::<ExactKey>() {
            Some(k) => Some(k.0),
            None => key(&req, &self.tier.cache.cfg),
        };
        let scoped = exact.and_then(|k| scope_and_prompt(req.body()).map(|sp| (k, sp)));
        let Some((exact, (scope, prompt))) = scoped else {
            return Box::pin(self.inner.call(req));
        };
        // The ready inner service goes with the request; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let tier = self.tier.clone();
        Box::pin(async move {
            let embedding = tokio::time::timeout(tier.cfg.timeout, (tier.embed)(prompt))
                .await
                .ok()
                .flatten();
            if let Some(e) = &embedding
                && let Some(hit) = tier.lookup(&scope, e)
            {
                return Ok(hit);
            }
            if let Some(e) = embedding {
                tier.remember(scope, e, exact);
            }
            inner.call(req).await
        })
    }
}
