//! Unit tests of the failover service: configuration, the request rewrite, the policy and
//! the answer's mark, over in-process test doubles.

use std::collections::VecDeque;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_service::Service;

use super::*;
use crate::classify::{AuthFailure, Outcome};
use crate::deepseek::{RequestBody, RequestModel};
use crate::error::{CircuitOpenReason, Error, ErrorKind};

/// What a double answers to one call.
enum Reply {
    Status(u16),
    Fail(ErrorKind),
}

/// An upstream double: answers its script in order (then 200) and records what it got.
#[derive(Clone, Default)]
struct Double {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Request<RequestBody>>>>,
    unready: Arc<Mutex<Option<ErrorKind>>>,
}

impl Double {
    fn script(self, replies: impl IntoIterator<Item = Reply>) -> Double {
        self.replies.lock().unwrap().extend(replies);
        self
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Request<RequestBody> {
        let seen = self.seen.lock().unwrap();
        let request = seen.last().expect("a call");
        let mut copy = Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        copy
    }
}

impl Service<Request<RequestBody>> for Double {
    type Response = Response<String>;
    type Error = Error;
    type Future = Ready<Result<Response<String>, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.unready.lock().unwrap().take() {
            Some(kind) => Poll::Ready(Err(Error::new(kind, "not ready"))),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        self.seen.lock().unwrap().push(request);
        ready(match self.replies.lock().unwrap().pop_front() {
            None => Ok(Response::new("ok".to_owned())),
            Some(Reply::Status(status)) => {
                let mut response = Response::new(String::new());
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok(response)
            }
            Some(Reply::Fail(kind)) => Err(Error::new(kind, "failed")),
        })
    }
}

const PRIMARY_URL: &str = "https://api.deepseek.com/v1";
const BODY: &str = r#"{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hi"}]}"#;

fn backup() -> Endpoint {
    Endpoint::new("backup", "http://backup.example.com:8080/api/v1/")
        .api_key("sk-backup-secret")
        .model("deepseek-v4-flash", "backup-model")
}

fn chat_request() -> Request<RequestBody> {
    let mut request = Request::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = "https://api.deepseek.com/v1/chat/completions?beta=1"
        .parse()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert(AUTHORIZATION, "Bearer sk-primary".parse().unwrap());
    headers.insert("x-trace-id", "trace-1".parse().unwrap());
    headers.insert(HOST, "api.deepseek.com".parse().unwrap());
    headers.insert(CONTENT_LENGTH, BODY.len().into());
    request
        .extensions_mut()
        .insert(RequestModel::new("deepseek-v4-flash"));
    request
}

type Events = Arc<Mutex<Vec<String>>>;

fn two(primary: &Double, second: &Double, events: &Events) -> Failover<Double> {
    let events = Arc::clone(events);
    Failover::builder()
        .primary("deepseek", PRIMARY_URL, primary.clone())
        .alternate(backup(), second.clone())
        .listener(move |event: &FailoverEvent<'_>| {
            events.lock().unwrap().push(match event {
                FailoverEvent::FailedOver { from, to, reason } => format!("{from}->{to}:{reason}"),
                FailoverEvent::Skipped { upstream, reason } => {
                    format!("skip {upstream}:{}", reason.as_str())
                }
                FailoverEvent::Exhausted { upstream, reason } => {
                    format!("exhausted {upstream}:{reason}")
                }
            })
        })
        .build()
        .expect("valid")
}

