//! Token usage per agent, provider and model, read from the answers as they stream by.
//!
//! [`UsageLayer`] wraps a service of `Request<ChatRequest>` → `Response<Body>` whose answers
//! are in the client's format (the gateway sits it after the router). It wraps each successful
//! answer's body in a tap that passes every frame on at once and only looks at it: the usage
//! chunk of an OpenAI stream, Anthropic's `message_start` / `message_delta`, the `usage` object
//! of a JSON answer. When the answer ends, or the client goes away, the totals are recorded in a
//! [`UsageMeter`]; an answer that reported nothing is counted with the request's estimated
//! prompt tokens and marked `estimated`.
//!
//! ```
//! use nenya::layers::{UsageLabels, UsageLayer, UsageMeter};
//! use nenya::model::{ApiFormat, ChatRequest};
//! use nenya::{Body, Error};
//! use http_body_util::BodyExt;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let meter = UsageMeter::new();
//! let svc = ServiceBuilder::new()
//!     .layer(UsageLayer::new(meter.clone(), |_: &http::Request<ChatRequest>| {
//!         UsageLabels::new("build", "openai", "gpt-4o")
//!     }))
//!     .service(service_fn(|_req: http::Request<ChatRequest>| async {
//!         let mut r = http::Response::new(Body::from(r#"{"usage":{"prompt_tokens":12,"completion_tokens":5}}"#));
//!         r.headers_mut().insert("content-type", "application/json".parse().unwrap());
//!         Ok::<_, Error>(r)
//!     }));
//! let req = nenya::adapters::decode_request(ApiFormat::OpenAi, br#"{"model":"build","messages":[]}"#).unwrap();
//! let resp = svc.oneshot(http::Request::new(req)).await.unwrap();
//! resp.into_body().collect().await.unwrap();
//! let t = meter.totals();
//! assert_eq!((t[0].1.prompt, t[0].1.completion), (12, 5));
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use serde_json::Value;
use tower::Service;
use tower_layer::Layer;

use crate::Body;
use crate::adapters::providers::Price;
use crate::body::{Observed, Observer};
use crate::model::{ApiFormat, ChatRequest, Settlement, Usage, UsageCounts, UsageHook};
use crate::pricing::PriceTable;
use crate::sse::Decoder;

/// The word every usage-carrying event holds (most stream events do not).
static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"usage"));

/// A JSON answer is read for its usage up to this size; beyond it, the usage is estimated.
const JSON_LIMIT: usize = 4 << 20;

/// Who used the tokens.
///
/// ```
/// let l = nenya::layers::UsageLabels::new("build", "openai", "gpt-4o");
/// assert_eq!(&*l.agent, "build");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsageLabels {
    /// What the client asked for (an agent or a model).
    pub agent: Arc<str>,
    /// The provider that answered.
    pub provider: Arc<str>,
    /// The upstream model.
    pub model: Arc<str>,
    /// The caller's key name (empty when the gateway has no named keys).
    pub key: Arc<str>,
}

impl UsageLabels {
    /// Labels from three names, for no key in particular.
    pub fn new(agent: &str, provider: &str, model: &str) -> Self {
        Self {
            agent: agent.into(),
            provider: provider.into(),
            model: model.into(),
            key: "".into(),
        }
    }

    /// The same labels, for the caller `key`.
    pub fn with_key(mut self, key: Arc<str>) -> Self {
        self.key = key;
        self
    }
}

/// Totals for one set of labels.
///
/// ```
/// assert_eq!(nenya::layers::UsageTotals::default().requests, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Answers counted.
    pub requests: u64,
    /// Of which the upstream reported no usage (prompt estimated, completion unknown).
    pub estimated: u64,
    /// Prompt tokens, cached included.
    pub prompt: u64,
    /// Completion tokens (reasoning included).
    pub completion: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
    /// Cost in billionths of a USD, at the target's price (answers without a price add 0).
    pub cost_nano_usd: u64,
}

