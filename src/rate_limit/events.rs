//! Events: what a limiter tells the listener hook (the metrics layer exports them).

use std::time::Duration;

/// Something a rate limiter did. `limiter` is the layer's name, never a key: keys may be API
/// keys or addresses.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitEvent<'a> {
    /// A call was refused; `wait` is the time until the same call would pass (zero when it
    /// never can, its cost being larger than the burst).
    Rejected {
        /// The layer's name.
        limiter: &'a str,
        /// The wait a retry needs.
        wait: Duration,
    },
    /// A call was admitted after waiting (wait mode).
    Waited {
        /// The layer's name.
        limiter: &'a str,
        /// How long it waited.
        waited: Duration,
    },
    /// The backend could not decide (a shared store is down); the call was let through when
    /// `fail_open`, refused otherwise.
    BackendUnavailable {
        /// The layer's name.
        limiter: &'a str,
        /// Whether the call was let through.
        fail_open: bool,
    },
    /// A token budget reconciled a call: it reserved `reserved` tokens and the response
    /// reported `used` (when it reported usage at all).
    Reconciled {
        /// The layer's name.
        limiter: &'a str,
        /// Tokens reserved when the call started.
        reserved: u32,
        /// Tokens the response reported, or `None` when it reported none (the reservation
        /// stands).
        used: Option<u64>,
    },
}

/// A hook for [`RateLimitEvent`]s, e.g. the metrics layer's counters. Closures
/// `Fn(&RateLimitEvent<'_>)` implement it. Called synchronously on the request path: keep it
/// short.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::rate_limit::{RateLimitEvent, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let rejected = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&rejected);
/// let layer = RateLimitLayer::builder()
///     .per_second(1)
///     .listener(move |event: &RateLimitEvent<'_>| {
///         if let RateLimitEvent::Rejected { .. } = event {
///             counter.fetch_add(1, Ordering::Relaxed);
///         }
///     })
///     .build()?;
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// });
/// service.clone().oneshot(http::Request::new(())).await?;
/// assert!(service.oneshot(http::Request::new(())).await.is_err());
/// assert_eq!(rejected.load(Ordering::Relaxed), 1);
/// # Ok(())
/// # }
/// ```
pub trait RateLimitListener: Send + Sync + 'static {
    /// Hears one event.
    fn on_event(&self, event: &RateLimitEvent<'_>);
}

impl<F> RateLimitListener for F
where
    F: Fn(&RateLimitEvent<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &RateLimitEvent<'_>) {
        self(event)
    }
}
