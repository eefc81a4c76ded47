//! One answer to "what happened?".
//!
//! Every layer in this crate asks this module how a call ended instead of looking at status
//! codes on its own. A call ends in exactly one [`Outcome`]: the response head (status and
//! headers), an error, or, for streams, the body's end are turned into it by a [`Classify`]
//! implementation. [`DeepSeekClassifier`] is the default and follows DeepSeek's documented
//! error table:
//!
//! | observation | outcome | retried by default | counts against the breaker |
//! |---|---|---|---|
//! | 1xx, 2xx, 3xx | [`Outcome::Success`] | - | no |
//! | 400, 422, other 4xx | [`Outcome::Client`] | no | no |
//! | 401 | [`Outcome::Auth`]`(`[`AuthFailure::InvalidKey`]`)` | no | no (fatal for the key) |
//! | 402 | [`Outcome::Auth`]`(`[`AuthFailure::InsufficientBalance`]`)` | no | no (fatal until topped up) |
//! | 429 | [`Outcome::RateLimited`] with `Retry-After` | yes | no |
//! | 500, 502, 503, 504, other 5xx | [`Outcome::Server`] | yes | yes |
//! | a timeout | [`Outcome::Timeout`] with its phase | yes | yes |
//! | connect refused, reset, TLS | [`Outcome::Network`] | yes | yes |
//! | stream cut, malformed chunk | [`Outcome::Stream`] | yes, if nothing was delivered | yes |
//! | `finish_reason: insufficient_system_resource` | [`Outcome::Stream`] | yes, if nothing was delivered | yes |
//! | a layer of this crate refused the call (open circuit breaker, full concurrency limit) | [`Outcome::Rejected`] | no (wait [`Error::retry_after`](crate::Error::retry_after)) | no |
//!
//! Users replace the table by passing their own [`Classify`]; closures implement it:
//!
//! ```
//! use http::StatusCode;
//! use tower_deepseek::classify::{Classify, DeepSeekClassifier, Observation, Outcome};
//!
//! // Treat 404 from a proxy in front of DeepSeek as a server failure, keep the rest.
//! let classifier = |observation: Observation<'_>| match observation {
//!     Observation::Head { status, .. } if status == StatusCode::NOT_FOUND => {
//!         Outcome::Server(status)
//!     }
//!     other => DeepSeekClassifier.classify(other),
//! };
//! let outcome = classifier.classify(Observation::Head {
//!     status: StatusCode::NOT_FOUND,
//!     headers: &http::HeaderMap::new(),
//! });
//! assert!(outcome.counts_as_failure());
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::error::{CircuitOpenReason, Error, ErrorKind};

/// How a call ended, as every layer of this crate understands it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The call succeeded (a 1xx-3xx response, or a stream that ended with `[DONE]`).
    Success,
    /// The request was rejected as invalid (400, 422, any 4xx without a rule of its own).
    /// The caller's fault: never retried, never held against the upstream.
    Client(StatusCode),
    /// The credentials cannot be used (401) or the account cannot pay (402).
    Auth(AuthFailure),
    /// The upstream is rate limiting (429). `retry_after` is the wait it asked for, if any.
    RateLimited {
        /// The wait from `Retry-After` (seconds or HTTP-date) or `retry-after-ms`.
        retry_after: Option<Duration>,
    },
    /// The upstream failed (500, 502, 503, 504, any other 5xx).
    Server(StatusCode),
    /// A deadline passed before the call ended.
    Timeout(TimeoutPhase),
    /// The connection could not be made or was lost.
    Network(NetworkFailure),
    /// The response body failed after a successful head.
    Stream(StreamFailure),
    /// The request never left: it failed validation or the client is misconfigured.
    Invalid,
    /// A layer of this crate refused the call before sending it (an open circuit breaker, a
    /// full concurrency limit).
    /// Not evidence about the upstream, and not retried at once: see
    /// [`Error::retry_after`](crate::Error::retry_after) for when a new call makes sense.
    Rejected,
}

