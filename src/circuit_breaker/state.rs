//! The state machine: one atomic state word, the windows, and a lock taken only on
//! transitions and in half-open.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::CircuitState;
use super::config::{CancelPolicy, CircuitBreakerBuilder, Config, SlidingWindow};
use super::events::{CallKind, CircuitEvent};
use super::window::{ClosedWindow, CountWindow, Sample, TimeWindow, WindowCounts};
use crate::classify::{AuthFailure, Outcome};
use crate::clock::Stamp;
use crate::error::{CircuitOpenReason, Error, ErrorKind};
use crate::lanes::{lane_count, thread_lane};

const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
/// The state bits of a closed word (`code(CircuitState::Closed)`).
const CLOSED: u64 = 0;

fn code(state: CircuitState) -> u64 {
    match state {
        CircuitState::Closed => CLOSED,
        CircuitState::Open => 1,
        CircuitState::HalfOpen => 2,
        CircuitState::Disabled => 3,
        CircuitState::ForcedOpen => 4,
        CircuitState::MetricsOnly => 5,
        CircuitState::Fatal => 6,
    }
}

fn decode(word: u64) -> CircuitState {
    match word & STATE_MASK {
        0 => CircuitState::Closed,
        1 => CircuitState::Open,
        2 => CircuitState::HalfOpen,
        3 => CircuitState::Disabled,
        4 => CircuitState::ForcedOpen,
        5 => CircuitState::MetricsOnly,
        _ => CircuitState::Fatal,
    }
}

/// What the breaker makes of a call's [`Outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure,
    Ignored,
    Fatal(AuthFailure),
}

/// The state a permit was taken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PermitKind {
    Closed,
    MetricsOnly,
    HalfOpen,
    Disabled,
}

/// Metrics of a breaker at one moment, with resilience4j's meaning: the rates read `-1.0`
/// while the window holds fewer calls than the minimum.
///
/// ```
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let breaker = tower_deepseek::circuit_breaker::CircuitBreaker::builder().build()?;
/// let metrics = breaker.metrics();
/// assert_eq!(metrics.failure_rate, -1.0);
/// assert_eq!(metrics.buffered_calls, 0);
/// # Ok(())
/// # }
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CircuitMetrics {
    /// The state.
    pub state: CircuitState,
    /// Failed calls in percent of the window, or `-1.0` below the minimum number of calls.
    pub failure_rate: f32,
    /// Slow calls in percent of the window, or `-1.0` below the minimum number of calls.
    pub slow_call_rate: f32,
    /// Calls in the window (the closed window; the half-open trials while half-open; the window
    /// that tripped the breaker while open).
    pub buffered_calls: u32,
    /// Failed calls in the window.
    pub failed_calls: u32,
    /// Slow calls in the window.
    pub slow_calls: u32,
    /// Calls refused since the state was entered (carried into open, like resilience4j).
    pub not_permitted_calls: u64,
}

/// What only transitions and half-open touch.
struct Slow {
    /// Consecutive openings; 0 after a close.
    attempts: u32,
    /// Trial calls recorded in this half-open episode.
    half_open: WindowCounts,
    /// Trial permits left in this half-open episode.
    half_open_permits: u32,
    /// When half-open gives up waiting for its trials.
    half_open_deadline: Option<Instant>,
    /// The window (and its minimum) that opened the breaker, shown while open.
    carried: Option<(WindowCounts, u32)>,
    /// Why the breaker is in its fatal state.
    fatal_reason: Option<AuthFailure>,
    /// Metrics-only publishes each threshold event once per entry into the state.
    published_failure_rate: bool,
    published_slow_rate: bool,
}

/// Aligned to a cache line so that the `Arc` counts in front of it share no line with the
/// state word, the window and the settings that every call reads. Calls do not write those
/// counts (their permits count on a [`Lane`]), but handles and lanes do when made or dropped.
#[repr(align(64))]
pub(crate) struct Core {
    pub(crate) config: Config,
    base: Instant,
    /// `generation << 3 | state`. The generation grows with every transition.
    word: AtomicU64,
    window: ClosedWindow,
    consecutive_failures: AtomicU32,
    /// Nanoseconds after `base` when open (or fatal) lets a trial through.
    open_until: AtomicU64,
    not_permitted: AtomicU64,
    slow: Mutex<Slow>,
    /// Whether calls are timed (the slow-call rule is on): resolved once from the config.
    timed: bool,
    /// A timed call measuring strictly more than this many of the clock's ticks is slow
    /// (`u64::MAX`: never): the slow-call duration converted once with
    /// [`crate::clock::ticks_within`], so the common success compares a raw difference and
    /// scales nothing.
    slow_after_ticks: u64,
}

