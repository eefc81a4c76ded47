//! The tower-deepseek gateway: an OpenAI-compatible proxy in front of DeepSeek.
//!
//! ```text
//! cargo run --example gateway --all-features
//! ```
//!
//! It forwards `POST /v1/chat/completions` (streaming and not) and `GET /v1/models` to DeepSeek
//! through the crate's typed client and pooled upstream. Any OpenAI-compatible client works
//! against it unchanged, errors included: DeepSeek's errors come back in the OpenAI error shape
//! with the upstream status. It also serves `/metrics` (Prometheus text format), `/healthz` and
//! `/readyz`.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `GATEWAY_ADDR` | address to listen on | `127.0.0.1:8080` |
//! | `DEEPSEEK_API_KEY` | the DeepSeek key; unset: serve from the embedded mock DeepSeek | unset |
//! | `DEEPSEEK_BASE_URL` | the upstream base URL | `https://api.deepseek.com` |
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
//! | `GATEWAY_MAX_IN_FLIGHT` | requests served at once (a stream counts until it ends) | `512` |
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
//! Outbound, under the [`DeepSeekClient`], outermost first:
//!
//! ```text
//! PropagateTraceId ─► Metrics (client) ─► Retry ─► note_fallback ─► CircuitBreaker per model
//!                                                    (fallback: ModelFallback) ─► StreamTimeout ─► Upstream
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
//! - The stream timeouts sit under the breakers, so a silent upstream counts as a failure.
//! - One breaker per model ([`KeyedCircuitBreakerLayer`] keyed by the [`RequestModel`] the
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

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Future, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::util::MapResponse;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_deepseek::circuit_breaker::{
    CircuitBreaker, CircuitBreakerBody, CircuitBreakerBuilder, Fallback, FallbackResponse,
    KeyedCircuitBreakerLayer, KeyedCircuitBreakerService, MAX_COUNT_WINDOW, SlidingWindow,
};
use tower_deepseek::concurrency::ConcurrencyLimitLayer;
use tower_deepseek::deepseek::{ChatChunk, ChatRequest, DeepSeekClient, RequestBody, RequestModel};
use tower_deepseek::error::CircuitOpenReason;
use tower_deepseek::metrics::{
    Metrics, MetricsEndpoint, MetricsLayer, MetricsService, operation_from_path,
};
use tower_deepseek::mock::MockDeepSeek;
use tower_deepseek::rate_limit::redis::{RedisFailureMode, RedisLimitEvent, RedisRateLimiter};
use tower_deepseek::rate_limit::{HeaderKey, KeyedLimiter, RateLimitLayer};
use tower_deepseek::retry::{Hold, RetryLayer, RetryService, TpsBudget};
use tower_deepseek::timeout::{StreamTimeout, StreamTimeoutLayer, TimeoutBody};
use tower_deepseek::trace_id::{PropagateTraceId, PropagateTraceIdLayer, TraceIdLayer};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{BoxError, Error, ErrorKind};

/// Largest request body the gateway accepts.
const MAX_REQUEST_BYTES: usize = 8 << 20;

/// The most breakers kept (one per model name seen); see the module docs.
pub const MAX_BREAKERS: usize = 64;

/// The response header that says a fallback model answered (its value: that model).
pub const FALLBACK_HEADER: &str = "x-fallback-model";

/// The gateway's settings, read and validated at start-up. `Default` is mock mode with the
/// default breaker settings and no fallback model.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Where to listen.
    pub listen: Option<SocketAddr>,
    /// The DeepSeek key; `None` starts the embedded mock.
    pub api_key: Option<String>,
    /// The upstream base URL.
    pub base_url: Option<String>,
    /// The default model.
    pub model: Option<String>,
    /// The model that answers while the breaker is open; `None`: refused calls get a 503.
    pub fallback_model: Option<String>,
    /// The circuit breaker's settings.
    pub breaker: BreakerSettings,
    /// Retries and the stream timeouts.
    pub resilience: ResilienceSettings,
    /// The per-caller rate limit.
    pub rate_limit: RateLimitSettings,
    /// Requests served at once (a stream counts until it ends); more wait up to a second in a
    /// bounded queue, then get a 503 with `Retry-After`.
    pub max_in_flight: u32,
}

/// The default of [`GatewayConfig::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 512;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: None,
            api_key: None,
            base_url: None,
            model: None,
            fallback_model: None,
            breaker: BreakerSettings::default(),
            resilience: ResilienceSettings::default(),
            rate_limit: RateLimitSettings::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

