//! Configuration: the builder, its defaults, its validation, and the profiles.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::CircuitState;
use super::events::CircuitBreakerListener;
use crate::classify::{Classify, DeepSeekClassifier};
use crate::error::{Error, ErrorKind};

/// Largest count-based window (the window's counters are packed into one 64-bit atomic).
pub const MAX_COUNT_WINDOW: u32 = u16::MAX as u32;
/// Largest time-based window, in seconds.
pub const MAX_TIME_WINDOW_SECS: u32 = 3600;

/// Which calls the closed-state window remembers.
///
/// ```
/// use tower_deepseek::circuit_breaker::SlidingWindow;
/// let window = SlidingWindow::Time { seconds: 10 };
/// assert_ne!(window, SlidingWindow::Count { calls: 100 });
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `calls` calls (1 ..= 65 535).
    Count {
        /// The window size in calls.
        calls: u32,
    },
    /// The calls of the current second and the `seconds - 1` seconds before it (1 ..= 3600),
    /// one bucket per second.
    Time {
        /// The window size in seconds.
        seconds: u32,
    },
}

/// How long the breaker stays open before it lets trial calls through.
///
/// `attempt` counts consecutive openings (1 for the first; it grows while half-open trials
/// keep failing and is reset by a successful close), as in resilience4j.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::circuit_breaker::OpenWait;
///
/// let wait = OpenWait::exponential(Duration::from_secs(5), 1.5, Duration::from_secs(300));
/// assert_eq!(wait.duration(1), Duration::from_secs(5));
/// assert_eq!(wait.duration(2), Duration::from_millis(7500));
/// assert_eq!(wait.duration(3), Duration::from_millis(11250));
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OpenWait {
    /// The same wait every time.
    Fixed(Duration),
    /// `initial`, then multiplied by `multiplier` for each further consecutive opening
    /// (truncated to whole milliseconds at each step, as resilience4j does), capped at `max`.
    Exponential {
        /// The first wait.
        initial: Duration,
        /// The growth factor, at least 1.
        multiplier: f64,
        /// The longest wait.
        max: Duration,
    },
}

impl OpenWait {
    /// A fixed wait.
    pub fn fixed(wait: Duration) -> OpenWait {
        OpenWait::Fixed(wait)
    }

    /// An exponentially growing wait.
    pub fn exponential(initial: Duration, multiplier: f64, max: Duration) -> OpenWait {
        OpenWait::Exponential {
            initial,
            multiplier,
            max,
        }
    }

    /// The wait for the `attempt`-th consecutive opening (attempt 0 is treated as 1).
    pub fn duration(&self, attempt: u32) -> Duration {
        match *self {
            OpenWait::Fixed(wait) => wait,
            OpenWait::Exponential {
                initial,
                multiplier,
                max,
            } => {
                let max_ms = max.as_millis() as f64;
                let mut millis = initial.as_millis() as f64;
                for _ in 1..attempt.max(1) {
                    if millis >= max_ms {
                        break;
                    }
                    millis = (millis * multiplier).trunc();
                }
                Duration::from_millis(millis.min(max_ms) as u64)
            }
        }
    }

    fn validate(&self) -> Result<(), Error> {
        match *self {
            OpenWait::Fixed(wait) if wait >= Duration::from_millis(1) => Ok(()),
            OpenWait::Fixed(_) => Err(config("the open wait must be at least 1 ms")),
            OpenWait::Exponential {
                initial,
                multiplier,
                max,
            } => {
                if initial < Duration::from_millis(1) {
                    return Err(config("the initial open wait must be at least 1 ms"));
                }
                if !(multiplier.is_finite() && multiplier >= 1.0) {
                    return Err(config(format!(
                        "the open wait multiplier must be a finite number >= 1, not {multiplier}"
                    )));
                }
                if max < initial {
                    return Err(config("the longest open wait is shorter than the first"));
                }
                Ok(())
            }
        }
    }
}

