//! Request decoders for both client formats, and encoding to every upstream format: never
//! panic, and every encoded request is JSON (the encoder writes its own bytes).
#![no_main]
use libfuzzer_sys::fuzz_target;
use nenya::adapters::{decode_request, encode_request};
use nenya::model::ApiFormat;

fuzz_target!(|data: &[u8]| {
    for from in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
        if let Ok(req) = decode_request(from, data) {
            for to in [ApiFormat::OpenAi, ApiFormat::Anthropic, ApiFormat::Gemini] {
                if let Ok(out) = encode_request(req.clone(), to) {
                    assert!(
                        serde_json::from_slice::<serde_json::Value>(&out).is_ok(),
                        "an encoded request is not JSON"
                    );
                }
            }
            let _ = req.estimate_tokens();
        }
    }
});