impl GatewayConfig {
    /// The inbound concurrency limit (reporting nothing: its gauge is `/readyz`).
    pub fn concurrency(&self) -> Result<ConcurrencyLimitLayer, Error> {
        ConcurrencyLimitLayer::builder()
            .name("inbound")
            .max_in_flight(self.max_in_flight as usize)
            .max_wait(Duration::from_secs(1))
            .max_queue(self.max_in_flight as usize)
            .build()
            .map_err(|e| config_error(format!("GATEWAY_MAX_IN_FLIGHT is not valid: {e}")))
    }
}

/// Retries and stream timeouts (see the module docs for the variables).
#[derive(Clone, Debug, PartialEq)]
pub struct ResilienceSettings {
    /// Attempts per call, the first included; `1` turns retries off.
    pub max_attempts: u32,
    /// Longest wait for DeepSeek's response headers, per attempt.
    pub headers_timeout: Duration,
    /// Longest wait for the first token of an answer (keep-alives do not count).
    pub first_token_timeout: Duration,
    /// Longest silence between two chunks once the answer has started.
    pub idle_timeout: Duration,
}

impl Default for ResilienceSettings {
    fn default() -> Self {
        ResilienceSettings {
            max_attempts: 3,
            headers_timeout: Duration::from_secs(60),
            // DeepSeek keeps a queued request alive with keep-alives for up to 10 minutes.
            first_token_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The limit on each caller (keyed by its `Authorization` header).
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitSettings {
    /// Requests per minute per caller; `0` turns the limit off.
    pub per_minute: u32,
    /// How many requests a caller may send at once after a quiet spell.
    pub burst: u32,
    /// A Redis URL: the limit is shared by every replica through it; `None`: per process.
    pub redis_url: Option<String>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            per_minute: 600,
            burst: 60,
            redis_url: None,
        }
    }
}

/// The gateway's circuit-breaker settings (see the module docs for the variables).
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    /// Failure rate, percent in `(0, 100]`, that opens the breaker.
    pub failure_rate: f32,
    /// Calls in the window before the failure rate counts.
    pub minimum_calls: u32,
    /// The sliding window, in calls.
    pub window_calls: u32,
    /// How long the breaker stays open before a trial call.
    pub open_wait: Duration,
    /// How long a 401/402 stops all calls; `None` turns the fatal state off.
    pub fatal_wait: Option<Duration>,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_rate: 50.0,
            minimum_calls: 20,
            window_calls: 100,
            open_wait: Duration::from_secs(30),
            fatal_wait: Some(Duration::from_secs(30 * 60)),
        }
    }
}

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// Parses `name`'s value with `parse` when set; `what` describes a valid value.
fn parsed<T>(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, Error> {
    match var(name) {
        Some(text) => match parse(text.trim()) {
            Some(value) => Ok(Some(value)),
            None => Err(config_error(format!("{name}={text:?} is not {what}"))),
        },
        None => Ok(None),
    }
}

/// Seconds, decimals allowed, in `[0, 1 day]`.
fn seconds(text: &str) -> Option<Duration> {
    let secs: f64 = text.parse().ok()?;
    (secs.is_finite() && (0.0..=86_400.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

impl BreakerSettings {
    /// Validates the settings and builds the per-model breaker layer; an error names the
    /// variable.
    pub fn layer(&self, metrics: &Metrics) -> Result<BreakerLayer, Error> {
        KeyedCircuitBreakerLayer::new(
            breaker_key as fn(&http::Request<RequestBody>) -> RequestModel,
            self.template()?.listener(metrics.clone()),
            MAX_BREAKERS,
        )
        .map_err(|e| config_error(format!("the GATEWAY_BREAKER_* settings are not valid: {e}")))
    }

    /// Validates the settings and returns each model's breaker configuration.
    fn template(&self) -> Result<CircuitBreakerBuilder, Error> {
        let BreakerSettings {
            failure_rate,
            minimum_calls,
            window_calls,
            open_wait,
            fatal_wait,
        } = self.clone();
        if !(failure_rate > 0.0 && failure_rate <= 100.0) {
            return Err(config_error(format!(
                "GATEWAY_BREAKER_FAILURE_RATE must be a percentage in (0, 100], not {failure_rate}"
            )));
        }
        if minimum_calls == 0 {
            return Err(config_error(
                "GATEWAY_BREAKER_MINIMUM_CALLS must be at least 1".to_owned(),
            ));
        }
        if window_calls == 0 || window_calls > MAX_COUNT_WINDOW {
            return Err(config_error(format!(
                "GATEWAY_BREAKER_WINDOW must be between 1 and {MAX_COUNT_WINDOW} calls, not {window_calls}"
            )));
        }
        if open_wait.is_zero() {
            return Err(config_error(
                "GATEWAY_BREAKER_OPEN_WAIT must be more than 0 seconds".to_owned(),
            ));
        }
        let mut builder = CircuitBreaker::builder()
            .failure_rate_threshold(failure_rate)
            .minimum_calls(minimum_calls)
            .sliding_window(SlidingWindow::Count {
                calls: window_calls,
            })
            .open_wait(open_wait);
        builder = match fatal_wait {
            Some(wait) if !wait.is_zero() => builder.fatal_wait(wait),
            _ => builder.no_fatal_state(),
        };
        Ok(builder)
    }
}

impl ResilienceSettings {
    /// Validates the settings and builds the retry (reporting to `metrics`) and stream-timeout
    /// layers.
    pub fn layers(&self, metrics: &Metrics) -> Result<(RetryLayer, StreamTimeoutLayer), Error> {
        let named = |what: &'static str| {
            move |e: Error| config_error(format!("the {what} settings are not valid: {e}"))
        };
        let timeouts = StreamTimeoutLayer::builder()
            .headers(self.headers_timeout)
            .first_token(self.first_token_timeout)
            .idle(self.idle_timeout)
            .build()
            .map_err(named("GATEWAY_*_TIMEOUT"))?;
        let retry = RetryLayer::builder()
            .name("deepseek")
            .max_attempts(self.max_attempts)
            // Every attempt may wait out its first-token timeout; past this, give up.
            .deadline(self.first_token_timeout * 2 + self.headers_timeout)
            // At most about 20 % extra calls (and 10 a second) while DeepSeek is failing.
            .budget(TpsBudget::default())
            // The client reads JSON answers whole anyway: holding them lets an answer stopped
            // by `insufficient_system_resource` be retried before the caller sees it.
            .hold(Hold::All)
            .listener(metrics.clone())
            .build()
            .map_err(named("GATEWAY_RETRY_*"))?;
        Ok((retry, timeouts))
    }
}

/// The breaker key of an outbound request: its model (an `Arc` bump, no allocation), or
/// `models` for `GET /models`, which names none.
fn breaker_key(request: &http::Request<RequestBody>) -> RequestModel {
    request
        .extensions()
        .get::<RequestModel>()
        .cloned()
        .unwrap_or_else(|| RequestModel::new("models"))
}

/// A model name fit for a request body and a header: 1 to 128 visible ASCII characters.
fn valid_model(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic())
}

impl GatewayConfig {
    /// Reads the environment; a value that does not parse is an error naming the variable.
    pub fn from_env() -> Result<GatewayConfig, Error> {
        GatewayConfig::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a map in tests) and validates
    /// them; a blank value counts as unset.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<GatewayConfig, Error> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let listen = match var("GATEWAY_ADDR") {
            Some(text) => Some(text.trim().parse().map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("GATEWAY_ADDR={text:?} is not a socket address like 127.0.0.1:8080"),
                )
                .with_source(e)
            })?),
            None => None,
        };
        let fallback_model = var("GATEWAY_FALLBACK_MODEL").map(|m| m.trim().to_owned());
        if let Some(model) = &fallback_model
            && !valid_model(model)
        {
            return Err(config_error(format!(
                "GATEWAY_FALLBACK_MODEL={model:?} is not a model name (1 to 128 visible ASCII characters)"
            )));
        }
        let defaults = BreakerSettings::default();
        let breaker = BreakerSettings {
            failure_rate: parsed(
                &var,
                "GATEWAY_BREAKER_FAILURE_RATE",
                "a percentage like 50",
                |t| t.parse().ok(),
            )?
            .unwrap_or(defaults.failure_rate),
            minimum_calls: parsed(
                &var,
                "GATEWAY_BREAKER_MINIMUM_CALLS",
                "a whole number of calls",
                |t| t.parse().ok(),
            )?
            .unwrap_or(defaults.minimum_calls),
            window_calls: parsed(
                &var,
                "GATEWAY_BREAKER_WINDOW",
                "a whole number of calls",
                |t| t.parse().ok(),
            )?
            .unwrap_or(defaults.window_calls),
            open_wait: parsed(
                &var,
                "GATEWAY_BREAKER_OPEN_WAIT",
                "a number of seconds between 0 and 86400",
                seconds,
            )?
            .unwrap_or(defaults.open_wait),
            fatal_wait: match parsed(
                &var,
                "GATEWAY_BREAKER_FATAL_WAIT",
                "a number of seconds between 0 and 86400",
                seconds,
            )? {
                Some(wait) => (!wait.is_zero()).then_some(wait),
                None => defaults.fatal_wait,
            },
        };
        // Validated now, so a bad value stops the start-up rather than the first request.
        breaker.template()?;
        let resilience_defaults = ResilienceSettings::default();
        let timeout = |name: &str, default: Duration| {
            parsed(
                &var,
                name,
                "a number of seconds between 0 and 86400",
                seconds,
            )
            .map(|value| value.unwrap_or(default))
        };
        let resilience = ResilienceSettings {
            max_attempts: parsed(
                &var,
                "GATEWAY_RETRY_MAX_ATTEMPTS",
                "a whole number of attempts from 1 to 5",
                |t| t.parse().ok().filter(|n| (1..=5).contains(n)),
            )?
            .unwrap_or(resilience_defaults.max_attempts),
            headers_timeout: timeout(
                "GATEWAY_HEADERS_TIMEOUT",
                resilience_defaults.headers_timeout,
            )?,
            first_token_timeout: timeout(
                "GATEWAY_FIRST_TOKEN_TIMEOUT",
                resilience_defaults.first_token_timeout,
            )?,
            idle_timeout: timeout("GATEWAY_IDLE_TIMEOUT", resilience_defaults.idle_timeout)?,
        };
        resilience.layers(&Metrics::builder().build()?)?;
        let limit_defaults = RateLimitSettings::default();
        let rate_limit = RateLimitSettings {
            per_minute: parsed(
                &var,
                "GATEWAY_RATE_LIMIT_PER_MINUTE",
                "a whole number of requests per minute (0: no limit)",
                |t| t.parse().ok(),
            )?
            .unwrap_or(limit_defaults.per_minute),
            burst: parsed(
                &var,
                "GATEWAY_RATE_LIMIT_BURST",
                "a whole number of requests, at least 1",
                |t| t.parse().ok().filter(|n| *n >= 1),
            )?
            .unwrap_or(limit_defaults.burst),
            redis_url: var("REDIS_URL"),
        };
        // The local limit checks the numbers; a Redis URL is checked when the gateway starts.
        RateLimitSettings {
            redis_url: None,
            ..rate_limit.clone()
        }
        .layer(&Metrics::builder().build()?)?;
        let max_in_flight = parsed(
            &var,
            "GATEWAY_MAX_IN_FLIGHT",
            "a whole number of requests, at least 1",
            |t| t.parse().ok().filter(|n| *n >= 1),
        )?
        .unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        Ok(GatewayConfig {
            listen,
            api_key: var("DEEPSEEK_API_KEY"),
            base_url: var("DEEPSEEK_BASE_URL"),
            model: var("DEEPSEEK_MODEL"),
            fallback_model,
            breaker,
            resilience,
            rate_limit,
            max_in_flight,
        })
    }
}

