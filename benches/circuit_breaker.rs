//! The circuit breaker's closed-state cost, beside the bare service and tower-resilience 0.13's
//! breaker (the anchor), in one criterion run so the ratios come from one run.
//!
//! - `circuit_breaker_closed`: per-call time of `http::Request<()>` through a ready
//!   `service_fn` answering `http::Response<Empty<Bytes>>`: bare, ours with the defaults
//!   (calls timed for the slow-call rate: two clock reads), ours without the slow-call rule
//!   (no clock read), tower-resilience 0.13 (defaults). Each call is `ready().await` then
//!   `call().await` on a current-thread runtime, the response dropped.
//! - `circuit_breaker_throughput`: time per call when 1 or 2 OS threads, each with its own
//!   current-thread runtime and its own service clone, share one breaker. Criterion's time
//!   per iteration is total wall time over total calls, so `1 / time` is the throughput.
//!
//! Run: `cargo bench --bench circuit_breaker`

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_deepseek::circuit_breaker::CircuitBreakerLayer;

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

async fn drive<S>(service: &mut S, calls: u64)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..calls {
        let ready = service.ready().await.expect("ready");
        black_box(ready.call(Request::new(())).await.expect("call"));
    }
}

/// Runs `calls` calls split over `threads` threads sharing `service` (cloned per thread). The
/// time is from the first thread's start to the last thread's end, each read by the threads
/// themselves: a clock started by the spawning thread after the barrier could start late on
/// a busy machine (two cores, three threads) and make the threads look faster than they are.
fn throughput<S>(service: &S, threads: u64, calls: u64) -> Duration
where
    S: Service<Request<()>> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    let barrier = Barrier::new(threads as usize);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let mut service = service.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    let runtime = runtime();
                    barrier.wait();
                    let start = Instant::now();
                    runtime.block_on(drive(&mut service, calls / threads));
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .collect()
    });
    let first = spans.iter().map(|span| span.0).min().expect("a thread");
    let last = spans.iter().map(|span| span.1).max().expect("a thread");
    last - first
}

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    let bare = tower::service_fn(ready_service);
    let ours = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::builder().build().expect("layer"))
        .service_fn(ready_service);
    let ours_untimed = ServiceBuilder::new()
        .layer(
            CircuitBreakerLayer::builder()
                .no_slow_calls()
                .build()
                .expect("layer"),
        )
        .service_fn(ready_service);
    let anchor = ServiceBuilder::new()
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .build()
                .expect("anchor layer"),
        )
        .service_fn(ready_service);

    let mut group = c.benchmark_group("circuit_breaker_closed");
    group.bench_function("bare_service_fn", |b| {
        let mut service = bare;
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.bench_function("tower_deepseek", |b| {
        let mut service = ours.clone();
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.bench_function("tower_deepseek_no_slow_calls", |b| {
        let mut service = ours_untimed.clone();
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.bench_function("tower_resilience_0_13", |b| {
        let mut service = anchor.clone();
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.finish();

    let mut group = c.benchmark_group("circuit_breaker_throughput");
    for threads in [1, 2] {
        group.bench_function(format!("bare_{threads}_threads"), |b| {
            b.iter_custom(|iters| throughput(&bare, threads, iters.max(threads)))
        });
        group.bench_function(format!("tower_deepseek_{threads}_threads"), |b| {
            b.iter_custom(|iters| throughput(&ours, threads, iters.max(threads)))
        });
        group.bench_function(format!("tower_resilience_0_13_{threads}_threads"), |b| {
            b.iter_custom(|iters| throughput(&anchor, threads, iters.max(threads)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
