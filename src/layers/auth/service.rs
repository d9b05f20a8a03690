use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use subtle::{ConstantTimeEq, ConstantTimeLess};
use tower::Service;
use tower_layer::Layer;

use crate::config::Secret;
use crate::error::{ErrorKind, error_response_with};
use crate::layers::guard::GuardFuture;
use crate::model::{ApiFormat, Principal};

/// Paths that never require a token.
const OPEN_PATHS: &[&str] = &["/healthz", "/statsz", "/metrics"];

/// A role, as Nenya's RBAC names them.
///
/// ```
/// use nenya::layers::Role;
/// assert_eq!("read-only".parse::<Role>(), Ok(Role::ReadOnly));
/// assert!("root".parse::<Role>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything; bypasses agent and endpoint scoping.
    Admin,
    /// Chat and every non-admin endpoint, scoped by `allowed_agents`.
    User,
    /// `GET` endpoints only (models, metrics).
    ReadOnly,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Self::Admin),
            "user" => Ok(Self::User),
            "read-only" | "readonly" | "read_only" => Ok(Self::ReadOnly),
            other => Err(format!(
                "unknown role `{other}` (expected admin, user or read-only)"
            )),
        }
    }
}

/// One client credential with what it may do.
///
/// ```
/// use nenya::layers::{ApiKey, Role};
/// use nenya::config::Secret;
/// let k = ApiKey::new("ci", Secret::new("nk-ci-0123456789abcdef"), [Role::User])
///     .allowed_agents(["build"]);
/// assert_eq!(format!("{k:?}").contains("nk-ci"), false); // the token never prints
/// ```
#[derive(Debug, Clone)]
pub struct ApiKey {
    name: Arc<str>,
    token: Secret,
    roles: Vec<Role>,
    allowed_agents: Arc<[String]>,
    allowed_endpoints: Vec<String>,
    expires_at: Option<SystemTime>,
    enabled: bool,
}

impl ApiKey {
    /// A key named `name` (for logs and metrics) with `roles`.
    pub fn new(
        name: impl Into<String>,
        token: Secret,
        roles: impl IntoIterator<Item = Role>,
    ) -> Self {
        Self {
            name: name.into().into(),
            token,
            roles: roles.into_iter().collect(),
            allowed_agents: Arc::new([]),
            allowed_endpoints: Vec::new(),
            expires_at: None,
            enabled: true,
        }
    }

    /// Agents (model names) this key may use; empty means all.
    pub fn allowed_agents<I: IntoIterator<Item = S>, S: Into<String>>(mut self, agents: I) -> Self {
        self.allowed_agents = agents.into_iter().map(Into::into).collect();
        self
    }

    /// `"METHOD /path"` entries this key may call (a trailing `*` matches a prefix); empty
    /// means the role's default.
    pub fn allowed_endpoints<I: IntoIterator<Item = S>, S: Into<String>>(mut self, e: I) -> Self {
        self.allowed_endpoints = e.into_iter().map(Into::into).collect();
        self
    }

    /// The key stops working at `t`.
    pub fn expires_at(mut self, t: SystemTime) -> Self {
        self.expires_at = Some(t);
        self
    }

    /// Disables (or re-enables) the key without removing it.
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    fn may_call(&self, method: &Method, path: &str) -> bool {
        if self.is_admin() {
            return true;
        }
        if !self.allowed_endpoints.is_empty() {
            return self.allowed_endpoints.iter().any(|e| {
                let Some((m, p)) = e.trim().split_once(' ') else {
                    return false;
                };
                let p = p.trim();
                m.eq_ignore_ascii_case(method.as_str())
                    && match p.strip_suffix('*') {
                        Some(prefix) => path.starts_with(prefix),
                        None => path == p,
                    }
            });
        }
        if self.roles.contains(&Role::User) {
            return !path.starts_with("/admin");
        }
        self.roles.contains(&Role::ReadOnly) && matches!(*method, Method::GET | Method::HEAD)
    }
}

impl From<&ApiKey> for Principal {
    fn from(k: &ApiKey) -> Self {
        Principal {
            name: k.name.clone(),
            unrestricted: k.is_admin(),
            allowed_agents: k.allowed_agents.clone(),
        }
    }
}

/// Layer that applies [`Auth`].
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    keys: Arc<[ApiKey]>,
}

