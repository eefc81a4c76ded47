//! The Redis-backed GCRA limit against a real `redis-server` that each test starts on a free
//! port and stops (kill and wait) when it ends. Real time: Redis's clock cannot be paused, so
//! reference tables use the script's test-only "now" argument, and waits for a restarted
//! Redis are polling loops bounded by a generous overall timeout; assertions are on decisions,
//! counts and events, never on how long something took.
//!
//! Without `redis-server` on the PATH the tests print a note and pass, unless `CI` is set,
//! where they fail (CI installs it: `apt-get install redis-server`).
#![cfg(feature = "redis")]

use std::net::TcpListener as StdTcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::ErrorKind;
use tower_deepseek::classify::NetworkFailure;
use tower_deepseek::rate_limit::redis::{
    RedisDecision, RedisFailureMode, RedisLimitEvent, RedisRateLimitLayer, RedisRateLimiter,
    RedisRateLimiterBuilder, UnavailableCause,
};

/// A `redis-server` child on a free loopback port, killed and reaped on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or `None` (with a printed note) when `redis-server` is not installed and
    /// `CI` is not set. Panics in CI without it: CI must install it.
    async fn start() -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !installed {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "redis-server is not installed but CI is set: install it \
                     (apt-get install redis-server) so the Redis rate limit tests run"
                );
            }
            eprintln!("note: redis-server not found; skipping this Redis rate limit test");
            return None;
        }
        let port = StdTcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer { port, child: None };
        server.spawn().await;
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts `redis-server` on this port (again) and waits until it answers `PING`.
    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let port = self.port;
        tokio::time::timeout(Duration::from_secs(10), async move {
            while !answers_ping(port).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("redis-server answers PING within 10 s");
    }

    /// Kills the server (SIGKILL, as a crash) and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("test connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await,
        Ok(Ok(_)) if &reply == b"+PONG\r\n"
    )
}

type Events = Arc<Mutex<Vec<RedisLimitEvent>>>;

fn limiter(
    server: &RedisServer,
    prefix: &str,
    rate: u32,
    period: Duration,
    burst: u32,
) -> RedisRateLimiter {
    RedisRateLimiter::builder()
        .url(server.url())
        .key_prefix(prefix)
        .quota(rate, period)
        .burst(burst)
        // Generous for a loaded CI machine; the outage tests set their own.
        .timeout(Duration::from_secs(2))
        .build()
        .expect("limiter")
}

fn recording_limiter(
    server: &RedisServer,
    mode: RedisFailureMode,
    timeout: Duration,
) -> (RedisRateLimiter, Events) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let limiter = RedisRateLimiter::builder()
        .url(server.url())
        .key_prefix(format!("outage:{mode:?}:"))
        .quota(10, Duration::from_secs(60))
        .failure_mode(mode)
        .timeout(timeout)
        .listener(move |event: &RedisLimitEvent| sink.lock().expect("events").push(*event))
        .build()
        .expect("limiter");
    (limiter, events)
}

/// One row of the case 41 table: (row, t in seconds, quantity, allowed, remaining,
/// reset_after in seconds, retry_after in seconds).
type Row = (u32, f64, u32, bool, u64, f64, Option<f64>);

fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds)
}

