//! The tower layer, its service, its response future and its body observer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::CircuitState;
use super::config::{
    CancelPolicy, CircuitBreakerBuilder, OpenWait, SlidingWindow, SlowCallMeasure,
};
use super::events::CircuitBreakerListener;
use super::fallback::{Fallback, FallbackResponse, NoFallback};
use super::state::{CircuitBreaker, Permit, Verdict};
use crate::body::{BodyEvent, BodyFormat, BodyObserver, ObservedBody};
use crate::classify::{Classify, Observation, Outcome, classify_status};
use crate::clock::Stamp;
use crate::error::{BoxError, Error, ErrorKind};

/// The response body of a [`CircuitBreakerService`]: the inner body, observed so that a stream
/// that fails after a `200` head counts as a failure (see [`crate::body`]).
pub type CircuitBreakerBody<B> = ObservedBody<B, BreakerObserver>;

/// Protects a service with a [`CircuitBreaker`]; all services made by one layer (and their
/// clones) share it. See the [module docs](super) for the semantics.
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::circuit_breaker::{CircuitBreakerLayer, CircuitState};
/// use tower_deepseek::ErrorKind;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = CircuitBreakerLayer::builder().minimum_calls(2).build()?;
/// let breaker = layer.breaker().clone();
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<()>| async {
///     let mut response = Response::new(Full::new(bytes::Bytes::new()));
///     *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// for _ in 0..2 {
///     let response = service.clone().oneshot(Request::new(())).await?;
///     assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
/// }
/// assert_eq!(breaker.state(), CircuitState::Open);
/// let refused = service.oneshot(Request::new(())).await.unwrap_err();
/// assert!(matches!(refused.kind(), ErrorKind::CircuitOpen(_)));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreakerLayer<F = NoFallback> {
    breaker: CircuitBreaker,
    fallback: F,
}

impl<F> fmt::Debug for CircuitBreakerLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A layer around an existing breaker (share one breaker between several stacks).
    pub fn new(breaker: CircuitBreaker) -> CircuitBreakerLayer {
        CircuitBreakerLayer {
            breaker,
            fallback: NoFallback,
        }
    }

    /// A builder with resilience4j's defaults (see [`CircuitBreakerBuilder`]).
    pub fn builder() -> CircuitBreakerLayerBuilder {
        CircuitBreakerLayerBuilder {
            inner: CircuitBreakerBuilder::new(),
        }
    }

    /// A builder starting from a profile, e.g. [`CircuitBreakerBuilder::hystrix`].
    pub fn from_builder(builder: CircuitBreakerBuilder) -> CircuitBreakerLayerBuilder {
        CircuitBreakerLayerBuilder { inner: builder }
    }
}

impl<F> CircuitBreakerLayer<F> {
    /// The shared breaker (to read its state and metrics, or operate it).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Answers refused calls with `fallback` instead of the circuit-open error (see
    /// [`fallback`](super::fallback)).
    pub fn with_fallback<G>(self, fallback: G) -> CircuitBreakerLayer<G> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            fallback,
        }
    }
}

impl<S, F: Clone> Layer<S> for CircuitBreakerLayer<F> {
    type Service = CircuitBreakerService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

macro_rules! forward {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $($arg: $ty),*) -> Self {
                self.inner = self.inner.$name($($arg),*);
                self
            }
        )*
    };
}

/// Builds a [`CircuitBreakerLayer`]: the settings of [`CircuitBreakerBuilder`] (which documents
/// them and their defaults), then [`build`](Self::build).
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::circuit_breaker::{CircuitBreakerLayer, SlowCallMeasure};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = CircuitBreakerLayer::builder()
///     .slow_call_duration(Duration::from_secs(20))
///     .slow_call_measure(SlowCallMeasure::FirstToken)
///     .build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayerBuilder {
    inner: CircuitBreakerBuilder,
}

