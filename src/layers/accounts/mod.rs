//! Several accounts (API keys) for one provider: each request uses the account least recently
//! used for its model, and an account the upstream throttled cools down for that model.
//!
//! [`AccountsLayer`] wraps a service of `Request<B>` returning `Response<R>`; a pool function
//! names the request's pool (the gateway uses `provider/model`) and its accounts. The chosen
//! account goes into the request as a [`Credential`] extension, which
//! [`ProviderService`](crate::services::ProviderService) sends instead of the provider's single
//! key. From the answer:
//!
//! * `429`: the account cools down for this model for `Retry-After`, else 30 s doubling with
//!   each repeat (at most 15 minutes);
//! * `402` (quota): 10 minutes; `401` / `403` (a bad or revoked key): one hour;
//! * a success resets the account's back-off.
//!
//! When every account of the pool is cooling down, the request fails at once with
//! `rate_limited` and the `Retry-After` of the first account to come back (the router moves on
//! to the chain's next target). Logs name accounts by id, never by key.
//!
//! ```
//! use std::sync::Arc;
//! use nenya::config::Secret;
//! use nenya::layers::accounts::{Account, AccountsLayer, Credential};
//! use nenya::{Body, Error};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let accounts: Arc<[Account]> = vec![Account::new("one", Secret::new("k1")), Account::new("two", Secret::new("k2"))].into();
//! let layer = AccountsLayer::new(move |_: &http::Request<()>| Some(("up/m".into(), accounts.clone())));
//! let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(|req: http::Request<()>| async move {
//!     let id = req.extensions().get::<Credential>().unwrap().account.clone();
//!     Ok::<_, Error>(http::Response::new(Body::from(id.to_string())))
//! }));
//! let mut used = Vec::new();
//! for _ in 0..3 {
//!     let r = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//!     used.push(String::from_utf8(http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes().to_vec()).unwrap());
//! }
//! assert_eq!(used, ["one", "two", "one"]);
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::Service;
use tower_layer::Layer;

use crate::config::Secret;
use crate::error::{Error, ErrorKind};

/// One account of a provider.
#[derive(Debug, Clone)]
pub struct Account {
    /// Its name, for logs and metrics.
    pub id: Arc<str>,
    /// Its key.
    pub credential: Secret,
}

impl Account {
    /// An account.
    pub fn new(id: impl Into<Arc<str>>, credential: Secret) -> Self {
        Self {
            id: id.into(),
            credential,
        }
    }
}

/// Request extension: the account chosen for this request (read by the provider service).
#[derive(Debug, Clone)]
pub struct Credential {
    /// The account's id.
    pub account: Arc<str>,
    /// Its key.
    pub key: Secret,
}

#[derive(Debug, Default, Clone, Copy)]
struct AccountState {
    last_used: u64,
    cool_until: Option<Instant>,
    level: u32,
}

#[derive(Debug, Default)]
struct Pools {
    seq: u64,
    pools: HashMap<Arc<str>, Vec<AccountState>>,
}

impl Pools {
    /// The least recently used account that is not cooling down, or how long until one is.
    fn pick(&mut self, key: &Arc<str>, n: usize) -> Result<usize, Duration> {
        let now = Instant::now();
        self.seq += 1;
        let seq = self.seq;
        let pool = self.pools.entry(key.clone()).or_default();
        pool.resize(n, AccountState::default());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, a)| a.cool_until.is_none_or(|t| t <= now))
            .min_by_key(|(_, a)| a.last_used)
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                pool[i].last_used = seq;
                Ok(i)
            }
            None => Err(pool
                .iter()
                .filter_map(|a| a.cool_until)
                .min()
                .map_or(Duration::from_secs(1), |t| t - now)),
        }
    }

    fn report(&mut self, key: &Arc<str>, i: usize, cool: Option<Duration>) {
        let Some(a) = self.pools.get_mut(key).and_then(|p| p.get_mut(i)) else {
            return;
        };
        match cool {
            None => {
                a.level = 0;
                a.cool_until = None;
            }
            Some(d) => {
                a.level = a.level.saturating_add(1);
                a.cool_until = Some(Instant::now() + d);
            }
        }
    }
}

type PoolFor<B> = dyn Fn(&Request<B>) -> Option<(Arc<str>, Arc<[Account]>)> + Send + Sync;

/// Layer that applies [`Accounts`].
pub struct AccountsLayer<B> {
    pools: Arc<Mutex<Pools>>,
    pool_for: Arc<PoolFor<B>>,
}

impl<B> Clone for AccountsLayer<B> {
    fn clone(&self) -> Self {
        Self {
            pools: self.pools.clone(),
            pool_for: self.pool_for.clone(),
        }
    }
}

