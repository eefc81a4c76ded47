//! One trace ID from the edge to DeepSeek and back, with W3C `traceparent`.
//!
//! Two layers, one on each side of the business code:
//!
//! ```text
//! caller ──x-trace-id / traceparent──► TraceIdLayer ──► handler ──► DeepSeekClient
//!                                      (read or generate,            │
//!                                       make current, echo)          ▼
//!                                                        PropagateTraceIdLayer ──► DeepSeek
//!                                                        (x-trace-id, traceparent;  x-ds-trace-id
//!                                                         records x-ds-trace-id)    ◄──┘
//! ```
//!
//! - [`TraceIdLayer`] (server side) reads the ID from `x-trace-id` (or `x-request-id`) and
//!   the W3C `traceparent` / `tracestate`, replaces an invalid one, generates one when absent,
//!   stores the [`TraceId`] in the request extensions, makes it current for the handling of
//!   the request, runs it in a `tracing` span with the field `trace_id`, and echoes it.
//! - [`PropagateTraceIdLayer`] (client side, under [`DeepSeekClient`](crate::DeepSeekClient))
//!   sends the current ID as `x-trace-id` and `traceparent` and records DeepSeek's
//!   `x-ds-trace-id` beside it ([`CallTraceIds`], span field `ds_trace_id`).
//!
//! The handler passes nothing along:
//!
//! ```
//! use std::convert::Infallible;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_deepseek::trace_id::{PropagateTraceIdLayer, TraceIdLayer};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // Stands in for the DeepSeek transport: answers with the headers it was sent.
//! let upstream = ServiceBuilder::new()
//!     .layer(PropagateTraceIdLayer::new())
//!     .service_fn(|request: http::Request<()>| async move {
//!         Ok::<_, Infallible>(http::Response::new(request.headers().clone()))
//!     });
//! let app = ServiceBuilder::new()
//!     .layer(TraceIdLayer::new())
//!     .service_fn(move |_request: http::Request<()>| {
//!         let upstream = upstream.clone();
//!         async move {
//!             // Business code: no trace IDs in sight.
//!             let sent = upstream.oneshot(http::Request::new(())).await?.into_body();
//!             Ok::<_, Infallible>(http::Response::new(sent))
//!         }
//!     });
//! let request = http::Request::builder().header("x-trace-id", "abc-123").body(()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["x-trace-id"], "abc-123"); // echoed
//! let sent_upstream = response.body();
//! assert_eq!(sent_upstream["x-trace-id"], "abc-123");
//! assert!(sent_upstream["traceparent"].to_str().unwrap().starts_with("00-"));
//! # });
//! ```
//!
//! # The ID and its W3C trace-id
//!
//! A [`TraceId`] is the text callers see (`x-trace-id`) plus the 16-byte W3C trace-id sent in
//! `traceparent`: a valid incoming `traceparent`'s trace-id; else the ID's own bytes when it is
//! a UUID or 32 hex digits; else a stable hash of the ID text (see [`TraceId`]). A generated
//! ID is a UUID, so its trace-id is the same 16 bytes. Outbound, each call gets a fresh
//! parent-id; the flags are those received, else `01` (sampled).
//!
//! # Validation
//!
//! An incoming ID is accepted when it is non-empty, at most 128 bytes (configurable) and
//! visible ASCII (`!` to `~`). A `traceparent` follows W3C: two lowercase hex digits of
//! version, `ff` invalid; version `00` exactly 55 characters; a later version may be longer
//! with a `-` after the flags; trace-id 32 lowercase hex digits not all zero; parent-id 16
//! lowercase hex digits not all zero; flags 2 lowercase hex digits; a repeated `traceparent`
//! header is invalid. `tracestate` is passed on only beside a valid `traceparent`, at most 512
//! bytes and 32 `key=value` members. Whatever is invalid is replaced or dropped, never echoed,
//! and reported in a `debug` event that names the header and the reason, not the value.
//!
//! # Across `tokio::spawn`
//!
//! The current ID is a tokio task-local: it follows the request's task through every `.await`,
//! but a task started with `tokio::spawn` starts without it ([`TraceId::current`] is `None`
//! there, and an outbound call from it gets a fresh ID). Carry it over with [`spawn`], which
//! also carries the current `tracing` span, or by hand with [`TraceId::scope`]:
//!
//! ```
//! use tower_deepseek::trace_id::{self, TraceId};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let id = TraceId::parse("abc-123").unwrap();
//! id.scope(async {
//!     let carried = trace_id::spawn(async { TraceId::current() });
//!     let plain = tokio::spawn(async { TraceId::current() });
//!     assert_eq!(carried.await.unwrap().unwrap().as_str(), "abc-123");
//!     assert!(plain.await.unwrap().is_none());
//! })
//! .await;
//! # });
//! ```
//!
//! `spawn_blocking` and threads are the same: take [`TraceId::current`] before, and use
//! [`TraceId::sync_scope`] inside.
//!
//! # Limits
//!
//! - A streamed response body (SSE) is polled by the server after the handler's future has
//!   finished, so code that runs while the body streams is outside the scope and the span. The
//!   DeepSeek call the stream reads from was sent from inside it and carries the ID.
//! - The outbound layer reads the current ID in `call`: a client whose `call` runs on another
//!   task (e.g. behind `tower::buffer::Buffer`) must have the layer above the buffer.
//!
//! # Integrations
//!
//! | feature | what |
//! |---|---|
//! | `axum` | `TraceId` is an extractor (`FromRequestParts`), and `Option<TraceId>` too |
//! | `tonic` | `tonic::ClientTraceIdInterceptor` and `tonic::ServerTraceIdInterceptor` |
//! | `opentelemetry` | `opentelemetry::OtelServerLayer` and `opentelemetry::OtelClientLayer`: spans and W3C context through the OpenTelemetry propagator API |

