//! The builder of [`RateLimitLayer`]: validated settings, then a local or plugged backend.

use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::backend::{DirectLimiter, KeyedLimiter, quota};
use super::events::RateLimitListener;
use super::key::{Global, HeaderKey};
use super::layer::{Jitter, Limits, RateLimitLayer};
use crate::error::{Error, ErrorKind};

/// Builds a [`RateLimitLayer`] (or a [`TokenLimitLayer`](super::TokenLimitLayer)'s limiter).
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`per_second`](Self::per_second) / [`per_minute`](Self::per_minute) / [`rate`](Self::rate) | none (required) | the sustained rate |
/// | [`burst`](Self::burst) | the rate's count | calls that may pass at once |
/// | [`wait_up_to`](Self::wait_up_to) | refuse at once | wait for capacity up to this long in total, then refuse |
/// | [`jitter`](Self::jitter) | none | extra random wait on each wait |
/// | [`jitter_seed`](Self::jitter_seed) | random | make jitter reproducible |
/// | [`evict_every`](Self::evict_every) | time to refill a burst, ≥ 1 s | idle-key sweep (keyed) |
/// | [`thread_batch`](Self::thread_batch) | auto: up to 64 for bursts large enough, else exact | cells a thread takes from one global limit at once (see [`DirectLimiter::with_thread_batch`]) |
/// | [`name`](Self::name) | `"rate_limit"` | names the layer in errors, logs, events |
///
/// Zero rates, zero bursts, zero periods are refused by `build` with a
/// [`Config`](ErrorKind::Config) error naming the value.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::ErrorKind;
/// use tower_deepseek::rate_limit::{HeaderKey, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let per_key = RateLimitLayer::builder()
///     .name("inbound")
///     .per_minute(600)
///     .burst(20)
///     .wait_up_to(Duration::from_millis(250))
///     .build_per_api_key()?;
/// # let _ = per_key;
/// let per_path = RateLimitLayer::builder()
///     .per_second(5)
///     .build_keyed::<_, String>(|request: &http::Request<()>| request.uri().path().to_owned())?;
/// # let _ = per_path;
/// let zero = RateLimitLayer::builder().per_second(10).burst(0).build().unwrap_err();
/// assert_eq!(zero.kind(), ErrorKind::Config);
/// assert!(zero.to_string().contains("burst"));
/// # Ok(())
/// # }
/// ```
pub struct RateLimitBuilder {
    name: Arc<str>,
    rate: Option<(u32, Duration)>,
    burst: Option<u32>,
    max_wait: Option<Duration>,
    jitter: Jitter,
    seed: Option<u64>,
    evict_every: Option<Duration>,
    thread_batch: Option<u32>,
    listener: Option<Box<dyn RateLimitListener>>,
}

impl Default for RateLimitBuilder {
    fn default() -> Self {
        RateLimitBuilder {
            name: Arc::from("rate_limit"),
            rate: None,
            burst: None,
            max_wait: None,
            jitter: Jitter::NONE,
            seed: None,
            evict_every: None,
            thread_batch: None,
            listener: None,
        }
    }
}

impl fmt::Debug for RateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("max_wait", &self.max_wait)
            .field("jitter", &self.jitter)
            .field("thread_batch", &self.thread_batch)
            .finish_non_exhaustive()
    }
}

impl RateLimitBuilder {
    /// Names the layer (in errors, logs and events; never a key).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// `count` calls per second.
    pub fn per_second(self, count: u32) -> Self {
        self.rate(count, Duration::from_secs(1))
    }

    /// `count` calls per minute.
    pub fn per_minute(self, count: u32) -> Self {
        self.rate(count, Duration::from_secs(60))
    }

    /// `count` calls per `period` (one call every `period / count`).
    pub fn rate(mut self, count: u32, period: Duration) -> Self {
        self.rate = Some((count, period));
        self
    }

