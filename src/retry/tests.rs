//! Unit tests: reference cases 21-38 (`resilience-semantics.md` §8.3-8.5) on paused time
//! with a scripted in-process service.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::ErrorKind;
use crate::classify::{Outcome, TimeoutPhase};

type Body = BoxBody<Bytes, io::Error>;

/// One scripted answer of the fake upstream.
#[derive(Clone)]
enum Step {
    Status(u16, &'static [(&'static str, &'static str)]),
    Fail(io::ErrorKind),
    /// Waits, then the inner step.
    After(Duration, Box<Step>),
    /// A 200 `text/event-stream` whose frames each come after their delay; `Err` ends it
    /// with a reset.
    Sse(Vec<(Duration, Result<&'static str, ()>)>),
    /// A 200 JSON body.
    Json(&'static str),
}

#[derive(Clone, Default)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Step>>>,
    calls: Arc<Mutex<Vec<Bytes>>>,
    ready: bool,
}

impl Upstream {
    fn new(steps: impl IntoIterator<Item = Step>) -> Upstream {
        Upstream {
            script: Arc::new(Mutex::new(steps.into_iter().collect())),
            ..Upstream::default()
        }
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

fn respond(step: Step) -> BoxFuture<'static, Result<Response<Body>, io::Error>> {
    Box::pin(async move {
        match step {
            Step::Status(status, headers) => {
                let mut response = Response::new(
                    Full::new(Bytes::from_static(b"{\"error\":{}}"))
                        .map_err(|never: Infallible| match never {})
                        .boxed(),
                );
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                for (name, value) in headers {
                    response.headers_mut().insert(*name, value.parse().unwrap());
                }
                Ok(response)
            }
            Step::Fail(kind) => Err(io::Error::from(kind)),
            Step::After(wait, step) => {
                tokio::time::sleep(wait).await;
                respond(*step).await
            }
            Step::Json(text) => Ok(Response::builder()
                .header("content-type", "application/json")
                .body(
                    Full::new(Bytes::from_static(text.as_bytes()))
                        .map_err(|never: Infallible| match never {})
                        .boxed(),
                )
                .unwrap()),
            Step::Sse(frames) => {
                let stream =
                    futures_util::stream::unfold(frames.into_iter(), |mut frames| async move {
                        let (wait, frame) = frames.next()?;
                        tokio::time::sleep(wait).await;
                        let item = match frame {
                            Ok(text) => Ok(Frame::data(Bytes::from_static(text.as_bytes()))),
                            Err(()) => Err(io::Error::from(io::ErrorKind::ConnectionReset)),
                        };
                        Some((item, frames))
                    });
                Ok(Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap())
            }
        }
    })
}

impl Service<Request<Full<Bytes>>> for Upstream {
    type Response = Response<Body>;
    type Error = io::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, io::Error>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        self.ready = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        // A clone that was not driven to ready must never be called.
        assert!(std::mem::take(&mut self.ready), "called without poll_ready");
        let body = request.into_body();
        let bytes = futures_util::FutureExt::now_or_never(body.collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        self.calls.lock().unwrap().push(bytes);
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Step::Json("{\"ok\":true}"));
        respond(step)
    }
}

fn quick() -> RetryLayerBuilder {
    RetryLayer::builder()
        .backoff(
            Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(10))
                .jitter(Jitter::None),
        )
        .no_budget()
}

fn request() -> Request<Full<Bytes>> {
    Request::new(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
}

type Events = Arc<Mutex<Vec<String>>>;

fn recorder() -> (Events, impl RetryListener) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    (events, move |event: &RetryEvent<'_>| {
        let text = match event {
            RetryEvent::Retry {
                attempt,
                delay,
                outcome,
                ..
            } => {
                format!("retry {attempt} {delay:?} {outcome}")
            }
            RetryEvent::BudgetExhausted { attempts, .. } => format!("budget {attempts}"),
            RetryEvent::GaveUp {
                attempts, reason, ..
            } => {
                format!("gave up {attempts} {}", reason.as_str())
            }
            RetryEvent::Succeeded { attempts, .. } => format!("succeeded {attempts}"),
        };
        sink.lock().unwrap().push(text);
    })
}

async fn body_text(response: Response<RetryBody<Body>>) -> Result<String, io::Error> {
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(bytes.to_vec()).unwrap())
}

