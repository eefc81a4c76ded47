//! The client side: send the current trace ID upstream, record the upstream's own trace ID.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header::Entry};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Level, Span};

use super::generate::{self, Generator, MakeTraceId};
use super::id::{self, TraceId};
use super::w3c::{TRACEPARENT, TRACESTATE};
use super::{DS_TRACE_ID, TRACE_ID};

/// Longest upstream trace ID kept, in bytes.
const MAX_UPSTREAM_ID_LEN: usize = 256;

/// Sends the current [`TraceId`] with every outbound request (client side): put it under a
/// [`DeepSeekClient`](crate::DeepSeekClient), around its transport, and the business code
/// never passes IDs along.
///
/// For each request it:
///
/// 1. takes the ID: one the caller set explicitly in `x-trace-id`, else
///    [`TraceId::current`] (the request being handled), else a fresh one (a background job);
/// 2. sets `x-trace-id` and a version-00 `traceparent` with the ID's W3C trace-id and flags
///    and a fresh parent-id (plus the `tracestate` received beside it), leaving any of these
///    headers the caller already set untouched;
/// 3. runs the call inside a `tracing` span named `upstream` with the fields `trace_id` and
///    `ds_trace_id`, the latter recorded from DeepSeek's `x-ds-trace-id` response header;
/// 4. puts both IDs on the response as a [`CallTraceIds`] extension, so a support ticket can
///    quote both.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_deepseek::deepseek::DeepSeekClient;
/// use tower_deepseek::trace_id::PropagateTraceIdLayer;
/// use tower_deepseek::upstream::Upstream;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let transport = ServiceBuilder::new()
///     .layer(PropagateTraceIdLayer::new())
///     .service(Upstream::new()?);
/// let client = DeepSeekClient::builder().api_key("sk-...").build(transport)?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PropagateTraceIdLayer {
    config: Arc<OutboundConfig>,
}

impl PropagateTraceIdLayer {
    /// The layer with every setting at its default (see [`PropagateTraceIdLayerBuilder`]).
    pub fn new() -> PropagateTraceIdLayer {
        PropagateTraceIdLayer::builder().build()
    }

    /// A builder to change the headers, the generator or the span level.
    pub fn builder() -> PropagateTraceIdLayerBuilder {
        PropagateTraceIdLayerBuilder::default()
    }

    #[cfg(feature = "tonic")]
    pub(crate) fn config(&self) -> &Arc<OutboundConfig> {
        &self.config
    }
}

impl Default for PropagateTraceIdLayer {
    fn default() -> Self {
        PropagateTraceIdLayer::new()
    }
}

impl fmt::Debug for PropagateTraceIdLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateTraceIdLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Layer<S> for PropagateTraceIdLayer {
    type Service = PropagateTraceId<S>;

