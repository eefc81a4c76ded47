//! The builder: one type parameter per piece, each a [`StackPart`].

use std::fmt;

use tower_layer::Identity;

use super::DeepSeekStack;
use crate::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerLayerBuilder};
use crate::concurrency::{ConcurrencyLimitLayer, ConcurrencyLimitLayerBuilder};
use crate::error::Error;
use crate::metrics::{Metrics, MetricsLayer};
use crate::rate_limit::{RateLimitBuilder, RateLimitLayer};
use crate::retry::{RetryLayer, RetryLayerBuilder};
use crate::timeout::{StreamTimeoutLayer, StreamTimeoutLayerBuilder};

/// One piece of a [`DeepSeekStackBuilder`]: what [`build`](DeepSeekStackBuilder::build) turns
/// into a layer. Implemented by [`Use`] (a layer given whole), [`Identity`] (the piece is
/// off) and the settings of this crate's layers (built, and wired to the stack's [`Metrics`]
/// when it has one).
///
/// ```
/// use tower::layer::util::Identity;
/// use tower_deepseek::stack::StackPart;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let off: Identity = Identity::new().into_layer(None)?;
/// # let _ = off;
/// # Ok(())
/// # }
/// ```
pub trait StackPart {
    /// The layer it becomes.
    type Layer;

    /// Builds the layer; `metrics` is the stack's handle, if it has one.
    fn into_layer(self, metrics: Option<&Metrics>) -> Result<Self::Layer, Error>;
}

/// A layer given whole to a [`DeepSeekStackBuilder`]: used as it is.
///
/// ```
/// use tower_deepseek::stack::{StackPart, Use};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = Use(tower::layer::util::Identity::new()).into_layer(None)?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Use<L>(pub L);

impl<L> StackPart for Use<L> {
    type Layer = L;

    fn into_layer(self, _metrics: Option<&Metrics>) -> Result<L, Error> {
        Ok(self.0)
    }
}

impl StackPart for Identity {
    type Layer = Identity;

    fn into_layer(self, _metrics: Option<&Metrics>) -> Result<Identity, Error> {
        Ok(self)
    }
}

impl StackPart for StreamTimeoutLayerBuilder {
    type Layer = StreamTimeoutLayer;

    fn into_layer(self, _metrics: Option<&Metrics>) -> Result<StreamTimeoutLayer, Error> {
        self.build()
    }
}

impl StackPart for ConcurrencyLimitLayerBuilder {
    type Layer = ConcurrencyLimitLayer;

    fn into_layer(self, _metrics: Option<&Metrics>) -> Result<ConcurrencyLimitLayer, Error> {
        self.build()
    }
}

impl StackPart for RetryLayerBuilder {
    type Layer = RetryLayer;

    fn into_layer(self, metrics: Option<&Metrics>) -> Result<RetryLayer, Error> {
        match metrics {
            Some(metrics) => self.listener(metrics.clone()).build(),
            None => self.build(),
        }
    }
}

impl StackPart for CircuitBreakerLayerBuilder {
    type Layer = CircuitBreakerLayer;

    fn into_layer(self, metrics: Option<&Metrics>) -> Result<CircuitBreakerLayer, Error> {
        let Some(metrics) = metrics else {
            return self.build();
        };
        let layer = self.listener(metrics.clone()).build()?;
        // The state gauge shows the breaker from the start, not from its first transition.
        let breaker = layer.breaker();
        metrics.breaker_state(breaker.name(), breaker.state());
        Ok(layer)
    }
}

impl StackPart for RateLimitBuilder {
    type Layer = RateLimitLayer;

    fn into_layer(self, metrics: Option<&Metrics>) -> Result<RateLimitLayer, Error> {
        match metrics {
            Some(metrics) => self.listener(metrics.clone()).build(),
            None => self.build(),
        }
    }
}

/// Builds a [`DeepSeekStack`] piece by piece (start with [`DeepSeekStack::builder`]). Each
/// type parameter is a [`StackPart`]: the settings of this crate's layer, a [`Use`]d layer, or
/// [`Identity`] when the piece is off.
///
/// ```
/// use tower_deepseek::stack::DeepSeekStack;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let bare = DeepSeekStack::builder()
///     .without_trace_id()
///     .without_concurrency_limit()
///     .without_retry()
///     .without_circuit_breaker()
///     .without_timeouts()
///     .build()?;
/// # let _ = bare;
/// # Ok(())
/// # }
/// ```
pub struct DeepSeekStackBuilder<T, M, R, C, Re, B, To> {
    pub(super) trace_id: T,
    pub(super) metrics: M,
    pub(super) rate_limit: R,
    pub(super) concurrency: C,
    pub(super) retry: Re,
    pub(super) circuit_breaker: B,
    pub(super) timeouts: To,
    /// The handle [`metrics`](Self::metrics) set: the pieces built from settings report to it.
    pub(super) handle: Option<Metrics>,
}

