//! Unit tests: the lean JSON scan, the bounded label tables, the builder's validation, and
//! the layer's recording on paused time (exact time to first chunk and chunk gaps).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{ServiceBuilder, ServiceExt};

use super::labels::{LabelTable, is_label};
use super::scan::{FieldCapture, MODEL_KEY, USAGE_KEY, ValueKind, find_field, parse_usage};
use super::*;
use crate::ErrorKind;
use crate::deepseek::RequestModel;

const COMPLETION: &str = r#"{"id":"x","object":"chat.completion","created":1,"model":"deepseek-v4-pro","choices":[{"index":0,"message":{"role":"assistant","content":"the \"model\": \"fake\" and \"usage\": {} inside a string"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33,"prompt_tokens_details":{"cached_tokens":4},"prompt_cache_hit_tokens":5,"prompt_cache_miss_tokens":6,"completion_tokens_details":{"reasoning_tokens":7}}}"#;

#[test]
fn find_field_reads_top_level_model_and_usage_not_lookalikes_in_strings() {
    let json = COMPLETION.as_bytes();
    assert_eq!(
        find_field(json, MODEL_KEY, ValueKind::String),
        Some(&b"deepseek-v4-pro"[..])
    );
    let usage = find_field(json, USAGE_KEY, ValueKind::Object).expect("usage");
    assert_eq!(parse_usage(usage), [Some(11), Some(22), Some(5), Some(7)]);
}

#[test]
fn parse_usage_falls_back_to_openai_cached_tokens() {
    let usage =
        br#"{"prompt_tokens":3,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":2}}"#;
    assert_eq!(parse_usage(usage), [Some(3), Some(1), Some(2), None]);
    assert_eq!(parse_usage(b"{}"), [None; 4]);
}

/// Every way of cutting the body in two (and in one-byte frames) finds the same fields.
#[test]
fn field_capture_finds_fields_split_across_frames_at_every_position() {
    let json = COMPLETION.as_bytes();
    let capture = |frames: &[&[u8]]| {
        let mut model = FieldCapture::new(MODEL_KEY, ValueKind::String);
        let mut usage = FieldCapture::new(USAGE_KEY, ValueKind::Object);
        let (mut found_model, mut found_usage) = (None, None);
        for frame in frames {
            if let Some(value) = model.feed(frame) {
                found_model = Some(value.to_vec());
            }
            if let Some(value) = usage.feed(frame) {
                found_usage = Some(parse_usage(value));
            }
        }
        (found_model, found_usage)
    };
    let expected = (
        Some(b"deepseek-v4-pro".to_vec()),
        Some([Some(11), Some(22), Some(5), Some(7)]),
    );
    for cut in 0..=json.len() {
        let (head, tail) = json.split_at(cut);
        assert_eq!(capture(&[head, tail]), expected, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = json.chunks(1).collect();
    assert_eq!(capture(&bytes), expected, "one-byte frames");
}

#[test]
fn label_table_keeps_configured_then_first_seen_then_other() {
    let table = LabelTable::new(["unknown", "deepseek-v4-flash"], 4, true);
    assert_eq!(table.index("deepseek-v4-flash"), 1);
    assert_eq!(table.index("a"), 2);
    assert_eq!(table.index("b"), 3);
    assert_eq!(table.index("c"), table.other());
    assert_eq!(table.index("a"), 2, "a known value keeps its index");
    assert_eq!(table.name(table.other()), "other");
    assert_eq!(table.dimension(), 5);

    let closed = LabelTable::new(["unknown"], 4, false);
    assert_eq!(closed.index("a"), closed.other());
}

#[test]
fn keys_paths_and_long_values_are_never_labels() {
    assert!(is_label("deepseek-v4-flash"));
    assert!(!is_label("sk-0123456789abcdef"));
    assert!(!is_label("model with spaces"));
    assert!(!is_label("other"));
    assert!(!is_label(""));
    assert!(!is_label(&"m".repeat(65)));
    assert!(!is_label("a\"b"));
}

#[test]
fn builder_rejects_bad_settings_with_config_errors() {
    let error = Metrics::builder().prefix("9bad").build().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("prefix"), "{error}");

    let error = Metrics::builder()
        .models(["a", "b"])
        .max_models(2)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("max_models"), "{error}");

    let error = Metrics::builder()
        .models(["sk-secret"])
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("model #1"), "{error}");
    assert!(
        !error.to_string().contains("sk-secret"),
        "the value is not echoed: {error}"
    );

    let error = Metrics::builder().max_breakers(0).build().unwrap_err();
    assert!(error.to_string().contains("max_breakers"), "{error}");
}

