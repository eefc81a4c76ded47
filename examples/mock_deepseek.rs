//! The mock DeepSeek as a process of its own, for load tests (`bench/e2e.sh`): the gateway
//! under test then runs alone in its process, so its memory is measured without the mock's.
//!
//! ```text
//! MOCK_ADDR=127.0.0.1:18000 MOCK_STREAM_CHUNKS=30 MOCK_CHUNK_DELAY_MS=1000 \
//!     cargo run --release --example mock_deepseek --features mock
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `MOCK_ADDR` | address to listen on | `127.0.0.1:0` (a free port) |
//! | `MOCK_API_KEY` | the only key accepted; unset: any non-empty Bearer key | unset |
//! | `MOCK_STREAM_CHUNKS` | content tokens of every answer: a stream sends one chunk each (plus the role, finish and usage chunks) | the normal answer |
//! | `MOCK_CHUNK_DELAY_MS` | milliseconds between two chunks of a stream | `0` |
//! | `MOCK_MAX_CONCURRENT_STREAMS` | HTTP/2 (h2c) streams one connection may have open at once (1 or more) | `100000` |
//!
//! It records no requests (a load test would only fill memory with them) and prints
//! `mock DeepSeek listening on <base URL>` once it accepts connections. `GET /_mock/stats`
//! says how many connections it accepted and how many answers are in flight (the streams a
//! load test holds open, however many connections carry them). Ctrl-C or SIGTERM
//! stops it.

#[path = "common/signal.rs"]
mod signal;

use std::net::SocketAddr;
use std::time::Duration;

use tower_deepseek::BoxError;
use tower_deepseek::mock::{MockDeepSeek, Reply};

/// An environment variable parsed as `T`; `None` when unset, an error naming it when invalid.
fn env_var<T: std::str::FromStr>(name: &str, expected: &str) -> Result<Option<T>, BoxError> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={text:?} is not {expected}").into()),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(format!("{name} is not usable: {e}").into()),
    }
}

/// The reply every chat completion gets; `None`: the normal answer.
fn default_reply() -> Result<Option<Reply>, BoxError> {
    let chunks: Option<usize> = env_var("MOCK_STREAM_CHUNKS", "a number of chunks (1 or more)")?;
    let delay: Option<u64> = env_var("MOCK_CHUNK_DELAY_MS", "a number of milliseconds")?;
    if chunks == Some(0) {
        return Err("MOCK_STREAM_CHUNKS=0: an answer needs at least one chunk".into());
    }
    if chunks.is_none() && delay.is_none() {
        return Ok(None);
    }
    let mut reply = Reply::ok().chunk_delay(Duration::from_millis(delay.unwrap_or(0)));
    if let Some(chunks) = chunks {
        // The mock sends one chunk per word (with the whitespace after it).
        let words: Vec<&str> = std::iter::repeat_n("token", chunks).collect();
        reply = reply.content(words.join(" "));
    }
    Ok(Some(reply))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let addr: SocketAddr =
        env_var("MOCK_ADDR", "a socket address")?.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut builder = MockDeepSeek::builder()
        .addr(addr)
        .max_recorded(0)
        .shutdown_timeout(Duration::from_secs(1));
    if let Ok(key) = std::env::var("MOCK_API_KEY") {
        builder = builder.api_key(Some(key));
    }
    if let Some(reply) = default_reply()? {
        builder = builder.default_reply(reply);
    }
    let streams: Option<u32> = env_var(
        "MOCK_MAX_CONCURRENT_STREAMS",
        "a number of streams (1 to 4294967295)",
    )?;
    match streams {
        Some(0) => return Err("MOCK_MAX_CONCURRENT_STREAMS=0: no stream could ever open".into()),
        Some(streams) => builder = builder.max_concurrent_streams(streams),
        None => {}
    }
    let mock = builder
        .start()
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e} (set MOCK_ADDR to change it)"))?;
    println!("mock DeepSeek listening on {}", mock.base_url());
    signal::shutdown_signal().await;
    mock.shutdown().await;
    Ok(())
}