impl UsageTotals {
    /// The cost in USD.
    pub fn cost_usd(&self) -> f64 {
        self.cost_nano_usd as f64 / 1e9
    }
}

/// Where usage accumulates. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct UsageMeter {
    inner: Arc<Mutex<BTreeMap<UsageLabels, UsageTotals>>>,
}

impl UsageMeter {
    /// An empty meter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every set of labels with its totals, in label order.
    pub fn totals(&self) -> Vec<(UsageLabels, UsageTotals)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn record(&self, labels: &UsageLabels, usage: Option<Usage>, s: &Settlement) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let t = map.entry(labels.clone()).or_default();
        t.requests += 1;
        t.estimated += u64::from(s.estimated);
        t.prompt += s.prompt;
        t.completion += s.completion;
        t.cached += s.cached;
        t.reasoning += usage.map_or(0, |u| u.reasoning);
        t.cost_nano_usd += s.cost_usd.map_or(0, |c| (c * 1e9).round() as u64);
    }
}

/// Layer that applies [`UsageTap`].
pub struct UsageLayer<L> {
    meter: UsageMeter,
    labels: Arc<L>,
    prices: Option<PriceTable>,
}

impl<L> Clone for UsageLayer<L> {
    fn clone(&self) -> Self {
        Self {
            meter: self.meter.clone(),
            labels: self.labels.clone(),
            prices: self.prices.clone(),
        }
    }
}

impl<L> std::fmt::Debug for UsageLayer<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageLayer").finish_non_exhaustive()
    }
}

impl<L> UsageLayer<L> {
    /// Records into `meter`, under the labels `labels` gives each request.
    pub fn new(meter: UsageMeter, labels: L) -> Self {
        Self {
            meter,
            labels: Arc::new(labels),
            prices: None,
        }
    }

    /// Prices each answer (by its labels' provider and model) into
    /// [`UsageTotals::cost_nano_usd`] and the [`Settlement`] handed to a [`UsageHook`].
    pub fn with_prices(mut self, prices: PriceTable) -> Self {
        self.prices = Some(prices);
        self
    }
}

impl<S, L> Layer<S> for UsageLayer<L> {
    type Service = UsageTap<S, L>;
    fn layer(&self, inner: S) -> UsageTap<S, L> {
        UsageTap {
            inner,
            meter: self.meter.clone(),
            labels: self.labels.clone(),
            prices: self.prices.clone(),
        }
    }
}

/// Taps each successful answer for its usage; settles the request's [`UsageHook`], if any,
/// with it.
pub struct UsageTap<S, L> {
    inner: S,
    meter: UsageMeter,
    labels: Arc<L>,
    prices: Option<PriceTable>,
}

impl<S: Clone, L> Clone for UsageTap<S, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            meter: self.meter.clone(),
            labels: self.labels.clone(),
            prices: self.prices.clone(),
        }
    }
}

impl<S: std::fmt::Debug, L> std::fmt::Debug for UsageTap<S, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageTap")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, L> Service<Request<ChatRequest>> for UsageTap<S, L>
where
    S: Service<Request<ChatRequest>, Response = Response<Body>>,
    L: Fn(&Request<ChatRequest>) -> UsageLabels,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ChatRequest>) -> Self::Future {
        let labels = (self.labels)(&req);
        let price = self
            .prices
            .as_ref()
            .and_then(|p| p.price(&labels.provider, &labels.model));
        let recorder = Recorder {
            meter: self.meter.clone(),
            labels,
            price,
            hook: req.extensions_mut().remove::<UsageHook>(),
            estimate: req.body().estimate_tokens(),
            format: req.body().source,
        };
        ResponseFuture {
            fut: self.inner.call(req),
            recorder: Some(recorder),
        }
    }
}

struct Recorder {
    meter: UsageMeter,
    labels: UsageLabels,
    price: Option<Price>,
    // Dropped unsettled when the attempt fails: the reservation is released.
    hook: Option<UsageHook>,
    estimate: u64,
    format: ApiFormat,
}

