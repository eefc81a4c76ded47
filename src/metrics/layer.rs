//! The tower layer, its service, its response future and its body observer.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::instruments::{CallKey, GenAiRecord, Metrics, Side, outcome_index};
use super::scan::{
    FieldCapture, MODEL_KEY, USAGE_KEY, ValueKind, find_field, find_model_value, find_usage,
    parse_usage, starts_with_words, string_contents,
};
use crate::body::{BodyEnd, BodyEvent, BodyFormat, BodyObserver, ObservedBody};
use crate::classify::{Classify, DeepSeekClassifier, Observation, Outcome, StreamFailure};
use crate::clock::Stamp;
use crate::deepseek::RequestModel;

/// Names the operation of a request from its method and URI. It must return one of a small,
/// fixed set of names (never the raw path): the operation table holds a bounded number of
/// labels and reports the rest as `other`.
pub type OperationFn = fn(&http::Method, &http::Uri) -> &'static str;

/// The client side's default [`OperationFn`]: `chat` for `…/chat/completions`, `models` for
/// `…/models`, `other` for anything else.
///
/// ```
/// use tower_deepseek::metrics::operation_from_path;
///
/// let uri: http::Uri = "https://api.deepseek.com/chat/completions".parse().unwrap();
/// assert_eq!(operation_from_path(&http::Method::POST, &uri), "chat");
/// let uri: http::Uri = "/v1/users/42".parse().unwrap();
/// assert_eq!(operation_from_path(&http::Method::GET, &uri), "other");
/// ```
pub fn operation_from_path(_method: &http::Method, uri: &http::Uri) -> &'static str {
    let mut path = uri.path().as_bytes();
    while let [rest @ .., b'/'] = path {
        path = rest;
    }
    // `/chat/completions` is 17 bytes: compared as two overlapping words, not a call.
    const CHAT: &[u8; 17] = b"/chat/completions";
    let tail = |n: usize| path.len().checked_sub(n).map(|start| &path[start..]);
    if let Some(tail) = tail(CHAT.len())
        && tail[..8] == CHAT[..8]
        && tail[8..] == CHAT[8..]
    {
        "chat"
    } else if tail(7) == Some(b"/models") {
        "models"
    } else {
        "other"
    }
}

#[derive(Clone, Copy)]
enum Operation {
    Fixed(usize),
    By(OperationFn),
    /// [`operation_from_path`], which reads only the path: its answer is kept by path.
    Path,
}

/// The address and length of a URI's path and query as stored (`Uri::path` would slice it).
#[inline]
fn path_id(uri: &http::Uri) -> Option<(usize, usize)> {
    uri.path_and_query()
        .map(|path| (path.as_str().as_ptr() as usize, path.as_str().len()))
}

/// The layer's classifier: the default one called directly (so it can be inlined: a head or
/// an end judged in a few instructions), any other through its `Arc`.
#[derive(Clone)]
enum Classifier {
    DeepSeek,
    Custom(Arc<dyn Classify>),
}

impl Classify for Classifier {
    #[inline]
    fn classify(&self, observation: Observation<'_>) -> Outcome {
        match self {
            Classifier::DeepSeek => DeepSeekClassifier.classify(observation),
            Classifier::Custom(classifier) => classifier.classify(observation),
        }
    }
}

/// What every call of one layer shares (one `Arc` clone per call).
struct Shared {
    metrics: Metrics,
    side: Side,
    operation: Operation,
    classifier: Classifier,
    /// The operation names an [`OperationFn`] returned, by address, with their label index:
    /// a name is `&'static`, so its address and length identify it for good, and a label's
    /// index never changes once given.
    operations: [OnceLock<(usize, usize, usize)>; 4],
    /// Paths [`operation_from_path`] named, with their label index: the client clones one
    /// prebuilt URI per endpoint, so its path's bytes stay at one address (the clone held
    /// here keeps that address from being reused for another path). Keyed by the address and
    /// length of the path and query as stored, which (unlike `Uri::path`) needs no slicing.
    paths: [OnceLock<(usize, usize, usize, http::Uri)>; 4],
    /// Request models seen, with their label index: the client shares one allocation of its
    /// configured model name across requests, so its address identifies it (the clone held
    /// here keeps that address from being reused for another name).
    models: [OnceLock<(RequestModel, usize)>; 4],
}

