//! The tower layer over a [`RedisRateLimiter`]: one decision per request, then the call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{RedisDecision, RedisRateLimiter};
use crate::error::{BoxError, Error, ErrorKind};

/// `x-ratelimit-limit`: the burst (as Envoy's `DRAFT_VERSION_03` headers, reference §4.5).
const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`: units left after this request.
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`: whole seconds (rounded up) until the key is back to a full burst.
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The decision in flight. Boxed because the connection manager's futures cannot be named;
/// one allocation is noise next to the Redis round trip it waits for (tens of microseconds at
/// best, see the crate's benchmarks).
type DecisionFuture = Pin<Box<dyn Future<Output = Result<RedisDecision, Error>> + Send>>;

/// Limits requests with a [`RedisRateLimiter`], one unit per request, keyed by `key`: a
/// function of the request returning the limit's key, or `None` to let the request through
/// unlimited (health checks, say; return a fixed key to limit such requests together).
///
/// A refused request fails with an [`Error`] of kind [`ErrorKind::RateLimited`] carrying the
/// wait ([`Error::retry_after`]) when one exists; an admitted one gets `x-ratelimit-limit`,
/// `x-ratelimit-remaining` and `x-ratelimit-reset` (seconds) on its response. Requests
/// admitted unchecked because Redis was unreachable (fail open) get no such headers. The key
/// is never echoed in errors or headers.
///
/// ```no_run
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::rate_limit::redis::{RedisRateLimitLayer, RedisRateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let limiter = RedisRateLimiter::builder()
///     .url("redis://127.0.0.1:6379/")
///     .quota(600, Duration::from_secs(60))
///     .build()?;
/// let layer = RedisRateLimitLayer::new(limiter, |request: &Request<String>| {
///     let key = request.headers().get(http::header::AUTHORIZATION)?;
///     key.to_str().ok().map(str::to_owned)
/// });
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<String>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
/// });
/// let request = Request::builder()
///     .header("authorization", "Bearer sk-...")
///     .body(String::new())
///     .expect("valid request");
/// let response = service.oneshot(request).await?;
/// println!("{:?}", response.headers().get("x-ratelimit-remaining"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisRateLimitLayer<K> {
    limiter: RedisRateLimiter,
    key: K,
}

