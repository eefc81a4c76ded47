//! The inbound stack around the routes: trace ID, metrics, the per-caller rate limit, the
//! concurrency limit.

use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use super::config::{MAX_REQUEST_BYTES, RateLimitSettings, config_error};
use super::handlers::{chat_completions, models};
use super::jobs::{Jobs, jobs_router, operation};
use super::outbound::Client;
use super::refusal::RefusalLayer;
use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};
use tower::{Layer, ServiceBuilder};
use tower_deepseek::Error;
use tower_deepseek::concurrency::ConcurrencyLimitLayer;
use tower_deepseek::metrics::{Metrics, MetricsEndpoint, MetricsLayer};
use tower_deepseek::rate_limit::redis::{RedisFailureMode, RedisLimitEvent, RedisRateLimiter};
use tower_deepseek::rate_limit::{HeaderKey, KeyedLimiter, RateLimitLayer};
use tower_deepseek::trace_id::{TraceIdLayer, TraceIdService};

/// The gateway's routes, outermost first: the trace ID; inbound metrics per operation (never
/// the raw path), which count refused calls too; the per-caller rate limit (429 with
/// `Retry-After` and `x-ratelimit-*`); the concurrency limit (503 with `Retry-After`); the
/// API. `/metrics` (Prometheus), `/healthz` (the process answers) and `/readyz` (it has a free
/// slot) sit beside the API, outside the limits.
///
/// The trace ID wraps the whole router rather than being one more `Router::layer`: axum boxes
/// every route again for each `layer` call and clones that box (an allocation) on every
/// request. Serve it with `axum::ServiceExt::into_make_service`.
pub fn router(
    client: Client,
    metrics: &Metrics,
    registry: prometheus::Registry,
    limit: Option<InboundLimit>,
    concurrency: ConcurrencyLimitLayer,
    jobs: Jobs,
) -> TraceIdService<Router> {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        // Behind an `Arc`: axum clones the state for every request, and the client holds the
        // whole outbound stack.
        .with_state(Arc::new(client))
        // Under the same limits as the chat routes: a job is a chat completion too.
        .merge(jobs_router(jobs));
    // A refused call is the crate's error (rate limited, overloaded); its response the 429/503.
    let refused = || RefusalLayer;
    // In the one stack rather than its own `Router::layer` (see below): it only sets the limit
    // the body extractors read.
    let body_limit = || DefaultBodyLimit::max(MAX_REQUEST_BYTES);
    let slots = concurrency.clone();
    let metrics = MetricsLayer::server(metrics, "api").operation_by(operation);
    // One `Router::layer` call for the whole inbound stack and the body limit: axum boxes every
    // route again (and clones the box on every request) for each `layer` call.
    let api = match limit {
        None => api.layer(
            ServiceBuilder::new()
                .layer(metrics)
                .layer(refused())
                .layer(concurrency)
                .layer(body_limit()),
        ),
        Some(InboundLimit::Local(limit)) => api.layer(
            ServiceBuilder::new()
                .layer(metrics)
                .layer(refused())
                .layer(limit)
                .layer(refused())
                .layer(concurrency)
                .layer(body_limit()),
        ),
        Some(InboundLimit::Shared(limit)) => api.layer(
            ServiceBuilder::new()
                .layer(metrics)
                .layer(refused())
                .layer(limit)
                .layer(refused())
                .layer(concurrency)
                .layer(body_limit()),
        ),
    };
    let routes = api
        .route_service("/metrics", MetricsEndpoint::new(registry))
        .route("/healthz", get(|| ready("ok")))
        .route(
            "/readyz",
            get(move || {
                // Not ready while every slot is taken: a balancer sends the next caller elsewhere.
                ready(if slots.in_flight() < slots.limit() {
                    (http::StatusCode::OK, "ready")
                } else {
                    (http::StatusCode::SERVICE_UNAVAILABLE, "busy")
                })
            }),
        );
    // Outermost, so even a rejected body is answered under the request's trace ID.
    TraceIdLayer::new().layer(routes)
}

/// The per-caller limit, keyed by the caller's `Authorization` header.
pub enum InboundLimit {
    /// Per process (governor): a keyed hash of the header, never the key itself.
    Local(RateLimitLayer<HeaderKey, KeyedLimiter<u64>>),
    /// Shared by every replica through Redis (the key is hashed before it leaves).
    Shared(RateLimitLayer<fn(&http::Request<Body>) -> HeaderValue, RedisRateLimiter>),
}

/// The caller key of the shared limit: its `Authorization` header (callers without one share
/// one budget).
pub(crate) fn caller_key(request: &http::Request<Body>) -> HeaderValue {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("anonymous"))
}

impl RateLimitSettings {
    /// Builds the inbound limit (reporting to `metrics`); `None` when turned off. The Redis
    /// limit fails open: the gateway keeps serving while Redis is down, and says so in the log.
    pub fn layer(&self, metrics: &Metrics) -> Result<Option<InboundLimit>, Error> {
        if self.per_minute == 0 {
            return Ok(None);
        }
        let invalid = |e: Error| {
            config_error(format!(
                "the GATEWAY_RATE_LIMIT_* (`[rate_limit]`) settings are not valid: {e}"
            ))
        };
        let builder = RateLimitLayer::builder()
            .name("inbound")
            .per_minute(self.per_minute)
            .burst(self.burst)
            .listener(metrics.clone());
        let Some(url) = &self.redis_url else {
            return builder
                .build_per_api_key()
                .map(InboundLimit::Local)
                .map(Some)
                .map_err(invalid);
        };
        let shared = RedisRateLimiter::builder()
            .url(url.as_str())
            .key_prefix("tower-deepseek:gateway:inbound:")
            .quota(self.per_minute, Duration::from_secs(60))
            .burst(self.burst)
            .failure_mode(RedisFailureMode::Open)
            .listener(|event: &RedisLimitEvent| match event {
                RedisLimitEvent::Recovered => {
                    tracing::info!("Redis is back: the shared rate limit applies again")
                }
                other => tracing::warn!(
                    ?other,
                    "Redis is unavailable: calls pass without the shared rate limit"
                ),
            })
            .build()
            .map_err(|e| config_error(format!("REDIS_URL is not usable: {e}")))?;
        builder
            .build_with_backend(
                caller_key as fn(&http::Request<Body>) -> HeaderValue,
                shared,
            )
            .map(InboundLimit::Shared)
            .map(Some)
            .map_err(invalid)
    }
}