/// Reference case 41 (§4.3): redis-cell's `it_rate_limits` table, `max_burst = 4` (limit 5),
/// one per second, at the table's own times through the script's test-only clock.
#[tokio::test]
async fn case_41_reproduces_the_redis_cell_table() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    // redis-cell's max_burst 4 is governor's burst 5.
    let limiter = limiter(&server, "case41:", 1, Duration::from_secs(1), 5);
    assert_eq!(limiter.limit(), 5);
    // A realistic epoch in microseconds, so the script's float arithmetic is exercised.
    let t0: u64 = 1_764_000_000_000_000;
    let at = |seconds: f64| t0 + (seconds * 1e6).round() as u64;
    let table: &[Row] = &[
        (0, 0.0, 6, false, 5, 0.0, None),
        (1, 0.0, 1, true, 4, 1.0, None),
        (2, 0.0, 1, true, 3, 2.0, None),
        (3, 0.0, 1, true, 2, 3.0, None),
        (4, 0.0, 1, true, 1, 4.0, None),
        (5, 0.0, 1, true, 0, 5.0, None),
        (6, 0.0, 1, false, 0, 5.0, Some(1.0)),
        (7, 3.0, 1, true, 2, 3.0, None),
        (8, 3.1, 1, true, 1, 3.9, None),
        (9, 4.0, 1, true, 1, 4.0, None),
        (10, 8.0, 1, true, 4, 1.0, None),
        (11, 9.5, 1, true, 4, 1.0, None),
        (12, 9.5, 0, true, 4, 1.0, None),
        (13, 9.5, 2, true, 2, 3.0, None),
        (14, 9.5, 5, false, 2, 3.0, Some(3.0)),
    ];
    for &(row, t, quantity, allowed, remaining, reset_after, retry_after) in table {
        let decision = limiter
            .check_at_micros("case-41", quantity, at(t))
            .await
            .expect("decision");
        let got = (
            decision.allowed,
            decision.limit,
            decision.remaining,
            decision.retry_after,
            decision.reset_after,
            decision.checked,
        );
        let expected = (
            allowed,
            5,
            remaining,
            retry_after.map(secs),
            secs(reset_after),
            true,
        );
        assert_eq!(got, expected, "row {row} (t = {t} s, quantity {quantity})");
    }

    // The key expires when the limit is full again (reset_after), so idle keys cost nothing.
    let mut redis = server.connection().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(limiter.redis_key("case-41"))
        .query_async(&mut redis)
        .await
        .expect("PTTL");
    assert!((1..=3000).contains(&ttl), "PTTL {ttl} ms after row 13");
}

/// Row 12 of case 41 as its own rule: a peek (quantity 0) on a fresh key writes nothing.
#[tokio::test]
async fn case_41_peek_does_not_create_a_key() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let limiter = limiter(&server, "peek:", 1, Duration::from_secs(1), 5);
    let decision = limiter.check("fresh", 0).await.expect("decision");
    assert!(decision.allowed && decision.checked);
    assert_eq!(
        (decision.remaining, decision.reset_after),
        (5, Duration::ZERO)
    );
    let mut redis = server.connection().await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(limiter.redis_key("fresh"))
        .query_async(&mut redis)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0);
}

/// Redis's clock (TIME) decides: a burst is used up, the next call waits about one interval.
#[tokio::test]
async fn live_clock_refuses_past_the_burst_with_the_wait() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let limiter = limiter(&server, "live:", 1, Duration::from_secs(60), 3);
    for expected_remaining in [2, 1, 0] {
        let decision = limiter.check("user", 1).await.expect("decision");
        assert!(decision.allowed, "{decision:?}");
        assert_eq!(decision.remaining, expected_remaining);
    }
    let refused = limiter.check("user", 1).await.expect("decision");
    assert!(!refused.allowed);
    let wait = refused.retry_after.expect("a wait");
    assert!(
        wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    // More than the whole burst can never pass: refused with no wait.
    let never = limiter.check("other", 4).await.expect("decision");
    assert!(!never.allowed && never.retry_after.is_none());
}

#[tokio::test]
async fn two_replicas_share_one_limit() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    // Two limiters, two connection managers: two gateway replicas.
    let replica_a = limiter(&server, "shared:", 1, Duration::from_secs(60), 4);
    let replica_b = limiter(&server, "shared:", 1, Duration::from_secs(60), 4);
    let mut admitted = 0;
    for round in 0..6 {
        let replica = if round % 2 == 0 {
            &replica_a
        } else {
            &replica_b
        };
        if replica.check("team", 1).await.expect("decision").allowed {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4, "the burst of 4 is shared, not 4 per replica");
    assert!(!replica_a.check("team", 1).await.expect("decision").allowed);
    assert!(!replica_b.check("team", 1).await.expect("decision").allowed);
    // Another key, and the same key under another prefix, are separate limits.
    assert!(
        replica_b
            .check("other-team", 1)
            .await
            .expect("decision")
            .allowed
    );
    let other_limit = limiter(&server, "tpm:", 1, Duration::from_secs(60), 4);
    assert!(
        other_limit
            .check("team", 1)
            .await
            .expect("decision")
            .allowed
    );
}

