//! The circuit breaker: its state cycle under tokio's paused clock (no sleeps), and in the
//! gateway, a failing target that stops receiving requests while the chain answers from the
//! next one.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use nenya::layers::{BreakerConfig, CircuitBreakerLayer};
use nenya::{Body, Error, Gateway};
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};

type Req = http::Request<Body>;

/// A breaker over an upstream whose status the test sets; counts the calls that reach it.
fn guarded(
    cfg: BreakerConfig,
) -> (
    impl Service<Req, Response = http::Response<Body>, Error = Error>,
    Arc<AtomicU16>,
    Arc<AtomicUsize>,
) {
    let status = Arc::new(AtomicU16::new(503));
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, c) = (status.clone(), calls.clone());
    let upstream = service_fn(move |_req: Req| {
        let code = s.load(Ordering::SeqCst);
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = http::Response::new(Body::empty());
            *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
            Ok::<_, Error>(r)
        }
    });
    let layer = CircuitBreakerLayer::new(cfg, |_: &Req| Some("up/m".into()));
    (layer.layer(upstream), status, calls)
}

async fn call<S>(svc: &mut S) -> Result<u16, String>
where
    S: Service<Req, Response = http::Response<Body>, Error = Error>,
{
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(Req::new(Body::empty()))
        .await;
    r.map(|r| r.status().as_u16())
        .map_err(|e| e.kind().as_str().to_string())
}

const CFG: BreakerConfig = BreakerConfig {
    failure_threshold: 3,
    base_cooldown: Duration::from_secs(10),
    max_cooldown: Duration::from_secs(60),
    quota_cooldown: Duration::from_secs(600),
};