impl CircuitBreakerLayerBuilder {
    forward! {
        /// See [`CircuitBreakerBuilder::name`].
        fn name(name: impl Into<Arc<str>>);
        /// See [`CircuitBreakerBuilder::failure_rate_threshold`].
        fn failure_rate_threshold(percent: f32);
        /// See [`CircuitBreakerBuilder::no_failure_rate`].
        fn no_failure_rate();
        /// See [`CircuitBreakerBuilder::slow_call_rate_threshold`].
        fn slow_call_rate_threshold(percent: f32);
        /// See [`CircuitBreakerBuilder::no_slow_calls`].
        fn no_slow_calls();
        /// See [`CircuitBreakerBuilder::slow_call_duration`].
        fn slow_call_duration(duration: Duration);
        /// See [`CircuitBreakerBuilder::slow_call_measure`].
        fn slow_call_measure(measure: SlowCallMeasure);
        /// See [`CircuitBreakerBuilder::sliding_window`].
        fn sliding_window(window: SlidingWindow);
        /// See [`CircuitBreakerBuilder::minimum_calls`].
        fn minimum_calls(calls: u32);
        /// See [`CircuitBreakerBuilder::consecutive_failures`].
        fn consecutive_failures(failures: u32);
        /// See [`CircuitBreakerBuilder::half_open_calls`].
        fn half_open_calls(calls: u32);
        /// See [`CircuitBreakerBuilder::open_wait`].
        fn open_wait(wait: impl Into<OpenWait>);
        /// See [`CircuitBreakerBuilder::max_wait_in_half_open`].
        fn max_wait_in_half_open(wait: Duration);
        /// See [`CircuitBreakerBuilder::after_half_open_wait`].
        fn after_half_open_wait(state: CircuitState);
        /// See [`CircuitBreakerBuilder::fatal_wait`].
        fn fatal_wait(wait: Duration);
        /// See [`CircuitBreakerBuilder::no_fatal_state`].
        fn no_fatal_state();
        /// See [`CircuitBreakerBuilder::cancel_policy`].
        fn cancel_policy(policy: CancelPolicy);
        /// See [`CircuitBreakerBuilder::observe_body`].
        fn observe_body(observe: bool);
        /// See [`CircuitBreakerBuilder::initial_state`].
        fn initial_state(state: CircuitState);
        /// See [`CircuitBreakerBuilder::classifier`].
        fn classifier(classifier: impl Classify);
        /// See [`CircuitBreakerBuilder::listener`].
        fn listener(listener: impl CircuitBreakerListener);
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<CircuitBreakerLayer, Error> {
        Ok(CircuitBreakerLayer::new(self.inner.build()?))
    }
}

/// The service made by [`CircuitBreakerLayer`].
#[derive(Clone)]
pub struct CircuitBreakerService<S, F = NoFallback> {
    inner: S,
    breaker: CircuitBreaker,
    fallback: F,
}

impl<S, F> fmt::Debug for CircuitBreakerService<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, F> CircuitBreakerService<S, F> {
    /// The shared breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, F, ReqB, RespB> Service<Request<ReqB>> for CircuitBreakerService<S, F>
where
    S: Service<Request<ReqB>, Response = Response<RespB>>,
    S::Error: Into<BoxError>,
    F: Fallback<Request<ReqB>, RespB>,
    RespB: http_body::Body,
{
    type Response = Response<CircuitBreakerBody<RespB>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, F::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Admission is decided in `call`: nothing is reserved here, so a ready clone that is
        // never called holds no half-open permit.
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    #[inline(always)]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        dispatch(&self.breaker, &mut self.inner, &mut self.fallback, request)
    }
}

/// Admits or refuses one call: the body of `call`, shared with the keyed service.
#[inline(always)]
pub(crate) fn dispatch<S, F, ReqB, RespB>(
    breaker: &CircuitBreaker,
    inner: &mut S,
    fallback: &mut F,
    request: Request<ReqB>,
) -> ResponseFuture<S::Future, F::Future>
where
    S: Service<Request<ReqB>, Response = Response<RespB>>,
    F: Fallback<Request<ReqB>, RespB>,
{
    match breaker.acquire() {
        Ok(permit) => ResponseFuture {
            state: State::Called {
                future: inner.call(request),
                permit: Some(permit),
            },
        },
        Err(rejection) => refuse(breaker, fallback, request, rejection),
    }
}

/// A refused call: the fallback answers. Inline on purpose: both arms of [`dispatch`] then
/// build their future where the caller keeps it; an out-of-line refusal made the compiler
/// build every future in a temporary and copy it (152 bytes in the bench, twice a call,
/// about 15 ns). The refusal's own work stays out of line in [`fallback_marker`].
#[inline(always)]
fn refuse<FS, FB, ReqB, RespB>(
    breaker: &CircuitBreaker,
    fallback: &mut FB,
    request: Request<ReqB>,
    rejection: Error,
) -> ResponseFuture<FS, FB::Future>
where
    FB: Fallback<Request<ReqB>, RespB>,
{
    let marker = fallback_marker(breaker, &rejection);
    ResponseFuture {
        state: State::Fallback {
            future: fallback.fallback(request, rejection),
            marker,
        },
    }
}

/// What marks a fallback's answer to a refused call.
#[cold]
#[inline(never)]
fn fallback_marker(breaker: &CircuitBreaker, rejection: &Error) -> Option<FallbackResponse> {
    match rejection.kind() {
        ErrorKind::CircuitOpen(reason) => Some(FallbackResponse {
            breaker: Arc::clone(&breaker.core().config.name),
            reason,
            retry_after: rejection.retry_after(),
        }),
        _ => None,
    }
}

pin_project! {
    /// The future of a [`CircuitBreakerService`] call: the inner call holding its permit, or
    /// the fallback of a refused call. A pinned enum of states, no boxing.
    pub struct ResponseFuture<F, FB> {
        #[pin]
        state: State<F, FB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, FB> {
        // The call was admitted.
        Called {
            #[pin]
            future: F,
            permit: Option<Permit>,
        },
        // The call was refused; the fallback (or the error) answers.
        Fallback {
            #[pin]
            future: FB,
            marker: Option<FallbackResponse>,
        },
    }
}

impl<F, FB> fmt::Debug for ResponseFuture<F, FB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Called { permit, .. } => f
                .debug_struct("ResponseFuture::Called")
                .field("permit", permit)
                .finish_non_exhaustive(),
            State::Fallback { marker, .. } => f
                .debug_struct("ResponseFuture::Fallback")
                .field("marker", marker)
                .finish_non_exhaustive(),
        }
    }
}

