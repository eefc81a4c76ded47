//! The metrics layers in a running gateway: the outbound layer under the typed client against
//! the embedded mock DeepSeek, the inbound layer on an axum route, `/metrics` scraped over a
//! real socket and checked with `promtool`. Real time (socket I/O), but every assertion is on
//! counts, sums of tokens and label sets, never on how long something took.
//!
//! `promtool` comes from the `prometheus` package. Without it these checks fail when `CI` is
//! set and are skipped (with a note) otherwise.
#![cfg(all(feature = "mock", feature = "upstream", feature = "prometheus"))]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::circuit_breaker::{CircuitBreaker, CircuitState};
use tower_deepseek::classify::Outcome;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient, RequestModel};
use tower_deepseek::metrics::{Metrics, MetricsEndpoint, MetricsLayer, MetricsService};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{ErrorKind, classify::StreamFailure};

const KEY: &str = "sk-metrics-test-0123456789abcdef";
const FLASH: &str = "deepseek-v4-flash";

type Client = DeepSeekClient<MetricsService<Upstream>>;

async fn mock() -> MockDeepSeek {
    MockDeepSeek::builder()
        .api_key(Some(KEY.to_owned()))
        .start()
        .await
        .expect("mock starts")
}

fn metrics(registry: &prometheus::Registry) -> Metrics {
    Metrics::builder()
        .models([FLASH, "deepseek-v4-pro"])
        .prometheus(registry.clone())
        .build()
        .expect("metrics")
}

fn client(mock: &MockDeepSeek, metrics: &Metrics) -> Client {
    let transport = ServiceBuilder::new()
        .layer(MetricsLayer::client(metrics))
        .service(Upstream::new().expect("upstream"));
    DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(KEY)
        .build(transport)
        .expect("client")
}

fn hello() -> ChatRequest {
    ChatRequest::new(FLASH).user("Hello there")
}

/// The gateway: `/v1/chat` (inbound metrics layer, calls DeepSeek through the client) and
/// `/metrics`.
async fn gateway(client: Client, metrics: &Metrics) -> SocketAddr {
    async fn chat(State(client): State<Client>) -> String {
        match client.chat(hello()).await {
            Ok(answer) => answer.content().unwrap_or_default().to_owned(),
            Err(error) => error.to_string(),
        }
    }
    let app = Router::new()
        .route("/v1/chat", post(chat))
        .route_layer(MetricsLayer::server(metrics, "chat"))
        .route_service("/metrics", MetricsEndpoint::from_metrics(metrics))
        .with_state(client);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One HTTP/1.1 request over a fresh socket; the status line and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// Samples of a scrape: `name{labels}` (labels as exposed, sorted by name) to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have:\n{:#?}", samples.keys()))
}

fn red(name: &str, side: &str, model: &str, outcome: &str) -> String {
    format!(r#"{name}{{model="{model}",operation="chat",outcome="{outcome}",side="{side}"}}"#)
}

fn tokens(kind: &str, suffix: &str) -> String {
    format!(
        r#"gen_ai_client_token_usage_{suffix}{{gen_ai_operation_name="chat",gen_ai_provider_name="deepseek",gen_ai_request_model="{FLASH}",gen_ai_response_model="{FLASH}",gen_ai_token_type="{kind}"}}"#
    )
}

/// Runs promtool with `args` (and `stdin`); `None` when promtool is missing outside CI.
fn promtool(args: &[&str], stdin: Option<&str>) -> Option<std::process::Output> {
    let spawned = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if std::env::var_os("CI").is_none() => {
            eprintln!("note: promtool not found ({error}); skipping `promtool {args:?}`");
            return None;
        }
        Err(error) => panic!("promtool is required in CI (the `prometheus` package): {error}"),
    };
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write to promtool");
    }
    drop(child.stdin.take());
    Some(child.wait_with_output().expect("promtool runs"))
}

