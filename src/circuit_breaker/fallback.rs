//! Fallbacks: what answers a call the breaker refused.
//!
//! Without one ([`NoFallback`]) the caller gets the crate's circuit-open error, naming the
//! breaker (its key) and the time until the next trial. With one, the refused request goes to
//! the fallback instead: another service ([`to_service`], e.g. the same upstream for another
//! model or base URL) or a fixed answer ([`from_fn`], e.g. the seed's degraded answer). A
//! response that came from a fallback carries a [`FallbackResponse`] extension, so nobody
//! mistakes it for the upstream's answer.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_deepseek::circuit_breaker::{fallback, CircuitBreakerLayer, FallbackResponse};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek::Error> {
//! let layer = CircuitBreakerLayer::builder().build()?.with_fallback(fallback::from_fn(
//!     |_request: Request<()>, _why: &tower_deepseek::Error| {
//!         Response::new(Full::new(Bytes::from_static(b"degraded answer")))
//!     },
//! ));
//! layer.breaker().force_open();
//! let service = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
//! });
//! let response = service.oneshot(Request::new(())).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert!(response.extensions().get::<FallbackResponse>().is_some());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use crate::error::{BoxError, CircuitOpenReason, Error};

/// Marks a response that a fallback produced because a breaker refused the call. Read it from
/// the response's extensions.
///
/// ```
/// use tower_deepseek::circuit_breaker::FallbackResponse;
/// let response = http::Response::new(());
/// assert!(response.extensions().get::<FallbackResponse>().is_none());
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackResponse {
    /// The breaker (its key, for a keyed breaker) that refused the call.
    pub breaker: Arc<str>,
    /// Why it refused.
    pub reason: CircuitOpenReason,
    /// The time until the breaker lets a trial through, when known.
    pub retry_after: Option<Duration>,
}

/// Answers a refused call. `rejection` is the [`ErrorKind::CircuitOpen`](crate::ErrorKind)
/// error the caller would get without a fallback.
pub trait Fallback<Req, B> {
    /// The answer's future.
    type Future: Future<Output = Result<Response<B>, Error>>;

    /// Answers `request`, which the breaker refused with `rejection`.
    fn fallback(&mut self, request: Req, rejection: Error) -> Self::Future;
}

/// No fallback: the caller gets the circuit-open error.
///
/// ```
/// let _none = tower_deepseek::circuit_breaker::NoFallback;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFallback;

impl<Req, B> Fallback<Req, B> for NoFallback {
    type Future = Ready<Result<Response<B>, Error>>;

    fn fallback(&mut self, _request: Req, rejection: Error) -> Self::Future {
        ready(Err(rejection))
    }
}

/// A fallback computed by a function of the request and the rejection (see [`from_fn`]).
#[derive(Clone)]
pub struct FallbackFn<F>(F);

impl<F> fmt::Debug for FallbackFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FallbackFn")
    }
}

/// A fallback answering with `f(request, &rejection)`, e.g. a fixed degraded answer.
pub fn from_fn<F>(f: F) -> FallbackFn<F> {
    FallbackFn(f)
}

impl<F, Req, B> Fallback<Req, B> for FallbackFn<F>
where
    F: FnMut(Req, &Error) -> Response<B>,
{
    type Future = Ready<Result<Response<B>, Error>>;

    fn fallback(&mut self, request: Req, rejection: Error) -> Self::Future {
        ready(Ok((self.0)(request, &rejection)))
    }
}

/// A fallback that sends the refused request to another service (see [`to_service`]).
#[derive(Clone, Debug)]
pub struct FallbackService<S>(S);

/// A fallback that sends the refused request to `service`: another model's route, another base
/// URL, a cache. Each refused call drives a clone of it to readiness.
pub fn to_service<S>(service: S) -> FallbackService<S> {
    FallbackService(service)
}

impl<S, Req, B> Fallback<Req, B> for FallbackService<S>
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Future = FallbackServiceFuture<S, Req>;

    fn fallback(&mut self, request: Req, _rejection: Error) -> Self::Future {
        FallbackServiceFuture {
            inner: Oneshot::new(self.0.clone(), request),
        }
    }
}

pin_project! {
    /// The future of a [`FallbackService`] answer.
    pub struct FallbackServiceFuture<S: Service<Req>, Req> {
        #[pin]
        inner: Oneshot<S, Req>,
    }
}

impl<S: Service<Req>, Req> fmt::Debug for FallbackServiceFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FallbackServiceFuture")
    }
}

impl<S, Req, B> Future for FallbackServiceFuture<S, Req>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }
}
