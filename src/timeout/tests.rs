//! Unit tests: reference case 49 and the streaming phases, on paused time.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::ErrorKind;

/// Sets its flag when dropped: proves the inner future was cancelled.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A 200 SSE response whose frames come after their delays.
fn sse(
    frames: Vec<(u64, &'static str)>,
) -> Response<impl http_body::Body<Data = Bytes, Error = io::Error>> {
    let stream = futures_util::stream::unfold(frames.into_iter(), |mut frames| async move {
        let (wait, text) = frames.next()?;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        Some((
            Ok::<_, io::Error>(Frame::data(Bytes::from_static(text.as_bytes()))),
            frames,
        ))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(stream))
        .unwrap()
}

/// Reads a body to its end; the error kind if it failed, and when.
async fn read<B>(body: B) -> (Option<ErrorKind>, Duration)
where
    B: http_body::Body<Error = Error>,
{
    let started = Instant::now();
    let kind = body.collect().await.err().map(|error| error.kind());
    (kind, started.elapsed())
}

#[tokio::test(start_paused = true)]
async fn case_49_fires_exactly_after_call_and_drops_the_inner_future() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped);
    let inner = tower::service_fn(move |_req: Request<()>| {
        let guard = DropFlag(Arc::clone(&flag));
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    });
    let layer = StreamTimeoutLayer::builder()
        .headers(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut service = layer.layer(inner);
    // Time spent between poll_ready and call does not count.
    service.ready().await.unwrap();
    tokio::time::advance(Duration::from_secs(3)).await;
    let called = Instant::now();
    let mut future = std::pin::pin!(service.call(Request::new(())));
    let error = (&mut future).await.unwrap_err();
    assert_eq!(called.elapsed(), Duration::from_secs(5));
    assert_eq!(error.kind(), ErrorKind::Timeout(TimeoutPhase::Headers));
    assert!(
        dropped.load(Ordering::SeqCst),
        "dropped at expiry, before the outer future"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_in_time_passes_and_total_bounds_the_head_too() {
    let inner = tower::service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let layer = StreamTimeoutLayer::builder()
        .headers(Duration::from_secs(5))
        .build()
        .unwrap();
    let response = layer.layer(inner).oneshot(Request::new(())).await.unwrap();
    assert_eq!(read(response.into_body()).await.0, None);

    let layer = StreamTimeoutLayer::builder()
        .total(Duration::from_secs(2))
        .build()
        .unwrap();
    let error = layer
        .layer(inner)
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout(TimeoutPhase::Total));
}

#[tokio::test(start_paused = true)]
async fn keep_alives_are_not_a_first_token() {
    let frames = vec![(1000, ": keep-alive\n\n"); 30];
    let inner = tower::service_fn(move |_req: Request<()>| {
        let frames = frames.clone();
        async move { Ok::<_, Infallible>(sse(frames)) }
    });
    let layer = StreamTimeoutLayer::builder()
        .first_token(Duration::from_millis(10_500))
        .build()
        .unwrap();
    let called = Instant::now();
    let response = layer.layer(inner).oneshot(Request::new(())).await.unwrap();
    let (kind, _) = read(response.into_body()).await;
    assert_eq!(kind, Some(ErrorKind::Timeout(TimeoutPhase::FirstToken)));
    assert_eq!(called.elapsed(), Duration::from_millis(10_500), "from call");
}

#[tokio::test(start_paused = true)]
async fn an_idle_gap_trips_but_a_slow_steady_stream_does_not() {
    let layer = StreamTimeoutLayer::builder()
        .first_token(Duration::from_secs(5))
        .idle(Duration::from_secs(2))
        .build()
        .unwrap();
    // One chunk a second for a minute: slow, never idle.
    let steady: Vec<_> = std::iter::once((3000, ": keep-alive\n\n"))
        .chain(std::iter::repeat_n(
            (1000, "data: {\"choices\":[]}\n\n"),
            60,
        ))
        .chain(std::iter::once((1000, "data: [DONE]\n\n")))
        .collect();
    let inner = tower::service_fn(move |_req: Request<()>| {
        let frames = steady.clone();
        async move { Ok::<_, Infallible>(sse(frames)) }
    });
    let response = layer.layer(inner).oneshot(Request::new(())).await.unwrap();
    let (kind, took) = read(response.into_body()).await;
    assert_eq!(kind, None);
    assert_eq!(took, Duration::from_secs(3 + 61));

    // Two chunks, then 3 s of silence.
    let gap = vec![
        (0, "data: {\"choices\":[]}\n\n"),
        (1000, "data: {\"choices\":[]}\n\n"),
        (3000, "data: [DONE]\n\n"),
    ];
    let inner = tower::service_fn(move |_req: Request<()>| {
        let frames = gap.clone();
        async move { Ok::<_, Infallible>(sse(frames)) }
    });
    let response = layer.layer(inner).oneshot(Request::new(())).await.unwrap();
    let (kind, took) = read(response.into_body()).await;
    assert_eq!(kind, Some(ErrorKind::Timeout(TimeoutPhase::Idle)));
    assert_eq!(took, Duration::from_secs(1 + 2));
}

#[tokio::test(start_paused = true)]
async fn total_bounds_a_long_stream_and_the_body_ends_after_its_error() {
    let frames = vec![(1000, "data: {\"choices\":[]}\n\n"); 20];
    let inner = tower::service_fn(move |_req: Request<()>| {
        let frames = frames.clone();
        async move { Ok::<_, Infallible>(sse(frames)) }
    });
    let layer = StreamTimeoutLayer::builder()
        .idle(Duration::from_secs(5))
        .total(Duration::from_millis(7500))
        .build()
        .unwrap();
    let called = Instant::now();
    let response = layer.layer(inner).oneshot(Request::new(())).await.unwrap();
    let mut body = std::pin::pin!(response.into_body());
    let mut chunks = 0;
    let error = loop {
        match body.frame().await {
            Some(Ok(_)) => chunks += 1,
            Some(Err(error)) => break error,
            None => panic!("must time out"),
        }
    };
    assert_eq!(error.kind(), ErrorKind::Timeout(TimeoutPhase::Total));
    assert_eq!((chunks, called.elapsed()), (7, Duration::from_millis(7500)));
    assert!(body.frame().await.is_none());
    assert!(http_body::Body::is_end_stream(&*body));
}

/// The idle bound runs while the body waits for the upstream: a caller that holds a chunk
/// for longer than the bound before asking for the next one is not an idle upstream.
#[tokio::test(start_paused = true)]
async fn the_idle_bound_runs_while_the_body_waits_not_while_the_caller_holds_a_chunk() {
    let layer = StreamTimeoutLayer::builder()
        .idle(Duration::from_secs(2))
        .build()
        .unwrap();
    let frames = vec![
        (0, "data: {\"choices\":[]}\n\n"),
        (1000, "data: {\"choices\":[]}\n\n"),
        (1000, "data: [DONE]\n\n"),
    ];
    let inner = tower::service_fn(move |_req: Request<()>| {
        let frames = frames.clone();
        async move { Ok::<_, Infallible>(sse(frames)) }
    });
    let response = layer.layer(inner).oneshot(Request::new(())).await.unwrap();
    let mut body = std::pin::pin!(response.into_body());
    let started = Instant::now();
    let mut chunks = 0;
    while let Some(frame) = body.frame().await {
        frame.expect("no timeout: each chunk comes 1 s after it is asked for");
        chunks += 1;
        // A slow reader: 5 s with each chunk, past the 2 s bound.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(chunks, 3);
    assert_eq!(started.elapsed(), Duration::from_secs(3 * 5 + 2));
}

/// A body read in one go (a JSON answer that came with its head) ends without its timer
/// ever being moved from the head's bound, and the bound that was due still applies to a
/// body that has to wait.
#[tokio::test(start_paused = true)]
async fn a_body_that_never_waits_ends_and_one_that_waits_gets_its_first_token_bound() {
    let layer = StreamTimeoutLayer::builder()
        .headers(Duration::from_secs(1))
        .first_token(Duration::from_secs(4))
        .idle(Duration::from_secs(2))
        .build()
        .unwrap();
    let inner = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"id\":1}"))))
    });
    let response = layer.layer(inner).oneshot(Request::new(())).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"{\"id\":1}");

    // The head in 0.5 s, then only keep-alives: the first-token bound (4 s from the call),
    // not the head's (1 s), ends it.
    let inner = tower::service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<_, Infallible>(sse(vec![
            (3000, ": keep-alive\n\n"),
            (3000, ": keep-alive\n\n"),
        ]))
    });
    let called = Instant::now();
    let response = layer.layer(inner).oneshot(Request::new(())).await.unwrap();
    let (kind, _) = read(response.into_body()).await;
    assert_eq!(kind, Some(ErrorKind::Timeout(TimeoutPhase::FirstToken)));
    assert_eq!(called.elapsed(), Duration::from_secs(4));
}