/// What a trial call whose response future is dropped before it completes counts as.
///
/// ```
/// use tower_deepseek::circuit_breaker::CancelPolicy;
/// assert_eq!(CancelPolicy::default(), CancelPolicy::Release);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CancelPolicy {
    /// Not recorded; a half-open permit is given back (resilience4j).
    #[default]
    Release,
    /// Recorded as a failure (Hystrix: a cancelled trial re-opens the breaker).
    Failure,
}

/// Where a call's duration ends for the slow-call rate.
///
/// ```
/// use tower_deepseek::circuit_breaker::SlowCallMeasure;
/// assert_eq!(SlowCallMeasure::default(), SlowCallMeasure::Headers);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlowCallMeasure {
    /// From `call` to the response head (status and headers).
    #[default]
    Headers,
    /// From `call` to the first token: the first SSE `data:` event of a stream (keep-alives do
    /// not count) or the first non-whitespace byte of a JSON body. Never the whole generation:
    /// a long answer is not a slow upstream.
    FirstToken,
}

/// The resolved, validated configuration of a breaker.
pub(crate) struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) failure_rate_threshold: Option<f32>,
    pub(crate) slow_call_rate_threshold: Option<f32>,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) slow_call_measure: SlowCallMeasure,
    pub(crate) window: SlidingWindow,
    pub(crate) minimum_calls: u32,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) half_open_calls: u32,
    pub(crate) open_wait: OpenWait,
    pub(crate) max_wait_in_half_open: Option<Duration>,
    pub(crate) after_half_open_wait: CircuitState,
    pub(crate) fatal_wait: Option<Duration>,
    pub(crate) cancel_policy: CancelPolicy,
    pub(crate) observe_body: bool,
    pub(crate) initial_state: CircuitState,
    pub(crate) classifier: Arc<dyn Classify>,
    /// `classifier` is the default [`DeepSeekClassifier`]: a head is classified with
    /// [`classify_status`](crate::classify::classify_status) directly, not through the
    /// trait object.
    pub(crate) default_classifier: bool,
    pub(crate) listener: Option<Arc<dyn CircuitBreakerListener>>,
}

impl Config {
    /// The minimum number of calls for a closed-state decision (clamped to a count window).
    pub(crate) fn closed_minimum(&self) -> u32 {
        match self.window {
            SlidingWindow::Count { calls } => self.minimum_calls.min(calls),
            SlidingWindow::Time { .. } => self.minimum_calls,
        }
    }

    /// The number of recorded trial calls after which half-open decides.
    pub(crate) fn half_open_minimum(&self) -> u32 {
        self.minimum_calls.min(self.half_open_calls)
    }