/// The per-model breaker layer, answered by [`ModelFallback`] while a model's breaker is open.
pub type BreakerLayer =
    KeyedCircuitBreakerLayer<fn(&http::Request<RequestBody>) -> RequestModel, RequestModel>;

/// The upstream with the stream timeouts.
pub type TimedUpstream = StreamTimeout<Upstream>;

/// The breakers' service: the upstream, answered by [`ModelFallback`] while open.
pub type Breaker = KeyedCircuitBreakerService<
    TimedUpstream,
    fn(&http::Request<RequestBody>) -> RequestModel,
    RequestModel,
    ModelFallback,
>;

/// A response from the breaker.
pub type BreakerResponse = http::Response<CircuitBreakerBody<TimeoutBody<Incoming>>>;

/// The outbound stack under the client (see the module docs for the order).
pub type Transport = PropagateTraceId<
    MetricsService<RetryService<MapResponse<Breaker, fn(BreakerResponse) -> BreakerResponse>>>,
>;

/// The gateway's DeepSeek client: the pooled upstream under the outbound stack.
pub type Client = DeepSeekClient<Transport>;

/// The breaker's fallback: re-sends a refused chat completion with its `model` rewritten to
/// the fallback model. Refusals it cannot help with (no fallback model, the fatal state, a
/// request without a JSON `model`) stay the circuit-open error.
#[derive(Clone, Debug)]
pub struct ModelFallback {
    model: Option<Arc<str>>,
    upstream: TimedUpstream,
}