async fn body_json(request: Request<RequestBody>) -> serde_json::Value {
    let bytes = request.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn config_error<S>(builder: FailoverBuilder<S>) -> Error {
    let error = builder.build().expect_err("a config error");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    error
}

#[test]
fn an_empty_list_is_a_config_error() {
    let error = config_error(Failover::builder::<Double>());
    assert!(error.to_string().contains("empty"), "{error}");
}

#[test]
fn bad_base_urls_are_config_errors_naming_the_upstream() {
    for url in [
        "api.deepseek.com",
        "ftp://api.deepseek.com",
        "https://api.deepseek.com/v1?x=1",
        "https://api.deepseek.com/#top",
        "",
        "http://",
    ] {
        let error = config_error(Failover::builder().primary("deepseek", url, Double::default()));
        assert!(error.to_string().contains("deepseek"), "{url}: {error}");
        let error = config_error(
            Failover::builder()
                .primary("deepseek", PRIMARY_URL, Double::default())
                .alternate(
                    Endpoint::new("backup", url).model("a", "b"),
                    Double::default(),
                ),
        );
        assert!(error.to_string().contains("backup"), "{url}: {error}");
    }
}

#[test]
fn names_must_be_labels_and_unique() {
    for name in ["", "has space", "other", "x".repeat(65).as_str(), "é"] {
        config_error(Failover::builder().primary(name, PRIMARY_URL, Double::default()));
    }
    config_error(
        Failover::builder()
            .primary("deepseek", PRIMARY_URL, Double::default())
            .alternate(
                Endpoint::new("deepseek", "https://b.example.com").model("a", "b"),
                Double::default(),
            ),
    );
}

#[test]
fn an_alternate_that_could_never_answer_a_chat_is_a_config_error() {
    config_error(
        Failover::builder()
            .primary("deepseek", PRIMARY_URL, Double::default())
            .alternate(
                Endpoint::new("backup", "https://b.example.com"),
                Double::default(),
            ),
    );
    config_error(
        Failover::builder()
            .primary("deepseek", PRIMARY_URL, Double::default())
            .alternate(backup().model("", "x"), Double::default()),
    );
    // Sending unmapped models unchanged makes an empty mapping useful.
    Failover::builder()
        .primary("deepseek", PRIMARY_URL, Double::default())
        .alternate(
            Endpoint::new("proxy", "https://b.example.com")
                .unmapped_models(UnmappedModel::SendUnchanged),
            Double::default(),
        )
        .build()
        .expect("valid");
}

#[test]
fn the_key_never_shows_in_debug_or_config_errors() {
    let endpoint = backup();
    assert!(!format!("{endpoint:?}").contains("sk-backup-secret"));
    let builder = Failover::builder()
        .primary("deepseek", PRIMARY_URL, Double::default())
        .alternate(endpoint, Double::default());
    assert!(!format!("{builder:?}").contains("sk-backup-secret"));
    let error = config_error(
        Failover::builder()
            .primary("deepseek", PRIMARY_URL, Double::default())
            .alternate(backup().api_key("sk-bad\nkey"), Double::default()),
    );
    assert!(!error.to_string().contains("sk-bad"), "{error}");
}

#[test]
fn a_missing_key_variable_is_named_not_shown() {
    let error = Endpoint::new("backup", "https://b.example.com")
        .api_key_from_env("TOWER_DEEPSEEK_FAILOVER_TEST_UNSET_KEY")
        .expect_err("unset");
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(
        error
            .to_string()
            .contains("TOWER_DEEPSEEK_FAILOVER_TEST_UNSET_KEY")
    );
}

#[tokio::test]
async fn a_503_fails_over_with_the_request_rewritten_for_the_alternate() {
    let (primary, second) = (
        Double::default().script([Reply::Status(503)]),
        Double::default(),
    );
    let events = Events::default();
    let response = two(&primary, &second, &events)
        .oneshot(chat_request())
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-upstream"], "backup");
    let served = ServedBy::of(&response).expect("marked");
    assert_eq!(
        (served.name(), served.index(), served.is_primary()),
        ("backup", 1, false)
    );
    assert_eq!(served.header_value(), "backup");
    assert_eq!(*events.lock().unwrap(), ["deepseek->backup:server_error"]);

    assert_eq!(primary.calls(), 1);
    let sent = second.last();
    assert_eq!(
        sent.uri().to_string(),
        "http://backup.example.com:8080/api/v1/chat/completions?beta=1"
    );
    let authorization = &sent.headers()[AUTHORIZATION];
    assert_eq!(authorization, "Bearer sk-backup-secret");
    assert!(authorization.is_sensitive());
    assert_eq!(sent.headers()["x-trace-id"], "trace-1");
    assert!(!sent.headers().contains_key(HOST));
    assert!(!sent.headers().contains_key(CONTENT_LENGTH));
    assert_eq!(
        sent.extensions()
            .get::<RequestModel>()
            .map(RequestModel::as_str),
        Some("backup-model")
    );
    let body = body_json(sent).await;
    assert_eq!(body["model"], "backup-model");
    assert_eq!(body["messages"][0]["content"], "hi");
}

#[tokio::test]
async fn the_primary_answer_is_marked_and_the_request_untouched() {
    let (primary, second) = (Double::default(), Double::default());
    let response = two(&primary, &second, &Events::default())
        .oneshot(chat_request())
        .await
        .unwrap();
    assert_eq!(response.headers()["x-upstream"], "deepseek");
    assert!(ServedBy::of(&response).unwrap().is_primary());
    assert_eq!(second.calls(), 0);
    let sent = primary.last();
    assert_eq!(sent.headers()[AUTHORIZATION], "Bearer sk-primary");
    assert_eq!(body_json(sent).await["model"], "deepseek-v4-flash");
}

#[tokio::test]
async fn client_and_auth_errors_never_fail_over() {
    for status in [400, 401, 402, 404, 422] {
        let (primary, second) = (
            Double::default().script([Reply::Status(status)]),
            Double::default(),
        );
        let events = Events::default();
        let response = two(&primary, &second, &events)
            .oneshot(chat_request())
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(response.headers()["x-upstream"], "deepseek");
        assert_eq!(second.calls(), 0, "{status}");
        assert!(events.lock().unwrap().is_empty());
    }
}

#[tokio::test]
async fn rate_limits_timeouts_and_transport_errors_fail_over() {
    let failures = [
        Reply::Status(429),
        Reply::Status(500),
        Reply::Fail(ErrorKind::Timeout(crate::classify::TimeoutPhase::Headers)),
        Reply::Fail(ErrorKind::Network(crate::classify::NetworkFailure::Connect)),
        Reply::Fail(ErrorKind::Overloaded),
        Reply::Fail(ErrorKind::CircuitOpen(CircuitOpenReason::Fatal(
            AuthFailure::InsufficientBalance,
        ))),
    ];
    let expected = [
        "rate_limited",
        "server_error",
        "timeout",
        "network_error",
        "overloaded",
        "circuit_open",
    ];
    for (failure, reason) in failures.into_iter().zip(expected) {
        let (primary, second) = (Double::default().script([failure]), Double::default());
        let events = Events::default();
        let response = two(&primary, &second, &events)
            .oneshot(chat_request())
            .await
            .expect(reason);
        assert_eq!(response.headers()["x-upstream"], "backup", "{reason}");
        assert_eq!(
            *events.lock().unwrap(),
            [format!("deepseek->backup:{reason}")]
        );
    }
}

#[tokio::test]
async fn a_policy_can_keep_rate_limits_on_the_primary() {
    let (primary, second) = (
        Double::default().script([Reply::Status(429)]),
        Double::default(),
    );
    let failover = Failover::builder()
        .primary("deepseek", PRIMARY_URL, primary.clone())
        .alternate(backup(), second.clone())
        .policy(|reason: &FailoverReason| {
            !matches!(reason, FailoverReason::Failed(Outcome::RateLimited { .. }))
                && DeepSeekFailoverPolicy.fail_over(reason)
        })
        .build()
        .unwrap();
    let response = failover.oneshot(chat_request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.calls(), 0);
}

#[tokio::test]
async fn an_unmapped_model_skips_the_upstream_unless_sent_unchanged() {
    let mut request = chat_request();
    request
        .extensions_mut()
        .insert(RequestModel::new("deepseek-v4-pro"));
    let (primary, second) = (
        Double::default().script([Reply::Status(503)]),
        Double::default(),
    );
    let events = Events::default();
    let response = two(&primary, &second, &events)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-upstream"], "deepseek");
    assert_eq!(second.calls(), 0);
    assert_eq!(
        *events.lock().unwrap(),
        [
            "skip backup:unmapped_model",
            "exhausted deepseek:server_error"
        ]
    );

    let (primary, proxy) = (
        Double::default().script([Reply::Status(503)]),
        Double::default(),
    );
    let failover = Failover::builder()
        .primary("deepseek", PRIMARY_URL, primary)
        .alternate(
            Endpoint::new("proxy", "https://proxy.example.com")
                .unmapped_models(UnmappedModel::SendUnchanged),
            proxy.clone(),
        )
        .build()
        .unwrap();
    let response = failover.oneshot(chat_request()).await.unwrap();
    assert_eq!(response.headers()["x-upstream"], "proxy");
    let sent = proxy.last();
    assert_eq!(
        sent.uri(),
        "https://proxy.example.com/chat/completions?beta=1"
    );
    assert!(
        !sent.headers().contains_key(AUTHORIZATION),
        "no key: none sent"
    );
    assert_eq!(body_json(sent).await["model"], "deepseek-v4-flash");
}

#[tokio::test]
async fn a_path_outside_the_primary_base_is_not_routed() {
    let mut request = chat_request();
    *request.uri_mut() = "https://api.deepseek.com/v10/chat/completions"
        .parse()
        .unwrap();
    let (primary, second) = (
        Double::default().script([Reply::Status(503)]),
        Double::default(),
    );
    let events = Events::default();
    let response = two(&primary, &second, &events)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.calls(), 0);
    assert_eq!(events.lock().unwrap()[0], "skip backup:unroutable");
}

