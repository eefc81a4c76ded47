//! The request-rate layer, its builder, its service and its response future.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
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

use super::backend::{Decide, Decision, DirectLimiter, KeyedLimiter, RateLimitBackend, quota};
use super::events::{RateLimitEvent, RateLimitListener};
use super::key::{Global, HeaderKey, KeyExtractor};
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
/// ([`build`](RateLimitBuilder::build)), one per key ([`build_keyed`](RateLimitBuilder::build_keyed)),
/// or any [`RateLimitBackend`] ([`build_with_backend`](RateLimitBuilder::build_with_backend)).
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
    extractor: Arc<E>,
    limits: Arc<Limits<Bk>>,
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
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder::default()
    }
}

impl<E, Bk> RateLimitLayer<E, Bk> {
    /// The shared backend (e.g. a [`KeyedLimiter`], to read its size).
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

/// Builds a [`RateLimitLayer`] (or a [`TokenLimitLayer`](super::TokenLimitLayer)'s limiter).
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`per_second`](Self::per_second) / [`per_minute`](Self::per_minute) / [`rate`](Self::rate) | none (required) | the sustained rate |
/// | [`burst`](Self::burst) | the rate's count | calls that may pass at once |
/// | [`wait_up_to`](Self::wait_up_to) | refuse at once | wait for capacity up to this long in total, then refuse |
/// | [`jitter`](Self::jitter) | none | extra random wait on each wait |
/// | [`jitter_seed`](Self::jitter_seed) | random | make jitter reproducible |
/// | [`evict_every`](Self::evict_every) | time to refill a burst, ≥ 1 s | idle-key sweep (keyed) |
/// | [`name`](Self::name) | `"rate_limit"` | names the layer in errors, logs, events |
///
/// Zero rates, zero bursts, zero periods are refused by `build` with a
/// [`Config`](ErrorKind::Config) error naming the value.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::ErrorKind;
/// use tower_deepseek::rate_limit::{HeaderKey, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let per_key = RateLimitLayer::builder()
///     .name("inbound")
///     .per_minute(600)
///     .burst(20)
///     .wait_up_to(Duration::from_millis(250))
///     .build_per_api_key()?;
/// # let _ = per_key;
/// let per_path = RateLimitLayer::builder()
///     .per_second(5)
///     .build_keyed::<_, String>(|request: &http::Request<()>| request.uri().path().to_owned())?;
/// # let _ = per_path;
/// let zero = RateLimitLayer::builder().per_second(10).burst(0).build().unwrap_err();
/// assert_eq!(zero.kind(), ErrorKind::Config);
/// assert!(zero.to_string().contains("burst"));
/// # Ok(())
/// # }
/// ```
pub struct RateLimitBuilder {
    name: Arc<str>,
    rate: Option<(u32, Duration)>,
    burst: Option<u32>,
    max_wait: Option<Duration>,
    jitter: Jitter,
    seed: Option<u64>,
    evict_every: Option<Duration>,
    listener: Option<Box<dyn RateLimitListener>>,
}

impl Default for RateLimitBuilder {
    fn default() -> Self {
        RateLimitBuilder {
            name: Arc::from("rate_limit"),
            rate: None,
            burst: None,
            max_wait: None,
            jitter: Jitter::NONE,
            seed: None,
            evict_every: None,
            listener: None,
        }
    }
}

impl fmt::Debug for RateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("max_wait", &self.max_wait)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

impl RateLimitBuilder {
    /// Names the layer (in errors, logs and events; never a key).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// `count` calls per second.
    pub fn per_second(self, count: u32) -> Self {
        self.rate(count, Duration::from_secs(1))
    }

    /// `count` calls per minute.
    pub fn per_minute(self, count: u32) -> Self {
        self.rate(count, Duration::from_secs(60))
    }

    /// `count` calls per `period` (one call every `period / count`).
    pub fn rate(mut self, count: u32, period: Duration) -> Self {
        self.rate = Some((count, period));
        self
    }

