//! The floor under nenya's overhead: a bare hyper reverse proxy with none of the gateway in it,
//! run by `scripts/bench.sh --floor` beside nenya and nginx against the same mock.
//!
//! It is built the way nenya serves (an accept loop handing connections to one
//! single-threaded tokio runtime per CPU, `TCP_NODELAY`, HTTP/1.1 with keep-alive both ways),
//! and does only what any proxy must: read the request body whole, replace the credential,
//! send it on over an upstream connection kept for the client's connection, and hand the
//! answer's body back as it arrives. What nenya adds over this figure is the gateway's own
//! work per request (parse, routing, layers, accounting), not hyper's or tokio's.
//!
//! ```text
//! cargo bench --bench floor -- --listen 127.0.0.1:9000 --upstream 127.0.0.1:8080
//! ```
//!
//! Without `--listen` it prints how to run it and exits, so that `cargo bench` (which runs
//! every bench target) does not wait on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != name);
    args.next()?;
    args.next()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (Some(listen), Some(upstream)) = (arg("--listen"), arg("--upstream")) else {
        eprintln!("floor: a bare hyper proxy; run with --listen ADDR --upstream ADDR");
        return Ok(());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        workers.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("floor-{i}"))
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    }
    let next = AtomicUsize::new(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let stream = stream.into_std()?;
            let worker = &workers[next.fetch_add(1, Ordering::Relaxed) % n];
            worker.spawn(async move {
                if let Err(e) = serve(stream, upstream).await {
                    eprintln!("floor: connection ended: {e}");
                }
            });
        }
    })
}

type Upstream = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn serve(
    stream: std::net::TcpStream,
    upstream: SocketAddr,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::from_std(stream)?;
    let up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    // On this thread's runtime, as the serving connection is.
    tokio::spawn(conn);
    let send: Arc<tokio::sync::Mutex<Upstream>> = Arc::new(tokio::sync::Mutex::new(send));
    let key = HeaderValue::from_static("Bearer sk-bench-provider-key");
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (send, key) = (send.clone(), key.clone());
        async move {
            let (mut parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            parts.headers.insert(header::AUTHORIZATION, key);
            let mut send = send.lock().await;
            send.ready().await?;
            let answer = send.send_request(Request::from_parts(parts, Full::new(body)));
            drop(send);
            let answer: Response<Incoming> = answer.await?;
            Ok::<_, hyper::Error>(answer)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await?;
    Ok(())
}
