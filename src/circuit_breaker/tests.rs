//! Unit tests on paused time. Reference cases from `resilience-semantics.md` §8.1 and §8.2
//! are cited by number in the test names (cases 5, 6, 7 and 12's wait vector are also tested
//! on the windows and the wait function themselves, in `window.rs` and `config.rs`).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::{Instant, advance};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::classify::{AuthFailure, Classify, DeepSeekClassifier, Observation, Outcome};
use crate::error::{CircuitOpenReason, ErrorKind};
use tower::Service;

fn fail() -> Outcome {
    Outcome::Server(StatusCode::SERVICE_UNAVAILABLE)
}

fn ok() -> Outcome {
    Outcome::Success
}

/// Records events as short strings.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    fn listener(&self) -> impl CircuitBreakerListener {
        let events = self.0.clone();
        move |event: &CircuitEvent<'_>| {
            let text = match event {
                CircuitEvent::StateTransition { from, to, .. } => format!("{from}->{to}"),
                CircuitEvent::FailureRateExceeded { rate, .. } => format!("failure_rate {rate}"),
                CircuitEvent::SlowCallRateExceeded { rate, .. } => format!("slow_rate {rate}"),
                CircuitEvent::NotPermitted { .. } => "not_permitted".to_owned(),
                CircuitEvent::Recorded { kind, .. } => format!("recorded {}", kind.as_str()),
                CircuitEvent::Reset { .. } => "reset".to_owned(),
            };
            events.lock().unwrap().push(text);
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn without_recorded(&self) -> Vec<String> {
        self.take()
            .into_iter()
            .filter(|e| !e.starts_with("recorded"))
            .collect()
    }
}

/// Fixture A of the reference: 50 %, slow 50 % at 4 s, time window 20 s, minimum 5,
/// half-open 4, open 5 s, max wait in half-open 1 s.
fn fixture_a() -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .name("fixture-a")
        .failure_rate_threshold(50.0)
        .slow_call_rate_threshold(50.0)
        .slow_call_duration(Duration::from_secs(4))
        .sliding_window(SlidingWindow::Time { seconds: 20 })
        .minimum_calls(5)
        .half_open_calls(4)
        .open_wait(Duration::from_secs(5))
        .max_wait_in_half_open(Duration::from_secs(1))
}

fn call(breaker: &CircuitBreaker, outcome: Outcome) {
    breaker.try_acquire().expect("admitted").record(outcome);
}

fn call_taking(breaker: &CircuitBreaker, outcome: Outcome, duration: Duration) {
    breaker
        .try_acquire()
        .expect("admitted")
        .record_with_duration(outcome, Some(duration));
}

fn refused(breaker: &CircuitBreaker) -> crate::Error {
    breaker.try_acquire().expect_err("refused")
}

