//! Reads a chat request body once (bounded by a size limit) and parses it once into the typed
//! [`ChatRequest`](crate::model::ChatRequest) that the rest of the stack works on.
//!
//! The client format comes from the path (`/v1/chat/completions` → OpenAI, `/v1/messages` →
//! Anthropic). Answers: invalid JSON → 400 `invalid_json`; wrong types or missing fields → 400
//! `invalid_request`; a body over the limit → 413 `body_too_large` (checked against
//! `Content-Length` first, so an oversized upload is refused before it is read).
//!
//! ```
//! use nenya::layers::DecodeLayer;
//! use nenya::model::ChatRequest;
//! use nenya::{Body, Error};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(DecodeLayer::new(1024))
//!     .service(service_fn(|req: http::Request<ChatRequest>| async move {
//!         assert_eq!(req.body().model, "m");
//!         Ok::<_, Error>(http::Response::new(Body::empty()))
//!     }));
//! let req = http::Request::post("/v1/chat/completions")
//!     .body(Body::from(r#"{"model":"m","messages":[]}"#)).unwrap();
//! assert!(svc.oneshot(req).await.is_ok());
//! # }
//! ```

mod service;

pub use service::{DEFAULT_BODY_READ_TIMEOUT, Decode, DecodeLayer, ResponseFuture};
