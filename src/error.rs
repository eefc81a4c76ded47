//! The crate's one error type.
//!
//! Every failure the crate reports is an [`Error`]. Its [`ErrorKind`] says what happened in the
//! same vocabulary as [`classify`]; its `Display` says what went wrong and what
//! to do; [`std::error::Error::source`] gives the underlying cause. When DeepSeek answered with
//! an error body, [`Error::api_error`] has it parsed (or its raw text when it was not JSON).
//!
//! The API key is never stored in an error: the client scrubs it from any upstream text it
//! keeps (see [`Error::redact`]).
//!
//! ```
//! use tower_deepseek::{Error, ErrorKind};
//! use tower_deepseek::classify::AuthFailure;
//!
//! let body = br#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#;
//! let error = Error::from_response(http::StatusCode::PAYMENT_REQUIRED, &http::HeaderMap::new(), body);
//! assert_eq!(error.kind(), ErrorKind::Auth(AuthFailure::InsufficientBalance));
//! assert_eq!(error.api_error().unwrap().message, "Insufficient Balance");
//! assert!(error.to_string().contains("top up"));
//! ```

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use crate::classify::{
    self, AuthFailure, Classify, DeepSeekClassifier, NetworkFailure, Observation, Outcome,
    StreamFailure, TimeoutPhase,
};

/// A boxed error from any layer or transport, as tower passes them around.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Upstream error text kept in an [`ApiError`] is capped at this many bytes.
const MAX_RAW_BODY: usize = 4096;

/// What went wrong. Mirrors [`Outcome`]'s failure classes.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The connection could not be made or was lost.
    Network(NetworkFailure),
    /// A deadline passed; the phase says which.
    Timeout(TimeoutPhase),
    /// Rate limited, by DeepSeek (429) or by a local limiter. See [`Error::retry_after`].
    RateLimited,
    /// DeepSeek failed (5xx).
    Server,
    /// DeepSeek rejected the request as invalid (400, 422, other 4xx).
    Client,
    /// The key was refused (401) or the balance is empty (402).
    Auth(AuthFailure),
    /// The response body failed: cut short, malformed, or stopped for lack of resources.
    Stream(StreamFailure),
    /// The client or a layer is misconfigured (bad base URL, invalid setting).
    Config,
    /// The request failed validation before anything was sent.
    InvalidRequest,
    /// A circuit breaker refused the call without sending it. [`Error::retry_after`] is the
    /// time until the breaker lets a trial call through (when it is known); the message names
    /// the breaker (its key, for a keyed breaker). The reason says whether the upstream is
    /// failing, an operator forced the breaker open, or DeepSeek refused the key or the balance
    /// (the "fatal" state: see [`CircuitOpenReason::Fatal`]).
    CircuitOpen(CircuitOpenReason),
    /// A local concurrency limit ([`crate::concurrency`]) shed the call without sending it:
    /// too many calls were in flight (and, for a queueing limit, no slot freed within its
    /// maximum wait). [`Error::retry_after`] is the limiter's hint (1 s by default, never zero),
    /// so a server answers 503 with `Retry-After`. Its outcome is [`Outcome::Rejected`].
    Overloaded,
}

