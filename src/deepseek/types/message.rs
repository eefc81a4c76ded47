//! Messages, roles and tools.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;

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
