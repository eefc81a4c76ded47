//! The Redis limiter as the decision step of [`RateLimitLayer`](crate::rate_limit::RateLimitLayer),
//! so one layer gives local or shared limits with the same waiting, events and 429 headers.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;

use super::RedisRateLimiter;
use crate::error::RateLimitInfo;
use crate::rate_limit::{Decide, Decision, RateLimitBackend};

/// A Redis decision on its way. Boxed: the connection manager's futures cannot be named, and
/// the round trip (tens of microseconds) dwarfs one allocation.
pub type RedisDecisionFuture = Pin<Box<dyn Future<Output = Decision> + Send>>;

/// Keys are any bytes (`String`, `&'static str`, `Bytes`, an `http::HeaderValue` such as the
/// caller's `Authorization`): they are hashed before they reach Redis. Use a key that is the
/// same on every replica (not a per-process hash such as
/// [`HeaderKey`](crate::rate_limit::HeaderKey)'s default), or each replica counts apart.
///
/// A limiter that fails open reports [`Decision::Unavailable`] with `fail_open: true` (the
/// layer lets the call through and publishes `BackendUnavailable`); one that fails closed
/// reports it with `fail_open: false` (the layer refuses the call).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_deepseek::rate_limit::RateLimitLayer;
/// use tower_deepseek::rate_limit::redis::RedisRateLimiter;
///
/// # async fn run() -> Result<(), tower_deepseek::Error> {
/// let shared = RedisRateLimiter::builder()
///     .url("redis://127.0.0.1:6379/")
///     .key_prefix("gateway:rpm:")
///     .quota(600, Duration::from_secs(60))
///     .build()?;
/// // One limit per caller key, shared by every replica of the gateway.
/// let layer = RateLimitLayer::builder().name("inbound").build_with_backend(
///     |request: &http::Request<()>| {
///         request.headers().get(http::header::AUTHORIZATION).cloned().unwrap_or_else(|| {
///             http::HeaderValue::from_static("anonymous")
///         })
///     },
///     shared,
/// )?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
impl<K> RateLimitBackend<K> for RedisRateLimiter
where
    K: AsRef<[u8]> + Send + Sync + 'static,
{
    type Future = RedisDecisionFuture;

    fn decide(&self, key: &K, cost: NonZeroU32) -> Decide<Self::Future> {
        let limiter = self.clone();
        // Owned for the round trip; hashed (SHA-1) before it leaves the process.
        let key = key.as_ref().to_vec();
        Decide::Later(Box::pin(async move {
            match limiter.check(&key, cost.get()).await {
                Ok(decision) if !decision.checked => Decision::Unavailable { fail_open: true },
                Ok(decision) if decision.allowed => Decision::Allowed,
                Ok(decision) => match decision.retry_after {
                    Some(retry_after) => Decision::Limited {
                        retry_after,
                        info: RateLimitInfo::new(
                            decision.limit,
                            decision.remaining,
                            decision.reset_after,
                        ),
                    },
                    None => Decision::Exceeded {
                        limit: decision.limit,
                    },
                },
                Err(_) => Decision::Unavailable { fail_open: false },
            }
        }))
    }

    fn limit(&self) -> u64 {
        RedisRateLimiter::limit(self)
    }
}
