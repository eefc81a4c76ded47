//! Retry budgets: when DeepSeek is down, retries must not multiply the load.
//!
//! A budget is shared by every clone of a [`RetryLayer`](super::RetryLayer) and its services
//! (it lives behind an `Arc`), so it limits retries across all calls, not per call. Three are
//! provided; [`RetryBudget`] lets you write another.
//!
//! | budget | rule | reference |
//! |---|---|---|
//! | [`TpsBudget`] (default: 10 s, 10 retries/s, 20 %) | every call deposits, every retry withdraws; retries ≤ `percent` of calls over `ttl`, plus a floor of `min_per_sec` | Finagle `RetryBudget`, tower `TpsBudget` |
//! | [`GrpcThrottle`] | a token bucket: a retryable failure −1, a success +`token_ratio`; retries only while tokens > `max_tokens / 2` | gRPC A6 retry throttling |
//! | [`AdaptiveThrottle`] | refuse a retry with probability `max(0, (requests − k·accepts) / (requests + 1))` over the last 2 minutes | Google SRE book, ch. 21 |

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use super::backoff::{FastRandom, RandomSource};
use crate::classify::Outcome;
use crate::clock::Stamp;
use crate::error::{Error, ErrorKind};

/// Decides whether a retry may go out, from what it has seen of calls and outcomes. Called
/// synchronously on the request path: keep it to a few atomics.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use tower_deepseek::retry::RetryBudget;
///
/// /// At most 100 retries in the life of the process.
/// struct Hundred(AtomicU32);
///
/// impl RetryBudget for Hundred {
///     fn try_retry(&self) -> bool {
///         self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
///     }
/// }
///
/// let budget = Hundred(AtomicU32::new(1));
/// assert!(budget.try_retry());
/// assert!(!budget.try_retry());
/// ```
pub trait RetryBudget: Send + Sync + 'static {
    /// A call's first attempt is about to be sent.
    fn on_call(&self) {}

    /// An attempt (the first or a retry) ended with `outcome`.
    fn on_outcome(&self, outcome: &Outcome) {
        let _ = outcome;
    }

    /// A retry wants to go out: `true` lets it (and takes its cost from the budget).
    fn try_retry(&self) -> bool;
}

/// Counters in time slots, lock-free: each slot packs its epoch (high 32 bits) and a signed
/// count (low 32 bits) into one atomic, so a slot that is reused for a new epoch is reset and
/// counted in one compare-and-swap. Time is read from the measuring clock: every call deposits,
/// so the OS clock's cost would be paid per call. The epoch is a multiplication by the slot
/// length's reciprocal and the ring has a power-of-two length, so a deposit divides nothing.
struct Slots {
    start: Stamp,
    /// `2^64 / slot length in nanoseconds`, rounded up: `nanos · per_nano >> 64` is the epoch.
    /// Rounding up moves a slot boundary early by under `nanos · slot / 2^64` (about 2 ms
    /// after a year of 1 s slots), and keeps epochs in step with time.
    per_nano: u64,
    /// Slots that count: the window.
    live: u32,
    /// At least `live`, a power of two; slots older than the window are skipped by `sum` and
    /// reset when their turn comes again.
    slots: Box<[AtomicU64]>,
}

impl Slots {
    fn new(window: Duration, count: usize) -> Slots {
        let slot_nanos = (window.as_nanos() / count as u128).max(1);
        let per_nano = (1u128 << 64).div_ceil(slot_nanos);
        Slots {
            start: Stamp::now(),
            per_nano: u64::try_from(per_nano).unwrap_or(u64::MAX),
            live: u32::try_from(count).unwrap_or(u32::MAX),
            slots: (0..count.next_power_of_two())
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    #[inline]
    fn epoch(&self) -> u32 {
        // Wraps after 2^32 slots (13 years of 100 ms slots): only the low bits are compared,
        // and the ring's length divides 2^32. u64 nanoseconds last 584 years.
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        ((u128::from(nanos) * u128::from(self.per_nano)) >> 64) as u32
    }

    #[inline]
    fn add(&self, delta: i32) {
        let epoch = self.epoch();
        let slot = &self.slots[epoch as usize & (self.slots.len() - 1)];
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
            let (seen, count) = unpack(packed);
            let count = if seen == epoch {
                count.saturating_add(delta)
            } else {
                delta
            };
            Some(pack(epoch, count))
        });
    }

    fn sum(&self) -> i64 {
        let epoch = self.epoch();
        self.slots
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Acquire)))
            .filter(|(seen, _)| epoch.wrapping_sub(*seen) < self.live)
            .map(|(_, count)| i64::from(count))
            .sum()
    }
}

fn pack(epoch: u32, count: i32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(count as u32)
}

fn unpack(packed: u64) -> (u32, i32) {
    ((packed >> 32) as u32, packed as u32 as i32)
}

