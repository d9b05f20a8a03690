//! Gateway features as `tower` layers. Each works alone in any tower/hyper/axum server.
//!
//! | layer | request type | does |
//! |---|---|---|
//! | [`ErrorResponseLayer`] | any `Request<B>` | turns errors into client-format JSON; makes the stack `Infallible` |
//! | [`OriginGuardLayer`] | any `Request<B>` | refuses browser-context requests (DNS rebinding) unless the origin is allowlisted |
//! | [`AuthLayer`] | any `Request<B>` | client token and RBAC keys (constant time), endpoint scopes, strips client credentials, inserts [`Principal`] |
//! | [`DecodeLayer`] | `Request<B>` → `Request<ChatRequest>` | reads the body once (size-limited) and parses it once |
//! | [`RedactLayer`] | `Request<ChatRequest>` | replaces credentials (60+ formats, user patterns) in every text the upstream reads |
//! | [`EntropyLayer`] | `Request<ChatRequest>` | replaces high-entropy tokens no pattern knows |
//! | [`ScrubLayer`] | `Request<ChatRequest>` | any [`TextScrubber`] of your own, with the same fail-open handling |

pub mod auth;
pub mod decode;
pub mod entropy;
pub mod error_response;
pub mod guard;
pub mod origin;
pub mod redact;
pub mod scrub;

pub use auth::{ApiKey, Auth, AuthLayer, Principal, Role};
pub use decode::{Decode, DecodeLayer};
pub use entropy::{Entropy, EntropyDetector, EntropyLayer};
pub use error_response::{ErrorResponse, ErrorResponseLayer};
pub use origin::{OriginGuard, OriginGuardLayer};
pub use redact::{Finding, PatternError, Redact, RedactLabel, RedactLayer, Redactor};
pub use scrub::{Scrub, ScrubLayer, TextScrubber};
