//! The mock DeepSeek server over real sockets, driven by a small raw HTTP/1.1 client so each
//! test sees exactly what went over the wire: the head, each byte of the body, and whether the
//! connection ended cleanly, early, or with a reset.
#![cfg(feature = "mock")]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tower_deepseek::mock::{MockDeepSeek, Reply};

/// How a response body ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// The message was complete (content-length reached or the last chunk read).
    Complete,
    /// The connection closed cleanly before the message was complete.
    Eof,
    /// Reading failed.
    Error(io::ErrorKind),
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    ending: Ending,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", self.text()))
    }

    /// The payloads of the `data:` events, in order.
    fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    /// The `data:` events parsed as JSON (`[DONE]` excluded).
    fn chunks(&self) -> Vec<Value> {
        self.events()
            .iter()
            .filter(|event| *event != "[DONE]")
            .map(|event| {
                serde_json::from_str(event)
                    .unwrap_or_else(|error| panic!("chunk is not JSON ({error}): {event}"))
            })
            .collect()
    }
}

/// One request on a fresh connection (`connection: close`). Fails only when the request
/// cannot be sent or the response head cannot be read; body failures are in `ending`.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(stream);

    let mut status_line = String::new();
    if reader.read_line(&mut status_line).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before the head",
        ));
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed inside the head",
            ));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let mut response = RawResponse {
        status,
        headers,
        body: Vec::new(),
        ending: Ending::Complete,
    };
    let result = if response.header("transfer-encoding") == Some("chunked") {
        read_chunked(&mut reader, &mut response.body).await
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length.parse().map_err(io::Error::other)?;
        response.body.resize(length, 0);
        reader.read_exact(&mut response.body).await.map(|_| true)
    } else {
        reader.read_to_end(&mut response.body).await.map(|_| true)
    };
    response.ending = match result {
        Ok(true) => Ending::Complete,
        Ok(false) => Ending::Eof,
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ending::Eof,
        Err(error) => Ending::Error(error.kind()),
    };
    Ok(response)
}

/// Decodes a chunked body; `Ok(false)` when the connection closed before the last chunk.
async fn read_chunked(reader: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line).await? == 0 {
            return Ok(false);
        }
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(io::Error::other)?;
        if size == 0 {
            let mut trailer = String::new();
            reader.read_line(&mut trailer).await?;
            return Ok(true);
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).await?;
        chunk.truncate(size);
        body.extend_from_slice(&chunk);
    }
}

fn bearer(mock: &MockDeepSeek) -> String {
    format!("Bearer {}", mock.api_key())
}

/// `POST /chat/completions` with the mock's own key.
async fn chat(mock: &MockDeepSeek, body: &Value) -> RawResponse {
    chat_with(mock, body, &[]).await
}

async fn chat_with(mock: &MockDeepSeek, body: &Value, extra: &[(&str, &str)]) -> RawResponse {
    let auth = bearer(mock);
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    send(
        mock.addr(),
        "POST",
        "/chat/completions",
        &headers,
        &body.to_string(),
    )
    .await
    .expect("request failed")
}

fn hello(text: &str) -> Value {
    json!({
        "model": "deepseek-chat",
        "messages": [
            { "role": "system", "content": "be brief" },
            { "role": "user", "content": text },
        ],
    })
}

fn streaming(text: &str) -> Value {
    let mut body = hello(text);
    body["stream"] = json!(true);
    body["stream_options"] = json!({ "include_usage": true });
    body
}

#[tokio::test]
async fn non_streaming_answer_has_the_documented_content_and_usage() {
    let mock = MockDeepSeek::start().await.unwrap();
    let response = chat(&mock, &hello("hello world")).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.header("x-ds-trace-id"),
        Some("mock-trace-00000001")
    );
    let json = response.json();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "deepseek-chat");
    assert_eq!(json["id"], "mock-chatcmpl-00000001");
    let choice = &json["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        "Hello from mock DeepSeek. You said: hello world"
    );
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    let usage = &json["usage"];
    // Two messages of two words each, plus 4 per message.
    assert_eq!(usage["prompt_tokens"], 12);
    // "Hello ", "from ", "mock ", "DeepSeek. ", "You ", "said: ", "hello ", "world"
    assert_eq!(usage["completion_tokens"], 8);
    assert_eq!(usage["total_tokens"], 20);
    assert_eq!(usage["prompt_cache_hit_tokens"], 0);
    assert_eq!(usage["prompt_cache_miss_tokens"], 12);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
}

