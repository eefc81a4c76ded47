//! The request-rate layer, its builder, its service and its response future.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Request;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::backend::{Decide, Decision, DirectLimiter, RateLimitBackend};
use super::events::{RateLimitEvent, RateLimitListener};
use super::key::{Global, KeyExtractor};
use crate::error::{BoxError, Error, ErrorKind, RateLimitInfo};

/// A random extra wait added to every wait of a waiting limiter, so callers released together
/// do not all retry at the same instant: `min + U[0, interval)`.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::rate_limit::Jitter;
///
/// let jitter = Jitter::new(Duration::from_millis(10), Duration::from_millis(5));
/// let mut rng = fastrand::Rng::with_seed(7);
/// let extra = jitter.sample(&mut rng);
/// assert!(extra >= Duration::from_millis(10) && extra < Duration::from_millis(15));
/// assert_eq!(Jitter::NONE.sample(&mut rng), Duration::ZERO);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Jitter {
    min: Duration,
    interval: Duration,
}

impl Jitter {
    /// No jitter.
    pub const NONE: Jitter = Jitter {
        min: Duration::ZERO,
        interval: Duration::ZERO,
    };

    /// At least `min`, plus a uniform random part in `[0, interval)`.
    pub fn new(min: Duration, interval: Duration) -> Jitter {
        Jitter { min, interval }
    }

    /// Draws one extra wait from `rng`.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        let span = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        let random = if span == 0 { 0 } else { rng.u64(0..span) };
        self.min.saturating_add(Duration::from_nanos(random))
    }
}

/// The policy and backend every service of one layer shares.
pub(crate) struct Limits<Bk> {
    pub(crate) name: Arc<str>,
    pub(crate) backend: Bk,
    /// `None`: refuse at once. `Some(max)`: wait up to `max` in total, then refuse.
    pub(crate) max_wait: Option<Duration>,
    pub(crate) jitter: Jitter,
    pub(crate) rng: Mutex<fastrand::Rng>,
    pub(crate) listener: Option<Box<dyn RateLimitListener>>,
}

impl<Bk> Limits<Bk> {
    #[inline]
    pub(crate) fn emit(&self, event: RateLimitEvent<'_>) {
        if let Some(listener) = &self.listener {
            listener.on_event(&event);
        }
    }

    /// The refusal for a call that must wait `wait`: event, log, and the error with its
    /// headers.
    #[cold]
    pub(crate) fn reject(&self, wait: Duration, info: RateLimitInfo) -> Error {
        self.emit(RateLimitEvent::Rejected {
            limiter: &self.name,
            wait,
        });
        tracing::debug!(limiter = %self.name, wait_ms = wait.as_millis() as u64, "rate limited");
        Error::rate_limited(
            format!("rate limit {:?} refused the call", self.name),
            wait,
            info,
        )
    }

    #[cold]
    pub(crate) fn exceeded(&self, cost: u32, limit: u64) -> Error {
        self.emit(RateLimitEvent::Rejected {
            limiter: &self.name,
            wait: Duration::ZERO,
        });
        Error::new(
            ErrorKind::InvalidRequest,
            format!(
                "rate limit {:?}: the call costs {cost} but the burst is {limit}, so it can never pass",
                self.name
            ),
        )
    }

    #[cold]
    pub(crate) fn unavailable(&self, fail_open: bool, limit: u64) -> Option<Error> {
        self.emit(RateLimitEvent::BackendUnavailable {
            limiter: &self.name,
            fail_open,
        });
        tracing::warn!(limiter = %self.name, fail_open, "rate limit backend unavailable");
        (!fail_open).then(|| {
            let wait = Duration::from_secs(1);
            Error::rate_limited(
                format!(
                    "rate limit {:?}: its backend is unavailable and it fails closed",
                    self.name
                ),
                wait,
                RateLimitInfo::new(limit, 0, wait),
            )
        })
    }