/// Trips a breaker whose minimum is `n` with `n` failures.
fn trip(breaker: &CircuitBreaker, n: u32) {
    for _ in 0..n {
        call(breaker, fail());
    }
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn case_01_no_decision_below_minimum_then_open_at_60_percent() {
    let events = Events::default();
    let breaker = fixture_a().listener(events.listener()).build().unwrap();
    for outcome in [fail(), fail(), fail(), ok()] {
        call(&breaker, outcome);
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(breaker.metrics().failure_rate, -1.0);
    assert_eq!(breaker.metrics().slow_call_rate, -1.0);
    call(&breaker, ok());
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, CircuitState::Open);
    assert_eq!(metrics.failure_rate, 60.0);
    assert_eq!((metrics.buffered_calls, metrics.failed_calls), (5, 3));
    let seen = events.without_recorded();
    assert_eq!(seen, ["failure_rate 60", "closed->open"]);
    let error = refused(&breaker);
    assert_eq!(
        error.kind(),
        ErrorKind::CircuitOpen(CircuitOpenReason::Unhealthy)
    );
    assert!(error.to_string().contains("fixture-a"), "{error}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(5)));
    assert_eq!(breaker.metrics().not_permitted_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn case_02_threshold_is_inclusive() {
    let breaker = fixture_a().build().unwrap();
    for outcome in [ok(), ok(), ok(), fail(), fail()] {
        call(&breaker, outcome);
        advance(Duration::from_secs(1)).await;
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(breaker.metrics().failure_rate, 40.0);
    call(&breaker, fail());
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(breaker.metrics().failure_rate, 50.0);
}

#[tokio::test(start_paused = true)]
async fn case_03_slow_calls_trip_independently_of_failures() {
    let breaker = fixture_a().build().unwrap();
    let steps = [
        (fail(), Duration::from_secs(5)),
        (ok(), Duration::from_secs(5)),
        (fail(), Duration::from_millis(100)),
        (ok(), Duration::from_millis(100)),
        (ok(), Duration::from_secs(5)),
    ];
    for (outcome, duration) in steps {
        // Measured for real through the permit, on the paused clock.
        let permit = breaker.try_acquire().unwrap();
        advance(duration).await;
        permit.record(outcome);
    }
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, CircuitState::Open);
    assert_eq!(metrics.slow_call_rate, 60.0);
    assert_eq!(metrics.failure_rate, 40.0);
}

#[tokio::test(start_paused = true)]
async fn case_04_slow_is_strictly_longer_than_the_threshold() {
    let breaker = fixture_a().minimum_calls(100).build().unwrap();
    let permit = breaker.try_acquire().unwrap();
    advance(Duration::from_secs(4)).await;
    permit.record(ok());
    assert_eq!(breaker.metrics().slow_calls, 0, "exactly 4 s is not slow");
    call_taking(
        &breaker,
        ok(),
        Duration::from_secs(4) + Duration::from_nanos(1),
    );
    assert_eq!(breaker.metrics().slow_calls, 1, "4 s + 1 ns is slow");
}

#[tokio::test(start_paused = true)]
async fn case_05_count_window_through_the_breaker() {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count { calls: 5 })
        .minimum_calls(100) // clamped to 5
        .build()
        .unwrap();
    for outcome in [fail(), fail(), ok(), ok(), ok()] {
        call(&breaker, outcome);
    }
    assert_eq!(breaker.metrics().failure_rate, 40.0);
    call(&breaker, ok());
    call(&breaker, ok());
    assert_eq!(breaker.metrics().failure_rate, 0.0);
    call(&breaker, fail());
    call(&breaker, fail());
    assert_eq!(breaker.metrics().failure_rate, 40.0);
    assert_eq!(breaker.state(), CircuitState::Closed);
    call(&breaker, fail());
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(breaker.metrics().failure_rate, 60.0);
}

#[tokio::test(start_paused = true)]
async fn case_06_time_window_trace_through_the_breaker() {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time { seconds: 5 })
        .minimum_calls(100)
        .build()
        .unwrap();
    let ms = Duration::from_millis;
    let steps = [
        (ms(0), fail()),
        (ms(100), ok()),
        (ms(100), ok()),
        (ms(1000), ok()),
        (ms(1000), ok()),
        (ms(1000), fail()),
        (ms(1000), ok()),
        (ms(1000), ok()),
        (ms(1000), ok()),
        (ms(5000), ok()),
    ];
    let mut buffered = Vec::new();
    for (wait, outcome) in steps {
        advance(wait).await;
        call(&breaker, outcome);
        buffered.push(breaker.metrics().buffered_calls);
    }
    assert_eq!(&buffered[2..], [3, 4, 5, 6, 7, 5, 5, 1]);
}

#[tokio::test(start_paused = true)]
async fn case_07_reading_metrics_drops_stale_seconds() {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time { seconds: 5 })
        .minimum_calls(1)
        .failure_rate_threshold(100.0)
        .build()
        .unwrap();
    call(&breaker, ok());
    assert_eq!(breaker.metrics().buffered_calls, 1);
    advance(Duration::from_secs(5)).await;
    let metrics = breaker.metrics();
    assert_eq!(metrics.buffered_calls, 0);
    assert_eq!(metrics.failure_rate, -1.0);
}

#[tokio::test(start_paused = true)]
async fn case_08_ignored_outcomes_are_not_recorded_and_give_the_trial_permit_back() {
    let breaker = fixture_a().build().unwrap();
    for outcome in [
        Outcome::RateLimited { retry_after: None },
        Outcome::Client(StatusCode::BAD_REQUEST),
        Outcome::Client(StatusCode::UNPROCESSABLE_ENTITY),
        Outcome::Invalid,
    ] {
        call(&breaker, outcome);
    }
    assert_eq!(breaker.metrics().buffered_calls, 0);
    trip(&breaker, 5);
    advance(Duration::from_secs(6)).await;
    // Four ignored trials in a row: each gives its permit back, so more trials fit.
    for _ in 0..6 {
        call(&breaker, Outcome::RateLimited { retry_after: None });
    }
    let metrics = breaker.metrics();
    assert_eq!(
        (metrics.state, metrics.buffered_calls),
        (CircuitState::HalfOpen, 0)
    );
    // Reference case 12 of §1.11: then four successes close it.
    for _ in 0..4 {
        call(&breaker, ok());
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn case_08_a_custom_classifier_can_fail_a_200_or_count_a_404_as_success() {
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(2)
        .sliding_window(SlidingWindow::Count { calls: 2 })
        .classifier(|observation: Observation<'_>| match observation {
            Observation::Head { status, headers } if headers.contains_key("x-degraded") => {
                let _ = status;
                Outcome::Server(StatusCode::BAD_GATEWAY)
            }
            Observation::Head { status, .. } if status == StatusCode::NOT_FOUND => Outcome::Success,
            other => DeepSeekClassifier.classify(other),
        })
        .build()
        .unwrap();
    let breaker = layer.breaker().clone();
    let service = ServiceBuilder::new().layer(layer).service(service_fn(
        |request: Request<&'static str>| async move {
            let mut response = Response::new(Full::new(Bytes::new()));
            match *request.body() {
                "degraded" => {
                    response
                        .headers_mut()
                        .insert("x-degraded", http::HeaderValue::from_static("1"));
                }
                "missing" => *response.status_mut() = StatusCode::NOT_FOUND,
                _ => {}
            }
            Ok::<_, Infallible>(response)
        },
    ));
    for body in ["missing", "missing"] {
        service.clone().oneshot(Request::new(body)).await.unwrap();
    }
    let metrics = breaker.metrics();
    assert_eq!((metrics.buffered_calls, metrics.failed_calls), (2, 0));
    // One "failed" 200 among the last two calls: 50 %, which trips (inclusive).
    let response = service
        .clone()
        .oneshot(Request::new("degraded"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(breaker.metrics().failed_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn case_09_a_call_admitted_before_opening_changes_nothing_after() {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count { calls: 4 })
        .minimum_calls(2)
        .build()
        .unwrap();
    let late = breaker.try_acquire().unwrap();
    let late_success = breaker.try_acquire().unwrap();
    trip(&breaker, 2);
    let before = breaker.metrics();
    late.record(fail());
    late_success.record(ok());
    assert_eq!(breaker.metrics(), before, "not recorded at all");
    // Nor does a closed-state call land in the next closed window.
    let stale = {
        breaker.reset();
        breaker.try_acquire().unwrap()
    };
    breaker.reset();
    stale.record(fail());
    assert_eq!(breaker.metrics().buffered_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn case_10_open_waits_strictly_then_turns_half_open_with_fresh_metrics() {
    let breaker = fixture_a().build().unwrap();
    trip(&breaker, 5);
    advance(Duration::from_secs(3)).await;
    let error = refused(&breaker);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(2)));
    refused(&breaker);
    assert_eq!(breaker.metrics().not_permitted_calls, 2);
    advance(Duration::from_secs(2)).await;
    refused(&breaker); // exactly +5 s: still open
    assert_eq!(breaker.state(), CircuitState::Open);
    advance(Duration::from_secs(1)).await;
    let permit = breaker.try_acquire().expect("admitted at +6 s");
    assert!(permit.is_trial());
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, CircuitState::HalfOpen);
    assert_eq!(
        (
            metrics.failure_rate,
            metrics.buffered_calls,
            metrics.not_permitted_calls
        ),
        (-1.0, 0, 0)
    );
    drop(permit);
}

#[tokio::test(start_paused = true)]
async fn case_11_open_for_and_open_until_leave_the_attempts_alone() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .half_open_calls(1)
        .open_wait(OpenWait::exponential(
            Duration::from_secs(5),
            1.5,
            Duration::from_secs(600),
        ))
        .build()
        .unwrap();
    breaker.open_for(Duration::from_secs(7200));
    advance(Duration::from_secs(3600)).await;
    refused(&breaker);
    advance(Duration::from_secs(3601)).await;
    // The trial fails: this is the first counted opening, so the wait is the first one.
    call(&breaker, fail());
    assert_eq!(
        refused(&breaker).retry_after(),
        Some(Duration::from_secs(5))
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    breaker.open_until(deadline);
    advance(Duration::from_secs(30)).await;
    refused(&breaker); // at the deadline: still open
    advance(Duration::from_millis(1)).await;
    call(&breaker, fail());
    assert_eq!(
        refused(&breaker).retry_after(),
        Some(Duration::from_millis(7500)),
        "the second counted opening"
    );
}

#[tokio::test(start_paused = true)]
async fn case_12_exponential_open_wait_grows_and_resets_after_a_close() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .half_open_calls(1)
        .open_wait(OpenWait::exponential(
            Duration::from_secs(5),
            1.5,
            Duration::from_secs(600),
        ))
        .build()
        .unwrap();
    trip(&breaker, 1);
    for expected in [5000, 7500, 11250] {
        let wait = Duration::from_millis(expected);
        assert_eq!(refused(&breaker).retry_after(), Some(wait));
        advance(wait).await;
        refused(&breaker);
        advance(Duration::from_millis(1)).await;
        call(&breaker, fail()); // the trial fails: re-open
    }
    advance(Duration::from_millis(16875) + Duration::from_millis(1)).await;
    call(&breaker, ok());
    assert_eq!(breaker.state(), CircuitState::Closed);
    trip(&breaker, 1);
    assert_eq!(
        refused(&breaker).retry_after(),
        Some(Duration::from_secs(5))
    );
}

#[tokio::test(start_paused = true)]
async fn case_13_half_open_admits_four_and_a_dropped_trial_gives_its_permit_back() {
    let breaker = fixture_a()
        .max_wait_in_half_open(Duration::from_secs(60))
        .build()
        .unwrap();
    trip(&breaker, 5);
    advance(Duration::from_secs(6)).await;
    let mut trials: Vec<_> = (0..4).map(|_| breaker.try_acquire().unwrap()).collect();
    refused(&breaker);
    refused(&breaker);
    drop(trials.pop());
    trials.push(breaker.try_acquire().expect("the permit came back"));
    refused(&breaker);
    // Re-entering half-open restores four permits.
    trials.pop().unwrap().record(fail());
    trials.pop().unwrap().record(fail());
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    breaker.transition_to(CircuitState::Open).unwrap();
    breaker.transition_to(CircuitState::HalfOpen).unwrap();
    let again: Vec<_> = (0..4).map(|_| breaker.try_acquire().unwrap()).collect();
    refused(&breaker);
    drop(again);
    drop(trials);
}

#[tokio::test(start_paused = true)]
async fn case_13_dropping_the_response_future_gives_the_permit_back() {
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(1)
        .half_open_calls(2)
        .open_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let breaker = layer.breaker().clone();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
        }));
    breaker.open_for(Duration::from_secs(1));
    advance(Duration::from_secs(2)).await;
    let mut service = service;
    // `call` without `poll_ready` must not panic.
    let first = service.call(Request::new(()));
    let second = service.call(Request::new(()));
    let third = service.call(Request::new(()));
    assert!(matches!(
        third.await.unwrap_err().kind(),
        ErrorKind::CircuitOpen(_)
    ));
    drop(first);
    let fourth = service.call(Request::new(()));
    let fifth = service.call(Request::new(()));
    assert!(fifth.await.is_err());
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    drop((second, fourth));
}

