//! The server side: read or generate the request's trace ID, make it current, echo it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderName, Request, Response, header::Entry};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Level, Span};

use super::generate::{Generator, MakeTraceId};
use super::id::{self, DEFAULT_MAX_LEN, InvalidTraceId, TraceId};
use super::w3c::{self, TRACEPARENT, TRACESTATE, TraceparentError};
use super::{CURRENT, REQUEST_ID, TRACE_ID};

/// Longest length cap [`TraceIdLayerBuilder::max_len`] accepts.
const MAX_LEN_LIMIT: usize = 8192;

/// Makes every request carry one [`TraceId`] (server side).
///
/// For each request it:
///
/// 1. reads the ID from `x-trace-id` (or, when that is absent, `x-request-id`) and the W3C
///    `traceparent` / `tracestate`, checking each: an ID must be non-empty, at most 128 bytes
///    and visible ASCII; a `traceparent` must follow the W3C rules (see the
///    [module docs](super)). An invalid ID is replaced by a fresh
///    one in the request headers too, and an invalid `traceparent` is removed; a `debug` event
///    names the header and the reason, never the raw value;
/// 2. generates an ID when none came (UUID v4 by default); when only a valid `traceparent`
///    came, the ID is its trace-id in 32 hex digits;
/// 3. stores the [`TraceId`] in the request extensions, makes it current for the handling of
///    the request ([`TraceId::current`], a tokio task-local: the synchronous `call` and every
///    poll of the response future), and runs both inside a `tracing` span named `request`
///    with the field `trace_id` (not built while neither a `tracing` subscriber nor a `log`
///    logger is installed: nothing could record it);
/// 4. echoes the ID on the response's `x-trace-id`, unless the handler set that header.
///
/// It works for any `http` service: an axum `Router` (`.layer(TraceIdLayer::new())`), a hyper
/// service, or a tonic server (`Server::builder().layer(TraceIdLayer::new())`).
///
/// ```
/// use std::convert::Infallible;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::trace_id::{TraceId, TraceIdLayer};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let service = ServiceBuilder::new()
///     .layer(TraceIdLayer::new())
///     .service_fn(|request: http::Request<()>| async move {
///         // Outbound calls made here pick the ID up through the task-local.
///         assert_eq!(TraceId::current().as_ref(), request.extensions().get::<TraceId>());
///         Ok::<_, Infallible>(http::Response::new(()))
///     });
/// let request = http::Request::builder().header("x-trace-id", "abc-123").body(()).unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// assert_eq!(response.headers()["x-trace-id"], "abc-123");
/// # });
/// ```
#[derive(Clone)]
pub struct TraceIdLayer {
    config: Arc<InboundConfig>,
}

impl TraceIdLayer {
    /// The layer with every setting at its default (see [`TraceIdLayerBuilder`]).
    pub fn new() -> TraceIdLayer {
        TraceIdLayer::builder().build()
    }

    /// A builder to change the headers, the cap, the generator or the span level.
    pub fn builder() -> TraceIdLayerBuilder {
        TraceIdLayerBuilder::default()
    }

    #[cfg(feature = "tonic")]
    pub(crate) fn config(&self) -> &Arc<InboundConfig> {
        &self.config
    }
}

impl Default for TraceIdLayer {
    fn default() -> Self {
        TraceIdLayer::new()
    }
}

impl fmt::Debug for TraceIdLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceIdLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Layer<S> for TraceIdLayer {
    type Service = TraceIdService<S>;

    fn layer(&self, inner: S) -> TraceIdService<S> {
        TraceIdService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// Settings of a [`TraceIdLayer`].
///
/// | setting | default |
/// |---|---|
/// | [`header`](Self::header) | `x-trace-id` (read, and echoed on the response) |
/// | [`also_accept`](Self::also_accept) | `x-request-id` (read when `header` is absent) |
/// | [`max_len`](Self::max_len) | [`DEFAULT_MAX_LEN`] (128 bytes) |
/// | [`generator`](Self::generator) | [`UuidV4`](super::UuidV4) ([`uuid_v7`](Self::uuid_v7) for time-sortable IDs) |
/// | [`w3c`](Self::w3c) | on: read `traceparent` and `tracestate` |
/// | [`echo`](Self::echo) | on: set the ID on the response |
/// | [`span_level`](Self::span_level) | `INFO` |
///
/// ```
/// use http::HeaderName;
/// use tower_deepseek::trace_id::TraceIdLayer;
///
/// let layer = TraceIdLayer::builder()
///     .header(HeaderName::from_static("x-correlation-id"))
///     .also_accept([HeaderName::from_static("x-request-id")])
///     .max_len(64)
///     .uuid_v7()
///     .span_level(tracing::Level::DEBUG)
///     .build();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct TraceIdLayerBuilder {
    header: HeaderName,
    also_accept: Vec<HeaderName>,
    max_len: usize,
    generator: Generator,
    w3c: bool,
    echo: bool,
    level: Level,
}

impl Default for TraceIdLayerBuilder {
    fn default() -> Self {
        TraceIdLayerBuilder {
            header: TRACE_ID,
            also_accept: vec![REQUEST_ID],
            max_len: DEFAULT_MAX_LEN,
            generator: Generator::V4,
            w3c: true,
            echo: true,
            level: Level::INFO,
        }
    }
}

impl TraceIdLayerBuilder {
    /// The header the ID is read from and echoed in.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// Headers read, in order, when [`header`](Self::header) is absent (replacing the default
    /// `x-request-id`; pass an empty list to read only `header`). The first present header
    /// decides: when it is invalid the ID is replaced, later ones are not consulted.
    pub fn also_accept(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.also_accept = names.into_iter().collect();
        self
    }

