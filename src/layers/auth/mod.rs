//! Client authentication: `Authorization: Bearer <token>` (OpenAI clients) or
//! `x-api-key: <token>` (Anthropic clients), compared in constant time.
//!
//! Tokens are Nenya's `client_token` (admin) and its RBAC `api_keys` ([`ApiKey`]: roles
//! `admin` / `user` / `read-only`, allowed agents, allowed endpoints, expiry, enabled). Failed
//! auth is answered `401` in the client's format by the layer itself, a forbidden endpoint
//! `403`; the request never reaches the inner service. A matched key travels on as a
//! [`Principal`] extension (the router refuses agents outside its `allowed_agents` with 403). On success the client's credentials are removed from the request,
//! so nothing further down the stack can forward them. `/healthz`, `/statsz` and `/metrics`
//! stay open. With no tokens configured the layer lets everything through.
//!
//! ```
//! use nenya::layers::AuthLayer;
//! use nenya::config::Secret;
//! use nenya::Body;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(AuthLayer::new([Secret::new("t0ken")]))
//!     .service(service_fn(|req: http::Request<Body>| async move {
//!         assert!(req.headers().get("authorization").is_none()); // stripped
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
//!     }));
//! let ok = http::Request::post("/v1/chat/completions")
//!     .header("authorization", "Bearer t0ken").body(Body::empty()).unwrap();
//! assert_eq!(svc.clone().oneshot(ok).await.unwrap().status(), 200);
//! let bad = http::Request::post("/v1/messages")
//!     .header("x-api-key", "nope").body(Body::empty()).unwrap();
//! assert_eq!(svc.oneshot(bad).await.unwrap().status(), 401);
//! # }
//! ```

mod service;

pub use crate::model::Principal;
pub(crate) use service::parse_rfc3339;
pub use service::{ApiKey, Auth, AuthLayer, Role};
