//! Unit tests on paused time. Reference cases from
//! `resilience-semantics.md` §8.6 are cited by number.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::{Instant, advance};
use tower::{Service, ServiceBuilder, ServiceExt};

use super::*;
use crate::deepseek::TokenEstimate;
use crate::{Error, ErrorKind};

fn ok(_request: Request<()>) -> std::future::Ready<Result<Response<()>, Infallible>> {
    std::future::ready(Ok(Response::new(())))
}

async fn hit<S>(service: &mut S) -> Result<(), Error>
where
    S: Service<Request<()>, Response = Response<()>, Error = Error>,
{
    service
        .ready()
        .await?
        .call(Request::new(()))
        .await
        .map(drop)
}

fn direct(
    builder: RateLimitBuilder,
) -> impl Service<Request<()>, Response = Response<()>, Error = Error> + Clone {
    ServiceBuilder::new()
        .layer(builder.build().expect("valid"))
        .service_fn(ok)
}

const MS: Duration = Duration::from_millis(1);

fn decide<K, Bk: RateLimitBackend<K>>(backend: &Bk, key: &K, n: u32) -> Decision {
    match backend.decide(key, NonZeroU32::new(n).expect("n > 0")) {
        Decide::Now(decision) => decision,
        Decide::Later(_) => panic!("local backends decide now"),
    }
}

