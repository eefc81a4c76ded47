//! The preset: every layer of this crate stacked in the right order around a DeepSeek HTTP
//! service, in one line.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
//! use tower_deepseek::stack::DeepSeekStack;
//! use tower_deepseek::upstream::Upstream;
//!
//! # fn main() -> Result<(), tower_deepseek::Error> {
//! let transport = ServiceBuilder::new()
//!     .layer(DeepSeekStack::default())
//!     .service(Upstream::new()?);
//! let client = DeepSeekClient::builder().api_key("sk-...").build(transport)?;
//! let answer = async { client.chat(ChatRequest::new("deepseek-v4-flash").user("Hi")).await };
//! # drop(answer);
//! # Ok(())
//! # }
//! ```
//!
//! # The order, outermost first, and why
//!
//! | # | layer | default | why here |
//! |---|---|---|---|
//! | 1 | [`PropagateTraceIdLayer`] | on | Outermost, so every attempt (a retry, a fallback's re-send) carries the caller's trace ID, and the call's span covers all of them. |
//! | 2 | [`MetricsLayer::client`](crate::metrics::MetricsLayer::client) | off until [`metrics`](DeepSeekStackBuilder::metrics) | Above the limits and the retries: one call is counted once, with the outcome the caller got (a refusal as `rejected`, a retried 503 that ended in a 200 as a success), and its duration is what the caller waited. |
//! | 3 | [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) | off | Above the retries: the limiter counts each *call* once, whatever the retries do, so a retry never spends a permit (the retry budget bounds retries instead). A refused call never takes a concurrency slot. |
//! | 4 | [`ConcurrencyLimitLayer`] | on, 500 in flight, shed at once | Above the retries: a call holds one slot across its attempts and back-off, and has at most one attempt in flight, so the limit bounds upstream requests too. |
//! | 5 | [`RetryLayer`] | on, 3 attempts | Outside the breaker: the breaker sees every attempt, and an open breaker's refusal (or its fallback's answer) is final: the retry layer does not retry a local rejection. |
//! | 6 | [`CircuitBreakerLayer`] | on | Sees each attempt and its real outcome, a timeout included, so it learns how the upstream is doing, not how the retries ended. |
//! | 7 | [`StreamTimeoutLayer`] | on | Innermost, around the upstream: each attempt gets its own headers, first-token and idle bounds, and an expiry is an attempt's failure that the breaker counts and the retry layer retries while nothing was delivered. |
//!
//! This is resilience4j's own order (Retry around CircuitBreaker around the time limiter),
//! with the call-level limits (rate and concurrency) above the retries.
//!
//! # Defaults, from the DeepSeek reference
//!
//! - **Timeouts** ([`default_timeouts`]): headers 60 s (DeepSeek answers a head at once and
//!   then keeps the connection alive), first token 600 s (DeepSeek closes a request whose
//!   inference has not started after 10 minutes; keep-alives do not count), idle 120 s.
//! - **Retry** ([`default_retry`]): the retry layer's defaults (3 attempts, full-jitter
//!   back-off, `Retry-After` honoured, a 20 % budget) with [`Hold::All`], so an answer stopped by
//!   `insufficient_system_resource` is retried before the caller sees it, and a deadline of
//!   headers + 2 × first token over all attempts.
//! - **Circuit breaker** ([`default_circuit_breaker`]): 50 % failures over the last 100
//!   calls, decided from 20 calls (resilience4j's 100 is too many for most DeepSeek clients),
//!   open 30 s; 429 and 4xx are not failures; 401/402 fail fast for 30 minutes.
//! - **Concurrency** ([`default_concurrency`]): 500 calls in flight, the lower of DeepSeek
//!   V4's account concurrency caps (500 pro, 2,500 flash), shed at once with
//!   [`ErrorKind::Overloaded`](crate::ErrorKind::Overloaded). Raise it for a flash-only
//!   account.
//! - **Rate limit**: off. DeepSeek publishes no fixed request quota (its limit is the
//!   account's concurrency, above); add one with [`rate_limit`](DeepSeekStackBuilder::rate_limit)
//!   or [`rate_limit_settings`](DeepSeekStackBuilder::rate_limit_settings) when your account
//!   or your budget has one.
//! - **Metrics**: off until a [`Metrics`](crate::metrics::Metrics) handle is given (it needs
//!   your registry or meter).
//!
//! # Each piece optional, each replaceable
//!
//! [`DeepSeekStack::builder`] starts from the defaults. For each piece:
//! `without_*` removes it (the slot becomes [`Identity`]: no code, no cost), `*_settings`
//! configures the crate's layer (built in [`build`](DeepSeekStackBuilder::build)), and the
//! plain name (`retry`, `circuit_breaker`, ...) puts any [`Layer`] in its place: a keyed
//! breaker with a fallback, tower's own layers, a `ServiceBuilder` of several. The pieces are
//! the stack's type parameters, so the stack is exactly the layers in it: it adds no
//! allocation, box or dynamic call of its own to a call.
//!
//! With [`metrics`](DeepSeekStackBuilder::metrics), the pieces built from settings (retry,
//! circuit breaker, rate limit) report their events to the same
//! [`Metrics`](crate::metrics::Metrics) handle (replacing a listener set on those settings); a
//! layer given whole is used as it is.
//!
//! The adaptive limit ([`AdaptiveConcurrencyLayer`](crate::concurrency::AdaptiveConcurrencyLayer))
//! learns from the outcomes it sees: in the concurrency slot it sees calls (a retried 503 that
//! ended in a 200 is one slow success). To let it learn from every attempt, put it under the
//! retries, with the breaker:
//! `.circuit_breaker(ServiceBuilder::new().layer(breaker).layer(adaptive))`.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_deepseek::concurrency::ConcurrencyLimitLayer;
//! use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
//! use tower_deepseek::metrics::Metrics;
//! use tower_deepseek::rate_limit::RateLimitLayer;
//! use tower_deepseek::stack::{self, DeepSeekStack};
//! use tower_deepseek::upstream::Upstream;
//!
//! # fn main() -> Result<(), tower_deepseek::Error> {
//! let metrics = Metrics::builder().build()?; // with `.prometheus(registry)` in real use
//! let stack = DeepSeekStack::builder()
//!     .metrics(&metrics)
//!     // Settings: built by the stack, reporting to `metrics`.
//!     .rate_limit_settings(RateLimitLayer::builder().per_minute(600).burst(60))
//!     .retry_settings(stack::default_retry().max_attempts(4))
//!     .timeouts_settings(stack::default_timeouts().total(Duration::from_secs(900)))
//!     // A layer given whole, used as it is.
//!     .concurrency(
//!         ConcurrencyLimitLayer::builder()
//!             .max_in_flight(2_500)
//!             .max_wait(Duration::from_secs(5))
//!             .build()?,
//!     )
//!     .without_trace_id()
//!     .build()?;
//! let transport = ServiceBuilder::new().layer(stack).service(Upstream::new()?);
//! let client = DeepSeekClient::builder().api_key("sk-...").build(transport)?;
//! let answer = async { client.chat(ChatRequest::new("deepseek-v4-flash").user("Hi")).await };
//! # drop(answer);
//! # Ok(())
//! # }
//! ```

