//! The tower layer, its service, its response future and its response body.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Buf;
use http::header::ACCEPT;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::config::{HedgeConfig, HedgeLayerBuilder};
use super::events::HedgeEvent;
use crate::body::{BodyFormat, ReadAhead};
use crate::classify::Observation;
use crate::error::{BoxError, Error, ErrorKind};
use crate::retry::ReplayBody;
use crate::retry::template::Template;

/// Hedged requests: a non-streaming call still unanswered after a latency percentile gets a
/// second attempt; the first answer wins and the other is cancelled. All services made by
/// one layer (and their clones) share its latency window and budget. See the
/// [module docs](super) for the semantics and the token cost.
///
/// ```
/// use std::time::Duration;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::hedge::HedgeLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = HedgeLayer::builder()
///     .min_samples(1)
///     .max_extra_percent(100.0)
///     .min_delay(Duration::from_millis(200))
///     .build()?;
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
/// let seen = calls.clone();
/// let service = ServiceBuilder::new().layer(layer.clone()).service_fn(move |_req: Request<Full<bytes::Bytes>>| {
///     // The second call is stuck; every other answers at once.
///     let stuck = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1;
///     async move {
///         if stuck {
///             tokio::time::sleep(Duration::from_secs(60)).await;
///         }
///         Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from("{}"))))
///     }
/// });
/// service.clone().oneshot(Request::new(Full::default())).await?; // one latency sample
/// let started = tokio::time::Instant::now();
/// let response = service.oneshot(Request::new(Full::default())).await?;
/// // The stuck call was hedged after 200 ms (the floor) and the hedge answered.
/// assert_eq!(started.elapsed(), Duration::from_millis(200));
/// assert_eq!(response.into_body().collect().await?.to_bytes(), "{}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HedgeLayer {
    config: Arc<HedgeConfig>,
}

impl fmt::Debug for HedgeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl HedgeLayer {
    /// A builder with the defaults (see [`HedgeLayerBuilder`]).
    pub fn builder() -> HedgeLayerBuilder {
        HedgeLayerBuilder::default()
    }

    pub(crate) fn from_config(config: HedgeConfig) -> HedgeLayer {
        HedgeLayer {
            config: Arc::new(config),
        }
    }

    /// A layer that never hedges: every call passes through untouched. The gateway's
    /// default, so its stack has one type whether `[hedge] enabled` is set or not.
    ///
    /// ```
    /// use tower_deepseek::hedge::HedgeLayer;
    /// assert!(!HedgeLayer::disabled().is_enabled());
    /// ```
    pub fn disabled() -> HedgeLayer {
        // The defaults are valid (`build` would accept them); a disabled layer uses none anyway.
        HedgeLayer::from_config(HedgeLayerBuilder::default().enabled(false).into_config())
    }

    /// Whether the layer hedges at all.
    pub fn is_enabled(&self) -> bool {
        self.config.enabled
    }

    /// The hedge delay a call starting now would get: `None` while the window holds fewer
    /// than `min_samples` successful calls (no hedging yet).
    pub fn current_delay(&self) -> Option<Duration> {
        self.config.latency.delay(Instant::now())
    }

    /// Whole hedges the budget holds now.
    pub fn budget_available(&self) -> u64 {
        self.config.budget.available()
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = HedgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service made by [`HedgeLayer`].
///
/// ```
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{Layer, ServiceExt};
/// use tower_deepseek::hedge::{HedgeLayer, HedgeService};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let inner = tower::service_fn(|_req: Request<Full<bytes::Bytes>>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from("{}"))))
/// });
/// let service: HedgeService<_> = HedgeLayer::builder().build()?.layer(inner);
/// let response = service.oneshot(Request::new(Full::default())).await?;
/// assert!(response.status().is_success());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HedgeService<S> {
    inner: S,
    config: Arc<HedgeConfig>,
}

impl<S> fmt::Debug for HedgeService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether the caller asked for a stream: the [`DeepSeekClient`](crate::DeepSeekClient) sets
/// `accept: text/event-stream` on every streaming request (and `application/json` on the
/// others), so one header lookup decides without reading the body.
fn is_streaming<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .any(|value| memchr::memmem::find(value.as_bytes(), b"text/event-stream").is_some())
}

