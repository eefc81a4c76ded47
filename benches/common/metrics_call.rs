//! The metrics layer's measured call, shared by `benches/metrics.rs` (criterion) and
//! `examples/metrics_probe.rs` (callgrind and fastest-round timing), so both measure exactly
//! the same thing: one non-streaming call to a ready `service_fn` answering a small
//! DeepSeek-shaped JSON body with `model` and `usage`, its body collected, on a current-thread
//! runtime. Also the anchor: what a hand-rolled prometheus middleware does per call.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_deepseek::deepseek::RequestModel;
use tower_deepseek::metrics::DURATION_BUCKETS;

pub const BODY: &str = r#"{"id":"b1","object":"chat.completion","created":1,"model":"deepseek-v4-flash","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}}"#;
const URI: &str = "https://api.deepseek.com/chat/completions";

/// The inner service: answers at once.
pub fn ready_service(
    _request: Request<()>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
        BODY.as_bytes(),
    )))))
}

/// The request, with the `RequestModel` extension the client adds.
pub fn request(model: &RequestModel) -> Request<()> {
    let mut request = Request::new(());
    *request.uri_mut() = http::Uri::from_static(URI);
    request.extensions_mut().insert(model.clone());
    request
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One call through `service`, its body collected.
pub async fn drive<S, B>(service: &mut S, model: &RequestModel)
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
pub struct Anchor {
    requests: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
    in_flight: prometheus::IntGaugeVec,
}

impl Anchor {
    pub fn new(registry: &prometheus::Registry) -> Anchor {
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

    /// [`drive`] with the anchor's per-call work around it: two clock reads, and
    /// `with_label_values` per call on a counter, a histogram and an in-flight gauge.
    pub async fn drive<S>(&self, service: &mut S, model: &RequestModel)
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

    /// Whether the anchor recorded anything (a probe that fails loudly rather than report a
    /// number for no work).
    pub fn recorded(&self) -> bool {
        self.requests
            .with_label_values(&["client", "chat", "deepseek-v4-flash", "success"])
            .get()
            > 0
    }
}
