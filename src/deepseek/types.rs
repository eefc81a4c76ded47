//! Request and response types for DeepSeek's chat completions API.
//!
//! The shapes follow DeepSeek's (OpenAI-compatible) documentation. Every object keeps the fields
//! this crate does not know in an `extra` map, so a new API field survives a round trip through
//! these types instead of being dropped. Deserialization is lenient: fields DeepSeek (or another
//! OpenAI-compatible server) may omit default to empty values, and enumerations such as
//! [`Role`] and [`FinishReason`] accept any string.
//!
//! ```
//! use tower_deepseek::deepseek::types::{ChatRequest, ChatResponse};
//!
//! let request = ChatRequest::new("deepseek-v4-flash")
//!     .system("Answer briefly.")
//!     .user("What is the capital of France?")
//!     .temperature(0.2);
//! request.validate().unwrap();
//! let body = serde_json::to_value(&request).unwrap();
//! assert_eq!(body["messages"][1]["content"], "What is the capital of France?");
//!
//! let response: ChatResponse = serde_json::from_str(
//!     r#"{"id":"1","object":"chat.completion","created":1,"model":"deepseek-v4-flash",
//!         "choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},
//!                     "finish_reason":"stop"}]}"#,
//! ).unwrap();
//! assert_eq!(response.content(), Some("Paris."));
//! ```

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind};

/// Unknown JSON object fields, kept so they round-trip.
///
/// ```
/// use tower_deepseek::deepseek::types::{ChatRequest, Extra};
///
/// let request: ChatRequest =
///     serde_json::from_str(r#"{"model":"m","messages":[],"seed":7}"#).unwrap();
/// let extra: &Extra = &request.extra;
/// assert_eq!(extra["seed"], 7);
/// ```
pub type Extra = Map<String, Value>;

/// Defines a string-valued enumeration with known variants plus `Other(String)`, so that any
/// string deserializes and a value this crate does not know yet is kept verbatim.
macro_rules! open_string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[non_exhaustive]
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )*
            /// A value this crate does not know, kept verbatim. Build values with `From<&str>`
            /// so that known spellings map to their own variants.
            Other(String),
        }

        impl $name {
            /// The value as it is spelled on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $( $text => $name::$variant, )*
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                match text.as_str() {
                    $( $text => $name::$variant, )*
                    _ => $name::Other(text),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct TextVisitor;
                impl Visitor<'_> for TextVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a string")
                    }
                    // Borrowed text avoids an allocation for the known spellings.
                    fn visit_str<E: de::Error>(self, text: &str) -> Result<$name, E> {
                        Ok($name::from(text))
                    }
                    fn visit_string<E: de::Error>(self, text: String) -> Result<$name, E> {
                        Ok($name::from(text))
                    }
                }
                deserializer.deserialize_str(TextVisitor)
            }
        }
    };
}

open_string_enum! {
    /// Who wrote a message. Unknown roles deserialize to [`Role::Other`].
    ///
    /// ```
    /// use tower_deepseek::deepseek::types::Role;
    ///
    /// assert_eq!(serde_json::to_string(&Role::User).unwrap(), r#""user""#);
    /// let role: Role = serde_json::from_str(r#""developer""#).unwrap();
    /// assert_eq!(role, Role::Other("developer".into()));
    /// assert_eq!(Role::from("tool"), Role::Tool);
    /// ```
    pub enum Role {
        /// Instructions for the model.
        System => "system",
        /// The person asking.
        User => "user",
        /// The model.
        Assistant => "assistant",
        /// The result of a tool call, answering one of the assistant's `tool_calls`.
        Tool => "tool",
    }
}

open_string_enum! {
    /// Why the model stopped. Unknown reasons deserialize to [`FinishReason::Other`].
    ///
    /// ```
    /// use tower_deepseek::deepseek::types::FinishReason;
    ///
    /// let reason: FinishReason = serde_json::from_str(r#""insufficient_system_resource""#).unwrap();
    /// assert_eq!(reason, FinishReason::InsufficientSystemResource);
    /// let new: FinishReason = serde_json::from_str(r#""something_new""#).unwrap();
    /// assert_eq!(new.as_str(), "something_new");
    /// ```
    pub enum FinishReason {
        /// A natural stop or a stop sequence.
        Stop => "stop",
        /// `max_tokens` or the context length was reached.
        Length => "length",
        /// Content was filtered.
        ContentFilter => "content_filter",
        /// The model called tools.
        ToolCalls => "tool_calls",
        /// DeepSeek ran out of capacity mid-generation; the answer is incomplete.
        InsufficientSystemResource => "insufficient_system_resource",
    }
}

