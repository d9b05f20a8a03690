//! Plain-HTTP/1.1 upstream connections driven by the task that serves the request.
//!
//! hyper-util's pooled client runs every upstream connection as a task of its own and hands the
//! response body over through a one-chunk channel: each upstream chunk costs a wake-up of that
//! task and one of the serving task, and the client's connection, finding nothing more to write
//! after each chunk, flushes each on its own. A 20-event burst from the upstream (read in one
//! `recvfrom`) left nenya as ~25 `writev` calls (strace, 2026-12-04).
//!
//! On a [`ConnectionWorkers`](crate::server::ConnectionWorkers) thread, `http://` upstreams
//! instead use connections from a thread-local pool, polled by the request's own future and
//! then by its response body. Whatever the upstream has sent is read and handed on in the same
//! poll, hyper writes a burst with one `writev`, and back-pressure is direct: a client that
//! reads slowly leaves the upstream socket unread.
//!
//! Kept from hyper-util's client: the same connector (`TCP_NODELAY`, TCP keep-alive, connect
//! timeout, DNS), origin-form request targets with a `Host` header, a request that never reached
//! a reused connection sent again once on a fresh one, idle connections bounded in number
//! ([`MAX_IDLE_PER_HOST`] per upstream, shared out between the threads) and age
//! ([`IDLE_TIMEOUT`]). `https://` upstreams stay on the pooled
//! client: ALPN may pick HTTP/2, whose connections are shared between requests and need a task
//! of their own.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use crate::{Body, BoxError};

/// Idle connections kept per upstream, shared out between the connection threads (as for the
/// pooled client, which keeps 64 per host in all).
const MAX_IDLE_PER_HOST: usize = 64;
/// The fewest a thread keeps, however many threads there are.
const MIN_IDLE_PER_THREAD: usize = 4;
/// How long an idle connection is kept (as for the pooled client).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type Io = TokioIo<TcpStream>;
type SendFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    Response<Incoming>,
                    hyper::client::conn::TrySendError<Request<Body>>,
                >,
            > + Send,
    >,
>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Box<Conn>, BoxError>> + Send>>;

/// Whether [`send`] takes `uri`: plain HTTP with an authority.
pub(crate) fn handles(uri: &Uri) -> bool {
    uri.scheme() == Some(&Scheme::HTTP) && uri.authority().is_some()
}

/// One upstream connection: the handle requests are sent on, and the connection itself, which
/// whoever waits on it polls.
struct Conn {
    send: http1::SendRequest<Body>,
    driver: http1::Connection<Io, Body>,
    /// The thread whose pool it belongs to: it is only ever put back there (its socket is
    /// registered with that thread's runtime).
    home: u64,
}

impl Conn {
    /// Polls the connection: `false` once it is closed or failed (drop it then).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.driver).poll(cx).is_pending()
    }
}

struct Host {
    authority: Authority,
    /// The `Host` header for requests to it.
    host_header: HeaderValue,
    /// Idle connections, oldest first, each with the time it became idle.
    idle: VecDeque<(Box<Conn>, Instant)>,
}

#[derive(Default)]
struct Pool {
    id: u64,
    hosts: Vec<Host>,
    connectors: Vec<(Duration, HttpConnector)>,
    sweeping: bool,
}

static NEXT_POOL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        id: NEXT_POOL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ..Pool::default()
    });
}

impl Pool {
    fn host(&mut self, authority: &Authority) -> &mut Host {
        // Byte-equal first: `Authority`'s own `==` folds case a byte at a time, and the
        // provider's authority is the same text every time.
        let same =
            |h: &Host| h.authority.as_str() == authority.as_str() || h.authority == *authority;
        let i = match self.hosts.iter().position(same) {
            Some(i) => i,
            None => {
                let host_header = match authority.port_u16() {
                    Some(80) => HeaderValue::from_str(authority.host()),
                    _ => HeaderValue::from_str(authority.as_str()),
                }
                .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
                self.hosts.push(Host {
                    authority: authority.clone(),
                    host_header,
                    idle: VecDeque::new(),
                });
                self.hosts.len() - 1
            }
        };
        &mut self.hosts[i]
    }