/// A circuit breaker: the shared state behind [`CircuitBreakerLayer`](super::CircuitBreakerLayer)
/// and its services. Cloning is cheap and clones share the state.
///
/// Besides the layer, it can be driven directly with [`try_acquire`](Self::try_acquire) and
/// [`Permit::record`] (gobreaker's two-step shape), and operated: [`reset`](Self::reset),
/// [`force_open`](Self::force_open), [`transition_to`](Self::transition_to),
/// [`open_for`](Self::open_for).
///
/// ```
/// use tower_deepseek::circuit_breaker::{CircuitBreaker, CircuitState};
/// use tower_deepseek::classify::Outcome;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let breaker = CircuitBreaker::builder().minimum_calls(2).build()?;
/// for _ in 0..2 {
///     let permit = breaker.try_acquire()?;
///     permit.record(Outcome::Server(http::StatusCode::SERVICE_UNAVAILABLE));
/// }
/// assert_eq!(breaker.state(), CircuitState::Open);
/// let error = breaker.try_acquire().unwrap_err();
/// assert!(error.retry_after().is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

/// What the handles of one breaker share: the state, and the lanes its permits count on.
struct Shared {
    core: Arc<Core>,
    /// Lane 0, also `lanes[0]`: the answer should an index ever fall outside `lanes`.
    home: Arc<Lane>,
    /// A power of two of them; a thread takes `lanes[thread_lane() & mask]`.
    lanes: Box<[Arc<Lane>]>,
    mask: usize,
}

/// A reference to the shared state that permits clone and drop, one per lane, each on its own
/// cache line: every call writes a reference count twice (its permit's clone and drop), and
/// threads that share one count pass its line back and forth on every call, which is what
/// kept two threads on one breaker from running faster than one. Threads spread over the
/// lanes (see [`thread_lane`]), so each mostly writes a line of its own.
#[repr(align(64))]
pub(crate) struct Lane {
    core: Arc<Core>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.core.config.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

fn lock(slow: &Mutex<Slow>) -> MutexGuard<'_, Slow> {
    // A panic while holding the lock cannot leave `Slow` half-updated in a way that matters
    // more than refusing to work: keep going with what is there.
    slow.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CircuitBreaker {
    pub(crate) fn core(&self) -> &Core {
        &self.shared.core
    }

    /// The lane this thread's permits count on.
    #[inline]
    fn lane(&self) -> &Arc<Lane> {
        let shared = &*self.shared;
        shared
            .lanes
            .get(thread_lane() & shared.mask)
            .unwrap_or(&shared.home)
    }

    /// A builder with resilience4j's defaults (see [`CircuitBreakerBuilder`]).
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::new()
    }

