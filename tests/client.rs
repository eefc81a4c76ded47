//! The typed client against the embedded mock DeepSeek over real sockets.
#![cfg(all(feature = "mock", feature = "upstream"))]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use tower_deepseek::classify::{AuthFailure, NetworkFailure, StreamFailure};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{Error, ErrorKind};

const KEY: &str = "sk-test-client-0123456789abcdef";

async fn mock() -> MockDeepSeek {
    MockDeepSeek::builder()
        .api_key(Some(KEY.to_owned()))
        .start()
        .await
        .expect("mock starts")
}

fn client(mock: &MockDeepSeek) -> DeepSeekClient<Upstream> {
    DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(Upstream::new().expect("upstream"))
        .expect("client")
}

fn hello() -> ChatRequest {
    ChatRequest::new("deepseek-v4-flash")
        .system("Be brief.")
        .user("Hello there")
}

async fn collect_stream(
    client: &DeepSeekClient<Upstream>,
    request: ChatRequest,
) -> (
    String,
    Vec<tower_deepseek::deepseek::ChatChunk>,
    Option<Error>,
) {
    let mut stream = client.chat_stream(request).await.expect("stream starts");
    let mut text = String::new();
    let mut chunks = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                text.push_str(chunk.content().unwrap_or_default());
                chunks.push(chunk);
            }
            Err(error) => {
                assert!(
                    stream.next().await.is_none(),
                    "a stream ends after its error"
                );
                return (text, chunks, Some(error));
            }
        }
    }
    (text, chunks, None)
}

