//! Asynchronous chat completions: `POST /v1/jobs` accepts a request and answers `202` at once;
//! `GET /v1/jobs/{id}` reports the job and, once it is done, its result.
//!
//! Both answer in one envelope, `{"code", "data", "message"}`:
//!
//! | case | HTTP | `code` | `data` |
//! |---|---|---|---|
//! | accepted | `202`, `Location: /v1/jobs/{id}` | `0` | the job (`status: "queued"`) |
//! | looked up | `200` | `0` | the job, whatever its status (a failed job too) |
//! | bad body, `"stream": true` | `400` | `400` | the OpenAI error object `/v1/chat/completions` would answer |
//! | every job slot taken | `429`, `Retry-After` | `429` | the OpenAI error object |
//! | unknown or expired id | `404` | `404` | `null` |
//!
//! `code` is `0` when the request itself succeeded, else the HTTP status; how the *job* went
//! is its `status`. A job (`data`) has `id`, `status` (`queued`, `running`, `succeeded`,
//! `failed`), `trace_id`, `created`, `started`, `finished` and `expires` (Unix seconds; those
//! not reached yet are absent), and when succeeded `result` (the chat completion, as
//! `/v1/chat/completions` answers it), when failed `error` (the OpenAI error object) and
//! `http_status` (the status `/v1/chat/completions` would have answered: DeepSeek's for an
//! upstream error).
//!
//! - Jobs are non-streaming: `"stream": true` is refused (`400`) rather than quietly turned
//!   off, so a caller expecting events is told. The body is checked like a chat completion's
//!   (JSON shape, then [`ChatRequest::validate`]) before it is accepted, so a job fails only
//!   in its call (DeepSeek's error, or the outbound stack's: a timeout, an open breaker).
//! - A job's call goes through the gateway's DeepSeek client, so the whole outbound stack
//!   (trace propagation, metrics, retry, breakers and fallback, timeouts) applies. It carries
//!   the trace ID of the `POST` that created it (a fresh one when there is none), which the job
//!   reports as `trace_id`.
//! - Job IDs are 128 bits from the operating system's CSPRNG (`getrandom`), in 32 lowercase
//!   hex digits: knowing one job's ID tells nothing about another's, so an ID is the only
//!   credential needed to read a result (the gateway does not authenticate callers).
//!
//! # Bounds
//!
//! - [`JobSettings::max_jobs`]: jobs held at once, queued, running and finished alike. When all
//!   are taken, `POST` answers `429` with `Retry-After` (the seconds until the oldest job
//!   expires, which frees its slot); nothing is accepted that cannot be kept.
//! - [`JobSettings::workers`]: jobs running at once; the rest wait their turn in order of
//!   acceptance.
//! - [`JobSettings::max_age`]: a job is forgotten this long after it was accepted, its result
//!   with it; a job still queued or running then is cancelled (its DeepSeek call dropped).
//!   Expired jobs are swept when a job is accepted or looked up, and by a background task that
//!   wakes when the oldest job expires (and ends with the store).
//!
//! Memory is bounded by `max_jobs` times the request (at most 8 MiB, held until its call is
//! sent) plus the result (at most the client's largest response body, 16 MiB by default).
//!
//! Each `POST` and each `GET` passes the inbound layers like any API call (the per-caller rate
//! limit counts polls): poll with a pause, e.g. a second.
//!
//! Jobs live in the gateway's memory. When it stops, graceful shutdown waits for HTTP requests,
//! not for jobs: queued and running jobs are cancelled and finished results are lost, and a
//! caller polling the restarted gateway gets `404` and submits again. In a deployment with
//! several replicas, a job is known only to the replica that accepted it (route `/v1/jobs` with
//! session affinity).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::config_error;
use super::outbound::Client;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tower_deepseek::deepseek::{ChatRequest, ChatResponse};
use tower_deepseek::metrics::operation_from_path;
use tower_deepseek::trace_id::TraceId;
use tower_deepseek::{Error, ErrorKind};
use tracing::Instrument;

