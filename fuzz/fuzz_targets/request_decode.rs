//! Request decoders for both client formats, and encoding to every upstream format: never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nenya::adapters::{decode_request, encode_request};
use nenya::model::ApiFormat;

fuzz_target!(|data: &[u8]| {
    for from in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
        if let Ok(req) = decode_request(from, data) {
            for to in [ApiFormat::OpenAi, ApiFormat::Anthropic, ApiFormat::Gemini] {
                let _ = encode_request(req.clone(), to);
            }
            let _ = req.estimate_tokens();
        }
    }
});