    /// The wait to sleep (the limiter's wait plus jitter) when it fits in what is left of
    /// the wait budget, measured from `started`.
    fn wait_within_budget(&self, retry_after: Duration, started: Instant) -> Option<Duration> {
        let max_wait = self.max_wait?;
        let jitter = if self.jitter == Jitter::NONE {
            Duration::ZERO
        } else {
            let mut rng = self
                .rng
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.jitter.sample(&mut rng)
        };
        let wait = retry_after.saturating_add(jitter);
        let spent = started.elapsed();
        (spent.saturating_add(wait) <= max_wait).then_some(wait)
    }
}

/// Limits the rate of calls through a service with GCRA (governor): one global limit
/// ([`build`](super::RateLimitBuilder::build)), one per key ([`build_keyed`](super::RateLimitBuilder::build_keyed)),
/// or any [`RateLimitBackend`] ([`build_with_backend`](super::RateLimitBuilder::build_with_backend)).
/// Clones of the layer, and every service it makes, share one limiter. See the
/// [module docs](super) for the semantics.
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::ErrorKind;
/// use tower_deepseek::rate_limit::RateLimitLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = RateLimitLayer::builder().name("outbound").per_second(2).build()?;
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// });
/// service.clone().oneshot(http::Request::new(())).await?;
/// service.clone().oneshot(http::Request::new(())).await?;
/// let refused = service.clone().oneshot(http::Request::new(())).await.unwrap_err();
/// assert_eq!(refused.kind(), ErrorKind::RateLimited);
/// assert_eq!(refused.retry_after(), Some(Duration::from_millis(500)));
/// tokio::time::advance(Duration::from_millis(500)).await;
/// service.oneshot(http::Request::new(())).await?;
/// # Ok(())
/// # }
/// ```
pub struct RateLimitLayer<E = Global, Bk = DirectLimiter> {
    pub(super) extractor: Arc<E>,
    pub(super) limits: Arc<Limits<Bk>>,
}

impl<E, Bk> Clone for RateLimitLayer<E, Bk> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            extractor: Arc::clone(&self.extractor),
            limits: Arc::clone(&self.limits),
        }
    }
}

impl<E, Bk> fmt::Debug for RateLimitLayer<E, Bk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.limits.name)
            .field("max_wait", &self.limits.max_wait)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A builder: set a rate, then build.
    pub fn builder() -> super::RateLimitBuilder {
        super::RateLimitBuilder::default()
    }
}

impl<E, Bk> RateLimitLayer<E, Bk> {
    /// The shared backend (e.g. a [`KeyedLimiter`](super::KeyedLimiter), to read its size).
    pub fn backend(&self) -> &Bk {
        &self.limits.backend
    }

    /// The layer's name (in errors, logs and events).
    pub fn name(&self) -> &str {
        &self.limits.name
    }
}

impl<S, E, Bk> Layer<S> for RateLimitLayer<E, Bk> {
    type Service = RateLimitService<S, E, Bk>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            extractor: Arc::clone(&self.extractor),
            limits: Arc::clone(&self.limits),
        }
    }
}

/// The service made by [`RateLimitLayer`].
pub struct RateLimitService<S, E = Global, Bk = DirectLimiter> {
    inner: S,
    extractor: Arc<E>,
    limits: Arc<Limits<Bk>>,
}

impl<S: Clone, E, Bk> Clone for RateLimitService<S, E, Bk> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            extractor: Arc::clone(&self.extractor),
            limits: Arc::clone(&self.limits),
        }
    }
}

impl<S, E, Bk> fmt::Debug for RateLimitService<S, E, Bk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("name", &self.limits.name)
            .finish_non_exhaustive()
    }
}

impl<S, E, Bk> RateLimitService<S, E, Bk> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

const ONE: NonZeroU32 = NonZeroU32::MIN;