/// Polls until `limiter` decides through Redis again, within a generous bound.
async fn until_checked(limiter: &RedisRateLimiter) -> RedisDecision {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(decision) = limiter.check("user", 1).await
                && decision.checked
            {
                return decision;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the connection manager reconnects within 20 s")
}

#[tokio::test]
async fn redis_killed_mid_test_fails_open_or_closed_then_recovers() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let timeout = Duration::from_millis(500);
    let (open, open_events) = recording_limiter(&server, RedisFailureMode::Open, timeout);
    let (closed, closed_events) = recording_limiter(&server, RedisFailureMode::Closed, timeout);
    for limiter in [&open, &closed] {
        let decision = limiter.check("user", 1).await.expect("Redis is up");
        assert!(decision.checked && decision.allowed);
        assert_eq!(decision.remaining, 9);
    }

    server.kill();
    for _ in 0..3 {
        let admitted = open.check("user", 1).await.expect("fail open admits");
        assert!(admitted.allowed && !admitted.checked, "{admitted:?}");
        let refused = closed
            .check("user", 1)
            .await
            .expect_err("fail closed refuses");
        assert_eq!(refused.kind(), ErrorKind::Network(NetworkFailure::Other));
        let text = refused.to_string();
        assert!(
            text.contains("rate limit could not be checked") && text.contains("fail-closed"),
            "{text}"
        );
    }
    assert!(open.is_unavailable() && closed.is_unavailable());
    // One event per outage, not one per request.
    assert!(matches!(
        open_events.lock().expect("events").as_slice(),
        [RedisLimitEvent::Unavailable {
            fail_open: true,
            ..
        }]
    ));
    assert!(matches!(
        closed_events.lock().expect("events").as_slice(),
        [RedisLimitEvent::Unavailable {
            fail_open: false,
            ..
        }]
    ));

    // Restarted empty on the same port: the managers reconnect and Redis decides again.
    server.spawn().await;
    for (limiter, events) in [(&open, &open_events), (&closed, &closed_events)] {
        let decision = until_checked(limiter).await;
        assert!(decision.allowed);
        assert_eq!(
            decision.remaining, 9,
            "a fresh Redis counts from a full burst"
        );
        assert!(!limiter.is_unavailable());
        let events = events.lock().expect("events");
        assert_eq!(
            events.last(),
            Some(&RedisLimitEvent::Recovered),
            "{events:?}"
        );
        assert_eq!(
            events
                .iter()
                .filter(|event| **event == RedisLimitEvent::Recovered)
                .count(),
            1
        );
    }
}

/// A server that accepts connections and never answers: every decision times out.
#[tokio::test]
async fn silent_redis_times_out_within_the_decision_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let limiter = RedisRateLimiter::builder()
        .url(format!("redis://127.0.0.1:{port}/"))
        .quota(1, Duration::from_secs(1))
        .timeout(Duration::from_millis(100))
        .listener(move |event: &RedisLimitEvent| sink.lock().expect("events").push(*event))
        .build()
        .expect("limiter");
    let decision = tokio::time::timeout(Duration::from_secs(5), limiter.check("user", 1))
        .await
        .expect("the decision timeout bounds the call")
        .expect("fail open");
    assert!(decision.allowed && !decision.checked);
    assert_eq!(
        events.lock().expect("events").as_slice(),
        [RedisLimitEvent::Unavailable {
            fail_open: true,
            cause: UnavailableCause::Timeout
        }]
    );
    silent.abort();
}

