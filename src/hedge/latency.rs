//! The latency tracker: a lock-free histogram of recent successful calls, from which the
//! hedge delay (a percentile, clamped to a floor and a ceiling) is read.
//!
//! Buckets are log-spaced, four per doubling (each about 19 % wide), from 1 ms to about
//! 4.6 hours; a sample is one atomic increment. Two generations of buckets rotate every
//! `window`: samples go to the current one, the percentile is read over both, so the delay
//! reflects the last one to two windows. The delay is recomputed (a scan of the buckets) every
//! [`REFRESH`] samples and on each rotation, and cached in an atomic, so a call reads one
//! atomic, not the histogram.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Buckets per generation: 4 per doubling over 24 doublings from 1 ms.
const BUCKETS: usize = 96;
/// The histogram's unit: a quarter of a millisecond, so 1 ms is the first bucket's start.
const UNIT_NANOS: u64 = 250_000;
/// The cached delay is recomputed every this many samples.
pub(crate) const REFRESH: u32 = 16;
/// The cached value meaning "not enough samples: do not hedge".
const NO_DELAY: u64 = u64::MAX;

/// The bucket of a latency.
fn bucket(latency: Duration) -> usize {
    let units = u64::try_from(latency.as_nanos() / u128::from(UNIT_NANOS)).unwrap_or(u64::MAX);
    // Anything under 1 ms shares the first bucket.
    let units = units.max(4);
    let exponent = 63 - units.leading_zeros(); // at least 2
    let sub = (units >> (exponent - 2)) & 3;
    let index = (exponent as usize - 2) * 4 + sub as usize;
    index.min(BUCKETS - 1)
}

/// The upper bound of a bucket: the percentile reports it, so the hedge waits at least as
/// long as the samples in the bucket took.
fn upper_bound(index: usize) -> Duration {
    let exponent = index / 4;
    let sub = (index % 4) as u64;
    let units = (4 + sub + 1) << exponent;
    Duration::from_nanos(units.saturating_mul(UNIT_NANOS))
}

pub(crate) struct LatencyTracker {
    start: Instant,
    window_nanos: u64,
    /// The current generation number; its buckets are `counts[generation % 2]`.
    generation: AtomicU64,
    counts: [[AtomicU32; BUCKETS]; 2],
    totals: [AtomicU32; 2],
    /// The percentile as a fraction (0.95).
    quantile: f64,
    min_samples: u32,
    floor: Duration,
    ceiling: Duration,
    /// The cached delay in nanoseconds, or [`NO_DELAY`].
    delay_nanos: AtomicU64,
}

