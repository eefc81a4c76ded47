//! A probe of the retry layer's success path for instruction counts (callgrind), set up as
//! `benches/retry.rs` sets up its `retry_success_path` group, without criterion: `<calls>`
//! calls, each `ready().await` then `call().await` in one `block_on` of a current-thread
//! runtime.
//!
//! Build it without the crate feature `test-util` (not `--all-features`), as production is:
//! `cargo build --release --example retry_probe`, then
//! `valgrind --tool=callgrind target/release/examples/retry_probe <row> <calls>` for two
//! numbers of calls; the difference of the counts over the difference of the calls is the
//! per-call count, the set-up cancelled (subtract quanta's one-time calibration, whose length
//! follows the wall clock: `once_cell::imp::initialize_or_wait`, inclusive).
//!
//! Rows: `bare`, `ours` (the defaults), `no_budget`, `one_attempt`, `deadline` (the defaults
//! with a 60 s deadline, a timer per call); `sizes` prints the
//! response future's size. `PROBE_TIME=1` prints the wall-clock time per call.
//!
//! `time <calls>` is the secondary, wall-clock measure: 200 rounds of `<calls>` calls through
//! `bare`, `ours` and `no_budget` in turn, the fastest round of each kept (a busy machine only
//! ever adds time), e.g. `target/release/examples/retry_probe time 2000`.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_deepseek::retry::RetryLayer;

const BODY: &[u8] =
    br#"{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello"}]}"#;

type Req = Request<Full<Bytes>>;
type Resp = Response<Full<Bytes>>;

fn ready_service(_request: Req) -> std::future::Ready<Result<Resp, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    std::future::ready(Ok(response))
}

fn request() -> Req {
    let mut request = Request::new(Full::new(Bytes::from_static(BODY)));
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    request
}

async fn drive<S>(service: &mut S)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    let ready = service.ready().await.expect("ready");
    black_box(ready.call(request()).await.expect("call"));
}

fn run<S>(runtime: &tokio::runtime::Runtime, mut service: S, calls: u64)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    let start = std::time::Instant::now();
    for _ in 0..calls {
        runtime.block_on(drive(&mut service));
    }
    let nanos = start.elapsed().as_nanos() as f64 / calls as f64;
    if std::env::var_os("PROBE_TIME").is_some() {
        eprintln!("{nanos:.1} ns/call");
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let row = args.next().unwrap_or_else(|| "ours".into());
    let calls: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let layer = |builder: tower_deepseek::retry::RetryLayerBuilder| builder.build().expect("layer");
    match row.as_str() {
        "bare" => run(&runtime, tower::service_fn(ready_service), calls),
        "ours" => run(
            &runtime,
            ServiceBuilder::new()
                .layer(layer(RetryLayer::builder()))
                .service_fn(ready_service),
            calls,
        ),
        "no_budget" => run(
            &runtime,
            ServiceBuilder::new()
                .layer(layer(RetryLayer::builder().no_budget()))
                .service_fn(ready_service),
            calls,
        ),
        "deadline" => run(
            &runtime,
            ServiceBuilder::new()
                .layer(layer(
                    RetryLayer::builder().deadline(std::time::Duration::from_secs(60)),
                ))
                .service_fn(ready_service),
            calls,
        ),
        "one_attempt" => run(
            &runtime,
            ServiceBuilder::new()
                .layer(layer(RetryLayer::builder().max_attempts(1).no_budget()))
                .service_fn(ready_service),
            calls,
        ),
        "time" => {
            let mut bare = tower::service_fn(ready_service);
            let mut ours = ServiceBuilder::new()
                .layer(layer(RetryLayer::builder()))
                .service_fn(ready_service);
            let mut no_budget = ServiceBuilder::new()
                .layer(layer(RetryLayer::builder().no_budget()))
                .service_fn(ready_service);
            let mut best = [f64::MAX; 3];
            for _ in 0..200 {
                for (index, best) in best.iter_mut().enumerate() {
                    let start = std::time::Instant::now();
                    for _ in 0..calls {
                        match index {
                            0 => runtime.block_on(drive(&mut bare)),
                            1 => runtime.block_on(drive(&mut ours)),
                            _ => runtime.block_on(drive(&mut no_budget)),
                        }
                    }
                    let per_call = start.elapsed().as_nanos() as f64 / calls as f64;
                    *best = best.min(per_call);
                }
            }
            println!(
                "fastest round, ns per call: bare {:.1}, ours {:.1} (+{:.1}), no budget {:.1} (+{:.1})",
                best[0],
                best[1],
                best[1] - best[0],
                best[2],
                best[2] - best[0]
            );
        }
        "sizes" => {
            type Inner =
                tower::util::ServiceFn<fn(Req) -> std::future::Ready<Result<Resp, Infallible>>>;
            let size = std::mem::size_of::<
                tower_deepseek::retry::ResponseFuture<Inner, Full<Bytes>, Full<Bytes>>,
            >();
            println!("response future: {size} bytes");
        }
        other => panic!("unknown row {other}"),
    }
}
