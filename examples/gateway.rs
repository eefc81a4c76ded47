//! The tower-deepseek gateway: an OpenAI-compatible proxy in front of DeepSeek.
//!
//! ```text
//! cargo run --example gateway --all-features
//! ```
//!
//! It forwards `POST /v1/chat/completions` (streaming and not) and `GET /v1/models` to DeepSeek
//! through the crate's typed client and pooled upstream. Any OpenAI-compatible client works
//! against it unchanged, errors included: DeepSeek's errors come back in the OpenAI error shape
//! with the upstream status.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `GATEWAY_ADDR` | address to listen on | `127.0.0.1:8080` |
//! | `DEEPSEEK_API_KEY` | the DeepSeek key; unset: serve from the embedded mock DeepSeek | unset |
//! | `DEEPSEEK_BASE_URL` | the upstream base URL | `https://api.deepseek.com` |
//! | `DEEPSEEK_MODEL` | model used when a request names none | `deepseek-v4-flash` |
//! | `RUST_LOG` | log filter | `info` |
//!
//! Every request carries one trace ID: `x-trace-id` (or `x-request-id`, or a W3C
//! `traceparent`) when the caller sends a valid one, a fresh UUID otherwise. The gateway echoes
//! it on the response, logs under it (span field `trace_id`) and sends it to DeepSeek as
//! `x-trace-id` and `traceparent`; the handlers below contain no trace code.
//!
//! Clients of the gateway may send any `Authorization` header (the OpenAI SDKs insist on one);
//! it is not forwarded: the gateway calls DeepSeek with its own key.
//! Ctrl-C stops accepting connections and lets in-flight streams finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_deepseek::deepseek::{ChatChunk, ChatRequest, DeepSeekClient};
use tower_deepseek::mock::MockDeepSeek;
use tower_deepseek::trace_id::{PropagateTraceId, PropagateTraceIdLayer, TraceIdLayer};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{BoxError, Error, ErrorKind};

/// Largest request body the gateway accepts.
const MAX_REQUEST_BYTES: usize = 8 << 20;

/// The gateway's settings, read and validated at start-up.
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    /// Where to listen.
    pub listen: Option<SocketAddr>,
    /// The DeepSeek key; `None` starts the embedded mock.
    pub api_key: Option<String>,
    /// The upstream base URL.
    pub base_url: Option<String>,
    /// The default model.
    pub model: Option<String>,
}

impl GatewayConfig {
    /// Reads the environment; a value that does not parse is an error naming the variable.
    pub fn from_env() -> Result<GatewayConfig, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
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
        Ok(GatewayConfig {
            listen,
            api_key: var("DEEPSEEK_API_KEY"),
            base_url: var("DEEPSEEK_BASE_URL"),
            model: var("DEEPSEEK_MODEL"),
        })
    }
}

/// The gateway's DeepSeek client: the pooled upstream under the outbound trace-ID layer.
pub type Client = DeepSeekClient<PropagateTraceId<Upstream>>;

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
    let transport = ServiceBuilder::new()
        .layer(PropagateTraceIdLayer::new())
        .service(Upstream::new()?);
    let client = builder.build(transport)?;
    let app = router(client);
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    if let Some(server) = mock {
        server.shutdown().await;
    }
    Ok(())
}

/// The gateway's routes.
pub fn router(client: Client) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(client)
        // Outermost, so even a rejected body is answered under the request's trace ID.
        .layer(TraceIdLayer::new())
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
    if request.stream == Some(true) {
        match client.chat_stream(request).await {
            Ok(stream) => sse_response(stream),
            Err(error) => error.into_response(),
        }
    } else {
        match client.chat(request).await {
            Ok(answer) => axum::Json(answer).into_response(),
            Err(error) => error.into_response(),
        }
    }
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