/// Finagle's retry budget (tower's `TpsBudget`): every call deposits, every retry withdraws,
/// and a retry is allowed only if the withdrawal succeeds. Deposits expire after `ttl` (ten
/// slots of `ttl / 10`); `min_per_sec · ttl` retries are a floor that never expires.
///
/// Unlike tower, amounts use Finagle's scale factor of 1000: a deposit is 1000 and a
/// withdrawal `⌊1000 / percent⌋`, so 30 % allows 30 % (tower truncates `1 / 0.3` to 3 and
/// allows 33 %). Clones share one budget. Two retries racing for the last tokens may both
/// pass (the check and the withdrawal are two atomic steps), as in tower.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::retry::{RetryBudget, TpsBudget};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// // No floor, 50 %: two calls pay for one retry.
/// let budget = TpsBudget::new(Duration::from_secs(10), 0, 0.5)?;
/// budget.on_call();
/// assert!(!budget.try_retry());
/// budget.on_call();
/// assert!(budget.try_retry());
/// # Ok(())
/// # })
/// # }
/// ```
#[derive(Clone)]
pub struct TpsBudget {
    inner: Arc<TpsInner>,
}

struct TpsInner {
    slots: Slots,
    deposit: i32,
    withdraw: i32,
    reserve: i64,
    ttl: Duration,
    min_per_sec: u32,
    percent: f64,
}

impl fmt::Debug for TpsBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpsBudget")
            .field("ttl", &self.inner.ttl)
            .field("min_per_sec", &self.inner.min_per_sec)
            .field("percent", &self.inner.percent)
            .field("balance", &self.balance())
            .finish()
    }
}

impl TpsBudget {
    /// A budget allowing retries of `percent` of calls over `ttl` (1 s to 60 s, in whole
    /// seconds for the floor), plus `min_per_sec` retries per second. `percent` is a ratio:
    /// 0.2 is 20 %, and up to 1000 is allowed.
    pub fn new(ttl: Duration, min_per_sec: u32, percent: f64) -> Result<TpsBudget, Error> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("retry budget ttl {ttl:?} must be between 1 s and 60 s"),
            ));
        }
        if !percent.is_finite() || !(0.0..=1000.0).contains(&percent) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("retry budget percent {percent} must be between 0 and 1000"),
            ));
        }
        let (deposit, withdraw) = if percent == 0.0 {
            (0, 1)
        } else {
            (
                1000,
                (1000.0 / percent).clamp(1.0, f64::from(i32::MAX)) as i32,
            )
        };
        let reserve = i64::from(min_per_sec) * ttl.as_secs() as i64 * i64::from(withdraw);
        Ok(TpsBudget {
            inner: Arc::new(TpsInner {
                slots: Slots::new(ttl, 10),
                deposit,
                withdraw,
                reserve,
                ttl,
                min_per_sec,
                percent,
            }),
        })
    }

    /// How many retries the budget would allow now.
    pub fn balance(&self) -> i64 {
        let inner = &self.inner;
        (inner.slots.sum() + inner.reserve) / i64::from(inner.withdraw)
    }

    /// What one retry costs, in deposits of 1000 (tower's truncation check: 0.3 ⇒ 3333).
    pub fn withdraw_cost(&self) -> i32 {
        self.inner.withdraw
    }
}

impl Default for TpsBudget {
    /// Finagle's and tower's default: ttl 10 s, 10 retries per second, 20 %.
    fn default() -> Self {
        let inner = TpsInner {
            slots: Slots::new(Duration::from_secs(10), 10),
            deposit: 1000,
            withdraw: 5000,
            reserve: 10 * 10 * 5000,
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            percent: 0.2,
        };
        TpsBudget {
            inner: Arc::new(inner),
        }
    }
}

impl RetryBudget for TpsBudget {
    fn on_call(&self) {
        if self.inner.deposit != 0 {
            self.inner.slots.add(self.inner.deposit);
        }
    }

    fn try_retry(&self) -> bool {
        let inner = &self.inner;
        if inner.slots.sum() + inner.reserve >= i64::from(inner.withdraw) {
            inner.slots.add(-inner.withdraw);
            true
        } else {
            false
        }
    }
}

/// gRPC's retry throttling (A6): a bucket of `max_tokens` tokens, full at the start; each
/// attempt that fails with a retryable outcome takes one, each success adds `token_ratio`
/// (kept to three decimals); retries go out only while more than half the tokens remain.
/// Non-retryable failures (400, 401, 402) change nothing. Clones share one bucket.
///
/// ```
/// use tower_deepseek::classify::Outcome;
/// use tower_deepseek::retry::{GrpcThrottle, RetryBudget};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let throttle = GrpcThrottle::new(10, 0.1)?;
/// let failure = Outcome::Server(http::StatusCode::SERVICE_UNAVAILABLE);
/// for _ in 0..5 {
///     throttle.on_outcome(&failure);
/// }
/// assert_eq!(throttle.tokens(), 5.0);
/// assert!(!throttle.try_retry());
/// throttle.on_outcome(&Outcome::Success);
/// assert!(throttle.try_retry());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GrpcThrottle {
    inner: Arc<GrpcInner>,
}

struct GrpcInner {
    /// Thousandths of a token.
    milli_tokens: AtomicI64,
    max_milli: i64,
    ratio_milli: i64,
}

