//! The hedging layer's cost on calls that are not hedged (every call pays it; a hedge itself
//! is a second upstream call, which dwarfs any layer cost), beside the bare service, in one
//! criterion run so the ratios come from one run. No anchor: tower's `hedge` module is behind
//! a tower feature the crate does not enable, and tower-resilience 0.13 has no hedging.
//!
//! `hedge_unhedged_call`: per-call time of an `http::Request<Full<Bytes>>` (a buffered JSON
//! body) through a ready `service_fn` answering `http::Response<Full<Bytes>>` 200
//! `application/json`. Each call is `ready().await` then `call().await` on a current-thread
//! runtime; the response body is read to its end.
//!
//! - `bare_service_fn`: no layer.
//! - `streaming_pass_through`: `accept: text/event-stream`: one header scan, no hedge.
//! - `warming_up`: non-streaming before `min_samples`: budget deposit, the body held to its
//!   first byte (one box), a latency sample.
//! - `armed`: non-streaming with a hedge delay: as `warming_up`, plus the hedge timer, a
//!   clone of the service and a copy of the request (head and body) kept for the hedge.
//!
//! Run: `cargo bench --all-features --bench hedge`

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_deepseek::hedge::HedgeLayer;

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

fn request(accept: &'static str) -> Req {
    let mut request = Request::new(Full::new(Bytes::from_static(BODY)));
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(http::header::ACCEPT, http::HeaderValue::from_static(accept));
    request
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn drive<S, B>(service: &mut S, accept: &'static str)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let ready = service.ready().await.expect("ready");
    let response = ready.call(request(accept)).await.expect("call");
    black_box(response.into_body().collect().await.expect("body"));
}

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    // The layer reads tokio time when it is built and called.
    let _guard = runtime.enter();
    let warming = ServiceBuilder::new()
        .layer(
            HedgeLayer::builder()
                .min_samples(u32::MAX)
                .build()
                .expect("layer"),
        )
        .service_fn(ready_service);
    let armed_layer = HedgeLayer::builder().min_samples(1).build().expect("layer");
    let armed = ServiceBuilder::new()
        .layer(armed_layer.clone())
        .service_fn(ready_service);
    runtime.block_on(drive(&mut armed.clone(), "application/json"));
    assert!(armed_layer.current_delay().is_some(), "the layer is armed");

    let mut group = c.benchmark_group("hedge_unhedged_call");
    group.bench_function("bare_service_fn", |b| {
        let mut service = tower::service_fn(ready_service);
        b.iter(|| runtime.block_on(drive(&mut service, "application/json")));
    });
    group.bench_function("streaming_pass_through", |b| {
        let mut service = warming.clone();
        b.iter(|| runtime.block_on(drive(&mut service, "text/event-stream")));
    });
    group.bench_function("warming_up", |b| {
        let mut service = warming.clone();
        b.iter(|| runtime.block_on(drive(&mut service, "application/json")));
    });
    group.bench_function("armed", |b| {
        let mut service = armed.clone();
        b.iter(|| runtime.block_on(drive(&mut service, "application/json")));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