/// One message of a conversation, in a request or a response.
///
/// `content` is optional because an assistant message that calls tools may have none.
///
/// ```
/// use tower_deepseek::deepseek::types::{Message, Role};
///
/// let message = Message::tool("call_0", r#"{"temperature":21}"#);
/// assert_eq!(message.role, Role::Tool);
/// assert_eq!(message.tool_call_id.as_deref(), Some("call_0"));
/// let json = serde_json::to_value(Message::user("hi")).unwrap();
/// assert_eq!(json, serde_json::json!({"role": "user", "content": "hi"}));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The text; `None` (JSON `null` or absent) for an assistant message that only calls tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// An optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The thinking models' chain of thought (assistant messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The tools the assistant called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For a `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message {
    /// A message with the given role and text and nothing else.
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: Some(content.into()),
            name: None,
            reasoning_content: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Extra::new(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Message {
        Message::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Message {
        Message::new(Role::User, content)
    }

    /// An assistant message (an earlier answer, for multi-turn conversations).
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new(Role::Assistant, content)
    }

    /// A tool result answering the call with id `tool_call_id`.
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            tool_call_id: Some(tool_call_id.into()),
            ..Message::new(Role::Tool, content)
        }
    }
}

/// A tool call made by the assistant.
///
/// ```
/// use tower_deepseek::deepseek::types::ToolCall;
///
/// let call: ToolCall = serde_json::from_str(
///     r#"{"id":"call_0","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}"#,
/// ).unwrap();
/// assert_eq!(call.function.name, "get_weather");
/// assert_eq!(call.kind, "function");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, echoed by the `tool` message that answers it.
    #[serde(default)]
    pub id: String,
    /// The tool type; DeepSeek has only `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function called.
    pub function: FunctionCall,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

fn function_kind() -> String {
    "function".to_owned()
}

/// The function part of a [`ToolCall`].
///
/// ```
/// use tower_deepseek::deepseek::types::FunctionCall;
///
/// let call = FunctionCall { name: "get_weather".into(), arguments: "{}".into() };
/// assert_eq!(serde_json::to_value(&call).unwrap()["arguments"], "{}");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    #[serde(default)]
    pub name: String,
    /// The arguments as a JSON text, as the model wrote it (it may not be valid JSON).
    #[serde(default)]
    pub arguments: String,
}

/// A tool the model may call.
///
/// ```
/// use tower_deepseek::deepseek::types::Tool;
///
/// let tool = Tool::function(
///     "get_weather",
///     "The current weather in a city",
///     serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
/// );
/// assert_eq!(serde_json::to_value(&tool).unwrap()["type"], "function");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// The tool type; DeepSeek has only `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function's definition.
    pub function: FunctionDefinition,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Tool {
    /// A function tool with a JSON Schema for its parameters.
    pub fn function(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
    ) -> Tool {
        Tool {
            kind: function_kind(),
            function: FunctionDefinition {
                name: name.into(),
                description: Some(description.into()),
                parameters: Some(parameters),
                extra: Extra::new(),
            },
            extra: Extra::new(),
        }
    }
}

/// The definition of a function tool.
///
/// ```
/// use tower_deepseek::deepseek::types::FunctionDefinition;
///
/// let definition: FunctionDefinition =
///     serde_json::from_str(r#"{"name":"now","strict":true}"#).unwrap();
/// assert_eq!(definition.name, "now");
/// assert_eq!(definition.extra["strict"], true);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    /// The function's name.
    pub name: String,
    /// What the function does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Fields this crate does not know (e.g. `strict`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Whether and which tool the model must call.
///
/// Serialized as `"none"`, `"auto"`, `"required"` or
/// `{"type":"function","function":{"name":..}}`; any other JSON value is kept as
/// [`ToolChoice::Other`].
///
/// ```
/// use tower_deepseek::deepseek::types::ToolChoice;
///
/// assert_eq!(serde_json::to_string(&ToolChoice::Auto).unwrap(), r#""auto""#);
/// let forced = ToolChoice::function("get_weather");
/// assert_eq!(
///     serde_json::to_value(&forced).unwrap(),
///     serde_json::json!({"type": "function", "function": {"name": "get_weather"}}),
/// );
/// let parsed: ToolChoice = serde_json::from_value(serde_json::to_value(&forced).unwrap()).unwrap();
/// assert_eq!(parsed, forced);
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// Call no tool.
    None,
    /// The model decides.
    Auto,
    /// Call at least one tool.
    Required,
    /// Call this function.
    Function(String),
    /// Any other value, kept verbatim.
    Other(Value),
}

