//! The metrics handle: label tables and the exporters' instruments, resolved once and shared
//! by every layer and recorder that holds a clone.

// Without an exporter feature the recorders have nowhere to send their values.
#![cfg_attr(
    not(any(feature = "prometheus", feature = "opentelemetry")),
    allow(unused_variables, dead_code)
)]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::labels::{LabelTable, UNKNOWN};
use crate::circuit_breaker::{CircuitBreakerListener, CircuitEvent, CircuitState};
use crate::classify::{AuthFailure, Outcome};
use crate::error::{Error, ErrorKind};
use crate::failover::{FailoverEvent, FailoverListener, FailoverReason};

/// Which side of the gateway a layer measures: the `side` label of the request metrics.
///
/// ```
/// use tower_deepseek::metrics::Side;
/// assert_eq!(Side::Client.as_str(), "client");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Outbound calls to DeepSeek (under the client). Also records the GenAI metrics.
    Client,
    /// Inbound requests to the gateway (the server stack). Request metrics only.
    Server,
}

impl Side {
    /// The label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }
}

pub(crate) const SIDES: [&str; 2] = ["client", "server"];

/// The outcome classes, in label-index order ([`Outcome::as_str`] of each class).
pub(crate) const OUTCOMES: [&str; 10] = [
    "success",
    "client_error",
    "auth_error",
    "rate_limited",
    "server_error",
    "timeout",
    "network_error",
    "stream_error",
    "invalid_request",
    "rejected",
];

/// The label index of an outcome's class.
pub(crate) fn outcome_index(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Success => 0,
        Outcome::Client(_) => 1,
        Outcome::Auth(_) => 2,
        Outcome::RateLimited { .. } => 3,
        Outcome::Server(_) => 4,
        Outcome::Timeout(_) => 5,
        Outcome::Network(_) => 6,
        Outcome::Stream(_) => 7,
        Outcome::Invalid => 8,
        Outcome::Rejected => 9,
    }
}

/// How many upstreams of a failover list get their own `from`/`to` label (then `other`).
pub(crate) const MAX_UPSTREAM_LABELS: usize = 8;

/// The `reason` values of the failover counter, in label-index order: the two local refusals,
/// then the outcome classes.
pub(crate) const FAILOVER_REASONS: [&str; 2 + OUTCOMES.len()] = [
    "circuit_open",
    "overloaded",
    OUTCOMES[0],
    OUTCOMES[1],
    OUTCOMES[2],
    OUTCOMES[3],
    OUTCOMES[4],
    OUTCOMES[5],
    OUTCOMES[6],
    OUTCOMES[7],
    OUTCOMES[8],
    OUTCOMES[9],
];

/// The label index of a failover reason.
pub(crate) fn failover_reason_index(reason: &FailoverReason) -> usize {
    match reason {
        FailoverReason::CircuitOpen => 0,
        FailoverReason::Overloaded => 1,
        FailoverReason::Failed(outcome) => 2 + outcome_index(outcome),
    }
}

/// The `gen_ai_token_type` values, in index order. `cached_input` (DeepSeek's
/// `prompt_cache_hit_tokens`) is part of `input`, and `reasoning` part of `output`, as the
/// API counts them.
pub(crate) const TOKEN_TYPES: [&str; 4] = ["input", "output", "cached_input", "reasoning"];

/// The breaker states, in label-index order.
pub(crate) const STATES: [CircuitState; 7] = [
    CircuitState::Closed,
    CircuitState::Open,
    CircuitState::HalfOpen,
    CircuitState::Disabled,
    CircuitState::ForcedOpen,
    CircuitState::MetricsOnly,
    CircuitState::Fatal,
];

pub(crate) fn state_index(state: CircuitState) -> usize {
    STATES.iter().position(|s| *s == state).unwrap_or(0)
}

/// The `reason` label of the auth-failure counter (401 vs 402).
pub(crate) fn auth_reason(failure: AuthFailure) -> &'static str {
    match failure {
        AuthFailure::InvalidKey => "invalid_key",
        AuthFailure::InsufficientBalance => "insufficient_balance",
    }
}