/// The bounds of the job store (the `[jobs]` table of the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSettings {
    /// Jobs held at once: queued, running and finished ones not yet expired
    /// (`[jobs] max_jobs`, `GATEWAY_JOBS_MAX`). Default 1000.
    pub max_jobs: usize,
    /// Jobs running at once (`[jobs] workers`, `GATEWAY_JOBS_WORKERS`). Default 32.
    pub workers: usize,
    /// How long a job and its result are kept after it was accepted (`[jobs] max_age`, in
    /// seconds; `GATEWAY_JOBS_MAX_AGE`). Default 900 s.
    pub max_age: Duration,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            max_jobs: 1000,
            workers: 32,
            max_age: Duration::from_secs(900),
        }
    }
}

/// The most jobs a store may hold (each a task and an entry; see the module docs for memory).
const MAX_JOBS_LIMIT: usize = 1_000_000;

/// The longest a job may be kept.
const MAX_AGE_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

impl JobSettings {
    /// Checks every bound; the error (kind [`ErrorKind::Config`]) names the `[jobs]` key and
    /// its environment variable.
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=MAX_JOBS_LIMIT).contains(&self.max_jobs) {
            return Err(config_error(format!(
                "[jobs] max_jobs (GATEWAY_JOBS_MAX) must be within 1..={MAX_JOBS_LIMIT}, got {}",
                self.max_jobs
            )));
        }
        if self.workers == 0 || self.workers > self.max_jobs {
            return Err(config_error(format!(
                "[jobs] workers (GATEWAY_JOBS_WORKERS) must be within 1..=max_jobs ({}), got {}: \
                 more workers than jobs could never run",
                self.max_jobs, self.workers
            )));
        }
        if self.max_age < Duration::from_secs(1) || self.max_age > MAX_AGE_LIMIT {
            return Err(config_error(format!(
                "[jobs] max_age (GATEWAY_JOBS_MAX_AGE) must be within 1..=86400 seconds, got {:?}",
                self.max_age
            )));
        }
        Ok(())
    }
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted, waiting for a worker.
    Queued,
    /// Its DeepSeek call is under way.
    Running,
    /// Done: `result` holds the answer.
    Succeeded,
    /// Done: `error` holds why.
    Failed,
}

impl JobStatus {
    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
        }
    }
}

/// A job as `GET /v1/jobs/{id}` shows it (the envelope's `data`).
#[derive(Clone, Debug, Serialize)]
pub struct JobSnapshot {
    /// The job's ID: 32 lowercase hex digits.
    pub id: String,
    /// Where the job is.
    pub status: JobStatus,
    /// The trace ID its DeepSeek call carries: the creating `POST`'s.
    pub trace_id: String,
    /// When it was accepted (Unix seconds).
    pub created: u64,
    /// When its call started (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// When it finished (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<u64>,
    /// When it will be forgotten (Unix seconds).
    pub expires: u64,
    /// The answer, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "shared")]
    pub result: Option<Arc<ChatResponse>>,
    /// The OpenAI error object, once failed.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "shared")]
    pub error: Option<Arc<serde_json::Value>>,
    /// The status `/v1/chat/completions` would have answered for that error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

/// Serializes what an `Arc` holds (serde's `rc` feature is off).
fn shared<T: Serialize, S: serde::Serializer>(
    value: &Option<Arc<T>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.as_deref().serialize(serializer)
}

/// The job store: accepts chat requests, runs them on a bounded set of workers through the
/// gateway's client, and keeps their results until they expire. Cheap to clone (one `Arc`);
/// dropping the last clone cancels the jobs still queued or running.
#[derive(Clone)]
pub struct Jobs {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("settings", &self.shared.settings)
            .field("held", &self.len())
            .finish()
    }
}

struct Shared {
    client: Client,
    settings: JobSettings,
    workers: Arc<Semaphore>,
    table: Mutex<Table>,
}