    /// Whether calls need a start time stamp.
    pub(crate) fn measures_slowness(&self) -> bool {
        self.slow_call_rate_threshold.is_some() && self.slow_call_duration.is_some()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("slow_call_rate_threshold", &self.slow_call_rate_threshold)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("slow_call_measure", &self.slow_call_measure)
            .field("window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("half_open_calls", &self.half_open_calls)
            .field("open_wait", &self.open_wait)
            .field("max_wait_in_half_open", &self.max_wait_in_half_open)
            .field("fatal_wait", &self.fatal_wait)
            .field("cancel_policy", &self.cancel_policy)
            .finish_non_exhaustive()
    }
}

fn config(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// Builds a [`CircuitBreaker`](super::CircuitBreaker) (and, through it, the layers).
///
/// Defaults are resilience4j's, except where an LLM upstream needs otherwise (marked *):
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`name`](Self::name) | `"deepseek"` | names the breaker in errors, events and logs |
/// | [`failure_rate_threshold`](Self::failure_rate_threshold) | 50 % | open when the failure rate is **at least** this |
/// | [`slow_call_rate_threshold`](Self::slow_call_rate_threshold) | 100 % | open when the slow-call rate is at least this |
/// | [`slow_call_duration`](Self::slow_call_duration) | 60 s | a call is slow when **strictly longer** |
/// | [`slow_call_measure`](Self::slow_call_measure) * | to the response headers | or to the first token; never the whole stream |
/// | [`sliding_window`](Self::sliding_window) | the last 100 calls | or a time window in seconds |
/// | [`minimum_calls`](Self::minimum_calls) | 100 | no decision below it (clamped to a count window's size) |
/// | [`consecutive_failures`](Self::consecutive_failures) | off | also open after this many failures in a row (gobreaker) |
/// | [`half_open_calls`](Self::half_open_calls) | 10 | trial calls admitted while half-open |
/// | [`open_wait`](Self::open_wait) | fixed 60 s | how long to stay open |
/// | [`max_wait_in_half_open`](Self::max_wait_in_half_open) | unlimited | leave half-open after this long |
/// | [`fatal_wait`](Self::fatal_wait) * | 30 min | how long a 401/402 stops all calls |
/// | [`cancel_policy`](Self::cancel_policy) | release | what a dropped trial call counts as |
/// | [`observe_body`](Self::observe_body) * | on | judge streams by how their body ends |
/// | [`classifier`](Self::classifier) | [`DeepSeekClassifier`] | what counts as a failure |
///
/// [`build`](Self::build) validates everything and answers [`ErrorKind::Config`] naming the
/// setting at fault.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::circuit_breaker::{CircuitBreaker, SlidingWindow};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let breaker = CircuitBreaker::builder()
///     .name("deepseek-v4-flash")
///     .sliding_window(SlidingWindow::Time { seconds: 30 })
///     .minimum_calls(20)
///     .open_wait(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(breaker.name(), "deepseek-v4-flash");
///
/// let invalid = CircuitBreaker::builder().failure_rate_threshold(0.0).build();
/// assert!(invalid.unwrap_err().to_string().contains("failure_rate_threshold"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreakerBuilder {
    name: Arc<str>,
    failure_rate_threshold: Option<f32>,
    slow_call_rate_threshold: Option<f32>,
    slow_call_duration: Option<Duration>,
    slow_call_measure: SlowCallMeasure,
    window: SlidingWindow,
    minimum_calls: u32,
    consecutive_failures: Option<u32>,
    half_open_calls: u32,
    open_wait: OpenWait,
    max_wait_in_half_open: Option<Duration>,
    after_half_open_wait: CircuitState,
    fatal_wait: Option<Duration>,
    cancel_policy: CancelPolicy,
    observe_body: bool,
    initial_state: CircuitState,
    classifier: Arc<dyn Classify>,
    /// Whether `classifier` is still the default one.
    default_classifier: bool,
    listener: Option<Arc<dyn CircuitBreakerListener>>,
}

impl fmt::Debug for CircuitBreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("name", &self.name)
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .finish_non_exhaustive()
    }
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        CircuitBreakerBuilder {
            name: Arc::from("deepseek"),
            failure_rate_threshold: Some(50.0),
            slow_call_rate_threshold: Some(100.0),
            slow_call_duration: Some(Duration::from_secs(60)),
            slow_call_measure: SlowCallMeasure::Headers,
            window: SlidingWindow::Count { calls: 100 },
            minimum_calls: 100,
            consecutive_failures: None,
            half_open_calls: 10,
            open_wait: OpenWait::Fixed(Duration::from_secs(60)),
            max_wait_in_half_open: None,
            after_half_open_wait: CircuitState::Open,
            fatal_wait: Some(Duration::from_secs(30 * 60)),
            cancel_policy: CancelPolicy::Release,
            observe_body: true,
            initial_state: CircuitState::Closed,
            classifier: Arc::new(DeepSeekClassifier),
            default_classifier: true,
            listener: None,
        }
    }
}

