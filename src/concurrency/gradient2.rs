//! Netflix `Gradient2Limit`: the limit follows the ratio of long-term to recent latency.

use super::limit::{LimitAlgorithm, Sample, check_bounds, config, in_unit_interval};
use crate::error::Error;

/// An exponential moving average that starts as a plain mean (Netflix `ExpAvgMeasurement`).
#[derive(Clone, Debug)]
struct ExpAverage {
    window: f64,
    warmup: u32,
    count: u32,
    sum: f64,
    value: f64,
}

impl ExpAverage {
    fn new(window: u32, warmup: u32) -> ExpAverage {
        ExpAverage {
            window: f64::from(window),
            warmup,
            count: 0,
            sum: 0.0,
            value: 0.0,
        }
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / f64::from(self.count);
        } else {
            let factor = 2.0 / (self.window + 1.0);
            self.value = self.value * (1.0 - factor) + sample * factor;
        }
        self.value
    }
}

/// Netflix `Gradient2Limit` (reference §5.1): compares the latest latency with a long-term
/// average and moves the limit by their ratio.
///
/// `gradient = clamp(tolerance × long / short, 0.5, 1)`, `new = limit × gradient + queue_size`,
/// smoothed by `smoothing`, clamped to `[min_limit, max_limit]`. No change while fewer than half
/// the limit are in flight (app-limited). When the long average is more than twice the latest
/// latency it decays ×0.95 (fast recovery after a load spike). Drops are ignored, as in
/// Netflix's code: latency alone drives it.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::concurrency::{Gradient2, LimitAlgorithm, Sample};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let mut gradient = Gradient2::builder().build()?;
/// gradient.update(&Sample::new(Duration::from_millis(100), 10, false));
/// assert!((gradient.estimate() - 20.8).abs() < 1e-9);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Gradient2 {
    estimate: f64,
    min: usize,
    max: usize,
    smoothing: f64,
    queue_size: f64,
    tolerance: f64,
    long_rtt: ExpAverage,
}

impl Default for Gradient2 {
    fn default() -> Gradient2 {
        Gradient2 {
            estimate: 20.0,
            min: 20,
            max: 200,
            smoothing: 0.2,
            queue_size: 4.0,
            tolerance: 1.5,
            long_rtt: ExpAverage::new(600, 10),
        }
    }
}

impl Gradient2 {
    /// A builder with Netflix's defaults.
    pub fn builder() -> Gradient2Builder {
        Gradient2Builder {
            inner: Gradient2::default(),
            long_window: 600,
        }
    }

    /// The unrounded limit estimate.
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// The long-term latency average, in seconds.
    pub fn long_rtt(&self) -> f64 {
        self.long_rtt.value
    }
}

impl LimitAlgorithm for Gradient2 {
    fn limit(&self) -> usize {
        self.estimate as usize
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let short = sample.rtt.as_secs_f64();
        if short <= 0.0 {
            // A zero latency says nothing about queueing (and would divide by zero).
            return self.limit();
        }
        let long = self.long_rtt.add(short);
        if long / short > 2.0 {
            self.long_rtt.value *= 0.95;
        }
        if (sample.in_flight as f64) < self.estimate / 2.0 {
            return self.limit();
        }
        let gradient = (self.tolerance * long / short).clamp(0.5, 1.0);
        let new = self.estimate * gradient + self.queue_size;
        let new = self.estimate * (1.0 - self.smoothing) + new * self.smoothing;
        self.estimate = new.clamp(self.min as f64, self.max as f64);
        self.limit()
    }
}

/// Builds a [`Gradient2`].
///
/// ```
/// use tower_deepseek::concurrency::Gradient2;
/// assert!(Gradient2::builder().rtt_tolerance(0.9).build().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct Gradient2Builder {
    inner: Gradient2,
    long_window: u32,
}

impl Gradient2Builder {
    /// The starting limit (default 20).
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.inner.estimate = limit as f64;
        self
    }

    /// The floor (default 20).
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.inner.min = limit;
        self
    }

    /// The ceiling (`maxConcurrency`, default 200).
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.inner.max = limit;
        self
    }

    /// The weight of a new estimate, in `(0, 1]` (default 0.2).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.inner.smoothing = smoothing;
        self
    }

    /// Headroom added to the limit on each update (default 4).
    pub fn queue_size(mut self, queue_size: usize) -> Self {
        self.inner.queue_size = queue_size as f64;
        self
    }

    /// How much slower than the long-term average a call may be before the limit shrinks,
    /// at least 1 (default 1.5).
    pub fn rtt_tolerance(mut self, tolerance: f64) -> Self {
        self.inner.tolerance = tolerance;
        self
    }

    /// Samples in the long-term average's window (default 600; the first 10 are a plain mean).
    pub fn long_window(mut self, samples: u32) -> Self {
        self.long_window = samples;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Gradient2, Error> {
        let mut gradient = self.inner;
        check_bounds(
            "gradient2",
            gradient.estimate as usize,
            gradient.min,
            gradient.max,
        )?;
        if !in_unit_interval(gradient.smoothing) {
            return Err(config(format!(
                "gradient2: smoothing {} must be in (0, 1]",
                gradient.smoothing
            )));
        }
        if gradient.tolerance.is_nan() || gradient.tolerance < 1.0 {
            return Err(config(format!(
                "gradient2: rtt_tolerance {} must be at least 1",
                gradient.tolerance
            )));
        }
        if self.long_window == 0 {
            return Err(config(
                "gradient2: long_window must be at least 1".to_owned(),
            ));
        }
        gradient.long_rtt = ExpAverage::new(self.long_window, 10);
        Ok(gradient)
    }
}
