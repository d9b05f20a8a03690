//! Turns every error from the inner stack into the client's error JSON.
//!
//! Sits outermost: returning `Err` to hyper would drop the connection with no answer, so this
//! layer makes the stack's error type [`Infallible`](std::convert::Infallible). The client
//! format is chosen by path (Anthropic on `/v1/messages*`, OpenAI elsewhere).
//!
//! ```
//! use nenya::layers::ErrorResponseLayer;
//! use nenya::{Body, Error, ErrorKind};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ErrorResponseLayer::new())
//!     .service(service_fn(|_req: http::Request<Body>| async {
//!         Err::<http::Response<Body>, _>(Error::new(ErrorKind::UpstreamTimeout, "slow"))
//!     }));
//! let req = http::Request::post("/v1/messages").body(Body::empty()).unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 504);
//! assert_eq!(resp.headers()["x-nenya-error-kind"], "upstream_timeout");
//! # }
//! ```

mod service;

pub use service::{ErrorResponse, ErrorResponseLayer, ResponseFuture};
