//! The routing hot path with healthy targets: resolve the agent, pick the target, pass the
//! circuit breaker and the RPM/TPM limiter, reach the provider service (here a ready no-op), answer. Separately, the
//! request layers that touch every text (redact + entropy) on a typical small request.
//!
//! `cargo bench --bench router`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use nenya::config::{Config, Secrets};
use nenya::layers::{
    BreakerConfig, CacheConfig, CircuitBreakerLayer, EntropyDetector, RateLimitConfig,
    RateLimitLayer, Redactor, ResponseCache, ResponseCacheLayer, TextScrubber, UsageLabels,
    UsageLayer, UsageMeter,
};
use nenya::model::{ApiFormat, ChatRequest};
use nenya::services::{RouteTable, Router, Target, http_client};
use nenya::{Body, Error};
use tower::{Layer, Service, ServiceExt, service_fn};

fn request() -> ChatRequest {
    nenya::adapters::decode_request(
        ApiFormat::OpenAi,
        br#"{"model":"coder","messages":[{"role":"system","content":"You are a careful coding assistant."},
            {"role":"user","content":"Refactor this function to return a Result instead of panicking:\nfn parse(s: &str) -> u32 { s.parse().unwrap() }"}]}"#,
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = Config::from_json_str(
        r#"{"providers": {"a": {"url": "http://127.0.0.1:9/v1/chat/completions"},
                          "b": {"url": "http://127.0.0.1:9/v1/chat/completions"}},
            "agents": {"coder": {"models": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}}}"#,
    )
    .unwrap();
    let secrets = Secrets::from_json_str(r#"{"provider_keys": {"a": "ka", "b": "kb"}}"#).unwrap();
    let table =
        RouteTable::from_config(&cfg, &secrets, &http_client(Duration::from_secs(1))).unwrap();
    let key = |r: &http::Request<ChatRequest>| {
        r.extensions()
            .get::<Target>()
            .map(|t| t.circuit_key.clone())
    };
    let provider = service_fn(|_r: http::Request<ChatRequest>| async {
        Ok::<_, Error>(http::Response::new(Body::empty()))
    });
    let provider_key = |r: &http::Request<ChatRequest>| {
        r.extensions()
            .get::<Target>()
            .map(|t| t.provider_key.clone())
    };
    // Limits high enough never to refuse, so the limiter's full check is on the path.
    let limits = RateLimitConfig {
        rpm: 1_000_000_000,
        tpm: 1_000_000_000,
    };
    let svc = Router::new(
        Arc::new(table),
        CircuitBreakerLayer::new(BreakerConfig::default(), key)
            .layer(RateLimitLayer::new(limits, provider_key).layer(provider)),
    );
    let template = request();

    c.bench_function("router+breaker+limiter/healthy_two_target_chain", |b| {
        b.iter_batched(
            || http::Request::new(template.clone()),
            |req| {
                rt.block_on(async {
                    let mut s = svc.clone();
                    let resp = s.ready().await.unwrap().call(req).await.unwrap();
                    black_box(resp)
                })
            },
            BatchSize::SmallInput,
        )
    });

    // The same with the two per-target layers added since: a concurrency cap (never reached)
    // and two accounts rotating.
    let accounts: Arc<[nenya::layers::accounts::Account]> = vec![
        nenya::layers::accounts::Account::new("one", nenya::config::Secret::new("k1")),
        nenya::layers::accounts::Account::new("two", nenya::config::Secret::new("k2")),
    ]
    .into();
    let cfg2 = Config::from_json_str(
        r#"{"providers": {"a": {"url": "http://127.0.0.1:9/v1/chat/completions"},
                          "b": {"url": "http://127.0.0.1:9/v1/chat/completions"}},
            "agents": {"coder": {"models": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]}}}"#,
    )
    .unwrap();
    let table2 =
        RouteTable::from_config(&cfg2, &secrets, &http_client(Duration::from_secs(1))).unwrap();
    let full = Router::new(
        Arc::new(table2),
        CircuitBreakerLayer::new(BreakerConfig::default(), key).layer(
            RateLimitLayer::new(limits, provider_key).layer(
                nenya::layers::AccountsLayer::new(move |r: &http::Request<ChatRequest>| {
                    let t = r.extensions().get::<Target>()?;
                    Some((t.model_key.clone(), accounts.clone()))
                })
                .layer(
                    nenya::layers::ConcurrencyLimitLayer::new(
                        Duration::from_secs(1),
                        |r: &http::Request<ChatRequest>| {
                            let t = r.extensions().get::<Target>()?;
                            Some((t.model_key.clone(), 1_000))
                        },
                    )
                    .layer(provider),
                ),
            ),
        ),
    );
    c.bench_function(
        "router+breaker+limiter+accounts+concurrency/healthy_two_target_chain",
        |b| {
            b.iter_batched(
                || http::Request::new(template.clone()),
                |req| {
                    rt.block_on(async {
                        let mut s = full.clone();
                        let resp = s.ready().await.unwrap().call(req).await.unwrap();
                        // Dropped here: its concurrency slot is given back.
                        black_box(resp.status())
                    })
                },
                BatchSize::SmallInput,
            )
        },
    );

    // The usage tap on a 20-event OpenAI stream with a usage chunk, against the bare stream.
    let mut events = String::new();
    for i in 0..20 {
        events.push_str(&format!(
            "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}}}}]}}\n\n"
        ));
    }
    events.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":20}}\n\ndata: [DONE]\n\n");
    let events = bytes::Bytes::from(events);
    let stream_body = move || {
        let frames: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> = events
            .split(|b| *b == b'\n')
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|c| {
                Ok(http_body::Frame::data(bytes::Bytes::from(
                    [c.concat(), b"\n\n".to_vec()].concat(),
                )))
            })
            .collect();
        Body::new(http_body_util::StreamBody::new(futures_util_stream(frames)))
    };
    let upstream = move |_r: http::Request<ChatRequest>| {
        let body = stream_body();
        async move {
            let mut r = http::Response::new(body);
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            Ok::<_, Error>(r)
        }
    };
    let meter = UsageMeter::new();
    let tapped = UsageLayer::new(meter, |_: &http::Request<ChatRequest>| {
        UsageLabels::new("a", "p", "m")
    })
    .layer(service_fn(upstream.clone()));
    let bare = service_fn(upstream);
    for (name, tap) in [
        ("usage_tap/stream_20_events", true),
        ("usage_tap/bare_stream_20_events", false),
    ] {
        c.bench_function(name, |b| {
            b.iter_batched(
                || http::Request::new(template.clone()),
                |req| {
                    rt.block_on(async {
                        let resp = if tap {
                            tapped.clone().oneshot(req).await.unwrap()
                        } else {
                            bare.clone().oneshot(req).await.unwrap()
                        };
                        black_box(resp.into_body().collect().await.unwrap())
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }

    // Response cache: a hit on a small deterministic request (key + lookup + replay).
    let cache = ResponseCacheLayer::new(ResponseCache::new(CacheConfig::default())).layer(
        service_fn(|_r: http::Request<ChatRequest>| async {
            Ok::<_, Error>(http::Response::new(Body::from("a small cached answer")))
        }),
    );
    let mut det = template.clone();
    det.extra.insert("temperature".into(), 0.into());
    rt.block_on(async {
        let r = cache
            .clone()
            .oneshot(http::Request::new(det.clone()))
            .await
            .unwrap();
        r.into_body().collect().await.unwrap();
    });
    c.bench_function("cache/hit_small_request", |b| {
        b.iter_batched(
            || http::Request::new(det.clone()),
            |req| {
                rt.block_on(async {
                    let r = cache.clone().oneshot(req).await.unwrap();
                    black_box(r.into_body().collect().await.unwrap())
                })
            },
            BatchSize::SmallInput,
        )
    });

    let redactor = Redactor::builtin();
    let entropy = EntropyDetector::default();
    c.bench_function("redact+entropy/small_request", |b| {
        b.iter(|| {
            let mut n = 0;
            template.for_each_text(|t| {
                n += usize::from(redactor.scrub(t).is_some());
                n += usize::from(entropy.scrub(t).is_some());
            });
            black_box(n)
        })
    });
}

/// A ready stream of frames (no extra dependency for a bench).
fn futures_util_stream<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Unpin {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

criterion_group!(benches, bench);
criterion_main!(benches);
