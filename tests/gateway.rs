//! The gateway example end to end, through real HTTP clients, in both modes: on the embedded
//! mock (no key) and against a separate "DeepSeek" (a key and a base URL).
#![cfg(all(
    feature = "mock",
    feature = "axum",
    feature = "upstream",
    feature = "prometheus",
    feature = "redis"
))]

#[allow(dead_code)]
#[path = "../examples/gateway/main.rs"]
mod gateway;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tower::ServiceExt;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{ErrorKind, classify::StreamFailure};

const UPSTREAM_KEY: &str = "sk-upstream-real";

struct RunningGateway {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tower_deepseek::BoxError>>,
}

impl RunningGateway {
    async fn start(config: gateway::GatewayConfig) -> RunningGateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        RunningGateway {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// A separate mock standing in for DeepSeek, and a gateway in key mode pointed at it.
    async fn start_with_upstream() -> (MockDeepSeek, RunningGateway) {
        RunningGateway::start_with_upstream_and(gateway::GatewayConfig::default()).await
    }

    /// Like [`start_with_upstream`](Self::start_with_upstream), with `config`'s other settings
    /// (its key and base URL are replaced).
    async fn start_with_upstream_and(
        config: gateway::GatewayConfig,
    ) -> (MockDeepSeek, RunningGateway) {
        let upstream = MockDeepSeek::builder()
            .api_key(Some(UPSTREAM_KEY.to_owned()))
            .start()
            .await
            .unwrap();
        let gateway = RunningGateway::start(gateway::GatewayConfig {
            api_key: Some(UPSTREAM_KEY.to_owned()),
            base_url: Some(upstream.base_url().to_owned()),
            ..config
        })
        .await;
        (upstream, gateway)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An OpenAI-compatible client pointed at the gateway, with a key the gateway ignores.
    fn client(&self) -> DeepSeekClient<Upstream> {
        DeepSeekClient::builder()
            .base_url(format!("{}/v1", self.url()))
            .api_key("sk-gateway-client-key")
            .build(Upstream::new().unwrap())
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("gateway stops")
            .expect("gateway task")
            .expect("gateway ran cleanly");
    }
}

/// A raw HTTP call: status, content type and body text.
async fn raw(method: &str, url: String, body: &'static str) -> (u16, String, String) {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer whatever")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = Upstream::new().unwrap().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn hello() -> ChatRequest {
    ChatRequest::new("deepseek-v4-flash").user("Hello gateway")
}

#[tokio::test]
async fn mock_mode_serves_chat_streams_and_models() {
    let gateway = RunningGateway::start(gateway::GatewayConfig::default()).await;
    let client = gateway.client();

    let answer = client.chat(hello()).await.expect("non-streaming");
    assert!(answer.content().unwrap().contains("Hello gateway"));

    let mut stream = client.chat_stream(hello()).await.expect("streaming");
    let mut text = String::new();
    let mut usage = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        text.push_str(chunk.content().unwrap_or_default());
        usage = chunk.usage.or(usage);
    }
    assert_eq!(Some(text.as_str()), answer.content());
    assert!(usage.is_some(), "the usage chunk is passed through");

    let models = client.models().await.expect("models");
    assert!(!models.data.is_empty());

    let (status, content_type, body) = raw(
        "POST",
        format!("{}/v1/chat/completions", gateway.url()),
        r#"{"model":"deepseek-v4-flash","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/event-stream");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // Each chunk is forwarded as DeepSeek (here the mock) sent it, not serialized again: the
    // mock writes compact JSON with its keys sorted, which a chunk re-encoded from the typed
    // `ChatChunk` (`id` first, `choices` later) would not be.
    let chunks: Vec<&str> = body
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .collect();
    assert!(chunks.len() > 2, "{body}");
    for chunk in chunks {
        let value: serde_json::Value = serde_json::from_str(chunk).expect("a JSON chunk");
        assert_eq!(
            serde_json::to_string(&value).unwrap(),
            chunk,
            "forwarded unchanged"
        );
        assert!(chunk.starts_with(r#"{"choices":"#), "{chunk}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn key_mode_proxies_to_the_configured_upstream_with_its_own_key() {
    let (upstream, gateway) = RunningGateway::start_with_upstream().await;
    let answer = gateway.client().chat(hello()).await.expect("proxied");
    assert!(answer.content().unwrap().contains("Hello gateway"));
    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].headers["authorization"], "Bearer sk-upstream-real",
        "the gateway's key is sent, not the caller's"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn upstream_http2_only_multiplexes_calls_and_streams_over_h2c() {
    let (upstream, gateway) = RunningGateway::start_with_upstream_and(gateway::GatewayConfig {
        upstream_http2_only: true,
        ..Default::default()
    })
    .await;
    let client = gateway.client();
    let answer = client.chat(hello()).await.expect("proxied");
    assert!(answer.content().unwrap().contains("Hello gateway"));
    let mut stream = client.chat_stream(hello()).await.expect("stream starts");
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(chunk.unwrap().content().unwrap_or_default());
    }
    assert!(text.contains("Hello gateway"), "{text}");
    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 2);
    for request in &recorded {
        assert_eq!(request.version, http::Version::HTTP_2);
    }
    assert_eq!(upstream.connections(), 1, "one connection carries both");
    gateway.stop().await;
}

#[tokio::test]
async fn deepseek_errors_come_back_in_openai_shape_with_the_upstream_status() {
    let (upstream, gateway) = RunningGateway::start_with_upstream_and(gateway::GatewayConfig {
        resilience: no_retries(),
        ..Default::default()
    })
    .await;
    // The 429 first: a 402 puts the gateway's circuit breaker in its fatal state, after which
    // DeepSeek is not called at all (checked at the end).
    upstream.script([
        Reply::status(429).header("retry-after", "3"),
        Reply::status(402),
    ]);
    // Our client, as an OpenAI-compatible client of the gateway, sees the same kinds.
    let error = gateway.client().chat(hello()).await.expect_err("429");
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));

    let (status, content_type, body) = raw(
        "POST",
        format!("{}/v1/chat/completions", gateway.url()),
        r#"{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, 402);
    assert_eq!(content_type, "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["message"], "Insufficient Balance", "{json}");
    assert!(json["error"].get("type").is_some() && json["error"].get("code").is_some());

    // The empty balance stops the calls: still a 402, and DeepSeek is not asked again.
    let error = gateway.client().chat(hello()).await.expect_err("402");
    assert_eq!(error.status(), Some(http::StatusCode::PAYMENT_REQUIRED));
    assert_eq!(upstream.requests().len(), 2);
    gateway.stop().await;
}

#[tokio::test]
async fn the_gateway_retries_deepseek_overload_and_never_a_payment_error() {
    let (upstream, gateway) = RunningGateway::start_with_upstream().await;
    // Two 503s, then the mock's default answer: the caller sees one answer.
    upstream.script([Reply::status(503), Reply::status(503)]);
    let answer = gateway
        .client()
        .chat(hello())
        .await
        .expect("answer after retries");
    assert!(answer.content().unwrap().contains("Hello gateway"));
    assert_eq!(
        upstream.requests().len(),
        3,
        "exactly three calls reached DeepSeek"
    );
    let (_, _, scrape) = raw("GET", format!("{}/metrics", gateway.url()), "").await;
    assert_eq!(
        series_sum(
            &scrape,
            "deepseek_retry_attempts_total",
            &["outcome=\"server_error\""]
        ),
        2.0,
        "{scrape}"
    );

    // A 402 is not retried: one more call, and the caller sees the 402.
    upstream.script([Reply::status(402)]);
    let error = gateway.client().chat(hello()).await.expect_err("402");
    assert_eq!(error.status(), Some(http::StatusCode::PAYMENT_REQUIRED));
    assert_eq!(upstream.requests().len(), 4);
    gateway.stop().await;
}

#[tokio::test]
async fn callers_are_rate_limited_per_api_key_with_honest_headers() {
    let gateway = RunningGateway::start(gateway::GatewayConfig {
        rate_limit: gateway::RateLimitSettings {
            per_minute: 2,
            burst: 2,
            redis_url: None,
        },
        ..Default::default()
    })
    .await;
    let chat = |key: &'static str| {
        let request = http::Request::post(format!("{}/v1/chat/completions", gateway.url()))
            .header("content-type", "application/json")
            .header("authorization", key)
            .body(Full::new(Bytes::from_static(FLASH_CHAT.as_bytes())))
            .unwrap();
        Upstream::new().unwrap().oneshot(request)
    };
    for _ in 0..2 {
        assert_eq!(chat("Bearer caller-a").await.unwrap().status(), 200);
    }
    let refused = chat("Bearer caller-a").await.unwrap();
    assert_eq!(refused.status(), 429);
    let headers = refused.headers();
    // 2 per minute: the next call conforms in 30 s.
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(headers["x-ratelimit-limit"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert!(headers.contains_key("x-ratelimit-reset"));
    assert!(
        headers.contains_key("x-trace-id"),
        "answered under a trace ID"
    );
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(json["error"]["message"].as_str().is_some(), "{json}");
    assert!(!String::from_utf8_lossy(&body).contains("caller-a"));

    // Another caller has its own budget; the operational endpoints are never limited.
    assert_eq!(chat("Bearer caller-b").await.unwrap().status(), 200);
    let (status, _, scrape) = raw("GET", format!("{}/metrics", gateway.url()), "").await;
    assert_eq!(status, 200);
    assert_eq!(
        series_sum(
            &scrape,
            "deepseek_rate_limit_rejections_total",
            &["limiter=\"inbound\""]
        ),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        series_sum(
            &scrape,
            "deepseek_requests_total",
            &["side=\"server\"", "outcome=\"rate_limited\""]
        ),
        1.0,
        "the inbound metrics count the refused call: {scrape}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_full_gateway_sheds_with_503_and_reports_not_ready_until_a_stream_ends() {
    let (upstream, gateway) = RunningGateway::start_with_upstream_and(gateway::GatewayConfig {
        max_in_flight: 1,
        ..Default::default()
    })
    .await;
    // A stream that takes a while: it holds the gateway's one slot until it ends.
    upstream.script([Reply::ok()
        .content("one two three four five six")
        .chunk_delay(Duration::from_millis(300))]);
    let mut stream = gateway.client().chat_stream(hello()).await.expect("stream");
    stream.next().await.expect("first chunk").expect("chunk");

    let (status, _, body) = raw("GET", format!("{}/readyz", gateway.url()), "").await;
    assert_eq!((status, body.as_str()), (503, "busy"));
    // The second caller waits its second in the queue, then is shed.
    let (status, headers, json) = raw_chat(&gateway, FLASH_CHAT).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(headers["retry-after"], "1");
    assert!(json["error"]["message"].as_str().is_some(), "{json}");
    assert_eq!(
        upstream.requests().len(),
        1,
        "the shed call never reached DeepSeek"
    );

    while let Some(chunk) = stream.next().await {
        chunk.expect("chunk");
    }
    drop(stream);
    // The slot is free again.
    let mut ready = false;
    for _ in 0..50 {
        if raw("GET", format!("{}/readyz", gateway.url()), "").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "/readyz recovers once the stream has ended");
    assert_eq!(raw_chat(&gateway, FLASH_CHAT).await.0, 200);
    gateway.stop().await;
}

#[tokio::test]
async fn a_bad_request_body_is_a_400_in_openai_shape() {
    let gateway = RunningGateway::start(gateway::GatewayConfig::default()).await;
    let (status, _, body) = raw(
        "POST",
        format!("{}/v1/chat/completions", gateway.url()),
        "{not json",
    )
    .await;
    assert_eq!(status, 400);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["type"], "invalid_request_error");
    let (status, _, _) = raw(
        "POST",
        format!("{}/v1/chat/completions", gateway.url()),
        r#"{"model":"deepseek-v4-flash","messages":[]}"#,
    )
    .await;
    assert_eq!(status, 400, "validation failures never reach the upstream");
    gateway.stop().await;
}

#[tokio::test]
async fn a_stream_cut_upstream_reaches_the_caller_as_an_error() {
    let (upstream, gateway) = RunningGateway::start_with_upstream().await;
    upstream.script([Reply::ok().cut_after(2)]);
    let mut stream = gateway.client().chat_stream(hello()).await.unwrap();
    let mut error = None;
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            error = Some(e);
        }
    }
    let error = error.expect("the caller sees the cut");
    assert!(
        matches!(
            error.kind(),
            ErrorKind::Stream(StreamFailure::Truncated) | ErrorKind::Server
        ),
        "{error:?}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_stream_finish() {
    let (upstream, gateway) = RunningGateway::start_with_upstream().await;
    upstream.script([Reply::ok().chunk_delay(Duration::from_millis(20))]);
    let mut stream = gateway.client().chat_stream(hello()).await.unwrap();
    let first = stream.next().await.expect("first chunk").expect("ok");
    let mut text = first.content().unwrap_or_default().to_owned();
    let RunningGateway { addr, stop, task } = gateway;
    stop.unwrap().send(()).unwrap();
    while let Some(chunk) = stream.next().await {
        text.push_str(
            chunk
                .expect("stream completes after shutdown")
                .content()
                .unwrap_or_default(),
        );
    }
    assert!(text.contains("Hello gateway"), "{text}");
    task.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn every_answer_carries_the_trace_id_deepseek_received() {
    let (upstream, gateway) = RunningGateway::start_with_upstream().await;
    // No ID from the caller: the gateway makes one, sends it upstream and echoes it.
    let request = http::Request::post(format!("{}/v1/chat/completions", gateway.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap();
    let response = Upstream::new().unwrap().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response.headers()["x-trace-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(echoed.len(), 36, "a generated UUID: {echoed}");
    let recorded = upstream.requests();
    assert_eq!(recorded[0].headers["x-trace-id"], echoed.as_str());
    let traceparent = recorded[0].headers["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{}-", echoed.replace('-', ""))),
        "{traceparent}"
    );
    gateway.stop().await;
}

/// A raw chat completion: status, headers and the body as JSON.
async fn raw_chat(
    gateway: &RunningGateway,
    body: &'static str,
) -> (u16, http::HeaderMap, serde_json::Value) {
    let request = http::Request::post(format!("{}/v1/chat/completions", gateway.url()))
        .header("content-type", "application/json")
        .header("x-trace-id", "fallback-trace-0001")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = Upstream::new().unwrap().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

const FLASH_CHAT: &str =
    r#"{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello gateway"}]}"#;

/// One attempt per call: these tests count the breaker's view of each call.
fn no_retries() -> gateway::ResilienceSettings {
    gateway::ResilienceSettings {
        max_attempts: 1,
        ..Default::default()
    }
}

/// A breaker that opens after two failures in a window of two, and stays open for the test.
fn breaker_settings() -> gateway::BreakerSettings {
    gateway::BreakerSettings {
        minimum_calls: 2,
        window_calls: 2,
        open_wait: Duration::from_secs(60),
        ..Default::default()
    }
}

fn recorded_model(request: &tower_deepseek::mock::RecordedRequest) -> String {
    let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    json["model"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_open_breaker_falls_back_to_the_fallback_model_and_says_so() {
    let (upstream, gateway) = RunningGateway::start_with_upstream_and(gateway::GatewayConfig {
        fallback_model: Some("deepseek-v4-pro".to_owned()),
        breaker: breaker_settings(),
        resilience: no_retries(),
        ..Default::default()
    })
    .await;
    upstream.script([Reply::status(503), Reply::status(503)]);
    for _ in 0..2 {
        let (status, headers, _) = raw_chat(&gateway, FLASH_CHAT).await;
        assert_eq!(
            status, 503,
            "the upstream's 503 passes through while closed"
        );
        assert!(headers.get(gateway::FALLBACK_HEADER).is_none());
    }

    // Open now: the fallback model answers, and the answer says so.
    let (status, headers, json) = raw_chat(&gateway, FLASH_CHAT).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["model"], "deepseek-v4-pro", "{json}");
    assert!(
        json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Hello gateway")
    );
    assert_eq!(headers[gateway::FALLBACK_HEADER], "deepseek-v4-pro");
    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded_model(&recorded[1]), "deepseek-v4-flash");
    assert_eq!(
        recorded_model(&recorded[2]),
        "deepseek-v4-pro",
        "the mock got the fallback model"
    );
    assert_eq!(
        recorded[2].headers["x-trace-id"], "fallback-trace-0001",
        "the re-sent request carries the caller's trace ID"
    );
    assert_eq!(headers["x-trace-id"], "fallback-trace-0001");

    // Streams fall back too, and a typed client of the gateway just sees an answer.
    let mut stream = gateway
        .client()
        .chat_stream(hello())
        .await
        .expect("fallback stream");
    let mut model = None;
    while let Some(chunk) = stream.next().await {
        model = Some(chunk.expect("chunk").model);
    }
    assert_eq!(model.as_deref(), Some("deepseek-v4-pro"));
    assert_eq!(recorded_model(&upstream.requests()[3]), "deepseek-v4-pro");
    gateway.stop().await;
}

#[tokio::test]
async fn an_open_breaker_without_a_fallback_is_a_503_with_retry_after() {
    let (upstream, gateway) = RunningGateway::start_with_upstream_and(gateway::GatewayConfig {
        breaker: breaker_settings(),
        resilience: no_retries(),
        ..Default::default()
    })
    .await;
    upstream.script([Reply::status(503), Reply::status(503)]);
    for _ in 0..2 {
        assert_eq!(raw_chat(&gateway, FLASH_CHAT).await.0, 503);
    }
    let (status, headers, json) = raw_chat(&gateway, FLASH_CHAT).await;
    assert_eq!(status, 503);
    assert_eq!(headers["content-type"], "application/json");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(headers.get(gateway::FALLBACK_HEADER).is_none());
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("breaker \"deepseek-v4-flash\" is open"),
        "the error names the model whose breaker refused: {json}"
    );
    assert!(json["error"].get("type").is_some(), "{json}");
    assert_eq!(
        upstream.requests().len(),
        2,
        "the refused call never reached DeepSeek"
    );

    let error = gateway.client().chat(hello()).await.expect_err("refused");
    assert_eq!(error.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE));
    assert!(error.retry_after().is_some());
    gateway.stop().await;
}

const PRO_CHAT: &str =
    r#"{"model":"deepseek-v4-pro","messages":[{"role":"user","content":"Hello gateway"}]}"#;

#[tokio::test]
async fn one_failing_model_does_not_cut_off_the_others() {
    let (upstream, gateway) = RunningGateway::start_with_upstream_and(gateway::GatewayConfig {
        breaker: breaker_settings(),
        resilience: no_retries(),
        ..Default::default()
    })
    .await;
    upstream.script([Reply::status(503), Reply::status(503)]);
    for _ in 0..2 {
        assert_eq!(raw_chat(&gateway, FLASH_CHAT).await.0, 503);
    }
    let (status, _, json) = raw_chat(&gateway, FLASH_CHAT).await;
    assert_eq!(status, 503, "the flash breaker is open");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("breaker \"deepseek-v4-flash\" is open"),
        "{json}"
    );
    assert_eq!(upstream.requests().len(), 2);

    // The pro model has its own breaker, still closed: its call reaches DeepSeek.
    let (status, _, json) = raw_chat(&gateway, PRO_CHAT).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["model"], "deepseek-v4-pro");
    assert_eq!(upstream.requests().len(), 3);
    // So does the models list.
    assert!(gateway.client().models().await.is_ok());
    gateway.stop().await;
}

#[tokio::test]
async fn a_refused_call_for_the_fallback_model_is_not_sent_to_itself() {
    let (upstream, gateway) = RunningGateway::start_with_upstream_and(gateway::GatewayConfig {
        fallback_model: Some("deepseek-v4-pro".to_owned()),
        breaker: breaker_settings(),
        resilience: no_retries(),
        ..Default::default()
    })
    .await;
    upstream.script([Reply::status(503), Reply::status(503)]);
    for _ in 0..2 {
        assert_eq!(raw_chat(&gateway, PRO_CHAT).await.0, 503);
    }
    let (status, headers, json) = raw_chat(&gateway, PRO_CHAT).await;
    assert_eq!(status, 503, "{json}");
    assert!(headers.get(gateway::FALLBACK_HEADER).is_none());
    assert_eq!(upstream.requests().len(), 2, "nothing re-sent");
    gateway.stop().await;
}

/// The series of `name` whose labels include every one of `labels`, summed.
fn series_sum(scrape: &str, name: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn the_gateway_serves_metrics_health_and_readiness() {
    let gateway = RunningGateway::start(gateway::GatewayConfig::default()).await;
    let (status, _, body) = raw("GET", format!("{}/healthz", gateway.url()), "").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _, _) = raw("GET", format!("{}/readyz", gateway.url()), "").await;
    assert_eq!(status, 200);

    gateway.client().chat(hello()).await.expect("chat");
    let (status, content_type, scrape) = raw("GET", format!("{}/metrics", gateway.url()), "").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    for side in ["side=\"server\"", "side=\"client\""] {
        assert_eq!(
            series_sum(
                &scrape,
                "deepseek_requests_total",
                &[side, "operation=\"chat\"", "outcome=\"success\""]
            ),
            1.0,
            "one successful chat call on the {side} side:\n{scrape}"
        );
    }
    assert!(
        series_sum(
            &scrape,
            "gen_ai_client_token_usage_sum",
            &[
                "gen_ai_token_type=\"input\"",
                "gen_ai_request_model=\"deepseek-v4-flash\""
            ]
        ) > 0.0,
        "the mock's usage is counted: {scrape}"
    );
    assert!(
        !scrape.contains("mock-key-for-the-gateway"),
        "no API key in metrics"
    );

    // The real exposition parser accepts it (CI installs promtool).
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(scrape.as_bytes())
                .unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Err(error) if std::env::var_os("CI").is_none() => {
            eprintln!("note: promtool not found ({error}); skipping the exposition check");
        }
        Err(error) => panic!("promtool is required in CI: {error}"),
    }
    gateway.stop().await;
}

#[test]
fn breaker_settings_come_from_the_environment_and_errors_name_the_variable() {
    let from = |pairs: &'static [(&'static str, &'static str)]| {
        gateway::GatewayConfig::from_vars(move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    };
    let config = from(&[]).unwrap();
    assert_eq!(config.breaker, gateway::BreakerSettings::default());
    assert_eq!(config.fallback_model, None);

    let config = from(&[
        ("GATEWAY_FALLBACK_MODEL", " deepseek-v4-pro "),
        ("GATEWAY_BREAKER_FAILURE_RATE", "25"),
        ("GATEWAY_BREAKER_MINIMUM_CALLS", "5"),
        ("GATEWAY_BREAKER_WINDOW", "10"),
        ("GATEWAY_BREAKER_OPEN_WAIT", "0.5"),
        ("GATEWAY_BREAKER_FATAL_WAIT", "0"),
    ])
    .unwrap();
    assert_eq!(config.fallback_model.as_deref(), Some("deepseek-v4-pro"));
    assert_eq!(
        config.breaker,
        gateway::BreakerSettings {
            failure_rate: 25.0,
            minimum_calls: 5,
            window_calls: 10,
            open_wait: Duration::from_millis(500),
            fatal_wait: None,
        }
    );

    for (pairs, variable) in [
        (
            &[("GATEWAY_BREAKER_FAILURE_RATE", "150")][..],
            "GATEWAY_BREAKER_FAILURE_RATE",
        ),
        (
            &[("GATEWAY_BREAKER_FAILURE_RATE", "half")][..],
            "GATEWAY_BREAKER_FAILURE_RATE",
        ),
        (
            &[("GATEWAY_BREAKER_MINIMUM_CALLS", "0")][..],
            "GATEWAY_BREAKER_MINIMUM_CALLS",
        ),
        (
            &[("GATEWAY_BREAKER_WINDOW", "-3")][..],
            "GATEWAY_BREAKER_WINDOW",
        ),
        (
            &[("GATEWAY_BREAKER_WINDOW", "99999999")][..],
            "GATEWAY_BREAKER_WINDOW",
        ),
        (
            &[("GATEWAY_BREAKER_OPEN_WAIT", "0")][..],
            "GATEWAY_BREAKER_OPEN_WAIT",
        ),
        (
            &[("GATEWAY_BREAKER_OPEN_WAIT", "forever")][..],
            "GATEWAY_BREAKER_OPEN_WAIT",
        ),
        (
            &[("GATEWAY_BREAKER_FATAL_WAIT", "-1")][..],
            "GATEWAY_BREAKER_FATAL_WAIT",
        ),
        (
            &[("GATEWAY_FALLBACK_MODEL", "two words")][..],
            "GATEWAY_FALLBACK_MODEL",
        ),
        (
            &[("GATEWAY_FALLBACK_MODEL", "bad\u{7}")][..],
            "GATEWAY_FALLBACK_MODEL",
        ),
    ] {
        let error = from(pairs).expect_err(variable);
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.to_string().contains(variable), "{error}");
    }
}

