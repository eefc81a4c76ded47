//! The decision step: the pluggable backend trait and the two local (governor) backends.

use std::fmt;
use std::future::{Future, Ready};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// One global GCRA limit (governor's direct limiter over [`TokioClock`]). Clones share it.
///
/// ```
/// use tower_deepseek::rate_limit::DirectLimiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let limiter = DirectLimiter::per_second(10, Some(20))?;
/// assert_eq!(limiter.burst(), 20);
/// assert!(DirectLimiter::per_second(0, None).is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DirectLimiter {
    limiter: Arc<Direct>,
    burst: u32,
}

impl fmt::Debug for DirectLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectLimiter")
            .field("burst", &self.burst)
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
        DirectLimiter {
            burst: quota.burst_size().get(),
            limiter: Arc::new(RateLimiter::direct_with_clock(quota, TokioClock)),
        }
    }

    /// The burst size.
    pub fn burst(&self) -> u32 {
        self.burst
    }
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
        Decide::Now(decide_with(
            cost,
            || self.limiter.check(),
            || self.limiter.check_n(cost),
        ))
    }

    fn limit(&self) -> u64 {
        u64::from(self.burst)
    }

    fn charge(&self, _key: &(), cost: u32) -> u32 {
        charge_with(self.burst, cost, |n| {
            matches!(self.limiter.check_n(n), Ok(Ok(())))
        })
    }
}

type Keyed<K> = RateLimiter<K, DashMapStateStore<K>, TokioClock, NoOpMiddleware<TokioReference>>;

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
                limiter: RateLimiter::dashmap_with_clock(quota, TokioClock),
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