/// Request-duration buckets in seconds: 10 ms to 10 minutes, to fit LLM calls.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Time-per-output-chunk buckets in seconds (the GenAI semantic conventions' advice).
pub const CHUNK_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// Token-count buckets (the GenAI semantic conventions' advice).
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Rate-limit wait buckets in seconds.
pub const WAIT_BUCKETS: [f64; 13] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The `gen_ai.provider.name` of every GenAI metric.
pub const PROVIDER: &str = "deepseek";

/// The label tables, shared by the exporters.
pub(crate) struct Tables {
    pub(crate) operations: LabelTable,
    pub(crate) models: LabelTable,
    pub(crate) limiters: LabelTable,
    pub(crate) breakers: LabelTable,
    pub(crate) upstreams: LabelTable,
}

impl Tables {
    /// Index of a RED series: side × operation × model × outcome.
    #[inline]
    pub(crate) fn red_index(&self, side: Side, op: usize, model: usize, outcome: usize) -> usize {
        (self.flight_index(side, op, model)) * OUTCOMES.len() + outcome
    }

    /// Index of an in-flight gauge: side × operation × model.
    #[inline]
    pub(crate) fn flight_index(&self, side: Side, op: usize, model: usize) -> usize {
        (side.index() * self.operations.dimension() + op) * self.models.dimension() + model
    }

    /// Index of a GenAI series group: operation × request model × response model.
    #[inline]
    pub(crate) fn genai_index(&self, op: usize, request: usize, response: usize) -> usize {
        (op * self.models.dimension() + request) * self.models.dimension() + response
    }

    pub(crate) fn red_size(&self) -> usize {
        SIDES.len() * self.operations.dimension() * self.models.dimension() * OUTCOMES.len()
    }

    pub(crate) fn flight_size(&self) -> usize {
        SIDES.len() * self.operations.dimension() * self.models.dimension()
    }

    pub(crate) fn genai_size(&self) -> usize {
        self.operations.dimension() * self.models.dimension() * self.models.dimension()
    }

    /// Index of a failover series: from × to × reason.
    #[inline]
    pub(crate) fn failover_index(&self, from: usize, to: usize, reason: usize) -> usize {
        (from * self.upstreams.dimension() + to) * FAILOVER_REASONS.len() + reason
    }

    pub(crate) fn failover_size(&self) -> usize {
        self.upstreams.dimension() * self.upstreams.dimension() * FAILOVER_REASONS.len()
    }
}

/// The labels of one call, resolved to table indices when the call starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallKey {
    pub(crate) side: Side,
    pub(crate) op: usize,
    pub(crate) model: usize,
}

pub(crate) struct Inner {
    pub(crate) prefix: Box<str>,
    /// Shared with the Prometheus collector, which names the series it renders.
    pub(crate) tables: Arc<Tables>,
    #[cfg(feature = "prometheus")]
    pub(crate) prometheus: Option<super::prometheus::PromSink>,
    #[cfg(feature = "opentelemetry")]
    pub(crate) otel: Option<super::opentelemetry::OtelSink>,
}

/// The metrics of a gateway: the request (RED) and GenAI instruments, and the other layers'
/// events, exported to an injected Prometheus registry (feature `prometheus`) and/or an
/// injected OpenTelemetry [`Meter`](opentelemetry::metrics::Meter) (feature `opentelemetry`).
///
/// Every instrument and label table is resolved once, when the handle is built or when a label
/// combination is first used; clones share them. Give a clone to each
/// [`MetricsLayer`](super::MetricsLayer), to the circuit breaker as its listener (the handle
/// implements [`CircuitBreakerListener`]), and to the rate-limit and retry adapters through
/// [`rate_limit_rejected`](Self::rate_limit_rejected) and its siblings.
///
/// ```
/// # #[cfg(feature = "prometheus")]
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// use tower_deepseek::metrics::Metrics;
///
/// let registry = prometheus::Registry::new();
/// let metrics = Metrics::builder()
///     .models(["deepseek-v4-flash", "deepseek-v4-pro"])
///     .prometheus(registry.clone())
///     .build()?;
/// metrics.retry_gave_up();
/// let text = metrics.render_prometheus().unwrap_or_default();
/// assert!(text.contains("deepseek_retries_gave_up_total 1"));
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "prometheus"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct Metrics {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Metrics");
        debug.field("prefix", &self.inner.prefix);
        #[cfg(feature = "prometheus")]
        debug.field("prometheus", &self.inner.prometheus.is_some());
        #[cfg(feature = "opentelemetry")]
        debug.field("opentelemetry", &self.inner.otel.is_some());
        debug.finish_non_exhaustive()
    }
}