/// During an outage one decision probes Redis; the others do not wait out the timeout.
#[tokio::test]
async fn during_an_outage_only_one_probe_waits_for_redis() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let limiter = RedisRateLimiter::builder()
        .url(format!("redis://127.0.0.1:{port}/"))
        .quota(1, Duration::from_secs(1))
        .failure_mode(RedisFailureMode::Closed)
        .timeout(Duration::from_millis(300))
        .listener(move |event: &RedisLimitEvent| sink.lock().expect("events").push(*event))
        .build()
        .expect("limiter");
    let first = limiter.check("user", 1).await.expect_err("timed out");
    assert!(first.to_string().contains("did not answer"), "{first}");

    let probe = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.check("user", 1).await }
    });
    // Once the probe is waiting on Redis, another decision is answered at its first poll.
    let mut fast = None;
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if let Some(result) = limiter.check("user", 1).now_or_never() {
            fast = Some(result);
            break;
        }
    }
    let fast = fast.expect("a decision answered without waiting for Redis");
    let error = fast.expect_err("fail closed");
    assert!(error.to_string().contains("being probed"), "{error}");
    assert!(!probe.is_finished());
    let probed = tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .expect("the probe ends at its timeout")
        .expect("task");
    assert!(
        probed
            .expect_err("timed out")
            .to_string()
            .contains("did not answer")
    );
    assert_eq!(
        events.lock().expect("events").len(),
        1,
        "one outage, one event"
    );
    silent.abort();
}

#[tokio::test]
async fn keys_with_arbitrary_bytes_work_and_never_reach_redis() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let limiter = limiter(&server, "keys:", 1, Duration::from_secs(60), 2);
    let long = "sk-".to_owned() + &"k".repeat(100_000);
    let keys: [&[u8]; 5] = [
        b"sk-live 0123 with spaces",
        "ключ 🔑 \u{0} nul and \r\n newline".as_bytes(),
        b"",
        long.as_bytes(),
        b"sk-\xff\xfe not UTF-8",
    ];
    for key in keys {
        let first = limiter.check(key, 1).await.expect("decision");
        assert!(first.allowed && first.remaining == 1, "{first:?}");
        let second = limiter.check(key, 1).await.expect("decision");
        assert!(second.allowed && second.remaining == 0, "{second:?}");
        assert!(!limiter.check(key, 1).await.expect("decision").allowed);
    }
    let mut redis = server.connection().await;
    let stored: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    assert_eq!(stored.len(), keys.len());
    for name in &stored {
        let hash = name.strip_prefix("keys:").expect("prefixed");
        assert!(
            hash.len() == 40 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
    }
    let debug = format!("{limiter:?}");
    assert!(!debug.contains("sk-"), "{debug}");
}

fn keyed_service(
    limiter: RedisRateLimiter,
) -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = tower_deepseek::Error,
    Future = impl Send,
> + Clone {
    let layer = RedisRateLimitLayer::new(limiter, |request: &Request<String>| {
        let key = request.headers().get("x-api-key")?;
        key.to_str().ok().map(str::to_owned)
    });
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_request: Request<String>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
        })
}

fn request(api_key: Option<&str>) -> Request<String> {
    let mut builder = Request::builder().uri("/chat/completions");
    if let Some(key) = api_key {
        builder = builder.header("x-api-key", key);
    }
    builder.body(String::new()).expect("request")
}