/// Set on a fallback's answer: the model that answered.
#[derive(Clone, Debug)]
struct AnsweredBy(Arc<str>);

impl Fallback<http::Request<RequestBody>, TimeoutBody<Incoming>> for ModelFallback {
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<TimeoutBody<Incoming>>, Error>> + Send>>;

    fn fallback(&mut self, request: http::Request<RequestBody>, rejection: Error) -> Self::Future {
        let helps = matches!(
            rejection.kind(),
            ErrorKind::CircuitOpen(CircuitOpenReason::Unhealthy | CircuitOpenReason::Forced)
        );
        let refused_model = request.extensions().get::<RequestModel>();
        let Some(model) = self
            .model
            .clone()
            .filter(|model| helps && refused_model.is_none_or(|m| m.as_str() != &**model))
        else {
            return Box::pin(ready(Err(rejection)));
        };
        if request.method() != Method::POST {
            return Box::pin(ready(Err(rejection)));
        }
        let upstream = self.upstream.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let Some(body) = with_model(&bytes, &model) else {
                return Err(rejection);
            };
            tracing::debug!(%model, "circuit breaker open: the fallback model answers");
            let request = http::Request::from_parts(parts, Full::new(body));
            let mut response = upstream.oneshot(request).await?;
            response.extensions_mut().insert(AnsweredBy(model));
            Ok(response)
        })
    }
}