    pub(crate) fn from_config(config: Config) -> CircuitBreaker {
        let window = match config.window {
            SlidingWindow::Count { calls } => ClosedWindow::Count(CountWindow::new(calls)),
            SlidingWindow::Time { seconds } => ClosedWindow::Time(TimeWindow::new(seconds)),
        };
        let initial = config.initial_state;
        crate::clock::warm_up();
        let timed = config.measures_slowness();
        let slow_after_nanos = match (config.slow_call_rate_threshold, config.slow_call_duration) {
            (Some(_), Some(threshold)) => u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX),
            _ => u64::MAX,
        };
        let core = Core {
            base: Instant::now(),
            word: AtomicU64::new(code(CircuitState::Closed)),
            window,
            consecutive_failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            not_permitted: AtomicU64::new(0),
            slow: Mutex::new(Slow {
                attempts: 0,
                half_open: WindowCounts::default(),
                half_open_permits: 0,
                half_open_deadline: None,
                carried: None,
                fatal_reason: None,
                published_failure_rate: false,
                published_slow_rate: false,
            }),
            timed,
            slow_after_ticks: if slow_after_nanos == u64::MAX {
                u64::MAX
            } else {
                crate::clock::ticks_within(slow_after_nanos)
            },
            config,
        };
        let core = Arc::new(core);
        let lane = || {
            Arc::new(Lane {
                core: Arc::clone(&core),
            })
        };
        let home = lane();
        let lanes: Box<[Arc<Lane>]> = std::iter::once(Arc::clone(&home))
            .chain((1..lane_count()).map(|_| lane()))
            .collect();
        let breaker = CircuitBreaker {
            shared: Arc::new(Shared {
                mask: lanes.len().saturating_sub(1),
                core,
                home,
                lanes,
            }),
        };
        if initial != CircuitState::Closed {
            let mut slow = lock(&breaker.shared.core.slow);
            if initial == CircuitState::Open {
                slow.attempts = 1;
            }
            breaker
                .shared
                .core
                .set_state(&mut slow, initial, Instant::now());
        }
        breaker
    }

    /// The breaker's name (its key, for a keyed breaker).
    pub fn name(&self) -> &str {
        &self.shared.core.config.name
    }

    /// The state. Half-open's maximum wait is applied here too, so an idle half-open breaker
    /// reads as open (or closed) once it has passed; open turns half-open only when a call
    /// asks (resilience4j's lazy transition).
    pub fn state(&self) -> CircuitState {
        let word = self.shared.core.word.load(Ordering::Acquire);
        let state = decode(word);
        if state == CircuitState::HalfOpen
            && self.shared.core.config.max_wait_in_half_open.is_some()
        {
            let mut slow = lock(&self.shared.core.slow);
            self.shared.core.expire_half_open(&mut slow, Instant::now());
            return decode(self.shared.core.word.load(Ordering::Acquire));
        }
        state
    }

    /// The metrics of the current state.
    pub fn metrics(&self) -> CircuitMetrics {
        let state = self.state();
        let slow = lock(&self.shared.core.slow);
        let (counts, minimum) = match state {
            CircuitState::HalfOpen => (slow.half_open, self.shared.core.config.half_open_minimum()),
            CircuitState::Open | CircuitState::Fatal => slow.carried.unwrap_or((
                WindowCounts::default(),
                self.shared.core.config.closed_minimum(),
            )),
            CircuitState::Disabled | CircuitState::ForcedOpen => (
                WindowCounts::default(),
                self.shared.core.config.closed_minimum(),
            ),
            CircuitState::Closed | CircuitState::MetricsOnly => (
                self.shared.core.closed_snapshot(),
                self.shared.core.config.closed_minimum(),
            ),
        };
        let below = counts.calls == 0 || counts.calls < minimum;
        CircuitMetrics {
            state,
            failure_rate: if below { -1.0 } else { counts.failure_rate() },
            slow_call_rate: if below { -1.0 } else { counts.slow_call_rate() },
            buffered_calls: counts.calls,
            failed_calls: counts.failed,
            slow_calls: counts.slow,
            not_permitted_calls: self.shared.core.not_permitted.load(Ordering::Relaxed),
        }
    }

    /// Asks to make a call. `Ok` carries the [`Permit`] to report the outcome with; `Err` is
    /// the [`ErrorKind::CircuitOpen`] error saying why and, when known, how long until a trial.
    ///
    /// Closed: one atomic load (plus a clock read when calls are timed). Open: admitted only
    /// strictly after the open wait, which turns the breaker half-open; half-open: admitted
    /// while trial permits last.
    pub fn try_acquire(&self) -> Result<Permit, Error> {
        self.shared.core.acquire(self.lane()).map_err(|rejection| {
            self.shared
                .core
                .reject(rejection.state, rejection.retry_after, rejection.reason)
        })
    }

    /// [`try_acquire`](Self::try_acquire) with the closed state's admission inline (the layer's
    /// path): one load of the state word, then the permit; every other state goes the general
    /// way.
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Permit, Error> {
        let word = self.shared.core.word.load(Ordering::Acquire);
        if word & STATE_MASK == CLOSED {
            return Ok(Permit::new(self.lane(), word, PermitKind::Closed));
        }
        self.try_acquire()
    }

    /// Moves to `state`, following resilience4j's transition table: every state may go to
    /// itself (silently, with fresh metrics), to closed, disabled, forced-open and
    /// metrics-only; closed → open; open → half-open; half-open → open or closed; forced-open,
    /// disabled and fatal → open or half-open. Closed → half-open and metrics-only → open or
    /// half-open are refused with [`ErrorKind::Config`]; the fatal state is only entered on a
    /// 401/402.
    pub fn transition_to(&self, state: CircuitState) -> Result<(), Error> {
        let mut slow = lock(&self.shared.core.slow);
        let from = decode(self.shared.core.word.load(Ordering::Acquire));
        let legal = match (from, state) {
            (_, CircuitState::Fatal) => from == CircuitState::Fatal,
            (a, b) if a == b => true,
            (
                _,
                CircuitState::Closed
                | CircuitState::Disabled
                | CircuitState::ForcedOpen
                | CircuitState::MetricsOnly,
            ) => true,
            (CircuitState::Closed, CircuitState::Open) => true,
            (CircuitState::Open, CircuitState::HalfOpen) => true,
            (CircuitState::HalfOpen, CircuitState::Open) => true,
            (
                CircuitState::ForcedOpen | CircuitState::Disabled | CircuitState::Fatal,
                CircuitState::Open | CircuitState::HalfOpen,
            ) => true,
            _ => false,
        };
        if !legal {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "circuit breaker {:?} tried an illegal state transition from {from} to {state}",
                    self.shared.core.config.name
                ),
            ));
        }
        if state == CircuitState::Open {
            slow.attempts += 1;
        }
        self.shared.core.set_state(&mut slow, state, Instant::now());
        Ok(())
    }

    /// Opens for exactly `wait` (the open-wait function and the attempt count are untouched).
    pub fn open_for(&self, wait: Duration) {
        self.open_until(Instant::now() + wait);
    }

    /// Opens until `deadline`: calls are refused until strictly after it.
    pub fn open_until(&self, deadline: Instant) {
        let mut slow = lock(&self.shared.core.slow);
        let now = Instant::now();
        self.shared
            .core
            .set_state(&mut slow, CircuitState::Open, now);
        self.shared.core.open_until.store(
            self.shared.core.nanos_since_base(deadline),
            Ordering::Release,
        );
    }

    /// Forces the breaker open: every call is refused until another transition.
    pub fn force_open(&self) {
        let mut slow = lock(&self.shared.core.slow);
        self.shared
            .core
            .set_state(&mut slow, CircuitState::ForcedOpen, Instant::now());
    }

    /// Back to closed with empty metrics, whatever the state (e.g. after topping up the balance
    /// that put the breaker in its fatal state). Publishes a reset event.
    pub fn reset(&self) {
        let mut slow = lock(&self.shared.core.slow);
        self.shared
            .core
            .set_state(&mut slow, CircuitState::Closed, Instant::now());
        let name = &*self.shared.core.config.name;
        tracing::info!(breaker = name, "circuit breaker reset");
        self.shared
            .core
            .publish(&CircuitEvent::Reset { name }, true);
    }
}

