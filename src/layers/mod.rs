//! Gateway features as `tower` layers. Each works alone in any tower/hyper/axum server.
//!
//! | layer | request type | does |
//! |---|---|---|
//! | [`ErrorResponseLayer`] | any `Request<B>` | turns errors into client-format JSON; makes the stack `Infallible` |
//! | [`AuthLayer`] | any `Request<B>` | client token check (constant time), strips client credentials |
//! | [`DecodeLayer`] | `Request<B>` → `Request<ChatRequest>` | reads the body once (size-limited) and parses it once |

pub mod auth;
pub mod decode;
pub mod error_response;

pub use auth::{Auth, AuthLayer};
pub use decode::{Decode, DecodeLayer};
pub use error_response::{ErrorResponse, ErrorResponseLayer};
