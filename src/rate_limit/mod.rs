//! Rate limiting (being written for issue 5).
#[cfg(feature = "redis")] pub mod redis;
