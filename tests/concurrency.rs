//! The concurrency limits over real sockets: outbound under the typed client against the
//! embedded mock DeepSeek (streams hold their slot until they end), inbound in front of an
//! axum server (a shed call is a 503 with `Retry-After` in the OpenAI error shape).
//!
//! Real time, as in `tests/circuit_breaker.rs` (paused time does not mix with socket I/O);
//! nothing asserts on durations: the order of events is forced by what the test reads and
//! when it lets handlers finish.
#![cfg(all(feature = "mock", feature = "upstream", feature = "axum"))]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::concurrency::{
    AdaptiveConcurrencyLayer, Aimd, ConcurrencyEvent, ConcurrencyLimitLayer,
};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{Error, ErrorKind};

const KEY: &str = "sk-test-concurrency-0123456789";

async fn mock() -> MockDeepSeek {
    MockDeepSeek::builder()
        .api_key(Some(KEY.to_owned()))
        .start()
        .await
        .expect("mock starts")
}

fn hello() -> ChatRequest {
    ChatRequest::new("deepseek-v4-flash").user("Hello there")
}

fn slow_stream() -> Reply {
    Reply::ok()
        .content("one two three four five six")
        .chunk_delay(Duration::from_millis(20))
}

#[tokio::test]
async fn a_third_call_is_shed_while_two_streams_are_open_and_admitted_once_one_ends() {
    let mock = mock().await;
    mock.script([slow_stream(), slow_stream(), Reply::ok()]);
    let limit = ConcurrencyLimitLayer::builder()
        .name("deepseek")
        .max_in_flight(2)
        .build()
        .expect("limit");
    let transport = ServiceBuilder::new()
        .layer(limit.clone())
        .service(Upstream::new().expect("upstream"));
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(transport)
        .expect("client");

    let mut first = client.chat_stream(hello()).await.expect("first stream");
    let second = client.chat_stream(hello()).await.expect("second stream");
    assert_eq!(
        limit.in_flight(),
        2,
        "both heads arrived; both streams are open"
    );

    let shed = client.chat(hello()).await.expect_err("over the limit");
    assert_eq!(shed.kind(), ErrorKind::Overloaded);
    assert_eq!(shed.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(mock.requests().len(), 2, "a shed call is never sent");

    // Part of a stream is not its end: still full.
    first.next().await.expect("a chunk").expect("chunk ok");
    let shed = client
        .chat(hello())
        .await
        .expect_err("still over the limit");
    assert_eq!(shed.kind(), ErrorKind::Overloaded);

    while let Some(chunk) = first.next().await {
        chunk.expect("chunk ok");
    }
    // `ChatStream` reads the body's end at `data: [DONE]` only when it has already arrived
    // (it never waits for it), so over a socket the slot may go back at `[DONE]` or at the drop
    // (the transport-level test below shows the release at the end).
    drop(first);
    assert_eq!(
        limit.in_flight(),
        1,
        "the finished stream gave its slot back"
    );
    let answer = client.chat(hello()).await.expect("admitted");
    assert!(answer.content().is_some());
    assert_eq!(mock.requests().len(), 3);

    drop(second);
    assert_eq!(limit.in_flight(), 0);
    // The server-side shape of the shed error.
    let response = shed.to_http_response();
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
}

#[tokio::test]
async fn the_slot_is_free_as_soon_as_the_body_ends_before_the_body_is_dropped() {
    let mock = mock().await;
    mock.script([slow_stream()]);
    let limit = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .build()
        .expect("limit");
    let transport = ServiceBuilder::new()
        .layer(limit.clone())
        .service(Upstream::new().expect("upstream"));
    let request = http::Request::post(format!("{}/chat/completions", mock.base_url()))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        )))
        .expect("request");
    let response = transport.oneshot(request).await.expect("head");
    assert_eq!(response.status(), http::StatusCode::OK);
    let mut body = response.into_body();
    assert!(body.holds_slot());
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        frame.expect("frame");
        frames += 1;
        if !body.holds_slot() {
            break;
        }
        assert_eq!(limit.in_flight(), 1, "mid-stream the slot is held");
    }
    assert!(frames > 1, "the mock streamed several chunks");
    assert!(!body.holds_slot());
    assert_eq!(
        limit.in_flight(),
        0,
        "released at the end of the body, not at its drop"
    );
    drop(body);
}

#[tokio::test]
async fn the_adaptive_limit_backs_off_on_503s_from_deepseek() {
    let mock = mock().await;
    mock.script([Reply::status(503), Reply::status(429), Reply::ok()]);
    let changes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let heard = Arc::clone(&changes);
    let limit = AdaptiveConcurrencyLayer::builder()
        .name("deepseek")
        .algorithm(
            Aimd::builder()
                .initial_limit(10)
                .min_limit(1)
                .max_limit(50)
                .build()
                .expect("aimd"),
        )
        .listener(move |event: &ConcurrencyEvent<'_>| {
            if let ConcurrencyEvent::LimitChanged { old, new, .. } = event {
                heard.lock().expect("lock").push((*old, *new));
            }
        })
        .build()
        .expect("limit");
    let transport = ServiceBuilder::new()
        .layer(limit.clone())
        .service(Upstream::new().expect("upstream"));
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(transport)
        .expect("client");
    assert_eq!(
        client.chat(hello()).await.expect_err("503").kind(),
        ErrorKind::Server
    );
    assert_eq!(
        client.chat(hello()).await.expect_err("429").kind(),
        ErrorKind::RateLimited
    );
    // 10 → 9 → 8; the success with 1 of 8 in flight is app-limited: no change.
    client.chat(hello()).await.expect("ok");
    assert_eq!(*changes.lock().expect("lock"), vec![(10, 9), (9, 8)]);
    assert_eq!(limit.limit(), 8);
    assert_eq!(limit.in_flight(), 0);
}

/// A raw call to the inbound server: status, `Retry-After`, body.
async fn post_chat(url: &str) -> (u16, Option<String>, String) {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    let response = Upstream::new()
        .expect("client")
        .oneshot(request)
        .await
        .expect("response");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("ascii").to_owned());
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        retry_after,
        String::from_utf8(body.to_vec()).expect("utf-8"),
    )
}

#[tokio::test]
async fn inbound_a_shed_request_is_a_503_with_retry_after_in_openai_shape() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let limit = ConcurrencyLimitLayer::builder()
        .name("inbound")
        .max_in_flight(1)
        .retry_after(Duration::from_secs(2))
        .build()
        .expect("limit");
    let handler = {
        let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
        move || async move {
            entered.notify_one();
            release.notified().await;
            "done"
        }
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(handler))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|error: Error| async move {
                    error.into_response()
                }))
                .layer(limit.clone()),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().expect("addr")
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let busy = tokio::spawn({
        let url = url.clone();
        async move { post_chat(&url).await }
    });
    entered.notified().await;
    assert_eq!(limit.in_flight(), 1);

    let (status, retry_after, body) = post_chat(&url).await;
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("2"));
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["error"]["type"], "server_error");
    assert!(
        json["error"]["message"]
            .as_str()
            .expect("message")
            .contains("inbound"),
        "{body}"
    );

    release.notify_one();
    let (status, _, body) = busy.await.expect("task");
    assert_eq!((status, body.as_str()), (200, "done"));
    assert_eq!(limit.in_flight(), 0);
    server.abort();
}