struct Rejection {
    state: CircuitState,
    retry_after: Option<Duration>,
    reason: CircuitOpenReason,
}

impl Core {
    fn nanos_since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn open_deadline(&self) -> Instant {
        self.base + Duration::from_nanos(self.open_until.load(Ordering::Acquire))
    }

    pub(crate) fn closed_snapshot(&self) -> WindowCounts {
        match &self.window {
            ClosedWindow::Count(window) => window.snapshot(),
            ClosedWindow::Time(window) => window.snapshot(
                Instant::now()
                    .saturating_duration_since(self.base)
                    .as_secs(),
            ),
        }
    }

    fn acquire(&self, lane: &Arc<Lane>) -> Result<Permit, Rejection> {
        let word = self.word.load(Ordering::Acquire);
        match decode(word) {
            CircuitState::Closed => Ok(Permit::new(lane, word, PermitKind::Closed)),
            CircuitState::MetricsOnly => Ok(Permit::new(lane, word, PermitKind::MetricsOnly)),
            CircuitState::Disabled => Ok(Permit::new(lane, word, PermitKind::Disabled)),
            CircuitState::ForcedOpen => Err(Rejection {
                state: CircuitState::ForcedOpen,
                retry_after: None,
                reason: CircuitOpenReason::Forced,
            }),
            CircuitState::Open | CircuitState::Fatal => {
                let now = Instant::now();
                let deadline = self.open_deadline();
                if now > deadline {
                    return self.acquire_slow(lane, now);
                }
                let state = decode(word);
                let reason = match state {
                    CircuitState::Fatal => CircuitOpenReason::Fatal(
                        lock(&self.slow)
                            .fatal_reason
                            .unwrap_or(AuthFailure::InvalidKey),
                    ),
                    _ => CircuitOpenReason::Unhealthy,
                };
                Err(Rejection {
                    state,
                    retry_after: Some(deadline - now),
                    reason,
                })
            }
            CircuitState::HalfOpen => self.acquire_slow(lane, Instant::now()),
        }
    }

    /// Open past its wait, or half-open: under the lock.
    fn acquire_slow(&self, lane: &Arc<Lane>, now: Instant) -> Result<Permit, Rejection> {
        let mut slow = lock(&self.slow);
        let mut state = decode(self.word.load(Ordering::Acquire));
        if matches!(state, CircuitState::Open | CircuitState::Fatal) && now > self.open_deadline() {
            self.set_state(&mut slow, CircuitState::HalfOpen, now);
            state = CircuitState::HalfOpen;
        }
        if state == CircuitState::HalfOpen {
            self.expire_half_open(&mut slow, now);
            state = decode(self.word.load(Ordering::Acquire));
        }
        let word = self.word.load(Ordering::Acquire);
        match state {
            CircuitState::HalfOpen if slow.half_open_permits > 0 => {
                slow.half_open_permits -= 1;
                Ok(Permit::new(lane, word, PermitKind::HalfOpen))
            }
            CircuitState::HalfOpen => Err(Rejection {
                state,
                retry_after: None,
                reason: CircuitOpenReason::Unhealthy,
            }),
            CircuitState::Closed => Ok(Permit::new(lane, word, PermitKind::Closed)),
            CircuitState::Open | CircuitState::Fatal => Err(Rejection {
                state,
                retry_after: Some(self.open_deadline().saturating_duration_since(now)),
                reason: match slow.fatal_reason {
                    Some(reason) if state == CircuitState::Fatal => {
                        CircuitOpenReason::Fatal(reason)
                    }
                    _ => CircuitOpenReason::Unhealthy,
                },
            }),
            other => {
                // A concurrent operator transition: start over on the new state.
                drop(slow);
                let _ = other;
                self.acquire(lane)
            }
        }
    }