    fn connector(&mut self, connect_timeout: Duration) -> HttpConnector {
        if let Some((_, c)) = self.connectors.iter().find(|(t, _)| *t == connect_timeout) {
            return c.clone();
        }
        let c = super::transport::tcp_connector(connect_timeout);
        self.connectors.push((connect_timeout, c.clone()));
        c
    }

    fn evict_expired(&mut self, now: Instant) {
        for h in &mut self.hosts {
            while h
                .idle
                .front()
                .is_some_and(|(_, since)| now.duration_since(*since) >= IDLE_TIMEOUT)
            {
                h.idle.pop_front();
            }
        }
        self.hosts.retain(|h| !h.idle.is_empty());
    }
}

/// The most recently idled live connection to `authority`, and the `Host` header to send.
/// Each candidate is polled once first: one the upstream closed while idle resolves then and
/// is dropped.
fn checkout(authority: &Authority, cx: &mut Context<'_>) -> (Option<Box<Conn>>, HeaderValue) {
    POOL.with_borrow_mut(|pool| {
        let host = pool.host(authority);
        while let Some((mut conn, since)) = host.idle.pop_back() {
            if since.elapsed() < IDLE_TIMEOUT && conn.drive(cx) && conn.send.is_ready() {
                return (Some(conn), host.host_header.clone());
            }
        }
        (None, host.host_header.clone())
    })
}

/// Puts a connection whose exchange is over back into its thread's pool, if it can take another
/// request.
fn release(mut conn: Box<Conn>, authority: &Authority, cx: &mut Context<'_>) {
    // One more poll lets the connection see the end of the exchange and ask for the next.
    if !conn.drive(cx) || !conn.send.is_ready() {
        return;
    }
    let start_sweeper = POOL.with_borrow_mut(|pool| {
        if pool.id != conn.home {
            return false;
        }
        let now = Instant::now();
        let host = pool.host(authority);
        let cap = (MAX_IDLE_PER_HOST / crate::server::connection_workers().max(1))
            .max(MIN_IDLE_PER_THREAD);
        if host.idle.len() >= cap {
            return false;
        }
        host.idle.push_back((conn, now));
        !std::mem::replace(&mut pool.sweeping, true)
    });
    if start_sweeper {
        // Closes connections to upstreams no request asks for any more.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
            loop {
                tick.tick().await;
                POOL.with_borrow_mut(|p| p.evict_expired(Instant::now()));
            }
        });
    }
}

fn connect(uri: Uri, connect_timeout: Duration) -> ConnectFuture {
    let (connector, home) = POOL.with_borrow_mut(|p| (p.connector(connect_timeout), p.id));
    Box::pin(async move {
        let mut connector = connector;
        let io = connector.call(uri).await?;
        let (send, driver) = http1::handshake(io).await?;
        Ok(Box::new(Conn { send, driver, home }))
    })
}

/// Sends `req` (an `http://` URI with an authority: see [`handles`]) on a connection of this
/// thread's pool, or a new one made with `connect_timeout`.
pub(crate) fn send(req: Request<Body>, connect_timeout: Duration) -> InlineFuture {
    InlineFuture {
        state: State::Start {
            req: Some(req),
            connect_timeout,
        },
    }
}

enum State {
    Start {
        req: Option<Request<Body>>,
        connect_timeout: Duration,
    },
    Connecting {
        fut: ConnectFuture,
        req: Option<Request<Body>>,
        authority: Authority,
    },
    Sending {
        conn: Option<Box<Conn>>,
        fut: SendFuture,
        authority: Authority,
        /// What a retry on a fresh connection needs; `None` once one was made (or the
        /// connection was fresh to begin with).
        retry: Option<(Uri, Duration)>,
    },
    Done,
}

/// Response future of [`send`].
pub(crate) struct InlineFuture {
    state: State,
}

/// Sends `req` (its `Host` header already set) on `conn`, its target in origin form.
fn dispatch(conn: &mut Conn, mut req: Request<Body>) -> SendFuture {
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = Uri::from(pq);
    }
    Box::pin(conn.send.try_send_request(req))
}

