//! The clock the layers measure calls with (durations, latency samples), not the one they
//! sleep on.
//!
//! A [`Stamp`] is read on every call by the breaker (slow calls), the metrics (durations, time
//! to first chunk) and the adaptive limits (latency samples), so its cost is paid per call:
//!
//! - By default it reads the CPU's time-stamp counter through `quanta` (about 10 ns here),
//!   scaled to nanoseconds only when a duration is asked for. Where the counter is not a
//!   reliable clock (no invariant TSC), `quanta` reads the OS monotonic clock instead.
//! - With the crate feature `test-util` it reads [`tokio::time::Instant`] (the OS clock,
//!   about 26 ns on the project's VM), so paused time (`tokio::time::pause`) moves it:
//!   enable the feature in the dev-dependencies of tests that pause time and expect the
//!   layers' measurements to follow, exactly as tokio asks for its own `test-util`.
//!
//! Deadlines that are slept on (`tokio::time::sleep_until`) stay on tokio's clock in both
//! modes; a [`Stamp`] only ever measures the time between two of its own readings.

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::Duration;

/// A reading of the measuring clock: opaque, compared only with another reading. Never zero,
/// so an `Option<Stamp>` is as small as a `Stamp` (it is carried in every call's state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(NonZeroU64);

impl Stamp {
    /// Reads the clock now.
    #[inline]
    pub(crate) fn now() -> Stamp {
        // Shifted by one so that zero is free: differences are unchanged.
        Stamp(NonZeroU64::MIN.saturating_add(source::read()))
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    #[inline]
    pub(crate) fn duration_since(self, earlier: Stamp) -> Duration {
        source::between(earlier.0.get(), self.0.get())
    }

    /// Whole nanoseconds from `earlier` to `self` (what [`duration_since`](Self::duration_since)
    /// measures, without building a `Duration`); zero if `earlier` is later.
    #[inline]
    pub(crate) fn nanos_since(self, earlier: Stamp) -> u64 {
        source::nanos_between(earlier.0.get(), self.0.get())
    }

    /// Time since this reading.
    #[inline]
    pub(crate) fn elapsed(self) -> Duration {
        Stamp::now().duration_since(self)
    }

    /// The clock's own units from `earlier` to `self`, unscaled; zero if `earlier` is later.
    /// Compared with a bound from [`ticks_within`], it answers "at most so many nanoseconds?"
    /// exactly as [`duration_since`](Self::duration_since) would, without the scaling.
    #[inline]
    pub(crate) fn ticks_since(self, earlier: Stamp) -> u64 {
        self.0.get().saturating_sub(earlier.0.get())
    }
}

/// The largest tick count that measures at most `nanos` nanoseconds, so that
/// `later.ticks_since(earlier) <= ticks_within(n)` exactly when
/// `later.duration_since(earlier) <= Duration::from_nanos(n)`. The scaling is monotonic, so
/// the tick counts that measure at most `n` are a prefix, found once here by bisection (for
/// a threshold resolved once, e.g. a breaker's slow-call duration) instead of scaling every
/// reading.
pub(crate) fn ticks_within(nanos: u64) -> u64 {
    bound_within(nanos, |ticks| source::nanos_between(0, ticks))
}

/// The largest `ticks` with `measures(ticks) <= nanos`, for a non-decreasing `measures`.
fn bound_within(nanos: u64, measures: impl Fn(u64) -> u64) -> u64 {
    // Grow an upper bound by doubling, then bisect below it.
    let mut low = 0u64;
    let mut high = 1u64;
    while measures(high) <= nanos {
        low = high;
        if high == u64::MAX {
            return u64::MAX;
        }
        high = high.saturating_mul(2);
    }
    // measures(low) <= nanos < measures(high)
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if measures(middle) <= nanos {
            low = middle;
        } else {
            high = middle;
        }
    }
    low
}

/// Reads the clock once so that its one-time set-up (`quanta` calibrates the counter against
/// the OS clock for a few milliseconds) happens when a layer is built, not in a call.
pub(crate) fn warm_up() {
    let _ = Stamp::now();
}

