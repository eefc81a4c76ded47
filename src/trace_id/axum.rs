//! `TraceId` as an axum extractor (feature `axum`).

use std::convert::Infallible;
use std::fmt;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use super::TraceId;

/// The request's [`TraceId`], from the request extensions (set by
/// [`TraceIdLayer`](super::TraceIdLayer) or the tonic server interceptor), else the current
/// task-local one ([`TraceId::current`]).
///
/// With neither, the app is missing the layer: the extractor rejects with
/// [`MissingTraceId`] (500, a message saying so) rather than invent an ID that nothing would
/// propagate or echo. Extract `Option<TraceId>` to get `None` instead.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_deepseek::trace_id::{TraceId, TraceIdLayer};
///
/// async fn handler(trace_id: TraceId) -> String {
///     format!("your trace ID is {trace_id}")
/// }
///
/// let app: Router = Router::new().route("/", get(handler)).layer(TraceIdLayer::new());
/// # let _ = app;
/// ```
impl<S: Send + Sync> FromRequestParts<S> for TraceId {
    type Rejection = MissingTraceId;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        from_parts(parts).ok_or(MissingTraceId)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for TraceId {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(from_parts(parts))
    }
}

fn from_parts(parts: &Parts) -> Option<TraceId> {
    parts
        .extensions
        .get::<TraceId>()
        .cloned()
        .or_else(TraceId::current)
}

/// The rejection of the [`TraceId`] extractor when no trace ID layer ran: a 500 whose body
/// says so.
///
/// ```
/// use axum::response::IntoResponse;
/// use tower_deepseek::trace_id::MissingTraceId;
///
/// let response = MissingTraceId.into_response();
/// assert_eq!(response.status(), 500);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MissingTraceId;

impl fmt::Display for MissingTraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no trace ID on this request: add tower_deepseek::trace_id::TraceIdLayer to the \
             router (Router::layer) or service stack",
        )
    }
}

impl std::error::Error for MissingTraceId {}

impl IntoResponse for MissingTraceId {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}
