//! The stream timeouts under the typed client, against the embedded mock DeepSeek over real
//! sockets, on paused time (see `tests/retry.rs` for why paused time is safe here).
#![cfg(all(feature = "mock", feature = "upstream"))]

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tower_deepseek::classify::TimeoutPhase;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::timeout::{StreamTimeout, StreamTimeoutLayer};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{Error, ErrorKind};
use tower_layer::Layer;

const KEY: &str = "sk-test-timeout-0123456789";

type Client = DeepSeekClient<StreamTimeout<Upstream>>;

async fn setup(timeouts: StreamTimeoutLayer) -> (MockDeepSeek, Client) {
    let mock = MockDeepSeek::builder()
        .api_key(Some(KEY.to_owned()))
        .start()
        .await
        .expect("mock starts");
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(timeouts.layer(Upstream::new().expect("upstream")))
        .expect("client");
    (mock, client)
}

fn hello() -> ChatRequest {
    ChatRequest::new("deepseek-v4-flash").user("Hello there")
}

async fn drain(client: &Client) -> (usize, Option<Error>) {
    let mut stream = client
        .chat_stream(hello())
        .await
        .expect("the head is a 200");
    let mut chunks = 0;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => chunks += 1,
            Err(error) => return (chunks, Some(error)),
        }
    }
    (chunks, None)
}

#[tokio::test(start_paused = true)]
async fn a_stream_of_only_keep_alives_trips_the_first_token_timeout() {
    let (mock, client) = setup(
        StreamTimeoutLayer::builder()
            .first_token(Duration::from_secs(20))
            .idle(Duration::from_secs(2))
            .build()
            .expect("timeouts"),
    )
    .await;
    // A keep-alive every second: alive, but no token for a minute. The idle bound (2 s)
    // does not apply before the first token, and keep-alives do not satisfy the first.
    mock.script([Reply::ok()
        .keep_alives(60)
        .keep_alive_interval(Duration::from_secs(1))]);
    let started = Instant::now();
    let (chunks, error) = drain(&client).await;
    assert_eq!(chunks, 0);
    assert_eq!(
        error.expect("timed out").kind(),
        ErrorKind::Timeout(TimeoutPhase::FirstToken)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(21),
        "{waited:?}"
    );
}

fn idle_two_seconds() -> StreamTimeoutLayer {
    StreamTimeoutLayer::builder()
        .idle(Duration::from_secs(2))
        .build()
        .expect("timeouts")
}

// One mock and client per scenario: a stream abandoned mid-body leaves its connection to be
// torn down, and a new connection opened beside that on paused time can see the clock jump
// to the pool's idle timer.
#[tokio::test(start_paused = true)]
async fn a_slow_steady_stream_does_not_trip_the_idle_timeout() {
    let (mock, client) = setup(idle_two_seconds()).await;
    mock.script([Reply::ok().chunk_delay(Duration::from_millis(1500))]);
    let started = Instant::now();
    let (chunks, error) = drain(&client).await;
    assert!(error.is_none(), "{error:?}");
    assert!(chunks > 3);
    let took = started.elapsed();
    let steady = Duration::from_millis(1500) * (chunks as u32);
    assert!(
        took >= steady - Duration::from_millis(1500) && took <= steady,
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_gap_trips_the_idle_timeout() {
    let (mock, client) = setup(idle_two_seconds()).await;
    mock.script([Reply::ok().chunk_delay(Duration::from_millis(2500))]);
    let started = Instant::now();
    let (chunks, error) = drain(&client).await;
    assert_eq!(chunks, 1, "the first chunk arrives, the second is too late");
    assert_eq!(
        error.expect("idle").kind(),
        ErrorKind::Timeout(TimeoutPhase::Idle)
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn slow_headers_trip_the_headers_timeout() {
    let (mock, client) = setup(
        StreamTimeoutLayer::builder()
            .headers(Duration::from_secs(5))
            .build()
            .expect("timeouts"),
    )
    .await;
    mock.script([Reply::ok().delay_headers(Duration::from_secs(30))]);
    let error = client.chat(hello()).await.expect_err("no head in time");
    assert_eq!(error.kind(), ErrorKind::Timeout(TimeoutPhase::Headers));
    assert!(error.to_string().contains("response headers"), "{error}");
}