pin_project! {
    /// Response future of [`UsageTap`].
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        recorder: Option<Recorder>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        let Ok(resp) = out else {
            return Poll::Ready(out);
        };
        let Some(recorder) = this.recorder.take().filter(|_| resp.status().is_success()) else {
            return Poll::Ready(Ok(resp));
        };
        let sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        Poll::Ready(Ok(resp.map(|body| {
            Body::new(Observed::new(
                body,
                TapBody {
                    sse: sse.then(|| Decoder::new(1 << 20)),
                    json: Some(Frames::default()),
                    json_len: 0,
                    usage: None,
                    recorder: Some(recorder),
                },
            ))
        })))
    }
}

/// A JSON answer's frames: usually one, kept without a list of its own.
#[derive(Default)]
struct Frames {
    first: Option<Bytes>,
    more: Vec<Bytes>,
}

impl Frames {
    fn push(&mut self, data: &Bytes) {
        match self.first {
            None => self.first = Some(data.clone()),
            Some(_) => self.more.push(data.clone()),
        }
    }

    /// The answer: one frame read in place; several joined once.
    fn whole(self) -> Bytes {
        match (self.first, self.more.is_empty()) {
            (None, _) => Bytes::new(),
            (Some(one), true) => one,
            (Some(first), false) => {
                let mut all = Vec::with_capacity(
                    first.len() + self.more.iter().map(Bytes::len).sum::<usize>(),
                );
                for f in std::iter::once(&first).chain(&self.more) {
                    all.extend_from_slice(f);
                }
                Bytes::from(all)
            }
        }
    }
}

/// The body tap: frames pass through untouched; usage is noted on the way.
struct TapBody {
    sse: Option<Decoder>,
    /// A JSON answer's frames, kept (not copied) until its end; `None` past [`JSON_LIMIT`].
    json: Option<Frames>,
    json_len: usize,
    usage: Option<Usage>,
    recorder: Option<Recorder>,
}

impl TapBody {
    fn look(&mut self, data: &Bytes) {
        let format = self
            .recorder
            .as_ref()
            .map_or(ApiFormat::OpenAi, |r| r.format);
        let usage = &mut self.usage;
        match &mut self.sse {
            Some(dec) => {
                // Most frames are whole events that carry no usage: nothing to read in them.
                if dec.is_between_events() && data.ends_with(b"\n\n") && USAGE.find(data).is_none()
                {
                    return;
                }
                // A broken stream is the client's to see; the tap just stops reading it.
                let _ = dec.feed_ref(data, |ev| {
                    if ev.data.contains("usage")
                        && let Some(u) = found(format, ev.data.as_bytes())
                    {
                        note(usage, format, u);
                    }
                });
            }
            None => {
                self.json_len += data.len();
                match &mut self.json {
                    Some(frames) if self.json_len <= JSON_LIMIT => frames.push(data),
                    _ => self.json = None,
                }
            }
        }
    }

    fn finish(&mut self) {
        let Some(r) = self.recorder.take() else {
            return;
        };
        if self.sse.is_none()
            && let Some(frames) = self.json.take()
        {
            let whole = frames.whole();
            if let Some(u) = found(r.format, &whole) {
                note(&mut self.usage, r.format, u);
            }
        }
        let s = match self.usage {
            Some(u) => Settlement {
                prompt: u.prompt_total(),
                cached: u.cache_read,
                completion: u.output,
                estimated: false,
                cost_usd: None,
            },
            None => Settlement {
                prompt: r.estimate,
                cached: 0,
                completion: 0,
                estimated: true,
                cost_usd: None,
            },
        };
        let s = Settlement {
            cost_usd: r.price.map(|p| p.cost(s.prompt, s.cached, s.completion)),
            ..s
        };
        r.meter.record(&r.labels, self.usage, &s);
        if let Some(h) = r.hook {
            h.0.settle(s);
        }
    }
}

