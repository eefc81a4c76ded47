//! Streaming-aware timeouts: a 10-minute generation is not a timeout, a silent stream is.
//!
//! [`StreamTimeoutLayer`] bounds the phases of an LLM call separately, each measured from the
//! moment the call was made (`call`, not `poll_ready`) unless said otherwise:
//!
//! | setting | what it bounds | expiry |
//! |---|---|---|
//! | [`headers`](StreamTimeoutLayerBuilder::headers) | `call` until the response head | the response future fails with [`TimeoutPhase::Headers`] |
//! | [`first_token`](StreamTimeoutLayerBuilder::first_token) | `call` until the first token (an SSE `data:` event, or the first non-blank byte of a JSON body); keep-alive comments and blank lines do **not** count | the body fails with [`TimeoutPhase::FirstToken`] |
//! | [`idle`](StreamTimeoutLayerBuilder::idle) | from the first token on, the longest wait for the next data frame, counted from when the body asks for it (a caller that holds a chunk for a while is not an idle upstream) | the body fails with [`TimeoutPhase::Idle`] |
//! | [`total`](StreamTimeoutLayerBuilder::total) | `call` until the body's end (the head wait included) | the future or the body fails with [`TimeoutPhase::Total`] |
//!
//! A phase not set is not bounded. Expiry is an [`Error`] of kind
//! [`ErrorKind::Timeout`] naming the phase: from the response future while the head is
//! awaited (the inner future is dropped at that moment, cancelling the request), and from the
//! body's `poll_frame` afterwards (the body then ends). Layers above see it like any other
//! failure: the circuit breaker counts it, and the [retry layer](crate::retry) retries it while
//! nothing has been delivered to the caller.
//!
//! First-token detection uses the crate's [response-body observer](crate::body), which stops
//! scanning once the first token has been seen; with neither `first_token` nor `idle` set,
//! nothing is scanned.
//!
//! ```
//! use std::time::Duration;
//! use tower_deepseek::timeout::StreamTimeoutLayer;
//!
//! # fn main() -> Result<(), tower_deepseek::Error> {
//! let timeouts = StreamTimeoutLayer::builder()
//!     .headers(Duration::from_secs(30))
//!     .first_token(Duration::from_secs(60))
//!     .idle(Duration::from_secs(30))
//!     .total(Duration::from_secs(900))
//!     .build()?;
//! # let _ = timeouts;
//! # Ok(())
//! # }
//! ```
//!
//! Timers are `tokio::time` timers: the layer must run inside a Tokio runtime with time
//! enabled, and tests can pause time.

mod body;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

pub use body::TimeoutBody;

use crate::body::BodyFormat;
use crate::classify::TimeoutPhase;
use crate::error::{BoxError, Error, ErrorKind};

/// The configured bounds; `None` is unbounded. Small and `Copy`: every service holds its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) headers: Option<Duration>,
    pub(crate) first_token: Option<Duration>,
    pub(crate) idle: Option<Duration>,
    pub(crate) total: Option<Duration>,
}

impl Timeouts {
    /// The head deadline and the phase that names it: the earlier of headers and total.
    fn head_deadline(&self, started: Instant) -> Option<(Instant, TimeoutPhase)> {
        earliest([
            self.headers
                .map(|d| (deadline(started, d), TimeoutPhase::Headers)),
            self.total
                .map(|d| (deadline(started, d), TimeoutPhase::Total)),
        ])
    }
}

/// `start + duration`, saturating far in the future instead of overflowing.
pub(crate) fn deadline(start: Instant, duration: Duration) -> Instant {
    start
        .checked_add(duration)
        .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365 * 30))
}

/// The earliest of some deadlines; ties go to the first listed.
pub(crate) fn earliest<const N: usize>(
    candidates: [Option<(Instant, TimeoutPhase)>; N],
) -> Option<(Instant, TimeoutPhase)> {
    candidates
        .into_iter()
        .flatten()
        .reduce(|a, b| if b.0 < a.0 { b } else { a })
}

/// The error for an expired phase.
pub(crate) fn timeout_error(phase: TimeoutPhase, limit: Option<Duration>) -> Error {
    let what = match phase {
        TimeoutPhase::Headers => "no response headers",
        TimeoutPhase::FirstToken => "no first token (keep-alives do not count)",
        TimeoutPhase::Idle => "no data since the last chunk",
        TimeoutPhase::Attempt => "the attempt did not complete",
        TimeoutPhase::Deadline => "the call did not complete across its attempts",
        _ => "the call did not complete",
    };
    let message = match limit {
        Some(limit) => format!("{what} within {:.3}s", limit.as_secs_f64()),
        None => what.to_owned(),
    };
    Error::new(ErrorKind::Timeout(phase), message)
}

/// Bounds the phases of a call: response headers, first token, idle gaps, total time. See
/// the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::classify::TimeoutPhase;
/// use tower_deepseek::timeout::StreamTimeoutLayer;
/// use tower_deepseek::ErrorKind;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = StreamTimeoutLayer::builder().headers(Duration::from_secs(5)).build()?;
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<()>| async {
///     tokio::time::sleep(Duration::from_secs(60)).await; // the upstream hangs
///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::new())))
/// });
/// let error = service.oneshot(Request::new(())).await.unwrap_err();
/// assert_eq!(error.kind(), ErrorKind::Timeout(TimeoutPhase::Headers));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamTimeoutLayer {
    timeouts: Timeouts,
}