impl Future for InlineFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut self.state;
        loop {
            match this {
                State::Start {
                    req,
                    connect_timeout,
                } => {
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    let uri = req.uri().clone();
                    let Some(authority) = uri.authority().cloned() else {
                        return Poll::Ready(Err("upstream URI has no authority".into()));
                    };
                    let (conn, host_header) = checkout(&authority, cx);
                    let mut req = req;
                    req.headers_mut().entry(header::HOST).or_insert(host_header);
                    *this = match conn {
                        Some(mut conn) => State::Sending {
                            fut: dispatch(&mut conn, req),
                            conn: Some(conn),
                            authority,
                            retry: Some((uri, *connect_timeout)),
                        },
                        None => State::Connecting {
                            fut: connect(uri, *connect_timeout),
                            req: Some(req),
                            authority,
                        },
                    };
                }
                State::Connecting {
                    fut,
                    req,
                    authority,
                } => {
                    let mut conn = match std::task::ready!(fut.as_mut().poll(cx)) {
                        Ok(c) => c,
                        Err(e) => {
                            *this = State::Done;
                            return Poll::Ready(Err(e));
                        }
                    };
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    *this = State::Sending {
                        fut: dispatch(&mut conn, req),
                        conn: Some(conn),
                        authority: authority.clone(),
                        retry: None,
                    };
                }
                State::Sending {
                    conn,
                    fut,
                    authority,
                    retry,
                } => {
                    // The connection first: it writes the request and reads the answer.
                    if conn.as_mut().is_some_and(|c| !c.drive(cx)) {
                        // Closed or failed: the answer below resolves with its error.
                        *conn = None;
                    }
                    match std::task::ready!(fut.as_mut().poll(cx)) {
                        Ok(resp) => {
                            let (parts, incoming) = resp.into_parts();
                            let mut conn = conn.take();
                            // An answer without a body (or with an empty one) may never be
                            // polled: its connection goes back now.
                            if http_body::Body::is_end_stream(&incoming)
                                && let Some(c) = conn.take()
                            {
                                release(c, authority, cx);
                            }
                            let body = InlineBody {
                                incoming,
                                conn,
                                authority: authority.clone(),
                            };
                            *this = State::Done;
                            return Poll::Ready(Ok(Response::from_parts(parts, Body::new(body))));
                        }
                        Err(mut e) => {
                            // A request that never reached a reused connection (the upstream
                            // closed it while idle) goes once more, on a fresh one.
                            if let (Some((uri, timeout)), Some(req)) =
                                (retry.take(), e.take_message())
                            {
                                *this = State::Connecting {
                                    fut: connect(uri, timeout),
                                    req: Some(req),
                                    authority: authority.clone(),
                                };
                                continue;
                            }
                            *this = State::Done;
                            return Poll::Ready(Err(e.into_error().into()));
                        }
                    }
                }
                State::Done => return Poll::Ready(Err("polled after completion".into())),
            }
        }
    }
}

/// The upstream's answer body. Polling it drives the connection; once the whole answer was
/// read, the connection goes back to the pool. Dropped before that, it closes the connection
/// (an HTTP/1.1 exchange cannot be abandoned half-way).
struct InlineBody {
    incoming: Incoming,
    conn: Option<Box<Conn>>,
    authority: Authority,
}

impl InlineBody {
    fn finish(&mut self, cx: &mut Context<'_>) {
        if let Some(c) = self.conn.take() {
            release(c, &self.authority, cx);
        }
    }
}

impl http_body::Body for InlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // Twice at most: the first poll of the body tells the connection it is wanted, the
        // second finds what that let the connection read. Either way every waker registered is
        // this task's, so a `Pending` is always followed by a wake-up.
        for _ in 0..2 {
            if this.conn.as_mut().is_some_and(|c| !c.drive(cx)) {
                this.conn = None;
            }
            match Pin::new(&mut this.incoming).poll_frame(cx) {
                Poll::Ready(None) => {
                    this.finish(cx);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // The last frame of a sized answer: the server may not poll again.
                    if http_body::Body::is_end_stream(&this.incoming) {
                        this.finish(cx);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.incoming)
    }

    fn size_hint(&self) -> SizeHint {
        http_body::Body::size_hint(&self.incoming)
    }
}
