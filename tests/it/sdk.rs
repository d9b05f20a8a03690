//! The official `openai` and `anthropic` Python SDKs, plain and streamed, against the running
//! `nenya` binary (built-in mock upstream). The Python venv is made by `scripts/test.sh`.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NENYA_SDK_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    venv.exists().then_some(venv)
}

/// The venv's Python, or `None` outside CI when there is none (CI must always have it).
fn python_or_skip() -> Option<PathBuf> {
    let py = python();
    if py.is_none() {
        // CI and scripts/test.sh always provide the venv; a bare `cargo test` may not.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the SDK test: no .venv and no NENYA_SDK_PYTHON (run scripts/test.sh)"
        );
        eprintln!("SKIPPED: no Python venv with the SDKs; run scripts/test.sh");
    }
    py
}

#[test]
fn official_python_sdks_parse_plain_and_streamed_answers() {
    let Some(py) = python_or_skip() else { return };
    let secrets = temp_dir("sdk-secrets");
    std::fs::write(
        secrets.join("client.json"),
        format!(r#"{{"client_token": "{CLIENT_TOKEN}"}}"#),
    )
    .unwrap();
    let bin = spawn_nenya(
        &["--listen", "127.0.0.1:0"],
        &[("NENYA_SECRETS_DIR", secrets.to_str().unwrap())],
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/check_sdks.py");
    let out = Command::new(py)
        .arg(script)
        .env("NENYA_URL", format!("http://{}", bin.addr))
        .env("NENYA_TOKEN", CLIENT_TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nnenya log:\n{}",
        bin.log()
    );
    assert!(stdout.contains("sdk checks passed: 16"), "{stdout}");
}

const ARGS: &str =
    r#"{"city":"Paris","units":"metric","days":[1,2,3],"note":"naïve café ☕ \"quoted\""}"#;

#[test]
fn official_sdks_assemble_tool_call_fragments_across_formats() {
    let Some(py) = python_or_skip() else { return };
    // The mock upstream as its own process, scripted to stream a tool call in 24 fragments.
    let mock = spawn_nenya(
        &[
            "mock",
            "--listen",
            "127.0.0.1:0",
            "--chunks",
            "24",
            "--thinking",
            "The user wants weather.",
            "--tool-call",
            &format!("get_weather={ARGS}"),
        ],
        &[],
    );
    let dir = temp_dir("sdk-cross");
    let cfg = dir.join("nenya.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "providers": {
                "oai": {"url": format!("http://{}/v1/chat/completions", mock.addr), "auth_style": "bearer",
                        "capabilities": {"stream_options": true}},
                "ant": {"url": format!("http://{}/v1/messages", mock.addr), "auth_style": "anthropic"}
            },
            "agents": {
                "to-oai": {"models": [{"provider": "oai", "model": "gpt-up"}]},
                "to-ant": {"models": [{"provider": "ant", "model": "claude-up"}]}
            }
        })
        .to_string(),
    )
    .unwrap();
    let secrets = dir.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(
        secrets.join("client.json"),
        format!(r#"{{"client_token": "{CLIENT_TOKEN}"}}"#),
    )
    .unwrap();
    let bin = spawn_nenya(
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("NENYA_SECRETS_DIR", secrets.to_str().unwrap())],
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/check_cross.py");
    let out = Command::new(py)
        .arg(script)
        .env("NENYA_URL", format!("http://{}", bin.addr))
        .env("NENYA_TOKEN", CLIENT_TOKEN)
        .env("NENYA_ARGS", ARGS)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cross-format SDK checks failed\nstdout:\n{stdout}\nstderr:\n{}\nnenya log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        bin.log()
    );
    assert!(stdout.contains("cross checks passed: 19"), "{stdout}");
}