    /// The longest ID accepted, in bytes; longer ones are replaced. Clamped to 1..=8192.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.clamp(1, MAX_LEN_LIMIT);
        self
    }

    /// Generates IDs with `generator` (closures `Fn() -> TraceId` qualify).
    pub fn generator(mut self, generator: impl MakeTraceId) -> Self {
        self.generator = Generator::Custom(Arc::new(generator));
        self
    }

    /// Generates time-sortable UUID v7 IDs.
    pub fn uuid_v7(mut self) -> Self {
        self.generator = Generator::V7;
        self
    }

    /// Whether to read `traceparent` and `tracestate` (on by default). Off, the W3C
    /// trace-id always comes from the ID itself.
    pub fn w3c(mut self, read: bool) -> Self {
        self.w3c = read;
        self
    }

    /// Whether to set the ID on the response (on by default).
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// The level of the `request` span. Events of the request carry `trace_id` only when the
    /// span is enabled, so keep it at or above the level your filter lets through.
    pub fn span_level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// The layer.
    pub fn build(self) -> TraceIdLayer {
        let mut headers = Vec::with_capacity(1 + self.also_accept.len());
        for name in self.also_accept {
            if name != self.header && !headers.contains(&name) {
                headers.push(name);
            }
        }
        let echo = match (self.echo, self.header == TRACE_ID) {
            (false, _) => Echo::Off,
            (true, true) => Echo::TraceId,
            (true, false) => Echo::Custom(self.header.clone()),
        };
        headers.insert(0, self.header);
        TraceIdLayer {
            config: Arc::new(InboundConfig {
                headers: headers.into_boxed_slice(),
                max_len: self.max_len,
                generator: self.generator,
                w3c: self.w3c,
                echo,
                level: self.level,
            }),
        }
    }
}

/// A [`TraceIdLayer`]'s settings, resolved once.
#[derive(Debug)]
pub(crate) struct InboundConfig {
    /// The ID header first, then the accepted alternatives; never empty.
    headers: Box<[HeaderName]>,
    max_len: usize,
    generator: Generator,
    w3c: bool,
    /// Resolved once: comparing header names per call is not free.
    echo: Echo,
    level: Level,
}

/// Which header the response future echoes the ID in: the default needs no clone.
#[derive(Debug)]
pub(crate) enum Echo {
    Off,
    TraceId,
    Custom(HeaderName),
}

impl Echo {
    fn take(&mut self) -> Option<HeaderName> {
        match std::mem::replace(self, Echo::Off) {
            Echo::Off => None,
            Echo::TraceId => Some(TRACE_ID),
            Echo::Custom(name) => Some(name),
        }
    }
}

/// What was wrong with the incoming headers, reported once the span exists.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rejected {
    id: Option<(usize, InvalidTraceId, usize)>,
    traceparent: Option<TraceparentError>,
    tracestate: bool,
}

impl InboundConfig {
    /// Reads, checks or generates the trace ID of a request with these headers, replacing an
    /// invalid ID header and removing an invalid `traceparent`.
    pub(crate) fn resolve(&self, headers: &mut HeaderMap) -> (TraceId, Rejected) {
        let mut rejected = Rejected::default();
        if headers.is_empty() {
            return (self.generator.make(), rejected);
        }
        let mut context = None;
        if self.w3c {
            match w3c::read_traceparent(headers) {
                None => {}
                Some(Ok(parent)) => context = Some((parent.trace_id, parent.flags)),
                Some(Err(error)) => {
                    rejected.traceparent = Some(error);
                    headers.remove(TRACEPARENT);
                }
            }
        }

        // The first present ID header decides; the `TraceId` is built once, below, so the
        // common case (a valid ID, no `traceparent`) moves nothing around.
        let mut found = None;
        for (index, name) in self.headers.iter().enumerate() {
            if let Some(value) = headers.get(name) {
                match id::check(value.as_bytes(), self.max_len) {
                    Ok(()) => found = Some(value.clone()),
                    Err(reason) => rejected.id = Some((index, reason, value.len())),
                }
                break;
            }
        }

        let mut id = match (found, context) {
            (Some(value), context) => TraceId::from_checked_in(value, context),
            (None, Some((trace, flags))) if rejected.id.is_none() => {
                TraceId::from_w3c(trace).with_trace_context(trace, flags)
            }
            (None, Some((trace, flags))) => self.generator.make().with_trace_context(trace, flags),
            (None, None) => self.generator.make(),
        };
        if let Some((index, _, _)) = rejected.id {
            headers.insert(&self.headers[index], id.to_header_value());
        }

        // W3C: tracestate is only read beside a valid traceparent.
        if context.is_some() {
            match w3c::read_tracestate(headers) {
                Ok(state) => id.set_tracestate(state),
                Err(()) => {
                    rejected.tracestate = true;
                    headers.remove(TRACESTATE);
                }
            }
        } else if rejected.traceparent.is_some() {
            headers.remove(TRACESTATE);
        }
        (id, rejected)
    }