    /// Leaves half-open once its maximum wait has passed.
    fn expire_half_open(&self, slow: &mut Slow, now: Instant) {
        if decode(self.word.load(Ordering::Acquire)) != CircuitState::HalfOpen {
            return;
        }
        if let Some(deadline) = slow.half_open_deadline
            && now >= deadline
        {
            let to = self.config.after_half_open_wait;
            if to == CircuitState::Open {
                slow.carried = Some((slow.half_open, self.config.half_open_minimum()));
                slow.attempts += 1;
            }
            self.set_state(slow, to, now);
        }
    }

    fn reject(
        &self,
        state: CircuitState,
        retry_after: Option<Duration>,
        reason: CircuitOpenReason,
    ) -> Error {
        self.not_permitted.fetch_add(1, Ordering::Relaxed);
        let name = &*self.config.name;
        tracing::debug!(breaker = name, state = %state, ?retry_after, "circuit breaker refused a call");
        self.publish(&CircuitEvent::NotPermitted { name, state }, false);
        // The name is already fit for messages (escaped and capped when it was configured).
        let message = match retry_after {
            Some(wait) => format!(
                "breaker \"{name}\" is {state}; the next trial call is allowed in {:.3}s",
                wait.as_secs_f64()
            ),
            None if state == CircuitState::HalfOpen => {
                format!("breaker \"{name}\" is {state} and its trial calls are all in flight")
            }
            None => format!("breaker \"{name}\" is {state}; it waits for an operator"),
        };
        let error = Error::new(ErrorKind::CircuitOpen(reason), message);
        match retry_after {
            Some(wait) => error.with_retry_after(wait),
            None => error,
        }
    }

    pub(crate) fn publish(&self, event: &CircuitEvent<'_>, force: bool) {
        if let Some(listener) = &self.config.listener {
            if !force {
                let state = decode(self.word.load(Ordering::Relaxed));
                if matches!(state, CircuitState::Disabled | CircuitState::ForcedOpen) {
                    return;
                }
            }
            listener.on_event(event);
        }
    }

    /// Moves to `to` with a new generation and fresh metrics (open keeps the tripping window).
    fn set_state(&self, slow: &mut Slow, to: CircuitState, now: Instant) {
        let old = self.word.load(Ordering::Acquire);
        let from = decode(old);
        match to {
            CircuitState::Closed | CircuitState::MetricsOnly => {
                match &self.window {
                    ClosedWindow::Count(window) => window.reset(),
                    ClosedWindow::Time(window) => window.reset(),
                }
                self.consecutive_failures.store(0, Ordering::Relaxed);
                slow.carried = None;
                slow.published_failure_rate = false;
                slow.published_slow_rate = false;
                if to == CircuitState::Closed {
                    slow.attempts = 0;
                }
            }
            CircuitState::Open => {
                let wait = self.config.open_wait.duration(slow.attempts);
                self.open_until
                    .store(self.nanos_since_base(now + wait), Ordering::Release);
            }
            CircuitState::HalfOpen => {
                slow.half_open = WindowCounts::default();
                slow.half_open_permits = self.config.half_open_calls;
                slow.half_open_deadline = self.config.max_wait_in_half_open.map(|d| now + d);
            }
            CircuitState::Fatal => {
                let wait = self.config.fatal_wait.unwrap_or(Duration::from_secs(1800));
                self.open_until
                    .store(self.nanos_since_base(now + wait), Ordering::Release);
            }
            CircuitState::Disabled | CircuitState::ForcedOpen => {
                slow.carried = None;
            }
        }
        if to != CircuitState::Fatal {
            slow.fatal_reason = None;
        }
        if to != CircuitState::Open {
            self.not_permitted.store(0, Ordering::Relaxed);
        }
        let generation = (old >> STATE_BITS).wrapping_add(1);
        self.word
            .store((generation << STATE_BITS) | code(to), Ordering::Release);
        if from != to {
            let name = &*self.config.name;
            match to {
                CircuitState::Open | CircuitState::Fatal | CircuitState::ForcedOpen => {
                    tracing::warn!(breaker = name, from = %from, to = %to, "circuit breaker state changed")
                }
                _ => {
                    tracing::info!(breaker = name, from = %from, to = %to, "circuit breaker state changed")
                }
            }
            self.publish(&CircuitEvent::StateTransition { name, from, to }, true);
        }
    }

    fn verdict(&self, outcome: Outcome) -> Verdict {
        if outcome.counts_as_failure() {
            return Verdict::Failure;
        }
        match outcome {
            Outcome::Success => Verdict::Success,
            Outcome::Auth(reason) if self.config.fatal_wait.is_some() => Verdict::Fatal(reason),
            _ => Verdict::Ignored,
        }
    }

    fn is_slow(&self, duration: Option<Duration>) -> bool {
        match (duration, self.config.slow_call_duration) {
            (Some(duration), Some(threshold)) => {
                self.config.slow_call_rate_threshold.is_some() && duration > threshold
            }
            _ => false,
        }
    }

