//! Limit algorithms: pure state machines turning call samples into a concurrency limit.
//!
//! Each algorithm is a [`LimitAlgorithm`]: `update(sample) -> limit`, no clock, no I/O, so it is
//! unit-tested on plain numbers. [`AdaptiveConcurrencyLayer`](super::AdaptiveConcurrencyLayer)
//! feeds it one [`Sample`] per completed call and enforces the limit it returns.
//!
//! | algorithm | source | grows when | shrinks when |
//! |---|---|---|---|
//! | [`Aimd`] (default) | Netflix `AIMDLimit` | at least half the limit is in flight | a drop (timeout, 429, 503) or a slow call |
//! | [`Vegas`] | Netflix `VegasLimit` | the estimated queue is short | the queue is long, or a drop |
//! | [`Gradient2`] | Netflix `Gradient2Limit` | short-term latency holds near the long-term average | short-term latency rises above it |
//! | [`EnvoyGradient`] | Envoy's adaptive concurrency filter | the sampled latency is near the measured minimum | it rises above the minimum plus a buffer |

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, ErrorKind};

/// One completed call, as an algorithm sees it.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::concurrency::Sample;
///
/// let sample = Sample::new(Duration::from_millis(10), 4, false);
/// assert_eq!(sample.in_flight, 4);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// How long the call took (to its head or to its body's end, as the layer measures).
    pub rtt: Duration,
    /// Calls in flight when this one started, itself included.
    pub in_flight: usize,
    /// The call was dropped: a timeout, a 429 or a 503 (a sign of overload).
    pub dropped: bool,
    /// When the call started (used by [`EnvoyGradient`]'s time windows).
    pub started: Instant,
}

impl Sample {
    /// A sample of a call that started now.
    pub fn new(rtt: Duration, in_flight: usize, dropped: bool) -> Sample {
        Sample {
            rtt,
            in_flight,
            dropped,
            started: Instant::now(),
        }
    }

    /// The same sample, started at `started`.
    pub fn started_at(mut self, started: Instant) -> Sample {
        self.started = started;
        self
    }

    /// When the call completed: `started + rtt`.
    pub fn completed(&self) -> Instant {
        self.started + self.rtt
    }
}

/// Turns samples into a concurrency limit. Implement it to plug in your own algorithm.
///
/// ```
/// use tower_deepseek::concurrency::{LimitAlgorithm, Sample};
///
/// /// Halves on a drop, never changes otherwise.
/// struct Halving(usize);
/// impl LimitAlgorithm for Halving {
///     fn limit(&self) -> usize { self.0 }
///     fn update(&mut self, sample: &Sample) -> usize {
///         if sample.dropped { self.0 = (self.0 / 2).max(1) }
///         self.0
///     }
/// }
/// let mut algorithm = Halving(8);
/// assert_eq!(algorithm.update(&Sample::new(std::time::Duration::ZERO, 1, true)), 4);
/// ```
pub trait LimitAlgorithm: Send + 'static {
    /// The current limit (the initial one before any sample).
    fn limit(&self) -> usize;

    /// Takes one sample and returns the new limit (at least 1 is enforced by the layer).
    fn update(&mut self, sample: &Sample) -> usize;
}

fn config(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// `x` in `(0, 1]` (false for NaN).
fn in_unit_interval(x: f64) -> bool {
    x > 0.0 && x <= 1.0
}

/// `x > 0` (false for NaN).
fn positive(x: f64) -> bool {
    x > 0.0
}

fn check_bounds(name: &str, initial: usize, min: usize, max: usize) -> Result<(), Error> {
    if min == 0 {
        return Err(config(format!("{name}: min_limit must be at least 1")));
    }
    if min > max {
        return Err(config(format!(
            "{name}: min_limit {min} is above max_limit {max}"
        )));
    }
    if initial < min || initial > max {
        return Err(config(format!(
            "{name}: initial_limit {initial} is outside [min_limit {min}, max_limit {max}]"
        )));
    }
    Ok(())
}

/// Additive increase, multiplicative decrease (Netflix `AIMDLimit`, reference §5.1).
///
/// On a drop, or a call slower than `timeout`: `limit = floor(limit × backoff_ratio)`; on a
/// success while at least half the limit is in flight: `limit + 1`; then clamped to
/// `[min_limit, max_limit]`. Netflix's defaults: initial 20, min 20, max 200, backoff 0.9,
/// timeout 5 s. With those, a drop at 20 gives 18, clamped back to 20: the limit never goes
/// below 20 (reference case 44); lower `min_limit` to let it shrink further.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::concurrency::{Aimd, LimitAlgorithm, Sample};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let mut aimd = Aimd::builder().initial_limit(30).min_limit(1).build()?;
/// assert_eq!(aimd.update(&Sample::new(Duration::from_millis(5), 30, true)), 27);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Aimd {
    limit: usize,
    min: usize,
    max: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl Default for Aimd {
    fn default() -> Aimd {
        Aimd {
            limit: 20,
            min: 20,
            max: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl Aimd {
    /// A builder with Netflix's defaults.
    pub fn builder() -> AimdBuilder {
        AimdBuilder {
            inner: Aimd::default(),
        }
    }
}

impl LimitAlgorithm for Aimd {
    fn limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let limit = if sample.dropped || sample.rtt > self.timeout {
            (self.limit as f64 * self.backoff_ratio) as usize
        } else if sample.in_flight * 2 >= self.limit {
            self.limit + 1
        } else {
            self.limit
        };
        self.limit = limit.clamp(self.min, self.max);
        self.limit
    }
}

/// Builds an [`Aimd`].
///
/// ```
/// use tower_deepseek::concurrency::Aimd;
/// assert!(Aimd::builder().backoff_ratio(0.4).build().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct AimdBuilder {
    inner: Aimd,
}

impl AimdBuilder {
    /// The starting limit (default 20).
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.inner.limit = limit;
        self
    }

    /// The floor (default 20).
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.inner.min = limit;
        self
    }

    /// The ceiling (default 200).
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.inner.max = limit;
        self
    }

    /// The factor applied on a drop, in `[0.5, 1)` (default 0.9).
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.inner.backoff_ratio = ratio;
        self
    }

    /// A call slower than this counts as a drop (default 5 s, Netflix's). For streamed LLM
    /// calls measured to the head, this is the time to the response headers.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner.timeout = timeout;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Aimd, Error> {
        let aimd = self.inner;
        check_bounds("aimd", aimd.limit, aimd.min, aimd.max)?;
        if !(0.5..1.0).contains(&aimd.backoff_ratio) {
            return Err(config(format!(
                "aimd: backoff_ratio {} must be in [0.5, 1)",
                aimd.backoff_ratio
            )));
        }
        if aimd.timeout.is_zero() {
            return Err(config("aimd: timeout must be above zero".to_owned()));
        }
        Ok(aimd)
    }
}

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
