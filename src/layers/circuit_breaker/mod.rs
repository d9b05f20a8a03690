//! Circuit breaker per upstream target: stop sending to a target that keeps failing, let one
//! probe through after a cool-down, close again when it answers.
//!
//! [`CircuitBreakerLayer`] wraps any service of `Request<B>` → `Response<R>`; a key function
//! names the circuit a request belongs to (the gateway keys by provider and model). States:
//!
//! * **closed**: requests pass; `failure_threshold` consecutive failures open it;
//! * **open**: requests fail at once with [`CircuitOpen`] (the router moves on to the next
//!   target) until the cool-down ends. The cool-down doubles with each re-opening
//!   (`base_cooldown` … `max_cooldown`, ±10% jitter so replicas do not probe in lockstep);
//!   a quota error (`402`) opens it for `quota_cooldown` straight away;
//! * **half-open**: one probe passes; success closes the circuit, failure re-opens it longer.
//!
//! Outcomes are classified from the answer: `429` (rate limited), `500`–`599` (server error,
//! `503`/`529` overloaded), connect errors and timeouts count as failures; client errors
//! (`400`–`499` except `402`, `408`, `429`) do not: the upstream is healthy, the request was
//! not. A probe whose caller hung up releases the half-open slot. Time is tokio's clock, so
//! tests drive it with a paused clock.
//!
//! ```
//! use std::time::Duration;
//! use nenya::layers::{BreakerConfig, CircuitBreakerLayer};
//! use nenya::{Body, Error};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cfg = BreakerConfig { failure_threshold: 2, ..BreakerConfig::default() };
//! let mut svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(cfg, |_req: &http::Request<Body>| Some("up".into())))
//!     .service(service_fn(|_req: http::Request<Body>| async {
//!         let mut r = http::Response::new(Body::empty());
//!         *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
//!         Ok::<_, Error>(r)
//!     }));
//! for _ in 0..2 {
//!     let r = svc.ready().await.unwrap().call(http::Request::new(Body::empty())).await.unwrap();
//!     assert_eq!(r.status(), 503); // the upstream's own answers
//! }
//! let err = svc.ready().await.unwrap().call(http::Request::new(Body::empty())).await.unwrap_err();
//! assert_eq!(err.kind().as_str(), "circuit_open"); // no call reached the upstream
//! # }
//! ```

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;
use tower_layer::Layer;

use crate::error::{Error, ErrorKind};
use crate::state::{BreakerEvent, SharedState};

/// Breaker settings.
///
/// ```
/// let c = nenya::layers::BreakerConfig::default();
/// assert_eq!(c.failure_threshold, 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed circuit.
    pub failure_threshold: u32,
    /// First cool-down; doubles on each re-opening.
    pub base_cooldown: Duration,
    /// Longest cool-down.
    pub max_cooldown: Duration,
    /// Cool-down after a quota error (`402`).
    pub quota_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            base_cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(300),
            quota_cooldown: Duration::from_secs(600),
        }
    }
}

/// A request refused because its circuit is open.
///
/// ```
/// let e: nenya::Error = nenya::layers::CircuitOpen::new("openai/gpt-4o".into()).into();
/// assert_eq!(e.kind().as_str(), "circuit_open");
/// ```
#[derive(Debug, Clone)]
pub struct CircuitOpen {
    key: Arc<str>,
}

impl CircuitOpen {
    /// The refusal for circuit `key`.
    pub fn new(key: Arc<str>) -> Self {
        Self { key }
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit for `{}` is open after repeated upstream failures",
            self.key
        )
    }
}

impl From<CircuitOpen> for Error {
    fn from(c: CircuitOpen) -> Self {
        Error::new(ErrorKind::CircuitOpen, c.to_string())
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, level: u32 },
    HalfOpen { level: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Neutral,
    Failure,
    Quota,
}

#[derive(Debug)]
struct Shared {
    cfg: BreakerConfig,
    overrides: HashMap<Arc<str>, BreakerConfig>,
    circuits: Mutex<HashMap<Arc<str>, State>>,
    jitter: RandomState,
    /// Where openings and closings are told to (and heard from) other replicas.
    state: Option<SharedState>,
}

impl Shared {
    fn new(
        cfg: BreakerConfig,
        overrides: HashMap<Arc<str>, BreakerConfig>,
        state: Option<SharedState>,
    ) -> Arc<Self> {
        let shared = Arc::new(Self {
            cfg,
            overrides,
            circuits: Mutex::new(HashMap::new()),
            jitter: RandomState::new(),
            state,
        });
        if let Some(state) = &shared.state {
            let weak = Arc::downgrade(&shared);
            state.breaker_listen(Box::new(move |key, event| match weak.upgrade() {
                Some(s) => {
                    s.apply_remote(key, event);
                    true
                }
                None => false,
            }));
        }
        shared
    }

