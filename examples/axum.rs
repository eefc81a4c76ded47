//! An axum app whose handler calls DeepSeek, with every layer on the router and under the
//! client, and none of their code in the handler.
//!
//! ```text
//! cargo run --example axum --features mock,axum,upstream,prometheus
//! ```
//!
//! It starts the embedded mock DeepSeek, serves the app on `127.0.0.1:0`, calls itself a few
//! times, prints and checks what happened, and exits (non-zero, with the reason, if a check
//! fails).
//!
//! ```text
//! inbound:  TraceId ─► Metrics (server) ─► RateLimit (per caller) ─► ConcurrencyLimit ─► ask
//! outbound: PropagateTraceId ─► Metrics (client) ─► Retry ─► CircuitBreaker ─► StreamTimeout ─► Upstream
//! ```
//!
//! The limits' refusals are the crate's [`Error`]; `HandleErrorLayer` turns each into its
//! response (`429` or `503` with `Retry-After`, the OpenAI error shape). `/metrics` serves the
//! Prometheus registry beside the API.

use std::future::ready;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_deepseek::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerService};
use tower_deepseek::concurrency::ConcurrencyLimitLayer;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::metrics::{Metrics, MetricsEndpoint, MetricsLayer, MetricsService};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::rate_limit::RateLimitLayer;
use tower_deepseek::retry::{RetryLayer, RetryService};
use tower_deepseek::timeout::{StreamTimeout, StreamTimeoutLayer};
use tower_deepseek::trace_id::{PropagateTraceId, PropagateTraceIdLayer, TraceIdLayer};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{BoxError, Error};

/// The outbound stack under the client, outermost first.
type Transport =
    PropagateTraceId<MetricsService<RetryService<CircuitBreakerService<StreamTimeout<Upstream>>>>>;

fn transport(metrics: &Metrics) -> Result<Transport, BoxError> {
    Ok(ServiceBuilder::new()
        // Outermost: every retry carries the caller's trace ID.
        .layer(PropagateTraceIdLayer::new())
        // Above the retries: one call is counted once, whatever the retries did.
        .layer(MetricsLayer::client(metrics))
        .layer(RetryLayer::builder().listener(metrics.clone()).build()?)
        // Under the retries: the breaker sees every attempt.
        .layer(CircuitBreakerLayer::builder().build()?)
        .layer(
            StreamTimeoutLayer::builder()
                .headers(Duration::from_secs(30))
                .build()?,
        )
        .service(Upstream::new()?))
}

fn router(
    client: DeepSeekClient<Transport>,
    metrics: &Metrics,
    registry: prometheus::Registry,
) -> Result<Router, BoxError> {
    let refused = || HandleErrorLayer::new(|error: Error| ready(error.into_response()));
    let per_caller = RateLimitLayer::builder()
        .per_minute(6)
        .burst(2)
        .listener(metrics.clone())
        .build_per_api_key()?;
    let in_flight = ConcurrencyLimitLayer::builder().max_in_flight(64).build()?;
    Ok(Router::new()
        .route("/ask", post(ask))
        .with_state(client)
        .layer(ServiceBuilder::new().layer(refused()).layer(in_flight))
        .layer(ServiceBuilder::new().layer(refused()).layer(per_caller))
        // Outside the limits, so refused calls are counted too.
        .layer(MetricsLayer::server(metrics, "ask"))
        .route_service("/metrics", MetricsEndpoint::new(registry))
        // Outermost: every answer, a 429 included, carries the trace ID.
        .layer(TraceIdLayer::new()))
}

/// The business code: a question in, DeepSeek's answer out.
async fn ask(
    State(client): State<DeepSeekClient<Transport>>,
    question: String,
) -> Result<String, Error> {
    let answer = client
        .chat(ChatRequest::new("deepseek-v4-flash").user(question))
        .await?;
    Ok(answer.content().unwrap_or_default().to_owned())
}

