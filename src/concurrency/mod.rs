//! Concurrency limits: a fixed limit that queues or sheds, and an adaptive limit that learns
//! how much the upstream can take.
//!
//! - [`ConcurrencyLimitLayer`]: at most `max_in_flight` calls at once (a bulkhead). A call over
//!   the limit waits up to `max_wait` for a slot (zero, the default: it is shed at once), and
//!   at most `max_queue` calls wait. Put it on the server side so a burst of clients cannot
//!   open more upstream streams than the account allows.
//! - [`AdaptiveConcurrencyLayer`]: the limit moves with the upstream's behaviour (reference
//!   `resilience-semantics.md` §5): [`Aimd`] by default grows it while calls succeed with
//!   enough in flight and backs off on timeouts, 429 and 503; [`Vegas`], [`Gradient2`] and
//!   [`EnvoyGradient`] follow latency instead. Put it on the client side, under the retry layer.
//!
//! A shed call fails at once with [`ErrorKind::Overloaded`], whose [`Error::retry_after`]
//! carries the limiter's hint (1 s by default), so [`Error::to_http_response`] answers
//! `503 Service Unavailable` with `Retry-After`. Its outcome is
//! [`Outcome::Rejected`](crate::classify::Outcome::Rejected): not retried at once, not held
//! against the upstream.
//!
//! # Algorithms
//!
//! Each is a [`LimitAlgorithm`] (`update(sample) -> limit`, no clock, no I/O), so any of them,
//! or one of yours, plugs into [`AdaptiveConcurrencyLayerBuilder::algorithm`].
//!
//! | algorithm | source | grows when | shrinks when |
//! |---|---|---|---|
//! | [`Aimd`] (default) | Netflix `AIMDLimit` | at least half the limit is in flight | a drop (timeout, 429, 503) or a slow call |
//! | [`Vegas`] | Netflix `VegasLimit` | the estimated queue is short | the queue is long, or a drop |
//! | [`Gradient2`] | Netflix `Gradient2Limit` | short-term latency holds near the long-term average | short-term latency rises above it |
//! | [`EnvoyGradient`] | Envoy's adaptive concurrency filter | the sampled latency is near the measured minimum | it rises above the minimum plus a buffer |
//!
//! # A slot lives until the response body ends
//!
//! An LLM stream holds upstream capacity for as long as it generates, often minutes after the
//! response head. So both layers keep the call's slot in the response body
//! ([`ConcurrencyBody`]) and release it when the body reaches its end, fails, or is dropped;
//! a call that fails or whose future is dropped before the head releases it at once.
//! [`ConcurrencyLimitLayerBuilder::release_at_head`] releases at the head instead (for
//! short, non-streamed calls whose body is read later, or not at all).
//!
//! # Events
//!
//! A [`ConcurrencyListener`] hears every [`ConcurrencyEvent`] (shed calls, queued calls that
//! got a slot, limit changes); the metrics layer exports them. `in_flight()` and `limit()` on
//! the layers and services serve readiness checks and gauges.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_deepseek::concurrency::ConcurrencyLimitLayer;
//! use tower_deepseek::ErrorKind;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek::Error> {
//! let limit = ConcurrencyLimitLayer::builder().max_in_flight(1).build()?;
//! let mut service = ServiceBuilder::new().layer(limit.clone()).service_fn(|_: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from("hi"))))
//! });
//! let first = service.ready().await?.call(Request::new(())).await?; // body not read yet
//! assert_eq!(limit.in_flight(), 1);
//! let shed = service.ready().await?.call(Request::new(())).await.unwrap_err();
//! assert_eq!(shed.kind(), ErrorKind::Overloaded);
//! assert_eq!(shed.to_http_response().headers()["retry-after"], "1");
//! drop(first); // the body goes, the slot with it
//! assert_eq!(limit.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

mod adaptive;
mod aimd;
mod body;
mod envoy_gradient;
mod fixed;
mod gradient2;
mod limit;
#[cfg(test)]
mod tests;
mod vegas;

use std::borrow::Cow;
use std::time::Duration;

pub use adaptive::{
    AdaptiveConcurrencyLayer, AdaptiveConcurrencyLayerBuilder, AdaptiveConcurrencyService,
    AdaptiveResponseFuture, SampleMeasure,
};
pub use aimd::{Aimd, AimdBuilder};
pub use body::ConcurrencyBody;
pub use envoy_gradient::{EnvoyGradient, EnvoyGradientBuilder};
pub use fixed::{
    ConcurrencyLimitLayer, ConcurrencyLimitLayerBuilder, ConcurrencyLimitService,
    FixedResponseFuture,
};
pub use gradient2::{Gradient2, Gradient2Builder};
pub use limit::{LimitAlgorithm, Sample};
pub use vegas::{Vegas, VegasBuilder, VegasThreshold};

use crate::error::{Error, ErrorKind};

/// The default `Retry-After` hint of a shed call.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Something that happened to a concurrency limiter. `limiter` is its name.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConcurrencyEvent<'a> {
    /// A call was shed: over the limit (and, when queueing, no slot freed in time or the
    /// queue was full).
    Shed {
        /// The limiter.
        limiter: &'a str,
        /// Calls in flight when it was shed.
        in_flight: usize,
        /// The limit.
        limit: usize,
    },
    /// A call that waited for a slot got one.
    Queued {
        /// The limiter.
        limiter: &'a str,
        /// How long it waited.
        waited: Duration,
    },
    /// The adaptive limit moved.
    LimitChanged {
        /// The limiter.
        limiter: &'a str,
        /// The limit before.
        old: usize,
        /// The limit now.
        new: usize,
    },
}

/// A hook for [`ConcurrencyEvent`]s, e.g. the metrics layer's shed counter and limit gauge.
/// Closures `Fn(&ConcurrencyEvent<'_>)` implement it. Called synchronously on the call's
/// path: keep it short.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use tower_deepseek::concurrency::{ConcurrencyEvent, ConcurrencyLimitLayer};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let shed = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&shed);
/// let layer = ConcurrencyLimitLayer::builder()
///     .listener(move |event: &ConcurrencyEvent<'_>| {
///         if let ConcurrencyEvent::Shed { .. } = event {
///             counter.fetch_add(1, Ordering::Relaxed);
///         }
///     })
///     .build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
pub trait ConcurrencyListener: Send + Sync + 'static {
    /// Hears one event.
    fn on_event(&self, event: &ConcurrencyEvent<'_>);
}

impl<F> ConcurrencyListener for F
where
    F: Fn(&ConcurrencyEvent<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &ConcurrencyEvent<'_>) {
        self(event)
    }
}

/// The error of a shed call (allocates a message: the shed path only).
fn overloaded(name: &str, in_flight: usize, limit: usize, retry_after: Duration) -> Error {
    let message: Cow<'static, str> =
        format!("limiter \"{name}\" has {in_flight} calls in flight of {limit} allowed").into();
    Error::new(ErrorKind::Overloaded, message).with_retry_after(retry_after)
}

fn validate_retry_after(retry_after: Duration) -> Result<(), Error> {
    if retry_after.is_zero() {
        return Err(Error::new(
            ErrorKind::Config,
            "concurrency limit: retry_after must be above zero (a shed call's Retry-After \
             header is never 0)",
        ));
    }
    Ok(())
}
