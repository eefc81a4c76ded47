//! The typed DeepSeek client over any tower HTTP service.

use std::env;
use std::fmt;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tower::ServiceExt;
use tower_service::Service;

use crate::classify::{Classify, DeepSeekClassifier, Observation, StreamFailure};
use crate::deepseek::sse::{ChatStream, DEFAULT_MAX_LINE_LEN, SseDecoder};
use crate::deepseek::types::{ChatRequest, ChatResponse, ModelList};
use crate::error::{BoxError, Error, ErrorKind};
use crate::lanes::Spares;

/// The base URL used when none is configured.
pub const DEFAULT_BASE_URL: &str = "https://api.deepseek.com";
/// The model used when neither the request nor the configuration names one. Model names change
/// over time; set `DEEPSEEK_MODEL` or [`DeepSeekClientBuilder::default_model`] to change it.
pub const DEFAULT_MODEL: &str = "deepseek-v4-flash";
/// Largest non-streaming response body the client reads (16 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Largest error body kept from an unsuccessful response (64 KiB).
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// The request body the client sends: fully buffered bytes, so a retry can resend it by
/// cloning a reference-counted buffer, never the bytes.
pub type RequestBody = Full<Bytes>;

/// An API key. Its `Debug` and `Display` never show it.
///
/// ```
/// let key = tower_deepseek::deepseek::ApiKey::new("sk-secret");
/// assert_eq!(format!("{key:?}"), "ApiKey([REDACTED])");
/// assert_eq!(key.expose(), "sk-secret");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<Arc<str>>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The key itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// The model a chat request asks for. [`DeepSeekClient`] puts it in every chat request's
/// extensions, so the layers under the client (a breaker or a limiter keyed per model, metrics)
/// read it without parsing the body.
///
/// ```
/// use tower_deepseek::deepseek::RequestModel;
///
/// // A key extractor for a per-model layer, e.g. `KeyedCircuitBreakerLayer`.
/// let by_model = |request: &http::Request<tower_deepseek::deepseek::RequestBody>| {
///     request
///         .extensions()
///         .get::<RequestModel>()
///         .map(|model| model.as_str().to_owned())
///         .unwrap_or_default()
/// };
/// let mut request = http::Request::new(Default::default());
/// assert_eq!(by_model(&request), "");
/// request.extensions_mut().insert(RequestModel::new("deepseek-v4-pro"));
/// assert_eq!(by_model(&request), "deepseek-v4-pro");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestModel(Arc<str>);

impl RequestModel {
    /// A model name.
    pub fn new(model: impl Into<Arc<str>>) -> RequestModel {
        RequestModel(model.into())
    }

    /// The model name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An estimate of the tokens a chat request will use. [`DeepSeekClient`] puts it in every chat
/// request's extensions next to [`RequestModel`], so a token-budget limiter under the client
/// (see `rate_limit::TokenLimitLayer`) reserves tokens without parsing the body.
///
/// `prompt` is an **approximation**: the UTF-8 length in bytes of every message's content (and
/// reasoning content) divided by four, rounded up: about right for English text (four
/// characters a token), near enough for Chinese (three bytes a character, about one token a
/// character), and blind to tool schemas, which are not counted. Bytes rather than characters,
/// because the length is free and counting characters is not. The limiter reconciles
/// the reservation with the real `usage` when the response ends, so the estimate only has to be
/// in the right range.
///
/// ```
/// use tower_deepseek::deepseek::TokenEstimate;
///
/// let estimate = TokenEstimate::new(12, Some(500));
/// assert_eq!(estimate.total(), 512);
/// assert_eq!(TokenEstimate::from_bytes(9), 3); // 9 / 4, rounded up
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenEstimate {
    /// The estimated prompt tokens.
    pub prompt: u32,
    /// The request's `max_tokens`, when it sets one.
    pub max_tokens: Option<u32>,
}

impl TokenEstimate {
    /// An estimate of `prompt` tokens with an optional completion cap.
    pub fn new(prompt: u32, max_tokens: Option<u32>) -> TokenEstimate {
        TokenEstimate { prompt, max_tokens }
    }

