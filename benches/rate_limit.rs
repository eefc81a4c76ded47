//! The rate limiter's per-call cost, beside the bare service, tower_governor 0.8 (global key)
//! and tower-resilience 0.13's rate limiter (the anchors), in one criterion run so the ratios
//! come from one run.
//!
//! - `rate_limit`: per-call time of an `http::Request<()>` carrying an `authorization`
//!   header (built per call for every variant, so the baseline pays for it too) through a
//!   ready `service_fn` answering `http::Response<axum::body::Body>` (the body tower_governor
//!   requires): bare, tower_governor 0.8 with its global key, tower-resilience 0.13, ours
//!   direct, ours keyed by the header's keyed hash ([`HeaderKey`], a `u64` key), ours keyed by
//!   the header's value as a `String` (an allocation per call). Quotas are a billion per
//!   second: nothing is ever refused. Each call is `ready().await` then `call().await` on a
//!   current-thread runtime, the response dropped.
//! - `rate_limit_parts`: `tokio::time::Instant::now()` alone (every GCRA decision reads the
//!   clock once), our direct limiter's exact decision alone, and its decision with the thread
//!   batch the builder picks for this burst (most calls take a banked cell: no clock read).
//! - `rate_limit_throughput`: time per call when 1 or 2 OS threads, each with its own
//!   current-thread runtime and its own service clone, share one limiter. Criterion's time per
//!   iteration is total wall time over total calls, so `1 / time` is the throughput. The
//!   `keyed_caller_per_thread` rows give each thread its own API key (its own GCRA cell).
//!   `direct` is what `RateLimitLayer::builder().build()` makes, thread batch included;
//!   `direct_exact` sets `thread_batch(1)`.
//!
//! Run: `cargo bench --features prometheus --bench rate_limit` (not `--all-features`: the
//! crate's `test-util` feature puts tokio's clock under the measurements).

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use std::num::NonZeroU32;
use tower::{Service, ServiceBuilder, ServiceExt};

use tower_deepseek::rate_limit::{DirectLimiter, HeaderKey, RateLimitBackend, RateLimitLayer};

fn ready_service(_request: Request<()>) -> std::future::Ready<Result<Response<Body>, Infallible>> {
    std::future::ready(Ok(Response::new(Body::empty())))
}

fn request() -> Request<()> {
    let mut request = Request::new(());
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Bearer sk-bench-0123456789"),
    );
    request
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
        black_box(ready.call(request()).await.expect("call"));
    }
}

/// Like [`drive`], every call from caller `caller` (its own `authorization` value).
async fn drive_as<S>(service: &mut S, calls: u64, caller: &http::HeaderValue)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..calls {
        let mut request = Request::new(());
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, caller.clone());
        let ready = service.ready().await.expect("ready");
        black_box(ready.call(request).await.expect("call"));
    }
}

/// Runs `work(thread, service)` on `threads` threads, each with its own clone of `service`
/// and its own current-thread runtime. The time is from the first thread's start to the last
/// thread's end, read by the threads themselves: a clock started by the spawning thread after
/// the barrier could start late on a busy machine (two cores, three threads) and make the
/// threads look faster than they are.
fn timed_threads<S, F>(service: &S, threads: u64, work: F) -> Duration
where
    S: Clone + Send,
    F: Fn(&tokio::runtime::Runtime, u64, &mut S) + Sync,
{
    let barrier = Barrier::new(threads as usize);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let mut service = service.clone();
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    let runtime = runtime();
                    barrier.wait();
                    let start = Instant::now();
                    work(&runtime, thread, &mut service);
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

/// Like [`throughput`], each thread calling as its own caller (a key of its own).
fn throughput_per_caller<S>(service: &S, threads: u64, calls: u64) -> Duration
where
    S: Service<Request<()>> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    timed_threads(service, threads, |runtime, thread, service| {
        let caller =
            http::HeaderValue::from_str(&format!("Bearer sk-caller-{thread}")).expect("header");
        runtime.block_on(drive_as(service, calls / threads, &caller));
    })
}

/// Runs `calls` calls split over `threads` threads sharing `service` (cloned per thread).
fn throughput<S>(service: &S, threads: u64, calls: u64) -> Duration
where
    S: Service<Request<()>> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    timed_threads(service, threads, |runtime, _, service| {
        runtime.block_on(drive(service, calls / threads));
    })
}