impl CircuitBreakerBuilder {
    /// The defaults (the table above): resilience4j's.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hystrix's defaults: open when at least 20 calls in a 10 s window (ten 1 s buckets) fail
    /// at 50 % or more; stay open 5 s; then exactly one trial call, whose success closes and
    /// whose failure or cancellation re-opens. No slow-call rule (Hystrix counts timeouts as
    /// failures). The seed's breaker is this profile with `.minimum_calls(10)`.
    ///
    /// ```
    /// # fn main() -> Result<(), tower_deepseek::Error> {
    /// let seed = tower_deepseek::circuit_breaker::CircuitBreakerBuilder::hystrix()
    ///     .minimum_calls(10)
    ///     .build()?;
    /// # let _ = seed;
    /// # Ok(())
    /// # }
    /// ```
    pub fn hystrix() -> Self {
        CircuitBreakerBuilder {
            failure_rate_threshold: Some(50.0),
            slow_call_rate_threshold: None,
            window: SlidingWindow::Time { seconds: 10 },
            minimum_calls: 20,
            half_open_calls: 1,
            open_wait: OpenWait::Fixed(Duration::from_secs(5)),
            cancel_policy: CancelPolicy::Failure,
            ..Self::default()
        }
    }

    /// sony/gobreaker's defaults: open on the 6th consecutive failure (`ConsecutiveFailures >
    /// 5`), counts never cleared by time while closed, stay open 60 s, then one trial call
    /// (`MaxRequests` 1) whose success closes and whose failure re-opens. No rate rules.
    pub fn gobreaker() -> Self {
        CircuitBreakerBuilder {
            failure_rate_threshold: None,
            slow_call_rate_threshold: None,
            window: SlidingWindow::Count { calls: 100 },
            minimum_calls: 1,
            consecutive_failures: Some(6),
            half_open_calls: 1,
            open_wait: OpenWait::Fixed(Duration::from_secs(60)),
            ..Self::default()
        }
    }

    /// Names the breaker (in errors, events and logs). A keyed breaker is named after its
    /// key. Names are user data: control characters are escaped (`\n`, `\u{1b}`) and a name
    /// longer than [`MAX_NAME_CHARS`] characters is cut there and ends with `…`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Opens when the failure rate (percent, in `(0, 100]`) is at least this.
    pub fn failure_rate_threshold(mut self, percent: f32) -> Self {
        self.failure_rate_threshold = Some(percent);
        self
    }

    /// Turns the failure-rate rule off (e.g. to rely on [`consecutive_failures`](Self::consecutive_failures)).
    pub fn no_failure_rate(mut self) -> Self {
        self.failure_rate_threshold = None;
        self
    }

    /// Opens when the slow-call rate (percent, in `(0, 100]`) is at least this.
    pub fn slow_call_rate_threshold(mut self, percent: f32) -> Self {
        self.slow_call_rate_threshold = Some(percent);
        self
    }

    /// Turns the slow-call rule off: calls are not timed at all.
    pub fn no_slow_calls(mut self) -> Self {
        self.slow_call_rate_threshold = None;
        self
    }

