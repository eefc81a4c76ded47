//! The decision step: the pluggable backend trait and the two local (governor) backends.

use std::fmt;
use std::future::{Future, Ready};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};

use super::clock::{TokioClock, TokioReference};
use crate::error::{Error, ErrorKind, RateLimitInfo};

/// What a backend decided for one call (or one reservation of `cost` cells).
///
/// ```
/// use tower_deepseek::rate_limit::{Decide, Decision, DirectLimiter, RateLimitBackend};
/// use std::num::NonZeroU32;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let limiter = DirectLimiter::per_second(2, None)?;
/// let one = NonZeroU32::MIN;
/// assert!(matches!(limiter.decide(&(), one), Decide::Now(Decision::Allowed)));
/// assert!(matches!(limiter.decide(&(), one), Decide::Now(Decision::Allowed)));
/// assert!(matches!(limiter.decide(&(), one), Decide::Now(Decision::Limited { .. })));
/// # Ok(())
/// # }
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The call conforms; its cells were taken.
    Allowed,
    /// Not now: nothing was taken. A call of the same cost can pass after `retry_after`.
    Limited {
        /// The wait until the same call would conform.
        retry_after: Duration,
        /// The limit's state, for the `x-ratelimit-*` headers.
        info: RateLimitInfo,
    },
    /// The cost is larger than the burst: the call can never pass (governor's
    /// `InsufficientCapacity`). Nothing was taken.
    Exceeded {
        /// The burst size, the largest cost that can ever pass.
        limit: u64,
    },
    /// The backend could not decide (a shared store is down). `fail_open` says whether the
    /// backend wants the call let through (`true`) or refused (`false`).
    Unavailable {
        /// Let the call through.
        fail_open: bool,
    },
}

/// A decision taken now (the local limiters) or one still on its way (a shared store).
#[derive(Debug)]
pub enum Decide<F> {
    /// Decided synchronously: the layer calls the inner service at once when allowed, with
    /// no state machine and no clone of the inner service.
    Now(Decision),
    /// Decided by a future (e.g. a Redis round trip), polled inside the response future before
    /// the inner service is called.
    Later(F),
}

/// The decision step of a rate-limit layer, pluggable: the local governor limiters
/// ([`DirectLimiter`], [`KeyedLimiter`]) decide synchronously; a shared store (the Redis GCRA
/// backend) returns a future. The layer owns everything else (waiting, jitter, events, the
/// error and its headers).
///
/// ```
/// use std::future::Ready;
/// use std::num::NonZeroU32;
/// use tower_deepseek::rate_limit::{Decide, Decision, RateLimitBackend};
///
/// /// A backend that lets everything through (e.g. to switch limiting off).
/// struct Unlimited;
///
/// impl<K> RateLimitBackend<K> for Unlimited {
///     type Future = Ready<Decision>;
///     fn decide(&self, _key: &K, _cost: NonZeroU32) -> Decide<Self::Future> {
///         Decide::Now(Decision::Allowed)
///     }
///     fn limit(&self) -> u64 {
///         u64::MAX
///     }
/// }
/// assert!(matches!(Unlimited.decide(&(), NonZeroU32::MIN), Decide::Now(Decision::Allowed)));
/// ```
pub trait RateLimitBackend<K>: Send + Sync + 'static {
    /// The future of a decision taken asynchronously (`Ready<Decision>` for a local backend;
    /// a boxed future is fine for a network round trip).
    type Future: Future<Output = Decision> + Send;

    /// Decides whether a call of `cost` cells keyed by `key` may pass now, taking the cells
    /// when it may. A refusal takes nothing.
    fn decide(&self, key: &K, cost: NonZeroU32) -> Decide<Self::Future>;

    /// The burst size (`x-ratelimit-limit`).
    fn limit(&self) -> u64;

    /// Takes up to `cost` more cells for `key` after the fact, as far as they fit now (token
    /// reconciliation: the call used more than it reserved). Returns how many were taken. The
    /// default takes nothing.
    fn charge(&self, key: &K, cost: u32) -> u32 {
        let _ = (key, cost);
        0
    }
}

