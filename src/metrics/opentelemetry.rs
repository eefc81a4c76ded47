//! The OpenTelemetry exporter: the same instruments through an injected
//! [`Meter`](opentelemetry::metrics::Meter), with OpenTelemetry names (dots) and attribute
//! sets built once per label combination and cached.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};

use super::instruments::{
    CHUNK_BUCKETS, CallKey, DURATION_BUCKETS, FAILOVER_REASONS, GenAiRecord, HEDGE_OUTCOMES,
    OUTCOMES, PROVIDER, STATES, Side, TOKEN_BUCKETS, TOKEN_TYPES, Tables, WAIT_BUCKETS,
    auth_reason,
};
use super::labels::Grid;
use crate::classify::AuthFailure;

type Attributes = Box<[KeyValue]>;

fn kv(key: &'static str, value: &str) -> KeyValue {
    KeyValue::new(key, value.to_owned())
}

#[derive(Default)]
struct GenAiAttributes {
    base: OnceLock<Attributes>,
    duration: [OnceLock<Attributes>; OUTCOMES.len()],
    tokens: [OnceLock<Attributes>; TOKEN_TYPES.len()],
}

pub(crate) struct OtelSink {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    in_flight: UpDownCounter<i64>,
    auth_failures: Counter<u64>,
    genai_duration: Histogram<f64>,
    genai_tokens: Histogram<u64>,
    genai_first_chunk: Histogram<f64>,
    genai_chunk_gap: Histogram<f64>,
    breaker_state: Gauge<i64>,
    breaker_transitions: Counter<u64>,
    breaker_not_permitted: Counter<u64>,
    rate_limit_rejections: Counter<u64>,
    rate_limit_wait: Histogram<f64>,
    retry_attempts: Counter<u64>,
    retry_budget_exhausted: Counter<u64>,
    retries_gave_up: Counter<u64>,
    failovers: Counter<u64>,
    hedges: Counter<u64>,

    red: Grid<Attributes>,
    flights: Grid<Attributes>,
    genai: Grid<Box<GenAiAttributes>>,
    limiters: Grid<Attributes>,
    breakers: Grid<Attributes>,
    failover_series: Grid<Attributes>,
}

