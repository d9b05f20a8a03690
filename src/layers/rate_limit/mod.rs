//! Requests-per-minute and tokens-per-minute limits per upstream, so a coding session does not
//! burn a provider's quota and then sit in its penalty box.
//!
//! [`RateLimitLayer`] wraps a service of `Request<ChatRequest>`; a key function names the
//! bucket a request draws from (the gateway keys by provider). Each bucket is a `governor`
//! GCRA limiter: `rpm` requests and `tpm` estimated input tokens per minute, both allowed as
//! a burst. A request estimated at or above the whole token budget is admitted and drains it
//! (it could never fit otherwise; Nenya does the same). Over a limit the request is refused
//! with `rate_limited` and a `Retry-After`; the router then tries the chain's next target, and
//! the client sees the 429 only when every target is limited. `0` disables a limit.
//!
//! ```
//! use nenya::layers::{RateLimitConfig, RateLimitLayer};
//! use nenya::model::{ApiFormat, ChatRequest};
//! use nenya::{Body, Error};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(RateLimitConfig { rpm: 2, tpm: 0 }, |_: &http::Request<ChatRequest>| Some("up".into())))
//!     .service(service_fn(|_req: http::Request<ChatRequest>| async {
//!         Ok::<_, Error>(http::Response::new(Body::empty()))
//!     }));
//! let req = || http::Request::new(nenya::adapters::decode_request(ApiFormat::OpenAi,
//!     br#"{"model":"m","messages":[]}"#).unwrap());
//! assert!(svc.ready().await.unwrap().call(req()).await.is_ok());
//! assert!(svc.ready().await.unwrap().call(req()).await.is_ok());
//! let err = svc.ready().await.unwrap().call(req()).await.unwrap_err();
//! assert_eq!(err.kind().as_str(), "rate_limited");
//! assert!(err.retry_after().is_some());
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::Request;
use pin_project_lite::pin_project;
use tower::Service;
use tower_layer::Layer;

use crate::error::{Error, ErrorKind};
use crate::model::ChatRequest;
use crate::state::SharedState;

/// Limits per bucket; `0` turns one off.
///
/// ```
/// assert_eq!(nenya::layers::RateLimitConfig::default().rpm, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests per minute.
    pub rpm: u32,
    /// Estimated input tokens per minute.
    pub tpm: u32,
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

struct Bucket {
    rpm: Option<Limiter>,
    tpm: Option<(Limiter, NonZeroU32)>,
}

struct Shared {
    cfg: RateLimitConfig,
    overrides: HashMap<Arc<str>, RateLimitConfig>,
    /// Whether any bucket has a limit at all (if not, nothing is checked).
    any: bool,
    buckets: Mutex<HashMap<Arc<str>, Arc<Bucket>>>,
    clock: DefaultClock,
    /// Buckets shared with other replicas, under this namespace (`provider`, `key`).
    state: Option<(SharedState, Arc<str>)>,
}

impl Shared {
    fn cfg_for(&self, key: &Arc<str>) -> RateLimitConfig {
        *self.overrides.get(key).unwrap_or(&self.cfg)
    }

    fn bucket(&self, key: &Arc<str>) -> Arc<Bucket> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| {
                let per_minute = |n: u32| NonZeroU32::new(n).map(|n| (Quota::per_minute(n), n));
                let cfg = self.cfg_for(key);
                Arc::new(Bucket {
                    rpm: per_minute(cfg.rpm).map(|(q, _)| RateLimiter::direct(q)),
                    tpm: per_minute(cfg.tpm).map(|(q, n)| (RateLimiter::direct(q), n)),
                })
            })
            .clone()
    }

    /// `Err(wait)` when the request must not go now.
    fn admit(&self, key: &Arc<str>, tokens: u64) -> Result<(), Duration> {
        let b = self.bucket(key);
        if let Some((tpm, budget)) = &b.tpm {
            let want = u32::try_from(tokens).unwrap_or(u32::MAX).max(1);
            match NonZeroU32::new(want).map(|n| tpm.check_n(n)) {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(not_until))) => {
                    return Err(not_until.wait_time_from(self.clock.now()));
                }
                Some(Err(_too_big)) => {
                    // Larger than the whole budget: admit it and drain the bucket, if full.
                    if let Ok(Err(not_until)) = tpm.check_n(*budget) {
                        return Err(not_until.wait_time_from(self.clock.now()));
                    }
                }
            }
        }
        if let Some(rpm) = &b.rpm
            && let Err(not_until) = rpm.check()
        {
            return Err(not_until.wait_time_from(self.clock.now()));
        }
        Ok(())
    }
}

