//! The tower layer, its service, its response future and its response body.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::body::{Held, HeldRead, RetryBody};
use super::config::{Hold, RetryConfig, RetryLayerBuilder};
use super::events::{GiveUpReason, RetryEvent, RetryMetrics};
use super::policy::{ReplayBody, RetryContext, RetryDecision};
use super::template::Replay;
use crate::body::BodyFormat;
use crate::classify::{self, Observation, Outcome, TimeoutPhase};
use crate::error::{BoxError, Error, ErrorKind};
use crate::timeout::{deadline as deadline_after, timeout_error};

/// Retries failed calls through a service: DeepSeek's rules, back-off with jitter,
/// `Retry-After`, a deadline, a shared budget, and never after a stream has reached the
/// caller. All services made by one layer (and their clones) share its budget and counters.
/// See the [module docs](super).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::retry::RetryLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let calls = Arc::new(AtomicU32::new(0));
/// let counter = Arc::clone(&calls);
/// let service = ServiceBuilder::new()
///     .layer(RetryLayer::builder().build()?)
///     .service_fn(move |_req: Request<Full<bytes::Bytes>>| {
///         // Two 503s, then an answer.
///         let status = match counter.fetch_add(1, Ordering::Relaxed) {
///             0 | 1 => StatusCode::SERVICE_UNAVAILABLE,
///             _ => StatusCode::OK,
///         };
///         async move {
///             let mut response = Response::new(Full::new(bytes::Bytes::from_static(b"{}")));
///             *response.status_mut() = status;
///             Ok::<_, std::convert::Infallible>(response)
///         }
///     });
/// let response = service.oneshot(Request::new(Full::default())).await?;
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(calls.load(Ordering::Relaxed), 3);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    config: Arc<RetryConfig>,
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl RetryLayer {
    /// A builder with the defaults (see [`RetryLayerBuilder`]).
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder::default()
    }

    pub(crate) fn from_config(config: RetryConfig) -> RetryLayer {
        RetryLayer {
            config: Arc::new(config),
        }
    }

    /// The call counts of every service made by this layer.
    pub fn metrics(&self) -> RetryMetrics {
        self.config.counters.snapshot()
    }
}

impl<S: Clone> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            shared: Arc::new(ServiceShared {
                config: Arc::clone(&self.config),
                fresh: Mutex::new(inner.clone()),
            }),
            inner,
        }
    }
}

/// The service made by [`RetryLayer`].
///
/// The first attempt goes to this service's inner service; a retry goes to a new clone of
/// the service the layer wrapped (cloned when a retry is needed, then driven to ready), so a
/// call that succeeds at once clones nothing. For the usual tower service, whose clones share
/// their state, that is the same as tower's `Retry`, which clones the inner service for every
/// call.
#[derive(Clone)]
pub struct RetryService<S> {
    inner: S,
    shared: Arc<ServiceShared<S>>,
}

/// What a service's calls share: one `Arc` for a call's future to hold.
struct ServiceShared<S> {
    config: Arc<RetryConfig>,
    // What retries clone from. Behind a mutex so that the futures holding it stay `Send` for
    // a service that is `Send` but not `Sync` (a `BoxService`); locked only to clone.
    fresh: Mutex<S>,
}

impl<S> fmt::Debug for RetryService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S> RetryService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The call counts of every service made by this layer.
    pub fn metrics(&self) -> RetryMetrics {
        self.shared.config.counters.snapshot()
    }
}

impl<S, ReqB, RB> Service<Request<ReqB>> for RetryService<S>
where
    S: Service<Request<ReqB>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody,
    RB: Body,
    RB::Data: 'static,
    RB::Error: StdError + Send + Sync + 'static,
{
    type Response = Response<RetryBody<RB>>;
    type Error = Error;
    type Future = ResponseFuture<S, ReqB, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    // Inlined into the caller, the inner service's future is moved once less.
    #[inline]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let config = &*shared.config;
        if let Some(budget) = &config.budget {
            budget.on_call();
        }
        // The copy for a retry: `None` for one attempt or a body that cannot be replayed.
        let template = if config.max_attempts > 1 {
            Replay::of(&request)
        } else {
            None
        };
        // A timer only for a deadline or a per-attempt timeout; a back-off makes its own.
        let timer = (config.deadline.is_some() || config.attempt_timeout.is_some())
            .then(|| Timer::start(config));
        ResponseFuture {
            state: State::Calling {
                future: self.inner.call(request),
            },
            service: None,
            shared,
            attempt: 1,
            template,
            timer,
            held: None,
        }
    }
}

