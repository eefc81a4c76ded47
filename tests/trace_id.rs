//! The trace-ID layers: end to end through the gateway example and the embedded mock DeepSeek
//! over real sockets, and in process where exact control matters (paused time, captured logs).
#![cfg(all(
    feature = "mock",
    feature = "axum",
    feature = "upstream",
    feature = "prometheus",
    feature = "redis"
))]

#[allow(dead_code)]
#[path = "../examples/gateway/main.rs"]
mod gateway;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_deepseek::mock::{MockDeepSeek, RecordedRequest};
use tower_deepseek::trace_id::{
    self, CallTraceIds, PropagateTraceIdLayer, TraceId, TraceIdLayer, W3cTraceId,
};
use tower_deepseek::upstream::Upstream;

const KEY: &str = "sk-upstream-secret-0123456789abcdef";

struct Running {
    mock: MockDeepSeek,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tower_deepseek::BoxError>>,
}

/// The gateway in front of its own mock DeepSeek, so the test can read what DeepSeek received.
async fn start() -> Running {
    let mock = MockDeepSeek::builder()
        .api_key(Some(KEY.to_owned()))
        .start()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = gateway::GatewayConfig {
        api_key: Some(KEY.to_owned()),
        base_url: Some(mock.base_url().to_owned()),
        // Hundreds of calls from one caller: the per-caller limit is not what is tested here.
        rate_limit: gateway::RateLimitSettings {
            per_minute: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let task = tokio::spawn(gateway::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    Running {
        mock,
        addr,
        stop: Some(stop),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("gateway stops")
            .expect("gateway task")
            .expect("gateway ran cleanly");
    }

    /// POSTs a chat completion saying `message` with extra headers; answers status, headers
    /// and body text.
    async fn chat(
        &self,
        message: &str,
        stream: bool,
        headers: &[(&str, &[u8])],
    ) -> (u16, HeaderMap, String) {
        let body = serde_json::json!({
            "model": "deepseek-v4-flash",
            "stream": stream,
            "messages": [{"role": "user", "content": message}],
        });
        let mut request = Request::post(format!("http://{}/v1/chat/completions", self.addr))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let response = Upstream::new().unwrap().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status.as_u16(),
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }
}

fn header<'a>(request: &'a RecordedRequest, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("DeepSeek received no {name}: {request:?}"))
        .to_str()
        .unwrap()
}

/// `(trace-id, parent-id, flags)` of a version-00 traceparent.
fn split_traceparent(value: &str) -> (&str, &str, &str) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    assert_eq!(
        (parts[1].len(), parts[2].len(), parts[3].len()),
        (32, 16, 2)
    );
    (parts[1], parts[2], parts[3])
}

fn trace_of(id: &str) -> String {
    TraceId::parse(id).unwrap().w3c_trace_id().to_string()
}

fn is_uuid_v4(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok_and(|uuid| uuid.get_version_num() == 4) && text.len() == 36
}

