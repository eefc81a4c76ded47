//! The limiter's events and their listener.

/// Why Redis was unreachable for a decision.
///
/// ```
/// use tower_deepseek::rate_limit::redis::UnavailableCause;
/// assert_eq!(UnavailableCause::Timeout.as_str(), "timeout");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnavailableCause {
    /// No answer within the decision timeout.
    Timeout,
    /// The connection failed or Redis answered with an error.
    Error,
}

impl UnavailableCause {
    /// A fixed lowercase name, fit for a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            UnavailableCause::Timeout => "timeout",
            UnavailableCause::Error => "error",
        }
    }
}

/// Something that happened to the limiter's link to Redis. Never carries a rate-limit key.
///
/// ```
/// use tower_deepseek::rate_limit::redis::{RedisLimitEvent, UnavailableCause};
/// let event = RedisLimitEvent::Unavailable { fail_open: true, cause: UnavailableCause::Timeout };
/// assert!(matches!(event, RedisLimitEvent::Unavailable { fail_open: true, .. }));
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisLimitEvent {
    /// A decision could not be made by Redis, after the last one was (or at start). Emitted
    /// once per outage, not per request.
    Unavailable {
        /// `true` when requests are admitted unchecked during the outage, `false` when they
        /// are refused.
        fail_open: bool,
        /// Why the decision that noticed the outage failed.
        cause: UnavailableCause,
    },
    /// A decision came from Redis again after an outage.
    Recovered,
}

/// A hook for [`RedisLimitEvent`]s (alerts, metrics). Closures `Fn(&RedisLimitEvent)`
/// implement it. Called synchronously on the request path: keep it short.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use tower_deepseek::rate_limit::redis::{RedisLimitEvent, RedisLimitListener};
///
/// let outages = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&outages);
/// let listener = move |event: &RedisLimitEvent| {
///     if let RedisLimitEvent::Unavailable { .. } = event {
///         counter.fetch_add(1, Ordering::Relaxed);
///     }
/// };
/// listener.on_event(&RedisLimitEvent::Recovered);
/// assert_eq!(outages.load(Ordering::Relaxed), 0);
/// ```
pub trait RedisLimitListener: Send + Sync + 'static {
    /// Hears one event.
    fn on_event(&self, event: &RedisLimitEvent);
}

impl<F> RedisLimitListener for F
where
    F: Fn(&RedisLimitEvent) + Send + Sync + 'static,
{
    fn on_event(&self, event: &RedisLimitEvent) {
        self(event)
    }
}