/// A billion calls per second with a burst of a billion: never refuses in a benchmark.
const RATE: u32 = 1_000_000_000;

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    let bare = tower::service_fn(ready_service);

    let governor_config = tower_governor::governor::GovernorConfigBuilder::default()
        .key_extractor(tower_governor::key_extractor::GlobalKeyExtractor)
        .per_nanosecond(1)
        .burst_size(RATE)
        .finish()
        .expect("tower_governor config");
    let tower_governor = ServiceBuilder::new()
        .layer(tower_governor::GovernorLayer::new(governor_config))
        .service_fn(ready_service);

    let resilience = ServiceBuilder::new()
        .layer(
            tower_resilience::ratelimiter::RateLimiterLayer::builder()
                .limit_for_period(RATE as usize)
                .refresh_period(Duration::from_secs(1))
                .timeout_duration(Duration::ZERO)
                .build()
                .expect("tower-resilience layer"),
        )
        .service_fn(ready_service);

    let direct = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .rate(RATE, Duration::from_secs(1))
                .build()
                .expect("layer"),
        )
        .service_fn(ready_service);
    let direct_exact = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .rate(RATE, Duration::from_secs(1))
                .thread_batch(1)
                .build()
                .expect("layer"),
        )
        .service_fn(ready_service);
    let keyed_hash = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .rate(RATE, Duration::from_secs(1))
                .build_keyed(HeaderKey::authorization())
                .expect("layer"),
        )
        .service_fn(ready_service);
    let keyed_string = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .rate(RATE, Duration::from_secs(1))
                .build_keyed(|request: &Request<()>| {
                    request
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                })
                .expect("layer"),
        )
        .service_fn(ready_service);

    let mut group = c.benchmark_group("rate_limit");
    group.bench_function("bare_service_fn", |b| {
        let mut service = bare;
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.bench_function("tower_governor_0_8_global", |b| {
        let mut service = tower_governor.clone();
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.bench_function("tower_resilience_0_13", |b| {
        let mut service = resilience.clone();
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.bench_function("tower_deepseek_direct", |b| {
        let mut service = direct.clone();
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.bench_function("tower_deepseek_direct_exact", |b| {
        let mut service = direct_exact.clone();
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.bench_function("tower_deepseek_keyed_header_hash", |b| {
        let mut service = keyed_hash.clone();
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.bench_function("tower_deepseek_keyed_header_string", |b| {
        let mut service = keyed_string.clone();
        b.iter(|| runtime.block_on(drive(&mut service, 1)));
    });
    group.finish();

    // Where the time goes: the clock read every GCRA decision needs, and the decision alone.
    let mut group = c.benchmark_group("rate_limit_parts");
    group.bench_function("tokio_instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    let limiter = DirectLimiter::new("bench", RATE, Duration::from_secs(1), None).expect("valid");
    group.bench_function("direct_decide", |b| {
        b.iter(|| black_box(limiter.decide(&(), NonZeroU32::MIN)))
    });
    // What `RateLimitLayer::builder().build()` uses for a large burst: a thread batch.
    let batched = DirectLimiter::new("bench", RATE, Duration::from_secs(1), None)
        .expect("valid")
        .with_thread_batch(DirectLimiter::auto_thread_batch(RATE));
    group.bench_function("direct_decide_thread_batch", |b| {
        b.iter(|| black_box(batched.decide(&(), NonZeroU32::MIN)))
    });
    group.finish();

    let mut group = c.benchmark_group("rate_limit_throughput");
    for threads in [1, 2] {
        group.bench_function(format!("bare_{threads}_threads"), |b| {
            b.iter_custom(|iters| throughput(&bare, threads, iters.max(threads)))
        });
        group.bench_function(format!("tower_deepseek_direct_{threads}_threads"), |b| {
            b.iter_custom(|iters| throughput(&direct, threads, iters.max(threads)))
        });
        group.bench_function(
            format!("tower_deepseek_direct_exact_{threads}_threads"),
            |b| b.iter_custom(|iters| throughput(&direct_exact, threads, iters.max(threads))),
        );
        group.bench_function(format!("tower_deepseek_keyed_{threads}_threads"), |b| {
            b.iter_custom(|iters| throughput(&keyed_hash, threads, iters.max(threads)))
        });
        group.bench_function(
            format!("tower_deepseek_keyed_caller_per_thread_{threads}_threads"),
            |b| {
                b.iter_custom(|iters| {
                    throughput_per_caller(&keyed_hash, threads, iters.max(threads))
                })
            },
        );
        group.bench_function(format!("tower_resilience_0_13_{threads}_threads"), |b| {
            b.iter_custom(|iters| throughput(&resilience, threads, iters.max(threads)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