impl ToolChoice {
    /// Forces a call of the named function.
    pub fn function(name: impl Into<String>) -> ToolChoice {
        ToolChoice::Function(name.into())
    }

    fn to_value(&self) -> Value {
        match self {
            ToolChoice::None => Value::from("none"),
            ToolChoice::Auto => Value::from("auto"),
            ToolChoice::Required => Value::from("required"),
            ToolChoice::Function(name) => serde_json::json!({
                "type": "function",
                "function": { "name": name },
            }),
            ToolChoice::Other(value) => value.clone(),
        }
    }

    fn from_value(value: Value) -> ToolChoice {
        match &value {
            Value::String(mode) => match mode.as_str() {
                "none" => return ToolChoice::None,
                "auto" => return ToolChoice::Auto,
                "required" => return ToolChoice::Required,
                _ => {}
            },
            // Only the exact documented shape becomes `Function`, so nothing is lost on the way
            // back out.
            Value::Object(object)
                if object.len() == 2
                    && object.get("type").and_then(Value::as_str) == Some("function") =>
            {
                if let Some(Value::Object(function)) = object.get("function")
                    && function.len() == 1
                    && let Some(Value::String(name)) = function.get("name")
                {
                    return ToolChoice::Function(name.clone());
                }
            }
            _ => {}
        }
        ToolChoice::Other(value)
    }
}

impl Serialize for ToolChoice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(ToolChoice::from_value)
    }
}

/// The output format: `{"type":"json_object"}` asks for a JSON answer, `{"type":"text"}` is the
/// default.
///
/// ```
/// use tower_deepseek::deepseek::types::ResponseFormat;
///
/// assert_eq!(
///     serde_json::to_value(ResponseFormat::json_object()).unwrap(),
///     serde_json::json!({"type": "json_object"}),
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseFormat {
    /// `json_object` or `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Fields this crate does not know (e.g. a JSON schema on other servers).
    #[serde(flatten)]
    pub extra: Extra,
}

impl ResponseFormat {
    /// `{"type":"json_object"}`: the model answers with a JSON object. DeepSeek also wants the
    /// word "json" somewhere in the prompt.
    pub fn json_object() -> ResponseFormat {
        ResponseFormat {
            kind: "json_object".to_owned(),
            extra: Extra::new(),
        }
    }

    /// `{"type":"text"}`: plain text (the default).
    pub fn text() -> ResponseFormat {
        ResponseFormat {
            kind: "text".to_owned(),
            extra: Extra::new(),
        }
    }
}

/// Options for streamed responses.
///
/// ```
/// use tower_deepseek::deepseek::types::StreamOptions;
///
/// let options = StreamOptions { include_usage: true, ..Default::default() };
/// assert_eq!(serde_json::to_value(&options).unwrap(), serde_json::json!({"include_usage": true}));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk carrying `usage` (its `choices` may be empty) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
    /// Fields this crate does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Turns the thinking models' chain of thought on or off: `{"type":"enabled"|"disabled"}`.
///
/// ```
/// use tower_deepseek::deepseek::types::Thinking;
///
/// let thinking = Thinking::from(true);
/// assert!(thinking.is_enabled());
/// assert_eq!(serde_json::to_value(&thinking).unwrap(), serde_json::json!({"type": "enabled"}));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thinking {
    /// `enabled` or `disabled`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Fields this crate does not know (e.g. a thinking budget).
    #[serde(flatten)]
    pub extra: Extra,
}

impl Thinking {
    /// `{"type":"enabled"}`.
    pub fn enabled() -> Thinking {
        Thinking {
            kind: "enabled".to_owned(),
            extra: Extra::new(),
        }
    }

    /// `{"type":"disabled"}`.
    pub fn disabled() -> Thinking {
        Thinking {
            kind: "disabled".to_owned(),
            extra: Extra::new(),
        }
    }

    /// Whether the type is `enabled`.
    pub fn is_enabled(&self) -> bool {
        self.kind == "enabled"
    }
}

impl From<bool> for Thinking {
    fn from(enabled: bool) -> Thinking {
        if enabled {
            Thinking::enabled()
        } else {
            Thinking::disabled()
        }
    }
}

/// Stop sequences: one string or a list.
///
/// ```
/// use tower_deepseek::deepseek::types::Stop;
///
/// assert_eq!(serde_json::to_string(&Stop::from("END")).unwrap(), r#""END""#);
/// assert_eq!(serde_json::to_string(&Stop::from(["a", "b"])).unwrap(), r#"["a","b"]"#);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// A single stop sequence.
    One(String),
    /// Several stop sequences.
    Many(Vec<String>),
}

