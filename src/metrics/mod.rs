//! Metrics: request (RED) and GenAI metrics for both sides of a gateway, and the other
//! layers' events, exported to an injected Prometheus registry (feature `prometheus`) and/or
//! an injected OpenTelemetry meter (feature `opentelemetry`).
//!
//! For LLM traffic the numbers that matter are tokens and the time to the first token, not
//! only requests. [`MetricsLayer`] measures each call from `call` to the end of its response
//! body (a stream's end, not its head), observing the body as frames pass without buffering
//! it ([`crate::body`]).
//!
//! # What is exported (Prometheus names; default prefix `deepseek`)
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `<prefix>_requests_total` | counter | `side`, `operation`, `model`, `outcome` |
//! | `<prefix>_request_duration_seconds` | histogram, 10 ms … 600 s | same |
//! | `<prefix>_requests_in_flight` | gauge | `side`, `operation`, `model` |
//! | `<prefix>_auth_failures_total` | counter | `side`, `reason` (`invalid_key` = 401, `insufficient_balance` = 402) |
//! | `gen_ai_client_operation_duration_seconds` | histogram | `gen_ai_operation_name`, `gen_ai_provider_name` (`deepseek`), `gen_ai_request_model`, `gen_ai_response_model`, `error_type` (empty on success) |
//! | `gen_ai_client_token_usage` | histogram, 1 … 4⁷·4 tokens | the four GenAI labels + `gen_ai_token_type` (`input`, `output`, `cached_input`, `reasoning`) |
//! | `gen_ai_client_operation_time_to_first_chunk_seconds` | histogram (streams) | the four GenAI labels |
//! | `gen_ai_client_operation_time_per_output_chunk_seconds` | histogram (streams, each chunk after the first) | the four GenAI labels |
//! | `<prefix>_circuit_breaker_state` | gauge, 1 for the current state | `breaker`, `state` |
//! | `<prefix>_circuit_breaker_transitions_total` | counter | `breaker`, `from`, `to` |
//! | `<prefix>_circuit_breaker_not_permitted_calls_total` | counter | `breaker`, `state` |
//! | `<prefix>_rate_limit_rejections_total` | counter | `limiter` |
//! | `<prefix>_rate_limit_wait_seconds` | histogram | `limiter` |
//! | `<prefix>_retry_attempts_total` | counter | `outcome` |
//! | `<prefix>_retry_budget_exhausted_total`, `<prefix>_retries_gave_up_total` | counter | |
//! | `<prefix>_failovers_total` | counter | `from`, `to` (upstream names), `reason` (`circuit_open`, `overloaded` or an outcome class) |
//! | `<prefix>_hedges_total` | counter | `outcome` (`sent`, `won`, `budget_exhausted`) |
//!
//! The GenAI names follow the OpenTelemetry GenAI semantic conventions
//! (`gen_ai.client.operation.duration`, `gen_ai.client.token.usage`,
//! `gen_ai.client.operation.time_to_first_chunk`, `gen_ai.client.operation.time_per_output_chunk`)
//! with dots as underscores and the unit as a suffix; the OpenTelemetry exporter uses the
//! dotted names. `outcome` is the class of the [`classify`](crate::classify) outcome
//! ([`Outcome::as_str`](crate::classify::Outcome::as_str)), never a raw status.
//!
//! Usage comes from a non-streaming body (a lean scan of its `model` and `usage` fields) or
//! from a stream's final chunk. `cached_input` is DeepSeek's `prompt_cache_hit_tokens` (part
//! of `input`), `reasoning` is `completion_tokens_details.reasoning_tokens` (part of
//! `output`); a zero breakdown is not recorded. The response model is the body's `model` (a
//! stream's first chunk that has one); without one it is the request model. A stream that
//! ends early records its duration, time to first chunk and chunk gaps, with outcome
//! `stream_error`; the usage it never received is not guessed.
//!
//! # Bounded labels
//!
//! Model labels are the configured models ([`MetricsBuilder::models`]), then the first models
//! seen, up to [`MetricsBuilder::max_models`]; every other model is `other` (10 000 distinct
//! names give at most `max_models + 1` series per label set). A value longer than 64 bytes,
//! outside `A-Za-z0-9._-:/`, or starting with `sk-` (an API key) is always `other`. Operations
//! are fixed names, never paths; breakers and limiters are bounded the same way. Series are
//! resolved once per label combination and cached, so a call touches only atomics.
//!
//! # Wiring
//!
//! ```
//! # #[cfg(feature = "prometheus")]
//! # fn main() -> Result<(), tower_deepseek::Error> {
//! use tower::ServiceBuilder;
//! use tower_deepseek::circuit_breaker::CircuitBreaker;
//! use tower_deepseek::metrics::{Metrics, MetricsEndpoint, MetricsLayer};
//!
//! let registry = prometheus::Registry::new();
//! let metrics = Metrics::builder()
//!     .models(["deepseek-v4-flash", "deepseek-v4-pro"])
//!     .prometheus(registry.clone())
//!     .build()?;
//! // The breaker reports its state and transitions to the same handle.
//! let breaker = CircuitBreaker::builder().name("deepseek").listener(metrics.clone()).build()?;
//! metrics.breaker_state("deepseek", breaker.state());
//! // Outbound: under the DeepSeek client. Inbound: in the server stack.
//! let outbound = ServiceBuilder::new().layer(MetricsLayer::client(&metrics));
//! let inbound = ServiceBuilder::new().layer(MetricsLayer::server(&metrics, "chat"));
//! // Exposition: axum `Router::route_service("/metrics", endpoint)`, or hyper directly.
//! let endpoint = MetricsEndpoint::new(registry).path("/metrics");
//! # let _ = (outbound, inbound, endpoint);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "prometheus"))]
//! # fn main() {}
//! ```

#[cfg(feature = "prometheus")]
mod cells;
#[cfg(feature = "prometheus")]
mod handler;
mod instruments;
mod labels;
mod layer;
#[cfg(feature = "opentelemetry")]
mod opentelemetry;
#[cfg(feature = "prometheus")]
mod prometheus;
pub(crate) mod scan;

#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub use handler::MetricsEndpoint;
pub use instruments::{
    CHUNK_BUCKETS, DURATION_BUCKETS, MAX_TABLE, Metrics, MetricsBuilder, PROVIDER, Side,
    TOKEN_BUCKETS, WAIT_BUCKETS,
};
pub use layer::{
    MetricsBody, MetricsLayer, MetricsObserver, MetricsService, OperationFn, ResponseFuture,
    operation_from_path,
};

#[cfg(test)]
mod tests;