impl<F, FB, B, E> Future for ResponseFuture<F, FB>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    FB: Future<Output = Result<Response<B>, Error>>,
    B: http_body::Body,
{
    type Output = Result<Response<CircuitBreakerBody<B>>, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future, permit } => {
                let result = ready!(future.poll(cx));
                let Some(permit) = permit.take() else {
                    return Poll::Ready(Err(polled_after_completion()));
                };
                Poll::Ready(match result {
                    Ok(response) => Ok(observe(permit, response)),
                    Err(error) => Err(failed(permit, error.into())),
                })
            }
            StateProj::Fallback { future, marker } => {
                let result = ready!(future.poll(cx));
                Poll::Ready(result.map(|response| refused(response, marker.take())))
            }
        }
    }
}

#[cold]
#[inline(never)]
fn polled_after_completion() -> Error {
    Error::new(
        ErrorKind::InvalidRequest,
        "a circuit breaker response future was polled after it completed",
    )
}

/// The inner call failed: judged by its error.
#[cold]
#[inline(never)]
fn failed(permit: Permit, error: BoxError) -> Error {
    let error = Error::from_boxed(error);
    let outcome = permit
        .core()
        .config
        .classifier
        .classify(Observation::Error(&error));
    let verdict = permit.verdict_of(outcome);
    let duration = permit.elapsed();
    permit.complete_verdict(verdict, duration);
    error
}

/// The fallback's answer to a refused call, marked. Inline for the reason [`refuse`] is.
#[inline(always)]
fn refused<B>(
    response: Response<B>,
    marker: Option<FallbackResponse>,
) -> Response<CircuitBreakerBody<B>>
where
    B: http_body::Body,
{
    let (mut parts, body) = response.into_parts();
    if let Some(marker) = marker {
        mark(&mut parts.extensions, marker);
    }
    // A refused call has no permit: nothing in its body matters to the breaker.
    Response::from_parts(parts, ObservedBody::finished(body, BreakerObserver::done()))
}