/// Layer that applies [`RateLimit`].
pub struct RateLimitLayer<K> {
    shared: Arc<Shared>,
    key: Arc<K>,
}

impl<K> Clone for RateLimitLayer<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K> fmt::Debug for RateLimitLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("cfg", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl<K> RateLimitLayer<K> {
    /// Limits of `cfg` for each bucket `key` names (`None`: not limited).
    pub fn new(cfg: RateLimitConfig, key: K) -> Self {
        Self {
            shared: Arc::new(Shared {
                cfg,
                overrides: HashMap::new(),
                any: cfg.rpm > 0 || cfg.tpm > 0,
                buckets: Mutex::new(HashMap::new()),
                clock: DefaultClock::default(),
                state: None,
            }),
            key: Arc::new(key),
        }
    }

    /// Shares the buckets with every replica on the same [`SharedState`], under
    /// `namespace` (so a provider and an API key of the same name stay apart). While the
    /// shared back end is unavailable each replica falls back to its local buckets. Call
    /// after [`Self::with_overrides`], before the layer is cloned or used.
    ///
    /// ```
    /// use nenya::layers::{RateLimitConfig, RateLimitLayer};
    /// let key = |_: &http::Request<nenya::model::ChatRequest>| Some(std::sync::Arc::<str>::from("up"));
    /// let layer = RateLimitLayer::new(RateLimitConfig { rpm: 10, tpm: 0 }, key)
    ///     .with_shared_state(nenya::state::SharedState::memory(), "provider");
    /// # drop(layer);
    /// ```
    pub fn with_shared_state(mut self, state: SharedState, namespace: &str) -> Self {
        let s = &self.shared;
        self.shared = Arc::new(Shared {
            cfg: s.cfg,
            overrides: s.overrides.clone(),
            any: s.any,
            buckets: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
            state: state.is_shared().then(|| (state, namespace.into())),
        });
        self
    }
}

impl<K> RateLimitLayer<K> {
    /// Other limits for some buckets (per-provider `ratelimit_max_rpm` / `_tpm`). Call before
    /// the layer is cloned or used.
    ///
    /// ```
    /// use nenya::layers::{RateLimitConfig, RateLimitLayer};
    /// let key = |_: &http::Request<nenya::model::ChatRequest>| Some(std::sync::Arc::<str>::from("slow-provider"));
    /// let layer = RateLimitLayer::new(RateLimitConfig::default(), key)
    ///     .with_overrides([("slow-provider", RateLimitConfig { rpm: 10, tpm: 0 })]);
    /// # drop(layer);
    /// ```
    pub fn with_overrides<I, N>(mut self, overrides: I) -> Self
    where
        I: IntoIterator<Item = (N, RateLimitConfig)>,
        N: Into<Arc<str>>,
    {
        let cfg = self.shared.cfg;
        let overrides: HashMap<Arc<str>, RateLimitConfig> =
            overrides.into_iter().map(|(k, v)| (k.into(), v)).collect();
        let any = cfg.rpm > 0 || cfg.tpm > 0 || overrides.values().any(|c| c.rpm > 0 || c.tpm > 0);
        self.shared = Arc::new(Shared {
            cfg,
            overrides,
            any,
            buckets: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
            state: self.shared.state.clone(),
        });
        self
    }
}

impl<S, K> Layer<S> for RateLimitLayer<K> {
    type Service = RateLimit<S, K>;
    fn layer(&self, inner: S) -> RateLimit<S, K> {
        RateLimit {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

/// Refuses requests over their bucket's limits; passes the rest on.
pub struct RateLimit<S, K> {
    inner: S,
    shared: Arc<Shared>,
    key: Arc<K>,
}

impl<S: Clone, K> Clone for RateLimit<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for RateLimit<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K> Service<Request<ChatRequest>> for RateLimit<S, K>
where
    S: Service<Request<ChatRequest>, Error = Error> + Clone,
    K: Fn(&Request<ChatRequest>) -> Option<Arc<str>>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ChatRequest>) -> Self::Future {
        let key = (self.key)(&req).filter(|_| self.shared.any);
        let Some(key) = key else {
            return ResponseFuture::inner(self.inner.call(req));
        };
        let tokens = req.body().estimate_tokens();
        if let Some((state, ns)) = &self.shared.state {
            let cfg = self.shared.cfg_for(&key);
            let check = (cfg.rpm > 0 || cfg.tpm > 0)
                .then(|| state.rate_admit(&format!("{ns}:{key}"), cfg.rpm, cfg.tpm, tokens))
                .flatten();
            if let Some(check) = check {
                // The ready service goes into the future; a clone stays for the next call.
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                return ResponseFuture {
                    state: FutState::Checking {
                        check: Box::pin(check),
                        svc: Some(Box::new((svc, req, key, tokens))),
                        shared: self.shared.clone(),
                    },
                };
            }
        }
        match self.shared.admit(&key, tokens) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(wait) => ResponseFuture::refused(limited(&key, wait)),
        }
    }
}

/// The refusal of a request over bucket `key`'s limit.
fn limited(key: &str, wait: Duration) -> Error {
    tracing::info!(bucket = %key, wait_ms = wait.as_millis() as u64, "rate limited");
    let msg = format!(
        "rate limit for `{key}` reached; retry in {} s",
        wait.as_secs() + 1
    );
    Error::new(ErrorKind::RateLimited, msg).with_retry_after(wait)
}

type Check = Pin<Box<dyn Future<Output = Option<Result<(), Duration>>> + Send>>;

pin_project! {
    /// Response future of [`RateLimit`]: the shared check (when the buckets are shared),
    /// then the inner service's future.
    pub struct ResponseFuture<S>
    where
        S: Service<Request<ChatRequest>>,
    {
        #[pin]
        state: FutState<S>,
    }
}

pin_project! {
    #[project = FutProj]
    enum FutState<S>
    where
        S: Service<Request<ChatRequest>>,
    {
        Checking {
            check: Check,
            // Boxed: only the shared path pays for carrying the request (the local path's
            // future stays small).
            svc: Option<Box<(S, Request<ChatRequest>, Arc<str>, u64)>>,
            shared: Arc<Shared>,
        },
        Inner { #[pin] fut: S::Future },
        Refused { err: Option<Error> },
    }
}

impl<S: Service<Request<ChatRequest>>> ResponseFuture<S> {
    fn inner(fut: S::Future) -> Self {
        Self {
            state: FutState::Inner { fut },
        }
    }

    fn refused(err: Error) -> Self {
        Self {
            state: FutState::Refused { err: Some(err) },
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request<ChatRequest>, Error = Error>,
{
    type Output = Result<S::Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                FutProj::Inner { fut } => return fut.poll(cx),
                FutProj::Refused { err } => {
                    return Poll::Ready(Err(err.take().unwrap_or_else(|| {
                        Error::new(ErrorKind::Internal, "future polled after completion")
                    })));
                }
                FutProj::Checking { check, svc, shared } => {
                    let verdict = ready!(check.as_mut().poll(cx));
                    let Some((mut svc, req, key, tokens)) = svc.take().map(|b| *b) else {
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::Internal,
                            "future polled after completion",
                        )));
                    };
                    // `None`: the shared back end is unavailable, the local bucket decides.
                    match verdict.unwrap_or_else(|| shared.admit(&key, tokens)) {
                        Ok(()) => FutState::Inner { fut: svc.call(req) },
                        Err(wait) => FutState::Refused {
                            err: Some(limited(&key, wait)),
                        },
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}