impl<S, E, Bk, ReqB, T> Service<Request<ReqB>> for RateLimitService<S, E, Bk>
where
    S: Service<Request<ReqB>, Response = T> + Clone,
    S::Error: Into<BoxError>,
    E: KeyExtractor<ReqB>,
    Bk: RateLimitBackend<E::Key>,
{
    type Response = T;
    type Error = Error;
    type Future = ResponseFuture<S, Request<ReqB>, E::Key, Bk>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Nothing is reserved here: the decision is taken in `call`, so a ready clone that is
        // never called holds no capacity, and a waiting call never holds this service.
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let key = self.extractor.extract(&request);
        match self.limits.backend.decide(&key, ONE) {
            Decide::Now(Decision::Allowed) => ResponseFuture {
                state: State::Called {
                    future: self.inner.call(request),
                },
            },
            Decide::Now(decision) => self.not_allowed_now(decision, key, request),
            Decide::Later(decision) => self.slow(Stage::Deciding { decision }, key, request),
        }
    }
}

impl<S, E, Bk> RateLimitService<S, E, Bk> {
    /// The slow path of `call`: refuse, wait, or (an unavailable backend failing open) call.
    #[cold]
    fn not_allowed_now<ReqB, K>(
        &mut self,
        decision: Decision,
        key: K,
        request: Request<ReqB>,
    ) -> ResponseFuture<S, Request<ReqB>, K, Bk>
    where
        S: Service<Request<ReqB>> + Clone,
        Bk: RateLimitBackend<K>,
    {
        let limits = &self.limits;
        let error = match decision {
            Decision::Allowed => None,
            Decision::Limited { retry_after, info } => {
                match limits.wait_within_budget(retry_after, Instant::now()) {
                    Some(wait) => {
                        let sleep = tokio::time::sleep(wait);
                        return self.slow(Stage::Sleeping { sleep }, key, request);
                    }
                    None => Some(limits.reject(retry_after, info)),
                }
            }
            Decision::Exceeded { limit } => Some(limits.exceeded(1, limit)),
            Decision::Unavailable { fail_open } => {
                limits.unavailable(fail_open, limits.backend.limit())
            }
        };
        let state = match error {
            Some(error) => State::Rejected { error: Some(error) },
            None => State::Called {
                future: self.inner.call(request),
            },
        };
        ResponseFuture { state }
    }

    /// Moves the call into the boxed slow state machine with an unready clone of the inner
    /// service (driven ready only once admitted: a waiting call holds no inner readiness).
    #[cold]
    fn slow<ReqB, K>(
        &mut self,
        stage: Stage<Bk::Future>,
        key: K,
        request: Request<ReqB>,
    ) -> ResponseFuture<S, Request<ReqB>, K, Bk>
    where
        S: Service<Request<ReqB>> + Clone,
        Bk: RateLimitBackend<K>,
    {
        ResponseFuture {
            state: State::Slow {
                slow: Box::pin(Slow {
                    stage,
                    service: self.inner.clone(),
                    request: Some(request),
                    key,
                    limits: Arc::clone(&self.limits),
                    started: Instant::now(),
                    slept: false,
                }),
            },
        }
    }
}

