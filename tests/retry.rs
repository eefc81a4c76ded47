//! The retry layer (over the stream timeouts) under the typed client, against the embedded
//! mock DeepSeek over real sockets.
//!
//! Time is paused: Tokio advances the clock only when every task is idle, and the mock runs
//! on the same runtime, so its scripted delays and our back-off and timeouts run on one
//! virtual clock. Loopback writes land in the peer's socket before the runtime parks, so a
//! reply in flight is never overtaken by a timer.
#![cfg(all(feature = "mock", feature = "upstream"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_deepseek::classify::{AuthFailure, StreamFailure, TimeoutPhase};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::retry::{
    Backoff, RetryEvent, RetryLayer, RetryLayerBuilder, RetryService, TpsBudget,
};
use tower_deepseek::timeout::{StreamTimeout, StreamTimeoutLayer};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{Error, ErrorKind};

const KEY: &str = "sk-test-retry-0123456789";

type Client = DeepSeekClient<RetryService<StreamTimeout<Upstream>>>;

async fn mock() -> MockDeepSeek {
    MockDeepSeek::builder()
        .api_key(Some(KEY.to_owned()))
        .start()
        .await
        .expect("mock starts")
}

/// The stack the gateway uses: retry outside, stream timeouts inside.
fn client(mock: &MockDeepSeek, retry: RetryLayerBuilder, timeouts: StreamTimeoutLayer) -> Client {
    let transport = ServiceBuilder::new()
        .layer(retry.build().expect("retry layer"))
        .layer(timeouts)
        .service(Upstream::new().expect("upstream"));
    DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(transport)
        .expect("client")
}

fn no_timeouts() -> StreamTimeoutLayer {
    StreamTimeoutLayer::builder().build().expect("timeouts")
}

fn hello() -> ChatRequest {
    ChatRequest::new("deepseek-v4-flash").user("Hello there")
}

/// Reads a stream to its end: the text, and the error that ended it, if any.
async fn drain(client: &Client) -> (String, Option<Error>) {
    let mut stream = client
        .chat_stream(hello())
        .await
        .expect("the head is a 200");
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => text.push_str(chunk.content().unwrap_or_default()),
            Err(error) => return (text, Some(error)),
        }
    }
    (text, None)
}

#[tokio::test(start_paused = true)]
async fn two_503s_then_success_give_one_answer_after_exactly_three_calls() {
    let mock = mock().await;
    let client = client(&mock, RetryLayer::builder(), no_timeouts());
    mock.script([Reply::status(503), Reply::status(503)]);
    let answer = client.chat(hello()).await.expect("the third call answers");
    assert!(answer.content().unwrap_or_default().contains("Hello there"));
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_2_waits_2_seconds() {
    let mock = mock().await;
    let client = client(&mock, RetryLayer::builder(), no_timeouts());
    mock.script([Reply::status(429).header("retry-after", "2")]);
    let started = Instant::now();
    client.chat(hello()).await.expect("the retry answers");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100),
        "{waited:?}"
    );
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_400_and_a_402_are_called_once() {
    let mock = mock().await;
    let client = client(&mock, RetryLayer::builder(), no_timeouts());
    mock.script([Reply::status(400), Reply::status(402)]);
    let error = client.chat(hello()).await.expect_err("400");
    assert_eq!(error.kind(), ErrorKind::Client);
    assert_eq!(mock.requests().len(), 1);
    let error = client.chat(hello()).await.expect_err("402");
    assert_eq!(
        error.kind(),
        ErrorKind::Auth(AuthFailure::InsufficientBalance)
    );
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_after_three_chunks_is_an_error_after_one_call() {
    let mock = mock().await;
    let client = client(&mock, RetryLayer::builder(), no_timeouts());
    mock.script([Reply::ok().cut_after(3)]);
    let (text, error) = drain(&client).await;
    let error = error.expect("the cut is reported");
    assert_eq!(error.kind(), ErrorKind::Stream(StreamFailure::Truncated));
    assert!(!text.is_empty(), "the first chunks were delivered");
    assert_eq!(mock.requests().len(), 1, "never retried after delivery");
}

#[tokio::test(start_paused = true)]
async fn a_keep_alive_only_wait_trips_the_first_token_timeout_and_is_retried() {
    let mock = mock().await;
    let timeouts = StreamTimeoutLayer::builder()
        .first_token(Duration::from_secs(10))
        .build()
        .expect("timeouts");
    let client = client(&mock, RetryLayer::builder(), timeouts);
    let stuck = Reply::ok()
        .keep_alives(60)
        .keep_alive_interval(Duration::from_secs(1));
    // Nothing reached the caller, so the layer retries and the second call answers.
    mock.script([stuck.clone()]);
    let started = Instant::now();
    let (text, error) = drain(&client).await;
    let took = started.elapsed();
    // 10 s to the timeout, at most 500 ms of back-off, then a prompt answer.
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "{took:?}"
    );
    assert!(error.is_none(), "{error:?}");
    assert!(text.contains("Hello there"), "{text}");
    assert_eq!(mock.requests().len(), 2);

    // Stuck every time: the third attempt is the last, so it is handed over at its head and
    // the caller's stream fails with the first-token timeout.
    mock.script([stuck.clone(), stuck.clone(), stuck]);
    let started = Instant::now();
    let (text, error) = drain(&client).await;
    assert_eq!(text, "");
    assert_eq!(
        error.expect("times out").kind(),
        ErrorKind::Timeout(TimeoutPhase::FirstToken)
    );
    assert_eq!(mock.requests().len(), 5);
    assert!(started.elapsed() >= Duration::from_secs(30));
}

