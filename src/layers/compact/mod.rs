//! Lossless-in-meaning size reductions of what the model reads.
//!
//! [`CompactLayer`] wraps a service of `Request<ChatRequest>`. With each switch on:
//!
//! * `json_minify`: a tool result that is a JSON document loses the whitespace between its
//!   tokens (lexically: every value, key order and number keeps its exact text);
//! * `whitespace`: in message text and tool results, trailing spaces are cut and runs of blank
//!   lines become one — never inside a fenced code block;
//! * `fold_duplicates`: a tool result identical to an earlier one (and at least 256 bytes)
//!   becomes a pointer to it.
//!
//! Tool-call arguments and thinking are never touched. The bytes saved go to the
//! `x-nenya-compacted` response header.
//!
//! ```
//! use nenya::layers::compact::{compact, CompactConfig};
//! let mut req = nenya::adapters::decode_request(nenya::model::ApiFormat::OpenAi, br#"{"model":"m",
//!   "messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function",
//!   "function":{"name":"f","arguments":"{}"}}]},
//!   {"role":"tool","tool_call_id":"c","content":"{\n  \"a\": 1,\n  \"b\": [1, 2]\n}"}]}"#).unwrap();
//! let cfg = CompactConfig { json_minify: true, ..Default::default() };
//! assert!(compact(&mut req, &cfg) > 0);
//! # let nenya::model::Content::Parts(p) = &req.messages[1].content else { panic!() };
//! # let nenya::model::Part::ToolResult { content, .. } = &p[0] else { panic!() };
//! assert_eq!(content, &nenya::model::Content::Text(r#"{"a":1,"b":[1,2]}"#.into()));
//! ```

use std::collections::HashMap;

use crate::layers::scrub::{RequestRewriter, Rewrite, RewriteLayer};
use crate::model::{ChatRequest, Content, Part};

/// What to compact (all off by default).
///
/// ```
/// assert!(!nenya::layers::CompactConfig::default().json_minify);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactConfig {
    /// Minify JSON tool results.
    pub json_minify: bool,
    /// Trim trailing spaces and fold blank-line runs outside code fences.
    pub whitespace: bool,
    /// Replace repeated identical tool results with a pointer.
    pub fold_duplicates: bool,
}

impl CompactConfig {
    fn any(&self) -> bool {
        self.json_minify || self.whitespace || self.fold_duplicates
    }
}

/// Compacts `req` in place; returns the bytes saved.
pub fn compact(req: &mut ChatRequest, cfg: &CompactConfig) -> usize {
    // Planned through `&ChatRequest`: a request with nothing to compact is never written to,
    // so it keeps the client's body (and goes upstream as sent).
    let edits = plan(req, cfg);
    let mut saved = 0usize;
    for (i, at, new) in edits {
        let slot = match (&mut req.messages[i].content, at) {
            (Content::Text(t), None) => Some(t),
            (Content::Parts(parts), Some(j)) => match parts.get_mut(j) {
                Some(Part::Text { text, .. }) => Some(text),
                Some(Part::ToolResult {
                    content: Content::Text(t),
                    ..
                }) => Some(t),
                _ => None,
            },
            _ => None,
        };
        if let Some(t) = slot {
            saved += t.len().saturating_sub(new.len());
            *t = new;
        }
    }
    saved
}