/// Builds governor's quota: `count` cells per `period`, a burst of `burst` (default `count`).
/// Every value is checked: zero is a configuration error, never a panic.
pub(crate) fn quota(
    name: &str,
    count: u32,
    period: Duration,
    burst: Option<u32>,
) -> Result<Quota, Error> {
    let config = |why: String| {
        Err(Error::new(
            ErrorKind::Config,
            format!("rate limit {name:?}: {why}"),
        ))
    };
    if count == 0 {
        return config("the rate must allow at least 1 call per period (got 0)".into());
    }
    if period.is_zero() {
        return config("the period must be longer than zero".into());
    }
    let burst = burst.unwrap_or(count);
    let Some(burst) = NonZeroU32::new(burst) else {
        return config("the burst must be at least 1 (got 0)".into());
    };
    let interval = period / count;
    let Some(quota) = Quota::with_period(interval) else {
        return config(format!(
            "{count} calls per {period:?} is faster than one per nanosecond"
        ));
    };
    Ok(quota.allow_burst(burst))
}

/// Turns governor's refusal into a [`Decision::Limited`]: the wait, and the time until the
/// burst is full again (`wait + T·(burst − cost)`, as the GCRA state after the wait shows).
fn limited(not_until: &NotUntil<TokioReference>, cost: u32) -> Decision {
    let quota = not_until.quota();
    let burst = quota.burst_size().get();
    let retry_after = not_until.wait_time_from(TokioClock.now());
    let refill = quota
        .replenish_interval()
        .saturating_mul(burst.saturating_sub(cost));
    Decision::Limited {
        retry_after,
        info: RateLimitInfo::new(u64::from(burst), 0, retry_after.saturating_add(refill)),
    }
}

type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioReference>>;

/// The largest batch a thread takes from a shared limit at once (see
/// [`DirectLimiter::with_thread_batch`]).
pub const MAX_THREAD_BATCH: u32 = 64;

/// One global GCRA limit (governor's direct limiter over [`TokioClock`]). Clones share it.
///
/// **Exact by default.** [`with_thread_batch`](Self::with_thread_batch) lets each thread take
/// cells from the limit a batch at a time, so that threads calling one limit do not fight over
/// its one atomic word on every call (what the [`RateLimitLayer`](super::RateLimitLayer)
/// builder does for large bursts).
///
/// ```
/// use tower_deepseek::rate_limit::DirectLimiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let limiter = DirectLimiter::per_second(10, Some(20))?;
/// assert_eq!(limiter.burst(), 20);
/// assert_eq!(limiter.thread_batch(), 1);
/// assert!(DirectLimiter::per_second(0, None).is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DirectLimiter {
    inner: Arc<DirectInner>,
}

struct DirectInner {
    limiter: Direct,
    quota: Quota,
    burst: u32,
    /// Cells a thread takes at once; 1 = every call decides on the shared word.
    batch: u32,
    /// One counter of banked cells per thread slot; empty when `batch` is 1.
    slots: Box<[Slot]>,
}

/// Cells a thread slot has taken from the limit and not handed out yet. Aligned to its own
/// cache lines (two, for the adjacent-line prefetcher) so slots never share one.
#[repr(align(128))]
#[derive(Default)]
struct Slot {
    cells: AtomicU32,
}

impl fmt::Debug for DirectLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectLimiter")
            .field("burst", &self.inner.burst)
            .field("thread_batch", &self.inner.batch)
            .finish_non_exhaustive()
    }
}

impl DirectLimiter {
    /// `count` calls per second, a burst of `burst` (default `count`).
    pub fn per_second(count: u32, burst: Option<u32>) -> Result<DirectLimiter, Error> {
        DirectLimiter::new("direct", count, Duration::from_secs(1), burst)
    }

    /// `count` cells per `period`, a burst of `burst` (default `count`); `name` appears in
    /// configuration errors.
    pub fn new(
        name: &str,
        count: u32,
        period: Duration,
        burst: Option<u32>,
    ) -> Result<DirectLimiter, Error> {
        let quota = quota(name, count, period, burst)?;
        Ok(DirectLimiter::from_quota(quota))
    }

