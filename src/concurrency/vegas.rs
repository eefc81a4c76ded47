//! TCP Vegas for calls (Netflix `VegasLimit`).

use std::fmt;
use std::time::Duration;

use super::limit::{LimitAlgorithm, Sample, check_bounds, config, in_unit_interval, positive};
use crate::error::Error;

/// Netflix's `log10` for Vegas: `max(1, floor(log10(x)))`.
fn vegas_log10(limit: f64) -> f64 {
    if limit < 10.0 {
        1.0
    } else {
        limit.log10().floor().max(1.0)
    }
}

/// A Vegas threshold (alpha, beta) as a function of the limit.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VegasThreshold {
    /// A fixed number of queued calls.
    Fixed(f64),
    /// `factor × log10(limit)` (Netflix's default: 3 for alpha, 6 for beta).
    Log10(f64),
}

impl VegasThreshold {
    fn at(self, limit: f64) -> f64 {
        match self {
            VegasThreshold::Fixed(value) => value,
            VegasThreshold::Log10(factor) => factor * vegas_log10(limit),
        }
    }
}

/// TCP Vegas applied to calls (Netflix `VegasLimit`, reference §5.1).
///
/// Tracks the lowest latency seen (`rtt_noload`), estimates the queue as
/// `ceil(limit × (1 − rtt_noload / rtt))`, grows the limit while the queue is short and
/// shrinks it when it is long or a call was dropped. Every ~`probe_multiplier × limit` samples
/// (jittered) it forgets `rtt_noload` to follow a slower upstream.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::concurrency::{LimitAlgorithm, Sample, Vegas, VegasThreshold};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let mut vegas = Vegas::builder()
///     .initial_limit(10)
///     .max_limit(20)
///     .alpha(VegasThreshold::Fixed(3.0))
///     .beta(VegasThreshold::Fixed(6.0))
///     .build()?;
/// let ms = Duration::from_millis;
/// assert_eq!(vegas.update(&Sample::new(ms(10), 10, false)), 10); // learns rtt_noload
/// assert_eq!(vegas.update(&Sample::new(ms(10), 11, false)), 16); // no queue: + beta
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Vegas {
    estimate: f64,
    max: usize,
    smoothing: f64,
    alpha: VegasThreshold,
    beta: VegasThreshold,
    threshold: VegasThreshold,
    increase: fn(f64) -> f64,
    decrease: fn(f64) -> f64,
    probe_multiplier: f64,
    probe_jitter: f64,
    probe_count: u64,
    rtt_noload: Duration,
    rng: fastrand::Rng,
}

impl fmt::Debug for Vegas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vegas")
            .field("estimate", &self.estimate)
            .field("max", &self.max)
            .field("smoothing", &self.smoothing)
            .field("rtt_noload", &self.rtt_noload)
            .finish_non_exhaustive()
    }
}

impl Default for Vegas {
    fn default() -> Vegas {
        Vegas::with_seed(20, fastrand::u64(..))
    }
}

impl Vegas {
    fn with_seed(initial: usize, seed: u64) -> Vegas {
        let mut rng = fastrand::Rng::with_seed(seed);
        let probe_jitter = 0.5 + rng.f64() * 0.5;
        Vegas {
            estimate: initial as f64,
            max: 1000,
            smoothing: 1.0,
            alpha: VegasThreshold::Log10(3.0),
            beta: VegasThreshold::Log10(6.0),
            threshold: VegasThreshold::Log10(1.0),
            increase: |limit| limit + vegas_log10(limit),
            decrease: |limit| limit - vegas_log10(limit),
            probe_multiplier: 30.0,
            probe_jitter,
            probe_count: 0,
            rtt_noload: Duration::ZERO,
            rng,
        }
    }

    /// A builder with Netflix's defaults.
    pub fn builder() -> VegasBuilder {
        VegasBuilder {
            inner: Vegas::default(),
        }
    }

    /// The unrounded limit estimate.
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// The lowest latency seen since the last probe (zero before the first sample).
    pub fn rtt_noload(&self) -> Duration {
        self.rtt_noload
    }
}