impl Shared {
    fn operation_index(&self, name: &'static str) -> usize {
        let id = (name.as_ptr() as usize, name.len());
        for slot in &self.operations {
            match slot.get() {
                Some(&(address, len, index)) if (address, len) == id => return index,
                Some(_) => continue,
                None => {
                    let index = self.metrics.operation_index(name);
                    let _ = slot.set((id.0, id.1, index));
                    return index;
                }
            }
        }
        self.metrics.operation_index(name)
    }

    /// [`operation_from_path`]'s label index for `uri`, looked up by the path's address.
    #[inline]
    fn path_operation(&self, method: &http::Method, uri: &http::Uri) -> usize {
        if let Some(id) = path_id(uri) {
            for slot in &self.paths {
                match slot.get() {
                    Some(&(address, len, index, _)) if (address, len) == id => return index,
                    Some(_) => continue,
                    None => break,
                }
            }
        }
        self.path_operation_slow(method, uri)
    }

    /// A path not kept yet: named, and kept if there is room.
    #[cold]
    #[inline(never)]
    fn path_operation_slow(&self, method: &http::Method, uri: &http::Uri) -> usize {
        let index = self.operation_index(operation_from_path(method, uri));
        if let Some(id) = path_id(uri)
            && let Some(slot) = self.paths.iter().find(|slot| slot.get().is_none())
        {
            // Another thread may fill the slot first: this call's index is right either way.
            let _ = slot.set((id.0, id.1, index, uri.clone()));
        }
        index
    }

    #[inline]
    fn model_index(&self, model: Option<&RequestModel>) -> usize {
        let Some(model) = model else {
            return self.metrics.model_index(None);
        };
        let name = model.as_str();
        for slot in &self.models {
            match slot.get() {
                Some((known, index)) if std::ptr::eq(known.as_str(), name) => return *index,
                Some(_) => continue,
                None => break,
            }
        }
        self.model_index_slow(model)
    }

    /// A request model not kept yet: looked up, and kept if there is room.
    #[cold]
    #[inline(never)]
    fn model_index_slow(&self, model: &RequestModel) -> usize {
        let index = self.metrics.model_index(Some(model.as_str()));
        if let Some(slot) = self.models.iter().find(|slot| slot.get().is_none()) {
            // Another thread may fill the slot first: this call's index is right either way.
            let _ = slot.set((model.clone(), index));
        }
        index
    }
}

/// Records request (RED) metrics, and on the client side the GenAI metrics, for every call
/// through it. See the [module docs](super) for the metric names and labels.
///
/// - **Client side** ([`MetricsLayer::client`], under [`DeepSeekClient`](crate::DeepSeekClient)):
///   the model is the request's [`RequestModel`] extension, the operation comes from the path
///   ([`operation_from_path`]), and the response body is observed for the response model, the
///   token usage, the time to the first chunk and the time per chunk.
/// - **Server side** ([`MetricsLayer::server`], in the gateway's inbound stack): a fixed
///   operation name you give (or an [`OperationFn`]); the model is `unknown` unless a
///   [`RequestModel`] extension is present.
///
/// The outcome is what the classifier ([`DeepSeekClassifier`] by default) says of the head,
/// an error, or how the body ended: a body that ends early is a `stream_error`, with what it
/// delivered still recorded. The body is never buffered.
///
/// ```
/// # #[cfg(feature = "prometheus")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::deepseek::RequestModel;
/// use tower_deepseek::metrics::{Metrics, MetricsLayer};
///
/// let metrics = Metrics::builder().prometheus(prometheus::Registry::new()).build()?;
/// let service = ServiceBuilder::new()
///     .layer(MetricsLayer::client(&metrics))
///     .service_fn(|_request: http::Request<()>| async {
///         let body = r#"{"model":"deepseek-chat","usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
///         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
///     });
/// let mut request = http::Request::post("https://api.deepseek.com/chat/completions").body(())?;
/// request.extensions_mut().insert(RequestModel::new("deepseek-chat"));
/// let response = service.oneshot(request).await?;
/// response.into_body().collect().await?;
///
/// let text = metrics.render_prometheus().unwrap_or_default();
/// assert!(text.contains(
///     r#"deepseek_requests_total{model="deepseek-chat",operation="chat",outcome="success",side="client"} 1"#
/// ));
/// assert!(text.contains(r#"gen_ai_token_type="input"} 7"#));
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "prometheus"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct MetricsLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("side", &self.shared.side)
            .finish_non_exhaustive()
    }
}

