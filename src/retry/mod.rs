//! Retries that understand LLM calls: DeepSeek's rules, back-off with jitter, `Retry-After`,
//! deadlines, a shared budget, and never a retry once a stream has reached the caller.
//!
//! TODO module docs
mod backoff;
mod budget;
mod config;
mod events;
mod layer;
mod policy;
#[cfg(test)]
mod tests;

pub use backoff::{Backoff, FastRandom, Jitter, RandomSource};
pub use budget::{AdaptiveThrottle, GrpcThrottle, RetryBudget, TpsBudget};
pub use config::{DEFAULT_ATTEMPT_CAP, Hold, RetryLayerBuilder};
pub use events::{GiveUpReason, RetryEvent, RetryListener, RetryMetrics};
pub use layer::{ResponseFuture, RetryBody, RetryLayer, RetryService};
pub use policy::{
    DeepSeekRetryPolicy, ReplayBody, Replayable, RetryContext, RetryDecision, RetryPolicy, SendOnce,
};
