//! The preset stack under the typed client, against the embedded mock DeepSeek over real
//! sockets: the default answers, each order claim of `stack`'s docs holds, and a removed
//! piece is really gone.
//!
//! Time is paused (as in `tests/retry.rs`): Tokio advances the clock only when every task is
//! idle, and the mock runs on the same runtime, so the retries' back-off runs on the virtual
//! clock and the stack's long timeouts never fire while a reply is in flight.
#![cfg(all(feature = "mock", feature = "upstream"))]

use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, ServiceBuilder};
use tower_deepseek::ErrorKind;
use tower_deepseek::circuit_breaker::{CircuitBreaker, CircuitState, KeyedCircuitBreakerLayer};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient, RequestBody, RequestModel};
use tower_deepseek::error::CircuitOpenReason;
use tower_deepseek::mock::{MockDeepSeek, RecordedRequest, Reply};
use tower_deepseek::rate_limit::RateLimitLayer;
use tower_deepseek::stack::{self, DeepSeekStack, DeepSeekStackService};
use tower_deepseek::trace_id::TraceId;
use tower_deepseek::upstream::Upstream;

const KEY: &str = "sk-test-stack-0123456789";

async fn mock() -> MockDeepSeek {
    MockDeepSeek::builder()
        .api_key(Some(KEY.to_owned()))
        .start()
        .await
        .expect("mock starts")
}

/// The client over `stack` around the pooled upstream.
fn client<L>(mock: &MockDeepSeek, stack: L) -> DeepSeekClient<L::Service>
where
    L: Layer<Upstream>,
{
    DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(stack.layer(Upstream::new().expect("upstream")))
        .expect("client")
}

fn hello() -> ChatRequest {
    ChatRequest::new("deepseek-v4-flash").user("Hello there")
}