/// What the armed timer bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKind {
    Attempt,
    Deadline,
    Backoff,
}

/// The timer for an attempt starting at `now`: the earlier of the per-attempt timeout and
/// the overall deadline.
fn attempt_timer(
    config: &RetryConfig,
    now: Instant,
    deadline: Option<Instant>,
) -> (Option<Instant>, TimerKind) {
    let attempt_end = config.attempt_timeout.map(|d| deadline_after(now, d));
    match (attempt_end, deadline) {
        (Some(a), Some(d)) if d <= a => (Some(d), TimerKind::Deadline),
        (Some(a), _) => (Some(a), TimerKind::Attempt),
        (None, Some(d)) => (Some(d), TimerKind::Deadline),
        (None, None) => (None, TimerKind::Attempt),
    }
}

pin_project! {
    /// The future of a [`RetryService`] call: an attempt in flight, a held stream being read
    /// to its first token, a back-off wait, or the service being driven to ready for the next
    /// attempt. A pinned enum of states, no boxed future.
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, ReqB, RB>
    where
        S: Service<Request<ReqB>>,
        RB: Body,
    {
        #[pin]
        state: State<S::Future>,
        // The clone that retries go through, made by the first retry; boxed, since inline it
        // would make every call's future (and every future around it) the size of a whole
        // stack of services larger, for the rare call that retries.
        service: Option<Box<S>>,
        shared: Arc<ServiceShared<S>>,
        attempt: u32,
        // The copy to send again, its head in an allocation of its own (the future is copied
        // whole every time it moves, and the head is a few hundred bytes): `None` when the
        // body cannot be replayed or there is only one attempt. Recycled when the call ends.
        template: Option<Replay<ReqB>>,
        // From the start only with a deadline or a per-attempt timeout; the first back-off
        // makes one otherwise. Inline: the future is pinned before the timer is armed, and an
        // allocation a call costs more than the bytes it would save moving the future.
        #[pin]
        timer: Option<Timer>,
        held: Option<Pin<Box<Held<RB>>>>,
    }
}

pin_project! {
    /// A call's timer and what goes with it: the per-attempt timeout, the deadline, the
    /// back-off before the next attempt.
    struct Timer {
        #[pin]
        sleep: Option<Sleep>,
        kind: TimerKind,
        deadline: Option<Instant>,
        previous_delay: Duration,
    }
}

impl Timer {
    /// The timer of a new call with a deadline or a per-attempt timeout, armed for its first
    /// attempt.
    fn start(config: &RetryConfig) -> Timer {
        let now = Instant::now();
        let deadline = config.deadline.map(|d| deadline_after(now, d));
        let (at, kind) = attempt_timer(config, now, deadline);
        Timer {
            sleep: at.map(tokio::time::sleep_until),
            kind,
            deadline,
            previous_delay: Duration::ZERO,
        }
    }

    /// The timer of a call that had none (no deadline, no per-attempt timeout), made by its
    /// first retry.
    fn idle() -> Timer {
        Timer {
            sleep: None,
            kind: TimerKind::Attempt,
            deadline: None,
            previous_delay: Duration::ZERO,
        }
    }

    /// Whether the armed timer fired, and the phase it names.
    fn fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Option<TimeoutPhase> {
        let this = self.project();
        fired(this.sleep, *this.kind, cx)
    }

    /// Arms the timer for an attempt starting now.
    fn arm_attempt(self: Pin<&mut Self>, config: &RetryConfig) {
        let mut this = self.project();
        let (at, kind) = attempt_timer(config, Instant::now(), *this.deadline);
        set_timer(this.sleep.as_mut(), at);
        *this.kind = kind;
    }
}

