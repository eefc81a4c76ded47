//! governor's clock over `tokio::time::Instant`, so paused test time drives the limiters.

use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;

/// A [`tokio::time::Instant`] as governor's [`Reference`]: the limiters of this module read
/// tokio's clock, so `tokio::time::pause` and `advance` drive them in tests.
///
/// ```
/// use governor::clock::{Clock, Reference};
/// use tower_deepseek::rate_limit::TokioClock;
///
/// let clock = TokioClock;
/// let earlier = clock.now();
/// assert_eq!(earlier.duration_since(clock.now()), std::time::Duration::ZERO.into());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokioReference(pub tokio::time::Instant);

impl Add<Nanos> for TokioReference {
    type Output = TokioReference;

    fn add(self, other: Nanos) -> TokioReference {
        TokioReference(self.0 + Duration::from(other))
    }
}

impl Reference for TokioReference {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_duration_since(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        self.0
            .checked_sub(Duration::from(duration))
            .map_or(*self, TokioReference)
    }
}

/// governor's [`Clock`] reading [`tokio::time::Instant::now`].
///
/// ```
/// use governor::clock::Clock;
/// use tower_deepseek::rate_limit::TokioClock;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let before = TokioClock.now();
/// tokio::time::advance(std::time::Duration::from_secs(1)).await;
/// assert_eq!(TokioClock.now().0 - before.0, std::time::Duration::from_secs(1));
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioReference;

    fn now(&self) -> TokioReference {
        TokioReference(tokio::time::Instant::now())
    }
}