    fn exceeds(&self, counts: WindowCounts, minimum: u32) -> (bool, bool) {
        if counts.calls == 0 || counts.calls < minimum {
            return (false, false);
        }
        let failures = self
            .config
            .failure_rate_threshold
            .is_some_and(|threshold| counts.failure_rate() >= threshold);
        let slow = self
            .config
            .slow_call_rate_threshold
            .is_some_and(|threshold| counts.slow_call_rate() >= threshold);
        (failures, slow)
    }

    fn complete(
        &self,
        generation: u64,
        kind: PermitKind,
        verdict: Verdict,
        duration: Option<Duration>,
    ) {
        if kind == PermitKind::Disabled {
            return;
        }
        let slow = self.is_slow(duration);
        if self.config.listener.is_some() {
            let call_kind = match verdict {
                Verdict::Success => CallKind::Successful,
                Verdict::Failure => CallKind::Failed,
                Verdict::Ignored => CallKind::Ignored,
                Verdict::Fatal(_) => CallKind::Fatal,
            };
            let name = &*self.config.name;
            self.publish(
                &CircuitEvent::Recorded {
                    name,
                    kind: call_kind,
                    slow,
                    duration,
                },
                false,
            );
        }
        let sample = match verdict {
            Verdict::Ignored => {
                if kind == PermitKind::HalfOpen {
                    self.release(generation);
                }
                return;
            }
            Verdict::Fatal(reason) => return self.enter_fatal(kind, reason),
            Verdict::Success => Sample {
                failed: false,
                slow,
            },
            Verdict::Failure => Sample { failed: true, slow },
        };
        match kind {
            PermitKind::Closed | PermitKind::MetricsOnly => {
                self.record_closed(generation, kind, sample)
            }
            PermitKind::HalfOpen => self.record_half_open(generation, sample),
            PermitKind::Disabled => {}
        }
    }

    /// Settles a closed-state success that is not slow, when that changes nothing: the permit
    /// is stale (the generation rule drops its outcome), or the count window is full of fast
    /// successes and no failure run is counting, where [`record_closed`](Self::record_closed)
    /// would write nothing either. `false`: the general path must record it. `admitted`: the
    /// state word the call was admitted under (closed), possibly with the permit's armed bit.
    #[inline]
    fn settle_fast_success(&self, admitted: u64) -> bool {
        if self.word.load(Ordering::Acquire) != (admitted & !STATE_MASK) | CLOSED {
            return true;
        }
        let ClosedWindow::Count(window) = &self.window else {
            return false;
        };
        window.is_full_of_successes()
            && (self.config.consecutive_failures.is_none()
                || self.consecutive_failures.load(Ordering::Relaxed) == 0)
    }

    fn record_closed(&self, generation: u64, kind: PermitKind, sample: Sample) {
        let state = if kind == PermitKind::Closed {
            CircuitState::Closed
        } else {
            CircuitState::MetricsOnly
        };
        let expected = (generation << STATE_BITS) | code(state);
        // The generation rule: a call admitted before the last transition tells nothing about
        // the state since; its outcome is dropped.
        if self.word.load(Ordering::Acquire) != expected {
            return;
        }
        let counts = match &self.window {
            ClosedWindow::Count(window) => window.record(sample),
            ClosedWindow::Time(window) => window.record(
                sample,
                Instant::now()
                    .saturating_duration_since(self.base)
                    .as_secs(),
            ),
        };
        let mut consecutive_trip = false;
        if let Some(limit) = self.config.consecutive_failures {
            if sample.failed {
                let run = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                consecutive_trip = run >= limit;
            } else if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
        }
        // A window without a failed or slow call cannot trip on its rates (the common case of
        // a healthy upstream): skip the arithmetic.
        if counts.failed == 0 && counts.slow == 0 {
            if consecutive_trip {
                self.trip_closed(expected, counts, false, false);
            }
            return;
        }
        let (failures, slow_calls) = self.exceeds(counts, self.config.closed_minimum());
        if failures || slow_calls || consecutive_trip {
            self.trip_closed(expected, counts, failures, slow_calls);
        }
    }

    fn trip_closed(&self, expected: u64, counts: WindowCounts, failures: bool, slow_calls: bool) {
        let mut slow = lock(&self.slow);
        if self.word.load(Ordering::Acquire) != expected {
            return;
        }
        let name = &*self.config.name;
        let metrics_only = decode(expected) == CircuitState::MetricsOnly;
        if failures && !(metrics_only && slow.published_failure_rate) {
            slow.published_failure_rate = true;
            self.publish(
                &CircuitEvent::FailureRateExceeded {
                    name,
                    rate: counts.failure_rate(),
                },
                false,
            );
        }
        if slow_calls && !(metrics_only && slow.published_slow_rate) {
            slow.published_slow_rate = true;
            self.publish(
                &CircuitEvent::SlowCallRateExceeded {
                    name,
                    rate: counts.slow_call_rate(),
                },
                false,
            );
        }
        if metrics_only {
            return;
        }
        slow.carried = Some((counts, self.config.closed_minimum()));
        slow.attempts += 1;
        self.set_state(&mut slow, CircuitState::Open, Instant::now());
    }

