//! The adaptive limit: admission against an atomic limit that a [`LimitAlgorithm`] moves.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::aimd::Aimd;
use super::body::{ConcurrencyBody, Slot};
use super::limit::{LimitAlgorithm, Sample};
use super::{ConcurrencyEvent, ConcurrencyListener, DEFAULT_RETRY_AFTER};
use crate::classify::{Classify, DeepSeekClassifier, Observation, Outcome};
use crate::error::{BoxError, Error, ErrorKind};

/// Where a call's latency sample ends.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SampleMeasure {
    /// At the response head (default): a long generation is output, not latency, so the time
    /// to the head is what tells a queueing upstream from a free one.
    #[default]
    Head,
    /// At the end of the response body (for short, non-streamed calls).
    BodyEnd,
}

/// Whether an outcome says the upstream is overloaded: a timeout, a 429, a 503 (or 529, the
/// "overloaded" status some providers use).
fn is_drop(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Timeout(_) | Outcome::RateLimited { .. } => true,
        Outcome::Server(status) => {
            *status == StatusCode::SERVICE_UNAVAILABLE || status.as_u16() == 529
        }
        _ => false,
    }
}

/// What the adaptive limit shares between its layer, services and in-flight calls.
struct Shared {
    name: Arc<str>,
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    algorithm: Mutex<Box<dyn LimitAlgorithm>>,
    classifier: Box<dyn Classify>,
    measure: SampleMeasure,
    retry_after: Duration,
    listener: Option<Arc<dyn ConcurrencyListener>>,
}

