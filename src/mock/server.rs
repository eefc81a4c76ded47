//! The HTTP side: accept loop, connections (with scripted resets), routing and the endpoints.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use super::body::{MockBody, ResetSwitch, bytes_plan, stream_plan};
use super::content::{self, ApiFailure, Envelope};
use super::control::control;
use super::record::{RecordedRequest, RequestLog, key_tail};
use super::script::Reply;

/// How long the accept loop pauses after a failed `accept` (e.g. out of file descriptors)
/// instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Which `Authorization` headers the API endpoints accept.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum KeyCheck {
    /// Any non-empty Bearer key.
    AnyNonEmpty,
    /// Exactly this Bearer key.
    Exact(String),
    /// Anything, including no header at all.
    Off,
}

impl fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key itself.
        match self {
            KeyCheck::AnyNonEmpty => f.write_str("AnyNonEmpty"),
            KeyCheck::Exact(key) => write!(f, "Exact(****{})", key_tail(key)),
            KeyCheck::Off => f.write_str("Off"),
        }
    }
}

/// Settings fixed when the server starts.
#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) key_check: KeyCheck,
    pub(super) models: Vec<String>,
    pub(super) max_body_bytes: usize,
    /// The reply for a chat completion when the script is empty (`None`: the normal answer).
    pub(super) default_reply: Option<Reply>,
    /// The HTTP/2 streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub(super) max_concurrent_streams: u32,
}

/// State shared by the handle and every connection.
pub(super) struct Shared {
    pub(super) config: Config,
    script: Mutex<VecDeque<Reply>>,
    log: Mutex<RequestLog>,
    recording: bool,
    sequence: AtomicU64,
    cancelled: AtomicU64,
    /// Connections accepted since the start.
    connections: AtomicU64,
    /// API requests whose reply has not finished (head pending or body still being sent).
    in_flight: AtomicU64,
}

/// Locks a mutex, ignoring poisoning: the guarded queues stay consistent after any panic
/// because every update is a single push, pop or clear.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(super) fn new(config: Config, max_recorded: usize) -> Shared {
        Shared {
            config,
            script: Mutex::new(VecDeque::new()),
            log: Mutex::new(RequestLog::new(max_recorded)),
            recording: max_recorded > 0,
            sequence: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    /// Appends replies to the script; returns how many are queued now.
    pub(super) fn enqueue(&self, replies: impl IntoIterator<Item = Reply>) -> usize {
        let mut script = lock(&self.script);
        script.extend(replies);
        script.len()
    }

    /// Empties the script; returns how many replies it held.
    pub(super) fn clear_script(&self) -> usize {
        let mut script = lock(&self.script);
        let count = script.len();
        script.clear();
        count
    }

    pub(super) fn pending_len(&self) -> usize {
        lock(&self.script).len()
    }

    pub(super) fn pending(&self) -> Vec<Reply> {
        lock(&self.script).iter().cloned().collect()
    }

    fn next_reply(&self) -> Option<Reply> {
        lock(&self.script).pop_front()
    }

    pub(super) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.log).snapshot()
    }

    pub(super) fn requests_json(&self) -> Value {
        lock(&self.log).to_json()
    }

    pub(super) fn clear_requests(&self) -> usize {
        lock(&self.log).clear()
    }

    fn record(&self, request: impl FnOnce() -> RecordedRequest) {
        // Without a log (`max_recorded(0)`, e.g. under load) the copy is not even made.
        if self.recording {
            lock(&self.log).push(request());
        }
    }

    /// How many API requests the client abandoned before their reply finished.
    pub(super) fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn mark_cancelled(&self, sequence: u64) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
        lock(&self.log).mark_cancelled(sequence);
    }

    /// Connections accepted since the start.
    pub(super) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// API requests whose reply has not finished.
    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// API requests received since the start (the last number handed out).
    pub(super) fn api_requests(&self) -> u64 {
        self.sequence.load(Ordering::Relaxed)
    }

    /// A new number for each API request: it names the trace ID and the completion ID.
    fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Checks the `Authorization` header; a refusal carries DeepSeek's 401 message.
    fn check_key(&self, headers: &http::HeaderMap) -> Result<(), ApiFailure> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .map(|value| bearer_key(value.as_bytes()));
        let accepted = match (&self.config.key_check, &presented) {
            (KeyCheck::Off, _) => true,
            (KeyCheck::AnyNonEmpty, Some(Some(key))) => !key.is_empty(),
            (KeyCheck::Exact(expected), Some(Some(key))) => key == expected,
            _ => false,
        };
        if accepted {
            return Ok(());
        }
        let message = match presented {
            None => "Authentication Fails, no api key was sent (expected an \
                     `Authorization: Bearer <key>` header)"
                .to_owned(),
            Some(key) => format!(
                "Authentication Fails, Your api key: ****{} is invalid",
                key.as_deref().map(key_tail).unwrap_or_default()
            ),
        };
        Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            message,
            "authentication_error",
        ))
    }
}