    pub(crate) fn from_quota(quota: Quota) -> DirectLimiter {
        DirectLimiter::build(quota, 1, 0)
    }

    fn build(quota: Quota, batch: u32, slots: usize) -> DirectLimiter {
        let slots = if batch > 1 { slots } else { 0 };
        DirectLimiter {
            inner: Arc::new(DirectInner {
                burst: quota.burst_size().get(),
                limiter: RateLimiter::direct_with_clock(quota, TokioClock),
                quota,
                batch: if slots == 0 { 1 } else { batch },
                slots: (0..slots).map(|_| Slot::default()).collect(),
            }),
        }
    }

    /// A limiter with this one's quota (and fresh state: call it when building, before
    /// cloning) that lets each thread take `batch` cells (at most [`MAX_THREAD_BATCH`]) from
    /// the limit at once and hand them to its next calls without touching the shared word. `1` keeps every
    /// decision exact; `batch` must leave the burst at least 32 batches per thread slot
    /// (slots: the machine's parallelism rounded up to a power of two), else it is lowered
    /// until it does, down to 1.
    ///
    /// What changes, exactly (single-cell calls only; a call of several cells always decides
    /// on the shared word):
    /// - A batch is taken only when the whole batch conforms now; near the limit, calls fall
    ///   back to exact single decisions, so the limit never admits more at one instant than
    ///   the exact GCRA would.
    /// - Before refusing a call, the limiter hands it any cell another slot still holds, so
    ///   cells banked by an idle thread are not lost to a busy one.
    /// - The one approximation: a banked cell was counted when its batch was taken, and may be
    ///   handed out later, after the limit refilled. Over any window, the limit admits at most
    ///   `slots × batch` calls more than the exact GCRA (at most 1/32 of the burst), and over
    ///   time never more than its rate.
    ///
    /// [`RateLimitBuilder::build`](super::RateLimitBuilder::build) picks a batch by itself
    /// (see [`thread_batch`](super::RateLimitBuilder::thread_batch)).
    ///
    /// ```
    /// use tower_deepseek::rate_limit::DirectLimiter;
    ///
    /// # fn main() -> Result<(), tower_deepseek::Error> {
    /// let limiter = DirectLimiter::per_second(100_000, None)?.with_thread_batch(16);
    /// assert_eq!(limiter.thread_batch(), 16);
    /// // A burst of 20 is too small to share out: every decision stays exact.
    /// assert_eq!(DirectLimiter::per_second(20, None)?.with_thread_batch(16).thread_batch(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_thread_batch(self, batch: u32) -> DirectLimiter {
        let slots = thread_slots();
        let batch = fitting_batch(self.inner.burst, batch, slots);
        let quota = self.inner.quota;
        DirectLimiter::build(quota, batch, slots)
    }

    /// The batch [`RateLimitBuilder::build`](super::RateLimitBuilder::build) uses by default
    /// for a burst of `burst`: the largest that fits ([`with_thread_batch`](Self::with_thread_batch)'s
    /// rule), at most [`MAX_THREAD_BATCH`]; 1 (exact) for bursts too small to share out.
    pub fn auto_thread_batch(burst: u32) -> u32 {
        fitting_batch(burst, MAX_THREAD_BATCH, thread_slots())
    }

    /// Cells a thread takes at once (1: every decision is exact).
    pub fn thread_batch(&self) -> u32 {
        self.inner.batch
    }

    /// The burst size.
    pub fn burst(&self) -> u32 {
        self.inner.burst
    }

    /// One single-cell decision, batched through `slot`'s bank.
    fn decide_one_in(&self, slot: usize) -> Decision {
        let inner = &*self.inner;
        let Some(bank) = inner.slots.get(slot & (inner.slots.len().wrapping_sub(1))) else {
            return exact_one(&inner.limiter);
        };
        if take_one(&bank.cells) {
            return Decision::Allowed;
        }
        // The bank is empty: take a whole batch when it conforms now.
        if let Some(batch) = NonZeroU32::new(inner.batch)
            && let Ok(Ok(())) = inner.limiter.check_n(batch)
        {
            bank.cells.fetch_add(inner.batch - 1, Ordering::Relaxed);
            return Decision::Allowed;
        }
        // Near the limit: decide exactly, and before refusing hand out a cell another slot
        // still holds.
        match exact_one(&inner.limiter) {
            Decision::Limited { .. } if inner.slots.iter().any(|other| take_one(&other.cells)) => {
                Decision::Allowed
            }
            decision => decision,
        }
    }
}

