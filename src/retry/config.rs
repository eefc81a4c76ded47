//! The layer's settings and their builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::backoff::{Backoff, FastRandom, RandomSource};
use super::budget::{RetryBudget, TpsBudget};
use super::events::{Counters, RetryEvent, RetryListener};
use super::layer::RetryLayer;
use super::policy::{DeepSeekRetryPolicy, RetryPolicy};
use crate::classify::{Classify, DeepSeekClassifier};
use crate::error::{Error, ErrorKind};

/// gRPC's client-side cap on attempts (A6): `max_attempts` above it is treated as the cap
/// unless [`RetryLayerBuilder::attempt_cap`] raises it.
pub const DEFAULT_ATTEMPT_CAP: u32 = 5;

/// Which successful responses the layer holds back until it knows they will not need a retry
/// (see the [module docs](super#streams-and-the-commit-point)).
///
/// ```
/// use tower_deepseek::retry::Hold;
/// assert_eq!(Hold::default(), Hold::Streams);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Hold {
    /// Hand every response over as soon as its head arrives: a body failure is never retried.
    Off,
    /// Hold a streaming (`text/event-stream`) 2xx response until its first token, so that a
    /// keep-alive-only wait, a first-token timeout or a stream cut before any content are
    /// retried. Non-streaming responses pass straight through (the default).
    #[default]
    Streams,
    /// As `Streams`, and also read a non-streaming 2xx body to its end before handing it
    /// over, so that an answer stopped by `insufficient_system_resource` is retried. The
    /// body's frames are kept (not copied) while it is read.
    All,
}

pub(crate) struct RetryConfig {
    pub(crate) name: Arc<str>,
    pub(crate) backoff: Backoff,
    pub(crate) max_attempts: u32,
    pub(crate) max_retry_after: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) budget: Option<Arc<dyn RetryBudget>>,
    pub(crate) classifier: Arc<dyn Classify>,
    pub(crate) policy: Box<dyn RetryPolicy>,
    pub(crate) listener: Option<Box<dyn RetryListener>>,
    pub(crate) random: Box<dyn RandomSource>,
    pub(crate) hold: Hold,
    pub(crate) counters: Counters,
}

impl RetryConfig {
    #[inline]
    pub(crate) fn emit(&self, event: RetryEvent<'_>) {
        if let Some(listener) = &self.listener {
            listener.on_event(&event);
        }
    }
}

