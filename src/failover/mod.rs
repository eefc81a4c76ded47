//! Failover across an ordered list of upstreams: DeepSeek first, then any OpenAI-compatible
//! endpoint with its own base URL, API key and model names.
//!
//! [`Failover`] sends each call to the primary and, when the call fails in a way a retry
//! could help with or the primary's circuit breaker refuses it, to the next upstream of the
//! list, until one answers. Each upstream is its own tower service, so each has its own
//! breaker, timeouts and limits; the failover service holds them in order.
//!
//! ```text
//! DeepSeekClient ─► PropagateTraceId ─► Metrics ─► Retry ─► Failover ─┬─► Breaker ─► Timeouts ─► Upstream  (deepseek)
//!                                                                     └─► Breaker ─► Timeouts ─► Upstream  (backup)
//! ```
//!
//! Put it **inside** the [retry layer](crate::retry) and **outside** the per-upstream
//! breakers: each retry attempt walks the list from the top again (a recovered primary is used
//! at once), the retry's budget and back-off bound the whole, and an open breaker on the
//! primary costs no time (its refusal moves the call on before anything is sent).
//!
//! # What fails over
//!
//! The [`FailoverPolicy`] decides, from a [`FailoverReason`]; [`DeepSeekFailoverPolicy`] (the
//! default) follows DeepSeek's error table through [`classify`](crate::classify):
//!
//! | the upstream … | fails over |
//! |---|---|
//! | answered 500, 502, 503, 504, any 5xx | yes |
//! | answered 429 | **yes**: the next upstream has its own quota (see [`DeepSeekFailoverPolicy`]) |
//! | timed out, could not connect, reset the connection | yes |
//! | was refused by its circuit breaker ([`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen), any reason) or concurrency limit ([`ErrorKind::Overloaded`](crate::ErrorKind::Overloaded)) | yes, without anything sent |
//! | answered 400, 401, 402, 422, any other 4xx | **never** |
//!
//! # Streams
//!
//! Only the response head is judged: a call moves on when the head (or an error before it)
//! says so, before any of the body was delivered. A stream whose head was a success is handed
//! over as it is and never sent again; a failure later in its body is the body's error. (A
//! [retry layer](crate::retry) outside with [`Hold::Streams`](crate::retry::Hold) retries a
//! stream that fails before its first token, through the whole list again.)
//!
//! # Rewriting the request for an alternate
//!
//! The request is the one [`DeepSeekClient`](crate::DeepSeekClient) built for the primary. For
//! an alternate [`Endpoint`]:
//! - the URI's base is replaced: the path after the primary's base path (e.g.
//!   `/chat/completions`) and the query are kept, under the alternate's base URL;
//! - `Authorization` becomes `Bearer <the alternate's key>` (removed when it has none); `Host`
//!   and `Content-Length` are dropped; every other header (the trace ID, `traceparent`) is kept;
//! - the JSON body's `model` is mapped (DeepSeek's name → the endpoint's), and the
//!   [`RequestModel`](crate::deepseek::RequestModel) extension with it, so the alternate's
//!   own layers see the model it is asked for. A model without a mapping **skips** that
//!   upstream by default ([`UnmappedModel::Skip`]: another provider would refuse it, or
//!   answer with a model nobody asked for); [`UnmappedModel::SendUnchanged`] sends it as it is.
//!   A request that names no model (`GET /models`) goes unchanged.
//!
//! The body is the client's buffered [`RequestBody`](crate::deepseek::RequestBody): keeping it
//! for the alternates is a reference-count bump; only a call that fails over and needs a
//! different model re-serializes it. Each call keeps a copy of the request head (method,
//! URI, headers, extensions) while alternates exist.
//!
//! # What the caller gets
//!
//! The first answer that does not fail over, marked with the upstream that gave it: a
//! [`ServedBy`] response extension, an `x-upstream: <name>` header
//! ([`FailoverBuilder::header`]), and, for code above a typed client that only sees parsed
//! answers, [`ServedBy::capture`]. When every upstream failed, the last one's answer (a 503
//! stays a 503 response); if the last one was only refused locally (its breaker is open), the
//! latest answer an upstream itself gave, so that a retry layer above sees a retryable 503
//! rather than a final circuit-open refusal.
//!
//! # Events and metrics
//!
//! A [`FailoverListener`] hears each [`FailoverEvent`] (failed over from A to B with its
//! reason, an upstream skipped, the list exhausted). [`Metrics`](crate::metrics::Metrics)
//! implements it: `<prefix>_failovers_total{from,to,reason}`.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_deepseek::circuit_breaker::CircuitBreakerLayer;
//! use tower_deepseek::deepseek::DeepSeekClient;
//! use tower_deepseek::failover::{Endpoint, Failover};
//! use tower_deepseek::retry::RetryLayer;
//! use tower_deepseek::upstream::Upstream;
//!
//! # fn main() -> Result<(), tower_deepseek::Error> {
//! let protected = |name: &str| -> Result<_, tower_deepseek::Error> {
//!     let breaker = CircuitBreakerLayer::builder().name(name).build()?;
//!     Ok(ServiceBuilder::new().layer(breaker).service(Upstream::new()?))
//! };
//! let failover = Failover::builder()
//!     .primary("deepseek", "https://api.deepseek.com", protected("deepseek")?)
//!     .alternate(
//!         Endpoint::new("backup", "https://openai-compatible.example.com/v1")
//!             .api_key("sk-backup")
//!             .model("deepseek-v4-flash", "backup-model"),
//!         protected("backup")?,
//!     )
//!     .build()?;
//! let transport = ServiceBuilder::new()
//!     .layer(RetryLayer::builder().max_attempts(2).build()?)
//!     .service(failover);
//! let client = DeepSeekClient::builder()
//!     .base_url("https://api.deepseek.com")
//!     .api_key("sk-deepseek")
//!     .build(transport)?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