/// Writes `text` to a fresh file and returns its path.
fn config_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("tower-deepseek-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn config_with(
    path: &str,
    env: &'static [(&'static str, &'static str)],
) -> Result<gateway::GatewayConfig, tower_deepseek::Error> {
    let path = path.to_owned();
    gateway::GatewayConfig::from_vars(move |name| {
        if name == "GATEWAY_CONFIG" {
            return Some(path.clone());
        }
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
}

#[test]
fn the_sample_config_file_holds_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gateway/gateway.toml");
    let config = config_with(path, &[]).unwrap();
    let defaults = gateway::GatewayConfig::default();
    assert_eq!(config.breaker, defaults.breaker);
    assert_eq!(config.resilience, defaults.resilience);
    assert_eq!(config.rate_limit, defaults.rate_limit);
    assert_eq!(config.max_in_flight, defaults.max_in_flight);
    assert_eq!(config.jobs, defaults.jobs);
    assert_eq!(config.hedge, defaults.hedge);
    assert_eq!(config.model.as_deref(), Some("deepseek-v4-flash"));
    assert_eq!(config.listen, Some("127.0.0.1:8080".parse().unwrap()));
    assert!(!config.bare);
    assert_eq!(config.upstream_http2_only, defaults.upstream_http2_only);
    assert!(
        !config.upstream_http2_only,
        "HTTP/1.1 (or ALPN's pick) by default"
    );
}

#[test]
fn upstream_http2_only_is_read_from_the_file_and_the_environment() {
    let path = config_file("http2.toml", "[deepseek]\nhttp2_only = true\n");
    assert!(config_with(&path, &[]).unwrap().upstream_http2_only);
    let config = config_with(&path, &[("GATEWAY_UPSTREAM_HTTP2_ONLY", "0")]).unwrap();
    assert!(!config.upstream_http2_only, "the environment wins");
    let path = config_file("http2-bad.toml", "[deepseek]\nhttp2_only = \"yes\"\n");
    let message = config_with(&path, &[]).unwrap_err().to_string();
    assert!(
        message.contains("[deepseek] http2_only") && message.contains("true or false"),
        "{message}"
    );
}

#[test]
fn the_config_file_sets_values_and_the_environment_wins() {
    let path = config_file(
        "values.toml",
        r#"
listen = "0.0.0.0:9000"
[deepseek]
model = "deepseek-v4-pro"
fallback_model = "deepseek-v4-flash"
[breaker]
failure_rate = 25.5
window = 10
open_wait = 0.5
[timeouts]
idle = 30
[rate_limit]
per_minute = 0
[jobs]
workers = 2
max_age = 60
[[upstreams]]
name = "backup"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "BACKUP_API_KEY"
models = { "deepseek-v4-pro" = "backup-large" }
"#,
    );
    let config = config_with(
        &path,
        &[
            ("GATEWAY_BREAKER_WINDOW", "40"),
            ("DEEPSEEK_MODEL", " "),
            ("BACKUP_API_KEY", "sk-backup-secret"),
        ],
    )
    .unwrap();
    assert_eq!(config.listen, Some("0.0.0.0:9000".parse().unwrap()));
    // A blank variable counts as unset: the file's value stays.
    assert_eq!(config.model.as_deref(), Some("deepseek-v4-pro"));
    assert_eq!(config.fallback_model.as_deref(), Some("deepseek-v4-flash"));
    assert_eq!(config.breaker.failure_rate, 25.5);
    assert_eq!(config.breaker.window_calls, 40, "the environment wins");
    assert_eq!(config.breaker.open_wait, Duration::from_millis(500));
    assert_eq!(config.resilience.idle_timeout, Duration::from_secs(30));
    assert_eq!(config.rate_limit.per_minute, 0);
    assert_eq!(config.jobs.workers, 2);
    assert_eq!(config.jobs.max_age, Duration::from_secs(60));
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(config.upstreams[0].name, "backup");
    assert_eq!(
        config.upstreams[0].models,
        vec![("deepseek-v4-pro".to_owned(), "backup-large".to_owned())]
    );
    assert_eq!(
        config.upstreams[0].api_key.as_ref().map(|k| k.0.as_str()),
        Some("sk-backup-secret")
    );
    assert!(!format!("{config:?}").contains("sk-backup-secret"));
    // The key's variable must be set: the error names it, not a value.
    let error = config_with(&path, &[]).unwrap_err();
    assert!(error.to_string().contains("BACKUP_API_KEY"), "{error}");
}

#[test]
fn a_bad_config_file_is_an_error_naming_the_key_and_the_file() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "typo.toml",
            "[breaker]\nwindw = 10\n",
            &["unknown key", "[breaker] windw"],
        ),
        (
            "table.toml",
            "[breakers]\nwindow = 10\n",
            &["unknown table [breakers]"],
        ),
        (
            "key.toml",
            "[deepseek]\napi_key = \"sk-in-a-file\"\n",
            &["DEEPSEEK_API_KEY"],
        ),
        (
            "value.toml",
            "[breaker]\nwindow = \"ten\"\n",
            &["`[breaker] window`", "\"ten\"", "whole number"],
        ),
        (
            "range.toml",
            "[breaker]\nfailure_rate = 150\n",
            &["[breaker] failure_rate", "150"],
        ),
        ("syntax.toml", "[breaker\n", &["not valid TOML"]),
        ("jobs.toml", "[jobs]\nworkers = 0\n", &["[jobs] workers"]),
        (
            "hedge.toml",
            "[hedge]\nenabled = false\nmax_extra_percent = 0\n",
            &["[hedge]", "max_extra_percent"],
        ),
        (
            "upstream.toml",
            "[[upstreams]]\nname = \"b\"\nbase_url = \"http://x\"\n",
            &["[[upstreams]] #1", "api_key_env is required"],
        ),
        (
            "addr.toml",
            "listen = \"everywhere\"\n",
            &["`listen`", "socket address"],
        ),
    ];
    for (name, text, expected) in cases {
        let path = config_file(name, text);
        let error = config_with(&path, &[]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config, "{name}");
        let message = error.to_string();
        for part in *expected {
            assert!(message.contains(part), "{name}: {message:?} lacks {part:?}");
        }
        assert!(!message.contains("sk-in-a-file"), "{message}");
    }
    let missing = config_with("/nonexistent/gateway.toml", &[]).unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/gateway.toml"),
        "{missing}"
    );
}

