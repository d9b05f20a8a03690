//! A small MCP server on stdio, written with the official Rust SDK's server side: the tool
//! server of nenya's MCP tests (`tests/mcp.rs`), and an example of what nenya connects to.
//!
//! Tools: `add` (two numbers), `echo` (text back), `sleep` (waits `ms`, then answers),
//! `fail` (a tool error), `crash` (the process exits in the middle of the call).
//!
//! ```sh
//! cargo build --example mcp_stdio_server
//! # in nenya's config:
//! # "mcp_servers": {"calc": {"command": "target/debug/examples/mcp_stdio_server"}}
//! ```

use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::schemars::{self, JsonSchema};
use rmcp::{ErrorData, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde::Deserialize;

#[derive(Deserialize, JsonSchema)]
struct AddArgs {
    /// First addend.
    a: f64,
    /// Second addend.
    b: f64,
}

#[derive(Deserialize, JsonSchema)]
struct EchoArgs {
    /// Text to send back.
    text: String,
}

#[derive(Deserialize, JsonSchema)]
struct SleepArgs {
    /// Milliseconds to wait.
    ms: u64,
}

#[derive(Clone)]
struct Calc {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Calc {
    #[tool(description = "Adds two numbers.")]
    async fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        format!("{}", a + b)
    }

    #[tool(description = "Sends the text back.")]
    async fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Waits `ms` milliseconds, then answers `slept`.")]
    async fn sleep(&self, Parameters(SleepArgs { ms }): Parameters<SleepArgs>) -> String {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        "slept".to_owned()
    }

    #[tool(description = "Always fails.")]
    async fn fail(&self) -> Result<String, ErrorData> {
        Err(ErrorData::internal_error(
            "the fail tool failed, as it always does",
            None,
        ))
    }

    #[tool(description = "Exits the server process in the middle of the call.")]
    async fn crash(&self) -> String {
        std::process::exit(3)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Calc {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Calc {
        tool_router: Calc::tool_router(),
    }
    .serve(rmcp::transport::stdio())
    .await?;
    server.waiting().await?;
    Ok(())
}