mod builder;

use std::time::Duration;

use tower_layer::{Identity, Layer};

use crate::circuit_breaker::{
    CircuitBreakerLayer, CircuitBreakerLayerBuilder, CircuitBreakerService,
};
use crate::concurrency::{
    ConcurrencyLimitLayer, ConcurrencyLimitLayerBuilder, ConcurrencyLimitService,
};
use crate::retry::{Hold, RetryLayer, RetryLayerBuilder, RetryService};
use crate::timeout::{StreamTimeout, StreamTimeoutLayer, StreamTimeoutLayerBuilder};
use crate::trace_id::{PropagateTraceId, PropagateTraceIdLayer};

pub use builder::{DeepSeekStackBuilder, StackPart, Use};

/// The default time to the response head: DeepSeek answers a head at once and then keeps the
/// connection alive while the request waits.
pub const DEFAULT_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// The default time to the first token: DeepSeek closes a request whose inference has not
/// started after 10 minutes.
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(600);
/// The default longest gap between two chunks once a stream has started.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The default concurrency limit: the lower of DeepSeek V4's account caps (500 pro, 2,500
/// flash).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 500;

/// The stream timeouts of [`DeepSeekStack::default`]: headers 60 s, first token 600 s, idle
/// 120 s. A starting point for [`DeepSeekStackBuilder::timeouts_settings`].
///
/// ```
/// use std::time::Duration;
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let timeouts = tower_deepseek::stack::default_timeouts().idle(Duration::from_secs(30)).build()?;
/// # let _ = timeouts;
/// # Ok(())
/// # }
/// ```
pub fn default_timeouts() -> StreamTimeoutLayerBuilder {
    StreamTimeoutLayer::builder()
        .headers(DEFAULT_HEADERS_TIMEOUT)
        .first_token(DEFAULT_FIRST_TOKEN_TIMEOUT)
        .idle(DEFAULT_IDLE_TIMEOUT)
}

