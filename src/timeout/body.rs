//! The response body of [`StreamTimeout`](super::StreamTimeout): first-token, idle and total
//! bounds enforced in `poll_frame`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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

/// A bound in whole nanoseconds, `u64::MAX` for none: a third of an `Option<Duration>`.
/// Bounds past 584 years are cut there ([`deadline`] caps every deadline far earlier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bound(u64);

impl Bound {
    fn of(duration: Option<Duration>) -> Bound {
        Bound(duration.map_or(u64::MAX, |duration| {
            u64::try_from(duration.as_nanos()).map_or(u64::MAX - 1, |nanos| nanos.min(u64::MAX - 1))
        }))
    }

    fn get(self) -> Option<Duration> {
        (self.0 != u64::MAX).then(|| Duration::from_nanos(self.0))
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
        // The bound in force (`None`: unbounded), and in `phase` the phase it names. The
        // timer is set to it only when the body has to wait: moving a registered timer is a
        // trip to tokio's timer wheel, and a body that is already here never waits.
        due: Option<Instant>,
        started: Instant,
        // The bounds, compact: this body is the innermost of a stack's response, so every
        // layer above moves its every byte.
        first_token: Bound,
        idle: Bound,
        total: Bound,
        phase: TimeoutPhase,
        // A data frame passed after the first token: the idle bound restarts from the
        // moment the body next has to wait.
        restart: bool,
        expired: bool,
    }
}

impl<B: Body> TimeoutBody<B> {
    /// Wraps `body` (scanned as `format`) of a call made at `started`. Its timer is made
    /// when it first has to wait.
    pub(crate) fn new(body: B, format: BodyFormat, timeouts: &Timeouts, started: Instant) -> Self {
        let watch = timeouts.first_token.is_some() || timeouts.idle.is_some();
        let due = earliest([
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
            due: due.map(|(at, _)| at),
            started,
            first_token: Bound::of(timeouts.first_token),
            idle: Bound::of(timeouts.idle),
            total: Bound::of(timeouts.total),
            phase: due.map_or(TimeoutPhase::Total, |(_, phase)| phase),
            restart: false,
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
            .field("phase", &self.due.map(|_| self.phase))
            .field("first_token", &self.first_token.get())
            .field("idle", &self.idle.get())
            .field("total", &self.total.get())
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
                if has_data && seen && (this.due.is_some() || this.idle.get().is_some()) {
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
            let due = earliest([
                this.idle
                    .get()
                    .map(|d| (deadline(Instant::now(), d), TimeoutPhase::Idle)),
                this.total
                    .get()
                    .map(|d| (deadline(*this.started, d), TimeoutPhase::Total)),
            ]);
            *this.due = due.map(|(at, _)| at);
            if let Some((_, phase)) = due {
                *this.phase = phase;
            }
        }
        let Some(at) = *this.due else {
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
            let phase = *this.phase;
            let limit = match phase {
                TimeoutPhase::FirstToken => this.first_token.get(),
                TimeoutPhase::Idle => this.idle.get(),
                _ => this.total.get(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound keeps its nanoseconds; none stays none; one too long for a `u64` of
    /// nanoseconds is cut to the longest there is rather than read as none.
    #[test]
    fn a_bound_keeps_its_nanoseconds_and_none_stays_none() {
        assert_eq!(Bound::of(None).get(), None);
        for duration in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(1_500),
            Duration::from_secs(86_400 * 365),
        ] {
            assert_eq!(Bound::of(Some(duration)).get(), Some(duration));
        }
        let longest = Bound::of(Some(Duration::MAX)).get();
        assert_eq!(longest, Some(Duration::from_nanos(u64::MAX - 1)));
    }
}