/// One exact single-cell decision on the shared word.
#[inline]
fn exact_one(limiter: &Direct) -> Decision {
    match limiter.check() {
        Ok(()) => Decision::Allowed,
        Err(not_until) => limited(&not_until, 1),
    }
}

/// Takes one banked cell if there is one.
#[inline]
fn take_one(cells: &AtomicU32) -> bool {
    let mut seen = cells.load(Ordering::Relaxed);
    while seen > 0 {
        match cells.compare_exchange_weak(seen, seen - 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => seen = now,
        }
    }
    false
}

/// The machine's parallelism rounded up to a power of two (1 to 64): the number of thread
/// slots of a batched limiter. Threads beyond it share slots, which stays correct.
fn thread_slots() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, 64)
        .next_power_of_two()
}

/// Lowers `wanted` until `slots × batch` is at most 1/32 of the burst (1 when nothing fits).
fn fitting_batch(burst: u32, wanted: u32, slots: usize) -> u32 {
    let slots = u32::try_from(slots).unwrap_or(u32::MAX).max(1);
    let fits = burst / 32 / slots;
    let batch = wanted.min(MAX_THREAD_BATCH).min(fits);
    if batch < 2 { 1 } else { batch }
}

/// One decision: `check` for a single cell (governor's fast path), `check_n` otherwise.
#[inline]
fn decide_with(
    cost: NonZeroU32,
    one: impl FnOnce() -> Result<(), NotUntil<TokioReference>>,
    many: impl FnOnce() -> Result<Result<(), NotUntil<TokioReference>>, governor::InsufficientCapacity>,
) -> Decision {
    let result = if cost.get() == 1 {
        one()
    } else {
        match many() {
            Ok(result) => result,
            Err(governor::InsufficientCapacity(limit)) => {
                return Decision::Exceeded {
                    limit: u64::from(limit),
                };
            }
        }
    };
    match result {
        Ok(()) => Decision::Allowed,
        Err(not_until) => limited(&not_until, cost.get()),
    }
}

/// Takes as many of `cost` cells as fit now, in chunks no larger than the burst.
fn charge_with(burst: u32, cost: u32, mut take: impl FnMut(NonZeroU32) -> bool) -> u32 {
    let mut taken = 0;
    let mut left = cost;
    while left > 0 {
        let mut chunk = left.min(burst);
        // Halve until a chunk fits (or nothing does): at most log2(burst) checks.
        loop {
            let Some(n) = NonZeroU32::new(chunk) else {
                return taken;
            };
            if take(n) {
                break;
            }
            chunk /= 2;
        }
        taken += chunk;
        left -= chunk;
    }
    taken
}

impl RateLimitBackend<()> for DirectLimiter {
    type Future = Ready<Decision>;

    #[inline]
    fn decide(&self, _key: &(), cost: NonZeroU32) -> Decide<Self::Future> {
        if cost.get() == 1 && self.inner.batch > 1 {
            return Decide::Now(self.decide_one_in(crate::lanes::thread_lane()));
        }
        let limiter = &self.inner.limiter;
        Decide::Now(decide_with(
            cost,
            || limiter.check(),
            || limiter.check_n(cost),
        ))
    }

    fn limit(&self) -> u64 {
        u64::from(self.inner.burst)
    }

    fn charge(&self, _key: &(), cost: u32) -> u32 {
        let limiter = &self.inner.limiter;
        charge_with(self.inner.burst, cost, |n| {
            matches!(limiter.check_n(n), Ok(Ok(())))
        })
    }
}

