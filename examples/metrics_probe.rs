//! An instruction-count probe for the metrics layer's non-streaming call (issue 8), not a
//! demo: drives `benches/metrics.rs`'s exact call (the same code, `benches/common/metrics_call.rs`:
//! `block_on` of `ready` + `call` + collecting the body, per call) N times through the bare
//! `service_fn`, `MetricsLayer::client` or `MetricsLayer::server`, the anchor (`anchor`: the
//! bare call with prometheus 0.14's labelled counter, histogram and gauge looked up per call),
//! or (`floor`) only the body wrapped in the shared `ObservedBody` with an observer that records
//! nothing. Two runs with different N under callgrind cancel the set-up:
//!
//! ```sh
//! cargo build --release --features prometheus --example metrics_probe
//! for w in bare anchor floor client server; do for n in 1000 11000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/m.$w.$n \
//!     target/release/examples/metrics_probe $w $n
//! done; done
//! ```
//!
//! (instructions at 11,000 minus those at 1,000, over 10,000, is the per-call cost.)
//! `time [N]` prints the fastest of many rounds of N calls through each arm, in turn (the
//! anchor among them, so its overhead and ours come from one run).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder};
use tower_deepseek::body::{BodyEvent, BodyFormat, ObservedBody};
use tower_deepseek::deepseek::RequestModel;
use tower_deepseek::metrics::{Metrics, MetricsLayer};

#[path = "../benches/common/metrics_call.rs"]
mod metrics_call;

use metrics_call::{Anchor, drive, ready_service, request, runtime};

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
    let runtime = runtime();
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
        "anchor" => {
            let registry = prometheus::Registry::new();
            let anchor = Anchor::new(&registry);
            let runtime = runtime();
            let model = RequestModel::new("deepseek-v4-flash");
            let mut service = tower::service_fn(ready_service);
            for _ in 0..calls {
                runtime.block_on(anchor.drive(&mut service, &model));
            }
            assert!(anchor.recorded(), "the anchor recorded nothing");
        }
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
            // Wall-clock, robust to a busy machine: rounds of `calls` calls through each arm in
            // turn, the fastest round of each kept (interference only ever adds time).
            let runtime = runtime();
            let model = RequestModel::new("deepseek-v4-flash");
            let registry = prometheus::Registry::new();
            let anchor = Anchor::new(&registry);
            let mut bare = tower::service_fn(ready_service);
            let mut anchored = tower::service_fn(ready_service);
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
            const ARMS: [&str; 5] = ["bare", "anchor", "client", "server", "floor"];
            let mut best = [f64::MAX; ARMS.len()];
            // Short rounds, many of them: one that no other process interrupted is likelier.
            let rounds = (400_000 / calls.max(1)).max(200);
            for _ in 0..rounds {
                for (index, best) in best.iter_mut().enumerate() {
                    let start = std::time::Instant::now();
                    for _ in 0..calls {
                        match index {
                            0 => runtime.block_on(drive(&mut bare, &model)),
                            1 => runtime.block_on(anchor.drive(&mut anchored, &model)),
                            2 => runtime.block_on(drive(&mut client, &model)),
                            3 => runtime.block_on(drive(&mut server, &model)),
                            _ => runtime.block_on(drive(&mut floor, &model)),
                        }
                    }
                    let per_call = start.elapsed().as_nanos() as f64 / calls as f64;
                    *best = best.min(per_call);
                }
            }
            assert!(anchor.recorded(), "the anchor recorded nothing");
            let arms: Vec<String> = ARMS
                .iter()
                .zip(best)
                .skip(1)
                .map(|(name, ns)| format!("{name} {ns:.1} (+{:.1})", ns - best[0]))
                .collect();
            println!(
                "fastest round, ns per call: bare {:.1}, {}",
                best[0],
                arms.join(", ")
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
        other => panic!("unknown mode {other}: bare, anchor, client, server, floor, time or sizes"),
    }
    // The layer really recorded.
    if matches!(mode.as_str(), "client" | "server" | "time") {
        let text = metrics.render_prometheus().unwrap_or_default();
        assert!(text.contains("deepseek_requests_total"), "{text}");
    }
}