    /// The prompt estimate for `bytes` bytes of text: `bytes / 4`, rounded up (saturating).
    pub fn from_bytes(bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX)
    }

    /// `prompt + max_tokens` (saturating); just the prompt when there is no cap (the limiter
    /// then adds its configured completion allowance).
    pub fn total(&self) -> u32 {
        self.prompt.saturating_add(self.max_tokens.unwrap_or(0))
    }
}

/// Configuration of a [`DeepSeekClient`], resolved once at build time.
struct Config {
    base_url: String,
    chat_uri: Uri,
    models_uri: Uri,
    api_key: Option<ApiKey>,
    authorization: Option<HeaderValue>,
    default_model: Arc<str>,
    max_response_bytes: usize,
    max_line_len: usize,
}

/// Builds a [`DeepSeekClient`]. Every setting has a default and an environment variable:
///
/// | setting | environment | default |
/// |---|---|---|
/// | base URL | `DEEPSEEK_BASE_URL` | `https://api.deepseek.com` |
/// | API key | `DEEPSEEK_API_KEY` | none (no `Authorization` header is sent) |
/// | default model | `DEEPSEEK_MODEL` | [`DEFAULT_MODEL`] |
/// | largest non-streaming body | - | 16 MiB |
/// | longest SSE line | - | [`DEFAULT_MAX_LINE_LEN`] |
///
/// ```
/// use tower_deepseek::deepseek::DeepSeekClient;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let transport = tower::service_fn(|_req: http::Request<tower_deepseek::deepseek::RequestBody>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
/// });
/// let client = DeepSeekClient::builder()
///     .base_url("http://127.0.0.1:9000/v1")
///     .api_key("sk-secret")
///     .default_model("deepseek-v4-pro")
///     .build(transport)?;
/// assert!(!format!("{client:?}").contains("sk-secret"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct DeepSeekClientBuilder {
    base_url: Option<String>,
    api_key: Option<ApiKey>,
    default_model: Option<String>,
    max_response_bytes: Option<usize>,
    max_line_len: Option<usize>,
}

impl fmt::Debug for DeepSeekClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeepSeekClientBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("default_model", &self.default_model)
            .finish_non_exhaustive()
    }
}

impl DeepSeekClientBuilder {
    /// A builder with every setting at its default (the environment is not read).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `DEEPSEEK_BASE_URL`, `DEEPSEEK_API_KEY` and `DEEPSEEK_MODEL` for the settings not
    /// set yet. Empty variables count as unset.
    pub fn from_env(mut self) -> Self {
        let var = |name: &str| env::var(name).ok().filter(|v| !v.trim().is_empty());
        if self.base_url.is_none() {
            self.base_url = var("DEEPSEEK_BASE_URL");
        }
        if self.api_key.is_none() {
            self.api_key = var("DEEPSEEK_API_KEY").map(|key| ApiKey::new(key.trim()));
        }
        if self.default_model.is_none() {
            self.default_model = var("DEEPSEEK_MODEL");
        }
        self
    }