    fn record_half_open(&self, generation: u64, sample: Sample) {
        let mut slow = lock(&self.slow);
        let expected = (generation << STATE_BITS) | code(CircuitState::HalfOpen);
        if self.word.load(Ordering::Acquire) != expected {
            return;
        }
        slow.half_open.add(sample);
        let counts = slow.half_open;
        let consecutive_trip = self.config.consecutive_failures.is_some() && counts.failed > 0;
        let (failures, slow_calls) = self.exceeds(counts, self.config.half_open_minimum());
        let now = Instant::now();
        if failures || slow_calls || consecutive_trip {
            let name = &*self.config.name;
            if failures {
                self.publish(
                    &CircuitEvent::FailureRateExceeded {
                        name,
                        rate: counts.failure_rate(),
                    },
                    false,
                );
            }
            if slow_calls {
                self.publish(
                    &CircuitEvent::SlowCallRateExceeded {
                        name,
                        rate: counts.slow_call_rate(),
                    },
                    false,
                );
            }
            slow.carried = Some((counts, self.config.half_open_minimum()));
            slow.attempts += 1;
            self.set_state(&mut slow, CircuitState::Open, now);
        } else if counts.calls >= self.config.half_open_minimum() {
            self.set_state(&mut slow, CircuitState::Closed, now);
        }
    }

    fn enter_fatal(&self, kind: PermitKind, reason: AuthFailure) {
        if kind == PermitKind::MetricsOnly {
            return;
        }
        let mut slow = lock(&self.slow);
        let state = decode(self.word.load(Ordering::Acquire));
        // A 401/402 says the key or the balance is unusable whenever the call was admitted,
        // so the generation rule does not apply here; operator states win.
        if matches!(
            state,
            CircuitState::Disabled | CircuitState::ForcedOpen | CircuitState::MetricsOnly
        ) {
            return;
        }
        let name = &*self.config.name;
        tracing::error!(
            breaker = name,
            reason = ?reason,
            "circuit breaker entered its fatal state: DeepSeek refused the key or the balance"
        );
        slow.fatal_reason = Some(reason);
        self.set_state(&mut slow, CircuitState::Fatal, Instant::now());
        slow.fatal_reason = Some(reason);
    }

    /// Gives a half-open permit back (an ignored or cancelled trial).
    fn release(&self, generation: u64) {
        let mut slow = lock(&self.slow);
        let expected = (generation << STATE_BITS) | code(CircuitState::HalfOpen);
        if self.word.load(Ordering::Acquire) == expected {
            slow.half_open_permits = (slow.half_open_permits + 1).min(self.config.half_open_calls);
        }
    }
}

/// Leave to make one call, from [`CircuitBreaker::try_acquire`]. Report how the call ended
/// with [`record`](Self::record); dropping it unrecorded is a cancellation (a half-open
/// trial permit is given back, or, with [`CancelPolicy::Failure`], it counts as a failure).
///
/// The outcome is dropped if the breaker changed state since the permit was taken (the
/// generation rule, see the [module docs](super)).
#[must_use = "a permit must be recorded; dropping it counts as a cancelled call"]
pub struct Permit {
    /// The lane of the thread that took it: its count is what the permit's clone and drop
    /// write (see [`Lane`]).
    lane: Arc<Lane>,
    /// `generation << 3 | kind << 1 | armed`: the generation bits sit where the state word
    /// keeps them, so the word the permit was admitted under is `tag & !STATE_MASK` plus the
    /// state's code, and the permit stays three words (it is moved with every call's future).
    tag: u64,
    start: Option<Stamp>,
}

/// The `armed` bit of a permit's tag: set until the outcome is recorded.
const ARMED: u64 = 1;

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.lane.core.config.name)
            .field("generation", &self.generation())
            .field("kind", &self.kind())
            .finish()
    }
}

impl Permit {
    /// A permit for a call admitted in `kind` under state word `word`, stamped when the breaker
    /// times calls (never in the disabled state, which records nothing).
    #[inline]
    fn new(lane: &Arc<Lane>, word: u64, kind: PermitKind) -> Permit {
        let timed = lane.core.timed && kind != PermitKind::Disabled;
        let kind_bits = match kind {
            PermitKind::Closed => 0,
            PermitKind::MetricsOnly => 1,
            PermitKind::HalfOpen => 2,
            PermitKind::Disabled => 3,
        };
        Permit {
            lane: Arc::clone(lane),
            tag: (word & !STATE_MASK) | (kind_bits << 1) | ARMED,
            start: if timed { Some(Stamp::now()) } else { None },
        }
    }