// foldhash, seeded per limiter: keys may come from callers (addresses), so the seed keeps
// them from choosing collisions, at a fraction of std's SipHash per lookup.
type Keyed<K> = RateLimiter<
    K,
    DashMapStateStore<K, foldhash::fast::RandomState>,
    TokioClock,
    NoOpMiddleware<TokioReference>,
>;

struct KeyedInner<K: Hash + Eq + Clone> {
    limiter: Keyed<K>,
    burst: u32,
    evict_every: Duration,
    sweeper_started: AtomicBool,
}

/// One GCRA limit per key (governor's keyed limiter over a `DashMap`, on [`TokioClock`]).
/// Clones share it.
///
/// **Memory stays bounded**: idle keys are evicted every `evict_every` by a background tokio
/// task that the limiter starts on its first decision inside a runtime. The task holds only a
/// `Weak` reference, so it ends at its next tick after the last clone is dropped. Each sweep
/// runs governor's `retain_recent` (drops every key whose state is indistinguishable from a
/// fresh one: idle for the time to refill its burst plus one interval) and `shrink_to_fit`. A sweep
/// visits every key once, off the request path; the per-call cost of this design is one
/// relaxed atomic load. [`evict_idle`](Self::evict_idle) runs a sweep by hand.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use tower_deepseek::rate_limit::{Decide, Decision, KeyedLimiter, RateLimitBackend};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let limiter = KeyedLimiter::<u64>::new("per-key", 1, Duration::from_secs(1), None, None)?;
/// assert!(matches!(limiter.decide(&1, NonZeroU32::MIN), Decide::Now(Decision::Allowed)));
/// assert!(matches!(limiter.decide(&2, NonZeroU32::MIN), Decide::Now(Decision::Allowed)));
/// assert_eq!(limiter.len(), 2);
/// // governor keeps a key until it is one interval past full (2 s here).
/// tokio::time::advance(Duration::from_secs(2)).await;
/// limiter.evict_idle();
/// assert_eq!(limiter.len(), 0);
/// # Ok(())
/// # }
/// ```
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    inner: Arc<KeyedInner<K>>,
}

impl<K: Hash + Eq + Clone> Clone for KeyedLimiter<K> {
    fn clone(&self) -> Self {
        KeyedLimiter {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Hash + Eq + Clone> fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are never shown: they may be API keys or addresses.
        f.debug_struct("KeyedLimiter")
            .field("burst", &self.inner.burst)
            .field("keys", &self.inner.limiter.len())
            .field("evict_every", &self.inner.evict_every)
            .finish()
    }
}

impl<K> KeyedLimiter<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// `count` cells per `period` for each key, a burst of `burst` (default `count`), idle
    /// keys evicted every `evict_every` (default: the time to refill the burst, at least one
    /// second). `name` appears in configuration errors.
    pub fn new(
        name: &str,
        count: u32,
        period: Duration,
        burst: Option<u32>,
        evict_every: Option<Duration>,
    ) -> Result<KeyedLimiter<K>, Error> {
        let quota = quota(name, count, period, burst)?;
        KeyedLimiter::from_quota(name, quota, evict_every)
    }

