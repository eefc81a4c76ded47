//! Key extractors: which bucket a request is counted in.

use std::hash::{BuildHasher, Hash, RandomState};
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use http::{HeaderName, Request};

use crate::deepseek::RequestModel;

/// Picks the rate-limit key of a request. Closures `Fn(&http::Request<B>) -> K` implement it.
///
/// A key is only ever used to find its bucket: it never appears in errors, events or `Debug`
/// output, so a key made of an API key is safe (still, prefer [`HeaderKey`], which keeps only
/// a keyed hash).
///
/// ```
/// use tower_deepseek::rate_limit::KeyExtractor;
///
/// let by_path = |request: &http::Request<()>| request.uri().path().to_owned();
/// let request = http::Request::get("/v1/chat/completions").body(()).unwrap();
/// assert_eq!(by_path.extract(&request), "/v1/chat/completions");
/// ```
pub trait KeyExtractor<B>: Send + Sync + 'static {
    /// The key.
    type Key: Eq + Hash + Clone + Send + Sync + 'static;

    /// The key of `request`.
    fn extract(&self, request: &Request<B>) -> Self::Key;
}

impl<F, B, K> KeyExtractor<B> for F
where
    F: Fn(&Request<B>) -> K + Send + Sync + 'static,
    K: Eq + Hash + Clone + Send + Sync + 'static,
{
    type Key = K;

    #[inline]
    fn extract(&self, request: &Request<B>) -> K {
        self(request)
    }
}

/// One key for every request: a direct (global) limit.
///
/// ```
/// use tower_deepseek::rate_limit::{Global, KeyExtractor};
/// Global.extract(&http::Request::new(()));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Global;

impl<B> KeyExtractor<B> for Global {
    type Key = ();

    #[inline]
    fn extract(&self, _request: &Request<B>) -> Self::Key {}
}

/// Keys by a header's value, such as the caller's API key in `authorization`, **without
/// keeping the value**: the key is a 64-bit hash keyed with a random seed chosen when the
/// extractor is made, so neither the store nor a memory dump holds the secret, and the hash
/// cannot be precomputed. Requests without the header share one bucket (the hash of an empty
/// value).
///
/// Two different values collide with probability 2⁻⁶⁴ per pair (about 3·10⁻⁸ that any two of
/// a million keys share a bucket): negligible.
///
/// ```
/// use tower_deepseek::rate_limit::{HeaderKey, KeyExtractor};
///
/// let by_key = HeaderKey::authorization();
/// let request = |key: &str| {
///     http::Request::get("/").header("authorization", key).body(()).unwrap()
/// };
/// assert_eq!(by_key.extract(&request("Bearer a")), by_key.extract(&request("Bearer a")));
/// assert_ne!(by_key.extract(&request("Bearer a")), by_key.extract(&request("Bearer b")));
/// assert!(!format!("{by_key:?}").contains("Bearer"));
/// ```
///
/// The random seed is per process: replicas sharing a limit through a store (Redis) need the
/// same key for the same caller, so give them one hasher with
/// [`with_hasher`](HeaderKey::with_hasher) (and build them from one binary when that hasher is
/// the standard library's, whose algorithm may change between Rust releases).
#[derive(Clone, Debug)]
pub struct HeaderKey<S = RandomState> {
    name: HeaderName,
    hasher: S,
}

impl HeaderKey {
    /// Keys by the value of header `name`.
    pub fn new(name: HeaderName) -> HeaderKey {
        HeaderKey::with_hasher(name, RandomState::new())
    }

    /// Keys by the `authorization` header (the caller's API key).
    pub fn authorization() -> HeaderKey {
        HeaderKey::new(http::header::AUTHORIZATION)
    }
}

impl<S> HeaderKey<S> {
    /// Keys by the value of header `name`, hashed by `hasher`.
    pub fn with_hasher(name: HeaderName, hasher: S) -> HeaderKey<S> {
        HeaderKey { name, hasher }
    }
}

impl<B, S> KeyExtractor<B> for HeaderKey<S>
where
    S: BuildHasher + Send + Sync + 'static,
{
    type Key = u64;

    #[inline]
    fn extract(&self, request: &Request<B>) -> u64 {
        let value = request
            .headers()
            .get(&self.name)
            .map_or(&[][..], |value| value.as_bytes());
        self.hasher.hash_one(value)
    }
}

/// Keys by the client's IP address, read from a [`SocketAddr`] request extension (a hyper
/// server inserts it per connection; behind a proxy, put the address you trust there). For
/// axum's `ConnectInfo<SocketAddr>`, use
/// `|r: &Request<B>| r.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())`.
/// Requests without the extension share the `None` bucket.
///
/// ```
/// use std::net::SocketAddr;
/// use tower_deepseek::rate_limit::{ClientIp, KeyExtractor};
///
/// let mut request = http::Request::new(());
/// assert_eq!(ClientIp.extract(&request), None);
/// request.extensions_mut().insert("192.0.2.7:5000".parse::<SocketAddr>().unwrap());
/// assert_eq!(ClientIp.extract(&request), Some("192.0.2.7".parse().unwrap()));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientIp;

impl<B> KeyExtractor<B> for ClientIp {
    type Key = Option<IpAddr>;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<IpAddr> {
        request.extensions().get::<SocketAddr>().map(SocketAddr::ip)
    }
}

/// Keys by a value of type `T` in the request's extensions (cloned); requests without it share
/// the `None` bucket.
///
/// ```
/// use tower_deepseek::rate_limit::{ExtensionKey, KeyExtractor};
///
/// #[derive(Clone, PartialEq, Eq, Hash, Debug)]
/// struct Tenant(u32);
///
/// let by_tenant = ExtensionKey::<Tenant>::new();
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(Tenant(7));
/// assert_eq!(by_tenant.extract(&request), Some(Tenant(7)));
/// ```
pub struct ExtensionKey<T> {
    _type: PhantomData<fn() -> T>,
}

impl<T> ExtensionKey<T> {
    /// Keys by the extension of type `T`.
    pub fn new() -> ExtensionKey<T> {
        ExtensionKey { _type: PhantomData }
    }
}

impl<T> Default for ExtensionKey<T> {
    fn default() -> Self {
        ExtensionKey::new()
    }
}

impl<T> Clone for ExtensionKey<T> {
    fn clone(&self) -> Self {
        ExtensionKey::new()
    }
}

impl<T> std::fmt::Debug for ExtensionKey<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtensionKey")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<B, T> KeyExtractor<B> for ExtensionKey<T>
where
    T: Eq + Hash + Clone + Send + Sync + 'static,
{
    type Key = Option<T>;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<T> {
        request.extensions().get::<T>().cloned()
    }
}

/// Keys by the model, from the [`RequestModel`] that
/// [`DeepSeekClient`](crate::DeepSeekClient) puts in each chat request (an `Arc` clone, no
/// parse). Requests without it share the `None` bucket.
///
/// ```
/// use tower_deepseek::deepseek::RequestModel;
/// use tower_deepseek::rate_limit::{KeyExtractor, ModelKey};
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(RequestModel::new("deepseek-v4-pro"));
/// assert_eq!(ModelKey.extract(&request).unwrap().as_str(), "deepseek-v4-pro");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelKey;

impl<B> KeyExtractor<B> for ModelKey {
    type Key = Option<RequestModel>;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<RequestModel> {
        request.extensions().get::<RequestModel>().cloned()
    }
}
