//! The per-call Prometheus instruments as plain atomics: the request counter, the request
//! duration, the in-flight gauge and the GenAI duration and token histograms.
//!
//! A call records into cells resolved by label index (no label lookup, no lock): a histogram
//! is one bucket counter and an integer sum (nanoseconds or tokens), its count being the sum
//! of its buckets; `<prefix>_requests_total` is the request-duration histogram's count; a
//! client call's request duration is not recorded twice: its series is the sum, over response
//! models, of the GenAI duration series with the same operation, request model and outcome
//! class (every client call records one, with the same duration); the in-flight gauge is
//! calls started minus calls recorded minus calls cancelled. A
//! [`Collector`] registered in the injected registry renders the same metric families (names,
//! help, labels, buckets) as `prometheus`'s own vectors would.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto;

use super::instruments::{
    DURATION_BUCKETS, OUTCOMES, PROVIDER, SIDES, Side, TOKEN_BUCKETS, TOKEN_TYPES, Tables,
};
use super::labels::Grid;

/// Buckets of a duration histogram (the bounds and `+Inf`).
const DURATION_CELLS: usize = DURATION_BUCKETS.len() + 1;
/// Buckets of a token histogram (the bounds and `+Inf`).
const TOKEN_CELLS: usize = TOKEN_BUCKETS.len() + 1;