/// Every job held, and their IDs in order of acceptance (which is the order of expiry, since
/// every job lives `max_age`).
#[derive(Default)]
struct Table {
    jobs: HashMap<u128, Job>,
    by_age: VecDeque<(Instant, u128)>,
    sweeper: Option<AbortHandle>,
}

struct Job {
    stage: Stage,
    trace_id: TraceId,
    created: u64,
    started: Option<u64>,
    finished: Option<u64>,
    /// The task that runs it, until it finishes.
    task: Option<AbortHandle>,
}

enum Stage {
    Queued,
    Running,
    Succeeded(Arc<ChatResponse>),
    Failed {
        error: Arc<serde_json::Value>,
        http_status: u16,
    },
}

impl Table {
    /// Forgets every job expired at `now` (cancelling those not finished); returns when the
    /// next one expires.
    fn sweep(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&(expires_at, id)) = self.by_age.front() {
            if expires_at > now {
                return Some(expires_at);
            }
            self.by_age.pop_front();
            if let Some(job) = self.jobs.remove(&id)
                && let Some(task) = job.task
            {
                tracing::info!(job = %format_id(id), "job expired before it finished: cancelled");
                task.abort();
            }
        }
        None
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // The store is gone: nobody can read what these would produce.
        for task in self.jobs.values_mut().filter_map(|job| job.task.take()) {
            task.abort();
        }
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.abort();
        }
    }
}