#[tokio::test]
async fn streaming_answer_concatenates_to_the_same_content_and_ends_with_usage_and_done() {
    let mock = MockDeepSeek::start().await.unwrap();
    let whole = chat(&mock, &hello("stream me please")).await.json();
    let response = chat(&mock, &streaming("stream me please")).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.ending, Ending::Complete);
    let events = response.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(response.text().ends_with("data: [DONE]\n\n"));

    let chunks = response.chunks();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");

    let tokens: Vec<&str> = chunks[1..chunks.len() - 2]
        .iter()
        .map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        tokens.concat(),
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(usage_chunk["usage"]["completion_tokens"], tokens.len());
    assert_eq!(usage_chunk["usage"], whole["usage"]);
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk() {
    let mock = MockDeepSeek::start().await.unwrap();
    let mut body = hello("hi");
    body["stream"] = json!(true);
    let response = chat(&mock, &body).await;
    let chunks = response.chunks();
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(response.events().last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn reasoner_model_thinks_first_and_counts_reasoning_tokens() {
    let mock = MockDeepSeek::start().await.unwrap();
    let mut body = hello("why");
    body["model"] = json!("deepseek-reasoner");
    let json = chat(&mock, &body).await.json();
    let message = &json["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "The user said: why");
    let usage = &json["usage"];
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 4);
    // Four reasoning tokens plus seven content tokens.
    assert_eq!(usage["completion_tokens"], 4 + 7);
}

#[tokio::test]
async fn max_tokens_cuts_the_answer_and_reports_length() {
    let mock = MockDeepSeek::start().await.unwrap();
    let mut body = hello("a long question");
    body["max_tokens"] = json!(3);
    let json = chat(&mock, &body).await.json();
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    assert_eq!(json["choices"][0]["message"]["content"], "Hello from mock ");
    assert_eq!(json["usage"]["completion_tokens"], 3);

    body["stream"] = json!(true);
    let response = chat(&mock, &body).await;
    let chunks = response.chunks();
    // role, three tokens, finish
    assert_eq!(chunks.len(), 5);
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn wrong_key_gets_401_showing_only_its_last_four_characters() {
    let mock = MockDeepSeek::builder()
        .api_key(Some("sk-right-key-0000".to_owned()))
        .start()
        .await
        .unwrap();
    mock.script([Reply::status(503)]);
    let response = send(
        mock.addr(),
        "POST",
        "/chat/completions",
        &[("authorization", "Bearer sk-wrong-key-9876")],
        &hello("hi").to_string(),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 401);
    assert!(!response.text().contains("sk-wrong"), "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"error": {
            "message": "Authentication Fails, Your api key: ****9876 is invalid",
            "type": "authentication_error",
            "param": null,
            "code": "invalid_request_error",
        }})
    );

    let missing = send(
        mock.addr(),
        "POST",
        "/chat/completions",
        &[],
        &hello("hi").to_string(),
    )
    .await
    .unwrap();
    assert_eq!(missing.status, 401);
    // A refused request does not take the scripted reply.
    assert_eq!(mock.pending_replies(), 1);
    assert_eq!(chat(&mock, &hello("hi")).await.status, 503);
}