#[tokio::test(start_paused = true)]
async fn case_14_half_open_verdicts() {
    let breaker = fixture_a().build().unwrap();
    let reopen = |breaker: &CircuitBreaker| {
        breaker.transition_to(CircuitState::Open).unwrap();
        breaker.transition_to(CircuitState::HalfOpen).unwrap();
    };
    trip(&breaker, 5);
    reopen(&breaker);
    for outcome in [fail(), fail(), ok(), fail()] {
        call(&breaker, outcome);
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(breaker.metrics().failure_rate, 75.0);

    reopen(&breaker);
    for secs in [5, 5, 5, 1] {
        call_taking(&breaker, ok(), Duration::from_secs(secs));
    }
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, CircuitState::Open);
    assert_eq!((metrics.slow_call_rate, metrics.failure_rate), (75.0, 0.0));

    reopen(&breaker);
    for outcome in [fail(), ok(), ok(), ok()] {
        call(&breaker, outcome);
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(breaker.metrics().buffered_calls, 0);
    call(&breaker, ok());
    assert_eq!(breaker.metrics().buffered_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn case_15_default_half_open_decides_after_ten_trials() {
    let breaker = CircuitBreaker::builder().build().unwrap();
    trip(&breaker, 100);
    advance(Duration::from_secs(61)).await;
    for _ in 0..9 {
        call(&breaker, ok());
    }
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    assert_eq!(breaker.metrics().buffered_calls, 9);
    call(&breaker, ok());
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn case_16_half_open_gives_up_after_its_maximum_wait() {
    for (after, expected) in [
        (CircuitState::Open, CircuitState::Open),
        (CircuitState::Closed, CircuitState::Closed),
    ] {
        let breaker = fixture_a().after_half_open_wait(after).build().unwrap();
        trip(&breaker, 5);
        advance(Duration::from_secs(6)).await;
        call(&breaker, ok()); // one trial: undecided
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        advance(Duration::from_millis(999)).await;
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        advance(Duration::from_millis(1)).await;
        assert_eq!(breaker.state(), expected);
    }
}

#[tokio::test(start_paused = true)]
async fn case_17_forced_open_disabled_and_metrics_only() {
    let events = Events::default();
    let breaker = fixture_a().listener(events.listener()).build().unwrap();

    breaker.force_open();
    advance(Duration::from_secs(3600)).await;
    let error = refused(&breaker);
    assert_eq!(
        error.kind(),
        ErrorKind::CircuitOpen(CircuitOpenReason::Forced)
    );
    assert_eq!(breaker.metrics().not_permitted_calls, 1);
    assert_eq!(events.take(), ["closed->forced_open"], "no rejection event");

    breaker.transition_to(CircuitState::Disabled).unwrap();
    for _ in 0..20 {
        call(&breaker, fail());
    }
    let metrics = breaker.metrics();
    assert_eq!(
        (metrics.state, metrics.buffered_calls),
        (CircuitState::Disabled, 0)
    );
    assert_eq!(events.take(), ["forced_open->disabled"]);

    breaker.transition_to(CircuitState::MetricsOnly).unwrap();
    for _ in 0..10 {
        call_taking(&breaker, fail(), Duration::from_secs(5));
    }
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, CircuitState::MetricsOnly);
    assert_eq!((metrics.buffered_calls, metrics.failure_rate), (10, 100.0));
    assert_eq!(
        events.without_recorded(),
        [
            "disabled->metrics_only",
            "failure_rate 100",
            "slow_rate 100"
        ],
        "each threshold event once"
    );
}

#[tokio::test(start_paused = true)]
async fn case_18_transition_table_self_transitions_and_reset() {
    let events = Events::default();
    let breaker = fixture_a().listener(events.listener()).build().unwrap();
    let error = breaker.transition_to(CircuitState::HalfOpen).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(
        error
            .to_string()
            .contains("illegal state transition from closed to half_open"),
        "{error}"
    );
    call(&breaker, fail());
    breaker.transition_to(CircuitState::Closed).unwrap();
    assert_eq!(
        events.without_recorded(),
        Vec::<String>::new(),
        "self transition is silent"
    );
    assert_eq!(breaker.metrics().buffered_calls, 0, "but starts fresh");

    breaker.transition_to(CircuitState::MetricsOnly).unwrap();
    assert!(breaker.transition_to(CircuitState::Open).is_err());
    assert!(breaker.transition_to(CircuitState::HalfOpen).is_err());
    assert!(breaker.transition_to(CircuitState::Fatal).is_err());
    breaker.transition_to(CircuitState::Closed).unwrap();
    events.take();

    trip(&breaker, 5);
    events.take();
    breaker.reset();
    let metrics = breaker.metrics();
    assert_eq!(
        (metrics.state, metrics.buffered_calls),
        (CircuitState::Closed, 0)
    );
    assert_eq!(events.take(), ["open->closed", "reset"]);
}

#[tokio::test(start_paused = true)]
async fn case_19_gobreaker_profile_replays_test_default_circuit_breaker() {
    let timeout = Duration::from_secs(60);
    let breaker = CircuitBreakerBuilder::gobreaker().build().unwrap();
    for _ in 0..5 {
        call(&breaker, fail());
    }
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, CircuitState::Closed);
    assert_eq!((metrics.buffered_calls, metrics.failed_calls), (5, 5));
    call(&breaker, ok());
    call(&breaker, fail());
    assert_eq!(breaker.state(), CircuitState::Closed);
    for _ in 0..5 {
        call(&breaker, fail());
    }
    assert_eq!(
        breaker.state(),
        CircuitState::Open,
        "6 consecutive failures"
    );
    refused(&breaker);
    advance(timeout - Duration::from_millis(1)).await;
    refused(&breaker);
    advance(Duration::from_millis(2)).await;
    let trial = breaker.try_acquire().unwrap();
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    refused(&breaker); // MaxRequests 1
    trial.record(fail());
    assert_eq!(breaker.state(), CircuitState::Open);
    advance(timeout + Duration::from_nanos(1)).await;
    call(&breaker, ok());
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(breaker.metrics().buffered_calls, 0, "counts cleared");
}

#[tokio::test(start_paused = true)]
async fn case_20_hystrix_profile() {
    let breaker = CircuitBreakerBuilder::hystrix().build().unwrap();
    for _ in 0..19 {
        call(&breaker, fail());
        advance(Duration::from_millis(450)).await;
    }
    assert_eq!(breaker.state(), CircuitState::Closed, "volume not reached");
    call(&breaker, fail());
    assert_eq!(breaker.state(), CircuitState::Open);

    let sleep_window = Duration::from_secs(5);
    let after_sleep = sleep_window + Duration::from_millis(1);
    advance(sleep_window).await;
    refused(&breaker);
    advance(Duration::from_millis(1)).await;
    let trial = breaker.try_acquire().unwrap();
    refused(&breaker); // exactly one trial
    trial.record(ok());
    assert_eq!(breaker.state(), CircuitState::Closed);

    // A failed trial re-opens with a new sleep window.
    breaker.transition_to(CircuitState::Open).unwrap();
    advance(after_sleep).await;
    call(&breaker, fail());
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(refused(&breaker).retry_after(), Some(sleep_window));

    // So does a cancelled one.
    advance(after_sleep).await;
    drop(breaker.try_acquire().unwrap());
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(refused(&breaker).retry_after(), Some(sleep_window));
}

#[tokio::test(start_paused = true)]
async fn fatal_state_on_402_says_top_up_and_waits_long() {
    let breaker = CircuitBreaker::builder()
        .fatal_wait(Duration::from_secs(3600))
        .build()
        .unwrap();
    call(&breaker, Outcome::Auth(AuthFailure::InsufficientBalance));
    assert_eq!(breaker.state(), CircuitState::Fatal);
    let error = refused(&breaker);
    assert_eq!(
        error.kind(),
        ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(AuthFailure::InsufficientBalance))
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3600)));
    assert!(error.to_string().contains("top up"), "{error}");
    assert_eq!(error.http_status(), StatusCode::PAYMENT_REQUIRED);
    advance(Duration::from_secs(3601)).await;
    // One trial; a 402 again goes straight back to the fatal state.
    call(&breaker, Outcome::Auth(AuthFailure::InsufficientBalance));
    assert_eq!(breaker.state(), CircuitState::Fatal);
    // Someone topped up: reset ends it at once.
    breaker.reset();
    call(&breaker, ok());
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn fatal_state_on_401_names_the_key_and_can_be_turned_off() {
    let breaker = CircuitBreaker::builder().build().unwrap();
    let pending = breaker.try_acquire().unwrap();
    trip_with_minimum_one(&breaker);
    // A 401 from a call admitted before the breaker opened still counts: the key is bad.
    pending.record(Outcome::Auth(AuthFailure::InvalidKey));
    let error = refused(&breaker);
    assert_eq!(
        error.kind(),
        ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(AuthFailure::InvalidKey))
    );
    assert!(error.to_string().contains("API key"), "{error}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1800)));

    let lenient = CircuitBreaker::builder().no_fatal_state().build().unwrap();
    call(&lenient, Outcome::Auth(AuthFailure::InvalidKey));
    assert_eq!(lenient.state(), CircuitState::Closed);
    assert_eq!(lenient.metrics().buffered_calls, 0, "ignored");
}