/// `message.usage` (Anthropic's `message_start`).
#[derive(serde::Deserialize)]
struct MessageUsage {
    #[serde(default)]
    usage: Option<UsageCounts>,
}

/// The counts as `format` means them.
fn usage_in(format: ApiFormat, u: &UsageCounts) -> Usage {
    match format {
        ApiFormat::Anthropic => u.anthropic(),
        _ => u.openai(),
    }
}

/// The usage in one JSON event or answer: the top-level `usage` and `message.usage`.
struct Found {
    top: Option<Usage>,
    message: Option<Usage>,
}

/// Reads the usage out of one JSON event or answer; `None` when it is not a JSON object.
fn found(format: ApiFormat, json: &[u8]) -> Option<Found> {
    // Most of an answer is not usage: find the two values at the top level without parsing
    // the rest, and read only them, into fixed fields. Anything else (usage of an odd shape,
    // a count sent as a string; a key written with escapes; not an object) is read the slow
    // way, as JSON values.
    //
    // Answers and stream events put `usage` last: read from the end, that is all there is
    // to read. Anthropic events also carry usage under `message`, anywhere, so they are
    // stepped over from the start. A document broken before its last member is not
    // noticed here: the usage it ends with is counted.
    if format != ApiFormat::Anthropic
        && let Some((b"usage", usage)) = crate::sse::last_top_level_member(json)
        && let Ok(usage) = UsageCounts::read(usage)
    {
        return Some(Found {
            top: usage.map(|u| usage_in(format, &u)),
            message: None,
        });
    }
    if let Some([usage, message]) = crate::sse::top_level_fields(json, [b"usage", b"message"]) {
        let usage = usage.map_or(Ok(None), UsageCounts::read);
        let message = message.map_or(Ok(None), serde_json::from_slice::<Option<MessageUsage>>);
        if let (Ok(usage), Ok(message)) = (usage, message) {
            return Some(Found {
                top: usage.map(|u| usage_in(format, &u)),
                message: message.and_then(|m| m.usage).map(|u| usage_in(format, &u)),
            });
        }
    }
    loose(format, json)
}

/// [`found`] the slow way: the whole document parsed into JSON values, whatever its shape.
fn loose(format: ApiFormat, json: &[u8]) -> Option<Found> {
    let doc = serde_json::from_slice::<Value>(json).ok()?;
    let doc = doc.as_object()?;
    let read = |v: Option<&Value>| Some(usage_in(format, &UsageCounts::from_map(v?.as_object()?)));
    Some(Found {
        top: read(doc.get("usage")),
        message: read(doc.get("message").and_then(|m| m.get("usage"))),
    })
}

/// Folds the usage found in one JSON event or answer into `acc`.
fn note(acc: &mut Option<Usage>, format: ApiFormat, v: Found) {
    match format {
        ApiFormat::Anthropic => {
            // `message_start` carries the prompt side, `message_delta` the running output count.
            if let Some(u) = v.message {
                let a = acc.get_or_insert_with(Usage::default);
                a.input = u.input;
                a.cache_read = u.cache_read;
                a.cache_write = u.cache_write;
                a.output = a.output.max(u.output);
            }
            if let Some(u) = v.top {
                let a = acc.get_or_insert_with(Usage::default);
                a.output = a.output.max(u.output);
                if u.input > 0 {
                    a.input = u.input;
                    a.cache_read = u.cache_read;
                    a.cache_write = u.cache_write;
                }
            }
        }
        _ => {
            if let Some(u) = v.top {
                *acc = Some(u);
            }
        }
    }
}

impl Observer for TapBody {
    fn on_data(&mut self, data: &Bytes) {
        self.look(data);
    }

