//! The trace ID joined to OpenTelemetry: an axum app over TCP with the inbound layers, a
//! handler calling the embedded mock DeepSeek through the client with the outbound layers, and
//! the SDK's in-memory exporter to read the spans back.
#![cfg(all(
    feature = "opentelemetry",
    feature = "axum",
    feature = "mock",
    feature = "upstream"
))]

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{SpanId, SpanKind, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};
use tokio::sync::oneshot;
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::mock::MockDeepSeek;
use tower_deepseek::trace_id::opentelemetry::{OtelClient, OtelClientLayer, OtelServerLayer};
use tower_deepseek::trace_id::{PropagateTraceId, PropagateTraceIdLayer, TraceId, TraceIdLayer};
use tower_deepseek::upstream::Upstream;

type Transport = OtelClient<PropagateTraceId<Upstream>, SdkTracer, TraceContextPropagator>;
type Client = DeepSeekClient<Transport>;

struct Setup {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    mock: MockDeepSeek,
    client: Client,
    tracer: SdkTracer,
}

async fn setup() -> Setup {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("tower-deepseek-test");
    let mock = MockDeepSeek::start().await.unwrap();
    let transport = ServiceBuilder::new()
        .layer(OtelClientLayer::new(
            tracer.clone(),
            TraceContextPropagator::new(),
        ))
        .layer(PropagateTraceIdLayer::new())
        .service(Upstream::new().unwrap());
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(mock.api_key())
        .build(transport)
        .unwrap();
    Setup {
        exporter,
        provider,
        mock,
        client,
        tracer,
    }
}

/// The handler: asks DeepSeek (no trace code on the way), then reports the W3C trace-id of
/// the current `TraceId` so the test can compare it with the spans.
async fn ask(State(client): State<Client>) -> String {
    let answer = client
        .chat(ChatRequest::new("deepseek-v4-flash").user("hello otel"))
        .await
        .unwrap();
    let current = TraceId::current().map(|id| id.w3c_trace_id().to_string());
    format!(
        "{}\n{}",
        answer.content().unwrap_or_default(),
        current.unwrap_or_default()
    )
}

/// Serves the app on a real socket, sends one GET with `headers`, returns the response head
/// and the handler's current W3C trace-id.
async fn call_app(setup: &Setup, headers: &[(&str, &str)]) -> (http::response::Parts, String) {
    let app = Router::new()
        .route("/ask", get(ask))
        .with_state(setup.client.clone())
        .layer(
            ServiceBuilder::new()
                .layer(TraceIdLayer::new())
                .layer(OtelServerLayer::new(
                    setup.tracer.clone(),
                    TraceContextPropagator::new(),
                )),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    let mut request = http::Request::get(format!("http://{addr}/ask"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let response = Upstream::new().unwrap().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let text = body.collect().await.unwrap().to_bytes();
    assert_eq!(parts.status, 200, "{text:?}");
    let text = String::from_utf8_lossy(&text).into_owned();
    let (answer, current) = text.split_once('\n').unwrap();
    assert!(answer.contains("hello otel"), "{answer}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (parts, current.to_owned())
}

fn spans(setup: &Setup) -> (SpanData, SpanData) {
    setup.provider.force_flush().unwrap();
    let spans = setup.exporter.get_finished_spans().unwrap();
    let find = |kind: SpanKind| {
        let mut found: Vec<_> = spans.iter().filter(|span| span.span_kind == kind).collect();
        assert_eq!(found.len(), 1, "one {kind:?} span in {spans:#?}");
        found.remove(0).clone()
    };
    (find(SpanKind::Server), find(SpanKind::Client))
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// `(x-trace-id, trace-id, parent-id)` DeepSeek received.
fn received(setup: &Setup) -> (String, String, String) {
    let recorded = setup.mock.requests();
    assert_eq!(recorded.len(), 1);
    let traceparent = recorded[0].headers["traceparent"].to_str().unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    (
        recorded[0].headers["x-trace-id"]
            .to_str()
            .unwrap()
            .to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
    )
}

#[tokio::test]
async fn the_server_span_and_the_deepseek_span_share_one_trace() {
    let setup = setup().await;
    let (head, current) = call_app(&setup, &[("x-trace-id", "abc-123")]).await;
    assert_eq!(head.headers["x-trace-id"], "abc-123");

    let (server, client) = spans(&setup);
    let trace = server.span_context.trace_id();
    assert_eq!(
        current,
        trace.to_string(),
        "the current TraceId follows the server span"
    );
    assert_eq!(client.span_context.trace_id(), trace, "one trace");
    assert_eq!(client.parent_span_id, server.span_context.span_id());
    assert_eq!(
        server.parent_span_id,
        SpanId::INVALID,
        "no traceparent came: a root"
    );
    assert_eq!(attribute(&server, "trace_id").as_deref(), Some("abc-123"));
    assert_eq!(attribute(&client, "trace_id").as_deref(), Some("abc-123"));
    assert_eq!(
        attribute(&client, "deepseek.trace_id").as_deref(),
        Some("mock-trace-00000001")
    );
    assert_eq!(
        attribute(&client, "http.response.status_code").as_deref(),
        Some("200")
    );

    let (id, sent_trace, sent_parent) = received(&setup);
    assert_eq!(id, "abc-123", "the ID text is kept");
    assert_eq!(
        sent_trace,
        trace.to_string(),
        "DeepSeek joins the same trace"
    );
    assert_eq!(
        sent_parent,
        client.span_context.span_id().to_string(),
        "the client span is DeepSeek's parent"
    );
}

#[tokio::test]
async fn an_incoming_traceparent_is_the_server_spans_parent() {
    let setup = setup().await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (head, current) = call_app(&setup, &[("traceparent", incoming)]).await;
    assert_eq!(current, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        head.headers["x-trace-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    let (server, client) = spans(&setup);
    assert_eq!(
        server.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert!(server.parent_span_is_remote);
    assert_eq!(
        client.span_context.trace_id(),
        server.span_context.trace_id()
    );
    let (_, sent_trace, sent_parent) = received(&setup);
    assert_eq!(sent_trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(sent_parent, client.span_context.span_id().to_string());
}

#[tokio::test]
async fn a_background_call_is_its_own_trace_named_by_its_span() {
    let setup = setup().await;
    assert!(TraceId::current().is_none());
    setup
        .client
        .chat(ChatRequest::new("deepseek-v4-flash").user("hello otel"))
        .await
        .unwrap();
    setup.provider.force_flush().unwrap();
    let spans = setup.exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    let client = &spans[0];
    assert_eq!(client.span_kind, SpanKind::Client);
    let trace = client.span_context.trace_id().to_string();
    let (id, sent_trace, sent_parent) = received(&setup);
    assert_eq!(id, trace, "with no request, the ID is the span's trace-id");
    assert_eq!(sent_trace, trace);
    assert_eq!(sent_parent, client.span_context.span_id().to_string());
}