type Http = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// One call to the app as caller `caller` under trace ID `trace` (checked to
/// come back): status, `Retry-After`, body.
async fn call(
    http: &Http,
    url: &str,
    caller: &str,
    trace: &str,
    body: &str,
) -> Result<(u16, Option<String>, String), BoxError> {
    let request = http::Request::post(url)
        .header("authorization", format!("Bearer {caller}"))
        .header("x-trace-id", trace)
        .body(Full::new(Bytes::from(body.to_owned())))?;
    let response = http.request(request).await?;
    let status = response.status().as_u16();
    // Every answer, a refusal included, echoes the caller's trace ID.
    let echoed = response.headers().get("x-trace-id");
    check(
        echoed.is_some_and(|id| id == trace),
        &format!("the {status} answer echoes trace {trace}, not {echoed:?}"),
    )?;
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    let body = response.into_body().collect().await?.to_bytes();
    Ok((
        status,
        retry_after,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn check(ok: bool, what: &str) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

/// The `x-trace-id` of every request the mock received since the last clear.
fn traces_at_mock(mock: &MockDeepSeek) -> Vec<String> {
    mock.requests()
        .iter()
        .map(|r| {
            r.headers
                .get("x-trace-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = MockDeepSeek::start().await?;
    // One registry for this app, never the global one.
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder().prometheus(registry.clone()).build()?;
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(mock.api_key())
        .build(transport(&metrics)?)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, router(client, &metrics, registry)?)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let http: Http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let ask_url = format!("{base}/ask");

    // 1. A plain call: the trace ID goes from the caller through the app to DeepSeek.
    let (status, _, answer) = call(&http, &ask_url, "alice", "demo-1", "Say hello").await?;
    println!(
        "1. alice, trace demo-1: {status} {answer:?}; DeepSeek saw {:?}",
        traces_at_mock(&mock)
    );
    check(
        status == 200 && answer.contains("Say hello"),
        "the first call is answered",
    )?;
    check(
        traces_at_mock(&mock) == ["demo-1"],
        "DeepSeek saw trace demo-1",
    )?;

    // 2. DeepSeek answers 503 once: the retry layer tries again, the caller sees a 200.
    mock.clear_requests();
    mock.script([Reply::status(503)]);
    let (status, _, answer) = call(&http, &ask_url, "alice", "demo-2", "Again").await?;
    println!(
        "2. alice, trace demo-2, DeepSeek 503 then 200: {status} {answer:?}; DeepSeek saw {:?}",
        traces_at_mock(&mock)
    );
    check(status == 200, "the retried call is answered")?;
    check(
        traces_at_mock(&mock) == ["demo-2", "demo-2"],
        "both attempts carried trace demo-2",
    )?;

    // 3. alice has spent her burst of 2: refused with a 429 before DeepSeek is called.
    mock.clear_requests();
    let (status, retry_after, _) = call(&http, &ask_url, "alice", "demo-3", "Once more").await?;
    println!(
        "3. alice, trace demo-3: {status}, Retry-After {retry_after:?}; DeepSeek saw {:?}",
        traces_at_mock(&mock)
    );
    check(
        status == 429 && retry_after.is_some(),
        "alice's third call is rate limited",
    )?;
    check(
        mock.requests().is_empty(),
        "a refused call never reaches DeepSeek",
    )?;
    let (status, _, _) = call(&http, &ask_url, "bob", "demo-4", "Hi").await?;
    println!("4. bob, trace demo-4: {status} (his own budget)");
    check(status == 200, "another caller is not limited")?;

    // 5. The counters of all that.
    let response = http.get(format!("{base}/metrics").parse()?).await?;
    let text = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    println!("5. /metrics:");
    for line in text
        .lines()
        .filter(|l| l.contains("_total") && !l.starts_with('#'))
    {
        println!("   {line}");
    }
    check(
        text.contains(r#"deepseek_retry_attempts_total{outcome="server_error"} 1"#),
        "/metrics counts the one retry",
    )?;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server).await???;
    mock.shutdown().await;
    println!("all checks passed");
    Ok(())
}
