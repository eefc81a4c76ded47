//! The layer's settings and their builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::budget::HedgeBudget;
use super::events::{HedgeEvent, HedgeListener};
use super::latency::LatencyTracker;
use super::layer::HedgeLayer;
use crate::classify::{Classify, DeepSeekClassifier};
use crate::error::{Error, ErrorKind};

pub(crate) struct HedgeConfig {
    pub(crate) enabled: bool,
    pub(crate) name: Arc<str>,
    pub(crate) latency: LatencyTracker,
    pub(crate) budget: HedgeBudget,
    pub(crate) classifier: Arc<dyn Classify>,
    pub(crate) listener: Option<Box<dyn HedgeListener>>,
    pub(crate) percentile: f64,
    pub(crate) max_extra_percent: f64,
}

impl HedgeConfig {
    pub(crate) fn emit(&self, event: HedgeEvent<'_>) {
        if let Some(listener) = &self.listener {
            listener.on_event(&event);
        }
    }
}

impl fmt::Debug for HedgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeConfig")
            .field("enabled", &self.enabled)
            .field("name", &self.name)
            .field("percentile", &self.percentile)
            .field("max_extra_percent", &self.max_extra_percent)
            .field("budget_available", &self.budget.available())
            .finish_non_exhaustive()
    }
}

/// Builds a [`HedgeLayer`]. Defaults: hedge after the 95th percentile of recent successful
/// calls (a window of 60 s to 120 s), once 20 samples are in the window, never sooner than
/// 100 ms nor later than 120 s; at most 5 % extra calls, with up to 10 hedges saved up;
/// DeepSeek's classifier decides what a successful answer is.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::hedge::HedgeLayer;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = HedgeLayer::builder()
///     .percentile(90.0)
///     .max_extra_percent(2.0)
///     .min_samples(50)
///     .min_delay(Duration::from_millis(500))
///     .max_delay(Duration::from_secs(30))
///     .build()?;
/// # let _ = layer;
/// // Every value is checked: a percentile must be in (0, 100].
/// assert!(HedgeLayer::builder().percentile(0.0).build().is_err());
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct HedgeLayerBuilder {
    enabled: bool,
    name: Arc<str>,
    percentile: f64,
    max_extra_percent: f64,
    burst: u32,
    min_samples: u32,
    window: Duration,
    min_delay: Duration,
    max_delay: Duration,
    classifier: Arc<dyn Classify>,
    listener: Option<Box<dyn HedgeListener>>,
}

impl fmt::Debug for HedgeLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayerBuilder")
            .field("name", &self.name)
            .field("percentile", &self.percentile)
            .field("max_extra_percent", &self.max_extra_percent)
            .field("burst", &self.burst)
            .field("min_samples", &self.min_samples)
            .field("window", &self.window)
            .field("min_delay", &self.min_delay)
            .field("max_delay", &self.max_delay)
            .finish_non_exhaustive()
    }
}

impl Default for HedgeLayerBuilder {
    fn default() -> Self {
        HedgeLayerBuilder {
            enabled: true,
            name: Arc::from("deepseek"),
            percentile: 95.0,
            max_extra_percent: 5.0,
            burst: 10,
            min_samples: 20,
            window: Duration::from_secs(60),
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(120),
            classifier: Arc::new(DeepSeekClassifier),
            listener: None,
        }
    }
}

impl HedgeLayerBuilder {
    /// Whether the layer hedges at all (default `true`). A disabled layer passes every call
    /// through untouched (one branch per call), so a stack keeps one type whether a
    /// configuration turns hedging on or off.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The layer's name in events (default `deepseek`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The latency percentile after which a call is hedged, in (0, 100] (default 95).
    pub fn percentile(mut self, percentile: f64) -> Self {
        self.percentile = percentile;
        self
    }

    /// The most extra calls hedging may add, in percent of hedgeable calls, in (0, 100]
    /// (default 5).
    pub fn max_extra_percent(mut self, percent: f64) -> Self {
        self.max_extra_percent = percent;
        self
    }

    /// The most hedges the budget saves up while calls are fast, at least 1 (default 10): a
    /// slow spell after a quiet hour may hedge this many calls at once, not more.
    pub fn burst(mut self, hedges: u32) -> Self {
        self.burst = hedges;
        self
    }

    /// Successful calls the window must hold before hedging starts, at least 1 (default 20).
    pub fn min_samples(mut self, samples: u32) -> Self {
        self.min_samples = samples;
        self
    }

    /// How long a latency sample counts (default 60 s): samples stay between one and two
    /// windows, so the delay follows a change in the upstream within two windows.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The shortest hedge delay (default 100 ms): however fast recent calls were, a call is
    /// not hedged before this.
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// The longest hedge delay (default 120 s): however slow recent calls were, a call still
    /// waiting after this is hedged (budget permitting).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// What counts as a successful answer (default [`DeepSeekClassifier`]): only a success
    /// from the second attempt wins, and only successes are latency samples.
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// A hook for [`HedgeEvent`]s (e.g. a [`Metrics`](crate::metrics::Metrics) handle).
    pub fn listener(mut self, listener: impl HedgeListener) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<HedgeLayer, Error> {
        let wrong = |message: String| Err(Error::new(ErrorKind::Config, message));
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            return wrong(format!(
                "hedge percentile {} must be above 0 and at most 100",
                self.percentile
            ));
        }
        if !(self.max_extra_percent > 0.0 && self.max_extra_percent <= 100.0) {
            return wrong(format!(
                "hedge max_extra_percent {} must be above 0 and at most 100 (leave the \
                 layer out to disable hedging)",
                self.max_extra_percent
            ));
        }
        if self.burst == 0 {
            return wrong("hedge burst is 0; it must allow at least one hedge".into());
        }
        if self.min_samples == 0 {
            return wrong("hedge min_samples is 0; a percentile needs at least one sample".into());
        }
        if self.window.is_zero() {
            return wrong("hedge window is zero; samples must count for some time".into());
        }
        if self.max_delay.is_zero() {
            return wrong("hedge max_delay is zero; it would hedge every call at once".into());
        }
        if self.min_delay > self.max_delay {
            return wrong(format!(
                "hedge min_delay {:?} is above max_delay {:?}",
                self.min_delay, self.max_delay
            ));
        }
        Ok(HedgeLayer::from_config(self.into_config()))
    }

    /// The settings as they are, unchecked: [`build`](Self::build) checks them first.
    pub(crate) fn into_config(self) -> HedgeConfig {
        HedgeConfig {
            enabled: self.enabled,
            name: self.name,
            latency: LatencyTracker::new(
                self.window,
                self.percentile,
                self.min_samples,
                self.min_delay,
                self.max_delay,
            ),
            budget: HedgeBudget::new(self.max_extra_percent, self.burst),
            classifier: self.classifier,
            listener: self.listener,
            percentile: self.percentile,
            max_extra_percent: self.max_extra_percent,
        }
    }
}