const NONE: &[(&str, &str)] = &[];

// ---- 8.3 back-off functions ----

#[test]
fn case_21_resilience4j_interval_vectors() {
    let constant = Backoff::constant(Duration::from_millis(500));
    for n in 1..5 {
        assert_eq!(
            constant.delay(n, Duration::ZERO, 0.7),
            Some(Duration::from_millis(500))
        );
    }
    let exponential =
        Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(100))
            .jitter(Jitter::None);
    for n in 1..=10 {
        let expected = Duration::from_millis(100 * 2u64.pow(n - 1));
        assert_eq!(
            exponential.delay(n, Duration::ZERO, 0.0),
            Some(expected),
            "n={n}"
        );
    }
    for n in 11..=13 {
        assert_eq!(
            exponential.delay(n, Duration::ZERO, 0.0),
            Some(Duration::from_secs(100))
        );
    }
    let default_factor =
        Backoff::exponential(Duration::from_millis(5000), 1.5, Duration::from_secs(3600))
            .jitter(Jitter::None);
    let first_three: Vec<_> = (1..=3)
        .map(|n| {
            default_factor
                .delay(n, Duration::ZERO, 0.0)
                .unwrap()
                .as_millis()
        })
        .collect();
    assert_eq!(first_three, [5000, 7500, 11250]);
    let randomized =
        Backoff::constant(Duration::from_millis(100)).jitter(Jitter::Proportional(0.5));
    assert_eq!(
        randomized.delay(1, Duration::ZERO, 0.0),
        Some(Duration::from_millis(50))
    );
    assert!(randomized.delay(1, Duration::ZERO, 0.999_999).unwrap() <= Duration::from_millis(150));
    assert_eq!(
        exponential.delay(0, Duration::ZERO, 0.5),
        None,
        "attempt 0 is not a retry"
    );
}

#[test]
fn case_22_jitter_bounds_with_a_seeded_rng() {
    let mut rng = fastrand::Rng::with_seed(7);
    let base = Duration::from_millis(5);
    let cap = Duration::from_secs(2);
    let full = Backoff::exponential(base, 2.0, cap);
    let equal = full.jitter(Jitter::Equal);
    let decorrelated = Backoff::decorrelated(base, cap);
    let mut previous = Duration::ZERO;
    for n in 1..=15 {
        for _ in 0..200 {
            let expo = full.expo(n).unwrap();
            let wait = full.delay(n, Duration::ZERO, rng.f64()).unwrap();
            assert!(wait <= expo, "full {n}: {wait:?} > {expo:?}");
            let wait = equal.delay(n, Duration::ZERO, rng.f64()).unwrap();
            assert!(wait >= expo / 2 && wait <= expo, "equal {n}: {wait:?}");
            let wait = decorrelated.delay(n, previous, rng.f64()).unwrap();
            let high = cap.min(previous.max(base) * 3);
            assert!(
                wait >= base && wait <= high,
                "decorrelated {n}: {wait:?} vs {high:?}"
            );
            previous = wait;
        }
    }
}

#[test]
fn case_23_envoy_default_stays_within_envoys_range() {
    let envoy = Backoff::envoy();
    let mut rng = fastrand::Rng::with_seed(23);
    for n in 1..=12u32 {
        for _ in 0..500 {
            let wait = envoy.delay(n, Duration::ZERO, rng.f64()).unwrap();
            let envoy_high = Duration::from_millis(25) * (2u32.saturating_pow(n) - 1);
            assert!(wait < envoy_high || n == 1 && wait < Duration::from_millis(25));
            assert!(wait <= Duration::from_millis(250));
        }
    }
}

#[test]
fn case_24_grpc_backoff_is_plus_minus_20_percent() {
    let grpc = Backoff::grpc(Duration::from_millis(100), 2.0, Duration::from_secs(1));
    let bounds = [
        (1, 80, 120),
        (2, 160, 240),
        (3, 320, 480),
        (4, 640, 960),
        (5, 800, 1200),
        (9, 800, 1200),
    ];
    for (n, low, high) in bounds {
        let at = |r| grpc.delay(n, Duration::ZERO, r).unwrap();
        assert_eq!(at(0.0), Duration::from_millis(low), "retry {n}");
        assert!(at(0.999_999) <= Duration::from_millis(high), "retry {n}");
        assert_eq!(
            at(0.5),
            Duration::from_millis((low + high) / 2),
            "retry {n}"
        );
    }
}

