//! The config and secrets parsers: never panic on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(cfg) = nenya::config::Config::from_json_str(s) {
            let _ = cfg.warnings();
        }
        let _ = nenya::config::Secrets::from_json_str(s);
    }
});