/// Builds a [`Metrics`] handle. See [`Metrics::builder`].
///
/// ```
/// use tower_deepseek::metrics::Metrics;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let metrics = Metrics::builder()
///     .prefix("gateway")
///     .models(["deepseek-v4-flash"])
///     .max_models(4) // the configured model plus the first 3 others seen; then `other`
///     .build()?;
/// assert_eq!(metrics.model_label("deepseek-v4-flash"), "deepseek-v4-flash");
/// assert_eq!(metrics.model_label("sk-0123456789abcdef"), "other"); // never a key
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct MetricsBuilder {
    prefix: String,
    models: Vec<String>,
    max_models: usize,
    learn_models: bool,
    max_operations: usize,
    max_limiters: usize,
    max_breakers: usize,
    #[cfg(feature = "prometheus")]
    registry: Option<prometheus::Registry>,
    #[cfg(feature = "opentelemetry")]
    meter: Option<opentelemetry::metrics::Meter>,
}

impl fmt::Debug for MetricsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsBuilder")
            .field("prefix", &self.prefix)
            .field("models", &self.models)
            .field("max_models", &self.max_models)
            .field("learn_models", &self.learn_models)
            .finish_non_exhaustive()
    }
}

/// The largest label table the builder accepts (label grids grow with its square).
pub const MAX_TABLE: usize = 256;

impl Default for MetricsBuilder {
    fn default() -> Self {
        MetricsBuilder {
            prefix: "deepseek".to_owned(),
            models: Vec::new(),
            max_models: 16,
            learn_models: true,
            max_operations: 8,
            max_limiters: 16,
            max_breakers: 32,
            #[cfg(feature = "prometheus")]
            registry: None,
            #[cfg(feature = "opentelemetry")]
            meter: None,
        }
    }
}

