//! The gateway's CPU profile end to end: fetched over real HTTP from the admin server while the
//! gateway (mock mode) serves chat completions, and decoded as pprof. The profile runs on the
//! real clock for one second: sampling needs real CPU time. Nothing here asserts a duration.
#![cfg(all(
    feature = "pprof",
    feature = "mock",
    feature = "axum",
    feature = "upstream",
    feature = "prometheus",
    feature = "redis"
))]

#[allow(dead_code)]
#[path = "../examples/gateway/main.rs"]
mod gateway;

use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use pprof::protos::{Message, Profile};
use tokio::sync::oneshot;
use tower::{Service, ServiceExt};
use tower_deepseek::deepseek::ChatRequest;
use tower_deepseek::deepseek::DeepSeekClient;
use tower_deepseek::profiling::{ProfileEndpoint, ProfileFuture};
use tower_deepseek::upstream::Upstream;

/// A server task on a 127.0.0.1 port, stopped through its shutdown future.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tower_deepseek::BoxError>>,
}

impl Running {
    async fn gateway() -> Running {
        // No rate limit: the load below comes from one caller, and it should reach the
        // handlers and the upstream, not stop at the limiter.
        let config = gateway::GatewayConfig {
            rate_limit: gateway::RateLimitSettings {
                per_minute: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        Running::start(|listener, stopped| tokio::spawn(gateway::serve(listener, config, stopped)))
            .await
    }

    async fn admin() -> Running {
        Running::start(|listener, stopped| {
            tokio::spawn(gateway::admin::serve_admin(listener, stopped))
        })
        .await
    }

    async fn start(
        spawn: impl FnOnce(
            tokio::net::TcpListener,
            std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
        ) -> tokio::task::JoinHandle<Result<(), tower_deepseek::BoxError>>,
    ) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = spawn(
            listener,
            Box::pin(async move {
                let _ = stopped.await;
            }),
        );
        Running {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops")
            .expect("server task")
            .expect("server ran cleanly");
    }
}

/// `GET url`: status, headers and body.
async fn get(url: String) -> (StatusCode, HeaderMap, Bytes) {
    let request = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = Upstream::new().unwrap().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn decode(gzipped: &[u8]) -> Profile {
    let mut encoded = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut encoded)
        .expect("the profile is gzipped");
    Profile::decode(&encoded[..]).expect("the profile is a pprof protobuf")
}

fn string(profile: &Profile, index: i64) -> &str {
    &profile.string_table[usize::try_from(index).unwrap()]
}

/// Chat completions through the gateway's public port, in a loop, until `stop`.
fn load(
    client: DeepSeekClient<Upstream>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let request = ChatRequest::new("deepseek-v4-flash").user("Profile me");
            client.chat(request).await.expect("the gateway answers");
            answered.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// The process has one profiler: the tests that start it take turns.
static PROFILER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_taken_under_load_decodes_with_samples_and_a_second_at_once_is_refused() {
    let _turn = PROFILER.lock().await;
    let public = Running::gateway().await;
    let admin = Running::admin().await;
    let client = DeepSeekClient::builder()
        .base_url(public.url("/v1"))
        .api_key("sk-gateway-client-key")
        .build(Upstream::new().unwrap())
        .unwrap();
    // One answer before the load, so the load is real traffic from the start.
    client
        .chat(ChatRequest::new("deepseek-v4-flash").user("warm up"))
        .await
        .expect("the gateway answers");

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| load(client.clone(), stop.clone(), answered.clone()))
        .collect();

    // Two profiles asked for at once: exactly one runs, the other is refused at once (which
    // one wins the race does not matter).
    let profile_url = admin.url("/debug/pprof/profile?seconds=1");
    let ((first, first_headers, first_body), (second, second_headers, second_body)) =
        tokio::join!(get(profile_url.clone()), get(profile_url.clone()));
    let (headers, gzipped, refused) = match (first, second) {
        (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS) => (first_headers, first_body, second_body),
        (StatusCode::TOO_MANY_REQUESTS, StatusCode::OK) => {
            (second_headers, second_body, first_body)
        }
        other => panic!("one profile and one refusal expected, got {other:?}"),
    };
    assert!(
        std::str::from_utf8(&refused)
            .unwrap()
            .contains("already being taken"),
        "{refused:?}"
    );
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"profile.pb.gz\""
    );

    let profile = decode(&gzipped);
    assert!(!profile.sample.is_empty(), "the busy gateway was sampled");
    let samples: i64 = profile.sample.iter().map(|sample| sample.value[0]).sum();
    assert!(samples > 0, "{samples} samples");
    // 99 Hz: about 10 ms of CPU time per sample.
    assert_eq!(profile.period, 1_000_000_000 / 99);
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|value| (string(&profile, value.ty), string(&profile, value.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert!(
        profile
            .function
            .iter()
            .any(|function| string(&profile, function.name).contains("tokio")),
        "frames are symbolized (the runtime's functions have names)"
    );

    // The slot is free again once a profile is done: the next one runs.
    let (status, _, gzipped) = get(profile_url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(decode(&gzipped).duration_nanos > 0);

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(answered.load(Ordering::Relaxed) > 0);
    admin.stop().await;
    public.stop().await;
}

#[tokio::test]
async fn the_public_port_never_serves_a_profile() {
    let public = Running::gateway().await;
    for path in [
        "/debug/pprof/profile",
        "/debug/pprof/profile?seconds=1",
        "/v1/debug/pprof/profile",
    ] {
        let (status, _, _) = get(public.url(path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    public.stop().await;
}

#[tokio::test]
async fn the_admin_port_answers_400_to_bad_seconds_and_404_elsewhere() {
    let admin = Running::admin().await;
    for seconds in ["0", "61", "abc", "1.5", ""] {
        let (status, _, body) =
            get(admin.url(&format!("/debug/pprof/profile?seconds={seconds}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "seconds={seconds}");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            format!("seconds must be a whole number from 1 to 60, got {seconds:?}\n")
        );
    }
    let (status, _, body) = get(admin.url("/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("/debug/pprof/profile")
    );
    admin.stop().await;
}

/// Polls `profile` until its profiler runs (it starts on the blocking pool); the step is read
/// from its `Debug` output.
async fn until_collecting(profile: &mut Pin<Box<ProfileFuture>>) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let polled = std::future::poll_fn(|cx| Poll::Ready(profile.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "a profile still running has no answer");
            if format!("{profile:?}").contains("Collecting") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the profiler starts");
}

#[tokio::test]
async fn a_profile_dropped_mid_way_stops_the_profiler_and_frees_the_slot() {
    let _turn = PROFILER.lock().await;
    let mut endpoint = ProfileEndpoint::new();
    let long = || {
        http::Request::get("/debug/pprof/profile?seconds=60")
            .body(())
            .unwrap()
    };
    let mut first = Box::pin(endpoint.call(long()));
    until_collecting(&mut first).await;
    let busy = endpoint.call(long()).await.unwrap();
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);

    // The caller goes away: the profiler stops with the future, at once.
    drop(first);
    let mut next = Box::pin(endpoint.call(long()));
    assert!(
        format!("{next:?}").contains("Starting"),
        "the slot is free again: {next:?}"
    );
    // Let it start and stop it the same way, so no profiler outlives the test.
    until_collecting(&mut next).await;
}
