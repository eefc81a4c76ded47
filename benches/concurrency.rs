//! The concurrency limits' per-call cost beside the bare service and tower 0.5's
//! `ConcurrencyLimit` (the anchor), in one criterion group so the ratios come from one run.
//!
//! `concurrency_limit`: per-call time of `http::Request<()>` through a ready `service_fn`
//! answering `http::Response<Empty<Bytes>>`: bare, tower's `ConcurrencyLimit` (10 permits),
//! ours fixed (10 permits, shed at once), ours adaptive (AIMD with Netflix's defaults; one
//! sample per call: two clock reads, a classification of the head, a short lock). Each call is
//! `ready().await` then `call().await` on a current-thread runtime (many calls per
//! `block_on`, timed with `iter_custom`), and the response (with its
//! body, which holds our slot) is dropped, so every call takes and gives back a slot.
//!
//! Run: `cargo bench --bench concurrency`

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_deepseek::concurrency::{AdaptiveConcurrencyLayer, ConcurrencyLimitLayer};

fn ready_service(
    _request: Request<()>,
) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Empty::new())))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `calls` calls in one `block_on` (so the runtime's entry cost is not counted per call)
/// and returns the time they took.
fn drive<S>(runtime: &tokio::runtime::Runtime, service: &mut S, calls: u64) -> Duration
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..calls {
            let ready = service.ready().await.expect("ready");
            black_box(ready.call(Request::new(())).await.expect("call"));
        }
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    let mut bare = tower::service_fn(ready_service);
    let mut anchor = ServiceBuilder::new()
        .concurrency_limit(10)
        .service_fn(ready_service);
    let mut fixed = ServiceBuilder::new()
        .layer(
            ConcurrencyLimitLayer::builder()
                .max_in_flight(10)
                .build()
                .expect("fixed"),
        )
        .service_fn(ready_service);
    let mut adaptive = ServiceBuilder::new()
        .layer(
            AdaptiveConcurrencyLayer::builder()
                .build()
                .expect("adaptive"),
        )
        .service_fn(ready_service);

    let mut group = c.benchmark_group("concurrency_limit");
    group.bench_function("bare_service_fn", |b| {
        b.iter_custom(|calls| drive(&runtime, &mut bare, calls));
    });
    group.bench_function("tower_0_5_concurrency_limit", |b| {
        b.iter_custom(|calls| drive(&runtime, &mut anchor, calls));
    });
    group.bench_function("tower_deepseek_fixed", |b| {
        b.iter_custom(|calls| drive(&runtime, &mut fixed, calls));
    });
    group.bench_function("tower_deepseek_adaptive_aimd", |b| {
        b.iter_custom(|calls| drive(&runtime, &mut adaptive, calls));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