#[tokio::test]
async fn layer_adds_headers_then_refuses_with_retry_after() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    const SECRET: &str = "sk-layer-secret-0123456789";
    let service = keyed_service(limiter(&server, "layer:", 1, Duration::from_secs(60), 2));

    for (remaining, reset) in [("1", "60"), ("0", "120")] {
        let response = service
            .clone()
            .oneshot(request(Some(SECRET)))
            .await
            .expect("admitted");
        assert_eq!(response.body(), "hello");
        let headers = response.headers();
        assert_eq!(headers["x-ratelimit-limit"], "2");
        assert_eq!(headers["x-ratelimit-remaining"], remaining);
        // Whole seconds, rounded up: the TTL is a hair under 60 s (or 120 s) by now.
        assert_eq!(headers["x-ratelimit-reset"], reset);
    }

    let refused = service
        .clone()
        .oneshot(request(Some(SECRET)))
        .await
        .expect_err("refused");
    assert_eq!(refused.kind(), ErrorKind::RateLimited);
    let wait = refused.retry_after().expect("a wait");
    assert!(
        wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    let http = refused.to_http_response();
    assert_eq!(http.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(http.headers()["retry-after"], "60");
    for text in [
        refused.to_string(),
        format!("{refused:?}"),
        http.body().clone(),
    ] {
        assert!(!text.contains(SECRET), "{text}");
    }

    // No key: not limited by this layer, and no headers.
    let response = service.clone().oneshot(request(None)).await.expect("open");
    assert!(response.headers().get("x-ratelimit-limit").is_none());
    // Another key has its own limit.
    let response = service
        .oneshot(request(Some("sk-other")))
        .await
        .expect("own");
    assert_eq!(response.headers()["x-ratelimit-remaining"], "1");
}

#[tokio::test]
async fn layer_fails_open_without_headers_when_redis_is_down() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let (limiter, events) =
        recording_limiter(&server, RedisFailureMode::Open, Duration::from_millis(500));
    let service = keyed_service(limiter);
    let response = service
        .clone()
        .oneshot(request(Some("k")))
        .await
        .expect("up");
    assert_eq!(response.headers()["x-ratelimit-remaining"], "9");

    server.kill();
    let response = service
        .oneshot(request(Some("k")))
        .await
        .expect("fail open");
    assert_eq!(response.body(), "hello");
    assert!(response.headers().get("x-ratelimit-remaining").is_none());
    assert!(matches!(
        events.lock().expect("events").as_slice(),
        [RedisLimitEvent::Unavailable {
            fail_open: true,
            ..
        }]
    ));
}

#[tokio::test]
async fn layer_fails_closed_with_a_network_error() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let (limiter, _events) = recording_limiter(
        &server,
        RedisFailureMode::Closed,
        Duration::from_millis(500),
    );
    let service = keyed_service(limiter);
    server.kill();
    let error = service
        .oneshot(request(Some("k")))
        .await
        .expect_err("fail closed");
    assert_eq!(error.kind(), ErrorKind::Network(NetworkFailure::Other));
    assert_eq!(error.http_status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn config_errors_name_the_bad_value() {
    let cases: [(Configure, &str); 5] = [
        (|b| b.quota(0, Duration::from_secs(1)), "rate"),
        (|b| b.quota(1, Duration::ZERO), "period"),
        (|b| b.quota(1, Duration::from_secs(1)).burst(0), "burst"),
        (
            |b| b.quota(1, Duration::from_secs(1)).timeout(Duration::ZERO),
            "timeout",
        ),
        (
            |b| b.quota(2_000_000, Duration::from_secs(1)),
            "microsecond",
        ),
    ];
    for (configure, word) in cases {
        let builder = RedisRateLimiter::builder().url("redis://127.0.0.1:1/");
        let error = configure(builder).build().expect_err(word);
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.to_string().contains(word), "{error}");
    }
    let error = RedisRateLimiter::builder()
        .quota(1, Duration::from_secs(1))
        .build()
        .expect_err("no connection");
    assert!(error.to_string().contains(".url("), "{error}");
    let error = RedisRateLimiter::builder()
        .url("not a url")
        .quota(1, Duration::from_secs(1))
        .build()
        .expect_err("bad url");
    assert_eq!(error.kind(), ErrorKind::Config);
}

type Configure = fn(RedisRateLimiterBuilder) -> RedisRateLimiterBuilder;