impl LatencyTracker {
    pub(crate) fn new(
        window: Duration,
        percentile: f64,
        min_samples: u32,
        floor: Duration,
        ceiling: Duration,
    ) -> LatencyTracker {
        LatencyTracker {
            start: Instant::now(),
            window_nanos: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1),
            generation: AtomicU64::new(0),
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU32::new(0))),
            totals: [AtomicU32::new(0), AtomicU32::new(0)],
            quantile: percentile / 100.0,
            min_samples,
            floor,
            ceiling,
            delay_nanos: AtomicU64::new(NO_DELAY),
        }
    }

    /// Moves to the generation of `now`, clearing what has left the window. One thread wins
    /// the compare-and-swap and clears; a sample landing in a bucket while it is cleared may
    /// be lost, which only makes the percentile a little less exact.
    fn rotate(&self, now: Instant) -> u64 {
        let elapsed =
            u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        let current = elapsed / self.window_nanos;
        let seen = self.generation.load(Ordering::Acquire);
        if current <= seen {
            return seen;
        }
        if self
            .generation
            .compare_exchange(seen, current, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let stale: &[usize] = if current - seen >= 2 {
                &[0, 1]
            } else {
                // The slot about to be reused held the generation before the previous one.
                if current.is_multiple_of(2) {
                    &[0]
                } else {
                    &[1]
                }
            };
            for &slot in stale {
                for count in &self.counts[slot] {
                    count.store(0, Ordering::Relaxed);
                }
                self.totals[slot].store(0, Ordering::Release);
            }
            self.refresh();
        }
        current
    }

    /// Records a successful call's latency.
    pub(crate) fn record(&self, now: Instant, latency: Duration) {
        let generation = self.rotate(now);
        let slot = (generation % 2) as usize;
        self.counts[slot][bucket(latency)].fetch_add(1, Ordering::Relaxed);
        let samples = self.totals[slot].fetch_add(1, Ordering::AcqRel) + 1;
        // Until hedging has started every sample may be the one that starts it.
        if samples.is_multiple_of(REFRESH) || self.delay_nanos.load(Ordering::Relaxed) == NO_DELAY {
            self.refresh();
        }
    }

    /// The hedge delay now: `None` while the window holds fewer than `min_samples`.
    pub(crate) fn delay(&self, now: Instant) -> Option<Duration> {
        self.rotate(now);
        match self.delay_nanos.load(Ordering::Relaxed) {
            NO_DELAY => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Recomputes the cached delay from both generations.
    fn refresh(&self) {
        let total: u64 = self
            .totals
            .iter()
            .map(|total| u64::from(total.load(Ordering::Acquire)))
            .sum();
        if total < u64::from(self.min_samples) || total == 0 {
            self.delay_nanos.store(NO_DELAY, Ordering::Relaxed);
            return;
        }
        // The sample at this rank (from 1) is the percentile.
        let rank = ((self.quantile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        let mut index = BUCKETS - 1;
        for (bucket, (first, second)) in self.counts[0].iter().zip(&self.counts[1]).enumerate() {
            seen += u64::from(first.load(Ordering::Relaxed))
                + u64::from(second.load(Ordering::Relaxed));
            if seen >= rank {
                index = bucket;
                break;
            }
        }
        let delay = upper_bound(index).clamp(self.floor, self.ceiling);
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(NO_DELAY - 1);
        self.delay_nanos.store(nanos, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn tracker(min_samples: u32) -> LatencyTracker {
        LatencyTracker::new(
            Duration::from_secs(60),
            95.0,
            min_samples,
            Duration::ZERO,
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn buckets_are_log_spaced_and_bound_their_samples() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(ms(1)), 0);
        assert_eq!(upper_bound(0), Duration::from_micros(1250));
        for millis in [1, 3, 10, 99, 100, 1_000, 12_345, 600_000] {
            let index = bucket(ms(millis));
            assert!(upper_bound(index) > ms(millis), "{millis} ms in {index}");
            // Each bucket is at most a quarter of its lower bound wide (about 19-25 %).
            assert!(
                upper_bound(index) <= ms(millis) * 5 / 4 + ms(1),
                "{millis} ms"
            );
        }
        assert_eq!(bucket(Duration::from_secs(1_000_000)), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_delay_before_min_samples_then_the_percentile() {
        let tracker = tracker(20);
        let now = Instant::now();
        for _ in 0..19 {
            tracker.record(now, ms(100));
        }
        assert_eq!(tracker.delay(now), None);
        tracker.record(now, ms(100));
        let delay = tracker.delay(now).expect("20 samples");
        assert!(delay > ms(100) && delay <= ms(125), "{delay:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn p95_ignores_the_slowest_five_percent() {
        let tracker = tracker(100);
        let now = Instant::now();
        for index in 0..100u32 {
            // 95 calls of 200 ms, 5 of 10 s.
            let latency = if index % 20 == 0 { ms(10_000) } else { ms(200) };
            tracker.record(now, latency);
        }
        let delay = tracker.delay(now).expect("enough samples");
        assert!(delay > ms(200) && delay <= ms(250), "{delay:?}");
        // A few more slow calls put the 95th percentile among the slow ones.
        for _ in 0..2 {
            tracker.record(now, ms(10_000));
        }
        for _ in 0..REFRESH {
            tracker.record(now, ms(10_000));
        }
        assert!(tracker.delay(now).expect("enough") >= ms(10_000));
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_is_clamped_to_floor_and_ceiling() {
        let tracker = LatencyTracker::new(Duration::from_secs(60), 95.0, 1, ms(50), ms(500));
        let now = Instant::now();
        tracker.record(now, ms(1));
        assert_eq!(tracker.delay(now), Some(ms(50)));
        for _ in 0..REFRESH {
            tracker.record(now, ms(60_000));
        }
        assert_eq!(tracker.delay(now), Some(ms(500)));
    }

    #[tokio::test(start_paused = true)]
    async fn samples_leave_the_window_after_two_rotations() {
        let tracker = tracker(10);
        for _ in 0..10 {
            tracker.record(Instant::now(), ms(100));
        }
        assert!(tracker.delay(Instant::now()).is_some());
        // One window later the samples are the previous generation: still counted.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(tracker.delay(Instant::now()).is_some());
        // Two windows later they are gone: no hedging until the window fills again.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(tracker.delay(Instant::now()), None);
    }
}