    /// A call is slow when it takes strictly longer than this (at least 1 ns).
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.slow_call_duration = Some(duration);
        self
    }

    /// Where a call's duration ends: the response head (default) or the first token.
    pub fn slow_call_measure(mut self, measure: SlowCallMeasure) -> Self {
        self.slow_call_measure = measure;
        self
    }

    /// The closed-state window.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.window = window;
        self
    }

    /// No decision is taken below this many calls in the window (at least 1).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// Also opens after this many failures in a row while closed (at least 1), whatever the
    /// rates; while half-open, any failure then re-opens.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = Some(failures);
        self
    }

    /// Trial calls admitted while half-open (at least 1). The half-open decision is taken
    /// after `min(minimum_calls, half_open_calls)` recorded trials.
    pub fn half_open_calls(mut self, calls: u32) -> Self {
        self.half_open_calls = calls;
        self
    }

    /// How long to stay open: a fixed duration, or an [`OpenWait`].
    pub fn open_wait(mut self, wait: impl Into<OpenWait>) -> Self {
        self.open_wait = wait.into();
        self
    }

    /// Leaves half-open after this long (to [`CircuitState::Open`], or the state set with
    /// [`after_half_open_wait`](Self::after_half_open_wait)) if the trials have not decided.
    pub fn max_wait_in_half_open(mut self, wait: Duration) -> Self {
        self.max_wait_in_half_open = Some(wait);
        self
    }

    /// The state half-open falls to after [`max_wait_in_half_open`](Self::max_wait_in_half_open):
    /// [`CircuitState::Open`] (default) or [`CircuitState::Closed`].
    pub fn after_half_open_wait(mut self, state: CircuitState) -> Self {
        self.after_half_open_wait = state;
        self
    }

    /// How long a 401 (key refused) or 402 (balance empty) stops all calls before one trial
    /// call is let through. [`CircuitBreaker::reset`](super::CircuitBreaker::reset) ends it at
    /// once (after the balance was topped up).
    pub fn fatal_wait(mut self, wait: Duration) -> Self {
        self.fatal_wait = Some(wait);
        self
    }

    /// Treats 401 and 402 like any other ignored answer: no fatal state.
    pub fn no_fatal_state(mut self) -> Self {
        self.fatal_wait = None;
        self
    }

    /// What a call whose response future is dropped before it completes counts as.
    pub fn cancel_policy(mut self, policy: CancelPolicy) -> Self {
        self.cancel_policy = policy;
        self
    }

    /// With `true` (default) a successful response is judged when its body ends (a stream cut
    /// short or stopped with `insufficient_system_resource` is a failure); with `false` the
    /// response head decides.
    pub fn observe_body(mut self, observe: bool) -> Self {
        self.observe_body = observe;
        self
    }

    /// The state the breaker starts in: closed (default), or one of the special states.
    pub fn initial_state(mut self, state: CircuitState) -> Self {
        self.initial_state = state;
        self
    }

    /// Replaces the classification (what counts as a failure, see [`crate::classify`]).
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Arc::new(classifier);
        self.default_classifier = false;
        self
    }

    /// Adds a listener for state transitions, rejections and recorded calls (the metrics
    /// layer's hook). Closures `Fn(&CircuitEvent<'_>)` implement the listener trait.
    pub fn listener(mut self, listener: impl CircuitBreakerListener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Validates the settings and builds the breaker.
    pub fn build(self) -> Result<super::CircuitBreaker, Error> {
        Ok(super::CircuitBreaker::from_config(self.into_config()?))
    }

    pub(crate) fn into_config(self) -> Result<Config, Error> {
        for (name, value) in [
            ("failure_rate_threshold", self.failure_rate_threshold),
            ("slow_call_rate_threshold", self.slow_call_rate_threshold),
        ] {
            if let Some(value) = value
                && !(value > 0.0 && value <= 100.0)
            {
                return Err(config(format!(
                    "{name} must be a percentage in (0, 100], not {value}"
                )));
            }
        }
        if self
            .slow_call_duration
            .is_some_and(|duration| duration.is_zero())
        {
            return Err(config("slow_call_duration must be at least 1 ns"));
        }
        match self.window {
            SlidingWindow::Count { calls } if !(1..=MAX_COUNT_WINDOW).contains(&calls) => {
                return Err(config(format!(
                    "sliding_window: a count window holds 1 to {MAX_COUNT_WINDOW} calls, not {calls}"
                )));
            }
            SlidingWindow::Time { seconds } if !(1..=MAX_TIME_WINDOW_SECS).contains(&seconds) => {
                return Err(config(format!(
                    "sliding_window: a time window spans 1 to {MAX_TIME_WINDOW_SECS} seconds, not {seconds}"
                )));
            }
            _ => {}
        }
        if self.minimum_calls == 0 {
            return Err(config("minimum_calls must be at least 1"));
        }
        if self.consecutive_failures == Some(0) {
            return Err(config("consecutive_failures must be at least 1"));
        }
        if self.half_open_calls == 0 {
            return Err(config("half_open_calls must be at least 1"));
        }
        if self.failure_rate_threshold.is_none()
            && self.slow_call_rate_threshold.is_none()
            && self.consecutive_failures.is_none()
        {
            return Err(config(
                "no rule can open the breaker: set failure_rate_threshold, \
                 slow_call_rate_threshold or consecutive_failures",
            ));
        }
        self.open_wait.validate()?;
        if self.max_wait_in_half_open.is_some_and(|d| d.is_zero()) {
            return Err(config("max_wait_in_half_open must be at least 1 ms"));
        }
        if !matches!(
            self.after_half_open_wait,
            CircuitState::Open | CircuitState::Closed
        ) {
            return Err(config("after_half_open_wait must be Open or Closed"));
        }
        if self
            .fatal_wait
            .is_some_and(|d| d < Duration::from_millis(1))
        {
            return Err(config("fatal_wait must be at least 1 ms"));
        }
        if matches!(
            self.initial_state,
            CircuitState::HalfOpen | CircuitState::Fatal
        ) {
            return Err(config(
                "initial_state must be Closed, Open, Disabled, ForcedOpen or MetricsOnly",
            ));
        }
        if self.name.is_empty() {
            return Err(config("the breaker name is empty"));
        }
        Ok(Config {
            name: display_name(self.name),
            failure_rate_threshold: self.failure_rate_threshold,
            slow_call_rate_threshold: self.slow_call_rate_threshold,
            slow_call_duration: self.slow_call_duration,
            slow_call_measure: self.slow_call_measure,
            window: self.window,
            minimum_calls: self.minimum_calls,
            consecutive_failures: self.consecutive_failures,
            half_open_calls: self.half_open_calls,
            open_wait: self.open_wait,
            max_wait_in_half_open: self.max_wait_in_half_open,
            after_half_open_wait: self.after_half_open_wait,
            fatal_wait: self.fatal_wait,
            cancel_policy: self.cancel_policy,
            observe_body: self.observe_body,
            initial_state: self.initial_state,
            classifier: self.classifier,
            default_classifier: self.default_classifier,
            listener: self.listener,
        })
    }
}

