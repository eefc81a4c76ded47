//! The DeepSeek chat API: request and response types, the SSE decoder and the typed client.

pub mod client;
mod frame_memory;
pub mod sse;
pub mod types;

pub use client::{
    ApiKey, DEFAULT_BASE_URL, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_MODEL, DeepSeekClient,
    DeepSeekClientBuilder, RequestBody, RequestModel, TokenEstimate,
};

pub use sse::{ChatStream, DEFAULT_MAX_LINE_LEN, SseDecoder, SseEvent};
pub use types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, CompletionTokensDetails, Delta,
    FinishReason, FunctionCall, FunctionCallDelta, FunctionDefinition, Message, Model, ModelList,
    ResponseFormat, Role, Stop, StreamOptions, Thinking, Tool, ToolCall, ToolCallDelta, ToolChoice,
    Usage,
};
