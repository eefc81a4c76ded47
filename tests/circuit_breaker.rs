//! The circuit breaker under the typed client, against the embedded mock DeepSeek over real
//! sockets. Real time: the open wait is a few hundred milliseconds and the test sleeps past it
//! (paused time does not mix with socket I/O); every assertion is on counts and states, never
//! on how long something took, so the tests do not depend on the machine's speed.
#![cfg(all(feature = "mock", feature = "upstream"))]

use std::time::Duration;

use futures_util::StreamExt;
use tower::ServiceBuilder;
use tower_deepseek::ErrorKind;
use tower_deepseek::circuit_breaker::{
    CircuitBreaker, CircuitBreakerLayer, CircuitBreakerService, CircuitState, SlidingWindow,
};
use tower_deepseek::classify::AuthFailure;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::error::CircuitOpenReason;
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::upstream::Upstream;

const KEY: &str = "sk-test-breaker-0123456789";
const OPEN_WAIT: Duration = Duration::from_millis(300);

async fn mock() -> MockDeepSeek {
    MockDeepSeek::builder()
        .api_key(Some(KEY.to_owned()))
        .start()
        .await
        .expect("mock starts")
}

fn client(
    mock: &MockDeepSeek,
    breaker: CircuitBreaker,
) -> DeepSeekClient<CircuitBreakerService<Upstream>> {
    let transport = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker))
        .service(Upstream::new().expect("upstream"));
    DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(transport)
        .expect("client")
}

fn breaker(calls: u32) -> CircuitBreaker {
    CircuitBreaker::builder()
        .name("deepseek-v4-flash")
        .sliding_window(SlidingWindow::Count { calls })
        .minimum_calls(calls)
        .half_open_calls(1)
        .open_wait(OPEN_WAIT)
        .build()
        .expect("breaker")
}

fn hello() -> ChatRequest {
    ChatRequest::new("deepseek-v4-flash").user("Hello there")
}

#[tokio::test]
async fn opens_on_503s_refuses_without_calling_then_a_trial_closes_it() {
    let mock = mock().await;
    let breaker = breaker(4);
    let client = client(&mock, breaker.clone());
    mock.script([
        Reply::status(503),
        Reply::status(503),
        Reply::status(503),
        Reply::status(503),
    ]);
    for _ in 0..4 {
        let error = client.chat(hello()).await.expect_err("503");
        assert_eq!(error.kind(), ErrorKind::Server);
    }
    assert_eq!(breaker.state(), CircuitState::Open);

    for _ in 0..5 {
        let error = client.chat(hello()).await.expect_err("refused");
        assert_eq!(
            error.kind(),
            ErrorKind::CircuitOpen(CircuitOpenReason::Unhealthy)
        );
        assert!(error.to_string().contains("deepseek-v4-flash"), "{error}");
        let wait = error.retry_after().expect("time until a trial");
        assert!(wait <= OPEN_WAIT, "{wait:?}");
    }
    assert_eq!(
        mock.requests().len(),
        4,
        "refused calls never reach DeepSeek"
    );
    assert_eq!(breaker.metrics().not_permitted_calls, 5);

    // Strictly after the open wait, one trial goes through; the mock answers normally now.
    tokio::time::sleep(OPEN_WAIT + Duration::from_millis(20)).await;
    let answer = client.chat(hello()).await.expect("the trial succeeds");
    assert!(answer.content().unwrap_or_default().contains("Hello there"));
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(mock.requests().len(), 5);

    // Streaming works through the breaker and counts as a success once it ends.
    let mut stream = client.chat_stream(hello()).await.expect("stream");
    while let Some(chunk) = stream.next().await {
        chunk.expect("chunk");
    }
    drop(stream);
    let metrics = breaker.metrics();
    assert_eq!((metrics.buffered_calls, metrics.failed_calls), (1, 0));
}

#[tokio::test]
async fn streams_cut_after_a_200_head_open_the_breaker() {
    let mock = mock().await;
    let breaker = breaker(2);
    let client = client(&mock, breaker.clone());
    mock.script([Reply::ok().cut_after(2), Reply::ok().malformed_at(1)]);
    for _ in 0..2 {
        let mut stream = client
            .chat_stream(hello())
            .await
            .expect("the head is a 200");
        let mut failed = false;
        while let Some(chunk) = stream.next().await {
            failed |= chunk.is_err();
        }
        assert!(failed, "the stream reports its failure");
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(breaker.metrics().failed_calls, 2);
}

#[tokio::test]
async fn rate_limits_and_bad_requests_never_open_it_but_402_stops_everything() {
    let mock = mock().await;
    let breaker = breaker(2);
    let client = client(&mock, breaker.clone());
    mock.script([
        Reply::status(429),
        Reply::status(429),
        Reply::status(429),
        Reply::status(400),
        Reply::status(422),
    ]);
    for _ in 0..5 {
        client.chat(hello()).await.expect_err("scripted error");
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(breaker.metrics().buffered_calls, 0);

    mock.script([Reply::status(402)]);
    let error = client.chat(hello()).await.expect_err("402");
    assert_eq!(
        error.kind(),
        ErrorKind::Auth(AuthFailure::InsufficientBalance)
    );
    assert_eq!(breaker.state(), CircuitState::Fatal);
    let error = client.chat(hello()).await.expect_err("stopped");
    assert_eq!(
        error.kind(),
        ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(AuthFailure::InsufficientBalance))
    );
    assert!(error.to_string().contains("top up"), "{error}");
    assert_eq!(mock.requests().len(), 6);
    // Topped up: an operator resets the breaker.
    breaker.reset();
    client.chat(hello()).await.expect("works again");
}
