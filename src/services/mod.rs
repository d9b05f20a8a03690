//! Terminal services: the provider (one upstream over HTTP), the router (model → target), the
//! mock provider, and the transports beneath them.

pub mod a2a;
pub mod convert;
mod discovery;
mod inline;
pub mod local;
#[cfg(feature = "mcp")]
pub mod mcp;
#[cfg(feature = "mcp")]
pub mod mcp_http;
pub mod mock;
pub mod passthrough;
pub mod provider;
pub mod router;
pub mod transport;

pub use discovery::LiveModels;
pub(crate) use discovery::refresh_models;
pub use local::{LocalEngine, LocalEngineConfig, LocalEngineLayer, LocalEngines};
pub use mock::{Fault, MockConfig, MockProvider, Recorded};
pub use provider::{
    AllowEmptyStream, IdleTimeoutBody, ProviderService, ProviderSpec, SseGuard, Target, Timeouts,
};
pub use router::{Balance, FailoverPolicy, LatencyTracker, ModelInfo, RouteTable, Router};
pub use transport::{HttpClient, Transport, http_client};
