//! State shared by many gateway replicas: rate-limit buckets, circuit-breaker states, the
//! response cache and usage counters.
//!
//! One nenya keeps all of that in process. Several replicas behind a load balancer must share
//! it, or each lets through its own full quota. [`SharedState`] is the one handle the layers
//! take; it has two back ends:
//!
//! * **memory** ([`SharedState::memory`], the default): nothing is shared, every layer uses its
//!   own in-process state. No dependency, no cost.
//! * **Redis** ([`SharedState::redis`], feature `redis`, on by default): any Redis or
//!   Valkey server, or a Redis Cluster. RPM/TPM buckets are GCRA cells updated by one Lua
//!   script per request (one round trip, atomic, on the server's clock); breaker openings and
//!   closings are stored and published, so the other replicas apply them as they happen;
//!   response-cache entries are stored with their TTL in a size-bounded index; usage is added
//!   to per-day counters.
//!
//! **Redis down never fails a request.** Every call has a deadline (`timeout`, default
//! 250 ms); a failed call marks the back end unavailable for a second, during which the
//! layers use their local state (the limits then hold per replica), logs one warning, and
//! counts the fall-back ([`StateHealth`], exported as `nenya_state_backend_up` and
//! `nenya_state_fallbacks_total`). The next call after that second tries Redis again; when it
//! answers, sharing resumes and that is logged too.
//!
//! ```
//! use nenya::layers::{RateLimitConfig, RateLimitLayer};
//! use nenya::state::SharedState;
//! let state = SharedState::memory();
//! assert!(!state.is_shared());
//! let key = |_: &http::Request<nenya::model::ChatRequest>| Some(std::sync::Arc::<str>::from("openai"));
//! let limiter = RateLimitLayer::new(RateLimitConfig { rpm: 60, tpm: 0 }, key)
//!     .with_shared_state(state, "provider");
//! # drop(limiter);
//! ```

// Without a remote back end the health bookkeeping has nothing to record.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::RedisConfig;

/// A breaker change one replica tells the others about.
///
/// ```
/// use nenya::state::BreakerEvent;
/// let e = BreakerEvent::Opened { remaining: std::time::Duration::from_secs(10), level: 0 };
/// assert_ne!(e, BreakerEvent::Closed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerEvent {
    /// The circuit opened; it stays open `remaining` longer (cool-down `level`).
    Opened {
        /// Cool-down left.
        remaining: Duration,
        /// How many times it re-opened in a row (the cool-down doubles with each).
        level: u32,
    },
    /// The circuit closed again.
    Closed,
}

/// A listener for other replicas' breaker changes; `false` once it is gone (dropped).
pub(crate) type BreakerListener = Box<dyn Fn(&str, BreakerEvent) -> bool + Send + Sync>;

/// The handle layers share state through (cheap to clone). See the [module docs](self).
///
/// ```
/// let s = nenya::state::SharedState::memory();
/// assert_eq!(s.health().backend(), "memory");
/// ```
#[derive(Clone, Default)]
pub struct SharedState {
    #[cfg(feature = "redis")]
    remote: Option<Arc<self::redis::Remote>>,
    health: Arc<StateHealth>,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("backend", &self.health.backend())
            .finish_non_exhaustive()
    }
}

impl SharedState {
    /// Nothing shared: each layer keeps its own state in process.
    pub fn memory() -> Self {
        Self::default()
    }

