//! OpenTelemetry spans and W3C context through the propagator API (feature `opentelemetry`).
//!
//! Two layers join the trace ID to an OpenTelemetry trace, with a [`Tracer`] and a
//! [`TextMapPropagator`] you pass in (no global registry is read):
//!
//! - [`OtelServerLayer`], just inside [`TraceIdLayer`](super::TraceIdLayer): extracts the
//!   caller's context from the request headers through the propagator, starts a `Server` span
//!   as its child (a root when none came), and makes that span's context current (OpenTelemetry's
//!   `Context`, at every poll) for the handler;
//! - [`OtelClientLayer`], just above [`PropagateTraceIdLayer`](super::PropagateTraceIdLayer):
//!   starts a `Client` span as a child of the current context and injects it into the outbound
//!   headers through the propagator (a header the caller set is kept). The trace-ID layer
//!   below then adds `x-trace-id` and leaves that `traceparent` as it is.
//!
//! ```text
//! TraceIdLayer → OtelServerLayer → handler → DeepSeekClient → OtelClientLayer → PropagateTraceIdLayer → transport
//! ```
//!
//! The span is the source of truth for the W3C trace: when the server span's trace-id differs
//! from the [`TraceId`]'s (no `traceparent` came, so OpenTelemetry started a root trace), the
//! `TraceId` made current below the layer keeps its text (`x-trace-id`) and takes the span's
//! trace-id and flags. So the inbound server span, the outbound client span, the `traceparent`
//! DeepSeek receives and [`TraceId::w3c_trace_id`] all name one trace.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_deepseek::trace_id::opentelemetry::{OtelClientLayer, OtelServerLayer};
//! use tower_deepseek::trace_id::{PropagateTraceIdLayer, TraceIdLayer};
//!
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//! let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "gateway");
//! let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
//!
//! let server_layers = ServiceBuilder::new()
//!     .layer(TraceIdLayer::new())
//!     .layer(OtelServerLayer::new(tracer.clone(), propagator.clone()));
//! let client_layers = ServiceBuilder::new()
//!     .layer(OtelClientLayer::new(tracer, propagator))
//!     .layer(PropagateTraceIdLayer::new());
//! # let _ = (server_layers, client_layers);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use ::opentelemetry::context::{FutureExt as _, WithContext};
use ::opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use ::opentelemetry::trace::{SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, Tracer};
use ::opentelemetry::{Context, KeyValue};
use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;

use super::outbound::upstream_id;
use super::{CURRENT, DS_TRACE_ID, TraceId, W3cTraceId};

/// Starts an OpenTelemetry `Server` span per request, joined to the caller's trace through
/// the propagator, and makes it current for the handler. See the [module docs](self).
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_deepseek::trace_id::opentelemetry::{OtelServer, OtelServerLayer};
/// use opentelemetry_sdk::propagation::TraceContextPropagator;
///
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
/// let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "app");
/// let service: OtelServer<_, _, _> = ServiceBuilder::new()
///     .layer(OtelServerLayer::new(tracer, TraceContextPropagator::new()))
///     .service_fn(|_: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// # let _ = service;
/// ```
pub struct OtelServerLayer<T, P> {
    tracer: Arc<T>,
    propagator: Arc<P>,
}

impl<T, P> OtelServerLayer<T, P> {
    /// The layer with this tracer and propagator (e.g. `TraceContextPropagator`).
    pub fn new(tracer: T, propagator: P) -> Self {
        OtelServerLayer {
            tracer: Arc::new(tracer),
            propagator: Arc::new(propagator),
        }
    }
}

impl<T, P> Clone for OtelServerLayer<T, P> {
    fn clone(&self) -> Self {
        OtelServerLayer {
            tracer: Arc::clone(&self.tracer),
            propagator: Arc::clone(&self.propagator),
        }
    }
}

impl<T, P: fmt::Debug> fmt::Debug for OtelServerLayer<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelServerLayer")
            .field("propagator", &self.propagator)
            .finish_non_exhaustive()
    }
}

impl<S, T, P> Layer<S> for OtelServerLayer<T, P> {
    type Service = OtelServer<S, T, P>;

    fn layer(&self, inner: S) -> Self::Service {
        OtelServer {
            inner,
            tracer: Arc::clone(&self.tracer),
            propagator: Arc::clone(&self.propagator),
        }
    }
}

/// The service of an [`OtelServerLayer`].
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_deepseek::trace_id::opentelemetry::{OtelServer, OtelServerLayer};
/// use opentelemetry_sdk::propagation::TraceContextPropagator;
///
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
/// let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "app");
/// let service: OtelServer<_, _, _> = ServiceBuilder::new()
///     .layer(OtelServerLayer::new(tracer, TraceContextPropagator::new()))
///     .service_fn(|_: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// # let _ = service;
/// ```
pub struct OtelServer<S, T, P> {
    inner: S,
    tracer: Arc<T>,
    propagator: Arc<P>,
}