#[cfg(feature = "prometheus")]
#[test]
fn the_same_prefix_twice_in_one_registry_is_a_config_error() {
    let registry = ::prometheus::Registry::new();
    Metrics::builder()
        .prometheus(registry.clone())
        .build()
        .expect("first");
    let error = Metrics::builder().prometheus(registry).build().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("registry"), "{error}");
}

#[cfg(feature = "prometheus")]
fn sample(metrics: &Metrics, key: &str) -> Option<f64> {
    let text = metrics.render_prometheus()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
}

#[cfg(any(feature = "prometheus", feature = "opentelemetry"))]
fn chat_request(model: &str) -> Request<()> {
    let mut request = Request::post("https://api.deepseek.com/chat/completions")
        .body(())
        .expect("request");
    request.extensions_mut().insert(RequestModel::new(model));
    request
}

/// A stream of SSE frames, one every 100 ms after a 500 ms wait: on paused time, the time to
/// the first chunk is exactly 0.5 s and each gap exactly 0.1 s.
#[cfg(feature = "prometheus")]
#[tokio::test(start_paused = true)]
async fn stream_time_to_first_chunk_and_chunk_gaps_are_exact_on_paused_time() {
    let metrics = Metrics::builder()
        .prometheus(::prometheus::Registry::new())
        .build()
        .expect("metrics");
    let frames = [
        r#"data: {"model":"deepseek-v4-flash","choices":[{"delta":{"content":"a"}}]}"#,
        r#"data: {"model":"deepseek-v4-flash","choices":[{"delta":{"content":"b"},"finish_reason":"stop"}]}"#,
        r#"data: {"model":"deepseek-v4-flash","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"prompt_cache_hit_tokens":4}}"#,
        "data: [DONE]",
    ];
    let service = ServiceBuilder::new()
        .layer(MetricsLayer::client(&metrics))
        .service_fn(move |_request: Request<()>| async move {
            let stream = futures_util::stream::iter(frames).then(|frame| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(format!("{frame}\n\n"))))
            });
            tokio::time::sleep(Duration::from_millis(400)).await;
            let mut response = Response::new(StreamBody::new(stream));
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().expect("value"));
            Ok::<_, Infallible>(response)
        });
    let response = service
        .oneshot(chat_request("deepseek-v4-flash"))
        .await
        .expect("response");
    let in_flight =
        r#"deepseek_requests_in_flight{model="deepseek-v4-flash",operation="chat",side="client"}"#;
    assert_eq!(
        sample(&metrics, in_flight),
        Some(1.0),
        "in flight until the body ends"
    );
    response.into_body().collect().await.expect("body");
    assert_eq!(sample(&metrics, in_flight), Some(0.0));

    let labels = r#"{gen_ai_operation_name="chat",gen_ai_provider_name="deepseek",gen_ai_request_model="deepseek-v4-flash",gen_ai_response_model="deepseek-v4-flash"}"#;
    let first = format!("gen_ai_client_operation_time_to_first_chunk_seconds_sum{labels}");
    assert_eq!(sample(&metrics, &first), Some(0.5));
    let gaps = format!("gen_ai_client_operation_time_per_output_chunk_seconds_count{labels}");
    assert_eq!(sample(&metrics, &gaps), Some(2.0), "3 chunks, 2 gaps");
    let gap_sum = format!("gen_ai_client_operation_time_per_output_chunk_seconds_sum{labels}");
    assert!((sample(&metrics, &gap_sum).expect("sum") - 0.2).abs() < 1e-9);
    let duration = r#"deepseek_request_duration_seconds_sum{model="deepseek-v4-flash",operation="chat",outcome="success",side="client"}"#;
    assert_eq!(sample(&metrics, duration), Some(0.8));
    let cached = r#"gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_provider_name="deepseek",gen_ai_request_model="deepseek-v4-flash",gen_ai_response_model="deepseek-v4-flash",gen_ai_token_type="cached_input"}"#;
    assert_eq!(sample(&metrics, cached), Some(4.0));
}