#[tokio::test]
async fn non_streaming_chat_returns_typed_answer_and_sends_the_key() {
    let mock = mock().await;
    let client = client(&mock);
    let answer = client.chat(hello()).await.expect("chat succeeds");
    let content = answer.content().expect("content");
    assert!(content.contains("Hello there"), "{content}");
    let usage = answer.usage.as_ref().expect("usage");
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert!(usage.completion_tokens > 0);
    assert_eq!(answer.finish_reason().map(|r| r.as_str()), Some("stop"));

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    let request = &recorded[0];
    assert_eq!(request.path, "/chat/completions");
    assert_eq!(
        request.headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    assert_eq!(request.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["model"], "deepseek-v4-flash");
    assert!(
        body.get("stream").is_none(),
        "non-streaming sends no stream flag: {body}"
    );
    assert_eq!(body["messages"][1]["content"], "Hello there");
}

#[tokio::test]
async fn streaming_chat_concatenates_to_the_same_answer_and_ends_with_usage() {
    let mock = mock().await;
    let client = client(&mock);
    let full = client.chat(hello()).await.unwrap();
    let (text, chunks, error) = collect_stream(&client, hello()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(Some(text.as_str()), full.content());
    let last = chunks.last().expect("chunks");
    let usage = last.usage.as_ref().expect("the last chunk carries usage");
    assert_eq!(
        usage.completion_tokens,
        full.usage.as_ref().unwrap().completion_tokens
    );
    let body: serde_json::Value = serde_json::from_slice(&mock.requests()[1].body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn base_url_with_v1_prefix_and_models_work() {
    let mock = mock().await;
    let client = DeepSeekClient::builder()
        .base_url(format!("{}/v1/", mock.base_url()))
        .api_key(KEY)
        .build(Upstream::new().unwrap())
        .unwrap();
    let models = client.models().await.expect("models");
    assert!(models.data.iter().any(|m| m.id == "deepseek-v4-flash"));
    client.chat(hello()).await.expect("chat via /v1");
    let paths: Vec<_> = mock.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.contains(&"/v1/chat/completions".to_owned()),
        "{paths:?}"
    );
}

#[tokio::test]
async fn each_error_status_ends_in_its_kind() {
    let mock = mock().await;
    let client = client(&mock);
    let cases = [
        (400, ErrorKind::Client),
        (402, ErrorKind::Auth(AuthFailure::InsufficientBalance)),
        (422, ErrorKind::Client),
        (429, ErrorKind::RateLimited),
        (500, ErrorKind::Server),
        (502, ErrorKind::Server),
        (503, ErrorKind::Server),
        (504, ErrorKind::Server),
    ];
    mock.script(cases.iter().map(|(status, _)| Reply::status(*status)));
    for (status, kind) in cases {
        let error = client.chat(hello()).await.expect_err("scripted failure");
        assert_eq!(error.kind(), kind, "status {status}: {error}");
        assert_eq!(error.status(), Some(StatusCode::from_u16(status).unwrap()));
        let api = error.api_error().expect("DeepSeek error body parsed");
        assert!(!api.raw && !api.message.is_empty(), "{api:?}");
        let ds_trace = error.upstream_trace_id().expect("x-ds-trace-id is kept");
        assert!(ds_trace.starts_with("mock-trace-"), "{ds_trace}");
    }
}

#[tokio::test]
async fn streaming_errors_before_headers_are_the_same_kinds() {
    let mock = mock().await;
    let client = client(&mock);
    mock.script([Reply::status(503)]);
    let error = client.chat_stream(hello()).await.expect_err("503");
    assert_eq!(error.kind(), ErrorKind::Server);
}

#[tokio::test]
async fn wrong_key_is_an_auth_error_that_never_shows_the_key() {
    let mock = mock().await;
    let wrong = "sk-wrong-key-that-must-stay-secret";
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(wrong)
        .build(Upstream::new().unwrap())
        .unwrap();
    let error = client.chat(hello()).await.expect_err("401");
    assert_eq!(error.kind(), ErrorKind::Auth(AuthFailure::InvalidKey));
    assert!(!error.is_retryable());
    for text in [
        format!("{error}"),
        format!("{error:?}"),
        format!("{client:?}"),
        error.to_openai_json().to_string(),
    ] {
        assert!(!text.contains(wrong), "key leaked: {text}");
    }
}

#[tokio::test]
async fn a_key_echoed_by_the_upstream_is_redacted() {
    let mock = mock().await;
    let client = client(&mock);
    let body = format!(
        r#"{{"error":{{"message":"key {KEY} is not allowed","type":"authentication_error","param":null,"code":"invalid_api_key"}}}}"#
    );
    mock.script([Reply::status(401).body(body)]);
    let error = client.chat(hello()).await.expect_err("401");
    let text = format!("{error} {error:?} {}", error.to_openai_json());
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
}

#[tokio::test]
async fn retry_after_is_parsed_from_a_429() {
    let mock = mock().await;
    let client = client(&mock);
    mock.script([Reply::status(429).header("retry-after", "7")]);
    let error = client.chat(hello()).await.expect_err("429");
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert!(error.is_retryable());
}

#[tokio::test]
async fn keep_alives_before_the_first_token_are_counted_never_yielded() {
    let mock = mock().await;
    let client = client(&mock);
    mock.script([Reply::ok().keep_alives(3)]);
    let mut stream = client.chat_stream(hello()).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(chunk.expect("chunk").content().unwrap_or_default());
    }
    assert_eq!(stream.keep_alives(), 3);
    assert!(text.starts_with("Hello"), "{text}");

    // Non-streaming: DeepSeek sends blank lines before the JSON body while it waits.
    mock.script([Reply::ok().keep_alives(4)]);
    let answer = client.chat(hello()).await.expect("blank lines are skipped");
    assert!(answer.content().unwrap().contains("Hello there"));
}

#[tokio::test]
async fn a_cut_stream_is_a_truncated_error_not_a_short_answer() {
    let mock = mock().await;
    let client = client(&mock);
    mock.script([Reply::ok().cut_after(2)]);
    let (_, chunks, error) = collect_stream(&client, hello()).await;
    assert_eq!(chunks.len(), 2);
    let error = error.expect("truncation is reported");
    assert_eq!(error.kind(), ErrorKind::Stream(StreamFailure::Truncated));
    assert!(error.is_retryable());
}

#[tokio::test]
async fn a_malformed_chunk_is_an_error_not_skipped() {
    let mock = mock().await;
    let client = client(&mock);
    mock.script([Reply::ok().malformed_at(1)]);
    let (_, chunks, error) = collect_stream(&client, hello()).await;
    assert_eq!(chunks.len(), 1, "the chunk before the bad one is delivered");
    let error = error.expect("malformed chunk is reported");
    assert_eq!(error.kind(), ErrorKind::Stream(StreamFailure::Malformed));
}

#[tokio::test]
async fn a_connection_reset_mid_stream_is_a_network_error() {
    let mock = mock().await;
    let client = client(&mock);
    mock.script([Reply::ok().reset_after(2)]);
    let (_, _, error) = collect_stream(&client, hello()).await;
    let error = error.expect("reset is reported");
    assert_eq!(
        error.kind(),
        ErrorKind::Network(NetworkFailure::Reset),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn a_reset_before_headers_is_a_network_error() {
    let mock = mock().await;
    let client = client(&mock);
    mock.script([Reply::ok().reset_before_headers()]);
    let error = client.chat(hello()).await.expect_err("reset");
    assert_eq!(
        error.kind(),
        ErrorKind::Network(NetworkFailure::Reset),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn insufficient_system_resource_is_a_stream_failure() {
    let mock = mock().await;
    let client = client(&mock);
    mock.script([Reply::ok().finish_reason("insufficient_system_resource")]);
    let error = client.chat(hello()).await.expect_err("incomplete answer");
    assert_eq!(
        error.kind(),
        ErrorKind::Stream(StreamFailure::InsufficientSystemResource)
    );
    mock.script([Reply::ok().finish_reason("insufficient_system_resource")]);
    let (text, _, error) = collect_stream(&client, hello()).await;
    assert!(!text.is_empty(), "delivered chunks stay delivered");
    assert_eq!(
        error.expect("reported after the chunks").kind(),
        ErrorKind::Stream(StreamFailure::InsufficientSystemResource)
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = DeepSeekClient::builder()
        .base_url(format!("http://{addr}"))
        .api_key(KEY)
        .build(Upstream::new().unwrap())
        .unwrap();
    let error = client.chat(hello()).await.expect_err("refused");
    assert_eq!(
        error.kind(),
        ErrorKind::Network(NetworkFailure::Connect),
        "{error:?}"
    );
    assert!(!format!("{error:?}").contains(KEY));
}

#[tokio::test]
async fn invalid_requests_fail_before_any_network_call() {
    let mock = mock().await;
    let client = client(&mock);
    let bad = [
        ChatRequest::new("deepseek-v4-flash"),
        hello().temperature(2.5),
        hello().max_tokens(0),
    ];
    for request in bad {
        let error = client.chat(request).await.expect_err("invalid");
        assert_eq!(error.kind(), ErrorKind::InvalidRequest, "{error}");
    }
    assert!(mock.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn empty_model_takes_the_default() {
    let mock = mock().await;
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .default_model("deepseek-v4-pro")
        .build(Upstream::new().unwrap())
        .unwrap();
    let answer = client
        .chat(ChatRequest::new("").user("hi"))
        .await
        .expect("chat");
    assert_eq!(answer.model, "deepseek-v4-pro");
}

#[tokio::test]
async fn bad_configuration_is_a_config_error() {
    for url in [
        "not a url",
        "ftp://example.com",
        "/relative",
        "http://h/v1?x=1",
    ] {
        let error = DeepSeekClient::builder()
            .base_url(url)
            .build(())
            .expect_err(url);
        assert_eq!(error.kind(), ErrorKind::Config, "{url}: {error}");
    }
    let error = DeepSeekClient::builder()
        .api_key("sk-bad\nkey")
        .build(())
        .expect_err("newline in key");
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(!error.to_string().contains("sk-bad"));
}

#[tokio::test]
async fn chat_requests_carry_their_model_for_the_layers_below() {
    use std::sync::Mutex;
    use tower_deepseek::deepseek::{RequestBody, RequestModel};

    let mock = mock().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::clone(&seen);
    let transport = tower::ServiceBuilder::new()
        .map_request(move |request: http::Request<RequestBody>| {
            let model = request.extensions().get::<RequestModel>().cloned();
            recorder.lock().unwrap().push(model.map(|m| m.to_string()));
            request
        })
        .service(Upstream::new().unwrap());
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .default_model("deepseek-v4-pro")
        .build(transport)
        .unwrap();
    client.chat(ChatRequest::new("").user("hi")).await.unwrap();
    client
        .chat(ChatRequest::new("deepseek-v4-flash").user("hi"))
        .await
        .unwrap();
    let mut stream = client
        .chat_stream(ChatRequest::new("deepseek-chat").user("hi"))
        .await
        .unwrap();
    while stream.next().await.is_some() {}
    client.models().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            Some("deepseek-v4-pro".to_owned()),
            Some("deepseek-v4-flash".to_owned()),
            Some("deepseek-chat".to_owned()),
            None,
        ]
    );
}

/// The trace layer's headers and the HTTP client's `host` fit in the map the client builds:
/// a map that grew on every traced call (reallocating and rehashing) cost about 1,300
/// instructions a request in the gateway.
#[tokio::test]
async fn a_traced_request_fits_its_header_map_without_growing() {
    use std::sync::Mutex;
    use tower_deepseek::deepseek::RequestBody;
    use tower_deepseek::trace_id::PropagateTraceIdLayer;

    let mock = mock().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::clone(&seen);
    let transport = tower::ServiceBuilder::new()
        .layer(PropagateTraceIdLayer::new())
        .map_request(move |mut request: http::Request<RequestBody>| {
            let before = request.headers().capacity();
            let headers = request.headers_mut();
            headers.insert(http::header::HOST, "127.0.0.1".parse().unwrap());
            headers.insert("tracestate", "vendor=1".parse().unwrap());
            recorder
                .lock()
                .unwrap()
                .push((before, headers.capacity(), headers.len()));
            request
        })
        .service(Upstream::new().unwrap());
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(transport)
        .unwrap();
    client.chat(hello()).await.unwrap();
    let seen = seen.lock().unwrap();
    let (before, after, len) = seen[0];
    assert!(
        len >= 8,
        "accept, user-agent, content-type, authorization, two trace headers, host, tracestate: {len}"
    );
    assert_eq!(before, after, "the header map grew");
}

/// The upstream, counting its clones; its `poll_ready` fails while `fail_ready` is set.
#[derive(Clone)]
struct CountedUpstream {
    inner: Upstream,
    clones: Arc<std::sync::atomic::AtomicUsize>,
    fail_ready: Arc<std::sync::atomic::AtomicBool>,
    counted: bool,
}

impl CountedUpstream {
    fn new() -> CountedUpstream {
        CountedUpstream {
            inner: Upstream::new().unwrap(),
            clones: Arc::default(),
            fail_ready: Arc::default(),
            counted: false,
        }
    }

    fn clones(&self) -> usize {
        self.clones.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl tower::Service<http::Request<tower_deepseek::deepseek::RequestBody>> for CountedUpstream {
    type Response = <Upstream as tower::Service<
        http::Request<tower_deepseek::deepseek::RequestBody>,
    >>::Response;
    type Error = Error;
    type Future =
        <Upstream as tower::Service<http::Request<tower_deepseek::deepseek::RequestBody>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        // Counted here, not in `clone`: the test's own handle is cloned into the client.
        if !self.counted {
            self.counted = true;
            self.clones
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if self.fail_ready.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Ready(Err(Error::new(ErrorKind::Overloaded, "not ready")));
        }
        self.inner.poll_ready(cx)
    }

    fn call(
        &mut self,
        request: http::Request<tower_deepseek::deepseek::RequestBody>,
    ) -> Self::Future {
        self.inner.call(request)
    }
}

/// Calls reuse the clone of the service an earlier call made (tower's contract: a service
/// takes its next `poll_ready` after `call`), instead of cloning the whole stack per call; a
/// clone whose `poll_ready` failed is dropped, and the next call makes a new one.
#[tokio::test]
async fn calls_reuse_one_clone_of_the_service_and_drop_one_that_failed() {
    let mock = mock().await;
    let upstream = CountedUpstream::new();
    let client = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(upstream.clone())
        .unwrap();
    for _ in 0..5 {
        client.chat(hello()).await.unwrap();
    }
    assert_eq!(upstream.clones(), 1, "one clone served five calls");
    // Two calls at once on this thread: the first gives its clone back once called.
    let (a, b) = tokio::join!(client.chat(hello()), client.chat(hello()));
    a.unwrap();
    b.unwrap();
    assert_eq!(upstream.clones(), 1);
    upstream
        .fail_ready
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let error = client.chat(hello()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Overloaded, "{error}");
    upstream
        .fail_ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    client.chat(hello()).await.unwrap();
    client.chat(hello()).await.unwrap();
    assert_eq!(upstream.clones(), 2, "the failed clone was replaced once");
    // A clone of the client shares the spares: it reuses them too.
    client.clone().chat(hello()).await.unwrap();
    assert_eq!(upstream.clones(), 2);
}