#[test]
fn case_25_tower_exponential_without_and_with_jitter() {
    let plain = Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(3600))
        .jitter(Jitter::None);
    let waits: Vec<_> = (1..=4)
        .map(|n| plain.delay(n, Duration::ZERO, 0.0).unwrap().as_millis())
        .collect();
    assert_eq!(waits, [50, 100, 200, 400]);
    let capped = Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_millis(300));
    for n in 1..64 {
        assert!(capped.delay(n, Duration::ZERO, 0.999_999).unwrap() <= Duration::from_millis(300));
    }
}

#[test]
fn invalid_settings_are_config_errors() {
    let bad = [
        RetryLayer::builder().max_attempts(0).build().unwrap_err(),
        RetryLayer::builder()
            .backoff(Backoff::exponential(
                Duration::from_secs(2),
                2.0,
                Duration::from_secs(1),
            ))
            .build()
            .unwrap_err(),
        RetryLayer::builder()
            .backoff(Backoff::exponential(
                Duration::from_secs(1),
                0.5,
                Duration::from_secs(9),
            ))
            .build()
            .unwrap_err(),
        RetryLayer::builder()
            .deadline(Duration::ZERO)
            .build()
            .unwrap_err(),
        TpsBudget::new(Duration::ZERO, 1, 0.2).unwrap_err(),
        TpsBudget::new(Duration::from_secs(61), 1, 0.2).unwrap_err(),
        GrpcThrottle::new(0, 0.1).unwrap_err(),
        AdaptiveThrottle::new(0.5).unwrap_err(),
    ];
    for error in bad {
        assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    }
}

// ---- 8.4 retry layer ----