#[tokio::test]
async fn when_the_last_upstream_only_refuses_the_caller_gets_the_real_answer() {
    let primary = Double::default().script([Reply::Status(503)]);
    let second = Double::default().script([Reply::Fail(ErrorKind::CircuitOpen(
        CircuitOpenReason::Unhealthy,
    ))]);
    let events = Events::default();
    let (answer, served_by) =
        ServedBy::capture(two(&primary, &second, &events).oneshot(chat_request())).await;
    let response = answer.expect("the primary's 503, not the refusal");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-upstream"], "deepseek");
    assert_eq!(
        served_by.map(|s| s.name().to_owned()).as_deref(),
        Some("deepseek")
    );
    assert_eq!(
        *events.lock().unwrap(),
        [
            "deepseek->backup:server_error",
            "exhausted backup:circuit_open"
        ]
    );

    // When the last upstream answers for itself, its answer is the caller's.
    let primary = Double::default().script([Reply::Status(503)]);
    let second = Double::default().script([Reply::Status(502)]);
    let response = two(&primary, &second, &Events::default())
        .oneshot(chat_request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["x-upstream"], "backup");
}

#[tokio::test]
async fn an_error_is_captured_with_its_upstream_and_without_the_key() {
    let primary = Double::default().script([Reply::Status(503)]);
    let second = Double::default().script([Reply::Fail(ErrorKind::Network(
        crate::classify::NetworkFailure::Reset,
    ))]);
    let (answer, served_by) =
        ServedBy::capture(two(&primary, &second, &Events::default()).oneshot(chat_request())).await;
    let error = answer.expect_err("the backup's error");
    assert_eq!(
        error.kind(),
        ErrorKind::Network(crate::classify::NetworkFailure::Reset)
    );
    assert_eq!(served_by.unwrap().name(), "backup");
}