fn trip_with_minimum_one(breaker: &CircuitBreaker) {
    breaker.transition_to(CircuitState::Open).unwrap();
}

#[tokio::test(start_paused = true)]
async fn rate_limits_never_open_the_breaker() {
    let breaker = CircuitBreaker::builder().minimum_calls(1).build().unwrap();
    for _ in 0..1000 {
        call(
            &breaker,
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(1)),
            },
        );
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(breaker.metrics().buffered_calls, 0);
}

// ---- Through the layer: DeepSeek statuses, streams, timing to headers or first token.

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

fn status_service(
    layer: CircuitBreakerLayer,
) -> impl tower::Service<
    Request<u16>,
    Response = Response<CircuitBreakerBody<Full<Bytes>>>,
    Error = crate::Error,
    Future = impl Send,
> + Clone {
    ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|request: Request<u16>| async move {
            let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
            *response.status_mut() = StatusCode::from_u16(*request.body()).unwrap();
            Ok::<_, Infallible>(response)
        }))
}

#[tokio::test(start_paused = true)]
async fn every_deepseek_status_is_classified_for_the_breaker() {
    let events = Events::default();
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(1000)
        .listener(events.listener())
        .build()
        .unwrap();
    let breaker = layer.breaker().clone();
    let service = status_service(layer);
    for (status, expected) in [
        (200, "recorded successful"),
        (400, "recorded ignored"),
        (422, "recorded ignored"),
        (429, "recorded ignored"),
        (500, "recorded failed"),
        (502, "recorded failed"),
        (503, "recorded failed"),
        (504, "recorded failed"),
    ] {
        let response = service.clone().oneshot(Request::new(status)).await.unwrap();
        // The body is read to its end, as a client does.
        response.into_body().collect().await.unwrap();
        assert_eq!(events.take(), [expected], "{status}");
    }
    let metrics = breaker.metrics();
    assert_eq!((metrics.buffered_calls, metrics.failed_calls), (5, 4));
    for (status, reason) in [
        (401, AuthFailure::InvalidKey),
        (402, AuthFailure::InsufficientBalance),
    ] {
        breaker.reset();
        service.clone().oneshot(Request::new(status)).await.unwrap();
        assert_eq!(breaker.state(), CircuitState::Fatal);
        let error = service
            .clone()
            .oneshot(Request::new(200))
            .await
            .unwrap_err();
        assert_eq!(
            error.kind(),
            ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(reason))
        );
    }
}

