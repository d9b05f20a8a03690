//! [`PrefixCacheLayer`]: a stable prompt prefix, so providers' prompt caches hit.
//!
//! Providers cache the longest prefix of a prompt they have seen (OpenAI and DeepSeek
//! implicitly, Anthropic at `cache_control` breakpoints). Clients do not always send the same
//! prefix for the same conversation: tools come in a different order, a system reminder lands
//! between turns. With each switch on, the layer
//!
//! * `pin_system_first`: moves every system (and `developer`) message to the front, in their
//!   order;
//! * `stable_tools`: sorts the tools by name (stable, so equal names keep their order);
//! * `breakpoints`: asks the provider service to place Anthropic `cache_control` markers on
//!   the last system block, the last tool and the last message when the request goes to an
//!   Anthropic-format upstream and the client set none (a [`CacheBreakpoints`] extension).
//!
//! ```
//! use nenya::layers::prefix_cache::{stabilise, PrefixCacheConfig};
//! use nenya::model::{ApiFormat, Role};
//! let mut req = nenya::adapters::decode_request(ApiFormat::OpenAi, br#"{"model":"m",
//!   "messages":[{"role":"user","content":"hi"},{"role":"system","content":"be brief"}],
//!   "tools":[{"type":"function","function":{"name":"write","parameters":{}}},
//!            {"type":"function","function":{"name":"read","parameters":{}}}]}"#).unwrap();
//! assert!(stabilise(&mut req, &PrefixCacheConfig::default()));
//! assert_eq!(req.messages[0].role, Role::System);
//! # let names: Vec<_> = req.tools.as_ref().unwrap().iter().map(|t| match t { nenya::model::Tool::Function { name, .. } => name.clone(), _ => String::new() }).collect();
//! assert_eq!(names, ["read", "write"]);
//! ```

use std::task::{Context, Poll};

use http::Request;
use tower::Service;
use tower_layer::Layer;

use crate::model::{CacheBreakpoints, ChatRequest, Role, Tool};

/// What the layer does (everything on by default).
///
/// ```
/// assert!(nenya::layers::prefix_cache::PrefixCacheConfig::default().stable_tools);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheConfig {
    /// System messages first.
    pub pin_system_first: bool,
    /// Tools sorted by name.
    pub stable_tools: bool,
    /// Anthropic breakpoints to place when the client set none.
    pub breakpoints: CacheBreakpoints,
}

impl Default for PrefixCacheConfig {
    fn default() -> Self {
        Self {
            pin_system_first: true,
            stable_tools: true,
            breakpoints: CacheBreakpoints {
                system: true,
                tools: true,
                messages: true,
                ttl_1h: false,
            },
        }
    }
}

fn tool_name(t: &Tool) -> &str {
    match t {
        Tool::Function { name, .. } => name,
        Tool::Other(v) => v.get("name").and_then(|n| n.as_str()).unwrap_or(""),
    }
}

/// Reorders `req` as `cfg` says; `true` when anything moved. A request already in order is
/// only read (so it keeps the client's body: [`ChatRequest::client_body`]).
pub fn stabilise(req: &mut ChatRequest, cfg: &PrefixCacheConfig) -> bool {
    let mut changed = false;
    if cfg.pin_system_first {
        let system = |m: &crate::model::Message| matches!(m.role, Role::System | Role::Developer);
        let first_other = req.messages.iter().position(|m| !system(m));
        let late_system = first_other.is_some_and(|i| req.messages[i..].iter().any(system));
        if late_system {
            // Stable: system messages keep their order, and so does the conversation.
            req.messages.sort_by_key(|m| !system(m));
            changed = true;
        }
    }
    let unsorted = |t: &[Tool]| !t.is_sorted_by(|a, b| tool_name(a) <= tool_name(b));
    if cfg.stable_tools
        && req.tools.as_deref().is_some_and(unsorted)
        && let Some(tools) = &mut req.tools
    {
        tools.sort_by(|a, b| tool_name(a).cmp(tool_name(b)));
        changed = true;
    }
    changed
}

/// Layer that applies [`PrefixCache`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefixCacheLayer {
    cfg: PrefixCacheConfig,
}

impl PrefixCacheLayer {
    /// A layer with `cfg`.
    pub fn new(cfg: PrefixCacheConfig) -> Self {
        Self { cfg }
    }
}

impl<S> Layer<S> for PrefixCacheLayer {
    type Service = PrefixCache<S>;
    fn layer(&self, inner: S) -> PrefixCache<S> {
        PrefixCache {
            inner,
            cfg: self.cfg,
        }
    }
}

/// Stabilises each request's prefix, then calls the inner service.
#[derive(Debug, Clone)]
pub struct PrefixCache<S> {
    inner: S,
    cfg: PrefixCacheConfig,
}

impl<S> Service<Request<ChatRequest>> for PrefixCache<S>
where
    S: Service<Request<ChatRequest>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ChatRequest>) -> S::Future {
        stabilise(req.body_mut(), &self.cfg);
        if self.cfg.breakpoints.any() {
            req.extensions_mut().insert(self.cfg.breakpoints);
        }
        self.inner.call(req)
    }
}