    /// The API base URL, e.g. `https://api.deepseek.com` or any OpenAI-compatible endpoint
    /// (`http://127.0.0.1:8000/v1`). `/chat/completions` and `/models` are appended.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The API key, sent as `Authorization: Bearer <key>`.
    pub fn api_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.api_key = Some(ApiKey::new(key));
        self
    }

    /// The model used when a request's `model` is empty.
    pub fn default_model(mut self, model: impl Into<String>) -> Self {
        self.default_model = Some(model.into());
        self
    }

    /// Largest non-streaming response body read, in bytes.
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = Some(max);
        self
    }

    /// Longest SSE line accepted in a stream, in bytes.
    pub fn max_line_len(mut self, max: usize) -> Self {
        self.max_line_len = Some(max);
        self
    }

    /// Builds the client over `service`. Fails with [`ErrorKind::Config`] when the base URL is
    /// not an absolute `http`/`https` URL, the key cannot be a header value, or a limit is zero.
    pub fn build<S>(self, service: S) -> Result<DeepSeekClient<S>, Error> {
        let base_url = self.base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let trimmed = base_url.trim().trim_end_matches('/');
        let join = |suffix: &str| -> Result<Uri, Error> {
            let uri: Uri = format!("{trimmed}{suffix}").parse().map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("base URL {base_url:?} is not a valid URL"),
                )
                .with_source(e)
            })?;
            match (uri.scheme_str(), uri.authority()) {
                (Some("http" | "https"), Some(_)) => Ok(uri),
                _ => Err(Error::new(
                    ErrorKind::Config,
                    format!("base URL {base_url:?} must be an absolute http:// or https:// URL"),
                )),
            }
        };
        let chat_uri = join("/chat/completions")?;
        let models_uri = join("/models")?;
        if base_url.contains('?') || base_url.contains('#') {
            return Err(Error::new(
                ErrorKind::Config,
                format!("base URL {base_url:?} must not have a query or fragment"),
            ));
        }
        let authorization = match &self.api_key {
            Some(key) => {
                let mut value =
                    HeaderValue::try_from(format!("Bearer {}", key.expose())).map_err(|_| {
                        Error::new(
                            ErrorKind::Config,
                            "the API key contains characters not allowed in an HTTP header",
                        )
                    })?;
                // Keeps the key out of HTTP/2 header compression tables and of `Debug` output.
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let max_response_bytes = self
            .max_response_bytes
            .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
        let max_line_len = self.max_line_len.unwrap_or(DEFAULT_MAX_LINE_LEN);
        if max_response_bytes == 0 || max_line_len == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "max_response_bytes and max_line_len must be greater than zero",
            ));
        }
        let default_model = self
            .default_model
            .unwrap_or_else(|| DEFAULT_MODEL.to_owned());
        if default_model.trim().is_empty() {
            return Err(Error::new(ErrorKind::Config, "the default model is empty"));
        }
        Ok(DeepSeekClient {
            service,
            spares: Arc::new(Spares::new()),
            config: Arc::new(Config {
                base_url: trimmed.to_owned(),
                chat_uri,
                models_uri,
                api_key: self.api_key,
                authorization,
                default_model: Arc::from(default_model),
                max_response_bytes,
                max_line_len,
            }),
        })
    }
}

/// A typed DeepSeek (or any OpenAI-compatible) chat client over any tower HTTP service.
///
/// `S` is anything that takes an `http::Request<`[`RequestBody`]`>` and returns an
/// `http::Response` with an [`http_body::Body`]: the crate's pooled
/// [`Upstream`](crate::upstream::Upstream), a `ServiceBuilder` stack of layers around it, or a
/// test double. Cloning the client clones the service and shares the configuration.
///
/// A call drives a clone of the service to ready and calls it, as tower's `oneshot` does,
/// but the clone is kept for the next call made on the same thread (one per CPU, up to 16)
/// rather than dropped: a service must be callable again after `call` returns, which tower's
/// contract already asks of every service. A clone whose `poll_ready` failed is dropped.
///
/// ```no_run
/// use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
/// use tower_deepseek::upstream::Upstream;
///
/// # async fn run() -> Result<(), tower_deepseek::Error> {
/// // Reads DEEPSEEK_API_KEY, DEEPSEEK_BASE_URL and DEEPSEEK_MODEL.
/// let client = DeepSeekClient::from_env(Upstream::new()?)?;
/// let answer = client
///     .chat(ChatRequest::new("deepseek-v4-flash").system("Be brief.").user("Hello!"))
///     .await?;
/// println!("{}", answer.content().unwrap_or_default());
/// # Ok(())
/// # }
/// ```
pub struct DeepSeekClient<S> {
    service: S,
    // Clones of `service` that earlier calls used, reused by the next calls on their lane
    // instead of a clone per call; shared by the client's clones (all clones of one service).
    spares: Arc<Spares<S>>,
    config: Arc<Config>,
}

