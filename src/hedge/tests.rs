//! The hedging layer over `service_fn` inners, on paused time.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::{HedgeEvent, HedgeLayer, HedgeLayerBuilder};
use crate::ErrorKind;
use crate::retry::SendOnce;

type Body = Full<Bytes>;

/// What one attempt does: wait, then answer with a status and a body.
#[derive(Clone, Copy)]
struct Plan {
    wait: Duration,
    status: u16,
    body: &'static str,
}

fn after(millis: u64, status: u16, body: &'static str) -> Plan {
    Plan {
        wait: Duration::from_millis(millis),
        status,
        body,
    }
}

/// Counts attempts started and attempts dropped before they answered.
#[derive(Default)]
struct Seen {
    started: AtomicUsize,
    cancelled: AtomicUsize,
}

struct CancelGuard(Arc<Seen>, bool);

impl CancelGuard {
    fn disarm(&mut self) {
        self.1 = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// An inner service playing `plans` in call order (then answering at once).
fn inner<B: Send + 'static>(
    plans: Vec<Plan>,
) -> (
    impl Service<Request<B>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone,
    Arc<Seen>,
) {
    let seen = Arc::new(Seen::default());
    let plans = Arc::new(Mutex::new(plans.into_iter()));
    let counter = Arc::clone(&seen);
    let service = tower::service_fn(move |_request: Request<B>| {
        counter.started.fetch_add(1, Ordering::SeqCst);
        let plan = plans
            .lock()
            .unwrap()
            .next()
            .unwrap_or_else(|| after(0, 200, "{}"));
        let mut guard = CancelGuard(Arc::clone(&counter), true);
        async move {
            tokio::time::sleep(plan.wait).await;
            guard.disarm();
            let mut response = Response::new(Full::new(Bytes::from_static(plan.body.as_bytes())));
            *response.status_mut() = StatusCode::from_u16(plan.status).unwrap();
            Ok(response)
        }
    });
    (service, seen)
}

/// A layer that hedges from the first sample on, after 100 ms (the floor), with budget to
/// spare; `events` hears what it did.
fn layer(builder: HedgeLayerBuilder) -> (HedgeLayer, Arc<Mutex<Vec<String>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&events);
    let layer = builder
        .listener(move |event: &HedgeEvent<'_>| {
            heard.lock().unwrap().push(event.as_str().to_owned())
        })
        .build()
        .unwrap();
    (layer, events)
}

fn eager() -> HedgeLayerBuilder {
    HedgeLayer::builder()
        .min_samples(1)
        .max_extra_percent(100.0)
        .min_delay(Duration::from_millis(100))
}

