//! Serving a tower service over HTTP/1.1 and HTTP/2 with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
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

/// A fixed set of threads, each running its own single-threaded tokio runtime, that
/// [`serve_on_workers`] deals accepted connections to, round-robin.
///
/// A connection then lives on one thread: its requests, the upstream connections they open and
/// the tasks those spawn are woken on that thread, with no hand-off between worker threads (in
/// a work-stealing runtime each such wake-up may unpark another worker: a futex wake and a
/// context switch per hop, which is most of what a proxy adds to a request at low
/// concurrency). The threads stop when the last clone is dropped.
///
/// ```
/// let workers = nenya::server::ConnectionWorkers::new(2)?;
/// assert_eq!(workers.len(), 2);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ConnectionWorkers {
    inner: Arc<WorkersInner>,
}

#[derive(Debug)]
struct WorkersInner {
    handles: Vec<tokio::runtime::Handle>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl ConnectionWorkers {
    /// Starts `n` worker threads (at least one), named `nenya-conn-N`.
    ///
    /// # Errors
    /// When a runtime or a thread cannot be created.
    pub fn new(n: usize) -> std::io::Result<Self> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("nenya-conn-{i}"))
                .spawn(move || {
                    ON_WORKER.set(n);
                    // Runs the spawned connections until told to stop (or the pool is gone).
                    let _ = rt.block_on(rx);
                })?;
            stop.push(tx);
        }
        Ok(Self {
            inner: Arc::new(WorkersInner {
                handles,
                stop,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// How many worker threads there are.
    pub fn len(&self) -> usize {
        self.inner.handles.len()
    }

    /// Always false: a pool has at least one thread.
    pub fn is_empty(&self) -> bool {
        self.inner.handles.is_empty()
    }

    fn next(&self) -> &tokio::runtime::Handle {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.handles.len();
        &self.inner.handles[i]
    }
}

thread_local! {
    /// On a connection thread: how many threads its pool has (0 elsewhere).
    static ON_WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether this thread is one of a [`ConnectionWorkers`] pool's (upstream clients keep a pool
/// per such thread: see [`Transport::Pooled`](crate::services::Transport::Pooled)).
pub(crate) fn on_connection_worker() -> bool {
    ON_WORKER.get() > 0
}

/// On a connection thread, how many threads its pool has (0 elsewhere): per-thread resources
/// divide their process-wide bounds by it.
pub(crate) fn connection_workers() -> usize {
    ON_WORKER.get()
}

impl Drop for WorkersInner {
    fn drop(&mut self) {
        for tx in self.stop.drain(..) {
            let _ = tx.send(());
        }
    }
}

/// Serves `service` on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight requests finish for up to `grace`. Connections run as tasks of the current
/// runtime; [`serve_on_workers`] runs them on a [`ConnectionWorkers`] pool instead.
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
    serve_inner(listener, service, shutdown, grace, None).await
}

/// [`serve`], with each accepted connection handed to the next thread of `workers` (its
/// socket re-registered with that thread's runtime), so that all of one connection's work
/// stays on one thread. The accept loop and the graceful drain run on the caller's runtime.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use nenya::services::{MockProvider, MockConfig};
/// let workers = nenya::server::ConnectionWorkers::new(2)?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let svc = MockProvider::new(MockConfig::default());
/// let grace = std::time::Duration::from_secs(5);
/// nenya::server::serve_on_workers(listener, svc, std::future::pending(), grace, &workers).await
/// # }
/// ```
pub async fn serve_on_workers<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    workers: &ConnectionWorkers,
) -> std::io::Result<()>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    serve_inner(listener, service, shutdown, grace, Some(workers)).await
}

async fn serve_inner<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    workers: Option<&ConnectionWorkers>,
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
                let guard = ConnectionGuard::new();
                let conn = Connection { builder: builder.clone(), watcher: graceful.watcher(), peer, guard };
                let Some(workers) = workers else {
                    tokio::spawn(conn.run(stream, svc));
                    continue;
                };
                // Deregister from this runtime's reactor; the worker registers it with its own.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "could not hand the connection over");
                        continue;
                    }
                };
                workers.next().spawn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => conn.run(stream, svc).await,
                        Err(e) => tracing::debug!(%peer, error = %e, "could not register the connection"),
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

/// One accepted connection, served where [`Connection::run`] is awaited.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    peer: std::net::SocketAddr,
    guard: ConnectionGuard,
}

impl Connection {
    async fn run<S>(self, stream: tokio::net::TcpStream, svc: S)
    where
        S: Service<Request<Incoming>, Response = Response<Body>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let _guard = self.guard;
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc));
        if let Err(e) = self.watcher.watch(conn.into_owned()).await {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
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
