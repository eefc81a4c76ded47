//! An instruction-count probe for the metrics layer's non-streaming call (issue 8), not a
//! demo: drives `benches/metrics.rs`'s exact call (same body, request and runtime: `block_on`
//! of `ready` + `call` + collecting the body, per call) N times through the bare `service_fn`,
//! `MetricsLayer::client` or `MetricsLayer::server`, or (`floor`) only the body wrapped in the
//! shared `ObservedBody` with an observer that records nothing. Two runs with different N under
//! callgrind cancel the set-up:
//!
//! ```sh
//! cargo build --release --features prometheus --example metrics_probe
//! for w in bare floor client server; do for n in 1000 11000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/m.$w.$n \
//!     target/release/examples/metrics_probe $w $n
//! done; done
//! ```
//!
//! (instructions at 11,000 minus those at 1,000, over 10,000, is the per-call cost.)
//! `time [N]` prints the fastest of many rounds of N calls through each service, in turn.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_deepseek::body::{BodyEvent, BodyFormat, ObservedBody};
use tower_deepseek::deepseek::RequestModel;
use tower_deepseek::metrics::{Metrics, MetricsLayer};

const BODY: &str = r#"{"id":"b1","object":"chat.completion","created":1,"model":"deepseek-v4-flash","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}}"#;
const URI: &str = "https://api.deepseek.com/chat/completions";

fn ready_service(
    _request: Request<()>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
        BODY.as_bytes(),
    )))))
}

fn request(model: &RequestModel) -> Request<()> {
    let mut request = Request::new(());
    *request.uri_mut() = http::Uri::from_static(URI);
    request.extensions_mut().insert(model.clone());
    request
}

async fn drive<S, B>(service: &mut S, model: &RequestModel)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let ready = service.ready().await.expect("ready");
    let response = ready.call(request(model)).await.expect("call");
    black_box(response.into_body().collect().await.expect("body"));
}

fn metrics() -> Metrics {
    Metrics::builder()
        .models(["deepseek-v4-flash"])
        .prometheus(prometheus::Registry::new())
        .build()
        .expect("metrics")
}

fn run<S, B>(mut service: S, calls: u64)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let model = RequestModel::new("deepseek-v4-flash");
    for _ in 0..calls {
        runtime.block_on(drive(&mut service, &model));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "client".into());
    let calls: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let metrics = metrics();
    match mode.as_str() {
        "bare" => run(tower::service_fn(ready_service), calls),
        "client" => run(
            ServiceBuilder::new()
                .layer(MetricsLayer::client(&metrics))
                .service_fn(ready_service),
            calls,
        ),
        "server" => run(
            ServiceBuilder::new()
                .layer(MetricsLayer::server(&metrics, "chat"))
                .service_fn(ready_service),
            calls,
        ),
        "floor" => run(
            ServiceBuilder::new()
                .map_response(|response: Response<Full<Bytes>>| {
                    let format = BodyFormat::from_headers(response.headers());
                    response.map(|body| ObservedBody::new(body, format, |_event: BodyEvent<'_>| {}))
                })
                .service_fn(ready_service),
            calls,
        ),
        "time" => {
            // Wall-clock, robust to a busy machine: rounds of `calls` calls through each service
            // in turn, the fastest round of each kept (interference only ever adds time).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let model = RequestModel::new("deepseek-v4-flash");
            let mut bare = tower::service_fn(ready_service);
            let mut client = ServiceBuilder::new()
                .layer(MetricsLayer::client(&metrics))
                .service_fn(ready_service);
            let mut server = ServiceBuilder::new()
                .layer(MetricsLayer::server(&metrics, "chat"))
                .service_fn(ready_service);
            let mut floor = ServiceBuilder::new()
                .map_response(|response: Response<Full<Bytes>>| {
                    let format = BodyFormat::from_headers(response.headers());
                    response.map(|body| ObservedBody::new(body, format, |_event: BodyEvent<'_>| {}))
                })
                .service_fn(ready_service);
            let mut best = [f64::MAX; 4];
            // Short rounds, many of them: one that no other process interrupted is likelier.
            let rounds = (400_000 / calls.max(1)).max(200);
            for _ in 0..rounds {
                for (index, best) in best.iter_mut().enumerate() {
                    let start = std::time::Instant::now();
                    for _ in 0..calls {
                        match index {
                            0 => runtime.block_on(drive(&mut bare, &model)),
                            1 => runtime.block_on(drive(&mut client, &model)),
                            2 => runtime.block_on(drive(&mut server, &model)),
                            _ => runtime.block_on(drive(&mut floor, &model)),
                        }
                    }
                    let per_call = start.elapsed().as_nanos() as f64 / calls as f64;
                    *best = best.min(per_call);
                }
            }
            println!(
                "fastest round, ns per call: bare {:.1}, client {:.1} (+{:.1}), server {:.1} (+{:.1}), floor {:.1} (+{:.1})",
                best[0],
                best[1],
                best[1] - best[0],
                best[2],
                best[2] - best[0],
                best[3],
                best[3] - best[0]
            );
        }
        "sizes" => {
            use tower_deepseek::metrics::{MetricsBody, MetricsObserver};
            let mut service = ServiceBuilder::new()
                .layer(MetricsLayer::client(&metrics))
                .service_fn(ready_service);
            let model = RequestModel::new("deepseek-v4-flash");
            let future = service.call(request(&model));
            println!("response future: {} bytes", std::mem::size_of_val(&future));
            println!(
                "observer: {} bytes, body: {} bytes (bare {}), response: {} bytes (bare {})",
                std::mem::size_of::<MetricsObserver>(),
                std::mem::size_of::<MetricsBody<Full<Bytes>>>(),
                std::mem::size_of::<Full<Bytes>>(),
                std::mem::size_of::<Response<MetricsBody<Full<Bytes>>>>(),
                std::mem::size_of::<Response<Full<Bytes>>>()
            );
            drop(future);
            // The future `block_on` moves: it holds the response and the body being collected.
            let mut bare = tower::service_fn(ready_service);
            println!(
                "drive future: {} bytes (bare {})",
                std::mem::size_of_val(&drive(&mut service, &model)),
                std::mem::size_of_val(&drive(&mut bare, &model))
            );
        }
        other => panic!("unknown mode {other}: bare, client, server, time or sizes"),
    }
    // The layer really recorded.
    if matches!(mode.as_str(), "client" | "server" | "time") {
        let text = metrics.render_prometheus().unwrap_or_default();
        assert!(text.contains("deepseek_requests_total"), "{text}");
    }
}
