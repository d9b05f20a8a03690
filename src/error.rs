//! The one error type, and its rendering into the client's own error JSON.
//!
//! Every failure that reaches a client carries a stable, machine-readable `error_kind`
//! (also sent as the `x-nenya-error-kind` header), so clients and dashboards can branch on it
//! without parsing messages. Messages are written by nenya and never include credentials.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::BoxError;
use crate::body::Body;
use crate::model::ApiFormat;

/// Header carrying the stable error kind on every error response.
pub const ERROR_KIND_HEADER: &str = "x-nenya-error-kind";

/// [`ERROR_KIND_HEADER`] as a header name, for lookups that need not parse it.
pub(crate) static ERROR_KIND_NAME: http::HeaderName =
    http::HeaderName::from_static(ERROR_KIND_HEADER);

/// What went wrong, as a stable identifier (see [`ErrorKind::as_str`]).
///
/// ```
/// use nenya::ErrorKind;
/// assert_eq!(ErrorKind::BodyTooLarge.status().as_u16(), 413);
/// assert_eq!(ErrorKind::BodyTooLarge.as_str(), "body_too_large");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The body is not valid JSON.
    InvalidJson,
    /// The JSON is valid but not a valid request (wrong types, missing fields).
    InvalidRequest,
    /// The request body exceeds `server.max_body_bytes`.
    BodyTooLarge,
    /// The client did not send its whole body in time.
    RequestTimeout,
    /// Missing or wrong client credentials.
    Unauthorized,
    /// Credentials are valid but not allowed to do this.
    Forbidden,
    /// A browser-context request (`Origin` / `Sec-Fetch-*`) from an origin not allowlisted.
    ForbiddenOrigin,
    /// The requested model or agent is not configured.
    ModelNotFound,
    /// No such route.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The client's format cannot be converted to the chosen upstream's format yet.
    UnsupportedConversion,
    /// The upstream could not be reached (connect error, reset before headers).
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream broke the protocol (bad stream, reset mid-body).
    UpstreamProtocol,
    /// Too many requests.
    RateLimited,
    /// A daily token budget (the caller's key, or a provider's for `fill`-tier keys) is spent.
    BudgetExceeded,
    /// The request's estimated cost exceeds `governance.max_cost_per_request` on every target.
    CostLimitExceeded,
    /// Every target's circuit breaker is open: the upstreams failed recently and are resting.
    CircuitOpen,
    /// A local engine is still loading the model (after a preload); another target may answer.
    ModelLoading,
    /// A bug or an unexpected internal state.
    Internal,
}

impl ErrorKind {
    /// The stable identifier sent to clients as `error_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::BodyTooLarge => "body_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::ModelNotFound => "model_not_found",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnsupportedConversion => "unsupported_conversion",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamProtocol => "upstream_protocol_error",
            Self::RateLimited => "rate_limited",
            Self::BudgetExceeded => "budget_exceeded",
            Self::CostLimitExceeded => "cost_limit_exceeded",
            Self::CircuitOpen => "circuit_open",
            Self::ModelLoading => "model_loading",
            Self::Internal => "internal_error",
        }
    }

    /// The HTTP status this kind is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson | Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::ForbiddenOrigin => StatusCode::FORBIDDEN,
            Self::ModelNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedConversion => StatusCode::NOT_IMPLEMENTED,
            Self::UpstreamUnreachable | Self::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited | Self::BudgetExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::CostLimitExceeded => StatusCode::BAD_REQUEST,
            Self::CircuitOpen | Self::ModelLoading => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `error.type` for this kind.
    fn openai_type(self) -> &'static str {
        match self {
            Self::InvalidJson
            | Self::InvalidRequest
            | Self::BodyTooLarge
            | Self::RequestTimeout
            | Self::ModelNotFound
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::UnsupportedConversion
            | Self::CostLimitExceeded => "invalid_request_error",
            // OpenAI's own type for a spent quota, which SDKs recognise.
            Self::BudgetExceeded => "insufficient_quota",
            Self::Unauthorized => "authentication_error",
            Self::Forbidden | Self::ForbiddenOrigin => "permission_error",
            Self::RateLimited => "rate_limit_error",
            Self::UpstreamUnreachable
            | Self::UpstreamTimeout
            | Self::UpstreamProtocol
            | Self::CircuitOpen
            | Self::ModelLoading
            | Self::Internal => "server_error",
        }
    }

    /// The Anthropic `error.type` for this kind.
    fn anthropic_type(self) -> &'static str {
        match self {
            Self::InvalidJson | Self::InvalidRequest | Self::UnsupportedConversion => {
                "invalid_request_error"
            }
            Self::MethodNotAllowed | Self::RequestTimeout | Self::CostLimitExceeded => {
                "invalid_request_error"
            }
            Self::BodyTooLarge => "request_too_large",
            Self::Unauthorized => "authentication_error",
            Self::Forbidden | Self::ForbiddenOrigin => "permission_error",
            Self::ModelNotFound | Self::NotFound => "not_found_error",
            Self::RateLimited | Self::BudgetExceeded => "rate_limit_error",
            Self::UpstreamTimeout => "timeout_error",
            Self::CircuitOpen | Self::ModelLoading => "overloaded_error",
            Self::UpstreamUnreachable | Self::UpstreamProtocol | Self::Internal => "api_error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// nenya's error: an [`ErrorKind`], a client-safe message, and optionally the underlying cause
/// (kept for logs, never sent to clients).
///
/// ```
/// use nenya::{Error, ErrorKind};
/// let err = Error::new(ErrorKind::ModelNotFound, "no agent or model named `x`");
/// assert_eq!(err.kind(), ErrorKind::ModelNotFound);
/// ```
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    source: Option<BoxError>,
    retry_after: Option<std::time::Duration>,
}

