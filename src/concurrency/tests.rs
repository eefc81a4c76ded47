//! Unit tests: the algorithms on plain numbers (reference cases 44-47), the layers' admission
//! and release (cases 48 and 50) with paused time.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, advance};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use super::*;
use crate::classify::TimeoutPhase;
use crate::error::BoxError;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn sample(rtt: Duration, in_flight: usize, dropped: bool) -> Sample {
    Sample::new(rtt, in_flight, dropped)
}

// ---- Case 44: AIMD ----

#[test]
fn case_44_aimd_success_with_half_in_flight_adds_one() {
    let mut aimd = Aimd::builder().initial_limit(20).build().unwrap();
    assert_eq!(aimd.update(&sample(ms(10), 10, false)), 21);
}

#[test]
fn case_44_aimd_drop_multiplies_by_backoff_ratio() {
    let mut aimd = Aimd::builder().initial_limit(30).build().unwrap();
    assert_eq!(aimd.update(&sample(ms(10), 30, true)), 27);
}

#[test]
fn case_44_aimd_stays_at_max() {
    let mut aimd = Aimd::builder()
        .initial_limit(20)
        .max_limit(21)
        .build()
        .unwrap();
    assert_eq!(aimd.update(&sample(ms(10), 20, false)), 21);
    assert_eq!(aimd.update(&sample(ms(10), 21, false)), 21);
}

#[test]
fn case_44_aimd_rtt_over_timeout_counts_as_drop() {
    let mut aimd = Aimd::builder().initial_limit(30).build().unwrap();
    // Exactly the timeout is not over it.
    assert_eq!(aimd.update(&sample(Duration::from_secs(5), 30, false)), 31);
    assert_eq!(aimd.update(&sample(ms(5001), 30, false)), 27);
}

#[test]
fn case_44_aimd_app_limited_is_unchanged() {
    let mut aimd = Aimd::builder().initial_limit(20).build().unwrap();
    assert_eq!(aimd.update(&sample(ms(10), 9, false)), 20);
}

#[test]
fn case_44_aimd_defaults_never_go_below_twenty() {
    let mut aimd = Aimd::default();
    assert_eq!(aimd.limit(), 20);
    // 20 × 0.9 = 18, clamped back to min_limit 20.
    assert_eq!(aimd.update(&sample(ms(10), 20, true)), 20);
    let mut low = Aimd::builder().min_limit(1).build().unwrap();
    assert_eq!(low.update(&sample(ms(10), 20, true)), 18);
}

#[test]
fn aimd_builder_rejects_bad_settings() {
    for (builder, needle) in [
        (Aimd::builder().backoff_ratio(1.0), "backoff_ratio"),
        (Aimd::builder().min_limit(0), "min_limit"),
        (Aimd::builder().initial_limit(300), "initial_limit"),
        (
            Aimd::builder().min_limit(50).max_limit(40),
            "above max_limit",
        ),
        (Aimd::builder().timeout(Duration::ZERO), "timeout"),
    ] {
        let error = builder.build().unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::Config);
        assert!(error.to_string().contains(needle), "{error}");
    }
}

// ---- Case 45: Vegas (Netflix `VegasLimitTest`) ----

fn vegas_test_limit() -> Vegas {
    Vegas::builder()
        .initial_limit(10)
        .max_limit(20)
        .alpha(VegasThreshold::Fixed(3.0))
        .beta(VegasThreshold::Fixed(6.0))
        .smoothing(1.0)
        .seed(7)
        .build()
        .unwrap()
}

#[test]
fn case_45_vegas_first_sample_sets_rtt_noload() {
    let mut vegas = vegas_test_limit();
    assert_eq!(vegas.update(&sample(ms(10), 10, false)), 10);
    assert_eq!(vegas.rtt_noload(), ms(10));
}

#[test]
fn case_45_vegas_no_queue_increases_by_beta_to_16() {
    let mut vegas = vegas_test_limit();
    vegas.update(&sample(ms(10), 10, false));
    assert_eq!(vegas.update(&sample(ms(10), 11, false)), 16);
}

#[test]
fn case_45_vegas_long_queue_decreases_to_9() {
    let mut vegas = vegas_test_limit();
    vegas.update(&sample(ms(10), 10, false));
    assert_eq!(vegas.update(&sample(ms(50), 11, false)), 9);
}