mod config;
mod events;
mod rewrite;
mod service;
#[cfg(test)]
mod tests;

use http::HeaderValue;
use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;

pub use config::{Endpoint, FailoverBuilder, MAX_NAME_LEN, UPSTREAM_HEADER, UnmappedModel};
pub use events::{
    DeepSeekFailoverPolicy, FailoverEvent, FailoverListener, FailoverPolicy, FailoverReason,
    SkipReason,
};
pub use service::{Failover, ResponseFuture};

tokio::task_local! {
    /// The upstream that gave the current scope's latest answer (see [`ServedBy::capture`]).
    static SERVED_BY: Cell<Option<ServedBy>>;
}

/// Which upstream of a [`Failover`] list answered: in the response's extensions, and through
/// [`ServedBy::capture`] for code that only sees a typed client's parsed answer.
///
/// ```
/// use tower_deepseek::failover::ServedBy;
///
/// let response = http::Response::new(());
/// assert!(ServedBy::of(&response).is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServedBy {
    name: Arc<str>,
    index: usize,
    // The name as a header value, made once with the list: setting it on an answer is a
    // reference-count bump, not a copy.
    header_value: HeaderValue,
}

impl ServedBy {
    pub(crate) fn new(name: Arc<str>, index: usize, header_value: HeaderValue) -> ServedBy {
        ServedBy {
            name,
            index,
            header_value,
        }
    }

    /// The upstream's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as a header value (the value of [`UPSTREAM_HEADER`]).
    pub fn header_value(&self) -> &HeaderValue {
        &self.header_value
    }

    /// Its position in the list: 0 for the primary.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the primary answered.
    pub fn is_primary(&self) -> bool {
        self.index == 0
    }

    /// The mark on a response, if a [`Failover`] answered it.
    pub fn of<B>(response: &http::Response<B>) -> Option<&ServedBy> {
        response.extensions().get::<ServedBy>()
    }

    /// Runs `future` and returns its output with the upstream that gave the last answer a
    /// [`Failover`] polled inside it handed over (an error's too), or `None` if none did. For
    /// a handler above [`DeepSeekClient`](crate::DeepSeekClient), which returns parsed answers
    /// and so never shows the response's extensions. The failover future must run on the
    /// same task (no `tower::buffer` between): the mark travels in a task-local.
    ///
    /// ```
    /// use http::{Request, Response};
    /// use tower::ServiceExt;
    /// use tower_deepseek::deepseek::RequestBody;
    /// use tower_deepseek::failover::{Failover, ServedBy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_deepseek::Error> {
    /// let primary = tower::service_fn(|_: Request<RequestBody>| async {
    ///     Ok::<_, tower_deepseek::Error>(Response::new(String::new()))
    /// });
    /// let failover = Failover::builder()
    ///     .primary("deepseek", "https://api.deepseek.com", primary)
    ///     .build()?;
    /// let (answer, served_by) =
    ///     ServedBy::capture(failover.oneshot(Request::new(RequestBody::default()))).await;
    /// answer?;
    /// assert_eq!(served_by.as_ref().map(ServedBy::name), Some("deepseek"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn capture<F: Future>(future: F) -> (F::Output, Option<ServedBy>) {
        SERVED_BY
            .scope(Cell::new(None), async move {
                let output = future.await;
                (output, SERVED_BY.with(Cell::take))
            })
            .await
    }
}
