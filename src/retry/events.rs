//! Events and counters: what the retry layer tells the listener hook and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::classify::Outcome;

/// Why the layer stopped retrying and returned the last attempt's answer.
///
/// ```
/// use tower_deepseek::retry::GiveUpReason;
/// assert_eq!(GiveUpReason::Attempts.as_str(), "attempts");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GiveUpReason {
    /// The policy did not retry this outcome (400, 401, 402, 422, ...).
    NotRetryable,
    /// `max_attempts` were made.
    Attempts,
    /// The overall deadline passed, or the remaining time could not cover the next wait.
    Deadline,
    /// The upstream asked for a wait (`Retry-After`) longer than `max_retry_after`.
    RetryAfterTooLong,
    /// The request body cannot be replayed ([`SendOnce`](super::SendOnce), a streaming body).
    NotReplayable,
}

impl GiveUpReason {
    /// A fixed lowercase name, fit for a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            GiveUpReason::NotRetryable => "not_retryable",
            GiveUpReason::Attempts => "attempts",
            GiveUpReason::Deadline => "deadline",
            GiveUpReason::RetryAfterTooLong => "retry_after_too_long",
            GiveUpReason::NotReplayable => "not_replayable",
        }
    }
}

/// Something the retry layer did. `name` is the layer's name.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RetryEvent<'a> {
    /// Attempt `attempt` failed with `outcome`; the next starts after `delay`.
    Retry {
        /// The layer.
        name: &'a str,
        /// The attempt that failed, from 1.
        attempt: u32,
        /// The wait before the next attempt.
        delay: Duration,
        /// How the attempt failed.
        outcome: Outcome,
    },
    /// A retry was refused by the budget; the caller gets the last answer.
    BudgetExhausted {
        /// The layer.
        name: &'a str,
        /// The attempts made.
        attempts: u32,
        /// How the last attempt failed.
        outcome: Outcome,
    },
    /// Retrying stopped for `reason`; the caller gets the last answer.
    GaveUp {
        /// The layer.
        name: &'a str,
        /// The attempts made.
        attempts: u32,
        /// How the last attempt failed.
        outcome: Outcome,
        /// Why no further attempt was made.
        reason: GiveUpReason,
    },
    /// The call succeeded after `attempts` attempts.
    Succeeded {
        /// The layer.
        name: &'a str,
        /// The attempts made, from 1.
        attempts: u32,
    },
}

/// A hook for [`RetryEvent`]s, e.g. the metrics layer's retry counters. Closures
/// `Fn(&RetryEvent<'_>)` implement it. Called synchronously: keep it short.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use tower_deepseek::retry::{RetryEvent, RetryLayer};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let retries = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&retries);
/// let layer = RetryLayer::builder()
///     .listener(move |event: &RetryEvent<'_>| {
///         if let RetryEvent::Retry { .. } = event {
///             counter.fetch_add(1, Ordering::Relaxed);
///         }
///     })
///     .build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
pub trait RetryListener: Send + Sync + 'static {
    /// Hears one event.
    fn on_event(&self, event: &RetryEvent<'_>);
}

impl<F> RetryListener for F
where
    F: Fn(&RetryEvent<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &RetryEvent<'_>) {
        self(event)
    }
}

/// Call counts in resilience4j's four kinds, shared by every clone of a layer.
///
/// ```
/// use tower_deepseek::retry::RetryLayer;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = RetryLayer::builder().build()?;
/// assert_eq!(layer.metrics().successful_without_retry, 0);
/// # Ok(())
/// # }
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryMetrics {
    /// Calls that succeeded on the first attempt.
    pub successful_without_retry: u64,
    /// Calls that succeeded after at least one retry.
    pub successful_with_retry: u64,
    /// Calls that failed without a retry (not retryable, budget, ...).
    pub failed_without_retry: u64,
    /// Calls that failed after at least one retry.
    pub failed_with_retry: u64,
    /// Retries made (attempts after the first).
    pub retries: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    successful_without_retry: AtomicU64,
    successful_with_retry: AtomicU64,
    failed_without_retry: AtomicU64,
    failed_with_retry: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn finished(&self, success: bool, attempts: u32) {
        let counter = match (success, attempts > 1) {
            (true, false) => &self.successful_without_retry,
            (true, true) => &self.successful_with_retry,
            (false, false) => &self.failed_without_retry,
            (false, true) => &self.failed_with_retry,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RetryMetrics {
        RetryMetrics {
            successful_without_retry: self.successful_without_retry.load(Ordering::Relaxed),
            successful_with_retry: self.successful_with_retry.load(Ordering::Relaxed),
            failed_without_retry: self.failed_without_retry.load(Ordering::Relaxed),
            failed_with_retry: self.failed_with_retry.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}