/// A new clone of the service a layer wrapped, for a retry.
fn fresh_clone<S: Clone>(fresh: &Mutex<S>) -> S {
    // Only `clone` runs under the lock: a panic in it leaves the service as it was.
    fresh
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Whether the call's timer fired (a call without one never times out).
fn timer_fired(timer: Pin<&mut Option<Timer>>, cx: &mut Context<'_>) -> Option<TimeoutPhase> {
    timer.as_pin_mut()?.fired(cx)
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
        },
        Holding,
        Backoff,
        Readying,
        Done,
    }
}

impl<S, ReqB, RB> fmt::Debug for ResponseFuture<S, ReqB, RB>
where
    S: Service<Request<ReqB>>,
    RB: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempt", &self.attempt)
            .field("deadline", &self.timer.as_ref().and_then(|t| t.deadline))
            .field("replayable", &self.template.is_some())
            .finish_non_exhaustive()
    }
}

/// What happens after a failed attempt.
enum Next {
    Retry(Duration),
    Stop,
}

/// Decides about a failed attempt and reports the decision (events, counters).
fn decide(
    config: &RetryConfig,
    outcome: Outcome,
    headers: Option<&HeaderMap>,
    attempt: u32,
    replayable: bool,
    deadline: Option<Instant>,
    previous_delay: Duration,
) -> Next {
    let give_up = |reason| {
        config.emit(RetryEvent::GaveUp {
            name: &config.name,
            attempts: attempt,
            outcome,
            reason,
        });
        Next::Stop
    };
    let context = RetryContext {
        outcome,
        attempt,
        headers,
    };
    let wait = match config.policy.decide(&context) {
        RetryDecision::Stop => return give_up(GiveUpReason::NotRetryable),
        RetryDecision::RetryAfter(wait) => Some(wait),
        RetryDecision::Retry => outcome.retry_after().or_else(|| match outcome {
            // A 503 may say when to come back too; ask classify's parser only then.
            Outcome::Server(_) => headers.and_then(|h| classify::retry_after(h, SystemTime::now())),
            _ => None,
        }),
    };
    if attempt >= config.max_attempts {
        return give_up(GiveUpReason::Attempts);
    }
    if !replayable {
        return give_up(GiveUpReason::NotReplayable);
    }
    if wait.is_some_and(|wait| wait > config.max_retry_after) {
        return give_up(GiveUpReason::RetryAfterTooLong);
    }
    let delay = match wait {
        // The upstream's wait replaces the back-off (gRPC pushback semantics): no sooner, and
        // no later than asked.
        Some(wait) => wait,
        None => config
            .backoff
            .delay(attempt, previous_delay, config.random.next_f64())
            .unwrap_or_default(),
    };
    if let Some(deadline) = deadline
        && Instant::now() + delay >= deadline
    {
        return give_up(GiveUpReason::Deadline);
    }
    if let Some(budget) = &config.budget
        && !budget.try_retry()
    {
        config.emit(RetryEvent::BudgetExhausted {
            name: &config.name,
            attempts: attempt,
            outcome,
        });
        return Next::Stop;
    }
    config.emit(RetryEvent::Retry {
        name: &config.name,
        attempt,
        delay,
        outcome,
    });
    config.counters.retried();
    Next::Retry(delay)
}