    pub(crate) fn from_quota(
        name: &str,
        quota: Quota,
        evict_every: Option<Duration>,
    ) -> Result<KeyedLimiter<K>, Error> {
        let evict_every = match evict_every {
            Some(every) if every.is_zero() => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("rate limit {name:?}: the eviction interval must be longer than zero"),
                ));
            }
            Some(every) => every,
            None => quota
                .burst_size_replenished_in()
                .max(Duration::from_secs(1)),
        };
        Ok(KeyedLimiter {
            inner: Arc::new(KeyedInner {
                burst: quota.burst_size().get(),
                limiter: RateLimiter::dashmap_with_clock_and_hasher(
                    quota,
                    TokioClock,
                    foldhash::fast::RandomState::default(),
                ),
                evict_every,
                sweeper_started: AtomicBool::new(false),
            }),
        })
    }

    /// The burst size of each key.
    pub fn burst(&self) -> u32 {
        self.inner.burst
    }

    /// How many keys are stored now.
    pub fn len(&self) -> usize {
        self.inner.limiter.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.inner.limiter.is_empty()
    }

    /// Drops every key idle long enough to be back to a full burst (plus one interval: governor's
    /// margin), and gives the memory back. The background sweeper does this every `evict_every`.
    pub fn evict_idle(&self) {
        self.inner.limiter.retain_recent();
        self.inner.limiter.shrink_to_fit();
    }

    /// Starts the sweeper once, from the first decision made inside a tokio runtime.
    #[inline]
    fn ensure_sweeper(&self) {
        if self.inner.sweeper_started.load(Ordering::Relaxed) {
            return;
        }
        self.start_sweeper();
    }

    #[cold]
    fn start_sweeper(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // Outside a runtime: try again on the next decision.
        };
        if self.inner.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<KeyedInner<K>> = Arc::downgrade(&self.inner);
        let every = self.inner.evict_every;
        // The schedule starts now, not when the task is first polled.
        let mut next = tokio::time::Instant::now() + every;
        runtime.spawn(async move {
            loop {
                tokio::time::sleep_until(next).await;
                next = tokio::time::Instant::now().max(next) + every;
                let Some(inner) = weak.upgrade() else {
                    return; // The last limiter is gone.
                };
                inner.limiter.retain_recent();
                inner.limiter.shrink_to_fit();
            }
        });
    }
}

impl<K> RateLimitBackend<K> for KeyedLimiter<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Future = Ready<Decision>;

    #[inline]
    fn decide(&self, key: &K, cost: NonZeroU32) -> Decide<Self::Future> {
        self.ensure_sweeper();
        let limiter = &self.inner.limiter;
        Decide::Now(decide_with(
            cost,
            || limiter.check_key(key),
            || limiter.check_key_n(key, cost),
        ))
    }

    fn limit(&self) -> u64 {
        u64::from(self.inner.burst)
    }

    fn charge(&self, key: &K, cost: u32) -> u32 {
        let limiter = &self.inner.limiter;
        charge_with(self.inner.burst, cost, |n| {
            matches!(limiter.check_key_n(key, n), Ok(Ok(())))
        })
    }
}

#[cfg(test)]
mod batch_tests {
    //! The thread batch of [`DirectLimiter`], driven slot by slot so every count is exact.

    use super::*;
    use tokio::time::advance;

    fn batched(burst: u32, batch: u32, slots: usize) -> DirectLimiter {
        let quota = quota("test", burst, Duration::from_secs(1), None).expect("valid");
        DirectLimiter::build(quota, batch, slots)
    }

    fn banked(limiter: &DirectLimiter, slot: usize) -> u32 {
        limiter.inner.slots[slot].cells.load(Ordering::Relaxed)
    }

