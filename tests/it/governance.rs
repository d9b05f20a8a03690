//! Governance over loopback HTTP (issue 13): daily token budgets per key (running out at the
//! right request, resetting at the UTC day boundary on a controlled clock), `fill` and
//! `always` tiers against a provider's daily budget, cost accounting against the price table,
//! and the per-request cost ceiling.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use nenya::Gateway;
use nenya::config::{Config, Secrets};
use nenya::layers::Ledger;
use nenya::model::ApiFormat;
use nenya::services::MockConfig;
use serde_json::{Value, json};

const CI_TOKEN: &str = "nk-ci-key-0123456789abcdef";
const FILL_TOKEN: &str = "nk-fill-key-0123456789abcd";
const VIP_TOKEN: &str = "nk-vip-key-0123456789abcde";

/// 2026-11-25 23:59:00 UTC.
const LATE: u64 = 1_795_651_140;

fn config(a: &Running, b: &Running, extra: Value) -> Config {
    let mut c = json!({
        "providers": {
            "up": {"url": format!("http://{}/v1/chat/completions", a.addr), "auth_style": "none",
                   "capabilities": {"stream_options": true}},
            "other": {"url": format!("http://{}/v1/chat/completions", b.addr), "auth_style": "none"}
        },
        "agents": {
            "build": {"strategy": "fallback", "models": [{"provider": "up", "model": "m-1"}]},
            "chain": {"strategy": "fallback", "models": [{"provider": "up", "model": "m-1"},
                                                         {"provider": "other", "model": "m-2"}]}
        },
        "pricing": {
            "up/m-1": {"input_cost_per_1m": 1000.0, "output_cost_per_1m": 3000.0},
            "m-2": {"input_cost_per_1m": 10.0, "output_cost_per_1m": 20.0}
        }
    });
    merge(&mut c, extra);
    Config::from_json_str(&c.to_string()).unwrap()
}

fn secrets(keys: Value) -> Secrets {
    Secrets::from_json_str(&json!({"api_keys": keys}).to_string()).unwrap()
}

fn key(token: &str, extra: Value) -> Value {
    let mut k = json!({"token": token, "roles": ["user"]});
    merge(&mut k, extra);
    k
}

const PROMPT: &str = "count the tokens of this prompt";

fn body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": PROMPT}]}).to_string()
}

async fn ask(gw: &Running, token: &str, model: &str) -> Reply {
    let auth = format!("Bearer {token}");
    post(
        &gw.url("/v1/chat/completions"),
        &[("authorization", &auth)],
        body(model),
    )
    .await
}

/// The tokens one answer uses (prompt + completion, as the client is told).
fn used(r: &Reply) -> u64 {
    let u = &r.json()["usage"];
    u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
}

/// What the quota layer reserves for the request before it is sent.
fn estimate() -> u64 {
    nenya::adapters::decode_request(ApiFormat::OpenAi, body("build").as_bytes())
        .unwrap()
        .estimate_tokens()
}

async fn statsz(gw: &Running) -> Value {
    let r = send(
        http::Request::get(gw.url("/statsz"))
            .body(nenya::Body::empty())
            .unwrap(),
    )
    .await;
    r.json()
}

async fn mocks() -> (
    (nenya::services::MockProvider, Running),
    (nenya::services::MockProvider, Running),
) {
    (
        start_mock(MockConfig::default()).await,
        start_mock(MockConfig::default()).await,
    )
}

/// One answer's token use, measured through a gateway without budgets.
async fn tokens_per_answer(a: &Running, b: &Running) -> u64 {
    let gw = start_gateway(
        Gateway::from_config(
            &config(a, b, json!({})),
            &secrets(json!({"ci": key(CI_TOKEN, json!({}))})),
        )
        .unwrap()
        .build(),
    )
    .await;
    let r = ask(&gw, CI_TOKEN, "build").await;
    assert_eq!(r.status, 200, "{}", r.text());
    used(&r)
}