/// Why a circuit breaker refused a call ([`ErrorKind::CircuitOpen`]).
///
/// ```
/// use tower_deepseek::classify::AuthFailure;
/// use tower_deepseek::error::CircuitOpenReason;
/// use tower_deepseek::{Error, ErrorKind};
///
/// let error = Error::new(
///     ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(AuthFailure::InsufficientBalance)),
///     "breaker \"deepseek\"",
/// );
/// assert!(error.to_string().contains("top up"));
/// assert_eq!(error.http_status(), http::StatusCode::PAYMENT_REQUIRED);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitOpenReason {
    /// The breaker opened on failures or slow calls, or its half-open trial permits are taken.
    Unhealthy,
    /// An operator forced the breaker open.
    Forced,
    /// DeepSeek answered 401 (the key is refused) or 402 (the balance is empty): the breaker
    /// stops calling for a long time, since retrying cannot help until someone fixes the key
    /// or tops up the balance.
    Fatal(AuthFailure),
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Network(NetworkFailure::Connect) => "could not connect to the upstream",
            ErrorKind::Network(NetworkFailure::Reset) => "the connection to the upstream was lost",
            ErrorKind::Network(NetworkFailure::Tls) => "TLS with the upstream failed",
            ErrorKind::Network(_) => "network failure",
            ErrorKind::Timeout(TimeoutPhase::Connect) => "timed out connecting",
            ErrorKind::Timeout(TimeoutPhase::Headers) => "timed out waiting for response headers",
            ErrorKind::Timeout(TimeoutPhase::FirstToken) => "timed out waiting for the first token",
            ErrorKind::Timeout(TimeoutPhase::Idle) => "timed out waiting for the next chunk",
            ErrorKind::Timeout(TimeoutPhase::Attempt) => "an attempt timed out",
            ErrorKind::Timeout(TimeoutPhase::Deadline) => {
                "timed out: the deadline across all retries passed"
            }
            ErrorKind::Timeout(_) => "timed out",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Server => "DeepSeek server error",
            ErrorKind::Client => "DeepSeek rejected the request",
            ErrorKind::Auth(AuthFailure::InvalidKey) => "authentication failed",
            ErrorKind::Auth(_) => "insufficient balance",
            ErrorKind::Stream(StreamFailure::Truncated) => "the response stream ended early",
            ErrorKind::Stream(StreamFailure::Malformed) => "the response could not be decoded",
            ErrorKind::Stream(StreamFailure::LineTooLong) => {
                "a response line exceeded the length cap"
            }
            ErrorKind::Stream(_) => "DeepSeek ran out of capacity mid-generation",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::CircuitOpen(CircuitOpenReason::Unhealthy) => {
                "the circuit breaker is open: the upstream is failing, so the call was not sent"
            }
            ErrorKind::CircuitOpen(CircuitOpenReason::Forced) => {
                "the circuit breaker is forced open, so the call was not sent"
            }
            ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(AuthFailure::InvalidKey)) => {
                "calls are stopped: DeepSeek refused the API key (401)"
            }
            ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(_)) => {
                "calls are stopped: the DeepSeek balance is empty (402)"
            }
            ErrorKind::Overloaded => {
                "the concurrency limit is reached: too many calls in flight, so the call was not sent"
            }
        }
    }

    fn hint(self) -> &'static str {
        match self {
            ErrorKind::Network(NetworkFailure::Tls) => {
                "check the base URL's scheme and the server certificate"
            }
            ErrorKind::Network(_) => "check the base URL and connectivity; the call may be retried",
            ErrorKind::Timeout(_) => "the call may be retried, or the timeout raised",
            ErrorKind::RateLimited => "slow down and retry after the indicated wait",
            ErrorKind::Server => "DeepSeek is failing or overloaded; retry with backoff",
            ErrorKind::Client => "fix the request; retrying it unchanged will fail again",
            ErrorKind::Auth(AuthFailure::InvalidKey) => {
                "check DEEPSEEK_API_KEY; retrying will not help"
            }
            ErrorKind::Auth(_) => "top up the DeepSeek account balance; retrying will not help",
            ErrorKind::Stream(StreamFailure::LineTooLong) => {
                "raise the line cap if the upstream is trusted"
            }
            ErrorKind::Stream(_) => "the answer is incomplete; the call may be retried",
            ErrorKind::Config => "fix the configuration",
            ErrorKind::InvalidRequest => "fix the request before sending it",
            ErrorKind::CircuitOpen(CircuitOpenReason::Unhealthy) => {
                "retry after the indicated wait, or use a fallback"
            }
            ErrorKind::CircuitOpen(CircuitOpenReason::Forced) => {
                "an operator must close the breaker"
            }
            ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(AuthFailure::InvalidKey)) => {
                "fix DEEPSEEK_API_KEY, then reset the breaker"
            }
            ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(_)) => {
                "top up the DeepSeek account balance, then reset the breaker"
            }
            ErrorKind::Overloaded => "retry after the indicated wait, or raise the limit",
        }
    }

    /// The HTTP status a server (such as the gateway) should answer with for this kind when no
    /// upstream status is known.
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::Network(_) | ErrorKind::Stream(_) => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Server => StatusCode::BAD_GATEWAY,
            ErrorKind::Client | ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Auth(AuthFailure::InvalidKey) => StatusCode::UNAUTHORIZED,
            ErrorKind::Auth(_) => StatusCode::PAYMENT_REQUIRED,
            ErrorKind::Config => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(reason)) => {
                ErrorKind::Auth(reason).http_status()
            }
            ErrorKind::CircuitOpen(_) | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `type` field of an OpenAI-shaped error body for this kind.
    fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::Client | ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Auth(AuthFailure::InvalidKey) => "authentication_error",
            ErrorKind::Auth(_) => "insufficient_quota",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Timeout(_) => "timeout_error",
            // OpenAI's own type for "overloaded, try again later" (a 503).
            ErrorKind::Overloaded => "server_error",
            ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(reason)) => {
                ErrorKind::Auth(reason).openai_type()
            }
            _ => "api_error",
        }
    }
}

