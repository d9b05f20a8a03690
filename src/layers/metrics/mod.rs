//! Request metrics in Prometheus text format: requests by endpoint and status, errors by
//! `error_kind`, failovers, and a latency histogram (time to response headers, which for a
//! stream is time to its first byte). Other parts of the stack add their own families through
//! [`Metrics::register`] (the gateway adds redactions per kind and open circuits).
//!
//! [`MetricsLayer`] wraps any `Request<B>` → `Response<R>` service; put it outermost so it sees
//! every answer, errors included. [`Metrics::render`] is what `GET /metrics` serves.
//!
//! ```
//! use nenya::layers::{Metrics, MetricsLayer};
//! use nenya::Body;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let metrics = Metrics::new();
//! let svc = ServiceBuilder::new()
//!     .layer(MetricsLayer::new(metrics.clone()))
//!     .service(service_fn(|_req: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
//!     }));
//! svc.oneshot(http::Request::post("/v1/chat/completions").body(Body::empty()).unwrap()).await.unwrap();
//! let text = metrics.render();
//! assert!(text.contains(r#"nenya_requests_total{endpoint="/v1/chat/completions",status="200"} 1"#));
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;
use tower_layer::Layer;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Endpoints labelled by name; any other path counts as `other` (bounded label values).
const ENDPOINTS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/healthz",
    "/metrics",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/images/generations",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/moderations",
    "/v1/rerank",
];

/// Route families counted as one endpoint (ids in their paths would explode the series).
const PREFIXES: &[(&str, &str)] = &[
    ("/proxy/", "/proxy"),
    ("/v1/files", "/v1/files"),
    ("/v1/batches", "/v1/batches"),
    ("/v1/a2a", "/v1/a2a"),
];

type Collector = (&'static str, Box<dyn Fn(&mut String) + Send + Sync>);

/// The metrics registry. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    failovers: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    collectors: Mutex<Vec<Collector>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the families written by `collector` (HELP, TYPE and samples) at each render,
    /// replacing an earlier collector of the same `name` (a reloaded stack re-registers).
    pub fn register(
        &self,
        name: &'static str,
        collector: impl Fn(&mut String) + Send + Sync + 'static,
    ) {
        let mut list = self
            .inner
            .collectors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        list.retain(|(n, _)| *n != name);
        list.push((name, Box::new(collector)));
    }

    fn record(
        &self,
        endpoint: &'static str,
        status: u16,
        kind: Option<&str>,
        attempts: u64,
        took: f64,
    ) {
        *self
            .inner
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((endpoint, status))
            .or_default() += 1;
        if let Some(k) = kind {
            *self
                .inner
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(k.to_owned())
                .or_default() += 1;
        }
        if attempts > 1 {
            self.inner
                .failovers
                .fetch_add(attempts - 1, Ordering::Relaxed);
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            if took <= *le {
                self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        self.inner
            .sum_micros
            .fetch_add((took * 1e6) as u64, Ordering::Relaxed);
    }

    /// Totals so far (for `/statsz`).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let i = &self.inner;
        MetricsSnapshot {
            requests: i.count.load(Ordering::Relaxed),
            errors: i.errors.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            failovers: i.failovers.load(Ordering::Relaxed),
        }
    }

    /// Everything, in Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let i = &self.inner;
        family(
            &mut out,
            "nenya_requests_total",
            "counter",
            "Requests answered, by endpoint and status.",
        );
        for ((ep, st), n) in i.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "nenya_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}"
            );
        }
        family(
            &mut out,
            "nenya_errors_total",
            "counter",
            "Error answers, by error_kind.",
        );
        for (k, n) in i.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "nenya_errors_total{{error_kind=\"{}\"}} {n}",
                escape(k)
            );
        }
        family(
            &mut out,
            "nenya_failovers_total",
            "counter",
            "Moves to the next target of an agent's chain.",
        );
        let _ = writeln!(
            out,
            "nenya_failovers_total {}",
            i.failovers.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "nenya_request_duration_seconds",
            "histogram",
            "Time to response headers (to the first byte, for streams).",
        );
        for (b, le) in i.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "nenya_request_duration_seconds_bucket{{le=\"{le}\"}} {}",
                b.load(Ordering::Relaxed)
            );
        }
        let count = i.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "nenya_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "nenya_request_duration_seconds_sum {}",
            i.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "nenya_request_duration_seconds_count {count}");
        for (_, c) in i
            .collectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            c(&mut out);
        }
        out
    }
}

/// Totals from [`Metrics::snapshot`].
///
/// ```
/// assert_eq!(nenya::layers::Metrics::new().snapshot().requests, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Requests answered.
    pub requests: u64,
    /// Error answers by `error_kind`.
    pub errors: BTreeMap<String, u64>,
    /// Moves to a next target.
    pub failovers: u64,
}

/// Writes a family's HELP and TYPE lines.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Layer that applies [`MetricsService`].
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl MetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Records each answer's endpoint, status, error kind, attempts and latency.
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let endpoint = ENDPOINTS
            .iter()
            .find(|e| **e == path)
            .copied()
            .or_else(|| {
                PREFIXES
                    .iter()
                    .find(|(p, _)| path.starts_with(p))
                    .map(|(_, e)| *e)
            })
            .unwrap_or("other");
        ResponseFuture {
            fut: self.inner.call(req),
            metrics: self.metrics.clone(),
            endpoint,
            started: Instant::now(),
        }
    }
}

pin_project! {
    /// Response future of [`MetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        metrics: Metrics,
        endpoint: &'static str,
        started: Instant,
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        if let Ok(resp) = &out {
            let h = resp.headers();
            let kind = h
                .get(&crate::error::ERROR_KIND_NAME)
                .and_then(|v| v.to_str().ok());
            let attempts = h
                .get(&crate::services::router::ATTEMPTS_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            this.metrics.record(
                this.endpoint,
                resp.status().as_u16(),
                kind,
                attempts,
                this.started.elapsed().as_secs_f64(),
            );
        }
        Poll::Ready(out)
    }
}
