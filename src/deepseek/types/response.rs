//! Responses: answers, stream chunks, usage and models.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;

/// A non-streamed chat completion (`object: "chat.completion"`).
///
/// ```
/// use tower_deepseek::deepseek::types::{ChatResponse, FinishReason};
///
/// let response: ChatResponse = serde_json::from_str(
///     r#"{"id":"1","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}]}"#,
/// ).unwrap();
/// assert_eq!(response.content(), Some("Hi"));
/// assert_eq!(response.finish_reason(), Some(&FinishReason::Length));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The completion's id.
    #[serde(default)]
    pub id: String,
    /// `chat.completion`.
    #[serde(default)]
    pub object: String,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// The backend configuration fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// The answers (one unless `n` was set on a server that supports it).
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatResponse {
    /// The first choice's text.
    pub fn content(&self) -> Option<&str> {
        self.choices.first()?.message.content.as_deref()
    }

    /// The first choice's chain of thought (thinking models).
    pub fn reasoning_content(&self) -> Option<&str> {
        self.choices.first()?.message.reasoning_content.as_deref()
    }

    /// Why the first choice stopped.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.choices.first()?.finish_reason.as_ref()
    }
}

/// One answer of a [`ChatResponse`].
///
/// ```
/// use tower_deepseek::deepseek::types::Choice;
///
/// let choice: Choice = serde_json::from_str(
///     r#"{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[]},"finish_reason":"tool_calls","logprobs":null}"#,
/// ).unwrap();
/// assert_eq!(choice.message.content, None);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// The choice's position.
    #[serde(default)]
    pub index: u32,
    /// The answer.
    pub message: Message,
    /// Why the model stopped.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    /// Log probabilities, when asked for (kept as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Token counts of a completion.
///
/// ```
/// use tower_deepseek::deepseek::types::Usage;
///
/// let usage: Usage = serde_json::from_str(
///     r#"{"prompt_tokens":10,"completion_tokens":30,"total_tokens":40,
///         "completion_tokens_details":{"reasoning_tokens":25}}"#,
/// ).unwrap();
/// assert_eq!(usage.reasoning_tokens(), Some(25));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated (reasoning included).
    #[serde(default)]
    pub completion_tokens: u64,
    /// Prompt plus completion.
    #[serde(default)]
    pub total_tokens: u64,
    /// Prompt tokens served from DeepSeek's context cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_hit_tokens: Option<u64>,
    /// Prompt tokens not in the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_miss_tokens: Option<u64>,
    /// A breakdown of the completion tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    /// Fields this crate does not know (e.g. `prompt_tokens_details`).
    #[serde(flatten)]
    pub extra: Extra,
}

impl Usage {
    /// The tokens spent thinking, when reported.
    pub fn reasoning_tokens(&self) -> Option<u64> {
        self.completion_tokens_details.as_ref()?.reasoning_tokens
    }
}

/// The breakdown of [`Usage::completion_tokens`].
///
/// ```
/// use tower_deepseek::deepseek::types::CompletionTokensDetails;
///
/// let details: CompletionTokensDetails = serde_json::from_str(r#"{"reasoning_tokens":5}"#).unwrap();
/// assert_eq!(details.reasoning_tokens, Some(5));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    /// Tokens of the chain of thought.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One chunk of a streamed completion (`object: "chat.completion.chunk"`).
///
/// ```
/// use tower_deepseek::deepseek::types::ChatChunk;
///
/// let chunk: ChatChunk = serde_json::from_str(
///     r#"{"id":"1","object":"chat.completion.chunk","created":1,"model":"deepseek-v4-flash",
///         "choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
/// ).unwrap();
/// assert_eq!(chunk.content(), Some("Hel"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// The completion's id (the same on every chunk).
    #[serde(default)]
    pub id: String,
    /// `chat.completion.chunk`.
    #[serde(default)]
    pub object: String,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answers.
    #[serde(default)]
    pub model: String,
    /// The backend configuration fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// The increments; empty on the final usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Token counts, on the final chunk when `stream_options.include_usage` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatChunk {
    /// The first choice's new text.
    pub fn content(&self) -> Option<&str> {
        self.choices.first()?.delta.content.as_deref()
    }

    /// The first choice's new chain of thought.
    pub fn reasoning_content(&self) -> Option<&str> {
        self.choices.first()?.delta.reasoning_content.as_deref()
    }

    /// Why the first choice stopped, on its last chunk.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.choices.first()?.finish_reason.as_ref()
    }
}

/// One choice's increment in a [`ChatChunk`].
///
/// ```
/// use tower_deepseek::deepseek::types::{ChunkChoice, FinishReason};
///
/// let choice: ChunkChoice =
///     serde_json::from_str(r#"{"index":0,"delta":{},"finish_reason":"stop"}"#).unwrap();
/// assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// The choice's position.
    #[serde(default)]
    pub index: u32,
    /// What is new.
    #[serde(default)]
    pub delta: Delta,
    /// Why the model stopped, on the choice's last chunk.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    /// Log probabilities, when asked for (kept as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// What a chunk adds to a message.
///
/// ```
/// use tower_deepseek::deepseek::types::{Delta, Role};
///
/// let delta: Delta = serde_json::from_str(r#"{"role":"assistant","reasoning_content":"Hmm"}"#).unwrap();
/// assert_eq!(delta.role, Some(Role::Assistant));
/// assert_eq!(delta.reasoning_content.as_deref(), Some("Hmm"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The role, on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New chain of thought.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Pieces of tool calls, to be joined by `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A piece of a tool call in a [`Delta`]. The first piece of a call has `id`, `type` and the
/// function's `name`; later pieces add to `arguments`.
///
/// ```
/// use tower_deepseek::deepseek::types::ToolCallDelta;
///
/// let piece: ToolCallDelta =
///     serde_json::from_str(r#"{"index":0,"function":{"arguments":"{\"ci"}}"#).unwrap();
/// assert_eq!(piece.function.unwrap().arguments.as_deref(), Some("{\"ci"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Which call of the message this piece belongs to.
    #[serde(default)]
    pub index: u32,
    /// The call's id, on its first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The tool type, on the first piece.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The function's name and/or a piece of its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The function part of a [`ToolCallDelta`].
///
/// ```
/// use tower_deepseek::deepseek::types::FunctionCallDelta;
///
/// let piece: FunctionCallDelta = serde_json::from_str(r#"{"name":"now"}"#).unwrap();
/// assert_eq!(piece.name.as_deref(), Some("now"));
/// assert_eq!(piece.arguments, None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    /// The function's name, on the first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The next piece of the arguments' JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// The answer of `GET /models`.
///
/// ```
/// use tower_deepseek::deepseek::types::ModelList;
///
/// let list: ModelList = serde_json::from_str(
///     r#"{"object":"list","data":[{"id":"deepseek-v4-flash","object":"model","owned_by":"deepseek"}]}"#,
/// ).unwrap();
/// assert_eq!(list.data[0].id, "deepseek-v4-flash");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// `list`.
    #[serde(default)]
    pub object: String,
    /// The models.
    #[serde(default)]
    pub data: Vec<Model>,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One entry of a [`ModelList`].
///
/// ```
/// use tower_deepseek::deepseek::types::Model;
///
/// let model: Model = serde_json::from_str(r#"{"id":"deepseek-v4-pro"}"#).unwrap();
/// assert_eq!(model.id, "deepseek-v4-pro");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// The model name, as used in [`ChatRequest::model`].
    pub id: String,
    /// `model`.
    #[serde(default)]
    pub object: String,
    /// The owner, e.g. `deepseek`.
    #[serde(default)]
    pub owned_by: String,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}
