//! The metrics layer's per-call cost on a non-streaming call, beside the anchor (a plain
//! prometheus 0.14 counter + histogram + gauge with the labels looked up per call), in one
//! criterion group so the ratios come from one run.
//!
//! Every arm sends the same `http::Request<()>` (with the `RequestModel` extension the client
//! adds) to a ready `service_fn` answering a small DeepSeek-shaped JSON body with `model` and
//! `usage`, and collects that body, on a current-thread runtime:
//!
//! - `bare_service_fn`: no metrics.
//! - `prometheus_0_14_labels_per_call`: the anchor: two clock reads, `with_label_values` per
//!   call on a counter, a histogram and an in-flight gauge (inc and dec).
//! - `tower_deepseek_client`: `MetricsLayer::client`: the RED metrics, the GenAI duration and
//!   token histograms, the body observed to its end (model and usage read as it passes).
//! - `tower_deepseek_server`: `MetricsLayer::server`: RED metrics only, body observed.
//! - `observed_body_floor`: no metrics, only the response body wrapped in the shared
//!   [`ObservedBody`] with an observer that records nothing: the part of every row above that
//!   observing the body to its end costs (the floor under the layer's own work).
//!
//! Run: `cargo bench --features prometheus --bench metrics`

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_deepseek::body::{BodyEvent, BodyFormat, ObservedBody};
use tower_deepseek::deepseek::RequestModel;
use tower_deepseek::metrics::{DURATION_BUCKETS, Metrics, MetricsLayer};

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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
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

/// The anchor's instruments: what a hand-rolled metrics middleware does.
struct Anchor {
    requests: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
    in_flight: prometheus::IntGaugeVec,
}

impl Anchor {
    fn new(registry: &prometheus::Registry) -> Anchor {
        let labels = ["side", "operation", "model", "outcome"];
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new("anchor_requests_total", "requests"),
            &labels,
        )
        .expect("counter");
        let duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("anchor_request_duration_seconds", "duration")
                .buckets(DURATION_BUCKETS.to_vec()),
            &labels,
        )
        .expect("histogram");
        let in_flight = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("anchor_requests_in_flight", "in flight"),
            &labels[..3],
        )
        .expect("gauge");
        registry
            .register(Box::new(requests.clone()))
            .expect("register");
        registry
            .register(Box::new(duration.clone()))
            .expect("register");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("register");
        Anchor {
            requests,
            duration,
            in_flight,
        }
    }

    async fn drive<S>(&self, service: &mut S, model: &RequestModel)
    where
        S: Service<Request<()>, Response = Response<Full<Bytes>>>,
        S::Error: std::fmt::Debug,
    {
        let start = std::time::Instant::now();
        let request = request(model);
        let name = request
            .extensions()
            .get::<RequestModel>()
            .map_or("unknown", RequestModel::as_str);
        let flight = self.in_flight.with_label_values(&["client", "chat", name]);
        flight.inc();
        let ready = service.ready().await.expect("ready");
        let response = ready.call(request).await.expect("call");
        black_box(response.into_body().collect().await.expect("body"));
        let labels = ["client", "chat", model.as_str(), "success"];
        self.requests.with_label_values(&labels).inc();
        self.duration
            .with_label_values(&labels)
            .observe(start.elapsed().as_secs_f64());
        flight.dec();
    }
}

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    let model = RequestModel::new("deepseek-v4-flash");
    let registry = prometheus::Registry::new();
    let anchor = Anchor::new(&registry);
    let metrics = Metrics::builder()
        .models(["deepseek-v4-flash"])
        .prometheus(registry.clone())
        .build()
        .expect("metrics");
    let client = ServiceBuilder::new()
        .layer(MetricsLayer::client(&metrics))
        .service_fn(ready_service);
    let server = ServiceBuilder::new()
        .layer(MetricsLayer::server(&metrics, "chat"))
        .service_fn(ready_service);

    let mut group = c.benchmark_group("metrics_non_streaming");
    group.bench_function("bare_service_fn", |b| {
        let mut service = tower::service_fn(ready_service);
        b.iter(|| runtime.block_on(drive(&mut service, &model)));
    });
    group.bench_function("prometheus_0_14_labels_per_call", |b| {
        let mut service = tower::service_fn(ready_service);
        b.iter(|| runtime.block_on(anchor.drive(&mut service, &model)));
    });
    group.bench_function("tower_deepseek_client", |b| {
        let mut service = client.clone();
        b.iter(|| runtime.block_on(drive(&mut service, &model)));
    });
    group.bench_function("tower_deepseek_server", |b| {
        let mut service = server.clone();
        b.iter(|| runtime.block_on(drive(&mut service, &model)));
    });
    group.bench_function("observed_body_floor", |b| {
        let mut service = tower::ServiceBuilder::new()
            .map_response(|response: Response<Full<Bytes>>| {
                let format = BodyFormat::from_headers(response.headers());
                response.map(|body| ObservedBody::new(body, format, |_event: BodyEvent<'_>| {}))
            })
            .service_fn(ready_service);
        b.iter(|| runtime.block_on(drive(&mut service, &model)));
    });
    group.finish();

    // The layer really recorded: fail loudly rather than report a number for no work.
    let text = metrics.render_prometheus().unwrap_or_default();
    assert!(text.contains(r#"gen_ai_token_type="input""#), "{text}");
}

criterion_group!(benches, bench);
criterion_main!(benches);
