//! Config loading: Nenya-compatible shapes, directory merge, secrets, and errors that name the
//! file, the field and what is wrong.

use std::fs;

use nenya::config::{Config, Secrets};
use nenya::services::{RouteTable, http_client};

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nenya-test-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn config_d_files_deep_merge_in_name_order() {
    let d = tmpdir("merge");
    fs::create_dir(d.join("config.d")).unwrap();
    fs::write(
        d.join("config.d/00-server.json"),
        r#"{"server": {"max_body_bytes": 1000, "listen_addr": ":9000"},
            "agents": {"a": {"models": ["gpt-4o"]}}}"#,
    )
    .unwrap();
    fs::write(
        d.join("config.d/10-agents.json"),
        r#"{"server": {"max_body_bytes": 2000},
            "agents": {"b": {"strategy": "fallback", "models": [{"provider": "ollama", "model": "q"}]}}}"#,
    )
    .unwrap();
    // Ignored: config.d has files.
    fs::write(
        d.join("config.json"),
        r#"{"server": {"max_body_bytes": 1}}"#,
    )
    .unwrap();
    let cfg = Config::load(&d).unwrap();
    assert_eq!(cfg.server.max_body_bytes, 2000, "later file wins");
    assert_eq!(
        cfg.server.listen_addr.as_deref(),
        Some(":9000"),
        "earlier field kept"
    );
    assert_eq!(cfg.agents.len(), 2, "agents merge per key");
}

#[test]
fn a_type_error_names_the_file_and_the_field() {
    let d = tmpdir("typeerr");
    fs::create_dir(d.join("config.d")).unwrap();
    fs::write(d.join("config.d/00-ok.json"), r#"{"agents": {}}"#).unwrap();
    fs::write(
        d.join("config.d/20-bad.json"),
        r#"{"server": {"max_body_bytes": "lots"}}"#,
    )
    .unwrap();
    let err = Config::load(&d).unwrap_err().to_string();
    assert!(err.contains("20-bad.json"), "{err}");
    assert!(err.contains("server.max_body_bytes"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn invalid_json_names_the_file_and_position() {
    let d = tmpdir("badjson");
    let f = d.join("nenya.json");
    fs::write(&f, "{\n  \"server\": {,\n}").unwrap();
    let err = Config::load(&f).unwrap_err().to_string();
    assert!(err.contains("nenya.json"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn unknown_provider_and_unknown_model_name_the_field() {
    let client = http_client(std::time::Duration::from_secs(1));
    let cfg = Config::from_json_str(
        r#"{"agents": {"x": {"models": ["gpt-4o", {"provider": "nope", "model": "m"}]}}}"#,
    )
    .unwrap();
    let err = RouteTable::from_config(&cfg, &Secrets::default(), &client)
        .unwrap_err()
        .to_string();
    assert!(err.contains("agents.x.models[1].provider"), "{err}");
    assert!(err.contains("unknown provider `nope`"), "{err}");

    let cfg = Config::from_json_str(r#"{"agents": {"x": {"models": ["not-a-model"]}}}"#).unwrap();
    let err = RouteTable::from_config(&cfg, &Secrets::default(), &client)
        .unwrap_err()
        .to_string();
    assert!(err.contains("agents.x.models[0]"), "{err}");

    let cfg =
        Config::from_json_str(r#"{"providers": {"mine": {"auth_style": "bearer"}}}"#).unwrap();
    let err = RouteTable::from_config(&cfg, &Secrets::default(), &client)
        .unwrap_err()
        .to_string();
    assert!(err.contains("providers.mine.url"), "{err}");

    let cfg = Config::from_json_str(
        r#"{"providers": {"mine": {"url": "ftp://x/y", "auth_style": "bearer"}}}"#,
    )
    .unwrap();
    let err = RouteTable::from_config(&cfg, &Secrets::default(), &client)
        .unwrap_err()
        .to_string();
    assert!(err.contains("absolute http(s) URL"), "{err}");

    let cfg = Config::from_json_str(r#"{"providers": {"mine": {"url": "http://x/v1/chat/completions", "auth_style": "basic"}}}"#).unwrap();
    let err = RouteTable::from_config(&cfg, &Secrets::default(), &client)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("providers.mine.auth_style") && err.contains("basic"),
        "{err}"
    );
}

#[test]
fn unimplemented_sections_are_accepted_with_one_warning_each() {
    let cfg = Config::from_json_str(
        r#"{"governance": {"cost_mode": "economy"}, "bouncer": {"enabled": true},
            "discovery": {}, "agents": {}, "server": {"secure_memory_required": false}}"#,
    )
    .unwrap();
    let w = cfg.warnings();
    // `bouncer.enabled` is implemented; the other three are not.
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w.iter().any(|s| s.contains("`governance.cost_mode`")));
    assert!(w.iter().any(|s| s.contains("`discovery`")));
    assert!(
        w.iter()
            .any(|s| s.contains("server.secure_memory_required"))
    );
}

#[test]
fn secrets_merge_from_a_directory_and_never_print() {
    let d = tmpdir("secrets");
    fs::write(d.join("client.json"), r#"{"client_token": "tok-123"}"#).unwrap();
    fs::write(
        d.join("provider_keys.json"),
        r#"{"provider_keys": {"openai": "sk-abc", "anthropic": "sk-ant-xyz"}}"#,
    )
    .unwrap();
    let s = Secrets::load_dir(&d).unwrap();
    assert_eq!(s.client_token.as_ref().unwrap().expose(), "tok-123");
    assert_eq!(s.provider_keys["anthropic"].expose(), "sk-ant-xyz");
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("tok-123") && !dbg.contains("sk-abc"), "{dbg}");
}

#[test]
fn a_bad_secrets_file_error_does_not_quote_the_secret() {
    let d = tmpdir("badsecrets");
    fs::write(
        d.join("client.json"),
        r#"{"client_token": ["sk-live-secret-value"]}"#,
    )
    .unwrap();
    let err = Secrets::load_dir(&d).unwrap_err().to_string();
    assert!(
        err.contains("client.json") && err.contains("client_token"),
        "{err}"
    );
    assert!(!err.contains("sk-live-secret-value"), "{err}");
}
