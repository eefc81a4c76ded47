//! The failover service and its response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::SERVED_BY;
use super::config::{FailoverBuilder, Shared};
use super::events::{FailoverEvent, FailoverReason};
use super::rewrite::Template;
use crate::classify::Observation;
use crate::deepseek::RequestBody;
use crate::error::{BoxError, Error, ErrorKind};

/// Sends each call to the primary upstream (DeepSeek) and, when it fails in a way the
/// [policy](super::FailoverPolicy) fails over on, to the next upstream of the list, until one
/// answers. See the [module docs](super).
///
/// It sits under [`DeepSeekClient`](crate::DeepSeekClient) (requests are
/// `http::Request<`[`RequestBody`]`>`), inside the retry layer and outside each upstream's own
/// breaker and timeouts. The answer carries [`ServedBy`](super::ServedBy) in its extensions and, by default,
/// an `x-upstream: <name>` header.
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use tower::ServiceExt;
/// use tower_deepseek::deepseek::RequestBody;
/// use tower_deepseek::failover::{Endpoint, Failover, ServedBy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// // The primary answers 503, the backup answers.
/// let upstream = |status: StatusCode| tower::service_fn(move |_: Request<RequestBody>| async move {
///     let mut response = Response::new(String::new());
///     *response.status_mut() = status;
///     Ok::<_, tower_deepseek::Error>(response)
/// });
/// let failover = Failover::builder()
///     .primary("deepseek", "https://api.deepseek.com", upstream(StatusCode::SERVICE_UNAVAILABLE))
///     .alternate(
///         Endpoint::new("backup", "https://backup.example.com/v1").unmapped_models(
///             tower_deepseek::failover::UnmappedModel::SendUnchanged,
///         ),
///         upstream(StatusCode::OK),
///     )
///     .build()?;
/// let mut request = Request::new(RequestBody::default());
/// *request.uri_mut() = "https://api.deepseek.com/chat/completions".parse().unwrap();
/// let response = failover.oneshot(request).await?;
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(response.headers()["x-upstream"], "backup");
/// assert_eq!(response.extensions().get::<ServedBy>().map(ServedBy::name), Some("backup"));
/// # Ok(())
/// # }
/// ```
pub struct Failover<S> {
    primary: S,
    shared: Arc<Shared<S>>,
    /// The primary's readiness error, answered by the next upstream on the next call.
    unready: Option<Error>,
}

impl<S: Clone> Clone for Failover<S> {
    fn clone(&self) -> Self {
        Failover {
            primary: self.primary.clone(),
            shared: Arc::clone(&self.shared),
            unready: None,
        }
    }
}

impl<S> fmt::Debug for Failover<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover")
            .field("upstreams", &self.upstream_names().collect::<Vec<_>>())
            .field("header", &self.shared.header)
            .finish_non_exhaustive()
    }
}

impl Failover<()> {
    /// A builder (see [`FailoverBuilder`]).
    pub fn builder<S>() -> FailoverBuilder<S> {
        FailoverBuilder::default()
    }
}

impl<S> Failover<S> {
    pub(crate) fn from_parts(primary: S, shared: Arc<Shared<S>>) -> Failover<S> {
        Failover {
            primary,
            shared,
            unready: None,
        }
    }

    /// The upstreams' names, in the order they are tried.
    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        self.shared.upstreams.iter().map(|u| u.name())
    }

    /// The primary's service.
    pub fn primary(&self) -> &S {
        &self.primary
    }

    /// The alternates' services, in order (clones of these answer the calls that fail over).
    pub fn alternates(&self) -> &[S] {
        &self.shared.alternates
    }
}