pin_project! {
    /// The future of a [`RateLimitService`] call: the admitted inner call, a refusal, or (boxed,
    /// off the fast path) a call waiting for capacity or for an asynchronous backend.
    pub struct ResponseFuture<S, Req, K, Bk>
    where
        S: Service<Req>,
        Bk: RateLimitBackend<K>,
    {
        #[pin]
        state: State<S, Req, K, Bk>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, K, Bk>
    where
        S: Service<Req>,
        Bk: RateLimitBackend<K>,
    {
        Called {
            #[pin]
            future: S::Future,
        },
        Rejected {
            error: Option<Error>,
        },
        Slow {
            slow: Pin<Box<Slow<S, Req, K, Bk>>>,
        },
    }
}

impl<S, Req, K, Bk> fmt::Debug for ResponseFuture<S, Req, K, Bk>
where
    S: Service<Req>,
    Bk: RateLimitBackend<K>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
            State::Slow { .. } => "waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, Req, K, Bk, T> Future for ResponseFuture<S, Req, K, Bk>
where
    S: Service<Req, Response = T>,
    S::Error: Into<BoxError>,
    Bk: RateLimitBackend<K>,
{
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let future = match self.as_mut().project().state.project() {
                StateProj::Called { future } => {
                    return future
                        .poll(cx)
                        .map_err(|error| Error::from_boxed(error.into()));
                }
                StateProj::Rejected { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidRequest,
                            "a rate limit response future was polled after it completed",
                        )
                    })));
                }
                StateProj::Slow { slow } => match ready!(slow.as_mut().poll(cx)) {
                    Ok(future) => future,
                    Err(error) => {
                        self.as_mut()
                            .project()
                            .state
                            .set(State::Rejected { error: None });
                        return Poll::Ready(Err(error));
                    }
                },
            };
            self.as_mut().project().state.set(State::Called { future });
        }
    }
}

pin_project! {
    #[project = StageProj]
    pub(crate) enum Stage<F> {
        // Waiting for an asynchronous backend's decision.
        Deciding {
            #[pin]
            decision: F,
        },
        // Sleeping until capacity frees up.
        Sleeping {
            #[pin]
            sleep: Sleep,
        },
        // Admitted: driving the inner service's clone ready.
        Readying,
    }
}

pin_project! {
    /// A call off the fast path. Resolves to the inner call's future once admitted.
    pub(crate) struct Slow<S, Req, K, Bk>
    where
        Bk: RateLimitBackend<K>,
    {
        #[pin]
        stage: Stage<Bk::Future>,
        service: S,
        request: Option<Req>,
        key: K,
        limits: Arc<Limits<Bk>>,
        started: Instant,
        slept: bool,
    }
}

impl<S, Req, K, Bk> Future for Slow<S, Req, K, Bk>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Bk: RateLimitBackend<K>,
{
    type Output = Result<S::Future, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let decision = match this.stage.as_mut().project() {
                StageProj::Deciding { decision } => ready!(decision.poll(cx)),
                StageProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    *this.slept = true;
                    match this.limits.backend.decide(this.key, ONE) {
                        Decide::Now(decision) => decision,
                        Decide::Later(decision) => {
                            this.stage.set(Stage::Deciding { decision });
                            continue;
                        }
                    }
                }
                StageProj::Readying => {
                    ready!(this.service.poll_ready(cx))
                        .map_err(|error| Error::from_boxed(error.into()))?;
                    let Some(request) = this.request.take() else {
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::InvalidRequest,
                            "a rate limit response future was polled after it completed",
                        )));
                    };
                    if *this.slept {
                        this.limits.emit(RateLimitEvent::Waited {
                            limiter: &this.limits.name,
                            waited: this.started.elapsed(),
                        });
                    }
                    return Poll::Ready(Ok(this.service.call(request)));
                }
            };
            let limits = &**this.limits;
            match decision {
                Decision::Allowed => this.stage.set(Stage::Readying),
                Decision::Limited { retry_after, info } => {
                    match limits.wait_within_budget(retry_after, *this.started) {
                        Some(wait) => this.stage.set(Stage::Sleeping {
                            sleep: tokio::time::sleep(wait),
                        }),
                        None => return Poll::Ready(Err(limits.reject(retry_after, info))),
                    }
                }
                Decision::Exceeded { limit } => {
                    return Poll::Ready(Err(limits.exceeded(1, limit)));
                }
                Decision::Unavailable { fail_open } => {
                    match limits.unavailable(fail_open, limits.backend.limit()) {
                        Some(error) => return Poll::Ready(Err(error)),
                        None => this.stage.set(Stage::Readying),
                    }
                }
            }
        }
    }
}