/// Not a pass/fail test: measures the round trip per decision against a local Redis. Run with
/// `cargo test --release --all-features --test rate_limit_redis -- --ignored --nocapture
/// measure_round_trip`.
#[tokio::test(flavor = "current_thread")]
#[ignore = "a measurement, run by hand"]
async fn measure_round_trip() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let limiter = limiter(
        &server,
        "bench:",
        1_000_000,
        Duration::from_secs(1),
        1_000_000,
    );
    limiter.load_script().await.expect("script");
    let mut ping = server.connection().await;
    const N: usize = 20_000;
    for _ in 0..1_000 {
        limiter.check("warm-up", 1).await.expect("decision");
    }

    let mut samples = Vec::with_capacity(N);
    for _ in 0..N {
        let start = std::time::Instant::now();
        let _: String = redis::cmd("PING")
            .query_async(&mut ping)
            .await
            .expect("PING");
        samples.push(start.elapsed());
    }
    report("PING (baseline)", &mut samples);

    samples.clear();
    for i in 0..N {
        let start = std::time::Instant::now();
        let decision = limiter.check(&format!("key-{}", i % 1000), 1).await;
        samples.push(start.elapsed());
        assert!(decision.expect("decision").checked);
    }
    report("check() sequential", &mut samples);

    let start = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..64 {
        let limiter = limiter.clone();
        tasks.spawn(async move {
            for i in 0..N / 64 {
                let key = format!("key-{task}-{}", i % 16);
                limiter.check(&key, 1).await.expect("decision");
            }
        });
    }
    tasks.join_all().await;
    let elapsed = start.elapsed();
    let done = (N / 64) * 64;
    println!(
        "check() 64 concurrent on one connection: {done} decisions in {elapsed:?} = {:.0}/s",
        done as f64 / elapsed.as_secs_f64()
    );
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{name}: n={} mean={mean:?} p50={:?} p99={:?} max={:?}",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// Two gateway replicas, each with its own `RateLimitLayer` over its own Redis limiter: one
/// limit per caller key across both, with the 429 headers from Redis's numbers.
#[tokio::test]
async fn rate_limit_layer_over_redis_shares_one_limit_across_replicas() {
    use tower_deepseek::rate_limit::{RateLimitEvent, RateLimitLayer};
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let replica = |limiter: RedisRateLimiter| {
        let sink = Arc::clone(&events);
        let layer = RateLimitLayer::builder()
            .name("inbound")
            .listener(move |event: &RateLimitEvent<'_>| {
                sink.lock().expect("events").push(format!("{event:?}"))
            })
            .build_with_backend(
                |request: &Request<String>| {
                    request
                        .headers()
                        .get("x-api-key")
                        .cloned()
                        .unwrap_or_else(|| http::HeaderValue::from_static("anonymous"))
                },
                limiter,
            )
            .expect("layer");
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_request: Request<String>| async {
                Ok::<_, tower_deepseek::Error>(Response::new(String::from("hello")))
            })
    };
    let one = replica(limiter(
        &server,
        "layer-backend:",
        3,
        Duration::from_secs(60),
        3,
    ));
    let two = replica(limiter(
        &server,
        "layer-backend:",
        3,
        Duration::from_secs(60),
        3,
    ));

    // Three calls of one key, split over the replicas, use up the shared burst of 3.
    for service in [&one, &two, &one] {
        let response = service.clone().oneshot(request(Some("key-a"))).await;
        assert_eq!(response.expect("admitted").body(), "hello");
    }
    let refused = two
        .clone()
        .oneshot(request(Some("key-a")))
        .await
        .expect_err("the fourth call of key-a is over the shared limit");
    assert_eq!(refused.kind(), ErrorKind::RateLimited);
    let wait = refused.retry_after().expect("a wait");
    assert!(
        wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
    let http = refused.to_http_response();
    assert_eq!(http.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(http.headers()["x-ratelimit-limit"], "3");
    assert_eq!(http.headers()["x-ratelimit-remaining"], "0");
    // Another key has its own budget on both replicas.
    assert!(one.clone().oneshot(request(Some("key-b"))).await.is_ok());

    // Redis gone: the limiter fails open (its default), the layer lets calls through and says
    // so in an event.
    server.kill();
    let response = two.clone().oneshot(request(Some("key-a"))).await;
    assert_eq!(response.expect("failed open").body(), "hello");
    let events = events.lock().expect("events");
    assert!(
        events.iter().any(|e| e.contains("BackendUnavailable")),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.contains("Rejected")), "{events:?}");
    assert!(
        events.iter().all(|e| !e.contains("key-a")),
        "no key in events"
    );
}