/// Why credentials were refused.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// 401: the API key is missing, wrong or revoked.
    InvalidKey,
    /// 402: the account balance is empty.
    InsufficientBalance,
}

/// Which deadline passed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeoutPhase {
    /// Establishing the TCP (and TLS) connection.
    Connect,
    /// Waiting for the response status and headers.
    Headers,
    /// Waiting for the first token of a stream (keep-alive comments do not count).
    FirstToken,
    /// The gap between two chunks of a stream.
    Idle,
    /// The whole call (or the whole attempt, for a per-attempt timeout).
    Total,
    /// One attempt of a retried call ran past the retry layer's per-attempt timeout.
    Attempt,
    /// The retry layer's overall deadline (across all attempts and back-off waits) passed.
    Deadline,
}

/// How a connection failed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetworkFailure {
    /// The connection could not be opened (refused, unreachable, DNS).
    Connect,
    /// An open connection was reset or closed mid-message.
    Reset,
    /// The TLS handshake or a TLS record failed.
    Tls,
    /// Any other I/O or protocol failure.
    Other,
}

/// How a response body failed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamFailure {
    /// The body ended before the stream's end marker (`data: [DONE]`).
    Truncated,
    /// A chunk or body could not be decoded (invalid JSON, invalid UTF-8, bad framing).
    Malformed,
    /// A line was longer than the configured cap.
    LineTooLong,
    /// DeepSeek stopped with `finish_reason: insufficient_system_resource`.
    InsufficientSystemResource,
}

impl Outcome {
    /// `true` for [`Outcome::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// Whether DeepSeek's table says a retry may help: rate limits, server errors, timeouts,
    /// network failures and stream failures. For stream failures this holds only while nothing
    /// has been delivered to the caller; the retry layer checks that.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Outcome::RateLimited { .. }
                | Outcome::Server(_)
                | Outcome::Timeout(_)
                | Outcome::Network(_)
                | Outcome::Stream(_)
        )
    }

    /// Whether the outcome is evidence that the upstream is unhealthy (what a circuit breaker
    /// counts as a failure). Rate limits, client errors and auth failures are not.
    pub fn counts_as_failure(&self) -> bool {
        matches!(
            self,
            Outcome::Server(_) | Outcome::Timeout(_) | Outcome::Network(_) | Outcome::Stream(_)
        )
    }

    /// The wait the upstream asked for, when rate limited.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Outcome::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A short, fixed, lowercase name for the outcome class, fit for a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Client(_) => "client_error",
            Outcome::Auth(_) => "auth_error",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::Server(_) => "server_error",
            Outcome::Timeout(_) => "timeout",
            Outcome::Network(_) => "network_error",
            Outcome::Stream(_) => "stream_error",
            Outcome::Invalid => "invalid_request",
            Outcome::Rejected => "rejected",
        }
    }

    /// The error kind a failed outcome maps to; `None` for success. An outcome does not say
    /// which layer refused a call, so [`Outcome::Rejected`] maps to an open circuit; the refusing
    /// layer's own [`Error`] carries the exact kind (`CircuitOpen` or `Overloaded`).
    pub fn error_kind(&self) -> Option<ErrorKind> {
        Some(match *self {
            Outcome::Success => return None,
            Outcome::Client(_) => ErrorKind::Client,
            Outcome::Auth(reason) => ErrorKind::Auth(reason),
            Outcome::RateLimited { .. } => ErrorKind::RateLimited,
            Outcome::Server(_) => ErrorKind::Server,
            Outcome::Timeout(phase) => ErrorKind::Timeout(phase),
            Outcome::Network(failure) => ErrorKind::Network(failure),
            Outcome::Stream(failure) => ErrorKind::Stream(failure),
            Outcome::Invalid => ErrorKind::InvalidRequest,
            Outcome::Rejected => ErrorKind::CircuitOpen(CircuitOpenReason::Unhealthy),
        })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a classifier is asked about.
#[non_exhaustive]
#[derive(Clone, Copy, Debug)]
pub enum Observation<'a> {
    /// The response status and headers arrived.
    Head {
        /// The response status.
        status: StatusCode,
        /// The response headers.
        headers: &'a HeaderMap,
    },
    /// The call (or its body) failed with an error. The error may be this crate's
    /// [`Error`] or any error from the transport (hyper, hyper-util, `std::io`, tower).
    Error(&'a (dyn StdError + 'static)),
    /// A response body ended cleanly. `finish_reason` is the last one seen, if any.
    End {
        /// The last `finish_reason` of the body (non-streaming message or final chunk).
        finish_reason: Option<&'a str>,
    },
}

