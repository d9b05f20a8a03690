//! # nenya — an AI API gateway as composable tower layers
//!
//! nenya accepts OpenAI Chat Completions (`POST /v1/chat/completions`) and Anthropic Messages
//! (`POST /v1/messages`), resolves the requested model or *agent* to an upstream provider, and
//! streams the answer back. Every gateway feature is a [`tower::Layer`] usable on its own in any
//! hyper or axum server; [`Gateway`] stacks them from a Nenya-compatible config.
//!
//! ```
//! use nenya::{Gateway, services::{RouteTable, MockProvider, MockConfig}};
//! let gateway = Gateway::builder(RouteTable::mock(MockProvider::new(MockConfig::default())))
//!     .max_body_bytes(1 << 20)
//!     .build();
//! # drop(gateway);
//! ```
//!
//! See `src/gateway.rs` for the stack order and the request-extension table.

#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

pub mod adapters;
pub mod body;
pub mod config;
mod erase;
pub mod error;
mod gateway;
pub mod layers;
pub mod model;
pub mod pricing;
pub mod server;
pub mod services;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod tokens;

pub use body::Body;
pub use error::{Error, ErrorKind};
pub use gateway::{Gateway, GatewayBuilder, ReloadReply, ReloadTrigger, ReloadableGateway};

/// A boxed, thread-safe error, used only at boundaries with other crates.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
