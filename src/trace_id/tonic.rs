//! gRPC interceptors carrying the trace ID in tonic metadata (feature `tonic`).
//!
//! gRPC metadata is HTTP/2 headers, so both interceptors apply the same rules as the layers:
//!
//! - [`ClientTraceIdInterceptor`] sets `x-trace-id` and `traceparent` from the current
//!   [`TraceId`] (or a fresh one), leaving metadata the caller set alone, like
//!   [`PropagateTraceIdLayer`];
//! - [`ServerTraceIdInterceptor`] reads, checks or generates the ID like [`TraceIdLayer`] and
//!   stores it in the request extensions.
//!
//! # Making the ID current on a tonic server
//!
//! An interceptor is synchronous: it runs before the handler's future exists, so it cannot
//! keep a task-local set while that future runs. Two ways to get [`TraceId::current`] (and so
//! outbound propagation) inside handlers:
//!
//! - **Preferred**: put [`TraceIdLayer`] on the server. A tonic server is a tower service over
//!   `http`, so the same layer reads the metadata, makes the ID current for the whole call,
//!   runs it in the `request` span and echoes it in the response metadata:
//!
//!   ```no_run
//!   # async fn run(svc: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
//!   use tower_deepseek::trace_id::TraceIdLayer;
//!
//!   tonic::transport::Server::builder()
//!       .layer(TraceIdLayer::new())
//!       .add_routes(svc)
//!       .serve("127.0.0.1:50051".parse()?)
//!       .await?;
//!   # Ok(())
//!   # }
//!   ```
//!
//! - With only the interceptor (e.g. `InterceptedService` on one service), the handler
//!   scopes its own work with the extension the interceptor stored:
//!
//!   ```
//!   use tower_deepseek::trace_id::TraceId;
//!
//!   async fn handle(request: tonic::Request<()>) -> Result<tonic::Response<()>, tonic::Status> {
//!       let trace_id = request.extensions().get::<TraceId>().cloned();
//!       let work = async { /* calls through DeepSeekClient pick the ID up */ };
//!       match trace_id {
//!           Some(id) => id.scope(work).await,
//!           None => work.await,
//!       }
//!       Ok(tonic::Response::new(()))
//!   }
//!   # let _ = handle;
//!   ```
//!
//! When both run, the interceptor keeps the ID the layer already stored.

use std::fmt;
use std::sync::Arc;

use ::tonic::Status;
use ::tonic::service::Interceptor;

use super::inbound::InboundConfig;
use super::outbound::OutboundConfig;
use super::{PropagateTraceIdLayer, TraceId, TraceIdLayer};

/// Sets `x-trace-id` and `traceparent` metadata on outgoing gRPC calls from the current
/// [`TraceId`] (a fresh one outside any scope). Settings come from a
/// [`PropagateTraceIdLayer`].
///
/// ```
/// use tower_deepseek::trace_id::TraceId;
/// use tower_deepseek::trace_id::tonic::ClientTraceIdInterceptor;
/// use tonic::service::Interceptor;
///
/// let mut interceptor = ClientTraceIdInterceptor::new();
/// let id = TraceId::parse("abc-123").unwrap();
/// let request = id.sync_scope(|| interceptor.call(tonic::Request::new(()))).unwrap();
/// assert_eq!(request.metadata().get("x-trace-id").unwrap(), "abc-123");
/// assert!(request.metadata().get("traceparent").is_some());
/// ```
#[derive(Clone)]
pub struct ClientTraceIdInterceptor {
    config: Arc<OutboundConfig>,
}

impl ClientTraceIdInterceptor {
    /// The interceptor with the default settings.
    pub fn new() -> ClientTraceIdInterceptor {
        ClientTraceIdInterceptor::from_layer(&PropagateTraceIdLayer::new())
    }

    /// The interceptor with the settings of `layer`.
    pub fn from_layer(layer: &PropagateTraceIdLayer) -> ClientTraceIdInterceptor {
        ClientTraceIdInterceptor {
            config: Arc::clone(layer.config()),
        }
    }
}

impl Default for ClientTraceIdInterceptor {
    fn default() -> Self {
        ClientTraceIdInterceptor::new()
    }
}

impl fmt::Debug for ClientTraceIdInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTraceIdInterceptor")
            .field("config", &self.config)
            .finish()
    }
}

impl Interceptor for ClientTraceIdInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.config.inject(request.metadata_mut().as_mut());
        Ok(request)
    }
}

/// Reads, checks or generates the trace ID of incoming gRPC calls and stores it in the
/// request extensions (see the [module docs](self) for making it current). Settings come from
/// a [`TraceIdLayer`]; an invalid ID is replaced and reported like the layer does.
///
/// ```
/// use tower_deepseek::trace_id::TraceId;
/// use tower_deepseek::trace_id::tonic::ServerTraceIdInterceptor;
/// use tonic::service::Interceptor;
///
/// let mut interceptor = ServerTraceIdInterceptor::new();
/// let mut request = tonic::Request::new(());
/// request.metadata_mut().insert("x-trace-id", "abc-123".parse().unwrap());
/// let request = interceptor.call(request).unwrap();
/// assert_eq!(request.extensions().get::<TraceId>().unwrap().as_str(), "abc-123");
/// ```
#[derive(Clone)]
pub struct ServerTraceIdInterceptor {
    config: Arc<InboundConfig>,
}

impl ServerTraceIdInterceptor {
    /// The interceptor with the default settings.
    pub fn new() -> ServerTraceIdInterceptor {
        ServerTraceIdInterceptor::from_layer(&TraceIdLayer::new())
    }

    /// The interceptor with the settings of `layer`.
    pub fn from_layer(layer: &TraceIdLayer) -> ServerTraceIdInterceptor {
        ServerTraceIdInterceptor {
            config: Arc::clone(layer.config()),
        }
    }
}

impl Default for ServerTraceIdInterceptor {
    fn default() -> Self {
        ServerTraceIdInterceptor::new()
    }
}

impl fmt::Debug for ServerTraceIdInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTraceIdInterceptor")
            .field("config", &self.config)
            .finish()
    }
}

impl Interceptor for ServerTraceIdInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if request.extensions().get::<TraceId>().is_some() {
            return Ok(request);
        }
        let (id, rejected) = self.config.resolve(request.metadata_mut().as_mut());
        if rejected.any() {
            self.config
                .span(&id)
                .in_scope(|| self.config.report(rejected, &id));
        }
        request.extensions_mut().insert(id);
        Ok(request)
    }
}
