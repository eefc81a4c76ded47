//! The list of upstreams: where each is, its key, its model names, and the builder that
//! validates them once.

use std::collections::HashMap;
use std::env;
use std::fmt;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Uri};

use super::ServedBy;
use super::events::{DeepSeekFailoverPolicy, FailoverEvent, FailoverListener, FailoverPolicy};
use super::service::Failover;
use crate::classify::{Classify, DeepSeekClassifier};
use crate::deepseek::{ApiKey, RequestModel};
use crate::error::{Error, ErrorKind};

/// The response header naming the upstream that answered, unless
/// [`FailoverBuilder::header`] changes it.
pub const UPSTREAM_HEADER: &str = "x-upstream";

/// The longest upstream name (names are metric labels and header values).
pub const MAX_NAME_LEN: usize = 64;

/// What an alternate upstream does with a request whose model it has no mapping for.
///
/// ```
/// use tower_deepseek::failover::UnmappedModel;
/// assert_eq!(UnmappedModel::default(), UnmappedModel::Skip);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UnmappedModel {
    /// Pass this upstream over (the default): another provider would answer an unknown model
    /// with a 400 or 404, or worse, with a model the caller did not ask for.
    #[default]
    Skip,
    /// Send the request with its model unchanged: for an endpoint that serves DeepSeek's own
    /// model names (a proxy, a self-hosted DeepSeek).
    SendUnchanged,
}

/// An alternate, OpenAI-compatible upstream: its name, base URL, API key and model mapping
/// (DeepSeek's model name → this endpoint's). The key is kept as an [`ApiKey`]: never in
/// `Debug` output, errors or logs.
///
/// ```
/// use tower_deepseek::failover::{Endpoint, UnmappedModel};
///
/// let backup = Endpoint::new("backup", "https://openai-compatible.example.com/v1")
///     .api_key("sk-backup-secret")
///     .model("deepseek-v4-flash", "backup-model")
///     .unmapped_models(UnmappedModel::Skip);
/// assert_eq!(backup.name(), "backup");
/// assert!(!format!("{backup:?}").contains("sk-backup-secret"));
/// ```
#[derive(Clone)]
pub struct Endpoint {
    name: String,
    base_url: String,
    api_key: Option<ApiKey>,
    models: Vec<(String, String)>,
    unmapped: UnmappedModel,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("models", &self.models)
            .field("unmapped", &self.unmapped)
            .finish()
    }
}

impl Endpoint {
    /// An endpoint named `name` (1 to 64 of `A-Za-z0-9._-`: it becomes a header value and a
    /// metric label) at `base_url` (e.g. `https://host/v1`; the path after the primary's base,
    /// such as `/chat/completions`, is appended). No key, no model mapping, unmapped models
    /// skipped.
    pub fn new(name: impl Into<String>, base_url: impl Into<String>) -> Endpoint {
        Endpoint {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            models: Vec::new(),
            unmapped: UnmappedModel::Skip,
        }
    }

    /// The API key, sent as `Authorization: Bearer <key>` in place of the primary's.
    pub fn api_key(mut self, key: impl Into<Arc<str>>) -> Endpoint {
        self.api_key = Some(ApiKey::new(key));
        self
    }

