//! The bare gateway (`GATEWAY_BARE=1`): the same API routes and handlers over the plain pooled
//! upstream, with none of the crate's layers. It is the baseline of the end-to-end benchmark
//! (`bench/e2e.sh`), so the difference to the full gateway is the cost of the stack.

use std::future::ready;
use std::sync::Arc;

use super::config::MAX_REQUEST_BYTES;
use super::handlers::{chat_completions, models};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower_deepseek::deepseek::DeepSeekClient;
use tower_deepseek::upstream::Upstream;

/// The gateway's API routes (and `/healthz`, for start-up checks) with no layers: no trace
/// ID, metrics, rate or concurrency limit, timeouts, retry or circuit breaker. Only the
/// request body limit stays (it is axum's extractor setting, not a middleware), so both
/// gateways accept the same requests.
pub fn bare_router(client: DeepSeekClient<Upstream>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        // Behind an `Arc`: axum clones the state for every request, and the client holds the
        // whole outbound stack.
        .with_state(Arc::new(client))
        .route("/healthz", get(|| ready("ok")))
}
