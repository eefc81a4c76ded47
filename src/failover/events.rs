//! Why a call moved to the next upstream, what the layer tells its listener, and the policy
//! that decides which failures move on.

use std::fmt;

use crate::classify::Outcome;

/// Why a call left an upstream for the next one.
///
/// ```
/// use tower_deepseek::classify::Outcome;
/// use tower_deepseek::failover::FailoverReason;
///
/// assert_eq!(FailoverReason::CircuitOpen.as_str(), "circuit_open");
/// let overloaded = FailoverReason::Failed(Outcome::Server(http::StatusCode::SERVICE_UNAVAILABLE));
/// assert_eq!(overloaded.as_str(), "server_error");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailoverReason {
    /// The upstream's circuit breaker refused the call without sending it
    /// ([`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen), any reason, the fatal
    /// state included: the next upstream has its own key and balance).
    CircuitOpen,
    /// A local concurrency limit in front of the upstream shed the call without sending it
    /// ([`ErrorKind::Overloaded`](crate::ErrorKind::Overloaded)).
    Overloaded,
    /// The upstream answered, or failed, with this outcome (as the layer's classifier says).
    Failed(Outcome),
}

impl FailoverReason {
    /// A fixed lowercase name, fit for a metric label: `circuit_open`, `overloaded`, or the
    /// outcome's class ([`Outcome::as_str`]).
    pub fn as_str(&self) -> &'static str {
        match self {
            FailoverReason::CircuitOpen => "circuit_open",
            FailoverReason::Overloaded => "overloaded",
            FailoverReason::Failed(outcome) => outcome.as_str(),
        }
    }

    /// Whether the upstream was never asked: a layer in front of it refused the call.
    pub fn is_local_refusal(&self) -> bool {
        matches!(
            self,
            FailoverReason::CircuitOpen | FailoverReason::Overloaded
        )
    }
}

impl fmt::Display for FailoverReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an upstream of the list was passed over without being called.
///
/// ```
/// use tower_deepseek::failover::SkipReason;
/// assert_eq!(SkipReason::UnmappedModel.as_str(), "unmapped_model");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The request's model has no mapping for this upstream and the upstream is set to
    /// [`UnmappedModel::Skip`](super::UnmappedModel::Skip).
    UnmappedModel,
    /// The request cannot be rewritten for this upstream: its path is not under the primary's
    /// base URL, or its body has no JSON `model` to map.
    Unroutable,
}

impl SkipReason {
    /// A fixed lowercase name, fit for a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::UnmappedModel => "unmapped_model",
            SkipReason::Unroutable => "unroutable",
        }
    }
}

/// Something the failover layer did. Upstream names are the configured ones.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FailoverEvent<'a> {
    /// The call failed at `from` for `reason`; `to` is called next.
    FailedOver {
        /// The upstream that failed.
        from: &'a str,
        /// The upstream called next.
        to: &'a str,
        /// Why `from` was left.
        reason: FailoverReason,
    },
    /// `upstream` was passed over without a call.
    Skipped {
        /// The upstream passed over.
        upstream: &'a str,
        /// Why.
        reason: SkipReason,
    },
    /// Every upstream that could take the call failed; the caller gets an answer from
    /// `upstream` (see the [module docs](super#what-the-caller-gets)).
    Exhausted {
        /// The upstream whose answer the caller gets.
        upstream: &'a str,
        /// How the last upstream tried failed.
        reason: FailoverReason,
    },
}

/// A hook for [`FailoverEvent`]s, e.g. [`Metrics`](crate::metrics::Metrics)'
/// `<prefix>_failovers_total`. Closures `Fn(&FailoverEvent<'_>)` implement it. Called
/// synchronously on the call's task: keep it short.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use tower_deepseek::failover::{Failover, FailoverEvent};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let failovers = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&failovers);
/// let primary = tower::service_fn(|_: http::Request<tower_deepseek::deepseek::RequestBody>| async {
///     Ok::<_, tower_deepseek::Error>(http::Response::new(String::new()))
/// });
/// let failover = Failover::builder()
///     .primary("deepseek", "https://api.deepseek.com", primary)
///     .listener(move |event: &FailoverEvent<'_>| {
///         if let FailoverEvent::FailedOver { .. } = event {
///             counter.fetch_add(1, Ordering::Relaxed);
///         }
///     })
///     .build()?;
/// # let _ = failover;
/// # Ok(())
/// # }
/// ```
pub trait FailoverListener: Send + Sync + 'static {
    /// Hears one event.
    fn on_event(&self, event: &FailoverEvent<'_>);
}