impl fmt::Debug for RetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryConfig")
            .field("name", &self.name)
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("max_retry_after", &self.max_retry_after)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("budget", &self.budget.is_some())
            .field("hold", &self.hold)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RetryLayer`]. Defaults: 3 attempts (the first call included), full-jitter
/// exponential back-off from 500 ms (factor 2, cap 30 s), `Retry-After` honoured up to 60 s,
/// no deadline and no per-attempt timeout, a shared [`TpsBudget::default`] (10 s, 10
/// retries/s, 20 %), DeepSeek's classifier and policy, [`Hold::Streams`].
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::retry::{Backoff, RetryLayer};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = RetryLayer::builder()
///     .max_attempts(4)
///     .backoff(Backoff::exponential(Duration::from_millis(200), 2.0, Duration::from_secs(5)))
///     .deadline(Duration::from_secs(120))
///     .attempt_timeout(Duration::from_secs(60))
///     .build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
pub struct RetryLayerBuilder {
    name: Arc<str>,
    backoff: Backoff,
    max_attempts: u32,
    attempt_cap: u32,
    max_retry_after: Duration,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    budget: Option<Arc<dyn RetryBudget>>,
    classifier: Arc<dyn Classify>,
    policy: Box<dyn RetryPolicy>,
    listener: Option<Box<dyn RetryListener>>,
    random: Box<dyn RandomSource>,
    hold: Hold,
}

impl fmt::Debug for RetryLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayerBuilder")
            .field("name", &self.name)
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("attempt_cap", &self.attempt_cap)
            .finish_non_exhaustive()
    }
}

impl Default for RetryLayerBuilder {
    fn default() -> Self {
        RetryLayerBuilder {
            name: Arc::from("deepseek"),
            backoff: Backoff::default(),
            max_attempts: 3,
            attempt_cap: DEFAULT_ATTEMPT_CAP,
            max_retry_after: Duration::from_secs(60),
            deadline: None,
            attempt_timeout: None,
            budget: Some(Arc::new(TpsBudget::default())),
            classifier: Arc::new(DeepSeekClassifier),
            policy: Box::new(DeepSeekRetryPolicy),
            listener: None,
            random: Box::new(FastRandom),
            hold: Hold::Streams,
        }
    }
}

impl RetryLayerBuilder {
    /// The layer's name in events (default `deepseek`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Attempts per call, the first included (default 3; 1 disables retries). Values above
    /// the [attempt cap](Self::attempt_cap) are treated as the cap.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The most attempts any setting may give a call (default [`DEFAULT_ATTEMPT_CAP`] = 5,
    /// as gRPC): a guard against a configuration that would multiply load on an outage.
    pub fn attempt_cap(mut self, cap: u32) -> Self {
        self.attempt_cap = cap;
        self
    }

    /// The back-off schedule (default: full-jitter exponential, 500 ms, ×2, cap 30 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest `Retry-After` honoured (default 60 s): a longer wait ends retrying and
    /// the caller gets the upstream's answer.
    pub fn max_retry_after(mut self, wait: Duration) -> Self {
        self.max_retry_after = wait;
        self
    }

    /// An overall deadline from `call` across all attempts and waits. A retry does not start
    /// when its wait would reach the deadline; an attempt running when it passes fails with
    /// [`TimeoutPhase::Deadline`](crate::classify::TimeoutPhase::Deadline).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// A bound on each attempt (until its response is handed over): expiry fails the attempt
    /// with [`TimeoutPhase::Attempt`](crate::classify::TimeoutPhase::Attempt), which is
    /// retried.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The shared retry budget (default [`TpsBudget::default`]). Pass a clone of a budget to
    /// share it between layers.
    pub fn budget(mut self, budget: impl RetryBudget) -> Self {
        self.budget = Some(Arc::new(budget));
        self
    }

    /// No retry budget: every retry the policy allows goes out.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// How responses, errors and body ends are classified (default [`DeepSeekClassifier`]).
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// Which failed attempts are retried (default [`DeepSeekRetryPolicy`]).
    pub fn policy(mut self, policy: impl RetryPolicy) -> Self {
        self.policy = Box::new(policy);
        self
    }

    /// A hook for [`RetryEvent`]s.
    pub fn listener(mut self, listener: impl RetryListener) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// The random source of the jitter (default [`FastRandom`]); inject one for exact tests.
    pub fn random(mut self, random: impl RandomSource) -> Self {
        self.random = Box::new(random);
        self
    }

    /// Which successful responses are held until they cannot need a retry (default
    /// [`Hold::Streams`]).
    pub fn hold(mut self, hold: Hold) -> Self {
        self.hold = hold;
        self
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<RetryLayer, Error> {
        let wrong = |message: String| Err(Error::new(ErrorKind::Config, message));
        if self.max_attempts == 0 {
            return wrong(
                "max_attempts is 0; it counts the first call, so use 1 for no retries".into(),
            );
        }
        if self.attempt_cap == 0 {
            return wrong("attempt_cap is 0; it must allow at least the first call".into());
        }
        self.backoff.validate()?;
        for (name, value) in [
            ("deadline", self.deadline),
            ("attempt_timeout", self.attempt_timeout),
        ] {
            if value == Some(Duration::ZERO) {
                return wrong(format!("{name} is zero; leave it unset for no bound"));
            }
        }
        Ok(RetryLayer::from_config(RetryConfig {
            name: self.name,
            backoff: self.backoff,
            max_attempts: self.max_attempts.min(self.attempt_cap),
            max_retry_after: self.max_retry_after,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            budget: self.budget,
            classifier: self.classifier,
            policy: self.policy,
            listener: self.listener,
            random: self.random,
            hold: self.hold,
            counters: Counters::default(),
        }))
    }
}