/// What [`compact`] changes: (message, part or `None` for string content, the shorter text).
fn plan(req: &ChatRequest, cfg: &CompactConfig) -> Vec<(usize, Option<usize>, String)> {
    let mut edits = Vec::new();
    let mut seen: HashMap<u64, &str> = HashMap::new();
    let hasher = std::collections::hash_map::RandomState::new();
    // `f` applied to the text as it stands: kept only when shorter.
    let shorter = |cur: &str, f: fn(&str) -> Option<String>| f(cur).filter(|n| n.len() < cur.len());
    for (i, m) in req.messages.iter().enumerate() {
        match &m.content {
            Content::Text(t) if cfg.whitespace => {
                if let Some(new) = shorter(t, collapse) {
                    edits.push((i, None, new));
                }
            }
            Content::Text(_) => {}
            Content::Parts(parts) => {
                for (j, p) in parts.iter().enumerate() {
                    match p {
                        Part::Text { text, .. } if cfg.whitespace => {
                            if let Some(new) = shorter(text, collapse) {
                                edits.push((i, Some(j), new));
                            }
                        }
                        Part::ToolResult {
                            tool_use_id,
                            content: Content::Text(t),
                            ..
                        } => {
                            if cfg.fold_duplicates && t.len() >= 256 {
                                use std::hash::BuildHasher;
                                let h = hasher.hash_one(t.as_str());
                                match seen.get(&h) {
                                    Some(first) => {
                                        let note = format!(
                                            "[nenya: identical to the result of call `{first}` above]"
                                        );
                                        edits.push((i, Some(j), note));
                                        continue;
                                    }
                                    None => {
                                        seen.insert(h, tool_use_id);
                                    }
                                }
                            }
                            let mut cur: Option<String> = None;
                            if cfg.json_minify
                                && let Some(new) = shorter(cur.as_deref().unwrap_or(t), minify)
                            {
                                cur = Some(new);
                            }
                            if cfg.whitespace
                                && let Some(new) = shorter(cur.as_deref().unwrap_or(t), collapse)
                            {
                                cur = Some(new);
                            }
                            if let Some(new) = cur {
                                edits.push((i, Some(j), new));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    edits
}

/// Whitespace outside strings removed from a valid JSON document. Lexical, so numbers and
/// strings keep their exact text (a parse and re-serialise would round big numbers).
fn minify(s: &str) -> Option<String> {
    let t = s.trim_start();
    if !(t.starts_with('{') || t.starts_with('[')) {
        return None;
    }
    serde_json::from_str::<serde::de::IgnoredAny>(s).ok()?;
    let mut out = String::with_capacity(s.len());
    let (mut in_str, mut escaped) = (false, false);
    for c in s.chars() {
        if in_str {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    Some(out)
}

/// Trailing spaces cut, blank-line runs folded to one, fenced blocks left alone.
fn collapse(s: &str) -> Option<String> {
    if !s.contains(" \n") && !s.contains("\n\n\n") && !s.contains("\t\n") {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut in_fence = false;
    let mut blank_run = 0;
    for (i, line) in s.split('\n').enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        let kept = if in_fence { line } else { line.trim_end() };
        if !in_fence && kept.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        if i > 0 {
            out.push('\n');
        }
        out.push_str(kept);
    }
    Some(out)
}

/// Layer that compacts requests: `CompactLayer::new(CompactConfig { json_minify: true, .. })`.
pub type CompactLayer = RewriteLayer<CompactConfig>;

/// The service [`CompactLayer`] produces.
pub type Compact<S> = Rewrite<S, CompactConfig>;

impl RequestRewriter for CompactConfig {
    const HEADER: &'static str = "x-nenya-compacted";
    fn rewrite(&self, req: &mut ChatRequest) -> Option<String> {
        if !self.any() {
            return None;
        }
        let saved = compact(req, self);
        (saved > 0).then(|| saved.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::{collapse, minify};

    #[test]
    fn minify_is_lexical() {
        let s = "{ \"big\": 123456789012345678901234567890, \"s\": \"a \\\" b\" }";
        assert_eq!(
            minify(s).unwrap(),
            "{\"big\":123456789012345678901234567890,\"s\":\"a \\\" b\"}"
        );
        assert!(minify("[1] is not json here").is_none());
    }

    #[test]
    fn whitespace_outside_fences_only() {
        let s = "a  \n\n\n\nb\n```\nx  \n\n\n\ny\n```\n";
        assert_eq!(collapse(s).unwrap(), "a\n\nb\n```\nx  \n\n\n\ny\n```\n");
    }
}