fn sse_body(frames: Vec<(Duration, &'static [u8])>, error_at_end: bool) -> TestBody {
    let stream = futures_util::stream::iter(frames)
        .then(|(delay, bytes)| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(bytes)))
        })
        .chain(futures_util::stream::iter(error_at_end.then(|| {
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
        })));
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

fn sse_service(
    layer: CircuitBreakerLayer,
    head_delay: Duration,
    body: impl Fn() -> TestBody + Clone + Send + 'static,
) -> impl tower::Service<
    Request<()>,
    Response = Response<CircuitBreakerBody<TestBody>>,
    Error = crate::Error,
> + Clone {
    ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |_: Request<()>| {
            let body = body.clone();
            async move {
                tokio::time::sleep(head_delay).await;
                let mut response = Response::new(body());
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/event-stream"),
                );
                Ok::<_, Infallible>(response)
            }
        }))
}

const CHUNK: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
const STOP: &[u8] = b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";

#[tokio::test(start_paused = true)]
async fn streams_that_fail_after_a_200_head_count_as_failures() {
    let zero = Duration::ZERO;
    type Case = (
        &'static str,
        Vec<(Duration, &'static [u8])>,
        bool,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("complete", vec![(zero, CHUNK), (zero, STOP), (zero, DONE)], false, "recorded successful"),
        ("truncated", vec![(zero, CHUNK), (zero, CHUNK)], false, "recorded failed"),
        ("malformed", vec![(zero, b"data: {not json\n\n"), (zero, DONE)], false, "recorded failed"),
        (
            "insufficient_system_resource",
            vec![
                (zero, CHUNK),
                (zero, b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"insufficient_system_resource\"}]}\n\n"),
                (zero, DONE),
            ],
            false,
            "recorded failed",
        ),
        ("body error", vec![(zero, CHUNK)], true, "recorded failed"),
    ];
    for (name, frames, error_at_end, expected) in cases {
        let events = Events::default();
        let layer = CircuitBreakerLayer::builder()
            .minimum_calls(100)
            .listener(events.listener())
            .build()
            .unwrap();
        let service = sse_service(layer, zero, move || sse_body(frames.clone(), error_at_end));
        let response = service.oneshot(Request::new(())).await.unwrap();
        assert!(
            events.take().is_empty(),
            "{name}: nothing recorded at the head"
        );
        let _ = response.into_body().collect().await;
        assert_eq!(events.take(), [expected], "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_read_through_chat_stream_is_judged_too() {
    let events = Events::default();
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(100)
        .listener(events.listener())
        .build()
        .unwrap();
    let zero = Duration::ZERO;
    let service = sse_service(layer, zero, move || {
        sse_body(
            vec![
                (zero, CHUNK),
                (zero, b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"insufficient_system_resource\"}]}\n\n"),
                (zero, DONE),
            ],
            false,
        )
    });
    let response = service.oneshot(Request::new(())).await.unwrap();
    let mut stream = crate::deepseek::sse::ChatStream::new(response.into_body());
    let mut error = None;
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            error = Some(e);
        }
    }
    assert!(error.is_some());
    drop(stream); // ChatStream stops at `[DONE]` and drops the body
    assert_eq!(events.take(), ["recorded failed"]);
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_before_any_verdict_is_ignored() {
    let events = Events::default();
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(100)
        .listener(events.listener())
        .build()
        .unwrap();
    let zero = Duration::ZERO;
    let service = sse_service(layer, zero, move || sse_body(vec![(zero, CHUNK)], false));
    let response = service.oneshot(Request::new(())).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert_eq!(events.take(), ["recorded ignored"]);
}

async fn slow_calls_for(measure: SlowCallMeasure, frames: Vec<(Duration, &'static [u8])>) -> u32 {
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(100)
        .slow_call_duration(Duration::from_secs(5))
        .slow_call_measure(measure)
        .build()
        .unwrap();
    let breaker = layer.breaker().clone();
    let service = sse_service(layer, Duration::from_secs(1), move || {
        sse_body(frames.clone(), false)
    });
    let response = service.oneshot(Request::new(())).await.unwrap();
    response.into_body().collect().await.unwrap();
    breaker.metrics().slow_calls
}

#[tokio::test(start_paused = true)]
async fn slowness_is_measured_to_headers_or_first_token_never_the_whole_stream() {
    let s = Duration::from_secs;
    // Head after 1 s, then a long generation: 100 chunks over 200 s.
    let mut long: Vec<(Duration, &'static [u8])> = vec![(s(2), CHUNK); 100];
    long.push((s(0), DONE));
    assert_eq!(
        slow_calls_for(SlowCallMeasure::Headers, long.clone()).await,
        0
    );
    assert_eq!(slow_calls_for(SlowCallMeasure::FirstToken, long).await, 0);

    // The first token comes 10 s after the head, after keep-alives (which are not tokens).
    let late_token: Vec<(Duration, &'static [u8])> = vec![
        (s(3), b": keep-alive\n\n"),
        (s(3), b": keep-alive\n\n"),
        (s(4), CHUNK),
        (s(0), DONE),
    ];
    assert_eq!(
        slow_calls_for(SlowCallMeasure::Headers, late_token.clone()).await,
        0
    );
    assert_eq!(
        slow_calls_for(SlowCallMeasure::FirstToken, late_token).await,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn the_layer_opens_on_503s_refuses_without_calling_and_closes_after_recovery() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let layer = CircuitBreakerLayer::builder()
        .sliding_window(SlidingWindow::Count { calls: 4 })
        .minimum_calls(4)
        .half_open_calls(1)
        .open_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let breaker = layer.breaker().clone();
    let (counter, flag) = (calls.clone(), healthy.clone());
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |_: Request<()>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ok = flag.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::new()));
                if !ok {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Infallible>(response)
            }
        }));
    for _ in 0..4 {
        service.clone().oneshot(Request::new(())).await.unwrap();
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    for _ in 0..3 {
        let error = service.clone().oneshot(Request::new(())).await.unwrap_err();
        assert!(error.retry_after().is_some());
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    advance(Duration::from_secs(11)).await;
    service.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
}

// ---- Keyed breakers and fallbacks.

#[tokio::test(start_paused = true)]
async fn keyed_breakers_isolate_models() {
    let layer = KeyedCircuitBreakerLayer::new(
        |request: &Request<(&'static str, u16)>| request.body().0.to_owned(),
        CircuitBreaker::builder().minimum_calls(2),
        2,
    )
    .unwrap();
    let breakers = layer.breakers().clone();
    let service = ServiceBuilder::new().layer(layer).service(service_fn(
        |request: Request<(&'static str, u16)>| async move {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::from_u16(request.body().1).unwrap();
            Ok::<_, Infallible>(response)
        },
    ));
    for _ in 0..2 {
        service
            .clone()
            .oneshot(Request::new(("deepseek-v4-pro", 503)))
            .await
            .unwrap();
    }
    let error = service
        .clone()
        .oneshot(Request::new(("deepseek-v4-pro", 200)))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("deepseek-v4-pro"), "{error}");
    let response = service
        .clone()
        .oneshot(Request::new(("deepseek-v4-flash", 200)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(breakers.len(), 2);
    // The set is bounded: a third key evicts the least recently used closed breaker, never
    // the open one.
    service
        .clone()
        .oneshot(Request::new(("deepseek-chat", 200)))
        .await
        .unwrap();
    assert_eq!(breakers.len(), 2);
    assert!(breakers.existing(&"deepseek-v4-flash".to_owned()).is_none());
    assert_eq!(
        breakers
            .existing(&"deepseek-v4-pro".to_owned())
            .unwrap()
            .state(),
        CircuitState::Open
    );
}

/// A service called again and again (a reused clone) goes straight to the breaker of its
/// last key, yet that breaker still counts as used for the set's eviction, and a breaker that
/// left the set (retained away) is never called through again.
#[tokio::test(start_paused = true)]
async fn a_remembered_breaker_counts_as_used_and_is_forgotten_once_removed() {
    let layer = KeyedCircuitBreakerLayer::new(
        |request: &Request<(&'static str, u16)>| request.body().0.to_owned(),
        CircuitBreaker::builder().minimum_calls(2),
        2,
    )
    .unwrap();
    let breakers = layer.breakers().clone();
    let upstream = service_fn(|request: Request<(&'static str, u16)>| async move {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::from_u16(request.body().1).unwrap();
        Ok::<_, Infallible>(response)
    });
    let mut first = ServiceBuilder::new().layer(layer.clone()).service(upstream);
    let mut second = ServiceBuilder::new().layer(layer).service(upstream);
    async fn call<S>(service: &mut S, key: &'static str) -> Result<StatusCode, crate::Error>
    where
        S: Service<
                Request<(&'static str, u16)>,
                Response = Response<CircuitBreakerBody<Full<Bytes>>>,
                Error = crate::Error,
            >,
    {
        let response = service
            .ready()
            .await?
            .call(Request::new((key, 200)))
            .await?;
        Ok(response.status())
    }
    call(&mut first, "a").await.unwrap();
    call(&mut second, "b").await.unwrap();
    // `first` still remembers `a`: this use must make `a` the most recent.
    call(&mut first, "a").await.unwrap();
    call(&mut second, "c").await.unwrap();
    assert!(
        breakers.existing(&"b".to_owned()).is_none(),
        "b was the least recently used"
    );
    assert!(breakers.existing(&"a".to_owned()).is_some());
    // `a`'s breaker opens, then leaves the set: `first`, which remembers it, must take the
    // new one (closed) rather than be refused by the old.
    breakers.get(&"a".to_owned()).unwrap().force_open();
    assert!(
        call(&mut first, "a").await.is_err(),
        "refused while forced open"
    );
    breakers.retain(|key, _| key != "a");
    assert_eq!(call(&mut first, "a").await.unwrap(), StatusCode::OK);
    assert_eq!(
        breakers.existing(&"a".to_owned()).unwrap().state(),
        CircuitState::Closed
    );
}

/// The circuit-open error of a keyed breaker names the key and the time until the next trial;
/// a key is user data, so it is escaped and capped in the message.
#[tokio::test(start_paused = true)]
async fn keyed_rejection_names_the_key_and_the_wait_escaped_and_capped() {
    let layer = KeyedCircuitBreakerLayer::new(
        |request: &Request<(String, u16)>| request.body().0.clone(),
        CircuitBreaker::builder()
            .minimum_calls(1)
            .open_wait(Duration::from_secs(30)),
        8,
    )
    .unwrap();
    let service = ServiceBuilder::new().layer(layer).service(service_fn(
        |request: Request<(String, u16)>| async move {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::from_u16(request.body().1).unwrap();
            Ok::<_, Infallible>(response)
        },
    ));
    let call = |key: &str, status: u16| {
        service
            .clone()
            .oneshot(Request::new((key.to_owned(), status)))
    };

    call("deepseek-v4-pro", 503).await.unwrap();
    advance(Duration::from_secs(10)).await;
    let error = call("deepseek-v4-pro", 200).await.unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::CircuitOpen(_)));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(20)));
    let message = error.to_string();
    assert!(
        message.contains("breaker \"deepseek-v4-pro\" is open")
            && message.contains("next trial call is allowed in 20.000s"),
        "{message}"
    );

    // A hostile key: control characters escaped, length capped.
    let hostile = format!("evil\n\u{1b}[31m{}", "x".repeat(10_000));
    call(&hostile, 503).await.unwrap();
    let error = call(&hostile, 200).await.unwrap_err();
    let message = error.to_string();
    assert!(
        !message.contains('\n') && !message.contains('\u{1b}'),
        "{message:?}"
    );
    assert!(
        message.contains("breaker \"evil\\n\\u{1b}[31mxxx"),
        "{message}"
    );
    assert!(message.contains("…\" is open"), "{message}");
    assert!(message.len() < 600, "capped: {} bytes", message.len());

    // An empty key still gets a breaker (and a readable name).
    call("", 503).await.unwrap();
    let error = call("", 200).await.unwrap_err();
    assert!(error.to_string().contains("(empty key)"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn fallbacks_answer_refused_calls_and_say_so() {
    let layer = CircuitBreakerLayer::builder()
        .build()
        .unwrap()
        .with_fallback(fallback::from_fn(|_: Request<()>, why: &crate::Error| {
            assert!(matches!(why.kind(), ErrorKind::CircuitOpen(_)));
            Response::new(Full::new(Bytes::from_static(b"degraded")))
        }));
    let breaker = layer.breaker().clone();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"upstream"))))
        }));
    let response = service.clone().oneshot(Request::new(())).await.unwrap();
    assert!(response.extensions().get::<FallbackResponse>().is_none());
    breaker.open_for(Duration::from_secs(30));
    let response = service.clone().oneshot(Request::new(())).await.unwrap();
    let marker = response
        .extensions()
        .get::<FallbackResponse>()
        .unwrap()
        .clone();
    assert_eq!(&*marker.breaker, "deepseek");
    assert_eq!(marker.reason, CircuitOpenReason::Unhealthy);
    assert_eq!(marker.retry_after, Some(Duration::from_secs(30)));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"degraded");

    // Another service (another model) as the fallback.
    let other_model = service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"other model"))))
    });
    let layer =
        CircuitBreakerLayer::new(breaker.clone()).with_fallback(fallback::to_service(other_model));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"upstream"))))
        }));
    let response = service.oneshot(Request::new(())).await.unwrap();
    assert!(response.extensions().get::<FallbackResponse>().is_some());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"other model");
}