impl<S: Clone> Clone for DeepSeekClient<S> {
    fn clone(&self) -> Self {
        DeepSeekClient {
            service: self.service.clone(),
            spares: Arc::clone(&self.spares),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> fmt::Debug for DeepSeekClient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeepSeekClient")
            .field("base_url", &self.config.base_url)
            .field("default_model", &self.config.default_model)
            .field("api_key", &self.config.api_key)
            .finish_non_exhaustive()
    }
}

impl DeepSeekClient<()> {
    /// A builder for the client.
    pub fn builder() -> DeepSeekClientBuilder {
        DeepSeekClientBuilder::new()
    }
}

impl<S> DeepSeekClient<S> {
    /// A client configured from `DEEPSEEK_BASE_URL`, `DEEPSEEK_API_KEY` and `DEEPSEEK_MODEL`.
    pub fn from_env(service: S) -> Result<DeepSeekClient<S>, Error> {
        DeepSeekClientBuilder::new().from_env().build(service)
    }

    /// The configured base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.config.base_url
    }

    /// The model used when a request does not name one.
    pub fn default_model(&self) -> &str {
        &self.config.default_model
    }

    /// Whether an API key is configured.
    pub fn has_api_key(&self) -> bool {
        self.config.api_key.is_some()
    }

    /// The transport service.
    pub fn service(&self) -> &S {
        &self.service
    }

    fn redact(&self, error: Error) -> Error {
        match &self.config.api_key {
            Some(key) => error.redact(key.expose()),
            None => error,
        }
    }

    /// Builds a request from parts resolved at build time: no header parsing per call.
    fn build_request(
        &self,
        method: Method,
        uri: &Uri,
        accept: &'static str,
        body: Bytes,
    ) -> Request<RequestBody> {
        let has_body = !body.is_empty();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        // Room for ours (up to 4), the trace layer's (`x-request-id`, `traceparent`,
        // `tracestate`) and the HTTP client's `host`: a map sized for 4 holds 6 and would grow
        // (reallocate and rehash) on every traced call.
        headers.reserve(10);
        headers.insert(ACCEPT, HeaderValue::from_static(accept));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("tower-deepseek/", env!("CARGO_PKG_VERSION"))),
        );
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(auth) = &self.config.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        request
    }

    /// Validates, serializes and frames a chat request, with its [`RequestModel`] attached.
    fn chat_request(
        &self,
        mut request: ChatRequest,
        stream: bool,
    ) -> Result<Request<RequestBody>, Error> {
        let model = if request.model.trim().is_empty() {
            request.model = self.config.default_model.to_string();
            RequestModel(Arc::clone(&self.config.default_model))
        } else if *request.model == *self.config.default_model {
            // The common case shares the configured name instead of allocating a new one.
            RequestModel(Arc::clone(&self.config.default_model))
        } else {
            RequestModel(Arc::from(request.model.as_str()))
        };
        if stream {
            request = request.stream(true).include_usage(true);
        } else {
            request.stream = None;
            request.stream_options = None;
        }
        request.validate()?;
        let bytes: usize = request
            .messages
            .iter()
            .map(|message| {
                message.content.as_deref().map_or(0, str::len)
                    + message.reasoning_content.as_deref().map_or(0, str::len)
            })
            .sum();
        let estimate = TokenEstimate::new(TokenEstimate::from_bytes(bytes), request.max_tokens);
        let body = serde_json::to_vec(&request).map(Bytes::from).map_err(|e| {
            Error::new(
                ErrorKind::InvalidRequest,
                "the request could not be serialized",
            )
            .with_source(e)
        })?;
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut http_request =
            self.build_request(Method::POST, &self.config.chat_uri, accept, body);
        let extensions = http_request.extensions_mut();
        extensions.insert(model);
        extensions.insert(estimate);
        Ok(http_request)
    }
}

