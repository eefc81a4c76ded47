//! The pooled HTTPS transport (feature `upstream`, on by default).
//!
//! [`Upstream`] is a tower service over hyper-util's pooled client with rustls (ring provider,
//! Mozilla roots), speaking HTTP/1.1 and HTTP/2 chosen by ALPN. Its pool follows a production Go
//! client's defaults: 100 idle connections per host kept for 90 s, TCP_NODELAY, TCP keep-alive,
//! a connect timeout. It is the service to put at the bottom of a layer stack:
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_deepseek::upstream::Upstream;
//!
//! # fn main() -> Result<(), tower_deepseek::Error> {
//! let transport = ServiceBuilder::new()
//!     // .layer(..) any tower layers here
//!     .service(Upstream::builder().pool_max_idle_per_host(32).build()?);
//! # let _ = transport;
//! # Ok(())
//! # }
//! ```
//!
//! [`UpstreamBuilder::http2_only`] makes it speak HTTP/2 from the first byte instead (h2c for
//! `http://` URLs), so concurrent calls share one connection: see there for when to use it and
//! what happens at the server's stream limit.
//!
//! Errors are this crate's [`Error`], classified: a refused connection is
//! [`NetworkFailure::Connect`](crate::classify::NetworkFailure::Connect), an expired connect
//! timeout is [`TimeoutPhase::Connect`](crate::classify::TimeoutPhase::Connect), a TLS failure
//! is [`NetworkFailure::Tls`](crate::classify::NetworkFailure::Tls).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::deepseek::RequestBody;
use crate::error::{Error, ErrorKind};

/// Cancelled HTTP/2 streams remembered per connection (h2's default is 50), so frames the server
/// sent before it saw a cancel are dropped quietly. A forgotten stream's late frames each cost a
/// reset of the client's own, and past h2's cap of 1,024 of those in a connection's life it
/// closes the connection with every stream on it: a burst of callers leaving (a load test's
/// end, a client timeout) would do that. An entry is one stream's state, kept for 30 s.
const H2_REMEMBERED_RESETS: usize = 10_000;

/// The pooled HTTPS client as a tower service. Cloning is cheap and clones share the pool.
///
/// ```
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let upstream = tower_deepseek::upstream::Upstream::new()?;
/// let shared_pool = upstream.clone();
/// # let _ = shared_pool;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Upstream {
    // Behind one `Arc`: hyper-util's client is a dozen `Arc`s and a few hundred bytes, and
    // every layer above clones its inner service per call (tower's readiness pattern), so a
    // deep stack would pay a dozen shared-counter bumps per clone and move 350 bytes.
    client: Arc<Client<HttpsConnector<HttpConnector>, RequestBody>>,
    connect_timeout: Option<Duration>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream with the default settings (see [`UpstreamBuilder`]).
    pub fn new() -> Result<Upstream, Error> {
        UpstreamBuilder::default().build()
    }

    /// A builder to change the pool and connection settings.
    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder::default()
    }
}

/// Settings of an [`Upstream`]. The defaults follow Go's `http.DefaultTransport` where it has one.
///
/// | setting | default |
/// |---|---|
/// | `pool_max_idle_per_host` | 100 |
/// | `pool_idle_timeout` | 90 s |
/// | `connect_timeout` | 10 s |
/// | `tcp_keepalive` | 30 s |
/// | `tcp_nodelay` | on |
/// | `allow_plain_http` | on (for local mocks and proxies; `https_only` turns it off) |
/// | `http2_only` | off: HTTP/1.1 or HTTP/2 as TLS's ALPN picks; plain HTTP is HTTP/1.1 |
///
/// ```
/// use std::time::Duration;
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let upstream = tower_deepseek::upstream::Upstream::builder()
///     .connect_timeout(Duration::from_secs(3))
///     .https_only()
///     .build()?;
/// # let _ = upstream;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct UpstreamBuilder {
    pool_max_idle_per_host: usize,
    pool_idle_timeout: Duration,
    connect_timeout: Option<Duration>,
    tcp_keepalive: Option<Duration>,
    tcp_nodelay: bool,
    allow_plain_http: bool,
    http2_only: bool,
    tls_config: Option<rustls::ClientConfig>,
}