    /// The API key from the environment variable `var` (trimmed). Fails with
    /// [`ErrorKind::Config`] naming the variable (never its value) when it is unset or empty.
    pub fn api_key_from_env(self, var: &str) -> Result<Endpoint, Error> {
        match env::var(var) {
            Ok(key) if !key.trim().is_empty() => Ok(self.api_key(key.trim())),
            _ => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the environment variable {var:?} (the API key of upstream {:?}) is unset or empty",
                    self.name
                ),
            )),
        }
    }

    /// Maps DeepSeek's model `from` to this endpoint's `to`.
    pub fn model(mut self, from: impl Into<String>, to: impl Into<String>) -> Endpoint {
        self.models.push((from.into(), to.into()));
        self
    }

    /// Adds every `(from, to)` pair of `models` (e.g. a TOML table).
    pub fn models<I, K, V>(mut self, models: I) -> Endpoint
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.models
            .extend(models.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// What to do with a model that has no mapping (default [`UnmappedModel::Skip`]).
    pub fn unmapped_models(mut self, unmapped: UnmappedModel) -> Endpoint {
        self.unmapped = unmapped;
        self
    }

    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A model mapping resolved at build time.
pub(crate) struct MappedModel {
    /// The name the upstream knows the model by.
    pub(crate) name: Arc<str>,
    /// The same name as the request extension the upstream's own layers read.
    pub(crate) extension: RequestModel,
}

/// An alternate upstream, resolved once: URI parts, the `Authorization` value, the mapping.
pub(crate) struct Target {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// The base path without a trailing slash (`""` or `/v1`).
    pub(crate) base_path: Box<str>,
    pub(crate) authorization: Option<HeaderValue>,
    api_key: Option<ApiKey>,
    pub(crate) models: HashMap<Box<str>, MappedModel>,
    pub(crate) unmapped: UnmappedModel,
}

impl Target {
    /// `error` without this upstream's key in any text it kept from the upstream.
    pub(crate) fn redact(&self, error: Error) -> Error {
        match &self.api_key {
            Some(key) => error.redact(key.expose()),
            None => error,
        }
    }
}

/// One upstream of the list: its name (as events, the extension and the header carry it)
/// and, for an alternate, how to rewrite a request for it.
pub(crate) struct Upstream {
    pub(crate) served_by: ServedBy,
    pub(crate) header_value: HeaderValue,
    pub(crate) target: Option<Target>,
}

impl Upstream {
    pub(crate) fn name(&self) -> &str {
        self.served_by.name()
    }
}

/// Everything a call reads: resolved once, shared by every clone and response future.
pub(crate) struct Shared<S> {
    pub(crate) upstreams: Box<[Upstream]>,
    /// The alternates' services, in order (index `i` is upstream `i + 1`): each call that
    /// fails over clones the one it needs and drives the clone to ready.
    pub(crate) alternates: Box<[S]>,
    /// The primary's base path (`""` or `/v1`): what is cut from a request's path before an
    /// alternate's base path is put in front of the rest.
    pub(crate) primary_base_path: Box<str>,
    pub(crate) header: Option<HeaderName>,
    pub(crate) classifier: Arc<dyn Classify>,
    pub(crate) policy: Box<dyn FailoverPolicy>,
    pub(crate) listener: Option<Box<dyn FailoverListener>>,
}

impl<S> Shared<S> {
    pub(crate) fn emit(&self, event: FailoverEvent<'_>) {
        if let Some(listener) = &self.listener {
            listener.on_event(&event);
        }
    }
}

/// Builds a [`Failover`]: the primary (DeepSeek, with its base URL and its service), then
/// each alternate [`Endpoint`] with its own service, tried in the order given.
///
/// Each upstream is its own tower service (its own breaker, timeouts, limits), all of one
/// type `S` (box them once here, e.g. with `tower::util::BoxCloneSyncService`, if their
/// stacks differ). Defaults: [`DeepSeekClassifier`], [`DeepSeekFailoverPolicy`], the
/// [`UPSTREAM_HEADER`] response header, no listener.
///
/// ```
/// use tower_deepseek::failover::{Endpoint, Failover};
/// use tower_deepseek::deepseek::RequestBody;
/// use tower_deepseek::ErrorKind;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let upstream = || tower::service_fn(|_: http::Request<RequestBody>| async {
///     Ok::<_, tower_deepseek::Error>(http::Response::new(String::new()))
/// });
/// let failover = Failover::builder()
///     .primary("deepseek", "https://api.deepseek.com", upstream())
///     .alternate(
///         Endpoint::new("backup", "https://openai-compatible.example.com/v1")
///             .api_key("sk-backup")
///             .model("deepseek-v4-flash", "backup-model"),
///         upstream(),
///     )
///     .build()?;
/// assert_eq!(failover.upstream_names().collect::<Vec<_>>(), ["deepseek", "backup"]);
///
/// let bad = Failover::builder()
///     .primary("deepseek", "api.deepseek.com", upstream())
///     .build()
///     .unwrap_err();
/// assert_eq!(bad.kind(), ErrorKind::Config);
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct FailoverBuilder<S> {
    primary: Option<(String, String, S)>,
    alternates: Vec<(Endpoint, S)>,
    header: Option<HeaderName>,
    classifier: Arc<dyn Classify>,
    policy: Box<dyn FailoverPolicy>,
    listener: Option<Box<dyn FailoverListener>>,
}

impl<S> fmt::Debug for FailoverBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverBuilder")
            .field(
                "primary",
                &self.primary.as_ref().map(|(name, url, _)| (name, url)),
            )
            .field(
                "alternates",
                &self
                    .alternates
                    .iter()
                    .map(|(endpoint, _)| endpoint)
                    .collect::<Vec<_>>(),
            )
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl<S> Default for FailoverBuilder<S> {
    fn default() -> Self {
        FailoverBuilder {
            primary: None,
            alternates: Vec::new(),
            header: Some(HeaderName::from_static(UPSTREAM_HEADER)),
            classifier: Arc::new(DeepSeekClassifier),
            policy: Box::new(DeepSeekFailoverPolicy),
            listener: None,
        }
    }
}

impl<S> FailoverBuilder<S> {
    /// The primary upstream: its name (e.g. `deepseek`), the base URL the
    /// [`DeepSeekClient`](crate::DeepSeekClient) above was built with (the same string), and
    /// its service. Requests reach it unchanged.
    pub fn primary(
        mut self,
        name: impl Into<String>,
        base_url: impl Into<String>,
        service: S,
    ) -> Self {
        self.primary = Some((name.into(), base_url.into(), service));
        self
    }

    /// Appends an alternate upstream, tried after the primary and the alternates before it.
    pub fn alternate(mut self, endpoint: Endpoint, service: S) -> Self {
        self.alternates.push((endpoint, service));
        self
    }

    /// The response header naming the upstream that answered (default [`UPSTREAM_HEADER`]).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = Some(name);
        self
    }

    /// No response header: the [`ServedBy`] extension (and [`ServedBy::capture`]) only.
    pub fn no_header(mut self) -> Self {
        self.header = None;
        self
    }

    /// How response heads and errors are classified (default [`DeepSeekClassifier`]).
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// Which failures move a call on (default [`DeepSeekFailoverPolicy`]).
    pub fn policy(mut self, policy: impl FailoverPolicy) -> Self {
        self.policy = Box::new(policy);
        self
    }

    /// A hook for [`FailoverEvent`]s (e.g. a [`Metrics`](crate::metrics::Metrics) clone).
    pub fn listener(mut self, listener: impl FailoverListener) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// Validates the list and builds the service. Fails with [`ErrorKind::Config`] when there
    /// is no primary (an empty list), a name is empty, too long, not of `A-Za-z0-9._-` or
    /// used twice, a base URL is not an absolute `http(s)` URL without query or fragment, a
    /// key cannot be a header value, a model mapping has an empty name, or an alternate maps
    /// no model while skipping unmapped ones (it could never answer a chat request).
    pub fn build(self) -> Result<Failover<S>, Error> {
        let Some((primary_name, primary_url, primary)) = self.primary else {
            return Err(config(
                "the upstream list is empty: set the primary (DeepSeek) first".to_owned(),
            ));
        };
        let mut upstreams = Vec::with_capacity(1 + self.alternates.len());
        let mut services = Vec::with_capacity(self.alternates.len());
        let (_, _, primary_base_path) = parse_base_url(&primary_name, &primary_url)?;
        upstreams.push(upstream(&primary_name, None, 0)?);
        for (index, (endpoint, service)) in self.alternates.into_iter().enumerate() {
            let target = target(&endpoint)?;
            if upstreams
                .iter()
                .any(|u: &Upstream| u.name() == endpoint.name)
            {
                return Err(config(format!(
                    "upstream name {:?} is used twice; each upstream needs its own name",
                    endpoint.name
                )));
            }
            upstreams.push(upstream(&endpoint.name, Some(target), index + 1)?);
            services.push(service);
        }
        Ok(Failover::from_parts(
            primary,
            Arc::new(Shared {
                upstreams: upstreams.into(),
                alternates: services.into(),
                primary_base_path,
                header: self.header,
                classifier: self.classifier,
                policy: self.policy,
                listener: self.listener,
            }),
        ))
    }
}