impl Jobs {
    /// A store running its jobs through `client`. Checks `settings` first, and must be called
    /// inside a tokio runtime (it starts the task that sweeps expired jobs).
    pub fn new(client: Client, settings: JobSettings) -> Result<Jobs, Error> {
        settings.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            config_error("the job store must be created inside a tokio runtime".to_owned())
        })?;
        let shared = Arc::new(Shared {
            client,
            workers: Arc::new(Semaphore::new(settings.workers)),
            settings,
            table: Mutex::new(Table::default()),
        });
        let sweeper = runtime.spawn(sweep_expired(Arc::downgrade(&shared)));
        shared.lock().sweeper = Some(sweeper.abort_handle());
        Ok(Jobs { shared })
    }

    /// The store's bounds.
    pub fn settings(&self) -> &JobSettings {
        &self.shared.settings
    }

    /// Jobs held now (queued, running and finished, not yet swept).
    pub fn len(&self) -> usize {
        self.shared.lock().jobs.len()
    }

    /// Whether no job is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accepts `request` as a job and starts it as soon as a worker is free, under the current
    /// trace ID (a fresh one outside any). Refuses a streaming or invalid request
    /// ([`ErrorKind::InvalidRequest`]) and, when every job slot is taken,
    /// [`ErrorKind::RateLimited`] with the wait until the oldest job expires. Must be called
    /// inside a tokio runtime.
    pub fn submit(&self, request: ChatRequest) -> Result<JobSnapshot, Error> {
        if request.stream == Some(true) {
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                "jobs are non-streaming: leave `stream` unset or false and poll GET /v1/jobs/{id} \
                 for the whole answer, or call /v1/chat/completions to stream",
            ));
        }
        request.validate()?;
        let trace_id = TraceId::current().unwrap_or_else(TraceId::new_v4);
        let settings = &self.shared.settings;
        let now = Instant::now();
        let created = unix_now();
        // Drawn before taking the lock: a system call.
        let mut id = random_id()?;
        let mut table = self.shared.lock();
        table.sweep(now);
        if table.jobs.len() >= settings.max_jobs {
            let wait = table.by_age.front().map_or(settings.max_age, |&(at, _)| {
                at.saturating_duration_since(now)
            });
            // Whole seconds, rounded up and never zero: a slot is free by then.
            let wait = Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
                .max(Duration::from_secs(1));
            return Err(Error::new(
                ErrorKind::RateLimited,
                format!(
                    "the gateway holds {} jobs, its limit: retry once the oldest expires",
                    settings.max_jobs
                ),
            )
            .with_retry_after(wait));
        }
        // 128 random bits never collide in practice; a duplicate would hide a job.
        while table.jobs.contains_key(&id) {
            id = random_id()?;
        }
        let expires_at = now + settings.max_age;
        let run = run_job(
            Arc::downgrade(&self.shared),
            Arc::clone(&self.shared.workers),
            self.shared.client.clone(),
            id,
            request,
        );
        let span = tracing::info_span!("job", job = %format_id(id), trace_id = %trace_id);
        let task = tokio::spawn(trace_id.clone().scope(run).instrument(span));
        tracing::info!(job = %format_id(id), "job accepted");
        let job = Job {
            stage: Stage::Queued,
            trace_id,
            created,
            started: None,
            finished: None,
            task: Some(task.abort_handle()),
        };
        let snapshot = job.snapshot(id, settings.max_age);
        table.jobs.insert(id, job);
        table.by_age.push_back((expires_at, id));
        Ok(snapshot)
    }

    /// The job with this ID, unless it is unknown or expired.
    pub fn get(&self, id: &str) -> Option<JobSnapshot> {
        let id = parse_id(id)?;
        let mut table = self.shared.lock();
        table.sweep(Instant::now());
        let job = table.jobs.get(&id)?;
        Some(job.snapshot(id, self.shared.settings.max_age))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while the lock is held; if something did, the table is still whole.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Job {
    fn snapshot(&self, id: u128, max_age: Duration) -> JobSnapshot {
        let (status, result, error, http_status) = match &self.stage {
            Stage::Queued => (JobStatus::Queued, None, None, None),
            Stage::Running => (JobStatus::Running, None, None, None),
            Stage::Succeeded(answer) => {
                (JobStatus::Succeeded, Some(Arc::clone(answer)), None, None)
            }
            Stage::Failed { error, http_status } => (
                JobStatus::Failed,
                None,
                Some(Arc::clone(error)),
                Some(*http_status),
            ),
        };
        JobSnapshot {
            id: format_id(id),
            status,
            trace_id: self.trace_id.to_string(),
            created: self.created,
            started: self.started,
            finished: self.finished,
            expires: self.created + max_age.as_secs(),
            result,
            error,
            http_status,
        }
    }
}

/// Runs one job: waits for a worker, then makes the call. Holds the store only weakly, so a
/// dropped store ends its jobs (it aborts them) instead of being kept alive by them.
async fn run_job(
    store: Weak<Shared>,
    workers: Arc<Semaphore>,
    client: Client,
    id: u128,
    request: ChatRequest,
) {
    // The semaphore is never closed; an error would mean there is nothing to run on.
    let Ok(_worker) = workers.acquire_owned().await else {
        return;
    };
    {
        let Some(shared) = store.upgrade() else {
            return;
        };
        let mut table = shared.lock();
        let Some(job) = table.jobs.get_mut(&id) else {
            return;
        };
        job.stage = Stage::Running;
        job.started = Some(unix_now());
    }
    tracing::debug!("job running");
    let stage = match client.chat(request).await {
        Ok(answer) => Stage::Succeeded(Arc::new(answer)),
        Err(error) => {
            tracing::warn!(%error, "job failed");
            Stage::Failed {
                error: Arc::new(error.to_openai_json()),
                http_status: error.http_status().as_u16(),
            }
        }
    };
    let Some(shared) = store.upgrade() else {
        return;
    };
    let mut table = shared.lock();
    if let Some(job) = table.jobs.get_mut(&id) {
        job.stage = stage;
        job.finished = Some(unix_now());
        job.task = None;
    }
}

/// Forgets expired jobs as they expire, until the store is dropped (which also aborts it).
async fn sweep_expired(store: Weak<Shared>) {
    loop {
        let next = {
            let Some(shared) = store.upgrade() else {
                return;
            };
            let next = shared.lock().sweep(Instant::now());
            // Without jobs, the next one cannot expire sooner than max_age from now.
            next.unwrap_or_else(|| Instant::now() + shared.settings.max_age)
        };
        tokio::time::sleep_until(next).await;
    }
}

/// 128 bits from the operating system's CSPRNG.
fn random_id() -> Result<u128, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::new(
            ErrorKind::Overloaded,
            format!("cannot draw a job ID from the operating system: {e}"),
        )
        .with_retry_after(Duration::from_secs(1))
    })?;
    Ok(u128::from_le_bytes(bytes))
}

