//! The Prometheus exporter: instruments registered in an injected registry, each labelled
//! series resolved once (on first use) and cached by label index.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::cells::{CallCells, CallCollector, desc};
use super::instruments::{
    CHUNK_BUCKETS, DURATION_BUCKETS, FAILOVER_REASONS, GenAiRecord, HEDGE_OUTCOMES, Metrics,
    OUTCOMES, PROVIDER, SIDES, STATES, Side, Tables, WAIT_BUCKETS, auth_reason,
};
use super::labels::Grid;
use crate::classify::AuthFailure;
use crate::error::{Error, ErrorKind};

/// The labels of the request metrics.
const RED_LABELS: [&str; 4] = ["side", "operation", "model", "outcome"];
/// The labels shared by the GenAI metrics (semantic-convention attributes, dots as `_`).
const GENAI_LABELS: [&str; 4] = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
];

/// The streaming GenAI series of one (operation, request model, response model), each
/// resolved on first use (the per-call ones are in [`CallCells`]).
#[derive(Default)]
struct GenAiSeries {
    first_chunk: OnceLock<Histogram>,
    chunk_gap: OnceLock<Histogram>,
}

pub(crate) struct PromSink {
    registry: Registry,
    /// The request counter and duration, the in-flight gauge, the GenAI duration and token
    /// usage: recorded on every call, so plain atomics rendered by a collector.
    cells: Arc<CallCells>,
    auth_failures: IntCounterVec,
    genai_first_chunk: HistogramVec,
    genai_chunk_gap: HistogramVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    breaker_not_permitted: IntCounterVec,
    rate_limit_rejections: IntCounterVec,
    rate_limit_wait: HistogramVec,
    retry_attempts: IntCounterVec,
    retry_budget_exhausted: IntCounter,
    retries_gave_up: IntCounter,
    failovers: IntCounterVec,
    hedges: IntCounterVec,

    auth: [[OnceLock<IntCounter>; 2]; SIDES.len()],
    genai: Grid<Box<GenAiSeries>>,
    states: Grid<IntGauge>,
    transitions: Grid<IntCounter>,
    not_permitted: Grid<IntCounter>,
    rejections: Grid<IntCounter>,
    waits: Grid<Histogram>,
    retries: [OnceLock<IntCounter>; OUTCOMES.len()],
    failover_series: Grid<IntCounter>,
    /// `sent`, `won`, `budget_exhausted`, each resolved on first use.
    hedge_series: [OnceLock<IntCounter>; HEDGE_OUTCOMES.len()],
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, Error> {
    registry
        .register(Box::new(collector.clone()))
        .map_err(|error| {
            Error::new(
                ErrorKind::Config,
                format!("the Prometheus registry refused a metrics instrument: {error}"),
            )
        })?;
    Ok(collector)
}

fn build_error(error: prometheus::Error) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("a metrics instrument could not be built: {error}"),
    )
}

fn counter(
    registry: &Registry,
    name: String,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, Error> {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).map_err(build_error)?,
    )
}

fn gauge(
    registry: &Registry,
    name: String,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, Error> {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).map_err(build_error)?,
    )
}

fn histogram(
    registry: &Registry,
    name: String,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, Error> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        registry,
        HistogramVec::new(opts, labels).map_err(build_error)?,
    )
}

