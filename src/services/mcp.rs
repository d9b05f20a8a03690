//! The MCP client: the configured `mcp_servers`, connected with the official Rust SDK
//! (`rmcp`), their tools discovered and kept, their calls made — the [`ToolHost`] the
//! [`McpLayer`](crate::layers::mcp::McpLayer) runs agents' tool loops with.
//!
//! Each server has a task of its own: it starts the server (a `command` speaking MCP on its
//! standard input and output, or an HTTP endpoint), runs the `initialize` handshake, lists the tools
//! (`tools/list`, every page) and lists them again on `notifications/tools/list_changed`.
//! When the connection ends (the process exits, crashes, closes its pipes) or cannot be made,
//! it tries again after a back-off (1 s doubling to 30 s; reset once connected). Meanwhile
//! the server's tools stay listed and calls fail with a clear error the model reads.
//! [`McpServers::status`] reports each server for `/statsz`. Dropping the last handle stops
//! the tasks and the processes.
//!
//! A server with a `url` is reached over HTTP ([`mcp_http`](super::mcp_http)): streamable
//! HTTP, falling back to the legacy HTTP+SSE transport, with its `headers` on every request.
//!
//! ```no_run
//! use nenya::config::Config;
//! use nenya::services::mcp::McpServers;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cfg = Config::from_json_str(r#"{"mcp_servers": {"memory":
//!     {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]}}}"#).unwrap();
//! let servers = McpServers::start(&cfg.mcp_servers);
//! servers.ready(std::time::Duration::from_secs(30)).await;
//! println!("{:?}", servers.status());
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use rmcp::service::{NotificationContext, Peer, RoleClient};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};

use crate::config::McpServerSection;
use crate::layers::mcp::{ToolCall, ToolHost};
use crate::model::Tool;

/// One server's state as `/statsz` shows it.
///
/// ```
/// let s = nenya::services::mcp::ServerStatus::default();
/// assert!(!s.connected && s.tools == 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStatus {
    /// Whether a session is open now.
    pub connected: bool,
    /// Tools listed by the server.
    pub tools: usize,
    /// Connections made so far (more than one: it was restarted).
    pub connections: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Live {
    peer: Option<Peer<RoleClient>>,
    /// The server's tools, named `server__tool`.
    tools: Vec<Tool>,
    status: ServerStatus,
}

struct Server {
    name: String,
    cfg: McpServerSection,
    live: Mutex<Live>,
    /// Signalled by `notifications/tools/list_changed`.
    relist: tokio::sync::Notify,
    /// Signalled each time the server's state changes (for [`McpServers::ready`]).
    changed: tokio::sync::Notify,
}

impl Server {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The configured MCP servers (cheap to clone; the last handle dropped stops them).
#[derive(Clone)]
pub struct McpServers {
    inner: Arc<Inner>,
}

struct Inner {
    servers: BTreeMap<String, Arc<Server>>,
    /// Dropped with the last handle: ends the servers' tasks (and so their processes).
    _stop: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for McpServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServers")
            .field("servers", &self.inner.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Receives the server's notifications.
struct Handler {
    server: std::sync::Weak<Server>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(s) = self.server.upgrade() {
            s.relist.notify_one();
        }
    }
}

impl McpServers {
    /// Starts a task per server (call inside a tokio runtime; without one nothing starts).
    pub fn start(cfg: &BTreeMap<String, McpServerSection>) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(());
        let servers: BTreeMap<String, Arc<Server>> = cfg
            .iter()
            .map(|(name, c)| {
                let s = Arc::new(Server {
                    name: name.clone(),
                    cfg: c.clone(),
                    live: Mutex::new(Live::default()),
                    relist: tokio::sync::Notify::new(),
                    changed: tokio::sync::Notify::new(),
                });
                (name.clone(), s)
            })
            .collect();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            for s in servers.values() {
                rt.spawn(lifecycle(s.clone(), stopped.clone()));
            }
        }
        Self {
            inner: Arc::new(Inner {
                servers,
                _stop: stop,
            }),
        }
    }

    /// Each server's state, by name.
    pub fn status(&self) -> BTreeMap<String, ServerStatus> {
        self.inner
            .servers
            .iter()
            .map(|(n, s)| (n.clone(), s.live().status.clone()))
            .collect()
    }

