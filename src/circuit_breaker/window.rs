//! The closed-state sliding windows, lock-free.
//!
//! - [`CountWindow`]: the last N calls. A ring of one-byte samples and one 64-bit word packing
//!   `head | calls | failed | slow` (16 bits each), updated with one compare-and-swap per
//!   call, so a snapshot is one atomic load and is always self-consistent. While the window is
//!   full of fast successes, recording another fast success changes nothing (the ring holds
//!   the same samples whichever success is evicted), so it is a plain load: the common case
//!   of a healthy upstream writes no shared memory at all.
//! - [`TimeWindow`]: one bucket per second, each a 64-bit word packing
//!   `epoch second | calls | failed | slow` (22/14/14/14 bits), reset by the first call of a
//!   new second. A snapshot sums the buckets of the current second and the `N - 1` before it,
//!   so reading it also drops stale seconds (reference case 7). A bucket counts at most
//!   16 383 calls per second; further calls in that second are not counted.
//!
//! Under concurrent completion the windows are exact for the calls whose updates have landed;
//! a snapshot never mixes half an update.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// One recorded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

impl Sample {
    fn encode(self) -> u8 {
        1 | (u8::from(self.failed) << 1) | (u8::from(self.slow) << 2)
    }
}

/// Counts of a window at one moment.
///
/// ```
/// use tower_deepseek::circuit_breaker::WindowCounts;
/// let counts = WindowCounts { calls: 4, failed: 1, slow: 2 };
/// assert_eq!(counts.failure_rate(), 25.0);
/// assert_eq!(counts.slow_call_rate(), 50.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Calls in the window.
    pub calls: u32,
    /// Of which failed.
    pub failed: u32,
    /// Of which slow (successful or not).
    pub slow: u32,
}

impl WindowCounts {
    /// Failed calls in percent of all calls (0 when empty).
    pub fn failure_rate(&self) -> f32 {
        rate(self.failed, self.calls)
    }

    /// Slow calls in percent of all calls (0 when empty).
    pub fn slow_call_rate(&self) -> f32 {
        rate(self.slow, self.calls)
    }

    pub(crate) fn add(&mut self, sample: Sample) {
        self.calls += 1;
        self.failed += u32::from(sample.failed);
        self.slow += u32::from(sample.slow);
    }
}

fn rate(part: u32, total: u32) -> f32 {
    if total == 0 {
        0.0
    } else {
        part.min(total) as f32 * 100.0 / total as f32
    }
}

const FIELD: u64 = 0xFFFF;

fn unpack(word: u64) -> (u64, u64, u64, u64) {
    (
        word & FIELD,
        (word >> 16) & FIELD,
        (word >> 32) & FIELD,
        (word >> 48) & FIELD,
    )
}

fn pack(head: u64, calls: u64, failed: u64, slow: u64) -> u64 {
    (head & FIELD) | ((calls & FIELD) << 16) | ((failed & FIELD) << 32) | ((slow & FIELD) << 48)
}

/// The last `size` calls.
pub(crate) struct CountWindow {
    size: u64,
    word: AtomicU64,
    slots: Box<[AtomicU8]>,
}