#[tokio::test]
async fn concurrent_successes_keep_the_window_exact() {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count { calls: 50 })
        .minimum_calls(50)
        .build()
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let breaker = breaker.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    breaker.try_acquire().unwrap().record(Outcome::Success);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let metrics = breaker.metrics();
    assert_eq!((metrics.buffered_calls, metrics.failed_calls), (50, 0));
}

/// The layer settles a closed-state success inline only when recording it would change
/// nothing: a full count window of fast successes, no listener. A slow success, a success
/// with a listener, a success after a state change and a success at a body's end still count.
#[tokio::test(start_paused = true)]
async fn a_window_full_of_fast_successes_still_records_what_matters() {
    // Each request says how long the upstream takes before its head, and whether it has a body.
    fn timed_service(
        layer: CircuitBreakerLayer,
    ) -> impl tower::Service<
        Request<(u64, bool)>,
        Response = Response<CircuitBreakerBody<Full<Bytes>>>,
        Error = crate::Error,
        Future = impl Send,
    > + Clone
    + Send {
        ServiceBuilder::new().layer(layer).service(service_fn(
            |request: Request<(u64, bool)>| async move {
                let (seconds, with_body) = *request.body();
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                let body = if with_body { &b"{}"[..] } else { &b""[..] };
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(body))))
            },
        ))
    }
    async fn send<S>(service: &S, seconds: u64, body: bool)
    where
        S: tower::Service<
                Request<(u64, bool)>,
                Response = Response<CircuitBreakerBody<Full<Bytes>>>,
                Error = crate::Error,
            > + Clone,
    {
        let response = service
            .clone()
            .oneshot(Request::new((seconds, body)))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
    }
    let builder = || {
        CircuitBreakerLayer::builder()
            .sliding_window(SlidingWindow::Count { calls: 3 })
            .minimum_calls(3)
            .slow_call_duration(Duration::from_secs(5))
            .slow_call_rate_threshold(100.0)
    };

    // A slow success after a window full of fast ones, judged at the head (no body) and at
    // the end of a body.
    for body in [false, true] {
        let layer = builder().build().unwrap();
        let breaker = layer.breaker().clone();
        let service = timed_service(layer);
        for _ in 0..4 {
            send(&service, 0, body).await;
        }
        assert_eq!(breaker.metrics().buffered_calls, 3);
        send(&service, 6, body).await;
        let metrics = breaker.metrics();
        assert_eq!(
            (metrics.buffered_calls, metrics.slow_calls),
            (3, 1),
            "body: {body}"
        );
        // Three fast successes evict it again.
        for _ in 0..3 {
            send(&service, 0, body).await;
        }
        assert_eq!(breaker.metrics().slow_calls, 0, "body: {body}");
    }

    // A listener hears every success, the window full or not.
    let events = Events::default();
    let layer = builder().listener(events.listener()).build().unwrap();
    let service = timed_service(layer);
    for _ in 0..5 {
        send(&service, 0, false).await;
    }
    assert_eq!(events.take(), vec!["recorded successful"; 5]);

    // A success admitted before a transition changes nothing after it (the generation rule),
    // the window full or not.
    let layer = builder().build().unwrap();
    let breaker = layer.breaker().clone();
    let service = timed_service(layer);
    for _ in 0..3 {
        send(&service, 0, false).await;
    }
    let in_flight = tokio::spawn({
        let service = service.clone();
        async move { send(&service, 2, false).await }
    });
    tokio::task::yield_now().await;
    breaker.transition_to(CircuitState::MetricsOnly).unwrap();
    in_flight.await.unwrap();
    assert_eq!(breaker.metrics().buffered_calls, 0);
}

