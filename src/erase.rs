//! Type erasure for the gateway's own stacks, at the cost of a reference count per request.
//!
//! tower's `BoxCloneSyncService` boxes a service so that its clone is a new box holding a clone
//! of everything below it. Serving clones the stack for each request (hyper's glue does, and so
//! does any layer that calls its inner service after an `.await`), so with the stack erased in
//! a few places every request made one heap allocation per erased part and copied the whole
//! chain below it: seven allocations and as many frees a request for the default stack, in
//! clones that were thrown away when the request ended.
//!
//! [`Shared`] holds the erased service behind an `Arc` instead. A clone is a reference count;
//! a call clones the concrete service of that part only (down to the next erased part, itself
//! a reference count) and calls the clone, which is what serving a request did anyway.
//!
//! A call checks the clone's readiness first. Every service of the gateway's stacks is always
//! ready (their `poll_ready` passes readiness down to a provider or a dispatcher that always
//! is), so this is one poll; a service that is not ready yet is waited on in the returned
//! future, as `tower::ServiceExt::oneshot` would.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tower::{Service, ServiceExt};

/// The future of a [`Shared`] service.
pub(crate) type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// An erased, cloneable service whose clone is a reference count (see the module docs).
pub(crate) struct Shared<Req, Res, E> {
    inner: Arc<dyn Call<Req, Res, E>>,
}

trait Call<Req, Res, E>: Send + Sync {
    fn call(&self, req: Req) -> BoxFuture<Res, E>;
}

impl<S, Req> Call<Req, S::Response, S::Error> for S
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Send + 'static,
{
    fn call(&self, req: Req) -> BoxFuture<S::Response, S::Error> {
        let mut svc = self.clone();
        match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Box::pin(Service::call(&mut svc, req)),
            Poll::Ready(Err(e)) => Box::pin(std::future::ready(Err(e))),
            // Polled again, with the task's waker, by the oneshot.
            Poll::Pending => Box::pin(ServiceExt::oneshot(svc, req)),
        }
    }
}

impl<Req, Res, E> Shared<Req, Res, E> {
    /// Erases `svc`.
    pub(crate) fn new<S>(svc: S) -> Self
    where
        S: Service<Req, Response = Res, Error = E> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        Req: Send + 'static,
        Res: Send + 'static,
        E: Send + 'static,
    {
        Self {
            inner: Arc::new(svc),
        }
    }

    /// Calls the service without a clone of `self` (a call needs only a shared reference).
    pub(crate) fn call_shared(&self, req: Req) -> BoxFuture<Res, E> {
        Call::call(&*self.inner, req)
    }
}

impl<Req, Res, E> Clone for Shared<Req, Res, E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<Req, Res, E> fmt::Debug for Shared<Req, Res, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl<Req, Res, E> Service<Req> for Shared<Req, Res, E> {
    type Response = Res;
    type Error = E;
    type Future = BoxFuture<Res, E>;

    /// Always ready: each call checks (and if need be awaits) the readiness of its own clone.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        Call::call(&*self.inner, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Ready after `ready_in` polls, counting its polls.
    #[derive(Clone)]
    struct Flaky {
        polls: Arc<AtomicUsize>,
        ready_in: usize,
    }

    impl Service<u32> for Flaky {
        type Response = u32;
        type Error = &'static str;
        type Future = std::future::Ready<Result<u32, &'static str>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready_in == 0 {
                return Poll::Ready(Ok(()));
            }
            self.ready_in -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }

        fn call(&mut self, req: u32) -> Self::Future {
            assert_eq!(self.ready_in, 0, "called before it was ready");
            std::future::ready(if req == 0 { Err("zero") } else { Ok(req * 2) })
        }
    }

    fn flaky(ready_in: usize) -> (Flaky, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let svc = Flaky {
            polls: polls.clone(),
            ready_in,
        };
        (svc, polls)
    }

    #[tokio::test]
    async fn a_ready_service_answers_through_the_erasure() {
        let (svc, polls) = flaky(0);
        let mut shared = Shared::new(svc);
        let mut clone = shared.clone();
        assert_eq!(
            Service::call(shared.ready().await.unwrap(), 21).await,
            Ok(42)
        );
        assert_eq!(Service::call(&mut clone, 0).await, Err("zero"));
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "one readiness check per call"
        );
    }

    #[tokio::test]
    async fn a_service_not_ready_yet_is_waited_on_before_it_is_called() {
        let (svc, polls) = flaky(3);
        let shared = Shared::new(svc);
        assert_eq!(shared.call_shared(5).await, Ok(10));
        assert_eq!(polls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_clone_shares_the_service_instead_of_copying_it() {
        let (svc, polls) = flaky(0);
        let shared = Shared::new(svc);
        let copies: Vec<_> = (0..10).map(|_| shared.clone()).collect();
        assert_eq!(Arc::strong_count(&shared.inner), 11);
        drop(copies);
        assert_eq!(Arc::strong_count(&shared.inner), 1);
        assert_eq!(
            polls.load(Ordering::SeqCst),
            0,
            "cloning checks no readiness"
        );
    }
}
