//! The tower-deepseek gateway: an OpenAI-compatible proxy in front of DeepSeek.
//!
//! ```text
//! cargo run --example gateway --all-features
//! ```
//!
//! It forwards `POST /v1/chat/completions` (streaming and not) and `GET /v1/models` to DeepSeek
//! through the crate's typed client and pooled upstream, and runs chat completions as
//! asynchronous jobs: `POST /v1/jobs` answers `202` with a job ID and `Location` at once,
//! `GET /v1/jobs/{id}` answers the envelope `{code, data, message}` with the job's status and,
//! once done, its result or its error (see `jobs.rs`). Jobs are bounded in number, running
//! workers and age; a full store answers `429` with `Retry-After`. They live in the memory of
//! the replica that accepted them: a restart loses them. Any OpenAI-compatible client works
//! against it unchanged, errors included: DeepSeek's errors come back in the OpenAI error shape
//! with the upstream status. It also serves `/metrics` (Prometheus text format), `/healthz` and
//! `/readyz`.
//!
//! Settings come from a TOML file named by `GATEWAY_CONFIG` (see `deploy/k8s/` for one) and
//! from the environment, which wins over the file. Each variable below has a key in the file
//! (the list: `SETTINGS` in `file.rs`); the DeepSeek key is only ever read from the environment.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `GATEWAY_CONFIG` | path of the TOML config file | unset |
//! | `GATEWAY_ADDR` | address to listen on | `127.0.0.1:8080` |
//! | `GATEWAY_ADMIN_ADDR` | address of the admin server (the CPU profile, feature `pprof`); never the public one | unset: none |
//! | `DEEPSEEK_API_KEY` | the DeepSeek key; unset: serve from the embedded mock DeepSeek | unset |
//! | `GATEWAY_REQUIRE_API_KEY` | `true`: refuse to start without `DEEPSEEK_API_KEY` instead of serving from the mock (set it in production) | `false` |
//! | `DEEPSEEK_BASE_URL` | the upstream base URL | `https://api.deepseek.com` |
//! | `GATEWAY_UPSTREAM_HTTP2_ONLY` | `true`: speak HTTP/2 to the upstreams from the first byte (h2c on `http://`), so all streams to a host share one connection; only for upstreams known to speak it (others fail every call). Off: HTTP/1.1, or HTTP/2 where TLS's ALPN picks it (DeepSeek's API does) | `false` |
//! | `DEEPSEEK_MODEL` | model used when a request names none | `deepseek-v4-flash` |
//! | `GATEWAY_FALLBACK_MODEL` | model that answers while a model's circuit breaker is open; unset: no fallback | unset |
//! | `GATEWAY_BREAKER_FAILURE_RATE` | failure rate (percent, `(0, 100]`) that opens a breaker | `50` |
//! | `GATEWAY_BREAKER_MINIMUM_CALLS` | calls in the window before a rate counts | `20` |
//! | `GATEWAY_BREAKER_WINDOW` | the sliding window, in calls | `100` |
//! | `GATEWAY_BREAKER_OPEN_WAIT` | seconds (decimals allowed) a breaker stays open before a trial | `30` |
//! | `GATEWAY_BREAKER_FATAL_WAIT` | seconds a 401/402 stops a model's calls; `0` turns that off | `1800` |
//! | `GATEWAY_RETRY_MAX_ATTEMPTS` | attempts per call, the first included (1 to 5; `1`: no retries) | `3` |
//! | `GATEWAY_HEADERS_TIMEOUT` | seconds to wait for DeepSeek's response headers | `60` |
//! | `GATEWAY_FIRST_TOKEN_TIMEOUT` | seconds to wait for the first token (keep-alives do not count) | `600` |
//! | `GATEWAY_IDLE_TIMEOUT` | longest silence, in seconds, between two chunks of an answer | `120` |
//! | `GATEWAY_RATE_LIMIT_PER_MINUTE` | requests per minute per caller (`Authorization` header); `0`: no limit | `600` |
//! | `GATEWAY_RATE_LIMIT_BURST` | requests a caller may send at once after a quiet spell | `60` |
//! | `REDIS_URL` | share the per-caller limit across replicas through Redis (fails open) | unset |
//! | `GATEWAY_MAX_IN_FLIGHT` | requests served at once (a stream counts until it ends); also the idle upstream connections kept per host | `512` |
//! | `GATEWAY_BARE` | `1`: no layers on either side (the baseline of the end-to-end benchmark) | `0` |
//! | `GATEWAY_JOBS_MAX` | jobs held at once (queued, running, finished not yet expired); when full, `POST /v1/jobs` answers 429 | `1000` |
//! | `GATEWAY_JOBS_WORKERS` | jobs running at once (1 to `GATEWAY_JOBS_MAX`) | `32` |
//! | `GATEWAY_JOBS_MAX_AGE` | seconds a job and its result are kept after acceptance (1 to 86400); a job still running then is cancelled | `900` |
//! | `GATEWAY_HEDGE` | `true`: hedge non-streaming calls slower than a percentile of recent ones (each hedge may bill tokens twice) | `false` |
//! | `GATEWAY_HEDGE_PERCENTILE` | the latency percentile that sends a hedge | `95` |
//! | `GATEWAY_HEDGE_MAX_EXTRA_PERCENT` | at most this many extra calls, in percent | `5` |
//! | `RUST_LOG` | log filter | `info` |
//!
//! Every value is checked at start-up; a bad one stops the gateway with an error naming it.
//!
//! # The two stacks
//!
//! Inbound, around the routes, outermost first:
//!
//! ```text
//! TraceId ─► Metrics (server) ─► RateLimit (per caller) ─► ConcurrencyLimit ─► handlers
//! ```
//!
//! - The trace ID is outermost, so every answer (a 429 and a 503 included) carries one.
//! - Metrics sit outside the limits, so refused calls are counted (`outcome="rate_limited"`,
//!   `"rejected"`).
//! - The rate limit refuses at once with a `429`, `Retry-After` (whole seconds, never 0) and
//!   `x-ratelimit-limit`/`-remaining`/`-reset`; it is counted before the concurrency limit so a
//!   refused call never takes a slot. With `REDIS_URL` the limit is one GCRA cell per caller in
//!   Redis, shared by every replica; while Redis is down, calls pass (and the log says so).
//! - The concurrency limit holds a slot until the answer's body ends (a stream holds it for its
//!   whole length); a call finding none free waits up to a second in a bounded queue, then gets
//!   a `503` with `Retry-After: 1`. `/readyz` answers `503 busy` while every slot is taken.
//!
//! Outbound, under the [`DeepSeekClient`], outermost first: the crate's preset
//! ([`DeepSeekStack`](tower_deepseek::stack::DeepSeekStack): trace ID, metrics, retry) over the
//! failover list, each of whose upstreams has its own breakers and timeouts:
//!
//! ```text
//! PropagateTraceId ─► Metrics (client) ─► Retry ─► Failover: DeepSeek, then each [[upstreams]] entry
//!   each upstream: note_fallback ─► CircuitBreaker per model (fallback: ModelFallback) ─► StreamTimeout ─► Upstream
//! ```
//!
//! - Trace propagation is outermost, so the headers (`x-trace-id`, `traceparent`) are on the
//!   request before anything else sees it: every retry and a request the fallback re-sends
//!   carry the same trace ID as the original call.
//! - Metrics see each call once (RED, tokens, time to first chunk), whatever the retries did.
//! - Retry sits outside the breakers, so each breaker sees every attempt, and a refusal of an
//!   open breaker (or its fallback's answer) is final. It retries 429, 5xx, timeouts and
//!   transport errors before any output, honours `Retry-After`, never retries 400/401/402/422,
//!   and is bounded by a budget (about 20 % extra calls) so an outage is not multiplied. It
//!   holds a stream until its first token and a JSON answer until its end, so a keep-alive-only
//!   wait or `insufficient_system_resource` is retried before the caller sees anything; after
//!   the first delivered token nothing is retried.
//! - Failover (the file's `[[upstreams]]`: name, base URL, `api_key_env`, model mapping) sits
//!   inside the retries: each attempt tries DeepSeek, then the next upstream when DeepSeek
//!   answers 429, 5xx, times out, cannot be reached or its breaker refuses; never on 400, 401,
//!   402 or 422, and never once a stream has started. Every answer names its upstream
//!   (`x-upstream: deepseek` or the entry's name); `failovers_total{from,to,reason}` counts the
//!   hops. Each upstream's key is read from its variable at start-up.
//! - Hedging (`[hedge]`, off by default) sits between the retries and the failover list: a
//!   non-streaming call slower than the configured percentile of recent calls gets a second
//!   attempt that races it; the first answer wins and the other is cancelled. A budget keeps
//!   hedges under `max_extra_percent` of calls. Each hedge may bill tokens for both attempts.
//! - The stream timeouts sit under the breakers, so a silent upstream counts as a failure.
//! - One breaker per model ([`KeyedCircuitBreakerLayer`](tower_deepseek::circuit_breaker::KeyedCircuitBreakerLayer) keyed by the [`RequestModel`](tower_deepseek::deepseek::RequestModel) the
//!   client puts in each chat request's extensions; `GET /models` has a breaker of its own):
//!   a failing model does not cut off the others. 5xx, timeouts and transport errors count;
//!   429 and 4xx do not; 401/402 stop that model's calls for `GATEWAY_BREAKER_FATAL_WAIT`
//!   (the other models find out on their own next call). The set of breakers is bounded
//!   ([`MAX_BREAKERS`]): callers choose model names, and a closed breaker of a model not used
//!   for a while is forgotten first.
//! - While a model's breaker is open (or forced open), [`ModelFallback`] re-sends a refused
//!   `POST` with the body's `model` rewritten to `GATEWAY_FALLBACK_MODEL`, straight to the
//!   upstream (the fallback route has no breaker of its own; a refused call *for* the fallback
//!   model is not re-sent to itself). The fatal state (bad key, empty balance) never
//!   falls back: another model on the same account would fail the same way. Without a fallback
//!   model (or for `GET /models`) the caller gets a `503` in the OpenAI error shape with
//!   `Retry-After` (the time until the breaker's next trial call).
//! - A fallback answer carries the breaker's `FallbackResponse` extension; `note_fallback`
//!   hands it to the handler (the typed client returns parsed answers, not responses), which
//!   sets `x-fallback-model: <model>` on the gateway's response.
//!
//! Every request carries one trace ID: `x-trace-id` (or `x-request-id`, or a W3C
//! `traceparent`) when the caller sends a valid one, a fresh UUID otherwise. The gateway echoes
//! it on the response, logs under it (span field `trace_id`) and sends it to DeepSeek as
//! `x-trace-id` and `traceparent`; the handlers below contain no trace code.
//!
//! Clients of the gateway may send any `Authorization` header (the OpenAI SDKs insist on one);
//! it is not forwarded: the gateway calls DeepSeek with its own key.
//! Ctrl-C stops accepting connections and lets in-flight streams finish.