#[tokio::test]
async fn default_key_check_accepts_any_key_and_none_accepts_no_key() {
    let mock = MockDeepSeek::start().await.unwrap();
    let any = send(
        mock.addr(),
        "GET",
        "/models",
        &[("authorization", "Bearer whatever-key")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(any.status, 200);
    let empty = send(
        mock.addr(),
        "GET",
        "/models",
        &[("authorization", "Bearer ")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(empty.status, 401);

    let open = MockDeepSeek::builder().api_key(None).start().await.unwrap();
    let keyless = send(open.addr(), "GET", "/models", &[], "").await.unwrap();
    assert_eq!(keyless.status, 200);
}

#[tokio::test]
async fn scripted_replies_are_consumed_in_order() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([Reply::status(503), Reply::status(503)]);
    let first = chat(&mock, &hello("hi")).await;
    assert_eq!(first.status, 503);
    assert_eq!(first.json()["error"]["message"], "Server overloaded");
    assert_eq!(chat(&mock, &hello("hi")).await.status, 503);
    let third = chat(&mock, &hello("hi")).await;
    assert_eq!(third.status, 200);
    assert_eq!(mock.pending_replies(), 0);
    assert!(third.json()["choices"][0]["message"]["content"].is_string());
}

#[tokio::test]
async fn models_requests_do_not_consume_the_script() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([Reply::status(500)]);
    let auth = bearer(&mock);
    let models = send(
        mock.addr(),
        "GET",
        "/v1/models",
        &[("authorization", &auth)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(models.status, 200);
    let failed = chat(&mock, &hello("hi")).await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["error"]["message"], "Internal Server Error");
}

#[tokio::test]
async fn rate_limit_reply_carries_retry_after() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([
        Reply::status(429).header("retry-after", "2"),
        Reply::status(402),
    ]);
    let response = chat(&mock, &hello("hi")).await;
    assert_eq!(response.status, 429);
    assert_eq!(response.header("retry-after"), Some("2"));
    assert_eq!(response.json()["error"]["message"], "Rate Limit Reached");
    assert!(response.header("x-ds-trace-id").is_some());
    let response = chat(&mock, &hello("hi")).await;
    assert_eq!(response.status, 402);
    assert_eq!(response.json()["error"]["message"], "Insufficient Balance");
}

#[tokio::test]
async fn custom_status_headers_and_body_are_sent_verbatim() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([Reply::status(502)
        .header("content-type", "text/html")
        .body("<html>bad gateway</html>")]);
    let response = chat(&mock, &hello("hi")).await;
    assert_eq!(response.status, 502);
    assert_eq!(response.header("content-type"), Some("text/html"));
    assert_eq!(response.text(), "<html>bad gateway</html>");
}

#[tokio::test]
async fn fixed_content_and_finish_reason_are_used() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([Reply::ok()
        .content("fixed answer here")
        .finish_reason("insufficient_system_resource")]);
    let response = chat(&mock, &streaming("ignored")).await;
    let chunks = response.chunks();
    let tokens: Vec<&str> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .filter(|token| !token.is_empty())
        .collect();
    assert_eq!(tokens, ["fixed ", "answer ", "here"]);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "insufficient_system_resource"
    );
}

#[tokio::test]
async fn keep_alives_come_before_the_first_token() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([
        Reply::ok()
            .keep_alives(3)
            .keep_alive_interval(Duration::from_millis(5)),
        Reply::ok().keep_alives(2),
    ]);
    let response = chat(&mock, &streaming("hi")).await;
    let text = response.text();
    assert!(
        text.starts_with(": keep-alive\n\n: keep-alive\n\n: keep-alive\n\ndata: {"),
        "{text}"
    );
    assert_eq!(text.matches(": keep-alive").count(), 3);
    assert_eq!(response.events().last().map(String::as_str), Some("[DONE]"));

    // Non-streaming: blank lines before the JSON body, as DeepSeek sends them.
    let response = chat(&mock, &hello("hi")).await;
    let text = response.text();
    assert!(text.starts_with("\n\n{"), "{text:?}");
    let json: Value = serde_json::from_str(text.trim_start()).unwrap();
    assert_eq!(json["object"], "chat.completion");
}

#[tokio::test]
async fn cut_after_ends_cleanly_without_done() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([Reply::ok().cut_after(3)]);
    let response = chat(&mock, &streaming("one two three four")).await;
    assert_eq!(response.status, 200);
    // The HTTP message itself is complete: the stream is short, not broken.
    assert_eq!(response.ending, Ending::Complete);
    let events = response.events();
    assert_eq!(events.len(), 3);
    assert!(!events.iter().any(|event| event == "[DONE]"));
    assert_eq!(response.chunks().len(), 3);
}