#[tokio::test(start_paused = true)]
async fn case_26_three_attempts_two_sleeps_then_the_last_answer() {
    let upstream = Upstream::new(vec![Step::Status(503, NONE); 5]);
    let (events, listener) = recorder();
    let layer = quick().listener(listener).build().unwrap();
    let service = layer.layer(upstream.clone());
    let started = Instant::now();
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the upstream's answer"
    );
    assert_eq!(upstream.calls(), 3);
    assert_eq!(started.elapsed(), Duration::from_millis(100 + 200));
    assert_eq!(
        *events.lock().unwrap(),
        [
            "retry 1 100ms server_error",
            "retry 2 200ms server_error",
            "gave up 3 attempts"
        ]
    );
    let metrics = layer.metrics();
    assert_eq!((metrics.failed_with_retry, metrics.retries), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn case_27_outcomes_are_counted_in_resilience4j_kinds() {
    let upstream = Upstream::new([
        Step::Status(400, NONE),
        Step::Status(402, NONE),
        Step::Status(422, NONE),
        Step::Status(401, NONE),
        Step::Fail(io::ErrorKind::ConnectionRefused),
    ]);
    let layer = quick().build().unwrap();
    for status in [400, 402, 422, 401] {
        let response = layer
            .layer(upstream.clone())
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
    }
    assert_eq!(upstream.calls(), 4, "400, 401, 402, 422 are called once");
    // A connect error is retried; the second attempt succeeds.
    let response = layer
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    layer
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    let metrics = layer.metrics();
    assert_eq!(metrics.failed_without_retry, 4);
    assert_eq!(metrics.successful_with_retry, 1);
    assert_eq!(metrics.successful_without_retry, 1);
}

#[tokio::test(start_paused = true)]
async fn case_28_a_policy_that_says_stop_ends_with_the_last_error() {
    let upstream = Upstream::new(vec![Step::Fail(io::ErrorKind::ConnectionReset); 3]);
    let policy = |context: &RetryContext<'_>| {
        if context.attempt >= 2 {
            RetryDecision::Stop
        } else {
            DeepSeekRetryPolicy.decide(context)
        }
    };
    let error = quick()
        .policy(policy)
        .build()
        .unwrap()
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::Network(crate::classify::NetworkFailure::Reset)
    );
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn case_29_a_body_that_cannot_be_replayed_is_sent_once() {
    let calls = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&calls);
    let service = tower::service_fn(move |_req: Request<SendOnce<Full<Bytes>>>| {
        *counter.lock().unwrap() += 1;
        async {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            Ok::<_, Infallible>(response)
        }
    });
    let (events, listener) = recorder();
    let layer = quick().listener(listener).build().unwrap();
    let response = layer
        .layer(service)
        .oneshot(Request::new(SendOnce::new(Full::default())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(*calls.lock().unwrap(), 1);
    assert_eq!(*events.lock().unwrap(), ["gave up 1 not_replayable"]);
}

#[tokio::test(start_paused = true)]
async fn case_30_retry_after_is_waited_exactly_and_capped() {
    // Exactly the upstream's wait (gRPC pushback semantics), not the back-off.
    let upstream = Upstream::new([Step::Status(429, &[("retry-after", "120")])]);
    let layer = quick()
        .max_retry_after(Duration::from_secs(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let response = layer
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(started.elapsed(), Duration::from_secs(120));

    // Over the cap: give up at once with the server's answer.
    let upstream = Upstream::new([Step::Status(429, &[("retry-after", "301")])]);
    let started = Instant::now();
    let response = layer
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!((upstream.calls(), started.elapsed()), (1, Duration::ZERO));

    // Unparseable: the back-off applies. A 503's Retry-After counts too (HTTP-date form).
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
    let date: &'static str = Box::leak(date.into_boxed_str());
    let headers: &'static [(&str, &str)] = Box::leak(Box::new([("retry-after", date)]));
    let upstream = Upstream::new([
        Step::Status(429, &[("retry-after", "soon")]),
        Step::Status(503, headers),
    ]);
    let started = Instant::now();
    layer
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_millis(100 + 28_000)
            && waited <= Duration::from_millis(100 + 30_000),
        "{waited:?}"
    );

    // X-RateLimit-Reset through a custom policy.
    let policy = |context: &RetryContext<'_>| match context
        .headers
        .and_then(|h| h.get("x-ratelimit-reset"))
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        Some(seconds) => RetryDecision::RetryAfter(Duration::from_secs(seconds)),
        None => DeepSeekRetryPolicy.decide(context),
    };
    let upstream = Upstream::new([Step::Status(429, &[("x-ratelimit-reset", "30")])]);
    let started = Instant::now();
    quick()
        .policy(policy)
        .build()
        .unwrap()
        .layer(upstream)
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn case_31_after_the_first_token_a_stream_failure_is_the_callers() {
    let upstream = Upstream::new([Step::Sse(vec![
        (Duration::ZERO, Ok(": keep-alive\n\n")),
        (Duration::ZERO, Ok("data: {\"choices\":[]}\n\n")),
        (Duration::from_secs(1), Ok("data: {\"choices\":[]}\n\n")),
        (Duration::from_secs(1), Err(())),
    ])]);
    let response = quick()
        .build()
        .unwrap()
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut frames = Vec::new();
    let error = loop {
        match body.frame().await {
            Some(Ok(frame)) => frames.push(frame.into_data().unwrap()),
            Some(Err(error)) => break error,
            None => panic!("the stream must fail"),
        }
    };
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        frames[0], ": keep-alive\n\n",
        "held frames are replayed unchanged"
    );
    assert_eq!(frames.len(), 3);
    assert_eq!(upstream.calls(), 1, "never retried after delivery");
}

#[tokio::test(start_paused = true)]
async fn streams_failing_before_their_first_token_are_retried() {
    let upstream = Upstream::new([
        // Only keep-alives, then a reset: nothing was delivered.
        Step::Sse(vec![
            (Duration::ZERO, Ok(": keep-alive\n\n")),
            (Duration::from_secs(1), Err(())),
        ]),
        // Cut cleanly before any data: truncated.
        Step::Sse(vec![(Duration::ZERO, Ok(": keep-alive\n\n"))]),
        Step::Sse(vec![
            (Duration::ZERO, Ok("data: {\"choices\":[]}\n\n")),
            (Duration::ZERO, Ok("data: [DONE]\n\n")),
        ]),
    ]);
    let (events, listener) = recorder();
    let response = quick()
        .listener(listener)
        .build()
        .unwrap()
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(
        body_text(response).await.unwrap(),
        "data: {\"choices\":[]}\n\ndata: [DONE]\n\n"
    );
    assert_eq!(upstream.calls(), 3);
    assert_eq!(
        *events.lock().unwrap(),
        [
            "retry 1 100ms network_error",
            "retry 2 200ms stream_error",
            "succeeded 3"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn hold_off_hands_streams_over_at_the_head() {
    let upstream = Upstream::new([Step::Sse(vec![
        (Duration::ZERO, Ok(": keep-alive\n\n")),
        (Duration::ZERO, Err(())),
    ])]);
    let response = quick()
        .hold(Hold::Off)
        .build()
        .unwrap()
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert!(body_text(response).await.is_err());
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn hold_all_retries_an_insufficient_system_resource_answer() {
    const STOPPED: &str = "{\"choices\":[{\"finish_reason\":\"insufficient_system_resource\"}]}";
    let steps = || {
        [
            Step::Json(STOPPED),
            Step::Json("{\"choices\":[{\"finish_reason\":\"stop\"}]}"),
        ]
    };
    let upstream = Upstream::new(steps());
    let response = quick()
        .hold(Hold::All)
        .build()
        .unwrap()
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert!(body_text(response).await.unwrap().contains("\"stop\""));
    assert_eq!(upstream.calls(), 2);
    // By default a JSON answer passes straight through.
    let upstream = Upstream::new(steps());
    let response = quick()
        .build()
        .unwrap()
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(body_text(response).await.unwrap(), STOPPED);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn case_32_the_deadline_covers_every_attempt_and_wait() {
    // The first attempt takes 2.7 s of a 3 s deadline; the retry gets what is left.
    let upstream = Upstream::new([
        Step::After(
            Duration::from_millis(2700),
            Box::new(Step::Status(503, NONE)),
        ),
        Step::After(Duration::from_secs(10), Box::new(Step::Status(200, NONE))),
    ]);
    let layer = quick()
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .deadline(Duration::from_secs(3))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = layer
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout(TimeoutPhase::Deadline));
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(upstream.calls(), 2);

    // A wait that would reach the deadline is not started: the last answer comes back.
    let upstream = Upstream::new([Step::After(
        Duration::from_millis(2700),
        Box::new(Step::Status(503, NONE)),
    )]);
    let (events, listener) = recorder();
    let layer = quick()
        .backoff(Backoff::constant(Duration::from_millis(500)))
        .deadline(Duration::from_secs(3))
        .listener(listener)
        .build()
        .unwrap();
    let response = layer
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.calls(), 1);
    assert_eq!(*events.lock().unwrap(), ["gave up 1 deadline"]);
}

#[tokio::test(start_paused = true)]
async fn a_per_attempt_timeout_cancels_and_retries_the_attempt() {
    let upstream = Upstream::new([Step::After(
        Duration::from_secs(60),
        Box::new(Step::Status(200, NONE)),
    )]);
    let layer = quick()
        .attempt_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let response = layer
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(started.elapsed(), Duration::from_millis(5100));
    assert_eq!(upstream.calls(), 2);

    let upstream = Upstream::new(vec![
        Step::After(
            Duration::from_secs(60),
            Box::new(Step::Status(200, NONE))
        );
        3
    ]);
    let error = layer.layer(upstream).oneshot(request()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout(TimeoutPhase::Attempt));
}

#[tokio::test(start_paused = true)]
async fn case_33_attempts_are_capped_at_five_unless_the_cap_is_raised() {
    let upstream = Upstream::new(vec![Step::Status(500, NONE); 20]);
    quick()
        .max_attempts(10)
        .build()
        .unwrap()
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(upstream.calls(), 5);
    let upstream = Upstream::new(vec![Step::Status(500, NONE); 20]);
    quick()
        .max_attempts(10)
        .attempt_cap(10)
        .build()
        .unwrap()
        .layer(upstream.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(upstream.calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn retries_replay_the_same_buffer_and_drive_each_attempt_to_ready() {
    let upstream = Upstream::new(vec![Step::Status(502, NONE); 2]);
    let payload = Bytes::from_static(b"{\"model\":\"deepseek-v4-flash\"}");
    let service = quick().build().unwrap().layer(upstream.clone());
    // `Upstream::call` asserts it was driven to ready first.
    let response = service
        .oneshot(Request::new(Full::new(payload.clone())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let calls = upstream.calls.lock().unwrap();
    assert_eq!(calls.len(), 3);
    for sent in calls.iter() {
        assert_eq!(
            sent.as_ptr(),
            payload.as_ptr(),
            "a refcount bump, not a copy"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_budget_shared_by_clones_stops_retries_in_an_outage() {
    let budget = TpsBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
    let (events, listener) = recorder();
    let layer = quick()
        .backoff(Backoff::constant(Duration::ZERO))
        .budget(budget.clone())
        .listener(listener)
        .build()
        .unwrap();
    let upstream = Upstream::new(vec![Step::Status(503, NONE); 100]);
    for _ in 0..10 {
        layer
            .layer(upstream.clone())
            .oneshot(request())
            .await
            .unwrap();
    }
    // Each call deposits 1000, a retry costs 2000: 10 calls pay for 5 retries, not 20.
    assert_eq!(upstream.calls(), 15);
    let budget_events = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.starts_with("budget"))
        .count();
    // Every call ends refused by the budget: five after their first attempt, five after
    // the retry they got.
    assert_eq!(budget_events, 10);
    assert_eq!(budget.balance(), 0);
}

// ---- 8.5 budgets ----

#[tokio::test(start_paused = true)]
async fn case_34_finagle_percentages() {
    for percent in [0.1, 0.25, 0.5, 0.75, 0.99, 0.01, 0.001] {
        let budget = TpsBudget::new(Duration::from_secs(60), 0, percent).unwrap();
        let mut retries = 0;
        for _ in 0..10_000 {
            budget.on_call();
            if budget.try_retry() {
                retries += 1;
            } else {
                assert_eq!(budget.balance(), 0);
            }
        }
        let expected = 10_000.0 * percent;
        assert!(
            (f64::from(retries) - expected).abs() <= 1.0,
            "{percent}: {retries}"
        );
    }
    let generous = TpsBudget::new(Duration::from_secs(60), 0, 2.0).unwrap();
    for _ in 0..10_000 {
        generous.on_call();
    }
    assert_eq!(generous.balance(), 20_000);
}

#[tokio::test(start_paused = true)]
async fn case_35_reserve_only_budgets() {
    for (ttl, per_second) in [(1, 10), (2, 5)] {
        let budget = TpsBudget::new(Duration::from_secs(ttl), per_second, 0.0).unwrap();
        assert_eq!(budget.balance(), 10);
        for _ in 0..10 {
            assert!(budget.try_retry());
        }
        assert!(!budget.try_retry());
    }
}

#[tokio::test(start_paused = true)]
async fn case_36_tower_tps_budget_cases_and_no_truncation() {
    // tps_empty
    assert!(
        !TpsBudget::new(Duration::from_secs(1), 0, 1.0)
            .unwrap()
            .try_retry()
    );
    // tps_leaky
    let budget = TpsBudget::new(Duration::from_secs(1), 0, 1.0).unwrap();
    budget.on_call();
    advance(Duration::from_secs(3)).await;
    assert!(!budget.try_retry());
    // tps_slots
    let budget = TpsBudget::new(Duration::from_secs(1), 0, 0.5).unwrap();
    budget.on_call();
    budget.on_call();
    advance(Duration::from_millis(901)).await;
    assert!(budget.try_retry());
    advance(Duration::from_millis(2001)).await;
    budget.on_call();
    advance(Duration::from_millis(301)).await;
    budget.on_call();
    advance(Duration::from_millis(801)).await;
    budget.on_call();
    assert!(budget.try_retry());
    // tps_reserve
    let budget = TpsBudget::new(Duration::from_secs(1), 5, 1.0).unwrap();
    for _ in 0..5 {
        assert!(budget.try_retry());
    }
    assert!(!budget.try_retry());
    // Tower truncates 1/0.3 to 3 (33 %); Finagle's scale keeps 30 %.
    let thirty = TpsBudget::new(Duration::from_secs(60), 0, 0.3).unwrap();
    assert_eq!(thirty.withdraw_cost(), 3333);
    let mut retries = 0;
    for _ in 0..10_000 {
        thirty.on_call();
        retries += u32::from(thirty.try_retry());
    }
    assert!((2999..=3001).contains(&retries), "{retries}");
}

/// A deposit counts for the budget's ttl (ten slots) and not after: the ring holds sixteen
/// slots, and only the window's ten are summed; a slot that comes round again is reset.
#[tokio::test(start_paused = true)]
async fn a_deposit_counts_for_the_ttl_and_no_longer() {
    let budget = TpsBudget::new(Duration::from_secs(10), 0, 1.0).unwrap();
    budget.on_call();
    advance(Duration::from_millis(9_950)).await;
    assert_eq!(budget.balance(), 1);
    advance(Duration::from_millis(100)).await;
    assert_eq!(budget.balance(), 0);
    // 16.05 s: the first deposit's slot again.
    advance(Duration::from_secs(6)).await;
    budget.on_call();
    assert_eq!(budget.balance(), 1);
}

#[test]
fn case_37_grpc_throttling() {
    let throttle = GrpcThrottle::new(10, 0.1).unwrap();
    let failure = Outcome::Server(StatusCode::SERVICE_UNAVAILABLE);
    assert!(throttle.try_retry());
    for _ in 0..5 {
        throttle.on_outcome(&failure);
    }
    assert_eq!(throttle.tokens(), 5.0);
    assert!(!throttle.try_retry(), "5 is not above half of 10");
    throttle.on_outcome(&Outcome::Success);
    assert!((throttle.tokens() - 5.1).abs() < 1e-9);
    assert!(throttle.try_retry());
    // Non-retryable failures do not count; bounds hold.
    throttle.on_outcome(&Outcome::Client(StatusCode::BAD_REQUEST));
    assert!((throttle.tokens() - 5.1).abs() < 1e-9);
    for _ in 0..100 {
        throttle.on_outcome(&failure);
    }
    assert_eq!(throttle.tokens(), 0.0);
    for _ in 0..1000 {
        throttle.on_outcome(&Outcome::Success);
    }
    assert_eq!(throttle.tokens(), 10.0);
}

#[tokio::test(start_paused = true)]
async fn case_38_sre_adaptive_throttling() {
    let server = Outcome::Server(StatusCode::SERVICE_UNAVAILABLE);
    let probability = |accepted: u32| {
        let throttle = AdaptiveThrottle::with_random(2.0, || 0.5).unwrap();
        for i in 0..100 {
            throttle.on_outcome(if i < accepted {
                &Outcome::Success
            } else {
                &server
            });
        }
        throttle
    };
    assert_eq!(probability(50).reject_probability(), 0.0);
    assert!((probability(40).reject_probability() - 20.0 / 101.0).abs() < 1e-12);
    let throttle = probability(0);
    assert!((throttle.reject_probability() - 100.0 / 101.0).abs() < 1e-12);
    assert!(!throttle.try_retry(), "0.5 < p: refused");
    assert!(probability(40).try_retry(), "0.5 >= p: allowed");
    // Counts older than two minutes expire.
    advance(Duration::from_secs(121)).await;
    assert_eq!(throttle.reject_probability(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_carries_the_method_uri_headers_and_extensions() {
    #[derive(Clone, Debug, PartialEq)]
    struct Model(&'static str);
    // 1, 2, 3 and 6 headers (the repeated `x-h0` included) are kept inline, 10 in an
    // allocation of their own.
    for header_count in [0, 1, 2, 5, 9] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let service = tower::service_fn(move |req: Request<Full<Bytes>>| {
            let calls = {
                let mut seen = sink.lock().unwrap();
                seen.push((
                    req.method().clone(),
                    req.uri().clone(),
                    req.headers().clone(),
                    req.extensions().get::<Model>().cloned(),
                ));
                seen.len()
            };
            async move {
                let mut response = Response::new(Full::new(Bytes::new()));
                if calls < 3 {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Infallible>(response)
            }
        });
        let mut request = Request::post("https://api.deepseek.com/chat/completions")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        for i in 0..header_count {
            let name = http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap();
            request
                .headers_mut()
                .append(name, i.to_string().parse().unwrap());
        }
        request
            .headers_mut()
            .append("x-h0", "again".parse().unwrap());
        request.extensions_mut().insert(Model("deepseek-v4-flash"));
        let expected = (
            request.method().clone(),
            request.uri().clone(),
            request.headers().clone(),
            Some(Model("deepseek-v4-flash")),
        );
        let response = quick()
            .build()
            .unwrap()
            .layer(service)
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for attempt in seen.iter() {
            assert_eq!(attempt, &expected, "{header_count} headers");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_a_success_on_the_same_thread_sends_its_own_request() {
    // The first call's copy is recycled when it succeeds; the second call's copy reuses its
    // allocation and must carry the second request only.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let service = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let calls = {
            let mut seen = sink.lock().unwrap();
            seen.push((
                req.method().clone(),
                req.uri().clone(),
                req.headers().clone(),
            ));
            seen.len()
        };
        async move {
            let mut response = Response::new(Full::new(Bytes::new()));
            if calls == 2 {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut service = quick().build().unwrap().layer(service);
    let first = Request::post("https://one.example/a")
        .header("x-first", "1")
        .header("authorization", "Bearer one")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let second = Request::put("https://two.example/b")
        .header("x-second", "2")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    for request in [first, second] {
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for (method, uri, headers) in &seen[1..] {
        assert_eq!(method, http::Method::PUT);
        assert_eq!(uri, "https://two.example/b");
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-second"], "2");
    }
}

/// The scripted upstream, counting its clones, with a kilobyte of state as a deep stack of
/// services has.
struct CountClones {
    inner: Upstream,
    clones: Arc<std::sync::atomic::AtomicUsize>,
    _state: [u8; 1024],
}

impl CountClones {
    fn new(inner: Upstream) -> CountClones {
        CountClones {
            inner,
            clones: Arc::default(),
            _state: [0; 1024],
        }
    }
}

impl Clone for CountClones {
    fn clone(&self) -> Self {
        self.clones
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CountClones {
            inner: self.inner.clone(),
            clones: Arc::clone(&self.clones),
            _state: self._state,
        }
    }
}

impl Service<Request<Full<Bytes>>> for CountClones {
    type Response = Response<Body>;
    type Error = io::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, io::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        self.inner.call(request)
    }
}

/// A call answered at once clones nothing (the first attempt goes to the ready service
/// itself); a retry goes through one new clone, driven to ready first (the scripted upstream
/// panics on a call without `poll_ready`).
#[tokio::test(start_paused = true)]
async fn only_a_retry_clones_the_inner_service() {
    let upstream = Upstream::new([Step::Json("{}"), Step::Status(503, NONE), Step::Json("{}")]);
    let counted = CountClones::new(upstream.clone());
    let clones = Arc::clone(&counted.clones);
    let layer = quick().build().unwrap();
    let mut service = layer.layer(counted);
    let made = clones.load(std::sync::atomic::Ordering::SeqCst);
    // Called in place (not cloned per call), as a client's reused service is.
    let mut call = async || {
        let response = service.ready().await.unwrap().call(request()).await;
        response.unwrap().status()
    };
    assert_eq!(call().await, StatusCode::OK);
    assert_eq!(clones.load(std::sync::atomic::Ordering::SeqCst), made);
    assert_eq!(call().await, StatusCode::OK);
    assert_eq!(upstream.calls(), 3, "one call, then a 503 and its retry");
    assert_eq!(clones.load(std::sync::atomic::Ordering::SeqCst), made + 1);
}

/// A call's future does not carry a copy of the service inline (only a retry makes one, in
/// an allocation of its own): every layer around it moves that future whole.
#[test]
fn the_future_does_not_grow_with_the_service() {
    let size = std::mem::size_of::<ResponseFuture<CountClones, Full<Bytes>, Body>>();
    assert!(size < 512, "{size} bytes");
}