impl<S, RB> DeepSeekClient<S>
where
    S: Service<Request<RequestBody>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    RB: Body,
    RB::Error: Into<BoxError>,
{
    /// Sends a non-streaming chat completion and returns the parsed answer.
    ///
    /// The request is validated first ([`ChatRequest::validate`]); an empty `model` takes the
    /// client's default. Leading blank lines (DeepSeek's keep-alives while a request waits to be
    /// scheduled) are skipped. An unsuccessful status is an [`Error`] with DeepSeek's error body;
    /// an answer that stopped with `insufficient_system_resource` is an
    /// [`ErrorKind::Stream`] error, since its content is incomplete.
    pub async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, Error> {
        let request = self.chat_request(request, false)?;
        let response = self.send(request).await?;
        let bytes = self.read_body(response.into_body()).await?;
        let answer: ChatResponse = parse_json(&bytes)?;
        let outcome = DeepSeekClassifier.classify(Observation::End {
            finish_reason: answer.finish_reason().map(|reason| reason.as_str()),
        });
        if let Some(kind) = outcome.error_kind() {
            return Err(Error::new(
                kind,
                "DeepSeek stopped the answer with finish_reason insufficient_system_resource",
            ));
        }
        Ok(answer)
    }

    /// Sends a streaming chat completion and returns the stream of typed chunks.
    ///
    /// `stream` and `stream_options.include_usage` are set, so the stream ends with the usage
    /// chunk. Keep-alive comments are counted, never yielded. A body that ends without
    /// `data: [DONE]` yields a [`StreamFailure::Truncated`] error; a chunk that is not JSON
    /// yields [`StreamFailure::Malformed`].
    pub async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream<RB>, Error> {
        let request = self.chat_request(request, true)?;
        let response = self.send(request).await?;
        let decoder = SseDecoder::with_max_line_len(self.config.max_line_len);
        Ok(ChatStream::with_decoder(response.into_body(), decoder))
    }

    /// Lists the models the API offers (`GET /models`).
    pub async fn models(&self) -> Result<ModelList, Error> {
        let request = self.build_request(
            Method::GET,
            &self.config.models_uri,
            "application/json",
            Bytes::new(),
        );
        let response = self.send(request).await?;
        let bytes = self.read_body(response.into_body()).await?;
        parse_json(&bytes)
    }

    /// Drives the service and turns an unsuccessful status into an [`Error`].
    async fn send(&self, request: Request<RequestBody>) -> Result<Response<RB>, Error> {
        // A clone an earlier call on this thread's lane used, or a new one: a deep stack's
        // clone and drop are a few dozen shared-counter writes, every call (see `Spares`).
        let mut service = self.spares.take().unwrap_or_else(|| self.service.clone());
        let future = match service.ready().await {
            Ok(ready) => ready.call(request),
            // A service that failed to get ready is not kept for the next call.
            Err(e) => return Err(self.redact(Error::from_boxed(e.into()))),
        };
        // Called, the clone is free for the next call's `poll_ready` while this one runs.
        self.spares.give_back(service);
        let response = future
            .await
            .map_err(|e| self.redact(Error::from_boxed(e.into())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status.is_redirection() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the base URL answered with a redirect ({status}); configure the final URL"
                ),
            )
            .with_status(status));
        }
        let (parts, body) = response.into_parts();
        // An error body that cannot be read still leaves the status to report.
        let text = match Limited::new(body, MAX_ERROR_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let outcome = DeepSeekClassifier.classify(Observation::Head {
            status,
            headers: &parts.headers,
        });
        Err(self.redact(Error::from_response_outcome(
            outcome,
            status,
            &parts.headers,
            &text,
        )))
    }

    async fn read_body(&self, body: RB) -> Result<Bytes, Error> {
        let limit = self.config.max_response_bytes;
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::new(
                ErrorKind::Stream(StreamFailure::Malformed),
                format!("the response body exceeds {limit} bytes"),
            )),
            Err(e) => Err(self.redact(Error::from_boxed(e))),
        }
    }
}

/// Parses a JSON body after DeepSeek's leading keep-alive blank lines.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, Error> {
    let mut body = bytes.clone();
    let skip = body.iter().take_while(|b| b.is_ascii_whitespace()).count();
    body.advance(skip);
    if body.is_empty() {
        return Err(Error::new(
            ErrorKind::Stream(StreamFailure::Truncated),
            "the response body was empty",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        let failure = if e.is_eof() {
            StreamFailure::Truncated
        } else {
            StreamFailure::Malformed
        };
        Error::new(
            ErrorKind::Stream(failure),
            format!("the response body is not the expected JSON: {e}"),
        )
        .with_source(e)
    })
}
