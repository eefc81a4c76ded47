//! The bare gateway (`GATEWAY_BARE=1`), the baseline of the end-to-end benchmark: it must
//! answer like the full gateway and carry none of its layers.
#![cfg(all(
    feature = "mock",
    feature = "axum",
    feature = "upstream",
    feature = "prometheus"
))]

#[allow(dead_code)]
#[path = "../examples/gateway/main.rs"]
mod gateway;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tower::ServiceExt;
use tower_deepseek::mock::MockDeepSeek;
use tower_deepseek::upstream::Upstream;

const UPSTREAM_KEY: &str = "sk-upstream-bare";

/// A bare gateway in key mode in front of `mock`, configured the way `bench/e2e.sh` does it:
/// from the environment variables.
async fn bare_gateway(
    mock: &MockDeepSeek,
) -> (
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tower_deepseek::BoxError>>,
) {
    bare_gateway_with(mock, "0").await
}

/// [`bare_gateway`] with `GATEWAY_UPSTREAM_HTTP2_ONLY` set to `http2_only`.
async fn bare_gateway_with(
    mock: &MockDeepSeek,
    http2_only: &'static str,
) -> (
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tower_deepseek::BoxError>>,
) {
    let base_url = mock.base_url().to_owned();
    let config = gateway::GatewayConfig::from_vars(|name| match name {
        "GATEWAY_BARE" => Some("1".to_owned()),
        "DEEPSEEK_API_KEY" => Some(UPSTREAM_KEY.to_owned()),
        "DEEPSEEK_BASE_URL" => Some(base_url.clone()),
        "GATEWAY_UPSTREAM_HTTP2_ONLY" => Some(http2_only.to_owned()),
        _ => None,
    })
    .unwrap();
    assert!(config.bare);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    (url, stop, task)
}

async fn post(url: String, body: &'static str) -> (u16, http::HeaderMap, Bytes) {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer caller-key")
        .header("x-trace-id", "bare-trace-0001")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = Upstream::new().unwrap().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

#[tokio::test]
async fn bare_mode_answers_chat_completions_without_any_layer() {
    let mock = MockDeepSeek::builder()
        .api_key(Some(UPSTREAM_KEY.to_owned()))
        .start()
        .await
        .unwrap();
    let (url, stop, task) = bare_gateway(&mock).await;

    let (status, headers, body) = post(
        format!("{url}/v1/chat/completions"),
        r#"{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello bare"}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body:?}");
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from mock DeepSeek. You said: Hello bare"
    );
    // No trace-ID layer on either side: nothing echoed to the caller, nothing sent upstream.
    assert!(headers.get("x-trace-id").is_none(), "{headers:?}");
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].headers.get("x-trace-id").is_none());
    assert!(recorded[0].headers.get("traceparent").is_none());
    // The gateway calls DeepSeek with its own key, never the caller's.
    assert_eq!(
        recorded[0].headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str()
    );

    // Streams go through the same handler: SSE ending with [DONE], still no trace ID.
    let (status, headers, body) = post(
        format!("{url}/v1/chat/completions"),
        r#"{"model":"deepseek-v4-flash","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(headers.get("x-trace-id").is_none(), "{headers:?}");
    assert!(body.ends_with(b"data: [DONE]\n\n"), "{body:?}");

    // No metrics layer, so no metrics endpoint either.
    let metrics = Upstream::new()
        .unwrap()
        .oneshot(
            http::Request::get(format!("{url}/metrics"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(metrics.status(), 404);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    mock.shutdown().await;
}

#[tokio::test]
async fn bare_mode_speaks_h2c_upstream_when_asked() {
    let mock = MockDeepSeek::builder()
        .api_key(Some(UPSTREAM_KEY.to_owned()))
        .start()
        .await
        .unwrap();
    let (url, stop, task) = bare_gateway_with(&mock, "1").await;
    for body in [
        r#"{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello bare"}]}"#,
        r#"{"model":"deepseek-v4-flash","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#,
    ] {
        let (status, _, body) = post(format!("{url}/v1/chat/completions"), body).await;
        assert_eq!(status, 200, "{body:?}");
    }
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 2);
    for request in &recorded {
        assert_eq!(request.version, http::Version::HTTP_2);
    }
    assert_eq!(mock.connections(), 1);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    mock.shutdown().await;
}
