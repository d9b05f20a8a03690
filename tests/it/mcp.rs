//! MCP tools for agents against real MCP servers: `examples/mcp_stdio_server.rs` (written
//! with the official SDK's server side; `cargo build --examples` builds it, as
//! `scripts/test.sh` does) and the reference memory server from npm
//! (`@modelcontextprotocol/server-memory`, which `scripts/test.sh` installs into
//! `.tools/mcp`). The mock LLM calls a tool on the first turn and answers with its result on
//! the second; the client only ever sees that answer.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use nenya::services::MockConfig;
use serde_json::{Value, json};

fn calc_server() -> PathBuf {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.push("examples");
    p.push("mcp_stdio_server");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --examples` first (scripts/test.sh does)",
        p.display()
    );
    p
}

fn memory_server() -> Option<PathBuf> {
    npm_server("server-memory")
}

/// `.tools/mcp/node_modules/@modelcontextprotocol/<name>/dist/index.js`, when installed.
fn npm_server(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        ".tools/mcp/node_modules/@modelcontextprotocol/{name}/dist/index.js"
    ));
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("NENYA_REQUIRE_MCP_MEMORY").is_none(),
        "NENYA_REQUIRE_MCP_MEMORY is set but {} is missing",
        p.display()
    );
    eprintln!("SKIPPED: the npm {name} is not installed (scripts/test.sh installs it)");
    None
}

/// The reference `server-everything` over HTTP (`sse` or `streamableHttp`), killed on drop.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn everything(mode: &str) -> Option<HttpServer> {
    let js = npm_server("server-everything")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("node")
        .arg(js)
        .arg(mode)
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server-everything {mode} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(HttpServer { child, port })
}

/// A mock that calls `tool` with `args` (`rounds` times before it answers).
async fn tool_mock(
    tool: &str,
    args: &str,
    rounds: usize,
) -> (nenya::services::MockProvider, Running) {
    start_mock(MockConfig {
        tool_call: Some((tool.into(), args.into())),
        tool_rounds: rounds,
        chunks: 3,
        ..MockConfig::default()
    })
    .await
}

/// A gateway with providers `up` (OpenAI format) and `claude` (Anthropic) at `mock`, the calc
/// server as `calc` (timeout 1 s) and `extra` merged in; waits until `calc` is connected.
async fn gateway(mock: &Running, extra: Value) -> Running {
    let (cfg, secrets) = config(mock, extra);
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    wait_connected(&gw, "calc", 1).await;
    gw
}

fn config(mock: &Running, extra: Value) -> (Config, Secrets) {
    let mut cfg = json!({
        "providers": {
            "up": {"url": mock.url("/v1/chat/completions"), "auth_style": "bearer"},
            "claude": {"url": mock.url("/v1/messages"), "auth_style": "anthropic"}
        },
        "mcp_servers": {"calc": {"command": calc_server(), "timeout": 1}},
        "agents": {
            "calc-agent": {"models": [{"provider": "up", "model": "m"}],
                "mcp": {"servers": ["calc"], "max_iterations": 3}},
            "calc-claude": {"models": [{"provider": "claude", "model": "c"}],
                "mcp": {"servers": ["calc"]}},
            "plain": {"models": [{"provider": "up", "model": "m"}]}
        }
    });
    merge(&mut cfg, extra);
    let cfg = Config::from_json_str(&cfg.to_string()).unwrap();
    let secrets = Secrets::from_json_str(&format!(
        r#"{{"client_token": "{CLIENT_TOKEN}", "provider_keys": {{"up": "{PROVIDER_KEY}", "claude": "{PROVIDER_KEY}"}}}}"#
    ))
    .unwrap();
    (cfg, secrets)
}

async fn statsz(gw: &Running) -> Value {
    let req = http::Request::get(gw.url("/statsz"))
        .body(nenya::Body::empty())
        .unwrap();
    send(req).await.json()
}

/// Waits until server `name` has made `connections` connections and is connected.
async fn wait_connected(gw: &Running, name: &str, connections: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = statsz(gw).await;
        let st = &s["mcp_servers"][name];
        if st["connected"] == true && st["connections"].as_u64() >= Some(connections) {
            assert!(st["tools"].as_u64().unwrap() > 0, "{s}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "MCP server {name} never connected: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn anthropic(gw: &Running, body: Value) -> Reply {
    post(
        &gw.url("/v1/messages"),
        &[
            ("x-api-key", CLIENT_TOKEN),
            ("anthropic-version", "2023-06-01"),
        ],
        body.to_string(),
    )
    .await
}

fn ask(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 100,
        "messages": [{"role": "user", "content": "what is 2 + 3?"}]})
}

/// The events of an SSE body, without comments (keep-alives, progress).
fn events(body: &str) -> Vec<(Option<String>, String)> {
    sse_events(body)
        .into_iter()
        .filter(|(n, d)| n.is_some() || !d.is_empty())
        .collect()
}

/// The text of a streamed OpenAI answer, checking it is a well-formed stream.
fn openai_stream_text(body: &str) -> String {
    let events = events(body);
    assert_eq!(events.last().unwrap().1, "[DONE]", "{body}");
    let mut text = String::new();
    for (_, data) in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(data).unwrap();
        assert!(
            v["choices"][0]["delta"].get("tool_calls").is_none(),
            "{data}"
        );
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    text
}

/// The text of a streamed Anthropic answer, checking it is a well-formed stream.
fn anthropic_stream_text(body: &str) -> String {
    let events = events(body);
    assert_eq!(
        events.first().unwrap().0.as_deref(),
        Some("message_start"),
        "{body}"
    );
    assert_eq!(
        events.last().unwrap().0.as_deref(),
        Some("message_stop"),
        "{body}"
    );
    let mut text = String::new();
    for (name, data) in &events {
        let v: Value = serde_json::from_str(data).unwrap();
        assert_ne!(v["content_block"]["type"], "tool_use", "{data}");
        if name.as_deref() == Some("content_block_delta") {
            text.push_str(v["delta"]["text"].as_str().unwrap_or(""));
        }
    }
    text
}

#[tokio::test]
async fn an_mcp_tool_call_is_run_and_only_the_final_answer_reaches_the_client() {
    let (mock, up) = tool_mock("calc__add", r#"{"a": 2, "b": 3}"#, 1).await;
    let gw = gateway(&up, json!({})).await;

    // OpenAI, not streamed.
    let r = post_chat(&gw, &ask("calc-agent", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "tool said: 5", "{v}");
    assert!(
        v["choices"][0]["message"].get("tool_calls").is_none(),
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(r.headers["x-nenya-mcp-rounds"], "1");
    // What the model saw: the tool offered under its namespaced name, then the call and its
    // result on the second turn.
    let sent = mock.received();
    assert_eq!(sent.len(), 2);
    let first = sent[0].json();
    let tools: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"calc__add") && tools.contains(&"calc__echo"),
        "{tools:?}"
    );
    assert_eq!(first["stream"], false, "rounds are complete answers");
    let second = sent[1].json();
    let msgs = second["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["tool_calls"][0]["function"]["name"], "calc__add");
    assert_eq!(msgs[2]["role"], "tool");
    assert_eq!(msgs[2]["content"], "5");

    // OpenAI, streamed.
    let r = post_chat(&gw, &ask("calc-agent", true)).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(openai_stream_text(&r.text()), "tool said: 5");

    // Anthropic clients, through an Anthropic upstream, both ways.
    let r = anthropic(&gw, ask("calc-claude", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let blocks = v["content"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{v}");
    assert_eq!(blocks[0]["text"], "tool said: 5");
    assert_eq!(v["stop_reason"], "end_turn");
    let r = anthropic(&gw, ask("calc-claude", true)).await;
    assert_eq!(anthropic_stream_text(&r.text()), "tool said: 5");

    // An Anthropic client of the OpenAI-format agent (conversion on every round).
    let r = anthropic(&gw, ask("calc-agent", true)).await;
    assert_eq!(anthropic_stream_text(&r.text()), "tool said: 5");

    // A token count counts the agent's tools and runs none.
    let before = mock.received().len();
    let r = post(
        &gw.url("/v1/messages/count_tokens"),
        &[
            ("x-api-key", CLIENT_TOKEN),
            ("anthropic-version", "2023-06-01"),
        ],
        ask("calc-claude", false).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["input_tokens"].as_u64().is_some(), "{}", r.text());
    let sent = mock.received();
    assert_eq!(sent.len(), before + 1, "the count alone went upstream");
    assert!(
        sent[before].uri.ends_with("count_tokens"),
        "{}",
        sent[before].uri
    );
    assert!(
        String::from_utf8_lossy(&sent[before].body).contains("calc__add"),
        "the count includes the injected tools"
    );

    // An agent without MCP is untouched: the call goes to the client.
    let before = mock.received().len();
    let r = post_chat(&gw, &ask("plain", false)).await;
    let v = r.json();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "calc__add"
    );
    assert_eq!(mock.received().len(), before + 1);
    assert!(mock.received()[before].json().get("tools").is_none());
}

#[tokio::test]
async fn the_clients_own_tool_calls_pass_through_untouched() {
    let (mock, up) = tool_mock("read_file", r#"{"path": "src/main.rs"}"#, 1).await;
    let gw = gateway(&up, json!({})).await;
    let mut body = ask("calc-agent", false);
    body["tools"] = json!([{"type": "function", "function": {"name": "read_file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]);
    let r = post_chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "read_file");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"path": "src/main.rs"})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        mock.received().len(),
        1,
        "no second round for a client tool"
    );
    let tools = mock.received()[0].json()["tools"].clone();
    assert_eq!(
        tools[0]["function"]["name"], "read_file",
        "the client's tool first: {tools}"
    );
}

#[tokio::test]
async fn tool_errors_timeouts_and_crashes_become_results_the_model_reads() {
    // A tool error; auto-search and auto-save with tools that fail too: best effort, the
    // answer still comes.
    let (mock, up) = tool_mock("calc__fail", "{}", 1).await;
    let gw = gateway(
        &up,
        json!({"agents": {"calc-agent": {"mcp": {"auto_search": true, "search_tool": "fail",
            "auto_save": true, "save_tool": "fail"}}}}),
    )
    .await;
    let v = post_chat(&gw, &ask("calc-agent", false)).await.json();
    assert_eq!(
        mock.received()[0].json()["messages"][0]["role"],
        "user",
        "no context from a failed search"
    );
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.starts_with("tool said: error:") && text.contains("always does"),
        "{text}"
    );

    // A tool that hangs past the server's 1 s timeout.
    let (_m, up) = tool_mock("calc__sleep", r#"{"ms": 10000}"#, 1).await;
    let gw = gateway(&up, json!({})).await;
    let started = Instant::now();
    let r = post_chat(&gw, &ask("calc-agent", true)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = openai_stream_text(&r.text());
    assert!(text.contains("timed out after 1 s"), "{text}");

    // A server that dies in the middle of a call: the model reads the failure, the server is
    // started again, and the next request's tool works.
    let (_m, up) = tool_mock("calc__crash", "{}", 1).await;
    let (_m2, up2) = tool_mock("calc__add", r#"{"a": 40, "b": 2}"#, 1).await;
    let gw = gateway(
        &up,
        json!({"providers": {"up2": {"url": up2.url("/v1/chat/completions"), "auth_style": "bearer"}},
            "agents": {"adder": {"models": [{"provider": "up2", "model": "m"}], "mcp": {"servers": ["calc"]}}}}),
    )
    .await;
    let r = post_chat(&gw, &ask("calc-agent", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.starts_with("tool said: error:") && text.contains("calc"),
        "{text}"
    );
    wait_connected(&gw, "calc", 2).await;
    let v = post_chat(&gw, &ask("adder", false)).await.json();
    assert_eq!(
        v["choices"][0]["message"]["content"], "tool said: 42",
        "{v}"
    );
}

#[tokio::test]
async fn the_loop_stops_at_its_round_limit_with_the_last_answer() {
    // The model never stops calling the tool.
    let (mock, up) = tool_mock("calc__echo", r#"{"text": "again"}"#, 100).await;
    let gw = gateway(&up, json!({})).await;
    let r = post_chat(&gw, &ask("calc-agent", true)).await;
    assert_eq!(r.status, 200);
    let body = r.text();
    let text = openai_stream_text(&body);
    assert_eq!(
        text, "Let me check.",
        "the last answer without the agent's calls"
    );
    assert_eq!(
        mock.received().len(),
        4,
        "max_iterations 3: three tool rounds, four calls"
    );
    assert!(
        body.contains(": mcp round 3: calling calc__echo"),
        "progress: {body}"
    );
    assert!(
        !body.contains("calc__echo\""),
        "no MCP call reaches the client: {body}"
    );
}

#[tokio::test]
async fn a_streaming_client_is_kept_alive_while_tools_run() {
    let (_m, up) = tool_mock("calc__sleep", r#"{"ms": 700}"#, 1).await;
    let gw = gateway(&up, json!({"mcp_servers": {"calc": {"timeout": 5}}})).await;
    // keep-alive every 5 s by default is too slow to see here; the progress comment arrives
    // before the tool has finished, and the answer after it.
    let (k, v) = bearer();
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header(k, v)
        .header("content-type", "application/json")
        .body(nenya::Body::from(ask("calc-agent", true).to_string()))
        .unwrap();
    let started = Instant::now();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "headers came at once"
    );
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(
        String::from_utf8_lossy(&first).starts_with(": mcp round 1: calling calc__sleep"),
        "{first:?}"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(
        openai_stream_text(&String::from_utf8_lossy(&rest)),
        "tool said: slept"
    );
}

#[tokio::test]
async fn the_reference_memory_server_searches_saves_and_answers_tool_calls() {
    let Some(memory) = memory_server() else {
        return;
    };
    let dir = temp_dir("mcp-memory");
    let file = dir.join("memory.jsonl");
    std::fs::write(
        &file,
        json!({"type": "entity", "name": "deploy", "entityType": "fact",
            "observations": ["the deploy key lives in vault 7"]})
        .to_string()
            + "\n",
    )
    .unwrap();
    let (mock, up) = tool_mock("memory__open_nodes", r#"{"names": ["deploy"]}"#, 1).await;
    let gw = gateway(
        &up,
        json!({"mcp_servers": {"memory": {"command": "node", "args": [memory],
                "env": {"MEMORY_FILE_PATH": file}, "timeout": 10}},
            "agents": {"rememberer": {"models": [{"provider": "up", "model": "m"}],
                "mcp": {"servers": ["memory"], "auto_search": true, "auto_save": true,
                    "save_tool": "create_entities"}}}}),
    )
    .await;
    wait_connected(&gw, "memory", 1).await;
    let r = post_chat(
        &gw,
        &json!({"model": "rememberer", "messages": [{"role": "user", "content": "deploy"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Auto-search put what the memory holds in front of the model.
    let first = mock.received()[0].json();
    let system = first["messages"][0].clone();
    assert_eq!(system["role"], "system", "{first}");
    assert!(
        system["content"].as_str().unwrap().contains("vault 7"),
        "{system}"
    );
    // The model's own call of a memory tool was answered by the server.
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.starts_with("tool said:") && text.contains("vault 7"),
        "{text}"
    );
    // Auto-save stored the answer in the memory file.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let saved = std::fs::read_to_string(&file).unwrap();
        if saved.contains("nenya answer") && saved.contains("tool said:") {
            break;
        }
        assert!(Instant::now() < deadline, "never saved: {saved}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    nenya::Body,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn http_servers_over_streamable_http_and_the_legacy_sse_transport() {
    let Some(streamable) = everything("streamableHttp") else {
        return;
    };
    let Some(legacy) = everything("sse") else {
        return;
    };
    let (_m, up) = tool_mock("streamable__get-sum", r#"{"a": 2, "b": 3}"#, 1).await;
    let (_m2, up2) = tool_mock("legacy__get-sum", r#"{"a": 4, "b": 5}"#, 1).await;
    let gw = gateway(
        &up,
        json!({"mcp_servers": {
                // Streamable HTTP at its endpoint; a header as credentials would be.
                "streamable": {"url": format!("http://127.0.0.1:{}/mcp", streamable.port),
                    "headers": {"x-team": "platform"}},
                // Nenya's style: the base URL of an HTTP+SSE server (`/sse`, then `/message`).
                "legacy": {"url": format!("http://127.0.0.1:{}", legacy.port)}},
            "providers": {"up2": {"url": up2.url("/v1/chat/completions"), "auth_style": "bearer"}},
            "agents": {
                "s-agent": {"models": [{"provider": "up", "model": "m"}], "mcp": {"servers": ["streamable"]}},
                "l-agent": {"models": [{"provider": "up2", "model": "m"}], "mcp": {"servers": ["legacy"]}}}}),
    )
    .await;
    wait_connected(&gw, "streamable", 1).await;
    wait_connected(&gw, "legacy", 1).await;
    let v = post_chat(&gw, &ask("s-agent", false)).await.json();
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(text.starts_with("tool said:") && text.contains('5'), "{v}");
    let r = post_chat(&gw, &ask("l-agent", true)).await;
    let text = openai_stream_text(&r.text());
    assert!(
        text.starts_with("tool said:") && text.contains('9'),
        "{text}"
    );
}

#[tokio::test]
async fn a_reload_with_the_same_servers_keeps_their_sessions() {
    let (_m, up) = tool_mock("calc__add", r#"{"a": 1, "b": 1}"#, 1).await;
    let (cfg, secrets) = config(&up, json!({}));
    let first = Gateway::from_config(&cfg, &secrets).unwrap().build();
    let gw1 = start_gateway(first.clone()).await;
    wait_connected(&gw1, "calc", 1).await;
    // The reloaded gateway carries the running server: the same session, its tools listed.
    let second = Gateway::from_config(&cfg, &secrets)
        .unwrap()
        .carry_state_from(&first)
        .build();
    drop(first);
    drop(gw1);
    let gw2 = start_gateway(second).await;
    let s = statsz(&gw2).await;
    assert_eq!(s["mcp_servers"]["calc"]["connections"], 1, "{s}");
    assert_eq!(s["mcp_servers"]["calc"]["connected"], true, "{s}");
    let v = post_chat(&gw2, &ask("calc-agent", false)).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], "tool said: 2", "{v}");
}