impl<S, RB> Service<Request<RequestBody>> for Failover<S>
where
    S: Service<Request<RequestBody>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = Error;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.unready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.primary.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            // With somewhere else to go, a primary that cannot take calls is one more reason
            // to fail over: the next call starts at the next upstream.
            Poll::Ready(Err(error)) if !self.shared.alternates.is_empty() => {
                self.unready = Some(Error::from_boxed(error.into()));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(Error::from_boxed(error.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        // Only a list with somewhere to go keeps a copy of the request; boxed, since inline
        // it would make every call's future larger, with a list or without.
        let template = if self.shared.alternates.is_empty() {
            None
        } else {
            Template::of(&request).map(Box::new)
        };
        let state = match self.unready.take() {
            Some(error) => State::Unready { error: Some(error) },
            None => State::Calling {
                future: self.primary.call(request),
            },
        };
        ResponseFuture {
            state,
            shared: Arc::clone(&self.shared),
            template,
            index: 0,
            detour: None,
        }
    }
}

pin_project! {
    /// The future of a [`Failover`] call: an upstream's call in flight, or the next
    /// upstream's service being driven to ready. A pinned enum of states, no boxing.
    pub struct ResponseFuture<S>
    where
        S: Service<Request<RequestBody>>,
    {
        #[pin]
        state: State<S::Future>,
        shared: Arc<Shared<S>>,
        template: Option<Box<Template>>,
        // The upstream called (or being readied).
        index: usize,
        // What only a call that fails over needs, allocated at its first hop: inline, it
        // would make every call's future (and every future around it) about 1.5 KB larger.
        detour: Option<Box<Detour<S>>>,
    }
}

/// The state of a call that left its first upstream.
struct Detour<S: Service<Request<RequestBody>>> {
    // The alternate's clone being readied and called.
    service: Option<S>,
    // The rewritten request waiting for that clone to be ready.
    request: Option<Request<RequestBody>>,
    // The latest answer an upstream itself gave (not a local refusal), with its index:
    // when the last upstream only refuses locally, the caller gets this instead.
    kept: Option<(usize, Result<S::Response, Error>)>,
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
        },
        Unready {
            error: Option<Error>,
        },
        Readying,
        Done,
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<Request<RequestBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let upstream = self.shared.upstreams.get(self.index).map(|u| u.name());
        f.debug_struct("ResponseFuture")
            .field("upstream", &upstream)
            .finish_non_exhaustive()
    }
}

impl<S, RB> Future for ResponseFuture<S>
where
    S: Service<Request<RequestBody>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<RB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        loop {
            // Set when the current upstream failed: why, and its answer.
            let (reason, answer) = match this.state.as_mut().project() {
                StateProj::Calling { future } => match future.poll(cx) {
                    Poll::Ready(Ok(response)) => {
                        let outcome = shared.classifier.classify(Observation::Head {
                            status: response.status(),
                            headers: response.headers(),
                        });
                        if outcome.is_success() {
                            this.state.set(State::Done);
                            // An earlier upstream's failed response is not needed any more.
                            *this.detour = None;
                            return Poll::Ready(finish(shared, *this.index, Ok(response)));
                        }
                        (FailoverReason::Failed(outcome), Ok(response))
                    }
                    Poll::Ready(Err(error)) => failed(shared, Error::from_boxed(error.into())),
                    Poll::Pending => return Poll::Pending,
                },
                StateProj::Unready { error } => {
                    let error = error
                        .take()
                        .unwrap_or_else(|| internal("no readiness error"));
                    failed(shared, error)
                }
                StateProj::Readying => {
                    let Some(detour) = this.detour.as_deref_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(internal("no service to ready")));
                    };
                    let Some(service) = detour.service.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(internal("no service to ready")));
                    };
                    match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            let Some(request) = detour.request.take() else {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(internal("no request to send")));
                            };
                            let future = service.call(request);
                            this.state.set(State::Calling { future });
                            continue;
                        }
                        Poll::Ready(Err(error)) => failed(shared, Error::from_boxed(error.into())),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                StateProj::Done => {
                    return Poll::Ready(Err(internal("polled after it completed")));
                }
            };

            let from = *this.index;
            if !shared.policy.fail_over(&reason) {
                this.state.set(State::Done);
                *this.detour = None;
                return Poll::Ready(finish(shared, from, answer));
            }
            match next_upstream(shared, this.template.as_deref(), from) {
                Some((to, request)) => {
                    let (from_name, to_name) = (name(shared, from), name(shared, to));
                    tracing::info!(
                        from = from_name,
                        to = to_name,
                        reason = reason.as_str(),
                        "failing over to the next upstream"
                    );
                    shared.emit(FailoverEvent::FailedOver {
                        from: from_name,
                        to: to_name,
                        reason,
                    });
                    let detour = this.detour.get_or_insert_with(|| {
                        Box::new(Detour {
                            service: None,
                            request: None,
                            kept: None,
                        })
                    });
                    if !reason.is_local_refusal() {
                        detour.kept = Some((from, answer));
                    }
                    // `to` is at least 1 here: alternates start after the primary.
                    let Some(service) = shared.alternates.get(to - 1) else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(internal("no service for the next upstream")));
                    };
                    *this.index = to;
                    detour.service = Some(service.clone());
                    detour.request = Some(request);
                    this.state.set(State::Readying);
                }
                None => {
                    this.state.set(State::Done);
                    if !shared.alternates.is_empty() {
                        shared.emit(FailoverEvent::Exhausted {
                            upstream: name(shared, from),
                            reason,
                        });
                    }
                    let (index, answer) = match this.detour.as_mut().and_then(|d| d.kept.take()) {
                        Some(kept) if reason.is_local_refusal() => kept,
                        _ => (from, answer),
                    };
                    return Poll::Ready(finish(shared, index, answer));
                }
            }
        }
    }
}

