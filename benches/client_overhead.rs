//! The typed client's per-call overhead over a bare in-process service.
//!
//! Three rows in one group, so the ratios come from one run:
//! - `bare_service`: build an `http::Request` with a pre-serialized body, call a ready
//!   `service_fn` that answers a canned DeepSeek response, collect the body (the floor);
//! - `bare_service_with_serde`: the same plus serializing the request and parsing the answer
//!   with serde_json (what any typed client must do);
//! - `deepseek_client_chat`: `DeepSeekClient::chat` over the same service.
//!
//! Run: `cargo bench --bench client_overhead`

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_deepseek::deepseek::{ChatRequest, ChatResponse, DeepSeekClient, RequestBody};

const ANSWER: &str = r#"{"id":"930c60df-bf64-41c9-a88e-3ec75f81e00e","object":"chat.completion","created":1764064800,"model":"deepseek-v4-flash","system_fingerprint":"fp_8802369eaa_prod0623_fp8_kvcache","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today? I can answer questions, write code, or explain things."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":16,"completion_tokens":21,"total_tokens":37,"prompt_tokens_details":{"cached_tokens":0},"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":16}}"#;

fn canned(
    _request: http::Request<RequestBody>,
) -> std::future::Ready<Result<http::Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(http::Response::new(Full::new(Bytes::from_static(
        ANSWER.as_bytes(),
    )))))
}

fn request() -> ChatRequest {
    ChatRequest::new("deepseek-v4-flash")
        .system("You are a helpful assistant.")
        .user("Hello!")
        .temperature(0.7)
        .max_tokens(256)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let service = tower::service_fn(canned);
    let client = DeepSeekClient::builder()
        .base_url("http://127.0.0.1:1")
        .api_key("sk-bench")
        .build(service)
        .expect("client");
    let body = Bytes::from(serde_json::to_vec(&request()).expect("serialize"));

    let mut group = c.benchmark_group("client_per_call");
    group.bench_function("bare_service", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = http::Request::post("http://127.0.0.1:1/chat/completions")
                .header("authorization", "Bearer sk-bench")
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .expect("request");
            let response = service.oneshot(request).await.expect("call");
            black_box(
                response
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes(),
            )
        })
    });
    group.bench_function("bare_service_with_serde", |b| {
        b.to_async(&runtime).iter(|| async {
            let body = Bytes::from(serde_json::to_vec(&request()).expect("serialize"));
            let request = http::Request::post("http://127.0.0.1:1/chat/completions")
                .header("authorization", "Bearer sk-bench")
                .header("content-type", "application/json")
                .body(Full::new(body))
                .expect("request");
            let response = service.oneshot(request).await.expect("call");
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            black_box(serde_json::from_slice::<ChatResponse>(&bytes).expect("parse"))
        })
    });
    group.bench_function("deepseek_client_chat", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(client.chat(request()).await.expect("chat")) })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(std::time::Duration::from_secs(3))
        .sample_size(50);
    targets = bench
}
criterion_main!(benches);