#[tokio::test]
async fn malformed_at_breaks_exactly_that_chunk() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([Reply::ok().malformed_at(2)]);
    let response = chat(&mock, &streaming("one two three")).await;
    let events = response.events();
    assert_eq!(events[2], r#"{"id": oops"#);
    for (index, event) in events.iter().enumerate() {
        let valid = event == "[DONE]" || serde_json::from_str::<Value>(event).is_ok();
        assert_eq!(valid, index != 2, "event {index}: {event}");
    }
}

#[tokio::test]
async fn reset_after_gives_the_client_a_connection_error() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([Reply::ok().reset_after(2)]);
    let response = chat(&mock, &streaming("one two three four")).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.ending,
        Ending::Error(io::ErrorKind::ConnectionReset),
        "body so far: {:?}",
        response.text()
    );
    // The two chunks handed over before the reset reached the client.
    assert_eq!(response.events().len(), 2, "{:?}", response.text());
    // The server is fine afterwards.
    assert_eq!(chat(&mock, &hello("hi")).await.status, 200);
}

#[tokio::test]
async fn reset_before_headers_fails_the_request() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([Reply::ok().reset_before_headers()]);
    let auth = bearer(&mock);
    let result = send(
        mock.addr(),
        "POST",
        "/chat/completions",
        &[("authorization", &auth)],
        &hello("hi").to_string(),
    )
    .await;
    let error = result.expect_err("a reset, not a response");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    assert_eq!(chat(&mock, &hello("hi")).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn delay_headers_and_chunk_delay_run_on_tokio_time() {
    let mock = MockDeepSeek::start().await.unwrap();
    mock.script([
        Reply::status(503).delay_headers(Duration::from_secs(30)),
        Reply::ok().chunk_delay(Duration::from_secs(2)),
    ]);
    let started = tokio::time::Instant::now();
    let response = chat(&mock, &hello("hi")).await;
    assert_eq!(response.status, 503);
    assert!(started.elapsed() >= Duration::from_secs(30));

    let started = tokio::time::Instant::now();
    let response = chat(&mock, &streaming("hi")).await;
    let events = response.events().len();
    // Every event but the first waits two seconds.
    assert!(started.elapsed() >= Duration::from_secs(2) * (events as u32 - 1));
}

#[tokio::test]
async fn control_endpoints_script_and_report_over_http() {
    let mock = MockDeepSeek::start().await.unwrap();
    let addr = mock.addr();
    let script = json!([
        { "status": 503 },
        { "status": 429, "headers": { "retry-after": "7" } },
        { "content": "from the script", "chunk_delay_ms": 1 },
    ]);
    let queued = send(addr, "POST", "/_mock/script", &[], &script.to_string())
        .await
        .unwrap();
    assert_eq!(queued.status, 200);
    assert_eq!(queued.json(), json!({ "queued": 3 }));
    let pending = send(addr, "GET", "/_mock/script", &[], "").await.unwrap();
    assert_eq!(pending.json().as_array().map(Vec::len), Some(3));

    let bad = send(addr, "POST", "/_mock/script", &[], r#"[{"stauts": 503}]"#)
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stauts")
    );

    assert_eq!(chat(&mock, &hello("hi")).await.status, 503);
    let limited = chat(&mock, &hello("hi")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("7"));
    let scripted = chat(&mock, &hello("hi")).await.json();
    assert_eq!(
        scripted["choices"][0]["message"]["content"],
        "from the script"
    );

    let recorded = send(addr, "GET", "/_mock/requests", &[], "").await.unwrap();
    let recorded = recorded.json();
    let recorded = recorded.as_array().unwrap();
    // Control requests are not recorded.
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0]["method"], "POST");
    assert_eq!(recorded[0]["path"], "/chat/completions");
    assert_eq!(recorded[0]["body"]["messages"][1]["content"], "hi");
    let shown_key = recorded[0]["headers"]["authorization"].as_str().unwrap();
    assert!(!shown_key.contains(mock.api_key()), "{shown_key}");

    let cleared = send(addr, "DELETE", "/_mock/requests", &[], "")
        .await
        .unwrap();
    assert_eq!(cleared.json(), json!({ "cleared": 3 }));
    assert!(mock.requests().is_empty());

    send(addr, "POST", "/_mock/script", &[], r#"{"status": 500}"#)
        .await
        .unwrap();
    let cleared = send(addr, "DELETE", "/_mock/script", &[], "")
        .await
        .unwrap();
    assert_eq!(cleared.json(), json!({ "cleared": 1 }));
    assert_eq!(chat(&mock, &hello("hi")).await.status, 200);
}