/// A JSON body in many small frames: the model and usage are still read, and the response
/// model (different from the request's) gets its own label.
#[cfg(feature = "prometheus")]
#[tokio::test]
async fn json_body_in_small_frames_reports_usage_and_response_model() {
    let metrics = Metrics::builder()
        .prometheus(::prometheus::Registry::new())
        .build()
        .expect("metrics");
    let service = ServiceBuilder::new()
        .layer(MetricsLayer::client(&metrics))
        .service_fn(|_request: Request<()>| async {
            let frames = COMPLETION
                .as_bytes()
                .chunks(7)
                .map(|chunk| {
                    Ok::<_, Infallible>(http_body::Frame::data(Bytes::copy_from_slice(chunk)))
                })
                .collect::<Vec<_>>();
            Ok::<_, Infallible>(Response::new(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
        });
    let response = service
        .oneshot(chat_request("deepseek-chat"))
        .await
        .expect("response");
    response.into_body().collect().await.expect("body");
    let tokens = |kind: &str| {
        format!(
            r#"gen_ai_client_token_usage_sum{{gen_ai_operation_name="chat",gen_ai_provider_name="deepseek",gen_ai_request_model="deepseek-chat",gen_ai_response_model="deepseek-v4-pro",gen_ai_token_type="{kind}"}}"#
        )
    };
    assert_eq!(sample(&metrics, &tokens("input")), Some(11.0));
    assert_eq!(sample(&metrics, &tokens("output")), Some(22.0));
    assert_eq!(sample(&metrics, &tokens("cached_input")), Some(5.0));
    assert_eq!(sample(&metrics, &tokens("reasoning")), Some(7.0));
}

/// A call whose future is dropped before it answers gives its in-flight count back and
/// records no request.
#[cfg(feature = "prometheus")]
#[tokio::test(start_paused = true)]
async fn a_cancelled_call_leaves_nothing_in_flight() {
    let metrics = Metrics::builder()
        .prometheus(::prometheus::Registry::new())
        .build()
        .expect("metrics");
    let service = ServiceBuilder::new()
        .layer(MetricsLayer::server(&metrics, "chat"))
        .service_fn(|_request: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
    let call = service.oneshot(Request::new(()));
    let timed_out = tokio::time::timeout(Duration::from_secs(1), call).await;
    assert!(timed_out.is_err());
    let in_flight =
        r#"deepseek_requests_in_flight{model="unknown",operation="chat",side="server"}"#;
    assert_eq!(sample(&metrics, in_flight), Some(0.0));
    assert!(
        !metrics
            .render_prometheus()
            .unwrap_or_default()
            .contains("deepseek_requests_total{")
    );
}

/// A 429 head is recorded at once as `rate_limited`, with its GenAI `error_type`.
#[cfg(feature = "prometheus")]
#[tokio::test]
async fn an_error_head_is_recorded_with_its_outcome_class() {
    let metrics = Metrics::builder()
        .prometheus(::prometheus::Registry::new())
        .build()
        .expect("metrics");
    let service = ServiceBuilder::new()
        .layer(MetricsLayer::client(&metrics))
        .service_fn(|_request: Request<()>| async {
            let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
            *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
            Ok::<_, Infallible>(response)
        });
    let response = service
        .oneshot(chat_request("deepseek-v4-flash"))
        .await
        .expect("response");
    let total = r#"deepseek_requests_total{model="deepseek-v4-flash",operation="chat",outcome="rate_limited",side="client"}"#;
    assert_eq!(sample(&metrics, total), Some(1.0), "recorded at the head");
    drop(response);
    let genai = r#"gen_ai_client_operation_duration_seconds_count{error_type="rate_limited",gen_ai_operation_name="chat",gen_ai_provider_name="deepseek",gen_ai_request_model="deepseek-v4-flash",gen_ai_response_model="deepseek-v4-flash"}"#;
    assert_eq!(sample(&metrics, genai), Some(1.0));
}

/// The OpenTelemetry exporter receives the same instruments and counts.
#[cfg(feature = "opentelemetry")]
#[tokio::test]
async fn opentelemetry_meter_receives_the_same_counts() {
    use ::opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let metrics = Metrics::builder()
        .meter(provider.meter("tower-deepseek"))
        .build()
        .expect("metrics");
    let service = ServiceBuilder::new()
        .layer(MetricsLayer::client(&metrics))
        .service_fn(|_request: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                COMPLETION.as_bytes(),
            ))))
        });
    for _ in 0..3 {
        let response = service
            .clone()
            .oneshot(chat_request("deepseek-v4-pro"))
            .await
            .expect("response");
        response.into_body().collect().await.expect("body");
    }
    metrics.retry_gave_up();
    provider.force_flush().expect("flush");

    let finished = exporter.get_finished_metrics().expect("metrics");
    let mut requests = 0;
    let mut input_tokens = 0;
    let mut gave_up = 0;
    for resource in &finished {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics() {
                match (metric.name(), metric.data()) {
                    ("deepseek.requests", AggregatedMetrics::U64(MetricData::Sum(sum))) => {
                        for point in sum.data_points() {
                            let success = point.attributes().any(|kv| {
                                kv.key.as_str() == "outcome" && kv.value.as_str() == "success"
                            });
                            assert!(success);
                            requests += point.value();
                        }
                    }
                    (
                        "gen_ai.client.token.usage",
                        AggregatedMetrics::U64(MetricData::Histogram(histogram)),
                    ) => {
                        for point in histogram.data_points() {
                            if point.attributes().any(|kv| {
                                kv.key.as_str() == "gen_ai.token.type"
                                    && kv.value.as_str() == "input"
                            }) {
                                input_tokens += point.sum();
                            }
                        }
                    }
                    ("deepseek.retries.gave_up", AggregatedMetrics::U64(MetricData::Sum(sum))) => {
                        gave_up += sum.data_points().map(|p| p.value()).sum::<u64>();
                    }
                    _ => {}
                }
            }
        }
    }
    assert_eq!(requests, 3);
    assert_eq!(input_tokens, 33);
    assert_eq!(gave_up, 1);
}

