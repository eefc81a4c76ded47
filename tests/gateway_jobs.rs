//! The gateway's asynchronous jobs (`POST /v1/jobs`, `GET /v1/jobs/{id}`) over real sockets:
//! the jobs router (under the trace ID layer, as in the gateway) on one side, the gateway's
//! full outbound stack against a `MockDeepSeek` on the other.
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
use gateway::{GatewayConfig, JobSettings, JobStatus, Jobs};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_deepseek::ErrorKind;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::trace_id::TraceIdLayer;
use tower_deepseek::upstream::Upstream;

/// Polls are 10 ms apart; this many make 10 s, far beyond what any job here needs.
const MAX_POLLS: usize = 1000;

/// The mock, the store, and the jobs router serving on a socket.
struct Setup {
    mock: MockDeepSeek,
    jobs: Jobs,
    addr: SocketAddr,
}

impl Setup {
    async fn start(settings: JobSettings) -> Setup {
        let mock = MockDeepSeek::start().await.unwrap();
        let jobs = Jobs::new(client_for(&mock), settings).unwrap();
        // As in the gateway's router: the trace ID layer outside the jobs routes.
        let app = gateway::jobs_router(jobs.clone()).layer(TraceIdLayer::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Setup { mock, jobs, addr }
    }

    async fn call(&self, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap();
        let response = Upstream::new().unwrap().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, body: &str) -> Answer {
        self.call("POST", "/v1/jobs", body, &[]).await
    }

    /// Posts `body` and returns the new job's ID (asserting the 202).
    async fn accept(&self, body: &str) -> String {
        let answer = self.post(body).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        answer.body["data"]["id"].as_str().unwrap().to_owned()
    }

    async fn get(&self, id: &str) -> Answer {
        self.call("GET", &format!("/v1/jobs/{id}"), "", &[]).await
    }

    /// The job's data once `done` says so (bounded: panics after [`MAX_POLLS`]).
    async fn wait_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..MAX_POLLS {
            let answer = self.get(id).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            if done(&answer.body["data"]) {
                return answer.body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} did not get there");
    }

    async fn finished(&self, id: &str) -> Value {
        self.wait_until(id, |job| job["finished"].is_u64()).await
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// The gateway's own client: its outbound stack over a pooled upstream, pointed at `mock`.
fn client_for(mock: &MockDeepSeek) -> gateway::Client {
    let config = GatewayConfig::default();
    let registry = prometheus::Registry::new();
    let metrics = gateway::gateway_metrics(&config, &registry).unwrap();
    let transport =
        gateway::transport(&config, mock.base_url(), Upstream::new().unwrap(), &metrics).unwrap();
    DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(mock.api_key())
        .build(transport)
        .unwrap()
}

fn chat_body(text: &str) -> String {
    json!({"model": "deepseek-v4-flash", "messages": [{"role": "user", "content": text}]})
        .to_string()
}

fn chat_calls(mock: &MockDeepSeek) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

fn is_job_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[tokio::test]
async fn accepts_with_202_and_location_then_succeeds_with_the_answer() {
    let setup = Setup::start(JobSettings::default()).await;
    let answer = setup.post(&chat_body("Hello jobs")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(answer.body["code"], 0);
    assert_eq!(answer.body["message"], "accepted");
    let data = &answer.body["data"];
    assert_eq!(data["status"], "queued");
    let id = data["id"].as_str().unwrap();
    assert!(is_job_id(id), "{id}");
    assert_eq!(
        answer.headers["location"],
        format!("/v1/jobs/{id}").as_str()
    );
    let created = data["created"].as_u64().unwrap();
    assert_eq!(data["expires"].as_u64().unwrap(), created + 900);

    let done = setup.finished(id).await;
    assert_eq!(done["code"], 0);
    assert_eq!(done["message"], "succeeded");
    let job = &done["data"];
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["id"], id);
    let content = job["result"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(content.contains("Hello jobs"), "{content}");
    assert!(job["started"].as_u64().unwrap() >= created);
    assert!(job["finished"].as_u64().unwrap() >= job["started"].as_u64().unwrap());
    assert!(job.get("error").is_none());
    assert_eq!(chat_calls(&setup.mock), 1);
}

#[tokio::test]
async fn an_upstream_400_fails_the_job_with_the_openai_error_and_status() {
    let setup = Setup::start(JobSettings::default()).await;
    setup.mock.script([Reply::status(400)]);
    let id = setup.accept(&chat_body("rejected upstream")).await;
    let done = setup.finished(&id).await;
    // The lookup succeeded; the job did not.
    assert_eq!(done["code"], 0);
    assert_eq!(done["message"], "failed");
    let job = &done["data"];
    assert_eq!(job["status"], "failed");
    assert_eq!(job["http_status"], 400);
    assert_eq!(job["error"]["error"]["type"], "invalid_request_error");
    assert!(
        !job["error"]["error"]["message"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(job.get("result").is_none());
    assert_eq!(chat_calls(&setup.mock), 1, "a 400 is not retried");
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404_envelopes() {
    let setup = Setup::start(JobSettings::default()).await;
    for id in [
        "0123456789abcdef0123456789abcdef",
        "0123456789ABCDEF0123456789ABCDEF",
        "+123456789abcdef0123456789abcdef",
        "nope",
    ] {
        let answer = setup.get(id).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{id}");
        assert_eq!(answer.body["code"], 404);
        assert!(answer.body["data"].is_null());
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .contains("no such job")
        );
    }
}

#[tokio::test]
async fn bad_bodies_and_streaming_requests_are_refused_with_400_envelopes() {
    let setup = Setup::start(JobSettings::default()).await;
    let not_json = setup.post("not json").await;
    let no_messages = setup
        .post(r#"{"model": "deepseek-v4-flash", "messages": []}"#)
        .await;
    let streaming = setup
        .post(r#"{"model": "deepseek-v4-flash", "stream": true, "messages": [{"role": "user", "content": "hi"}]}"#)
        .await;
    for answer in [&not_json, &no_messages, &streaming] {
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert_eq!(answer.body["code"], 400);
        // `data` is the OpenAI error /v1/chat/completions would answer.
        assert_eq!(
            answer.body["data"]["error"]["type"],
            "invalid_request_error"
        );
        assert!(answer.headers.get("location").is_none());
    }
    assert!(
        not_json.body["message"]
            .as_str()
            .unwrap()
            .contains("not a chat completion request")
    );
    assert!(
        streaming.body["message"]
            .as_str()
            .unwrap()
            .contains("non-streaming")
    );
    assert!(setup.jobs.is_empty(), "nothing refused is held");
    assert_eq!(chat_calls(&setup.mock), 0);
}

#[tokio::test]
async fn a_full_store_answers_429_with_retry_after_and_loses_nothing() {
    let setup = Setup::start(JobSettings {
        max_jobs: 2,
        workers: 1,
        max_age: Duration::from_secs(600),
    })
    .await;
    setup.mock.script([
        Reply::ok()
            .content("first")
            .delay_headers(Duration::from_millis(200)),
        Reply::ok().content("second"),
    ]);
    let first = setup.accept(&chat_body("one")).await;
    let second = setup.accept(&chat_body("two")).await;

    let refused = setup.post(&chat_body("three")).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.body["code"], 429);
    assert_eq!(refused.body["data"]["error"]["type"], "rate_limit_error");
    // Until the oldest job expires (600 s after it was accepted, a moment ago).
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((599..=600).contains(&retry_after), "{retry_after}");

    // The accepted ones still complete; finished ones keep their slots until they expire.
    for (id, text) in [(&first, "first"), (&second, "second")] {
        let done = setup.finished(id).await;
        assert_eq!(done["data"]["status"], "succeeded");
        assert_eq!(
            done["data"]["result"]["choices"][0]["message"]["content"],
            text
        );
    }
    assert_eq!(setup.jobs.len(), 2);
    assert_eq!(
        setup.post(&chat_body("four")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(chat_calls(&setup.mock), 2);
}

#[tokio::test]
async fn one_worker_runs_one_job_at_a_time_in_order() {
    let setup = Setup::start(JobSettings {
        workers: 1,
        ..JobSettings::default()
    })
    .await;
    setup.mock.script([
        Reply::ok()
            .content("slow")
            .delay_headers(Duration::from_millis(500)),
        Reply::ok().content("quick"),
    ]);
    let first = setup.accept(&chat_body("one")).await;
    let second = setup.accept(&chat_body("two")).await;

    let mut saw_one_running_one_queued = false;
    for _ in 0..MAX_POLLS {
        // The second is read first: if it has started, the first must have finished by then.
        let later = setup.get(&second).await.body["data"].clone();
        let earlier = setup.get(&first).await.body["data"].clone();
        if later["status"] != "queued" {
            assert_eq!(earlier["status"], "succeeded", "two jobs ran at once");
        }
        if earlier["status"] == "running" && later["status"] == "queued" {
            saw_one_running_one_queued = true;
        }
        if later["status"] == "succeeded" {
            assert!(later["started"].as_u64() >= earlier["finished"].as_u64());
            assert_eq!(later["result"]["choices"][0]["message"]["content"], "quick");
            assert!(
                saw_one_running_one_queued,
                "the second job waited while the first ran"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the jobs did not finish");
}

#[tokio::test]
async fn the_posts_trace_id_reaches_deepseek_and_is_reported_by_the_job() {
    let setup = Setup::start(JobSettings::default()).await;
    let answer = setup
        .call(
            "POST",
            "/v1/jobs",
            &chat_body("traced"),
            &[("x-trace-id", "job-trace-42")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(answer.headers["x-trace-id"], "job-trace-42");
    assert_eq!(answer.body["data"]["trace_id"], "job-trace-42");
    let id = answer.body["data"]["id"].as_str().unwrap();
    assert_eq!(setup.finished(id).await["data"]["status"], "succeeded");
    let sent = setup.mock.requests();
    let call = sent
        .iter()
        .find(|r| r.path.ends_with("/chat/completions"))
        .unwrap();
    assert_eq!(call.headers["x-trace-id"], "job-trace-42");

    // Without one, the POST's generated ID is the job's and its call's.
    setup.mock.clear_requests();
    let answer = setup.post(&chat_body("untraced")).await;
    let generated = answer.headers["x-trace-id"].to_str().unwrap().to_owned();
    assert_eq!(answer.body["data"]["trace_id"], generated.as_str());
    let id = answer.body["data"]["id"].as_str().unwrap();
    setup.finished(id).await;
    assert_eq!(
        setup.mock.requests()[0].headers["x-trace-id"],
        generated.as_str()
    );
}

#[tokio::test]
async fn finished_jobs_expire_after_max_age_swept_without_a_lookup() {
    let mock = MockDeepSeek::start().await.unwrap();
    let jobs = Jobs::new(
        client_for(&mock),
        JobSettings {
            max_age: Duration::from_secs(60),
            ..JobSettings::default()
        },
    )
    .unwrap();
    let job = jobs
        .submit(ChatRequest::new("deepseek-v4-flash").user("expire me"))
        .unwrap();
    for _ in 0..MAX_POLLS {
        if jobs.get(&job.id).unwrap().status == JobStatus::Succeeded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(jobs.get(&job.id).unwrap().status, JobStatus::Succeeded);

    // The call is done; from here on nothing touches a socket, so time can stand still.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(jobs.get(&job.id).is_some(), "kept until max_age");
    tokio::time::advance(Duration::from_secs(1)).await;
    // The sweeper forgets it on its own (no lookup, no new job).
    for _ in 0..100 {
        if jobs.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(jobs.is_empty(), "the sweeper forgot the expired job");
    assert!(jobs.get(&job.id).is_none());
}

#[tokio::test]
async fn a_job_still_running_at_max_age_is_cancelled_and_frees_its_worker() {
    let mock = MockDeepSeek::start().await.unwrap();
    // Expires well before the gateway's 60 s headers timeout would end the call.
    let jobs = Jobs::new(
        client_for(&mock),
        JobSettings {
            workers: 1,
            max_age: Duration::from_secs(10),
            ..JobSettings::default()
        },
    )
    .unwrap();
    mock.script([Reply::ok().delay_headers(Duration::from_secs(3600))]);
    let stuck = jobs
        .submit(ChatRequest::new("deepseek-v4-flash").user("stuck"))
        .unwrap();
    for _ in 0..MAX_POLLS {
        if jobs.get(&stuck.id).unwrap().status == JobStatus::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(jobs.get(&stuck.id).unwrap().status, JobStatus::Running);

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(jobs.get(&stuck.id).is_none(), "expired while running");
    assert!(jobs.is_empty());
    tokio::time::resume();

    // The only worker is free again: the next job runs and succeeds.
    let next = jobs
        .submit(ChatRequest::new("deepseek-v4-flash").user("next"))
        .unwrap();
    for _ in 0..MAX_POLLS {
        let status = jobs.get(&next.id).unwrap().status;
        if status == JobStatus::Succeeded {
            return;
        }
        assert_ne!(status, JobStatus::Failed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the next job never ran: the cancelled one kept the worker");
}

#[test]
fn settings_are_validated_naming_the_jobs_keys() {
    assert_eq!(
        JobSettings::default().validate().map_err(|e| e.to_string()),
        Ok(())
    );
    let cases = [
        (
            JobSettings {
                max_jobs: 0,
                ..JobSettings::default()
            },
            "[jobs] max_jobs",
        ),
        (
            JobSettings {
                workers: 0,
                ..JobSettings::default()
            },
            "[jobs] workers",
        ),
        (
            JobSettings {
                max_jobs: 4,
                workers: 5,
                ..JobSettings::default()
            },
            "[jobs] workers",
        ),
        (
            JobSettings {
                max_age: Duration::ZERO,
                ..JobSettings::default()
            },
            "[jobs] max_age",
        ),
        (
            JobSettings {
                max_age: Duration::from_secs(86_401),
                ..JobSettings::default()
            },
            "[jobs] max_age",
        ),
    ];
    for (settings, key) in cases {
        let error = settings.validate().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.to_string().contains(key), "{error}");
    }
}

#[test]
fn a_store_needs_a_runtime_and_valid_settings() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mock = runtime.block_on(MockDeepSeek::start()).unwrap();
    let client = runtime.block_on(async { client_for(&mock) });
    let outside = Jobs::new(client.clone(), JobSettings::default()).unwrap_err();
    assert_eq!(outside.kind(), ErrorKind::Config);
    let invalid = runtime
        .block_on(async {
            Jobs::new(
                client,
                JobSettings {
                    workers: 0,
                    ..JobSettings::default()
                },
            )
        })
        .unwrap_err();
    assert!(invalid.to_string().contains("GATEWAY_JOBS_WORKERS"));
}

#[test]
fn metrics_name_the_jobs_routes_never_the_job_id() {
    let operation =
        |method: http::Method, path: &str| gateway::operation(&method, &path.parse().unwrap());
    assert_eq!(operation(http::Method::POST, "/v1/jobs"), "job_submit");
    assert_eq!(
        operation(
            http::Method::GET,
            "/v1/jobs/0123456789abcdef0123456789abcdef"
        ),
        "job_status"
    );
    assert_eq!(
        operation(http::Method::POST, "/v1/chat/completions"),
        "chat"
    );
    assert_eq!(operation(http::Method::GET, "/v1/models"), "models");
    assert_eq!(operation(http::Method::GET, "/v1/jobsx"), "other");
}