impl CountWindow {
    /// `size` is 1 ..= 65 535 (validated by the builder).
    pub(crate) fn new(size: u32) -> CountWindow {
        CountWindow {
            size: u64::from(size.max(1)),
            word: AtomicU64::new(0),
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    pub(crate) fn record(&self, sample: Sample) -> WindowCounts {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let (head, calls, failed, slow) = unpack(word);
            if !sample.failed && !sample.slow && calls == self.size && failed == 0 && slow == 0 {
                return counts(calls, failed, slow);
            }
            // `head < size` always: it is only ever stored reduced modulo `size`.
            let slot = &self.slots[(head % self.size) as usize];
            let old = slot.load(Ordering::Relaxed);
            let (mut calls, mut failed, mut slow) = (calls, failed, slow);
            if old & 1 == 1 {
                failed = failed.saturating_sub(u64::from((old >> 1) & 1));
                slow = slow.saturating_sub(u64::from((old >> 2) & 1));
            } else {
                calls = (calls + 1).min(self.size);
            }
            failed += u64::from(sample.failed);
            slow += u64::from(sample.slow);
            let next = pack((head + 1) % self.size, calls, failed, slow);
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    slot.store(sample.encode(), Ordering::Relaxed);
                    return counts(calls, failed, slow);
                }
                Err(current) => word = current,
            }
        }
    }

    pub(crate) fn snapshot(&self) -> WindowCounts {
        let (_, calls, failed, slow) = unpack(self.word.load(Ordering::Acquire));
        counts(calls, failed, slow)
    }

    /// Whether the window is full and holds no failed or slow call: then recording a fast
    /// success changes nothing (see [`record`](Self::record)). One load and one compare.
    #[inline]
    pub(crate) fn is_full_of_successes(&self) -> bool {
        // `calls == size`, `failed == 0` and `slow == 0` at once: the fields above `head`.
        self.word.load(Ordering::Acquire) >> 16 == self.size
    }

    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Relaxed);
        }
        self.word.store(0, Ordering::Release);
    }
}

fn counts(calls: u64, failed: u64, slow: u64) -> WindowCounts {
    WindowCounts {
        calls: calls as u32,
        failed: failed.min(calls) as u32,
        slow: slow.min(calls) as u32,
    }
}

const EPOCH_BITS: u32 = 22;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const COUNT_BITS: u32 = 14;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn unpack_bucket(word: u64) -> (u64, u64, u64, u64) {
    (
        word >> (3 * COUNT_BITS),
        (word >> (2 * COUNT_BITS)) & COUNT_MASK,
        (word >> COUNT_BITS) & COUNT_MASK,
        word & COUNT_MASK,
    )
}

fn pack_bucket(epoch: u64, calls: u64, failed: u64, slow: u64) -> u64 {
    ((epoch & EPOCH_MASK) << (3 * COUNT_BITS))
        | ((calls & COUNT_MASK) << (2 * COUNT_BITS))
        | ((failed & COUNT_MASK) << COUNT_BITS)
        | (slow & COUNT_MASK)
}

/// The calls of the last `seconds` seconds, one bucket per second.
pub(crate) struct TimeWindow {
    seconds: u64,
    buckets: Box<[AtomicU64]>,
}

impl TimeWindow {
    /// `seconds` is 1 ..= 3600 (validated by the builder).
    pub(crate) fn new(seconds: u32) -> TimeWindow {
        // Every bucket starts stale: epoch `EPOCH_MASK` is "long ago" for second 0.
        let stale = pack_bucket(EPOCH_MASK, 0, 0, 0);
        TimeWindow {
            seconds: u64::from(seconds.max(1)),
            buckets: (0..seconds.max(1)).map(|_| AtomicU64::new(stale)).collect(),
        }
    }

    /// How many seconds before `now` a bucket's epoch is (wrapping).
    fn age(now: u64, epoch: u64) -> u64 {
        (now.wrapping_sub(epoch)) & EPOCH_MASK
    }

    /// Records a call that ended in second `now` (seconds since the breaker was built).
    pub(crate) fn record(&self, sample: Sample, now: u64) -> WindowCounts {
        let bucket = &self.buckets[(now % self.seconds) as usize];
        let tag = now & EPOCH_MASK;
        let mut word = bucket.load(Ordering::Acquire);
        loop {
            let (epoch, mut calls, mut failed, mut slow) = unpack_bucket(word);
            if epoch != tag {
                if Self::age(now, epoch) > EPOCH_MASK / 2 {
                    // A racing call already moved this bucket to a later second.
                    break;
                }
                (calls, failed, slow) = (0, 0, 0);
            }
            if calls == COUNT_MASK {
                break;
            }
            calls += 1;
            failed += u64::from(sample.failed);
            slow += u64::from(sample.slow);
            let next = pack_bucket(tag, calls, failed, slow);
            match bucket.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
        self.snapshot(now)
    }

    /// The calls of second `now` and the `seconds - 1` before it.
    pub(crate) fn snapshot(&self, now: u64) -> WindowCounts {
        let mut total = WindowCounts::default();
        for bucket in self.buckets.iter() {
            let (epoch, calls, failed, slow) = unpack_bucket(bucket.load(Ordering::Acquire));
            if Self::age(now, epoch) < self.seconds {
                total.calls += calls as u32;
                total.failed += failed as u32;
                total.slow += slow as u32;
            }
        }
        total
    }

    pub(crate) fn reset(&self) {
        let stale = pack_bucket(EPOCH_MASK, 0, 0, 0);
        for bucket in self.buckets.iter() {
            bucket.store(stale, Ordering::Release);
        }
    }
}

/// Either window.
pub(crate) enum ClosedWindow {
    Count(CountWindow),
    Time(TimeWindow),
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Sample = Sample {
        failed: false,
        slow: false,
    };
    const F: Sample = Sample {
        failed: true,
        slow: false,
    };

