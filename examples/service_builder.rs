//! A plain hyper 1 server whose service is a `ServiceBuilder` stack around a `service_fn`
//! handler that calls DeepSeek; no trace, retry or limit code in the handler.
//!
//! ```text
//! cargo run --example service_builder --features mock,upstream,prometheus
//! ```
//!
//! It starts the embedded mock DeepSeek, serves on `127.0.0.1:0`, calls itself a few times,
//! prints and checks what happened, and exits (non-zero, with the reason, if a check fails).
//!
//! ```text
//! inbound:  TraceId ─► answer_refusals ─► Metrics (server) ─► ConcurrencyLimit
//!               ─► RateLimitResponse ─► RateLimit (per caller) ─► ask
//! outbound: PropagateTraceId ─► Metrics (client) ─► Retry ─► CircuitBreaker ─► StreamTimeout ─► Upstream
//! ```
//!
//! `RateLimitResponseLayer` answers a refused caller with its `429` (`Retry-After`,
//! `x-ratelimit-*`) right at the limiter, where the handler's body can be made from a `String`;
//! the concurrency limit's refusal (an [`Error`]) becomes its `503` in `answer_refusals`, under
//! the trace ID so that answer carries one too. `GET /metrics` is served by `MetricsEndpoint`.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::concurrency::{ConcurrencyBody, ConcurrencyLimitLayer};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::metrics::{Metrics, MetricsBody, MetricsEndpoint, MetricsLayer};
use tower_deepseek::mock::MockDeepSeek;
use tower_deepseek::rate_limit::{RateLimitLayer, RateLimitResponseLayer};
use tower_deepseek::trace_id::TraceIdLayer;
use tower_deepseek::{BoxError, Error};

#[path = "common/demo.rs"]
mod demo;
use demo::{Client, transport};

type AnyBody = UnsyncBoxBody<Bytes, BoxError>;
/// The body under the metrics: the handler's, holding its concurrency slot until it ends.
type LimitedBody = ConcurrencyBody<Full<Bytes>>;

/// The business code: the request body is the question, the answer DeepSeek's.
async fn ask(client: Client, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Error> {
    let question = match request.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(e) => {
            return Err(Error::new(
                tower_deepseek::ErrorKind::InvalidRequest,
                e.to_string(),
            ));
        }
    };
    let answer = client
        .chat(ChatRequest::new("deepseek-v4-flash").user(question))
        .await?;
    Ok(Response::new(Full::from(
        answer.content().unwrap_or_default().to_owned(),
    )))
}

/// Answers an error (DeepSeek's, or a refusal of the concurrency limit) in the OpenAI error
/// shape with its status and `Retry-After`; hyper only ever sees responses (the `Error` type
/// is there because `map_result` needs one that `poll_ready`'s error converts into).
fn answer_refusals<B>(result: Result<Response<B>, Error>) -> Result<Response<AnyBody>, Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Ok(match result {
        Ok(response) => response.map(|body| body.map_err(Into::into).boxed_unsync()),
        Err(error) => error.to_http_response().map(|text| {
            Full::from(text)
                .map_err(|never| match never {})
                .boxed_unsync()
        }),
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = MockDeepSeek::start().await?;
    // One registry for this server, never the global one.
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder().prometheus(registry.clone()).build()?;
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(mock.api_key())
        .build(transport(&metrics)?)?;

    let app = ServiceBuilder::new()
        // Outermost: every answer, a 429 or 503 included, carries the trace ID.
        .layer(TraceIdLayer::new())
        .map_result(answer_refusals::<MetricsBody<LimitedBody>>)
        // Outside the limits, so refused calls are counted too.
        .layer(MetricsLayer::server(&metrics, "ask"))
        .layer(ConcurrencyLimitLayer::builder().max_in_flight(64).build()?)
        .layer(RateLimitResponseLayer)
        .layer(
            RateLimitLayer::builder()
                .per_minute(6)
                .burst(2)
                .listener(metrics.clone())
                .build_per_api_key()?,
        )
        .service_fn(move |request: Request<Incoming>| ask(client.clone(), request));
    let endpoint = MetricsEndpoint::new(registry);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (app, endpoint) = (app.clone(), endpoint.clone());
        async move {
            if request.uri().path() == "/metrics" {
                let Ok(response) = endpoint.oneshot(request).await;
                Ok::<_, Error>(response.map(|b| b.map_err(|never| match never {}).boxed_unsync()))
            } else {
                app.oneshot(request).await
            }
        }
    });

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service.clone());
                    connections.spawn(connection);
                }
                _ = &mut stopped => break,
            }
        }
        // Every call has been answered by now; what is left are idle keep-alive connections.
        connections.abort_all();
        Ok::<_, std::io::Error>(())
    });
    demo::self_check(&mock, &base).await?;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server).await???;
    mock.shutdown().await;
    println!("all checks passed");
    Ok(())
}