/// The key of a `Bearer <key>` header value; `None` when the value is not that.
fn bearer_key(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, key) = text.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim().to_owned())
}

/// Accepts connections until `stop` changes, then lets the open ones finish for up to `grace`
/// and aborts the rest.
pub(super) async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    // Owning the connection tasks here means aborting this task aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    debug!(%peer, "mock DeepSeek accepted a connection");
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(serve_connection(stream, Arc::clone(&shared), stop.clone()));
                }
                Err(error) => {
                    debug!(%error, "mock DeepSeek failed to accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reaps finished connections so the set does not grow with every one ever served.
            Some(_) = connections.join_next() => {}
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            open = connections.len(),
            "mock DeepSeek shutdown grace elapsed; aborting open connections"
        );
    }
    connections.shutdown().await;
}

/// Serves one connection (HTTP/1.1 or h2c) until it ends, a scripted reset aborts it, or the
/// server stops (then in-flight requests finish and the connection closes).
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // Stream chunks are small writes: with Nagle's algorithm each one after the first would
    // wait for the peer's (delayed) ACK, tens of milliseconds a chunk. DeepSeek sends at once.
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "mock DeepSeek cannot set TCP_NODELAY");
    }
    let reset = Arc::new(ResetSwitch::default());
    let io = TokioIo::new(ResettableStream {
        stream,
        reset: Arc::clone(&reset),
    });
    let service_reset = Arc::clone(&reset);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(shared.config.max_concurrent_streams);
    let service =
        service_fn(move |request| handle(Arc::clone(&shared), Arc::clone(&service_reset), request));
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    debug!(%error, "mock DeepSeek connection ended with an error");
                }
                return;
            }
            // Dropping the connection drops the socket, which the switch made send a reset.
            () = reset.triggered() => {
                debug!("mock DeepSeek reset a connection as scripted");
                return;
            }
            _ = stop.changed(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// The accepted socket; when a reset was scripted it closes with `SO_LINGER` 0, so the peer gets
/// a TCP RST instead of a clean FIN.
struct ResettableStream {
    stream: TcpStream,
    reset: Arc<ResetSwitch>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.is_triggered()
            && let Err(error) = self.stream.set_zero_linger()
        {
            debug!(%error, "mock DeepSeek could not arm a connection reset");
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The service's error: the request's connection is being reset as scripted.
#[derive(Debug)]
struct ConnectionReset;

impl fmt::Display for ConnectionReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection reset as scripted")
    }
}

impl StdError for ConnectionReset {}

pub(super) type MockResponse = Response<MockBody>;

/// Counts its request in flight until dropped, and marks it abandoned when dropped before
/// [`disarm`](Self::disarm): hyper drops the handler's future when the client closes the
/// connection (or resets the stream) while the head is pending, and the response body when it
/// does so while the body is being sent. A reset the script asked for is the mock's own doing,
/// not an abandonment.
struct AbandonGuard {
    shared: Arc<Shared>,
    reset: Arc<ResetSwitch>,
    sequence: u64,
    armed: bool,
}

impl AbandonGuard {
    fn new(shared: &Arc<Shared>, reset: &Arc<ResetSwitch>, sequence: u64) -> AbandonGuard {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        AbandonGuard {
            shared: Arc::clone(shared),
            reset: Arc::clone(reset),
            sequence,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.armed && !self.reset.is_triggered() {
            debug!(
                sequence = self.sequence,
                "mock DeepSeek: the client abandoned a reply"
            );
            self.shared.mark_cancelled(self.sequence);
        }
    }
}

/// A response body that carries its request's [`AbandonGuard`] until the last frame.
struct GuardedBody {
    body: MockBody,
    guard: Option<AbandonGuard>,
}

impl GuardedBody {
    fn unguarded(response: MockResponse) -> Response<GuardedBody> {
        response.map(|body| GuardedBody { body, guard: None })
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // The reply is finished when its last frame was handed over.
        if (matches!(polled, Poll::Ready(None)) || this.body.is_end_stream())
            && let Some(guard) = this.guard.as_mut()
        {
            guard.disarm();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

async fn handle(
    shared: Arc<Shared>,
    reset: Arc<ResetSwitch>,
    request: Request<Incoming>,
) -> Result<Response<GuardedBody>, ConnectionReset> {
    let (parts, body) = request.into_parts();
    let body = read_body(body, shared.config.max_body_bytes).await;
    if is_control_path(parts.uri.path()) {
        let response = match body {
            Ok(body) => control(&shared, &parts, &body),
            Err(failure) => failure_response(&failure),
        };
        debug!(
            method = %parts.method,
            path = parts.uri.path(),
            status = response.status().as_u16(),
            "mock DeepSeek control request"
        );
        return Ok(GuardedBody::unguarded(response));
    }
    let sequence = shared.next_sequence();
    let trace_id = format!("mock-trace-{sequence:08}");
    shared.record(|| RecordedRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.as_ref().cloned().unwrap_or_default(),
        cancelled: false,
        sequence,
    });
    let mut guard = AbandonGuard::new(&shared, &reset, sequence);
    let result = match body {
        Ok(body) => api(&shared, &reset, &parts, &body, sequence).await,
        Err(failure) => Ok(failure_response(&failure)),
    };
    match result {
        Ok(mut response) => {
            // A scripted header of the same name wins, so only fill the gap.
            if let Ok(value) = HeaderValue::from_str(&trace_id) {
                response
                    .headers_mut()
                    .entry(HeaderName::from_static("x-ds-trace-id"))
                    .or_insert(value);
            }
            debug!(
                method = %parts.method,
                path = parts.uri.path(),
                status = response.status().as_u16(),
                trace_id,
                "mock DeepSeek answered"
            );
            Ok(response.map(|body| {
                // A body with nothing to send is finished with the head: hyper never polls it.
                if body.is_end_stream() {
                    guard.disarm();
                }
                GuardedBody {
                    body,
                    guard: Some(guard),
                }
            }))
        }
        Err(reset) => {
            guard.disarm();
            debug!(
                method = %parts.method,
                path = parts.uri.path(),
                trace_id,
                "mock DeepSeek resets the connection before the response head"
            );
            Err(reset)
        }
    }
}

fn is_control_path(path: &str) -> bool {
    path == "/_mock" || path.starts_with("/_mock/")
}

/// Reads the whole body, refusing one over the limit with a 413.
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiFailure> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(ApiFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body is larger than the mock's limit of {limit} bytes"),
            "invalid_request_error",
        )),
        Err(error) => Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!("Could not read the request body: {error}"),
            "invalid_request_error",
        )),
    }
}