#[tokio::test]
async fn abc_123_reaches_deepseek_with_its_traceparent_and_comes_back() {
    let gateway = start().await;
    for stream in [false, true] {
        gateway.mock.clear_requests();
        let (status, headers, body) = gateway
            .chat("hello", stream, &[("x-trace-id", b"abc-123")])
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-trace-id"], "abc-123", "echoed to the caller");
        let recorded = gateway.mock.requests();
        assert_eq!(recorded.len(), 1);
        assert_eq!(header(&recorded[0], "x-trace-id"), "abc-123");
        let (trace, parent, flags) = split_traceparent(header(&recorded[0], "traceparent"));
        assert_eq!(trace, trace_of("abc-123"), "the same trace as the ID");
        assert_ne!(parent, "0000000000000000");
        assert_eq!(flags, "01");
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_keep_their_own_ids() {
    let gateway = Arc::new(start().await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let gateway = Arc::clone(&gateway);
        tasks.spawn(async move {
            let id = format!("req-{i}");
            let (status, headers, body) = gateway
                .chat(
                    &format!("message {i}"),
                    i % 2 == 0,
                    &[("x-trace-id", id.as_bytes())],
                )
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                headers["x-trace-id"],
                id.as_str(),
                "request {i} got another's echo"
            );
            // The answer quotes the message (token by token when streamed).
            let quoted = if i % 2 == 0 {
                format!("\"content\":\"{i}\"")
            } else {
                format!("message {i}")
            };
            assert!(
                body.contains(&quoted),
                "request {i} got another's answer: {body}"
            );
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    let recorded = gateway.mock.requests();
    assert_eq!(recorded.len(), 200);
    for request in &recorded {
        let message = request.json().unwrap()["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        let i = message.strip_prefix("message ").unwrap();
        let id = format!("req-{i}");
        assert_eq!(
            header(request, "x-trace-id"),
            id,
            "DeepSeek got another request's ID"
        );
        let (trace, _, _) = split_traceparent(header(request, "traceparent"));
        assert_eq!(trace, trace_of(&id));
    }
    let parents: std::collections::HashSet<&str> = recorded
        .iter()
        .map(|request| split_traceparent(header(request, "traceparent")).1)
        .collect();
    assert_eq!(parents.len(), 200, "every call has its own parent-id");
    Arc::into_inner(gateway).unwrap().stop().await;
}

#[tokio::test]
async fn invalid_and_oversized_ids_are_replaced_end_to_end() {
    let gateway = start().await;
    let oversized = "a".repeat(129);
    let cases: [&[u8]; 4] = [
        oversized.as_bytes(),
        b"two words",
        b"caf\xc3\xa9",
        b"tab\there",
    ];
    for raw in cases {
        gateway.mock.clear_requests();
        let (status, headers, body) = gateway.chat("hi", false, &[("x-trace-id", raw)]).await;
        assert_eq!(status, 200, "{body}");
        let echoed = headers["x-trace-id"].to_str().unwrap();
        assert!(
            is_uuid_v4(echoed),
            "a fresh UUID replaces {raw:?}, got {echoed}"
        );
        let recorded = gateway.mock.requests();
        assert_eq!(header(&recorded[0], "x-trace-id"), echoed);
        let (trace, _, _) = split_traceparent(header(&recorded[0], "traceparent"));
        assert_eq!(
            trace,
            echoed.replace('-', ""),
            "a generated UUID is its own trace-id"
        );
    }
    // 128 bytes is still accepted.
    let longest = "b".repeat(128);
    let (_, headers, _) = gateway
        .chat("hi", false, &[("x-trace-id", longest.as_bytes())])
        .await;
    assert_eq!(headers["x-trace-id"], longest.as_str());
    gateway.stop().await;
}

#[tokio::test]
async fn an_incoming_traceparent_is_joined_end_to_end() {
    let gateway = start().await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let (_, headers, _) = gateway
        .chat(
            "hi",
            false,
            &[
                ("traceparent", incoming.as_bytes()),
                ("tracestate", b"congo=t61rcWkgMzE"),
            ],
        )
        .await;
    assert_eq!(
        headers["x-trace-id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "with only a traceparent, the ID is its trace-id"
    );
    let recorded = gateway.mock.requests();
    let (trace, parent, flags) = split_traceparent(header(&recorded[0], "traceparent"));
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parent, "00f067aa0ba902b7", "a fresh parent-id for our call");
    assert_eq!(flags, "00", "the caller's sampling decision is kept");
    assert_eq!(header(&recorded[0], "tracestate"), "congo=t61rcWkgMzE");
    assert_eq!(
        header(&recorded[0], "x-trace-id"),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    // An invalid traceparent is dropped: the trace follows the ID instead.
    gateway.mock.clear_requests();
    gateway
        .chat(
            "hi",
            false,
            &[
                ("x-trace-id", b"abc-123"),
                (
                    "traceparent",
                    b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", b"congo=t61rcWkgMzE"),
            ],
        )
        .await;
    let recorded = gateway.mock.requests();
    let (trace, _, flags) = split_traceparent(header(&recorded[0], "traceparent"));
    assert_eq!(trace, trace_of("abc-123"));
    assert_eq!(flags, "01");
    assert!(recorded[0].headers.get("tracestate").is_none());
    gateway.stop().await;
}

/// Collects formatted log output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// Current-thread runtime: every task (gateway, mock, connections) logs on this thread, into
// the captured subscriber.
#[tokio::test]
async fn logs_carry_both_trace_ids_and_never_the_api_key() {
    let logs = Captured::default();
    let _guard = logs.install();
    let gateway = start().await;
    let (status, _, body) = gateway
        .chat("hello", false, &[("x-trace-id", b"abc-123")])
        .await;
    assert_eq!(status, 200, "{body}");
    gateway.stop().await;
    let text = logs.text();
    assert!(
        text.contains("request{trace_id=abc-123}"),
        "the request span carries the ID:\n{text}"
    );
    assert!(
        text.contains("upstream{trace_id=abc-123 ds_trace_id=mock-trace-00000001}"),
        "DeepSeek's trace ID is recorded beside ours:\n{text}"
    );
    assert!(text.contains("upstream answered"), "{text}");
    assert!(
        !text.contains(KEY),
        "the API key leaked into the logs:\n{text}"
    );
}

// ---- in process ----

type Echo = Response<HeaderMap>;

/// An upstream that answers with the headers it received and an `x-ds-trace-id`.
fn upstream() -> impl Service<
    Request<()>,
    Response = Echo,
    Error = Infallible,
    Future = impl Future<Output = Result<Echo, Infallible>> + Send,
> + Clone
+ Send {
    ServiceBuilder::new()
        .layer(PropagateTraceIdLayer::new())
        .service_fn(|request: Request<()>| async move {
            let mut response = Response::new(request.headers().clone());
            response
                .headers_mut()
                .insert("x-ds-trace-id", HeaderValue::from_static("ds-42"));
            Ok::<_, Infallible>(response)
        })
}

fn request_with(headers: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::new(());
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    request
}

/// 50 requests through the inbound layer, each waiting a different (virtual) time before and
/// between two outbound calls, so their polls interleave; each must keep its own ID.
#[tokio::test(start_paused = true)]
async fn interleaved_requests_keep_their_own_current_id() {
    let upstream = upstream();
    let app =
        ServiceBuilder::new()
            .layer(TraceIdLayer::new())
            .service_fn(move |request: Request<()>| {
                let upstream = upstream.clone();
                async move {
                    let wait = request.headers()["x-wait"]
                        .to_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap();
                    let mine = request.extensions().get::<TraceId>().cloned().unwrap();
                    let mut seen = Vec::new();
                    for round in 0..2 {
                        tokio::time::sleep(Duration::from_secs(wait + round)).await;
                        assert_eq!(TraceId::current().as_ref(), Some(&mine));
                        let sent = upstream
                            .clone()
                            .oneshot(Request::new(()))
                            .await?
                            .into_body();
                        seen.push(sent["x-trace-id"].to_str().unwrap().to_owned());
                    }
                    Ok::<_, Infallible>(Response::new(seen))
                }
            });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50u64 {
        let app = app.clone();
        tasks.spawn(async move {
            let id = format!("interleaved-{i}");
            let request =
                request_with(&[("x-trace-id", &id), ("x-wait", &((i * 7) % 13).to_string())]);
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.headers()["x-trace-id"], id.as_str());
            assert_eq!(response.into_body(), [id.clone(), id]);
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    assert!(
        TraceId::current().is_none(),
        "nothing leaks out of the scopes"
    );
}

async fn through_inbound(layer: TraceIdLayer, request: Request<()>) -> (Response<()>, TraceId) {
    let seen = Arc::new(Mutex::new(None));
    let record = Arc::clone(&seen);
    let app = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |request: Request<()>| {
            let record = Arc::clone(&record);
            async move {
                let id = request.extensions().get::<TraceId>().cloned().unwrap();
                assert_eq!(TraceId::current().as_ref(), Some(&id));
                // The request headers never keep an invalid value.
                if let Some(value) = request.headers().get("x-trace-id") {
                    assert_eq!(value, &id.to_header_value());
                }
                *record.lock().unwrap() = Some(id);
                Ok::<_, Infallible>(Response::new(()))
            }
        });
    let response = app.oneshot(request).await.unwrap();
    let id = seen.lock().unwrap().take().unwrap();
    (response, id)
}

#[tokio::test]
async fn an_invalid_id_is_reported_without_its_value() {
    let logs = Captured::default();
    let _guard = logs.install();
    let raw = "secret-looking value";
    let (response, id) =
        through_inbound(TraceIdLayer::new(), request_with(&[("x-trace-id", raw)])).await;
    assert!(is_uuid_v4(&id.as_str()));
    assert_eq!(response.headers()["x-trace-id"], id.to_string().as_str());
    let text = logs.text();
    assert!(
        text.contains("invalid incoming trace ID replaced"),
        "{text}"
    );
    assert!(text.contains("reason=\"not visible ASCII\""), "{text}");
    assert!(text.contains(&format!("replacement={id}")), "{text}");
    assert!(!text.contains(raw), "the raw value was logged:\n{text}");

    let (_, _) = through_inbound(
        TraceIdLayer::new(),
        request_with(&[("traceparent", "00-not-a-traceparent")]),
    )
    .await;
    assert!(text.len() < logs.text().len());
    assert!(logs.text().contains("invalid incoming traceparent ignored"));
    assert!(!logs.text().contains("not-a-traceparent"));
}

#[tokio::test]
async fn x_request_id_is_read_when_x_trace_id_is_absent() {
    let (response, id) = through_inbound(
        TraceIdLayer::new(),
        request_with(&[("x-request-id", "rid-7")]),
    )
    .await;
    assert_eq!(id.as_str(), "rid-7");
    assert_eq!(
        response.headers()["x-trace-id"],
        "rid-7",
        "echoed under the main header"
    );

    let (_, id) = through_inbound(
        TraceIdLayer::new(),
        request_with(&[("x-request-id", "rid-7"), ("x-trace-id", "tid-8")]),
    )
    .await;
    assert_eq!(id.as_str(), "tid-8", "x-trace-id comes first");

    let only_main = TraceIdLayer::builder().also_accept([]).build();
    let (_, id) = through_inbound(only_main, request_with(&[("x-request-id", "rid-7")])).await;
    assert!(is_uuid_v4(&id.as_str()));
}

#[tokio::test]
async fn the_length_cap_and_generators_are_configurable() {
    let capped = TraceIdLayer::builder().max_len(4).build();
    let (_, id) = through_inbound(capped.clone(), request_with(&[("x-trace-id", "abcd")])).await;
    assert_eq!(id.as_str(), "abcd");
    let (_, id) = through_inbound(capped, request_with(&[("x-trace-id", "abcde")])).await;
    assert_ne!(id.as_str(), "abcde");

    let v7 = TraceIdLayer::builder().uuid_v7().build();
    let (_, id) = through_inbound(v7, Request::new(())).await;
    let uuid = uuid::Uuid::parse_str(&id.as_str()).unwrap();
    assert_eq!(uuid.get_version_num(), 7);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (seconds, _) = uuid.get_timestamp().unwrap().to_unix();
    assert!(seconds <= millis / 1000 && seconds + 60 >= millis / 1000);

    let custom = TraceIdLayer::builder()
        .generator(|| TraceId::parse("from-my-generator").unwrap())
        .build();
    let (_, id) = through_inbound(custom, Request::new(())).await;
    assert_eq!(id.as_str(), "from-my-generator");
    assert_eq!(
        id.w3c_trace_id(),
        TraceId::parse("from-my-generator").unwrap().w3c_trace_id()
    );
}

#[tokio::test]
async fn a_header_the_handler_set_is_not_overwritten_by_the_echo() {
    let app = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service_fn(|_: Request<()>| async {
            let mut response = Response::new(());
            response
                .headers_mut()
                .insert("x-trace-id", HeaderValue::from_static("handler-chose"));
            Ok::<_, Infallible>(response)
        });
    let response = app
        .oneshot(request_with(&[("x-trace-id", "abc-123")]))
        .await
        .unwrap();
    let values: Vec<_> = response.headers().get_all("x-trace-id").iter().collect();
    assert_eq!(values, ["handler-chose"]);

    let quiet = ServiceBuilder::new()
        .layer(TraceIdLayer::builder().echo(false).build())
        .service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let response = quiet
        .oneshot(request_with(&[("x-trace-id", "abc")]))
        .await
        .unwrap();
    assert!(response.headers().get("x-trace-id").is_none());
}

#[tokio::test]
async fn outbound_keeps_the_headers_the_caller_set() {
    let explicit = "00-11111111111111111111111111111111-2222222222222222-01";
    let id = TraceId::parse("scope-id").unwrap();
    let sent = id
        .clone()
        .scope(upstream().oneshot(request_with(&[
            ("x-trace-id", "caller-id"),
            ("traceparent", explicit),
        ])))
        .await
        .unwrap()
        .into_body();
    assert_eq!(sent["x-trace-id"], "caller-id");
    assert_eq!(sent["traceparent"], explicit);
    assert_eq!(sent.get_all("traceparent").iter().count(), 1);

    // An explicit ID alone: the traceparent follows that ID, not the scope's.
    let sent = id
        .scope(upstream().oneshot(request_with(&[("x-trace-id", "caller-id")])))
        .await
        .unwrap()
        .into_body();
    let (trace, _, _) = split_traceparent(sent["traceparent"].to_str().unwrap());
    assert_eq!(trace, trace_of("caller-id"));
}

#[tokio::test]
async fn outbound_outside_any_request_generates_a_consistent_id() {
    assert!(TraceId::current().is_none());
    let response = upstream().oneshot(Request::new(())).await.unwrap();
    let ids = response.extensions().get::<CallTraceIds>().unwrap().clone();
    assert_eq!(ids.upstream_trace_id(), Some("ds-42"));
    let sent = response.into_body();
    let id = sent["x-trace-id"].to_str().unwrap();
    assert!(is_uuid_v4(id), "{id}");
    assert_eq!(ids.trace_id().as_str(), id);
    let (trace, _, flags) = split_traceparent(sent["traceparent"].to_str().unwrap());
    assert_eq!(trace, id.replace('-', ""));
    assert_eq!(flags, "01");
    // Each call outside a scope is its own trace.
    let again = upstream()
        .oneshot(Request::new(()))
        .await
        .unwrap()
        .into_body();
    assert_ne!(again["x-trace-id"], sent["x-trace-id"]);
}

#[tokio::test]
async fn spawn_carries_the_id_and_plain_tokio_spawn_does_not() {
    let id = TraceId::parse("parent-task").unwrap();
    let (carried, plain, sent) = id
        .scope(async {
            let carried = trace_id::spawn(async {
                tokio::task::yield_now().await;
                TraceId::current()
            });
            let plain = tokio::spawn(async { TraceId::current() });
            let sent = trace_id::spawn(async {
                upstream()
                    .oneshot(Request::new(()))
                    .await
                    .unwrap()
                    .into_body()
            });
            (
                carried.await.unwrap(),
                plain.await.unwrap(),
                sent.await.unwrap(),
            )
        })
        .await;
    assert_eq!(carried.unwrap().as_str(), "parent-task");
    assert!(plain.is_none());
    assert_eq!(sent["x-trace-id"], "parent-task");
    // Outside any scope, spawn is tokio::spawn.
    assert!(
        trace_id::spawn(async { TraceId::current() })
            .await
            .unwrap()
            .is_none()
    );
}

#[test]
fn generated_ids_match_the_uuid_crate() {
    for _ in 0..1000 {
        let id = TraceId::new_v4();
        let uuid = uuid::Uuid::parse_str(&id.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(uuid.hyphenated().to_string(), *id.as_str());
        assert_eq!(id.w3c_trace_id().to_bytes(), *uuid.as_bytes());
    }
    let ids: std::collections::HashSet<String> = (0..100_000)
        .map(|_| TraceId::new_v4().to_string())
        .collect();
    assert_eq!(ids.len(), 100_000);
    let v7 = uuid::Uuid::parse_str(&TraceId::new_v7().as_str()).unwrap();
    assert_eq!(v7.get_version_num(), 7);
    let w3c = W3cTraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    assert_eq!(TraceId::from_w3c(w3c).w3c_trace_id(), w3c);
}

// ---- axum extractor ----

#[tokio::test]
async fn the_axum_extractor_reads_the_layer_and_says_when_it_is_missing() {
    use axum::Router;
    use axum::routing::get;

    async fn show(id: TraceId) -> String {
        format!("{id} {}", id.w3c_trace_id())
    }
    async fn maybe(id: Option<TraceId>) -> String {
        id.map_or_else(|| "none".to_owned(), |id| id.to_string())
    }
    let body = |response: Response<axum::body::Body>| async move {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    let get_with = |path: &str, id: Option<&str>| {
        let mut request = Request::get(path).body(axum::body::Body::empty()).unwrap();
        if let Some(id) = id {
            request
                .headers_mut()
                .insert("x-trace-id", HeaderValue::from_str(id).unwrap());
        }
        request
    };

    let with_layer = Router::new()
        .route("/", get(show))
        .route("/maybe", get(maybe))
        .layer(TraceIdLayer::new());
    let response = with_layer
        .clone()
        .oneshot(get_with("/", Some("abc-123")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        body(response).await,
        format!("abc-123 {}", trace_of("abc-123"))
    );

    let without = Router::new()
        .route("/", get(show))
        .route("/maybe", get(maybe));
    let response = without
        .clone()
        .oneshot(get_with("/", Some("abc")))
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert!(body(response).await.contains("TraceIdLayer"));
    let response = without.oneshot(get_with("/maybe", None)).await.unwrap();
    assert_eq!(body(response).await, "none");
}

#[tokio::test]
async fn the_id_is_current_in_the_synchronous_call_too() {
    // `service_fn` runs the closure body in `call`, before any poll: an inner service that
    // sends or logs from `call` must see the ID as well.
    let app = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service_fn(|_: Request<()>| {
            let in_call = TraceId::current();
            async move { Ok::<_, Infallible>(Response::new(in_call)) }
        });
    let response = app
        .oneshot(request_with(&[("x-trace-id", "abc-123")]))
        .await
        .unwrap();
    assert_eq!(response.into_body().unwrap().as_str(), "abc-123");
}

/// A generated ID is written out once: the echo on the response and the outbound call's
/// `x-trace-id` are the same bytes (one allocation shared), not two formatted copies.
#[tokio::test]
async fn a_generated_id_is_formatted_once_for_the_echo_and_the_outbound_call() {
    let sent = Arc::new(Mutex::new(None::<HeaderValue>));
    let seen = Arc::clone(&sent);
    let outbound = ServiceBuilder::new()
        .layer(PropagateTraceIdLayer::new())
        .service_fn(move |request: Request<()>| {
            *seen.lock().unwrap() = request.headers().get("x-trace-id").cloned();
            async { Ok::<_, Infallible>(Response::new(())) }
        });
    let inbound =
        ServiceBuilder::new()
            .layer(TraceIdLayer::new())
            .service_fn(move |_request: Request<()>| {
                let outbound = outbound.clone();
                async move { outbound.oneshot(Request::new(())).await }
            });
    let response = inbound.oneshot(Request::new(())).await.unwrap();
    let echoed = response.headers()["x-trace-id"].clone();
    let sent = sent
        .lock()
        .unwrap()
        .clone()
        .expect("the outbound call carried the ID");
    assert_eq!(echoed, sent);
    assert_eq!(echoed.len(), 36, "a fresh UUID");
    assert_eq!(
        echoed.as_bytes().as_ptr(),
        sent.as_bytes().as_ptr(),
        "one copy of the text, shared"
    );
}
