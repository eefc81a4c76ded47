//! The response body of [`StreamTimeout`](super::StreamTimeout): first-token, idle and total
//! bounds enforced in `poll_frame`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::{Timeouts, deadline, earliest, timeout_error};
use crate::body::{BodyEvent, BodyFormat, BodyObserver, ObservedBody};
use crate::classify::TimeoutPhase;
use crate::error::{BoxError, Error};

/// Notes the first token; done (so the body stops scanning) once it is seen or when no bound
/// needs it.
#[derive(Debug)]
pub(crate) struct FirstTokenSeen {
    watch: bool,
    seen: bool,
}

impl BodyObserver for FirstTokenSeen {
    fn observe(&mut self, event: BodyEvent<'_>) {
        if let BodyEvent::FirstToken = event {
            self.seen = true;
        }
    }

    fn is_done(&self) -> bool {
        !self.watch || self.seen
    }
}

pin_project! {
    /// A response body whose first token, idle gaps and total time are bounded (see the
    /// [module docs](super)). An expired bound is returned from `poll_frame` as an
    /// [`Error`] of kind [`ErrorKind::Timeout`](crate::ErrorKind::Timeout); the body then
    /// ends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, StreamBody};
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_deepseek::classify::TimeoutPhase;
    /// use tower_deepseek::timeout::StreamTimeoutLayer;
    /// use tower_deepseek::ErrorKind;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_deepseek::Error> {
    /// let layer = StreamTimeoutLayer::builder().first_token(Duration::from_secs(10)).build()?;
    /// let service = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<()>| async {
    ///     // A stream that only ever sends keep-alives.
    ///     let frames = futures_util::stream::unfold((), |()| async {
    ///         tokio::time::sleep(Duration::from_secs(1)).await;
    ///         let frame = http_body::Frame::data(bytes::Bytes::from_static(b": keep-alive\n\n"));
    ///         Some((Ok::<_, std::io::Error>(frame), ()))
    ///     });
    ///     let response = Response::builder()
    ///         .header("content-type", "text/event-stream")
    ///         .body(StreamBody::new(frames))
    ///         .unwrap();
    ///     Ok::<_, std::convert::Infallible>(response)
    /// });
    /// let response = service.oneshot(Request::new(())).await?;
    /// let error = response.into_body().collect().await.unwrap_err();
    /// assert_eq!(error.kind(), ErrorKind::Timeout(TimeoutPhase::FirstToken));
    /// # Ok(())
    /// # }
    /// ```
    pub struct TimeoutBody<B> {
        #[pin]
        inner: ObservedBody<B, FirstTokenSeen>,
        // Boxed so that the body is `Unpin` when the inner body is (a `ChatStream` over it
        // can then be polled with `StreamExt::next`); made when the body first has to wait,
        // so a body that is already here (a JSON answer read with its head) never has one.
        timer: Option<Pin<Box<Sleep>>>,
        // The bound in force and the phase it names (`None`: unbounded). The timer is set
        // to it only when the body has to wait: moving a registered timer is a trip to
        // tokio's timer wheel, and a body that is already here never waits.
        due: Option<(Instant, TimeoutPhase)>,
        // A data frame passed after the first token: the idle bound restarts from the
        // moment the body next has to wait.
        restart: bool,
        timeouts: Timeouts,
        started: Instant,
        expired: bool,
    }
}

impl<B: Body> TimeoutBody<B> {
    /// Wraps `body` (scanned as `format`) of a call made at `started`. Its timer is made
    /// when it first has to wait.
    pub(crate) fn new(body: B, format: BodyFormat, timeouts: &Timeouts, started: Instant) -> Self {
        let watch = timeouts.first_token.is_some() || timeouts.idle.is_some();
        let first = earliest([
            timeouts
                .first_token
                .map(|d| (deadline(started, d), TimeoutPhase::FirstToken)),
            timeouts
                .total
                .map(|d| (deadline(started, d), TimeoutPhase::Total)),
        ]);
        TimeoutBody {
            inner: ObservedBody::new(body, format, FirstTokenSeen { watch, seen: false }),
            timer: None,
            due: first,
            restart: false,
            timeouts: *timeouts,
            started,
            expired: false,
        }
    }
}

#[cfg(test)]
impl<B> TimeoutBody<B> {
    /// Whether the body holds a timer now.
    pub(crate) fn has_timer(&self) -> bool {
        self.timer.is_some()
    }
}

impl<B> fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBody")
            .field("phase", &self.due.map(|(_, phase)| phase))
            .field("timeouts", &self.timeouts)
            .field("expired", &self.expired)
            .finish_non_exhaustive()
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body,
    B::Data: 'static,
    B::Error: Into<BoxError> + std::error::Error + 'static,
{
    type Data = B::Data;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if *this.expired {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let has_data = frame.data_ref().is_some_and(|data| data.has_remaining());
                let seen = this.inner.as_ref().get_ref().observer().seen;
                if has_data && seen && (this.due.is_some() || this.timeouts.idle.is_some()) {
                    // From the first token on, each data frame restarts the idle bound.
                    *this.restart = true;
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(error))) => {
                return Poll::Ready(Some(Err(Error::from_boxed(error.into()))));
            }
            Poll::Ready(None) => {
                *this.timer = None;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if std::mem::take(this.restart) {
            *this.due = earliest([
                this.timeouts
                    .idle
                    .map(|d| (deadline(Instant::now(), d), TimeoutPhase::Idle)),
                this.timeouts
                    .total
                    .map(|d| (deadline(*this.started, d), TimeoutPhase::Total)),
            ]);
        }
        let Some((at, phase)) = *this.due else {
            *this.timer = None;
            return Poll::Pending;
        };
        let timer = match this.timer {
            Some(timer) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                timer
            }
            None => this.timer.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        if timer.as_mut().poll(cx).is_ready() {
            *this.expired = true;
            *this.timer = None;
            let limit = match phase {
                TimeoutPhase::FirstToken => this.timeouts.first_token,
                TimeoutPhase::Idle => this.timeouts.idle,
                _ => this.timeouts.total,
            };
            return Poll::Ready(Some(Err(timeout_error(phase, limit))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
