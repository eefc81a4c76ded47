//! An instruction-count probe for the outbound preset (issue 9), not a demo: N chat calls
//! through `DeepSeekClient` over an in-process service answering a canned DeepSeek
//! completion, with no layers (`bare`), the whole preset with metrics (`stack`), or the preset
//! without one piece (`no-trace`, `no-metrics`, `no-concurrency`, `no-retry`, `no-breaker`,
//! `no-timeouts`), so the difference of two modes is what that piece costs a call. Every call
//! runs inside a trace ID's scope, as a gateway's handler does. Two runs with different N
//! under callgrind cancel the set-up:
//!
//! ```sh
//! cargo build --release --features prometheus --example stack_probe
//! for m in bare stack; do for n in 1000 11000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/s.$m.$n \
//!     target/release/examples/stack_probe $m $n
//! done; done
//! ```
//!
//! (instructions at 11,000 minus those at 1,000, over 10,000, is the per-call cost.)
//! `sizes` prints each mode's response and future sizes (moved whole by every layer above).

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient, RequestBody};
use tower_deepseek::metrics::Metrics;
use tower_deepseek::stack::DeepSeekStack;
use tower_deepseek::trace_id::TraceId;

const ANSWER: &str = r#"{"id":"930c60df-bf64-41c9-a88e-3ec75f81e00e","object":"chat.completion","created":1764064800,"model":"deepseek-v4-flash","system_fingerprint":"fp_8802369eaa_prod0623_fp8_kvcache","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":16,"completion_tokens":9,"total_tokens":25,"prompt_tokens_details":{"cached_tokens":0},"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":16}}"#;

fn canned(
    _request: http::Request<RequestBody>,
) -> std::future::Ready<Result<http::Response<Full<Bytes>>, Infallible>> {
    let mut response = http::Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    std::future::ready(Ok(response))
}

fn run<S, B>(service: S, calls: u64)
where
    S: Service<http::Request<RequestBody>, Response = http::Response<B>> + Clone,
    S::Error: Into<tower_deepseek::BoxError>,
    B: http_body::Body,
    B::Error: Into<tower_deepseek::BoxError>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = DeepSeekClient::builder()
        .base_url("http://127.0.0.1:1")
        .api_key("sk-probe")
        .build(service)
        .expect("client");
    let id = TraceId::from_uuid(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
    for _ in 0..calls {
        let request = ChatRequest::new("deepseek-v4-flash").user("Hello!");
        let answer = runtime.block_on(id.clone().scope(client.chat(request)));
        black_box(answer.expect("chat"));
    }
}

/// The sizes of a service's response and future, moved whole by every layer around them.
fn sizes<S>(name: &str, service: &S)
where
    S: Service<http::Request<RequestBody>>,
{
    fn of<S: Service<http::Request<RequestBody>>>(_: &S) -> (usize, usize) {
        (
            std::mem::size_of::<S::Response>(),
            std::mem::size_of::<S::Future>(),
        )
    }
    let (response, future) = of(service);
    println!("{name:16} response {response:5} bytes, future {future:5} bytes");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "stack".into());
    let calls: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .models(["deepseek-v4-flash"])
        .prometheus(registry)
        .build()
        .expect("metrics");
    let upstream = tower::service_fn(canned);
    let built = "the preset's defaults are valid";
    match mode.as_str() {
        "bare" => run(upstream, calls),
        "stack" => run(
            DeepSeekStack::builder()
                .metrics(&metrics)
                .build()
                .expect(built)
                .layer(upstream),
            calls,
        ),
        "no-trace" => run(
            DeepSeekStack::builder()
                .metrics(&metrics)
                .without_trace_id()
                .build()
                .expect(built)
                .layer(upstream),
            calls,
        ),
        "no-metrics" => run(
            DeepSeekStack::builder()
                .build()
                .expect(built)
                .layer(upstream),
            calls,
        ),
        "no-concurrency" => run(
            DeepSeekStack::builder()
                .metrics(&metrics)
                .without_concurrency_limit()
                .build()
                .expect(built)
                .layer(upstream),
            calls,
        ),
        "no-retry" => run(
            DeepSeekStack::builder()
                .metrics(&metrics)
                .without_retry()
                .build()
                .expect(built)
                .layer(upstream),
            calls,
        ),
        "no-breaker" => run(
            DeepSeekStack::builder()
                .metrics(&metrics)
                .without_circuit_breaker()
                .build()
                .expect(built)
                .layer(upstream),
            calls,
        ),
        "no-timeouts" => run(
            DeepSeekStack::builder()
                .metrics(&metrics)
                .without_timeouts()
                .build()
                .expect(built)
                .layer(upstream),
            calls,
        ),
        "sizes" => {
            let preset = || DeepSeekStack::builder().metrics(&metrics);
            sizes("bare", &upstream);
            sizes("stack", &preset().build().expect(built).layer(upstream));
            sizes(
                "no-trace",
                &preset()
                    .without_trace_id()
                    .build()
                    .expect(built)
                    .layer(upstream),
            );
            sizes(
                "no-metrics",
                &DeepSeekStack::builder()
                    .build()
                    .expect(built)
                    .layer(upstream),
            );
            sizes(
                "no-concurrency",
                &preset()
                    .without_concurrency_limit()
                    .build()
                    .expect(built)
                    .layer(upstream),
            );
            sizes(
                "no-retry",
                &preset()
                    .without_retry()
                    .build()
                    .expect(built)
                    .layer(upstream),
            );
            sizes(
                "no-breaker",
                &preset()
                    .without_circuit_breaker()
                    .build()
                    .expect(built)
                    .layer(upstream),
            );
            sizes(
                "no-timeouts",
                &preset()
                    .without_timeouts()
                    .build()
                    .expect(built)
                    .layer(upstream),
            );
        }
        other => {
            eprintln!(
                "unknown mode {other:?}: bare, stack, no-trace, no-metrics, no-concurrency, no-retry, no-breaker, no-timeouts or sizes"
            );
            std::process::exit(2);
        }
    }
}