use std::future::Future;
use std::net::SocketAddr;

use axum::serve::{Listener, ListenerExt};
use tokio::net::TcpListener;
use tower_deepseek::deepseek::{DEFAULT_BASE_URL, DeepSeekClient};
use tower_deepseek::metrics::Metrics;
use tower_deepseek::mock::MockDeepSeek;
use tower_deepseek::{BoxError, Error};

pub mod admin;
mod bare;
mod config;
pub mod file;
mod handlers;
mod inbound;
mod jobs;
mod outbound;
mod refusal;
#[path = "../common/signal.rs"]
mod signal;

pub use bare::bare_router;
pub use config::*;
pub use inbound::*;
pub use jobs::*;
pub use outbound::*;

/// Serves the gateway on `listener` until `shutdown` completes, then lets in-flight requests
/// (streams included) finish.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    // TCP_NODELAY on every accepted connection: SSE chunks are small writes that Nagle's
    // algorithm holds for the client's delayed ACK (about 40 ms a stream on a kept-alive one).
    let listener = listener.tap_io(|tcp: &mut tokio::net::TcpStream| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let mut builder = DeepSeekClient::builder();
    if let Some(model) = &config.model {
        builder = builder.default_model(model);
    }
    // Kept alive for as long as the gateway serves.
    let mut mock = None;
    // The failover list strips this base from each request's URI for the other upstreams.
    let mut primary_base_url = config
        .base_url
        .clone()
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
    match &config.api_key {
        Some(key) => {
            builder = builder.api_key(key.as_str());
            builder = builder.base_url(&primary_base_url);
        }
        None if config.require_api_key => {
            return Err(
                "DEEPSEEK_API_KEY is not set and GATEWAY_REQUIRE_API_KEY (`[deepseek] require_api_key`) is on: refusing to serve from the mock"
                    .into(),
            );
        }
        None => {
            let server = MockDeepSeek::start().await?;
            tracing::info!(
                mock = %server.base_url(),
                "DEEPSEEK_API_KEY is not set: serving from the embedded mock DeepSeek"
            );
            builder = builder
                .base_url(server.base_url())
                .api_key("mock-key-for-the-gateway");
            primary_base_url = server.base_url().to_owned();
            mock = Some(server);
        }
    }
    // GATEWAY_BARE (the end-to-end benchmark's baseline): the same routes with no layers.
    if config.bare {
        let app = bare_router(builder.build(config.upstream()?)?);
        tracing::info!(addr = %listener.local_addr()?, "gateway listening (bare: no layers)");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        if let Some(server) = mock {
            server.shutdown().await;
        }
        return Ok(());
    }
    let registry = prometheus::Registry::new();
    let metrics = gateway_metrics(&config, &registry)?;
    let client = builder.build(transport(
        &config,
        &primary_base_url,
        config.upstream()?,
        &metrics,
    )?)?;
    let limit = config.rate_limit.layer(&metrics)?;
    let jobs = Jobs::new(client.clone(), config.jobs.clone())?;
    let app = router(
        client,
        &metrics,
        registry,
        limit,
        config.concurrency()?,
        jobs,
    );
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    axum::serve(
        listener,
        axum::ServiceExt::<axum::extract::Request>::into_make_service(app),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    if let Some(server) = mock {
        server.shutdown().await;
    }
    Ok(())
}

/// The gateway's metrics: model labels are the configured models and DeepSeek's published
/// ones; callers choose model names, so no other name becomes a label (it is `other`).
pub fn gateway_metrics(
    config: &GatewayConfig,
    registry: &prometheus::Registry,
) -> Result<Metrics, Error> {
    let mut models: Vec<&str> = vec![
        "deepseek-v4-flash",
        "deepseek-v4-pro",
        "deepseek-chat",
        "deepseek-reasoner",
    ];
    for model in [&config.model, &config.fallback_model]
        .into_iter()
        .flatten()
    {
        if !models.contains(&model.as_str()) {
            models.push(model);
        }
    }
    Metrics::builder()
        .models(models)
        .learn_models(false)
        .prometheus(registry.clone())
        .build()
}

/// Resolves on Ctrl-C or SIGTERM, and says what happens next.
async fn shutdown_signal() {
    signal::shutdown_signal().await;
    tracing::info!("shutting down: no new connections, letting in-flight requests finish");
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = GatewayConfig::from_env()?;
    let addr = config
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e} (set GATEWAY_ADDR to change it)"))?;
    // The admin server (the CPU profile) has an address of its own: the public port never
    // serves it.
    let admin = match config.admin_listen {
        Some(admin_addr) => {
            let admin_listener = TcpListener::bind(admin_addr).await.map_err(|e| {
                format!("cannot listen on {admin_addr}: {e} (set GATEWAY_ADMIN_ADDR to change it)")
            })?;
            tracing::info!(addr = %admin_addr, "admin server listening");
            Some(tokio::spawn(admin::serve_admin(
                admin_listener,
                shutdown_signal(),
            )))
        }
        None => None,
    };
    serve(listener, config, shutdown_signal()).await?;
    if let Some(admin) = admin {
        admin.await??;
    }
    Ok(())
}