/// The retry settings of [`DeepSeekStack::default`]: the retry layer's defaults with
/// [`Hold::All`] and a deadline of headers + 2 × first token over all attempts. A starting
/// point for [`DeepSeekStackBuilder::retry_settings`].
///
/// ```
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let retry = tower_deepseek::stack::default_retry().max_attempts(2).build()?;
/// # let _ = retry;
/// # Ok(())
/// # }
/// ```
pub fn default_retry() -> RetryLayerBuilder {
    RetryLayer::builder()
        .hold(Hold::All)
        .deadline(DEFAULT_HEADERS_TIMEOUT + DEFAULT_FIRST_TOKEN_TIMEOUT * 2)
}

/// The circuit breaker settings of [`DeepSeekStack::default`]: 50 % failures over the last
/// 100 calls, decided from 20 calls, open 30 s (the rest as
/// [`CircuitBreakerBuilder`](crate::circuit_breaker::CircuitBreakerBuilder)'s defaults). A
/// starting point for [`DeepSeekStackBuilder::circuit_breaker_settings`].
///
/// ```
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let breaker = tower_deepseek::stack::default_circuit_breaker().minimum_calls(10).build()?;
/// assert_eq!(breaker.breaker().name(), "deepseek");
/// # Ok(())
/// # }
/// ```
pub fn default_circuit_breaker() -> CircuitBreakerLayerBuilder {
    CircuitBreakerLayer::builder()
        .minimum_calls(20)
        .open_wait(Duration::from_secs(30))
}

/// The concurrency limit of [`DeepSeekStack::default`]: [`DEFAULT_MAX_IN_FLIGHT`] calls, shed
/// at once. A starting point for [`DeepSeekStackBuilder::concurrency_settings`].
///
/// ```
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let flash = tower_deepseek::stack::default_concurrency().max_in_flight(2_500).build()?;
/// assert_eq!(flash.limit(), 2_500);
/// # Ok(())
/// # }
/// ```
pub fn default_concurrency() -> ConcurrencyLimitLayerBuilder {
    ConcurrencyLimitLayer::builder()
        .name("deepseek")
        .max_in_flight(DEFAULT_MAX_IN_FLIGHT)
}

/// The outbound stack around a DeepSeek HTTP service: trace ID, metrics, rate limit,
/// concurrency limit, retry, circuit breaker, stream timeouts (outermost first; see the
/// [module docs](self) for why, and for the defaults).
///
/// Each type parameter is one piece, [`Identity`] when it is off; the defaults are the
/// default stack. Build one with [`DeepSeekStack::default`] or [`DeepSeekStack::builder`].
/// Clones share the pieces' state (one breaker, one limiter, one retry budget).
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_deepseek::deepseek::DeepSeekClient;
/// use tower_deepseek::stack::DeepSeekStack;
/// use tower_deepseek::upstream::Upstream;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let stack = DeepSeekStack::default();
/// let breaker = stack.circuit_breaker().breaker().clone(); // for a health check
/// let client = DeepSeekClient::builder()
///     .api_key("sk-...")
///     .build(ServiceBuilder::new().layer(stack).service(Upstream::new()?))?;
/// # let _ = (client, breaker);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DeepSeekStack<
    T = PropagateTraceIdLayer,
    M = Identity,
    R = Identity,
    C = ConcurrencyLimitLayer,
    Re = RetryLayer,
    B = CircuitBreakerLayer,
    To = StreamTimeoutLayer,
> {
    trace_id: T,
    metrics: M,
    rate_limit: R,
    concurrency: C,
    retry: Re,
    circuit_breaker: B,
    timeouts: To,
}

