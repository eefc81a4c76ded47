//! The outbound stack under the DeepSeek client: trace propagation, metrics, retry, failover
//! across the upstreams, a circuit breaker per model with the model fallback, stream timeouts.

use std::cell::Cell;
use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::Arc;

use super::config::{GatewayConfig, config_error, valid_model};
use axum::body::Bytes;
use axum::http::Method;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tower::util::MapResponse;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_deepseek::circuit_breaker::{
    CircuitBreakerBody, Fallback, FallbackResponse, KeyedCircuitBreakerLayer,
    KeyedCircuitBreakerService,
};
use tower_deepseek::deepseek::{DeepSeekClient, RequestBody, RequestModel};
use tower_deepseek::error::CircuitOpenReason;
use tower_deepseek::failover::Failover;
use tower_deepseek::hedge::HedgeService;
use tower_deepseek::metrics::{Metrics, MetricsService};
use tower_deepseek::retry::RetryService;
use tower_deepseek::stack::DeepSeekStack;
use tower_deepseek::timeout::{StreamTimeout, TimeoutBody};
use tower_deepseek::trace_id::PropagateTraceId;
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{Error, ErrorKind};

/// The breaker key of an outbound request: its model (an `Arc` bump, no allocation), or
/// `models` for `GET /models`, which names none.
pub(crate) fn breaker_key(request: &http::Request<RequestBody>) -> RequestModel {
    request
        .extensions()
        .get::<RequestModel>()
        .cloned()
        .unwrap_or_else(|| RequestModel::new("models"))
}

/// The per-model breaker layer, answered by [`ModelFallback`] while a model's breaker is open.
pub type BreakerLayer =
    KeyedCircuitBreakerLayer<fn(&http::Request<RequestBody>) -> RequestModel, RequestModel>;

/// The upstream with the stream timeouts.
pub type TimedUpstream = StreamTimeout<Upstream>;

/// The breakers' service: the upstream, answered by [`ModelFallback`] while open.
pub type Breaker = KeyedCircuitBreakerService<
    TimedUpstream,
    fn(&http::Request<RequestBody>) -> RequestModel,
    RequestModel,
    ModelFallback,
>;

/// A response from the breaker.
pub type BreakerResponse = http::Response<CircuitBreakerBody<TimeoutBody<Incoming>>>;

/// One upstream's protected service: its per-model breakers (with the fallback model for
/// DeepSeek) over its stream timeouts.
pub type Protected = MapResponse<Breaker, fn(BreakerResponse) -> BreakerResponse>;

/// The outbound stack under the client (see the module docs for the order).
pub type Transport =
    PropagateTraceId<MetricsService<RetryService<HedgeService<Failover<Protected>>>>>;

/// The gateway's DeepSeek client: the pooled upstream under the outbound stack.
pub type Client = DeepSeekClient<Transport>;

/// The breaker's fallback: re-sends a refused chat completion with its `model` rewritten to
/// the fallback model. Refusals it cannot help with (no fallback model, the fatal state, a
/// request without a JSON `model`) stay the circuit-open error.
#[derive(Clone, Debug)]
pub struct ModelFallback {
    model: Option<Arc<str>>,
    upstream: TimedUpstream,
}

/// Set on a fallback's answer: the model that answered.
#[derive(Clone, Debug)]
struct AnsweredBy(Arc<str>);

impl Fallback<http::Request<RequestBody>, TimeoutBody<Incoming>> for ModelFallback {
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<TimeoutBody<Incoming>>, Error>> + Send>>;

    fn fallback(&mut self, request: http::Request<RequestBody>, rejection: Error) -> Self::Future {
        let helps = matches!(
            rejection.kind(),
            ErrorKind::CircuitOpen(CircuitOpenReason::Unhealthy | CircuitOpenReason::Forced)
        );
        let refused_model = request.extensions().get::<RequestModel>();
        let Some(model) = self
            .model
            .clone()
            .filter(|model| helps && refused_model.is_none_or(|m| m.as_str() != &**model))
        else {
            return Box::pin(ready(Err(rejection)));
        };
        if request.method() != Method::POST {
            return Box::pin(ready(Err(rejection)));
        }
        let upstream = self.upstream.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let Some(body) = with_model(&bytes, &model) else {
                return Err(rejection);
            };
            tracing::debug!(%model, "circuit breaker open: the fallback model answers");
            let request = http::Request::from_parts(parts, Full::new(body));
            let mut response = upstream.oneshot(request).await?;
            response.extensions_mut().insert(AnsweredBy(model));
            Ok(response)
        })
    }
}