/// A JSON answer that comes whole with its head never makes the body a timer (the head's
/// own was inline in the call's future); a stream that has to wait makes one then, and its
/// first-token bound still counts from the call.
#[tokio::test(start_paused = true)]
async fn a_body_makes_its_timer_only_when_it_has_to_wait() {
    let layer = StreamTimeoutLayer::builder()
        .headers(Duration::from_secs(5))
        .first_token(Duration::from_secs(10))
        .idle(Duration::from_secs(3))
        .build()
        .unwrap();
    let json = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"a\":1}"))))
    });
    let response = layer.layer(json).oneshot(Request::new(())).await.unwrap();
    let mut body = std::pin::pin!(response.into_body());
    while let Some(frame) = body.frame().await {
        frame.unwrap();
        assert!(!body.has_timer(), "a body already here needs no timer");
    }
    assert!(!body.has_timer());

    let stream = tower::service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        Ok::<_, Infallible>(sse(vec![(7_000, "data: {}\n\n")]))
    });
    let called = Instant::now();
    let response = layer.layer(stream).oneshot(Request::new(())).await.unwrap();
    let mut body = std::pin::pin!(response.into_body());
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(http_body::Body::poll_frame(body.as_mut(), &mut cx).is_pending());
    assert!(body.has_timer(), "a waiting stream has its timer");
    // The first token is due 10 s after the call, 6 s from now: the stream's 7 s is late.
    let (kind, _) = read(body).await;
    assert_eq!(kind, Some(ErrorKind::Timeout(TimeoutPhase::FirstToken)));
    assert_eq!(called.elapsed(), Duration::from_secs(10));
}
