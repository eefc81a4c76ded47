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
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerService};
use tower_deepseek::concurrency::{ConcurrencyBody, ConcurrencyLimitLayer};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::metrics::{
    Metrics, MetricsBody, MetricsEndpoint, MetricsLayer, MetricsService,
};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::rate_limit::{RateLimitLayer, RateLimitResponseLayer};
use tower_deepseek::retry::{RetryLayer, RetryService};
use tower_deepseek::timeout::{StreamTimeout, StreamTimeoutLayer};
use tower_deepseek::trace_id::{PropagateTraceId, PropagateTraceIdLayer, TraceIdLayer};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{BoxError, Error};

/// The outbound stack under the client, outermost first.
type Transport =
    PropagateTraceId<MetricsService<RetryService<CircuitBreakerService<StreamTimeout<Upstream>>>>>;
type Client = DeepSeekClient<Transport>;
type AnyBody = UnsyncBoxBody<Bytes, BoxError>;
/// The body under the metrics: the handler's, holding its concurrency slot until it ends.
type LimitedBody = ConcurrencyBody<Full<Bytes>>;

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

type Http = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// One call to the server as caller `caller` under trace ID `trace` (checked to
/// come back): status, `Retry-After`, body.
async fn call(
    http: &Http,
    url: &str,
    caller: &str,
    trace: &str,
    body: &str,
) -> Result<(u16, Option<String>, String), BoxError> {
    let request = Request::post(url)
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
            let id = r.headers.get("x-trace-id").and_then(|v| v.to_str().ok());
            id.unwrap_or("-").to_owned()
        })
        .collect()
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
    let http: Http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let ask_url = format!("{base}/ask");

    // 1. A plain call: the trace ID goes from the caller through the server to DeepSeek.
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