impl<F> FailoverListener for F
where
    F: Fn(&FailoverEvent<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &FailoverEvent<'_>) {
        self(event)
    }
}

/// Decides which failures move a call to the next upstream. Closures
/// `Fn(&FailoverReason) -> bool` implement it.
///
/// ```
/// use tower_deepseek::classify::Outcome;
/// use tower_deepseek::failover::{DeepSeekFailoverPolicy, FailoverPolicy, FailoverReason};
///
/// // DeepSeek's rules, but a rate limit waits for the primary (the retry layer's back-off)
/// // instead of spending the backup's quota.
/// let policy = |reason: &FailoverReason| match reason {
///     FailoverReason::Failed(Outcome::RateLimited { .. }) => false,
///     other => DeepSeekFailoverPolicy.fail_over(other),
/// };
/// assert!(!policy.fail_over(&FailoverReason::Failed(Outcome::RateLimited { retry_after: None })));
/// assert!(policy.fail_over(&FailoverReason::CircuitOpen));
/// ```
pub trait FailoverPolicy: Send + Sync + 'static {
    /// Whether a call that failed for `reason` goes on to the next upstream.
    fn fail_over(&self, reason: &FailoverReason) -> bool;
}

impl<F> FailoverPolicy for F
where
    F: Fn(&FailoverReason) -> bool + Send + Sync + 'static,
{
    fn fail_over(&self, reason: &FailoverReason) -> bool {
        self(reason)
    }
}

/// The default policy: fail over when the upstream's breaker or concurrency limit refused the
/// call, and on every outcome DeepSeek's table calls retryable: 5xx, timeouts, connect and
/// reset errors, a stream failure before any body was delivered, **and 429**. Never on 400,
/// 401, 402, 422 or any other client error: the next upstream would refuse the same request
/// (400/422), and a refused key (401) or an empty balance (402) must reach an operator rather
/// than be hidden (once the breaker has gone fatal on them, its refusal does fail over).
///
/// Why 429 fails over: DeepSeek's 429 is the account's own rate or concurrency cap, not an
/// outage; the next upstream has its own account and quota, so it can answer now, where the
/// primary would need a back-off. Pass a policy returning `false` for
/// [`Outcome::RateLimited`] to keep rate-limited calls on the primary (the retry layer's
/// back-off then handles them).
///
/// ```
/// use tower_deepseek::classify::{AuthFailure, Outcome};
/// use tower_deepseek::failover::{DeepSeekFailoverPolicy, FailoverPolicy, FailoverReason};
///
/// let fails_over = |outcome| DeepSeekFailoverPolicy.fail_over(&FailoverReason::Failed(outcome));
/// assert!(fails_over(Outcome::Server(http::StatusCode::SERVICE_UNAVAILABLE)));
/// assert!(fails_over(Outcome::RateLimited { retry_after: None }));
/// assert!(!fails_over(Outcome::Client(http::StatusCode::BAD_REQUEST)));
/// assert!(!fails_over(Outcome::Auth(AuthFailure::InvalidKey)));
/// assert!(DeepSeekFailoverPolicy.fail_over(&FailoverReason::CircuitOpen));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DeepSeekFailoverPolicy;

impl FailoverPolicy for DeepSeekFailoverPolicy {
    fn fail_over(&self, reason: &FailoverReason) -> bool {
        match reason {
            FailoverReason::CircuitOpen | FailoverReason::Overloaded => true,
            FailoverReason::Failed(outcome) => outcome.is_retryable(),
        }
    }
}