    /// Another replica's change (not told on again).
    fn apply_remote(&self, key: &str, event: BreakerEvent) {
        let now = Instant::now();
        let mut map = self.circuits.lock().unwrap_or_else(|p| p.into_inner());
        let st = match map.get_mut(key) {
            Some(st) => st,
            None => map
                .entry(Arc::from(key))
                .or_insert(State::Closed { failures: 0 }),
        };
        match (event, *st) {
            (BreakerEvent::Opened { remaining, .. }, State::Open { until, .. })
                if until >= now + remaining => {}
            (BreakerEvent::Opened { remaining, level }, _) => {
                tracing::warn!(circuit = %key, "circuit opened by another replica");
                *st = State::Open {
                    until: now + remaining,
                    level,
                };
            }
            (BreakerEvent::Closed, State::Closed { .. }) => {}
            (BreakerEvent::Closed, _) => {
                tracing::info!(circuit = %key, "circuit closed by another replica");
                *st = State::Closed { failures: 0 };
            }
        }
    }

    /// Whether a request for `key` may pass now: `Some(true)` for the half-open probe (the
    /// slot is then taken), `Some(false)` for an ordinary pass, `None` when refused.
    fn admit(&self, key: &Arc<str>) -> Option<bool> {
        let now = Instant::now();
        let mut map = self.circuits.lock().unwrap_or_else(|p| p.into_inner());
        let st = map
            .entry(key.clone())
            .or_insert(State::Closed { failures: 0 });
        match *st {
            State::Closed { .. } => Some(false),
            State::Open { until, level } if now >= until => {
                *st = State::HalfOpen { level };
                tracing::info!(circuit = %key, "circuit half-open: sending a probe");
                Some(true)
            }
            State::Open { .. } | State::HalfOpen { .. } => None,
        }
    }

    fn record(&self, key: &Arc<str>, outcome: Outcome, was_probe: bool) {
        let now = Instant::now();
        let mut map = self.circuits.lock().unwrap_or_else(|p| p.into_inner());
        let st = map
            .entry(key.clone())
            .or_insert(State::Closed { failures: 0 });
        let next = match (*st, outcome) {
            (State::HalfOpen { level }, Outcome::Neutral) if was_probe => {
                // The probe never told us anything (caller hung up): let the next one try.
                State::Open { until: now, level }
            }
            (_, Outcome::Neutral) => *st,
            (State::HalfOpen { .. } | State::Closed { .. }, Outcome::Success) => {
                State::Closed { failures: 0 }
            }
            (State::Open { .. }, Outcome::Success) => *st,
            (_, Outcome::Quota) => State::Open {
                until: now + self.cfg_for(key).quota_cooldown,
                level: 0,
            },
            (State::Closed { failures }, Outcome::Failure) => {
                if failures + 1 >= self.cfg_for(key).failure_threshold {
                    State::Open {
                        until: now + self.cooldown(key, 0),
                        level: 0,
                    }
                } else {
                    State::Closed {
                        failures: failures + 1,
                    }
                }
            }
            (State::HalfOpen { level }, Outcome::Failure) => State::Open {
                until: now + self.cooldown(key, level + 1),
                level: level + 1,
            },
            (State::Open { .. }, Outcome::Failure) => *st,
        };
        let mut event = None;
        if let State::Open { until, level } = next
            && !matches!(*st, State::Open { .. })
        {
            tracing::warn!(circuit = %key, "circuit opened");
            event = Some(BreakerEvent::Opened {
                remaining: until.saturating_duration_since(now),
                level,
            });
        }
        if matches!(next, State::Closed { failures: 0 }) && matches!(*st, State::HalfOpen { .. }) {
            tracing::info!(circuit = %key, "circuit closed");
            event = Some(BreakerEvent::Closed);
        }
        *st = next;
        drop(map);
        if let (Some(state), Some(event)) = (&self.state, event) {
            state.breaker_publish(key, event);
        }
    }

    fn cfg_for(&self, key: &Arc<str>) -> &BreakerConfig {
        self.overrides.get(key).unwrap_or(&self.cfg)
    }