fn request() -> Request<Body> {
    Request::new(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
}

async fn text(response: Response<super::HedgeBody<Body>>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_attempt_is_hedged_at_the_delay_and_the_hedge_wins() {
    let (layer, events) = layer(eager());
    // A warm-up sample, a stuck attempt, its fast hedge.
    let (inner, seen) = inner(vec![
        after(0, 200, "warm"),
        after(60_000, 200, "slow"),
        after(10, 200, "fast"),
    ]);
    let service = tower::Layer::layer(&layer, inner);
    service.clone().oneshot(request()).await.unwrap();
    let started = Instant::now();
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(110));
    assert_eq!(text(response).await, "fast");
    assert_eq!(seen.started.load(Ordering::SeqCst), 3);
    // The stuck attempt was dropped, not left running.
    assert_eq!(seen.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(*events.lock().unwrap(), ["sent", "won"]);
}

#[tokio::test(start_paused = true)]
async fn the_first_attempt_answering_after_the_hedge_was_sent_wins_and_cancels_it() {
    let (layer, events) = layer(eager());
    let (inner, seen) = inner(vec![
        after(0, 200, "warm"),
        after(150, 200, "first"),
        after(500, 200, "hedge"),
    ]);
    let service = tower::Layer::layer(&layer, inner);
    service.clone().oneshot(request()).await.unwrap();
    let started = Instant::now();
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(150));
    assert_eq!(text(response).await, "first");
    assert_eq!(seen.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(*events.lock().unwrap(), ["sent"]);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_before_min_samples() {
    let (layer, events) = layer(eager().min_samples(3));
    let (inner, seen) = inner(vec![
        after(0, 200, "a"),
        after(0, 200, "b"),
        after(1_000, 200, "slow"),
    ]);
    let service = tower::Layer::layer(&layer, inner);
    for _ in 0..2 {
        service.clone().oneshot(request()).await.unwrap();
    }
    assert_eq!(layer.current_delay(), None);
    let response = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(text(response).await, "slow");
    assert_eq!(seen.started.load(Ordering::SeqCst), 3);
    assert!(events.lock().unwrap().is_empty());
    // The third sample starts hedging: p95 of three samples is the slowest.
    let delay = layer.current_delay().expect("three samples");
    assert!(delay > Duration::from_secs(1), "{delay:?}");
}

#[tokio::test(start_paused = true)]
async fn a_first_attempt_failing_before_the_delay_is_not_hedged() {
    let (layer, events) = layer(eager());
    let (inner, seen) = inner(vec![after(0, 200, "warm"), after(10, 503, "busy")]);
    let service = tower::Layer::layer(&layer, inner);
    service.clone().oneshot(request()).await.unwrap();
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(seen.started.load(Ordering::SeqCst), 2);
    assert!(events.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_hedge_is_dropped_and_the_first_attempt_answers() {
    let (layer, events) = layer(eager());
    let (inner, _) = inner(vec![
        after(0, 200, "warm"),
        after(400, 200, "first"),
        after(0, 503, "busy"),
    ]);
    let service = tower::Layer::layer(&layer, inner);
    service.clone().oneshot(request()).await.unwrap();
    let started = Instant::now();
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(400));
    assert_eq!(text(response).await, "first");
    assert_eq!(*events.lock().unwrap(), ["sent"]);
}

#[tokio::test(start_paused = true)]
async fn a_first_attempt_failing_after_the_hedge_was_sent_is_the_answer() {
    let (layer, _) = layer(eager());
    let (inner, seen) = inner(vec![
        after(0, 200, "warm"),
        after(150, 500, "boom"),
        after(1_000, 200, "hedge"),
    ]);
    let service = tower::Layer::layer(&layer, inner);
    service.clone().oneshot(request()).await.unwrap();
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(seen.cancelled.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_sends_no_hedge() {
    // 5 %: two calls deposit a tenth of a hedge.
    let (layer, events) = layer(eager().max_extra_percent(5.0));
    let (inner, seen) = inner(vec![after(0, 200, "warm"), after(1_000, 200, "slow")]);
    let service = tower::Layer::layer(&layer, inner);
    service.clone().oneshot(request()).await.unwrap();
    let started = Instant::now();
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(text(response).await, "slow");
    assert_eq!(seen.started.load(Ordering::SeqCst), 2);
    assert_eq!(*events.lock().unwrap(), ["budget_exhausted"]);
}

#[tokio::test(start_paused = true)]
async fn hedges_never_exceed_the_budget_over_a_thousand_calls() {
    // The median (50 ms, so the 100 ms floor) as the delay: every slow call wants a hedge.
    let (layer, events) = layer(
        HedgeLayer::builder()
            .percentile(50.0)
            .min_samples(20)
            .max_extra_percent(5.0),
    );
    // One call in five is stuck for 10 s; the rest take 50 ms.
    let plans: Vec<Plan> = (0..2_000)
        .map(|index| {
            if index % 5 == 4 {
                after(10_000, 200, "slow")
            } else {
                after(50, 200, "ok")
            }
        })
        .collect();
    let (inner, seen) = inner(plans);
    let service = tower::Layer::layer(&layer, inner);
    for _ in 0..1_000 {
        service.clone().oneshot(request()).await.unwrap();
    }
    let sent = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| *e == "sent")
        .count();
    assert!(sent <= 50, "{sent} hedges for 1,000 calls at 5 %");
    // The budget was the limit, not the lack of slow calls.
    assert!(sent >= 40, "{sent}");
    let exhausted = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| *e == "budget_exhausted")
        .count();
    assert!(exhausted > 100, "{exhausted}");
    assert_eq!(seen.started.load(Ordering::SeqCst), 1_000 + sent);
}

#[tokio::test(start_paused = true)]
async fn streaming_requests_are_never_hedged() {
    let (layer, events) = layer(eager());
    let (inner, seen) = inner(vec![after(0, 200, "warm"), after(1_000, 200, "stream")]);
    let service = tower::Layer::layer(&layer, inner);
    service.clone().oneshot(request()).await.unwrap();
    let mut streaming = request();
    streaming.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("text/event-stream"),
    );
    let response = service.oneshot(streaming).await.unwrap();
    assert_eq!(text(response).await, "stream");
    assert_eq!(seen.started.load(Ordering::SeqCst), 2);
    assert!(events.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_is_sent_once() {
    let (layer, events) = layer(eager());
    let (inner, seen) =
        inner::<SendOnce<Body>>(vec![after(0, 200, "warm"), after(1_000, 200, "once")]);
    let service = tower::Layer::layer(&layer, inner);
    let once = || Request::new(SendOnce::new(Full::new(Bytes::from_static(b"{}"))));
    service.clone().oneshot(once()).await.unwrap();
    let response = service.oneshot(once()).await.unwrap();
    assert_eq!(text(response).await, "once");
    assert_eq!(seen.started.load(Ordering::SeqCst), 2);
    assert!(events.lock().unwrap().is_empty());
}

/// DeepSeek sends a `200` head, then blank lines while a non-streaming request waits: the
/// head is not the answer, the first non-blank byte is.
#[tokio::test(start_paused = true)]
async fn a_head_followed_by_blank_lines_is_still_hedged() {
    let (layer, events) = layer(eager());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let inner = tower::service_fn(move |_request: Request<Body>| {
        let call = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            type Frames = Vec<Result<http_body::Frame<Bytes>, Infallible>>;
            let body: http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible> = if call == 1 {
                // Blank lines, one per second, then the answer after a minute.
                let frames = futures_util::stream::unfold(0u32, |second| async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let frame = if second < 60 { "\n" } else { "{\"slow\":1}" };
                    (second <= 60)
                        .then(|| (Ok(http_body::Frame::data(Bytes::from(frame))), second + 1))
                });
                StreamBody::new(frames).boxed_unsync()
            } else {
                let frames: Frames = vec![Ok(http_body::Frame::data(Bytes::from_static(b"{}")))];
                StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
            };
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let service = tower::Layer::layer(&layer, inner);
    service.clone().oneshot(request()).await.unwrap();
    let started = Instant::now();
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "{}");
    assert_eq!(*events.lock().unwrap(), ["sent", "won"]);
}

#[tokio::test(start_paused = true)]
async fn blank_lines_read_while_racing_reach_the_caller_unchanged() {
    let (layer, _) = layer(eager());
    let inner = tower::service_fn(|_request: Request<Body>| async {
        let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"\n\n"))),
            Ok(http_body::Frame::data(Bytes::from_static(b"{\"a\":1}"))),
        ];
        Ok::<_, Infallible>(Response::new(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
    });
    let service = tower::Layer::layer(&layer, inner);
    let response = service.oneshot(request()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "\n\n{\"a\":1}");
}

#[tokio::test(start_paused = true)]
async fn an_error_from_the_first_attempt_is_returned_as_the_crate_error() {
    let (layer, _) = layer(eager());
    let inner = tower::service_fn(|_request: Request<Body>| async {
        Err::<Response<Body>, _>(crate::Error::new(ErrorKind::Server, "refused"))
    });
    let service = tower::Layer::layer(&layer, inner);
    let error = service.oneshot(request()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Server);
}

#[tokio::test(start_paused = true)]
async fn a_disabled_layer_never_hedges_nor_samples() {
    let (layer, events) = layer(eager().enabled(false));
    let (inner, seen) = inner(vec![after(0, 200, "warm"), after(1_000, 200, "slow")]);
    let service = tower::Layer::layer(&layer, inner);
    service.clone().oneshot(request()).await.unwrap();
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(text(response).await, "slow");
    assert_eq!(seen.started.load(Ordering::SeqCst), 2);
    assert!(events.lock().unwrap().is_empty());
    assert_eq!(layer.current_delay(), None);
    assert_eq!(layer.budget_available(), 0);
    assert!(!HedgeLayer::disabled().is_enabled());
}

/// A call that cannot be hedged (the layer off, or a stream) moves only its inner future: the
/// race of two attempts and a timer lives behind a pointer, not in every call's future.
#[test]
fn a_call_that_is_not_raced_carries_no_second_attempt() {
    let (inner, _) = inner::<Body>(Vec::new());
    let mut service = tower::Layer::layer(&HedgeLayer::disabled(), inner.clone());
    let mut bare = inner;
    let ours = std::mem::size_of_val(&service.call(request()));
    let theirs = std::mem::size_of_val(&bare.call(request()));
    assert!(
        ours <= theirs + 16,
        "hedge future {ours} bytes, inner {theirs}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_disabled_layer_passes_errors_on_as_the_crate_error() {
    let service = tower::Layer::layer(
        &HedgeLayer::disabled(),
        tower::service_fn(|_: Request<Body>| async {
            Err::<Response<Body>, _>(std::io::Error::other("connection reset"))
        }),
    );
    let error = service.oneshot(request()).await.unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Network(_)), "{error}");
    let source = std::error::Error::source(&error).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("connection reset"));
}

#[test]
fn every_bad_setting_is_a_config_error_naming_it() {
    let cases: [(HedgeLayerBuilder, &str); 8] = [
        (HedgeLayer::builder().percentile(0.0), "percentile"),
        (HedgeLayer::builder().percentile(100.5), "percentile"),
        (HedgeLayer::builder().percentile(f64::NAN), "percentile"),
        (
            HedgeLayer::builder().max_extra_percent(0.0),
            "max_extra_percent",
        ),
        (HedgeLayer::builder().burst(0), "burst"),
        (HedgeLayer::builder().min_samples(0), "min_samples"),
        (HedgeLayer::builder().window(Duration::ZERO), "window"),
        (
            HedgeLayer::builder()
                .min_delay(Duration::from_secs(10))
                .max_delay(Duration::from_secs(1)),
            "min_delay",
        ),
    ];
    for (builder, name) in cases {
        let error = builder.build().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.to_string().contains(name), "{error}");
    }
    assert!(HedgeLayer::builder().build().is_ok());
}