impl<S, ReqB, RB> Future for ResponseFuture<S, ReqB, RB>
where
    S: Service<Request<ReqB>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody,
    RB: Body,
    RB::Data: 'static,
    RB::Error: StdError + Send + Sync + 'static,
{
    type Output = Result<Response<RetryBody<RB>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        let config = &*shared.config;
        loop {
            // Set when an attempt failed: how, and the response headers if there was a head.
            let failed: (Outcome, Option<Response<RB>>, Option<Error>);
            match this.state.as_mut().project() {
                StateProj::Calling { future } => match future.poll(cx) {
                    Poll::Ready(Ok(response)) => {
                        let outcome = config.classifier.classify(Observation::Head {
                            status: response.status(),
                            headers: response.headers(),
                        });
                        if outcome.is_success() {
                            let hold = match config.hold {
                                Hold::Off => false,
                                _ if this.template.is_none()
                                    || *this.attempt >= config.max_attempts =>
                                {
                                    false
                                }
                                Hold::Streams => {
                                    BodyFormat::from_headers(response.headers()) == BodyFormat::Sse
                                }
                                Hold::All => true,
                            };
                            if !hold {
                                this.state.set(State::Done);
                                recycle(this.template);
                                succeeded(config, *this.attempt);
                                return Poll::Ready(Ok(response.map(RetryBody::direct)));
                            }
                            let (parts, body) = response.into_parts();
                            let format = BodyFormat::from_headers(&parts.headers);
                            *this.held = Some(Box::pin(Held::new(
                                parts,
                                body,
                                format,
                                config.hold == Hold::All,
                                Arc::clone(&config.classifier),
                            )));
                            this.state.set(State::Holding);
                            continue;
                        }
                        failed = (outcome, Some(response), None);
                    }
                    Poll::Ready(Err(error)) => {
                        let error = Error::from_boxed(error.into());
                        let outcome = config.classifier.classify(Observation::Error(&error));
                        failed = (outcome, None, Some(error));
                    }
                    Poll::Pending => {
                        let Some(phase) = timer_fired(this.timer.as_mut(), cx) else {
                            return Poll::Pending;
                        };
                        failed = timed_out(this.state.as_mut(), this.held, config, phase);
                    }
                },
                StateProj::Holding => {
                    let Some(held) = this.held.as_mut() else {
                        return Poll::Ready(Err(internal("no held body")));
                    };
                    match held.as_mut().read(cx) {
                        Poll::Ready(HeldRead::Deliver) => {
                            let outcome = held.verdict();
                            if outcome.is_success() {
                                recycle(this.template);
                                succeeded(config, *this.attempt);
                                return Poll::Ready(hand_over(this.state.as_mut(), this.held));
                            }
                            failed = (outcome, None, None);
                        }
                        Poll::Ready(HeldRead::Failed(outcome)) => {
                            failed = (outcome, None, None);
                        }
                        Poll::Pending => {
                            let Some(phase) = timer_fired(this.timer.as_mut(), cx) else {
                                return Poll::Pending;
                            };
                            failed = timed_out(this.state.as_mut(), this.held, config, phase);
                        }
                    }
                }
                StateProj::Backoff => {
                    let Some(mut timer) = this.timer.as_mut().as_pin_mut() else {
                        return Poll::Ready(Err(internal("back-off without a timer")));
                    };
                    if let Some(sleep) = timer.as_mut().project().sleep.as_pin_mut()
                        && sleep.poll(cx).is_pending()
                    {
                        return Poll::Pending;
                    }
                    timer.as_mut().arm_attempt(config);
                    this.state.set(State::Readying);
                    continue;
                }
                StateProj::Readying => match this
                    .service
                    .get_or_insert_with(|| Box::new(fresh_clone(&shared.fresh)))
                    .poll_ready(cx)
                {
                    Poll::Ready(Ok(())) => {
                        let keep = *this.attempt + 1 < config.max_attempts;
                        let Some(request) = Replay::request(this.template, keep) else {
                            return Poll::Ready(Err(internal("no request to replay")));
                        };
                        *this.attempt += 1;
                        let Some(service) = this.service.as_mut() else {
                            return Poll::Ready(Err(internal("no service to retry through")));
                        };
                        let future = service.call(request);
                        this.state.set(State::Calling { future });
                        continue;
                    }
                    Poll::Ready(Err(error)) => {
                        this.state.set(State::Done);
                        config.counters.finished(false, *this.attempt);
                        return Poll::Ready(Err(Error::from_boxed(error.into())));
                    }
                    Poll::Pending => {
                        let Some(phase) = timer_fired(this.timer.as_mut(), cx) else {
                            return Poll::Pending;
                        };
                        failed = timed_out(this.state.as_mut(), this.held, config, phase);
                    }
                },
                StateProj::Done => {
                    return Poll::Ready(Err(internal("polled after it completed")));
                }
            }

            // An attempt failed: retry it, or answer with it.
            let (outcome, response, error) = failed;
            if let Some(budget) = &config.budget {
                budget.on_outcome(&outcome);
            }
            let next = decide(
                config,
                outcome,
                response.as_ref().map(Response::headers),
                *this.attempt,
                this.template.is_some(),
                this.timer
                    .as_ref()
                    .get_ref()
                    .as_ref()
                    .and_then(|t| t.deadline),
                this.timer
                    .as_ref()
                    .get_ref()
                    .as_ref()
                    .map_or(Duration::ZERO, |t| t.previous_delay),
            );
            match next {
                Next::Retry(delay) => {
                    drop((response, error));
                    *this.held = None;
                    if this.timer.is_none() {
                        this.timer.set(Some(Timer::idle()));
                    }
                    let Some(mut timer) = this.timer.as_mut().as_pin_mut() else {
                        return Poll::Ready(Err(internal("no timer for the back-off")));
                    };
                    *timer.as_mut().project().previous_delay = delay;
                    if delay.is_zero() {
                        set_timer(timer.as_mut().project().sleep, None);
                        // Straight to readiness, with the next attempt's timer.
                        timer.as_mut().arm_attempt(config);
                        this.state.set(State::Readying);
                    } else {
                        let t = timer.as_mut().project();
                        set_timer(t.sleep, Some(Instant::now() + delay));
                        *t.kind = TimerKind::Backoff;
                        this.state.set(State::Backoff);
                    }
                }
                Next::Stop => {
                    recycle(this.template);
                    config.counters.finished(false, *this.attempt);
                    this.state.set(State::Done);
                    return Poll::Ready(match (response, error) {
                        (Some(response), _) => Ok(response.map(RetryBody::direct)),
                        (None, Some(error)) => Err(error),
                        (None, None) => hand_over(this.state.as_mut(), this.held),
                    });
                }
            }
        }
    }
}

