//! Rate limiting with GCRA (governor): direct and keyed, reject or wait, and token budgets.
//!
//! TODO module docs
mod backend;
mod clock;
mod events;
mod key;
mod layer;
mod tokens;

pub use backend::{Decide, Decision, DirectLimiter, KeyedLimiter, RateLimitBackend};
pub use clock::{TokioClock, TokioReference};
pub use events::{RateLimitEvent, RateLimitListener};
pub use key::{ClientIp, ExtensionKey, Global, HeaderKey, KeyExtractor, ModelKey};
pub use layer::{
    Jitter, RateLimitBuilder, RateLimitLayer, RateLimitResponse, RateLimitResponseFuture,
    RateLimitResponseLayer, RateLimitService, ResponseFuture,
};
pub use tokens::{
    DEFAULT_COMPLETION_ALLOWANCE, DEFAULT_TOKEN_ESTIMATE, TokenLimitBody, TokenLimitBuilder,
    TokenLimitLayer, TokenLimitService, TokenObserver, TokenResponseFuture,
};

pub use crate::error::RateLimitInfo;

#[cfg(test)]
mod tests;
