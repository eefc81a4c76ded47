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

    /// Uses this rustls configuration instead of the default (ring, Mozilla's roots): for a
    /// private CA, a corporate TLS proxy or client certificates. Its ALPN list is replaced with
    /// `h2` and `http/1.1`.
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
        let connector = tls.enable_all_versions().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
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
