//! History pruning: what an agent's older turns no longer need.
//!
//! [`PruneLayer`] wraps a service of `Request<ChatRequest>`. Everything before the last user
//! text turn is *history*; the turns after it are the *current tool loop* and are never
//! touched (DeepSeek needs its `reasoning_content` back there, Anthropic its signed thinking).
//! In history, with each switch on:
//!
//! * `thoughts`: reasoning / thinking blocks are dropped;
//! * `stale_tool_results`: tool results older than the `keep_recent` most recent ones, and
//!   larger than `min_bytes`, are replaced with a one-line summary of what was called and how
//!   it ended. The calls stay, so every call still has its result.
//!
//! What was done is reported in the `x-nenya-pruned` response header.
//!
//! ```
//! use nenya::layers::{PruneConfig, PruneLayer};
//! use nenya::model::{ApiFormat, ChatRequest, Content, Part};
//! use nenya::{Body, Error};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(PruneLayer::new(PruneConfig { thoughts: true, ..PruneConfig::default() }))
//!     .service(service_fn(|req: http::Request<ChatRequest>| async move {
//!         let Content::Parts(p) = &req.body().messages[1].content else { panic!() };
//!         assert!(!p.iter().any(|p| matches!(p, Part::Thinking { .. })));
//!         Ok::<_, Error>(http::Response::new(Body::empty()))
//!     }));
//! let req = nenya::adapters::decode_request(ApiFormat::OpenAi, br#"{"model":"m","messages":[
//!   {"role":"user","content":"a"},
//!   {"role":"assistant","content":"b","reasoning_content":"long thoughts"},
//!   {"role":"user","content":"c"}]}"#).unwrap();
//! let resp = svc.oneshot(http::Request::new(req)).await.unwrap();
//! assert_eq!(resp.headers()["x-nenya-pruned"], "thoughts=1 tool_results=0");
//! # }
//! ```

use crate::layers::scrub::{RequestRewriter, Rewrite, RewriteLayer};
use crate::model::{ChatRequest, Content, Part, Role};

/// What to prune (all off by default: pruning changes what the model sees).
///
/// ```
/// let c = nenya::layers::PruneConfig::default();
/// assert!(!c.thoughts && !c.stale_tool_results && c.keep_recent == 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneConfig {
    /// Drop thinking / reasoning from history.
    pub thoughts: bool,
    /// Summarise old tool results.
    pub stale_tool_results: bool,
    /// Tool results kept whole, counting back from the newest.
    pub keep_recent: usize,
    /// Results this small are kept whole (a summary would not be shorter).
    pub min_bytes: usize,
}

impl Default for PruneConfig {
    fn default() -> Self {
        Self {
            thoughts: false,
            stale_tool_results: false,
            keep_recent: 3,
            min_bytes: 256,
        }
    }
}

/// Prunes `req` in place; returns (thinking blocks dropped, tool results summarised).
///
/// ```
/// use nenya::layers::{prune::prune, PruneConfig};
/// let mut req = nenya::adapters::decode_request(nenya::model::ApiFormat::OpenAi,
///     br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
/// assert_eq!(prune(&mut req, &PruneConfig { thoughts: true, ..Default::default() }), (0, 0));
/// ```
pub fn prune(req: &mut ChatRequest, cfg: &PruneConfig) -> (usize, usize) {
    // Planned through `&ChatRequest`: a request with nothing to prune is never written to, so
    // it keeps the client's body (and goes upstream as sent).
    let (thinking, results) = plan(req, cfg);
    // Results first: dropping thinking blocks shifts the parts after them.
    let summarised = results.len();
    for (i, j, note) in results {
        if let Content::Parts(parts) = &mut req.messages[i].content
            && let Some(Part::ToolResult { content, .. }) = parts.get_mut(j)
        {
            *content = Content::Text(note);
        }
    }
    let mut thoughts = 0;
    for i in thinking {
        if let Content::Parts(parts) = &mut req.messages[i].content {
            let before = parts.len();
            parts.retain(|p| !matches!(p, Part::Thinking { .. }));
            thoughts += before - parts.len();
        }
    }
    (thoughts, summarised)
}

/// Stale tool results to replace: (message, part, the note that replaces it).
type Notes = Vec<(usize, usize, String)>;

/// What [`prune`] changes: the messages whose thinking blocks go, and the stale tool results.
fn plan(req: &ChatRequest, cfg: &PruneConfig) -> (Vec<usize>, Notes) {
    let (mut thinking, mut results) = (Vec::new(), Vec::new());
    let Some(history_end) = req
        .messages
        .iter()
        .rposition(|m| m.role == Role::User && !m.has_tool_results())
    else {
        return (thinking, results);
    };
    let history = &req.messages[..history_end];
    if cfg.thoughts {
        for (i, m) in history.iter().enumerate() {
            // A turn that is only thinking keeps it: an empty turn is refused upstream.
            if let Content::Parts(parts) = &m.content
                && parts.iter().any(|p| matches!(p, Part::Thinking { .. }))
                && !parts.iter().all(|p| matches!(p, Part::Thinking { .. }))
            {
                thinking.push(i);
            }
        }
    }
    if cfg.stale_tool_results {
        // Names of the calls, to say what each result answered.
        let mut names = std::collections::HashMap::new();
        for m in &req.messages {
            if let Content::Parts(parts) = &m.content {
                for p in parts {
                    if let Part::ToolUse { id, name, .. } = p {
                        names.insert(id.as_str(), name.as_str());
                    }
                }
            }
        }
        let total: usize = history
            .iter()
            .map(|m| match &m.content {
                Content::Parts(ps) => ps
                    .iter()
                    .filter(|p| matches!(p, Part::ToolResult { .. }))
                    .count(),
                Content::Text(_) => 0,
            })
            .sum();
        let mut seen = 0;
        for (i, m) in history.iter().enumerate() {
            let Content::Parts(parts) = &m.content else {
                continue;
            };
            for (j, p) in parts.iter().enumerate() {
                let Part::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                    ..
                } = p
                else {
                    continue;
                };
                seen += 1;
                if seen + cfg.keep_recent > total {
                    continue; // among the most recent
                }
                let size = match content {
                    Content::Text(t) => t.len(),
                    Content::Parts(ps) => ps
                        .iter()
                        .map(|p| match p {
                            Part::Text { text, .. } => text.len(),
                            _ => 0,
                        })
                        .sum(),
                };
                if size < cfg.min_bytes {
                    continue;
                }
                let name = names.get(tool_use_id.as_str()).copied().unwrap_or("a tool");
                let outcome = if *is_error == Some(true) {
                    "failed"
                } else {
                    "succeeded"
                };
                results.push((
                    i,
                    j,
                    format!("[nenya pruned this old result: `{name}` {outcome}, {size} bytes]"),
                ));
            }
        }
    }
    (thinking, results)
}

/// Layer that prunes history: `PruneLayer::new(PruneConfig { thoughts: true, .. })`.
pub type PruneLayer = RewriteLayer<PruneConfig>;

/// The service [`PruneLayer`] produces.
pub type Prune<S> = Rewrite<S, PruneConfig>;

impl RequestRewriter for PruneConfig {
    const HEADER: &'static str = "x-nenya-pruned";
    fn rewrite(&self, req: &mut ChatRequest) -> Option<String> {
        let (t, r) = prune(req, self);
        (t + r > 0).then(|| format!("thoughts={t} tool_results={r}"))
    }
}