impl<T, M, R, C, Re, B, To> fmt::Debug for DeepSeekStackBuilder<T, M, R, C, Re, B, To> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeepSeekStackBuilder")
            .field("metrics", &self.handle.is_some())
            .finish_non_exhaustive()
    }
}

/// `$new` when the two field names are the same, else `$old`.
macro_rules! pick {
    (trace_id, trace_id, $new:expr, $old:expr) => {
        $new
    };
    (metrics, metrics, $new:expr, $old:expr) => {
        $new
    };
    (rate_limit, rate_limit, $new:expr, $old:expr) => {
        $new
    };
    (concurrency, concurrency, $new:expr, $old:expr) => {
        $new
    };
    (retry, retry, $new:expr, $old:expr) => {
        $new
    };
    (circuit_breaker, circuit_breaker, $new:expr, $old:expr) => {
        $new
    };
    (timeouts, timeouts, $new:expr, $old:expr) => {
        $new
    };
    ($field:ident, $other:ident, $new:expr, $old:expr) => {
        $old
    };
}

/// `$self` with the piece `$field` replaced by `$value`; the other pieces move over.
macro_rules! replace {
    ($self:ident, $field:ident: $value:expr) => {
        DeepSeekStackBuilder {
            trace_id: pick!(trace_id, $field, $value, $self.trace_id),
            metrics: pick!(metrics, $field, $value, $self.metrics),
            rate_limit: pick!(rate_limit, $field, $value, $self.rate_limit),
            concurrency: pick!(concurrency, $field, $value, $self.concurrency),
            retry: pick!(retry, $field, $value, $self.retry),
            circuit_breaker: pick!(circuit_breaker, $field, $value, $self.circuit_breaker),
            timeouts: pick!(timeouts, $field, $value, $self.timeouts),
            handle: $self.handle,
        }
    };
}

impl<T, M, R, C, Re, B, To> DeepSeekStackBuilder<T, M, R, C, Re, B, To> {
    /// Turns metrics on: [`MetricsLayer::client`] in the metrics slot, and the pieces built
    /// from settings (retry, circuit breaker, rate limit) report their events to `metrics`.
    pub fn metrics(
        mut self,
        metrics: &Metrics,
    ) -> DeepSeekStackBuilder<T, Use<MetricsLayer>, R, C, Re, B, To> {
        self.handle = Some(metrics.clone());
        replace!(self, metrics: Use(MetricsLayer::client(metrics)))
    }

    /// Puts `layer` in the metrics slot (e.g. a [`MetricsLayer`] with its own operation
    /// names). Unlike [`metrics`](Self::metrics), it wires no listener.
    pub fn metrics_layer<L>(self, layer: L) -> DeepSeekStackBuilder<T, Use<L>, R, C, Re, B, To> {
        replace!(self, metrics: Use(layer))
    }

    /// Removes the metrics layer (and the listeners [`metrics`](Self::metrics) wires).
    pub fn without_metrics(mut self) -> DeepSeekStackBuilder<T, Identity, R, C, Re, B, To> {
        self.handle = None;
        replace!(self, metrics: Identity::new())
    }

    /// Puts `layer` in the trace ID slot (e.g. a layer from
    /// [`PropagateTraceIdLayer::builder`](crate::trace_id::PropagateTraceIdLayer::builder),
    /// with other headers).
    pub fn trace_id<L>(self, layer: L) -> DeepSeekStackBuilder<Use<L>, M, R, C, Re, B, To> {
        replace!(self, trace_id: Use(layer))
    }

    /// Removes trace ID propagation.
    pub fn without_trace_id(self) -> DeepSeekStackBuilder<Identity, M, R, C, Re, B, To> {
        replace!(self, trace_id: Identity::new())
    }

    /// Puts `layer` in the rate limit slot (a keyed or Redis-backed [`RateLimitLayer`], a
    /// [`TokenLimitLayer`](crate::rate_limit::TokenLimitLayer), both in a `ServiceBuilder`).
    pub fn rate_limit<L>(self, layer: L) -> DeepSeekStackBuilder<T, M, Use<L>, C, Re, B, To> {
        replace!(self, rate_limit: Use(layer))
    }

    /// A global [`RateLimitLayer`] with these settings (off by default).
    pub fn rate_limit_settings(
        self,
        settings: RateLimitBuilder,
    ) -> DeepSeekStackBuilder<T, M, RateLimitBuilder, C, Re, B, To> {
        replace!(self, rate_limit: settings)
    }

    /// Removes the rate limit.
    pub fn without_rate_limit(self) -> DeepSeekStackBuilder<T, M, Identity, C, Re, B, To> {
        replace!(self, rate_limit: Identity::new())
    }