/// `body` (a JSON object with a `model`) with its model replaced.
pub(crate) fn with_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let slot = json.as_object_mut()?.get_mut("model")?;
    *slot = serde_json::Value::String(model.to_owned());
    serde_json::to_vec(&json).ok().map(Bytes::from)
}

tokio::task_local! {
    /// The model that answered the current handler's call in place of the breaker's upstream.
    pub(crate) static ANSWERED_BY: Cell<Option<Arc<str>>>;
}

/// Hands the breaker's [`FallbackResponse`] mark to the handler running this call: the typed
/// client returns parsed answers, so the handler cannot read the response's extensions.
pub(crate) fn note_fallback(response: BreakerResponse) -> BreakerResponse {
    if let Some(mark) = response.extensions().get::<FallbackResponse>() {
        let model = response
            .extensions()
            .get::<AnsweredBy>()
            .map(|m| Arc::clone(&m.0));
        tracing::debug!(breaker = %mark.breaker, ?model, "answered by the fallback");
        // Outside a handler's scope (no one to tell) there is nothing to do.
        let _ = ANSWERED_BY.try_with(|slot| slot.set(model));
    }
    response
}

/// Builds the outbound stack over `upstream` (order and reasons in the module docs).
/// `primary_base_url` is the base URL the client sends DeepSeek's requests to: the failover
/// list replaces it with each other upstream's.
pub fn transport(
    config: &GatewayConfig,
    primary_base_url: &str,
    upstream: Upstream,
    metrics: &Metrics,
) -> Result<Transport, Error> {
    if let Some(model) = &config.fallback_model
        && !valid_model(model)
    {
        return Err(config_error(format!(
            "the fallback model {model:?} is not a model name (1 to 128 visible ASCII characters)"
        )));
    }
    let (retry, timeouts) = config.resilience.layers(metrics)?;
    let protected = |fallback_model: Option<Arc<str>>| -> Result<Protected, Error> {
        let timed = timeouts.layer(upstream.clone());
        let fallback = ModelFallback {
            model: fallback_model,
            upstream: timed.clone(),
        };
        let breaker = config.breaker.layer(metrics)?.with_fallback(fallback);
        Ok(ServiceBuilder::new()
            .map_response(note_fallback as fn(BreakerResponse) -> BreakerResponse)
            .layer(breaker)
            .service(timed))
    };
    let fallback_model = config.fallback_model.as_deref().map(Arc::from);
    let mut failover = Failover::builder()
        .primary("deepseek", primary_base_url, protected(fallback_model)?)
        .listener(metrics.clone());
    for entry in &config.upstreams {
        // The fallback model is DeepSeek's: another provider's breakers refuse without one.
        failover = failover.alternate(entry.endpoint()?, protected(None)?);
    }
    // The crate's preset, in its documented order (`tower_deepseek::stack`): the trace ID
    // outermost (every attempt, a re-sent fallback request and every upstream of the list carry
    // it), metrics (one call is one request, labelled with the model asked for; a refused call
    // counts as `rejected`), retry (each attempt walks the failover list from DeepSeek). The
    // breaker and timeout slots are per upstream, inside the failover list, so each upstream's
    // breakers judge only its own calls. No outbound rate or concurrency limit: the gateway
    // limits its callers inbound.
    let stack = DeepSeekStack::builder()
        .metrics(metrics)
        .without_concurrency_limit()
        .retry(retry)
        .without_circuit_breaker()
        .without_timeouts()
        .build()?;
    // Hedging (off unless `[hedge] enabled`) sits inside the retries and over the failover
    // list: a hedge is one more attempt through the same breakers, and a failed call is still
    // the retries' to repeat.
    let hedge = config.hedge.layer(metrics)?;
    Ok(stack.layer(hedge.layer(failover.build()?)))
}
