//! DNS-rebinding guard: refuses requests made from a browser context unless their origin is
//! allowlisted.
//!
//! nenya serves programs (SDKs, IDE agents, curl), not web pages. A page a developer happens to
//! open can still reach `http://127.0.0.1:8080` from their browser, and a rebound DNS name can
//! make it look same-origin. Browsers mark such requests with `Origin` and `Sec-Fetch-*`
//! headers that page scripts cannot forge, while programs send neither. So any request with
//! that metadata is refused with `403 forbidden_origin` on every route (health and metrics
//! included) unless its `Origin` is in the allowlist. The allowlist, never the request's
//! `Host`, decides; scheme and host compare without case and default ports are ignored.
//!
//! ```
//! use nenya::layers::OriginGuardLayer;
//! use nenya::Body;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(OriginGuardLayer::new(["https://app.example.com"]))
//!     .service(service_fn(|_req: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
//!     }));
//! let page = http::Request::post("/v1/chat/completions")
//!     .header("origin", "https://evil.example").body(Body::empty()).unwrap();
//! assert_eq!(svc.clone().oneshot(page).await.unwrap().status(), 403);
//! let app = http::Request::post("/v1/chat/completions")
//!     .header("origin", "https://APP.example.com:443").body(Body::empty()).unwrap();
//! assert_eq!(svc.clone().oneshot(app).await.unwrap().status(), 200);
//! let sdk = http::Request::post("/v1/chat/completions").body(Body::empty()).unwrap();
//! assert_eq!(svc.oneshot(sdk).await.unwrap().status(), 200);
//! # }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, header};
use tower::Service;
use tower_layer::Layer;

use crate::error::{ErrorKind, error_response_with};
use crate::layers::guard::GuardFuture;
use crate::model::ApiFormat;

/// Layer that applies [`OriginGuard`].
#[derive(Debug, Clone, Default)]
pub struct OriginGuardLayer {
    allowed: Arc<[String]>,
}

impl OriginGuardLayer {
    /// Lets browser requests from these origins (`scheme://host[:port]`) through; an empty
    /// list refuses every browser request.
    pub fn new<I, O>(allowed: I) -> Self
    where
        I: IntoIterator<Item = O>,
        O: AsRef<str>,
    {
        Self {
            allowed: allowed
                .into_iter()
                .filter_map(|o| canonical_origin(o.as_ref()))
                .collect(),
        }
    }
}

impl<S> Layer<S> for OriginGuardLayer {
    type Service = OriginGuard<S>;
    fn layer(&self, inner: S) -> OriginGuard<S> {
        OriginGuard {
            inner,
            allowed: self.allowed.clone(),
        }
    }
}

/// Refuses browser-context requests from origins not allowlisted.
#[derive(Debug, Clone)]
pub struct OriginGuard<S> {
    inner: S,
    allowed: Arc<[String]>,
}

/// `scheme://host[:port]`, lowercased, default port dropped; `None` if it is not an origin.
fn canonical_origin(o: &str) -> Option<String> {
    let o = o.trim().trim_end_matches('/');
    let (scheme, rest) = o.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let rest = rest.to_ascii_lowercase();
    let host = match (scheme.as_str(), rest.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
        _ => rest,
    };
    Some(format!("{scheme}://{host}"))
}

impl<S> OriginGuard<S> {
    fn allows<B>(&self, req: &Request<B>) -> bool {
        let h = req.headers();
        let browser = h.contains_key(header::ORIGIN)
            || h.keys().any(|k| k.as_str().starts_with("sec-fetch-"));
        if !browser {
            return true;
        }
        h.get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .and_then(canonical_origin)
            .is_some_and(|o| self.allowed.contains(&o))
    }
}

impl<S, B, ResBody> Service<Request<B>> for OriginGuard<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.allows(&req) {
            return GuardFuture::inner(self.inner.call(req));
        }
        tracing::info!(path = req.uri().path(), "refused a browser-context request");
        let format = ApiFormat::for_errors(req.uri().path());
        GuardFuture::reject(error_response_with(
            format,
            ErrorKind::ForbiddenOrigin,
            "requests from web pages are refused; allowlist the origin in \
             governance.allowed_browser_origins",
        ))
    }
}

/// Response future of [`OriginGuard`].
pub type ResponseFuture<F, ResBody> = GuardFuture<F, ResBody>;

#[cfg(test)]
mod tests {
    use super::canonical_origin;

    #[test]
    fn origins_canonicalise() {
        assert_eq!(
            canonical_origin("HTTPS://App.Example.com:443/").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            canonical_origin("http://localhost:3000").as_deref(),
            Some("http://localhost:3000")
        );
        assert_eq!(canonical_origin("null"), None);
        assert_eq!(canonical_origin("https://a.example/path"), None);
    }
}