impl Shared {
    fn on_sample(&self, sample: Sample) {
        // One short critical section per completed call: the algorithms keep state that
        // must see samples one at a time (as Netflix's `synchronized onSample`). A poisoned
        // lock (a custom algorithm panicked) keeps the last state.
        let new = {
            let mut algorithm = match self.algorithm.lock() {
                Ok(algorithm) => algorithm,
                Err(poisoned) => poisoned.into_inner(),
            };
            algorithm.update(&sample).max(1)
        };
        let old = self.limit.swap(new, Ordering::Relaxed);
        if old != new {
            tracing::debug!(limiter = %self.name, old, new, "concurrency limit changed");
            if let Some(listener) = &self.listener {
                listener.on_event(&ConcurrencyEvent::LimitChanged {
                    limiter: &self.name,
                    old,
                    new,
                });
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn shed(&self, in_flight: usize, limit: usize) -> Error {
        if let Some(listener) = &self.listener {
            listener.on_event(&ConcurrencyEvent::Shed {
                limiter: &self.name,
                in_flight,
                limit,
            });
        }
        tracing::debug!(limiter = %self.name, in_flight, limit, "call shed");
        super::overloaded(&self.name, in_flight, limit, self.retry_after)
    }
}

/// One admitted call of the adaptive limit: counts in `in_flight` until dropped, and owes at
/// most one sample.
pub(crate) struct AdaptiveSlot {
    shared: Arc<Shared>,
    started: Instant,
    in_flight: usize,
    pending: bool,
}

impl AdaptiveSlot {
    fn sample(&mut self, dropped: bool) {
        if std::mem::take(&mut self.pending) {
            let sample = Sample {
                rtt: self.started.elapsed(),
                in_flight: self.in_flight,
                dropped,
                started: self.started,
            };
            self.shared.on_sample(sample);
        }
    }

    /// Judges an outcome: a drop is sampled as one, a success is sampled when `now` is the
    /// measuring point, anything else (a 4xx, a network error) says nothing about load.
    #[inline]
    fn judge(&mut self, outcome: &Outcome, measuring_point: bool) {
        if is_drop(outcome) {
            self.sample(true);
        } else if !outcome.is_success() {
            self.pending = false;
        } else if measuring_point {
            self.sample(false);
        }
    }

    pub(crate) fn body_ended(&mut self) {
        self.sample(false);
    }

    pub(crate) fn body_failed(&mut self, error: &(dyn StdError + 'static)) {
        if self.pending {
            let outcome = self.shared.classifier.classify(Observation::Error(error));
            self.judge(&outcome, false);
            self.pending = false;
        }
    }
}

impl Drop for AdaptiveSlot {
    #[inline]
    fn drop(&mut self) {
        // A call dropped before its sample was taken is ignored (Netflix `onIgnore`).
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A concurrency limit that adapts: calls are admitted while `in_flight < limit`, and each
/// completed call feeds a [`Sample`] to a [`LimitAlgorithm`] ([`Aimd`] by default) that moves
/// the limit. Over the limit, a call is shed at once with
/// [`ErrorKind::Overloaded`](crate::ErrorKind::Overloaded) (no queue: a queue would hide the
/// latency the algorithm reads).
///
/// A sample's latency runs from `call` to the response head (or to the body's end, see
/// [`SampleMeasure`]); `dropped` is set when the outcome (through the classifier,
/// [`DeepSeekClassifier`] by default) is a timeout, a 429 or a 503. A call whose future or
/// body is dropped first gives no sample; other errors (4xx, network) give none either. The
/// slot itself is held until the body ends, as with the fixed limit.
///
/// Admission is one `fetch_add` on the in-flight count checked against the limit (undone
/// when over): it never admits more than the limit, though a shrinking limit does not evict
/// calls already in flight. Like Envoy's filter, there is no lock on admission; the algorithm
/// is updated under a short lock per completed call.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::concurrency::{AdaptiveConcurrencyLayer, Aimd};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let outbound = AdaptiveConcurrencyLayer::builder()
///     .name("deepseek")
///     .algorithm(Aimd::builder().initial_limit(10).min_limit(2).max_limit(64).build()?)
///     .build()?;
/// assert_eq!(outbound.limit(), 10);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AdaptiveConcurrencyLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for AdaptiveConcurrencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_shared(f, "AdaptiveConcurrencyLayer", &self.shared)
    }
}

fn debug_shared(f: &mut fmt::Formatter<'_>, name: &str, shared: &Shared) -> fmt::Result {
    f.debug_struct(name)
        .field("name", &shared.name)
        .field("limit", &shared.limit.load(Ordering::Relaxed))
        .field("in_flight", &shared.in_flight.load(Ordering::Relaxed))
        .field("measure", &shared.measure)
        .field("retry_after", &shared.retry_after)
        .finish_non_exhaustive()
}

impl AdaptiveConcurrencyLayer {
    /// A builder: [`Aimd`] with Netflix's defaults, latency to the head, `Retry-After` 1 s.
    pub fn builder() -> AdaptiveConcurrencyLayerBuilder {
        AdaptiveConcurrencyLayerBuilder {
            name: Arc::from("adaptive"),
            algorithm: Box::new(Aimd::default()),
            classifier: Box::new(DeepSeekClassifier),
            measure: SampleMeasure::Head,
            retry_after: DEFAULT_RETRY_AFTER,
            listener: None,
        }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for AdaptiveConcurrencyLayer {
    type Service = AdaptiveConcurrencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveConcurrencyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// Builds an [`AdaptiveConcurrencyLayer`].
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::concurrency::{AdaptiveConcurrencyLayer, Gradient2, SampleMeasure};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = AdaptiveConcurrencyLayer::builder()
///     .algorithm(Gradient2::builder().min_limit(4).initial_limit(16).build()?)
///     .measure(SampleMeasure::Head)
///     .retry_after(Duration::from_secs(2))
///     .build()?;
/// assert_eq!(layer.limit(), 16);
/// # Ok(())
/// # }
/// ```
pub struct AdaptiveConcurrencyLayerBuilder {
    name: Arc<str>,
    algorithm: Box<dyn LimitAlgorithm>,
    classifier: Box<dyn Classify>,
    measure: SampleMeasure,
    retry_after: Duration,
    listener: Option<Arc<dyn ConcurrencyListener>>,
}

impl fmt::Debug for AdaptiveConcurrencyLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrencyLayerBuilder")
            .field("name", &self.name)
            .field("limit", &self.algorithm.limit())
            .field("measure", &self.measure)
            .field("retry_after", &self.retry_after)
            .field("listener", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

impl AdaptiveConcurrencyLayerBuilder {
    /// Names the limiter in errors, events and logs (default `"adaptive"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The algorithm (default [`Aimd`] with Netflix's defaults: 20 to 200).
    pub fn algorithm(mut self, algorithm: impl LimitAlgorithm) -> Self {
        self.algorithm = Box::new(algorithm);
        self
    }

    /// Decides which outcomes are drops (default [`DeepSeekClassifier`]).
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Box::new(classifier);
        self
    }

    /// Where a latency sample ends (default [`SampleMeasure::Head`]).
    pub fn measure(mut self, measure: SampleMeasure) -> Self {
        self.measure = measure;
        self
    }

    /// The `Retry-After` hint of a shed call, above zero (default 1 s).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }

    /// Hears every [`ConcurrencyEvent`].
    pub fn listener(mut self, listener: impl ConcurrencyListener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<AdaptiveConcurrencyLayer, Error> {
        super::validate_retry_after(self.retry_after)?;
        let limit = self.algorithm.limit();
        if limit == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "adaptive concurrency: the algorithm's initial limit must be at least 1",
            ));
        }
        Ok(AdaptiveConcurrencyLayer {
            shared: Arc::new(Shared {
                name: self.name,
                in_flight: AtomicUsize::new(0),
                limit: AtomicUsize::new(limit),
                algorithm: Mutex::new(self.algorithm),
                classifier: self.classifier,
                measure: self.measure,
                retry_after: self.retry_after,
                listener: self.listener,
            }),
        })
    }
}

/// The service made by [`AdaptiveConcurrencyLayer`]. Like the fixed limit's, its
/// `poll_ready` is the inner service's and admission happens in `call`.
#[derive(Clone)]
pub struct AdaptiveConcurrencyService<S> {
    inner: S,
    layer: AdaptiveConcurrencyLayer,
}

impl<S> fmt::Debug for AdaptiveConcurrencyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_shared(f, "AdaptiveConcurrencyService", &self.layer.shared)
    }
}

impl<S> AdaptiveConcurrencyService<S> {
    /// The layer (its name, `in_flight()`, `limit()`).
    pub fn layer(&self) -> &AdaptiveConcurrencyLayer {
        &self.layer
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.layer.in_flight()
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.layer.limit()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqB, RespB> Service<Request<ReqB>> for AdaptiveConcurrencyService<S>
where
    S: Service<Request<ReqB>, Response = Response<RespB>>,
    S::Error: Into<BoxError>,
    RespB: http_body::Body,
{
    type Response = Response<ConcurrencyBody<RespB>>;
    type Error = Error;
    type Future = AdaptiveResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = &self.layer.shared;
        let before = shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let limit = shared.limit.load(Ordering::Relaxed);
        if before >= limit {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            return AdaptiveResponseFuture {
                state: AdaptiveState::Shed {
                    error: Some(shared.shed(before, limit)),
                },
            };
        }
        // The slot exists before the inner call, so even a panicking `call` gives it back.
        let slot = AdaptiveSlot {
            shared: Arc::clone(shared),
            started: Instant::now(),
            in_flight: before + 1,
            pending: true,
        };
        AdaptiveResponseFuture {
            state: AdaptiveState::Calling {
                future: self.inner.call(request),
                slot: Some(slot),
            },
        }
    }
}

pin_project! {
    /// The future of an [`AdaptiveConcurrencyService`] call: the inner call holding its slot,
    /// or a shed call's error. A pinned enum of states, no boxing.
    pub struct AdaptiveResponseFuture<F> {
        #[pin]
        state: AdaptiveState<F>,
    }
}

pin_project! {
    #[project = AdaptiveStateProj]
    enum AdaptiveState<F> {
        Calling {
            #[pin]
            future: F,
            slot: Option<AdaptiveSlot>,
        },
        Shed {
            error: Option<Error>,
        },
    }
}

impl<F> fmt::Debug for AdaptiveResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            AdaptiveState::Calling { .. } => "calling",
            AdaptiveState::Shed { .. } => "shed",
        };
        f.debug_struct("AdaptiveResponseFuture")
            .field("state", &state)
            .finish()
    }
}

fn polled_after_completion() -> Error {
    Error::new(
        ErrorKind::InvalidRequest,
        "a concurrency limit response future was polled after it completed",
    )
}

impl<F, B, E> Future for AdaptiveResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<ConcurrencyBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            AdaptiveStateProj::Calling { future, slot } => {
                let result = ready!(future.poll(cx));
                let Some(mut slot) = slot.take() else {
                    return Poll::Ready(Err(polled_after_completion()));
                };
                Poll::Ready(match result {
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        let outcome = slot.shared.classifier.classify(Observation::Head {
                            status: parts.status,
                            headers: &parts.headers,
                        });
                        let at_head = slot.shared.measure == SampleMeasure::Head;
                        slot.judge(&outcome, at_head || body.is_end_stream());
                        let slot = if body.is_end_stream() {
                            Slot::Released
                        } else {
                            Slot::Adaptive(slot)
                        };
                        Ok(Response::from_parts(
                            parts,
                            ConcurrencyBody::new(body, slot),
                        ))
                    }
                    Err(error) => {
                        let error = Error::from_boxed(error.into());
                        let outcome = slot.shared.classifier.classify(Observation::Error(&error));
                        slot.judge(&outcome, false);
                        Err(error)
                    }
                })
            }
            AdaptiveStateProj::Shed { error } => {
                Poll::Ready(Err(error.take().unwrap_or_else(polled_after_completion)))
            }
        }
    }
}