impl Default for UpstreamBuilder {
    fn default() -> Self {
        UpstreamBuilder {
            pool_max_idle_per_host: 100,
            pool_idle_timeout: Duration::from_secs(90),
            connect_timeout: Some(Duration::from_secs(10)),
            tcp_keepalive: Some(Duration::from_secs(30)),
            tcp_nodelay: true,
            allow_plain_http: true,
            http2_only: false,
            tls_config: None,
        }
    }
}

impl fmt::Debug for UpstreamBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBuilder")
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("tcp_nodelay", &self.tcp_nodelay)
            .field("allow_plain_http", &self.allow_plain_http)
            .field("http2_only", &self.http2_only)
            .field("custom_tls_config", &self.tls_config.is_some())
            .finish()
    }
}

impl UpstreamBuilder {
    /// Idle connections kept per host.
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// How long an idle connection is kept before it is closed.
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// How long opening a TCP connection may take; `None` waits for the OS.
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// TCP keep-alive probe interval; `None` turns keep-alive off.
    pub fn tcp_keepalive(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.tcp_keepalive = interval.into();
        self
    }

    /// Whether to set `TCP_NODELAY` (on by default: chat requests are small writes).
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// Refuse `http://` URLs: only TLS connections are made.
    pub fn https_only(mut self) -> Self {
        self.allow_plain_http = false;
        self
    }