    /// How many calls may pass at once (the bucket's capacity). Default: the rate's count.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Over the limit, wait for capacity up to `max_wait` in total (jitter included) instead
    /// of refusing at once; a call whose wait would not fit is refused at once, without
    /// sleeping first.
    pub fn wait_up_to(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Adds [`Jitter`] to every wait.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Seeds the jitter's random numbers, for reproducible waits (tests).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How often a keyed limiter sweeps idle keys (see [`KeyedLimiter`]).
    pub fn evict_every(mut self, every: Duration) -> Self {
        self.evict_every = Some(every);
        self
    }

    /// Hears every [`RateLimitEvent`].
    pub fn listener(mut self, listener: impl RateLimitListener) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    pub(crate) fn checked_quota(&self) -> Result<governor::Quota, Error> {
        let Some((count, period)) = self.rate else {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "rate limit {:?}: no rate set (use per_second, per_minute or rate)",
                    self.name
                ),
            ));
        };
        quota(&self.name, count, period, self.burst)
    }

    pub(crate) fn keyed_backend<K>(&self) -> Result<KeyedLimiter<K>, Error>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        KeyedLimiter::from_quota(&self.name, self.checked_quota()?, self.evict_every)
    }

    pub(crate) fn into_limits<Bk>(self, backend: Bk) -> Limits<Bk> {
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Limits {
            name: self.name,
            backend,
            max_wait: self.max_wait,
            jitter: self.jitter,
            rng: Mutex::new(rng),
            listener: self.listener,
        }
    }

    /// One global limit.
    pub fn build(self) -> Result<RateLimitLayer, Error> {
        let backend = DirectLimiter::from_quota(self.checked_quota()?);
        Ok(RateLimitLayer {
            extractor: Arc::new(Global),
            limits: Arc::new(self.into_limits(backend)),
        })
    }

    /// One limit per caller API key: keyed by a keyed hash of the `authorization` header
    /// ([`HeaderKey::authorization`]; the key itself is never stored).
    pub fn build_per_api_key(self) -> Result<RateLimitLayer<HeaderKey, KeyedLimiter<u64>>, Error> {
        self.build_keyed(HeaderKey::authorization())
    }

    /// One limit per key, the key picked by `extractor` (see [`KeyExtractor`]). The key type
    /// `K` is inferred from the service the layer wraps; name it (`build_keyed::<_, u64>`)
    /// when the layer is built apart from any service and the extractor (such as
    /// [`HeaderKey`], which serves every body type) does not fix it.
    pub fn build_keyed<E, K>(
        self,
        extractor: E,
    ) -> Result<RateLimitLayer<E, KeyedLimiter<K>>, Error>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        let backend = self.keyed_backend()?;
        Ok(RateLimitLayer {
            extractor: Arc::new(extractor),
            limits: Arc::new(self.into_limits(backend)),
        })
    }

    /// Decides through `backend` (e.g. the Redis GCRA shared by every replica). The rate,
    /// burst and eviction settings of this builder are not used: the backend has its own.
    pub fn build_with_backend<E, Bk>(
        self,
        extractor: E,
        backend: Bk,
    ) -> Result<RateLimitLayer<E, Bk>, Error> {
        Ok(RateLimitLayer {
            extractor: Arc::new(extractor),
            limits: Arc::new(self.into_limits(backend)),
        })
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

/// Turns a rate limiter's refusal into the HTTP answer a server owes its client: `429 Too Many
/// Requests` with `Retry-After` (whole seconds, rounded up, never 0) and
/// `x-ratelimit-limit`/`-remaining`/`-reset`, in the OpenAI error shape
/// ([`Error::to_http_response`]). Other errors pass through. Put it outside the
/// [`RateLimitLayer`] of a plain hyper (or tower-http) server whose body type can be made from a
/// `String`; with axum, the crate's `Error` is `IntoResponse` already (feature `axum`).
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::rate_limit::{RateLimitLayer, RateLimitResponseLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let service = ServiceBuilder::new()
///     .layer(RateLimitResponseLayer)
///     .layer(RateLimitLayer::builder().per_second(1).build()?)
///     .service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
///     });
/// assert_eq!(service.clone().oneshot(http::Request::new(())).await?.status(), 200);
/// let refused = service.oneshot(http::Request::new(())).await?;
/// assert_eq!(refused.status(), 429);
/// assert_eq!(refused.headers()["retry-after"], "1");
/// assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RateLimitResponseLayer;

impl<S> Layer<S> for RateLimitResponseLayer {
    type Service = RateLimitResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitResponse { inner }
    }
}

/// The service made by [`RateLimitResponseLayer`].
#[derive(Clone, Debug)]
pub struct RateLimitResponse<S> {
    inner: S,
}

impl<S, Req, B> Service<Req> for RateLimitResponse<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: From<String>,
{
    type Response = http::Response<B>;
    type Error = Error;
    type Future = RateLimitResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        RateLimitResponseFuture {
            future: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The future of a [`RateLimitResponse`] call.
    #[derive(Debug)]
    pub struct RateLimitResponseFuture<F> {
        #[pin]
        future: F,
    }
}

impl<F, B, E> Future for RateLimitResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: From<String>,
{
    type Output = Result<http::Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match ready!(self.project().future.poll(cx)) {
            Ok(response) => Poll::Ready(Ok(response)),
            Err(error) => {
                let error = Error::from_boxed(error.into());
                if error.kind() == ErrorKind::RateLimited && error.status().is_none() {
                    Poll::Ready(Ok(error.to_http_response().map(B::from)))
                } else {
                    Poll::Ready(Err(error))
                }
            }
        }
    }
}