impl From<Duration> for OpenWait {
    fn from(wait: Duration) -> OpenWait {
        OpenWait::Fixed(wait)
    }
}

/// The longest breaker name kept, in characters (after escaping); longer names are cut.
pub const MAX_NAME_CHARS: usize = 128;

/// `name` fit for messages and logs: control characters escaped, at most [`MAX_NAME_CHARS`]
/// characters. Returns `name` itself (no allocation) when it is already fit.
pub(crate) fn display_name(name: Arc<str>) -> Arc<str> {
    let clean = name.chars().count() <= MAX_NAME_CHARS && !name.chars().any(char::is_control);
    if clean {
        return name;
    }
    let mut out = String::with_capacity(MAX_NAME_CHARS.min(name.len()) + 4);
    let mut kept = 0;
    for c in name.chars() {
        let escaped = c.is_control().then(|| c.escape_debug().to_string());
        let width = escaped.as_ref().map_or(1, |e| e.chars().count());
        if kept + width > MAX_NAME_CHARS {
            out.push('…');
            return Arc::from(out);
        }
        kept += width;
        match escaped {
            Some(e) => out.push_str(&e),
            None => out.push(c),
        }
    }
    Arc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_rejected_with_the_setting_named() {
        let cases: Vec<(CircuitBreakerBuilder, &str)> = vec![
            (
                CircuitBreakerBuilder::new().failure_rate_threshold(0.0),
                "failure_rate_threshold",
            ),
            (
                CircuitBreakerBuilder::new().failure_rate_threshold(100.5),
                "failure_rate_threshold",
            ),
            (
                CircuitBreakerBuilder::new().slow_call_rate_threshold(f32::NAN),
                "slow_call_rate_threshold",
            ),
            (
                CircuitBreakerBuilder::new().slow_call_duration(Duration::ZERO),
                "slow_call_duration",
            ),
            (
                CircuitBreakerBuilder::new().sliding_window(SlidingWindow::Count { calls: 0 }),
                "sliding_window",
            ),
            (
                CircuitBreakerBuilder::new().sliding_window(SlidingWindow::Count { calls: 70_000 }),
                "sliding_window",
            ),
            (
                CircuitBreakerBuilder::new().sliding_window(SlidingWindow::Time { seconds: 0 }),
                "sliding_window",
            ),
            (
                CircuitBreakerBuilder::new().minimum_calls(0),
                "minimum_calls",
            ),
            (
                CircuitBreakerBuilder::new().half_open_calls(0),
                "half_open_calls",
            ),
            (
                CircuitBreakerBuilder::new().consecutive_failures(0),
                "consecutive_failures",
            ),
            (
                CircuitBreakerBuilder::new().open_wait(Duration::ZERO),
                "open wait",
            ),
            (
                CircuitBreakerBuilder::new().open_wait(OpenWait::exponential(
                    Duration::from_secs(1),
                    0.5,
                    Duration::from_secs(10),
                )),
                "multiplier",
            ),
            (
                CircuitBreakerBuilder::new().open_wait(OpenWait::exponential(
                    Duration::from_secs(10),
                    2.0,
                    Duration::from_secs(1),
                )),
                "longest open wait",
            ),
            (
                CircuitBreakerBuilder::new().max_wait_in_half_open(Duration::ZERO),
                "max_wait_in_half_open",
            ),
            (
                CircuitBreakerBuilder::new().after_half_open_wait(CircuitState::HalfOpen),
                "after_half_open_wait",
            ),
            (
                CircuitBreakerBuilder::new().initial_state(CircuitState::HalfOpen),
                "initial_state",
            ),
            (
                CircuitBreakerBuilder::new()
                    .no_failure_rate()
                    .no_slow_calls(),
                "no rule",
            ),
            (CircuitBreakerBuilder::new().name(""), "name"),
        ];
        for (builder, needle) in cases {
            let error = builder.build().expect_err(needle);
            assert_eq!(error.kind(), ErrorKind::Config);
            assert!(error.to_string().contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn defaults_and_profiles_build() {
        for builder in [
            CircuitBreakerBuilder::new(),
            CircuitBreakerBuilder::hystrix(),
            CircuitBreakerBuilder::gobreaker(),
        ] {
            builder.build().unwrap();
        }
        let config = CircuitBreakerBuilder::new().into_config().unwrap();
        assert_eq!(config.closed_minimum(), 100);
        assert_eq!(config.half_open_minimum(), 10);
    }

    /// Reference case 5 (second part): a count window of 5 clamps a minimum of 100 to 5; a
    /// time window does not clamp.
    #[test]
    fn case_05_minimum_is_clamped_to_count_window_only() {
        let count = CircuitBreakerBuilder::new()
            .sliding_window(SlidingWindow::Count { calls: 5 })
            .minimum_calls(100)
            .into_config()
            .unwrap();
        assert_eq!(count.closed_minimum(), 5);
        let time = CircuitBreakerBuilder::new()
            .sliding_window(SlidingWindow::Time { seconds: 5 })
            .minimum_calls(100)
            .into_config()
            .unwrap();
        assert_eq!(time.closed_minimum(), 100);
    }

    /// Reference case 12 (the wait function): 5 s × 1.5 ⇒ 5 s, 7.5 s, 11.25 s; capped.
    #[test]
    fn case_12_exponential_open_wait_vector() {
        let wait = OpenWait::exponential(Duration::from_secs(5), 1.5, Duration::from_secs(60));
        let waits: Vec<_> = (1..=4).map(|n| wait.duration(n).as_millis()).collect();
        assert_eq!(waits, [5000, 7500, 11250, 16875]);
        assert_eq!(wait.duration(30), Duration::from_secs(60));
        assert_eq!(wait.duration(0), Duration::from_secs(5));
        let fixed = OpenWait::fixed(Duration::from_secs(3));
        assert_eq!(fixed.duration(9), Duration::from_secs(3));
    }
}
