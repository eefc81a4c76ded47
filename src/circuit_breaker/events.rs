//! Events: what the breaker tells `tracing` and the listener hook.

use std::time::Duration;

use super::CircuitState;

/// How a recorded call counted.
///
/// ```
/// use tower_deepseek::circuit_breaker::CallKind;
/// assert_eq!(CallKind::Failed.as_str(), "failed");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// Counted as a success.
    Successful,
    /// Counted as a failure.
    Failed,
    /// Not counted (429, 4xx, a cancelled call); a half-open permit is given back.
    Ignored,
    /// A 401 or 402: the breaker entered its fatal state.
    Fatal,
}

impl CallKind {
    /// A fixed lowercase name, fit for a metric label (`kind`), as resilience4j names them.
    pub fn as_str(&self) -> &'static str {
        match self {
            CallKind::Successful => "successful",
            CallKind::Failed => "failed",
            CallKind::Ignored => "ignored",
            CallKind::Fatal => "fatal",
        }
    }
}

/// Something that happened to a breaker. `name` is the breaker's name (its key, when keyed).
///
/// As in resilience4j, nothing but transitions and resets is published while the breaker is
/// disabled or forced open.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CircuitEvent<'a> {
    /// The state changed (never for a transition to the same state).
    StateTransition {
        /// The breaker.
        name: &'a str,
        /// The state left.
        from: CircuitState,
        /// The state entered.
        to: CircuitState,
    },
    /// The failure rate reached its threshold (percent).
    FailureRateExceeded {
        /// The breaker.
        name: &'a str,
        /// The rate, in percent.
        rate: f32,
    },
    /// The slow-call rate reached its threshold (percent).
    SlowCallRateExceeded {
        /// The breaker.
        name: &'a str,
        /// The rate, in percent.
        rate: f32,
    },
    /// A call was refused.
    NotPermitted {
        /// The breaker.
        name: &'a str,
        /// The state that refused it.
        state: CircuitState,
    },
    /// A call's outcome was recorded.
    Recorded {
        /// The breaker.
        name: &'a str,
        /// How it counted.
        kind: CallKind,
        /// Whether it was slow.
        slow: bool,
        /// Its measured duration, when the breaker times calls.
        duration: Option<Duration>,
    },
    /// The breaker was reset to closed with empty metrics.
    Reset {
        /// The breaker.
        name: &'a str,
    },
}

/// A hook for [`CircuitEvent`]s, e.g. the metrics layer's state gauge and transition counter.
/// Closures `Fn(&CircuitEvent<'_>)` implement it. Called synchronously: keep it short.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use tower_deepseek::circuit_breaker::{CircuitBreaker, CircuitEvent};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let transitions = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&transitions);
/// let breaker = CircuitBreaker::builder()
///     .listener(move |event: &CircuitEvent<'_>| {
///         if let CircuitEvent::StateTransition { .. } = event {
///             counter.fetch_add(1, Ordering::Relaxed);
///         }
///     })
///     .build()?;
/// breaker.force_open();
/// assert_eq!(transitions.load(Ordering::Relaxed), 1);
/// # Ok(())
/// # }
/// ```
pub trait CircuitBreakerListener: Send + Sync + 'static {
    /// Hears one event.
    fn on_event(&self, event: &CircuitEvent<'_>);
}

impl<F> CircuitBreakerListener for F
where
    F: Fn(&CircuitEvent<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &CircuitEvent<'_>) {
        self(event)
    }
}
