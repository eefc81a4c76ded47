//! A circuit breaker with resilience4j's semantics, DeepSeek-aware classification, keyed
//! breakers, a fallback, and a lock-free closed path.
//!
//! [`CircuitBreakerLayer`] stops calling an upstream that is failing, so callers fail fast
//! (or get a [`fallback`]) instead of waiting on timeouts, and the upstream gets room
//! to recover. [`KeyedCircuitBreakerLayer`] keeps one breaker per model, host or API key, so
//! one failing model does not cut off the others.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_deepseek::circuit_breaker::CircuitBreakerLayer;
//! use tower_deepseek::deepseek::DeepSeekClient;
//! use tower_deepseek::upstream::Upstream;
//!
//! # fn main() -> Result<(), tower_deepseek::Error> {
//! let breaker = CircuitBreakerLayer::builder()
//!     .minimum_calls(20)
//!     .open_wait(Duration::from_secs(30))
//!     .build()?;
//! let transport = ServiceBuilder::new().layer(breaker).service(Upstream::new()?);
//! let client = DeepSeekClient::builder().api_key("sk-...").build(transport)?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```
//!
//! # States
//!
//! | state | calls | leaves when |
//! |---|---|---|
//! | [closed](CircuitState::Closed) | all admitted, outcomes recorded in the sliding window | a rate reaches its threshold (⇒ open) |
//! | [open](CircuitState::Open) | refused with [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen) and the time until a trial | strictly after the open wait, on the next call (⇒ half-open) |
//! | [half-open](CircuitState::HalfOpen) | a fixed number of trial calls | the trials decide (⇒ closed or open), or its maximum wait passes |
//! | [fatal](CircuitState::Fatal) | refused; the error says DeepSeek refused the key (401) or the balance is empty (402) | after [`fatal_wait`](CircuitBreakerBuilder::fatal_wait) (⇒ half-open), or [`reset`](CircuitBreaker::reset) |
//! | [forced open](CircuitState::ForcedOpen) | refused | an operator transition |
//! | [disabled](CircuitState::Disabled) | all admitted, nothing recorded | an operator transition |
//! | [metrics only](CircuitState::MetricsOnly) | all admitted and recorded, events published | an operator transition |
//!
//! # The rules, settled
//!
//! - **Thresholds** are inclusive (a 50 % threshold trips at exactly 50 %); a call is slow
//!   only when strictly longer than [`slow_call_duration`](CircuitBreakerBuilder::slow_call_duration);
//!   below [`minimum_calls`](CircuitBreakerBuilder::minimum_calls) nothing is decided and the
//!   rates read `-1`. The minimum is clamped to a count window's size, not to a time window.
//! - **What counts** comes from [`classify`](crate::classify): 5xx, timeouts, transport errors
//!   and stream failures are failures; success is success; 429, 400, 422 and other 4xx are
//!   *ignored* (not recorded; a half-open permit is given back): a rate limit is not an
//!   outage and a bad request is the caller's fault. 401 and 402 put the breaker in its own
//!   long **fatal** state (the key or the balance must be fixed; retrying cannot help).
//! - **Slowness** is measured from `call` to the response head, or with
//!   [`SlowCallMeasure::FirstToken`] to the first token of the body (a keep-alive is not a
//!   token), never over the whole generation: a long answer is not a slow upstream.
//! - **Streams** are judged when they end (see [`crate::body`]): a `200` whose stream is cut
//!   short, malformed or stopped with `insufficient_system_resource` is a failure. A body
//!   dropped by the reader before any verdict (no `[DONE]`, no `finish_reason`) is ignored.
//! - **The generation rule** (gobreaker's): every transition starts a new generation, and a
//!   call's outcome is recorded only if the breaker is still in the generation that admitted
//!   it. A call admitted while closed that completes after the breaker opened changes nothing
//!   (it is not even counted), and a half-open verdict is taken only from trial calls. The one
//!   exception is a 401/402, which enters the fatal state whenever the call was admitted.
//! - **Half-open permits** are taken in `call` and given back when the call is ignored or its
//!   response future is dropped before completing ([`CancelPolicy::Release`], the default;
//!   the Hystrix profile counts a cancelled trial as a failure). Permits are not replenished
//!   by completed trials, so one episode admits at most `half_open_calls` trials.
//! - **Open wait** is fixed or grows exponentially over consecutive openings
//!   ([`OpenWait`]); a successful close resets it. The transition from open to half-open is
//!   lazy (taken by the first call strictly after the wait), like resilience4j without its
//!   scheduler; half-open's maximum wait is checked on calls and on [`CircuitBreaker::state`].
//! - **tower's contract**: `poll_ready` only drives the inner service; admission is decided
//!   in `call`, so a clone that was polled ready but never called holds no trial permit, and a
//!   `call` without `poll_ready` never panics here.
//!
//! # Hot path
//!
//! While closed, a call costs one atomic load to admit, an `Arc` clone and drop for its permit
//! (the response future may outlive the service, so it owns a reference), and one
//! compare-and-swap on the window word to record (none at all while the window is full of
//! fast successes). No lock, no allocation. The permit's reference is counted on one of a few
//! cache-line-sized lanes, one per thread as far as they go, so threads sharing a breaker do
//! not hand one count's line back and forth on every call. Timing a call (for the slow-call rate) reads the
//! CPU's time-stamp counter twice, at `call` and at the head (or first token), about 10 ns a
//! read, not the OS clock (26 ns on our VM), and compares the raw difference with the
//! threshold converted to counter ticks once. Two reads, not one: a call is slow only when
//! *strictly* longer than the threshold, and only its own start and end can say that of a
//! call near the threshold (a start borrowed from a coarse or shared clock would misjudge
//! it). With the crate feature `test-util` the reads are tokio's clock instead, so tests that
//! pause time see slow calls. Turn the slow-call rule off with
//! [`no_slow_calls`](CircuitBreakerBuilder::no_slow_calls) and a count-window breaker reads no
//! clock at all. Locks are taken only on transitions and in half-open.
//!
//! # Profiles
//!
//! [`CircuitBreakerBuilder::new`] has resilience4j's defaults;
//! [`CircuitBreakerBuilder::hystrix`] (20 calls / 50 % in 10 s, 5 s open, one trial; the seed
//! used 10 calls) and [`CircuitBreakerBuilder::gobreaker`] (6 consecutive failures, 60 s
//! open, one trial) reproduce those libraries.
//!
//! # Events
//!
//! Transitions are logged with `tracing` (warn when opening, info otherwise), refusals at
//! debug; a [`CircuitBreakerListener`] hears every [`CircuitEvent`] (the metrics layer's hook).