mod generate;
mod id;
mod inbound;
mod outbound;
mod w3c;

#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "opentelemetry")]
pub mod opentelemetry;
#[cfg(feature = "tonic")]
pub mod tonic;

use std::future::Future;

use http::HeaderName;
use tracing::Instrument;

pub use generate::{MakeTraceId, UuidV4, UuidV7};
pub use id::{DEFAULT_MAX_LEN, InvalidTraceId, TraceId, TraceIdStr};
pub use inbound::{TraceIdFuture, TraceIdLayer, TraceIdLayerBuilder, TraceIdService};
pub use outbound::{
    CallTraceIds, PropagateTraceId, PropagateTraceIdFuture, PropagateTraceIdLayer,
    PropagateTraceIdLayerBuilder,
};
pub use w3c::{TRACEPARENT, TRACESTATE, W3cTraceId};

#[cfg(feature = "axum")]
pub use self::axum::MissingTraceId;

/// The default ID header, `x-trace-id`.
pub const TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");
/// The ID header accepted when `x-trace-id` is absent, `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// DeepSeek's own trace ID response header, `x-ds-trace-id`.
pub const DS_TRACE_ID: HeaderName = HeaderName::from_static("x-ds-trace-id");

tokio::task_local! {
    /// The trace ID of the request this task is handling.
    static CURRENT: TraceId;
}

/// Whether a span made now could be seen by anyone: a `tracing` dispatcher exists (global or
/// scoped), or a `log` logger listens (tracing's `log` feature logs spans while no dispatcher
/// exists). Without either, a span costs a trip through that `log` path at its creation, every
/// enter and exit, and its close, for nothing; the layers use `Span::none()` then.
pub(crate) fn spans_visible() -> bool {
    tracing::dispatcher::has_been_set() || log::max_level() != log::LevelFilter::Off
}

/// `tokio::spawn` that carries the current [`TraceId`] and `tracing` span into the new task.
///
/// Without a current ID it is `tokio::spawn` with the span. The spawned task keeps the span
/// open until it ends, even after the request has been answered.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let future = future.instrument(tracing::Span::current());
    match TraceId::current() {
        Some(id) => tokio::spawn(async move { id.scope(future).await }),
        None => tokio::spawn(future),
    }
}