impl MetricsLayer {
    /// The outbound layer: goes under the DeepSeek client, records request and GenAI metrics.
    pub fn client(metrics: &Metrics) -> MetricsLayer {
        MetricsLayer::new(metrics, Side::Client, Operation::Path)
    }

    /// The inbound layer: goes in the server stack, records request metrics under the fixed
    /// `operation` label (a name from a small set, e.g. the route's name, never a raw path).
    pub fn server(metrics: &Metrics, operation: &str) -> MetricsLayer {
        let index = metrics.operation_index(operation);
        MetricsLayer::new(metrics, Side::Server, Operation::Fixed(index))
    }

    fn new(metrics: &Metrics, side: Side, operation: Operation) -> MetricsLayer {
        crate::clock::warm_up();
        MetricsLayer {
            shared: Arc::new(Shared {
                metrics: metrics.clone(),
                side,
                operation,
                classifier: Classifier::DeepSeek,
                operations: Default::default(),
                paths: Default::default(),
                models: Default::default(),
            }),
        }
    }

    fn with(self, change: impl FnOnce(&mut Shared)) -> MetricsLayer {
        let shared = &self.shared;
        let mut next = Shared {
            metrics: shared.metrics.clone(),
            side: shared.side,
            operation: shared.operation,
            classifier: shared.classifier.clone(),
            operations: Default::default(),
            paths: Default::default(),
            models: Default::default(),
        };
        change(&mut next);
        MetricsLayer {
            shared: Arc::new(next),
        }
    }

    /// Labels every call with this fixed operation name.
    pub fn operation(self, operation: &str) -> MetricsLayer {
        let index = self.shared.metrics.operation_index(operation);
        self.with(|shared| shared.operation = Operation::Fixed(index))
    }

    /// Names each call's operation with `operation` (see [`OperationFn`]).
    pub fn operation_by(self, operation: OperationFn) -> MetricsLayer {
        self.with(|shared| shared.operation = Operation::By(operation))
    }

    /// Classifies outcomes with `classifier` instead of [`DeepSeekClassifier`].
    pub fn classifier(self, classifier: impl Classify) -> MetricsLayer {
        let classifier = Classifier::Custom(Arc::new(classifier));
        self.with(|shared| shared.classifier = classifier)
    }

    /// The side this layer measures (the client side also records the GenAI metrics).
    pub fn side(&self) -> Side {
        self.shared.side
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for MetricsService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsService")
            .field("side", &self.shared.side)
            .finish_non_exhaustive()
    }
}

impl<S> MetricsService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// The response body of a [`MetricsService`]: the inner body, observed as it passes.
pub type MetricsBody<B> = ObservedBody<B, MetricsObserver>;

impl<S, ReqB, RespB> Service<Request<ReqB>> for MetricsService<S>
where
    S: Service<Request<ReqB>, Response = Response<RespB>>,
    S::Error: StdError + 'static,
    RespB: http_body::Body,
{
    type Response = Response<MetricsBody<RespB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        let op = match shared.operation {
            Operation::Fixed(index) => index,
            Operation::By(name) => shared.operation_index(name(request.method(), request.uri())),
            Operation::Path => shared.path_operation(request.method(), request.uri()),
        };
        let model = shared.model_index(request.extensions().get::<RequestModel>());
        // Label indices are under `MAX_TABLE + 1`, so they always fit (a value that did not
        // would be out of every table's range, start and end alike: nothing recorded, never
        // a panic).
        let (op, model) = (
            u16::try_from(op).unwrap_or(u16::MAX),
            u16::try_from(model).unwrap_or(u16::MAX),
        );
        let call = Call {
            shared: Arc::clone(shared),
            start: Stamp::now(),
            op,
            model,
            recorded: false,
        };
        shared.metrics.call_started(call.key());
        ResponseFuture {
            future: self.inner.call(request),
            call: Some(call),
        }
    }
}

