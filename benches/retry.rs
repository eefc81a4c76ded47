//! The retry layer's success-path cost, beside the bare service, tower-resilience 0.13's
//! retry and tower's `Retry` with a `TpsBudget` (the anchors), in one criterion run so the
//! ratios come from one run.
//!
//! `retry_success_path`: per-call time of an `http::Request<Full<Bytes>>` (a buffered JSON
//! body, a `content-type` header) through a ready `service_fn` answering
//! `http::Response<Full<Bytes>>` 200 `application/json`. Each call is `ready().await` then
//! `call().await` on a current-thread runtime, the response dropped.
//!
//! - `bare_service_fn`: no layer.
//! - `tower_deepseek`: the defaults (3 attempts, shared `TpsBudget::default`, streams held).
//! - `tower_deepseek_no_budget`: the same without a budget (no clock read, no deposit).
//! - `tower_deepseek_one_attempt`: one attempt, no budget: no request copy, no hold check,
//!   what the layer costs around a call before it does anything a retry needs (a floor).
//! - `tower_resilience_0_13`: 3 attempts, exponential back-off, no budget (its default).
//! - `tower_retry_tps_budget`: tower 0.5 `Retry` with a policy over `TpsBudget::default()`
//!   (deposit on success, as tower's example does), cloning the request per call.
//!
//! Run: `cargo bench --bench retry`

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tower::retry::budget::{Budget, TpsBudget};
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn drive<S>(service: &mut S)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    let ready = service.ready().await.expect("ready");
    black_box(ready.call(request()).await.expect("call"));
}

/// tower's `Retry` policy over a `TpsBudget`: deposit on success, withdraw to retry.
#[derive(Clone)]
struct BudgetPolicy {
    budget: Arc<TpsBudget>,
}

impl tower::retry::Policy<Req, Resp, Infallible> for BudgetPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Req,
        result: &mut Result<Resp, Infallible>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) if !response.status().is_server_error() => {
                self.budget.deposit();
                None
            }
            _ => self.budget.withdraw().then(|| std::future::ready(())),
        }
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    // Layers that read tokio time need the runtime's context when they are built and called.
    let _guard = runtime.enter();
    let ours = ServiceBuilder::new()
        .layer(RetryLayer::builder().build().expect("layer"))
        .service_fn(ready_service);
    let ours_no_budget = ServiceBuilder::new()
        .layer(RetryLayer::builder().no_budget().build().expect("layer"))
        .service_fn(ready_service);
    let ours_one_attempt = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(1)
                .no_budget()
                .build()
                .expect("layer"),
        )
        .service_fn(ready_service);
    let anchor = ServiceBuilder::new()
        .layer(
            tower_resilience::retry::RetryLayer::<Req, Resp, Infallible>::builder()
                .max_attempts(3)
                .exponential_backoff(Duration::from_millis(500))
                .build(),
        )
        .service_fn(ready_service);
    let tower_retry = tower::retry::Retry::new(
        BudgetPolicy {
            budget: Arc::new(TpsBudget::default()),
        },
        tower::service_fn(ready_service),
    );

    let mut group = c.benchmark_group("retry_success_path");
    group.bench_function("bare_service_fn", |b| {
        let mut service = tower::service_fn(ready_service);
        b.iter(|| runtime.block_on(drive(&mut service)));
    });
    group.bench_function("tower_deepseek", |b| {
        let mut service = ours.clone();
        b.iter(|| runtime.block_on(drive(&mut service)));
    });
    group.bench_function("tower_deepseek_no_budget", |b| {
        let mut service = ours_no_budget.clone();
        b.iter(|| runtime.block_on(drive(&mut service)));
    });
    group.bench_function("tower_deepseek_one_attempt", |b| {
        let mut service = ours_one_attempt.clone();
        b.iter(|| runtime.block_on(drive(&mut service)));
    });
    group.bench_function("tower_resilience_0_13", |b| {
        let mut service = anchor.clone();
        b.iter(|| runtime.block_on(drive(&mut service)));
    });
    group.bench_function("tower_retry_tps_budget", |b| {
        let mut service = tower_retry.clone();
        b.iter(|| runtime.block_on(drive(&mut service)));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