impl OtelSink {
    pub(crate) fn new(prefix: &str, meter: &Meter, tables: &Tables) -> OtelSink {
        let seconds = |name: String, description: &'static str, buckets: &[f64]| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(buckets.to_vec())
                .build()
        };
        let counter = |name: String, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        OtelSink {
            requests: counter(
                format!("{prefix}.requests"),
                "{request}",
                "Requests by side, operation, model and outcome class.",
            ),
            duration: seconds(
                format!("{prefix}.request.duration"),
                "Request duration, from the call to the end of the response body.",
                &DURATION_BUCKETS,
            ),
            in_flight: meter
                .i64_up_down_counter(format!("{prefix}.requests.in_flight"))
                .with_unit("{request}")
                .with_description("Requests started whose response body has not ended.")
                .build(),
            auth_failures: counter(
                format!("{prefix}.auth_failures"),
                "{response}",
                "Responses refusing the credentials: 401 or 402.",
            ),
            genai_duration: seconds(
                "gen_ai.client.operation.duration".to_owned(),
                "GenAI operation duration.",
                &DURATION_BUCKETS,
            ),
            genai_tokens: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used.")
                .with_boundaries(TOKEN_BUCKETS.to_vec())
                .build(),
            genai_first_chunk: seconds(
                "gen_ai.client.operation.time_to_first_chunk".to_owned(),
                "Time to receive the first chunk of a streamed response.",
                &DURATION_BUCKETS,
            ),
            genai_chunk_gap: seconds(
                "gen_ai.client.operation.time_per_output_chunk".to_owned(),
                "Time per output chunk after the first, for streams.",
                &CHUNK_BUCKETS,
            ),
            breaker_state: meter
                .i64_gauge(format!("{prefix}.circuit_breaker.state"))
                .with_description("1 for the breaker's current state, 0 for the others.")
                .build(),
            breaker_transitions: counter(
                format!("{prefix}.circuit_breaker.transitions"),
                "{transition}",
                "Breaker state transitions.",
            ),
            breaker_not_permitted: counter(
                format!("{prefix}.circuit_breaker.not_permitted_calls"),
                "{call}",
                "Calls refused by a breaker.",
            ),
            rate_limit_rejections: counter(
                format!("{prefix}.rate_limit.rejections"),
                "{call}",
                "Calls refused by a rate limiter.",
            ),
            rate_limit_wait: seconds(
                format!("{prefix}.rate_limit.wait"),
                "Time calls waited for a rate limiter.",
                &WAIT_BUCKETS,
            ),
            retry_attempts: counter(
                format!("{prefix}.retry.attempts"),
                "{retry}",
                "Retries, by the outcome class of the attempt retried.",
            ),
            retry_budget_exhausted: counter(
                format!("{prefix}.retry.budget_exhausted"),
                "{retry}",
                "Retries refused because the retry budget was spent.",
            ),
            retries_gave_up: counter(
                format!("{prefix}.retries.gave_up"),
                "{call}",
                "Calls that failed after their last allowed attempt.",
            ),
            failovers: counter(
                format!("{prefix}.failovers"),
                "{call}",
                "Calls moved from one upstream to the next, by upstream left, upstream called and reason.",
            ),
            hedges: counter(
                format!("{prefix}.hedges"),
                "{call}",
                "Hedged requests: sent, won (the hedge answered first), budget_exhausted.",
            ),
            red: Grid::new(tables.red_size()),
            flights: Grid::new(tables.flight_size()),
            genai: Grid::new(tables.genai_size()),
            limiters: Grid::new(tables.limiters.dimension()),
            breakers: Grid::new(tables.breakers.dimension()),
            failover_series: Grid::new(tables.failover_size()),
        }
    }

    pub(crate) fn in_flight(&self, tables: &Tables, key: CallKey, index: usize, delta: i64) {
        if let Some(attributes) = self.flights.get(index, || {
            Box::new([
                kv("side", key.side.as_str()),
                kv("operation", tables.operations.name(key.op)),
                kv("model", tables.models.name(key.model)),
            ])
        }) {
            self.in_flight.add(delta, attributes);
        }
    }

    pub(crate) fn request(
        &self,
        tables: &Tables,
        key: CallKey,
        class: usize,
        index: usize,
        seconds: f64,
    ) {
        if let Some(attributes) = self.red.get(index, || {
            Box::new([
                kv("side", key.side.as_str()),
                kv("operation", tables.operations.name(key.op)),
                kv("model", tables.models.name(key.model)),
                kv("outcome", OUTCOMES[class]),
            ])
        }) {
            self.requests.add(1, attributes);
            self.duration.record(seconds, attributes);
        }
    }

    pub(crate) fn auth_failure(&self, side: Side, failure: AuthFailure) {
        self.auth_failures.add(
            1,
            &[
                KeyValue::new("side", side.as_str()),
                KeyValue::new("reason", auth_reason(failure)),
            ],
        );
    }

    fn attributes(&self, index: usize) -> Option<&GenAiAttributes> {
        self.genai.get(index, Box::default).map(|a| &**a)
    }

    fn base<'a>(
        &self,
        set: &'a GenAiAttributes,
        tables: &Tables,
        [op, request, response]: [usize; 3],
    ) -> &'a Attributes {
        set.base.get_or_init(|| {
            Box::new([
                kv("gen_ai.operation.name", tables.operations.name(op)),
                KeyValue::new("gen_ai.provider.name", PROVIDER),
                kv("gen_ai.request.model", tables.models.name(request)),
                kv("gen_ai.response.model", tables.models.name(response)),
            ])
        })
    }

    fn extend(base: &Attributes, extra: KeyValue) -> Attributes {
        base.iter().cloned().chain(std::iter::once(extra)).collect()
    }

    pub(crate) fn genai(
        &self,
        tables: &Tables,
        labels: [usize; 3],
        index: usize,
        record: &GenAiRecord,
    ) {
        let Some(set) = self.attributes(index) else {
            return;
        };
        let base = self.base(set, tables, labels);
        let class = record.error.unwrap_or(0);
        let duration = set.duration[class].get_or_init(|| match record.error {
            None => base.clone(),
            Some(class) => Self::extend(base, KeyValue::new("error.type", OUTCOMES[class])),
        });
        self.genai_duration
            .record(Duration::from_nanos(record.nanos).as_secs_f64(), duration);
        for (kind, tokens) in record.tokens() {
            let Some(attributes) = set.tokens.get(kind) else {
                continue;
            };
            let attributes = attributes.get_or_init(|| {
                Self::extend(base, KeyValue::new("gen_ai.token.type", TOKEN_TYPES[kind]))
            });
            self.genai_tokens.record(tokens, attributes);
        }
        if let Some(first) = record.first_chunk {
            self.genai_first_chunk.record(first, base);
        }
    }

    pub(crate) fn chunk_gap(
        &self,
        tables: &Tables,
        labels: [usize; 3],
        index: usize,
        seconds: f64,
    ) {
        if let Some(set) = self.attributes(index) {
            self.genai_chunk_gap
                .record(seconds, self.base(set, tables, labels));
        }
    }

    fn limiter(&self, tables: &Tables, limiter: usize) -> Option<&Attributes> {
        self.limiters.get(limiter, || {
            Box::new([kv("limiter", tables.limiters.name(limiter))])
        })
    }

    pub(crate) fn rate_limit_rejected(&self, tables: &Tables, limiter: usize) {
        if let Some(attributes) = self.limiter(tables, limiter) {
            self.rate_limit_rejections.add(1, attributes);
        }
    }

    pub(crate) fn rate_limit_waited(&self, tables: &Tables, limiter: usize, seconds: f64) {
        if let Some(attributes) = self.limiter(tables, limiter) {
            self.rate_limit_wait.record(seconds, attributes);
        }
    }

    pub(crate) fn retry_attempt(&self, class: usize) {
        self.retry_attempts
            .add(1, &[KeyValue::new("outcome", OUTCOMES[class])]);
    }

    pub(crate) fn retry_budget_exhausted(&self) {
        self.retry_budget_exhausted.add(1, &[]);
    }

    pub(crate) fn hedge(&self, outcome: usize) {
        if let Some(outcome) = HEDGE_OUTCOMES.get(outcome) {
            self.hedges.add(1, &[KeyValue::new("outcome", *outcome)]);
        }
    }

    pub(crate) fn retry_gave_up(&self) {
        self.retries_gave_up.add(1, &[]);
    }

    pub(crate) fn failover(&self, tables: &Tables, index: usize, [from, to, reason]: [usize; 3]) {
        if let Some(attributes) = self.failover_series.get(index, || {
            Box::new([
                kv("from", tables.upstreams.name(from)),
                kv("to", tables.upstreams.name(to)),
                KeyValue::new("reason", FAILOVER_REASONS[reason]),
            ])
        }) {
            self.failovers.add(1, attributes);
        }
    }

    fn breaker(&self, tables: &Tables, breaker: usize) -> Option<&KeyValue> {
        self.breakers
            .get(breaker, || {
                Box::new([kv("breaker", tables.breakers.name(breaker))])
            })
            .and_then(|attributes| attributes.first())
    }

    pub(crate) fn breaker_state(&self, tables: &Tables, breaker: usize, state: usize) {
        if let Some(name) = self.breaker(tables, breaker) {
            for (index, each) in STATES.iter().enumerate() {
                self.breaker_state.record(
                    i64::from(index == state),
                    &[name.clone(), KeyValue::new("state", each.as_str())],
                );
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
        if let Some(name) = self.breaker(tables, breaker) {
            self.breaker_transitions.add(
                1,
                &[
                    name.clone(),
                    KeyValue::new("from", STATES[from].as_str()),
                    KeyValue::new("to", STATES[to].as_str()),
                ],
            );
        }
        self.breaker_state(tables, breaker, to);
    }

    pub(crate) fn breaker_not_permitted(&self, tables: &Tables, breaker: usize, state: usize) {
        if let Some(name) = self.breaker(tables, breaker) {
            self.breaker_not_permitted.add(
                1,
                &[name.clone(), KeyValue::new("state", STATES[state].as_str())],
            );
        }
    }
}
