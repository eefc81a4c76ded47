//! Keyed breakers: one breaker per model, host or API key.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::CircuitState;
use super::config::CircuitBreakerBuilder;
use super::fallback::{Fallback, NoFallback};
use super::layer::{CircuitBreakerBody, ResponseFuture, dispatch};
use super::state::CircuitBreaker;
use crate::error::{BoxError, Error, ErrorKind};

/// Picks the breaker key of a request. Closures `Fn(&Req) -> K` implement it.
///
/// ```
/// use tower_deepseek::circuit_breaker::KeyExtractor;
///
/// let by_host = |request: &http::Request<()>| {
///     request.uri().host().unwrap_or_default().to_owned()
/// };
/// let request = http::Request::get("https://api.deepseek.com/models").body(()).unwrap();
/// assert_eq!(by_host.extract(&request), "api.deepseek.com");
/// ```
pub trait KeyExtractor<Req>: Send + Sync + 'static {
    /// The key: it also names the key's breaker, in errors and events.
    type Key: Eq + Hash + Clone + fmt::Display + Send + Sync + 'static;

    /// The key of `request`.
    fn extract(&self, request: &Req) -> Self::Key;
}

impl<F, Req, K> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> K + Send + Sync + 'static,
    K: Eq + Hash + Clone + fmt::Display + Send + Sync + 'static,
{
    type Key = K;

    fn extract(&self, request: &Req) -> K {
        self(request)
    }
}

struct Entry {
    breaker: CircuitBreaker,
    last_used: AtomicU64,
}

