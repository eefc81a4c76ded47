//! Failover under the typed client, over real sockets, between two embedded mock DeepSeek
//! servers: the primary ("deepseek") and an OpenAI-compatible second upstream ("backup") that
//! has its own key and knows the model by another name. No test waits on a clock: every
//! assertion is on what each mock received and what the caller got.
#![cfg(all(feature = "mock", feature = "upstream", feature = "prometheus"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tower::ServiceBuilder;
use tower_deepseek::ErrorKind;
use tower_deepseek::circuit_breaker::{
    CircuitBreaker, CircuitBreakerLayer, CircuitBreakerService, CircuitState, SlidingWindow,
};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::failover::{Endpoint, Failover, FailoverEvent, ServedBy};
use tower_deepseek::metrics::Metrics;
use tower_deepseek::mock::{MockDeepSeek, RecordedRequest, Reply};
use tower_deepseek::retry::{Backoff, RetryLayer};
use tower_deepseek::trace_id::{PropagateTraceId, PropagateTraceIdLayer, TraceId};
use tower_deepseek::upstream::Upstream;

const PRIMARY_KEY: &str = "sk-test-primary-0123456789";
const BACKUP_KEY: &str = "sk-test-backup-9876543210";
const MODEL: &str = "deepseek-v4-flash";
const BACKUP_MODEL: &str = "backup-model";

/// The two mocks: each checks its own key; the backup serves only its own model name, so an
/// unmapped model would get a 400 there.
struct Mocks {
    primary: MockDeepSeek,
    backup: MockDeepSeek,
}

impl Mocks {
    async fn start() -> Mocks {
        let primary = MockDeepSeek::builder()
            .api_key(Some(PRIMARY_KEY.to_owned()))
            .start()
            .await
            .expect("primary mock");
        let backup = MockDeepSeek::builder()
            .api_key(Some(BACKUP_KEY.to_owned()))
            .models([BACKUP_MODEL])
            .start()
            .await
            .expect("backup mock");
        Mocks { primary, backup }
    }

    fn backup_url(&self) -> String {
        format!("{}/v1", self.backup.base_url())
    }
}

type Protected = CircuitBreakerService<Upstream>;
type Client = DeepSeekClient<PropagateTraceId<Failover<Protected>>>;

fn protected(breaker: &CircuitBreaker) -> Protected {
    ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .service(Upstream::new().expect("upstream"))
}

fn breaker(name: &str) -> CircuitBreaker {
    CircuitBreaker::builder()
        .name(name)
        .sliding_window(SlidingWindow::Count { calls: 2 })
        .minimum_calls(2)
        .open_wait(Duration::from_secs(600))
        .build()
        .expect("breaker")
}

/// Everything a test looks at besides the mocks.
struct Setup {
    client: Client,
    primary_breaker: CircuitBreaker,
    events: Arc<Mutex<Vec<String>>>,
    metrics: Metrics,
}

fn setup(mocks: &Mocks, primary_key: &str) -> Setup {
    let primary_breaker = breaker("deepseek");
    let events = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&events);
    let metrics = Metrics::builder()
        .prometheus(prometheus::Registry::new())
        .build()
        .expect("metrics");
    let counted = metrics.clone();
    let failover = Failover::builder()
        .primary(
            "deepseek",
            mocks.primary.base_url(),
            protected(&primary_breaker),
        )
        .alternate(
            Endpoint::new("backup", mocks.backup_url())
                .api_key(BACKUP_KEY)
                .model(MODEL, BACKUP_MODEL),
            protected(&breaker("backup")),
        )
        .listener(move |event: &FailoverEvent<'_>| {
            use tower_deepseek::failover::FailoverListener;
            counted.on_event(event);
            if let FailoverEvent::FailedOver { from, to, reason } = event {
                heard.lock().unwrap().push(format!("{from}->{to}:{reason}"));
            }
        })
        .build()
        .expect("failover");
    let transport = ServiceBuilder::new()
        .layer(PropagateTraceIdLayer::new())
        .service(failover);
    let client = DeepSeekClient::builder()
        .base_url(mocks.primary.base_url())
        .api_key(primary_key)
        .build(transport)
        .expect("client");
    Setup {
        client,
        primary_breaker,
        events,
        metrics,
    }
}