/// The DeepSeek API surface.
async fn api(
    shared: &Shared,
    reset: &Arc<ResetSwitch>,
    parts: &Parts,
    body: &Bytes,
    sequence: u64,
) -> Result<MockResponse, ConnectionReset> {
    let path = parts.uri.path();
    let is_chat = matches!(path, "/chat/completions" | "/v1/chat/completions");
    let is_models = matches!(path, "/models" | "/v1/models");
    if !((is_chat && parts.method == Method::POST) || (is_models && parts.method == Method::GET)) {
        return Ok(failure_response(&ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("Not Found: {} {path}", parts.method),
            "invalid_request_error",
        )));
    }
    if let Err(failure) = shared.check_key(&parts.headers) {
        return Ok(failure_response(&failure));
    }
    if is_models {
        return Ok(models_response(&shared.config.models));
    }
    let scripted = shared.next_reply();
    let Some(reply) = scripted.as_ref().or(shared.config.default_reply.as_ref()) else {
        return Ok(answer(shared, reset, &Reply::ok(), body, sequence));
    };
    debug!(
        status = reply.status,
        "mock DeepSeek plays a scripted reply"
    );
    if let Err(problem) = reply.check() {
        return Ok(failure_response(&ApiFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("mock DeepSeek: the scripted reply cannot be sent: {problem}"),
            "api_error",
        )));
    }
    if !reply.delay_headers.is_zero() {
        tokio::time::sleep(reply.delay_headers).await;
    }
    if reply.reset_before_headers {
        reset.trigger();
        return Err(ConnectionReset);
    }
    let mut response = if reply.is_answer() {
        answer(shared, reset, reply, body, sequence)
    } else {
        let status = status_of(reply);
        let body = match &reply.body {
            Some(text) => Bytes::from(text.clone()),
            None => ApiFailure::for_status(status).body(),
        };
        let body = MockBody::play(bytes_plan(reply, body), Arc::clone(reset));
        response(status, "application/json", body)
    };
    for (name, value) in &reply.headers {
        // `check` has validated both; skipping keeps this path free of panics regardless.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

fn status_of(reply: &Reply) -> StatusCode {
    StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The deterministic answer to a chat-completion request, shaped by the reply's modifiers.
fn answer(
    shared: &Shared,
    reset: &Arc<ResetSwitch>,
    reply: &Reply,
    body: &Bytes,
    sequence: u64,
) -> MockResponse {
    let request = match content::parse_chat_request(body, &shared.config.models) {
        Ok(request) => request,
        Err(failure) => return failure_response(&failure),
    };
    let completion = content::complete(
        &request,
        reply.content.as_deref(),
        reply.finish_reason.as_deref(),
    );
    let envelope = Envelope {
        id: format!("mock-chatcmpl-{sequence:08}"),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or_default(),
        model: request.model.clone(),
    };
    let status = status_of(reply);
    if request.stream {
        let events = content::render_events(&completion, &envelope, request.include_usage);
        let body = MockBody::play(stream_plan(reply, events), Arc::clone(reset));
        let mut response = response(status, "text/event-stream", body);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        let json = content::render_json(&completion, &envelope);
        let body = MockBody::play(bytes_plan(reply, json), Arc::clone(reset));
        response(status, "application/json", body)
    }
}

fn response(status: StatusCode, content_type: &'static str, body: MockBody) -> MockResponse {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> MockResponse {
    response(
        status,
        "application/json",
        MockBody::whole(Bytes::from(value.to_string())),
    )
}

pub(super) fn failure_response(failure: &ApiFailure) -> MockResponse {
    response(
        failure.status,
        "application/json",
        MockBody::whole(failure.body()),
    )
}

fn models_response(models: &[String]) -> MockResponse {
    let data: Vec<Value> = models
        .iter()
        .map(|id| json!({ "id": id, "object": "model", "owned_by": "deepseek" }))
        .collect();
    json_response(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_check_modes() {
        let shared = |key_check| {
            Shared::new(
                Config {
                    key_check,
                    models: Vec::new(),
                    max_body_bytes: 1024,
                    default_reply: None,
                    max_concurrent_streams: 1,
                },
                10,
            )
        };
        let headers = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            headers
        };
        let none = http::HeaderMap::new();
        let any = shared(KeyCheck::AnyNonEmpty);
        assert!(any.check_key(&headers("Bearer x")).is_ok());
        assert!(any.check_key(&headers("bearer x")).is_ok());
        assert!(any.check_key(&headers("Bearer ")).is_err());
        assert!(any.check_key(&none).is_err());
        let exact = shared(KeyCheck::Exact("sk-right-key".to_owned()));
        assert!(exact.check_key(&headers("Bearer sk-right-key")).is_ok());
        let failure = exact
            .check_key(&headers("Bearer sk-wrong-key-9876"))
            .unwrap_err();
        assert_eq!(
            failure.message,
            "Authentication Fails, Your api key: ****9876 is invalid"
        );
        let off = shared(KeyCheck::Off);
        assert!(off.check_key(&none).is_ok());
    }
}