    /// Reference case 5: count window 5: F,F,S,S,S ⇒ 40 %; S,S ⇒ 0 %; F,F ⇒ 40 %; F ⇒ 60 %.
    #[test]
    fn case_05_count_window_evicts_oldest() {
        let window = CountWindow::new(5);
        let mut last = WindowCounts::default();
        for sample in [F, F, S, S, S] {
            last = window.record(sample);
        }
        assert_eq!((last.calls, last.failure_rate()), (5, 40.0));
        for sample in [S, S] {
            last = window.record(sample);
        }
        assert_eq!((last.calls, last.failure_rate()), (5, 0.0));
        for sample in [F, F] {
            last = window.record(sample);
        }
        assert_eq!(last.failure_rate(), 40.0);
        last = window.record(F);
        assert_eq!(last.failure_rate(), 60.0);
        assert_eq!(window.snapshot(), last);
    }

    #[test]
    fn full_window_of_successes_skips_the_write_but_stays_exact() {
        let window = CountWindow::new(3);
        for _ in 0..10 {
            window.record(S);
        }
        assert_eq!(window.snapshot().calls, 3);
        // The next failure evicts a success; two more successes leave it in the window.
        window.record(F);
        window.record(S);
        let counts = window.record(S);
        assert_eq!((counts.calls, counts.failed), (3, 1));
        let counts = window.record(S);
        assert_eq!((counts.calls, counts.failed), (3, 0));
    }

    /// Reference case 6: the 5 s time window trace of resilience4j gives 3,4,5,6,7,5,5,1.
    #[test]
    fn case_06_time_window_eviction_trace() {
        let window = TimeWindow::new(5);
        // (second the call ends in, sample): E@0, S@0.1, S@0.2, then +1 s steps, then +5 s.
        let trace = [
            (0, F),
            (0, S),
            (0, S),
            (1, S),
            (2, S),
            (3, F),
            (4, S),
            (5, S),
            (6, S),
            (11, S),
        ];
        let seen: Vec<u32> = trace
            .iter()
            .map(|&(second, sample)| window.record(sample, second).calls)
            .collect();
        assert_eq!(&seen[2..], [3, 4, 5, 6, 7, 5, 5, 1]);
        assert_eq!(window.snapshot(11).failed, 0);
        assert_eq!(window.snapshot(6).failed, 1);
    }

    /// Reference case 7: reading a snapshot drops stale seconds.
    #[test]
    fn case_07_snapshot_read_advances_the_window() {
        let window = TimeWindow::new(5);
        window.record(F, 0);
        assert_eq!(window.snapshot(4).calls, 1);
        let later = window.snapshot(5);
        assert_eq!((later.calls, later.failure_rate()), (0, 0.0));
    }

    #[test]
    fn buckets_saturate_instead_of_overflowing() {
        let window = TimeWindow::new(2);
        for _ in 0..(COUNT_MASK + 10) {
            window.record(F, 7);
        }
        let counts = window.snapshot(7);
        assert_eq!(counts.calls as u64, COUNT_MASK);
        assert_eq!(counts.failure_rate(), 100.0);
    }
}