fn trace_header(request: &RecordedRequest) -> &str {
    request
        .headers
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

#[tokio::test(start_paused = true)]
async fn the_default_stack_answers_through_the_client() {
    let mock = mock().await;
    // The one-liner of the docs, with its service type named.
    let transport: DeepSeekStackService<Upstream> = ServiceBuilder::new()
        .layer(DeepSeekStack::default())
        .service(Upstream::new().expect("upstream"));
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(transport)
        .expect("client");
    let answer = client.chat(hello()).await.expect("an answer");
    assert!(answer.content().unwrap_or_default().contains("Hello there"));
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_503_then_200_is_retried_and_the_breaker_sees_both_attempts() {
    let mock = mock().await;
    let stack = DeepSeekStack::default();
    let breaker = stack.circuit_breaker().breaker().clone();
    let client = client(&mock, stack);
    mock.script([Reply::status(503)]);
    let answer = client.chat(hello()).await.expect("the retry answers");
    assert!(answer.content().unwrap_or_default().contains("Hello there"));
    assert_eq!(mock.requests().len(), 2);
    // Under the retries, the breaker recorded each attempt: the 503 and the 200.
    let seen = breaker.metrics();
    assert_eq!((seen.buffered_calls, seen.failed_calls), (2, 1));
}

/// With metrics on, the metrics layer (above the retries) counts one successful call while
/// the retry listener wired by the stack counts the retried 503.
#[cfg(feature = "prometheus")]
#[tokio::test(start_paused = true)]
async fn metrics_count_the_call_once_and_its_retry_through_the_wired_listener() {
    use tower_deepseek::metrics::Metrics;
    let mock = mock().await;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .prometheus(registry)
        .build()
        .expect("metrics");
    let stack = DeepSeekStack::builder()
        .metrics(&metrics)
        .build()
        .expect("stack");
    let client = client(&mock, stack);
    mock.script([Reply::status(503)]);
    client.chat(hello()).await.expect("the retry answers");
    let text = metrics.render_prometheus().expect("rendered");
    assert!(
        text.contains(r#"deepseek_retry_attempts_total{outcome="server_error"} 1"#),
        "{text}"
    );
    let calls: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("deepseek_requests_total{"))
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].contains(r#"outcome="success""#) && calls[0].ends_with(" 1"),
        "{calls:?}"
    );
    // The breaker built from settings reports its state to the same handle from the start.
    assert!(
        text.contains(r#"deepseek_circuit_breaker_state{breaker="deepseek",state="closed"} 1"#),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_callers_trace_id_reaches_deepseek_on_every_attempt() {
    let mock = mock().await;
    let client = client(&mock, DeepSeekStack::default());
    mock.script([Reply::status(503)]);
    let trace = TraceId::parse("stack-trace-1").expect("a valid ID");
    trace
        .scope(client.chat(hello()))
        .await
        .expect("the retry answers");
    let requests = mock.requests();
    let seen: Vec<&str> = requests.iter().map(trace_header).collect();
    assert_eq!(seen, ["stack-trace-1", "stack-trace-1"]);
}

#[tokio::test(start_paused = true)]
async fn without_retry_a_503_reaches_the_caller_after_one_call() {
    let mock = mock().await;
    let stack = DeepSeekStack::builder()
        .without_retry()
        .build()
        .expect("stack");
    let client = client(&mock, stack);
    mock.script([Reply::status(503)]);
    let error = client.chat(hello()).await.expect_err("the 503");
    assert_eq!(error.kind(), ErrorKind::Server);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn without_trace_id_no_trace_header_is_sent() {
    let mock = mock().await;
    let stack = DeepSeekStack::builder()
        .without_trace_id()
        .build()
        .expect("stack");
    let client = client(&mock, stack);
    client.chat(hello()).await.expect("an answer");
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].headers.get("x-trace-id").is_none());
}

/// The limiter sits above the retries: a call and its retry spend one permit. With a burst
/// of 2, two calls that each need a retry both pass (four upstream calls); the third call is
/// refused before DeepSeek is called. A limiter under the retries would have refused the
/// second call's first attempt.
#[tokio::test(start_paused = true)]
async fn case_39_the_rate_limit_counts_each_call_once_across_retries() {
    let mock = mock().await;
    let stack = DeepSeekStack::builder()
        .rate_limit_settings(RateLimitLayer::builder().per_minute(2).burst(2))
        .build()
        .expect("stack");
    let client = client(&mock, stack);
    for call in 1..=2 {
        mock.script([Reply::status(503)]);
        client
            .chat(hello())
            .await
            .unwrap_or_else(|e| panic!("call {call} answers after its retry: {e}"));
    }
    assert_eq!(mock.requests().len(), 4);
    let refused = client.chat(hello()).await.expect_err("over the limit");
    assert_eq!(refused.kind(), ErrorKind::RateLimited);
    assert_eq!(
        mock.requests().len(),
        4,
        "a refused call never reaches DeepSeek"
    );
}

/// The retries sit outside the breaker: an open breaker's refusal is final, neither retried
/// nor waited on, and DeepSeek is not called.
#[tokio::test(start_paused = true)]
async fn an_open_breakers_refusal_is_final_not_retried() {
    let mock = mock().await;
    let stack = DeepSeekStack::default();
    let breaker = stack.circuit_breaker().breaker().clone();
    let retries = stack.retry().clone();
    let client = client(&mock, stack);
    breaker.force_open();
    let started = Instant::now();
    let error = client.chat(hello()).await.expect_err("refused");
    assert_eq!(
        error.kind(),
        ErrorKind::CircuitOpen(CircuitOpenReason::Forced)
    );
    assert_eq!(started.elapsed(), Duration::ZERO, "no back-off");
    assert!(mock.requests().is_empty());
    assert_eq!(breaker.metrics().not_permitted_calls, 1, "asked once");
    assert_eq!(retries.metrics().retries, 0);
}

/// The concurrency limit sits above the retries: a call holds its one slot across its
/// attempts and the wait between them (reference case 50 with one permit: the second call is
/// shed at once), and gives it back when it ends.
#[tokio::test(start_paused = true)]
async fn case_50_a_call_holds_its_concurrency_slot_across_its_retry() {
    let mock = mock().await;
    let stack = DeepSeekStack::builder()
        .concurrency_settings(stack::default_concurrency().max_in_flight(1))
        .build()
        .expect("stack");
    let limit = stack.concurrency().clone();
    let client = client(&mock, stack);
    mock.script([Reply::status(503).header("retry-after", "1")]);
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.chat(hello()).await }
    });
    // The first attempt got its 503; the call now waits 1 s before its retry.
    while mock.requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shed = client.chat(hello()).await.expect_err("no slot");
    assert_eq!(shed.kind(), ErrorKind::Overloaded);
    assert_eq!(
        mock.requests().len(),
        1,
        "a shed call never reaches DeepSeek"
    );
    first.await.expect("the task").expect("the retry answers");
    assert_eq!(mock.requests().len(), 2);
    assert_eq!(limit.in_flight(), 0);
}

fn model_key(request: &http::Request<RequestBody>) -> RequestModel {
    request
        .extensions()
        .get::<RequestModel>()
        .cloned()
        .unwrap_or_else(|| RequestModel::new("models"))
}

/// Any layer replaces a piece: a breaker per model (as the gateway uses) in place of the
/// single breaker, wrapped with a `map_response` in a `ServiceBuilder`.
#[tokio::test(start_paused = true)]
async fn a_keyed_breaker_replaces_the_default_one() {
    let mock = mock().await;
    let keyed = KeyedCircuitBreakerLayer::new(
        model_key as fn(&http::Request<RequestBody>) -> RequestModel,
        CircuitBreaker::builder().minimum_calls(2),
        8,
    )
    .expect("keyed breaker");
    let breakers = keyed.breakers().clone();
    let stack = DeepSeekStack::builder()
        .without_retry()
        .circuit_breaker(
            ServiceBuilder::new()
                .map_response(|response: http::Response<_>| response)
                .layer(keyed),
        )
        .build()
        .expect("stack");
    let client = client(&mock, stack);
    mock.script([Reply::status(503), Reply::status(503)]);
    for _ in 0..2 {
        client.chat(hello()).await.expect_err("503");
    }
    let flash = breakers
        .get(&RequestModel::new("deepseek-v4-flash"))
        .expect("the model's breaker");
    assert_eq!(flash.state(), CircuitState::Open);
    let pro = client
        .chat(ChatRequest::new("deepseek-v4-pro").user("Hi"))
        .await;
    assert!(pro.is_ok(), "another model's breaker is closed: {pro:?}");
}
