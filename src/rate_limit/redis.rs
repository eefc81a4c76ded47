//! A GCRA rate limit shared by every gateway replica through Redis (feature `redis`).
//!
//! Each decision is one `EVALSHA` of an atomic Lua script (loaded by [`redis::Script`]) that
//! computes what redis-cell's `CL.THROTTLE` computes (reference §4.1, §4.3): one stored
//! timestamp per key (the theoretical arrival time, TAT), `allow iff now >= TAT + n·T − τ`, and
//! the answer `limited, limit, remaining, retry_after, reset_after`. The script reads the clock
//! with Redis's `TIME`, so replicas whose own clocks disagree still agree on every decision,
//! and it stores the TAT with a `PX` expiry of `reset_after`, so an idle key costs nothing.
//!
//! # Quota convention
//! The public quota uses governor's convention: [`burst`](RedisRateLimiterBuilder::burst) is
//! the number of requests a fresh key admits at once, and is the `limit` reported. redis-cell
//! calls the same quantity `max_burst + 1`; so `CL.THROTTLE key 4 1 1` (max_burst 4, one per
//! second) is `.quota(1, Duration::from_secs(1)).burst(5)` here, and both report limit 5.
//! Times are microseconds inside the script and [`Duration`]s outside, where redis-cell gives
//! whole seconds.
//!
//! # Keys
//! The key you pass (an API key, a user ID, an IP) is never sent to Redis, logged or put in
//! an event or error: the Redis key is the configured prefix followed by the hex SHA-1 of
//! your key ([`RedisRateLimiter::redis_key`] computes it, e.g. for an operator looking at
//! Redis). Any bytes work: spaces, unicode, very long keys.
//!
//! # When Redis is unreachable
//! A decision that fails (connection refused or lost, a Redis error) or takes longer than the
//! [`timeout`](RedisRateLimiterBuilder::timeout) follows the
//! [`failure_mode`](RedisRateLimiterBuilder::failure_mode): fail open (the default, as Envoy's
//! `failure_mode_deny: false`) admits the request with [`RedisDecision::checked`] `false`;
//! fail closed returns an [`Error`] of kind [`ErrorKind::Network`]: the limiter could not be
//! asked, which is not the caller exceeding a limit (so not `RateLimited`), and a gateway
//! answers it with `502`. Either way the gateway keeps serving, the connection manager
//! reconnects in the background, and the listener hears [`RedisLimitEvent::Unavailable`] once
//! when Redis becomes unreachable and [`RedisLimitEvent::Recovered`] once when a decision
//! comes from Redis again. During an outage only one decision at a time asks Redis (the
//! probe that notices the recovery); the others get the failure mode's answer at once rather
//! than each waiting out the timeout. Every failed decision counts as unavailability,
//! including a Redis error reply (a misconfigured server, a key of the wrong type).
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_deepseek::rate_limit::redis::{RedisFailureMode, RedisLimitEvent, RedisRateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek::Error> {
//! let limiter = RedisRateLimiter::builder()
//!     .url("redis://127.0.0.1:6379/")
//!     .key_prefix("gateway:rpm:")
//!     .quota(60, Duration::from_secs(60)) // 60 requests a minute per key...
//!     .burst(10) // ...at most 10 at once.
//!     .failure_mode(RedisFailureMode::Open)
//!     .listener(|event: &RedisLimitEvent| tracing::warn!(?event, "rate limit store"))
//!     .build()?;
//! let decision = limiter.check("user-42", 1).await?;
//! if !decision.allowed {
//!     println!("retry in {:?}", decision.retry_after);
//! }
//! # Ok(())
//! # }
//! ```

mod backend;
mod builder;
mod events;
mod layer;

pub use backend::RedisDecisionFuture;
pub use builder::RedisRateLimiterBuilder;
pub use events::{RedisLimitEvent, RedisLimitListener, UnavailableCause};
pub use layer::{RedisRateLimitFuture, RedisRateLimitLayer, RedisRateLimitService};

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::classify::NetworkFailure;
use crate::error::{Error, ErrorKind};

/// The decision timeout when none is set: 50 ms. Envoy's global rate limit filter waits
/// 20 ms for its rate limit service by default (reference §4.5); a gateway talking to Redis
/// directly, possibly in another zone, gets a little more room, still far below any LLM call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The Redis key prefix when none is set.
pub const DEFAULT_KEY_PREFIX: &str = "tower-deepseek:ratelimit:";

/// The script: GCRA as redis-cell computes it, in microseconds (see the file for its contract).
const GCRA_SCRIPT: &str = include_str!("redis/gcra.lua");

/// The script works in whole microseconds; a shorter emission interval would lose precision.
const MIN_EMISSION_INTERVAL_MICROS: f64 = 1.0;

/// What the limiter does when Redis cannot answer in time.
///
/// ```
/// use tower_deepseek::rate_limit::redis::RedisFailureMode;
/// assert_eq!(RedisFailureMode::default(), RedisFailureMode::Open);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RedisFailureMode {
    /// Admit the request unchecked (Envoy's default, `failure_mode_deny: false`): an outage of
    /// the limiter does not become an outage of the gateway.
    #[default]
    Open,
    /// Refuse the request with an [`ErrorKind::Network`] error.
    Closed,
}

/// One decision: redis-cell's `CL.THROTTLE` answer, with durations instead of seconds.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::rate_limit::redis::RedisDecision;
///
/// let decision = RedisDecision::unchecked(5);
/// assert!(decision.allowed && !decision.checked);
/// assert_eq!(decision.limit, 5);
/// assert_eq!(decision.reset_after, Duration::ZERO);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisDecision {
    /// Whether the quantity was admitted (and counted).
    pub allowed: bool,
    /// The burst: how many units a fresh key admits at once (redis-cell's `max_burst + 1`).
    pub limit: u64,
    /// Units left right now after this decision (redis-cell's rounding: whole units).
    pub remaining: u64,
    /// When refused: the wait until the same quantity would pass. `None` when allowed, and
    /// when the quantity exceeds the burst (it can never pass).
    pub retry_after: Option<Duration>,
    /// The wait until the key is back to a full burst (its TTL in Redis).
    pub reset_after: Duration,
    /// `false` when Redis could not be asked and the limiter failed open: the request was
    /// admitted without being counted, and the other numbers are placeholders.
    pub checked: bool,
}

