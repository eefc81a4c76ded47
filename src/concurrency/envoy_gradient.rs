//! Envoy's adaptive concurrency gradient controller, driven by the samples' clock.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::limit::{LimitAlgorithm, Sample, check_bounds, config, in_unit_interval};
use crate::error::Error;

/// Envoy's adaptive concurrency gradient controller (reference §5.2).
///
/// It starts in a minRTT window: the limit is pinned to `min_concurrency` and the next
/// `min_rtt_request_count` samples (from calls started inside the window) give
/// `min_rtt = percentile(samples)`. Then, every `update_interval`:
/// `gradient = clamp(min_rtt × (1 + buffer) / percentile(samples), 0.5, 2)`,
/// `limit = floor(limit × gradient + sqrt(limit × gradient))`, clamped to
/// `[min_concurrency, max_limit]`. After 5 consecutive updates at `min_concurrency`, or every
/// `min_rtt_interval` (+ jitter), a new minRTT window starts.
///
/// Envoy runs timers; this controller has none. Time is read from the samples: an update
/// happens on the first sample completing after the interval (so an idle upstream is not
/// recomputed, which is moot as no call would see the limit).
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::concurrency::{EnvoyGradient, LimitAlgorithm};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let envoy = EnvoyGradient::builder()
///     .update_interval(Duration::from_millis(100))
///     .build()?;
/// assert_eq!(envoy.limit(), 3); // starts by measuring the minimum latency
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EnvoyGradient {
    limit: usize,
    saved_limit: usize,
    max: usize,
    min_concurrency: usize,
    percentile: f64,
    buffer: f64,
    update_interval: Duration,
    min_rtt_interval: Duration,
    min_rtt_request_count: usize,
    jitter: f64,
    min_rtt: Option<Duration>,
    // The minRTT window in progress: when it started.
    min_rtt_window: Option<Instant>,
    next_min_rtt: Option<Instant>,
    next_update: Option<Instant>,
    consecutive_min: u32,
    samples: Vec<Duration>,
    max_samples: usize,
    seen: u64,
    rng: fastrand::Rng,
}

impl fmt::Debug for EnvoyGradient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvoyGradient")
            .field("limit", &self.limit)
            .field("min_rtt", &self.min_rtt)
            .field("measuring_min_rtt", &self.min_rtt_window.is_some())
            .finish_non_exhaustive()
    }
}

/// Consecutive updates at `min_concurrency` that force a new minRTT window (Envoy's constant).
const CONSECUTIVE_MIN_FOR_RECALCULATION: u32 = 5;

impl EnvoyGradient {
    /// A builder with Envoy's defaults: p50, max 1000, minRTT every 60 s over 50 requests with
    /// 15 % jitter, min concurrency 3, buffer 25 %, update every 100 ms (Envoy requires one;
    /// 100 ms is its documentation's example).
    pub fn builder() -> EnvoyGradientBuilder {
        EnvoyGradientBuilder {
            initial_limit: 3,
            max: 1000,
            min_concurrency: 3,
            percentile: 50.0,
            buffer: 25.0,
            update_interval: Duration::from_millis(100),
            min_rtt_interval: Duration::from_secs(60),
            fixed_min_rtt: None,
            min_rtt_request_count: 50,
            jitter: 15.0,
            max_samples: 4096,
            seed: None,
        }
    }

    /// The measured (or fixed) minimum latency, once known.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Whether a minRTT window is in progress (the limit is pinned to `min_concurrency`).
    pub fn measuring_min_rtt(&self) -> bool {
        self.min_rtt_window.is_some()
    }

    fn start_min_rtt_window(&mut self, now: Instant) {
        if self.min_rtt_window.is_none() {
            self.saved_limit = self.limit;
        }
        self.min_rtt_window = Some(now);
        self.limit = self.min_concurrency;
        self.samples.clear();
        self.seen = 0;
        self.consecutive_min = 0;
    }

    fn record(&mut self, rtt: Duration) {
        // Bounded memory: past `max_samples` keep a uniform reservoir of them.
        self.seen += 1;
        if self.samples.len() < self.max_samples {
            self.samples.push(rtt);
        } else {
            let slot = self.rng.u64(..self.seen) as usize;
            if let Some(kept) = self.samples.get_mut(slot) {
                *kept = rtt;
            }
        }
    }