/// DeepSeek's (OpenAI-shaped) error body: `{"error":{"message","type","param","code"}}`.
///
/// Parsed leniently: `code` may be a string or a number, any field may be missing. When the body
/// is not that JSON, `message` holds the raw text (capped at 4 KiB) and `raw` is `true`.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// The human-readable message.
    #[serde(default)]
    pub message: String,
    /// The error type, e.g. `invalid_request_error`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// The offending parameter, if named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// A machine-readable code.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_number"
    )]
    pub code: Option<String>,
    /// `true` when the body was not the JSON error shape and `message` is its raw text.
    #[serde(skip)]
    pub raw: bool,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

impl ApiError {
    /// Parses an error body. Never fails: a body that is not the JSON error shape is kept as raw
    /// text (lossy UTF-8, leading and trailing whitespace trimmed, capped at 4 KiB).
    pub fn parse(body: &[u8]) -> ApiError {
        #[derive(Deserialize)]
        struct Envelope {
            error: ApiErrorOrText,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum ApiErrorOrText {
            Object(ApiError),
            Text(String),
        }
        match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope {
                error: ApiErrorOrText::Object(api),
            }) => api,
            Ok(Envelope {
                error: ApiErrorOrText::Text(message),
            }) => ApiError {
                message,
                ..ApiError::default()
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let mut end = text.len().min(MAX_RAW_BODY);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                ApiError {
                    message: text[..end].to_owned(),
                    raw: true,
                    ..ApiError::default()
                }
            }
        }
    }
}

/// The crate's error. Cheap to move (one pointer); see the [module docs](self).
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    status: Option<StatusCode>,
    retry_after: Option<Duration>,
    api: Option<ApiError>,
    upstream_trace_id: Option<Box<str>>,
    source: Option<BoxError>,
    rate_limit: Option<RateLimitInfo>,
}

/// The state of a rate limit when it refused a call, for the `x-ratelimit-*` response headers
/// (see [`Error::rate_limited`] and [`Error::to_http_response`]).
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::error::RateLimitInfo;
///
/// let info = RateLimitInfo::new(10, 0, Duration::from_millis(4500));
/// assert_eq!((info.limit(), info.remaining()), (10, 0));
/// assert_eq!(info.reset(), Duration::from_millis(4500));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimitInfo {
    limit: u64,
    remaining: u64,
    reset: Duration,
}

impl RateLimitInfo {
    /// `limit` calls (or tokens) fit in a burst, `remaining` of them are left now, and the limit
    /// is back to full after `reset`.
    pub fn new(limit: u64, remaining: u64, reset: Duration) -> RateLimitInfo {
        RateLimitInfo {
            limit,
            remaining,
            reset,
        }
    }

    /// The burst size: what `x-ratelimit-limit` reports.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// What is left of the burst now: what `x-ratelimit-remaining` reports.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The time until the whole burst is available again: what `x-ratelimit-reset` reports
    /// (in whole seconds, rounded up).
    pub fn reset(&self) -> Duration {
        self.reset
    }
}