#[test]
fn case_45_vegas_queue_between_alpha_and_beta_is_unchanged() {
    let mut vegas = vegas_test_limit();
    vegas.update(&sample(ms(10), 10, false));
    assert_eq!(vegas.update(&sample(ms(14), 14, false)), 10);
}

#[test]
fn case_45_vegas_large_limit_does_not_overflow_10024() {
    let mut vegas = Vegas::builder()
        .initial_limit(10_000)
        .max_limit(20_000)
        .seed(7)
        .build()
        .unwrap();
    assert_eq!(
        vegas.update(&sample(Duration::from_secs(10), 5000, false)),
        10_000
    );
    assert_eq!(
        vegas.update(&sample(Duration::from_secs(10), 6000, false)),
        10_024
    );
}

#[test]
fn case_45_vegas_smoothed_decrease_75_then_56() {
    let mut vegas = Vegas::builder()
        .decrease(|limit| limit / 2.0)
        .smoothing(0.5)
        .initial_limit(100)
        .max_limit(200)
        .seed(7)
        .build()
        .unwrap();
    assert_eq!(vegas.update(&sample(ms(10), 100, false)), 100);
    assert_eq!(vegas.update(&sample(ms(20), 100, false)), 75);
    assert_eq!(vegas.update(&sample(ms(20), 100, false)), 56);
}

#[test]
fn vegas_drop_decreases() {
    let mut vegas = vegas_test_limit();
    vegas.update(&sample(ms(10), 10, false));
    assert_eq!(vegas.update(&sample(ms(10), 10, true)), 9);
}

#[test]
fn vegas_probe_forgets_rtt_noload() {
    let mut vegas = Vegas::builder()
        .initial_limit(1)
        .probe_multiplier(1.0)
        .seed(7)
        .build()
        .unwrap();
    vegas.update(&sample(ms(10), 1, false));
    // jitter (< 1) × multiplier 1 × limit 1 ≤ 1 sample: every sample is a probe.
    vegas.update(&sample(ms(40), 1, false));
    assert_eq!(vegas.rtt_noload(), ms(40));
}

// ---- Case 46: Gradient2 ----

#[test]
fn case_46_gradient2_app_limited_is_unchanged() {
    let mut gradient = Gradient2::builder().build().unwrap();
    assert_eq!(gradient.update(&sample(ms(100), 9, false)), 20);
    assert_eq!(gradient.estimate(), 20.0);
}

#[test]
fn case_46_gradient2_long_rtt_warms_up_as_a_mean_of_ten() {
    let mut gradient = Gradient2::builder().build().unwrap();
    for i in 1..=10 {
        gradient.update(&sample(ms(10 * i), 1, false));
    }
    assert!((gradient.long_rtt() - 0.055).abs() < 1e-12);
    // The eleventh is averaged exponentially over 600 samples.
    gradient.update(&sample(ms(55 + 601), 1, false));
    assert!((gradient.long_rtt() - (0.055 + 0.601 * 2.0 / 601.0)).abs() < 1e-12);
}

#[test]
fn case_46_gradient2_long_over_twice_short_decays() {
    let mut gradient = Gradient2::builder().build().unwrap();
    for _ in 0..10 {
        gradient.update(&sample(ms(100), 1, false));
    }
    gradient.update(&sample(ms(10), 1, false));
    let factor = 2.0 / 601.0;
    let expected = (0.1 * (1.0 - factor) + 0.01 * factor) * 0.95;
    assert!((gradient.long_rtt() - expected).abs() < 1e-12);
}

#[test]
fn case_46_gradient2_steady_latency_20_to_20_8() {
    let mut gradient = Gradient2::builder().build().unwrap();
    assert_eq!(gradient.update(&sample(ms(100), 10, false)), 20);
    assert!((gradient.estimate() - 20.8).abs() < 1e-9);
}

#[test]
fn case_46_gradient2_short_twice_long_19_8_with_min_1() {
    let mut gradient = Gradient2::builder().min_limit(1).build().unwrap();
    gradient.update(&sample(ms(50), 1, false));
    gradient.update(&sample(ms(50), 1, false));
    // long = (50 + 50 + 200) / 3 = 100 = short / 2: gradient 1.5 × 0.5 = 0.75.
    gradient.update(&sample(ms(200), 10, false));
    assert!((gradient.estimate() - 19.8).abs() < 1e-9);
}

