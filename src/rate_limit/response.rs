//! The server side of a refusal: the 429 response for a plain hyper (or tower-http) server.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, Error, ErrorKind};

/// Turns a rate limiter's refusal into the HTTP answer a server owes its client: `429 Too Many
/// Requests` with `Retry-After` (whole seconds, rounded up, never 0) and
/// `x-ratelimit-limit`/`-remaining`/`-reset`, in the OpenAI error shape
/// ([`Error::to_http_response`]). Other errors pass through. Put it outside the
/// [`RateLimitLayer`](super::RateLimitLayer) of a plain hyper (or tower-http) server whose body type can be made from a
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
