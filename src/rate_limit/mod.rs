//! Rate limiting with GCRA (governor): direct and keyed, reject or wait, token budgets, and
//! a pluggable decision step for a limit shared through Redis.
//!
//! [`RateLimitLayer`] limits calls per second or minute, globally
//! ([`build`](RateLimitBuilder::build)) or per key ([`build_keyed`](RateLimitBuilder::build_keyed)
//! with a [`KeyExtractor`]: [`HeaderKey`] for an API key, [`ClientIp`], [`ExtensionKey`],
//! [`ModelKey`], or any closure). [`TokenLimitLayer`] limits tokens per minute, reserving an
//! estimate when a call starts and reconciling it with the usage the response reports. Stack
//! both for DeepSeek's requests-and-tokens limits.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_deepseek::deepseek::DeepSeekClient;
//! use tower_deepseek::rate_limit::{RateLimitLayer, TokenLimitLayer};
//! use tower_deepseek::upstream::Upstream;
//!
//! # fn main() -> Result<(), tower_deepseek::Error> {
//! let transport = ServiceBuilder::new()
//!     .layer(RateLimitLayer::builder().name("rpm").per_minute(300).wait_up_to(Duration::from_secs(2)).build()?)
//!     .layer(TokenLimitLayer::builder().name("tpm").per_minute(200_000).build()?)
//!     .service(Upstream::new()?);
//! let client = DeepSeekClient::builder().api_key("sk-...").build(transport)?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```
//!
//! # The rules, settled
//!
//! - **Algorithm**: governor's GCRA (§4.1–4.2 of the reference): a rate of `count` per
//!   `period` emits one cell every `T = period / count`; the burst (default `count`) is how
//!   many pass at once. One atomic word per limiter (per key), no background drip. Time is
//!   [`TokioClock`] (`tokio::time::Instant`), so paused test time drives it.
//! - **Validation**: a zero rate, zero burst, zero period, a rate faster than one per
//!   nanosecond, or a zero eviction interval is a [`Config`](crate::ErrorKind::Config) error
//!   from `build`, naming the value; never a panic.
//! - **Over the limit**, by default the call is refused at once. With
//!   [`wait_up_to`](RateLimitBuilder::wait_up_to) it waits for capacity (plus
//!   [`Jitter`]) when that fits in the budget, then is admitted, or refused when capacity was
//!   taken meanwhile and the budget is spent; a call whose wait cannot fit is refused at once,
//!   without sleeping first (resilience4j's rule). tokio's timer rounds a wait up to the next
//!   millisecond.
//! - **Where the wait happens (tower semantics)**: in the response future, *before* the inner
//!   service is called, with an unready clone of the inner service that is driven ready only
//!   once admitted. `poll_ready` only drives the inner service and reserves nothing, so a
//!   waiting call holds no inner readiness (no concurrency permit, no buffer slot) and a ready
//!   clone that is never called holds no capacity. Waiting in `poll_ready` would instead block
//!   every caller of that service handle (behind a `Buffer`, all of them) on one call's wait.
//!   The fast path (admitted at once) calls the inner service directly from `call`: no clone,
//!   no box; the wait state is boxed, off the fast path.
//! - **Refusals** are [`Error`](crate::Error)s of kind
//!   [`RateLimited`](crate::ErrorKind::RateLimited) (made by
//!   [`Error::rate_limited`](crate::Error::rate_limited)) carrying the wait
//!   ([`retry_after`](crate::Error::retry_after)) and a [`RateLimitInfo`]. The same error
//!   serves both sides: on the client side it is what a retry layer or the caller sees; on the
//!   server side [`Error::to_http_response`](crate::Error::to_http_response) (and axum's
//!   `IntoResponse`, feature `axum`) makes it a `429` with `Retry-After` (whole seconds,
//!   rounded up, never 0), `x-ratelimit-limit` (the burst), `x-ratelimit-remaining` (0) and
//!   `x-ratelimit-reset` (seconds until the burst is full again, rounded up). A plain hyper
//!   server puts [`RateLimitResponseLayer`] outside the limiter to turn the error into that
//!   response. A call costing more than the burst can never pass: kind
//!   [`InvalidRequest`](crate::ErrorKind::InvalidRequest), saying so.
//! - **Sharing**: the layer is `Clone`; clones and every service they make share one limiter
//!   (one `Arc`).
//! - **Threads on one global limit**: for a burst large enough (at least 64 cells per thread
//!   slot), [`build`](RateLimitBuilder::build) lets each thread take cells from the limit a
//!   batch at a time (up to 64), so threads do not fight over its one atomic word on every call
//!   (the exact limit scaled 1.2 × from one thread to two here; batched, 1.6 ×). A batch is
//!   taken only when it conforms whole, a refusal first hands out cells other threads banked,
//!   and the limit admits at most `slots × batch` (≤ 1/32 of the burst) more than the exact
//!   GCRA over any window, never more than its rate over time. Set
//!   [`thread_batch(1)`](RateLimitBuilder::thread_batch) for exact decisions; keyed limits,
//!   token budgets and calls costing several cells are always exact
//!   (see [`DirectLimiter::with_thread_batch`]).
//! - **Bounded memory**: a keyed limiter sweeps idle keys on its own schedule (see
//!   [`KeyedLimiter`]); about 36 bytes per `u64` key (measured with a million keys).
//! - **Keys stay secret**: keys never appear in errors, events, logs or `Debug`;
//!   [`HeaderKey`] stores a keyed hash of the header, not its value.
//! - **Events**: a [`RateLimitListener`] hears every [`RateLimitEvent`] (refused, waited,
//!   backend unavailable, reconciled), named by the layer's name, never by key.
//!
//! # A shared limit (Redis)
//!
//! The decision is a [`RateLimitBackend`]: the local limiters decide synchronously
//! ([`Decide::Now`]); a shared store returns a future ([`Decide::Later`]), polled in the
//! response future before the inner service is called, and may answer
//! [`Decision::Unavailable`] to fail open or closed (the layer emits
//! [`RateLimitEvent::BackendUnavailable`]). Plug one in with
//! [`build_with_backend`](RateLimitBuilder::build_with_backend).
mod backend;
mod builder;
mod clock;
mod events;
mod key;
mod layer;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod response;
mod tokens;
mod usage_scan;

pub use backend::{
    Decide, Decision, DirectLimiter, KeyedLimiter, MAX_THREAD_BATCH, RateLimitBackend,
};
pub use builder::RateLimitBuilder;
pub use clock::{TokioClock, TokioReference};
pub use events::{RateLimitEvent, RateLimitListener};
pub use key::{ClientIp, ExtensionKey, Global, HeaderKey, KeyExtractor, ModelKey};
pub use layer::{Jitter, RateLimitLayer, RateLimitService, ResponseFuture};
pub use response::{RateLimitResponse, RateLimitResponseFuture, RateLimitResponseLayer};
pub use tokens::{
    DEFAULT_COMPLETION_ALLOWANCE, DEFAULT_TOKEN_ESTIMATE, MAX_LEDGER_KEYS, TokenLimitBody,
    TokenLimitBuilder, TokenLimitLayer, TokenLimitService, TokenObserver, TokenResponseFuture,
};

pub use crate::error::RateLimitInfo;

#[cfg(test)]
mod tests;