#[tokio::test(start_paused = true)]
async fn case_39_rejects_too_many() {
    let mut service = direct(RateLimitLayer::builder().per_second(2));
    assert!(hit(&mut service).await.is_ok());
    advance(MS).await;
    assert!(hit(&mut service).await.is_ok());
    advance(MS).await;
    assert!(hit(&mut service).await.is_err());
    advance(Duration::from_secs(1)).await;
    assert!(hit(&mut service).await.is_ok());
    advance(MS).await;
    assert!(hit(&mut service).await.is_ok());
    advance(MS).await;
    assert!(hit(&mut service).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn case_39_does_not_allow_one_extra_cell_after_longer_interval() {
    let mut service = direct(RateLimitLayer::builder().per_second(5));
    for _ in 0..5 {
        assert!(hit(&mut service).await.is_ok());
    }
    assert!(hit(&mut service).await.is_err());
    advance(Duration::from_secs(2)).await;
    for _ in 0..5 {
        assert!(hit(&mut service).await.is_ok());
    }
    assert!(
        hit(&mut service).await.is_err(),
        "the 6th after a long idle"
    );
}

#[tokio::test(start_paused = true)]
async fn case_39_never_allows_more_than_capacity_all() {
    let limiter = DirectLimiter::per_second(4, None).unwrap();
    assert_eq!(decide(&limiter, &(), 2), Decision::Allowed);
    assert_eq!(decide(&limiter, &(), 2), Decision::Allowed);
    assert!(matches!(decide(&limiter, &(), 2), Decision::Limited { .. }));
    advance(Duration::from_secs(1)).await;
    assert_eq!(decide(&limiter, &(), 2), Decision::Allowed);
    assert_eq!(decide(&limiter, &(), 2), Decision::Allowed);
    assert!(matches!(decide(&limiter, &(), 2), Decision::Limited { .. }));
}

#[tokio::test(start_paused = true)]
async fn case_39_correct_wait_time() {
    let mut service = direct(RateLimitLayer::builder().per_second(5));
    let mut refused = 0;
    for _ in 0..20 {
        advance(MS).await;
        if let Err(error) = hit(&mut service).await {
            refused += 1;
            let wait = error.retry_after().expect("a wait");
            assert!(wait > Duration::ZERO);
            advance(wait).await;
            hit(&mut service)
                .await
                .expect("passes exactly after the wait");
        }
    }
    assert!(refused > 0);
}

#[tokio::test(start_paused = true)]
async fn case_40_check_n_beyond_burst_is_insufficient_capacity_and_below_burst_waits_without_state_change()
 {
    let limiter = DirectLimiter::per_second(5, None).unwrap();
    assert_eq!(decide(&limiter, &(), 6), Decision::Exceeded { limit: 5 });
    assert_eq!(decide(&limiter, &(), 3), Decision::Allowed);
    // Two cells are left: three are not available now (the wait is one interval, 200 ms)...
    match decide(&limiter, &(), 3) {
        Decision::Limited { retry_after, info } => {
            assert_eq!(retry_after, Duration::from_millis(200));
            assert_eq!(info.limit(), 5);
        }
        other => panic!("{other:?}"),
    }
    // ...and asking took nothing: both remaining cells still pass.
    assert_eq!(decide(&limiter, &(), 1), Decision::Allowed);
    assert_eq!(decide(&limiter, &(), 1), Decision::Allowed);
    assert!(matches!(decide(&limiter, &(), 1), Decision::Limited { .. }));

    // Through the token layer, a call costing more than the burst is a clear error.
    let layer = TokenLimitLayer::builder().per_minute(100).build().unwrap();
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(TokenEstimate::new(90, Some(20)));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_r: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
    let error = service.oneshot(request).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidRequest);
    let text = error.to_string();
    assert!(
        text.contains("costs 110") && text.contains("burst is 100"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn case_42_keys_are_independent_and_idle_keys_are_evicted() {
    let layer = RateLimitLayer::builder()
        .per_second(1)
        .evict_every(Duration::from_secs(5))
        .build_keyed(|request: &Request<()>| request.uri().path().to_owned())
        .unwrap();
    let limiter = layer.backend().clone();
    let service = ServiceBuilder::new().layer(layer).service_fn(ok);
    let call = |path: &'static str| {
        service
            .clone()
            .oneshot(Request::get(path).body(()).unwrap())
    };
    call("/a").await.unwrap();
    call("/a").await.unwrap_err();
    call("/b").await.expect("another key has its own bucket");
    assert_eq!(limiter.len(), 2);

    // The background sweep runs every 5 s; both keys are idle (full again) after 1 s.
    advance(Duration::from_secs(4)).await;
    assert_eq!(limiter.len(), 2, "no sweep yet");
    advance(Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(limiter.len(), 0, "swept");

    // A key still in use (not full again) survives a sweep.
    call("/a").await.unwrap();
    limiter.evict_idle();
    assert_eq!(limiter.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_ends_when_the_last_layer_is_dropped() {
    let layer = RateLimitLayer::builder()
        .per_second(1)
        .evict_every(Duration::from_secs(1))
        .build_keyed(|_: &Request<()>| 1u8)
        .unwrap();
    let service = ServiceBuilder::new().layer(layer).service_fn(ok);
    service.oneshot(Request::new(())).await.unwrap(); // starts the sweeper, drops the layer
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    advance(Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks - 1
    );
}

#[test]
fn case_43_jitter_lies_in_min_to_min_plus_interval() {
    let jitter = Jitter::new(Duration::from_millis(20), Duration::from_millis(30));
    let mut rng = fastrand::Rng::with_seed(43);
    let (mut low, mut high) = (Duration::MAX, Duration::ZERO);
    for _ in 0..10_000 {
        let extra = jitter.sample(&mut rng);
        assert!(extra >= Duration::from_millis(20) && extra < Duration::from_millis(50));
        low = low.min(extra);
        high = high.max(extra);
    }
    // The draws cover the interval (not a constant).
    assert!(low < Duration::from_millis(21) && high > Duration::from_millis(49));
}

#[tokio::test(start_paused = true)]
async fn case_43_a_jittered_wait_is_the_wait_plus_the_seeded_jitter() {
    let jitter = Jitter::new(Duration::from_millis(20), Duration::from_millis(30));
    let waits = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&waits);
    let mut service = direct(
        RateLimitLayer::builder()
            .per_second(1)
            .wait_up_to(Duration::from_secs(2))
            .jitter(jitter)
            .jitter_seed(7)
            .listener(move |event: &RateLimitEvent<'_>| {
                if let RateLimitEvent::Waited { waited, .. } = event {
                    seen.lock().unwrap().push(*waited);
                }
            }),
    );
    hit(&mut service).await.unwrap();
    for _ in 0..5 {
        hit(&mut service)
            .await
            .expect("admitted after the jittered wait");
    }
    // Each call starts right after the previous admission: its wait is exactly one interval,
    // plus the seeded jitter, plus at most the 1 ms granularity of tokio's timer.
    let mut rng = fastrand::Rng::with_seed(7);
    let waits = waits.lock().unwrap();
    assert_eq!(waits.len(), 5);
    for &waited in waits.iter() {
        let expected = Duration::from_secs(1) + jitter.sample(&mut rng);
        assert!(
            waited >= expected && waited <= expected + MS,
            "{waited:?} vs {expected:?}"
        );
        assert!(waited >= Duration::from_millis(1020) && waited < Duration::from_millis(1051));
    }
}

#[tokio::test(start_paused = true)]
async fn rejection_headers_are_exact_rounded_up_and_never_zero() {
    let mut service = direct(RateLimitLayer::builder().per_minute(2).burst(3));
    for _ in 0..3 {
        hit(&mut service).await.unwrap();
    }
    // T = 30 s, burst 3: the next cell is 30 s away; the burst is full again after 90 s.
    let error = hit(&mut service).await.unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
    let response = error.to_http_response();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = response.headers();
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(headers["x-ratelimit-limit"], "3");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(headers["x-ratelimit-reset"], "90");

    advance(Duration::from_millis(10_500)).await;
    let response = hit(&mut service).await.unwrap_err().to_http_response();
    assert_eq!(response.headers()["retry-after"], "20"); // 19.5 s, rounded up
    assert_eq!(response.headers()["x-ratelimit-reset"], "80"); // 79.5 s, rounded up

    advance(Duration::from_millis(19_500) - Duration::from_nanos(1)).await;
    let error = hit(&mut service).await.unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_nanos(1)));
    assert_eq!(
        error.to_http_response().headers()["retry-after"],
        "1",
        "never 0"
    );
}

#[tokio::test(start_paused = true)]
async fn the_response_layer_answers_429_with_the_headers() {
    let service = ServiceBuilder::new()
        .layer(RateLimitResponseLayer)
        .layer(RateLimitLayer::builder().per_second(2).build().unwrap())
        .service_fn(|_r: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
    for _ in 0..2 {
        assert_eq!(
            service
                .clone()
                .oneshot(Request::new(()))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let refused = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["x-ratelimit-limit"], "2");
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(refused.headers()["x-ratelimit-reset"], "1");
    let body: serde_json::Value = serde_json::from_str(refused.body()).unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test(start_paused = true)]
async fn wait_mode_admits_when_capacity_frees_within_the_wait() {
    let mut service = direct(
        RateLimitLayer::builder()
            .per_second(1)
            .wait_up_to(Duration::from_millis(1500)),
    );
    hit(&mut service).await.unwrap();
    let start = Instant::now();
    hit(&mut service).await.expect("waits one interval");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    hit(&mut service).await.expect("and again");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn wait_mode_refuses_at_once_when_capacity_does_not_free_within_the_wait() {
    let mut service = direct(
        RateLimitLayer::builder()
            .per_second(1)
            .wait_up_to(Duration::from_millis(500)),
    );
    hit(&mut service).await.unwrap();
    let start = Instant::now();
    let error = hit(&mut service).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(start.elapsed(), Duration::ZERO, "no pointless sleep");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_whose_capacity_is_taken_meanwhile_is_refused_at_its_deadline() {
    // Two callers wait for the same freed cell; the budget fits one interval only.
    let layer = RateLimitLayer::builder()
        .per_second(1)
        .wait_up_to(Duration::from_millis(1200))
        .build()
        .unwrap();
    let service = ServiceBuilder::new().layer(layer).service_fn(ok);
    service.clone().oneshot(Request::new(())).await.unwrap();
    let first = tokio::spawn(service.clone().oneshot(Request::new(())));
    let second = tokio::spawn(service.clone().oneshot(Request::new(())));
    let results = [first.await.unwrap(), second.await.unwrap()];
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 1);
    let refused = results
        .iter()
        .find_map(|result| result.as_ref().err())
        .unwrap();
    assert_eq!(refused.kind(), ErrorKind::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_holds_no_inner_readiness() {
    // Inner concurrency of one. Key "/slow" waits a second for capacity; a call on key
    // "/fast" must not be blocked behind it.
    let layer = RateLimitLayer::builder()
        .per_second(1)
        .wait_up_to(Duration::from_secs(2))
        .build_keyed(|request: &Request<()>| request.uri().path().to_owned())
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(layer)
        .concurrency_limit(1)
        .service_fn(ok);
    let call = |path: &'static str| {
        service
            .clone()
            .oneshot(Request::get(path).body(()).unwrap())
    };
    call("/slow").await.unwrap();
    let start = Instant::now();
    let slow = tokio::spawn(call("/slow"));
    tokio::task::yield_now().await;
    call("/fast").await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "not blocked by the waiting call"
    );
    slow.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn clones_across_tasks_share_one_budget() {
    let layer = RateLimitLayer::builder().per_second(10).build().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let layer = layer.clone();
        tasks.push(tokio::spawn(async move {
            let mut service = ServiceBuilder::new().layer(layer).service_fn(ok);
            let mut passed = 0;
            for _ in 0..5 {
                passed += usize::from(hit(&mut service).await.is_ok());
                tokio::task::yield_now().await;
            }
            passed
        }));
    }
    let mut passed = 0;
    for task in tasks {
        passed += task.await.unwrap();
    }
    assert_eq!(passed, 10);
}

#[tokio::test(start_paused = true)]
async fn events_name_the_limiter_and_never_the_key() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let layer = RateLimitLayer::builder()
        .name("inbound")
        .per_second(1)
        .listener(move |event: &RateLimitEvent<'_>| seen.lock().unwrap().push(format!("{event:?}")))
        .build_keyed(HeaderKey::authorization())
        .unwrap();
    let service = ServiceBuilder::new().layer(layer).service_fn(ok);
    let request = || {
        Request::get("/")
            .header("authorization", "Bearer sk-secret-123")
            .body(())
            .unwrap()
    };
    service.clone().oneshot(request()).await.unwrap();
    let error = service.clone().oneshot(request()).await.unwrap_err();
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].contains("Rejected") && events[0].contains("inbound"));
    for text in [
        events[0].clone(),
        error.to_string(),
        format!("{error:?}"),
        format!("{service:?}"),
    ] {
        assert!(!text.contains("sk-secret"), "{text}");
    }
    assert!(error.to_string().contains("inbound"));
}

#[test]
fn bad_settings_are_config_errors_saying_which_value() {
    let cases = [
        (
            RateLimitLayer::builder().per_second(0).build().err(),
            "at least 1 call",
        ),
        (
            RateLimitLayer::builder()
                .per_second(5)
                .burst(0)
                .build()
                .err(),
            "burst",
        ),
        (
            RateLimitLayer::builder()
                .rate(5, Duration::ZERO)
                .build()
                .err(),
            "period",
        ),
        (RateLimitLayer::builder().build().err(), "no rate set"),
        (
            RateLimitLayer::builder()
                .rate(u32::MAX, Duration::from_nanos(1))
                .build()
                .err(),
            "nanosecond",
        ),
        (
            RateLimitLayer::builder()
                .per_second(1)
                .evict_every(Duration::ZERO)
                .build_keyed::<_, u8>(|_: &Request<()>| 0u8)
                .err(),
            "eviction",
        ),
        (
            TokenLimitLayer::builder().per_minute(0).build().err(),
            "at least 1",
        ),
    ];
    for (error, needle) in cases {
        let error = error.expect("refused");
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(
            error.to_string().contains(needle),
            "{error} lacks {needle:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_backend_fails_open_or_closed_as_it_says() {
    struct Down(bool);
    impl RateLimitBackend<()> for Down {
        type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Decision> + Send>>;
        fn decide(&self, _key: &(), _cost: NonZeroU32) -> Decide<Self::Future> {
            let fail_open = self.0;
            Decide::Later(Box::pin(async move { Decision::Unavailable { fail_open } }))
        }
        fn limit(&self) -> u64 {
            10
        }
    }
    let events = Arc::new(Mutex::new(Vec::new()));
    for fail_open in [true, false] {
        let seen = Arc::clone(&events);
        let layer = RateLimitLayer::builder()
            .name("shared")
            .listener(move |event: &RateLimitEvent<'_>| {
                if let RateLimitEvent::BackendUnavailable { fail_open, .. } = event {
                    seen.lock().unwrap().push(*fail_open);
                }
            })
            .build_with_backend(Global, Down(fail_open))
            .unwrap();
        let service = ServiceBuilder::new().layer(layer).service_fn(ok);
        let result = service.oneshot(Request::new(())).await;
        assert_eq!(result.is_ok(), fail_open);
    }
    assert_eq!(*events.lock().unwrap(), [true, false]);
}

fn json_usage(total: u64) -> Response<Full<Bytes>> {
    let body = format!(
        r#"{{"choices":[],"usage":{{"prompt_tokens":1,"completion_tokens":{},"total_tokens":{total}}}}}"#,
        total.saturating_sub(1)
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

#[tokio::test(start_paused = true)]
async fn token_reservation_is_reconciled_from_a_json_body() {
    let used = Arc::new(Mutex::new(300u64));
    let answer = Arc::clone(&used);
    let layer = TokenLimitLayer::builder()
        .per_minute(1_000)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |_r: Request<()>| {
            let total = *answer.lock().unwrap();
            async move { Ok::<_, Infallible>(json_usage(total)) }
        });
    let call = |prompt: u32, max: u32| {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(TokenEstimate::new(prompt, Some(max)));
        let service = service.clone();
        async move {
            let response = service.oneshot(request).await?;
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::from_boxed(e.into()))?;
            Ok::<_, Error>(())
        }
    };
    // Reserve 100 + 700 = 800, use 300: 500 credited.
    call(100, 700).await.unwrap();
    assert_eq!(layer.balance(&()), 500);
    // 200 left in the bucket; the 500 credit pays for most of a 700-token call, which takes
    // the last 200. It uses 300: 400 credited.
    call(100, 600).await.unwrap();
    assert_eq!(layer.balance(&()), 400);
    // Full again after a minute. A 100-token call is paid by the credit (300 left) and uses
    // 900: the 800 over its reservation are charged to the bucket at once (200 left).
    advance(Duration::from_secs(60)).await;
    *used.lock().unwrap() = 900;
    call(50, 50).await.unwrap();
    assert_eq!(layer.balance(&()), 300);
    // A 500-token call: 300 credit + the last 200 in the bucket. It uses 900 too: the bucket
    // is empty, so the 400 over are owed...
    call(250, 250).await.unwrap();
    assert_eq!(layer.balance(&()), -400);
    // ...and charged to the next reservation: after 30 s (500 tokens back), a 200-token call
    // costs 600 and is refused; after 6 s more (600 back) it passes.
    advance(Duration::from_secs(30)).await;
    let refused = call(100, 100).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::RateLimited);
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(6)));
    assert_eq!(
        layer.balance(&()),
        -400,
        "a refusal leaves the balance as it was"
    );
    advance(Duration::from_secs(6)).await;
    *used.lock().unwrap() = 200;
    call(100, 100).await.unwrap();
    assert_eq!(layer.balance(&()), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_gives_its_reservation_back() {
    let layer = TokenLimitLayer::builder()
        .per_minute(1_000)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|_r: Request<()>| async {
            let mut response = json_usage(0);
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, Infallible>(response)
        });
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(TokenEstimate::new(400, Some(400)));
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(layer.balance(&()), 800);
}

#[tokio::test(start_paused = true)]
async fn tokens_without_an_estimate_reserve_the_default() {
    let layer = TokenLimitLayer::builder()
        .per_minute(1_000)
        .default_estimate(600)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_r: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
    let first = service.clone().oneshot(Request::new(())).await.unwrap();
    drop(first); // no usage reported: the reservation stands
    let error = service.oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    // 600 of 1000 taken; 600 more need 200 more tokens: 12 s at 1000/min.
    assert_eq!(error.retry_after(), Some(Duration::from_secs(12)));
}
