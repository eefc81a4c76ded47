//! The builder: validated settings, and the lazy connection manager for a URL.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{
    DEFAULT_KEY_PREFIX, DEFAULT_TIMEOUT, GCRA_SCRIPT, Inner, MIN_EMISSION_INTERVAL_MICROS,
    RedisFailureMode, RedisLimitListener, RedisRateLimiter,
};
use crate::error::{Error, ErrorKind};

/// Where the limiter gets its connection.
#[derive(Clone)]
enum Connection {
    Manager(ConnectionManager),
    Url(String),
}

/// Builds a [`RedisRateLimiter`]; see [`RedisRateLimiter::builder`].
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::ErrorKind;
/// use tower_deepseek::rate_limit::redis::RedisRateLimiter;
///
/// let error = RedisRateLimiter::builder()
///     .url("redis://127.0.0.1:6379/")
///     .quota(0, Duration::from_secs(1))
///     .build()
///     .unwrap_err();
/// assert_eq!(error.kind(), ErrorKind::Config);
/// assert!(error.to_string().contains("rate"));
/// ```
#[must_use]
pub struct RedisRateLimiterBuilder {
    connection: Option<Connection>,
    key_prefix: String,
    rate: u32,
    period: Duration,
    burst: Option<u32>,
    failure_mode: RedisFailureMode,
    timeout: Duration,
    listener: Option<Box<dyn RedisLimitListener>>,
}

impl fmt::Debug for RedisRateLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiterBuilder")
            .field("key_prefix", &self.key_prefix)
            .field("rate", &self.rate)
            .field("period", &self.period)
            .field("burst", &self.burst)
            .field("failure_mode", &self.failure_mode)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiterBuilder {
    pub(super) fn new() -> RedisRateLimiterBuilder {
        RedisRateLimiterBuilder {
            connection: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            rate: 0,
            period: Duration::ZERO,
            burst: None,
            failure_mode: RedisFailureMode::Open,
            timeout: DEFAULT_TIMEOUT,
            listener: None,
        }
    }

    /// Uses this connection manager (clones share its one multiplexed connection). It should
    /// be able to reconnect quickly: see [`RedisRateLimiterBuilder::url`] for the settings the
    /// limiter uses itself.
    pub fn connection_manager(mut self, manager: ConnectionManager) -> Self {
        self.connection = Some(Connection::Manager(manager));
        self
    }

    /// Connects to this Redis URL (`redis://host:port/db`, `rediss://` is not enabled) with a
    /// lazy connection manager: [`build`](Self::build) does not wait for Redis, so a gateway
    /// starts while Redis is down. It reconnects with backoff capped at 1 s, so a recovery is
    /// noticed within about a second. `build` must then run inside a Tokio runtime.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.connection = Some(Connection::Url(url.into()));
        self
    }

    /// The prefix of every Redis key (default [`DEFAULT_KEY_PREFIX`]); give each limit its own
    /// (e.g. `gateway:rpm:` and `gateway:tpm:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// `rate` units per `period` (e.g. `quota(60, Duration::from_secs(60))`), the emission
    /// interval being `period / rate`. Required; the burst defaults to `rate`, as governor's
    /// `Quota::per_minute(60)` does.
    pub fn quota(mut self, rate: u32, period: Duration) -> Self {
        self.rate = rate;
        self.period = period;
        self
    }

    /// How many units a fresh key admits at once (governor's burst, redis-cell's
    /// `max_burst + 1`); the default is the quota's rate.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// What to do when Redis is unreachable or slow (default [`RedisFailureMode::Open`]).
    pub fn failure_mode(mut self, mode: RedisFailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// How long one decision may take before it counts as Redis being unavailable (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Hears [`RedisLimitEvent`](super::RedisLimitEvent)s.
    pub fn listener(mut self, listener: impl RedisLimitListener) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// Validates the settings and builds the limiter.
    ///
    /// Fails with [`ErrorKind::Config`] when no connection or URL is given, the URL is
    /// invalid, the rate, period, burst or timeout is zero, the emission interval is below
    /// one microsecond, or (for a URL) no Tokio runtime is running.
    pub fn build(self) -> Result<RedisRateLimiter, Error> {
        let config = |message: String| Error::new(ErrorKind::Config, message);
        if self.rate == 0 {
            return Err(config(
                "redis rate limit: the quota's rate must be at least 1 per period, got 0".into(),
            ));
        }
        if self.period.is_zero() {
            return Err(config(
                "redis rate limit: the quota's period must be longer than zero".into(),
            ));
        }
        let burst = self.burst.unwrap_or(self.rate);
        if burst == 0 {
            return Err(config(
                "redis rate limit: the burst must be at least 1 (governor's convention: the \
                 requests a fresh key admits at once), got 0"
                    .into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(config(
                "redis rate limit: the decision timeout must be longer than zero".into(),
            ));
        }
        let interval = self.period.as_secs_f64() * 1e6 / f64::from(self.rate);
        if interval < MIN_EMISSION_INTERVAL_MICROS {
            return Err(config(format!(
                "redis rate limit: {} per {:?} is more than one unit per microsecond, the \
                 script's resolution; count in larger units (e.g. thousands of tokens)",
                self.rate, self.period
            )));
        }
        let tolerance = interval * f64::from(burst);
        let manager = match self.connection {
            Some(Connection::Manager(manager)) => manager,
            Some(Connection::Url(url)) => lazy_manager(&url)?,
            None => {
                return Err(config(
                    "redis rate limit: no Redis given: call .url(..) or .connection_manager(..)"
                        .into(),
                ));
            }
        };
        Ok(RedisRateLimiter {
            inner: Arc::new(Inner {
                manager,
                script: redis::Script::new(GCRA_SCRIPT),
                key_prefix: self.key_prefix.into_boxed_str(),
                interval_arg: interval.to_string().into_boxed_str(),
                tolerance_arg: tolerance.to_string().into_boxed_str(),
                limit: u64::from(burst),
                failure_mode: self.failure_mode,
                timeout: self.timeout,
                listener: self.listener,
                unavailable: AtomicBool::new(false),
                probing: AtomicBool::new(false),
            }),
        })
    }
}

/// A lazy manager that reconnects quickly: each attempt capped at one second, backoff from
/// 50 ms capped at one second, so a restarted Redis is found within about a second.
fn lazy_manager(url: &str) -> Result<ConnectionManager, Error> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::new(
            ErrorKind::Config,
            "redis rate limit: building from a URL needs a running Tokio runtime (the \
             connection manager spawns its reconnection task)",
        ));
    }
    let client = redis::Client::open(url).map_err(|error| {
        Error::new(
            ErrorKind::Config,
            "redis rate limit: the Redis URL is invalid",
        )
        .with_source(error)
    })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_number_of_retries(3);
    ConnectionManager::new_lazy_with_config(client, config).map_err(|error| {
        Error::new(
            ErrorKind::Config,
            "redis rate limit: could not set up the connection manager",
        )
        .with_source(error)
    })
}
