//! The redaction engine (built-in patterns), the entropy detector and the log filter: never
//! panic on any text, and what they report as found is really gone from their output.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nenya::layers::{EntropyDetector, Redactor};
use nenya::telemetry::SecretFilter;

fn engines() -> &'static (Redactor, EntropyDetector, SecretFilter) {
    static E: OnceLock<(Redactor, EntropyDetector, SecretFilter)> = OnceLock::new();
    E.get_or_init(|| {
        let f = SecretFilter::new();
        f.set([&nenya::config::Secret::new("sk-known-secret-0123")]);
        (Redactor::builtin(), EntropyDetector::new(4.0, 20), f)
    })
}

fuzz_target!(|data: &[u8]| {
    let (redactor, entropy, filter) = engines();
    let _ = filter.scrub(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let found: Vec<String> = redactor
        .find(text)
        .iter()
        .map(|f| text[f.range.clone()].to_owned())
        .collect();
    match redactor.redact(text) {
        Some(out) => {
            assert!(!found.is_empty(), "redacted without a finding");
            assert!(out.contains("[REDACTED:"), "no label in {out:?}");
            for s in found.iter().filter(|s| s.len() >= 16) {
                assert!(!out.contains(s.as_str()), "{s:?} survived in {out:?}");
            }
        }
        None => assert!(found.is_empty(), "a finding left in place"),
    }
    let _ = entropy.redact(text);
    let scrubbed = filter.scrub(text.as_bytes());
    assert!(!String::from_utf8_lossy(&scrubbed).contains("sk-known-secret-0123"));
});