/// One call being measured. Dropping it ends the call's in-flight count, so a cancelled call
/// (its future or body dropped) never leaks a gauge increment. Kept small (24 bytes): it is
/// moved with the response and its body.
struct Call {
    shared: Arc<Shared>,
    start: Stamp,
    /// The operation's and the request model's label indices (the side is the layer's).
    op: u16,
    model: u16,
    /// Whether `finish` recorded the call (else it was cancelled).
    recorded: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.shared.metrics.call_ended(self.key(), self.recorded);
    }
}

impl Call {
    #[inline]
    fn key(&self) -> CallKey {
        CallKey {
            side: self.shared.side,
            op: usize::from(self.op),
            model: self.model(),
        }
    }

    #[inline]
    fn model(&self) -> usize {
        usize::from(self.model)
    }

    fn genai(&self) -> bool {
        self.shared.side == Side::Client
    }

    /// Records the finished call (the in-flight count ends when `self` drops).
    fn finish(mut self, outcome: Outcome, seen: Option<&Seen>) {
        let nanos = Stamp::now().nanos_since(self.start);
        let metrics = &self.shared.metrics;
        let key = self.key();
        metrics.request(key, &outcome, nanos);
        self.recorded = true;
        if self.genai() {
            let response_model = seen.and_then(Seen::response_model).unwrap_or(key.model);
            let record = GenAiRecord {
                error: (!outcome.is_success()).then(|| outcome_index(&outcome)),
                nanos,
                tokens: seen.map_or([0; 4], |seen| seen.tokens),
                // A breakdown that is zero (no cache hit, no reasoning) is not recorded, so
                // its `_count` is the number of calls that had one.
                present: seen.map_or(0, |seen| {
                    let zero = |i: usize| u8::from(seen.tokens[i] == 0) << i;
                    seen.tokens_present & !(zero(2) | zero(3))
                }),
                first_chunk: seen
                    .and_then(|seen| seen.first_chunk)
                    .map(|first| first.duration_since(self.start).as_secs_f64()),
            };
            metrics.genai(key, response_model, &record);
        }
    }
}

pin_project! {
    /// The future of a [`MetricsService`] call. A pinned struct over the inner future, no
    /// boxing.
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        call: Option<Call>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("pending", &self.call.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: StdError + 'static,
    B: http_body::Body,
{
    type Output = Result<Response<MetricsBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let Some(call) = this.call.take() else {
            // Polled again after completion: the inner future answered; pass it on unmeasured.
            return Poll::Ready(result.map(|response| {
                let format = BodyFormat::from_headers(response.headers());
                response.map(|body| ObservedBody::new(body, format, MetricsObserver::idle()))
            }));
        };
        Poll::Ready(match result {
            Ok(response) => Ok(observe(call, response)),
            Err(error) => {
                let outcome = call.shared.classifier.classify(Observation::Error(&error));
                call.finish(outcome, None);
                Err(error)
            }
        })
    }
}

/// Judges the head; a success whose body is still to come is judged by its body.
fn observe<B: http_body::Body>(call: Call, response: Response<B>) -> Response<MetricsBody<B>> {
    let (parts, body) = response.into_parts();
    let outcome = call.shared.classifier.classify(Observation::Head {
        status: parts.status,
        headers: &parts.headers,
    });
    let format = BodyFormat::from_headers(&parts.headers);
    let observer = if outcome.is_success() && !body.is_end_stream() {
        MetricsObserver::new(call, format, body.size_hint().exact())
    } else {
        call.finish(outcome, None);
        MetricsObserver::idle()
    };
    Response::from_parts(parts, ObservedBody::new(body, format, observer))
}

/// What the body showed so far, kept small: the body that holds it is moved several times
/// on its way to the reader.
#[derive(Debug, Default)]
struct Seen {
    /// Input, output, cached input, reasoning: each a count if bit `i` of `tokens_present`
    /// is set (four `Option<u64>`s would take twice the room).
    tokens: [u64; 4],
    /// When the first chunk came.
    first_chunk: Option<Stamp>,
    /// The response model's label index (label tables hold at most a few hundred).
    response_model: Option<u16>,
    tokens_present: u8,
}

impl Seen {
    fn response_model(&self) -> Option<usize> {
        self.response_model.map(usize::from)
    }

    fn has_response_model(&self) -> bool {
        self.response_model.is_some()
    }

    fn set_response_model(&mut self, index: usize) {
        // Always true: a label index is under `MAX_TABLE + 1`.
        if let Ok(index) = u16::try_from(index) {
            self.response_model = Some(index);
        }
    }

    #[inline]
    fn set_tokens(&mut self, tokens: [Option<u64>; 4]) {
        self.tokens_present = 0;
        for (i, count) in tokens.into_iter().enumerate() {
            self.tokens[i] = count.unwrap_or(0);
            self.tokens_present |= u8::from(count.is_some()) << i;
        }
    }
}

/// The JSON scan's progress (non-streaming bodies).
#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonScan {
    /// Nothing seen: the first frame is scanned in place, without state, as it is usually
    /// the whole body.
    Start,
    /// A field was not complete in the first frame: follow the frames with the observer's
    /// field captures.
    Fields,
    /// Both fields found (or given up).
    Done,
}