#[test]
fn find_usage_and_find_model_match_the_forward_scan() {
    use super::scan::{find_model, find_usage};
    let bench = br#"{"id":"b1","object":"chat.completion","created":1,"model":"deepseek-v4-flash","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}}"#;
    assert_eq!(find_usage(bench), Some([Some(12), Some(5), Some(0), None]));
    assert_eq!(find_model(bench), Some(&b"deepseek-v4-flash"[..]));
    let json = COMPLETION.as_bytes();
    assert_eq!(
        find_usage(json),
        Some([Some(11), Some(22), Some(5), Some(7)])
    );
    assert_eq!(find_model(json), Some(&b"deepseek-v4-pro"[..]));
}

/// The model's value is where a forward scan for the key finds it, whether the compact form
/// (`"model":"`) is taken directly or spaces send it the long way, for values, nulls, a
/// `"model"` that is a value, and texts cut anywhere.
#[test]
fn find_model_takes_the_compact_form_as_the_forward_scan_would() {
    use super::scan::find_model;
    // What the first `"model"` key followed by `:` and a string holds (no escapes).
    fn reference(json: &[u8]) -> Option<&[u8]> {
        let mut from = 0;
        while let Some(at) = json
            .get(from..)
            .and_then(|rest| rest.windows(7).position(|w| w == b"\"model\""))
        {
            let rest = &json[from + at + 7..];
            let rest = rest.trim_ascii_start();
            let Some(rest) = rest.strip_prefix(b":") else {
                from += at + 1;
                continue;
            };
            let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
            let end = rest.iter().position(|b| *b == b'"' || *b == b'\\')?;
            return (rest[end] == b'"').then_some(&rest[..end]);
        }
        None
    }
    let texts: [&[u8]; 8] = [
        br#"{"id":"a","object":"chat.completion","model":"deepseek-v4-flash","usage":{}}"#,
        br#"{"id":"a","model" : "deepseek-v4-pro","x":1}"#,
        br#"{"id":"a","model":"#,
        br#"{"id":"a","model":null,"model":"b"}"#,
        br#"{"a":"model","model":"m2"}"#,
        br#"{"a":"model" ,"model":"m3"}"#,
        br#"{"model":"esc"aped"}"#,
        br#"{"model":	"tab"}"#,
    ];
    for text in texts {
        for end in 0..=text.len() {
            let cut = &text[..end];
            assert_eq!(
                find_model(cut),
                reference(cut),
                "{}",
                String::from_utf8_lossy(cut)
            );
        }
    }
}

