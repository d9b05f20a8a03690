//! Every stream converter pair on arbitrary upstream SSE: never panic, one event per frame.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nenya::adapters::stream::StreamConverter;
use nenya::model::ApiFormat;
use nenya::sse::Decoder;

const FORMATS: [ApiFormat; 3] = [ApiFormat::OpenAi, ApiFormat::Anthropic, ApiFormat::Gemini];

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let from = FORMATS[data[0] as usize % 3];
    let to = if data[0] & 0x80 == 0 {
        ApiFormat::OpenAi
    } else {
        ApiFormat::Anthropic
    };
    let mut conv = StreamConverter::new(from, to, data[0] & 0x40 != 0);
    let mut dec = Decoder::new(1 << 16);
    let mut out = Vec::new();
    let mut events = Vec::new();
    if dec.feed(&data[1..], |e| events.push(e)).is_err() {
        return;
    }
    let _ = dec.finish(|e| events.push(e));
    for e in events {
        if conv.push(e, &mut out).is_err() {
            break;
        }
    }
    let _ = conv.finish(&mut out);
    for frame in &out {
        let mut n = 0;
        let mut d = Decoder::new(1 << 20);
        d.feed(frame, |_| n += 1)
            .expect("converter output is valid SSE");
        assert_eq!(n, 1, "one event per frame");
    }
});