    /// State in Redis (or Valkey, or a Redis Cluster). Connects lazily and in the background:
    /// a server that is down at start only means local state until it answers. Call inside a
    /// tokio runtime. Errors only on an unusable URL (never printed: it may hold a password).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use nenya::state::{RedisConfig, SharedState};
    /// let state = SharedState::redis(RedisConfig::new("redis://127.0.0.1:1")).unwrap();
    /// assert!(state.is_shared());
    /// assert!(SharedState::redis(RedisConfig::new("http://x")).is_err());
    /// # }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(cfg: RedisConfig) -> Result<Self, String> {
        let health = Arc::new(StateHealth::new("redis"));
        let remote = self::redis::Remote::start(cfg, health.clone())?;
        Ok(Self {
            remote: Some(remote),
            health,
        })
    }

    /// Whether a shared back end is configured (it may be unreachable right now).
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.remote.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// Whether both handles are the same back end (clones of one [`SharedState`]).
    pub(crate) fn same_as(&self, other: &SharedState) -> bool {
        Arc::ptr_eq(&self.health, &other.health)
    }

    /// Reachability and fall-back counts of the back end.
    pub fn health(&self) -> &StateHealth {
        &self.health
    }

    /// Takes `n` requests-per-minute and token cells from bucket `bucket` atomically across
    /// replicas: `Some(Ok)` admitted, `Some(Err(wait))` refused, `None` when the back end is
    /// absent or unavailable (the caller decides locally).
    pub(crate) fn rate_admit(
        &self,
        bucket: &str,
        rpm: u32,
        tpm: u32,
        tokens: u64,
    ) -> Option<impl Future<Output = Option<Result<(), Duration>>> + Send + 'static + use<>> {
        #[cfg(feature = "redis")]
        return self
            .available()
            .map(|r| self::redis::Remote::rate_admit(r, bucket, rpm, tpm, tokens));
        #[cfg(not(feature = "redis"))]
        {
            let _ = (bucket, rpm, tpm, tokens);
            None::<std::future::Ready<Option<Result<(), Duration>>>>
        }
    }

    /// A shared cache entry: `None` when the back end is absent or unavailable, `Some(None)`
    /// on a miss.
    pub(crate) fn cache_get(
        &self,
        key: &[u8; 32],
    ) -> Option<impl Future<Output = Option<Option<bytes::Bytes>>> + Send + 'static + use<>> {
        #[cfg(feature = "redis")]
        return self
            .available()
            .map(|r| self::redis::Remote::cache_get(r, key));
        #[cfg(not(feature = "redis"))]
        {
            let _ = key;
            None::<std::future::Ready<Option<Option<bytes::Bytes>>>>
        }
    }

    /// Stores a cache entry for `ttl` in the shared cache of at most `max_bytes` (oldest
    /// entries evicted); in the background, best effort.
    pub(crate) fn cache_put(
        &self,
        key: &[u8; 32],
        value: Vec<u8>,
        ttl: Duration,
        max_bytes: usize,
    ) {
        #[cfg(feature = "redis")]
        if let Some(r) = self.available() {
            self::redis::Remote::cache_put(r, key, value, ttl, max_bytes);
        }
        #[cfg(not(feature = "redis"))]
        let _ = (key, value, ttl, max_bytes);
    }

    /// Tells the other replicas circuit `key` changed; in the background, best effort.
    pub(crate) fn breaker_publish(&self, key: &str, event: BreakerEvent) {
        #[cfg(feature = "redis")]
        if let Some(r) = self.available() {
            self::redis::Remote::breaker_publish(r, key, event);
        }
        #[cfg(not(feature = "redis"))]
        let _ = (key, event);
    }

    /// Calls `listener` with the other replicas' breaker changes (and, on each (re)connect,
    /// the circuits open now) until it returns `false`.
    pub(crate) fn breaker_listen(&self, listener: BreakerListener) {
        #[cfg(feature = "redis")]
        if let Some(r) = &self.remote {
            self::redis::Remote::listen(r, listener);
        }
        #[cfg(not(feature = "redis"))]
        drop(listener);
    }

    /// Adds usage to today's shared counters (`fields`: counter name, amount); background,
    /// best effort.
    pub(crate) fn usage_add(&self, day: u64, fields: Vec<(String, f64)>) {
        #[cfg(feature = "redis")]
        if let Some(r) = self.available() {
            self::redis::Remote::usage_add(r, day, fields);
        }
        #[cfg(not(feature = "redis"))]
        let _ = (day, fields);
    }

    /// Today's shared usage counters, `None` when there are none to read.
    pub(crate) fn usage_get(
        &self,
        day: u64,
    ) -> Option<impl Future<Output = Option<Vec<(String, f64)>>> + Send + 'static + use<>> {
        #[cfg(feature = "redis")]
        return self
            .available()
            .map(|r| self::redis::Remote::usage_get(r, day));
        #[cfg(not(feature = "redis"))]
        {
            let _ = day;
            None::<std::future::Ready<Option<Vec<(String, f64)>>>>
        }
    }

    /// The remote back end when it is configured and not marked down; a call refused here
    /// counts as a fall-back.
    #[cfg(feature = "redis")]
    fn available(&self) -> Option<&Arc<self::redis::Remote>> {
        let r = self.remote.as_ref()?;
        if self.health.available() {
            Some(r)
        } else {
            self.health.fallbacks.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// How the shared back end is doing.
///
/// ```
/// let s = nenya::state::SharedState::memory();
/// assert!(s.health().is_up());
/// assert_eq!(s.health().fallbacks(), 0);
/// ```
#[derive(Debug)]
pub struct StateHealth {
    backend: &'static str,
    state: AtomicU8,
    /// Until when (ms on [`StateHealth::clock`]) calls skip the back end.
    down_until_ms: AtomicU64,
    fallbacks: AtomicU64,
    errors: AtomicU64,
    epoch: std::time::Instant,
}

impl Default for StateHealth {
    fn default() -> Self {
        Self::new("memory")
    }
}

/// How long a failed back end is left alone before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl StateHealth {
    fn new(backend: &'static str) -> Self {
        Self {
            backend,
            state: AtomicU8::new(UNKNOWN),
            down_until_ms: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Whether the last call to the back end succeeded (always true in memory; false until a
    /// remote back end first answered).
    pub fn is_up(&self) -> bool {
        self.backend == "memory" || self.state.load(Ordering::Relaxed) == UP
    }

    /// Calls that used local state because the back end was unavailable.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Calls to the back end that failed or timed out.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn clock(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn available(&self) -> bool {
        self.clock() >= self.down_until_ms.load(Ordering::Relaxed)
    }

    /// A call succeeded.
    pub(crate) fn ok(&self) {
        if self.state.swap(UP, Ordering::Relaxed) == DOWN {
            tracing::warn!(
                backend = self.backend,
                "shared state reachable again: sharing resumed"
            );
        }
    }

    /// A call failed: local state for [`RETRY_AFTER`].
    pub(crate) fn failed(&self, what: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let until = self.clock() + RETRY_AFTER.as_millis() as u64;
        self.down_until_ms.store(until, Ordering::Relaxed);
        if self.state.swap(DOWN, Ordering::Relaxed) != DOWN {
            tracing::warn!(
                backend = self.backend,
                error = what,
                "shared state unreachable: each replica uses its local state until it returns"
            );
        }
    }
}