fn format_id(id: u128) -> String {
    format!("{id:032x}")
}

/// Exactly 32 lowercase hex digits, as [`format_id`] writes them.
fn parse_id(text: &str) -> Option<u128> {
    if text.len() != 32 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// `POST /v1/jobs` and `GET /v1/jobs/{id}` over `jobs`. Merge it into the API router before the
/// inbound layers, so the trace ID, metrics and limits apply to it as to the chat routes.
pub fn jobs_router(jobs: Jobs) -> Router {
    Router::new()
        .route("/v1/jobs", post(submit_job))
        .route("/v1/jobs/{id}", get(get_job))
        // The body limit comes with the inbound stack the router puts around these routes.
        .with_state(jobs)
}

/// The gateway's inbound metrics operation: `job_submit` and `job_status` for the jobs routes
/// (never the job ID: one label per route), else [`operation_from_path`]'s `chat`, `models`,
/// `other`. For `MetricsLayer::server(..).operation_by(..)` in the router.
pub fn operation(method: &http::Method, uri: &http::Uri) -> &'static str {
    let path = uri.path().trim_end_matches('/');
    if path == "/v1/jobs" {
        "job_submit"
    } else if path.starts_with("/v1/jobs/") {
        "job_status"
    } else {
        operation_from_path(method, uri)
    }
}

/// The seed's envelope.
#[derive(Serialize)]
struct Envelope<'a, T> {
    code: u16,
    data: T,
    message: &'a str,
}

fn envelope<T: Serialize>(status: StatusCode, code: u16, data: T, message: &str) -> Response {
    let body = serde_json::to_vec(&Envelope {
        code,
        data,
        message,
    });
    // Our own types serialize; should one not, say so rather than send a broken body.
    let (status, body) = match body {
        Ok(body) => (status, body),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a job answer");
            let fallback = format!(
                r#"{{"code":500,"data":null,"message":"cannot serialize the answer: {}"}}"#,
                e.to_string().replace(['"', '\\'], "'")
            );
            (StatusCode::INTERNAL_SERVER_ERROR, fallback.into_bytes())
        }
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A refused request: the envelope with the error's status as `code` and the OpenAI error
/// object as `data`, plus `Retry-After` when the error has one.
fn refusal(error: &Error) -> Response {
    let status = error.http_status();
    let mut response = envelope(
        status,
        status.as_u16(),
        error.to_openai_json(),
        &error.to_string(),
    );
    if let Some(wait) = error.retry_after() {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
    }
    response
}

async fn submit_job(State(jobs): State<Jobs>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            return envelope(
                status,
                status.as_u16(),
                serde_json::Value::Null,
                &rejection.body_text(),
            );
        }
    };
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return refusal(&Error::new(
                ErrorKind::InvalidRequest,
                format!("the body is not a chat completion request: {e}"),
            ));
        }
    };
    match jobs.submit(request) {
        Ok(job) => {
            let location = HeaderValue::try_from(format!("/v1/jobs/{}", job.id));
            let mut response = envelope(StatusCode::ACCEPTED, 0, &job, "accepted");
            // 32 hex digits always make a valid header value.
            if let Ok(location) = location {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(error) => refusal(&error),
    }
}

async fn get_job(State(jobs): State<Jobs>, Path(id): Path<String>) -> Response {
    match jobs.get(&id) {
        Some(job) => envelope(StatusCode::OK, 0, &job, job.status.as_str()),
        None => envelope(
            StatusCode::NOT_FOUND,
            404,
            serde_json::Value::Null,
            "no such job: unknown, or expired (jobs are kept for [jobs] max_age after acceptance)",
        ),
    }
}
