//! Back-off: how long to wait before each retry.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// A source of uniform random numbers in `[0, 1)`, injectable so that tests are exact.
/// Closures `Fn() -> f64` implement it; [`FastRandom`] is the default.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::retry::{Backoff, RandomSource};
///
/// let always_half = || 0.5;
/// let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(10));
/// // Full jitter: half of 100 ms * 2^(3-1).
/// assert_eq!(
///     backoff.delay(3, Duration::ZERO, always_half.next_f64()),
///     Some(Duration::from_millis(200)),
/// );
/// ```
pub trait RandomSource: Send + Sync + 'static {
    /// A number in `[0, 1)`.
    fn next_f64(&self) -> f64;
}

impl<F> RandomSource for F
where
    F: Fn() -> f64 + Send + Sync + 'static,
{
    fn next_f64(&self) -> f64 {
        self()
    }
}

/// The default [`RandomSource`]: `fastrand`'s thread-local generator.
///
/// ```
/// use tower_deepseek::retry::{FastRandom, RandomSource};
/// let x = FastRandom.next_f64();
/// assert!((0.0..1.0).contains(&x));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct FastRandom;

impl RandomSource for FastRandom {
    fn next_f64(&self) -> f64 {
        fastrand::f64()
    }
}

/// How the exponential value `expo(n) = min(cap, base · factor^(n−1))` of retry `n` becomes
/// the wait (the names of the AWS Architecture Blog's "Exponential Backoff And Jitter").
/// `r` is the random number in `[0, 1)`.
///
/// ```
/// use tower_deepseek::retry::Jitter;
/// assert_ne!(Jitter::Full, Jitter::Equal);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Jitter {
    /// `expo(n)`: no randomness (resilience4j's and tower's plain exponential back-off).
    None,
    /// `r · expo(n)`, in `[0, expo(n))`: the default (AWS, Envoy); the least total work.
    Full,
    /// `expo(n)/2 + r · expo(n)/2`, in `[expo(n)/2, expo(n))`.
    Equal,
    /// `min(cap, base + r · (3 · previous − base))`, in `[base, min(cap, 3 · previous)]`,
    /// where `previous` is the last wait (`base` before the first retry); `factor` is unused.
    Decorrelated,
    /// `expo(n) · (1 − j + 2j · r)`, in `[(1−j)·expo(n), (1+j)·expo(n))`: gRPC's ±20 %
    /// (`j = 0.2`) and resilience4j's `ofRandomized` / `ofExponentialRandomBackoff`. May exceed
    /// `cap` by the factor `1 + j`, as in gRPC.
    Proportional(f64),
}

/// A back-off schedule: base, factor, cap and [`Jitter`]. Retries are numbered from 1 (the
/// first retry, after the first call failed).
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::retry::{Backoff, Jitter};
///
/// // resilience4j's ofExponentialBackoff(100, 2, 100_000).
/// let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(100))
///     .jitter(Jitter::None);
/// assert_eq!(backoff.delay(1, Duration::ZERO, 0.0), Some(Duration::from_millis(100)));
/// assert_eq!(backoff.delay(10, Duration::ZERO, 0.0), Some(Duration::from_millis(51_200)));
/// assert_eq!(backoff.delay(11, Duration::ZERO, 0.0), Some(Duration::from_secs(100)));
/// assert_eq!(backoff.delay(0, Duration::ZERO, 0.0), None); // not a retry
/// ```
#[derive(Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    cap: Duration,
    jitter: Jitter,
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("base", &self.base)
            .field("factor", &self.factor)
            .field("cap", &self.cap)
            .field("jitter", &self.jitter)
            .finish()
    }
}

impl Default for Backoff {
    /// Full-jitter exponential: base 500 ms, factor 2, cap 30 s.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(500), 2.0, Duration::from_secs(30))
    }
}

impl Backoff {
    /// Exponential `base · factor^(n−1)` capped at `cap`, with [`Jitter::Full`].
    pub fn exponential(base: Duration, factor: f64, cap: Duration) -> Backoff {
        Backoff {
            base,
            factor,
            cap,
            jitter: Jitter::Full,
        }
    }