fn config(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

fn upstream(name: &str, target: Option<Target>, index: usize) -> Result<Upstream, Error> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "other"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(config(format!(
            "upstream name {name:?} must be 1 to {MAX_NAME_LEN} of `A-Za-z0-9._-` (not `other`): it is a header value and a metric label"
        )));
    }
    // Checked above: only visible ASCII, so the header value always parses; an error here
    // would still be a config error, not a panic.
    let header_value = HeaderValue::from_str(name)
        .map_err(|_| config(format!("upstream name {name:?} is not a header value")))?;
    Ok(Upstream {
        served_by: ServedBy::new(Arc::from(name), index, header_value.clone()),
        header_value,
        target,
    })
}

/// Splits a base URL into scheme, authority and path (no trailing slash).
fn parse_base_url(name: &str, url: &str) -> Result<(Scheme, Authority, Box<str>), Error> {
    let trimmed = url.trim().trim_end_matches('/');
    if trimmed.contains('?') || trimmed.contains('#') {
        return Err(config(format!(
            "the base URL {url:?} of upstream {name:?} must not have a query or fragment"
        )));
    }
    let uri: Uri = trimmed.parse().map_err(|e| {
        config(format!(
            "the base URL {url:?} of upstream {name:?} is not a valid URL"
        ))
        .with_source(e)
    })?;
    let parts = uri.into_parts();
    match (parts.scheme, parts.authority) {
        (Some(scheme), Some(authority)) if scheme == Scheme::HTTP || scheme == Scheme::HTTPS => {
            let path = parts
                .path_and_query
                .map(|p| p.path().trim_end_matches('/').to_owned())
                .unwrap_or_default();
            Ok((scheme, authority, path.into()))
        }
        _ => Err(config(format!(
            "the base URL {url:?} of upstream {name:?} must be an absolute http:// or https:// URL"
        ))),
    }
}

