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

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Response;
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_deepseek::body::{BodyEvent, BodyFormat, ObservedBody};
use tower_deepseek::deepseek::RequestModel;
use tower_deepseek::metrics::{Metrics, MetricsLayer};

#[path = "common/metrics_call.rs"]
#[allow(dead_code)]
mod metrics_call;

use metrics_call::{Anchor, drive, ready_service, runtime};

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
    let client_ran = std::cell::Cell::new(false);
    group.bench_function("tower_deepseek_client", |b| {
        let mut service = client.clone();
        b.iter(|| runtime.block_on(drive(&mut service, &model)));
        client_ran.set(true);
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

    // The layer really recorded: fail loudly rather than report a number for no work. Only
    // when the client row ran: a filter or `--list` that skips it must not abort the rest of
    // a `cargo bench` run.
    if client_ran.get() {
        let text = metrics.render_prometheus().unwrap_or_default();
        assert!(text.contains(r#"gen_ai_token_type="input""#), "{text}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