impl<S: Clone, T, P> Clone for OtelServer<S, T, P> {
    fn clone(&self) -> Self {
        OtelServer {
            inner: self.inner.clone(),
            tracer: Arc::clone(&self.tracer),
            propagator: Arc::clone(&self.propagator),
        }
    }
}

impl<S: fmt::Debug, T, P: fmt::Debug> fmt::Debug for OtelServer<S, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelServer")
            .field("inner", &self.inner)
            .field("propagator", &self.propagator)
            .finish_non_exhaustive()
    }
}

impl<S, T, P, B, RB> Service<Request<B>> for OtelServer<S, T, P>
where
    S: Service<Request<B>, Response = Response<RB>>,
    T: Tracer,
    T::Span: Send + Sync + 'static,
    P: TextMapPropagator,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = OtelServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // A fresh base context: the caller's trace comes from the headers only.
        let parent = self
            .propagator
            .extract_with_context(&Context::new(), &HeaderExtractor(request.headers()));
        let id = request
            .extensions()
            .get::<TraceId>()
            .cloned()
            .or_else(TraceId::current)
            .unwrap_or_else(TraceId::new_v4);
        let builder = SpanBuilder::from_name(method_name(request.method()))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method_name(request.method())),
                KeyValue::new("url.path", request.uri().path().to_owned()),
                KeyValue::new("trace_id", id.to_string()),
            ]);
        let span = self.tracer.build_with_context(builder, &parent);
        let otel_cx = parent.with_span(span);
        let id = follow_span(id, otel_cx.span().span_context());
        request.extensions_mut().insert(id.clone());
        let inner = {
            let _attached = otel_cx.clone().attach();
            CURRENT.sync_scope(id.clone(), || self.inner.call(request))
        };
        OtelServerFuture {
            inner: CURRENT.scope(id, inner.with_context(otel_cx.clone())),
            otel_cx,
        }
    }
}

pin_project! {
    /// The response future of [`OtelServer`]: ends the span with the response status.
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_deepseek::trace_id::opentelemetry::{OtelServerFuture, OtelServerLayer};
    /// use opentelemetry_sdk::propagation::TraceContextPropagator;
    ///
    /// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    /// let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "app");
    /// use tower::Service;
    /// let mut service = ServiceBuilder::new()
    ///     .layer(OtelServerLayer::new(tracer, TraceContextPropagator::new()))
    ///     .service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
    ///     });
    /// let future: OtelServerFuture<_> = service.call(http::Request::new(()));
    /// # let _ = future;
    /// ```
    pub struct OtelServerFuture<F> {
        #[pin]
        inner: TaskLocalFuture<TraceId, WithContext<F>>,
        otel_cx: Context,
    }
}

impl<F> fmt::Debug for OtelServerFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelServerFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for OtelServerFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        end_span(this.otel_cx, &result, None);
        Poll::Ready(result)
    }
}

/// Starts an OpenTelemetry `Client` span per outbound call, as a child of the current
/// context, and injects it through the propagator. See the [module docs](self).
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_deepseek::trace_id::opentelemetry::{OtelClient, OtelClientLayer};
/// use opentelemetry_sdk::propagation::TraceContextPropagator;
///
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
/// let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "app");
/// let service: OtelClient<_, _, _> = ServiceBuilder::new()
///     .layer(OtelClientLayer::new(tracer, TraceContextPropagator::new()))
///     .service_fn(|_: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// # let _ = service;
/// ```
pub struct OtelClientLayer<T, P> {
    tracer: Arc<T>,
    propagator: Arc<P>,
}

impl<T, P> OtelClientLayer<T, P> {
    /// The layer with this tracer and propagator.
    pub fn new(tracer: T, propagator: P) -> Self {
        OtelClientLayer {
            tracer: Arc::new(tracer),
            propagator: Arc::new(propagator),
        }
    }
}

impl<T, P> Clone for OtelClientLayer<T, P> {
    fn clone(&self) -> Self {
        OtelClientLayer {
            tracer: Arc::clone(&self.tracer),
            propagator: Arc::clone(&self.propagator),
        }
    }
}

impl<T, P: fmt::Debug> fmt::Debug for OtelClientLayer<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelClientLayer")
            .field("propagator", &self.propagator)
            .finish_non_exhaustive()
    }
}

impl<S, T, P> Layer<S> for OtelClientLayer<T, P> {
    type Service = OtelClient<S, T, P>;

    fn layer(&self, inner: S) -> Self::Service {
        OtelClient {
            inner,
            tracer: Arc::clone(&self.tracer),
            propagator: Arc::clone(&self.propagator),
        }
    }
}

/// The service of an [`OtelClientLayer`].
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_deepseek::trace_id::opentelemetry::{OtelClient, OtelClientLayer};
/// use opentelemetry_sdk::propagation::TraceContextPropagator;
///
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
/// let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "app");
/// let service: OtelClient<_, _, _> = ServiceBuilder::new()
///     .layer(OtelClientLayer::new(tracer, TraceContextPropagator::new()))
///     .service_fn(|_: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// # let _ = service;
/// ```
pub struct OtelClient<S, T, P> {
    inner: S,
    tracer: Arc<T>,
    propagator: Arc<P>,
}