/// The time-stamp counter through `quanta`.
#[cfg_attr(all(feature = "test-util", not(test)), allow(dead_code))]
mod fast {
    use super::*;

    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();

    #[inline]
    fn clock() -> &'static quanta::Clock {
        CLOCK.get_or_init(quanta::Clock::new)
    }

    #[inline]
    pub(super) fn read() -> u64 {
        clock().raw()
    }

    #[inline]
    pub(super) fn between(start: u64, end: u64) -> Duration {
        Duration::from_nanos(nanos_between(start, end))
    }

    #[inline]
    pub(super) fn nanos_between(start: u64, end: u64) -> u64 {
        clock().delta_as_nanos(start, end)
    }
}

/// tokio's clock, which paused time moves: nanoseconds since a base read once.
#[cfg_attr(not(any(test, feature = "test-util")), allow(dead_code))]
mod tokio_clock {
    use super::*;
    use tokio::time::Instant;

    static BASE: OnceLock<Instant> = OnceLock::new();

    pub(super) fn read() -> u64 {
        let now = Instant::now();
        let base = *BASE.get_or_init(|| now);
        u64::try_from(now.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn between(start: u64, end: u64) -> Duration {
        Duration::from_nanos(nanos_between(start, end))
    }

    pub(super) fn nanos_between(start: u64, end: u64) -> u64 {
        end.saturating_sub(start)
    }
}

#[cfg(not(any(test, feature = "test-util")))]
use fast as source;
#[cfg(any(test, feature = "test-util"))]
use tokio_clock as source;

#[cfg(test)]
mod tests {
    use super::*;

    /// The counter clock (compiled in every build, selected without `test-util`) measures
    /// real time: a measured sleep lies between the sleep asked for and the OS clock's reading
    /// around it.
    #[test]
    fn the_counter_clock_measures_real_time() {
        let outer = std::time::Instant::now();
        let start = fast::read();
        std::thread::sleep(Duration::from_millis(5));
        let end = fast::read();
        let bound = outer.elapsed();
        let measured = fast::between(start, end);
        assert!(measured >= Duration::from_millis(5), "{measured:?}");
        // quanta's calibration is good to well under a percent; allow 1 % and a microsecond.
        assert!(
            measured <= bound + bound / 100 + Duration::from_micros(1),
            "{measured:?} > {bound:?}"
        );
        assert_eq!(fast::between(end, start), Duration::ZERO);
    }

    /// The tick bound answers "at most n nanoseconds?" as the scaled measure does, on either
    /// side of the bound: for the counter clock, the test clock and scales above and below one.
    #[test]
    fn ticks_within_is_the_exact_bound_of_the_scaled_measure() {
        let scales: [&dyn Fn(u64) -> u64; 4] = [
            &|ticks| fast::nanos_between(0, ticks),
            &|ticks| tokio_clock::nanos_between(0, ticks),
            &|ticks| (u128::from(ticks) * 5 / 17) as u64,
            &|ticks| (u128::from(ticks) * 10 / 3) as u64,
        ];
        for measures in scales {
            for nanos in [0, 1, 2, 999, 1_000_000, 1_234_567_891, 60_000_000_000] {
                let bound = bound_within(nanos, measures);
                assert!(measures(bound) <= nanos, "{nanos}");
                assert!(measures(bound + 1) > nanos, "{nanos}");
            }
        }
        let bound = ticks_within(1_000);
        let start = Stamp::now();
        let within = Stamp(start.0.saturating_add(bound));
        let beyond = Stamp(start.0.saturating_add(bound + 1));
        let limit = Duration::from_nanos(1_000);
        assert!(within.duration_since(start) <= limit && within.ticks_since(start) <= bound);
        assert!(beyond.duration_since(start) > limit && beyond.ticks_since(start) > bound);
    }

    #[tokio::test(start_paused = true)]
    async fn under_test_util_stamps_follow_paused_time() {
        let start = Stamp::now();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(Stamp::now().duration_since(start), Duration::from_secs(90));
        assert_eq!(start.duration_since(Stamp::now()), Duration::ZERO);
    }
}
