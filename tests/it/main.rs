//! The black-box tests, one test binary: every module below was its own `tests/*.rs` binary,
//! each linking the whole library again (35 × ~90 MB, which filled CI's disk). Run one
//! area with a filter: `cargo test --test it streams::`. Kept apart: `log_secrets` (it installs
//! a process-wide trace subscriber and panic hook), `soak` (a long ignored run) and `otlp`
//! (built only with its feature).

#[path = "../common/mod.rs"]
mod common;

mod adapters_prop;
mod api_surface;
mod as_sent;
mod binary;
mod budget;
mod cache;
mod circuit_breaker;
mod config;
mod conversion;
mod endpoints;
mod errors;
mod examples;
mod failover;
mod faults;
mod golden;
mod governance;
mod local_engine;
mod mcp;
mod metrics;
mod models;
mod prefix_cache;
mod prune;
mod rate_limit;
mod rewrite_prop;
mod sdk;
mod secrets_corpus;
mod security;
mod semantic_cache;
mod shared_state;
mod splice;
mod sse_prop;
mod streams;
mod tokens;
mod upstream_connections;
mod usage;
mod window;