    /// The same wait before every retry (resilience4j's default, 500 ms there).
    pub fn constant(interval: Duration) -> Backoff {
        Backoff {
            base: interval,
            factor: 1.0,
            cap: interval,
            jitter: Jitter::None,
        }
    }

    /// Decorrelated jitter between `base` and `cap` (see [`Jitter::Decorrelated`]).
    pub fn decorrelated(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            factor: 3.0,
            cap,
            jitter: Jitter::Decorrelated,
        }
    }

    /// gRPC's retry back-off (A6): `min(initial · multiplier^(n−1), max) · random(0.8, 1.2)`.
    pub fn grpc(initial: Duration, multiplier: f64, max: Duration) -> Backoff {
        Backoff {
            base: initial,
            factor: multiplier,
            cap: max,
            jitter: Jitter::Proportional(0.2),
        }
    }

    /// Envoy's default: full jitter, base 25 ms, factor 2, cap 250 ms (10 × base).
    pub fn envoy() -> Backoff {
        Backoff::exponential(Duration::from_millis(25), 2.0, Duration::from_millis(250))
    }

    /// The same schedule with another [`Jitter`].
    pub fn jitter(mut self, jitter: Jitter) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// The un-jittered value of retry `n`: `min(cap, base · factor^(n−1))`; `None` for `n = 0`.
    pub fn expo(&self, retry: u32) -> Option<Duration> {
        let exponent = i32::try_from(retry.checked_sub(1)?).unwrap_or(i32::MAX);
        let nanos = self.base.as_nanos() as f64 * self.factor.powi(exponent);
        let cap = self.cap.as_nanos() as f64;
        Some(if nanos.is_finite() && nanos < cap {
            from_nanos(nanos)
        } else {
            self.cap
        })
    }

    /// The wait before retry `retry` (from 1), given the previous wait (for decorrelated
    /// jitter; ignored otherwise) and a random number `random` in `[0, 1)`. `None` for
    /// `retry = 0`, which is not a retry.
    pub fn delay(&self, retry: u32, previous: Duration, random: f64) -> Option<Duration> {
        let expo = self.expo(retry)?;
        let r = random.clamp(0.0, 1.0);
        let e = expo.as_nanos() as f64;
        Some(match self.jitter {
            Jitter::None => expo,
            Jitter::Full => from_nanos(e * r),
            Jitter::Equal => from_nanos(e / 2.0 + e / 2.0 * r),
            Jitter::Decorrelated => {
                let base = self.base.as_nanos() as f64;
                let previous = if previous.is_zero() {
                    base
                } else {
                    previous.as_nanos() as f64
                };
                let high = (previous * 3.0).max(base);
                from_nanos(base + (high - base) * r).min(self.cap)
            }
            Jitter::Proportional(j) => from_nanos(e * (1.0 - j + 2.0 * j * r)),
        })
    }

    /// Checks the schedule: `factor >= 1` and finite, `cap >= base`, a proportional jitter in
    /// `[0, 1]`.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let wrong = |message: String| Err(Error::new(ErrorKind::Config, message));
        if !self.factor.is_finite() || self.factor < 1.0 {
            return wrong(format!(
                "back-off factor {} must be a finite number >= 1",
                self.factor
            ));
        }
        if self.cap < self.base {
            return wrong(format!(
                "back-off cap {:?} is below its base {:?}",
                self.cap, self.base
            ));
        }
        if let Jitter::Proportional(j) = self.jitter
            && !(0.0..=1.0).contains(&j)
        {
            return wrong(format!("proportional jitter {j} must be within [0, 1]"));
        }
        Ok(())
    }
}

fn from_nanos(nanos: f64) -> Duration {
    if nanos.is_finite() && nanos > 0.0 {
        Duration::from_nanos(nanos.round().min(u64::MAX as f64) as u64)
    } else {
        Duration::ZERO
    }
}