    /// Waits until every server has connected or failed at least once (or `wait` passed).
    pub async fn ready(&self, wait: Duration) {
        let all = async {
            for s in self.inner.servers.values() {
                loop {
                    let changed = s.changed.notified();
                    {
                        let l = s.live();
                        if l.status.connected || l.status.last_error.is_some() {
                            break;
                        }
                    }
                    changed.await;
                }
            }
        };
        let _ = tokio::time::timeout(wait, all).await;
    }

    /// Lists every server's tools again (a configuration reload that kept the servers).
    pub fn refresh(&self) {
        for s in self.inner.servers.values() {
            s.relist.notify_one();
        }
    }

    fn server_of(&self, qualified: &str) -> Option<(&Arc<Server>, String)> {
        let (server, tool) = qualified.split_once("__")?;
        let s = self.inner.servers.get(server)?;
        Some((s, tool.to_owned()))
    }
}

impl ToolHost for McpServers {
    fn tools(&self, servers: &[String]) -> Vec<Tool> {
        servers
            .iter()
            .filter_map(|n| self.inner.servers.get(n))
            .flat_map(|s| s.live().tools.to_vec())
            .collect()
    }

    fn call(&self, name: &str, arguments: Value) -> ToolCall {
        let Some((server, tool)) = self.server_of(name) else {
            let msg = format!("no MCP tool named `{name}`");
            return Box::pin(async move { Err(msg) });
        };
        let server = server.clone();
        Box::pin(async move {
            let (peer, err) = {
                let l = server.live();
                (l.peer.clone(), l.status.last_error.clone())
            };
            let Some(peer) = peer else {
                return Err(format!(
                    "MCP server `{}` is not connected{}",
                    server.name,
                    err.map(|e| format!(" ({e})")).unwrap_or_default()
                ));
            };
            let mut params = CallToolRequestParams::new(tool.clone());
            if let Value::Object(args) = arguments {
                params = params.with_arguments(args);
            }
            let timeout = Duration::from_secs(server.cfg.timeout.max(1));
            match tokio::time::timeout(timeout, peer.call_tool(params)).await {
                Err(_) => Err(format!(
                    "`{}` on MCP server `{}` timed out after {} s",
                    tool,
                    server.name,
                    timeout.as_secs()
                )),
                Ok(Err(e)) => Err(format!(
                    "`{}` on MCP server `{}` failed: {e}",
                    tool, server.name
                )),
                Ok(Ok(result)) => {
                    let v = serde_json::to_value(&result).unwrap_or(Value::Null);
                    let text = result_text(&v);
                    if result.is_error == Some(true) {
                        Err(text)
                    } else {
                        Ok(text)
                    }
                }
            }
        })
    }
}

/// A `tools/call` result as the text a model reads: the text blocks, other blocks as JSON,
/// the structured content when there is nothing else.
fn result_text(v: &Value) -> String {
    let mut out = Vec::new();
    for block in v
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("text").and_then(Value::as_str) {
            Some(t) if block.get("type").and_then(Value::as_str) == Some("text") => {
                out.push(t.to_owned())
            }
            _ => out.push(block.to_string()),
        }
    }
    if out.is_empty()
        && let Some(s) = v.get("structuredContent")
    {
        out.push(s.to_string());
    }
    out.join("\n")
}

/// An MCP tool as a nenya tool named `server__tool`.
fn to_tool(server: &str, t: &rmcp::model::Tool) -> Option<Tool> {
    let v = serde_json::to_value(t).ok()?;
    let name = v.get("name")?.as_str()?;
    Some(Tool::Function {
        name: format!("{server}__{name}"),
        description: v
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        parameters: match v.get("inputSchema") {
            // `$schema` is no business of the model's (and some providers refuse it).
            Some(Value::Object(schema)) => {
                let mut schema = schema.clone();
                schema.remove("$schema");
                Value::Object(schema)
            }
            _ => json!({"type": "object"}),
        },
        extra: Default::default(),
    })
}