impl AuthLayer {
    /// Accepts any of `tokens`, as admins (Nenya's `client_token`). An empty list, and no API
    /// keys, disables the check.
    pub fn new(tokens: impl IntoIterator<Item = Secret>) -> Self {
        Self {
            keys: tokens
                .into_iter()
                .filter(|t| !t.expose().is_empty())
                .map(|t| ApiKey::new("client_token", t, [Role::Admin]))
                .collect(),
        }
    }

    /// Also accepts these API keys, each with its roles and scopes.
    pub fn with_api_keys(self, keys: impl IntoIterator<Item = ApiKey>) -> Self {
        let mut all: Vec<ApiKey> = self.keys.iter().cloned().collect();
        all.extend(keys.into_iter().filter(|k| !k.token.expose().is_empty()));
        Self { keys: all.into() }
    }

    /// Whether any token is configured.
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// Checks the client token and its scopes before calling the inner service.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Arc<[ApiKey]>,
}

/// Anthropic's credential header, the other place a client key is presented.
static X_API_KEY: header::HeaderName = header::HeaderName::from_static("x-api-key");

fn presented<B>(req: &Request<B>) -> Option<&[u8]> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(v[7..].trim_ascii());
        }
        return None;
    }
    req.headers()
        .get(&X_API_KEY)
        .map(|v| v.as_bytes().trim_ascii())
}

impl<S> Auth<S> {
    /// The key `token` matches. Every key is compared, in constant time, whatever matched, so
    /// timing reveals neither the match nor its position.
    fn matching(&self, token: &[u8]) -> Option<&ApiKey> {
        let mut found = u32::MAX;
        for (i, k) in self.keys.iter().enumerate() {
            let eq = k.token.expose().as_bytes().ct_eq(token);
            let i = i as u32;
            // found = min(found, i) where eq, without branching on eq.
            let take = eq & i.ct_lt(&found);
            found = u32::conditional_select(&found, &i, take);
        }
        self.keys.get(found as usize)
    }
}

use subtle::ConditionallySelectable;

fn expired(k: &ApiKey) -> bool {
    k.expires_at.is_some_and(|t| SystemTime::now() >= t)
}

/// Parses an RFC 3339 timestamp (`2026-12-31T23:59:59Z`, `…+02:00`, fractions ignored).
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

impl<S, B, ResBody> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        if !self.keys.is_empty() && !OPEN_PATHS.contains(&path) {
            let format = ApiFormat::for_errors(path);
            let refuse =
                |kind, msg: &str| GuardFuture::reject(error_response_with(format, kind, msg));
            let key = match presented(&req) {
                None => {
                    tracing::info!(path, "client authentication failed: no token");
                    return refuse(
                        ErrorKind::Unauthorized,
                        "missing client token (send `Authorization: Bearer …` or `x-api-key`)",
                    );
                }
                Some(t) => self.matching(t),
            };
            let Some(key) = key else {
                tracing::info!(path, "client authentication failed: unknown token");
                return refuse(ErrorKind::Unauthorized, "invalid client token");
            };
            if !key.enabled || expired(key) {
                tracing::info!(path, key = %key.name, "client authentication failed: key disabled or expired");
                return refuse(ErrorKind::Unauthorized, "client token disabled or expired");
            }
            if !key.may_call(req.method(), path) {
                tracing::info!(path, key = %key.name, "forbidden endpoint");
                let msg = format!("this API key may not call {} {path}", req.method());
                return refuse(ErrorKind::Forbidden, &msg);
            }
            let principal = Principal::from(key);
            req.extensions_mut().insert(principal);
        }
        req.headers_mut().remove(header::AUTHORIZATION);
        req.headers_mut().remove(&X_API_KEY);
        GuardFuture::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339("2026-12-31T23:59:59Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_798_761_599
        );
        let u = parse_rfc3339("2027-01-01T01:59:59.250+02:00").unwrap();
        assert_eq!(t, u);
        assert!(parse_rfc3339("2026-13-01T00:00:00Z").is_none());
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn endpoints_by_role_and_allowlist() {
        let ro = ApiKey::new("r", Secret::new("t"), [Role::ReadOnly]);
        assert!(ro.may_call(&Method::GET, "/v1/models"));
        assert!(!ro.may_call(&Method::POST, "/v1/chat/completions"));
        let scoped = ApiKey::new("s", Secret::new("t"), [Role::User])
            .allowed_endpoints(["POST /v1/chat/completions", "GET /v1/*"]);
        assert!(scoped.may_call(&Method::POST, "/v1/chat/completions"));
        assert!(!scoped.may_call(&Method::POST, "/v1/messages"));
        assert!(scoped.may_call(&Method::GET, "/v1/models"));
    }
}