impl PromSink {
    pub(crate) fn new(
        prefix: &str,
        registry: Registry,
        tables: &Arc<Tables>,
    ) -> Result<PromSink, Error> {
        let r = &registry;
        let cells = Arc::new(CallCells::new(Arc::clone(tables)));
        let genai_with = |extra: &'static str| {
            let mut all = GENAI_LABELS.to_vec();
            all.push(extra);
            all
        };
        let descs = [
            desc(
                format!("{prefix}_requests_total"),
                "Requests by side, operation, model and outcome class.",
                &RED_LABELS,
            ),
            desc(
                format!("{prefix}_request_duration_seconds"),
                "Request duration, from the call to the end of the response body.",
                &RED_LABELS,
            ),
            desc(
                format!("{prefix}_requests_in_flight"),
                "Requests started whose response body has not ended.",
                &RED_LABELS[..3],
            ),
            desc(
                "gen_ai_client_operation_duration_seconds".to_owned(),
                "GenAI operation duration.",
                &genai_with("error_type"),
            ),
            desc(
                "gen_ai_client_token_usage".to_owned(),
                "Number of input and output tokens used.",
                &genai_with("gen_ai_token_type"),
            ),
        ];
        let [requests, duration, in_flight, genai_duration, genai_tokens] = descs;
        let descs = [
            requests.map_err(build_error)?,
            duration.map_err(build_error)?,
            in_flight.map_err(build_error)?,
            genai_duration.map_err(build_error)?,
            genai_tokens.map_err(build_error)?,
        ];
        registry
            .register(Box::new(CallCollector::new(Arc::clone(&cells), descs)))
            .map_err(|error| {
                Error::new(
                    ErrorKind::Config,
                    format!("the Prometheus registry refused a metrics instrument: {error}"),
                )
            })?;
        let breakers = tables.breakers.dimension();
        let limiters = tables.limiters.dimension();
        Ok(PromSink {
            cells,
            auth_failures: counter(
                r,
                format!("{prefix}_auth_failures_total"),
                "Responses refusing the credentials: 401 (invalid_key) or 402 (insufficient_balance).",
                &["side", "reason"],
            )?,
            genai_first_chunk: histogram(
                r,
                "gen_ai_client_operation_time_to_first_chunk_seconds".to_owned(),
                "Time to receive the first chunk of a streamed response.",
                &GENAI_LABELS,
                &DURATION_BUCKETS,
            )?,
            genai_chunk_gap: histogram(
                r,
                "gen_ai_client_operation_time_per_output_chunk_seconds".to_owned(),
                "Time per output chunk after the first, for streams.",
                &GENAI_LABELS,
                &CHUNK_BUCKETS,
            )?,
            breaker_state: gauge(
                r,
                format!("{prefix}_circuit_breaker_state"),
                "1 for the breaker's current state, 0 for the others.",
                &["breaker", "state"],
            )?,
            breaker_transitions: counter(
                r,
                format!("{prefix}_circuit_breaker_transitions_total"),
                "Breaker state transitions.",
                &["breaker", "from", "to"],
            )?,
            breaker_not_permitted: counter(
                r,
                format!("{prefix}_circuit_breaker_not_permitted_calls_total"),
                "Calls refused by a breaker.",
                &["breaker", "state"],
            )?,
            rate_limit_rejections: counter(
                r,
                format!("{prefix}_rate_limit_rejections_total"),
                "Calls refused by a rate limiter.",
                &["limiter"],
            )?,
            rate_limit_wait: histogram(
                r,
                format!("{prefix}_rate_limit_wait_seconds"),
                "Time calls waited for a rate limiter.",
                &["limiter"],
                &WAIT_BUCKETS,
            )?,
            retry_attempts: counter(
                r,
                format!("{prefix}_retry_attempts_total"),
                "Retries, by the outcome class of the attempt retried.",
                &["outcome"],
            )?,
            retry_budget_exhausted: register(
                r,
                IntCounter::new(
                    format!("{prefix}_retry_budget_exhausted_total"),
                    "Retries refused because the retry budget was spent.",
                )
                .map_err(build_error)?,
            )?,
            retries_gave_up: register(
                r,
                IntCounter::new(
                    format!("{prefix}_retries_gave_up_total"),
                    "Calls that failed after their last allowed attempt.",
                )
                .map_err(build_error)?,
            )?,
            failovers: counter(
                r,
                format!("{prefix}_failovers_total"),
                "Calls moved from one upstream to the next, by upstream left, upstream called and reason.",
                &["from", "to", "reason"],
            )?,
            hedges: counter(
                r,
                format!("{prefix}_hedges_total"),
                "Hedged requests: sent, won (the hedge answered first), budget_exhausted.",
                &["outcome"],
            )?,
            auth: Default::default(),
            genai: Grid::new(tables.genai_size()),
            states: Grid::new(breakers * STATES.len()),
            transitions: Grid::new(breakers * STATES.len() * STATES.len()),
            not_permitted: Grid::new(breakers * STATES.len()),
            rejections: Grid::new(limiters),
            waits: Grid::new(limiters),
            retries: Default::default(),
            failover_series: Grid::new(tables.failover_size()),
            hedge_series: Default::default(),
            registry,
        })
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    // Every `with_label_values` below passes exactly as many values as its vector was built
    // with (the arrays are fixed above), so it cannot panic on a label-count mismatch.

    #[inline]
    pub(crate) fn call_started(&self, flight: usize) {
        self.cells.call_started(flight);
    }

    #[inline]
    pub(crate) fn call_ended(&self, flight: usize, recorded: bool) {
        // A recorded call left the gauge when its request was counted.
        if !recorded {
            self.cells.call_cancelled(flight);
        }
    }

    #[inline]
    pub(crate) fn request(&self, side: Side, index: usize, nanos: u64) {
        // A client call's request series is the sum of its GenAI duration series (same
        // duration, operation, request model and outcome class), recorded by `genai`.
        if side != Side::Client {
            self.cells.request(index, nanos);
        }
    }

    pub(crate) fn auth_failure(&self, side: Side, failure: AuthFailure) {
        let reason = auth_reason(failure);
        let slot = usize::from(matches!(failure, AuthFailure::InsufficientBalance));
        self.auth[side.index()][slot]
            .get_or_init(|| {
                self.auth_failures
                    .with_label_values(&[side.as_str(), reason])
            })
            .inc();
    }

