//! The `/metrics` endpoint: the injected registry in the Prometheus text format, as a tower
//! service (for axum's `route_service` or any tower stack) and a hyper service (for a plain
//! hyper server).

use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus::{Encoder, Registry, TextEncoder};

use super::Metrics;

/// Answers `GET` (and `HEAD`) with the registry's metrics in the Prometheus text format
/// (`text/plain; version=0.0.4`). Other methods get `405`; with [`path`](Self::path) set,
/// other paths get `404`.
///
/// It is a tower [`Service`](tower_service::Service), so axum mounts it with
/// `Router::route_service("/metrics", endpoint)`, and a hyper
/// [`Service`](hyper::service::Service), so a plain hyper connection serves it directly.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use http_body_util::BodyExt;
/// use tower::ServiceExt;
/// use tower_deepseek::metrics::{Metrics, MetricsEndpoint};
///
/// let metrics = Metrics::builder().prometheus(prometheus::Registry::new()).build()?;
/// metrics.retry_budget_exhausted();
/// let endpoint = MetricsEndpoint::from_metrics(&metrics).path("/metrics");
///
/// let request = http::Request::get("/metrics").body(())?;
/// let response = endpoint.clone().oneshot(request).await?;
/// assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4");
/// let text = response.into_body().collect().await?.to_bytes();
/// assert!(std::str::from_utf8(&text)?.contains("deepseek_retry_budget_exhausted_total 1"));
///
/// let elsewhere = endpoint.oneshot(http::Request::get("/users/1").body(())?).await?;
/// assert_eq!(elsewhere.status(), http::StatusCode::NOT_FOUND);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MetricsEndpoint {
    registry: Registry,
    path: Option<Arc<str>>,
}

impl fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsEndpoint")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl MetricsEndpoint {
    /// Serves `registry` at any path (axum routes the path; see [`path`](Self::path)).
    pub fn new(registry: Registry) -> MetricsEndpoint {
        MetricsEndpoint {
            registry,
            path: None,
        }
    }

    /// Serves the registry of `metrics` (an empty registry if it exports no Prometheus
    /// metrics).
    pub fn from_metrics(metrics: &Metrics) -> MetricsEndpoint {
        MetricsEndpoint::new(metrics.registry().cloned().unwrap_or_default())
    }

    /// Answers only this path (e.g. `/metrics`) and `404` elsewhere, for a server without a
    /// router.
    pub fn path(mut self, path: impl Into<Arc<str>>) -> MetricsEndpoint {
        self.path = Some(path.into());
        self
    }

    /// The metrics response, whatever the request.
    pub fn render(&self) -> Response<Full<Bytes>> {
        let encoder = TextEncoder::new();
        let mut buffer = Vec::with_capacity(16 * 1024);
        match encoder.encode(&self.registry.gather(), &mut buffer) {
            Ok(()) => {
                let mut response = Response::new(Full::new(Bytes::from(buffer)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(prometheus::TEXT_FORMAT),
                );
                response
            }
            Err(error) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("metrics could not be encoded: {error}\n"),
            ),
        }
    }

    /// The response to `request`: the metrics, `404` or `405`.
    pub fn answer<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if let Some(path) = &self.path
            && request.uri().path() != &**path
        {
            return plain(StatusCode::NOT_FOUND, "not found\n".to_owned());
        }
        match *request.method() {
            Method::GET => self.render(),
            Method::HEAD => self.render().map(|_| Full::new(Bytes::new())),
            _ => {
                let mut response = plain(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed\n".to_owned(),
                );
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                response
            }
        }
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl<B> tower_service::Service<Request<B>> for MetricsEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.answer(&request)))
    }
}

impl<B> hyper::service::Service<Request<B>> for MetricsEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        ready(Ok(self.answer(&request)))
    }
}