fn set_timer(mut timer: Pin<&mut Option<Sleep>>, at: Option<Instant>) {
    match (timer.as_mut().as_pin_mut(), at) {
        (Some(sleep), Some(at)) => sleep.reset(at),
        (None, Some(at)) => timer.set(Some(tokio::time::sleep_until(at))),
        (Some(_), None) => timer.set(None),
        (None, None) => {}
    }
}

/// Ends the call's request copy, its allocation kept for the thread's next call.
#[inline]
fn recycle<B>(template: &mut Option<Replay<B>>) {
    if let Some(template) = template.take() {
        template.recycle();
    }
}

#[inline]
fn succeeded(config: &RetryConfig, attempts: u32) {
    if let Some(budget) = &config.budget {
        budget.on_outcome(&Outcome::Success);
    }
    config.counters.finished(true, attempts);
    config.emit(RetryEvent::Succeeded {
        name: &config.name,
        attempts,
    });
}

fn internal(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidRequest,
        format!("retry response future: {what}"),
    )
}

/// Hands the held response over to the caller.
fn hand_over<F, RB: Body>(
    mut state: Pin<&mut State<F>>,
    held: &mut Option<Pin<Box<Held<RB>>>>,
) -> Result<Response<RetryBody<RB>>, Error>
where
    RB::Data: 'static,
    RB::Error: StdError + Send + Sync + 'static,
{
    state.set(State::Done);
    let Some(mut held) = held.take() else {
        return Err(internal("no held response"));
    };
    match held.as_mut().take_parts() {
        Some(parts) => Ok(Response::from_parts(parts, RetryBody::held(held))),
        None => Err(internal("no held response head")),
    }
}

/// Whether the attempt timer fired, and the phase it names.
fn fired(
    timer: Pin<&mut Option<Sleep>>,
    kind: TimerKind,
    cx: &mut Context<'_>,
) -> Option<TimeoutPhase> {
    let sleep = timer.as_pin_mut()?;
    if sleep.poll(cx).is_pending() {
        return None;
    }
    Some(match kind {
        TimerKind::Deadline => TimeoutPhase::Deadline,
        TimerKind::Attempt | TimerKind::Backoff => TimeoutPhase::Attempt,
    })
}

/// Drops the attempt in flight (cancelling it) and describes its failure.
fn timed_out<F, RB: Body>(
    mut state: Pin<&mut State<F>>,
    held: &mut Option<Pin<Box<Held<RB>>>>,
    config: &RetryConfig,
    phase: TimeoutPhase,
) -> (Outcome, Option<Response<RB>>, Option<Error>) {
    state.set(State::Done);
    *held = None;
    let limit = match phase {
        TimeoutPhase::Deadline => config.deadline,
        _ => config.attempt_timeout,
    };
    (
        Outcome::Timeout(phase),
        None,
        Some(timeout_error(phase, limit)),
    )
}