impl fmt::Debug for GrpcThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcThrottle")
            .field("tokens", &self.tokens())
            .field("max_tokens", &(self.inner.max_milli / 1000))
            .finish_non_exhaustive()
    }
}

impl GrpcThrottle {
    /// A throttle with `max_tokens` (1 to 1000) and `token_ratio` (> 0; gRPC's example is
    /// 10 and 0.1).
    pub fn new(max_tokens: u32, token_ratio: f64) -> Result<GrpcThrottle, Error> {
        if !(1..=1000).contains(&max_tokens) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("retry throttling max_tokens {max_tokens} must be within 1..=1000"),
            ));
        }
        if !token_ratio.is_finite() || token_ratio <= 0.0 {
            return Err(Error::new(
                ErrorKind::Config,
                format!("retry throttling token_ratio {token_ratio} must be above 0"),
            ));
        }
        let max_milli = i64::from(max_tokens) * 1000;
        Ok(GrpcThrottle {
            inner: Arc::new(GrpcInner {
                milli_tokens: AtomicI64::new(max_milli),
                max_milli,
                ratio_milli: ((token_ratio * 1000.0).round() as i64).clamp(1, max_milli),
            }),
        })
    }

    /// The tokens left.
    pub fn tokens(&self) -> f64 {
        self.inner.milli_tokens.load(Ordering::Acquire) as f64 / 1000.0
    }
}

impl RetryBudget for GrpcThrottle {
    fn on_outcome(&self, outcome: &Outcome) {
        let inner = &self.inner;
        let delta = if outcome.is_success() {
            inner.ratio_milli
        } else if outcome.is_retryable() {
            -1000
        } else {
            return;
        };
        let _ = inner
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tokens| {
                Some((tokens + delta).clamp(0, inner.max_milli))
            });
    }

    fn try_retry(&self) -> bool {
        self.inner.milli_tokens.load(Ordering::Acquire) * 2 > self.inner.max_milli
    }
}

/// Client-side adaptive throttling from the Google SRE book (ch. 21), used as a retry gate:
/// over the last 2 minutes it counts attempts (`requests`) and attempts the backend accepted
/// (`accepts`: any outcome but a retryable failure or a local rejection), and refuses a retry
/// with probability `max(0, (requests − k · accepts) / (requests + 1))`. A refused retry
/// counts as a request. First attempts always go out. Clones share the counts.
///
/// ```
/// use tower_deepseek::classify::Outcome;
/// use tower_deepseek::retry::{AdaptiveThrottle, RetryBudget};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let throttle = AdaptiveThrottle::new(2.0)?;
/// for _ in 0..100 {
///     throttle.on_outcome(&Outcome::Server(http::StatusCode::SERVICE_UNAVAILABLE));
/// }
/// assert!((throttle.reject_probability() - 100.0 / 101.0).abs() < 1e-9);
/// # Ok(())
/// # })
/// # }
/// ```
#[derive(Clone)]
pub struct AdaptiveThrottle {
    inner: Arc<AdaptiveInner>,
}

struct AdaptiveInner {
    requests: Slots,
    accepts: Slots,
    k: f64,
    random: Arc<dyn RandomSource>,
}

impl fmt::Debug for AdaptiveThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveThrottle")
            .field("k", &self.inner.k)
            .field("reject_probability", &self.reject_probability())
            .finish_non_exhaustive()
    }
}

impl AdaptiveThrottle {
    /// A throttle with multiplier `k` (≥ 1; 2 is typical, lower is more aggressive) over a
    /// 2-minute window of twelve 10-second slots.
    pub fn new(k: f64) -> Result<AdaptiveThrottle, Error> {
        AdaptiveThrottle::with_random(k, FastRandom)
    }

    /// The same with an injected random source (for exact tests).
    pub fn with_random(k: f64, random: impl RandomSource) -> Result<AdaptiveThrottle, Error> {
        if !k.is_finite() || k < 1.0 {
            return Err(Error::new(
                ErrorKind::Config,
                format!("adaptive throttling k {k} must be a finite number >= 1"),
            ));
        }
        let window = Duration::from_secs(120);
        Ok(AdaptiveThrottle {
            inner: Arc::new(AdaptiveInner {
                requests: Slots::new(window, 12),
                accepts: Slots::new(window, 12),
                k,
                random: Arc::new(random),
            }),
        })
    }

    /// The probability that a retry is refused now.
    pub fn reject_probability(&self) -> f64 {
        let requests = self.inner.requests.sum().max(0) as f64;
        let accepts = self.inner.accepts.sum().max(0) as f64;
        ((requests - self.inner.k * accepts) / (requests + 1.0)).max(0.0)
    }
}

impl RetryBudget for AdaptiveThrottle {
    fn on_outcome(&self, outcome: &Outcome) {
        self.inner.requests.add(1);
        if !outcome.is_retryable() && !matches!(outcome, Outcome::Rejected) {
            self.inner.accepts.add(1);
        }
    }

    fn try_retry(&self) -> bool {
        let p = self.reject_probability();
        if p > 0.0 && self.inner.random.next_f64() < p {
            self.inner.requests.add(1);
            false
        } else {
            true
        }
    }
}
