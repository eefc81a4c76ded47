//! AIMD: additive increase, multiplicative decrease (Netflix `AIMDLimit`).

use std::time::Duration;

use super::limit::{LimitAlgorithm, Sample, check_bounds, config};
use crate::error::Error;

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