impl RedisDecision {
    /// The decision of a limiter that failed open: allowed, not checked, `remaining` equal to
    /// `limit` and no reset time.
    pub fn unchecked(limit: u64) -> RedisDecision {
        RedisDecision {
            allowed: true,
            limit,
            remaining: limit,
            retry_after: None,
            reset_after: Duration::ZERO,
            checked: false,
        }
    }
}

/// A GCRA rate limit kept in Redis and shared by every process using the same Redis, key
/// prefix and quota. Cheap to clone (one `Arc`). See the [module docs](self).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_deepseek::rate_limit::redis::RedisRateLimiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let client = redis::Client::open("redis://127.0.0.1:6379/").expect("valid URL");
/// let manager = redis::aio::ConnectionManager::new(client).await.expect("Redis is up");
/// let tokens = RedisRateLimiter::builder()
///     .connection_manager(manager)
///     .key_prefix("gateway:tpm:")
///     .quota(100_000, Duration::from_secs(60))
///     .build()?;
/// let decision = tokens.check("team-a", 1_200).await?; // weight: estimated tokens
/// println!("{} tokens left", decision.remaining);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    manager: ConnectionManager,
    script: redis::Script,
    key_prefix: Box<str>,
    // The script's arguments, formatted once.
    interval_arg: Box<str>,
    tolerance_arg: Box<str>,
    limit: u64,
    failure_mode: RedisFailureMode,
    timeout: Duration,
    listener: Option<Box<dyn RedisLimitListener>>,
    // Whether the last decision failed; events fire on its changes only.
    unavailable: AtomicBool,
    // Whether a decision is asking Redis during an outage (see `Probe`).
    probing: AtomicBool,
}

