//! Each example runs once (in its one-shot mode) and does what it says.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // tests run from target/<profile>/deps; examples live in target/<profile>/examples.
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    p.pop();
    p.push("examples");
    p.push(name);
    p
}

fn run(name: &str) -> String {
    let path = example(name);
    assert!(
        path.exists(),
        "example binary missing: {} (run `cargo build --examples` first; scripts/test.sh does)",
        path.display()
    );
    let out = Command::new(path)
        .env("NENYA_EXAMPLE_ONESHOT", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn standalone_example_answers_a_chat_request() {
    let out = run("standalone");
    assert!(out.contains("200 OK"), "{out}");
    assert!(out.contains("\"object\":\"chat.completion\""), "{out}");
}

#[test]
fn axum_example_mounts_the_gateway_and_guards_its_own_route() {
    let out = run("embed_in_axum");
    assert!(out.contains("/internal without token: 401"), "{out}");
    assert!(out.contains("\"error_kind\":\"unauthorized\""), "{out}");
    assert!(out.contains("/v1/messages: 200 OK"), "{out}");
    assert!(out.contains("\"type\":\"message\""), "{out}");
}
