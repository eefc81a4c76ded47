//! Rate limits under the typed client, against the embedded mock DeepSeek over real sockets,
//! and the memory a keyed limiter needs per key.
//!
//! Real time here: paused time does not mix with socket I/O. The budgets are large enough
//! that nothing depends on the machine's speed; every assertion is on token counts.
#![cfg(all(feature = "mock", feature = "upstream"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tower::ServiceBuilder;
use tower_deepseek::ErrorKind;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient, TokenEstimate};
use tower_deepseek::mock::MockDeepSeek;
use tower_deepseek::rate_limit::{
    Decide, Decision, KeyedLimiter, RateLimitBackend, RateLimitLayer, TokenLimitLayer,
};
use tower_deepseek::upstream::Upstream;

const KEY: &str = "sk-test-ratelimit-0123456789";

async fn mock() -> MockDeepSeek {
    MockDeepSeek::builder()
        .api_key(Some(KEY.to_owned()))
        .start()
        .await
        .expect("mock starts")
}

fn question() -> ChatRequest {
    // 9 + 11 bytes of content: a prompt estimate of 5 tokens; 500 more for max_tokens.
    ChatRequest::new("deepseek-v4-flash")
        .system("Be brief.")
        .user("Hello there")
        .max_tokens(500)
}

const RESERVED: i64 = 505;

#[test]
fn the_client_estimate_is_bytes_over_four_plus_max_tokens() {
    assert_eq!(TokenEstimate::from_bytes(20), 5);
    assert_eq!(TokenEstimate::new(5, Some(500)).total(), RESERVED as u32);
}

#[tokio::test]
async fn a_streaming_reservation_is_reconciled_with_the_final_usage_chunk() {
    let mock = mock().await;
    let tokens = TokenLimitLayer::builder()
        .per_minute(100_000)
        .build()
        .expect("valid");
    let transport = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .per_minute(600)
                .build()
                .expect("valid"),
        )
        .layer(tokens.clone())
        .service(Upstream::new().expect("upstream"));
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(transport)
        .expect("client");

    let mut stream = client.chat_stream(question()).await.expect("stream starts");
    let mut usage = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a clean stream");
        if let Some(reported) = &chunk.usage {
            usage = Some(reported.total_tokens);
        }
    }
    drop(stream);
    let used = i64::try_from(usage.expect("the mock reports usage")).unwrap();
    assert!(used > 0 && used < RESERVED);
    assert_eq!(
        tokens.balance(&()),
        RESERVED - used,
        "the unused part is credited"
    );

    // A non-streaming call is reconciled from its JSON body. The credit paid for most of its
    // reservation (it was spent), and its own unused part is credited: had the body's usage
    // been missed, the balance would be 0.
    let answer = client.chat(question()).await.expect("answer");
    let used_too = i64::try_from(answer.usage.expect("usage").total_tokens).unwrap();
    assert_eq!(tokens.balance(&()), RESERVED - used_too);
}

#[tokio::test]
async fn the_token_budget_refuses_what_does_not_fit() {
    let mock = mock().await;
    let tokens = TokenLimitLayer::builder()
        .per_minute(1_000)
        .build()
        .expect("valid");
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(
            ServiceBuilder::new()
                .layer(tokens.clone())
                .service(Upstream::new().expect("upstream")),
        )
        .expect("client");
    // 505 reserved, then the unused part credited: the next call is paid mostly by credit.
    client.chat(question()).await.expect("first fits");
    client.chat(question()).await.expect("second fits");
    let large = ChatRequest::new("deepseek-v4-flash")
        .user("Hello there")
        .max_tokens(990);
    let error = client.chat(large).await.expect_err("does not fit now");
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    assert!(
        error
            .retry_after()
            .is_some_and(|wait| wait > Duration::ZERO)
    );
    let calls = mock.requests().len();
    assert_eq!(calls, 2, "a refused call is not sent");
}

// --- Memory per key -------------------------------------------------------------------------

/// Counts live heap bytes, so the memory test measures the limiter's allocations exactly.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Run with `cargo test --all-features --test rate_limit -- --ignored --nocapture memory`.
/// Other tests in this binary allocate concurrently, so run it alone (the filter does).
#[test]
#[ignore = "measures memory with a million keys; run alone"]
fn memory_per_key_with_a_million_keys() {
    const KEYS: u64 = 1_000_000;
    // A key is what `HeaderKey` makes of an API key: a u64. T = 1 ms, so every key is idle
    // (back to a full burst) a millisecond after its call.
    let limiter: KeyedLimiter<u64> =
        KeyedLimiter::new("memory", 1000, Duration::from_secs(1), Some(1), None).expect("valid");
    let before = LIVE.load(Ordering::Relaxed);
    for key in 0..KEYS {
        let decision = limiter.decide(&key, NonZeroU32::MIN);
        assert!(matches!(decision, Decide::Now(Decision::Allowed)));
    }
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(limiter.len(), KEYS as usize);
    let per_key = (after - before) as f64 / KEYS as f64;
    eprintln!(
        "keyed limiter, {KEYS} u64 keys: {} bytes live, {per_key:.1} bytes per key",
        after - before
    );
    std::thread::sleep(Duration::from_millis(5));
    limiter.evict_idle();
    let evicted = LIVE.load(Ordering::Relaxed);
    eprintln!(
        "after evicting the idle keys: {} keys, {} bytes live",
        limiter.len(),
        evicted - before
    );
    assert_eq!(limiter.len(), 0);
    assert!(per_key < 128.0, "{per_key} bytes per key");
    assert!(
        evicted - before < (after - before) / 100,
        "memory given back"
    );
}

// --- Inbound: the gateway's per-API-key limit in an axum router ------------------------------

#[tokio::test]
async fn an_axum_router_answers_429_per_api_key_with_the_headers() {
    use axum::error_handling::HandleErrorLayer;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use tower::ServiceExt;
    use tower_deepseek::Error;

    let inbound = RateLimitLayer::builder()
        .name("inbound")
        .per_minute(60)
        .burst(2)
        .build_per_api_key()
        .expect("valid");
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(|| async { "ok" }))
        .layer(
            ServiceBuilder::new()
                // The limiter's error is the crate's `Error`: axum's `IntoResponse` makes it the 429.
                .layer(HandleErrorLayer::new(|error: Error| async move {
                    error.into_response()
                }))
                .layer(inbound),
        );
    let call = |key: &'static str| {
        let request = http::Request::post("/v1/chat/completions")
            .header("authorization", key)
            .body(axum::body::Body::empty())
            .unwrap();
        app.clone().oneshot(request)
    };
    for _ in 0..2 {
        assert_eq!(call("Bearer sk-alice").await.unwrap().status(), 200);
    }
    let refused = call("Bearer sk-alice").await.unwrap();
    assert_eq!(refused.status(), 429);
    let headers = refused.headers();
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["x-ratelimit-limit"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(headers["x-ratelimit-reset"], "2");
    let body = axum::body::to_bytes(refused.into_body(), 4096)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("rate_limit_error") && !text.contains("sk-alice"),
        "{text}"
    );
    // Another key has its own bucket.
    assert_eq!(call("Bearer sk-bob").await.unwrap().status(), 200);
}