impl Entry {
    /// Marks the entry used now. The order of uses only changes when another key was used
    /// since this one: then (and only then) the shared tick moves. A set serving one key
    /// (the usual case) writes nothing shared per call.
    #[inline]
    fn touch(&self, tick: &AtomicU64) {
        if self.last_used.load(Ordering::Relaxed) != tick.load(Ordering::Relaxed) {
            self.last_used
                .store(tick.fetch_add(1, Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }
}

struct Shared<K> {
    template: CircuitBreakerBuilder,
    max_keys: usize,
    // foldhash, seeded per set: keys (model names) come from requests, so the seed keeps
    // them from choosing collisions, at a fraction of std's SipHash per lookup.
    map: RwLock<HashMap<K, Arc<Entry>, foldhash::fast::RandomState>>,
    tick: AtomicU64,
    /// Moves whenever a breaker leaves the set: a service's remembered breaker (see
    /// [`KeyedCircuitBreakerService`]) is good while it has not moved.
    removals: AtomicU64,
}

/// A bounded set of breakers, one per key, all built from one configuration.
///
/// When a new key arrives and the set is full, the least recently used *closed* breaker is
/// evicted (an open breaker is only evicted when all are open: forgetting it would let calls
/// through to a failing upstream).
///
/// ```
/// use tower_deepseek::circuit_breaker::{CircuitBreaker, CircuitState, KeyedCircuitBreaker};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let breakers = KeyedCircuitBreaker::new(CircuitBreaker::builder(), 100)?;
/// breakers.get(&"deepseek-v4-pro".to_owned())?.force_open();
/// assert_eq!(breakers.get(&"deepseek-v4-pro".to_owned())?.state(), CircuitState::ForcedOpen);
/// assert_eq!(breakers.get(&"deepseek-v4-flash".to_owned())?.state(), CircuitState::Closed);
/// assert_eq!(breakers.len(), 2);
/// # Ok(())
/// # }
/// ```
pub struct KeyedCircuitBreaker<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for KeyedCircuitBreaker<K> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K> fmt::Debug for KeyedCircuitBreaker<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("max_keys", &self.shared.max_keys)
            .finish_non_exhaustive()
    }
}

impl<K> KeyedCircuitBreaker<K>
where
    K: Eq + Hash + Clone + fmt::Display,
{
    /// Breakers configured by `template` (each named after its key), at most `max_keys` of
    /// them. The template is validated now.
    pub fn new(template: CircuitBreakerBuilder, max_keys: usize) -> Result<Self, Error> {
        if max_keys == 0 {
            return Err(Error::new(ErrorKind::Config, "max_keys must be at least 1"));
        }
        template.clone().into_config()?;
        Ok(KeyedCircuitBreaker {
            shared: Arc::new(Shared {
                template,
                max_keys,
                map: RwLock::new(HashMap::default()),
                tick: AtomicU64::new(0),
                removals: AtomicU64::new(0),
            }),
        })
    }

    /// The breaker of `key`, created if needed.
    pub fn get(&self, key: &K) -> Result<CircuitBreaker, Error> {
        self.entry(key).map(|(entry, _)| entry.breaker.clone())
    }

    /// The entry of `key`, created if needed, with the removal count read before the lookup
    /// (an entry found is in the set at least until that count moves).
    fn entry(&self, key: &K) -> Result<(Arc<Entry>, u64), Error> {
        let removals = self.shared.removals.load(Ordering::Acquire);
        {
            let map = self
                .shared
                .map
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(entry) = map.get(key) {
                entry.touch(&self.shared.tick);
                return Ok((Arc::clone(entry), removals));
            }
        }
        let mut map = self
            .shared
            .map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = map.get(key) {
            entry.touch(&self.shared.tick);
            return Ok((Arc::clone(entry), removals));
        }
        if map.len() >= self.shared.max_keys {
            let victim = map
                .iter()
                .min_by_key(|(_, entry)| {
                    let closed = entry.breaker.state() == CircuitState::Closed;
                    (!closed, entry.last_used.load(Ordering::Relaxed))
                })
                .map(|(key, _)| key.clone());
            if let Some(victim) = victim {
                map.remove(&victim);
                self.shared.removals.fetch_add(1, Ordering::Release);
            }
        }
        // Keys are user data: the name is escaped and capped when the breaker is built.
        let mut name = key.to_string();
        if name.is_empty() {
            name.push_str("(empty key)");
        }
        let breaker = self.shared.template.clone().name(name).build()?;
        let tick = self.shared.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            breaker,
            last_used: AtomicU64::new(tick),
        });
        map.insert(key.clone(), Arc::clone(&entry));
        Ok((entry, self.shared.removals.load(Ordering::Relaxed)))
    }

    /// Whether an entry found when the removal count was `removals` is still in the set.
    #[inline]
    fn still_holds(&self, removals: u64) -> bool {
        self.shared.removals.load(Ordering::Acquire) == removals
    }

    /// The breaker of `key`, if it exists.
    pub fn existing(&self, key: &K) -> Option<CircuitBreaker> {
        let map = self
            .shared
            .map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(key).map(|entry| entry.breaker.clone())
    }

    /// Keeps only the breakers for which `keep` answers `true` (e.g. drop closed ones).
    pub fn retain(&self, mut keep: impl FnMut(&K, &CircuitBreaker) -> bool) {
        let mut map = self
            .shared
            .map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = map.len();
        map.retain(|key, entry| keep(key, &entry.breaker));
        if map.len() != before {
            self.shared.removals.fetch_add(1, Ordering::Release);
        }
    }

    /// How many keys have a breaker.
    pub fn len(&self) -> usize {
        self.shared
            .map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Whether no key has a breaker yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One breaker per key: a failing model (or host, or API key) does not cut off the others.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_deepseek::circuit_breaker::{CircuitBreaker, KeyedCircuitBreakerLayer};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = KeyedCircuitBreakerLayer::<_, String>::new(
///     |request: &http::Request<()>| request.uri().host().unwrap_or_default().to_owned(),
///     CircuitBreaker::builder().minimum_calls(20),
///     1_000,
/// )?;
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
/// });
/// # let _ = service;
/// # Ok(())
/// # }
/// ```
pub struct KeyedCircuitBreakerLayer<E, K, F = NoFallback> {
    extractor: Arc<E>,
    breakers: KeyedCircuitBreaker<K>,
    fallback: F,
}

impl<E, K, F: Clone> Clone for KeyedCircuitBreakerLayer<E, K, F> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            extractor: Arc::clone(&self.extractor),
            breakers: self.breakers.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<E, K, F> fmt::Debug for KeyedCircuitBreakerLayer<E, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("breakers", &self.breakers)
            .finish_non_exhaustive()
    }
}

impl<E, K> KeyedCircuitBreakerLayer<E, K>
where
    K: Eq + Hash + Clone + fmt::Display,
{
    /// Keys requests with `extractor`; each key's breaker is built from `template`; at most
    /// `max_keys` breakers are kept.
    pub fn new(
        extractor: E,
        template: CircuitBreakerBuilder,
        max_keys: usize,
    ) -> Result<Self, Error> {
        Ok(KeyedCircuitBreakerLayer {
            extractor: Arc::new(extractor),
            breakers: KeyedCircuitBreaker::new(template, max_keys)?,
            fallback: NoFallback,
        })
    }
}

impl<E, K, F> KeyedCircuitBreakerLayer<E, K, F> {
    /// The breakers, to read or operate one key's breaker.
    pub fn breakers(&self) -> &KeyedCircuitBreaker<K> {
        &self.breakers
    }