/// Turns an [`Observation`] into an [`Outcome`]. Closures `Fn(Observation<'_>) -> Outcome`
/// implement it, so a custom rule can fall back to [`DeepSeekClassifier`] for the rest.
///
/// ```
/// use tower_deepseek::classify::{Classify, DeepSeekClassifier, Observation, Outcome};
///
/// let outcome = DeepSeekClassifier.classify(Observation::Head {
///     status: http::StatusCode::SERVICE_UNAVAILABLE,
///     headers: &http::HeaderMap::new(),
/// });
/// assert_eq!(outcome, Outcome::Server(http::StatusCode::SERVICE_UNAVAILABLE));
/// ```
pub trait Classify: Send + Sync + 'static {
    /// Classifies one observation.
    fn classify(&self, observation: Observation<'_>) -> Outcome;
}

impl<F> Classify for F
where
    F: Fn(Observation<'_>) -> Outcome + Send + Sync + 'static,
{
    fn classify(&self, observation: Observation<'_>) -> Outcome {
        self(observation)
    }
}

/// The default classification: DeepSeek's documented error table (see the [module docs](self)).
///
/// ```
/// use tower_deepseek::classify::{AuthFailure, Classify, DeepSeekClassifier, Observation, Outcome};
///
/// let headers = http::HeaderMap::new();
/// let head = |status| Observation::Head { status, headers: &headers };
/// assert_eq!(
///     DeepSeekClassifier.classify(head(http::StatusCode::PAYMENT_REQUIRED)),
///     Outcome::Auth(AuthFailure::InsufficientBalance),
/// );
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DeepSeekClassifier;

impl Classify for DeepSeekClassifier {
    #[inline]
    fn classify(&self, observation: Observation<'_>) -> Outcome {
        match observation {
            Observation::Head { status, headers } => classify_status(status, headers),
            Observation::Error(error) => classify_error(error),
            Observation::End { finish_reason } => classify_end(finish_reason),
        }
    }
}

/// DeepSeek's table for a response head.
#[inline]
pub fn classify_status(status: StatusCode, headers: &HeaderMap) -> Outcome {
    match status.as_u16() {
        100..=399 => Outcome::Success,
        401 => Outcome::Auth(AuthFailure::InvalidKey),
        402 => Outcome::Auth(AuthFailure::InsufficientBalance),
        429 => Outcome::RateLimited {
            retry_after: retry_after(headers, SystemTime::now()),
        },
        400..=499 => Outcome::Client(status),
        _ => Outcome::Server(status),
    }
}

/// The outcome of a body that ended cleanly with the given last `finish_reason`.
#[inline]
pub fn classify_end(finish_reason: Option<&str>) -> Outcome {
    match finish_reason {
        Some("insufficient_system_resource") => {
            Outcome::Stream(StreamFailure::InsufficientSystemResource)
        }
        _ => Outcome::Success,
    }
}

/// Classifies any error by walking its source chain: this crate's [`Error`] answers for
/// itself; `std::io` errors, hyper and hyper-util errors, rustls errors and tower/tokio
/// timeouts are recognised; anything else is a [`NetworkFailure::Other`].
pub fn classify_error(error: &(dyn StdError + 'static)) -> Outcome {
    let connecting = is_connect_error(error);
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    let mut saw_hyper_incomplete = false;
    while let Some(err) = current {
        if let Some(own) = err.downcast_ref::<Error>() {
            return own.outcome();
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as Io;
            match io.kind() {
                Io::ConnectionRefused
                | Io::AddrNotAvailable
                | Io::NotConnected
                | Io::HostUnreachable
                | Io::NetworkUnreachable => return Outcome::Network(NetworkFailure::Connect),
                Io::ConnectionReset
                | Io::ConnectionAborted
                | Io::BrokenPipe
                | Io::UnexpectedEof
                    if !connecting =>
                {
                    return Outcome::Network(NetworkFailure::Reset);
                }
                Io::TimedOut if connecting => return Outcome::Timeout(TimeoutPhase::Connect),
                Io::TimedOut => return Outcome::Timeout(TimeoutPhase::Total),
                _ => {}
            }
        }
        if err.is::<tokio::time::error::Elapsed>() || err.is::<tower::timeout::error::Elapsed>() {
            return Outcome::Timeout(TimeoutPhase::Total);
        }
        #[cfg(feature = "upstream")]
        if err.is::<rustls::Error>() {
            return Outcome::Network(NetworkFailure::Tls);
        }
        if let Some(hyper_err) = err.downcast_ref::<hyper::Error>() {
            if hyper_err.is_timeout() {
                return Outcome::Timeout(TimeoutPhase::Total);
            }
            if hyper_err.is_incomplete_message() || hyper_err.is_canceled() {
                saw_hyper_incomplete = true;
            }
        }
        current = next_cause(err);
    }
    if connecting {
        Outcome::Network(NetworkFailure::Connect)
    } else if saw_hyper_incomplete {
        Outcome::Network(NetworkFailure::Reset)
    } else {
        Outcome::Network(NetworkFailure::Other)
    }
}

/// Whether hyper-util's pooled client says the error happened while connecting.
fn is_connect_error(error: &(dyn StdError + 'static)) -> bool {
    #[cfg(feature = "upstream")]
    {
        let mut current = Some(error);
        while let Some(err) = current {
            if let Some(client) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
                return client.is_connect();
            }
            current = next_cause(err);
        }
    }
    let _ = error;
    false
}

/// The next error down the chain. `std::io::Error::source` skips the error it wraps (it
/// returns that error's source), which would hide e.g. a rustls error inside an I/O error.
fn next_cause<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    if let Some(io) = error.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
    {
        return Some(inner);
    }
    error.source()
}

/// Reads the wait an upstream asked for: `retry-after-ms` (milliseconds, sent by
/// OpenAI-compatible servers) first, then `Retry-After` as delta-seconds or an HTTP-date.
/// A date in the past is a wait of zero; a value that parses as neither is ignored.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// let mut headers = http::HeaderMap::new();
/// headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
/// assert_eq!(
///     tower_deepseek::classify::retry_after(&headers, SystemTime::now()),
///     Some(Duration::from_secs(7)),
/// );
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(parse_millis) {
        return Some(ms);
    }
    parse_retry_after(headers.get(http::header::RETRY_AFTER)?, now)
}