fn hello() -> ChatRequest {
    ChatRequest::new(MODEL).user("Hello there")
}

fn header<'a>(request: &'a RecordedRequest, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// What the backup received for the one call it served: its own key, its model name, the
/// path under its base URL, and the caller's trace ID.
fn assert_backup_got(mocks: &Mocks, trace_id: &str) {
    let primary = mocks.primary.requests();
    let backup = mocks.backup.requests();
    assert_eq!((primary.len(), backup.len()), (1, 1));
    assert_eq!(header(&primary[0], "x-trace-id"), trace_id);
    assert_eq!(
        header(&backup[0], "x-trace-id"),
        trace_id,
        "the same trace ID"
    );
    assert_eq!(
        header(&primary[0], "traceparent"),
        header(&backup[0], "traceparent")
    );
    assert_eq!(
        header(&primary[0], "authorization"),
        format!("Bearer {PRIMARY_KEY}")
    );
    assert_eq!(
        header(&backup[0], "authorization"),
        format!("Bearer {BACKUP_KEY}")
    );
    assert_eq!(backup[0].path, "/v1/chat/completions");
    assert_eq!(primary[0].json().unwrap()["model"], MODEL);
    assert_eq!(backup[0].json().unwrap()["model"], BACKUP_MODEL);
}

#[tokio::test]
async fn a_503_from_deepseek_is_answered_by_the_second_upstream() {
    let mocks = Mocks::start().await;
    let setup = setup(&mocks, PRIMARY_KEY);
    mocks.primary.script([Reply::status(503)]);
    let trace = TraceId::parse("failover-trace-1").unwrap();
    let (answer, served_by) = ServedBy::capture(trace.scope(setup.client.chat(hello()))).await;
    let answer = answer.expect("the backup answers");
    assert!(answer.content().unwrap_or_default().contains("Hello there"));
    assert_eq!(answer.model, BACKUP_MODEL);
    assert_eq!(served_by.as_ref().map(ServedBy::name), Some("backup"));
    assert_backup_got(&mocks, "failover-trace-1");
    assert_eq!(
        *setup.events.lock().unwrap(),
        ["deepseek->backup:server_error"]
    );
}

#[tokio::test]
async fn a_503_before_a_stream_is_answered_by_the_second_upstream_streaming() {
    let mocks = Mocks::start().await;
    let setup = setup(&mocks, PRIMARY_KEY);
    mocks.primary.script([Reply::status(503)]);
    let trace = TraceId::parse("failover-trace-2").unwrap();
    let (text, served_by) = ServedBy::capture(trace.scope(async {
        let mut stream = setup.client.chat_stream(hello()).await.expect("stream");
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            text.push_str(chunk.expect("chunk").content().unwrap_or_default());
        }
        text
    }))
    .await;
    assert!(text.contains("Hello there"), "{text}");
    assert_eq!(served_by.as_ref().map(ServedBy::name), Some("backup"));
    assert_backup_got(&mocks, "failover-trace-2");
    assert_eq!(mocks.backup.requests()[0].json().unwrap()["stream"], true);
}

#[tokio::test]
async fn a_stream_that_started_is_never_sent_again() {
    let mocks = Mocks::start().await;
    let setup = setup(&mocks, PRIMARY_KEY);
    mocks.primary.script([Reply::ok().cut_after(2)]);
    let mut stream = setup.client.chat_stream(hello()).await.expect("a 200 head");
    let mut failure = None;
    while let Some(item) = stream.next().await {
        if let Err(error) = item {
            failure = Some(error);
        }
    }
    assert!(
        matches!(failure.map(|e| e.kind()), Some(ErrorKind::Stream(_))),
        "the cut is the caller's error"
    );
    assert_eq!(mocks.primary.requests().len(), 1);
    assert!(mocks.backup.requests().is_empty(), "never re-sent");
}