/// A copy of the request for the hedge (the retry layer's request copy), or `None` when its
/// body cannot be replayed.
fn replay<B: ReplayBody>(request: &Request<B>) -> Option<Request<B>> {
    Template::of(request)?.copy()
}

impl<S, ReqB, RB> Service<Request<ReqB>> for HedgeService<S>
where
    S: Service<Request<ReqB>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody,
    RB: Body,
{
    type Response = Response<HedgeBody<RB>>;
    type Error = Error;
    type Future = ResponseFuture<S, ReqB, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // Off, or a stream (never hedged): the inner call as it is, with nothing to time, copy
        // or race, so a disabled layer costs a branch and a body wrapper.
        if !self.config.enabled || is_streaming(&request) {
            return ResponseFuture {
                kind: CallKind::Direct {
                    future: self.inner.call(request),
                },
            };
        }
        let config = Arc::clone(&self.config);
        let started = Instant::now();
        let mut timer = None;
        let mut spare = None;
        let mut delay = Duration::ZERO;
        config.budget.deposit();
        if let Some(wait) = config.latency.delay(started)
            && let Some(copy) = replay(&request)
        {
            delay = wait;
            timer = Some(tokio::time::sleep_until(started + wait));
            // This clone is driven to ready before it is called, and only if the hedge goes
            // out; the first attempt uses the service `poll_ready` made ready.
            spare = Some(Box::new(Spare {
                service: self.inner.clone(),
                request: copy,
            }));
        }
        let future = self.inner.call(request);
        ResponseFuture {
            kind: CallKind::Tracked {
                race: Box::pin(Race {
                    primary: Attempt::Calling { future },
                    hedge: Attempt::Idle,
                    timer,
                    spare,
                    config,
                    started,
                    hedge_started: started,
                    delay,
                }),
            },
        }
    }
}

/// What the hedge needs: a clone of the service and a copy of the request.
struct Spare<S, B> {
    service: S,
    request: Request<B>,
}

/// A 2xx response read until its first token.
struct Held<B: Body> {
    parts: http::response::Parts,
    body: Pin<Box<B>>,
    frames: VecDeque<Frame<B::Data>>,
}

impl<B: Body> Held<B> {
    fn into_response(self, error: Option<B::Error>, ended: bool) -> Response<HedgeBody<B>> {
        Response::from_parts(
            self.parts,
            HedgeBody {
                kind: Kind::Held {
                    body: self.body,
                    ahead: ReadAhead::new(self.frames).ending(error, ended),
                },
            },
        )
    }
}

pin_project! {
    #[project = AttemptProj]
    enum Attempt<F, B: Body> {
        // No attempt in flight: not started, finished or cancelled.
        Idle,
        // The hedge's service clone is being driven to ready.
        Readying,
        Calling {
            #[pin]
            future: F,
        },
        // A 2xx head arrived; the body is read until its first token.
        Reading {
            held: Option<Held<B>>,
        },
    }
}

/// An attempt's answer: whether it is a success, and what the caller would get.
type Answer<B> = (bool, Result<Response<HedgeBody<B>>, Error>);

fn internal() -> Error {
    Error::new(
        ErrorKind::InvalidRequest,
        "hedge response future: a held response was already handed over",
    )
}