/// Reference case 4 on the layer's inline success path ([`Permit::complete_success`]), which
/// compares raw clock ticks with the slow-call duration converted once: with the window full
/// of fast successes, a call of exactly the threshold is settled inline as fast, and one a
/// nanosecond longer is recorded as slow.
#[tokio::test(start_paused = true)]
async fn case_04_the_inline_success_path_is_strict_at_the_threshold() {
    let threshold = Duration::from_secs(5);
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count { calls: 3 })
        .minimum_calls(3)
        .slow_call_duration(threshold)
        .slow_call_rate_threshold(100.0)
        .build()
        .unwrap();
    for _ in 0..3 {
        breaker.acquire().unwrap().complete_success(None);
    }
    let permit = breaker.acquire().unwrap();
    advance(threshold).await;
    permit.complete_success(None);
    assert_eq!(breaker.metrics().slow_calls, 0, "exactly 5 s is not slow");
    // Measured to an earlier moment (a head before the body's end): the same rule.
    let permit = breaker.acquire().unwrap();
    advance(threshold).await;
    let head = crate::clock::Stamp::now();
    advance(Duration::from_secs(60)).await;
    permit.complete_success(Some(head));
    assert_eq!(
        breaker.metrics().slow_calls,
        0,
        "a 5 s head, then a long body"
    );
    let permit = breaker.acquire().unwrap();
    advance(threshold + Duration::from_nanos(1)).await;
    permit.complete_success(None);
    assert_eq!(breaker.metrics().slow_calls, 1, "5 s + 1 ns is slow");
}