impl Error {
    /// A new error with a client-safe message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            retry_after: None,
        }
    }

    /// Tells the client when to try again (`Retry-After`, whole seconds, rounded up).
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// When the client may try again, if known.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// Attaches the underlying cause (logged, never shown to clients).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The client-safe message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Renders this error as a response in the client's API shape.
    pub fn into_response(self, format: ApiFormat) -> Response<Body> {
        if let Some(src) = &self.source {
            tracing::debug!(error_kind = self.kind.as_str(), cause = %src, "request failed");
        }
        let mut resp = error_response(format, self.kind, &self.message);
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(secs.max(1)),
            );
        }
        resp
    }

    /// Finds a nenya [`Error`] inside a boxed error, or wraps an unknown one as `internal_error`.
    pub fn from_boxed(err: BoxError) -> Self {
        match err.downcast::<Error>() {
            Ok(e) => *e,
            Err(other) => Error::new(ErrorKind::Internal, "internal error").with_source(other),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The JSON error body for `kind` in the client's format.
///
/// ```
/// use nenya::{ErrorKind, model::ApiFormat, error::error_json};
/// let v: serde_json::Value =
///     serde_json::from_slice(&error_json(ApiFormat::Anthropic, ErrorKind::NotFound, "nope")).unwrap();
/// assert_eq!(v["type"], "error");
/// assert_eq!(v["error"]["error_kind"], "not_found");
/// ```
pub fn error_json(format: ApiFormat, kind: ErrorKind, message: &str) -> Bytes {
    let v = match format {
        ApiFormat::Anthropic => serde_json::json!({
            "type": "error",
            "error": {
                "type": kind.anthropic_type(),
                "message": message,
                "error_kind": kind.as_str(),
            }
        }),
        // Gemini clients are served the OpenAI shape until a Gemini ingress exists.
        ApiFormat::OpenAi | ApiFormat::Gemini => serde_json::json!({
            "error": {
                "message": message,
                "type": kind.openai_type(),
                "code": kind.as_str(),
                "param": serde_json::Value::Null,
                "error_kind": kind.as_str(),
            }
        }),
    };
    Bytes::from(v.to_string())
}

/// A complete error response for `kind` in the client's format.
pub fn error_response(format: ApiFormat, kind: ErrorKind, message: &str) -> Response<Body> {
    error_response_with(format, kind, message)
}

/// [`error_response`] for any body type that can be made from bytes (e.g. axum's).
pub fn error_response_with<B: From<Bytes>>(
    format: ApiFormat,
    kind: ErrorKind,
    message: &str,
) -> Response<B> {
    let mut resp = Response::new(B::from(error_json(format, kind, message)));
    *resp.status_mut() = kind.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(ERROR_KIND_HEADER, HeaderValue::from_static(kind.as_str()));
    resp
}

/// A well-formed SSE error event in the client's stream format, used to end a stream that
/// already started when the upstream fails (a new status line can no longer be sent).
///
/// ```
/// use nenya::{ErrorKind, model::ApiFormat, error::sse_error_event};
/// let ev = sse_error_event(ApiFormat::Anthropic, ErrorKind::UpstreamTimeout, "stalled");
/// assert!(ev.starts_with(b"event: error\ndata: {"));
/// assert!(ev.ends_with(b"\n\n"));
/// ```
pub fn sse_error_event(format: ApiFormat, kind: ErrorKind, message: &str) -> Bytes {
    let json = error_json(format, kind, message);
    let mut out = Vec::with_capacity(json.len() + 24);
    if format == ApiFormat::Anthropic {
        out.extend_from_slice(b"event: error\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}