#[test]
fn case_46_gradient2_never_below_min_limit() {
    let mut gradient = Gradient2::builder().min_limit(10).build().unwrap();
    // Warm the long average up on fast calls, then slow everything down 500 times.
    for _ in 0..10 {
        gradient.update(&sample(ms(10), 1, false));
    }
    for _ in 0..60 {
        gradient.update(&sample(Duration::from_secs(5), 20, false));
        assert!(gradient.estimate() >= 10.0);
    }
    assert_eq!(gradient.limit(), 10);
}

#[test]
fn gradient2_ignores_drops() {
    let mut gradient = Gradient2::builder().build().unwrap();
    gradient.update(&sample(ms(100), 10, true));
    assert!((gradient.estimate() - 20.8).abs() < 1e-9);
}

// ---- Case 47: Envoy gradient controller ----

fn envoy_fixed(limit: usize) -> EnvoyGradient {
    EnvoyGradient::builder()
        .initial_limit(limit)
        .fixed_min_rtt(ms(100))
        .update_interval(ms(100))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn case_47_envoy_gradient_derived_examples_57_214_110() {
    for (sample_rtt, expected) in [(250, 57), (50, 214), (125, 110)] {
        let mut envoy = envoy_fixed(100);
        assert_eq!(envoy.update(&sample(ms(sample_rtt), 1, false)), expected);
    }
}

#[tokio::test(start_paused = true)]
async fn case_47_envoy_gradient_updates_once_per_interval() {
    let mut envoy = envoy_fixed(100);
    let start = Instant::now();
    assert_eq!(envoy.update(&sample(ms(125), 1, false)), 110);
    // Completed before the next update (at 225 ms): only recorded.
    let early = Sample::new(ms(50), 1, false).started_at(start);
    assert_eq!(envoy.update(&early), 110);
    // Completed after it: p50 of {50, 125} ms is 125 ms, gradient 1: 110 + sqrt(110) = 120.
    let later = Sample::new(ms(125), 1, false).started_at(start + ms(200));
    assert_eq!(envoy.update(&later), 120);
}

fn envoy_measuring() -> EnvoyGradient {
    EnvoyGradient::builder()
        .initial_limit(100)
        .update_interval(ms(100))
        .min_rtt_interval(Duration::from_secs(3600))
        .jitter(0.0)
        .seed(1)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn case_47_envoy_min_rtt_window_pins_the_limit_ignores_earlier_calls_ends_after_50() {
    let before = Instant::now();
    advance(ms(1)).await;
    let mut envoy = envoy_measuring();
    assert!(envoy.measuring_min_rtt());
    assert_eq!(envoy.limit(), 3);
    // A call started before the window is ignored, however fast.
    let stale = Sample::new(ms(1), 1, false).started_at(before);
    for _ in 0..60 {
        assert_eq!(envoy.update(&stale), 3);
    }
    assert!(envoy.measuring_min_rtt());
    advance(ms(1)).await;
    for _ in 0..49 {
        assert_eq!(envoy.update(&sample(ms(100), 1, false)), 3);
    }
    assert!(envoy.measuring_min_rtt());
    // The 50th sample ends the window: minRTT = p50, the saved limit comes back.
    assert_eq!(envoy.update(&sample(ms(100), 1, false)), 100);
    assert!(!envoy.measuring_min_rtt());
    assert_eq!(envoy.min_rtt(), Some(ms(100)));
}

#[tokio::test(start_paused = true)]
async fn case_47_envoy_five_windows_at_min_start_a_min_rtt_recalculation() {
    let mut envoy = envoy_measuring();
    for _ in 0..50 {
        envoy.update(&sample(ms(100), 1, false));
    }
    assert_eq!(envoy.limit(), 100);
    let mut at_min = 0;
    for _ in 0..40 {
        advance(ms(100)).await;
        // A 10 s call that completes now.
        let slow = Sample::new(Duration::from_secs(10), 1, false)
            .started_at(Instant::now() - Duration::from_secs(10));
        let limit = envoy.update(&slow);
        if envoy.measuring_min_rtt() {
            break;
        }
        if limit == 3 {
            at_min += 1;
        }
    }
    // Gradient 0.5 each time: 100 → 57 → 33 → 20 → 13 → 9 → 6 → 4 → 3, then 3 four times;
    // the fifth update at 3 starts a minRTT window.
    assert_eq!(at_min, 4);
    assert!(envoy.measuring_min_rtt());
    assert_eq!(envoy.limit(), 3);
}

#[tokio::test(start_paused = true)]
async fn envoy_schedules_the_next_min_rtt_window_after_the_interval() {
    let mut envoy = EnvoyGradient::builder()
        .update_interval(ms(100))
        .min_rtt_interval(Duration::from_secs(60))
        .min_rtt_request_count(1)
        .jitter(0.0)
        .build()
        .unwrap();
    envoy.update(&sample(ms(100), 1, false));
    assert!(!envoy.measuring_min_rtt());
    advance(Duration::from_secs(61)).await;
    envoy.update(&sample(ms(100), 1, false));
    assert!(envoy.measuring_min_rtt());
}

#[test]
fn envoy_builder_rejects_bad_settings() {
    assert!(EnvoyGradient::builder().percentile(0.0).build().is_err());
    assert!(
        EnvoyGradient::builder()
            .update_interval(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(EnvoyGradient::builder().min_concurrency(0).build().is_err());
    assert!(EnvoyGradient::builder().jitter(150.0).build().is_err());
}

// ---- The layers: a controllable inner service ----

/// A response body the test ends (drop the sender), fails, or feeds.
struct TestBody {
    frames: mpsc::UnboundedReceiver<Result<Bytes, BoxError>>,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.frames
            .poll_recv(cx)
            .map(|frame| frame.map(|frame| frame.map(Frame::data)))
    }
}

type BodyTx = mpsc::UnboundedSender<Result<Bytes, BoxError>>;

fn test_body() -> (BodyTx, TestBody) {
    let (tx, frames) = mpsc::unbounded_channel();
    (tx, TestBody { frames })
}

type Reply = Result<Response<TestBody>, BoxError>;
type TestRequest = Request<oneshot::Receiver<Reply>>;

/// Each request carries the receiver of its own reply.
fn inner() -> impl Service<
    TestRequest,
    Response = Response<TestBody>,
    Error = BoxError,
    Future = impl Future<Output = Reply> + Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|request: TestRequest| async move {
        request
            .into_body()
            .await
            .unwrap_or_else(|_| Err("reply sender dropped".into()))
    })
}

struct Call<T> {
    reply: oneshot::Sender<Reply>,
    handle: JoinHandle<Result<T, crate::Error>>,
}

impl<T> Call<T> {
    /// Answers with a 200 whose body stays open until the returned sender is dropped.
    fn answer(self, status: StatusCode) -> (BodyTx, JoinHandle<Result<T, crate::Error>>) {
        let (tx, body) = test_body();
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let _ = self.reply.send(Ok(response));
        (tx, self.handle)
    }
}

fn start<S>(service: &mut S) -> Call<S::Response>
where
    S: Service<TestRequest, Error = crate::Error>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    // Called without `poll_ready`: the inner `service_fn` is always ready, and the layers
    // must not depend on it.
    let future = service.call(Request::new(rx));
    Call {
        reply,
        handle: tokio::spawn(future),
    }
}