    /// Answers refused calls with `fallback` (see [`fallback`](super::fallback)).
    pub fn with_fallback<G>(self, fallback: G) -> KeyedCircuitBreakerLayer<E, K, G> {
        KeyedCircuitBreakerLayer {
            extractor: self.extractor,
            breakers: self.breakers,
            fallback,
        }
    }
}

impl<S, E, K, F: Clone> Layer<S> for KeyedCircuitBreakerLayer<E, K, F> {
    type Service = KeyedCircuitBreakerService<S, E, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreakerService {
            inner,
            extractor: Arc::clone(&self.extractor),
            breakers: self.breakers.clone(),
            fallback: self.fallback.clone(),
            last: None,
        }
    }
}

/// The service made by [`KeyedCircuitBreakerLayer`].
///
/// It remembers the breaker of the last key it called with: a service called again and
/// again (a client's reused clone) for the same key (one model) goes straight to that breaker,
/// with no lookup in the shared set, until a breaker leaves the set (evicted or
/// [`retain`](KeyedCircuitBreaker::retain)ed away). A clone starts with nothing remembered.
pub struct KeyedCircuitBreakerService<S, E, K, F = NoFallback> {
    inner: S,
    extractor: Arc<E>,
    breakers: KeyedCircuitBreaker<K>,
    fallback: F,
    last: Option<Remembered<K>>,
}

/// A key's entry as a service last found it, with the set's removal count before the lookup.
struct Remembered<K> {
    key: K,
    entry: Arc<Entry>,
    removals: u64,
}

impl<S: Clone, E, K, F: Clone> Clone for KeyedCircuitBreakerService<S, E, K, F> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerService {
            inner: self.inner.clone(),
            extractor: Arc::clone(&self.extractor),
            breakers: self.breakers.clone(),
            fallback: self.fallback.clone(),
            // Cloned per call by tower's usual pattern: remembering would cost that clone a
            // key and an entry to copy, and its one call would not use them.
            last: None,
        }
    }
}

impl<S, E, K, F> fmt::Debug for KeyedCircuitBreakerService<S, E, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerService")
            .field("breakers", &self.breakers)
            .finish_non_exhaustive()
    }
}

impl<S, E, K, F, ReqB, RespB> Service<Request<ReqB>> for KeyedCircuitBreakerService<S, E, K, F>
where
    S: Service<Request<ReqB>, Response = Response<RespB>>,
    S::Error: Into<BoxError>,
    E: KeyExtractor<Request<ReqB>, Key = K>,
    K: Eq + Hash + Clone + fmt::Display,
    F: Fallback<Request<ReqB>, RespB>,
    RespB: http_body::Body,
{
    type Response = Response<CircuitBreakerBody<RespB>>;
    type Error = Error;
    type Future = KeyedResponseFuture<S::Future, F::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let key = self.extractor.extract(&request);
        let remembered = match self.last.take() {
            Some(last) if last.key == key && self.breakers.still_holds(last.removals) => {
                last.entry.touch(&self.breakers.shared.tick);
                last
            }
            _ => match self.breakers.entry(&key) {
                Ok((entry, removals)) => Remembered {
                    key,
                    entry,
                    removals,
                },
                Err(error) => {
                    return KeyedResponseFuture {
                        inner: KeyedInner::Failed { error: Some(error) },
                    };
                }
            },
        };
        let future = dispatch(
            &remembered.entry.breaker,
            &mut self.inner,
            &mut self.fallback,
            request,
        );
        self.last = Some(remembered);
        KeyedResponseFuture {
            inner: KeyedInner::Breaker { future },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`KeyedCircuitBreakerService`] call.
    pub struct KeyedResponseFuture<F, FB> {
        #[pin]
        inner: KeyedInner<F, FB>,
    }
}

pin_project_lite::pin_project! {
    #[project = KeyedInnerProj]
    enum KeyedInner<F, FB> {
        Breaker { #[pin] future: ResponseFuture<F, FB> },
        Failed { error: Option<Error> },
    }
}

impl<F, FB> fmt::Debug for KeyedResponseFuture<F, FB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyedResponseFuture")
    }
}

impl<F, FB, B, Er> std::future::Future for KeyedResponseFuture<F, FB>
where
    F: std::future::Future<Output = Result<Response<B>, Er>>,
    Er: Into<BoxError>,
    FB: std::future::Future<Output = Result<Response<B>, Error>>,
    B: http_body::Body,
{
    type Output = Result<Response<CircuitBreakerBody<B>>, Error>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            KeyedInnerProj::Breaker { future } => future.poll(cx),
            KeyedInnerProj::Failed { error } => {
                Poll::Ready(Err(error.take().unwrap_or_else(|| {
                    Error::new(ErrorKind::InvalidRequest, "polled after completion")
                })))
            }
        }
    }
}