/// The metrics layer's [`BodyObserver`]: holds the call until the body ends and reads the
/// response model, the usage and the chunk timing on the way. Compose it with other
/// observers through [`crate::body`]'s tuple impls.
pub struct MetricsObserver {
    call: Option<Call>,
    /// Bytes still to come of a body of known length, if `sized` (a server may drop a body
    /// once its `content-length` is sent, without polling it to its end).
    remaining: u64,
    seen: Seen,
    last_chunk: Option<Stamp>,
    /// The captures of `model` and `usage` while `json` is `Fields`.
    fields: Option<Box<[FieldCapture; 2]>>,
    json: JsonScan,
    sized: bool,
    sse: bool,
}

impl fmt::Debug for MetricsObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsObserver")
            .field("pending", &self.call.is_some())
            .field("sse", &self.sse)
            .finish_non_exhaustive()
    }
}

impl MetricsObserver {
    #[inline]
    fn new(call: Call, format: BodyFormat, length: Option<u64>) -> MetricsObserver {
        let genai = call.genai();
        MetricsObserver {
            call: Some(call),
            remaining: length.unwrap_or(0),
            seen: Seen::default(),
            last_chunk: None,
            fields: None,
            json: if genai {
                JsonScan::Start
            } else {
                JsonScan::Done
            },
            sized: length.is_some(),
            sse: format == BodyFormat::Sse,
        }
    }

    fn idle() -> MetricsObserver {
        MetricsObserver {
            call: None,
            remaining: 0,
            seen: Seen::default(),
            last_chunk: None,
            fields: None,
            json: JsonScan::Done,
            sized: false,
            sse: false,
        }
    }

    fn finish(&mut self, outcome: impl FnOnce(&Classifier) -> Outcome) {
        if let Some(call) = self.call.take() {
            let outcome = outcome(&call.shared.classifier);
            call.finish(outcome, Some(&self.seen));
        }
    }

    fn set_model(&mut self, call_model: &[u8]) {
        let Some(call) = &self.call else {
            return;
        };
        let metrics = &call.shared.metrics;
        // Usually the model asked for: its index is known, no table lookup.
        if call.model != 0 && metrics.model_name(call.model()).as_bytes() == call_model {
            self.seen.set_response_model(call.model());
        } else if let Ok(model) = std::str::from_utf8(call_model) {
            self.seen
                .set_response_model(metrics.model_index(Some(model)));
        }
    }

    /// Reads the response model from the bytes after its value's opening quote; `false` if
    /// the value does not end there (or has an escape).
    fn model_at(&mut self, value: &[u8]) -> bool {
        // Usually the model asked for: its name (a label, so without quotes or escapes)
        // followed by the closing quote, checked in place without a search for the quote.
        if let Some(call) = &self.call
            && call.model != 0
        {
            let name = call.shared.metrics.model_name(call.model()).as_bytes();
            if value.get(name.len()) == Some(&b'"') && starts_with_words(value, name) {
                self.seen.set_response_model(call.model());
                return true;
            }
        }
        match string_contents(value) {
            Some(model) => {
                self.set_model(model);
                true
            }
            None => false,
        }
    }

    fn sse_chunk(&mut self, data: &[u8]) {
        let now = Stamp::now();
        if !self.seen.has_response_model()
            && let Some(model) = find_field(data, MODEL_KEY, ValueKind::String)
        {
            self.set_model(model);
        }
        if let (Some(last), Some(call)) = (self.last_chunk, &self.call) {
            let model = self.seen.response_model().unwrap_or(call.model());
            let gap = now.duration_since(last).as_secs_f64();
            call.shared.metrics.chunk_gap(call.key(), model, gap);
        }
        self.last_chunk = Some(now);
    }