/// The one-pass usage read agrees with the general scan on DeepSeek's shapes, OpenAI's, odd
/// spacing, unknown keys, string values and escapes (the last two take the general path).
#[test]
fn find_usage_agrees_with_the_general_scan() {
    let bodies: [&[u8]; 7] = [
        br#"{"usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33,"prompt_tokens_details":{"cached_tokens":4},"prompt_cache_hit_tokens":5,"prompt_cache_miss_tokens":6,"completion_tokens_details":{"reasoning_tokens":7}},"system_fingerprint":"fp"}"#,
        br#"{"usage":{"prompt_tokens":3,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        br#"{"usage" : { "prompt_tokens" : 9 , "completion_tokens":8 ,"odd_key":1,"nested":{"a":{"b":2}} } }"#,
        br#"{"usage":{"label":"x{}\"y","prompt_tokens":1,"completion_tokens":2}}"#,
        br#"{"usage":{"list":[1,2],"prompt_tokens":1}}"#,
        br#"{"usage":{}}"#,
        br#"{"usage":{"prompt_tokens":1"#,
    ];
    for body in bodies {
        let general = find_field(body, USAGE_KEY, ValueKind::Object).map(parse_usage);
        assert_eq!(
            super::scan::find_usage(body),
            general,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // Searching from the end, a `"usage"` string value earlier in the body (where the forward
    // scan stops) does not hide the key; a huge count saturates.
    let body = br#"{"object":"usage","usage":{"completion_tokens":99999999999999999999999}}"#;
    assert_eq!(
        super::scan::find_usage(body),
        Some([None, Some(u64::MAX), None, None])
    );
}

/// The response model is checked in place against the request's (one whole frame): the same
/// name is that label; a longer name that starts with it, or a different one, gets its own;
/// an escaped one is left for the frame-by-frame capture, which gives up on it as before.
#[cfg(feature = "prometheus")]
#[tokio::test]
async fn the_response_model_is_the_request_model_only_when_the_names_are_equal() {
    let metrics = Metrics::builder()
        .models(["deepseek-chat"])
        .prometheus(::prometheus::Registry::new())
        .build()
        .expect("metrics");
    for body in [
        r#"{"id":"a","model":"deepseek-chat","usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        r#"{"id":"b","model" : "deepseek-chat-2","usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        r#"{"id":"c","model":"deepseek-cha","usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        r#"{"id":"d","model":"deepseek-chat\"x","usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        r#"{"id":"e","model":"deepseek-chat"#,
    ] {
        let service = ServiceBuilder::new()
            .layer(MetricsLayer::client(&metrics))
            .service_fn(move |_request: Request<()>| async move {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    body.as_bytes(),
                ))))
            });
        let response = service
            .oneshot(chat_request("deepseek-chat"))
            .await
            .expect("response");
        response.into_body().collect().await.expect("body");
    }
    let input = |response: &str| {
        sample(
            &metrics,
            &format!(
                r#"gen_ai_client_token_usage_count{{gen_ai_operation_name="chat",gen_ai_provider_name="deepseek",gen_ai_request_model="deepseek-chat",gen_ai_response_model="{response}",gen_ai_token_type="input"}}"#
            ),
        )
    };
    // The escaped name falls back to the request model (the body cut inside the name has
    // no usage to count).
    assert_eq!(input("deepseek-chat"), Some(2.0));
    assert_eq!(input("deepseek-chat-2"), Some(1.0));
    assert_eq!(input("deepseek-cha"), Some(1.0));
}