/// Drives one attempt to its answer. An attempt has answered when its head is not a
/// success, or is a stream, or (with `hold`) when a successful non-streaming body shows its
/// first non-whitespace byte, ends or fails: DeepSeek sends a `200` head and then blank lines
/// while a non-streaming request waits, so the head alone says nothing about latency.
fn poll_attempt<F, E, B>(
    mut attempt: Pin<&mut Attempt<F, B>>,
    cx: &mut Context<'_>,
    config: &HedgeConfig,
    hold: bool,
) -> Poll<Answer<B>>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    loop {
        match attempt.as_mut().project() {
            AttemptProj::Calling { future } => {
                let response = match ready!(future.poll(cx)) {
                    Ok(response) => response,
                    Err(error) => {
                        return Poll::Ready((false, Err(Error::from_boxed(error.into()))));
                    }
                };
                let success = config
                    .classifier
                    .classify(Observation::Head {
                        status: response.status(),
                        headers: response.headers(),
                    })
                    .is_success();
                if !success
                    || !hold
                    || response.body().is_end_stream()
                    || BodyFormat::from_headers(response.headers()) == BodyFormat::Sse
                {
                    return Poll::Ready((success, Ok(response.map(HedgeBody::direct))));
                }
                let (parts, body) = response.into_parts();
                attempt.set(Attempt::Reading {
                    held: Some(Held {
                        parts,
                        body: Box::pin(body),
                        frames: VecDeque::new(),
                    }),
                });
            }
            AttemptProj::Reading { held } => {
                let Some(reading) = held.as_mut() else {
                    return Poll::Ready((false, Err(internal())));
                };
                loop {
                    match ready!(reading.body.as_mut().poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            // Trailers are an answer too; an empty or blank frame is not.
                            let token = frame.data_ref().is_none_or(|data| {
                                data.chunk().iter().any(|byte| !byte.is_ascii_whitespace())
                            });
                            reading.frames.push_back(frame);
                            if token {
                                let Some(held) = held.take() else {
                                    return Poll::Ready((false, Err(internal())));
                                };
                                return Poll::Ready((true, Ok(held.into_response(None, false))));
                            }
                        }
                        Some(Err(error)) => {
                            let Some(held) = held.take() else {
                                return Poll::Ready((false, Err(internal())));
                            };
                            return Poll::Ready((false, Ok(held.into_response(Some(error), true))));
                        }
                        None => {
                            let Some(held) = held.take() else {
                                return Poll::Ready((false, Err(internal())));
                            };
                            return Poll::Ready((true, Ok(held.into_response(None, true))));
                        }
                    }
                }
            }
            AttemptProj::Idle | AttemptProj::Readying => return Poll::Pending,
        }
    }
}

pin_project! {
    /// The response future of [`HedgeService`]: the inner call as it is when hedging is off or
    /// the call streams; otherwise the race of the first attempt, the hedge timer and the
    /// hedge once sent, boxed (it holds two attempts) so that a call that is not hedged moves
    /// no more than its inner future. A successful non-streaming body is boxed only while it is
    /// read to its first token.
    pub struct ResponseFuture<S, ReqB, RB>
    where
        S: Service<Request<ReqB>>,
        RB: Body,
    {
        #[pin]
        kind: CallKind<S, ReqB, RB>,
    }
}

pin_project! {
    #[project = CallKindProj]
    enum CallKind<S, ReqB, RB>
    where
        S: Service<Request<ReqB>>,
        RB: Body,
    {
        Direct {
            #[pin]
            future: S::Future,
        },
        Tracked {
            race: Pin<Box<Race<S, ReqB, RB>>>,
        },
    }
}

pin_project! {
    /// A call that may be hedged.
    struct Race<S, ReqB, RB>
    where
        S: Service<Request<ReqB>>,
        RB: Body,
    {
        #[pin]
        primary: Attempt<S::Future, RB>,
        #[pin]
        hedge: Attempt<S::Future, RB>,
        #[pin]
        timer: Option<Sleep>,
        // Boxed: only a call with a planned hedge has one.
        spare: Option<Box<Spare<S, ReqB>>>,
        config: Arc<HedgeConfig>,
        started: Instant,
        hedge_started: Instant,
        delay: Duration,
    }
}

impl<S, ReqB, RB> fmt::Debug for ResponseFuture<S, ReqB, RB>
where
    S: Service<Request<ReqB>>,
    RB: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            CallKind::Direct { .. } => f
                .debug_struct("ResponseFuture")
                .field("tracked", &false)
                .finish_non_exhaustive(),
            CallKind::Tracked { race } => f
                .debug_struct("ResponseFuture")
                .field("tracked", &true)
                .field("hedge_planned", &race.timer.is_some())
                .field("hedged", &!matches!(race.hedge, Attempt::Idle))
                .field("delay", &race.delay)
                .finish_non_exhaustive(),
        }
    }
}