/// The service the default [`DeepSeekStack`] makes around `S`.
pub type DeepSeekStackService<S> = PropagateTraceId<
    ConcurrencyLimitService<RetryService<CircuitBreakerService<StreamTimeout<S>>>>,
>;

/// The builder that [`DeepSeekStack::builder`] returns, with every piece at its default.
pub type DefaultStackBuilder = DeepSeekStackBuilder<
    Use<PropagateTraceIdLayer>,
    Identity,
    Identity,
    ConcurrencyLimitLayerBuilder,
    RetryLayerBuilder,
    CircuitBreakerLayerBuilder,
    StreamTimeoutLayerBuilder,
>;

impl DeepSeekStack {
    /// A builder starting from the defaults (see the [module docs](self)).
    pub fn builder() -> DefaultStackBuilder {
        DeepSeekStackBuilder {
            trace_id: Use(PropagateTraceIdLayer::new()),
            metrics: Identity::new(),
            rate_limit: Identity::new(),
            concurrency: default_concurrency(),
            retry: default_retry(),
            circuit_breaker: default_circuit_breaker(),
            timeouts: default_timeouts(),
            handle: None,
        }
    }
}

impl Default for DeepSeekStack {
    /// Every piece at its default: trace ID, concurrency limit, retry, circuit breaker and
    /// stream timeouts; no metrics, no rate limit.
    fn default() -> Self {
        // Proven here: the default settings are constants within every builder's bounds (the
        // test `the_default_settings_build` builds them), and no metrics handle is registered.
        DeepSeekStack::builder()
            .build()
            .expect("the default stack settings are valid")
    }
}

impl<T, M, R, C, Re, B, To> DeepSeekStack<T, M, R, C, Re, B, To> {
    /// The trace ID piece.
    pub fn trace_id(&self) -> &T {
        &self.trace_id
    }

    /// The metrics piece.
    pub fn metrics(&self) -> &M {
        &self.metrics
    }

    /// The rate limit piece.
    pub fn rate_limit(&self) -> &R {
        &self.rate_limit
    }

    /// The concurrency limit piece (e.g. its `in_flight()` for a gauge).
    pub fn concurrency(&self) -> &C {
        &self.concurrency
    }

    /// The retry piece (e.g. its `metrics()`).
    pub fn retry(&self) -> &Re {
        &self.retry
    }

    /// The circuit breaker piece (e.g. its `breaker()` for a readiness check).
    pub fn circuit_breaker(&self) -> &B {
        &self.circuit_breaker
    }

    /// The stream timeouts piece.
    pub fn timeouts(&self) -> &To {
        &self.timeouts
    }
}

impl<S, T, M, R, C, Re, B, To> Layer<S> for DeepSeekStack<T, M, R, C, Re, B, To>
where
    To: Layer<S>,
    B: Layer<To::Service>,
    Re: Layer<B::Service>,
    C: Layer<Re::Service>,
    R: Layer<C::Service>,
    M: Layer<R::Service>,
    T: Layer<M::Service>,
{
    type Service = T::Service;

    fn layer(&self, upstream: S) -> Self::Service {
        let timed = self.timeouts.layer(upstream);
        let guarded = self.circuit_breaker.layer(timed);
        let retried = self.retry.layer(guarded);
        let limited = self.concurrency.layer(retried);
        let limited = self.rate_limit.layer(limited);
        let measured = self.metrics.layer(limited);
        self.trace_id.layer(measured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_settings_build() {
        let stack = DeepSeekStack::builder()
            .build()
            .expect("defaults are valid");
        assert_eq!(stack.concurrency().limit(), DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(stack.circuit_breaker().breaker().name(), "deepseek");
    }

    /// A piece that is off is no code and no data: with every piece off the stack is
    /// zero-sized and its service is the upstream itself.
    #[test]
    fn pieces_that_are_off_cost_nothing() {
        let bare = DeepSeekStack::builder()
            .without_trace_id()
            .without_concurrency_limit()
            .without_retry()
            .without_circuit_breaker()
            .without_timeouts()
            .build()
            .expect("an empty stack");
        assert_eq!(std::mem::size_of_val(&bare), 0);
        let service: u32 = bare.layer(7u32);
        assert_eq!(service, 7);
    }
}