#[tokio::test]
async fn no_failover_on_400_401_or_422() {
    let mocks = Mocks::start().await;
    let setup = setup(&mocks, PRIMARY_KEY);
    mocks
        .primary
        .script([Reply::status(400), Reply::status(422)]);
    let error = setup.client.chat(hello()).await.expect_err("400");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400));
    let error = setup.client.chat(hello()).await.expect_err("422");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(422));

    // A wrong DeepSeek key: the mock itself answers 401.
    let wrong_key = self::setup(&mocks, "sk-test-wrong-key-000000");
    let error = wrong_key.client.chat(hello()).await.expect_err("401");
    assert!(matches!(error.kind(), ErrorKind::Auth(_)), "{error}");

    assert_eq!(mocks.primary.requests().len(), 3);
    assert!(
        mocks.backup.requests().is_empty(),
        "the second mock saw nothing"
    );
    assert!(setup.events.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_open_breaker_on_deepseek_sends_calls_to_the_second_without_calling_deepseek() {
    let mocks = Mocks::start().await;
    let setup = setup(&mocks, PRIMARY_KEY);
    // Two 503s (each answered by the backup) open the primary's breaker.
    mocks
        .primary
        .script([Reply::status(503), Reply::status(503)]);
    for _ in 0..2 {
        setup
            .client
            .chat(hello())
            .await
            .expect("the backup answers");
    }
    assert_eq!(setup.primary_breaker.state(), CircuitState::Open);

    let (answer, served_by) = ServedBy::capture(setup.client.chat(hello())).await;
    answer.expect("the backup answers");
    assert_eq!(served_by.unwrap().name(), "backup");
    assert_eq!(mocks.primary.requests().len(), 2, "DeepSeek is not called");
    assert_eq!(mocks.backup.requests().len(), 3);
    assert_eq!(
        setup.events.lock().unwrap().last().map(String::as_str),
        Some("deepseek->backup:circuit_open")
    );
}

#[tokio::test]
async fn failovers_are_counted_in_prometheus() {
    let mocks = Mocks::start().await;
    let setup = setup(&mocks, PRIMARY_KEY);
    mocks
        .primary
        .script([Reply::status(503), Reply::status(503)]);
    for _ in 0..2 {
        setup
            .client
            .chat(hello())
            .await
            .expect("the backup answers");
    }
    let text = setup.metrics.render_prometheus().expect("registry");
    let line = text
        .lines()
        .find(|line| line.starts_with("deepseek_failovers_total{"))
        .unwrap_or_else(|| panic!("no failover counter in:\n{text}"));
    for label in [
        r#"from="deepseek""#,
        r#"to="backup""#,
        r#"reason="server_error""#,
    ] {
        assert!(line.contains(label), "{line}");
    }
    assert!(line.ends_with(" 2"), "{line}");
}

#[tokio::test]
async fn inside_retry_each_attempt_walks_the_list_from_deepseek() {
    let mocks = Mocks::start().await;
    // Attempt 1: DeepSeek 503, backup 503. Attempt 2: DeepSeek has recovered.
    mocks.primary.script([Reply::status(503)]);
    mocks.backup.script([Reply::status(503)]);
    let failover = Failover::builder()
        .primary(
            "deepseek",
            mocks.primary.base_url(),
            protected(&breaker("deepseek")),
        )
        .alternate(
            Endpoint::new("backup", mocks.backup_url())
                .api_key(BACKUP_KEY)
                .model(MODEL, BACKUP_MODEL),
            protected(&breaker("backup")),
        )
        .build()
        .expect("failover");
    let transport = ServiceBuilder::new()
        .layer(PropagateTraceIdLayer::new())
        .layer(
            RetryLayer::builder()
                .max_attempts(2)
                .backoff(Backoff::constant(Duration::from_millis(1)))
                .no_budget()
                .build()
                .expect("retry"),
        )
        .service(failover);
    let client = DeepSeekClient::builder()
        .base_url(mocks.primary.base_url())
        .api_key(PRIMARY_KEY)
        .build(transport)
        .expect("client");
    let (answer, served_by) = ServedBy::capture(client.chat(hello())).await;
    answer.expect("the second attempt's DeepSeek answers");
    assert_eq!(served_by.unwrap().name(), "deepseek");
    assert_eq!(
        (
            mocks.primary.requests().len(),
            mocks.backup.requests().len()
        ),
        (2, 1)
    );
}