/// Why Redis did not make a decision.
enum Failure {
    Timeout,
    Redis(redis::RedisError),
    // Unavailable and another request is already probing: not asked.
    Outage,
}

/// The one decision allowed to ask Redis during an outage; dropping it (answered, timed out
/// or cancelled) lets the next one probe.
struct Probe<'a>(&'a AtomicBool);

impl<'a> Probe<'a> {
    fn start(probing: &'a AtomicBool) -> Option<Probe<'a>> {
        (!probing.swap(true, Ordering::Acquire)).then_some(Probe(probing))
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisRateLimiter")
            .field("key_prefix", &inner.key_prefix)
            .field("limit", &inner.limit)
            .field("emission_interval_micros", &inner.interval_arg)
            .field("failure_mode", &inner.failure_mode)
            .field("timeout", &inner.timeout)
            .field("unavailable", &inner.unavailable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// A builder: set a connection ([`url`](RedisRateLimiterBuilder::url) or
    /// [`connection_manager`](RedisRateLimiterBuilder::connection_manager)) and a
    /// [`quota`](RedisRateLimiterBuilder::quota).
    pub fn builder() -> RedisRateLimiterBuilder {
        RedisRateLimiterBuilder::new()
    }

    /// The burst, reported as `limit` (redis-cell's `max_burst + 1`).
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// The failure mode.
    pub fn failure_mode(&self) -> RedisFailureMode {
        self.inner.failure_mode
    }

    /// Whether the last decision could not be made by Redis.
    pub fn is_unavailable(&self) -> bool {
        self.inner.unavailable.load(Ordering::Relaxed)
    }

    /// The Redis key that holds `key`'s state: the prefix and the hex SHA-1 of `key`.
    pub fn redis_key(&self, key: impl AsRef<[u8]>) -> String {
        let digest = sha1_smol::Sha1::from(key.as_ref()).digest().bytes();
        let mut redis_key = String::with_capacity(self.inner.key_prefix.len() + 40);
        redis_key.push_str(&self.inner.key_prefix);
        for byte in digest {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            redis_key.push(char::from(HEX[usize::from(byte >> 4)]));
            redis_key.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        redis_key
    }

    /// Loads the script into Redis now, so the first decision does not pay the extra round
    /// trips of `NOSCRIPT` then `SCRIPT LOAD` (which [`check`](Self::check) handles anyway).
    pub async fn load_script(&self) -> Result<(), Error> {
        let mut manager = self.inner.manager.clone();
        self.inner
            .script
            .load_async(&mut manager)
            .await
            .map(drop)
            .map_err(|error| {
                Error::new(
                    ErrorKind::Network(NetworkFailure::Other),
                    "redis rate limit: could not load the GCRA script",
                )
                .with_source(error)
            })
    }

    /// Takes `quantity` units (a weight, e.g. estimated tokens; `0` only looks) from `key`'s
    /// limit, if they are all available, in one atomic script run on Redis's clock. The key
    /// may be any bytes (`&str`, `String`, `&[u8]`); only its hash reaches Redis.
    ///
    /// When Redis cannot answer within the timeout: fail open gives an allowed decision with
    /// [`checked`](RedisDecision::checked) `false`; fail closed gives an error of kind
    /// [`ErrorKind::Network`]. The key is never logged or put in the error.
    pub async fn check(
        &self,
        key: impl AsRef<[u8]>,
        quantity: u32,
    ) -> Result<RedisDecision, Error> {
        self.decide(key.as_ref(), quantity, None).await
    }

    /// Like [`check`](Self::check) with "now" given in microseconds instead of read from
    /// Redis's clock. For deterministic tests only (reproducing reference tables): replicas
    /// must use [`check`](Self::check) so that they share one clock.
    #[doc(hidden)]
    pub async fn check_at_micros(
        &self,
        key: impl AsRef<[u8]>,
        quantity: u32,
        now_micros: u64,
    ) -> Result<RedisDecision, Error> {
        self.decide(key.as_ref(), quantity, Some(now_micros)).await
    }

    async fn decide(
        &self,
        key: &[u8],
        quantity: u32,
        now_micros: Option<u64>,
    ) -> Result<RedisDecision, Error> {
        let inner = &*self.inner;
        // During an outage one decision at a time asks Redis (the probe that notices the
        // recovery); the others take the failure mode at once instead of each waiting out the
        // timeout behind a connection that is not coming back yet.
        let _probe = if inner.unavailable.load(Ordering::Relaxed) {
            match Probe::start(&inner.probing) {
                Some(probe) => Some(probe),
                None => return self.fail(Failure::Outage),
            }
        } else {
            None
        };
        let mut invocation = inner.script.key(self.redis_key(key));
        invocation
            .arg(&*inner.interval_arg)
            .arg(&*inner.tolerance_arg)
            .arg(quantity);
        if let Some(now) = now_micros {
            invocation.arg(now);
        }
        let mut manager = inner.manager.clone();
        let reply = tokio::time::timeout(
            inner.timeout,
            invocation.invoke_async::<(i64, i64, i64, i64)>(&mut manager),
        )
        .await;
        match reply {
            Ok(Ok((limited, remaining, retry_after, reset_after))) => {
                if inner.unavailable.load(Ordering::Relaxed)
                    && inner.unavailable.swap(false, Ordering::Relaxed)
                {
                    tracing::info!("redis rate limit: Redis answers again");
                    self.emit(&RedisLimitEvent::Recovered);
                }
                Ok(RedisDecision {
                    allowed: limited == 0,
                    limit: inner.limit,
                    remaining: u64::try_from(remaining).unwrap_or(0),
                    retry_after: u64::try_from(retry_after).ok().map(Duration::from_micros),
                    reset_after: Duration::from_micros(u64::try_from(reset_after).unwrap_or(0)),
                    checked: true,
                })
            }
            Ok(Err(error)) => self.fail(Failure::Redis(error)),
            Err(_elapsed) => self.fail(Failure::Timeout),
        }
    }

    /// The failure mode's answer to a decision Redis did not make.
    fn fail(&self, failure: Failure) -> Result<RedisDecision, Error> {
        let inner = &*self.inner;
        let fail_open = inner.failure_mode == RedisFailureMode::Open;
        let cause = match &failure {
            Failure::Timeout => Some(UnavailableCause::Timeout),
            Failure::Redis(_) => Some(UnavailableCause::Error),
            // Already unavailable: no transition, no event.
            Failure::Outage => None,
        };
        if let Some(cause) = cause
            && !inner.unavailable.swap(true, Ordering::Relaxed)
        {
            let error = match &failure {
                Failure::Redis(error) => Some(tracing::field::display(error)),
                _ => None,
            };
            tracing::warn!(
                cause = cause.as_str(),
                fail_open,
                error,
                "redis rate limit: Redis is unavailable"
            );
            self.emit(&RedisLimitEvent::Unavailable { fail_open, cause });
        }
        if fail_open {
            return Ok(RedisDecision::unchecked(inner.limit));
        }
        const PREFIX: &str = "the shared rate limit could not be checked";
        let refused =
            |message: String| Error::new(ErrorKind::Network(NetworkFailure::Other), message);
        Err(match failure {
            Failure::Timeout => refused(format!(
                "{PREFIX}: Redis did not answer within {:?} (fail-closed)",
                inner.timeout
            )),
            Failure::Redis(error) => {
                refused(format!("{PREFIX}: Redis failed (fail-closed)")).with_source(error)
            }
            Failure::Outage => refused(format!(
                "{PREFIX}: Redis is unavailable and is being probed by another request \
                 (fail-closed)"
            )),
        })
    }

    fn emit(&self, event: &RedisLimitEvent) {
        if let Some(listener) = &self.inner.listener {
            listener.on_event(event);
        }
    }
}