fn idle_two_seconds() -> StreamTimeoutLayer {
    StreamTimeoutLayer::builder()
        .first_token(Duration::from_secs(10))
        .idle(Duration::from_secs(2))
        .build()
        .expect("timeouts")
}

#[tokio::test(start_paused = true)]
async fn an_idle_gap_after_delivery_is_the_callers_error() {
    let mock = mock().await;
    let client = client(&mock, RetryLayer::builder(), idle_two_seconds());
    mock.script([Reply::ok().chunk_delay(Duration::from_secs(3))]);
    let started = Instant::now();
    let (_, error) = drain(&client).await;
    assert_eq!(
        error.expect("idle").kind(),
        ErrorKind::Timeout(TimeoutPhase::Idle)
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(mock.requests().len(), 1, "delivered, so never retried");
}

#[tokio::test(start_paused = true)]
async fn a_slow_steady_stream_passes_the_idle_timeout() {
    let mock = mock().await;
    let client = client(&mock, RetryLayer::builder(), idle_two_seconds());
    mock.script([Reply::ok().chunk_delay(Duration::from_secs(1))]);
    let started = Instant::now();
    let (text, error) = drain(&client).await;
    assert!(error.is_none(), "{error:?}");
    assert!(text.contains("Hello there"));
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(5) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retries_under_a_sustained_outage() {
    let mock = mock().await;
    let budget = TpsBudget::new(Duration::from_secs(10), 1, 0.2).expect("budget");
    let refused = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&refused);
    let retry = RetryLayer::builder()
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .budget(budget)
        .listener(move |event: &RetryEvent<'_>| {
            if let RetryEvent::BudgetExhausted { .. } = event {
                *counter.lock().unwrap() += 1;
            }
        });
    let client = client(&mock, retry, no_timeouts());
    mock.script(vec![Reply::status(503); 60]);
    for _ in 0..20 {
        let error = client.chat(hello()).await.expect_err("DeepSeek is down");
        assert_eq!(error.kind(), ErrorKind::Server);
    }
    // A floor of 10 retries plus 20 % of 20 calls: 14 retries instead of 40. (Each call
    // deposits 1000, a retry costs 5000, the floor is 10 retries' worth.)
    assert_eq!(mock.requests().len(), 20 + 14);
    // Calls 1-5 got both retries; calls 6-20 were refused one.
    assert_eq!(*refused.lock().unwrap(), 15);
}