fn assert_promtool_ok(args: &[&str], stdin: Option<&str>) {
    if let Some(output) = promtool(args, stdin) {
        assert!(
            output.status.success(),
            "promtool {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A known sequence of calls against the mock (non-streaming, streaming, a 503, a 402, a cut
/// stream, two through the gateway's own route), then a scrape: exact counts, histogram
/// counts and token sums; the other layers' instruments; no API key; `promtool check metrics`.
#[tokio::test]
async fn known_calls_give_exact_counts_and_token_totals_in_a_scrape_promtool_accepts() {
    let mock = mock().await;
    let registry = prometheus::Registry::new();
    let metrics = metrics(&registry);
    let client = client(&mock, &metrics);

    // 1. Non-streaming success.
    let answer = client.chat(hello()).await.expect("answer");
    let usage = answer.usage.clone().expect("usage");
    // 2. Streaming success, usage on the final chunk.
    let mut stream = client.chat_stream(hello()).await.expect("stream");
    let mut chunks = 0u64;
    let mut stream_usage = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        chunks += 1;
        if chunk.usage.is_some() {
            stream_usage = chunk.usage;
        }
    }
    // The call ends when the body ends or is dropped: `ChatStream` stops reading at `[DONE]`.
    drop(stream);
    let stream_usage = stream_usage.expect("final usage");
    // 3. A 503 and 4. a 402.
    mock.script([Reply::status(503), Reply::status(402)]);
    assert_eq!(
        client.chat(hello()).await.unwrap_err().kind(),
        ErrorKind::Server
    );
    assert!(matches!(
        client.chat(hello()).await.unwrap_err().kind(),
        ErrorKind::Auth(_)
    ));
    // 5. A stream cut after 3 chunks: recorded as a stream error, with its first chunk.
    mock.script([Reply::ok().cut_after(3)]);
    let mut stream = client.chat_stream(hello()).await.expect("stream starts");
    let mut failure = None;
    while let Some(item) = stream.next().await {
        if let Err(error) = item {
            failure = Some(error.kind());
        }
    }
    drop(stream);
    assert_eq!(failure, Some(ErrorKind::Stream(StreamFailure::Truncated)));

    // 6. Two calls through the gateway's route: inbound and outbound both count them.
    let addr = gateway(client.clone(), &metrics).await;
    for _ in 0..2 {
        let (status, _) = http(addr, "POST", "/v1/chat").await;
        assert!(status.contains("200"), "{status}");
    }

    // The other layers' events.
    let breaker = CircuitBreaker::builder()
        .name(FLASH)
        .listener(metrics.clone())
        .build()
        .expect("breaker");
    metrics.breaker_state(FLASH, breaker.state());
    breaker.force_open();
    assert_eq!(breaker.state(), CircuitState::ForcedOpen);
    metrics.rate_limit_rejected("rpm", None);
    metrics.rate_limit_waited("rpm", std::time::Duration::from_millis(250));
    metrics.retry_attempt(&Outcome::RateLimited { retry_after: None });
    metrics.retry_budget_exhausted();
    metrics.retry_gave_up();

    let (status, text) = http(addr, "GET", "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let s = samples(&text);

    // Outbound: 3 successes (1 + 2 through the gateway) non-streaming, 1 streamed.
    let client_success = red("deepseek_requests_total", "client", FLASH, "success");
    assert_eq!(value(&s, &client_success), 4.0);
    assert_eq!(
        value(
            &s,
            &red("deepseek_requests_total", "client", FLASH, "server_error")
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &red("deepseek_requests_total", "client", FLASH, "auth_error")
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &red("deepseek_requests_total", "client", FLASH, "stream_error")
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &red(
                "deepseek_request_duration_seconds_count",
                "client",
                FLASH,
                "success"
            )
        ),
        4.0
    );
    // Inbound: the two gateway requests, model unknown to the server side.
    assert_eq!(
        value(
            &s,
            &red("deepseek_requests_total", "server", "unknown", "success")
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            r#"deepseek_auth_failures_total{reason="insufficient_balance",side="client"}"#
        ),
        1.0
    );
    // Nothing left in flight.
    for (key, v) in s
        .iter()
        .filter(|(k, _)| k.starts_with("deepseek_requests_in_flight"))
    {
        assert_eq!(*v, 0.0, "{key}");
    }

    // Tokens: 3 non-streaming answers (same prompt, same answer) and 1 stream.
    let input = 3 * usage.prompt_tokens + stream_usage.prompt_tokens;
    let output = 3 * usage.completion_tokens + stream_usage.completion_tokens;
    assert_eq!(value(&s, &tokens("input", "sum")), input as f64);
    assert_eq!(value(&s, &tokens("output", "sum")), output as f64);
    assert_eq!(value(&s, &tokens("input", "count")), 4.0);
    // The mock never hits the cache and this model does not reason: nothing recorded.
    assert!(!text.contains(r#"gen_ai_token_type="cached_input""#));

    let genai = |suffix: &str, extra: &str| {
        format!(
            r#"{suffix}{{{extra}gen_ai_operation_name="chat",gen_ai_provider_name="deepseek",gen_ai_request_model="{FLASH}",gen_ai_response_model="{FLASH}"}}"#
        )
    };
    let by_error = |error: &str| {
        format!(
            r#"gen_ai_client_operation_duration_seconds_count{{error_type="{error}",gen_ai_operation_name="chat",gen_ai_provider_name="deepseek",gen_ai_request_model="{FLASH}",gen_ai_response_model="{FLASH}"}}"#
        )
    };
    assert_eq!(value(&s, &by_error("")), 4.0);
    assert_eq!(value(&s, &by_error("server_error")), 1.0);
    assert_eq!(value(&s, &by_error("stream_error")), 1.0);
    // Time to first chunk: the good stream and the cut one (it delivered chunks).
    assert_eq!(
        value(
            &s,
            &genai(
                "gen_ai_client_operation_time_to_first_chunk_seconds_count",
                ""
            )
        ),
        2.0
    );
    // One gap per chunk after the first: the good stream's chunks (the client saw all of its
    // data events) and the cut stream's 3 chunks.
    assert_eq!(
        value(
            &s,
            &genai(
                "gen_ai_client_operation_time_per_output_chunk_seconds_count",
                ""
            )
        ),
        (chunks - 1 + 2) as f64
    );

    // Other layers.
    assert_eq!(
        value(
            &s,
            r#"deepseek_circuit_breaker_state{breaker="deepseek-v4-flash",state="forced_open"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            r#"deepseek_circuit_breaker_state{breaker="deepseek-v4-flash",state="closed"}"#
        ),
        0.0
    );
    assert_eq!(
        value(
            &s,
            r#"deepseek_circuit_breaker_transitions_total{breaker="deepseek-v4-flash",from="closed",to="forced_open"}"#
        ),
        1.0
    );
    assert_eq!(
        value(&s, r#"deepseek_rate_limit_rejections_total{limiter="rpm"}"#),
        1.0
    );
    assert_eq!(
        value(&s, r#"deepseek_rate_limit_wait_seconds_sum{limiter="rpm"}"#),
        0.25
    );
    assert_eq!(
        value(
            &s,
            r#"deepseek_retry_attempts_total{outcome="rate_limited"}"#
        ),
        1.0
    );
    assert_eq!(value(&s, "deepseek_retry_budget_exhausted_total"), 1.0);
    assert_eq!(value(&s, "deepseek_retries_gave_up_total"), 1.0);

    assert!(!text.contains(KEY), "the API key leaked into the scrape");
    assert!(
        !text.contains("metrics-test"),
        "part of the API key leaked into the scrape"
    );

    assert_promtool_ok(&["check", "metrics"], Some(&text));
    mock.shutdown().await;
}

/// 10 000 distinct model names give at most `max_models + 1` series (the rest is `other`),
/// and a key-shaped model name is never a label.
#[tokio::test]
async fn ten_thousand_models_stay_bounded_and_keys_never_become_labels() {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .models([FLASH])
        .max_models(8)
        .prometheus(registry.clone())
        .build()
        .expect("metrics");
    let service = ServiceBuilder::new()
        .layer(MetricsLayer::client(&metrics))
        .service_fn(|_request: http::Request<()>| async {
            let body = r#"{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
        });
    let mut models: Vec<String> = (0..10_000).map(|i| format!("model-{i}")).collect();
    models.insert(3, KEY.to_owned());
    for model in &models {
        let mut request = http::Request::post("https://api.deepseek.com/chat/completions")
            .body(())
            .expect("request");
        request
            .extensions_mut()
            .insert(RequestModel::new(model.as_str()));
        let response = service.clone().oneshot(request).await.expect("response");
        response.into_body().collect().await.expect("body");
    }
    let text = metrics.render_prometheus().expect("text");
    let s = samples(&text);
    let labels: BTreeSet<&str> = s
        .keys()
        .filter(|k| k.starts_with("deepseek_requests_total{"))
        .filter_map(|k| k.split("model=\"").nth(1)?.split('"').next())
        .collect();
    // `unknown` and the configured model take 2 of the 8 labels, the first response's model
    // (`m`, learnt from the body) one, model-0..=4 the rest.
    let expected: BTreeSet<&str> = [
        "model-0", "model-1", "model-2", "model-3", "model-4", "other",
    ]
    .into_iter()
    .collect();
    assert_eq!(labels, expected);
    let other = red("deepseek_requests_total", "client", "other", "success");
    assert_eq!(value(&s, &other), (models.len() - 5) as f64);
    assert!(!text.contains(KEY));
    assert!(!text.contains("sk-"));
    assert!(
        text.lines().count() < 2_000,
        "{} lines",
        text.lines().count()
    );
}

/// `deploy/prometheus/alerts.yml` passes `promtool check rules`, and its unit tests
/// (`alerts_test.yml`) pass `promtool test rules`.
#[test]
fn alert_rules_check_and_unit_tests_pass() {
    assert_promtool_ok(&["check", "rules", "deploy/prometheus/alerts.yml"], None);
    assert_promtool_ok(
        &["test", "rules", "deploy/prometheus/alerts_test.yml"],
        None,
    );
}

/// Every metric the dashboard and the alerts query is one this crate exports.
#[test]
fn dashboard_and_alerts_use_only_exported_metric_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let registry = prometheus::Registry::new();
    let metrics = metrics(&registry);
    // Exported names: touch every instrument once so each family is gathered.
    metrics.rate_limit_rejected("rpm", None);
    metrics.rate_limit_waited("rpm", std::time::Duration::ZERO);
    metrics.retry_attempt(&Outcome::Success);
    metrics.retry_budget_exhausted();
    metrics.retry_gave_up();
    let exported: BTreeSet<String> = [
        "deepseek_requests_total",
        "deepseek_request_duration_seconds",
        "deepseek_requests_in_flight",
        "deepseek_auth_failures_total",
        "gen_ai_client_operation_duration_seconds",
        "gen_ai_client_token_usage",
        "gen_ai_client_operation_time_to_first_chunk_seconds",
        "gen_ai_client_operation_time_per_output_chunk_seconds",
        "deepseek_circuit_breaker_state",
        "deepseek_circuit_breaker_transitions_total",
        "deepseek_circuit_breaker_not_permitted_calls_total",
        "deepseek_rate_limit_rejections_total",
        "deepseek_rate_limit_wait_seconds",
        "deepseek_retry_attempts_total",
        "deepseek_retry_budget_exhausted_total",
        "deepseek_retries_gave_up_total",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    // The list above is what the registry holds (names of every registered family).
    let registered: BTreeSet<String> = registry
        .gather()
        .iter()
        .map(|family| family.name().to_owned())
        .collect();
    assert!(registered.is_subset(&exported), "{registered:?}");

    for file in [
        "deploy/grafana/gateway-dashboard.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("deploy file");
        let mut used = BTreeSet::new();
        for (at, _) in text.match_indices(['d', 'g']) {
            let rest = &text[at..];
            if !(rest.starts_with("deepseek_") || rest.starts_with("gen_ai_client_")) {
                continue;
            }
            if at > 0
                && (text.as_bytes()[at - 1].is_ascii_alphanumeric()
                    || text.as_bytes()[at - 1] == b'_')
            {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
        assert!(!used.is_empty(), "{file} queries no metric");
        for name in used {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                exported.contains(family) || exported.contains(&name),
                "{file} uses {name}, which is not exported"
            );
        }
    }
}