    fn on_end(&mut self, _complete: bool) {
        // An answer cut short still used the tokens it used: record what was seen.
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn count() -> impl Strategy<Value = Value> {
        // Mostly counts, so that whole objects of counts are common; the odd shapes often
        // enough that each one turns up.
        prop_oneof![
            6 => any::<u64>().prop_map(Value::from),
            6 => (0u64..1000).prop_map(Value::from),
            1 => any::<i64>().prop_map(Value::from),
            1 => (-1e6f64..1e6).prop_map(Value::from),
            1 => Just(Value::Null),
            1 => "[a-z0-9]{0,4}".prop_map(Value::from),
            1 => Just(serde_json::json!({"n": 1})),
        ]
    }

    fn usage_object() -> impl Strategy<Value = Value> {
        let keys = prop::sample::select(vec![
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "total_tokens",
        ]);
        let details = prop_oneof![
            4 => (count(), count())
                .prop_map(|(c, r)| serde_json::json!({"cached_tokens": c, "reasoning_tokens": r})),
            1 => count(),
        ];
        (
            prop::collection::vec((keys, count()), 0..6),
            prop::option::of(details.clone()),
            prop::option::of(details),
        )
            .prop_map(|(counts, pd, cd)| {
                let mut m = serde_json::Map::new();
                for (k, v) in counts {
                    m.insert(k.to_owned(), v);
                }
                if let Some(d) = pd {
                    m.insert("prompt_tokens_details".into(), d);
                }
                if let Some(d) = cd {
                    m.insert("completion_tokens_details".into(), d);
                }
                Value::Object(m)
            })
    }

    /// Any JSON value, nested, whose objects may hold `usage` and `message` keys of their own
    /// (which are not the answer's) and whose strings need escapes.
    fn other_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "(\\PC|[\"\\\\{}\\[\\],:\n\u{1}])*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            let key = prop_oneof![
                Just("usage".to_owned()),
                Just("message".to_owned()),
                "[a-z_\"\\\\{}]{0,8}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key, inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Reading the answer's usage finds exactly what parsing the whole answer into values
        /// finds: whatever the shape of the usage objects (strings, floats, negatives, nulls,
        /// nested objects), wherever they stand among the other keys, whatever those hold
        /// (usage-named keys of their own, brackets and quotes in strings), sent twice or
        /// pretty-printed.
        #[test]
        fn fixed_fields_read_what_values_read(
            top in prop::option::of(prop_oneof![usage_object(), count()]),
            msg in prop::option::of(prop_oneof![usage_object(), count()]),
            others in prop::collection::vec(("[a-z]{1,6}", other_value()), 0..5),
            at in any::<prop::sample::Index>(),
            twice in any::<bool>(),
            pretty in any::<bool>(),
            anthropic in any::<bool>(),
        ) {
            let format = if anthropic { ApiFormat::Anthropic } else { ApiFormat::OpenAi };
            let mut fields: Vec<String> = others
                .iter()
                .filter(|(k, _)| k != "usage" && k != "message")
                .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
                .collect();
            let mut ours = Vec::new();
            if let Some(t) = &top {
                ours.push(format!("\"usage\":{t}"));
            }
            if let Some(m) = &msg {
                ours.push(format!("\"message\":{}", serde_json::json!({"role": "assistant", "usage": m})));
            }
            if twice && !ours.is_empty() {
                // A key sent twice: the last one counts, as in a parsed map.
                ours.insert(0, "\"usage\":{\"prompt_tokens\":999}".to_owned());
            }
            for f in ours {
                let i = at.index(fields.len() + 1);
                fields.insert(i, f);
            }
            let mut json = format!("{{{}}}", fields.join(","));
            if pretty {
                json = serde_json::to_string_pretty(&serde_json::from_str::<Value>(&json).unwrap()).unwrap();
            }
            // Usage under `message` is Anthropic's alone (an OpenAI answer's is not read):
            // compared for Anthropic answers only.
            let seen = |f: Found| (f.top, f.message.filter(|_| anthropic));
            let got = found(format, json.as_bytes()).map(seen);
            prop_assert_eq!(got, loose(format, json.as_bytes()).map(seen), "{}", json);
        }

        /// The last member read from a document's end is the one a parse puts last, whatever
        /// the values before it and in it hold (brackets, quotes and backslashes in strings),
        /// compact or pretty-printed.
        #[test]
        fn the_last_member_is_read_from_the_end(
            members in prop::collection::vec(("[a-z_]{0,6}", other_value()), 1..6),
            pretty in any::<bool>(),
        ) {
            let map: serde_json::Map<String, Value> = members.into_iter().collect();
            let json = if pretty { serde_json::to_string_pretty(&map) } else { serde_json::to_string(&map) }.unwrap();
            let (k, v) = map.iter().next_back().unwrap();
            let (key, value) = crate::sse::last_top_level_member(json.as_bytes()).unwrap();
            prop_assert_eq!(key, k.as_bytes());
            prop_assert_eq!(&serde_json::from_slice::<Value>(value).unwrap(), v, "{}", json);
        }
    }