impl<S: Clone, T, P> Clone for OtelClient<S, T, P> {
    fn clone(&self) -> Self {
        OtelClient {
            inner: self.inner.clone(),
            tracer: Arc::clone(&self.tracer),
            propagator: Arc::clone(&self.propagator),
        }
    }
}

impl<S: fmt::Debug, T, P: fmt::Debug> fmt::Debug for OtelClient<S, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelClient")
            .field("inner", &self.inner)
            .field("propagator", &self.propagator)
            .finish_non_exhaustive()
    }
}

impl<S, T, P, B, RB> Service<Request<B>> for OtelClient<S, T, P>
where
    S: Service<Request<B>, Response = Response<RB>>,
    T: Tracer,
    T::Span: Send + Sync + 'static,
    P: TextMapPropagator,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = OtelClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let parent = Context::current();
        let mut attributes = vec![KeyValue::new(
            "http.request.method",
            method_name(request.method()),
        )];
        if let Some(host) = request.uri().host() {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        let builder = SpanBuilder::from_name(method_name(request.method()))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes);
        let span = self.tracer.build_with_context(builder, &parent);
        let otel_cx = parent.with_span(span);
        self.propagator
            .inject_context(&otel_cx, &mut VacantInjector(request.headers_mut()));
        // Outside any request (a background job) the ID is the span's own trace-id.
        let span_context = otel_cx.span().span_context().clone();
        let id = match TraceId::current() {
            Some(id) => follow_span(id, &span_context),
            None => W3cTraceId::from_bytes(span_context.trace_id().to_bytes())
                .map(|trace| {
                    TraceId::from_w3c(trace)
                        .with_trace_context(trace, span_context.trace_flags().to_u8())
                })
                .unwrap_or_else(TraceId::new_v4),
        };
        otel_cx
            .span()
            .set_attribute(KeyValue::new("trace_id", id.to_string()));
        // The trace-ID layer below reads the current ID in its `call`.
        let inner = {
            let _attached = otel_cx.clone().attach();
            id.sync_scope(|| self.inner.call(request))
        };
        OtelClientFuture {
            inner: inner.with_context(otel_cx.clone()),
            otel_cx,
        }
    }
}

pin_project! {
    /// The response future of [`OtelClient`]: ends the span with the response status and
    /// DeepSeek's `x-ds-trace-id` (attribute `deepseek.trace_id`).
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_deepseek::trace_id::opentelemetry::{OtelClientFuture, OtelClientLayer};
    /// use opentelemetry_sdk::propagation::TraceContextPropagator;
    ///
    /// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    /// let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "app");
    /// use tower::Service;
    /// let mut service = ServiceBuilder::new()
    ///     .layer(OtelClientLayer::new(tracer, TraceContextPropagator::new()))
    ///     .service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
    ///     });
    /// let future: OtelClientFuture<_> = service.call(http::Request::new(()));
    /// # let _ = future;
    /// ```
    pub struct OtelClientFuture<F> {
        #[pin]
        inner: WithContext<F>,
        otel_cx: Context,
    }
}

impl<F> fmt::Debug for OtelClientFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelClientFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for OtelClientFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        end_span(this.otel_cx, &result, Some(&DS_TRACE_ID));
        Poll::Ready(result)
    }
}

/// The ID with the span's trace-id and flags, when the span has a valid, different trace.
fn follow_span(id: TraceId, span_context: &SpanContext) -> TraceId {
    match W3cTraceId::from_bytes(span_context.trace_id().to_bytes()) {
        Some(trace) if span_context.is_valid() && trace != id.w3c_trace_id() => {
            id.with_trace_context(trace, span_context.trace_flags().to_u8())
        }
        _ => id,
    }
}

/// Records the status (and the upstream's trace ID) and ends the span.
fn end_span<RB, E>(
    otel_cx: &Context,
    result: &Result<Response<RB>, E>,
    upstream_header: Option<&HeaderName>,
) {
    let span = otel_cx.span();
    match result {
        Ok(response) => {
            let status = response.status();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if let Some(value) = upstream_header
                .and_then(|name| upstream_id(response.headers(), name))
                .and_then(|value| value.to_str().ok().map(str::to_owned))
            {
                span.set_attribute(KeyValue::new("deepseek.trace_id", value));
            }
            if status.is_server_error() {
                span.set_status(Status::error(status.as_str().to_owned()));
            }
        }
        Err(_) => span.set_status(Status::error("the service failed")),
    }
    span.end();
}

/// A static span name for the standard methods (no allocation), `HTTP` for others.
fn method_name(method: &Method) -> Cow<'static, str> {
    Cow::Borrowed(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "HTTP",
    })
}

/// Request headers as the propagator's carrier.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Sets the propagator's headers, keeping any the caller set.
struct VacantInjector<'a>(&'a mut HeaderMap);

impl Injector for VacantInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            return;
        };
        if let Entry::Vacant(slot) = self.0.entry(name) {
            slot.insert(value);
        }
    }
}
