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
//!
//! Each series keeps one copy of its cells per recording thread ([`Sharded`]): a thread holds
//! a slot of its own ([`thread_shard`]) while it lives, so its cells have a single writer and
//! a record is a plain load and store, not a locked read-modify-write (which costs tens of
//! cycles even uncontended, and a call makes several). A scrape sums the copies, so totals
//! stay exact. Threads beyond [`OWNED_SHARDS`] share one more copy, updated with atomic adds.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto;

use super::instruments::{
    DURATION_BUCKETS, GenAiRecord, OUTCOMES, PROVIDER, SIDES, Side, TOKEN_BUCKETS, TOKEN_TYPES,
    Tables,
};
use super::labels::Grid;

/// How many threads at once record into cells of their own (a tokio runtime's workers are
/// one per core); any further thread records into the shared copy.
pub(crate) const OWNED_SHARDS: usize = 64;

/// Slots given back by threads that ended, for the next threads to take.
static FREE_SLOTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// The next slot never given out.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// A thread's slot: its index into every [`Sharded`], `OWNED_SHARDS` for the shared copy.
struct ThreadSlot(usize);

impl ThreadSlot {
    fn acquire() -> ThreadSlot {
        let reused = FREE_SLOTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let slot = reused.unwrap_or_else(|| NEXT_SLOT.fetch_add(1, Ordering::Relaxed));
        ThreadSlot(slot.min(OWNED_SHARDS))
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        // The thread records nothing more through this slot (a later access from its exit
        // finds the key destroyed and uses the shared copy). The lock orders this thread's
        // last stores before the next owner's first loads.
        if self.0 < OWNED_SHARDS {
            FREE_SLOTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.0);
        }
    }
}

thread_local! {
    static SLOT: ThreadSlot = ThreadSlot::acquire();
}

/// The calling thread's shard: below [`OWNED_SHARDS`] it is this thread's alone until it
/// ends; `OWNED_SHARDS` is the shared copy.
#[inline]
pub(crate) fn thread_shard() -> usize {
    SLOT.try_with(|slot| slot.0).unwrap_or(OWNED_SHARDS)
}

/// Adds `n` to a cell: a plain load and store when the calling thread owns the cell's copy
/// (`owned`: it is the only writer), an atomic add on the shared copy. Release: a scrape
/// that sees this update also sees what the call did before it (its start).
#[inline(always)]
fn add(cell: &AtomicU64, n: u64, owned: bool) {
    if owned {
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Release,
        );
    } else {
        cell.fetch_add(n, Ordering::Release);
    }
}

/// A thread's copy, on cache lines of its own (128 bytes: lines are fetched in pairs), so
/// that two threads' cells never share one.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// One copy of `T` per owned thread slot (allocated when that thread first records into
/// it) and a shared copy for threads without a slot.
pub(crate) struct Sharded<T> {
    owned: [OnceLock<Box<Padded<T>>>; OWNED_SHARDS],
    shared: T,
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded {
            owned: std::array::from_fn(|_| OnceLock::new()),
            shared: T::default(),
        }
    }
}

impl<T: Default> Sharded<T> {
    /// The copy of `shard` (see [`thread_shard`]), and whether the caller owns it.
    #[inline]
    fn shard(&self, shard: usize) -> (&T, bool) {
        match self.owned.get(shard) {
            Some(slot) => (&slot.get_or_init(Box::default).0, true),
            None => (&self.shared, false),
        }
    }

    /// Every copy that exists.
    fn copies(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.shared).chain(
            self.owned
                .iter()
                .filter_map(|slot| slot.get().map(|padded| &padded.0)),
        )
    }
}

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
    /// Records `value` (bounds in the same unit, ascending, `N - 1` of them); `owned` as in
    /// [`add`].
    #[inline]
    fn observe(&self, bounds: &[u64], value: u64, owned: bool) {
        // The first bound `value` does not exceed (Prometheus buckets are `le`).
        let index = bounds.partition_point(|&bound| bound < value);
        // The sum first: a scrape that sees the bucket's count sees the sum too.
        add(&self.sum, value, owned);
        if let Some(bucket) = self.buckets.get(index) {
            add(bucket, 1, owned);
        }
    }

    /// Records `value` in the bucket at `index` (out of range: the sum only, never a
    /// panic), for a caller that computed the bucket itself; `owned` as in [`add`].
    #[inline]
    fn observe_at(&self, index: usize, value: u64, owned: bool) {
        add(&self.sum, value, owned);
        if let Some(bucket) = self.buckets.get(index) {
            add(bucket, 1, owned);
        }
    }

    /// Adds this histogram's buckets and sum into `total`.
    fn add_to(&self, total: &mut Snapshot<N>) {
        for (sum, bucket) in total.buckets.iter_mut().zip(&self.buckets) {
            *sum = sum.wrapping_add(bucket.load(Ordering::Acquire));
        }
        total.sum = total.sum.wrapping_add(self.sum.load(Ordering::Acquire));
    }
}

