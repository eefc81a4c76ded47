//! The chat completion request and its options.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;
use crate::error::{Error, ErrorKind};

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