fn target(endpoint: &Endpoint) -> Result<Target, Error> {
    let name = &endpoint.name;
    let (scheme, authority, base_path) = parse_base_url(name, &endpoint.base_url)?;
    let authorization = match &endpoint.api_key {
        Some(key) => {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| {
                    config(format!(
                        "the API key of upstream {name:?} contains characters not allowed in an HTTP header"
                    ))
                })?;
            // Out of HTTP/2 header compression tables and of `Debug` output.
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    let mut models = HashMap::with_capacity(endpoint.models.len());
    for (from, to) in &endpoint.models {
        if from.trim().is_empty() || to.trim().is_empty() {
            return Err(config(format!(
                "upstream {name:?} has a model mapping with an empty name ({from:?} -> {to:?})"
            )));
        }
        let mapped: Arc<str> = Arc::from(to.as_str());
        models.insert(
            Box::from(from.as_str()),
            MappedModel {
                extension: RequestModel::new(Arc::clone(&mapped)),
                name: mapped,
            },
        );
    }
    if models.is_empty() && endpoint.unmapped == UnmappedModel::Skip {
        return Err(config(format!(
            "upstream {name:?} maps no model and skips unmapped ones, so it could never answer a chat request: add `models`, or send unmapped models unchanged"
        )));
    }
    Ok(Target {
        scheme,
        authority,
        base_path,
        authorization,
        api_key: endpoint.api_key.clone(),
        models,
        unmapped: endpoint.unmapped,
    })
}
