//! The SSE decoder: any bytes, split anywhere, never panic; splits never change the events.
//! The stream guard's JSON scan never accepts an event's text that serde_json refuses.
//! The usage tap's read of a `usage` value says what serde_json says.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nenya::sse::Decoder;

fuzz_target!(|data: &[u8]| {
    nenya::model::fuzz_usage_read(data);
    if let Ok(text) = std::str::from_utf8(data)
        && nenya::sse::surely_json(data)
    {
        assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok());
    }
    if data.is_empty() {
        return;
    }
    let cut = data[0] as usize % data.len();
    let body = &data[1..];
    let cut = cut.min(body.len());
    let mut whole = Vec::new();
    let mut d = Decoder::new(4096);
    let ok_whole = d
        .feed(body, |e| whole.push(e))
        .and_then(|_| d.finish(|e| whole.push(e)));
    let mut split = Vec::new();
    let mut d = Decoder::new(4096);
    let ok_split = d
        .feed(&body[..cut], |e| split.push(e))
        .and_then(|_| d.feed(&body[cut..], |e| split.push(e)))
        .and_then(|_| d.finish(|e| split.push(e)));
    if ok_whole.is_ok() && ok_split.is_ok() {
        assert_eq!(whole, split);
    }
});