/// A histogram: per-bucket (not cumulative) counts and the sum, in integer units.
pub(crate) struct Hist<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Default for Hist<N> {
    fn default() -> Self {
        Hist {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Hist<N> {
    /// Records `value` (bounds in the same unit, ascending, `N - 1` of them).
    #[inline]
    fn observe(&self, bounds: &[u64], value: u64) {
        // The first bound `value` does not exceed (Prometheus buckets are `le`).
        let index = bounds.partition_point(|&bound| bound < value);
        if let Some(bucket) = self.buckets.get(index) {
            // Release: a scrape that sees this call recorded also sees it started.
            bucket.fetch_add(1, Ordering::Release);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Adds this histogram's buckets and sum into `total`.
    fn add_to(&self, total: &mut Snapshot<N>) {
        for (sum, bucket) in total.buckets.iter_mut().zip(&self.buckets) {
            *sum = sum.wrapping_add(bucket.load(Ordering::Acquire));
        }
        total.sum = total.sum.wrapping_add(self.sum.load(Ordering::Relaxed));
    }
}

/// Buckets and sum read from one or more [`Hist`]s.
struct Snapshot<const N: usize> {
    buckets: [u64; N],
    sum: u64,
}

impl<const N: usize> Default for Snapshot<N> {
    fn default() -> Self {
        Snapshot {
            buckets: [0; N],
            sum: 0,
        }
    }
}

impl<const N: usize> Snapshot<N> {
    fn read(histogram: &Hist<N>) -> Snapshot<N> {
        let mut snapshot = Snapshot::default();
        histogram.add_to(&mut snapshot);
        snapshot
    }

    fn count(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0u64, |sum, n| sum.wrapping_add(*n))
    }

    fn proto(&self, bounds: &[f64], scale: f64) -> proto::Histogram {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(bounds.len());
        for (count, bound) in self.buckets.iter().zip(bounds) {
            cumulative = cumulative.wrapping_add(*count);
            let mut out = proto::Bucket::default();
            out.set_cumulative_count(cumulative);
            out.set_upper_bound(*bound);
            buckets.push(out);
        }
        let mut histogram = proto::Histogram::default();
        histogram.set_sample_count(self.count());
        histogram.set_sample_sum(self.sum as f64 / scale);
        histogram.set_bucket(buckets);
        histogram
    }
}

/// The in-flight count of one side × operation × model, as two monotonic counters (the
/// calls recorded are counted by the request histograms).
#[derive(Default)]
pub(crate) struct Flight {
    started: AtomicU64,
    cancelled: AtomicU64,
}

/// The GenAI histograms of one operation × request model × response model.
pub(crate) struct GenAiCells {
    duration: [Hist<DURATION_CELLS>; OUTCOMES.len()],
    tokens: [Hist<TOKEN_CELLS>; TOKEN_TYPES.len()],
}

impl Default for GenAiCells {
    fn default() -> Self {
        GenAiCells {
            duration: std::array::from_fn(|_| Hist::default()),
            tokens: std::array::from_fn(|_| Hist::default()),
        }
    }
}

/// The cells, shared by the sink (which records) and the collector (which renders).
pub(crate) struct CallCells {
    tables: Arc<Tables>,
    red: Grid<Box<Hist<DURATION_CELLS>>>,
    flights: Grid<Box<Flight>>,
    genai: Grid<Box<GenAiCells>>,
    duration_nanos: [u64; DURATION_BUCKETS.len()],
    token_bounds: [u64; TOKEN_BUCKETS.len()],
}

impl CallCells {
    pub(crate) fn new(tables: Arc<Tables>) -> CallCells {
        CallCells {
            red: Grid::new(tables.red_size()),
            flights: Grid::new(tables.flight_size()),
            genai: Grid::new(tables.genai_size()),
            // The bounds are round numbers of milliseconds and whole tokens: exact as integers.
            duration_nanos: DURATION_BUCKETS.map(|seconds| (seconds * 1e9).round() as u64),
            token_bounds: TOKEN_BUCKETS.map(|tokens| tokens as u64),
            tables,
        }
    }

    #[inline]
    pub(crate) fn call_started(&self, flight: usize) {
        if let Some(flight) = self.flights.get(flight, Box::default) {
            flight.started.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A call that ended without being recorded (its future or body dropped first).
    pub(crate) fn call_cancelled(&self, flight: usize) {
        if let Some(flight) = self.flights.get(flight, Box::default) {
            flight.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn request(&self, red: usize, nanos: u64) {
        if let Some(histogram) = self.red.get(red, Box::default) {
            histogram.observe(&self.duration_nanos, nanos);
        }
    }

    #[inline]
    pub(crate) fn genai(
        &self,
        index: usize,
        class: usize,
        nanos: u64,
        tokens: &[Option<u64>; TOKEN_TYPES.len()],
    ) {
        let Some(cells) = self.genai.get(index, Box::default) else {
            return;
        };
        if let Some(duration) = cells.duration.get(class) {
            duration.observe(&self.duration_nanos, nanos);
        }
        for (histogram, tokens) in cells.tokens.iter().zip(tokens) {
            if let Some(tokens) = *tokens {
                histogram.observe(&self.token_bounds, tokens);
            }
        }
    }
}

/// Renders the cells as the five metric families.
pub(crate) struct CallCollector {
    cells: Arc<CallCells>,
    /// Requests, request duration, in flight, GenAI duration, GenAI tokens.
    descs: [Desc; 5],
}

/// A metric's descriptor, as `prometheus`'s vectors build it.
pub(crate) fn desc(name: String, help: &str, labels: &[&str]) -> prometheus::Result<Desc> {
    Desc::new(
        name,
        help.to_owned(),
        labels.iter().map(|label| (*label).to_owned()).collect(),
        HashMap::new(),
    )
}

impl CallCollector {
    pub(crate) fn new(cells: Arc<CallCells>, descs: [Desc; 5]) -> CallCollector {
        CallCollector { cells, descs }
    }

    fn family(&self, which: usize, kind: proto::MetricType) -> proto::MetricFamily {
        let mut family = proto::MetricFamily::default();
        if let Some(desc) = self.descs.get(which) {
            family.set_name(desc.fq_name.clone());
            family.set_help(desc.help.clone());
        }
        family.set_field_type(kind);
        family
    }
}

/// A metric with these labels, sorted by name as `prometheus` sorts them.
fn metric(names: &[&str], values: &[&str]) -> proto::Metric {
    let mut pairs: Vec<proto::LabelPair> = names
        .iter()
        .zip(values)
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect();
    pairs.sort_by(|a, b| a.name().cmp(b.name()));
    let mut metric = proto::Metric::default();
    metric.set_label(pairs);
    metric
}

impl Collector for CallCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let cells = &*self.cells;
        let tables = &*cells.tables;
        let (operations, models) = (tables.operations.dimension(), tables.models.dimension());
        let red_labels = ["side", "operation", "model", "outcome"];
        let genai_labels = [
            "gen_ai_operation_name",
            "gen_ai_provider_name",
            "gen_ai_request_model",
            "gen_ai_response_model",
        ];
        // A flight index's labels: side × operation × model.
        let flight_names = |flight: usize| {
            let side = SIDES.get(flight / (operations * models)).copied();
            [
                side.unwrap_or("other"),
                tables.operations.name(flight / models % operations),
                tables.models.name(flight % models),
            ]
        };

        // For the in-flight gauge, calls cancelled are read first, then calls recorded, then
        // calls started: a call counted as ended is then always counted as started, and the
        // gauge never goes below zero.
        let cancelled: Vec<(usize, u64)> = cells
            .flights
            .iter()
            .map(|(flight, cell)| (flight, cell.cancelled.load(Ordering::Acquire)))
            .collect();

        // The request series by RED index: the server's as recorded, the client's summed from
        // the GenAI duration series (see the module docs).
        let mut red: BTreeMap<usize, Snapshot<DURATION_CELLS>> = cells
            .red
            .iter()
            .map(|(index, histogram)| (index, Snapshot::read(histogram)))
            .collect();
        let mut genai_duration = self.family(3, proto::MetricType::HISTOGRAM);
        let mut genai_tokens = self.family(4, proto::MetricType::HISTOGRAM);
        let (mut duration_series, mut token_series) = (Vec::new(), Vec::new());
        for (index, series) in cells.genai.iter() {
            let (op, request, response) = (
                index / (models * models),
                index / models % models,
                index % models,
            );
            let base = [
                tables.operations.name(op),
                PROVIDER,
                tables.models.name(request),
                tables.models.name(response),
            ];
            for (class, histogram) in series.duration.iter().enumerate() {
                let snapshot = Snapshot::read(histogram);
                if snapshot.count() == 0 {
                    continue;
                }
                histogram.add_to(
                    red.entry(tables.red_index(Side::Client, op, request, class))
                        .or_default(),
                );
                // Empty on success, as the semantic conventions leave `error.type` unset.
                let error = if class == 0 { "" } else { OUTCOMES[class] };
                let mut out = metric(
                    &[
                        genai_labels[0],
                        genai_labels[1],
                        genai_labels[2],
                        genai_labels[3],
                        "error_type",
                    ],
                    &[base[0], base[1], base[2], base[3], error],
                );
                out.set_histogram(snapshot.proto(&DURATION_BUCKETS, 1e9));
                duration_series.push(out);
            }
            for (kind, histogram) in series.tokens.iter().enumerate() {
                let snapshot = Snapshot::read(histogram);
                if snapshot.count() == 0 {
                    continue;
                }
                let mut out = metric(
                    &[
                        genai_labels[0],
                        genai_labels[1],
                        genai_labels[2],
                        genai_labels[3],
                        "gen_ai_token_type",
                    ],
                    &[base[0], base[1], base[2], base[3], TOKEN_TYPES[kind]],
                );
                out.set_histogram(snapshot.proto(&TOKEN_BUCKETS, 1.0));
                token_series.push(out);
            }
        }
        genai_duration.set_metric(duration_series);
        genai_tokens.set_metric(token_series);

        let mut requests = self.family(0, proto::MetricType::COUNTER);
        let mut durations = self.family(1, proto::MetricType::HISTOGRAM);
        let (mut counts, mut histograms) = (Vec::new(), Vec::new());
        for (index, snapshot) in &red {
            let [side, op, model] = flight_names(index / OUTCOMES.len());
            let outcome = OUTCOMES.get(index % OUTCOMES.len()).copied();
            let values = [side, op, model, outcome.unwrap_or("other")];
            let mut count = metric(&red_labels, &values);
            let mut counter = proto::Counter::default();
            counter.set_value(snapshot.count() as f64);
            count.set_counter(counter);
            counts.push(count);
            let mut duration = metric(&red_labels, &values);
            duration.set_histogram(snapshot.proto(&DURATION_BUCKETS, 1e9));
            histograms.push(duration);
        }
        requests.set_metric(counts);
        durations.set_metric(histograms);

        let mut flights = self.family(2, proto::MetricType::GAUGE);
        let mut in_flight = Vec::new();
        for (flight, cancelled) in cancelled {
            let recorded = red
                .range(flight * OUTCOMES.len()..(flight + 1) * OUTCOMES.len())
                .map(|(_, snapshot)| snapshot.count())
                .fold(0u64, u64::wrapping_add);
            let started = cells
                .flights
                .peek(flight)
                .map_or(0, |cell| cell.started.load(Ordering::Acquire));
            let value = started.saturating_sub(recorded).saturating_sub(cancelled);
            let mut out = metric(&red_labels[..3], &flight_names(flight));
            let mut gauge = proto::Gauge::default();
            gauge.set_value(value as f64);
            out.set_gauge(gauge);
            in_flight.push(out);
        }
        flights.set_metric(in_flight);

        vec![requests, durations, flights, genai_duration, genai_tokens]
    }
}