#[tokio::test]
async fn stats_count_connections_requests_and_replies_in_flight() {
    let mock = MockDeepSeek::builder()
        .max_recorded(0)
        .start()
        .await
        .unwrap();
    assert_eq!(chat(&mock, &hello("hi")).await.status, 200);
    assert_eq!(chat(&mock, &streaming("hi")).await.status, 200);
    assert_eq!(mock.in_flight(), 0, "both replies finished");
    // Each raw call above used a connection of its own; the stats request is the third.
    let stats = send(mock.addr(), "GET", "/_mock/stats", &[], "")
        .await
        .unwrap();
    assert_eq!(
        stats.json(),
        json!({ "connections": 3, "in_flight": 0, "api_requests": 2, "cancelled": 0 })
    );
    assert_eq!(mock.connections(), 3);
}

#[tokio::test]
async fn zero_concurrent_streams_is_refused_at_start() {
    let error = MockDeepSeek::builder()
        .max_concurrent_streams(0)
        .start()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(
        error.to_string().contains("max_concurrent_streams"),
        "{error}"
    );
}

#[tokio::test]
async fn recorded_requests_keep_trace_headers_and_bodies() {
    let mock = MockDeepSeek::start().await.unwrap();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    chat_with(
        &mock,
        &hello("record me"),
        &[("x-trace-id", "trace-123"), ("traceparent", traceparent)],
    )
    .await;
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    let request = &recorded[0];
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.path, "/chat/completions");
    assert_eq!(request.headers["x-trace-id"], "trace-123");
    assert_eq!(request.headers["traceparent"], traceparent);
    assert_eq!(
        request.headers["authorization"],
        format!("Bearer {}", mock.api_key())
    );
    assert_eq!(
        request.json().unwrap()["messages"][1]["content"],
        "record me"
    );
    let debug = format!("{request:?}");
    assert!(!debug.contains(mock.api_key()), "{debug}");

    mock.clear_requests();
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn recording_is_bounded() {
    let mock = MockDeepSeek::builder()
        .max_recorded(2)
        .start()
        .await
        .unwrap();
    for text in ["one", "two", "three"] {
        chat(&mock, &hello(text)).await;
    }
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].json().unwrap()["messages"][1]["content"], "two");
}

