//! Answers the inbound limits' refusals (the crate's [`Error`]: a 429, a 503) with their
//! responses. It does what axum's `HandleErrorLayer` did here, without its per-request cost:
//! that layer clones the whole service under it (the limits and axum's boxed route, one more
//! allocation) and boxes a future for every request, twice in the inbound stack. This one is a
//! pinned enum future and an enum body.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::{Body, Bytes};
use axum::response::IntoResponse;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_deepseek::{BoxError, Error};

/// Turns the inner service's [`Error`] into its response (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct RefusalLayer;

impl<S> Layer<S> for RefusalLayer {
    type Service = Refusal<S>;

    fn layer(&self, inner: S) -> Refusal<S> {
        Refusal {
            inner,
            unready: None,
        }
    }
}

/// The service of [`RefusalLayer`]. Never fails: a readiness error is answered by the next
/// call, as the error's response.
#[derive(Debug)]
pub struct Refusal<S> {
    inner: S,
    unready: Option<Error>,
}

impl<S: Clone> Clone for Refusal<S> {
    fn clone(&self) -> Self {
        Refusal {
            inner: self.inner.clone(),
            unready: None,
        }
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for Refusal<S>
where
    S: Service<Request<ReqB>, Response = Response<B>, Error = Error>,
{
    type Response = Response<RefusalBody<B>>;
    type Error = Infallible;
    type Future = RefusalFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.unready.is_none()
            && let Err(error) = ready!(self.inner.poll_ready(cx))
        {
            self.unready = Some(error);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        match self.unready.take() {
            Some(error) => RefusalFuture::Refused { error: Some(error) },
            None => RefusalFuture::Calling {
                future: self.inner.call(request),
            },
        }
    }
}

pin_project! {
    /// The future of [`Refusal`].
    #[project = RefusalFutureProj]
    pub enum RefusalFuture<F> {
        /// The inner call.
        Calling {
            #[pin]
            future: F,
        },
        /// Refused before the call (the inner service was not ready).
        Refused {
            error: Option<Error>,
        },
    }
}

fn refused<B>(error: Error) -> Response<RefusalBody<B>> {
    error
        .into_response()
        .map(|body| RefusalBody::Refused { body })
}

impl<F, B> Future for RefusalFuture<F>
where
    F: Future<Output = Result<Response<B>, Error>>,
{
    type Output = Result<Response<RefusalBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match self.project() {
            RefusalFutureProj::Calling { future } => match ready!(future.poll(cx)) {
                Ok(response) => response.map(|body| RefusalBody::Inner { body }),
                Err(error) => refused(error),
            },
            RefusalFutureProj::Refused { error } => match error.take() {
                Some(error) => refused(error),
                // Polled again after it answered: a plain 500 rather than a panic.
                None => http::StatusCode::INTERNAL_SERVER_ERROR
                    .into_response()
                    .map(|body| RefusalBody::Refused { body }),
            },
        }))
    }
}

pin_project! {
    /// The body of [`Refusal`]'s responses: the inner service's, or a refusal's.
    #[project = RefusalBodyProj]
    pub enum RefusalBody<B> {
        /// The inner service's body.
        Inner {
            #[pin]
            body: B,
        },
        /// A refusal's body.
        Refused {
            #[pin]
            body: Body,
        },
    }
}

impl<B> http_body::Body for RefusalBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.project() {
            RefusalBodyProj::Inner { body } => body.poll_frame(cx).map_err(axum::Error::new),
            RefusalBodyProj::Refused { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RefusalBody::Inner { body } => body.is_end_stream(),
            RefusalBody::Refused { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RefusalBody::Inner { body } => body.size_hint(),
            RefusalBody::Refused { body } => body.size_hint(),
        }
    }
}
