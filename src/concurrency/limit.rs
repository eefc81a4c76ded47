//! The limit algorithms' common ground: [`Sample`], [`LimitAlgorithm`] and setting checks.
//!
//! Each algorithm is a pure state machine, `update(sample) -> limit`: no clock, no I/O, so it
//! is unit-tested on plain numbers. The adaptive layer feeds it one [`Sample`] per completed
//! call and enforces the limit it returns.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, ErrorKind};

/// One completed call, as an algorithm sees it.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::concurrency::Sample;
///
/// let sample = Sample::new(Duration::from_millis(10), 4, false);
/// assert_eq!(sample.in_flight, 4);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// How long the call took (to its head or to its body's end, as the layer measures).
    pub rtt: Duration,
    /// Calls in flight when this one started, itself included.
    pub in_flight: usize,
    /// The call was dropped: a timeout, a 429 or a 503 (a sign of overload).
    pub dropped: bool,
    /// When the call started (used by [`EnvoyGradient`](super::EnvoyGradient)'s time windows).
    pub started: Instant,
}

impl Sample {
    /// A sample of a call that started now.
    pub fn new(rtt: Duration, in_flight: usize, dropped: bool) -> Sample {
        Sample {
            rtt,
            in_flight,
            dropped,
            started: Instant::now(),
        }
    }

    /// The same sample, started at `started`.
    pub fn started_at(mut self, started: Instant) -> Sample {
        self.started = started;
        self
    }

    /// When the call completed: `started + rtt`.
    pub fn completed(&self) -> Instant {
        self.started + self.rtt
    }
}

/// Turns samples into a concurrency limit. Implement it to plug in your own algorithm.
///
/// ```
/// use tower_deepseek::concurrency::{LimitAlgorithm, Sample};
///
/// /// Halves on a drop, never changes otherwise.
/// struct Halving(usize);
/// impl LimitAlgorithm for Halving {
///     fn limit(&self) -> usize { self.0 }
///     fn update(&mut self, sample: &Sample) -> usize {
///         if sample.dropped { self.0 = (self.0 / 2).max(1) }
///         self.0
///     }
/// }
/// let mut algorithm = Halving(8);
/// assert_eq!(algorithm.update(&Sample::new(std::time::Duration::ZERO, 1, true)), 4);
/// ```
pub trait LimitAlgorithm: Send + 'static {
    /// The current limit (the initial one before any sample).
    fn limit(&self) -> usize;

    /// Takes one sample and returns the new limit (at least 1 is enforced by the layer).
    fn update(&mut self, sample: &Sample) -> usize;
}

pub(super) fn config(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// `x` in `(0, 1]` (false for NaN).
pub(super) fn in_unit_interval(x: f64) -> bool {
    x > 0.0 && x <= 1.0
}

/// `x > 0` (false for NaN).
pub(super) fn positive(x: f64) -> bool {
    x > 0.0
}

pub(super) fn check_bounds(
    name: &str,
    initial: usize,
    min: usize,
    max: usize,
) -> Result<(), Error> {
    if min == 0 {
        return Err(config(format!("{name}: min_limit must be at least 1")));
    }
    if min > max {
        return Err(config(format!(
            "{name}: min_limit {min} is above max_limit {max}"
        )));
    }
    if initial < min || initial > max {
        return Err(config(format!(
            "{name}: initial_limit {initial} is outside [min_limit {min}, max_limit {max}]"
        )));
    }
    Ok(())
}