#[test]
fn the_kubernetes_configmap_is_a_valid_gateway_config() {
    let manifest = include_str!("../deploy/k8s/configmap.yaml");
    let (_, block) = manifest.split_once("gateway.toml: |\n").unwrap();
    let text: Vec<&str> = block
        .lines()
        .map(|line| line.strip_prefix("    ").unwrap_or(line))
        .collect();
    let path = config_file("configmap.toml", &text.join("\n"));
    let config = config_with(&path, &[("DEEPSEEK_API_KEY", "sk-from-the-secret")]).unwrap();
    assert!(
        config.require_api_key,
        "production refuses to run on the mock"
    );
    assert_eq!(config.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(config.api_key.as_deref(), Some("sk-from-the-secret"));
}

#[tokio::test]
async fn without_a_key_a_gateway_that_requires_one_does_not_start() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = gateway::GatewayConfig {
        require_api_key: true,
        ..gateway::GatewayConfig::default()
    };
    let error = gateway::serve(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("DEEPSEEK_API_KEY"), "{error}");
}

#[tokio::test]
async fn the_gateway_runs_jobs_under_its_inbound_stack() {
    let gateway = RunningGateway::start(gateway::GatewayConfig::default()).await;
    let request = http::Request::post(format!("{}/v1/jobs", gateway.url()))
        .header("content-type", "application/json")
        .header("x-trace-id", "job-trace-0001")
        .body(Full::new(Bytes::from_static(FLASH_CHAT.as_bytes())))
        .unwrap();
    let response = Upstream::new().unwrap().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-trace-id"], "job-trace-0001");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let accepted: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(accepted["code"], 0);
    assert_eq!(accepted["data"]["status"], "queued");

    // The mock answers at once; poll (bounded) until the job is done.
    let mut done = serde_json::Value::Null;
    for _ in 0..200 {
        let (status, _, text) = raw("GET", format!("{}{location}", gateway.url()), "").await;
        assert_eq!(status, 200, "{text}");
        done = serde_json::from_str(&text).unwrap();
        if done["data"]["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(done["data"]["status"], "succeeded", "{done}");
    assert_eq!(done["data"]["trace_id"], "job-trace-0001");
    let content = done["data"]["result"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(content.contains("Hello gateway"), "{content}");

    // The jobs routes are labelled by operation in the inbound metrics, never by job ID.
    let (_, _, scrape) = raw("GET", format!("{}/metrics", gateway.url()), "").await;
    assert!(scrape.contains("operation=\"job_submit\""), "{scrape}");
    assert!(scrape.contains("operation=\"job_status\""));
    assert!(!scrape.contains(location.trim_start_matches("/v1/jobs/")));
    gateway.stop().await;
}

#[tokio::test]
async fn a_failing_deepseek_is_answered_by_the_next_upstream_which_the_answer_names() {
    let backup = MockDeepSeek::builder()
        .api_key(Some("sk-backup".to_owned()))
        .models(["backup-model"])
        .start()
        .await
        .unwrap();
    let config = gateway::GatewayConfig {
        resilience: no_retries(),
        upstreams: vec![gateway::file::UpstreamEntry {
            name: "backup".to_owned(),
            base_url: backup.base_url().to_owned(),
            api_key_env: "UNUSED".to_owned(),
            api_key: Some(gateway::file::SecretKey("sk-backup".to_owned())),
            models: vec![("deepseek-v4-flash".to_owned(), "backup-model".to_owned())],
        }],
        ..gateway::GatewayConfig::default()
    };
    let (deepseek, gateway) = RunningGateway::start_with_upstream_and(config).await;

    // DeepSeek answers: it serves, and says so.
    let (status, headers, _) = raw_chat(&gateway, FLASH_CHAT).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "deepseek");

    // DeepSeek overloaded: the backup answers the same call, under the same trace ID.
    deepseek.script([Reply::status(503)]);
    let (status, headers, body) = raw_chat(&gateway, FLASH_CHAT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-upstream"], "backup");
    let sent = backup.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(recorded_model(&sent[0]), "backup-model");
    assert_eq!(sent[0].headers["x-trace-id"], "fallback-trace-0001");
    assert_eq!(
        deepseek.requests().last().unwrap().headers["x-trace-id"],
        "fallback-trace-0001"
    );

    // A bad request is the caller's: no failover.
    deepseek.script([Reply::status(400)]);
    let (status, _, _) = raw_chat(&gateway, FLASH_CHAT).await;
    assert_eq!(status, 400);
    assert_eq!(backup.requests().len(), 1);

    let (_, _, scrape) = raw("GET", format!("{}/metrics", gateway.url()), "").await;
    assert!(
        scrape.contains(r#"failovers_total{from="deepseek",reason="server_error",to="backup"} 1"#),
        "{scrape}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_request_body_over_the_limit_is_refused_on_every_api_route() {
    let gateway = RunningGateway::start(gateway::GatewayConfig::default()).await;
    // 8 MiB is the gateway's limit; one byte more is refused before any JSON is parsed.
    let over: &'static str = Box::leak(" ".repeat((8 << 20) + 1).into_boxed_str());
    for path in ["/v1/chat/completions", "/chat/completions", "/v1/jobs"] {
        let (status, _, _) = raw("POST", format!("{}{path}", gateway.url()), over).await;
        assert_eq!(status, 413, "{path}");
    }
    // 3 MiB is over axum's own 2 MB default, so only the gateway's limit lets it through to
    // the JSON parser (which refuses it as JSON, not as size).
    let under: &'static str = Box::leak(" ".repeat(3 << 20).into_boxed_str());
    for path in ["/v1/chat/completions", "/v1/jobs"] {
        let (status, _, _) = raw("POST", format!("{}{path}", gateway.url()), under).await;
        assert!(status == 400 || status == 422, "{path}: {status}");
    }
    gateway.stop().await;
}