    fn series(&self, index: usize) -> Option<&GenAiSeries> {
        self.genai.get(index, Box::default).map(|series| &**series)
    }

    pub(crate) fn genai(
        &self,
        tables: &Tables,
        labels: [usize; 3],
        index: usize,
        record: &GenAiRecord,
    ) {
        let class = record.error.unwrap_or(0);
        self.cells.genai(index, class, record.nanos, record);
        if let Some(first) = record.first_chunk
            && let Some(series) = self.series(index)
        {
            series
                .first_chunk
                .get_or_init(|| {
                    self.genai_first_chunk
                        .with_label_values(&genai_names(tables, labels))
                })
                .observe(first);
        }
    }

    pub(crate) fn chunk_gap(
        &self,
        tables: &Tables,
        labels: [usize; 3],
        index: usize,
        seconds: f64,
    ) {
        if let Some(series) = self.series(index) {
            series
                .chunk_gap
                .get_or_init(|| {
                    self.genai_chunk_gap
                        .with_label_values(&genai_names(tables, labels))
                })
                .observe(seconds);
        }
    }

    pub(crate) fn rate_limit_rejected(&self, tables: &Tables, limiter: usize) {
        if let Some(counter) = self.rejections.get(limiter, || {
            self.rate_limit_rejections
                .with_label_values(&[tables.limiters.name(limiter)])
        }) {
            counter.inc();
        }
    }

    pub(crate) fn rate_limit_waited(&self, tables: &Tables, limiter: usize, seconds: f64) {
        if let Some(histogram) = self.waits.get(limiter, || {
            self.rate_limit_wait
                .with_label_values(&[tables.limiters.name(limiter)])
        }) {
            histogram.observe(seconds);
        }
    }

    pub(crate) fn retry_attempt(&self, class: usize) {
        if let Some(slot) = self.retries.get(class) {
            slot.get_or_init(|| self.retry_attempts.with_label_values(&[OUTCOMES[class]]))
                .inc();
        }
    }

    pub(crate) fn retry_budget_exhausted(&self) {
        self.retry_budget_exhausted.inc();
    }

    pub(crate) fn retry_gave_up(&self) {
        self.retries_gave_up.inc();
    }

    pub(crate) fn failover(&self, tables: &Tables, index: usize, [from, to, reason]: [usize; 3]) {
        if let Some(counter) = self.failover_series.get(index, || {
            self.failovers.with_label_values(&[
                tables.upstreams.name(from),
                tables.upstreams.name(to),
                FAILOVER_REASONS[reason],
            ])
        }) {
            counter.inc();
        }
    }

    pub(crate) fn hedge(&self, outcome: usize) {
        if let (Some(slot), Some(name)) =
            (self.hedge_series.get(outcome), HEDGE_OUTCOMES.get(outcome))
        {
            slot.get_or_init(|| self.hedges.with_label_values(&[*name]))
                .inc();
        }
    }

    pub(crate) fn breaker_state(&self, tables: &Tables, breaker: usize, state: usize) {
        for (index, each) in STATES.iter().enumerate() {
            if let Some(gauge) = self.states.get(breaker * STATES.len() + index, || {
                self.breaker_state
                    .with_label_values(&[tables.breakers.name(breaker), each.as_str()])
            }) {
                gauge.set(i64::from(index == state));
            }
        }
    }

    pub(crate) fn breaker_transition(
        &self,
        tables: &Tables,
        breaker: usize,
        from: usize,
        to: usize,
    ) {
        let index = (breaker * STATES.len() + from) * STATES.len() + to;
        if let Some(counter) = self.transitions.get(index, || {
            self.breaker_transitions.with_label_values(&[
                tables.breakers.name(breaker),
                STATES[from].as_str(),
                STATES[to].as_str(),
            ])
        }) {
            counter.inc();
        }
        self.breaker_state(tables, breaker, to);
    }

    pub(crate) fn breaker_not_permitted(&self, tables: &Tables, breaker: usize, state: usize) {
        if let Some(counter) = self.not_permitted.get(breaker * STATES.len() + state, || {
            self.breaker_not_permitted
                .with_label_values(&[tables.breakers.name(breaker), STATES[state].as_str()])
        }) {
            counter.inc();
        }
    }
}

fn genai_names(tables: &Tables, [op, request, response]: [usize; 3]) -> [&str; 4] {
    [
        tables.operations.name(op),
        PROVIDER,
        tables.models.name(request),
        tables.models.name(response),
    ]
}

impl Metrics {
    /// The registry the instruments were registered in, when exporting to Prometheus.
    #[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
    pub fn registry(&self) -> Option<&Registry> {
        self.inner.prometheus.as_ref().map(PromSink::registry)
    }

    /// The registry's metrics in the Prometheus text format (`None` without a registry).
    #[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
    pub fn render_prometheus(&self) -> Option<String> {
        let registry = self.registry()?;
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .ok()
    }
}