    fn layer(&self, inner: S) -> PropagateTraceId<S> {
        PropagateTraceId {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// Settings of a [`PropagateTraceIdLayer`].
///
/// | setting | default |
/// |---|---|
/// | [`header`](Self::header) | `x-trace-id` |
/// | [`upstream_header`](Self::upstream_header) | `x-ds-trace-id` (DeepSeek's own trace ID) |
/// | [`traceparent`](Self::traceparent) | on: send `traceparent` (and `tracestate`) |
/// | [`generator`](Self::generator) | [`UuidV4`](super::UuidV4), for calls made outside any trace scope |
/// | [`span_level`](Self::span_level) | `INFO` |
///
/// ```
/// use tower_deepseek::trace_id::PropagateTraceIdLayer;
///
/// let layer = PropagateTraceIdLayer::builder()
///     .uuid_v7()
///     .span_level(tracing::Level::DEBUG)
///     .build();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct PropagateTraceIdLayerBuilder {
    header: HeaderName,
    upstream_header: HeaderName,
    traceparent: bool,
    generator: Generator,
    level: Level,
}

impl Default for PropagateTraceIdLayerBuilder {
    fn default() -> Self {
        PropagateTraceIdLayerBuilder {
            header: TRACE_ID,
            upstream_header: DS_TRACE_ID,
            traceparent: true,
            generator: Generator::V4,
            level: Level::INFO,
        }
    }
}

impl PropagateTraceIdLayerBuilder {
    /// The header the ID is sent in.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// The response header holding the upstream's own trace ID.
    pub fn upstream_header(mut self, name: HeaderName) -> Self {
        self.upstream_header = name;
        self
    }

    /// Whether to send `traceparent` and `tracestate` (on by default).
    pub fn traceparent(mut self, send: bool) -> Self {
        self.traceparent = send;
        self
    }

    /// Generates IDs for calls made outside any trace scope with `generator`.
    pub fn generator(mut self, generator: impl MakeTraceId) -> Self {
        self.generator = Generator::Custom(Arc::new(generator));
        self
    }

    /// Generates time-sortable UUID v7 IDs for calls made outside any trace scope.
    pub fn uuid_v7(mut self) -> Self {
        self.generator = Generator::V7;
        self
    }

    /// The level of the `upstream` span.
    pub fn span_level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// The layer.
    pub fn build(self) -> PropagateTraceIdLayer {
        PropagateTraceIdLayer {
            config: Arc::new(OutboundConfig {
                header: self.header,
                upstream_header: self.upstream_header,
                traceparent: self.traceparent,
                generator: self.generator,
                level: self.level,
            }),
        }
    }
}

/// A [`PropagateTraceIdLayer`]'s settings, resolved once.
#[derive(Debug)]
pub(crate) struct OutboundConfig {
    header: HeaderName,
    upstream_header: HeaderName,
    traceparent: bool,
    generator: Generator,
    level: Level,
}

impl OutboundConfig {
    /// Sets the trace headers the caller has not set, and says which ID they carry.
    pub(crate) fn inject(&self, headers: &mut HeaderMap) -> TraceId {
        let id = match headers.entry(&self.header) {
            // An explicit valid ID leads; an explicit invalid one is left alone, unused.
            Entry::Occupied(explicit) => match TraceId::from_header_value(explicit.get()) {
                Ok(id) => id,
                Err(_) => self.current_or_new(),
            },
            Entry::Vacant(slot) => {
                let id = self.current_or_new();
                slot.insert(id.to_header_value());
                id
            }
        };
        if self.traceparent
            && let Entry::Vacant(slot) = headers.entry(TRACEPARENT)
        {
            slot.insert(id.traceparent(generate::parent_id()));
            if let Some(state) = id.tracestate()
                && let Entry::Vacant(slot) = headers.entry(TRACESTATE)
            {
                slot.insert(state.clone());
            }
        }
        id
    }

    fn current_or_new(&self) -> TraceId {
        TraceId::current().unwrap_or_else(|| self.generator.make())
    }

    pub(crate) fn span(&self, id: &TraceId) -> Span {
        if !super::spans_visible() {
            return Span::none();
        }
        let empty = tracing::field::Empty;
        match self.level {
            Level::ERROR => tracing::error_span!("upstream", trace_id = %id, ds_trace_id = empty),
            Level::WARN => tracing::warn_span!("upstream", trace_id = %id, ds_trace_id = empty),
            Level::INFO => tracing::info_span!("upstream", trace_id = %id, ds_trace_id = empty),
            Level::DEBUG => tracing::debug_span!("upstream", trace_id = %id, ds_trace_id = empty),
            _ => tracing::trace_span!("upstream", trace_id = %id, ds_trace_id = empty),
        }
    }
}

/// The upstream's trace ID on a response, when it is a sane header value.
pub(crate) fn upstream_id(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    headers
        .get(name)
        .filter(|value| id::check(value.as_bytes(), MAX_UPSTREAM_ID_LEN).is_ok())
        .cloned()
}

/// The service of a [`PropagateTraceIdLayer`].
///
/// ```
/// use tower_deepseek::trace_id::{PropagateTraceId, PropagateTraceIdLayer};
/// use tower_layer::Layer;
///
/// let service: PropagateTraceId<_> = PropagateTraceIdLayer::new().layer(tower::service_fn(
///     |_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) },
/// ));
/// # let _ = service;
/// ```
#[derive(Clone)]
pub struct PropagateTraceId<S> {
    inner: S,
    config: Arc<OutboundConfig>,
}

impl<S> PropagateTraceId<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for PropagateTraceId<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateTraceId")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for PropagateTraceId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = PropagateTraceIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = self.config.inject(request.headers_mut());
        let span = self.config.span(&id);
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        PropagateTraceIdFuture {
            inner,
            span,
            trace_id: Some(id),
            upstream_header: self.config.upstream_header.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`PropagateTraceId`]: the inner future inside the `upstream`
    /// span; it records the upstream's trace ID on the span and the response.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use tower::{Service, ServiceBuilder};
    /// use tower_deepseek::trace_id::{CallTraceIds, PropagateTraceIdFuture, PropagateTraceIdLayer};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let mut service = ServiceBuilder::new()
    ///     .layer(PropagateTraceIdLayer::new())
    ///     .service_fn(|_: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(())) });
    /// let future: PropagateTraceIdFuture<_> = service.call(http::Request::new(()));
    /// let response = future.await.unwrap();
    /// assert!(response.extensions().get::<CallTraceIds>().is_some());
    /// # });
    /// ```
    pub struct PropagateTraceIdFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        trace_id: Option<TraceId>,
        upstream_header: HeaderName,
    }
}