    #[test]
    fn the_last_member_is_read_only_from_an_object_that_ends_with_one() {
        let last = |s: &str| {
            crate::sse::last_top_level_member(s.as_bytes()).map(|(k, v)| {
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
        };
        let kv = |k: &str, v: &str| Some((k.to_owned(), v.to_owned()));
        assert_eq!(last(r#" { "usage" : null } "#), kv("usage", "null"));
        assert_eq!(
            last(r#"{"a":1,"b":{"c":"}\"{"}}"#),
            kv("b", r#"{"c":"}\"{"}"#)
        );
        assert_eq!(last(r#"{"a":"x\\","b":"\\\""}"#), kv("b", r#""\\\"""#));
        assert_eq!(last(r#"{"a":[1,[2]],"usage":-3}"#), kv("usage", "-3"));
        // What comes before the last member is not looked at (the caller's stated limit).
        assert_eq!(last(r#"1,"a":1}"#), kv("a", "1"));
        for no in [
            r#"{"a":1"#,
            r#"[{"a":1}]"#,
            r#"{"a\"b":1}"#,
            r#"x{"a":1}"#,
            r#"{"a" 1}"#,
            r#"{:1}"#,
            r#"{"a":}"#,
            r#"{}"#,
            r#"}"#,
            r#"{"a":1}}"#,
        ] {
            assert_eq!(last(no), None, "{no}");
        }
    }

    #[test]
    fn reads_both_formats_and_odd_shapes() {
        let f = found(
            ApiFormat::OpenAi,
            br#"{"usage":{"prompt_tokens":10,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#,
        )
        .unwrap();
        let u = f.top.unwrap();
        assert_eq!((u.input, u.cache_read, u.output, u.reasoning), (6, 4, 3, 2));
        let f = found(
            ApiFormat::Anthropic,
            br#"{"type":"message_start","message":{"usage":{"input_tokens":7,"cache_read_input_tokens":5,"output_tokens":1}}}"#,
        )
        .unwrap();
        assert!(f.top.is_none());
        let u = f.message.unwrap();
        assert_eq!((u.input, u.cache_read, u.output), (7, 5, 1));
        // A count sent as a string is not a count, and does not hide the others.
        let u = found(
            ApiFormat::OpenAi,
            br#"{"usage":{"prompt_tokens":"10","completion_tokens":3}}"#,
        )
        .unwrap()
        .top
        .unwrap();
        assert_eq!((u.input, u.output), (0, 3));
        assert!(found(ApiFormat::OpenAi, b"[1,2]").is_none());
        // A key written with escapes is still the key.
        let u = found(ApiFormat::OpenAi, br#"{"usag\u0065":{"prompt_tokens":5}}"#)
            .unwrap()
            .top
            .unwrap();
        assert_eq!(u.input, 5);
        // Usage nested in some other value is not the answer's.
        let f = found(
            ApiFormat::OpenAi,
            br#"{"choices":[{"usage":{"prompt_tokens":5}}]}"#,
        )
        .unwrap();
        assert!(f.top.is_none());
    }
}
