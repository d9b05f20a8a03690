//! Logs that cannot carry a credential.
//!
//! Nothing in nenya logs a request body, a header value or a key on purpose. This module is the
//! second line: every formatted log line passes a [`SecretFilter`] before it is written, which
//! replaces
//!
//! - every *known* secret (the client token, RBAC key tokens, provider keys and account
//!   credentials, as loaded; updated on reload) with `[REDACTED:secret]`, found in one
//!   Aho-Corasick pass, and
//! - every credential the built-in redaction patterns recognise (a secret from a request that a
//!   dependency's `trace` output or a panic message happened to include).
//!
//! [`install_panic_hook`] routes panic reports through the same filter (the default hook
//! prints the panic message, which may format a request, straight to stderr).
//!
//! ```
//! use nenya::config::Secret;
//! use nenya::telemetry::SecretFilter;
//! let filter = SecretFilter::new();
//! filter.set([&Secret::new("tok-client-0123456789")]);
//! let line = filter.scrub(b"auth failed for tok-client-0123456789 with ghp_R8mWq2ZpX4cV7bN1kL9sD3fG6hJ0aQ5eT2yU");
//! assert_eq!(
//!     String::from_utf8_lossy(&line),
//!     "auth failed for [REDACTED:secret] with [REDACTED:github_pat]"
//! );
//! ```

use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use arc_swap::ArcSwapOption;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{Config, Secret, Secrets};
use crate::layers::Redactor;

/// Shortest known secret that is searched for: shorter values (a test token like `x`) would
/// mangle ordinary log text and are no credential worth the name.
const MIN_SECRET_LEN: usize = 8;

/// Replaces known secrets and recognisable credentials in log output. Cheap to share
/// (`Arc`); [`SecretFilter::set`] swaps the known set atomically (on reload).
///
/// ```
/// use nenya::telemetry::SecretFilter;
/// let f = SecretFilter::new();
/// assert_eq!(&*f.scrub(b"nothing secret"), b"nothing secret");
/// ```
pub struct SecretFilter {
    known: ArcSwapOption<AhoCorasick>,
    patterns: Redactor,
}

impl Default for SecretFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SecretFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFilter").finish_non_exhaustive()
    }
}

impl SecretFilter {
    /// A filter with the built-in credential patterns and no known secrets yet.
    pub fn new() -> Self {
        Self {
            known: ArcSwapOption::empty(),
            patterns: Redactor::builtin(),
        }
    }

    /// Replaces the set of known secrets (values shorter than 8 bytes are ignored).
    pub fn set<'a>(&self, secrets: impl IntoIterator<Item = &'a Secret>) {
        let mut values: Vec<&str> = secrets
            .into_iter()
            .map(Secret::expose)
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        values.sort_unstable();
        values.dedup();
        let ac = if values.is_empty() {
            None
        } else {
            // Leftmost-longest: a key that contains another is replaced whole.
            AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&values)
                .ok()
                .map(Arc::new)
        };
        self.known.store(ac);
    }

    /// Known secrets from `secrets` and from `cfg` (provider `api_key`s and account
    /// credentials).
    pub fn set_from(&self, cfg: &Config, secrets: &Secrets) {
        let all = secrets
            .client_token
            .iter()
            .chain(secrets.provider_keys.values())
            .chain(secrets.api_keys.values().map(|k| &k.token))
            .chain(cfg.providers.values().filter_map(|p| p.api_key.as_ref()))
            .chain(
                cfg.providers
                    .values()
                    .flat_map(|p| p.accounts.iter().map(|a| &a.credential)),
            );
        self.set(all);
    }

    /// `text` with every known secret and recognised credential replaced; borrowed when
    /// there was nothing to replace.
    pub fn scrub<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out: Cow<'a, [u8]> = Cow::Borrowed(text);
        if let Some(ac) = self.known.load().as_deref()
            && ac.is_match(text)
        {
            let mut buf = Vec::with_capacity(text.len());
            ac.replace_all_with_bytes(text, &mut buf, |_, _, dst| {
                dst.extend_from_slice(b"[REDACTED:secret]");
                true
            });
            out = Cow::Owned(buf);
        }
        // Patterns work on text; a line that is not UTF-8 is checked in its lossy form.
        let redacted = match std::str::from_utf8(&out) {
            Ok(s) => self.patterns.redact(s),
            Err(_) => self.patterns.redact(&String::from_utf8_lossy(&out)),
        };
        match redacted {
            Some(s) => Cow::Owned(s.into_bytes()),
            None => out,
        }
    }
}

/// A [`MakeWriter`] whose writers pass every line through a [`SecretFilter`].
///
/// ```
/// use std::sync::Arc;
/// use nenya::telemetry::{ScrubbingMakeWriter, SecretFilter};
/// let filter = Arc::new(SecretFilter::new());
/// let subscriber = tracing_subscriber::fmt()
///     .with_writer(ScrubbingMakeWriter::new(std::io::stderr, filter))
///     .finish();
/// # drop(subscriber);
/// ```
#[derive(Debug, Clone)]
pub struct ScrubbingMakeWriter<M> {
    inner: M,
    filter: Arc<SecretFilter>,
}

impl<M> ScrubbingMakeWriter<M> {
    /// Wraps `inner`.
    pub fn new(inner: M, filter: Arc<SecretFilter>) -> Self {
        Self { inner, filter }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for ScrubbingMakeWriter<M> {
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter {
            inner: self.inner.make_writer(),
            filter: self.filter.clone(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        ScrubbingWriter {
            inner: self.inner.make_writer_for(meta),
            filter: self.filter.clone(),
        }
    }
}

/// The writer made by [`ScrubbingMakeWriter`]: each `write` is one formatted log line (the
/// `fmt` layer formats a whole event before writing it), scrubbed and written whole.
///
/// ```
/// use std::io::Write;
/// use std::sync::Arc;
/// use nenya::telemetry::{ScrubbingMakeWriter, SecretFilter};
/// use tracing_subscriber::fmt::MakeWriter;
/// let mw = ScrubbingMakeWriter::new(std::io::sink, Arc::new(SecretFilter::new()));
/// mw.make_writer().write_all(b"a line\n").unwrap();
/// ```
#[derive(Debug)]
pub struct ScrubbingWriter<W> {
    inner: W,
    filter: Arc<SecretFilter>,
}

impl<W: io::Write> io::Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self.filter.scrub(buf);
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Replaces the process's panic hook with one that logs the panic as a `tracing` error (so it
/// goes through the log pipeline and its [`SecretFilter`]) with its location and a scrubbed
/// message, instead of printing the raw message to stderr.
///
/// ```no_run
/// use std::sync::Arc;
/// nenya::telemetry::install_panic_hook(Arc::new(nenya::telemetry::SecretFilter::new()));
/// ```
pub fn install_panic_hook(filter: Arc<SecretFilter>) {
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&filter.scrub(payload.as_bytes())).into_owned();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, %message, "panic");
    }));
}