impl LimitAlgorithm for Vegas {
    fn limit(&self) -> usize {
        self.estimate as usize
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let rtt = sample.rtt;
        self.probe_count += 1;
        if self.probe_jitter * self.probe_multiplier * self.estimate <= self.probe_count as f64 {
            self.probe_jitter = 0.5 + self.rng.f64() * 0.5;
            self.probe_count = 0;
            self.rtt_noload = rtt;
            return self.limit();
        }
        if self.rtt_noload.is_zero() || rtt < self.rtt_noload {
            self.rtt_noload = rtt;
            return self.limit();
        }
        let limit = self.estimate;
        let noload = self.rtt_noload.as_secs_f64();
        let queue = (limit * (1.0 - noload / rtt.as_secs_f64())).ceil();
        let new = if sample.dropped {
            (self.decrease)(limit)
        } else if (sample.in_flight as f64) * 2.0 < limit {
            return self.limit();
        } else if queue <= self.threshold.at(limit) {
            limit + self.beta.at(limit)
        } else if queue < self.alpha.at(limit) {
            (self.increase)(limit)
        } else if queue > self.beta.at(limit) {
            (self.decrease)(limit)
        } else {
            return self.limit();
        };
        let new = new.clamp(1.0, self.max as f64);
        self.estimate = (1.0 - self.smoothing) * limit + self.smoothing * new;
        self.limit()
    }
}

/// Builds a [`Vegas`].
///
/// ```
/// use tower_deepseek::concurrency::Vegas;
/// assert!(Vegas::builder().smoothing(0.0).build().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct VegasBuilder {
    inner: Vegas,
}

impl VegasBuilder {
    /// The starting limit (default 20).
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.inner.estimate = limit as f64;
        self
    }

    /// The ceiling (`maxConcurrency`, default 1000).
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.inner.max = limit;
        self
    }

    /// The weight of a new estimate, in `(0, 1]` (default 1: no smoothing).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.inner.smoothing = smoothing;
        self
    }

    /// Below this queue size the limit grows by `increase` (default `3 × log10(limit)`).
    pub fn alpha(mut self, alpha: VegasThreshold) -> Self {
        self.inner.alpha = alpha;
        self
    }

    /// Above this queue size the limit shrinks; at or below `threshold` it grows by beta
    /// (default `6 × log10(limit)`).
    pub fn beta(mut self, beta: VegasThreshold) -> Self {
        self.inner.beta = beta;
        self
    }

    /// At or below this queue size the limit grows by beta (default `log10(limit)`).
    pub fn threshold(mut self, threshold: VegasThreshold) -> Self {
        self.inner.threshold = threshold;
        self
    }

    /// The increase function (default `limit + log10(limit)`).
    pub fn increase(mut self, increase: fn(f64) -> f64) -> Self {
        self.inner.increase = increase;
        self
    }

    /// The decrease function (default `limit − log10(limit)`).
    pub fn decrease(mut self, decrease: fn(f64) -> f64) -> Self {
        self.inner.decrease = decrease;
        self
    }

    /// Samples between two probes of `rtt_noload`, as a multiple of the limit (default 30).
    pub fn probe_multiplier(mut self, multiplier: f64) -> Self {
        self.inner.probe_multiplier = multiplier;
        self
    }

    /// Seeds the probe jitter, for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        let fresh = Vegas::with_seed(0, seed);
        self.inner.rng = fresh.rng;
        self.inner.probe_jitter = fresh.probe_jitter;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Vegas, Error> {
        let vegas = self.inner;
        check_bounds("vegas", vegas.estimate as usize, 1, vegas.max)?;
        if !in_unit_interval(vegas.smoothing) {
            return Err(config(format!(
                "vegas: smoothing {} must be in (0, 1]",
                vegas.smoothing
            )));
        }
        if !positive(vegas.probe_multiplier) {
            return Err(config(format!(
                "vegas: probe_multiplier {} must be above zero",
                vegas.probe_multiplier
            )));
        }
        Ok(vegas)
    }
}