/// Why a call that failed with `error` left its upstream.
fn failed<R>(shared: &Shared<impl Sized>, error: Error) -> (FailoverReason, Result<R, Error>) {
    let reason = match error.kind() {
        ErrorKind::CircuitOpen(_) => FailoverReason::CircuitOpen,
        ErrorKind::Overloaded => FailoverReason::Overloaded,
        _ => FailoverReason::Failed(shared.classifier.classify(Observation::Error(&error))),
    };
    (reason, Err(error))
}

/// The first upstream after `from` that can take the request, rewritten for it; the ones
/// passed over are reported.
fn next_upstream<S>(
    shared: &Shared<S>,
    template: Option<&Template>,
    from: usize,
) -> Option<(usize, Request<RequestBody>)> {
    let template = template?;
    for (index, upstream) in shared.upstreams.iter().enumerate().skip(from + 1) {
        let Some(target) = &upstream.target else {
            continue;
        };
        match template.for_target(target, &shared.primary_base_path) {
            Ok(request) => return Some((index, request)),
            Err(reason) => {
                tracing::debug!(
                    upstream = upstream.name(),
                    reason = reason.as_str(),
                    "upstream passed over"
                );
                shared.emit(FailoverEvent::Skipped {
                    upstream: upstream.name(),
                    reason,
                });
            }
        }
    }
    None
}

fn name<S>(shared: &Shared<S>, index: usize) -> &str {
    shared.upstreams.get(index).map_or("", |u| u.name())
}

/// Marks the answer with the upstream that gave it: the extension, the header, and the
/// task-local read by [`ServedBy::capture`].
fn finish<S, RB>(
    shared: &Shared<S>,
    index: usize,
    answer: Result<Response<RB>, Error>,
) -> Result<Response<RB>, Error> {
    let Some(upstream) = shared.upstreams.get(index) else {
        return answer;
    };
    // Outside a capturing scope there is no one to tell.
    let _ = SERVED_BY.try_with(|slot| slot.set(Some(upstream.served_by.clone())));
    match answer {
        Ok(mut response) => {
            if let Some(header) = &shared.header {
                response
                    .headers_mut()
                    .insert(header.clone(), upstream.header_value.clone());
            }
            response.extensions_mut().insert(upstream.served_by.clone());
            Ok(response)
        }
        // An alternate's error must not carry its key, whatever the upstream echoed.
        Err(error) => Err(match upstream.target.as_ref() {
            Some(target) => target.redact(error),
            None => error,
        }),
    }
}

fn internal(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidRequest,
        format!("failover response future: {what}"),
    )
}