/// `body` (a JSON object with a `model`) with its model replaced.
fn with_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let slot = json.as_object_mut()?.get_mut("model")?;
    *slot = serde_json::Value::String(model.to_owned());
    serde_json::to_vec(&json).ok().map(Bytes::from)
}

tokio::task_local! {
    /// The model that answered the current handler's call in place of the breaker's upstream.
    static ANSWERED_BY: Cell<Option<Arc<str>>>;
}

/// Hands the breaker's [`FallbackResponse`] mark to the handler running this call: the typed
/// client returns parsed answers, so the handler cannot read the response's extensions.
fn note_fallback(response: BreakerResponse) -> BreakerResponse {
    if let Some(mark) = response.extensions().get::<FallbackResponse>() {
        let model = response
            .extensions()
            .get::<AnsweredBy>()
            .map(|m| Arc::clone(&m.0));
        tracing::debug!(breaker = %mark.breaker, ?model, "answered by the fallback");
        // Outside a handler's scope (no one to tell) there is nothing to do.
        let _ = ANSWERED_BY.try_with(|slot| slot.set(model));
    }
    response
}

/// Builds the outbound stack over `upstream` (order and reasons in the module docs).
pub fn transport(
    config: &GatewayConfig,
    upstream: Upstream,
    metrics: &Metrics,
) -> Result<Transport, Error> {
    if let Some(model) = &config.fallback_model
        && !valid_model(model)
    {
        return Err(config_error(format!(
            "the fallback model {model:?} is not a model name (1 to 128 visible ASCII characters)"
        )));
    }
    let (retry, timeouts) = config.resilience.layers(metrics)?;
    let upstream = timeouts.layer(upstream);
    let fallback = ModelFallback {
        model: config.fallback_model.as_deref().map(Arc::from),
        upstream: upstream.clone(),
    };
    let breaker = config.breaker.layer(metrics)?.with_fallback(fallback);
    Ok(ServiceBuilder::new()
        // Outermost: a re-sent (fallback) request carries the same trace ID.
        .layer(PropagateTraceIdLayer::new())
        // Above the breaker: a refused call counts as `rejected`, a fallback answer as the
        // model that answered.
        .layer(MetricsLayer::client(metrics))
        // Outside the breaker: the breaker sees every attempt, and an open breaker's refusal
        // (or its fallback's answer) is final.
        .layer(retry)
        .map_response(note_fallback as fn(BreakerResponse) -> BreakerResponse)
        .layer(breaker)
        .service(upstream))
}

/// Serves the gateway on `listener` until `shutdown` completes, then lets in-flight requests
/// (streams included) finish.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let mut builder = DeepSeekClient::builder();
    if let Some(model) = &config.model {
        builder = builder.default_model(model);
    }
    // Kept alive for as long as the gateway serves.
    let mut mock = None;
    match &config.api_key {
        Some(key) => {
            builder = builder.api_key(key.as_str());
            if let Some(url) = &config.base_url {
                builder = builder.base_url(url);
            }
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
            mock = Some(server);
        }
    }
    let registry = prometheus::Registry::new();
    let metrics = gateway_metrics(&config, &registry)?;
    let client = builder.build(transport(&config, Upstream::new()?, &metrics)?)?;
    let limit = config.rate_limit.layer(&metrics)?;
    let app = router(client, &metrics, registry, limit, config.concurrency()?);
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    axum::serve(listener, app)
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