#[tokio::test]
async fn models_are_listed_on_both_paths() {
    let mock = MockDeepSeek::start().await.unwrap();
    let auth = bearer(&mock);
    for path in ["/models", "/v1/models"] {
        let response = send(mock.addr(), "GET", path, &[("authorization", &auth)], "")
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        let json = response.json();
        assert_eq!(json["object"], "list");
        let ids: Vec<&str> = json["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|model| {
                assert_eq!(model["object"], "model");
                assert_eq!(model["owned_by"], "deepseek");
                model["id"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            ids,
            [
                "deepseek-v4-flash",
                "deepseek-v4-pro",
                "deepseek-chat",
                "deepseek-reasoner"
            ]
        );
    }
    let custom = MockDeepSeek::builder()
        .models(["deepseek-v5"])
        .start()
        .await
        .unwrap();
    let mut body = hello("hi");
    body["model"] = json!("deepseek-v5");
    assert_eq!(chat(&custom, &body).await.status, 200);
}

#[tokio::test]
async fn invalid_requests_get_deepseek_errors() {
    let mock = MockDeepSeek::start().await.unwrap();
    let auth = bearer(&mock);
    let post = |body: &'static str| {
        let auth = auth.clone();
        let addr = mock.addr();
        async move {
            send(
                addr,
                "POST",
                "/v1/chat/completions",
                &[("authorization", &auth)],
                body,
            )
            .await
            .unwrap()
        }
    };
    let invalid_json = post("{\"model\": ").await;
    assert_eq!(invalid_json.status, 400);
    assert_eq!(
        invalid_json.json()["error"]["type"],
        "invalid_request_error"
    );
    assert_eq!(
        post(r#"{"messages":[{"role":"user","content":"x"}]}"#)
            .await
            .status,
        422
    );
    assert_eq!(
        post(r#"{"model":"deepseek-chat","messages":[]}"#)
            .await
            .status,
        422
    );
    let unknown = post(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json()["error"]["message"], "Model Not Exist");

    let not_found = send(mock.addr(), "GET", "/user/nothing", &[], "")
        .await
        .unwrap();
    assert_eq!(not_found.status, 404);
    assert!(not_found.json()["error"]["message"].is_string());
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let mock = MockDeepSeek::builder()
        .max_body_bytes(1024)
        .start()
        .await
        .unwrap();
    let response = chat(&mock, &hello(&"word ".repeat(400))).await;
    assert_eq!(response.status, 413);
    assert_eq!(chat(&mock, &hello("small")).await.status, 200);
}

#[tokio::test]
async fn shared_between_tasks_each_request_takes_one_reply() {
    let mock = Arc::new(MockDeepSeek::start().await.unwrap());
    mock.script((0..10).map(|_| Reply::status(503)));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let mock = Arc::clone(&mock);
            tokio::spawn(async move { chat(&mock, &hello("hi")).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|&&status| status == 503).count(), 10);
    assert_eq!(statuses.iter().filter(|&&status| status == 200).count(), 10);
    assert_eq!(mock.requests().len(), 20);
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_stream_finish_and_stops_accepting() {
    let mock = MockDeepSeek::start().await.unwrap();
    let addr = mock.addr();
    mock.script([Reply::ok().chunk_delay(Duration::from_millis(30))]);
    let auth = bearer(&mock);
    let in_flight = tokio::spawn(async move {
        send(
            addr,
            "POST",
            "/chat/completions",
            &[("authorization", &auth)],
            &streaming("finish me").to_string(),
        )
        .await
    });
    // Let the stream start before stopping.
    tokio::time::sleep(Duration::from_millis(50)).await;
    mock.shutdown().await;
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.ending, Ending::Complete);
    assert_eq!(response.events().last().map(String::as_str), Some("[DONE]"));
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let mock = MockDeepSeek::builder()
        .shutdown_timeout(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let mut idle = TcpStream::connect(mock.addr()).await.unwrap();
    let request = format!(
        "GET /models HTTP/1.1\r\nhost: mock\r\nauthorization: {}\r\n\r\n",
        bearer(&mock)
    );
    idle.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0; 64 * 1024];
    let read = idle.read(&mut buffer).await.unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    // The connection is now idle and kept alive; shutdown must not wait out its 60 s grace.
    tokio::time::timeout(Duration::from_secs(5), mock.shutdown())
        .await
        .expect("shutdown waited for an idle connection");
    assert_eq!(idle.read(&mut buffer).await.unwrap(), 0);
}

#[tokio::test]
async fn dropping_the_mock_stops_the_server() {
    let mock = MockDeepSeek::start().await.unwrap();
    let addr = mock.addr();
    drop(mock);
    // The abort lands when the server task is next scheduled.
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener is still open after drop");
}

/// HTTP/2 without TLS (prior knowledge), through hyper-util's pooled client.
#[cfg(feature = "upstream")]
#[tokio::test]
async fn h2c_clients_are_served() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let mock = MockDeepSeek::start().await.unwrap();
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let request = http::Request::post(format!("{}/chat/completions", mock.base_url()))
        .header("authorization", bearer(&mock))
        .body(Full::from(hello("over h2").to_string()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        json["choices"][0]["message"]["content"],
        "Hello from mock DeepSeek. You said: over h2"
    );
    assert_eq!(mock.requests()[0].version, http::Version::HTTP_2);
}
