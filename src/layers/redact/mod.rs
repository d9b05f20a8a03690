//! Secret redaction before a request leaves: every text the upstream will read (system prompt,
//! message text, tool-call arguments, tool results) in either client format.
//!
//! [`RedactLayer`] wraps a service of `Request<ChatRequest>` (what [`DecodeLayer`] produces)
//! and rewrites the typed request in place; nothing is re-parsed and the inner future is
//! returned as is. Matches become `[REDACTED:<kind>]` (or a fixed label). Thinking blocks that
//! carry a provider signature are left alone: the provider wrote them, and any change makes it
//! reject the whole request.
//!
//! The layer fails open: should the engine fail internally, the request goes on unchanged, a
//! warning is logged and [`Redactor::failures`] counts it.
//!
//! [`DecodeLayer`]: crate::layers::DecodeLayer
//!
//! ```
//! use nenya::layers::{DecodeLayer, RedactLayer, Redactor};
//! use nenya::model::{ChatRequest, Content};
//! use nenya::{Body, Error};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(DecodeLayer::new(1 << 20))
//!     .layer(RedactLayer::new(Redactor::builtin()))
//!     .service(service_fn(|req: http::Request<ChatRequest>| async move {
//!         let Content::Text(t) = &req.body().messages[0].content else { panic!() };
//!         assert_eq!(t, "my key is [REDACTED:aws_access_key_id]");
//!         Ok::<_, Error>(http::Response::new(Body::empty()))
//!     }));
//! let req = http::Request::post("/v1/chat/completions").body(Body::from(
//!     r#"{"model":"m","messages":[{"role":"user","content":"my key is AKIAZ7TESTKEY0000001"}]}"#,
//! )).unwrap();
//! svc.oneshot(req).await.unwrap();
//! # }
//! ```

mod engine;
mod rules;

use crate::layers::scrub::{Scrub, ScrubLayer, TextScrubber};

pub use engine::{PatternError, Redactor};

/// Layer that redacts secrets from every request text: `RedactLayer::new(Redactor::builtin())`.
pub type RedactLayer = ScrubLayer<Redactor>;

/// The service [`RedactLayer`] produces.
pub type Redact<S> = Scrub<S, Redactor>;

impl TextScrubber for Redactor {
    const NAME: &'static str = "redact";
    const SCRUBS_FIELDS: bool = true;
    fn scrub(&self, text: &str) -> Option<String> {
        self.redact(text)
    }
    fn record_failure(&self) {
        Redactor::record_failure(self);
    }
}
