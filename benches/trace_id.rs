//! Per-call overhead of the trace-ID layers against tower-http's request-id pair.
//!
//! One group, one run, so the ratios are honest. Every row builds an `http::Request<()>`,
//! drives a ready `service_fn` that answers `http::Response<()>` at once, through:
//!
//! - `bare` / `bare_with_header`: nothing (the floors, without and with an incoming header);
//! - `tower_http_generate` / `tower_http_pass_through`: tower-http 0.6 `SetRequestId`
//!   (`MakeRequestUuid`) + `PropagateRequestId` on `x-request-id`, without / with a valid
//!   incoming UUID;
//! - `trace_id_generate` / `trace_id_pass_through`: our `TraceIdLayer` (read, check, generate,
//!   extension, task-local scope, span, echo), without / with a valid incoming `x-trace-id`;
//! - `trace_id_pass_through_text`: the same with a non-UUID ID (`abc-123`, derived trace-id);
//! - `floor_pass_through`: only what passing an ID through cannot avoid (read `x-trace-id`,
//!   insert a `TraceId`-sized value in the request extensions, echo the value on the
//!   response unless set): the least our pass-through row can cost;
//! - `propagate_outbound`: our `PropagateTraceIdLayer` outside any scope (generate, set
//!   `x-trace-id` and `traceparent`, span, `CallTraceIds` response extension).
//!
//! Run: `cargo bench --bench trace_id`

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Service, ServiceBuilder};
use tower_deepseek::trace_id::{PropagateTraceIdLayer, TRACE_ID, TraceId, TraceIdLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

const UUID: &str = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736";

fn ready(_request: Request<()>) -> std::future::Ready<Result<Response<()>, Infallible>> {
    std::future::ready(Ok(Response::new(())))
}

fn request(header: Option<(HeaderName, &'static str)>) -> Request<()> {
    let mut request = Request::new(());
    if let Some((name, value)) = header {
        request
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    request
}

/// A value of `TraceId`'s size holding the incoming header value, for the floor row.
#[derive(Clone)]
struct FloorId {
    _value: HeaderValue,
    _rest: [u8; std::mem::size_of::<TraceId>() - std::mem::size_of::<HeaderValue>()],
}

/// The floor of passing an ID through: one header read, one extension insert, one echo.
#[derive(Clone, Copy)]
struct Floor<S>(S);

impl<S> Service<Request<()>> for Floor<S>
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Future: Unpin,
{
    type Response = Response<()>;
    type Error = S::Error;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<()>) -> Self::Future {
        let value = request.headers().get(TRACE_ID).cloned();
        if let Some(value) = &value {
            request.extensions_mut().insert(FloorId {
                _value: value.clone(),
                _rest: [0; std::mem::size_of::<TraceId>() - std::mem::size_of::<HeaderValue>()],
            });
        }
        FloorFuture {
            inner: self.0.call(request),
            value,
        }
    }
}

/// The floor's response future (the bench's inner future is `Unpin`: no projection needed).
struct FloorFuture<F> {
    inner: F,
    value: Option<HeaderValue>,
}

impl<F, E> Future for FloorFuture<F>
where
    F: Future<Output = Result<Response<()>, E>> + Unpin,
{
    type Output = Result<Response<()>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut result = ready!(Pin::new(&mut self.inner).poll(cx));
        if let (Ok(response), Some(value)) = (&mut result, self.value.take())
            && let http::header::Entry::Vacant(slot) = response.headers_mut().entry(TRACE_ID)
        {
            slot.insert(value);
        }
        Poll::Ready(result)
    }
}

/// `poll_ready` then `call`, borrowing the service only for those two synchronous steps (the
/// benchmark loop is sequential), so no row pays for a clone of its service.
async fn drive<S>(service: &RefCell<S>, request: Request<()>) -> Response<()>
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    std::future::poll_fn(|cx| service.borrow_mut().poll_ready(cx))
        .await
        .expect("ready");
    let future = service.borrow_mut().call(request);
    future.await.expect("call")
}

fn row<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    service: S,
    header: Option<(HeaderName, &'static str)>,
) where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    let service = RefCell::new(service);
    group.bench_function(name, |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(drive(&service, request(header.clone())).await) })
    });
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let x_request_id = HeaderName::from_static("x-request-id");
    let x_trace_id = HeaderName::from_static("x-trace-id");

    let bare = tower::service_fn(ready);
    let tower_http = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .service_fn(ready);
    let ours = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service_fn(ready);
    let outbound = ServiceBuilder::new()
        .layer(PropagateTraceIdLayer::new())
        .service_fn(ready);

    let mut group = c.benchmark_group("trace_id_per_call");
    row(&mut group, &runtime, "bare", bare, None);
    let header = Some((x_trace_id.clone(), UUID));
    row(
        &mut group,
        &runtime,
        "bare_with_header",
        bare,
        header.clone(),
    );
    row(
        &mut group,
        &runtime,
        "tower_http_generate",
        tower_http.clone(),
        None,
    );
    let incoming = Some((x_request_id, UUID));
    row(
        &mut group,
        &runtime,
        "tower_http_pass_through",
        tower_http,
        incoming,
    );
    row(
        &mut group,
        &runtime,
        "trace_id_generate",
        ours.clone(),
        None,
    );
    row(
        &mut group,
        &runtime,
        "trace_id_pass_through",
        ours.clone(),
        header,
    );
    let text = Some((x_trace_id.clone(), "abc-123"));
    row(
        &mut group,
        &runtime,
        "trace_id_pass_through_text",
        ours,
        text,
    );
    row(
        &mut group,
        &runtime,
        "floor_pass_through",
        Floor(bare),
        Some((x_trace_id, UUID)),
    );
    row(&mut group, &runtime, "propagate_outbound", outbound, None);
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
