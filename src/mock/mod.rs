//! An embedded mock DeepSeek server for tests and demos (feature `mock`).
//!
//! [`MockDeepSeek`] is a real HTTP server on a local port (HTTP/1.1, and HTTP/2 without TLS
//! when the client speaks it) that answers the DeepSeek chat API with deterministic content and
//! honest token counts, records every request, and plays scripted faults: error statuses,
//! slow heads, keep-alives, slow, cut, malformed or reset streams.
//!
//! # Endpoints
//!
//! | request | answer |
//! |---|---|
//! | `POST /chat/completions`, `POST /v1/chat/completions` | a completion; SSE when the body says `"stream": true` |
//! | `GET /models`, `GET /v1/models` | `{"object":"list","data":[{"id","object":"model","owned_by":"deepseek"}]}` |
//! | anything else | 404 in DeepSeek's error shape |
//! | `POST /_mock/script` | appends replies to the script (a JSON array of [`Reply`], or one reply); answers `{"queued": <queue length>}` |
//! | `GET /_mock/script` | the replies still queued, as a JSON array |
//! | `DELETE /_mock/script` | empties the script; answers `{"cleared": <count>}` |
//! | `GET /_mock/requests` | the recorded requests as a JSON array of `{"method","path","query","version","headers":{name: value},"body","cancelled"}` (body as JSON when it parses, text otherwise; repeated headers joined with `, `; the API key masked to its last four characters) |
//! | `DELETE /_mock/requests` | forgets the recorded requests; answers `{"cleared": <count>}` |
//! | `GET /_mock/stats` | `{"connections","in_flight","api_requests","cancelled"}`: see [`MockDeepSeek::connections`], [`MockDeepSeek::in_flight`], [`MockDeepSeek::cancelled`]; `api_requests` counts API requests received (recorded or not) |
//!
//! The API endpoints check `Authorization: Bearer <key>` (see
//! [`MockDeepSeekBuilder::api_key`]); the `/_mock/` control endpoints need no key and are not
//! recorded: they are for tests driving the mock from another process.
//!
//! Errors use DeepSeek's shape, `{"error":{"message","type","param","code"}}`:
//!
//! | condition | status | message |
//! |---|---|---|
//! | missing or wrong key | 401 | `Authentication Fails, Your api key: ****abcd is invalid` (the presented key's last four characters) |
//! | body over the size limit (8 MiB by default) | 413 | |
//! | body is not JSON | 400 | |
//! | `model` missing, `messages` missing or empty, a field of the wrong type | 422 | |
//! | `model` not in the served list | 400 | `Model Not Exist` |
//!
//! # The answer
//!
//! The completion is a fixed function of the request, so tests can assert on it:
//!
//! - **content**: `"Hello from mock DeepSeek. You said: <text of the last user message>"`
//!   (or a scripted [`Reply::content`]), split into tokens: each word with the whitespace
//!   after it. A stream sends one content chunk per token.
//! - **reasoning**: when the model name contains `reasoner` (unless the request says
//!   `"thinking": {"type": "disabled"}`) or the request says `"thinking": {"type": "enabled"}`,
//!   `reasoning_content` `"The user said: <last user message>"` comes first, tokenized the
//!   same way.
//! - **max_tokens** cuts reasoning then content to that many tokens in total and makes
//!   `finish_reason` `"length"`; otherwise it is `"stop"` (or a scripted
//!   [`Reply::finish_reason`]).
//! - **usage**: `prompt_tokens` = Σ over messages of (whitespace-separated words in its text
//!   content + 4); `completion_tokens` = reasoning tokens + content tokens actually generated;
//!   `total_tokens` their sum; `prompt_cache_hit_tokens` 0; `prompt_cache_miss_tokens` =
//!   `prompt_tokens`; `completion_tokens_details.reasoning_tokens` the reasoning tokens.
//! - A stream is: a chunk with `delta.role = "assistant"` and empty content, one chunk per
//!   reasoning token then per content token, a chunk with `finish_reason`, then, when the
//!   request sets `stream_options.include_usage`, a chunk with `choices: []` and `usage`, then
//!   `data: [DONE]`. Each event is its own `data: {json}\n\n` frame.
//! - Every API response carries `x-ds-trace-id` (`mock-trace-00000001`, counting API requests
//!   from 1); completion IDs are `mock-chatcmpl-<same number>`.
//!
//! # Faults
//!
//! [`MockDeepSeek::script`] queues [`Reply`]s. Each chat-completion request that passes the key
//! check takes the next one; an empty queue means the normal answer (or the
//! [`MockDeepSeekBuilder::default_reply`]). Models requests, refused
//! keys and control requests never take a reply.
//!
//! ```
//! use tower_deepseek::mock::{MockDeepSeek, Reply};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     tokio::runtime::Runtime::new()?.block_on(async {
//!         let mock = MockDeepSeek::start().await?;
//!         // The first two calls get 503, the third the normal answer.
//!         mock.script([Reply::status(503), Reply::status(503)]);
//!         assert_eq!(mock.pending_replies(), 2);
//!         mock.shutdown().await;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # Lifetime
//!
//! The server runs on the Tokio runtime that started it. [`MockDeepSeek::shutdown`] stops it
//! gracefully; dropping the [`MockDeepSeek`] stops it at once, closing open connections.