    fn percentile_of_samples(&mut self) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        self.samples.sort_unstable();
        let rank = (self.percentile / 100.0 * (self.samples.len() - 1) as f64).round() as usize;
        let value = self.samples[rank.min(self.samples.len() - 1)];
        self.samples.clear();
        self.seen = 0;
        Some(value)
    }

    fn schedule_min_rtt(&mut self, now: Instant) {
        if self.min_rtt_interval.is_zero() {
            self.next_min_rtt = None;
            return;
        }
        let jitter_max = (self.min_rtt_interval.as_secs_f64() * self.jitter / 100.0).ceil();
        let jitter = if jitter_max >= 1.0 {
            Duration::from_secs(self.rng.u64(..jitter_max as u64))
        } else {
            Duration::ZERO
        };
        self.next_min_rtt = Some(now + self.min_rtt_interval + jitter);
    }

    /// The new limit for a sampled latency (`sample_rtt`), from the current limit and minRTT.
    fn gradient_limit(&self, min_rtt: Duration, sample_rtt: Duration) -> usize {
        let buffered = min_rtt.as_secs_f64() * (1.0 + self.buffer / 100.0);
        let sample = sample_rtt.as_secs_f64();
        let gradient = if sample > 0.0 {
            (buffered / sample).clamp(0.5, 2.0)
        } else {
            2.0
        };
        let limit = self.limit as f64 * gradient;
        let new = (limit + limit.sqrt()) as usize;
        new.clamp(self.min_concurrency, self.max)
    }
}

impl LimitAlgorithm for EnvoyGradient {
    fn limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let now = sample.completed();
        if let Some(window) = self.min_rtt_window {
            if sample.started < window {
                // Started before the window: its latency reflects the old limit.
                return self.limit;
            }
            self.record(sample.rtt);
            if self.samples.len() >= self.min_rtt_request_count {
                self.min_rtt = self.percentile_of_samples();
                self.min_rtt_window = None;
                self.limit = self.saved_limit;
                self.next_update = Some(now + self.update_interval);
                self.schedule_min_rtt(now);
            }
            return self.limit;
        }
        if self.next_min_rtt.is_some_and(|at| now >= at) {
            self.start_min_rtt_window(now);
            return self.limit;
        }
        self.record(sample.rtt);
        let due = self.next_update.is_none_or(|at| now >= at);
        if !due {
            return self.limit;
        }
        self.next_update = Some(now + self.update_interval);
        let (Some(min_rtt), Some(sample_rtt)) = (self.min_rtt, self.percentile_of_samples()) else {
            return self.limit;
        };
        self.limit = self.gradient_limit(min_rtt, sample_rtt);
        if self.limit == self.min_concurrency {
            self.consecutive_min += 1;
            // With a fixed minRTT (zero interval) there is nothing to remeasure.
            if self.consecutive_min >= CONSECUTIVE_MIN_FOR_RECALCULATION
                && !self.min_rtt_interval.is_zero()
            {
                self.start_min_rtt_window(now);
            }
        } else {
            self.consecutive_min = 0;
        }
        self.limit
    }
}

/// Builds an [`EnvoyGradient`].
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::concurrency::EnvoyGradient;
/// // A zero minRTT interval disables measuring: a fixed minRTT is then required.
/// assert!(EnvoyGradient::builder().min_rtt_interval(Duration::ZERO).build().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct EnvoyGradientBuilder {
    initial_limit: usize,
    max: usize,
    min_concurrency: usize,
    percentile: f64,
    buffer: f64,
    update_interval: Duration,
    min_rtt_interval: Duration,
    fixed_min_rtt: Option<Duration>,
    min_rtt_request_count: usize,
    jitter: f64,
    max_samples: usize,
    seed: Option<u64>,
}