impl From<&str> for Stop {
    fn from(sequence: &str) -> Stop {
        Stop::One(sequence.to_owned())
    }
}

impl From<String> for Stop {
    fn from(sequence: String) -> Stop {
        Stop::One(sequence)
    }
}

impl From<Vec<String>> for Stop {
    fn from(sequences: Vec<String>) -> Stop {
        Stop::Many(sequences)
    }
}

impl From<Vec<&str>> for Stop {
    fn from(sequences: Vec<&str>) -> Stop {
        Stop::Many(sequences.into_iter().map(str::to_owned).collect())
    }
}

impl<const N: usize> From<[&str; N]> for Stop {
    fn from(sequences: [&str; N]) -> Stop {
        Stop::Many(sequences.into_iter().map(str::to_owned).collect())
    }
}

/// A chat completion request (`POST /chat/completions`).
///
/// Build it with the chained methods; every optional field is left out of the JSON when unset,
/// so the server's defaults apply. Fields this crate does not know go in [`extra`](Self::extra)
/// (or [`ChatRequest::extra`]) and are sent as top-level fields.
///
/// ```
/// use tower_deepseek::deepseek::types::{ChatRequest, Tool, ToolChoice};
///
/// let request = ChatRequest::new("deepseek-v4-pro")
///     .system("You are a weather bot.")
///     .user("Weather in Paris?")
///     .tools([Tool::function("get_weather", "Weather by city", serde_json::json!({"type": "object"}))])
///     .tool_choice(ToolChoice::Auto)
///     .thinking(true)
///     .max_tokens(512)
///     .stream(true)
///     .include_usage(true)
///     .extra("seed", 7);
/// request.validate().unwrap();
/// let json = serde_json::to_value(&request).unwrap();
/// assert_eq!(json["stream_options"]["include_usage"], true);
/// assert_eq!(json["seed"], 7);
/// assert!(json.get("temperature").is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model name, e.g. `deepseek-v4-flash`. A plain string: model names change.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Options for streamed answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Sampling temperature, `0..=2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, `0..=1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// The most tokens to generate (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Penalty for frequent tokens, `-2..=2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Penalty for tokens already present, `-2..=2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// The output format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// Whether and which tool the model must call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Return the log probabilities of the output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// How many most likely tokens to return at each position, `0..=20`; needs `logprobs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// Thinking mode for the thinking models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Thinking>,
    /// How hard a thinking model thinks (e.g. `low`, `medium`, `high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// An id of the end user, for DeepSeek's abuse tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Fields this crate does not know, sent as top-level fields.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatRequest {
    /// An empty request for `model`.
    pub fn new(model: impl Into<String>) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            ..ChatRequest::default()
        }
    }

    /// Appends a system message.
    pub fn system(self, content: impl Into<String>) -> ChatRequest {
        self.message(Message::system(content))
    }

    /// Appends a user message.
    pub fn user(self, content: impl Into<String>) -> ChatRequest {
        self.message(Message::user(content))
    }

    /// Appends an assistant message.
    pub fn assistant(self, content: impl Into<String>) -> ChatRequest {
        self.message(Message::assistant(content))
    }

    /// Appends a message.
    pub fn message(mut self, message: Message) -> ChatRequest {
        self.messages.push(message);
        self
    }

    /// Appends several messages.
    pub fn messages(mut self, messages: impl IntoIterator<Item = Message>) -> ChatRequest {
        self.messages.extend(messages);
        self
    }

    /// Sets the sampling temperature (`0..=2`).
    pub fn temperature(mut self, temperature: f64) -> ChatRequest {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the nucleus sampling mass (`0..=1`).
    pub fn top_p(mut self, top_p: f64) -> ChatRequest {
        self.top_p = Some(top_p);
        self
    }

    /// Sets the most tokens to generate.
    pub fn max_tokens(mut self, max_tokens: u32) -> ChatRequest {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the frequency penalty (`-2..=2`).
    pub fn frequency_penalty(mut self, penalty: f64) -> ChatRequest {
        self.frequency_penalty = Some(penalty);
        self
    }

    /// Sets the presence penalty (`-2..=2`).
    pub fn presence_penalty(mut self, penalty: f64) -> ChatRequest {
        self.presence_penalty = Some(penalty);
        self
    }

    /// Sets the stop sequence(s): a string, a `Vec` or an array of strings.
    pub fn stop(mut self, stop: impl Into<Stop>) -> ChatRequest {
        self.stop = Some(stop.into());
        self
    }

    /// Sets the output format.
    pub fn response_format(mut self, format: ResponseFormat) -> ChatRequest {
        self.response_format = Some(format);
        self
    }

    /// Asks for a JSON object answer (`{"type":"json_object"}`).
    pub fn response_format_json(self) -> ChatRequest {
        self.response_format(ResponseFormat::json_object())
    }

    /// Sets the tools the model may call.
    pub fn tools(mut self, tools: impl IntoIterator<Item = Tool>) -> ChatRequest {
        self.tools = Some(tools.into_iter().collect());
        self
    }

    /// Sets whether and which tool the model must call.
    pub fn tool_choice(mut self, choice: ToolChoice) -> ChatRequest {
        self.tool_choice = Some(choice);
        self
    }

    /// Asks for log probabilities.
    pub fn logprobs(mut self, logprobs: bool) -> ChatRequest {
        self.logprobs = Some(logprobs);
        self
    }

    /// Sets how many top alternatives to return per token (`0..=20`; needs `logprobs(true)`).
    pub fn top_logprobs(mut self, count: u32) -> ChatRequest {
        self.top_logprobs = Some(count);
        self
    }

    /// Turns thinking on or off: a `bool` or a [`Thinking`].
    pub fn thinking(mut self, thinking: impl Into<Thinking>) -> ChatRequest {
        self.thinking = Some(thinking.into());
        self
    }

    /// Sets the reasoning effort of a thinking model.
    pub fn reasoning_effort(mut self, effort: impl Into<String>) -> ChatRequest {
        self.reasoning_effort = Some(effort.into());
        self
    }

    /// Sets the end-user id sent for abuse tracking.
    pub fn user_id(mut self, user_id: impl Into<String>) -> ChatRequest {
        self.user_id = Some(user_id.into());
        self
    }

    /// Asks for (or not) a streamed answer.
    pub fn stream(mut self, stream: bool) -> ChatRequest {
        self.stream = Some(stream);
        self
    }

    /// Asks for a final usage chunk in a streamed answer (`stream_options.include_usage`).
    /// It has effect only together with `stream(true)`.
    pub fn include_usage(mut self, include_usage: bool) -> ChatRequest {
        self.stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = include_usage;
        self
    }

    /// Sets a top-level field this crate has no method for.
    pub fn extra(mut self, key: impl Into<String>, value: impl Into<Value>) -> ChatRequest {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Checks the request before it is sent, naming the offending field and its allowed range:
    ///
    /// - `model` must not be empty, `messages` must not be empty;
    /// - `temperature` in `0..=2`, `top_p` in `0..=1` (0 is allowed: DeepSeek documents only
    ///   the upper bound, and rejecting what the server may accept would block valid calls),
    ///   `frequency_penalty` and `presence_penalty` in `-2..=2`; NaN is never allowed;
    /// - `max_tokens` at least 1;
    /// - `top_logprobs` in `0..=20`, and only with `logprobs: true`;
    /// - every `tool` message has a non-empty `tool_call_id`.
    ///
    /// Anything else (model names, context lengths) is left to the server.
    pub fn validate(&self) -> Result<(), Error> {
        fn invalid(message: String) -> Result<(), Error> {
            Err(Error::new(ErrorKind::InvalidRequest, message))
        }
        fn check_range(field: &str, value: Option<f64>, low: f64, high: f64) -> Result<(), Error> {
            match value {
                // `contains` is false for NaN, so NaN is rejected here too.
                Some(value) if !(low..=high).contains(&value) => invalid(format!(
                    "`{field}` must be within {low}..={high}, got {value}"
                )),
                _ => Ok(()),
            }
        }

        if self.model.trim().is_empty() {
            return invalid("`model` must not be empty".to_owned());
        }
        if self.messages.is_empty() {
            return invalid("`messages` must contain at least one message".to_owned());
        }
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        if self.max_tokens == Some(0) {
            return invalid("`max_tokens` must be at least 1, got 0".to_owned());
        }
        if let Some(count) = self.top_logprobs {
            if count > 20 {
                return invalid(format!("`top_logprobs` must be within 0..=20, got {count}"));
            }
            if self.logprobs != Some(true) {
                return invalid("`top_logprobs` needs `logprobs: true`".to_owned());
            }
        }
        for (index, message) in self.messages.iter().enumerate() {
            let has_call_id = message
                .tool_call_id
                .as_deref()
                .is_some_and(|id| !id.is_empty());
            if message.role == Role::Tool && !has_call_id {
                return invalid(format!(
                    "`messages[{index}]` is a tool message without `tool_call_id`"
                ));
            }
        }
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn full_request_round_trips_with_unknown_fields() {
        let body = json!({
            "model": "deepseek-v4-pro",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?", "name": "ann"},
                {"role": "assistant", "content": null, "reasoning_content": "Need a tool.",
                 "tool_calls": [{"id": "call_0", "type": "function",
                                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": "21C"},
                {"role": "developer", "content": "new role", "cache": true}
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.7,
            "top_p": 0.9,
            "max_tokens": 1024,
            "frequency_penalty": 0.5,
            "presence_penalty": -0.5,
            "stop": ["END", "STOP"],
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "get_weather",
                       "description": "Weather by city",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                       "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "logprobs": true,
            "top_logprobs": 3,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "reasoning_effort": "high",
            "user_id": "u-42",
            "brand_new_field": {"nested": [1, 2, 3]}
        });
        let request: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(
            request.extra["brand_new_field"],
            json!({"nested": [1, 2, 3]})
        );
        assert_eq!(request.messages[2].content, None);
        assert_eq!(request.messages[4].role, Role::Other("developer".into()));
        assert_eq!(request.messages[4].extra["cache"], true);
        assert_eq!(
            request.tool_choice,
            Some(ToolChoice::function("get_weather"))
        );
        assert_eq!(
            request.thinking.as_ref().map(Thinking::is_enabled),
            Some(true)
        );
        request.validate().unwrap();

        let mut expected = body;
        // `content: null` is left out on the way back; the meaning is the same.
        expected["messages"][2]
            .as_object_mut()
            .unwrap()
            .remove("content");
        assert_eq!(serde_json::to_value(&request).unwrap(), expected);
    }

    #[test]
    fn builder_sets_every_field() {
        let request = ChatRequest::new("deepseek-v4-flash")
            .system("s")
            .user("u")
            .assistant("a")
            .message(Message::tool("call_1", "result"))
            .temperature(1.5)
            .top_p(0.5)
            .max_tokens(10)
            .frequency_penalty(1.0)
            .presence_penalty(-1.0)
            .stop("END")
            .response_format_json()
            .tools([Tool::function("f", "d", json!({}))])
            .tool_choice(ToolChoice::Required)
            .logprobs(true)
            .top_logprobs(20)
            .thinking(false)
            .reasoning_effort("low")
            .user_id("me")
            .stream(true)
            .include_usage(true)
            .extra("seed", 1);
        request.validate().unwrap();
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            json!({
                "model": "deepseek-v4-flash",
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "a"},
                    {"role": "tool", "content": "result", "tool_call_id": "call_1"}
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "temperature": 1.5,
                "top_p": 0.5,
                "max_tokens": 10,
                "frequency_penalty": 1.0,
                "presence_penalty": -1.0,
                "stop": "END",
                "response_format": {"type": "json_object"},
                "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}],
                "tool_choice": "required",
                "logprobs": true,
                "top_logprobs": 20,
                "thinking": {"type": "disabled"},
                "reasoning_effort": "low",
                "user_id": "me",
                "seed": 1
            })
        );
    }

    #[test]
    fn minimal_request_sends_only_model_and_messages() {
        let json = serde_json::to_value(ChatRequest::new("m").user("hi")).unwrap();
        assert_eq!(
            json,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn real_looking_response_parses() {
        let body = r#"{
            "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
            "object": "chat.completion",
            "created": 1764000000,
            "model": "deepseek-v4-pro",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Paris is the capital of France.",
                    "reasoning_content": "The user asks about France's capital."
                },
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": 16,
                "completion_tokens": 42,
                "total_tokens": 58,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 30},
                "prompt_cache_hit_tokens": 0,
                "prompt_cache_miss_tokens": 16
            },
            "system_fingerprint": "fp_8802369eaa_prod0623_fp8_kvcache"
        }"#;
        let response: ChatResponse = serde_json::from_str(body).unwrap();
        assert_eq!(response.content(), Some("Paris is the capital of France."));
        assert_eq!(
            response.reasoning_content(),
            Some("The user asks about France's capital.")
        );
        assert_eq!(response.finish_reason(), Some(&FinishReason::Stop));
        assert_eq!(response.created, 1_764_000_000);
        assert_eq!(
            response.system_fingerprint.as_deref(),
            Some("fp_8802369eaa_prod0623_fp8_kvcache")
        );
        let usage = response.usage.as_ref().unwrap();
        assert_eq!(usage.prompt_cache_hit_tokens, Some(0));
        assert_eq!(usage.prompt_cache_miss_tokens, Some(16));
        assert_eq!(usage.reasoning_tokens(), Some(30));
        assert_eq!(usage.total_tokens, 58);
        assert_eq!(usage.extra["prompt_tokens_details"]["cached_tokens"], 0);

        let again: ChatResponse =
            serde_json::from_value(serde_json::to_value(&response).unwrap()).unwrap();
        assert_eq!(again, response);
    }

    #[test]
    fn response_with_tool_calls_and_null_content_parses() {
        let body = r#"{"id":"x","object":"chat.completion","created":1,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"call_0","type":"function","function":{"name":"f","arguments":"{}"}}]},
            "finish_reason":"tool_calls"}]}"#;
        let response: ChatResponse = serde_json::from_str(body).unwrap();
        assert_eq!(response.content(), None);
        assert_eq!(response.finish_reason(), Some(&FinishReason::ToolCalls));
        let calls = response.choices[0].message.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].function.name, "f");
    }

    #[test]
    fn sparse_response_is_accepted() {
        let response: ChatResponse = serde_json::from_str("{}").unwrap();
        assert_eq!(response.content(), None);
        assert_eq!(response.finish_reason(), None);
    }

    #[test]
    fn usage_chunk_with_empty_choices_parses() {
        let body = r#"{"id":"c1","object":"chat.completion.chunk","created":1764000000,
            "model":"deepseek-v4-flash","system_fingerprint":"fp_1","choices":[],
            "usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,
            "prompt_cache_hit_tokens":3,"prompt_cache_miss_tokens":2,
            "completion_tokens_details":{"reasoning_tokens":4}}}"#;
        let chunk: ChatChunk = serde_json::from_str(body).unwrap();
        assert!(chunk.choices.is_empty());
        assert_eq!(chunk.content(), None);
        let usage = chunk.usage.unwrap();
        assert_eq!(usage.prompt_cache_hit_tokens, Some(3));
        assert_eq!(usage.reasoning_tokens(), Some(4));
    }

    #[test]
    fn chunk_with_tool_call_pieces_parses() {
        let body = r#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":null,
            "tool_calls":[{"index":0,"id":"call_0","type":"function","function":{"name":"f","arguments":""}}]},
            "finish_reason":null}]}"#;
        let chunk: ChatChunk = serde_json::from_str(body).unwrap();
        let delta = &chunk.choices[0].delta;
        assert_eq!(delta.role, Some(Role::Assistant));
        let piece = &delta.tool_calls.as_ref().unwrap()[0];
        assert_eq!(piece.id.as_deref(), Some("call_0"));
        assert_eq!(piece.kind.as_deref(), Some("function"));
        assert_eq!(piece.function.as_ref().unwrap().name.as_deref(), Some("f"));
    }

    #[test]
    fn chunk_parsing_keeps_unknown_fields_at_every_level() {
        let body = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",
            "system_fingerprint":null,"new_top":1,"usage":null,
            "choices":[{"index":0,"finish_reason":null,"logprobs":{"content":[]},"new_choice":"x",
                "delta":{"role":"assistant","content":"hi","reasoning_content":null,"new_delta":[1],
                    "tool_calls":[{"index":1,"id":"call_1","type":"function","new_call":true,
                        "function":{"name":"f","arguments":"{"}}]}}]}"#;
        let chunk: ChatChunk = serde_json::from_str(body).unwrap();
        assert_eq!(chunk.extra["new_top"], 1);
        assert_eq!(chunk.usage, None);
        let choice = &chunk.choices[0];
        assert_eq!(choice.extra["new_choice"], "x");
        assert_eq!(choice.logprobs, Some(json!({"content": []})));
        assert_eq!(choice.delta.extra["new_delta"], json!([1]));
        let call = &choice.delta.tool_calls.as_ref().unwrap()[0];
        assert_eq!((call.index, call.kind.as_deref()), (1, Some("function")));
        assert_eq!(call.extra["new_call"], true);

        let again: ChatChunk =
            serde_json::from_value(serde_json::to_value(&chunk).unwrap()).unwrap();
        assert_eq!(again, chunk);
        assert!(serde_json::from_str::<ChatChunk>("[1]").is_err());
        assert!(serde_json::from_str::<ChatChunk>(r#"{"created":"soon"}"#).is_err());
    }

    #[test]
    fn unknown_finish_reason_is_kept() {
        let body =
            r#"{"choices":[{"index":0,"delta":{"content":""},"finish_reason":"model_tired"}]}"#;
        let chunk: ChatChunk = serde_json::from_str(body).unwrap();
        let reason = chunk.finish_reason().unwrap();
        assert_eq!(reason, &FinishReason::Other("model_tired".into()));
        assert_eq!(reason.as_str(), "model_tired");
        assert_eq!(serde_json::to_string(reason).unwrap(), r#""model_tired""#);
        for known in [
            "stop",
            "length",
            "content_filter",
            "tool_calls",
            "insufficient_system_resource",
        ] {
            let reason = FinishReason::from(known);
            assert!(!matches!(reason, FinishReason::Other(_)), "{known}");
            assert_eq!(reason.as_str(), known);
        }
    }

    #[test]
    fn tool_choice_round_trips_every_shape() {
        for value in [
            json!("none"),
            json!("auto"),
            json!("required"),
            json!("something_new"),
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"type": "function", "function": {"name": "f", "extra": 1}}),
        ] {
            let choice: ToolChoice = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(serde_json::to_value(&choice).unwrap(), value);
        }
    }

    #[test]
    fn model_list_parses() {
        let list: ModelList = serde_json::from_str(
            r#"{"object":"list","data":[{"id":"deepseek-v4-flash","object":"model","owned_by":"deepseek"},
                {"id":"deepseek-v4-pro","object":"model","owned_by":"deepseek","created":1}]}"#,
        )
        .unwrap();
        assert_eq!(list.data.len(), 2);
        assert_eq!(list.data[1].extra["created"], 1);
    }

    fn valid() -> ChatRequest {
        ChatRequest::new("deepseek-v4-flash").user("hi")
    }

    fn rejection(request: ChatRequest) -> String {
        let error = request.validate().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidRequest);
        error.to_string()
    }

    #[test]
    fn a_valid_request_passes() {
        valid().validate().unwrap();
        valid()
            .temperature(0.0)
            .temperature(2.0)
            .top_p(0.0)
            .top_p(1.0)
            .frequency_penalty(-2.0)
            .presence_penalty(2.0)
            .max_tokens(1)
            .logprobs(true)
            .top_logprobs(0)
            .validate()
            .unwrap();
    }

    #[test]
    fn empty_model_and_messages_are_rejected() {
        assert!(rejection(ChatRequest::new("").user("hi")).contains("`model`"));
        assert!(rejection(ChatRequest::new("m")).contains("`messages`"));
    }

    #[test]
    fn out_of_range_sampling_values_are_rejected() {
        for (request, field, range) in [
            (valid().temperature(2.1), "temperature", "0..=2"),
            (valid().temperature(-0.1), "temperature", "0..=2"),
            (valid().temperature(f64::NAN), "temperature", "0..=2"),
            (valid().top_p(1.01), "top_p", "0..=1"),
            (valid().top_p(-0.5), "top_p", "0..=1"),
            (valid().top_p(f64::NAN), "top_p", "0..=1"),
            (
                valid().frequency_penalty(2.5),
                "frequency_penalty",
                "-2..=2",
            ),
            (
                valid().frequency_penalty(f64::NAN),
                "frequency_penalty",
                "-2..=2",
            ),
            (valid().presence_penalty(-3.0), "presence_penalty", "-2..=2"),
            (
                valid().presence_penalty(f64::INFINITY),
                "presence_penalty",
                "-2..=2",
            ),
        ] {
            let message = rejection(request);
            assert!(message.contains(&format!("`{field}`")), "{message}");
            assert!(message.contains(range), "{message}");
        }
    }

    #[test]
    fn zero_max_tokens_is_rejected() {
        let message = rejection(valid().max_tokens(0));
        assert!(message.contains("`max_tokens`") && message.contains("at least 1"));
    }

    #[test]
    fn top_logprobs_needs_logprobs_and_range() {
        let message = rejection(valid().logprobs(true).top_logprobs(21));
        assert!(message.contains("`top_logprobs`") && message.contains("0..=20"));
        let message = rejection(valid().top_logprobs(2));
        assert!(message.contains("`logprobs: true`"), "{message}");
        let message = rejection(valid().logprobs(false).top_logprobs(2));
        assert!(message.contains("`logprobs: true`"), "{message}");
    }

    #[test]
    fn tool_message_needs_call_id() {
        let mut orphan = Message::tool("", "result");
        let message = rejection(valid().message(orphan.clone()));
        assert!(message.contains("messages[1]") && message.contains("tool_call_id"));
        orphan.tool_call_id = None;
        assert!(rejection(valid().message(orphan)).contains("tool_call_id"));
        valid()
            .message(Message::tool("call_0", "result"))
            .validate()
            .unwrap();
    }
}