#[tokio::test]
async fn a_daily_key_budget_runs_out_at_the_right_request_and_resets_at_utc_midnight() {
    let ((mock, a), (_mb, b)) = mocks().await;
    let u = tokens_per_answer(&a, &b).await;
    let e = estimate();
    // Room for exactly three answers: the fourth's reservation no longer fits.
    let budget = 3 * u + e - 1;
    let now = Arc::new(AtomicU64::new(LATE));
    let clock = now.clone();
    let ledger = Ledger::with_clock(Arc::new(move || clock.load(Ordering::Relaxed)));
    let gw = start_gateway(
        Gateway::from_config(
            &config(&a, &b, json!({})),
            &secrets(json!({
                "ci": key(CI_TOKEN, json!({"token_budget_daily": budget})),
                "vip": key(VIP_TOKEN, json!({}))
            })),
        )
        .unwrap()
        .ledger(ledger)
        .build(),
    )
    .await;
    let before = mock.received().len();
    for i in 0..3 {
        let r = ask(&gw, CI_TOKEN, "build").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = ask(&gw, CI_TOKEN, "build").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["error_kind"], "budget_exceeded");
    assert_eq!(r.json()["error"]["type"], "insufficient_quota");
    assert_eq!(
        mock.received().len() - before,
        3,
        "the refused request never left"
    );
    // Another key is not affected.
    assert_eq!(ask(&gw, VIP_TOKEN, "build").await.status, 200);
    let s = statsz(&gw).await;
    let ci = &s["key_usage"]["ci"];
    assert_eq!(ci["budget"]["used_today"], 3 * u, "{s}");
    assert_eq!(ci["budget"]["token_budget_daily"], budget);
    assert_eq!(ci["requests"], 3);

    // One minute later it is a new UTC day.
    now.store(LATE + 60, Ordering::Relaxed);
    let r = ask(&gw, CI_TOKEN, "build").await;
    assert_eq!(r.status, 200, "after midnight: {}", r.text());
    let s = statsz(&gw).await;
    assert_eq!(s["key_usage"]["ci"]["budget"]["used_today"], u, "{s}");
}

#[tokio::test]
async fn fill_tier_keys_stop_at_the_provider_budget_and_always_tier_keys_do_not() {
    let ((ma, a), (mb, b)) = mocks().await;
    let u = tokens_per_answer(&a, &b).await;
    let gw = start_gateway(
        Gateway::from_config(
            &config(
                &a,
                &b,
                json!({"providers": {"up": {"token_budget_daily": u}}}),
            ),
            &secrets(json!({
                "vip": key(VIP_TOKEN, json!({"budget_tier": "always"})),
                "filler": key(FILL_TOKEN, json!({"budget_tier": "fill"}))
            })),
        )
        .unwrap()
        .build(),
    )
    .await;
    let before = ma.received().len();
    // The always-tier key spends the provider's budget, and goes on past it.
    for _ in 0..2 {
        let r = ask(&gw, VIP_TOKEN, "build").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The fill-tier key finds no room on `up`...
    let r = ask(&gw, FILL_TOKEN, "build").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["error_kind"], "budget_exceeded");
    assert_eq!(ma.received().len() - before, 2);
    // ...and with a chain, it is served by the next provider.
    let r = ask(&gw, FILL_TOKEN, "chain").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mb.received().len(), 1);
    assert_eq!(ma.received().len() - before, 2, "`up` was not asked");
    let s = statsz(&gw).await;
    assert_eq!(s["provider_budgets"]["up"]["used_today"], 2 * u, "{s}");
}