#[tokio::test]
async fn a_primary_that_cannot_get_ready_hands_the_call_on() {
    let primary = Double::default();
    *primary.unready.lock().unwrap() =
        Some(ErrorKind::Network(crate::classify::NetworkFailure::Other));
    let second = Double::default();
    let events = Events::default();
    let response = two(&primary, &second, &events)
        .oneshot(chat_request())
        .await
        .unwrap();
    assert_eq!(response.headers()["x-upstream"], "backup");
    assert_eq!(primary.calls(), 0);
    assert_eq!(*events.lock().unwrap(), ["deepseek->backup:network_error"]);
}

#[tokio::test]
async fn three_upstreams_are_tried_in_order() {
    let primary = Double::default().script([Reply::Status(503)]);
    let second = Double::default().script([Reply::Status(500)]);
    let third = Double::default();
    let failover = Failover::builder()
        .primary("deepseek", PRIMARY_URL, primary)
        .alternate(backup(), second.clone())
        .alternate(
            Endpoint::new("third", "https://third.example.com").model("deepseek-v4-flash", "m3"),
            third.clone(),
        )
        .no_header()
        .build()
        .unwrap();
    let response = failover.oneshot(chat_request()).await.unwrap();
    assert!(!response.headers().contains_key(UPSTREAM_HEADER));
    assert_eq!(ServedBy::of(&response).unwrap().index(), 2);
    assert_eq!((second.calls(), third.calls()), (1, 1));
    assert_eq!(body_json(third.last()).await["model"], "m3");
}

#[tokio::test]
async fn a_lone_primary_passes_calls_through() {
    let primary = Double::default().script([Reply::Status(503)]);
    let failover = Failover::builder()
        .primary("deepseek", PRIMARY_URL, primary)
        .build()
        .unwrap();
    let response = failover.oneshot(chat_request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-upstream"], "deepseek");
}

#[test]
fn the_model_rewrite_keeps_every_other_field() {
    let body = br#"{"model":"a","stream":true,"extra":{"x":[1,2]},"temperature":0.7}"#;
    let rewritten = rewrite::with_model(body, "b").unwrap();
    let json: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"model":"b","stream":true,"extra":{"x":[1,2]},"temperature":0.7})
    );
    assert!(rewrite::with_model(b"[1]", "b").is_none());
    assert!(rewrite::with_model(br#"{"messages":[]}"#, "b").is_none());
}