#[cold]
#[inline(never)]
fn mark(extensions: &mut http::Extensions, marker: FallbackResponse) {
    extensions.insert(marker);
}

/// Judges the response head; a success whose body is still to come is judged by its body.
#[inline(always)]
fn observe<B>(permit: Permit, response: Response<B>) -> Response<CircuitBreakerBody<B>>
where
    B: http_body::Body,
{
    let config = &permit.core().config;
    let outcome = if config.default_classifier {
        classify_status(response.status(), response.headers())
    } else {
        config.classifier.classify(Observation::Head {
            status: response.status(),
            headers: response.headers(),
        })
    };
    let verdict = permit.verdict_of(outcome);
    let pending =
        verdict == Verdict::Success && config.observe_body && !response.body().is_end_stream();
    if pending {
        let first_token = config.slow_call_measure == SlowCallMeasure::FirstToken;
        let measured_at = if first_token || !permit.is_timed() {
            None
        } else {
            Some(Stamp::now())
        };
        let format = BodyFormat::from_headers(response.headers());
        let observer = BreakerObserver {
            permit: Some(permit),
            measured_at,
        };
        return response.map(|body| ObservedBody::new(body, format, observer));
    }
    if verdict == Verdict::Success {
        permit.complete_success(None);
    } else {
        let duration = permit.elapsed();
        permit.complete_verdict(verdict, duration);
    }
    // Judged at the head: the body only passes through.
    response.map(|body| ObservedBody::finished(body, BreakerObserver::done()))
}

/// The breaker's [`BodyObserver`]: holds the call's permit until the body says how the call
/// ended. Compose it with other observers through [`crate::body`]'s tuple impls.
pub struct BreakerObserver {
    permit: Option<Permit>,
    // When the measured moment (the head, or the first token) passed: the call's duration is
    // taken from it at the end, so the observer carries a stamp, not a `Duration`. Whether
    // the moment is the first token is read from the config when a token comes.
    measured_at: Option<Stamp>,
}

impl fmt::Debug for BreakerObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerObserver")
            .field("pending", &self.permit.is_some())
            .field("measured", &self.measured_at.is_some())
            .finish()
    }
}

impl BreakerObserver {
    fn done() -> BreakerObserver {
        BreakerObserver {
            permit: None,
            measured_at: None,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            let verdict = permit.verdict_of(outcome);
            if verdict == Verdict::Success {
                return permit.complete_success(self.measured_at);
            }
            let duration = match self.measured_at {
                Some(at) => permit.duration_until(at),
                None => permit.elapsed(),
            };
            permit.complete_verdict(verdict, duration);
        }
    }
}

impl BodyObserver for BreakerObserver {
    #[inline]
    fn observe(&mut self, event: BodyEvent<'_>) {
        let Some(permit) = &self.permit else {
            return;
        };
        match event {
            BodyEvent::FirstToken
                if self.measured_at.is_none()
                    && permit.is_timed()
                    && permit.core().config.slow_call_measure == SlowCallMeasure::FirstToken =>
            {
                self.measured_at = Some(Stamp::now());
            }
            BodyEvent::End(end) => {
                let outcome = end.outcome(&*permit.core().config.classifier);
                self.finish(outcome);
            }
            BodyEvent::Error(error) => {
                let outcome = permit
                    .core()
                    .config
                    .classifier
                    .classify(Observation::Error(error));
                self.finish(outcome);
            }
            BodyEvent::Dropped(end) if end.is_conclusive() => {
                let outcome = end.outcome(&*permit.core().config.classifier);
                self.finish(outcome);
            }
            BodyEvent::Dropped(_) => {
                // The reader lost interest before the upstream said anything conclusive:
                // nothing to hold against it (a half-open permit goes back).
                if let Some(permit) = self.permit.take() {
                    permit.complete_verdict(Verdict::Ignored, None);
                }
            }
            _ => {}
        }
    }

    fn is_done(&self) -> bool {
        self.permit.is_none()
    }
}