    #[test]
    fn the_batch_fits_the_burst_or_the_limiter_stays_exact() {
        assert_eq!(fitting_batch(1_000_000_000, 64, 2), 64);
        assert_eq!(fitting_batch(1_000_000_000, 1_000, 2), MAX_THREAD_BATCH);
        assert_eq!(
            fitting_batch(4_096, 64, 4),
            32,
            "1/32 of the burst over 4 slots"
        );
        assert_eq!(fitting_batch(100, 64, 2), 1, "too small to share out");
        assert_eq!(fitting_batch(1_000_000, 0, 2), 1, "0 means exact");
        // What the builder picks, on any machine (1 to 64 slots).
        assert_eq!(
            DirectLimiter::auto_thread_batch(1_000_000_000),
            MAX_THREAD_BATCH
        );
        assert_eq!(DirectLimiter::auto_thread_batch(63), 1);
        let exact = DirectLimiter::per_second(20, None)
            .unwrap()
            .with_thread_batch(16);
        assert_eq!(exact.thread_batch(), 1);
        assert!(exact.inner.slots.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_takes_a_batch_and_hands_it_out_without_the_shared_word() {
        let limiter = batched(1_024, 8, 4);
        assert_eq!(limiter.decide_one_in(0), Decision::Allowed);
        assert_eq!(
            banked(&limiter, 0),
            7,
            "one batch of 8 taken, one cell used"
        );
        for left in (0..7).rev() {
            assert_eq!(limiter.decide_one_in(0), Decision::Allowed);
            assert_eq!(banked(&limiter, 0), left);
        }
        // Slot numbers wrap onto the slots.
        assert_eq!(limiter.decide_one_in(5), Decision::Allowed);
        assert_eq!(banked(&limiter, 1), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn at_one_instant_the_slots_together_admit_exactly_the_burst() {
        let limiter = batched(1_024, 8, 4);
        let mut admitted = 0;
        let mut refused_in_a_row = 0;
        for call in 0.. {
            match limiter.decide_one_in(call % 4) {
                Decision::Allowed => {
                    admitted += 1;
                    refused_in_a_row = 0;
                }
                Decision::Limited { retry_after, .. } => {
                    assert!(retry_after > Duration::ZERO);
                    refused_in_a_row += 1;
                    if refused_in_a_row == 4 {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(admitted, 1_024);
        assert!((0..4).all(|slot| banked(&limiter, slot) == 0));
    }

    #[tokio::test(start_paused = true)]
    async fn near_the_limit_a_slot_decides_exactly_instead_of_taking_a_batch() {
        // 1,004 = 125 batches of 8, then 4 cells: too few for a batch.
        let limiter = batched(1_004, 8, 2);
        for _ in 0..1_000 {
            assert_eq!(limiter.decide_one_in(0), Decision::Allowed);
        }
        assert_eq!(banked(&limiter, 0), 0);
        for _ in 0..4 {
            assert_eq!(limiter.decide_one_in(1), Decision::Allowed);
            assert_eq!(banked(&limiter, 1), 0, "single cells, no batch");
        }
        assert!(matches!(limiter.decide_one_in(1), Decision::Limited { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn before_refusing_a_slot_takes_cells_banked_by_idle_slots_and_the_excess_is_bounded() {
        let (burst, batch, slots) = (1_024, 8, 4);
        let limiter = batched(burst, batch, slots);
        for slot in 1..4 {
            assert_eq!(limiter.decide_one_in(slot), Decision::Allowed);
        }
        assert_eq!((1..4).map(|slot| banked(&limiter, slot)).sum::<u32>(), 21);
        // The limit refills completely; the 21 banked cells were counted a second ago.
        advance(Duration::from_secs(2)).await;
        let mut admitted = 0u32;
        while limiter.decide_one_in(0) == Decision::Allowed {
            admitted += 1;
        }
        assert_eq!(
            admitted,
            burst + 21,
            "a fresh burst, then the idle slots' banks"
        );
        assert!(
            admitted <= burst + batch * slots as u32,
            "the documented bound"
        );
        assert!((0..4).all(|slot| banked(&limiter, slot) == 0));
    }

    #[test]
    fn two_threads_on_one_batched_limit_take_every_cell_exactly_once() {
        // 100,000 cells an hour: a refill every 36 ms, so the test sees the burst and at most
        // a few refilled cells (bounded below by the time it took).
        let limiter = DirectLimiter::new("threads", 100_000, Duration::from_secs(3_600), None)
            .unwrap()
            .with_thread_batch(64);
        let started = std::time::Instant::now();
        let admitted: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let limiter = limiter.clone();
                    scope.spawn(move || {
                        let mut admitted = 0u64;
                        let mut refused_in_a_row = 0;
                        // Refused twice in a row: every bank is empty (a refusal checks them all).
                        while refused_in_a_row < 2 {
                            match limiter.decide(&(), NonZeroU32::MIN) {
                                Decide::Now(Decision::Allowed) => {
                                    admitted += 1;
                                    refused_in_a_row = 0;
                                }
                                _ => refused_in_a_row += 1,
                            }
                        }
                        admitted
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let refilled = started.elapsed().as_millis() as u64 / 36 + 1;
        assert!(admitted >= 100_000, "no cell lost in a bank: {admitted}");
        assert!(
            admitted <= 100_000 + refilled,
            "{admitted} admitted, at most {refilled} refilled"
        );
    }
}