#[tokio::test]
async fn costs_in_statsz_and_metrics_are_the_price_table_times_the_usage() {
    let ((_ma, a), (_mb, b)) = mocks().await;
    let gw = start_gateway(
        Gateway::from_config(
            &config(&a, &b, json!({})),
            &secrets(json!({"ci": key(CI_TOKEN, json!({})), "vip": key(VIP_TOKEN, json!({}))})),
        )
        .unwrap()
        .build(),
    )
    .await;
    let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
    for (token, name, model, (pin, pout)) in [
        (CI_TOKEN, "ci", "build", (1000.0, 3000.0)),
        (CI_TOKEN, "ci", "build", (1000.0, 3000.0)),
        (VIP_TOKEN, "vip", "build", (1000.0, 3000.0)),
    ] {
        let r = ask(&gw, token, model).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let u = &r.json()["usage"];
        let cost = (u["prompt_tokens"].as_f64().unwrap() * pin
            + u["completion_tokens"].as_f64().unwrap() * pout)
            / 1e6;
        *expected.entry(name).or_default() += cost;
    }
    // A stream, priced from its usage chunk.
    let auth = format!("Bearer {VIP_TOKEN}");
    let r = post(
        &gw.url("/v1/chat/completions"),
        &[("authorization", &auth)],
        json!({"model": "build", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": PROMPT}]})
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let usage = sse_events(&r.text())
        .into_iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(&d).ok())
        .find(|v| v["usage"].is_object())
        .expect("usage chunk")["usage"]
        .clone();
    *expected.entry("vip").or_default() += (usage["prompt_tokens"].as_f64().unwrap() * 1000.0
        + usage["completion_tokens"].as_f64().unwrap() * 3000.0)
        / 1e6;

    let s = statsz(&gw).await;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    for (name, cost) in &expected {
        let got = s["key_usage"][name]["cost_usd"].as_f64().unwrap();
        assert!(close(got, *cost), "{name}: {got} vs {cost}: {s}");
    }
    let total: f64 = expected.values().sum();
    assert!(close(s["cost_usd"].as_f64().unwrap(), total), "{s}");
    let metrics = scrape_metrics(&gw).await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                r#"nenya_cost_usd_total{key="ci",agent="build",provider="up",model="m-1"}"#,
            )
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(close(v, expected["ci"]), "{line}");
}

#[tokio::test]
async fn the_cost_ceiling_skips_an_expensive_target_and_refuses_when_none_is_cheap_enough() {
    let ((ma, a), (mb, b)) = mocks().await;
    // At 1,000 USD per million input tokens the estimate alone is a few cents.
    let ceiling = (estimate() as f64 * 1000.0 / 1e6) / 2.0;
    let gw = start_gateway(
        Gateway::from_config(
            &config(
                &a,
                &b,
                json!({"governance": {"max_cost_per_request": ceiling}}),
            ),
            &secrets(json!({"ci": key(CI_TOKEN, json!({}))})),
        )
        .unwrap()
        .build(),
    )
    .await;
    let r = ask(&gw, CI_TOKEN, "chain").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((ma.received().len(), mb.received().len()), (0, 1));
    // Anthropic client, only the expensive target: a 400 in its own shape.
    let auth = format!("Bearer {CI_TOKEN}");
    let r = post(
        &gw.url("/v1/messages"),
        &[("authorization", &auth)],
        json!({"model": "build", "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}]})
            .to_string(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["error_kind"], "cost_limit_exceeded");
    assert_eq!(ma.received().len(), 0);
}

#[test]
fn a_bad_budget_tier_names_the_field() {
    let s = secrets(json!({"ci": key(CI_TOKEN, json!({"budget_tier": "sometimes"}))}));
    let e = s.key_quotas().unwrap_err().to_string();
    assert!(
        e.contains("api_keys.ci.budget_tier") && e.contains("sometimes"),
        "{e}"
    );
    assert!(!e.contains(CI_TOKEN));
}

/// A gateway with balanced routing at these weights over the `chain` agent.
async fn balanced_gateway(a: &Running, b: &Running, latency: f64, cost: f64) -> Running {
    start_gateway(
        Gateway::from_config(
            &config(
                a,
                b,
                json!({"governance": {"routing_strategy": "balanced",
                    "routing_latency_weight": latency, "routing_cost_weight": cost}}),
            ),
            &secrets(json!({"ci": key(CI_TOKEN, json!({}))})),
        )
        .unwrap()
        .build(),
    )
    .await
}

#[tokio::test]
async fn balanced_routing_prefers_the_cheaper_target_by_cost_weight() {
    let ((ma, a), (mb, b)) = mocks().await;
    let gw = balanced_gateway(&a, &b, 0.0, 1.0).await;
    for _ in 0..8 {
        assert_eq!(ask(&gw, CI_TOKEN, "chain").await.status, 200);
    }
    // `up/m-1` costs 4,000 USD per million (in + out), `m-2` 30: the cheap one always leads.
    assert_eq!((ma.received().len(), mb.received().len()), (0, 8));
}

#[tokio::test]
async fn balanced_routing_by_latency_weight_settles_on_the_faster_target() {
    let (ma, a) = start_mock(MockConfig::default()).await;
    let (mb, b) = start_mock(MockConfig {
        fault: Some(nenya::services::Fault::Slow(120)),
        ..MockConfig::default()
    })
    .await;
    let gw = balanced_gateway(&a, &b, 1.0, 0.0).await;
    for _ in 0..10 {
        assert_eq!(ask(&gw, CI_TOKEN, "chain").await.status, 200);
    }
    // Each target is measured once (an unmeasured target goes first), then the fast one wins.
    assert_eq!(mb.received().len(), 1, "the slow target was only measured");
    assert_eq!(ma.received().len(), 9);
}

#[tokio::test]
async fn a_bad_routing_strategy_or_weight_names_the_field() {
    let (a, b) = (
        Running::at("127.0.0.1:1".parse().unwrap()),
        Running::at("127.0.0.1:2".parse().unwrap()),
    );
    for (extra, field) in [
        (
            json!({"routing_strategy": "cheapest"}),
            "governance.routing_strategy",
        ),
        (
            json!({"routing_strategy": "balanced", "routing_cost_weight": 11.0}),
            "governance.routing_cost_weight",
        ),
    ] {
        let e = Gateway::from_config(
            &config(&a, &b, json!({"governance": extra})),
            &Secrets::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(field), "{e}");
    }
}