    #[inline]
    fn generation(&self) -> u64 {
        self.tag >> STATE_BITS
    }

    #[inline]
    fn kind(&self) -> PermitKind {
        match (self.tag >> 1) & 0b11 {
            0 => PermitKind::Closed,
            1 => PermitKind::MetricsOnly,
            2 => PermitKind::HalfOpen,
            _ => PermitKind::Disabled,
        }
    }

    /// Marks the permit recorded (its drop then does nothing).
    #[inline]
    fn disarm(&mut self) {
        self.tag &= !ARMED;
    }

    /// Records the call's outcome, timing it from when the permit was taken.
    pub fn record(self, outcome: Outcome) {
        let duration = self.elapsed();
        self.record_with_duration(outcome, duration);
    }

    /// Records the call's outcome with a duration measured by the caller (`None`: not timed).
    pub fn record_with_duration(mut self, outcome: Outcome, duration: Option<Duration>) {
        self.disarm();
        let verdict = self.lane.core.verdict(outcome);
        self.lane
            .core
            .complete(self.generation(), self.kind(), verdict, duration);
    }

    /// Whether this is a half-open trial call.
    pub fn is_trial(&self) -> bool {
        self.kind() == PermitKind::HalfOpen
    }

    /// Time since the permit was taken, when the breaker times calls.
    pub fn elapsed(&self) -> Option<Duration> {
        self.start.map(|start| start.elapsed())
    }

    /// Whether the call is timed (the breaker measures slow calls).
    pub(crate) fn is_timed(&self) -> bool {
        self.start.is_some()
    }

    /// Time from the permit to `at`, when the breaker times calls.
    pub(crate) fn duration_until(&self, at: Stamp) -> Option<Duration> {
        self.start.map(|start| at.duration_since(start))
    }

    pub(crate) fn core(&self) -> &Core {
        &self.lane.core
    }

    pub(crate) fn complete_verdict(mut self, verdict: Verdict, duration: Option<Duration>) {
        self.disarm();
        self.lane
            .core
            .complete(self.generation(), self.kind(), verdict, duration);
    }

    /// Records a success whose measured moment is `at` (`None`: now). The closed state's common
    /// case (not slow, the window full of fast successes, no listener to tell) is settled
    /// inline without writing shared memory; anything else goes through the general path.
    #[inline]
    pub(crate) fn complete_success(mut self, at: Option<Stamp>) {
        self.disarm();
        let span = self
            .start
            .map(|start| (start, at.unwrap_or_else(Stamp::now)));
        let core = &*self.lane.core;
        // Kind bits 0: a closed permit.
        if self.tag & (0b11 << 1) == 0
            && span.is_none_or(|(start, end)| end.ticks_since(start) <= core.slow_after_ticks)
            && core.config.listener.is_none()
            && core.settle_fast_success(self.tag)
        {
            return;
        }
        core.complete(
            self.generation(),
            self.kind(),
            Verdict::Success,
            span.map(|(start, end)| end.duration_since(start)),
        );
    }

    pub(crate) fn verdict_of(&self, outcome: Outcome) -> Verdict {
        self.lane.core.verdict(outcome)
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if self.tag & ARMED != 0 {
            self.cancel();
        }
    }
}

impl Permit {
    /// Dropped unrecorded: a cancelled call (see [`CancelPolicy`]).
    #[cold]
    #[inline(never)]
    fn cancel(&mut self) {
        self.disarm();
        match self.lane.core.config.cancel_policy {
            CancelPolicy::Failure => {
                let duration = self.elapsed();
                self.lane
                    .core
                    .complete(self.generation(), self.kind(), Verdict::Failure, duration);
            }
            CancelPolicy::Release => {
                if self.kind() == PermitKind::HalfOpen {
                    self.lane.core.release(self.generation());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A permit counts on its thread's lane, not on the shared state's count, so threads on
    /// one breaker do not write one line on every call; a permit keeps the state alive after
    /// the last handle is gone.
    #[test]
    fn permits_count_on_the_lanes_and_outlive_the_handles() {
        let breaker = CircuitBreaker::builder().build().unwrap();
        let core_count = Arc::strong_count(&breaker.shared.core);
        let lane_count = Arc::strong_count(breaker.lane());
        let permits: Vec<Permit> = (0..3).map(|_| breaker.try_acquire().unwrap()).collect();
        assert_eq!(Arc::strong_count(&breaker.shared.core), core_count);
        assert_eq!(Arc::strong_count(breaker.lane()), lane_count + 3);
        assert!(breaker.shared.lanes.len().is_power_of_two());
        assert_eq!(breaker.shared.mask, breaker.shared.lanes.len() - 1);
        drop(breaker);
        for permit in permits {
            permit.record(Outcome::Success);
        }
    }
}