mod body;
mod content;
mod control;
mod record;
mod script;
mod server;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use record::RecordedRequest;
pub use script::Reply;

use server::{Config, KeyCheck, Shared};

/// The key [`MockDeepSeek::api_key`] suggests when the server accepts any key.
const SUGGESTED_KEY: &str = "sk-mock-deepseek";
/// Default request body limit: 8 MiB.
const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Default number of recorded requests kept.
const DEFAULT_MAX_RECORDED: usize = 10_000;
/// Default HTTP/2 streams per connection: far above real servers' 100 to 250, so an h2 client
/// load-testing through one connection is not capped by the mock.
const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100_000;
/// Default bound on a graceful shutdown.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The models served by default.
const DEFAULT_MODELS: [&str; 4] = [
    "deepseek-v4-flash",
    "deepseek-v4-pro",
    "deepseek-chat",
    "deepseek-reasoner",
];

/// A running mock DeepSeek server. See the [module docs](self) for what it answers.
///
/// Every method takes `&self` and the type is `Send + Sync`: share it between tasks by
/// reference or in an [`Arc`]. It is deliberately not `Clone`, because dropping it stops the
/// server.
///
/// ```
/// use tower_deepseek::mock::MockDeepSeek;
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     tokio::runtime::Runtime::new()?.block_on(async {
///         let mock = MockDeepSeek::start().await?;
///         assert!(mock.base_url().starts_with("http://127.0.0.1:"));
///
///         let mut stream = tokio::net::TcpStream::connect(mock.addr()).await?;
///         let request = format!(
///             "GET /models HTTP/1.1\r\nhost: mock\r\nauthorization: Bearer {}\r\n\
///              connection: close\r\n\r\n",
///             mock.api_key()
///         );
///         tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await?;
///         let mut response = String::new();
///         tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response).await?;
///         assert!(response.starts_with("HTTP/1.1 200 OK"));
///         assert!(response.contains(r#""id":"deepseek-v4-flash""#));
///
///         mock.shutdown().await;
///         Ok(())
///     })
/// }
/// ```
pub struct MockDeepSeek {
    shared: Arc<Shared>,
    addr: SocketAddr,
    base_url: String,
    api_key: String,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl MockDeepSeek {
    /// Starts a server on `127.0.0.1` at a free port with the default settings (see
    /// [`MockDeepSeekBuilder`]). Fails when called outside a Tokio runtime or when binding fails.
    pub async fn start() -> io::Result<MockDeepSeek> {
        MockDeepSeek::builder().start().await
    }

    /// A builder for a server with other settings.
    pub fn builder() -> MockDeepSeekBuilder {
        MockDeepSeekBuilder::default()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give a client, e.g. `http://127.0.0.1:40123` (a loopback address when the
    /// server listens on all interfaces).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A key this server accepts: the configured one, or `sk-mock-deepseek` when any key is.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The API requests received so far, oldest first (at most the recording limit).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// How many API requests the client abandoned before their reply finished (it closed the
    /// connection while the head was delayed or the body was still being sent); each is also
    /// [`RecordedRequest::cancelled`]. Counts every abandonment since the start, including
    /// requests no longer kept in [`requests`](Self::requests).
    pub fn cancelled(&self) -> u64 {
        self.shared.cancelled()
    }

    /// How many connections the server has accepted since the start: e.g. one for any number
    /// of calls from a pooled client, or from an HTTP/2 client multiplexing its streams.
    pub fn connections(&self) -> u64 {
        self.shared.connections()
    }

    /// How many API requests are being answered now: their head is pending or their body is
    /// still being sent (a stream counts until its last chunk is handed over or the client
    /// abandons it). Under load, the streams a client holds open here.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.clear_requests();
    }

    /// Appends replies to the script; successive chat-completion requests consume them in
    /// order (see [`Reply`]).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.enqueue(replies);
    }

    /// Empties the script, so every request gets the normal answer again.
    pub fn clear_script(&self) {
        self.shared.clear_script();
    }

    /// How many scripted replies are still queued.
    pub fn pending_replies(&self) -> usize {
        self.shared.pending_len()
    }

    /// Stops the server gracefully: it stops accepting at once, lets requests in flight
    /// finish for up to the shutdown timeout (5 s by default, see
    /// [`MockDeepSeekBuilder::shutdown_timeout`]), then closes what is left.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(server) = self.server.take()
            && let Err(error) = server.await
        {
            tracing::debug!(%error, "mock DeepSeek server task ended abnormally");
        }
    }
}

impl Drop for MockDeepSeek {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(server) = self.server.take() {
            // Aborting the accept loop drops the listener and every connection task it owns.
            server.abort();
        }
    }
}

impl std::fmt::Debug for MockDeepSeek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockDeepSeek")
            .field("addr", &self.addr)
            .field("key_check", &self.shared.config.key_check)
            .field("models", &self.shared.config.models)
            .finish_non_exhaustive()
    }
}