    /// How many calls may pass at once (the bucket's capacity). Default: the rate's count.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Over the limit, wait for capacity up to `max_wait` in total (jitter included) instead
    /// of refusing at once; a call whose wait would not fit is refused at once, without
    /// sleeping first.
    pub fn wait_up_to(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Adds [`Jitter`] to every wait.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Seeds the jitter's random numbers, for reproducible waits (tests).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How often a keyed limiter sweeps idle keys (see [`KeyedLimiter`]).
    pub fn evict_every(mut self, every: Duration) -> Self {
        self.evict_every = Some(every);
        self
    }

    /// How many cells a thread takes from the one global limit of [`build`](Self::build) at
    /// once, so that threads do not contend on the limit's one atomic word for every call.
    /// Default: [`DirectLimiter::auto_thread_batch`] of the burst (up to 64 when the burst is
    /// at least 32 × 2 batches per thread slot, else exact). `1` makes every decision exact.
    /// The approximation it allows is bounded and documented on
    /// [`DirectLimiter::with_thread_batch`]; keyed limits are always exact.
    ///
    /// ```
    /// use tower_deepseek::rate_limit::RateLimitLayer;
    ///
    /// # fn main() -> Result<(), tower_deepseek::Error> {
    /// let exact = RateLimitLayer::builder().per_second(1_000_000).thread_batch(1).build()?;
    /// # let _ = exact;
    /// # Ok(())
    /// # }
    /// ```
    pub fn thread_batch(mut self, batch: u32) -> Self {
        self.thread_batch = Some(batch);
        self
    }

    /// Hears every [`RateLimitEvent`](super::RateLimitEvent).
    pub fn listener(mut self, listener: impl RateLimitListener) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    pub(crate) fn checked_quota(&self) -> Result<governor::Quota, Error> {
        let Some((count, period)) = self.rate else {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "rate limit {:?}: no rate set (use per_second, per_minute or rate)",
                    self.name
                ),
            ));
        };
        quota(&self.name, count, period, self.burst)
    }

    pub(crate) fn keyed_backend<K>(&self) -> Result<KeyedLimiter<K>, Error>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        KeyedLimiter::from_quota(&self.name, self.checked_quota()?, self.evict_every)
    }

    pub(crate) fn into_limits<Bk>(self, backend: Bk) -> Limits<Bk> {
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Limits {
            name: self.name,
            backend,
            max_wait: self.max_wait,
            jitter: self.jitter,
            rng: Mutex::new(rng),
            listener: self.listener,
        }
    }

    /// One global limit.
    pub fn build(self) -> Result<RateLimitLayer, Error> {
        let quota = self.checked_quota()?;
        let batch = self
            .thread_batch
            .unwrap_or_else(|| DirectLimiter::auto_thread_batch(quota.burst_size().get()));
        let backend = DirectLimiter::from_quota(quota).with_thread_batch(batch);
        Ok(RateLimitLayer {
            extractor: Arc::new(Global),
            limits: Arc::new(self.into_limits(backend)),
        })
    }

    /// One limit per caller API key: keyed by a keyed hash of the `authorization` header
    /// ([`HeaderKey::authorization`]; the key itself is never stored).
    pub fn build_per_api_key(self) -> Result<RateLimitLayer<HeaderKey, KeyedLimiter<u64>>, Error> {
        self.build_keyed(HeaderKey::authorization())
    }

    /// One limit per key, the key picked by `extractor` (see [`KeyExtractor`](super::KeyExtractor)). The key type
    /// `K` is inferred from the service the layer wraps; name it (`build_keyed::<_, u64>`)
    /// when the layer is built apart from any service and the extractor (such as
    /// [`HeaderKey`], which serves every body type) does not fix it.
    pub fn build_keyed<E, K>(
        self,
        extractor: E,
    ) -> Result<RateLimitLayer<E, KeyedLimiter<K>>, Error>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        let backend = self.keyed_backend()?;
        Ok(RateLimitLayer {
            extractor: Arc::new(extractor),
            limits: Arc::new(self.into_limits(backend)),
        })
    }

    /// Decides through `backend` (e.g. the Redis GCRA shared by every replica). The rate,
    /// burst and eviction settings of this builder are not used: the backend has its own.
    pub fn build_with_backend<E, Bk>(
        self,
        extractor: E,
        backend: Bk,
    ) -> Result<RateLimitLayer<E, Bk>, Error> {
        Ok(RateLimitLayer {
            extractor: Arc::new(extractor),
            limits: Arc::new(self.into_limits(backend)),
        })
    }
}
