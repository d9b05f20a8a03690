//! Three real `nenya` processes sharing one real `redis-server` (the `state` section): one
//! RPM limit held exactly across them, a breaker opened by one seen open by the others, a
//! cache entry written by one a hit on another, and Redis killed mid-load losing nothing
//! (limits fall back to each replica's own, and sharing resumes when Redis returns).
//!
//! Needs `redis-server` on the PATH (`scripts/test.sh` installs Debian's); without it the
//! tests say so and pass, unless `NENYA_REQUIRE_REDIS` is set (as the suite sets it).

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nenya::services::{Fault, MockConfig};
use serde_json::{Value, json};

/// Whether `redis-server` can be started (when not, the test is skipped, unless the suite
/// requires it).
fn redis_installed() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("NENYA_REQUIRE_REDIS").is_none(),
            "NENYA_REQUIRE_REDIS is set but there is no redis-server on the PATH"
        );
        eprintln!("SKIPPED: no redis-server on the PATH (scripts/test.sh installs it)");
    }
    ok
}

/// A `redis-server` on a loopback port, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    /// Starts one on a free port, or `None` when there is no `redis-server` to start.
    fn start() -> Option<Self> {
        if !redis_installed() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis { child: None, port };
        r.restart();
        Some(r)
    }

    /// (Re)starts the server on its port and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cmd(&["PING"]).as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no goodbye to its clients.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command over RESP; the reply as text (`None` when the server is not there).
    fn cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end();
        match line.as_bytes().first()? {
            b'+' | b':' => Some(line[1..].to_owned()),
            b'$' if line == "$-1" => Some(String::new()),
            b'$' => {
                let n: usize = line[1..].parse().ok()?;
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
            _ => Some(line.to_owned()),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

const CI_TOKEN: &str = "ci-key-token-5e1d0c2b";
const CI_BUDGET: u64 = 300;

/// Three replicas of the binary on `config`, the standard secrets and an API key `ci` with a
/// daily budget of [`CI_BUDGET`] tokens.
fn replicas(name: &str, config: &Value) -> Vec<Binary> {
    let dir = temp_dir(name);
    let cfg = dir.join("nenya.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let secrets = dir.join("secrets.json");
    std::fs::write(
        &secrets,
        json!({"client_token": CLIENT_TOKEN,
            "provider_keys": {"up": PROVIDER_KEY, "other": PROVIDER_KEY},
            "api_keys": {"ci": {"token": CI_TOKEN, "roles": ["user"], "token_budget_daily": CI_BUDGET}}})
        .to_string(),
    )
    .unwrap();
    (0..3)
        .map(|_| {
            spawn_nenya(
                &["serve"],
                &[
                    ("NENYA_CONFIG_FILE", cfg.to_str().unwrap()),
                    ("NENYA_SECRETS_DIR", secrets.to_str().unwrap()),
                    ("PORT", "0"),
                ],
            )
        })
        .collect()
}

async fn chat(bin: &Binary, model: &str, temperature: Option<f64>) -> Reply {
    let (k, v) = bearer();
    let mut body =
        json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
    if let Some(t) = temperature {
        body["temperature"] = json!(t);
    }
    post(
        &bin.url("/v1/chat/completions"),
        &[(k, &v)],
        body.to_string(),
    )
    .await
}

async fn get_json(bin: &Binary, path: &str) -> Value {
    let (k, v) = bearer();
    let req = http::Request::get(bin.url(path))
        .header(k, v)
        .body(nenya::Body::empty())
        .unwrap();
    send(req).await.json()
}

async fn metrics_of(bin: &Binary) -> String {
    let (k, v) = bearer();
    let req = http::Request::get(bin.url("/metrics"))
        .header(k, v)
        .body(nenya::Body::empty())
        .unwrap();
    send(req).await.text()
}

fn provider(mock: &Running, extra: Value) -> Value {
    let mut p = json!({"url": mock.url("/v1/chat/completions"), "auth_style": "bearer"});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    p
}

#[tokio::test]
async fn three_replicas_share_one_rpm_limit_exactly() {
    let Some(redis) = Redis::start() else { return };
    let (mock, up) = start_mock(MockConfig::default()).await;
    const RPM: usize = 12;
    let bins = replicas(
        "state-rpm",
        &json!({
            "providers": {"up": provider(&up, json!({"ratelimit_max_rpm": RPM}))},
            "agents": {"coder": {"models": [{"provider": "up", "model": "m"}]}},
            "state": {"backend": "redis", "url": redis.url()},
        }),
    );
    let started = Instant::now();
    // 60 requests at once, 20 through each replica.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let url = bins[i % 3].url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let (k, v) = bearer();
            let body = json!({"model": "coder", "messages": [{"role": "user", "content": "hi"}]});
            post(&url, &[(k, &v)], body.to_string()).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            429 => assert_eq!(
                r.json()["error"]["error_kind"],
                "rate_limited",
                "{}",
                r.text()
            ),
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    // GCRA: a burst of RPM, then one more every 60/RPM = 5 s.
    let refilled = (started.elapsed().as_secs() / 5) as usize;
    assert!(
        (RPM..=RPM + refilled).contains(&ok),
        "{ok} requests got through three replicas sharing rpm={RPM}"
    );
    assert_eq!(mock.received().len(), ok, "the upstream saw exactly those");
    for b in &bins {
        assert!(
            metrics_of(b)
                .await
                .contains("nenya_state_backend_up{backend=\"redis\"} 1")
        );
    }
}

#[tokio::test]
async fn a_breaker_opened_by_one_replica_is_open_on_the_others() {
    let Some(redis) = Redis::start() else { return };
    let (mock, up) = start_mock(MockConfig {
        fault: Some(Fault::Status(503)),
        ..MockConfig::default()
    })
    .await;
    let bins = replicas(
        "state-breaker",
        &json!({
            "providers": {"up": provider(&up, json!({}))},
            "agents": {"coder": {"models": [{"provider": "up", "model": "m"}],
                "failure_threshold": 2, "cooldown_seconds": 60}},
            "state": {"backend": "redis", "url": redis.url()},
        }),
    );
    // Let the other replicas' subscriptions settle before the change they must hear.
    for b in &bins {
        get_json(b, "/statsz").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..2 {
        let r = chat(&bins[0], "coder", None).await;
        assert_eq!(r.status, 503, "{}", r.text());
    }
    let r = chat(&bins[0], "coder", None).await;
    assert_eq!(
        r.json()["error"]["error_kind"],
        "circuit_open",
        "{}",
        r.text()
    );
    let sent = mock.received().len();
    assert_eq!(sent, 2);
    // Within a second the others have it open too (read without sending anything).
    let opened = Instant::now();
    for b in &bins[1..] {
        loop {
            let open = get_json(b, "/statsz").await["open_circuits"].clone();
            if open.as_array().is_some_and(|a| !a.is_empty()) {
                break;
            }
            assert!(
                opened.elapsed() < Duration::from_secs(1),
                "replica did not see the open circuit within 1 s: {open}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = chat(b, "coder", None).await;
        assert_eq!(
            r.json()["error"]["error_kind"],
            "circuit_open",
            "{}",
            r.text()
        );
    }
    assert_eq!(
        mock.received().len(),
        sent,
        "no replica called the failing upstream"
    );
    // A replica that starts now reads the open circuit on connecting.
    let late = replicas(
        "state-breaker-late",
        &json!({
            "providers": {"up": provider(&up, json!({}))},
            "agents": {"coder": {"models": [{"provider": "up", "model": "m"}],
                "failure_threshold": 2, "cooldown_seconds": 60}},
            "state": {"backend": "redis", "url": redis.url()},
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while get_json(&late[0], "/statsz").await["open_circuits"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(
            Instant::now() < deadline,
            "a new replica did not read the open circuit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.received().len(), sent);
}

#[tokio::test]
async fn a_cache_entry_written_by_one_replica_is_a_hit_on_another() {
    let Some(redis) = Redis::start() else { return };
    let (mock, up) = start_mock(MockConfig {
        chunks: 4,
        ..MockConfig::default()
    })
    .await;
    let bins = replicas(
        "state-cache",
        &json!({
            "providers": {"up": provider(&up, json!({}))},
            "agents": {"coder": {"models": [{"provider": "up", "model": "m"}]}},
            "response_cache": {"enabled": true},
            "state": {"backend": "redis", "url": redis.url()},
        }),
    );
    let first = chat(&bins[0], "coder", Some(0.0)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-nenya-cache"], "miss");
    // The entry reaches Redis once the answer has ended (written in the background).
    let deadline = Instant::now() + Duration::from_secs(3);
    while redis.cmd(&["ZCARD", "nenya:{cache}:idx"]).as_deref() != Some("1") {
        assert!(Instant::now() < deadline, "the entry never reached redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for b in &bins[1..] {
        let r = chat(b, "coder", Some(0.0)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers["x-nenya-cache"], "hit",
            "replica answered from the shared cache"
        );
        assert_eq!(r.text(), first.text(), "the same answer, byte for byte");
    }
    assert_eq!(
        mock.received().len(),
        1,
        "one upstream call for three replicas"
    );
    let size: usize = redis
        .cmd(&["GET", "nenya:{cache}:bytes"])
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 0 && size < 64 << 20, "accounted size {size}");
}

#[tokio::test]
async fn killing_redis_mid_load_loses_no_request_and_limits_fall_back_to_local() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (mock, up) = start_mock(MockConfig::default()).await;
    let bins = replicas(
        "state-kill",
        &json!({
            "providers": {
                "up": provider(&up, json!({"ratelimit_max_rpm": 100000})),
                "other": provider(&up, json!({"ratelimit_max_rpm": 3})),
            },
            "agents": {
                "load": {"models": [{"provider": "up", "model": "m"}]},
                "tight": {"models": [{"provider": "other", "model": "m"}]},
            },
            "state": {"backend": "redis", "url": redis.url()},
        }),
    );
    // Steady load through all three replicas; Redis dies in the middle of it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for b in &bins {
        for _ in 0..4 {
            let url = b.url("/v1/chat/completions");
            let stop = stop.clone();
            load.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (k, v) = bearer();
                    let body =
                        json!({"model": "load", "messages": [{"role": "user", "content": "hi"}]});
                    let r = post(&url, &[(k, &v)], body.to_string()).await;
                    answers.push((r.status.as_u16(), r.text()));
                }
                answers
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        for (status, text) in t.await.unwrap() {
            assert_eq!(status, 200, "a request failed while redis died: {text}");
            total += 1;
        }
    }
    assert!(total > 30, "only {total} requests in the load");
    assert_eq!(
        mock.received().len(),
        total,
        "every one reached the upstream"
    );
    for b in &bins {
        let m = metrics_of(b).await;
        assert!(
            m.contains("nenya_state_backend_up{backend=\"redis\"} 0"),
            "{m}"
        );
        let log = b.log();
        assert!(log.contains("shared state unreachable"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
    }
    // Redis down: each replica holds rpm=3 on its own (9 in all, not 3).
    let ok = tight_round(&bins).await;
    assert_eq!(ok, 9, "local limits: 3 per replica");

    // Redis back: sharing resumes (a fresh shared bucket of 3 for all three together).
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    for b in &bins {
        loop {
            let r = chat(b, "load", None).await;
            assert_eq!(r.status, 200);
            if metrics_of(b)
                .await
                .contains("nenya_state_backend_up{backend=\"redis\"} 1")
            {
                break;
            }
            assert!(Instant::now() < deadline, "sharing did not resume");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(bins[0].log().contains("sharing resumed"));
    let ok = tight_round(&bins).await;
    assert_eq!(ok, 3, "shared again: 3 for all replicas together");
}

/// Five requests to agent `tight` through each replica; how many got through.
async fn tight_round(bins: &[Binary]) -> usize {
    let mut ok = 0;
    for b in bins {
        for _ in 0..5 {
            let r = chat(b, "tight", None).await;
            match r.status.as_u16() {
                200 => ok += 1,
                429 => assert_eq!(r.json()["error"]["error_kind"], "rate_limited"),
                s => panic!("unexpected {s}: {}", r.text()),
            }
        }
    }
    ok
}

#[tokio::test]
async fn a_daily_budget_spent_through_one_replica_is_spent_on_the_others() {
    let Some(redis) = Redis::start() else { return };
    let (mock, up) = start_mock(MockConfig::default()).await;
    let bins = replicas(
        "state-budget",
        &json!({
            "providers": {"up": provider(&up, json!({}))},
            "agents": {"coder": {"models": [{"provider": "up", "model": "m"}]}},
            "state": {"backend": "redis", "url": redis.url()},
        }),
    );
    let ask = |b: &Binary| {
        let url = b.url("/v1/chat/completions");
        async move {
            let body =
                json!({"model": "coder", "messages": [{"role": "user", "content": "hello there"}]});
            let auth = format!("Bearer {CI_TOKEN}");
            post(&url, &[("authorization", &auth)], body.to_string()).await
        }
    };
    // Spend the key's budget through the first replica only.
    let mut answered = 0;
    loop {
        let r = ask(&bins[0]).await;
        if r.status == 429 {
            assert_eq!(
                r.json()["error"]["error_kind"],
                "budget_exceeded",
                "{}",
                r.text()
            );
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        answered += 1;
        assert!(answered < 100, "the budget never ran out");
    }
    let sent = mock.received().len();
    assert_eq!(sent, answered);
    // The others learn the key's use from the shared counters within a couple of seconds…
    let used = |s: Value| s["key_usage"]["ci"]["budget"]["used_today"].as_u64();
    let spent = used(get_json(&bins[0], "/statsz").await).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    for b in &bins[1..] {
        while used(get_json(b, "/statsz").await) != Some(spent) {
            assert!(Instant::now() < deadline, "replica never saw the key's use");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // …and refuse it too, without calling the upstream.
        let r = ask(b).await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.json()["error"]["error_kind"], "budget_exceeded");
    }
    assert_eq!(mock.received().len(), sent);
}

/// A three-node Redis Cluster (no replicas) on loopback ports, killed on drop.
struct Cluster {
    nodes: Vec<Redis>,
}

impl Cluster {
    fn start() -> Option<Self> {
        if !redis_installed() {
            return None;
        }
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = temp_dir(&format!("redis-cluster-{port}"));
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    dir.join("nodes.conf").to_str().unwrap(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let node = Redis {
                child: Some(child),
                port,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while node.cmd(&["PING"]).as_deref() != Some("PONG") {
                assert!(Instant::now() < deadline, "cluster node did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let ok = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all_ok = nodes.iter().all(|n| {
                n.cmd(&["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            if all_ok {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Cluster { nodes })
    }
}

#[tokio::test]
async fn replicas_share_limits_and_cache_through_a_redis_cluster() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let (mock, up) = start_mock(MockConfig::default()).await;
    let url = |n: &Redis| format!("redis://127.0.0.1:{}", n.port);
    let bins = replicas(
        "state-cluster",
        &json!({
            "providers": {"up": provider(&up, json!({"ratelimit_max_rpm": 6}))},
            "agents": {"coder": {"models": [{"provider": "up", "model": "m"}]}},
            "response_cache": {"enabled": true},
            "state": {"backend": "redis", "url": url(&cluster.nodes[0]),
                "cluster_nodes": [url(&cluster.nodes[1]), url(&cluster.nodes[2])]},
        }),
    );
    // The cluster connection is made in the background: wait until every replica shares.
    let deadline = Instant::now() + Duration::from_secs(10);
    for b in &bins {
        while !metrics_of(b)
            .await
            .contains("nenya_state_backend_up{backend=\"redis\"} 1")
        {
            assert!(
                Instant::now() < deadline,
                "replica never reached the cluster"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // An answer stored through one replica is a hit on the others.
    let first = chat(&bins[0], "coder", Some(0.0)).await;
    assert_eq!(first.headers["x-nenya-cache"], "miss");
    let deadline = Instant::now() + Duration::from_secs(3);
    while cluster
        .nodes
        .iter()
        .all(|n| n.cmd(&["ZCARD", "nenya:{cache}:idx"]).as_deref() != Some("1"))
    {
        assert!(
            Instant::now() < deadline,
            "the entry never reached the cluster"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for b in &bins[1..] {
        let r = chat(b, "coder", Some(0.0)).await;
        assert_eq!(r.headers["x-nenya-cache"], "hit");
    }
    let probes = mock.received().len();
    assert_eq!(probes, 1);
    // The rest of the shared rpm=6 (burst) goes to whoever asks first, then 429s.
    let mut ok = 0;
    for i in 0..12 {
        let r = chat(&bins[i % 3], "coder", None).await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {}
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert_eq!(
        ok + probes,
        6,
        "the cluster held one rpm=6 for three replicas"
    );
}
