//! What `examples/axum.rs` and `examples/service_builder.rs` share: the outbound stack under
//! the DeepSeek client, and the self-check each runs against its own server (the same calls,
//! so the two servers are seen to behave the same). Not an example of its own.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;
use tower_deepseek::BoxError;
use tower_deepseek::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerService};
use tower_deepseek::deepseek::DeepSeekClient;
use tower_deepseek::metrics::{Metrics, MetricsLayer, MetricsService};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::retry::{RetryLayer, RetryService};
use tower_deepseek::timeout::{StreamTimeout, StreamTimeoutLayer};
use tower_deepseek::trace_id::{PropagateTraceId, PropagateTraceIdLayer};
use tower_deepseek::upstream::Upstream;

/// The outbound stack under the client, outermost first.
pub type Transport =
    PropagateTraceId<MetricsService<RetryService<CircuitBreakerService<StreamTimeout<Upstream>>>>>;

pub fn transport(metrics: &Metrics) -> Result<Transport, BoxError> {
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

/// The DeepSeek client over [`transport`].
pub type Client = DeepSeekClient<Transport>;

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

/// Calls the server at `base` (`POST /ask`, `GET /metrics`) and checks each answer: the trace
/// ID reaches DeepSeek, a 503 is retried, a caller over its burst of 2 gets a 429 that never
/// reaches DeepSeek while another caller does not, and `/metrics` counts the retry.
pub async fn self_check(mock: &MockDeepSeek, base: &str) -> Result<(), BoxError> {
    let http: Http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let ask_url = format!("{base}/ask");

    // 1. A plain call: the trace ID goes from the caller through the server to DeepSeek.
    let (status, _, answer) = call(&http, &ask_url, "alice", "demo-1", "Say hello").await?;
    println!(
        "1. alice, trace demo-1: {status} {answer:?}; DeepSeek saw {:?}",
        traces_at_mock(mock)
    );
    check(
        status == 200 && answer.contains("Say hello"),
        "the first call is answered",
    )?;
    check(
        traces_at_mock(mock) == ["demo-1"],
        "DeepSeek saw trace demo-1",
    )?;

    // 2. DeepSeek answers 503 once: the retry layer tries again, the caller sees a 200.
    mock.clear_requests();
    mock.script([Reply::status(503)]);
    let (status, _, answer) = call(&http, &ask_url, "alice", "demo-2", "Again").await?;
    println!(
        "2. alice, trace demo-2, DeepSeek 503 then 200: {status} {answer:?}; DeepSeek saw {:?}",
        traces_at_mock(mock)
    );
    check(status == 200, "the retried call is answered")?;
    check(
        traces_at_mock(mock) == ["demo-2", "demo-2"],
        "both attempts carried trace demo-2",
    )?;

    // 3. alice has spent her burst of 2: refused with a 429 before DeepSeek is called.
    mock.clear_requests();
    let (status, retry_after, _) = call(&http, &ask_url, "alice", "demo-3", "Once more").await?;
    println!(
        "3. alice, trace demo-3: {status}, Retry-After {retry_after:?}; DeepSeek saw {:?}",
        traces_at_mock(mock)
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

    Ok(())
}
