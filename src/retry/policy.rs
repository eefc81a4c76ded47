//! What is retried: the policy, and the request bodies that can be sent again.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Empty, Full};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::classify::Outcome;

/// What a [`RetryPolicy`] is asked about: one failed attempt.
#[non_exhaustive]
#[derive(Clone, Copy, Debug)]
pub struct RetryContext<'a> {
    /// How the attempt ended, as the layer's classifier says.
    pub outcome: Outcome,
    /// The attempt that ended, from 1 (the first call).
    pub attempt: u32,
    /// The response headers, when the attempt got a response head.
    pub headers: Option<&'a HeaderMap>,
}

/// A policy's answer.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Retry after the back-off, or after the upstream's `Retry-After` when it sent one.
    Retry,
    /// Retry after exactly this wait (still capped by `max_retry_after`).
    RetryAfter(Duration),
    /// Do not retry: the caller gets this attempt's answer.
    Stop,
}

/// Decides which failed attempts are retried. Closures
/// `Fn(&RetryContext<'_>) -> RetryDecision` implement it. The layer still applies its limits
/// (attempts, deadline, `max_retry_after`, budget, a body that cannot be replayed) to every
/// `Retry`.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::classify::Outcome;
/// use tower_deepseek::retry::{DeepSeekRetryPolicy, RetryContext, RetryDecision, RetryLayer, RetryPolicy};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// // DeepSeek's rules, but never retry a rate limit, and honour `x-ratelimit-reset` (seconds).
/// let policy = |context: &RetryContext<'_>| match context.outcome {
///     Outcome::RateLimited { .. } => RetryDecision::Stop,
///     _ => match context.headers.and_then(|h| h.get("x-ratelimit-reset")) {
///         Some(value) => value
///             .to_str()
///             .ok()
///             .and_then(|v| v.parse().ok())
///             .map(|s| RetryDecision::RetryAfter(Duration::from_secs(s)))
///             .unwrap_or(RetryDecision::Retry),
///         None => DeepSeekRetryPolicy.decide(context),
///     },
/// };
/// let layer = RetryLayer::builder().policy(policy).build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
pub trait RetryPolicy: Send + Sync + 'static {
    /// Decides about one failed attempt.
    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision;
}

impl<F> RetryPolicy for F
where
    F: Fn(&RetryContext<'_>) -> RetryDecision + Send + Sync + 'static,
{
    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision {
        self(context)
    }
}

/// The default policy: retry what [`Outcome::is_retryable`] says DeepSeek's table retries
/// (429, 5xx, timeouts, connect and reset errors, stream failures before anything was
/// delivered); never 400, 401, 402, 422 or a local rejection.
///
/// ```
/// use tower_deepseek::classify::{AuthFailure, Outcome};
/// use tower_deepseek::retry::{DeepSeekRetryPolicy, RetryDecision, RetryPolicy};
///
/// let decide = |outcome| DeepSeekRetryPolicy.decide(&tower_deepseek::retry::RetryContext::new(outcome, 1));
/// assert_eq!(decide(Outcome::Server(http::StatusCode::BAD_GATEWAY)), RetryDecision::Retry);
/// assert_eq!(decide(Outcome::Auth(AuthFailure::InsufficientBalance)), RetryDecision::Stop);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DeepSeekRetryPolicy;

impl RetryPolicy for DeepSeekRetryPolicy {
    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision {
        if context.outcome.is_retryable() {
            RetryDecision::Retry
        } else {
            RetryDecision::Stop
        }
    }
}

impl<'a> RetryContext<'a> {
    /// A context without response headers (for calling a policy yourself, e.g. in a test).
    pub fn new(outcome: Outcome, attempt: u32) -> RetryContext<'a> {
        RetryContext {
            outcome,
            attempt,
            headers: None,
        }
    }
}

/// A request body that can be sent again for a retry. Implemented where that is cheap:
/// [`Full<Bytes>`](Full) (the client's `RequestBody`), [`Empty<Bytes>`](Empty), `Bytes` and
/// `()` replay with a reference-count bump, `String` with a copy, [`Replayable`] by `Clone`.
/// [`SendOnce`] and streaming bodies (`hyper::body::Incoming`, boxed bodies) answer `None`:
/// such a request is **sent once and never retried**.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_deepseek::retry::{ReplayBody, SendOnce};
///
/// let body = Full::new(Bytes::from_static(b"{}"));
/// assert!(body.try_replay().is_some());
/// assert!(SendOnce::new(body).try_replay().is_none());
/// ```
pub trait ReplayBody: Sized {
    /// A copy to send again, or `None` when the body cannot be replayed.
    fn try_replay(&self) -> Option<Self>;
}

impl ReplayBody for Full<Bytes> {
    #[inline]
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for Empty<Bytes> {
    #[inline]
    fn try_replay(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl ReplayBody for Bytes {
    #[inline]
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for String {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for () {
    #[inline]
    fn try_replay(&self) -> Option<Self> {
        Some(())
    }
}

impl ReplayBody for hyper::body::Incoming {
    fn try_replay(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_replay(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_replay(&self) -> Option<Self> {
        None
    }
}

pin_project! {
    /// Marks a body that must not be replayed: the request is sent once, never retried.
    ///
    /// ```
    /// use tower_deepseek::retry::{ReplayBody, SendOnce};
    /// assert!(SendOnce::new(String::from("once")).try_replay().is_none());
    /// ```
    #[derive(Debug, Default)]
    pub struct SendOnce<B> {
        #[pin]
        body: B,
    }
}

impl<B> SendOnce<B> {
    /// Wraps a body that must be sent once.
    pub fn new(body: B) -> SendOnce<B> {
        SendOnce { body }
    }

    /// The body.
    pub fn into_inner(self) -> B {
        self.body
    }
}

impl<B> ReplayBody for SendOnce<B> {
    fn try_replay(&self) -> Option<Self> {
        None
    }
}

impl<B: Body> Body for SendOnce<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Opts a cloneable body into replay: each retry sends `body.clone()`.
///
/// ```
/// use tower_deepseek::retry::{ReplayBody, Replayable};
/// let body = Replayable(http_body_util::Full::new(bytes::Bytes::from_static(b"x")));
/// assert!(body.try_replay().is_some());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Replayable<B>(pub B);

impl<B: Clone> ReplayBody for Replayable<B> {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<B: Body + Unpin> Body for Replayable<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