/// Connects, lists, serves until the session ends; again after a back-off; until stopped.
async fn lifecycle(server: Arc<Server>, mut stopped: tokio::sync::watch::Receiver<()>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let session = session(&server);
        tokio::select! {
            _ = stopped.changed() => return,
            connected = session => {
                if connected {
                    backoff = Duration::from_secs(1);
                }
            }
        }
        {
            let mut l = server.live();
            l.peer = None;
            l.status.connected = false;
        }
        server.changed.notify_waiters();
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One session; whether it connected.
async fn session(server: &Arc<Server>) -> bool {
    let fail = |msg: String| {
        tracing::warn!(server = %server.name, error = %msg, "MCP server unavailable");
        server.live().status.last_error = Some(msg);
        server.changed.notify_waiters();
        false
    };
    let handler = Handler {
        server: Arc::downgrade(server),
    };
    let running = match (&server.cfg.command, &server.cfg.url) {
        (Some(command), _) => {
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(&server.cfg.args).envs(&server.cfg.env);
            let transport = match TokioChildProcess::builder(cmd)
                .stderr(std::process::Stdio::null())
                .spawn()
            {
                Ok((t, _)) => t,
                Err(e) => return fail(format!("cannot start `{command}`: {e}")),
            };
            handler.serve(transport).await
        }
        (None, Some(url)) => {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &server.cfg.headers {
                match (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(v),
                ) {
                    (Ok(k), Ok(mut v)) => {
                        v.set_sensitive(true);
                        headers.insert(k, v);
                    }
                    _ => return fail(format!("header `{k}` is not a valid HTTP header")),
                }
            }
            let client = super::http_client(Duration::from_secs(server.cfg.timeout.max(1)));
            let transport = match super::mcp_http::HttpTransport::new(client, url, headers) {
                Ok(t) => t,
                Err(e) => return fail(e),
            };
            handler.serve(transport).await
        }
        (None, None) => return fail("neither `command` nor `url` is set".into()),
    };
    let running = match running {
        Ok(r) => r,
        Err(e) => return fail(format!("the MCP handshake failed: {e}")),
    };
    let peer = running.peer().clone();
    if let Err(e) = list(server, &peer).await {
        return fail(e);
    }
    {
        let mut l = server.live();
        l.peer = Some(peer.clone());
        l.status.connected = true;
        l.status.connections += 1;
        l.status.last_error = None;
        tracing::info!(server = %server.name, tools = l.status.tools, "MCP server connected");
    }
    server.changed.notify_waiters();
    let ended = running.waiting();
    tokio::pin!(ended);
    loop {
        tokio::select! {
            _ = &mut ended => break,
            _ = server.relist.notified() => {
                if let Err(e) = list(server, &peer).await {
                    tracing::warn!(server = %server.name, error = %e, "MCP tools/list failed");
                }
            }
        }
    }
    server.live().status.last_error = Some("the MCP server closed the session".into());
    tracing::warn!(server = %server.name, "MCP server session ended; reconnecting");
    true
}

/// Lists the server's tools into its state.
async fn list(server: &Server, peer: &Peer<RoleClient>) -> Result<(), String> {
    let tools = peer
        .list_all_tools()
        .await
        .map_err(|e| format!("tools/list failed: {e}"))?;
    let listed: Vec<Tool> = tools
        .iter()
        .filter_map(|t| to_tool(&server.name, t))
        .collect();
    let mut l = server.live();
    l.status.tools = listed.len();
    l.tools = listed;
    Ok(())
}

/// The agents' tool settings from config, checked against `mcp_servers`.
pub(crate) fn agent_tools(
    cfg: &crate::config::Config,
) -> Result<HashMap<String, crate::layers::mcp::AgentTools>, crate::config::ConfigError> {
    let mut out = HashMap::new();
    for (name, a) in &cfg.agents {
        let Some(m) = &a.mcp else { continue };
        for (i, s) in m.servers.iter().enumerate() {
            if !cfg.mcp_servers.contains_key(s) {
                return Err(crate::config::ConfigError::new(
                    None,
                    Some(format!("agents.{name}.mcp.servers[{i}]")),
                    format!("no mcp_servers entry named `{s}`"),
                ));
            }
        }
        let pick = |on: bool, tool: &Option<String>| on.then(|| tool.clone().unwrap_or_default());
        out.insert(
            name.clone(),
            crate::layers::mcp::AgentTools {
                servers: m.servers.clone(),
                max_iterations: m.max_iterations,
                time_budget: Duration::from_secs(m.time_budget_seconds.max(1)),
                auto_search: pick(m.auto_search, &m.search_tool),
                auto_save: pick(m.auto_save, &m.save_tool),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_results_read_as_text_then_json() {
        let v = json!({"content": [{"type": "text", "text": "a"},
            {"type": "image", "data": "xx", "mimeType": "image/png"}]});
        let t = result_text(&v);
        assert!(t.starts_with("a\n{") && t.contains("image/png"), "{t}");
        assert_eq!(
            result_text(&json!({"content": [], "structuredContent": {"n": 1}})),
            r#"{"n":1}"#
        );
    }
}