    /// Speaks HTTP/2 from the first byte: with prior knowledge (h2c) on `http://` URLs, and on
    /// `https://` ones with `h2` as the only protocol TLS's ALPN offers. Off by default.
    ///
    /// Use it for an upstream known to speak HTTP/2: an h2c sidecar or proxy, the crate's
    /// [mock](crate::mock) (which serves h2c), a load test that should hold thousands of streams
    /// without a socket each. Over `https://` the default already picks HTTP/2 when the server
    /// offers it (DeepSeek's API does); this only removes the HTTP/1.1 fallback.
    ///
    /// All calls to one host then share **one connection**, each call a stream on it. When the
    /// server's `SETTINGS_MAX_CONCURRENT_STREAMS` is reached, further calls wait in the client,
    /// in order, until a stream on that connection ends: they neither fail nor open a second
    /// connection, and that queue has no bound of its own, so a timeout and a concurrency limit
    /// above this service (the crate's [timeout](crate::timeout) and
    /// [concurrency](crate::concurrency) layers) decide how long and how many. A lost
    /// connection fails every call on it at once (retryable network errors); the next call
    /// opens a new one, as it does after the server's `GOAWAY`. Up to 10,000 cancelled streams
    /// are remembered per connection (h2's default is 50), so a burst of callers leaving at
    /// once does not get the connection closed for the frames still in flight to them. The
    /// streams also share the connection's flow-control window (hyper's default, 5 MB): what a
    /// caller leaves unread counts against it until its stream ends, so many callers that stop
    /// reading can stall the others.
    ///
    /// The failure mode on an upstream that does not speak HTTP/2: over `http://` an HTTP/1.1
    /// server cannot read the HTTP/2 preface and closes the connection or answers garbage, so
    /// every call fails at once with a network error; over `https://` a server that offers
    /// only `http/1.1` refuses the TLS handshake ([`NetworkFailure::Tls`](crate::classify::NetworkFailure::Tls)).
    /// Nothing falls back to HTTP/1.1: leave this off when unsure.
    ///
    /// ```
    /// # #[cfg(feature = "mock")]
    /// # {
    /// use tower::ServiceExt;
    /// use tower_deepseek::deepseek::RequestBody;
    /// use tower_deepseek::mock::MockDeepSeek;
    /// use tower_deepseek::upstream::Upstream;
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     tokio::runtime::Runtime::new()?.block_on(async {
    ///         let mock = MockDeepSeek::start().await?; // serves h2c
    ///         let upstream = Upstream::builder().http2_only(true).build()?;
    ///         let request = http::Request::get(format!("{}/models", mock.base_url()))
    ///             .header("authorization", format!("Bearer {}", mock.api_key()))
    ///             .body(RequestBody::default())?;
    ///         let response = upstream.oneshot(request).await?;
    ///         assert_eq!(response.version(), http::Version::HTTP_2);
    ///         mock.shutdown().await;
    ///         Ok(())
    ///     })
    /// }
    /// # main().unwrap();
    /// # }
    /// ```
    pub fn http2_only(mut self, enabled: bool) -> Self {
        self.http2_only = enabled;
        self
    }

    /// Uses this rustls configuration instead of the default (ring, Mozilla's roots): for a
    /// private CA, a corporate TLS proxy or client certificates. Its ALPN list is replaced with
    /// `h2` and `http/1.1` (`h2` alone with [`http2_only`](Self::http2_only)).
    ///
    /// ```
    /// use std::sync::Arc;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut roots = rustls::RootCertStore::empty();
    /// # let ca_der = rcgen::generate_simple_self_signed(vec!["ca".into()])?.cert.der().clone();
    /// roots.add(ca_der)?; // your CA's certificate, DER-encoded
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let config = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()?
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let upstream = tower_deepseek::upstream::Upstream::builder().tls_config(config).build()?;
    /// # let _ = upstream;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// Builds the upstream. Fails only if rustls rejects its own safe defaults.
    pub fn build(self) -> Result<Upstream, Error> {
        if self.connect_timeout == Some(Duration::ZERO) {
            return Err(Error::new(
                ErrorKind::Config,
                "upstream connect_timeout must be greater than zero (use None for no limit)",
            ));
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(self.tcp_nodelay);
        http.set_keepalive(self.tcp_keepalive);
        http.set_connect_timeout(self.connect_timeout);
        let tls = match self.tls_config {
            Some(mut config) => {
                // hyper-rustls sets ALPN itself and refuses a config that already has a list.
                config.alpn_protocols.clear();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
            None => {
                // An explicit provider: relying on the process default would panic when an
                // application links both ring and aws-lc-rs.
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_webpki_roots(provider)
                    .map_err(|e| {
                        Error::new(ErrorKind::Config, "rustls rejected its default settings")
                            .with_source(e)
                    })?
            }
        };
        let tls = if self.allow_plain_http {
            tls.https_or_http()
        } else {
            tls.https_only()
        };
        let tls = if self.http2_only {
            // ALPN offers `h2` alone, so a server without it refuses the handshake rather than
            // answering an HTTP/2 preface it cannot read.
            tls.enable_http2()
        } else {
            tls.enable_all_versions()
        };
        let connector = tls.wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(self.http2_only)
            .http2_max_concurrent_reset_streams(H2_REMEMBERED_RESETS)
            .build(connector);
        Ok(Upstream {
            client: Arc::new(client),
            connect_timeout: self.connect_timeout,
        })
    }
}

impl Service<http::Request<RequestBody>> for Upstream {
    type Response = http::Response<Incoming>;
    type Error = Error;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper-util's client is always ready: the pool waits inside the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        UpstreamFuture {
            inner: self.client.request(request),
        }
    }
}

pin_project! {
    /// The response future of [`Upstream`]: hyper-util's future with its error classified.
    pub struct UpstreamFuture {
        #[pin]
        inner: hyper_util::client::legacy::ResponseFuture,
    }
}

impl fmt::Debug for UpstreamFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamFuture").finish_non_exhaustive()
    }
}

impl Future for UpstreamFuture {
    type Output = Result<http::Response<Incoming>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map_err(|e| Error::from_boxed(Box::new(e)))
    }
}
