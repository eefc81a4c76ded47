//! The hedging layer under the typed client, against the embedded mock DeepSeek over real
//! sockets (issue 10: hedging never exceeds its budget and cancels the loser; the slow mock
//! sees the cancellation).
//!
//! Time is paused: Tokio advances the clock only when every task is idle, and the mock runs
//! on the same runtime, so its scripted delays and the hedge timer run on one virtual clock
//! (as in `tests/retry.rs`). Assertions are on what the mock saw and on virtual time.
#![cfg(all(feature = "mock", feature = "upstream"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::hedge::{HedgeEvent, HedgeLayer, HedgeLayerBuilder, HedgeService};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::upstream::Upstream;

const KEY: &str = "sk-test-hedge-0123456789";

type Client = DeepSeekClient<HedgeService<Upstream>>;
type Events = Arc<Mutex<Vec<&'static str>>>;

async fn mock() -> MockDeepSeek {
    MockDeepSeek::builder()
        .api_key(Some(KEY.to_owned()))
        .start()
        .await
        .expect("mock starts")
}

fn client(mock: &MockDeepSeek, hedge: HedgeLayerBuilder) -> (Client, Events) {
    let events: Events = Arc::default();
    let heard = Arc::clone(&events);
    let layer = hedge
        .listener(move |event: &HedgeEvent<'_>| heard.lock().unwrap().push(event.as_str()))
        .build()
        .expect("hedge layer");
    let transport = ServiceBuilder::new()
        .layer(layer)
        .service(Upstream::new().expect("upstream"));
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(transport)
        .expect("client");
    (client, events)
}

/// Hedges after one fast sample, after the 200 ms floor, with budget to spare.
fn eager() -> HedgeLayerBuilder {
    HedgeLayer::builder()
        .min_samples(1)
        .max_extra_percent(100.0)
        .min_delay(Duration::from_millis(200))
}

fn hello() -> ChatRequest {
    ChatRequest::new("deepseek-v4-flash").user("Hello there")
}

/// Waits (virtual time) until the mock has seen `count` abandoned replies: the client's
/// connection task closes the loser's connection after the call has returned.
async fn cancelled(mock: &MockDeepSeek, count: u64) -> u64 {
    for _ in 0..1_000 {
        if mock.cancelled() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    mock.cancelled()
}

/// Checks the mock itself: hyper drops the handler when the client closes the connection
/// while `delay_headers` is pending, and the mock records that request as cancelled.
#[tokio::test(start_paused = true)]
async fn the_mock_records_a_reply_abandoned_during_a_delayed_head() {
    let mock = mock().await;
    let (client, _) = client(&mock, HedgeLayer::builder());
    mock.script([Reply::ok().delay_headers(Duration::from_secs(30))]);
    let abandoned = tokio::time::timeout(Duration::from_secs(1), client.chat(hello())).await;
    assert!(abandoned.is_err(), "the call was still waiting");
    assert_eq!(cancelled(&mock, 1).await, 1);
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].cancelled);
    // A reply that finished is not cancelled.
    client.chat(hello()).await.expect("normal answer");
    assert!(!mock.requests()[1].cancelled);
    assert_eq!(mock.cancelled(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_reply_loses_to_a_fast_hedge_and_the_mock_sees_it_cancelled() {
    let mock = mock().await;
    let (client, events) = client(&mock, eager());
    client.chat(hello()).await.expect("warm-up sample");
    mock.script([
        Reply::ok()
            .content("slow answer")
            .delay_headers(Duration::from_secs(30)),
        Reply::ok().content("fast answer"),
    ]);
    let started = Instant::now();
    let answer = client.chat(hello()).await.expect("the hedge answers");
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(answer.content(), Some("fast answer"));
    assert_eq!(*events.lock().unwrap(), ["sent", "won"]);
    assert_eq!(cancelled(&mock, 1).await, 1);
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests[1].cancelled,
        "the slow first attempt was abandoned"
    );
    assert!(!requests[2].cancelled);
    // Both attempts carried the same request.
    assert_eq!(requests[1].body, requests[2].body);
}

/// DeepSeek's non-streaming wait: a `200` head, then blank lines. The hedge races the first
/// byte of the answer, not the head, and the abandoned body is seen as cancelled.
#[tokio::test(start_paused = true)]
async fn blank_lines_after_the_head_do_not_stop_the_hedge() {
    let mock = mock().await;
    let (client, events) = client(&mock, eager());
    client.chat(hello()).await.expect("warm-up sample");
    mock.script([
        Reply::ok()
            .content("slow answer")
            .keep_alives(60)
            .keep_alive_interval(Duration::from_secs(1)),
        Reply::ok().content("fast answer"),
    ]);
    let answer = client.chat(hello()).await.expect("the hedge answers");
    assert_eq!(answer.content(), Some("fast answer"));
    assert_eq!(*events.lock().unwrap(), ["sent", "won"]);
    assert_eq!(cancelled(&mock, 1).await, 1);
    assert!(mock.requests()[1].cancelled);
}

#[tokio::test(start_paused = true)]
async fn with_the_budget_exhausted_no_hedge_is_sent() {
    let mock = mock().await;
    // 5 %: the warm-up call and this one deposit a tenth of a hedge.
    let (client, events) = client(&mock, eager().max_extra_percent(5.0));
    client.chat(hello()).await.expect("warm-up sample");
    mock.script([Reply::ok()
        .content("slow answer")
        .delay_headers(Duration::from_secs(2))]);
    let started = Instant::now();
    let answer = client
        .chat(hello())
        .await
        .expect("the first attempt answers");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(answer.content(), Some("slow answer"));
    assert_eq!(mock.requests().len(), 2);
    assert_eq!(mock.cancelled(), 0);
    assert_eq!(*events.lock().unwrap(), ["budget_exhausted"]);
}

#[tokio::test(start_paused = true)]
async fn over_a_thousand_calls_hedges_stay_within_five_percent() {
    let mock = mock().await;
    // The median as the delay, so every slow call wants a hedge; the budget decides.
    let (client, events) = client(
        &mock,
        HedgeLayer::builder()
            .percentile(50.0)
            .min_samples(20)
            .max_extra_percent(5.0)
            .min_delay(Duration::from_millis(200)),
    );
    // One reply in five is slow (5 s to the head); hedges take replies from the same queue.
    mock.script((0..1_100).map(|index| {
        if index % 5 == 4 {
            Reply::ok().delay_headers(Duration::from_secs(5))
        } else {
            Reply::ok()
        }
    }));
    for _ in 0..1_000 {
        client.chat(hello()).await.expect("answer");
    }
    let events = events.lock().unwrap().clone();
    let sent = events.iter().filter(|event| **event == "sent").count();
    let exhausted = events
        .iter()
        .filter(|event| **event == "budget_exhausted")
        .count();
    assert!(sent <= 50, "{sent} hedges for 1,000 calls at 5 %");
    assert!(
        sent >= 40,
        "the budget, not the slow calls, was the limit: {sent}"
    );
    assert!(exhausted > 100, "{exhausted}");
    assert_eq!(mock.requests().len(), 1_000 + sent);
    assert!(cancelled(&mock, 1).await <= sent as u64);
}

#[tokio::test(start_paused = true)]
async fn streaming_requests_are_never_hedged() {
    let mock = mock().await;
    let (client, events) = client(&mock, eager());
    client.chat(hello()).await.expect("warm-up sample");
    mock.script([Reply::ok()
        .content("slow stream")
        .delay_headers(Duration::from_secs(2))]);
    let mut stream = client.chat_stream(hello()).await.expect("stream head");
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(chunk.expect("chunk").content().unwrap_or_default());
    }
    assert_eq!(text, "slow stream");
    assert_eq!(mock.requests().len(), 2);
    assert!(events.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_first_reply_failing_before_the_delay_is_not_hedged() {
    let mock = mock().await;
    let (client, events) = client(&mock, eager());
    client.chat(hello()).await.expect("warm-up sample");
    mock.script([Reply::status(503).delay_headers(Duration::from_millis(50))]);
    let error = client.chat(hello()).await.expect_err("503");
    assert_eq!(error.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mock.requests().len(), 2);
    assert!(events.lock().unwrap().is_empty());
}
