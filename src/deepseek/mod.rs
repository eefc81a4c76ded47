//! The DeepSeek chat API: request and response types, the SSE decoder and the typed client.

pub mod sse;
pub mod types;