impl<K> fmt::Debug for RedisRateLimitLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<K> RedisRateLimitLayer<K> {
    /// A layer limiting with `limiter`, keyed by `key`.
    pub fn new(limiter: RedisRateLimiter, key: K) -> RedisRateLimitLayer<K> {
        RedisRateLimitLayer { limiter, key }
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &RedisRateLimiter {
        &self.limiter
    }
}

impl<S, K: Clone> Layer<S> for RedisRateLimitLayer<K> {
    type Service = RedisRateLimitService<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisRateLimitService {
            inner,
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service made by [`RedisRateLimitLayer`]. It needs a `Clone` inner service: the clone
/// that was driven to ready waits in the response future for the decision.
///
/// ```
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::Layer;
/// use tower_deepseek::rate_limit::redis::{RedisRateLimitLayer, RedisRateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// // Built lazily: nothing connects until the first request.
/// let limiter = RedisRateLimiter::builder()
///     .url("redis://127.0.0.1:6379/")
///     .quota(10, Duration::from_secs(1))
///     .build()?;
/// let layer = RedisRateLimitLayer::new(limiter, |_: &Request<()>| Some("all".to_owned()));
/// let service = layer.layer(tower::service_fn(|_: Request<()>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(()))
/// }));
/// assert_eq!(service.limiter().limit(), 10);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisRateLimitService<S, K> {
    inner: S,
    limiter: RedisRateLimiter,
    key: K,
}

impl<S, K> fmt::Debug for RedisRateLimitService<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitService")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, K> RedisRateLimitService<S, K> {
    /// The shared limiter.
    pub fn limiter(&self) -> &RedisRateLimiter {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, K, ReqB, RespB> Service<Request<ReqB>> for RedisRateLimitService<S, K>
where
    S: Service<Request<ReqB>, Response = Response<RespB>> + Clone,
    S::Error: Into<BoxError>,
    K: Fn(&Request<ReqB>) -> Option<String>,
{
    type Response = Response<RespB>;
    type Error = Error;
    type Future = RedisRateLimitFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let Some(key) = (self.key)(&request) else {
            return RedisRateLimitFuture {
                state: State::Calling {
                    future: self.inner.call(request),
                    headers: None,
                },
            };
        };
        // The call happens after the decision: take the service that was driven to ready and
        // leave a clone in its place (the future polls it ready again before calling, so a
        // `call` without `poll_ready` is still correct).
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        RedisRateLimitFuture {
            state: State::Deciding {
                decision: Box::pin(async move { limiter.check(&key, 1).await }),
                service: Some(service),
                request: Some(request),
            },
        }
    }
}

pin_project! {
    /// The future of a [`RedisRateLimitService`] call: the Redis decision, then the inner call.
    /// A pinned enum of states; only the decision is boxed (see the comment on its type).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use http::{Request, Response};
    /// use tower::{Layer, Service, ServiceExt};
    /// use tower_deepseek::rate_limit::redis::{RedisRateLimitLayer, RedisRateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_deepseek::Error> {
    /// let limiter = RedisRateLimiter::builder()
    ///     .url("redis://127.0.0.1:6379/")
    ///     .quota(10, Duration::from_secs(1))
    ///     .build()?;
    /// let layer = RedisRateLimitLayer::new(limiter, |_: &Request<()>| Some("all".to_owned()));
    /// let mut service = layer.layer(tower::service_fn(|_: Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(Response::new(()))
    /// }));
    /// let future = service.ready().await?.call(Request::new(())); // a RedisRateLimitFuture
    /// let response = future.await?;
    /// assert!(response.headers().contains_key("x-ratelimit-remaining"));
    /// # Ok(())
    /// # }
    /// ```
    pub struct RedisRateLimitFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        // Waiting for Redis; the service and the request wait with it.
        Deciding {
            decision: DecisionFuture,
            service: Option<S>,
            request: Option<Request<ReqB>>,
        },
        // Admitted (or not limited): the inner call, and the headers to add to its response.
        Calling {
            #[pin]
            future: S::Future,
            headers: Option<RedisDecision>,
        },
        // Finished (or refused after the decision).
        Done,
    }
}

impl<S, ReqB> fmt::Debug for RedisRateLimitFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Deciding { .. } => "Deciding",
            State::Calling { .. } => "Calling",
            State::Done => "Done",
        };
        f.debug_struct("RedisRateLimitFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, ReqB, RespB> Future for RedisRateLimitFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<RespB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<RespB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Deciding {
                    decision,
                    service,
                    request,
                } => {
                    let verdict = ready!(decision.as_mut().poll(cx));
                    let decision = match verdict {
                        Ok(decision) if decision.allowed => decision,
                        Ok(decision) => {
                            state.set(State::Done);
                            return Poll::Ready(Err(refusal(&decision)));
                        }
                        Err(error) => {
                            state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                    };
                    let Some(inner) = service.as_mut() else {
                        // Only reachable by polling after completion; the state says so.
                        state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    if let Err(error) = ready!(inner.poll_ready(cx)) {
                        state.set(State::Done);
                        return Poll::Ready(Err(Error::from_boxed(error.into())));
                    }
                    let (Some(mut inner), Some(request)) = (service.take(), request.take()) else {
                        state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let future = inner.call(request);
                    state.set(State::Calling {
                        future,
                        headers: decision.checked.then_some(decision),
                    });
                }
                StateProj::Calling { future, headers } => {
                    let result = ready!(future.poll(cx));
                    let headers = headers.take();
                    state.set(State::Done);
                    let mut response = result.map_err(|error| Error::from_boxed(error.into()))?;
                    if let Some(decision) = headers {
                        add_headers(response.headers_mut(), &decision);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}

fn polled_after_completion() -> Error {
    Error::new(
        ErrorKind::Config,
        "redis rate limit: the response future was polled after it completed",
    )
}

/// The error for a refused request: `RateLimited`, with the wait when the quantity can pass.
fn refusal(decision: &RedisDecision) -> Error {
    match decision.retry_after {
        Some(wait) => Error::new(
            ErrorKind::RateLimited,
            format!(
                "the shared (Redis) rate limit of {} for this key is used up",
                decision.limit
            ),
        )
        .with_retry_after(wait),
        None => Error::new(
            ErrorKind::RateLimited,
            format!(
                "the request needs more than the shared (Redis) rate limit's whole burst of {}; \
                 it can never pass",
                decision.limit
            ),
        ),
    }
}

fn add_headers(headers: &mut http::HeaderMap, decision: &RedisDecision) {
    let reset = decision.reset_after;
    let reset_seconds = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
    headers.insert(LIMIT, HeaderValue::from(decision.limit));
    headers.insert(REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(RESET, HeaderValue::from(reset_seconds));
}