    /// The `request` span, at the configured level.
    pub(crate) fn span(&self, id: &TraceId) -> Span {
        if !super::spans_visible() {
            return Span::none();
        }
        match self.level {
            Level::ERROR => tracing::error_span!("request", trace_id = %id),
            Level::WARN => tracing::warn_span!("request", trace_id = %id),
            Level::INFO => tracing::info_span!("request", trace_id = %id),
            Level::DEBUG => tracing::debug_span!("request", trace_id = %id),
            _ => tracing::trace_span!("request", trace_id = %id),
        }
    }

    /// Reports what was replaced, without the raw values. Call inside the request's span.
    pub(crate) fn report(&self, rejected: Rejected, id: &TraceId) {
        if let Some((index, reason, len)) = rejected.id {
            tracing::debug!(
                header = self.headers[index].as_str(),
                reason = reason.as_str(),
                len,
                replacement = %id,
                "invalid incoming trace ID replaced"
            );
        }
        if let Some(error) = rejected.traceparent {
            tracing::debug!(
                header = "traceparent",
                reason = error.as_str(),
                "invalid incoming traceparent ignored"
            );
        }
        if rejected.tracestate {
            tracing::debug!(header = "tracestate", "invalid incoming tracestate dropped");
        }
    }

    pub(crate) fn echo_header(&self) -> Echo {
        match &self.echo {
            Echo::Off => Echo::Off,
            Echo::TraceId => Echo::TraceId,
            Echo::Custom(name) => Echo::Custom(name.clone()),
        }
    }
}

impl Rejected {
    pub(crate) fn any(&self) -> bool {
        self.id.is_some() || self.traceparent.is_some() || self.tracestate
    }
}

/// The service of a [`TraceIdLayer`].
///
/// ```
/// use tower_deepseek::trace_id::{TraceIdLayer, TraceIdService};
/// use tower_layer::Layer;
///
/// let service: TraceIdService<_> = TraceIdLayer::new().layer(tower::service_fn(
///     |_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) },
/// ));
/// # let _ = service;
/// ```
#[derive(Clone)]
pub struct TraceIdService<S> {
    inner: S,
    config: Arc<InboundConfig>,
}

impl<S> TraceIdService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for TraceIdService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceIdService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for TraceIdService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = TraceIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let config = &*self.config;
        let (id, rejected) = config.resolve(request.headers_mut());
        // A generated ID is written out once for the echo and every outbound call to share.
        let id = if matches!(config.echo, Echo::Off) {
            id
        } else {
            id.with_header_text()
        };
        let span = config.span(&id);
        if rejected.any() {
            span.in_scope(|| config.report(rejected, &id));
        }
        request.extensions_mut().insert(id.clone());
        let inner = {
            let _entered = span.enter();
            CURRENT.sync_scope(id.clone(), || self.inner.call(request))
        };
        TraceIdFuture {
            inner: CURRENT.scope(id, inner),
            span,
            echo: config.echo_header(),
        }
    }
}

pin_project! {
    /// The response future of [`TraceIdService`]: the inner future with the ID current and
    /// the span entered at every poll; it echoes the ID on the response.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use tower::{Service, ServiceBuilder};
    /// use tower_deepseek::trace_id::{TraceIdFuture, TraceIdLayer};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let mut service = ServiceBuilder::new()
    ///     .layer(TraceIdLayer::new())
    ///     .service_fn(|_: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(())) });
    /// let future: TraceIdFuture<_> = service.call(http::Request::new(()));
    /// let response = future.await.unwrap();
    /// assert_eq!(response.headers()["x-trace-id"].len(), 36); // a fresh UUID
    /// # });
    /// ```
    pub struct TraceIdFuture<F> {
        #[pin]
        inner: TaskLocalFuture<TraceId, F>,
        span: Span,
        echo: Echo,
    }
}

impl<F> fmt::Debug for TraceIdFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceIdFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for TraceIdFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let mut result = ready!(this.inner.as_mut().poll(cx));
        // The scope hands its value back once the inner future is done: no clone to echo it.
        if let (Ok(response), Some(name), Some(id)) =
            (&mut result, this.echo.take(), this.inner.take_value())
            && let Entry::Vacant(slot) = response.headers_mut().entry(name)
        {
            slot.insert(id.into_header_value());
        }
        Poll::Ready(result)
    }
}
