//! Retries that understand LLM calls: DeepSeek's rules, back-off with jitter, `Retry-After`,
//! deadlines, a shared budget, and never a retry once a stream has reached the caller.
//!
//! [`RetryLayer`] is an ordinary tower layer over `http::Request<B>` → `http::Response<RB>`.
//! Each call's first attempt goes to the service that `poll_ready` made ready; every retry
//! drives the call's own clone of the service to ready again before calling it.
//!
//! # What is retried
//!
//! Every decision goes through [`classify`](crate::classify): the layer's [`Classify`]
//! (default [`DeepSeekClassifier`](crate::classify::DeepSeekClassifier)) names the outcome of
//! each attempt and the [`RetryPolicy`] (default [`DeepSeekRetryPolicy`], closures implement
//! it) decides. By default 429, 5xx, timeouts, connect and reset errors, and stream failures
//! before anything was delivered (a cut, a first-token timeout, `insufficient_system_resource`
//! with [`Hold::All`]) are retried; 400, 401, 402, 422 and a local rejection (an open circuit
//! breaker) are not.
//!
//! # When
//!
//! - `max_attempts` counts the first call (default 3), capped at [`DEFAULT_ATTEMPT_CAP`] (5,
//!   as gRPC) unless [`attempt_cap`](RetryLayerBuilder::attempt_cap) raises it.
//! - Back-off: [`Backoff`], full-jitter exponential by default (500 ms, ×2, cap 30 s); equal
//!   and decorrelated jitter, a constant interval, gRPC's ±20 % and Envoy's schedule are
//!   options. The random source is injectable ([`RetryLayerBuilder::random`]).
//! - `Retry-After` (delta-seconds or HTTP-date, or `retry-after-ms`) on a 429 or a 5xx
//!   replaces the back-off: the retry waits exactly that long, never sooner. A wait above
//!   [`max_retry_after`](RetryLayerBuilder::max_retry_after) (default 60 s) ends retrying
//!   and the caller gets the server's answer. An unparseable value is ignored (back-off).
//! - An overall [`deadline`](RetryLayerBuilder::deadline) covers all attempts and waits: a
//!   retry whose wait would reach it is not started (the caller gets the last answer), and an
//!   attempt running when it passes fails with
//!   [`TimeoutPhase::Deadline`](crate::classify::TimeoutPhase::Deadline). A per-attempt
//!   [`attempt_timeout`](RetryLayerBuilder::attempt_timeout) fails just that attempt with
//!   [`TimeoutPhase::Attempt`](crate::classify::TimeoutPhase::Attempt), which is retried. Both
//!   end when a response is handed over; bound the body with the
//!   [stream timeouts](crate::timeout).
//! - A [budget](RetryBudget) shared by all clones stops retries from multiplying load in an
//!   outage ([`TpsBudget`] by default; [`GrpcThrottle`], [`AdaptiveThrottle`]).
//!
//! # What the caller gets
//!
//! When retrying ends, the last attempt's answer: the upstream's response for a status (a
//! 503 stays a 503 response, not a synthetic error), or the last error. A deadline that ends
//! the loop mid-attempt is [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) naming the
//! deadline.
//!
//! # Request bodies
//!
//! A retry sends the request again, so its body must be replayable ([`ReplayBody`]):
//! `Full<Bytes>` (the client's `RequestBody`), `Empty<Bytes>`, `Bytes` and `()` replay by a
//! reference-count bump, never a copy of the bytes; the request's method, URI, headers and
//! extensions are cloned once per call (kept for a retry) and once per retry. A body that
//! cannot be replayed ([`SendOnce`], a streaming body such as `hyper::body::Incoming`) is
//! **sent once and never retried**, whatever its outcome.
//!
//! # Streams and the commit point
//!
//! A response that has started reaching the caller is never retried: a later failure is an
//! error in the body. For a streaming (`text/event-stream`) 2xx the head says little, so with
//! [`Hold::Streams`] (the default) the layer holds such a response until its first token (an
//! SSE `data:` event, found by the crate's [body observer](crate::body)), keeping the frames
//! seen so far (keep-alive comments included). If the body fails, ends or times out first,
//! nothing was delivered and the attempt is retried; otherwise the caller gets a body that
//! yields the held frames unchanged, then the rest. The last allowed attempt is handed over
//! at its head. [`Hold::All`] also reads non-streaming 2xx bodies to their end first (so
//! `finish_reason: insufficient_system_resource` is retried); [`Hold::Off`] hands everything
//! over at the head. Non-streaming responses pass through without allocation under the
//! default.
//!
//! # Events and metrics
//!
//! A [`RetryListener`] hears each [`RetryEvent`] (retry, budget exhausted, gave up with its
//! [`GiveUpReason`], succeeded); [`RetryLayer::metrics`] counts calls in resilience4j's four
//! kinds.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_deepseek::retry::{Backoff, RetryLayer, TpsBudget};
//! use tower_deepseek::timeout::StreamTimeoutLayer;
//!
//! # fn main() -> Result<(), tower_deepseek::Error> {
//! let budget = TpsBudget::new(Duration::from_secs(10), 10, 0.2)?;
//! let stack = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::builder()
//!             .max_attempts(3)
//!             .backoff(Backoff::exponential(Duration::from_millis(500), 2.0, Duration::from_secs(8)))
//!             .deadline(Duration::from_secs(120))
//!             .budget(budget)
//!             .build()?,
//!     )
//!     .layer(
//!         StreamTimeoutLayer::builder()
//!             .headers(Duration::from_secs(30))
//!             .first_token(Duration::from_secs(60))
//!             .idle(Duration::from_secs(30))
//!             .build()?,
//!     );
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```
//!
//! [`Classify`]: crate::classify::Classify

mod backoff;
mod body;
mod budget;
mod config;
mod events;
mod layer;
mod policy;
pub(crate) mod template;
#[cfg(test)]
mod tests;

pub use backoff::{Backoff, FastRandom, Jitter, RandomSource};
pub use body::RetryBody;
pub use budget::{AdaptiveThrottle, GrpcThrottle, RetryBudget, TpsBudget};
pub use config::{DEFAULT_ATTEMPT_CAP, Hold, RetryLayerBuilder};
pub use events::{GiveUpReason, RetryEvent, RetryListener, RetryMetrics};
pub use layer::{ResponseFuture, RetryLayer, RetryService};
pub use policy::{
    DeepSeekRetryPolicy, ReplayBody, Replayable, RetryContext, RetryDecision, RetryPolicy, SendOnce,
};