impl StreamTimeoutLayer {
    /// A builder with every phase unbounded.
    pub fn builder() -> StreamTimeoutLayerBuilder {
        StreamTimeoutLayerBuilder {
            timeouts: Timeouts::default(),
        }
    }
}

impl<S> Layer<S> for StreamTimeoutLayer {
    type Service = StreamTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamTimeout {
            inner,
            timeouts: self.timeouts,
        }
    }
}

/// Builds a [`StreamTimeoutLayer`]. Every phase is unbounded until set; a zero duration is a
/// configuration error.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::timeout::StreamTimeoutLayer;
///
/// let error = StreamTimeoutLayer::builder().idle(Duration::ZERO).build().unwrap_err();
/// assert!(error.to_string().contains("idle"));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct StreamTimeoutLayerBuilder {
    timeouts: Timeouts,
}

impl StreamTimeoutLayerBuilder {
    /// Bounds the wait from `call` to the response head ([`TimeoutPhase::Headers`]).
    pub fn headers(mut self, timeout: Duration) -> Self {
        self.timeouts.headers = Some(timeout);
        self
    }

    /// Bounds the wait from `call` to the first token ([`TimeoutPhase::FirstToken`]);
    /// keep-alive comments and blank lines do not count as tokens.
    pub fn first_token(mut self, timeout: Duration) -> Self {
        self.timeouts.first_token = Some(timeout);
        self
    }

    /// Bounds each wait for the next data frame after the first token, counted from when the
    /// body asks for it ([`TimeoutPhase::Idle`]).
    pub fn idle(mut self, timeout: Duration) -> Self {
        self.timeouts.idle = Some(timeout);
        self
    }

    /// Bounds the whole call, from `call` to the body's end ([`TimeoutPhase::Total`]).
    pub fn total(mut self, timeout: Duration) -> Self {
        self.timeouts.total = Some(timeout);
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<StreamTimeoutLayer, Error> {
        let t = self.timeouts;
        for (name, value) in [
            ("headers", t.headers),
            ("first_token", t.first_token),
            ("idle", t.idle),
            ("total", t.total),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("timeout `{name}` is zero; leave it unset for no bound"),
                ));
            }
        }
        Ok(StreamTimeoutLayer { timeouts: t })
    }
}

/// The service made by [`StreamTimeoutLayer`].
#[derive(Clone, Debug)]
pub struct StreamTimeout<S> {
    inner: S,
    timeouts: Timeouts,
}

impl<S> StreamTimeout<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqB, RespB> Service<Request<ReqB>> for StreamTimeout<S>
where
    S: Service<Request<ReqB>, Response = Response<RespB>>,
    S::Error: Into<BoxError>,
    RespB: http_body::Body,
{
    type Response = Response<TimeoutBody<RespB>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let started = Instant::now();
        let head = self.timeouts.head_deadline(started);
        ResponseFuture {
            state: State::Waiting {
                future: self.inner.call(request),
                // Inline: a call whose answer comes whole with its head (a JSON answer) never
                // needs a timer after it, so none is allocated; a body that has to wait (a
                // stream) makes its own.
                timer: head.map(|(at, _)| tokio::time::sleep_until(at)),
            },
            phase: head.map(|(_, phase)| phase),
            timeouts: self.timeouts,
            started,
        }
    }
}

pin_project! {
    /// The future of a [`StreamTimeout`] call. On expiry the inner future is dropped at once.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        phase: Option<TimeoutPhase>,
        timeouts: Timeouts,
        started: Instant,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Waiting {
            #[pin]
            future: F,
            #[pin]
            timer: Option<Sleep>,
        },
        Done,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("phase", &self.phase)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<TimeoutBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let StateProj::Waiting { future, timer } = this.state.as_mut().project() else {
            return Poll::Ready(Err(Error::new(
                ErrorKind::InvalidRequest,
                "a timeout response future was polled after it completed",
            )));
        };
        if let Poll::Ready(result) = future.poll(cx) {
            this.state.set(State::Done);
            return Poll::Ready(match result {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let format = BodyFormat::from_headers(&parts.headers);
                    let body = TimeoutBody::new(body, format, this.timeouts, *this.started);
                    Ok(Response::from_parts(parts, body))
                }
                Err(error) => Err(Error::from_boxed(error.into())),
            });
        }
        if let Some(timer) = timer.as_pin_mut()
            && timer.poll(cx).is_ready()
        {
            // Dropping the state drops the inner future: the request is cancelled now, not
            // when the caller gets round to dropping this future.
            this.state.set(State::Done);
            let phase = this.phase.unwrap_or(TimeoutPhase::Total);
            let limit = match phase {
                TimeoutPhase::Headers => this.timeouts.headers,
                _ => this.timeouts.total,
            };
            return Poll::Ready(Err(timeout_error(phase, limit)));
        }
        Poll::Pending
    }
}
