//! The official `openai` and `anthropic` Python SDKs, plain and streamed, against the running
//! `nenya` binary (built-in mock upstream). The Python venv is made by `scripts/test.sh`.

mod common;

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

#[test]
fn official_python_sdks_parse_plain_and_streamed_answers() {
    let Some(py) = python() else {
        // CI and scripts/test.sh always provide the venv; a bare `cargo test` may not.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the SDK test: no .venv and no NENYA_SDK_PYTHON (run scripts/test.sh)"
        );
        eprintln!("SKIPPED: no Python venv with the SDKs; run scripts/test.sh");
        return;
    };
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
