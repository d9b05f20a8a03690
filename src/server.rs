//! Serving a tower service over HTTP/1.1 and HTTP/2 with graceful shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

use crate::{Body, BoxError};

static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Client connections currently open across every [`serve`] in this process (one atomic
/// update per connection, not per request). The binary uses it to return freed memory to the
/// system once a burst of connections is over.
///
/// ```
/// assert_eq!(nenya::server::open_connections(), 0);
/// ```
pub fn open_connections() -> usize {
    OPEN_CONNECTIONS.load(Ordering::Relaxed)
}

/// Decrements the open-connection count when the connection's task ends (or is dropped).
struct ConnectionGuard;

impl ConnectionGuard {
    fn new() -> Self {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `service` on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight requests finish for up to `grace`.
///
/// Accepted sockets get `TCP_NODELAY` (without it, small SSE writes wait on Nagle's algorithm).
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use nenya::services::{MockProvider, MockConfig};
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let svc = MockProvider::new(MockConfig::default());
/// nenya::server::serve(listener, svc, std::future::pending(), std::time::Duration::from_secs(5)).await
/// # }
/// ```
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> std::io::Result<()>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
                let svc = service
                    .clone()
                    .map_request(|r: Request<Incoming>| r.map(Body::new));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc));
                let conn = graceful.watch(conn.into_owned());
                let guard = ConnectionGuard::new();
                tokio::spawn(async move {
                    let _guard = guard;
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "grace period over; closing remaining connections"
        );
    }
    Ok(())
}

/// Registers SIGTERM and SIGINT (Ctrl-C) handlers now, and returns a future that resolves on
/// either. Registering before the listener is bound means an early signal still drains
/// gracefully instead of killing the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {},
                        _ = i.recv() => {},
                    }
                }
                _ => {
                    tracing::warn!("could not install signal handlers; stop with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