    fn json_frame(&mut self, frame: &[u8]) {
        match self.json {
            JsonScan::Done => {}
            JsonScan::Start => {
                let model = find_model_value(frame).is_some_and(|value| self.model_at(value));
                let usage = find_usage(frame);
                if let Some(tokens) = usage {
                    self.seen.set_tokens(tokens);
                }
                if model && usage.is_some() {
                    self.json = JsonScan::Done;
                } else {
                    // Follow the next frames; replay this one into the captures of the fields
                    // not found (only the body's first frame ever takes this path).
                    let mut fields = Box::new([
                        FieldCapture::new(MODEL_KEY, ValueKind::String),
                        FieldCapture::new(USAGE_KEY, ValueKind::Object),
                    ]);
                    if !self.seen.has_response_model() {
                        let _ = fields[0].feed(frame);
                    }
                    if usage.is_none() {
                        let _ = fields[1].feed(frame);
                    }
                    self.fields = Some(fields);
                    self.json = JsonScan::Fields;
                }
            }
            JsonScan::Fields => {
                let Some(fields) = &mut self.fields else {
                    self.json = JsonScan::Done;
                    return;
                };
                let [model_field, usage_field] = &mut **fields;
                let mut model = None;
                if !self.seen.has_response_model()
                    && let Some(value) = model_field.feed(frame)
                {
                    model = Some(value.to_vec());
                }
                if let Some(usage) = usage_field.feed(frame) {
                    self.seen.set_tokens(parse_usage(usage));
                }
                let done = (model_field.is_finished() || self.seen.has_response_model())
                    && usage_field.is_finished();
                if let Some(model) = model {
                    self.set_model(&model);
                }
                if done {
                    self.fields = None;
                    self.json = JsonScan::Done;
                }
            }
        }
    }
}

impl MetricsObserver {
    /// Inlined: a server call only counts the bytes; the GenAI reading is out of line.
    #[inline(always)]
    fn chunk(&mut self, data: &[u8]) {
        let Some(call) = &self.call else {
            return;
        };
        self.remaining = self.remaining.saturating_sub(data.len() as u64);
        if call.genai() {
            self.genai_chunk(data);
        }
    }

    #[inline(never)]
    fn genai_chunk(&mut self, data: &[u8]) {
        if self.sse {
            self.sse_chunk(data);
        } else {
            self.json_frame(data);
        }
    }

    #[inline(never)]
    fn end(&mut self, end: &BodyEnd<'_>) {
        self.finish(|classifier| end.outcome(classifier));
    }

    #[inline(never)]
    fn dropped(&mut self, end: &BodyEnd<'_>) {
        let complete = self.sized && self.remaining == 0;
        self.finish(|classifier| {
            if end.is_conclusive() || complete {
                end.outcome(classifier)
            } else {
                // The reader stopped before the body said how it ended: the caller did not
                // get the whole answer, which is a failed stream from where we stand.
                Outcome::Stream(StreamFailure::Truncated)
            }
        })
    }
}

impl BodyObserver for MetricsObserver {
    // Inlined into the body's poll, so the events the metrics ignore (the first frame,
    // keep-alives, a JSON body's first token) cost a branch, not a call.
    #[inline(always)]
    fn observe(&mut self, event: BodyEvent<'_>) {
        match event {
            BodyEvent::FirstToken if self.sse => {
                if let Some(call) = &self.call
                    && call.genai()
                {
                    self.seen.first_chunk = Some(Stamp::now());
                }
            }
            BodyEvent::Chunk(data) => self.chunk(data),
            BodyEvent::Usage(usage) if self.call.is_some() => {
                self.seen.set_tokens([
                    Some(usage.prompt_tokens),
                    Some(usage.completion_tokens),
                    usage.prompt_cache_hit_tokens,
                    usage.reasoning_tokens(),
                ]);
            }
            BodyEvent::End(end) => self.end(end),
            BodyEvent::Error(error) => {
                self.finish(|classifier| classifier.classify(Observation::Error(error)))
            }
            BodyEvent::Dropped(end) => self.dropped(end),
            _ => {}
        }
    }

    #[inline]
    fn is_done(&self) -> bool {
        self.call.is_none()
    }
}
