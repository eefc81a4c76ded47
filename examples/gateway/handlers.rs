//! The API handlers: chat completions (JSON and SSE) and the model list.
//!
//! They are generic over the client's service, so the full stack ([`Client`](super::Client))
//! and the bare upstream of the benchmark baseline ([`bare_router`](super::bare_router)) share
//! them.

use std::cell::Cell;
use std::convert::Infallible;
use std::sync::Arc;

use super::config::FALLBACK_HEADER;
use super::outbound::ANSWERED_BY;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tower::Service;
use tower_deepseek::deepseek::sse::ChatStream;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient, RequestBody};
use tower_deepseek::failover::{ServedBy, UPSTREAM_HEADER};
use tower_deepseek::{BoxError, Error, ErrorKind};

pub(crate) async fn chat_completions<S, RB>(
    State(client): State<Arc<DeepSeekClient<S>>>,
    body: Bytes,
) -> Response
where
    S: Service<http::Request<RequestBody>, Response = http::Response<RB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    RB: http_body::Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
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
    let ((mut response, answered_by), served_by) =
        ServedBy::capture(ANSWERED_BY.scope(Cell::new(None), async move {
            // The client's call futures are boxed once here: inline they would make this
            // handler's future (which axum boxes, copying all of it) as large as the whole
            // outbound stack's, and every move of it would copy them along.
            let response = if request.stream == Some(true) {
                match Box::pin(client.chat_stream(request)).await {
                    Ok(stream) => sse_response(stream),
                    Err(error) => error.into_response(),
                }
            } else {
                match Box::pin(client.chat(request)).await {
                    Ok(answer) => axum::Json(answer).into_response(),
                    Err(error) => error.into_response(),
                }
            };
            (response, ANSWERED_BY.with(Cell::take))
        }))
        .await;
    if let Some(served) = served_by {
        response.headers_mut().insert(
            HeaderName::from_static(UPSTREAM_HEADER),
            served.header_value().clone(),
        );
    }
    // Validated model names are visible ASCII, so the header value always parses.
    if let Some(value) = answered_by.and_then(|model| HeaderValue::from_str(&model).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(FALLBACK_HEADER), value);
    }
    response
}

/// Forwards the checked chunks as SSE: each chunk's `data` as DeepSeek sent it (the typed
/// stream has parsed it, so a malformed chunk never reaches the caller), not serialized again.
/// A failure mid-stream becomes a final `data: {"error":..}` event without `[DONE]`, so the
/// client sees an error rather than a short answer.
pub(crate) fn sse_response<B>(stream: ChatStream<B>) -> Response
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let events = futures_util::stream::unfold(Some(Box::pin(stream)), |state| async move {
        let mut stream = state?;
        let event = match stream.next().await {
            Some(Ok(_checked)) => {
                let event = sse_data(stream.last_data());
                return Some((Ok::<_, Infallible>(event), Some(stream)));
            }
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

/// One SSE event carrying `data` as it is.
fn sse_data(data: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(data.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(data);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

pub(crate) fn sse_event(value: &impl serde::Serialize) -> Bytes {
    let mut event = b"data: ".to_vec();
    // Serializing our own types and serde_json values cannot fail; stay well-formed if it did.
    if serde_json::to_writer(&mut event, value).is_err() {
        event.truncate(6);
        event.extend_from_slice(b"{}");
    }
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

pub(crate) async fn models<S, RB>(State(client): State<Arc<DeepSeekClient<S>>>) -> Response
where
    S: Service<http::Request<RequestBody>, Response = http::Response<RB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    RB: http_body::Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    match client.models().await {
        Ok(list) => axum::Json(list).into_response(),
        Err(error) => error.into_response(),
    }
}