#[tokio::test(start_paused = true)]
async fn closed_open_half_open_closed() {
    let (mut svc, status, calls) = guarded(CFG);
    for _ in 0..3 {
        assert_eq!(call(&mut svc).await, Ok(503));
    }
    // Open: nothing reaches the upstream for the cool-down.
    for _ in 0..10 {
        assert_eq!(call(&mut svc).await, Err("circuit_open".into()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Past the cool-down (10 s ±10%): one probe; it fails, and the circuit re-opens for longer.
    tokio::time::advance(Duration::from_secs(12)).await;
    assert_eq!(call(&mut svc).await, Ok(503));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    tokio::time::advance(Duration::from_secs(12)).await;
    assert_eq!(
        call(&mut svc).await,
        Err("circuit_open".into()),
        "second cool-down is ~20 s"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // The upstream recovers; the next probe closes the circuit.
    status.store(200, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(call(&mut svc).await, Ok(200));
    for _ in 0..5 {
        assert_eq!(call(&mut svc).await, Ok(200));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn client_errors_do_not_trip_and_success_resets_the_count() {
    let (mut svc, status, calls) = guarded(CFG);
    status.store(400, Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(call(&mut svc).await, Ok(400));
    }
    status.store(503, Ordering::SeqCst);
    assert_eq!(call(&mut svc).await, Ok(503));
    assert_eq!(call(&mut svc).await, Ok(503));
    status.store(200, Ordering::SeqCst);
    assert_eq!(call(&mut svc).await, Ok(200)); // resets
    status.store(503, Ordering::SeqCst);
    assert_eq!(call(&mut svc).await, Ok(503));
    assert_eq!(call(&mut svc).await, Ok(503));
    assert_eq!(calls.load(Ordering::SeqCst), 15, "never opened");
}

#[tokio::test(start_paused = true)]
async fn a_quota_error_opens_for_the_long_cooldown() {
    let (mut svc, status, _calls) = guarded(CFG);
    status.store(402, Ordering::SeqCst);
    assert_eq!(call(&mut svc).await, Ok(402));
    tokio::time::advance(Duration::from_secs(300)).await;
    assert_eq!(call(&mut svc).await, Err("circuit_open".into()));
    status.store(200, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(call(&mut svc).await, Ok(200));
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_caller_hung_up_frees_the_slot() {
    let pending = Arc::new(AtomicUsize::new(0));
    let p = pending.clone();
    let upstream = service_fn(move |_req: Req| {
        let n = p.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 3 {
                std::future::pending::<()>().await; // the probe never answers
            }
            let mut r = http::Response::new(Body::empty());
            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, Error>(r)
        }
    });
    let mut svc = CircuitBreakerLayer::new(CFG, |_: &Req| Some("k".into())).layer(upstream);
    for _ in 0..3 {
        assert_eq!(call(&mut svc).await, Ok(503));
    }
    tokio::time::advance(Duration::from_secs(12)).await;
    let probe = svc.ready().await.unwrap().call(Req::new(Body::empty()));
    drop(probe); // the client went away mid-probe
    assert_eq!(call(&mut svc).await, Ok(503), "a new probe may go");
}

#[tokio::test]
async fn in_the_gateway_a_failing_target_stops_receiving_requests() {
    let (ma, _a, mb, _b, cfg, secrets) = failing_first_chain(503).await;
    let gw = start_gateway(
        Gateway::from_config(&cfg, &secrets)
            .unwrap()
            .circuit_breaker(BreakerConfig {
                failure_threshold: 3,
                ..BreakerConfig::default()
            })
            .build(),
    )
    .await;
    let (k, v) = bearer();
    for _ in 0..10 {
        let r = post(
            &gw.url("/v1/chat/completions"),
            &[(k, &v)],
            json!({"model": "chain", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["x-nenya-attempts"], "2");
    }
    assert_eq!(
        ma.received().len(),
        3,
        "the open circuit kept requests away"
    );
    assert_eq!(mb.received().len(), 10);
}

#[tokio::test]
async fn circuit_state_and_metrics_survive_a_reload() {
    let (ma, _a, mb, _b, cfg, secrets) = failing_first_chain(503).await;
    let build = |prev: Option<&Gateway>| {
        let b = Gateway::from_config(&cfg, &secrets)
            .unwrap()
            .circuit_breaker(BreakerConfig {
                failure_threshold: 2,
                ..BreakerConfig::default()
            });
        match prev {
            Some(p) => b.carry_state_from(p).build(),
            None => b.build(),
        }
    };
    let reloadable = nenya::ReloadableGateway::new(build(None));
    let gw = start_gateway_with(reloadable.clone()).await;
    let (k, v) = bearer();
    let ask = || {
        let url = gw.url("/v1/chat/completions");
        let (k, v) = (k, v.clone());
        async move {
            let body = json!({"model": "chain", "messages": [{"role": "user", "content": "hi"}]});
            post(&url, &[(k, &v)], body.to_string()).await
        }
    };
    for _ in 0..3 {
        assert_eq!(ask().await.status, 200);
    }
    assert_eq!(ma.received().len(), 2, "open after two failures");
    reloadable.replace(build(Some(&reloadable.current())));
    for _ in 0..3 {
        assert_eq!(ask().await.status, 200);
    }
    assert_eq!(ma.received().len(), 2, "still open after the reload");
    assert_eq!(mb.received().len(), 6);
    let text = reloadable.current().metrics().render();
    assert!(text.contains("nenya_failovers_total 6"), "{text}");
    assert_eq!(
        text.matches("# TYPE nenya_circuit_open").count(),
        1,
        "no duplicate families"
    );
}

#[tokio::test]
async fn an_agent_sets_its_own_failure_threshold_and_its_circuits_are_its_own() {
    let (ma, a, mb, b, _cfg, secrets) = failing_first_chain(503).await;
    // Two agents over the same failing target: `strict` opens after one failure, `lenient`
    // after the default five; each has its own circuit.
    let cfg = nenya::config::Config::from_json_str(&format!(
        r#"{{"providers": {{
              "a": {{"url": "{}", "auth_style": "bearer"}},
              "b": {{"url": "{}", "auth_style": "bearer"}}}},
            "agents": {{
              "strict": {{"strategy": "fallback", "failure_threshold": 1, "cooldown_seconds": 60,
                "models": [{{"provider": "a", "model": "m-a"}}, {{"provider": "b", "model": "m-b"}}]}},
              "lenient": {{"strategy": "fallback",
                "models": [{{"provider": "a", "model": "m-a"}}, {{"provider": "b", "model": "m-b"}}]}}}}}}"#,
        a.url("/v1/chat/completions"),
        b.url("/v1/chat/completions")
    ))
    .unwrap();
    let gw = start_gateway(Gateway::from_config(&cfg, &secrets).unwrap().build()).await;
    let (k, v) = bearer();
    for agent in [
        "strict", "strict", "strict", "lenient", "lenient", "lenient",
    ] {
        let r = post(
            &gw.url("/v1/chat/completions"),
            &[(k, &v)],
            json!({"model": agent, "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // strict: 1 attempt at `a`, then open; lenient: all 3 reach `a` (threshold 5).
    assert_eq!(ma.received().len(), 1 + 3);
    assert_eq!(mb.received().len(), 6);
}