/// The gateway's routes, outermost first: the trace ID; inbound metrics per operation (never
/// the raw path), which count refused calls too; the per-caller rate limit (429 with
/// `Retry-After` and `x-ratelimit-*`); the concurrency limit (503 with `Retry-After`); the
/// API. `/metrics` (Prometheus), `/healthz` (the process answers) and `/readyz` (it has a free
/// slot) sit beside the API, outside the limits.
pub fn router(
    client: Client,
    metrics: &Metrics,
    registry: prometheus::Registry,
    limit: Option<InboundLimit>,
    concurrency: ConcurrencyLimitLayer,
) -> Router {
    let mut api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(client);
    // A refused call is the crate's error (rate limited, overloaded); its response the 429/503.
    let refused = || HandleErrorLayer::new(|error: Error| ready(error.into_response()));
    let slots = concurrency.clone();
    api = api.layer(ServiceBuilder::new().layer(refused()).layer(concurrency));
    api = match limit {
        None => api,
        Some(InboundLimit::Local(layer)) => {
            api.layer(ServiceBuilder::new().layer(refused()).layer(layer))
        }
        Some(InboundLimit::Shared(layer)) => {
            api.layer(ServiceBuilder::new().layer(refused()).layer(layer))
        }
    };
    api.layer(MetricsLayer::server(metrics, "api").operation_by(operation_from_path))
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
        )
        // Outermost, so even a rejected body is answered under the request's trace ID.
        .layer(TraceIdLayer::new())
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
fn caller_key(request: &http::Request<Body>) -> HeaderValue {
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
                "the GATEWAY_RATE_LIMIT_* settings are not valid: {e}"
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

async fn chat_completions(State(client): State<Client>, body: Bytes) -> Response {
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return Error::new(
                ErrorKind::InvalidRequest,
                format!("the body is not a chat completion request: {e}"),
            )
            .into_response();
        }
    };
    let (mut response, answered_by) = ANSWERED_BY
        .scope(Cell::new(None), async move {
            let response = if request.stream == Some(true) {
                match client.chat_stream(request).await {
                    Ok(stream) => sse_response(stream),
                    Err(error) => error.into_response(),
                }
            } else {
                match client.chat(request).await {
                    Ok(answer) => axum::Json(answer).into_response(),
                    Err(error) => error.into_response(),
                }
            };
            (response, ANSWERED_BY.with(Cell::take))
        })
        .await;
    // Validated model names are visible ASCII, so the header value always parses.
    if let Some(value) = answered_by.and_then(|model| HeaderValue::from_str(&model).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(FALLBACK_HEADER), value);
    }
    response
}

/// Re-frames typed chunks as SSE. A failure mid-stream becomes a final `data: {"error":..}`
/// event without `[DONE]`, so the client sees an error rather than a short answer.
fn sse_response<S>(stream: S) -> Response
where
    S: futures_util::Stream<Item = Result<ChatChunk, Error>> + Send + 'static,
{
    let events = futures_util::stream::unfold(Some(Box::pin(stream)), |state| async move {
        let mut stream = state?;
        let event = match stream.next().await {
            Some(Ok(chunk)) => return Some((Ok::<_, Infallible>(sse_event(&chunk)), Some(stream))),
            Some(Err(error)) => {
                tracing::warn!(%error, "upstream stream failed");
                sse_event(&error.to_openai_json())
            }
            None => Bytes::from_static(b"data: [DONE]\n\n"),
        };
        Some((Ok(event), None))
    });
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn sse_event(value: &impl serde::Serialize) -> Bytes {
    let mut event = b"data: ".to_vec();
    // Serializing our own types and serde_json values cannot fail; stay well-formed if it did.
    if serde_json::to_writer(&mut event, value).is_err() {
        event.truncate(6);
        event.extend_from_slice(b"{}");
    }
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

async fn models(State(client): State<Client>) -> Response {
    match client.models().await {
        Ok(list) => axum::Json(list).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Resolves on Ctrl-C (or SIGTERM on Unix).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
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
    serve(listener, config, shutdown_signal()).await
}