/// Whole seconds, rounded up: an HTTP header must not promise a retry earlier than the wait.
fn whole_seconds_up(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Longest `x-ds-trace-id` kept in an error; anything longer is not an ID DeepSeek sent.
const MAX_UPSTREAM_TRACE_ID: usize = 128;

impl Error {
    /// A new error of `kind` with a message saying what happened.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                status: None,
                retry_after: None,
                api: None,
                upstream_trace_id: None,
                source: None,
                rate_limit: None,
            }),
        }
    }

    /// The error of a local (or shared) rate limiter that refused a call: kind
    /// [`ErrorKind::RateLimited`], the wait before a retry can pass, and the limit's state for
    /// the `x-ratelimit-*` headers of [`to_http_response`](Error::to_http_response).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_deepseek::error::RateLimitInfo;
    /// use tower_deepseek::{Error, ErrorKind};
    ///
    /// let info = RateLimitInfo::new(5, 0, Duration::from_millis(4200));
    /// let error = Error::rate_limited("limiter \"inbound\"", Duration::from_millis(200), info);
    /// assert_eq!(error.kind(), ErrorKind::RateLimited);
    /// let response = error.to_http_response();
    /// assert_eq!(response.status(), 429);
    /// assert_eq!(response.headers()["retry-after"], "1");
    /// assert_eq!(response.headers()["x-ratelimit-limit"], "5");
    /// assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    /// assert_eq!(response.headers()["x-ratelimit-reset"], "5");
    /// ```
    pub fn rate_limited(
        message: impl Into<Cow<'static, str>>,
        retry_after: Duration,
        info: RateLimitInfo,
    ) -> Error {
        let mut error = Error::new(ErrorKind::RateLimited, message).with_retry_after(retry_after);
        error.inner.rate_limit = Some(info);
        error
    }

    /// The limit's state, when a rate limiter of this crate refused the call
    /// ([`Error::rate_limited`]).
    pub fn rate_limit_info(&self) -> Option<RateLimitInfo> {
        self.inner.rate_limit
    }

    /// Wraps any error from a transport or another layer, classifying it through its source
    /// chain (see [`classify::classify_error`]). An [`Error`] inside a `BoxError` is returned
    /// as it is, not wrapped twice.
    pub fn from_boxed(error: BoxError) -> Error {
        let error = match error.downcast::<Error>() {
            Ok(own) => return *own,
            Err(other) => other,
        };
        let kind = classify::classify_error(&*error)
            .error_kind()
            .unwrap_or(ErrorKind::Network(NetworkFailure::Other));
        Error::new(kind, "transport error").with_source(error)
    }

    /// Builds the error for an unsuccessful upstream response from its status, headers and
    /// body, using the [default classification](DeepSeekClassifier).
    pub fn from_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Error {
        let outcome = DeepSeekClassifier.classify(Observation::Head { status, headers });
        Error::from_response_outcome(outcome, status, headers, body)
    }

    /// Like [`Error::from_response`] with an outcome already decided by a custom classifier.
    pub fn from_response_outcome(
        outcome: Outcome,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Error {
        let kind = outcome.error_kind().unwrap_or(ErrorKind::Server);
        let retry_after = outcome
            .retry_after()
            .or_else(|| classify::retry_after(headers, SystemTime::now()));
        let mut error = Error::new(kind, format!("upstream answered {status}"));
        error.inner.status = Some(status);
        error.inner.retry_after = retry_after;
        error.inner.api = Some(ApiError::parse(body));
        error.inner.upstream_trace_id = headers
            .get("x-ds-trace-id")
            .and_then(|value| value.to_str().ok())
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= MAX_UPSTREAM_TRACE_ID
                    && id.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(Box::from);
        error
    }

    /// Adds the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Error {
        self.inner.source = Some(source.into());
        self
    }

    /// Records the HTTP status the error came with.
    pub fn with_status(mut self, status: StatusCode) -> Error {
        self.inner.status = Some(status);
        self
    }

    /// Records how long the caller should wait before trying again.
    pub fn with_retry_after(mut self, wait: Duration) -> Error {
        self.inner.retry_after = Some(wait);
        self
    }

    /// Removes every occurrence of `secret` from the text this error keeps from the upstream,
    /// replacing it with `[REDACTED]`. The client calls this with its API key.
    pub fn redact(mut self, secret: &str) -> Error {
        if secret.is_empty() {
            return self;
        }
        if let Some(api) = self.inner.api.as_mut() {
            for field in [
                Some(&mut api.message),
                api.error_type.as_mut(),
                api.param.as_mut(),
                api.code.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if field.contains(secret) {
                    *field = field.replace(secret, "[REDACTED]");
                }
            }
        }
        if self.inner.message.contains(secret) {
            self.inner.message = self.inner.message.replace(secret, "[REDACTED]").into();
        }
        self
    }

    /// What happened.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The outcome class of this error, as [`classify`] names it.
    pub fn outcome(&self) -> Outcome {
        match self.inner.kind {
            ErrorKind::Network(failure) => Outcome::Network(failure),
            ErrorKind::Timeout(phase) => Outcome::Timeout(phase),
            ErrorKind::RateLimited => Outcome::RateLimited {
                retry_after: self.inner.retry_after,
            },
            ErrorKind::Server => {
                Outcome::Server(self.inner.status.unwrap_or(StatusCode::BAD_GATEWAY))
            }
            ErrorKind::Client => {
                Outcome::Client(self.inner.status.unwrap_or(StatusCode::BAD_REQUEST))
            }
            ErrorKind::Auth(reason) => Outcome::Auth(reason),
            ErrorKind::Stream(failure) => Outcome::Stream(failure),
            ErrorKind::Config | ErrorKind::InvalidRequest => Outcome::Invalid,
            ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(reason)) => Outcome::Auth(reason),
            ErrorKind::CircuitOpen(_) | ErrorKind::Overloaded => Outcome::Rejected,
        }
    }

    /// The upstream HTTP status, when the error came from a response.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// The wait before a retry makes sense, when known (`Retry-After`, a local limiter).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// DeepSeek's own trace ID for the failed call (its `x-ds-trace-id` response header), to
    /// quote in a support ticket beside ours.
    pub fn upstream_trace_id(&self) -> Option<&str> {
        self.inner.upstream_trace_id.as_deref()
    }

    /// DeepSeek's error body, when the error came from a response.
    pub fn api_error(&self) -> Option<&ApiError> {
        self.inner.api.as_ref()
    }

    /// Whether DeepSeek's table says a retry may help (see [`Outcome::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        self.outcome().is_retryable()
    }

    /// The status a server should answer with: the upstream status when there was one,
    /// otherwise the kind's ([`ErrorKind::http_status`]).
    pub fn http_status(&self) -> StatusCode {
        self.inner
            .status
            .unwrap_or_else(|| self.inner.kind.http_status())
    }

    /// The error as an OpenAI-shaped JSON body (`{"error":{"message","type","param","code"}}`),
    /// keeping DeepSeek's own fields when it sent them, so OpenAI-compatible clients parse it.
    pub fn to_openai_json(&self) -> serde_json::Value {
        let api = self.inner.api.as_ref().filter(|api| !api.raw);
        let message = match api {
            Some(api) if !api.message.is_empty() => api.message.clone(),
            _ => self.to_string(),
        };
        serde_json::json!({
            "error": {
                "message": message,
                "type": api
                    .and_then(|api| api.error_type.clone())
                    .unwrap_or_else(|| self.inner.kind.openai_type().to_owned()),
                "param": api.and_then(|api| api.param.clone()),
                "code": api.and_then(|api| api.code.clone()),
            }
        })
    }

    /// The error as an HTTP response in the OpenAI error shape, with [`Error::http_status`]
    /// and, when known, a `Retry-After` header in whole seconds (rounded up; at least 1 for a
    /// rate-limit error, since `Retry-After: 0` invites an immediate retry that would be refused
    /// again). A rate limiter's refusal ([`Error::rate_limited`]) also gets
    /// `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` (seconds, rounded
    /// up).
    pub fn to_http_response(&self) -> http::Response<String> {
        let mut response = http::Response::new(self.to_openai_json().to_string());
        *response.status_mut() = self.http_status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = self.inner.retry_after {
            let mut seconds = whole_seconds_up(wait);
            if self.inner.kind == ErrorKind::RateLimited {
                seconds = seconds.max(1);
            }
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        if let Some(info) = self.inner.rate_limit {
            headers.insert(
                http::HeaderName::from_static("x-ratelimit-limit"),
                http::HeaderValue::from(info.limit),
            );
            headers.insert(
                http::HeaderName::from_static("x-ratelimit-remaining"),
                http::HeaderValue::from(info.remaining),
            );
            headers.insert(
                http::HeaderName::from_static("x-ratelimit-reset"),
                http::HeaderValue::from(whole_seconds_up(info.reset)),
            );
        }
        response
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug.field("kind", &self.inner.kind);
        debug.field("message", &self.inner.message);
        if let Some(status) = self.inner.status {
            debug.field("status", &status);
        }
        if let Some(wait) = self.inner.retry_after {
            debug.field("retry_after", &wait);
        }
        if let Some(api) = &self.inner.api {
            debug.field("api", api);
        }
        if let Some(id) = &self.inner.upstream_trace_id {
            debug.field("upstream_trace_id", id);
        }
        if let Some(source) = &self.inner.source {
            debug.field("source", source);
        }
        if let Some(info) = &self.inner.rate_limit {
            debug.field("rate_limit", info);
        }
        debug.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.inner.kind;
        write!(f, "{}: {}", kind.describe(), self.inner.message)?;
        if let Some(api) = &self.inner.api {
            if !api.message.is_empty() {
                write!(f, "; upstream says {:?}", api.message)?;
            }
            if let Some(code) = &api.code {
                write!(f, " (code {code})")?;
            }
        }
        if let Some(id) = &self.inner.upstream_trace_id {
            write!(f, "; DeepSeek trace id {id}")?;
        }
        if let Some(wait) = self.inner.retry_after {
            write!(f, "; retry after {:.3}s", wait.as_secs_f64())?;
        }
        write!(f, " ({})", kind.hint())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Error {
    fn into_response(self) -> axum_core::response::Response {
        self.to_http_response().map(axum_core::body::Body::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_deepseek_error_body() {
        let body = br#"{"error":{"message":"Model Not Exist","type":"invalid_request_error","param":null,"code":"invalid_request_error"}}"#;
        let api = ApiError::parse(body);
        assert_eq!(api.message, "Model Not Exist");
        assert_eq!(api.error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(api.param, None);
        assert_eq!(api.code.as_deref(), Some("invalid_request_error"));
        assert!(!api.raw);
    }

    #[test]
    fn numeric_codes_and_string_errors_are_accepted() {
        let api = ApiError::parse(br#"{"error":{"message":"x","code":429}}"#);
        assert_eq!(api.code.as_deref(), Some("429"));
        let api = ApiError::parse(br#"{"error":"plain text error"}"#);
        assert_eq!(api.message, "plain text error");
    }

    #[test]
    fn non_json_body_is_kept_raw_and_capped() {
        let api = ApiError::parse(b"  <html>502 Bad Gateway</html>\n");
        assert!(api.raw);
        assert_eq!(api.message, "<html>502 Bad Gateway</html>");
        let long = "\u{e9}".repeat(5000);
        let api = ApiError::parse(long.as_bytes());
        assert!(api.message.len() <= MAX_RAW_BODY);
        assert!(api.message.chars().all(|c| c == '\u{e9}'));
    }

    #[test]
    fn from_response_classifies_and_keeps_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "3".parse().unwrap());
        let error = Error::from_response(StatusCode::TOO_MANY_REQUESTS, &headers, b"busy");
        assert_eq!(error.kind(), ErrorKind::RateLimited);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(error.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(error.is_retryable());
        let text = error.to_string();
        assert!(
            text.contains("rate limited") && text.contains("retry after 3"),
            "{text}"
        );
    }

    #[test]
    fn every_status_class_gets_its_kind() {
        let empty = HeaderMap::new();
        for (status, kind) in [
            (400, ErrorKind::Client),
            (422, ErrorKind::Client),
            (401, ErrorKind::Auth(AuthFailure::InvalidKey)),
            (402, ErrorKind::Auth(AuthFailure::InsufficientBalance)),
            (429, ErrorKind::RateLimited),
            (500, ErrorKind::Server),
            (503, ErrorKind::Server),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(Error::from_response(status, &empty, b"").kind(), kind);
        }
    }

    #[test]
    fn deepseek_trace_id_is_kept_when_it_looks_like_an_id() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ds-trace-id", "ds-7f3a9c".parse().unwrap());
        let error = Error::from_response(StatusCode::SERVICE_UNAVAILABLE, &headers, b"");
        assert_eq!(error.upstream_trace_id(), Some("ds-7f3a9c"));
        assert!(error.to_string().contains("DeepSeek trace id ds-7f3a9c"));

        for bad in [
            "has space".to_owned(),
            "x".repeat(MAX_UPSTREAM_TRACE_ID + 1),
        ] {
            headers.insert("x-ds-trace-id", bad.parse().unwrap());
            let error = Error::from_response(StatusCode::SERVICE_UNAVAILABLE, &headers, b"");
            assert_eq!(error.upstream_trace_id(), None, "{bad:?}");
        }
    }

    #[test]
    fn redact_scrubs_upstream_text() {
        let secret = "sk-test-0123456789";
        let body = format!(r#"{{"error":{{"message":"bad key {secret}","code":"{secret}"}}}}"#);
        let error =
            Error::from_response(StatusCode::UNAUTHORIZED, &HeaderMap::new(), body.as_bytes())
                .redact(secret);
        for text in [
            format!("{error}"),
            format!("{error:?}"),
            error.to_openai_json().to_string(),
        ] {
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains("[REDACTED]"), "{text}");
        }
    }

    #[test]
    fn from_boxed_does_not_double_wrap() {
        let original = Error::new(ErrorKind::Timeout(TimeoutPhase::Idle), "idle");
        let boxed: BoxError = Box::new(original);
        let error = Error::from_boxed(boxed);
        assert_eq!(error.kind(), ErrorKind::Timeout(TimeoutPhase::Idle));
        assert!(error.source().is_none());

        let io: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let error = Error::from_boxed(io);
        assert_eq!(error.kind(), ErrorKind::Network(NetworkFailure::Connect));
        assert!(error.source().is_some());
    }

    #[test]
    fn openai_shape_keeps_upstream_fields_and_status() {
        let body = br#"{"error":{"message":"Invalid max_tokens","type":"invalid_request_error","param":"max_tokens","code":"invalid_value"}}"#;
        let error = Error::from_response(StatusCode::UNPROCESSABLE_ENTITY, &HeaderMap::new(), body);
        let response = error.to_http_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let json: serde_json::Value = serde_json::from_str(response.body()).unwrap();
        assert_eq!(json["error"]["message"], "Invalid max_tokens");
        assert_eq!(json["error"]["param"], "max_tokens");
        assert_eq!(json["error"]["code"], "invalid_value");

        let local = Error::new(
            ErrorKind::Timeout(TimeoutPhase::FirstToken),
            "no token in 30s",
        );
        let response = local.to_http_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let json: serde_json::Value = serde_json::from_str(response.body()).unwrap();
        assert_eq!(json["error"]["type"], "timeout_error");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("first token")
        );
    }

    #[test]
    fn circuit_open_errors_say_why_and_when() {
        let open = Error::new(
            ErrorKind::CircuitOpen(CircuitOpenReason::Unhealthy),
            "breaker \"deepseek-v4-flash\"",
        )
        .with_retry_after(Duration::from_millis(2500));
        assert_eq!(open.outcome(), Outcome::Rejected);
        assert!(!open.is_retryable() && !open.outcome().counts_as_failure());
        assert_eq!(open.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        let text = open.to_string();
        assert!(
            text.contains("circuit breaker is open")
                && text.contains("deepseek-v4-flash")
                && text.contains("retry after 2.500s"),
            "{text}"
        );
        let response = open.to_http_response();
        assert_eq!(response.headers()["retry-after"], "3");

        let forced = Error::new(ErrorKind::CircuitOpen(CircuitOpenReason::Forced), "b");
        assert!(forced.to_string().contains("forced open"));
        assert_eq!(forced.outcome(), Outcome::Rejected);

        let balance = Error::new(
            ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(AuthFailure::InsufficientBalance)),
            "b",
        );
        assert_eq!(
            balance.outcome(),
            Outcome::Auth(AuthFailure::InsufficientBalance)
        );
        assert_eq!(balance.http_status(), StatusCode::PAYMENT_REQUIRED);
        assert!(balance.to_string().contains("402") && balance.to_string().contains("top up"));
        assert_eq!(
            balance.to_openai_json()["error"]["type"],
            "insufficient_quota"
        );

        let key = Error::new(
            ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(AuthFailure::InvalidKey)),
            "b",
        );
        assert_eq!(key.http_status(), StatusCode::UNAUTHORIZED);
        assert!(key.to_string().contains("401") && key.to_string().contains("API key"));
        assert_ne!(key.to_string(), balance.to_string());
    }

    #[test]
    fn retry_after_header_rounds_up() {
        let error = Error::new(ErrorKind::RateLimited, "local limit")
            .with_retry_after(Duration::from_millis(1200));
        let response = error.to_http_response();
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn rate_limit_retry_after_is_never_zero() {
        let error =
            Error::new(ErrorKind::RateLimited, "local limit").with_retry_after(Duration::ZERO);
        assert_eq!(error.to_http_response().headers()["retry-after"], "1");
        let info = RateLimitInfo::new(3, 0, Duration::from_nanos(1));
        let error = Error::rate_limited("limiter", Duration::from_nanos(1), info);
        let response = error.to_http_response();
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(response.headers()["x-ratelimit-reset"], "1");
        // Other kinds keep their exact (rounded-up) wait.
        let open = Error::new(ErrorKind::CircuitOpen(CircuitOpenReason::Forced), "b")
            .with_retry_after(Duration::ZERO);
        assert_eq!(open.to_http_response().headers()["retry-after"], "0");
    }
}