/// The token bucket of `tokens` (the first bound it does not exceed), computed instead of
/// searched: the bounds are the powers of four from 4^0 to 4^13, so a count above 4^(k-1)
/// and at most 4^k (k ≥ 1) has `tokens - 1` of 2k-1 or 2k significant bits, and
/// half of `bits`, rounded up, is k. Past the last bound it is the `+Inf` bucket.
#[inline]
fn token_bucket(tokens: u64) -> usize {
    const _: () = {
        let mut k = 0;
        while k < TOKEN_BUCKETS.len() {
            assert!(TOKEN_BUCKETS[k] == (1u64 << (2 * k)) as f64);
            k += 1;
        }
    };
    let bits = (u64::BITS - tokens.saturating_sub(1).leading_zeros()) as usize;
    bits.div_ceil(2).min(TOKEN_BUCKETS.len())
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
    /// The sum of every thread's copy of one histogram.
    fn read<'a, T: 'a>(
        copies: impl Iterator<Item = &'a T>,
        histogram: impl Fn(&T) -> &Hist<N>,
    ) -> Snapshot<N> {
        let mut snapshot = Snapshot::default();
        for copy in copies {
            histogram(copy).add_to(&mut snapshot);
        }
        snapshot
    }

    fn add(&mut self, other: &Snapshot<N>) {
        for (sum, n) in self.buckets.iter_mut().zip(&other.buckets) {
            *sum = sum.wrapping_add(*n);
        }
        self.sum = self.sum.wrapping_add(other.sum);
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
    red: Grid<Box<Sharded<Hist<DURATION_CELLS>>>>,
    flights: Grid<Box<Sharded<Flight>>>,
    genai: Grid<Box<Sharded<GenAiCells>>>,
    duration_nanos: [u64; DURATION_BUCKETS.len()],
}

impl CallCells {
    pub(crate) fn new(tables: Arc<Tables>) -> CallCells {
        CallCells {
            red: Grid::new(tables.red_size()),
            flights: Grid::new(tables.flight_size()),
            genai: Grid::new(tables.genai_size()),
            // The bounds are round numbers of milliseconds: exact as integers.
            duration_nanos: DURATION_BUCKETS.map(|seconds| (seconds * 1e9).round() as u64),
            tables,
        }
    }

    #[inline]
    pub(crate) fn call_started(&self, flight: usize) {
        if let Some(flight) = self.flights.get(flight, Box::default) {
            let (flight, owned) = flight.shard(thread_shard());
            add(&flight.started, 1, owned);
        }
    }

    /// A call that ended without being recorded (its future or body dropped first).
    pub(crate) fn call_cancelled(&self, flight: usize) {
        if let Some(flight) = self.flights.get(flight, Box::default) {
            let (flight, owned) = flight.shard(thread_shard());
            add(&flight.cancelled, 1, owned);
        }
    }

    #[inline]
    pub(crate) fn request(&self, red: usize, nanos: u64) {
        if let Some(histogram) = self.red.get(red, Box::default) {
            let (histogram, owned) = histogram.shard(thread_shard());
            histogram.observe(&self.duration_nanos, nanos, owned);
        }
    }

    #[inline]
    pub(crate) fn genai(&self, index: usize, class: usize, nanos: u64, record: &GenAiRecord) {
        let Some(cells) = self.genai.get(index, Box::default) else {
            return;
        };
        let (cells, owned) = cells.shard(thread_shard());
        if let Some(duration) = cells.duration.get(class) {
            duration.observe(&self.duration_nanos, nanos, owned);
        }
        for (kind, tokens) in record.tokens() {
            if let Some(histogram) = cells.tokens.get(kind) {
                histogram.observe_at(token_bucket(tokens), tokens, owned);
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
            .map(|(flight, cell)| {
                let cancelled = cell
                    .copies()
                    .map(|copy| copy.cancelled.load(Ordering::Acquire))
                    .fold(0u64, u64::wrapping_add);
                (flight, cancelled)
            })
            .collect();

        // The request series by RED index: the server's as recorded, the client's summed from
        // the GenAI duration series (see the module docs).
        let mut red: BTreeMap<usize, Snapshot<DURATION_CELLS>> = cells
            .red
            .iter()
            .map(|(index, histogram)| (index, Snapshot::read(histogram.copies(), |copy| copy)))
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
            for (class, error) in OUTCOMES.iter().enumerate() {
                let snapshot = Snapshot::read(series.copies(), |copy| &copy.duration[class]);
                if snapshot.count() == 0 {
                    continue;
                }
                red.entry(tables.red_index(Side::Client, op, request, class))
                    .or_default()
                    .add(&snapshot);
                // Empty on success, as the semantic conventions leave `error.type` unset.
                let error = if class == 0 { "" } else { error };
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
            for (kind, token_type) in TOKEN_TYPES.iter().enumerate() {
                let snapshot = Snapshot::read(series.copies(), |copy| &copy.tokens[kind]);
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
                    &[base[0], base[1], base[2], base[3], token_type],
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
            let started = cells.flights.peek(flight).map_or(0, |cell| {
                cell.copies()
                    .map(|copy| copy.started.load(Ordering::Acquire))
                    .fold(0u64, u64::wrapping_add)
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The computed token bucket is the one the search over the bounds finds, at every bound,
    /// either side of it, and at the extremes.
    #[test]
    fn token_bucket_agrees_with_the_bucket_search() {
        let bounds = TOKEN_BUCKETS.map(|tokens| tokens as u64);
        let search = |tokens: u64| bounds.partition_point(|&bound| bound < tokens);
        let mut values = vec![0, 1, 2, 3, u64::MAX - 1, u64::MAX, 1 << 62, (1 << 63) + 1];
        for bound in bounds {
            values.extend([bound - 1, bound, bound + 1, bound * 2, bound * 3]);
        }
        values.extend(0..5000);
        for tokens in values {
            assert_eq!(token_bucket(tokens), search(tokens), "{tokens}");
        }
    }
}