mod config;
mod events;
pub mod fallback;
mod keyed;
mod layer;
mod state;
mod window;

use std::fmt;

pub use config::{
    CancelPolicy, CircuitBreakerBuilder, MAX_COUNT_WINDOW, MAX_NAME_CHARS, MAX_TIME_WINDOW_SECS,
    OpenWait, SlidingWindow, SlowCallMeasure,
};
pub use events::{CallKind, CircuitBreakerListener, CircuitEvent};
pub use fallback::{Fallback, FallbackResponse, NoFallback};
pub use keyed::{
    KeyExtractor, KeyedCircuitBreaker, KeyedCircuitBreakerLayer, KeyedCircuitBreakerService,
    KeyedResponseFuture,
};
pub use layer::{
    BreakerObserver, CircuitBreakerBody, CircuitBreakerLayer, CircuitBreakerLayerBuilder,
    CircuitBreakerService, ResponseFuture,
};
pub use state::{CircuitBreaker, CircuitMetrics, Permit};
pub use window::WindowCounts;

/// The states of a breaker (resilience4j's, plus the fatal state for 401/402).
///
/// ```
/// use tower_deepseek::circuit_breaker::CircuitState;
/// assert_eq!(CircuitState::HalfOpen.as_str(), "half_open");
/// assert_eq!(CircuitState::Fatal.to_string(), "fatal");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls flow and are recorded.
    Closed,
    /// Calls are refused until the open wait has passed.
    Open,
    /// A few trial calls decide between closed and open.
    HalfOpen,
    /// Calls flow, nothing is recorded.
    Disabled,
    /// Calls are refused until an operator changes the state.
    ForcedOpen,
    /// Calls flow and are recorded; the state never changes by itself.
    MetricsOnly,
    /// DeepSeek refused the key (401) or the balance is empty (402): calls are refused for
    /// a long time.
    Fatal,
}

impl CircuitState {
    /// A fixed lowercase name, fit for a metric label (resilience4j's names, plus `fatal`).
    pub fn as_str(&self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Disabled => "disabled",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::MetricsOnly => "metrics_only",
            CircuitState::Fatal => "fatal",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
