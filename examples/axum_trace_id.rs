//! One trace ID from an axum route to DeepSeek and back.
//!
//! ```text
//! cargo run --example axum_trace_id --all-features
//! curl -si http://127.0.0.1:8081/ask -H 'x-trace-id: abc-123'
//! ```
//!
//! `TraceIdLayer` on the router reads (or generates) the ID, echoes it and makes it current;
//! `PropagateTraceIdLayer` under the client sends it to DeepSeek as `x-trace-id` and
//! `traceparent`. The `/ask` handler extracts `TraceId` only to show it; the DeepSeek call
//! itself carries no trace code. Without `DEEPSEEK_API_KEY` it talks to the embedded mock.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::mock::MockDeepSeek;
use tower_deepseek::trace_id::{
    self, PropagateTraceId, PropagateTraceIdLayer, TraceId, TraceIdLayer,
};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{BoxError, Error};

type Client = DeepSeekClient<PropagateTraceId<Upstream>>;

/// The example's routes: `GET /ask` asks DeepSeek, `GET /id` shows the request's trace ID.
pub fn router(client: Client) -> Router {
    Router::new()
        .route("/ask", get(ask))
        .route("/id", get(show_id))
        .with_state(client)
        .layer(TraceIdLayer::new())
}

async fn ask(State(client): State<Client>, trace_id: TraceId) -> Result<String, Error> {
    tracing::info!("asking DeepSeek"); // this line carries trace_id through the span
    // Work that outlives the request keeps the ID when spawned through trace_id::spawn.
    trace_id::spawn(async {
        tracing::info!(current = ?TraceId::current(), "background follow-up");
    });
    let answer = client
        .chat(ChatRequest::new("deepseek-v4-flash").user("Say hello"))
        .await?;
    Ok(format!(
        "[{trace_id}] {}\n",
        answer.content().unwrap_or_default()
    ))
}

async fn show_id(trace_id: TraceId) -> String {
    format!("{trace_id} (W3C trace-id {})\n", trace_id.w3c_trace_id())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let transport = ServiceBuilder::new()
        .layer(PropagateTraceIdLayer::new())
        .service(Upstream::new()?);
    let mut mock = None;
    let client = match std::env::var("DEEPSEEK_API_KEY") {
        Ok(key) if !key.trim().is_empty() => DeepSeekClient::from_env(transport)?,
        _ => {
            let server = MockDeepSeek::start().await?;
            let client = DeepSeekClient::builder()
                .base_url(server.base_url())
                .api_key(server.api_key())
                .build(transport)?;
            mock = Some(server);
            client
        }
    };
    let listener = TcpListener::bind("127.0.0.1:8081").await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, router(client))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    drop(mock);
    Ok(())
}