impl<S, ReqB, RB> Future for ResponseFuture<S, ReqB, RB>
where
    S: Service<Request<ReqB>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body,
{
    type Output = Result<Response<HedgeBody<RB>>, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            CallKindProj::Direct { future } => Poll::Ready(match ready!(future.poll(cx)) {
                Ok(response) => Ok(response.map(HedgeBody::direct)),
                Err(error) => Err(Error::from_boxed(error.into())),
            }),
            CallKindProj::Tracked { race } => race.as_mut().poll(cx),
        }
    }
}

impl<S, ReqB, RB> Future for Race<S, ReqB, RB>
where
    S: Service<Request<ReqB>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body,
{
    type Output = Result<Response<HedgeBody<RB>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let config = &**this.config;

        // The first attempt's answer, whatever it is, is the call's: hedging never turns an
        // answer into a failure. Dropping the hedge cancels it.
        if let Poll::Ready((success, answer)) =
            poll_attempt(this.primary.as_mut(), cx, config, true)
        {
            if success {
                let now = Instant::now();
                config.latency.record(now, now - *this.started);
            }
            this.hedge.set(Attempt::Idle);
            this.timer.set(None);
            *this.spare = None;
            this.primary.set(Attempt::Idle);
            return Poll::Ready(answer);
        }

        if let Some(timer) = this.timer.as_mut().as_pin_mut()
            && timer.poll(cx).is_ready()
        {
            this.timer.set(None);
            if config.budget.try_withdraw() {
                this.hedge.set(Attempt::Readying);
            } else {
                *this.spare = None;
                config.emit(HedgeEvent::BudgetExhausted { name: &config.name });
            }
        }

        if let Attempt::Readying = *this.hedge {
            match this.spare.as_mut() {
                None => this.hedge.set(Attempt::Idle),
                Some(spare) => match spare.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if let Some(spare) = this.spare.take() {
                            let Spare {
                                mut service,
                                request,
                            } = *spare;
                            let future = service.call(request);
                            *this.hedge_started = Instant::now();
                            config.emit(HedgeEvent::Sent {
                                name: &config.name,
                                delay: *this.delay,
                            });
                            this.hedge.set(Attempt::Calling { future });
                        }
                    }
                    // The hedge could not go out; the first attempt carries on alone.
                    Poll::Ready(Err(_)) => {
                        *this.spare = None;
                        this.hedge.set(Attempt::Idle);
                    }
                    Poll::Pending => {}
                },
            }
        }

        if let Poll::Ready((success, answer)) = poll_attempt(this.hedge.as_mut(), cx, config, true)
        {
            if success {
                let now = Instant::now();
                config.latency.record(now, now - *this.hedge_started);
                config.emit(HedgeEvent::Won { name: &config.name });
                this.primary.set(Attempt::Idle);
                this.hedge.set(Attempt::Idle);
                return Poll::Ready(answer);
            }
            // A failed hedge never reaches the caller: the first attempt may still succeed,
            // and its failure is the retry layer's business.
            drop(answer);
            this.hedge.set(Attempt::Idle);
        }
        Poll::Pending
    }
}

pin_project! {
    /// The response body of a [`HedgeService`]: the inner body as it is, or, for a response
    /// read to its first token while the attempts raced, the frames read so far (blank lines
    /// included, unchanged) followed by the rest.
    pub struct HedgeBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Direct {
            #[pin]
            body: B,
        },
        Held {
            body: Pin<Box<B>>,
            ahead: ReadAhead<B::Data, B::Error>,
        },
    }
}

impl<B: Body> HedgeBody<B> {
    fn direct(body: B) -> HedgeBody<B> {
        HedgeBody {
            kind: Kind::Direct { body },
        }
    }
}

impl<B: Body> fmt::Debug for HedgeBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = match &self.kind {
            Kind::Direct { .. } => None,
            Kind::Held { ahead, .. } => Some(ahead.len()),
        };
        f.debug_struct("HedgeBody")
            .field("held_frames", &held)
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for HedgeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Direct { body } => body.poll_frame(cx),
            KindProj::Held { body, ahead } => ahead.poll_frame(body.as_mut(), cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Direct { body } => body.is_end_stream(),
            Kind::Held { body, ahead } => ahead.is_end_stream(&**body),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Direct { body } => body.size_hint(),
            Kind::Held { body, ahead } => ahead.size_hint(&**body),
        }
    }
}