/// The client's operation is kept by the path's address: the same prebuilt URI cloned, fresh
/// URIs with the same or other paths (more of them than there are kept paths), and a path
/// whose allocation was freed and reused for another path are all named right.
#[cfg(feature = "prometheus")]
#[tokio::test]
async fn the_operation_kept_by_path_address_is_always_the_paths() {
    use tower::Service;
    let metrics = Metrics::builder()
        .prometheus(::prometheus::Registry::new())
        .build()
        .expect("metrics");
    let mut service = ServiceBuilder::new()
        .layer(MetricsLayer::client(&metrics))
        .service_fn(|_request: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        });
    let prebuilt: http::Uri = "https://api.deepseek.com/chat/completions"
        .parse()
        .expect("uri");
    let mut expected = std::collections::HashMap::<&str, u32>::new();
    let mut uris: Vec<(http::Uri, &str)> = Vec::new();
    for _ in 0..3 {
        uris.push((prebuilt.clone(), "chat"));
    }
    for round in 0..3 {
        for (path, operation) in [
            ("/v1/chat/completions", "chat"),
            ("/models", "models"),
            ("/other/thing", "other"),
            ("/chat/completions/", "chat"),
            ("/x/models", "models"),
            ("/y", "other"),
            // As long as a kept path, with another name.
            ("/modelz", "other"),
            ("/chat/completionz", "other"),
        ] {
            // A fresh allocation each time (its address may be one freed just before).
            let text = format!("https://api.deepseek.com{path}?round={round}");
            uris.push((text.parse().expect("uri"), operation));
        }
    }
    for (uri, operation) in uris {
        *expected.entry(operation).or_default() += 1;
        let mut request = Request::new(());
        *request.uri_mut() = uri;
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("response");
        response.into_body().collect().await.expect("body");
    }
    for (operation, calls) in expected {
        let key = format!(
            r#"deepseek_requests_total{{model="unknown",operation="{operation}",outcome="success",side="client"}}"#
        );
        assert_eq!(
            sample(&metrics, &key),
            Some(f64::from(calls)),
            "{operation}"
        );
    }
}

/// Records `calls` finished server calls and as many client calls (GenAI duration and
/// tokens: 3 input, 2 output each) under `key`s of model `m`.
#[cfg(feature = "prometheus")]
fn record_calls(metrics: &Metrics, calls: u64) {
    use super::instruments::{CallKey, GenAiRecord};
    let model = metrics.model_index(Some("m"));
    let op = metrics.operation_index("chat");
    for side in [Side::Server, Side::Client] {
        let key = CallKey { side, op, model };
        for _ in 0..calls {
            metrics.call_started(key);
            let nanos = 20_000_000;
            metrics.request(key, &crate::classify::Outcome::Success, nanos);
            if side == Side::Client {
                let record = GenAiRecord {
                    nanos,
                    tokens: [3, 2, 0, 0],
                    present: 0b11,
                    ..GenAiRecord::default()
                };
                metrics.genai(key, model, &record);
            }
            metrics.call_ended(key, true);
        }
    }
}

/// The exact totals of `calls` calls per side recorded by [`record_calls`].
#[cfg(feature = "prometheus")]
fn assert_recorded(metrics: &Metrics, calls: u64) {
    let calls = calls as f64;
    for side in ["server", "client"] {
        let labels = format!(r#"{{model="m",operation="chat",outcome="success",side="{side}"}}"#);
        assert_eq!(
            sample(metrics, &format!("deepseek_requests_total{labels}")),
            Some(calls),
            "{side}"
        );
        let sum = sample(
            metrics,
            &format!("deepseek_request_duration_seconds_sum{labels}"),
        )
        .unwrap_or_default();
        assert!((sum - calls * 0.02).abs() < 1e-6, "{side}: {sum}");
        assert_eq!(
            sample(
                metrics,
                &format!(
                    r#"deepseek_requests_in_flight{{model="m",operation="chat",side="{side}"}}"#
                )
            ),
            Some(0.0),
            "{side}"
        );
    }
    let genai = r#"gen_ai_operation_name="chat",gen_ai_provider_name="deepseek",gen_ai_request_model="m",gen_ai_response_model="m""#;
    for (kind, tokens) in [("input", 3.0), ("output", 2.0)] {
        let labels = format!(r#"{{{genai},gen_ai_token_type="{kind}"}}"#);
        assert_eq!(
            sample(metrics, &format!("gen_ai_client_token_usage_count{labels}")),
            Some(calls),
            "{kind}"
        );
        assert_eq!(
            sample(metrics, &format!("gen_ai_client_token_usage_sum{labels}")),
            Some(calls * tokens),
            "{kind}"
        );
    }
}

#[cfg(feature = "prometheus")]
fn metrics_with_model_m() -> Metrics {
    Metrics::builder()
        .models(["m"])
        .prometheus(::prometheus::Registry::new())
        .build()
        .expect("metrics")
}

/// Each thread records into cells of its own (a plain load and store); threads beyond the
/// owned slots share one copy with atomic adds. With more threads recording at once than
/// there are owned slots, both kinds are used, and a scrape's totals are still exact.
#[cfg(feature = "prometheus")]
#[test]
fn more_threads_than_owned_cells_record_exact_totals() {
    const CALLS: u64 = 2_000;
    let metrics = metrics_with_model_m();
    let threads = super::cells::OWNED_SHARDS + 16;
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                // All threads hold their slots at once while they record.
                barrier.wait();
                record_calls(&metrics, CALLS);
                barrier.wait();
            });
        }
    });
    assert_recorded(&metrics, CALLS * threads as u64);
}

