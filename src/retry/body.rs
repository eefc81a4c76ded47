//! The response body of a [`RetryService`](super::RetryService), and the held response a
//! stream is read into until its first token.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::{BodyEvent, BodyFormat, BodyObserver, ObservedBody, ReadAhead};
use crate::classify::{Classify, Observation, Outcome};

/// A response held back until it cannot need a retry.
pub(crate) enum HeldRead {
    Deliver,
    Failed(Outcome),
}

pin_project! {
    /// A held response body: the frames read so far (keep-alives included, passed on
    /// unchanged) and the rest of the body.
    pub(crate) struct Held<B: Body> {
        // The response head, kept here until the hand-over so that the response future does
        // not carry it inline (its size is copied every time the future moves).
        parts: Option<http::response::Parts>,
        ahead: ReadAhead<B::Data, B::Error>,
        #[pin]
        body: ObservedBody<B, HoldObserver>,
    }
}

/// Watches a held body for its first token and, when the whole body is held, its end.
pub(crate) struct HoldObserver {
    first_token: bool,
    whole_body: bool,
    end: Option<Outcome>,
    classifier: Arc<dyn Classify>,
}

impl BodyObserver for HoldObserver {
    fn observe(&mut self, event: BodyEvent<'_>) {
        match event {
            BodyEvent::FirstToken => self.first_token = true,
            BodyEvent::End(end) => self.end = Some(end.outcome(&*self.classifier)),
            _ => {}
        }
    }

    fn is_done(&self) -> bool {
        self.first_token && !self.whole_body
    }
}

impl<B> Held<B>
where
    B: Body,
    B::Data: 'static,
    B::Error: StdError + Send + Sync + 'static,
{
    pub(crate) fn new(
        parts: http::response::Parts,
        body: B,
        format: BodyFormat,
        all: bool,
        classifier: Arc<dyn Classify>,
    ) -> Held<B> {
        // A stream is committed at its first token even when whole bodies are held.
        let whole_body = all && format == BodyFormat::Json;
        Held {
            parts: Some(parts),
            ahead: ReadAhead::new(VecDeque::new()),
            body: ObservedBody::new(
                body,
                format,
                HoldObserver {
                    first_token: false,
                    whole_body,
                    end: None,
                    classifier,
                },
            ),
        }
    }

    /// Reads until the response can be delivered or has failed before delivery.
    pub(crate) fn read(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HeldRead> {
        let mut this = self.project();
        loop {
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.ahead.push(frame);
                    let observer = this.body.as_ref().get_ref().observer();
                    if observer.first_token && !observer.whole_body {
                        return Poll::Ready(HeldRead::Deliver);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    let observer = this.body.as_ref().get_ref().observer();
                    let outcome = observer.classifier.classify(Observation::Error(&error));
                    this.ahead.error = Some(error);
                    this.ahead.ended = true;
                    return Poll::Ready(HeldRead::Failed(outcome));
                }
                Poll::Ready(None) => {
                    this.ahead.ended = true;
                    return Poll::Ready(HeldRead::Deliver);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The response head, once.
    pub(crate) fn take_parts(self: Pin<&mut Self>) -> Option<http::response::Parts> {
        self.project().parts.take()
    }

    /// How the held part went: a body that ended says how it ended; one that reached its
    /// first token is a success so far.
    pub(crate) fn verdict(&self) -> Outcome {
        self.body.observer().end.unwrap_or(Outcome::Success)
    }
}

pin_project! {
    /// The response body of a [`RetryService`]: the inner body as it is, or, for a response
    /// that was held until its first token, the frames read while holding (keep-alives
    /// included, unchanged) followed by the rest. A failure after the hand-over is the body's
    /// error: it is never retried.
    pub struct RetryBody<B: Body> {
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
            held: Pin<Box<Held<B>>>,
        },
    }
}

impl<B: Body> RetryBody<B> {
    pub(crate) fn direct(body: B) -> RetryBody<B> {
        RetryBody {
            kind: Kind::Direct { body },
        }
    }

    pub(crate) fn held(held: Pin<Box<Held<B>>>) -> RetryBody<B> {
        RetryBody {
            kind: Kind::Held { held },
        }
    }
}

impl<B: Body> fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = match &self.kind {
            Kind::Direct { .. } => None,
            Kind::Held { held } => Some(held.ahead.len()),
        };
        f.debug_struct("RetryBody")
            .field("held_frames", &held)
            .finish_non_exhaustive()
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body,
    B::Data: 'static,
    B::Error: StdError + 'static,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Direct { body } => body.poll_frame(cx),
            KindProj::Held { held } => {
                let this = held.as_mut().project();
                this.ahead.poll_frame(this.body, cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Direct { body } => body.is_end_stream(),
            Kind::Held { held } => held.ahead.is_end_stream(&held.body),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Direct { body } => body.size_hint(),
            Kind::Held { held } => held.ahead.size_hint(&held.body),
        }
    }
}