fn refused<S>(service: &mut S) -> crate::Error
where
    S: Service<TestRequest, Error = crate::Error>,
    S::Response: std::fmt::Debug,
{
    let (_reply, rx) = oneshot::channel();
    service
        .call(Request::new(rx))
        .now_or_never()
        .expect("a shed call fails at once")
        .expect_err("shed")
}

fn fixed(max: usize) -> ConcurrencyLimitLayer {
    ConcurrencyLimitLayer::builder()
        .max_in_flight(max)
        .build()
        .unwrap()
}

fn adaptive(limit: usize) -> AdaptiveConcurrencyLayer {
    AdaptiveConcurrencyLayer::builder()
        .algorithm(
            Aimd::builder()
                .initial_limit(limit)
                .min_limit(1)
                .max_limit(limit)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

// ---- Case 48: admission and release (tower `ConcurrencyLimit`'s tests, both layers) ----

#[tokio::test(start_paused = true)]
async fn case_48_outstanding_equal_to_limit_is_rejected_fixed_and_adaptive() {
    let fixed = fixed(2);
    let mut service = fixed.layer(inner());
    let (_a, _b) = (start(&mut service), start(&mut service));
    assert_eq!(fixed.in_flight(), 2);
    let error = refused(&mut service);
    assert_eq!(error.kind(), crate::ErrorKind::Overloaded);

    let adaptive = adaptive(2);
    let mut service = adaptive.layer(inner());
    let (_a, _b) = (start(&mut service), start(&mut service));
    assert_eq!(adaptive.in_flight(), 2);
    let error = refused(&mut service);
    assert_eq!(error.kind(), crate::ErrorKind::Overloaded);
    assert_eq!(
        adaptive.in_flight(),
        2,
        "a shed call leaves no count behind"
    );
}

#[tokio::test(start_paused = true)]
async fn case_48_service_drop_frees_capacity() {
    // Nothing is reserved in `poll_ready`: a ready clone that is dropped, or never called,
    // holds no slot; dropping the service that made a call does not cancel the call's slot
    // until the call ends.
    let layer = fixed(1);
    let mut service = layer.layer(inner());
    let mut ready = service.clone();
    ServiceExt::<TestRequest>::ready(&mut ready).await.unwrap();
    drop(ready);
    let call = start(&mut service);
    drop(service);
    assert_eq!(layer.in_flight(), 1);
    let (body, handle) = call.answer(StatusCode::OK);
    let response = handle.await.unwrap().unwrap();
    drop(body);
    drop(response);
    assert_eq!(layer.in_flight(), 0);
    let mut service = layer.layer(inner());
    let _call = start(&mut service);
    assert_eq!(layer.in_flight(), 1);
}

#[tokio::test(start_paused = true)]
async fn case_48_response_error_releases_capacity() {
    for layer in [Either::Fixed(fixed(1)), Either::Adaptive(adaptive(1))] {
        let mut service = layer.service();
        let call = start(&mut service);
        let _ = call.reply.send(Err("upstream reset".into()));
        assert!(call.handle.await.unwrap().is_err());
        assert_eq!(layer.in_flight(), 0);
        let _next = start(&mut service);
        assert_eq!(layer.in_flight(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn case_48_response_future_drop_releases_capacity() {
    for layer in [Either::Fixed(fixed(1)), Either::Adaptive(adaptive(1))] {
        let mut service = layer.service();
        let (_reply, rx) = oneshot::channel();
        let future = service.call(Request::new(rx));
        assert_eq!(layer.in_flight(), 1);
        drop(future);
        assert_eq!(layer.in_flight(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn case_48_the_slot_is_held_until_the_body_ends() {
    for layer in [Either::Fixed(fixed(1)), Either::Adaptive(adaptive(1))] {
        let mut service = layer.service();
        let (body, handle) = start(&mut service).answer(StatusCode::OK);
        let response = handle.await.unwrap().unwrap();
        assert!(response.body().holds_slot());
        assert_eq!(layer.in_flight(), 1, "the head is not the end of the call");
        refused(&mut service);
        body.send(Ok(Bytes::from("data: {}\n\n"))).unwrap();
        drop(body);
        let collected = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(collected, "data: {}\n\n");
        assert_eq!(layer.in_flight(), 0);
        let _next = start(&mut service);
    }
}

#[tokio::test(start_paused = true)]
async fn case_48_body_error_or_drop_releases_the_slot() {
    for layer in [Either::Fixed(fixed(1)), Either::Adaptive(adaptive(1))] {
        let mut service = layer.service();
        let (body, handle) = start(&mut service).answer(StatusCode::OK);
        let mut response = handle.await.unwrap().unwrap();
        body.send(Err("stream cut".into())).unwrap();
        let frame = response.body_mut().frame().await.unwrap();
        assert!(frame.is_err());
        assert_eq!(layer.in_flight(), 0);

        let (_body, handle) = start(&mut service).answer(StatusCode::OK);
        let response = handle.await.unwrap().unwrap();
        assert_eq!(layer.in_flight(), 1);
        drop(response);
        assert_eq!(layer.in_flight(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn release_at_head_frees_the_slot_when_the_head_arrives() {
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .release_at_head(true)
        .build()
        .unwrap();
    let mut service = layer.layer(inner());
    let (_body, handle) = start(&mut service).answer(StatusCode::OK);
    let response = handle.await.unwrap().unwrap();
    assert!(!response.body().holds_slot());
    assert_eq!(layer.in_flight(), 0);
}

/// Either layer, to run one test over both.
enum Either {
    Fixed(ConcurrencyLimitLayer),
    Adaptive(AdaptiveConcurrencyLayer),
}

type BoxedService =
    tower::util::BoxService<TestRequest, Response<ConcurrencyBody<TestBody>>, crate::Error>;

impl Either {
    fn service(&self) -> BoxedService {
        match self {
            Either::Fixed(layer) => BoxedService::new(layer.layer(inner())),
            Either::Adaptive(layer) => BoxedService::new(layer.layer(inner())),
        }
    }

    fn in_flight(&self) -> usize {
        match self {
            Either::Fixed(layer) => layer.in_flight(),
            Either::Adaptive(layer) => layer.in_flight(),
        }
    }
}

// ---- Case 50: the bulkhead ----

#[tokio::test(start_paused = true)]
async fn case_50_bulkhead_25_permits_wait_0_rejects_the_26th_at_once() {
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(25)
        .build()
        .unwrap();
    let mut service = layer.layer(inner());
    let calls: Vec<_> = (0..25).map(|_| start(&mut service)).collect();
    assert_eq!(layer.in_flight(), 25);
    let error = refused(&mut service);
    assert_eq!(error.kind(), crate::ErrorKind::Overloaded);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(error.outcome(), crate::classify::Outcome::Rejected);
    drop(calls);
}

#[tokio::test(start_paused = true)]
async fn case_50_bulkhead_with_wait_admits_when_a_permit_frees_in_time() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&events);
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(25)
        .max_wait(ms(100))
        .listener(move |event: &ConcurrencyEvent<'_>| {
            if let ConcurrencyEvent::Queued { waited, .. } = event {
                heard.lock().unwrap().push(*waited);
            }
        })
        .build()
        .unwrap();
    let mut service = layer.layer(inner());
    let mut calls: Vec<_> = (0..25).map(|_| start(&mut service)).collect();
    let waiting = start(&mut service);
    tokio::task::yield_now().await;
    assert_eq!(layer.queued(), 1);
    advance(ms(60)).await;
    // One call ends (error): its permit goes to the waiting call.
    let first = calls.remove(0);
    let _ = first.reply.send(Err("done".into()));
    let _ = first.handle.await;
    let (_body, handle) = waiting.answer(StatusCode::OK);
    let response = handle.await.unwrap();
    assert!(response.is_ok(), "admitted within the wait");
    assert_eq!(layer.queued(), 0);
    assert_eq!(layer.in_flight(), 25);
    assert_eq!(*events.lock().unwrap(), vec![ms(60)]);
}

#[tokio::test(start_paused = true)]
async fn case_50_bulkhead_with_wait_sheds_when_no_permit_frees_in_time() {
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(25)
        .max_wait(ms(100))
        .build()
        .unwrap();
    let mut service = layer.layer(inner());
    let _calls: Vec<_> = (0..25).map(|_| start(&mut service)).collect();
    let started = Instant::now();
    let waiting = start(&mut service);
    let error = waiting.handle.await.unwrap().unwrap_err();
    assert_eq!(error.kind(), crate::ErrorKind::Overloaded);
    assert_eq!(started.elapsed(), ms(100));
    assert_eq!(layer.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn max_queue_sheds_beyond_the_waiters_it_allows() {
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_wait(Duration::from_secs(10))
        .max_queue(1)
        .build()
        .unwrap();
    let mut service = layer.layer(inner());
    let _running = start(&mut service);
    let waiting = start(&mut service);
    assert_eq!(layer.queued(), 1);
    let error = refused(&mut service);
    assert_eq!(error.kind(), crate::ErrorKind::Overloaded);
    // A waiting call that is dropped leaves the queue and takes nothing.
    waiting.handle.abort();
    let _ = waiting.handle.await;
    assert_eq!(layer.queued(), 0);
    assert_eq!(layer.in_flight(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_is_sent_once_with_the_ready_service() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let counting = tower::service_fn(move |request: TestRequest| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            request
                .into_body()
                .await
                .unwrap_or_else(|_| Err("reply sender dropped".into()))
        }
    });
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut service = layer.layer(counting);
    let running = start(&mut service);
    let waiting = start(&mut service);
    tokio::task::yield_now().await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    let _ = running.reply.send(Err("done".into()));
    let _ = running.handle.await;
    let (_body, handle) = waiting.answer(StatusCode::OK);
    assert!(handle.await.unwrap().is_ok());
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
}

// ---- The shed error ----

#[test]
fn shed_error_is_a_503_with_retry_after_rounded_up_never_zero() {
    let error = overloaded("inbound", 10, 10, ms(300));
    let response = error.to_http_response();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
    assert!(response.body().contains("server_error"));
    assert!(error.to_string().contains("\"inbound\""), "{error}");
    let zero = ConcurrencyLimitLayer::builder()
        .retry_after(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(zero.kind(), crate::ErrorKind::Config);
    assert!(
        AdaptiveConcurrencyLayer::builder()
            .retry_after(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(
        ConcurrencyLimitLayer::builder()
            .max_in_flight(0)
            .build()
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn shed_event_names_the_limiter_in_flight_and_limit() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&events);
    let layer = ConcurrencyLimitLayer::builder()
        .name("inbound")
        .max_in_flight(1)
        .listener(move |event: &ConcurrencyEvent<'_>| {
            if let ConcurrencyEvent::Shed {
                limiter,
                in_flight,
                limit,
            } = event
            {
                heard
                    .lock()
                    .unwrap()
                    .push((limiter.to_string(), *in_flight, *limit));
            }
        })
        .build()
        .unwrap();
    let mut service = layer.layer(inner());
    let _running = start(&mut service);
    refused(&mut service);
    assert_eq!(*events.lock().unwrap(), vec![("inbound".to_owned(), 1, 1)]);
}

// ---- The adaptive layer's samples ----

/// Records samples; the limit stays put.
struct Recorder {
    limit: usize,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl LimitAlgorithm for Recorder {
    fn limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        self.samples.lock().unwrap().push(*sample);
        self.limit
    }
}

fn recording(measure: SampleMeasure) -> (AdaptiveConcurrencyLayer, Arc<Mutex<Vec<Sample>>>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let layer = AdaptiveConcurrencyLayer::builder()
        .algorithm(Recorder {
            limit: 10,
            samples: Arc::clone(&samples),
        })
        .measure(measure)
        .build()
        .unwrap();
    (layer, samples)
}

#[tokio::test(start_paused = true)]
async fn adaptive_measures_to_the_head_by_default_and_to_the_body_end_on_request() {
    for (measure, expected) in [
        (SampleMeasure::Head, ms(10)),
        (SampleMeasure::BodyEnd, ms(60)),
    ] {
        let (layer, samples) = recording(measure);
        let mut service = layer.layer(inner());
        let _other = start(&mut service);
        let call = start(&mut service);
        advance(ms(10)).await;
        let (body, handle) = call.answer(StatusCode::OK);
        let response = handle.await.unwrap().unwrap();
        advance(ms(50)).await;
        drop(body);
        response.into_body().collect().await.unwrap();
        let samples = samples.lock().unwrap();
        assert_eq!(samples.len(), 1, "{measure:?}");
        assert_eq!(samples[0].rtt, expected, "{measure:?}");
        assert_eq!(samples[0].in_flight, 2);
        assert!(!samples[0].dropped);
    }
}

#[tokio::test(start_paused = true)]
async fn adaptive_drops_are_timeouts_429_and_503_others_give_no_sample() {
    let (layer, samples) = recording(SampleMeasure::Head);
    let mut service = layer.layer(inner());
    for status in [429, 503, 500, 400, 200] {
        let status = StatusCode::from_u16(status).unwrap();
        let (_body, handle) = start(&mut service).answer(status);
        let _ = handle.await.unwrap();
    }
    let call = start(&mut service);
    let timeout = crate::Error::new(crate::ErrorKind::Timeout(TimeoutPhase::Headers), "headers");
    let _ = call.reply.send(Err(timeout.into()));
    let _ = call.handle.await;
    let call = start(&mut service);
    let _ = call.reply.send(Err("connection reset".into()));
    let _ = call.handle.await;
    // A call whose future is dropped gives no sample.
    let (_reply, rx) = oneshot::channel();
    drop(service.call(Request::new(rx)));
    let dropped: Vec<bool> = samples.lock().unwrap().iter().map(|s| s.dropped).collect();
    assert_eq!(dropped, vec![true, true, false, true]);
}

#[tokio::test(start_paused = true)]
async fn adaptive_body_timeout_counts_as_a_drop_when_measuring_to_the_body_end() {
    let (layer, samples) = recording(SampleMeasure::BodyEnd);
    let mut service = layer.layer(inner());
    let (body, handle) = start(&mut service).answer(StatusCode::OK);
    let mut response = handle.await.unwrap().unwrap();
    let idle = crate::Error::new(crate::ErrorKind::Timeout(TimeoutPhase::Idle), "idle");
    body.send(Err(idle.into())).unwrap();
    assert!(response.body_mut().frame().await.unwrap().is_err());
    let (body, handle) = start(&mut service).answer(StatusCode::OK);
    let response = handle.await.unwrap().unwrap();
    drop(body);
    drop(response); // dropped before its end was read: no sample
    let dropped: Vec<bool> = samples.lock().unwrap().iter().map(|s| s.dropped).collect();
    assert_eq!(dropped, vec![true]);
}

#[tokio::test(start_paused = true)]
async fn adaptive_aimd_moves_the_enforced_limit_and_reports_it() {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&changes);
    let layer = AdaptiveConcurrencyLayer::builder()
        .algorithm(
            Aimd::builder()
                .initial_limit(2)
                .min_limit(1)
                .max_limit(10)
                .build()
                .unwrap(),
        )
        .listener(move |event: &ConcurrencyEvent<'_>| {
            if let ConcurrencyEvent::LimitChanged { old, new, .. } = event {
                heard.lock().unwrap().push((*old, *new));
            }
        })
        .build()
        .unwrap();
    let mut service = layer.layer(inner());
    // Two in flight of 2: the first success grows the limit to 3, so a third call fits.
    let first = start(&mut service);
    let _second = start(&mut service);
    let (_body, handle) = first.answer(StatusCode::OK);
    let _response = handle.await.unwrap().unwrap();
    assert_eq!(layer.limit(), 3);
    let third = start(&mut service);
    assert_eq!(layer.in_flight(), 3);
    // A 503 backs off: floor(3 × 0.9) = 2.
    let (_body, handle) = third.answer(StatusCode::SERVICE_UNAVAILABLE);
    let _ = handle.await.unwrap();
    assert_eq!(layer.limit(), 2);
    assert_eq!(*changes.lock().unwrap(), vec![(2, 3), (3, 2)]);
    // Two still in flight (an open body, a pending call) of 2: the next call is shed.
    refused(&mut service);
}

// ---- The fixed limit's queue: order and wake-ups ----

#[tokio::test(start_paused = true)]
async fn waiters_are_admitted_first_come_first_served() {
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut service = layer.layer(inner());
    let (body, handle) = start(&mut service).answer(StatusCode::OK);
    let holder = handle.await.unwrap().unwrap();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        waiters.push(start(&mut service));
        tokio::task::yield_now().await;
    }
    assert_eq!(layer.queued(), 3);
    drop(body);
    drop(holder);
    for (index, waiter) in waiters.into_iter().enumerate() {
        // Only the longest waiter holds the slot: the others are still queued.
        tokio::task::yield_now().await;
        assert_eq!(layer.queued(), 2 - index, "waiter {index}");
        let (body, handle) = waiter.answer(StatusCode::OK);
        let response = handle.await.unwrap().unwrap();
        drop(body);
        drop(response);
    }
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_woken_waiter_that_is_cancelled_passes_the_slot_on() {
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut service = layer.layer(inner());
    let (body, handle) = start(&mut service).answer(StatusCode::OK);
    let holder = handle.await.unwrap().unwrap();
    let first = start(&mut service);
    let second = start(&mut service);
    tokio::task::yield_now().await;
    // The release wakes `first`, which is cancelled before it runs.
    drop(body);
    drop(holder);
    first.handle.abort();
    let (_body, handle) = second.answer(StatusCode::OK);
    let response = handle.await.unwrap();
    assert!(response.is_ok(), "the wake-up went on to the next waiter");
    assert_eq!(layer.in_flight(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_contention_the_limit_holds_and_every_waiter_is_served() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (running_in, peak_in) = (Arc::clone(&running), Arc::clone(&peak));
    let busy = tower::service_fn(move |_: Request<()>| {
        let (running, peak) = (Arc::clone(&running_in), Arc::clone(&peak_in));
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    });
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(3)
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let service = layer.layer(busy);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(Request::new(())).await.map(drop) })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 3);
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(layer.queued(), 0);
}