    /// Puts `layer` in the concurrency slot (e.g. an
    /// [`AdaptiveConcurrencyLayer`](crate::concurrency::AdaptiveConcurrencyLayer)).
    pub fn concurrency<L>(self, layer: L) -> DeepSeekStackBuilder<T, M, R, Use<L>, Re, B, To> {
        replace!(self, concurrency: Use(layer))
    }

    /// A [`ConcurrencyLimitLayer`] with these settings (default
    /// [`default_concurrency`](super::default_concurrency)).
    pub fn concurrency_settings(
        self,
        settings: ConcurrencyLimitLayerBuilder,
    ) -> DeepSeekStackBuilder<T, M, R, ConcurrencyLimitLayerBuilder, Re, B, To> {
        replace!(self, concurrency: settings)
    }

    /// Removes the concurrency limit.
    pub fn without_concurrency_limit(self) -> DeepSeekStackBuilder<T, M, R, Identity, Re, B, To> {
        replace!(self, concurrency: Identity::new())
    }

    /// Puts `layer` in the retry slot (e.g. a [`RetryLayer`] with its own listener).
    pub fn retry<L>(self, layer: L) -> DeepSeekStackBuilder<T, M, R, C, Use<L>, B, To> {
        replace!(self, retry: Use(layer))
    }

    /// A [`RetryLayer`] with these settings (default
    /// [`default_retry`](super::default_retry)).
    pub fn retry_settings(
        self,
        settings: RetryLayerBuilder,
    ) -> DeepSeekStackBuilder<T, M, R, C, RetryLayerBuilder, B, To> {
        replace!(self, retry: settings)
    }

    /// Removes the retries: every call is sent once.
    pub fn without_retry(self) -> DeepSeekStackBuilder<T, M, R, C, Identity, B, To> {
        replace!(self, retry: Identity::new())
    }

    /// Puts `layer` in the circuit breaker slot (e.g. a
    /// [`KeyedCircuitBreakerLayer`](crate::circuit_breaker::KeyedCircuitBreakerLayer) per model
    /// with a fallback).
    pub fn circuit_breaker<L>(self, layer: L) -> DeepSeekStackBuilder<T, M, R, C, Re, Use<L>, To> {
        replace!(self, circuit_breaker: Use(layer))
    }

    /// A [`CircuitBreakerLayer`] with these settings (default
    /// [`default_circuit_breaker`](super::default_circuit_breaker)).
    pub fn circuit_breaker_settings(
        self,
        settings: CircuitBreakerLayerBuilder,
    ) -> DeepSeekStackBuilder<T, M, R, C, Re, CircuitBreakerLayerBuilder, To> {
        replace!(self, circuit_breaker: settings)
    }

    /// Removes the circuit breaker.
    pub fn without_circuit_breaker(self) -> DeepSeekStackBuilder<T, M, R, C, Re, Identity, To> {
        replace!(self, circuit_breaker: Identity::new())
    }

    /// Puts `layer` in the timeouts slot (e.g. tower's `TimeoutLayer`).
    pub fn timeouts<L>(self, layer: L) -> DeepSeekStackBuilder<T, M, R, C, Re, B, Use<L>> {
        replace!(self, timeouts: Use(layer))
    }

    /// A [`StreamTimeoutLayer`] with these settings (default
    /// [`default_timeouts`](super::default_timeouts)).
    pub fn timeouts_settings(
        self,
        settings: StreamTimeoutLayerBuilder,
    ) -> DeepSeekStackBuilder<T, M, R, C, Re, B, StreamTimeoutLayerBuilder> {
        replace!(self, timeouts: settings)
    }

    /// Removes the stream timeouts.
    pub fn without_timeouts(self) -> DeepSeekStackBuilder<T, M, R, C, Re, B, Identity> {
        replace!(self, timeouts: Identity::new())
    }
}

impl<T, M, R, C, Re, B, To> DeepSeekStackBuilder<T, M, R, C, Re, B, To>
where
    T: StackPart,
    M: StackPart,
    R: StackPart,
    C: StackPart,
    Re: StackPart,
    B: StackPart,
    To: StackPart,
{
    /// Builds every piece from its settings; an invalid setting is an error of kind
    /// [`Config`](crate::ErrorKind::Config) from that piece's builder.
    #[allow(clippy::type_complexity)]
    pub fn build(
        self,
    ) -> Result<
        DeepSeekStack<T::Layer, M::Layer, R::Layer, C::Layer, Re::Layer, B::Layer, To::Layer>,
        Error,
    > {
        let metrics = self.handle.as_ref();
        Ok(DeepSeekStack {
            trace_id: self.trace_id.into_layer(metrics)?,
            metrics: self.metrics.into_layer(metrics)?,
            rate_limit: self.rate_limit.into_layer(metrics)?,
            concurrency: self.concurrency.into_layer(metrics)?,
            retry: self.retry.into_layer(metrics)?,
            circuit_breaker: self.circuit_breaker.into_layer(metrics)?,
            timeouts: self.timeouts.into_layer(metrics)?,
        })
    }
}
