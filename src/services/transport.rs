//! How requests reach an upstream: a pooled hyper-util client, or the in-process mock.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tower::Service;

use super::mock::{self, MockProvider};
use crate::{Body, BoxError};

/// The pooled HTTP/1.1 + HTTP/2 client used for upstreams (rustls, `TCP_NODELAY`).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// The connect timeout of the client shared by providers without one of their own.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the shared upstream client.
///
/// ```
/// let client = nenya::services::http_client(std::time::Duration::from_secs(5));
/// # drop(client);
/// ```
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut http = tcp_connector(connect_timeout);
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_native_roots() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "no system CA roots; using the bundled webpki roots");
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots()
        }
    };
    let https = builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    // Idle upstream connections are kept for reuse, but bounded: the soak test found 900 idle
    // connections (one per finished stream) held for the whole idle timeout after a burst.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build(https)
}

/// The TCP connections every upstream client makes: `TCP_NODELAY` (no Nagle delay on small
/// requests), TCP keep-alive, a connect timeout. Shared by [`http_client`] and the connection
/// threads' own HTTP/1.1 connections.
pub(crate) fn tcp_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
}

/// Where a provider's requests go.
///
/// Both variants are always ready (a pooled client queues nothing of its own), so callers may
/// clone and call without polling readiness; limits on concurrency belong to layers around the
/// provider service.
#[derive(Clone)]
// One per provider, shared behind an `Arc<ProviderSpec>` and never moved per request.
#[allow(clippy::large_enum_variant)]
pub enum Transport {
    /// Real HTTP, always through this client.
    Http(HttpClient),
    /// Real HTTP through `client`, built by [`http_client`] with `connect_timeout`. On a
    /// [`ConnectionWorkers`](crate::server::ConnectionWorkers) thread, the upstream connection
    /// is driven on the thread that serves the request instead (no cross-thread wake-up per
    /// read and write): an `http://` upstream through a connection of that thread's own pool,
    /// polled by the request's future and response body themselves (a burst of upstream events
    /// is read and written on in one go), an `https://` one through that thread's own client of
    /// the same settings (ALPN may choose HTTP/2, whose connections need a task of their own).
    Pooled {
        /// The client used off the connection threads.
        client: HttpClient,
        /// What the per-thread clients are built with.
        connect_timeout: Duration,
    },
    /// The in-process mock provider.
    Mock(MockProvider),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(_) => f.write_str("Transport::Http"),
            Self::Pooled { .. } => f.write_str("Transport::Pooled"),
            Self::Mock(_) => f.write_str("Transport::Mock"),
        }
    }
}

impl Transport {
    /// Sends a request without cloning or readiness polling (both transports are always ready).
    pub fn send(&self, req: Request<Body>) -> TransportFuture {
        match self {
            Self::Http(c) => TransportFuture {
                state: State::Http {
                    fut: c.request(req),
                },
            },
            Self::Pooled {
                client,
                connect_timeout,
            } => pooled_request(client, *connect_timeout, req),
            Self::Mock(m) => TransportFuture {
                state: State::Mock {
                    fut: m.clone().call(req),
                },
            },
        }
    }
}

impl Service<Request<Body>> for Transport {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = TransportFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> TransportFuture {
        match self {
            Self::Mock(m) => TransportFuture {
                state: State::Mock { fut: m.call(req) },
            },
            other => other.send(req),
        }
    }
}

thread_local! {
    /// A connection thread's own upstream clients, one per connect timeout (the settings
    /// [`http_client`] takes), built on first use.
    static THREAD_CLIENTS: std::cell::RefCell<Vec<(Duration, HttpClient)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn pooled_request(
    shared: &HttpClient,
    connect_timeout: Duration,
    req: Request<Body>,
) -> TransportFuture {
    if !crate::server::on_connection_worker() {
        return TransportFuture {
            state: State::Http {
                fut: shared.request(req),
            },
        };
    }
    // Plain HTTP/1.1: a connection this thread's task drives itself (see `inline`).
    if super::inline::handles(req.uri()) {
        return TransportFuture {
            state: State::Inline {
                fut: super::inline::send(req, connect_timeout),
            },
        };
    }
    let fut = THREAD_CLIENTS.with_borrow_mut(|clients| {
        let i = match clients.iter().position(|(t, _)| *t == connect_timeout) {
            Some(i) => i,
            None => {
                clients.push((connect_timeout, http_client(connect_timeout)));
                clients.len() - 1
            }
        };
        clients[i].1.request(req)
    });
    TransportFuture {
        state: State::Http { fut },
    }
}

pin_project! {
    /// Response future of [`Transport`].
    pub struct TransportFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = TransportProj]
    enum State {
        Http { #[pin] fut: hyper_util::client::legacy::ResponseFuture },
        Inline { #[pin] fut: super::inline::InlineFuture },
        Mock { #[pin] fut: mock::MockFuture },
    }
}

impl std::future::Future for TransportFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            TransportProj::Http { fut } => fut
                .poll(cx)
                .map_ok(|r| r.map(Body::new))
                .map_err(Into::into),
            TransportProj::Inline { fut } => fut.poll(cx),
            TransportProj::Mock { fut } => fut.poll(cx).map_err(Into::into),
        }
    }
}