    fn cooldown(&self, key: &Arc<str>, level: u32) -> Duration {
        let cfg = self.cfg_for(key);
        let base = cfg
            .base_cooldown
            .saturating_mul(1u32 << level.min(16))
            .min(cfg.max_cooldown);
        // ±10% jitter.
        let r = self.jitter.hash_one(Instant::now()) % 2001;
        let factor = 0.9 + (r as f64) / 10_000.0;
        base.mul_f64(factor)
    }
}

/// Layer that applies [`CircuitBreaker`].
pub struct CircuitBreakerLayer<K> {
    shared: Arc<Shared>,
    key: Arc<K>,
}

impl<K> Clone for CircuitBreakerLayer<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K> fmt::Debug for CircuitBreakerLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("cfg", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl<K> CircuitBreakerLayer<K> {
    /// Breakers with `cfg`, one per key that `key` returns (`None`: not guarded).
    pub fn new(cfg: BreakerConfig, key: K) -> Self {
        Self {
            shared: Shared::new(cfg, HashMap::new(), None),
            key: Arc::new(key),
        }
    }

    /// Shares openings and closings with every replica on the same [`SharedState`]: a
    /// circuit one replica opens is open on the others within the back end's latency (they
    /// also read the circuits open now when they (re)connect). While the back end is
    /// unavailable each replica keeps its own circuits.
    ///
    /// ```
    /// use nenya::layers::{BreakerConfig, CircuitBreakerLayer};
    /// let key = |_: &http::Request<()>| Some(std::sync::Arc::<str>::from("up/m"));
    /// let layer = CircuitBreakerLayer::new(BreakerConfig::default(), key)
    ///     .with_shared_state(nenya::state::SharedState::memory());
    /// # drop(layer);
    /// ```
    pub fn with_shared_state(mut self, state: SharedState) -> Self {
        let s = &self.shared;
        self.shared = Shared::new(
            s.cfg,
            s.overrides.clone(),
            state.is_shared().then_some(state),
        );
        self
    }

    /// Other settings for some circuits (an agent's own `failure_threshold` and
    /// `cooldown_seconds`). Call before the layer is cloned or used.
    ///
    /// ```
    /// use nenya::layers::{BreakerConfig, CircuitBreakerLayer};
    /// let strict = BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() };
    /// let key = |_: &http::Request<()>| Some(std::sync::Arc::<str>::from("build:up/m"));
    /// let layer = CircuitBreakerLayer::new(BreakerConfig::default(), key)
    ///     .with_overrides([("build:up/m", strict)]);
    /// # drop(layer);
    /// ```
    pub fn with_overrides<I, N>(mut self, overrides: I) -> Self
    where
        I: IntoIterator<Item = (N, BreakerConfig)>,
        N: Into<Arc<str>>,
    {
        self.shared = Shared::new(
            self.shared.cfg,
            overrides.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            self.shared.state.clone(),
        );
        self
    }

    /// Keys whose circuit is open or half-open now (for health output and tests).
    pub fn open_circuits(&self) -> Vec<Arc<str>> {
        let map = self
            .shared
            .circuits
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, s)| !matches!(s, State::Closed { .. }))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl<S, K> Layer<S> for CircuitBreakerLayer<K> {
    type Service = CircuitBreaker<S, K>;
    fn layer(&self, inner: S) -> CircuitBreaker<S, K> {
        CircuitBreaker {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

/// Fails fast while a request's circuit is open; records each outcome.
pub struct CircuitBreaker<S, K> {
    inner: S,
    shared: Arc<Shared>,
    key: Arc<K>,
}

impl<S: Clone, K> Clone for CircuitBreaker<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for CircuitBreaker<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, B, R> Service<Request<B>> for CircuitBreaker<S, K>
where
    S: Service<Request<B>, Response = Response<R>, Error = Error>,
    K: Fn(&Request<B>) -> Option<Arc<str>>,
{
    type Response = Response<R>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(key) = (self.key)(&req) else {
            return ResponseFuture {
                state: FutState::Unguarded {
                    fut: self.inner.call(req),
                },
            };
        };
        let Some(probe) = self.shared.admit(&key) else {
            return ResponseFuture {
                state: FutState::Refused {
                    err: Some(CircuitOpen::new(key).into()),
                },
            };
        };
        ResponseFuture {
            state: FutState::Guarded {
                fut: self.inner.call(req),
                guard: Guard {
                    shared: self.shared.clone(),
                    key,
                    probe,
                    done: false,
                },
            },
        }
    }
}

/// Records a neutral outcome if the future is dropped before it finished.
struct Guard {
    shared: Arc<Shared>,
    key: Arc<str>,
    probe: bool,
    done: bool,
}

impl Guard {
    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        self.shared.record(&self.key, outcome, self.probe);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.shared.record(&self.key, Outcome::Neutral, self.probe);
        }
    }
}

fn classify<R>(out: &Result<Response<R>, Error>) -> Outcome {
    match out {
        Ok(r) => match r.status().as_u16() {
            402 => Outcome::Quota,
            408 | 429 | 500..=599 => Outcome::Failure,
            400..=499 => Outcome::Neutral,
            _ => Outcome::Success,
        },
        Err(e) => match e.kind() {
            ErrorKind::UpstreamUnreachable
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamProtocol => Outcome::Failure,
            _ => Outcome::Neutral,
        },
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: FutState<F>,
    }
}

pin_project! {
    #[project = FutProj]
    enum FutState<F> {
        Guarded { #[pin] fut: F, guard: Guard },
        Unguarded { #[pin] fut: F },
        Refused { err: Option<Error> },
    }
}

impl<F, R> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, Error>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            FutProj::Guarded { fut, guard } => {
                let out = ready!(fut.poll(cx));
                guard.finish(classify(&out));
                Poll::Ready(out)
            }
            FutProj::Unguarded { fut } => fut.poll(cx),
            FutProj::Refused { err } => Poll::Ready(Err(err.take().unwrap_or_else(|| {
                Error::new(ErrorKind::Internal, "future polled after completion")
            }))),
        }
    }
}