impl MetricsBuilder {
    /// The prefix of the request and layer metrics (default `deepseek`): `<prefix>_requests_total`
    /// and so on. The GenAI metrics keep their semantic-convention names.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Models that always have their own label, whatever order calls come in.
    pub fn models<I>(mut self, models: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// How many model labels there may be in all (default 16): the configured models, then
    /// the first models seen, then `other`. At most [`MAX_TABLE`].
    pub fn max_models(mut self, max: usize) -> Self {
        self.max_models = max;
        self
    }

    /// Whether models outside the configured set get a label when first seen (default `true`).
    /// Turn it off on a public gateway where callers choose the model name.
    pub fn learn_models(mut self, learn: bool) -> Self {
        self.learn_models = learn;
        self
    }

    /// How many operation labels there may be (default 8), then `other`.
    pub fn max_operations(mut self, max: usize) -> Self {
        self.max_operations = max;
        self
    }

    /// How many rate limiters may have their own label (default 16), then `other`.
    pub fn max_limiters(mut self, max: usize) -> Self {
        self.max_limiters = max;
        self
    }

    /// How many circuit breakers (names or keys) may have their own label (default 32), then
    /// `other`.
    pub fn max_breakers(mut self, max: usize) -> Self {
        self.max_breakers = max;
        self
    }

    /// Registers the instruments in `registry` (never the global one) and exports them there.
    #[cfg(feature = "prometheus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
    pub fn prometheus(mut self, registry: prometheus::Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Creates the same instruments through `meter` and records to them too.
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Validates the settings, registers the instruments and builds the handle.
    ///
    /// Fails with [`ErrorKind::Config`] for an invalid prefix, a table size of 0 or over
    /// [`MAX_TABLE`], more configured models than `max_models`, or a configured model that is
    /// not a valid label; and when the registry refuses an instrument (e.g. the same prefix
    /// registered twice).
    pub fn build(self) -> Result<Metrics, Error> {
        if !valid_prefix(&self.prefix) {
            return Err(config(format!(
                "metrics prefix {:?} is not a Prometheus metric name (letters, digits, `_`, `:`, not starting with a digit)",
                self.prefix
            )));
        }
        for (what, value) in [
            ("max_models", self.max_models),
            ("max_operations", self.max_operations),
            ("max_limiters", self.max_limiters),
            ("max_breakers", self.max_breakers),
        ] {
            if value == 0 || value > MAX_TABLE {
                return Err(config(format!(
                    "metrics {what} is {value}; it must be between 1 and {MAX_TABLE}"
                )));
            }
        }
        // One slot is `unknown`.
        if self.models.len() + 1 > self.max_models {
            return Err(config(format!(
                "metrics max_models is {} but {} models are configured (plus `unknown`)",
                self.max_models,
                self.models.len()
            )));
        }
        if let Some(position) = self.models.iter().position(|m| !super::labels::is_label(m)) {
            // Named by position, not value: a key pasted into the wrong setting must not be
            // echoed into an error message.
            return Err(config(format!(
                "metrics model #{} cannot be a label: it must be 1 to 64 of `A-Za-z0-9._-:/`, not `other`, not starting with `sk-`",
                position + 1
            )));
        }
        let fixed = std::iter::once(UNKNOWN).chain(self.models.iter().map(String::as_str));
        let tables = Arc::new(Tables {
            operations: LabelTable::new([], self.max_operations, true),
            models: LabelTable::new(fixed, self.max_models, self.learn_models),
            limiters: LabelTable::new([], self.max_limiters, true),
            breakers: LabelTable::new([], self.max_breakers, true),
            upstreams: LabelTable::new([], MAX_UPSTREAM_LABELS, true),
        });
        #[cfg(feature = "prometheus")]
        let prometheus = match self.registry {
            Some(registry) => Some(super::prometheus::PromSink::new(
                &self.prefix,
                registry,
                &tables,
            )?),
            None => None,
        };
        #[cfg(feature = "opentelemetry")]
        let otel = self
            .meter
            .map(|meter| super::opentelemetry::OtelSink::new(&self.prefix, &meter, &tables));
        Ok(Metrics {
            inner: Arc::new(Inner {
                prefix: self.prefix.into(),
                tables,
                #[cfg(feature = "prometheus")]
                prometheus,
                #[cfg(feature = "opentelemetry")]
                otel,
            }),
        })
    }
}

fn config(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

fn valid_prefix(prefix: &str) -> bool {
    let mut bytes = prefix.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Calls `$body` with each enabled sink bound to `$sink`.
macro_rules! each_sink {
    ($inner:expr, |$sink:ident| $body:expr) => {{
        #[cfg(feature = "prometheus")]
        if let Some($sink) = &$inner.prometheus {
            $body;
        }
        #[cfg(feature = "opentelemetry")]
        if let Some($sink) = &$inner.otel {
            $body;
        }
    }};
}

impl Metrics {
    /// A builder: prefix `deepseek`, up to 16 model labels learnt as seen, no exporter until
    /// [`prometheus`](MetricsBuilder::prometheus) or `meter` is set.
    pub fn builder() -> MetricsBuilder {
        MetricsBuilder::default()
    }

    /// The metric-name prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The label `model` reports as: itself if configured or among the first seen, else
    /// `other`. (Looking it up may add it, as a call would.)
    pub fn model_label(&self, model: &str) -> &str {
        let models = &self.inner.tables.models;
        models.name(models.index(model))
    }

    /// The label of a model index (`other` for the overflow index).
    pub(crate) fn model_name(&self, index: usize) -> &str {
        self.inner.tables.models.name(index)
    }

    pub(crate) fn operation_index(&self, operation: &str) -> usize {
        self.inner.tables.operations.index(operation)
    }

    pub(crate) fn model_index(&self, model: Option<&str>) -> usize {
        // `unknown` is always slot 0.
        model.map_or(0, |model| self.inner.tables.models.index(model))
    }

    #[inline]
    pub(crate) fn call_started(&self, key: CallKey) {
        let index = self.inner.tables.flight_index(key.side, key.op, key.model);
        #[cfg(feature = "prometheus")]
        if let Some(sink) = &self.inner.prometheus {
            sink.call_started(index);
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(sink) = &self.inner.otel {
            sink.in_flight(&self.inner.tables, key, index, 1);
        }
    }

    /// The end of a call's in-flight time; `recorded` if [`request`](Self::request) counted
    /// it (only the Prometheus cells need to know).
    #[cfg_attr(not(feature = "prometheus"), allow(unused_variables))]
    #[inline]
    pub(crate) fn call_ended(&self, key: CallKey, recorded: bool) {
        let index = || self.inner.tables.flight_index(key.side, key.op, key.model);
        // A recorded call left the Prometheus gauge when its request was counted.
        #[cfg(feature = "prometheus")]
        if !recorded && let Some(sink) = &self.inner.prometheus {
            sink.call_ended(index(), recorded);
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(sink) = &self.inner.otel {
            sink.in_flight(&self.inner.tables, key, index(), -1);
        }
    }

    #[inline]
    pub(crate) fn request(&self, key: CallKey, outcome: &Outcome, nanos: u64) {
        let class = outcome_index(outcome);
        let index = self
            .inner
            .tables
            .red_index(key.side, key.op, key.model, class);
        #[cfg(feature = "prometheus")]
        if let Some(sink) = &self.inner.prometheus {
            sink.request(key.side, index, nanos);
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(sink) = &self.inner.otel {
            let seconds = Duration::from_nanos(nanos).as_secs_f64();
            sink.request(&self.inner.tables, key, class, index, seconds);
        }
        if let Outcome::Auth(failure) = outcome {
            each_sink!(self.inner, |sink| sink.auth_failure(key.side, *failure));
        }
    }

    pub(crate) fn genai(&self, key: CallKey, response_model: usize, record: &GenAiRecord) {
        let tables = &self.inner.tables;
        let index = tables.genai_index(key.op, key.model, response_model);
        each_sink!(self.inner, |sink| sink.genai(
            tables,
            [key.op, key.model, response_model],
            index,
            record
        ));
    }

    pub(crate) fn chunk_gap(&self, key: CallKey, response_model: usize, seconds: f64) {
        let tables = &self.inner.tables;
        let index = tables.genai_index(key.op, key.model, response_model);
        each_sink!(self.inner, |sink| sink.chunk_gap(
            tables,
            [key.op, key.model, response_model],
            index,
            seconds
        ));
    }

    /// Records a call refused by a rate limiter (`<prefix>_rate_limit_rejections_total{limiter}`).
    /// `wait` is the time until a call would be admitted, if the limiter said; it is not a
    /// wait that happened, so it is not recorded.
    pub fn rate_limit_rejected(&self, limiter: &str, wait: Option<Duration>) {
        let _ = wait;
        let index = self.inner.tables.limiters.index(limiter);
        each_sink!(self.inner, |sink| sink
            .rate_limit_rejected(&self.inner.tables, index));
    }

    /// Records a call that waited for a rate limiter (`<prefix>_rate_limit_wait_seconds{limiter}`).
    pub fn rate_limit_waited(&self, limiter: &str, waited: Duration) {
        let index = self.inner.tables.limiters.index(limiter);
        each_sink!(self.inner, |sink| sink.rate_limit_waited(
            &self.inner.tables,
            index,
            waited.as_secs_f64()
        ));
    }

    /// Records a retry (`<prefix>_retry_attempts_total{outcome}`), labelled by the outcome
    /// class of the attempt that failed.
    pub fn retry_attempt(&self, outcome: &Outcome) {
        let class = outcome_index(outcome);
        each_sink!(self.inner, |sink| sink.retry_attempt(class));
    }

    /// Records a retry refused because the retry budget was spent
    /// (`<prefix>_retry_budget_exhausted_total`).
    pub fn retry_budget_exhausted(&self) {
        each_sink!(self.inner, |sink| sink.retry_budget_exhausted());
    }

    /// Records a call that failed after its last allowed attempt
    /// (`<prefix>_retries_gave_up_total`).
    pub fn retry_gave_up(&self) {
        each_sink!(self.inner, |sink| sink.retry_gave_up());
    }

    /// Records a call that failed over from upstream `from` to `to`
    /// (`<prefix>_failovers_total{from,to,reason}`). Upstream names beyond the first 8 seen
    /// report as `other`.
    pub fn failover(&self, from: &str, to: &str, reason: &FailoverReason) {
        let tables = &self.inner.tables;
        let (from, to) = (tables.upstreams.index(from), tables.upstreams.index(to));
        let reason = failover_reason_index(reason);
        let index = tables.failover_index(from, to, reason);
        each_sink!(self.inner, |sink| sink.failover(
            tables,
            index,
            [from, to, reason]
        ));
    }

    /// Sets a breaker's state gauge (`<prefix>_circuit_breaker_state{breaker,state}`: 1 for
    /// the current state, 0 for the others). Transitions keep it current; call this once when
    /// the breaker is created so its gauge exists before the first transition.
    pub fn breaker_state(&self, breaker: &str, state: CircuitState) {
        let index = self.inner.tables.breakers.index(breaker);
        each_sink!(self.inner, |sink| sink.breaker_state(
            &self.inner.tables,
            index,
            state_index(state)
        ));
    }
}

/// What a finished GenAI call reports.
#[derive(Debug, Default)]
pub(crate) struct GenAiRecord {
    /// `None` on success, else the outcome class index (`error_type`).
    pub(crate) error: Option<usize>,
    /// The call's duration in whole nanoseconds (OpenTelemetry converts it to seconds).
    pub(crate) nanos: u64,
    /// Input, output, cached input, reasoning: each a count if bit `i` of `present` is set
    /// (no `Option`s to build and test one by one).
    pub(crate) tokens: [u64; 4],
    pub(crate) present: u8,
    /// Seconds to the first chunk (streams only).
    pub(crate) first_chunk: Option<f64>,
}

impl GenAiRecord {
    /// The token counts present, with their index (input, output, cached input, reasoning).
    #[inline]
    pub(crate) fn tokens(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| self.present & (1 << i) != 0)
            .map(|(i, tokens)| (i, *tokens))
    }
}

impl CircuitBreakerListener for Metrics {
    fn on_event(&self, event: &CircuitEvent<'_>) {
        match *event {
            CircuitEvent::StateTransition { name, from, to } => {
                let index = self.inner.tables.breakers.index(name);
                let (from, to) = (state_index(from), state_index(to));
                each_sink!(self.inner, |sink| sink.breaker_transition(
                    &self.inner.tables,
                    index,
                    from,
                    to
                ));
            }
            CircuitEvent::NotPermitted { name, state } => {
                let index = self.inner.tables.breakers.index(name);
                let state = state_index(state);
                each_sink!(self.inner, |sink| sink.breaker_not_permitted(
                    &self.inner.tables,
                    index,
                    state
                ));
            }
            CircuitEvent::Reset { name } => self.breaker_state(name, CircuitState::Closed),
            _ => {}
        }
    }
}

/// A retry layer's events, exported: each retry by the outcome that caused it, budget
/// exhaustion and giving up. `.listener(metrics.clone())` on the retry layer's builder.
///
/// ```
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// use tower_deepseek::metrics::Metrics;
/// use tower_deepseek::retry::RetryLayer;
///
/// let metrics = Metrics::builder().build()?;
/// let retry = RetryLayer::builder().listener(metrics.clone()).build()?;
/// # let _ = retry;
/// # Ok(())
/// # }
/// ```
impl crate::retry::RetryListener for Metrics {
    fn on_event(&self, event: &crate::retry::RetryEvent<'_>) {
        use crate::retry::RetryEvent;
        match event {
            RetryEvent::Retry { outcome, .. } => self.retry_attempt(outcome),
            RetryEvent::BudgetExhausted { .. } => self.retry_budget_exhausted(),
            RetryEvent::GaveUp { .. } => self.retry_gave_up(),
            _ => {}
        }
    }
}

/// The values of `<prefix>_hedges_total{outcome}`, as [`HedgeEvent::as_str`] names them.
///
/// [`HedgeEvent::as_str`]: crate::hedge::HedgeEvent::as_str
pub(crate) const HEDGE_OUTCOMES: [&str; 3] = ["sent", "won", "budget_exhausted"];

/// A hedging layer's events, exported as `<prefix>_hedges_total{outcome}` (`sent`, `won`,
/// `budget_exhausted`). `.listener(metrics.clone())` on the hedge layer's builder.
///
/// ```
/// # #[cfg(feature = "prometheus")]
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// use tower_deepseek::hedge::{HedgeEvent, HedgeLayer, HedgeListener};
/// use tower_deepseek::metrics::Metrics;
///
/// let metrics = Metrics::builder().prometheus(prometheus::Registry::new()).build()?;
/// let hedge = HedgeLayer::builder().listener(metrics.clone()).build()?;
/// metrics.on_event(&HedgeEvent::Won { name: "deepseek" });
/// let text = metrics.render_prometheus().unwrap_or_default();
/// assert!(text.contains(r#"deepseek_hedges_total{outcome="won"} 1"#));
/// # let _ = hedge;
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "prometheus"))]
/// # fn main() {}
/// ```
impl crate::hedge::HedgeListener for Metrics {
    fn on_event(&self, event: &crate::hedge::HedgeEvent<'_>) {
        use crate::hedge::HedgeEvent;
        let outcome = match event {
            HedgeEvent::Sent { .. } => 0,
            HedgeEvent::Won { .. } => 1,
            HedgeEvent::BudgetExhausted { .. } => 2,
        };
        let _ = outcome;
        each_sink!(self.inner, |sink| sink.hedge(outcome));
    }
}

/// A rate-limit layer's events, exported: rejections and waits by limiter name (never a key).
/// `.listener(metrics.clone())` on the rate-limit layer's builder.
///
/// ```
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// use tower_deepseek::metrics::Metrics;
/// use tower_deepseek::rate_limit::RateLimitLayer;
///
/// let metrics = Metrics::builder().build()?;
/// let limit = RateLimitLayer::builder().per_second(50).listener(metrics.clone()).build()?;
/// # let _ = limit;
/// # Ok(())
/// # }
/// ```
impl crate::rate_limit::RateLimitListener for Metrics {
    fn on_event(&self, event: &crate::rate_limit::RateLimitEvent<'_>) {
        use crate::rate_limit::RateLimitEvent;
        match *event {
            RateLimitEvent::Rejected { limiter, wait } => {
                self.rate_limit_rejected(limiter, Some(wait))
            }
            RateLimitEvent::Waited { limiter, waited } => self.rate_limit_waited(limiter, waited),
            _ => {}
        }
    }
}

/// A failover service's events, exported: each failover by the upstream left, the upstream
/// called next and the reason (`<prefix>_failovers_total{from,to,reason}`).
/// `.listener(metrics.clone())` on the failover builder.
///
/// ```
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// use tower_deepseek::failover::{FailoverEvent, FailoverListener, FailoverReason};
/// use tower_deepseek::metrics::Metrics;
///
/// let metrics = Metrics::builder().build()?;
/// metrics.on_event(&FailoverEvent::FailedOver {
///     from: "deepseek",
///     to: "backup",
///     reason: FailoverReason::CircuitOpen,
/// });
/// # Ok(())
/// # }
/// ```
impl FailoverListener for Metrics {
    fn on_event(&self, event: &FailoverEvent<'_>) {
        if let FailoverEvent::FailedOver { from, to, reason } = event {
            self.failover(from, to, reason);
        }
    }
}