impl<F> fmt::Debug for PropagateTraceIdFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateTraceIdFuture")
            .field("trace_id", &self.trace_id)
            .finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for PropagateTraceIdFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(trace_id)) = (&mut result, this.trace_id.take()) {
            let upstream = upstream_id(response.headers(), this.upstream_header);
            if let Some(value) = &upstream {
                let text = value.to_str().unwrap_or_default();
                this.span
                    .record("ds_trace_id", tracing::field::display(text));
            }
            tracing::debug!(status = response.status().as_u16(), "upstream answered");
            response
                .extensions_mut()
                .insert(CallTraceIds { trace_id, upstream });
        }
        Poll::Ready(result)
    }
}

/// Both trace IDs of one upstream call: ours and the upstream's own (`x-ds-trace-id` for
/// DeepSeek). A response extension set by [`PropagateTraceId`].
///
/// ```
/// use std::convert::Infallible;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::trace_id::{CallTraceIds, PropagateTraceIdLayer, TraceId};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let upstream = ServiceBuilder::new()
///     .layer(PropagateTraceIdLayer::new())
///     .service_fn(|_: http::Request<()>| async {
///         let response = http::Response::builder().header("x-ds-trace-id", "ds-1").body(());
///         Ok::<_, Infallible>(response.unwrap())
///     });
/// let id = TraceId::parse("abc-123").unwrap();
/// let response = id.scope(upstream.oneshot(http::Request::new(()))).await.unwrap();
/// let ids = response.extensions().get::<CallTraceIds>().unwrap();
/// assert_eq!(ids.trace_id().as_str(), "abc-123");
/// assert_eq!(ids.upstream_trace_id(), Some("ds-1"));
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct CallTraceIds {
    trace_id: TraceId,
    upstream: Option<HeaderValue>,
}

impl CallTraceIds {
    /// The trace ID sent with the call.
    pub fn trace_id(&self) -> &TraceId {
        &self.trace_id
    }

    /// The upstream's own trace ID, when it sent a sane one (visible ASCII, at most 256
    /// bytes).
    pub fn upstream_trace_id(&self) -> Option<&str> {
        self.upstream.as_ref().and_then(|value| value.to_str().ok())
    }
}
