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
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_deepseek::concurrency::ConcurrencyLimitLayer;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::metrics::{Metrics, MetricsEndpoint, MetricsLayer};
use tower_deepseek::mock::MockDeepSeek;
use tower_deepseek::rate_limit::RateLimitLayer;
use tower_deepseek::trace_id::TraceIdLayer;
use tower_deepseek::{BoxError, Error};

#[path = "common/demo.rs"]
mod demo;
use demo::{Client, transport};

fn router(
    client: Client,
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
async fn ask(State(client): State<Client>, question: String) -> Result<String, Error> {
    let answer = client
        .chat(ChatRequest::new("deepseek-v4-flash").user(question))
        .await?;
    Ok(answer.content().unwrap_or_default().to_owned())
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
    demo::self_check(&mock, &base).await?;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server).await???;
    mock.shutdown().await;
    println!("all checks passed");
    Ok(())
}
