//! An instruction-count probe for the circuit breaker's closed path (issue 6), not a demo:
//! runs N calls the way `benches/circuit_breaker.rs` does (`block_on` of `ready` + `call` per
//! call) through the bare `service_fn`, the default breaker or the breaker without slow-call
//! timing. Two runs with different N under callgrind cancel the set-up:
//!
//! ```sh
//! cargo build --release --example breaker_probe
//! valgrind --tool=callgrind target/release/examples/breaker_probe ours 10000
//! valgrind --tool=callgrind target/release/examples/breaker_probe ours 20000
//! ```
//!
//! (instructions of the second minus the first, over 10,000, is the per-call cost.)
//!
//! Other modes: `time N` (wall clock, fastest of 200 rounds of N calls, bare and both
//! breakers in turn), `threads N` (N calls on one shared breaker from 1 and from 2 threads,
//! each thread timing itself), `threads-own N` (the same with a breaker per thread) and
//! `sizes` (the response future's and the response's sizes).

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_deepseek::circuit_breaker::CircuitBreakerLayer;

fn ready_service(
    _request: Request<()>,
) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Empty::new())))
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

fn run<S>(mut service: S, calls: u64)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for _ in 0..calls {
        runtime.block_on(drive(&mut service, 1));
    }
}

/// `calls` calls split over `threads` threads, each with its own runtime and a service from `make`:
/// from the first thread's start to the last one's end, as each thread reads them (a clock
/// in the spawning thread could start late on a busy machine).
fn threaded<S>(make: impl Fn() -> S + Sync, threads: u64, calls: u64) -> std::time::Duration
where
    S: Service<Request<()>> + Send,
    S::Error: std::fmt::Debug,
{
    let barrier = std::sync::Barrier::new(threads as usize);
    let spans: Vec<(std::time::Instant, std::time::Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let mut service = make();
                let barrier = &barrier;
                scope.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    barrier.wait();
                    let start = std::time::Instant::now();
                    runtime.block_on(drive(&mut service, calls / threads));
                    (start, std::time::Instant::now())
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

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "ours".into());
    let calls: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    match mode.as_str() {
        "bare" => run(tower::service_fn(ready_service), calls),
        "ours" => run(
            ServiceBuilder::new()
                .layer(CircuitBreakerLayer::builder().build().expect("layer"))
                .service_fn(ready_service),
            calls,
        ),
        "untimed" => run(
            ServiceBuilder::new()
                .layer(
                    CircuitBreakerLayer::builder()
                        .no_slow_calls()
                        .build()
                        .expect("layer"),
                )
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
            let mut bare = tower::service_fn(ready_service);
            let mut ours = ServiceBuilder::new()
                .layer(CircuitBreakerLayer::builder().build().expect("layer"))
                .service_fn(ready_service);
            let mut untimed = ServiceBuilder::new()
                .layer(
                    CircuitBreakerLayer::builder()
                        .no_slow_calls()
                        .build()
                        .expect("layer"),
                )
                .service_fn(ready_service);
            let mut best = [f64::MAX; 3];
            for _ in 0..200 {
                for (index, best) in best.iter_mut().enumerate() {
                    let start = std::time::Instant::now();
                    for _ in 0..calls {
                        match index {
                            0 => runtime.block_on(drive(&mut bare, 1)),
                            1 => runtime.block_on(drive(&mut ours, 1)),
                            _ => runtime.block_on(drive(&mut untimed, 1)),
                        }
                    }
                    let per_call = start.elapsed().as_nanos() as f64 / calls as f64;
                    *best = best.min(per_call);
                }
            }
            println!(
                "fastest round, ns per call: bare {:.1}, ours {:.1} (+{:.1}), no slow calls {:.1} (+{:.1})",
                best[0],
                best[1],
                best[1] - best[0],
                best[2],
                best[2] - best[0]
            );
        }
        "threads" => {
            // One shared breaker on 1 and 2 threads (each thread its own runtime and service
            // clone, as `circuit_breaker_throughput` runs them): fastest round of each, in ns
            // per call of total wall time, and the 2-thread speed-up.
            let bare = tower::service_fn(ready_service);
            let ours = ServiceBuilder::new()
                .layer(CircuitBreakerLayer::builder().build().expect("layer"))
                .service_fn(ready_service);
            let mut best = [f64::MAX; 4];
            for _ in 0..30 {
                for (index, best) in best.iter_mut().enumerate() {
                    let threads = 1 + (index as u64 % 2);
                    let elapsed = if index < 2 {
                        threaded(|| bare, threads, calls)
                    } else {
                        threaded(|| ours.clone(), threads, calls)
                    };
                    *best = best.min(elapsed.as_nanos() as f64 / calls as f64);
                }
            }
            println!(
                "fastest round, ns per call: bare 1 thread {:.1}, 2 threads {:.1} ({:.2}x); ours 1 thread {:.1}, 2 threads {:.1} ({:.2}x)",
                best[0],
                best[1],
                best[0] / best[1],
                best[2],
                best[3],
                best[2] / best[3]
            );
        }
        "threads-own" => {
            // The same, but every service (every thread) with its own breaker: what two
            // threads give when they share nothing.
            let make = || {
                ServiceBuilder::new()
                    .layer(CircuitBreakerLayer::builder().build().expect("layer"))
                    .service_fn(ready_service)
            };
            let mut best = [f64::MAX; 2];
            for _ in 0..30 {
                for (index, best) in best.iter_mut().enumerate() {
                    let threads = 1 + index as u64;
                    let elapsed = threaded(make, threads, calls);
                    *best = best.min(elapsed.as_nanos() as f64 / calls as f64);
                }
            }
            println!(
                "own breakers, fastest round, ns per call: 1 thread {:.1}, 2 threads {:.1} ({:.2}x)",
                best[0],
                best[1],
                best[0] / best[1]
            );
        }
        "sizes" => {
            let mut service = ServiceBuilder::new()
                .layer(CircuitBreakerLayer::builder().build().expect("layer"))
                .service_fn(ready_service);
            let future = service.call(Request::new(()));
            println!("response future: {} bytes", std::mem::size_of_val(&future));
            println!(
                "response: {} bytes (bare {})",
                std::mem::size_of::<
                    Response<tower_deepseek::circuit_breaker::CircuitBreakerBody<Empty<Bytes>>>,
                >(),
                std::mem::size_of::<Response<Empty<Bytes>>>()
            );
            println!(
                "output: {} bytes",
                std::mem::size_of::<
                    Result<
                        Response<tower_deepseek::circuit_breaker::CircuitBreakerBody<Empty<Bytes>>>,
                        tower_deepseek::Error,
                    >,
                >()
            );
            drop(future);
        }
        other => panic!("unknown mode {other}: bare, ours, untimed, time, threads or sizes"),
    }
}