/// Parses one `Retry-After` value (RFC 9110 §10.2.3): delta-seconds or an HTTP-date,
/// relative to `now`.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Overlong numbers saturate rather than fail: "wait a very long time" is the meaning.
        let seconds = text.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_millis(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let millis: f64 = text.parse().ok()?;
    (millis.is_finite() && millis >= 0.0).then(|| Duration::from_secs_f64(millis / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16) -> Outcome {
        DeepSeekClassifier.classify(Observation::Head {
            status: StatusCode::from_u16(status).unwrap(),
            headers: &HeaderMap::new(),
        })
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn success_rows() {
        for code in [100, 200, 201, 204, 301, 304] {
            assert_eq!(head(code), Outcome::Success, "{code}");
        }
    }

    #[test]
    fn client_error_rows_are_not_retried_nor_failures() {
        for code in [400, 403, 404, 413, 422, 499] {
            let outcome = head(code);
            assert_eq!(outcome, Outcome::Client(status(code)), "{code}");
            assert!(!outcome.is_retryable(), "{code}");
            assert!(!outcome.counts_as_failure(), "{code}");
            assert_eq!(outcome.error_kind(), Some(ErrorKind::Client));
        }
    }

    #[test]
    fn auth_rows_are_fatal() {
        assert_eq!(head(401), Outcome::Auth(AuthFailure::InvalidKey));
        assert_eq!(head(402), Outcome::Auth(AuthFailure::InsufficientBalance));
        for code in [401, 402] {
            assert!(!head(code).is_retryable());
            assert!(!head(code).counts_as_failure());
        }
    }

    #[test]
    fn rate_limit_row_is_retried_but_not_a_failure() {
        let outcome = head(429);
        assert_eq!(outcome, Outcome::RateLimited { retry_after: None });
        assert!(outcome.is_retryable());
        assert!(!outcome.counts_as_failure());
    }

    #[test]
    fn rate_limit_reads_retry_after_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("12"));
        let outcome = classify_status(StatusCode::TOO_MANY_REQUESTS, &headers);
        assert_eq!(outcome.retry_after(), Some(Duration::from_secs(12)));
    }

    #[test]
    fn retry_after_http_date_is_relative_to_now() {
        let now = httpdate::parse_http_date("Wed, 25 Nov 2026 10:00:00 GMT").unwrap();
        let value = HeaderValue::from_static("Wed, 25 Nov 2026 10:01:30 GMT");
        assert_eq!(
            parse_retry_after(&value, now),
            Some(Duration::from_secs(90))
        );
        let past = HeaderValue::from_static("Wed, 25 Nov 2026 09:00:00 GMT");
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_rejects_garbage_and_prefers_ms() {
        let now = SystemTime::now();
        for bad in ["", "soon", "-1", "1.5", "12abc"] {
            let value = HeaderValue::from_str(bad).unwrap();
            assert_eq!(parse_retry_after(&value, now), None, "{bad:?}");
        }
        let huge = HeaderValue::from_static("99999999999999999999999");
        assert_eq!(
            parse_retry_after(&huge, now),
            Some(Duration::from_secs(u64::MAX))
        );
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("5"));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(
            retry_after(&headers, now),
            Some(Duration::from_millis(1500))
        );
        headers.insert("retry-after-ms", HeaderValue::from_static("nan"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(5)));
    }

    #[test]
    fn server_error_rows_are_retried_and_failures() {
        for code in [500, 502, 503, 504, 529, 599] {
            let outcome = head(code);
            assert_eq!(outcome, Outcome::Server(status(code)), "{code}");
            assert!(outcome.is_retryable(), "{code}");
            assert!(outcome.counts_as_failure(), "{code}");
        }
    }

    #[test]
    fn io_errors_map_to_network_phases() {
        use std::io;
        let cases = [
            (
                io::ErrorKind::ConnectionRefused,
                Outcome::Network(NetworkFailure::Connect),
            ),
            (
                io::ErrorKind::ConnectionReset,
                Outcome::Network(NetworkFailure::Reset),
            ),
            (
                io::ErrorKind::BrokenPipe,
                Outcome::Network(NetworkFailure::Reset),
            ),
            (
                io::ErrorKind::UnexpectedEof,
                Outcome::Network(NetworkFailure::Reset),
            ),
            (
                io::ErrorKind::TimedOut,
                Outcome::Timeout(TimeoutPhase::Total),
            ),
            (
                io::ErrorKind::Other,
                Outcome::Network(NetworkFailure::Other),
            ),
        ];
        for (kind, expected) in cases {
            let error = io::Error::new(kind, "boom");
            assert_eq!(classify_error(&error), expected, "{kind:?}");
            assert!(expected.is_retryable() && expected.counts_as_failure());
        }
    }

    #[test]
    fn nested_sources_are_walked() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapper")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let error = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(
            classify_error(&error),
            Outcome::Network(NetworkFailure::Reset)
        );
    }

    #[test]
    fn timeouts_from_tower_are_total_timeouts() {
        let error = tower::timeout::error::Elapsed::new();
        assert_eq!(
            classify_error(&error),
            Outcome::Timeout(TimeoutPhase::Total)
        );
    }

    #[test]
    fn crate_errors_answer_for_themselves() {
        for (kind, expected) in [
            (
                ErrorKind::Timeout(TimeoutPhase::FirstToken),
                Outcome::Timeout(TimeoutPhase::FirstToken),
            ),
            (
                ErrorKind::Stream(StreamFailure::Truncated),
                Outcome::Stream(StreamFailure::Truncated),
            ),
            (
                ErrorKind::Stream(StreamFailure::Malformed),
                Outcome::Stream(StreamFailure::Malformed),
            ),
            (ErrorKind::InvalidRequest, Outcome::Invalid),
            (ErrorKind::Config, Outcome::Invalid),
            (
                ErrorKind::Network(NetworkFailure::Tls),
                Outcome::Network(NetworkFailure::Tls),
            ),
            (
                ErrorKind::CircuitOpen(CircuitOpenReason::Unhealthy),
                Outcome::Rejected,
            ),
            (
                ErrorKind::CircuitOpen(CircuitOpenReason::Forced),
                Outcome::Rejected,
            ),
            (
                ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(AuthFailure::InvalidKey)),
                Outcome::Auth(AuthFailure::InvalidKey),
            ),
        ] {
            let error = Error::new(kind, "test");
            assert_eq!(classify_error(&error), expected, "{kind:?}");
        }
    }

    #[test]
    fn stream_failures_are_retryable_failures() {
        for failure in [
            StreamFailure::Truncated,
            StreamFailure::Malformed,
            StreamFailure::LineTooLong,
            StreamFailure::InsufficientSystemResource,
        ] {
            let outcome = Outcome::Stream(failure);
            assert!(outcome.is_retryable() && outcome.counts_as_failure());
        }
    }

    #[test]
    fn rejected_is_neither_retryable_nor_a_failure() {
        let outcome = Outcome::Rejected;
        assert!(!outcome.is_success() && !outcome.is_retryable() && !outcome.counts_as_failure());
        assert_eq!(
            outcome.error_kind(),
            Some(ErrorKind::CircuitOpen(CircuitOpenReason::Unhealthy))
        );
        assert_eq!(outcome.as_str(), "rejected");
    }

    #[test]
    fn body_end_rows() {
        assert_eq!(classify_end(Some("stop")), Outcome::Success);
        assert_eq!(classify_end(Some("length")), Outcome::Success);
        assert_eq!(classify_end(Some("tool_calls")), Outcome::Success);
        assert_eq!(classify_end(None), Outcome::Success);
        assert_eq!(
            classify_end(Some("insufficient_system_resource")),
            Outcome::Stream(StreamFailure::InsufficientSystemResource)
        );
    }

    #[test]
    fn closures_replace_the_table() {
        let always_server = |_: Observation<'_>| Outcome::Server(StatusCode::BAD_GATEWAY);
        assert_eq!(
            always_server.classify(Observation::End {
                finish_reason: None
            }),
            Outcome::Server(StatusCode::BAD_GATEWAY)
        );
    }

    #[test]
    fn labels_are_distinct() {
        let all = [
            Outcome::Success,
            Outcome::Client(StatusCode::BAD_REQUEST),
            Outcome::Auth(AuthFailure::InvalidKey),
            Outcome::RateLimited { retry_after: None },
            Outcome::Server(StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::Timeout(TimeoutPhase::Total),
            Outcome::Network(NetworkFailure::Other),
            Outcome::Stream(StreamFailure::Truncated),
            Outcome::Invalid,
            Outcome::Rejected,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(Outcome::as_str).collect();
        assert_eq!(labels.len(), all.len());
    }
}