/// A thread's slot passes to a later thread when it ends: what the first recorded stays
/// counted, and the next one adds to it.
#[cfg(feature = "prometheus")]
#[test]
fn cells_of_ended_threads_stay_counted_when_their_slots_are_reused() {
    let metrics = metrics_with_model_m();
    for _ in 0..200 {
        std::thread::scope(|scope| {
            scope.spawn(|| record_calls(&metrics, 5));
        });
    }
    record_calls(&metrics, 5);
    assert_recorded(&metrics, 201 * 5);
}

/// A call started on one thread and recorded on another (a future moved between a
/// runtime's workers) leaves nothing in flight.
#[cfg(feature = "prometheus")]
#[test]
fn a_call_started_and_ended_on_different_threads_leaves_nothing_in_flight() {
    use super::instruments::CallKey;
    let metrics = metrics_with_model_m();
    let key = CallKey {
        side: Side::Server,
        op: metrics.operation_index("chat"),
        model: metrics.model_index(Some("m")),
    };
    let flight = r#"deepseek_requests_in_flight{model="m",operation="chat",side="server"}"#;
    std::thread::scope(|scope| {
        scope.spawn(|| (0..10).for_each(|_| metrics.call_started(key)));
    });
    assert_eq!(sample(&metrics, flight), Some(10.0));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for call in 0..10 {
                if call < 7 {
                    metrics.request(key, &crate::classify::Outcome::Success, 0);
                }
                metrics.call_ended(key, call < 7);
            }
        });
    });
    assert_eq!(sample(&metrics, flight), Some(0.0));
    let total =
        r#"deepseek_requests_total{model="m",operation="chat",outcome="success",side="server"}"#;
    assert_eq!(sample(&metrics, total), Some(7.0));
}

/// A body of known length dropped once all its bytes were read (as a server does after
/// `content-length` bytes, without polling the end) is a success; dropped before that, or
/// a body of unknown length dropped before its end, is a `stream_error`.
#[cfg(feature = "prometheus")]
#[tokio::test]
async fn a_body_dropped_after_its_known_length_is_a_success_and_before_it_a_stream_error() {
    use http_body::Body;
    let metrics = Metrics::builder()
        .prometheus(::prometheus::Registry::new())
        .build()
        .expect("metrics");
    let service = ServiceBuilder::new()
        .layer(MetricsLayer::server(&metrics, "chat"))
        .service_fn(|request: Request<()>| async move {
            let body = if request.uri().path() == "/stream" {
                let frames = futures_util::stream::iter([Ok::<_, Infallible>(
                    http_body::Frame::data(Bytes::from_static(b"{}")),
                )]);
                StreamBody::new(frames).boxed_unsync()
            } else {
                Full::new(Bytes::from_static(b"{}")).boxed_unsync()
            };
            Ok::<_, Infallible>(Response::new(body))
        });
    let outcome = |outcome: &str| {
        let key = format!(
            r#"deepseek_requests_total{{model="unknown",operation="chat",outcome="{outcome}",side="server"}}"#
        );
        sample(&metrics, &key).unwrap_or_default()
    };
    let call = |path: &'static str| {
        service
            .clone()
            .oneshot(Request::get(path).body(()).expect("request"))
    };
    // Read whole (one frame of the two bytes), then dropped without its end.
    let mut body = Box::pin(call("/full").await.expect("response").into_body());
    let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
    assert!(frame.is_some_and(|frame| frame.is_ok()));
    drop(body);
    assert_eq!((outcome("success"), outcome("stream_error")), (1.0, 0.0));
    // Dropped unread.
    drop(call("/full").await.expect("response"));
    assert_eq!((outcome("success"), outcome("stream_error")), (1.0, 1.0));
    // Unknown length: every byte read, but not the end.
    let mut body = Box::pin(call("/stream").await.expect("response").into_body());
    let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
    assert!(frame.is_some_and(|frame| frame.is_ok()));
    drop(body);
    assert_eq!((outcome("success"), outcome("stream_error")), (1.0, 2.0));
}