impl<B> std::fmt::Debug for AccountsLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountsLayer").finish_non_exhaustive()
    }
}

impl<B> AccountsLayer<B> {
    /// `pool_for` names a request's pool and its accounts (`None`: the request is left alone).
    pub fn new(
        pool_for: impl Fn(&Request<B>) -> Option<(Arc<str>, Arc<[Account]>)> + Send + Sync + 'static,
    ) -> Self {
        Self {
            pools: Arc::default(),
            pool_for: Arc::new(pool_for),
        }
    }
}

impl<S, B> Layer<S> for AccountsLayer<B> {
    type Service = Accounts<S, B>;
    fn layer(&self, inner: S) -> Self::Service {
        Accounts {
            inner,
            layer: self.clone(),
        }
    }
}

/// Puts the chosen account's [`Credential`] on each request; learns from the answers.
pub struct Accounts<S, B> {
    inner: S,
    layer: AccountsLayer<B>,
}

impl<S: Clone, B> Clone for Accounts<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, B> std::fmt::Debug for Accounts<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, R> Service<Request<B>> for Accounts<S, B>
where
    S: Service<Request<B>, Response = Response<R>, Error = Error>,
{
    type Response = Response<R>;
    type Error = Error;
    type Future = AccountsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some((key, accounts)) = (self.layer.pool_for)(&req).filter(|(_, a)| !a.is_empty())
        else {
            return AccountsFuture {
                fut: Some(self.inner.call(req)),
                chosen: None,
                err: None,
            };
        };
        let picked = self
            .layer
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pick(&key, accounts.len());
        match picked {
            Ok(i) => {
                let a = &accounts[i];
                tracing::debug!(pool = %key, account = %a.id, "account chosen");
                req.extensions_mut().insert(Credential {
                    account: a.id.clone(),
                    key: a.credential.clone(),
                });
                AccountsFuture {
                    fut: Some(self.inner.call(req)),
                    chosen: Some((self.layer.pools.clone(), key, i, a.id.clone())),
                    err: None,
                }
            }
            Err(wait) => {
                tracing::info!(pool = %key, wait_ms = wait.as_millis() as u64, "every account is cooling down");
                let msg = format!(
                    "every account for `{key}` is cooling down; retry in {} s",
                    wait.as_secs() + 1
                );
                AccountsFuture {
                    fut: None,
                    chosen: None,
                    err: Some(Error::new(ErrorKind::RateLimited, msg).with_retry_after(wait)),
                }
            }
        }
    }
}

type Chosen = (Arc<Mutex<Pools>>, Arc<str>, usize, Arc<str>);

pin_project_lite::pin_project! {
    /// Response future of [`Accounts`].
    pub struct AccountsFuture<F> {
        #[pin]
        fut: Option<F>,
        chosen: Option<Chosen>,
        err: Option<Error>,
    }
}

/// How long an account rests after this answer (`None`: it is fine).
fn cool_down(status: StatusCode, retry_after: Option<Duration>, level: u32) -> Option<Duration> {
    match status.as_u16() {
        429 => Some(retry_after.unwrap_or_else(|| {
            Duration::from_secs(30)
                .saturating_mul(1 << level.min(5))
                .min(Duration::from_secs(900))
        })),
        402 => Some(Duration::from_secs(600)),
        401 | 403 => Some(Duration::from_secs(3600)),
        _ => None,
    }
}

impl<F, R> Future for AccountsFuture<F>
where
    F: Future<Output = Result<Response<R>, Error>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(fut) = this.fut.as_pin_mut() else {
            return Poll::Ready(Err(this.err.take().unwrap_or_else(|| {
                Error::new(ErrorKind::Internal, "future polled after completion")
            })));
        };
        let out = ready!(fut.poll(cx));
        if let (Some((pools, key, i, id)), Ok(resp)) = (this.chosen.take(), &out) {
            let status = resp.status();
            if status.is_success() || matches!(status.as_u16(), 401..=403 | 429) {
                let retry_after = resp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let mut p = pools.lock().unwrap_or_else(|p| p.into_inner());
                let level = p
                    .pools
                    .get(&key)
                    .and_then(|v| v.get(i))
                    .map_or(0, |a| a.level);
                let cool = cool_down(status, retry_after, level);
                if let Some(d) = cool {
                    tracing::warn!(pool = %key, account = %id, status = status.as_u16(), cool_ms = d.as_millis() as u64, "account cooling down");
                }
                p.report(&key, i, cool);
            }
        }
        Poll::Ready(out)
    }
}
