//! Tower layers, a typed client and an embedded mock server for the DeepSeek chat API.
//!
//! Apps that call DeepSeek (`POST /chat/completions`, OpenAI-compatible) need the same
//! protection every time. This crate provides it as ordinary tower pieces that stack with
//! `ServiceBuilder` around any hyper, axum or tonic service:
//!
//! - [`deepseek`]: the API types, the incremental SSE decoder and [`DeepSeekClient`], which
//!   runs over any tower HTTP service, so the layers under it protect every call.
//! - [`upstream`] (feature `upstream`, default): the pooled HTTPS transport.
//! - [`classify`]: the one answer to "what happened?" that every layer shares.
//! - [`body`]: the response-body observer: first token, chunks, usage, how a stream ended,
//!   reported once to every layer that listens.
//! - [`circuit_breaker`]: [`CircuitBreakerLayer`](circuit_breaker::CircuitBreakerLayer), keyed
//!   per model or host, DeepSeek-aware (429 is not an outage; 401/402 stop calls for long).
//! - [`rate_limit`]: GCRA limits, global or keyed, reject or wait, token budgets reconciled
//!   with the real usage, and (feature `redis`) one limit shared by every replica.
//! - [`retry`]: retries with jittered backoff, `Retry-After`, deadlines and budgets, that never
//!   repeat output already delivered; [`timeout`]: time to headers, to the first token, the
//!   gap between chunks.
//! - [`hedge`]: hedged requests for slow non-streaming calls, bounded by a budget (off unless
//!   added).
//! - [`concurrency`]: a fixed limit that queues or sheds, and an adaptive one (AIMD, Vegas,
//!   Gradient2, Envoy's gradient); a slot lasts until the response body ends.
//! - [`metrics`]: RED and GenAI metrics (tokens, time to first chunk) with bounded labels, to an
//!   injected Prometheus registry (feature `prometheus`) or OpenTelemetry meter.
//! - [`trace_id`]: one trace ID from the edge to DeepSeek and back
//!   ([`TraceIdLayer`](trace_id::TraceIdLayer) on the server,
//!   [`PropagateTraceIdLayer`](trace_id::PropagateTraceIdLayer) under the client), with W3C
//!   `traceparent`.
//! - [`stack`]: [`DeepSeekStack`], all of the above in a documented order, in one line.
//! - [`error`]: the one [`Error`] type, whose [`ErrorKind`] says what happened and whose
//!   `Display` says what to do.
//! - `mock` (feature `mock`): [`MockDeepSeek`](crate::mock::MockDeepSeek), a real HTTP server
//!   speaking the DeepSeek API with scriptable faults, for tests and demos.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `upstream` | yes | the pooled HTTPS transport (hyper-util, rustls with ring, HTTP/1.1 + HTTP/2) |
//! | `mock` | no | the embedded mock DeepSeek server |
//! | `axum` | no | `IntoResponse` for [`Error`], in the OpenAI error shape; [`TraceId`](trace_id::TraceId) as an extractor |
//! | `tonic` | no | gRPC interceptors carrying the trace ID in metadata (`trace_id::tonic`) |
//! | `opentelemetry` | no | server and client spans joined through the OpenTelemetry propagator API (`trace_id::opentelemetry`); metrics through an OpenTelemetry meter |
//! | `prometheus` | no | the metrics layer's Prometheus exporter and `/metrics` endpoint (`metrics::MetricsEndpoint`) |
//! | `redis` | no | a rate limit shared by every replica through Redis (`rate_limit::redis`) |
//! | `pprof` | no | a CPU profile in the pprof format over HTTP, for an admin address (`profiling::ProfileEndpoint`) |
//! | `test-util` | no | the layers measure calls (durations, slow calls, latency samples) on tokio's clock, so `tokio::time::pause` moves their measurements; without it they read the CPU's time-stamp counter, about 10 ns a read instead of 26. Enable it for tests that pause time |
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
//! use tower_deepseek::upstream::Upstream;
//!
//! # async fn run() -> Result<(), tower_deepseek::Error> {
//! let transport = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(600)) // any tower layer
//!     .service(Upstream::new()?);
//! let client = DeepSeekClient::from_env(transport)?;
//! let answer = client.chat(ChatRequest::new("deepseek-v4-flash").user("Hello!")).await?;
//! println!("{}", answer.content().unwrap_or_default());
//! # Ok(())
//! # }
//! ```
//!
//! The API key never appears in `Debug` output, errors or logs: [`ApiKey`](deepseek::ApiKey)
//! redacts itself and the client scrubs it from any upstream text it keeps.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod circuit_breaker;
pub mod classify;
mod clock;
pub mod concurrency;
pub mod deepseek;
pub mod error;
pub mod failover;
pub mod hedge;
mod lanes;
mod lean_chunk;
pub mod metrics;
#[cfg(feature = "mock")]
pub mod mock;
#[cfg(feature = "pprof")]
#[cfg_attr(docsrs, doc(cfg(feature = "pprof")))]
pub mod profiling;
pub mod rate_limit;
pub mod retry;
pub mod stack;
pub mod timeout;
pub mod trace_id;
#[cfg(feature = "upstream")]
pub mod upstream;

pub use deepseek::DeepSeekClient;
pub use error::{BoxError, Error, ErrorKind};
pub use stack::DeepSeekStack;

// Compiles the README's code blocks as doctests, so the README example cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