impl EnvoyGradientBuilder {
    /// The limit restored after the first minRTT window (default `min_concurrency`, 3).
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.initial_limit = limit;
        self
    }

    /// The ceiling (`max_concurrency_limit`, default 1000).
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.max = limit;
        self
    }

    /// The floor, and the limit during a minRTT window (default 3).
    pub fn min_concurrency(mut self, limit: usize) -> Self {
        self.min_concurrency = limit;
        self
    }

    /// The latency percentile that summarizes a window, in `(0, 100]` (default 50).
    pub fn percentile(mut self, percentile: f64) -> Self {
        self.percentile = percentile;
        self
    }

    /// Headroom over minRTT, in percent (default 25).
    pub fn buffer(mut self, percent: f64) -> Self {
        self.buffer = percent;
        self
    }

    /// Time between two limit updates (`concurrency_update_interval`, default 100 ms).
    pub fn update_interval(mut self, interval: Duration) -> Self {
        self.update_interval = interval;
        self
    }

    /// Time between two minRTT windows (default 60 s); zero disables measuring, and
    /// [`fixed_min_rtt`](Self::fixed_min_rtt) is then required.
    pub fn min_rtt_interval(mut self, interval: Duration) -> Self {
        self.min_rtt_interval = interval;
        self
    }

    /// Uses this minRTT instead of measuring it (Envoy's `fixed_value`); implies no minRTT
    /// windows.
    pub fn fixed_min_rtt(mut self, min_rtt: Duration) -> Self {
        self.fixed_min_rtt = Some(min_rtt);
        self.min_rtt_interval = Duration::ZERO;
        self
    }

    /// Samples in a minRTT window (default 50).
    pub fn min_rtt_request_count(mut self, count: usize) -> Self {
        self.min_rtt_request_count = count;
        self
    }

    /// Random extra delay before the next minRTT window, in percent of the interval
    /// (default 15).
    pub fn jitter(mut self, percent: f64) -> Self {
        self.jitter = percent;
        self
    }

    /// Seeds the jitter, for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates and builds. The controller starts in a minRTT window (unless the minRTT is
    /// fixed).
    pub fn build(self) -> Result<EnvoyGradient, Error> {
        check_bounds(
            "envoy_gradient",
            self.initial_limit,
            self.min_concurrency,
            self.max,
        )?;
        if !in_unit_interval(self.percentile / 100.0) {
            return Err(config(format!(
                "envoy_gradient: percentile {} must be in (0, 100]",
                self.percentile
            )));
        }
        if self.buffer.is_nan() || self.buffer < 0.0 || !(0.0..=100.0).contains(&self.jitter) {
            return Err(config(format!(
                "envoy_gradient: buffer {} must be at least 0 and jitter {} in [0, 100]",
                self.buffer, self.jitter
            )));
        }
        if self.update_interval.is_zero() {
            return Err(config(
                "envoy_gradient: update_interval must be above zero".to_owned(),
            ));
        }
        if self.min_rtt_interval.is_zero() && self.fixed_min_rtt.is_none() {
            return Err(config(
                "envoy_gradient: a zero min_rtt_interval needs a fixed_min_rtt".to_owned(),
            ));
        }
        if self.min_rtt_request_count == 0 || self.max_samples == 0 {
            return Err(config(
                "envoy_gradient: min_rtt_request_count must be at least 1".to_owned(),
            ));
        }
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let measuring = self.fixed_min_rtt.is_none();
        Ok(EnvoyGradient {
            limit: if measuring {
                self.min_concurrency
            } else {
                self.initial_limit
            },
            saved_limit: self.initial_limit,
            max: self.max,
            min_concurrency: self.min_concurrency,
            percentile: self.percentile,
            buffer: self.buffer,
            update_interval: self.update_interval,
            min_rtt_interval: self.min_rtt_interval,
            min_rtt_request_count: self.min_rtt_request_count,
            jitter: self.jitter,
            min_rtt: self.fixed_min_rtt,
            min_rtt_window: None,
            next_min_rtt: None,
            next_update: None,
            consecutive_min: 0,
            samples: Vec::new(),
            max_samples: self.max_samples.max(self.min_rtt_request_count),
            seen: 0,
            rng,
        }
        .starting(measuring))
    }
}

impl EnvoyGradient {
    fn starting(mut self, measuring: bool) -> EnvoyGradient {
        if measuring {
            // Open the first window at construction: every call the layer sees starts
            // after this instant.
            let now = Instant::now();
            self.min_rtt_window = Some(now);
        }
        self
    }
}