/// Settings for a [`MockDeepSeek`].
///
/// | setting | default |
/// |---|---|
/// | [`addr`](Self::addr) | `127.0.0.1:0` (a free port) |
/// | [`api_key`](Self::api_key) | any non-empty Bearer key is accepted |
/// | [`models`](Self::models) | `deepseek-v4-flash`, `deepseek-v4-pro`, `deepseek-chat`, `deepseek-reasoner` |
/// | [`max_body_bytes`](Self::max_body_bytes) | 8 MiB |
/// | [`max_recorded`](Self::max_recorded) | 10,000 requests |
/// | [`shutdown_timeout`](Self::shutdown_timeout) | 5 s |
/// | [`default_reply`](Self::default_reply) | the normal answer |
/// | [`max_concurrent_streams`](Self::max_concurrent_streams) | 100,000 HTTP/2 streams per connection |
///
/// ```
/// use tower_deepseek::mock::MockDeepSeek;
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     tokio::runtime::Runtime::new()?.block_on(async {
///         let mock = MockDeepSeek::builder()
///             .api_key(Some("sk-test-0123456789".to_owned()))
///             .models(["deepseek-v4-flash"])
///             .start()
///             .await?;
///         assert_eq!(mock.api_key(), "sk-test-0123456789");
///         mock.shutdown().await;
///         Ok(())
///     })
/// }
/// ```
#[derive(Clone, Debug)]
pub struct MockDeepSeekBuilder {
    addr: SocketAddr,
    key_check: KeyCheck,
    models: Vec<String>,
    max_body_bytes: usize,
    max_recorded: usize,
    shutdown_timeout: Duration,
    default_reply: Option<Reply>,
    max_concurrent_streams: u32,
}

impl Default for MockDeepSeekBuilder {
    fn default() -> Self {
        MockDeepSeekBuilder {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            key_check: KeyCheck::AnyNonEmpty,
            models: DEFAULT_MODELS
                .iter()
                .map(|&model| model.to_owned())
                .collect(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_recorded: DEFAULT_MAX_RECORDED,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            default_reply: None,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

impl MockDeepSeekBuilder {
    /// The address to listen on (port 0 picks a free one).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// The API key to require: `Some(key)` accepts only `Authorization: Bearer <key>`; `None`
    /// accepts any request, with or without a key. Without this call any non-empty Bearer key
    /// is accepted and a missing one refused.
    pub fn api_key(mut self, key: Option<String>) -> Self {
        self.key_check = match key {
            Some(key) => KeyCheck::Exact(key),
            None => KeyCheck::Off,
        };
        self
    }

    /// The models served by `/models` and accepted by chat completions; any other model gets
    /// 400 "Model Not Exist".
    pub fn models<I>(mut self, models: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// The largest request body accepted; a larger one gets 413.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// How many of the most recent requests [`MockDeepSeek::requests`] keeps (0 records none).
    pub fn max_recorded(mut self, limit: usize) -> Self {
        self.max_recorded = limit;
        self
    }

    /// How long [`MockDeepSeek::shutdown`] lets requests in flight finish.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How many HTTP/2 streams one connection may have open at once: the
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` the server advertises (HTTP/1.1 has no such limit:
    /// one request at a time per connection). The default, 100,000, is far above the 100 to
    /// 250 that real servers advertise (hyper's own default is 200), so a load test holding
    /// thousands of streams on one h2c connection is not capped by the mock. Set it low to see
    /// what a client does at the limit; [`start`](Self::start) refuses 0.
    ///
    /// ```
    /// use tower_deepseek::mock::MockDeepSeek;
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     tokio::runtime::Runtime::new()?.block_on(async {
    ///         // What most production servers allow.
    ///         let mock = MockDeepSeek::builder().max_concurrent_streams(100).start().await?;
    ///         mock.shutdown().await;
    ///         Ok(())
    ///     })
    /// }
    /// ```
    pub fn max_concurrent_streams(mut self, streams: u32) -> Self {
        self.max_concurrent_streams = streams;
        self
    }

    /// The reply every chat completion gets while the script is empty, in place of the
    /// normal answer: e.g. a long, slow stream for a load test.
    ///
    /// ```
    /// # #[cfg(feature = "upstream")]
    /// # {
    /// use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
    /// use tower_deepseek::mock::{MockDeepSeek, Reply};
    /// use tower_deepseek::upstream::Upstream;
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     tokio::runtime::Runtime::new()?.block_on(async {
    ///         let mock = MockDeepSeek::builder()
    ///             .default_reply(Reply::ok().content("one two three"))
    ///             .max_recorded(0)
    ///             .start()
    ///             .await?;
    ///         let client = DeepSeekClient::builder()
    ///             .base_url(mock.base_url())
    ///             .api_key(mock.api_key())
    ///             .build(Upstream::new()?)?;
    ///         let hello = || ChatRequest::new("deepseek-v4-flash").user("hi");
    ///         // A scripted reply comes first; then the default reply, again and again.
    ///         mock.script([Reply::ok().content("scripted")]);
    ///         assert_eq!(client.chat(hello()).await?.content(), Some("scripted"));
    ///         for _ in 0..2 {
    ///             assert_eq!(client.chat(hello()).await?.content(), Some("one two three"));
    ///         }
    ///         mock.shutdown().await;
    ///         Ok(())
    ///     })
    /// }
    /// # main().unwrap();
    /// # }
    /// ```
    pub fn default_reply(mut self, reply: Reply) -> Self {
        self.default_reply = Some(reply);
        self
    }

    /// Binds the address and starts serving on the current Tokio runtime. Fails when called
    /// outside a Tokio runtime, when binding fails, or when
    /// [`max_concurrent_streams`](Self::max_concurrent_streams) is 0.
    pub async fn start(self) -> io::Result<MockDeepSeek> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        if self.max_concurrent_streams == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mock DeepSeek: max_concurrent_streams must be at least 1",
            ));
        }
        let listener = TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let api_key = match &self.key_check {
            KeyCheck::Exact(key) => key.clone(),
            KeyCheck::AnyNonEmpty | KeyCheck::Off => SUGGESTED_KEY.to_owned(),
        };
        let shared = Arc::new(Shared::new(
            Config {
                key_check: self.key_check,
                models: self.models,
                max_body_bytes: self.max_body_bytes,
                default_reply: self.default_reply,
                max_concurrent_streams: self.max_concurrent_streams,
            },
            self.max_recorded,
        ));
        let (stop, stopped) = watch::channel(false);
        let server = runtime.spawn(server::run(
            listener,
            Arc::clone(&shared),
            stopped,
            self.shutdown_timeout,
        ));
        tracing::debug!(%addr, "mock DeepSeek listening");
        Ok(MockDeepSeek {
            shared,
            addr,
            base_url: format!("http://{}", url_addr(addr)),
            api_key,
            stop,
            server: Some(server),
        })
    }
}

/// The address a client should dial: a loopback one in place of "all interfaces".
fn url_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}
