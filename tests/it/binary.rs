//! The reference binary: starts on the mock with no config, serves from a config file, and
//! exits cleanly on SIGTERM.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use nenya::services::MockConfig;
use serde_json::json;

#[tokio::test]
async fn with_no_config_and_no_keys_it_serves_every_model_from_the_mock() {
    let bin = spawn_nenya(&["--listen", "127.0.0.1:0"], &[]);
    let first = bin.log().lines().next().unwrap_or_default().to_owned();
    assert!(
        first.contains("built-in mock provider"),
        "first log line: {first}"
    );
    let r = post(
        &bin.url("/v1/chat/completions"),
        &[],
        json!({"model": "anything", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["choices"][0]["message"]["role"], "assistant");
    let r = post(
        &bin.url("/v1/messages"),
        &[],
        json!({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["type"], "message");
}

#[tokio::test]
async fn it_serves_a_config_file_with_secrets_and_json_logs() {
    let (mock, up) = start_mock(MockConfig {
        echo: true,
        ..MockConfig::default()
    })
    .await;
    let dir = temp_dir("bin-config");
    let cfg = dir.join("nenya.json");
    std::fs::write(
        &cfg,
        json!({
            "providers": {"up": {"url": format!("http://{}/v1/chat/completions", up.addr), "auth_style": "azure"}},
            "agents": {"build": {"strategy": "fallback", "models": [{"provider": "up", "model": "m-1"}]}},
            "governance": {"cost_mode": "economy"}
        })
        .to_string(),
    )
    .unwrap();
    let secrets = dir.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(
        secrets.join("client.json"),
        json!({"client_token": CLIENT_TOKEN}).to_string(),
    )
    .unwrap();
    std::fs::write(
        secrets.join("provider_keys.json"),
        json!({"provider_keys": {"up": PROVIDER_KEY}}).to_string(),
    )
    .unwrap();
    let bin = spawn_nenya(
        &["serve", "--log-format", "json"],
        &[
            ("NENYA_CONFIG_FILE", cfg.to_str().unwrap()),
            ("NENYA_SECRETS_DIR", secrets.to_str().unwrap()),
            ("PORT", "0"),
        ],
    );
    let (k, v) = bearer();
    let r = post(
        &bin.url("/v1/chat/completions"),
        &[(k, &v)],
        json!({"model": "build", "messages": [{"role": "user",
            "content": "hi, my key is AKIAQ3EXAMPLE7Z9K2LP"}]})
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = String::from_utf8_lossy(&mock.received()[0].body).into_owned();
    assert!(
        body.contains("[REDACTED:aws_access_key_id]") && !body.contains("AKIAQ3EXAMPLE7Z9K2LP"),
        "the binary redacts by default: {body}"
    );
    assert_eq!(
        mock.received()[0].headers["api-key"],
        PROVIDER_KEY,
        "azure auth style"
    );
    let log = bin.log();
    assert!(
        log.contains("`governance.cost_mode` is accepted but not implemented"),
        "{log}"
    );
    for line in log.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).expect("JSON log line");
    }
    assert!(!log.contains(PROVIDER_KEY) && !log.contains(CLIENT_TOKEN));
}

#[tokio::test]
async fn a_bad_config_fails_to_start_with_the_file_and_field_named() {
    let dir = temp_dir("bin-bad");
    let cfg = dir.join("bad.json");
    std::fs::write(
        &cfg,
        r#"{"agents": {"a": {"models": [{"provider": "ghost", "model": "m"}]}}}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nenya"))
        .args(["--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agents.a.models[0].provider") && err.contains("ghost"),
        "{err}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_stops_the_binary_cleanly() {
    let mut bin = spawn_nenya(&["--listen", "127.0.0.1:0"], &[]);
    let pid = bin.child.id().to_string();
    let start = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    loop {
        if let Some(status) = bin.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(7), "did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bin.log().contains("stopped"));
}

/// Sends `sig` to the binary (the test machine has `kill`).
fn signal(bin: &Binary, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &bin.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[tokio::test]
async fn sighup_reloads_the_config_and_a_broken_one_keeps_the_old() {
    let (ma, a) = start_mock(MockConfig::default()).await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    // A stream slow enough to be in flight across the reload.
    let (ms, slow) = start_mock(MockConfig {
        chunks: 10,
        delay: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    let dir = temp_dir("bin-reload");
    let cfg = dir.join("nenya.json");
    let write = |target: &Running| {
        let c = json!({
            "providers": {
                "up": {"url": format!("http://{}/v1/chat/completions", target.addr), "auth_style": "none"},
                "slow": {"url": format!("http://{}/v1/chat/completions", slow.addr), "auth_style": "none"}
            },
            "agents": {"build": {"models": [{"provider": "up", "model": "m"}]},
                       "slowpoke": {"models": [{"provider": "slow", "model": "m"}]}}
        });
        std::fs::write(&cfg, c.to_string()).unwrap();
    };
    write(&a);
    let bin = spawn_nenya(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("NENYA_CONFIG_FILE", cfg.to_str().unwrap())],
    );
    let ask = |model: &'static str, stream: bool| {
        let url = bin.url("/v1/chat/completions");
        async move {
            let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
            post(&url, &[], body.to_string()).await
        }
    };
    assert_eq!(ask("build", false).await.status, 200);
    assert_eq!((ma.received().len(), mb.received().len()), (1, 0));

    // Start a slow stream, then reload to point `build` at b.
    let in_flight = tokio::spawn(ask("slowpoke", true));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(ms.received().len(), 1, "the slow stream has started");
    write(&b);
    signal(&bin, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bin.log().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload: {}", bin.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ask("build", false).await.status, 200);
    assert_eq!(
        (ma.received().len(), mb.received().len()),
        (1, 1),
        "the new target"
    );
    let streamed = in_flight.await.unwrap();
    assert_eq!(streamed.status, 200);
    assert!(
        streamed.text().trim_end().ends_with("data: [DONE]"),
        "the stream across the reload completed"
    );

    // A broken config is rejected; the previous one keeps serving.
    std::fs::write(&cfg, "{ not json").unwrap();
    signal(&bin, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bin.log().contains("reload rejected") {
        assert!(Instant::now() < deadline, "no rejection: {}", bin.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(bin.log().contains("nenya.json"), "the error names the file");
    assert_eq!(ask("build", false).await.status, 200);
    assert_eq!(mb.received().len(), 2);
}

#[tokio::test]
async fn post_admin_reload_swaps_the_config_for_admins_only() {
    let (ma, a) = start_mock(MockConfig::default()).await;
    let (mb, b) = start_mock(MockConfig::default()).await;
    let dir = temp_dir("bin-admin-reload");
    let cfg = dir.join("nenya.json");
    let write = |target: &Running| {
        let c = json!({
            "providers": {"up": {"url": format!("http://{}/v1/chat/completions", target.addr), "auth_style": "none"}},
            "agents": {"build": {"models": [{"provider": "up", "model": "m"}]}}
        });
        std::fs::write(&cfg, c.to_string()).unwrap();
    };
    write(&a);
    let secrets = dir.join("secrets.json");
    std::fs::write(
        &secrets,
        json!({"client_token": CLIENT_TOKEN, "api_keys": {"dev": {"name": "dev",
            "token": "nk-dev-user-0123456789abcdef", "roles": ["user"]}}})
        .to_string(),
    )
    .unwrap();
    let bin = spawn_nenya(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("NENYA_CONFIG_FILE", cfg.to_str().unwrap()),
            ("NENYA_SECRETS_DIR", secrets.to_str().unwrap()),
        ],
    );
    let (k, admin) = bearer();
    let user = "Bearer nk-dev-user-0123456789abcdef";
    let ask = || {
        let url = bin.url("/v1/chat/completions");
        async move {
            let body = json!({"model": "build", "messages": [{"role": "user", "content": "hi"}]});
            post(&url, &[("authorization", user)], body.to_string()).await
        }
    };
    let statsz = || async {
        send(
            http::Request::get(bin.url("/statsz"))
                .body(nenya::Body::empty())
                .unwrap(),
        )
        .await
        .json()
    };
    assert_eq!(ask().await.status, 200);
    assert_eq!(statsz().await["config_generation"], 1);
    write(&b);
    let reload = bin.url("/admin/reload");
    let r = post(&reload, &[("authorization", user)], "").await;
    assert_eq!(r.status, 403, "a user key may not reload: {}", r.text());
    let r = post(&reload, &[(k, &admin)], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reloaded"], true);
    assert_eq!(ask().await.status, 200);
    assert_eq!(
        (ma.received().len(), mb.received().len()),
        (1, 1),
        "the new target"
    );
    assert_eq!(statsz().await["config_generation"], 2);
    // A broken config: 422 saying why; the previous one keeps serving.
    std::fs::write(&cfg, r#"{"agents": {"build": {"models": []}}}"#).unwrap();
    let r = post(&reload, &[(k, &admin)], "").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["reloaded"], false);
    assert!(r.text().contains("agents.build.models"), "{}", r.text());
    assert_eq!(ask().await.status, 200);
    assert_eq!(mb.received().len(), 2);
    assert_eq!(statsz().await["config_generation"], 2);
}

/// systemd credentials: `LoadCredential=secrets:…` puts one JSON file at
/// `$CREDENTIALS_DIRECTORY/secrets`; it wins over `NENYA_SECRETS_DIR`.
#[tokio::test]
async fn secrets_come_from_the_systemd_credentials_directory() {
    let dir = temp_dir("bin-creds");
    std::fs::write(
        dir.join("secrets"),
        json!({"client_token": CLIENT_TOKEN}).to_string(),
    )
    .unwrap();
    let other = temp_dir("bin-creds-other");
    std::fs::write(
        other.join("a.json"),
        json!({"client_token": "not-this-one-0123456789"}).to_string(),
    )
    .unwrap();
    let bin = spawn_nenya(
        &["--listen", "127.0.0.1:0"],
        &[
            ("CREDENTIALS_DIRECTORY", dir.to_str().unwrap()),
            ("NENYA_SECRETS_DIR", other.to_str().unwrap()),
        ],
    );
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let r = post(&bin.url("/v1/chat/completions"), &[], body.clone()).await;
    assert_eq!(r.status, 401, "the credential's token is required");
    let (k, v) = bearer();
    let r = post(&bin.url("/v1/chat/completions"), &[(k, &v)], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Socket activation: `systemd-socket-activate` binds the port and starts nenya on the first
/// connection with the socket as `LISTEN_FDS`; nenya serves on it without binding its own.
#[test]
fn serves_on_a_socket_passed_by_the_service_manager() {
    let tool = which("systemd-socket-activate").expect(
        "systemd-socket-activate is needed (Debian's systemd package; scripts/test.sh installs it)",
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = std::process::Command::new(tool)
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            env!("CARGO_BIN_EXE_nenya"),
        ])
        .env_remove("NENYA_CONFIG_FILE")
        .env_remove("NENYA_CONFIG_DIR")
        .env_remove("NENYA_SECRETS_DIR")
        .env_remove("PORT")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut activated = Activated {
        child,
        log: Default::default(),
    };
    activated.collect_logs();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Wait until the activator has bound the port (it starts nenya on the first connection).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the activator never listened: {}",
            activated.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A request waits in the socket's backlog until nenya accepts it.
    let reply = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(20),
            send(http::Request::get(&url).body(nenya::Body::empty()).unwrap()),
        )
        .await
    });
    let reply = reply.unwrap_or_else(|_| panic!("no answer; log:\n{}", activated.log()));
    assert_eq!(reply.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !activated.log().contains("socket activation") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        activated.log().contains("socket activation"),
        "{}",
        activated.log()
    );
    assert!(
        !activated.log().contains("cannot listen"),
        "{}",
        activated.log()
    );
}

/// A process under the activator, killed on drop, its output collected.
struct Activated {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Activated {
    fn collect_logs(&mut self) {
        use std::io::{BufRead, BufReader};
        let out = self.child.stdout.take().unwrap();
        let err = self.child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A config file with one agent `slow` on `mock`, no auth.
fn slow_agent_config(name: &str, mock: &Running) -> std::path::PathBuf {
    let cfg = temp_dir(name).join("nenya.json");
    std::fs::write(
        &cfg,
        json!({
            "providers": {"up": {"url": format!("http://{}/v1/chat/completions", mock.addr), "auth_style": "none"}},
            "agents": {"slow": {"models": [{"provider": "up", "model": "m"}]}}
        })
        .to_string(),
    )
    .unwrap();
    cfg
}

/// Starts `n` streamed requests for the `slow` agent; each yields (status, body).
fn start_streams(
    bin: &Binary,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(http::StatusCode, String)>> {
    (0..n)
        .map(|_| {
            let url = bin.url("/v1/chat/completions");
            tokio::spawn(async move {
                let body = json!({"model": "slow", "stream": true,
                    "messages": [{"role": "user", "content": "hi"}]});
                let r = post(&url, &[], body.to_string()).await;
                (r.status, r.text())
            })
        })
        .collect()
}

/// A stream that arrived whole: every content chunk, then `[DONE]`.
fn assert_whole_stream(status: http::StatusCode, text: &str, chunks: usize) {
    assert_eq!(status, 200, "{text}");
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "cut short: {text}"
    );
    let content = sse_events(text)
        .iter()
        .filter(|(_, d)| d.contains("\"content\""))
        .count();
    assert!(content >= chunks, "{content} of {chunks} chunks: {text}");
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_during_200_streams_completes_them_and_refuses_new_connections() {
    const STREAMS: usize = 200;
    let (mock, up) = start_mock(MockConfig {
        chunks: 10,
        delay: Duration::from_millis(150),
        ..MockConfig::default()
    })
    .await;
    let cfg = slow_agent_config("bin-drain", &up);
    let mut bin = spawn_nenya(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("NENYA_CONFIG_FILE", cfg.to_str().unwrap())],
    );
    let streams = start_streams(&bin, STREAMS);
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.streams_in_flight() < STREAMS {
        assert!(
            Instant::now() < deadline,
            "only {} streams started",
            mock.streams_in_flight()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&bin, "-TERM");
    let signalled = Instant::now();
    // The listener closes at once: a new connection is refused while the streams drain.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::net::TcpStream::connect(bin.addr).await {
            Err(_) => break,
            Ok(_) => {
                assert!(Instant::now() < deadline, "still accepting after SIGTERM");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(
        mock.streams_in_flight() > 0,
        "the refusal was checked while streams were in flight"
    );
    for s in streams {
        let (status, text) = s.await.unwrap();
        assert_whole_stream(status, &text, 10);
    }
    // Well inside the 5 s grace period, and a clean exit.
    loop {
        if let Some(status) = bin.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "did not exit within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = bin.log();
    assert!(!log.contains("grace period over"), "{log}");
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_under_load_drops_nothing() {
    let (mock, up) = start_mock(MockConfig {
        chunks: 8,
        delay: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    let cfg = slow_agent_config("bin-hup-load", &up);
    let bin = spawn_nenya(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("NENYA_CONFIG_FILE", cfg.to_str().unwrap())],
    );
    // 100 long streams, plus short requests arriving all through the reloads.
    let streams = start_streams(&bin, 100);
    let url = bin.url("/v1/chat/completions");
    let short = tokio::spawn(async move {
        let mut statuses = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1200) {
            let body = json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}]});
            statuses.push(post(&url, &[], body.to_string()).await.status);
        }
        statuses
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        signal(&bin, "-HUP");
    }
    let statuses = short.await.unwrap();
    assert!(statuses.len() > 3, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for s in streams {
        let (status, text) = s.await.unwrap();
        assert_whole_stream(status, &text, 8);
    }
    let reloads = bin.log().matches("configuration reloaded").count();
    assert!(reloads >= 1, "reloaded during the load: {}", bin.log());
    assert_eq!(mock.received().len(), 100 + statuses.len());
}

#[tokio::test]
async fn idle_the_binary_holds_no_tokenizer_tables() {
    // The o200k tables are about 75 MiB; they load only once a request comes near its budget.
    let bin = spawn_nenya(&["--listen", "127.0.0.1:0"], &[]);
    let r = post(
        &bin.url("/v1/chat/completions"),
        &[],
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", bin.child.id())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss_kib < 48 << 10, "idle RSS {rss_kib} KiB");
}
