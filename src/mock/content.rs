//! The deterministic answer: request parsing, the generated text, token counts and the JSON
//! and SSE renderings of a completion.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

/// What the generated answer starts with; the last user message follows.
pub(super) const ANSWER_PREFIX: &str = "Hello from mock DeepSeek. You said: ";
/// What the generated reasoning starts with; the last user message follows.
pub(super) const REASONING_PREFIX: &str = "The user said: ";
/// Tokens counted for each message on top of the words of its content.
pub(super) const TOKENS_PER_MESSAGE: u64 = 4;
/// The invalid JSON a malformed chunk or body carries.
pub(super) const MALFORMED_JSON: &str = r#"{"id": oops"#;

/// A request the API refused, in DeepSeek's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiFailure {
    pub(super) status: StatusCode,
    pub(super) message: String,
    pub(super) error_type: &'static str,
}

impl ApiFailure {
    pub(super) fn new(
        status: StatusCode,
        message: impl Into<String>,
        error_type: &'static str,
    ) -> ApiFailure {
        ApiFailure {
            status,
            message: message.into(),
            error_type,
        }
    }

    /// The default failure for a bare status (scripted replies without a body).
    pub(super) fn for_status(status: StatusCode) -> ApiFailure {
        let (message, error_type) = match status.as_u16() {
            400 => ("Invalid Request", "invalid_request_error"),
            401 => ("Authentication Fails", "authentication_error"),
            402 => ("Insufficient Balance", "unknown_error"),
            422 => ("Invalid Parameters", "invalid_request_error"),
            429 => ("Rate Limit Reached", "rate_limit_error"),
            500 => ("Internal Server Error", "api_error"),
            503 => ("Server overloaded", "api_error"),
            code if code >= 500 => (status.canonical_reason().unwrap_or("Error"), "api_error"),
            _ => (
                status.canonical_reason().unwrap_or("Error"),
                "invalid_request_error",
            ),
        };
        ApiFailure::new(status, message, error_type)
    }

    /// `{"error":{"message","type","param","code"}}`.
    pub(super) fn body(&self) -> Bytes {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": null,
                "code": "invalid_request_error",
            }
        });
        Bytes::from(body.to_string())
    }
}

/// The parts of a chat-completion request the mock looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChatRequest {
    pub(super) model: String,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) max_tokens: Option<u64>,
    pub(super) thinking: bool,
    pub(super) prompt_tokens: u64,
    pub(super) last_user_message: String,
}

/// Parses and validates a chat-completion body: invalid JSON is a 400, a missing `model`, empty
/// `messages` or a bad field type a 422, a model not in `models` a 400 "Model Not Exist".
pub(super) fn parse_chat_request(
    body: &[u8],
    models: &[String],
) -> Result<ChatRequest, ApiFailure> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!("Failed to parse the request body as JSON: {error}"),
            "invalid_request_error",
        )
    })?;
    let unprocessable = |message: String| {
        ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Failed to deserialize the JSON body into the target type: {message}"),
            "invalid_request_error",
        )
    };
    let Value::Object(fields) = value else {
        return Err(unprocessable("expected a JSON object".to_owned()));
    };
    let model = match fields.get("model") {
        None | Some(Value::Null) => return Err(unprocessable("missing field `model`".to_owned())),
        Some(Value::String(model)) => model.clone(),
        Some(_) => return Err(unprocessable("`model` must be a string".to_owned())),
    };
    let messages = match fields.get("messages") {
        None | Some(Value::Null) => {
            return Err(unprocessable("missing field `messages`".to_owned()));
        }
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err(unprocessable("`messages` must not be empty".to_owned()));
        }
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err(unprocessable("`messages` must be an array".to_owned())),
    };
    if messages.iter().any(|message| !message.is_object()) {
        return Err(unprocessable("each message must be an object".to_owned()));
    }
    let stream = optional_bool(&fields, "stream").map_err(unprocessable)?;
    let include_usage = match fields.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => {
            optional_bool(options, "include_usage").map_err(unprocessable)?
        }
        Some(_) => {
            return Err(unprocessable(
                "`stream_options` must be an object".to_owned(),
            ));
        }
    };
    let max_tokens = match fields.get("max_tokens") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64() {
            Some(limit) if limit > 0 => Some(limit),
            _ => {
                return Err(unprocessable(
                    "`max_tokens` must be a positive integer".to_owned(),
                ));
            }
        },
    };
    if !models.contains(&model) {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "Model Not Exist",
            "invalid_request_error",
        ));
    }
    let thinking = match fields
        .get("thinking")
        .and_then(|thinking| thinking.get("type"))
        .and_then(Value::as_str)
    {
        Some("enabled") => true,
        Some("disabled") => false,
        _ => model.contains("reasoner"),
    };
    let prompt_tokens = messages
        .iter()
        .map(|message| word_count(&message_text(message)) + TOKENS_PER_MESSAGE)
        .sum();
    let last_user_message = messages
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    Ok(ChatRequest {
        model,
        stream,
        include_usage,
        max_tokens,
        thinking,
        prompt_tokens,
        last_user_message,
    })
}

fn optional_bool(fields: &Map<String, Value>, name: &str) -> Result<bool, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(_) => Err(format!("`{name}` must be a boolean")),
    }
}

/// The text of a message: its `content` string, or the `text` of its content parts.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn word_count(text: &str) -> u64 {
    u64::try_from(text.split_whitespace().count()).unwrap_or(u64::MAX)
}

/// Splits text into tokens: each word with the whitespace after it, so the tokens concatenate
/// back to the text. Whitespace before the first word belongs to the first token.
pub(super) fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut has_word = false;
    let mut after_word_space = false;
    for ch in text.chars() {
        let is_space = ch.is_whitespace();
        if !is_space && after_word_space {
            tokens.push(std::mem::take(&mut current));
            after_word_space = false;
        }
        current.push(ch);
        if is_space {
            after_word_space = has_word;
        } else {
            has_word = true;
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

/// The token counts of an answer, as `usage` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
    pub(super) reasoning_tokens: u64,
}

impl Usage {
    fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_cache_hit_tokens": 0,
            "prompt_cache_miss_tokens": self.prompt_tokens,
            "completion_tokens_details": { "reasoning_tokens": self.reasoning_tokens },
        })
    }
}

/// The answer to one request, already cut to `max_tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Completion {
    /// Reasoning tokens (empty unless thinking is on).
    pub(super) reasoning: Vec<String>,
    /// Content tokens.
    pub(super) content: Vec<String>,
    pub(super) finish_reason: String,
    pub(super) usage: Usage,
    /// Whether the answer has a reasoning part at all (thinking on), even if it was cut away.
    pub(super) thinking: bool,
}

/// Generates the answer: reasoning first (when thinking is on), then content, together cut to
/// `max_tokens` (which then makes `finish_reason` "length").
pub(super) fn complete(
    request: &ChatRequest,
    fixed_content: Option<&str>,
    fixed_finish_reason: Option<&str>,
) -> Completion {
    let mut reasoning = if request.thinking {
        tokenize(&format!("{REASONING_PREFIX}{}", request.last_user_message))
    } else {
        Vec::new()
    };
    let mut content = match fixed_content {
        Some(text) => tokenize(text),
        None => tokenize(&format!("{ANSWER_PREFIX}{}", request.last_user_message)),
    };
    let mut finish_reason = "stop";
    if let Some(limit) = request.max_tokens {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if reasoning.len().saturating_add(content.len()) > limit {
            finish_reason = "length";
            reasoning.truncate(limit);
            content.truncate(limit - reasoning.len());
        }
    }
    let reasoning_tokens = u64::try_from(reasoning.len()).unwrap_or(u64::MAX);
    let content_tokens = u64::try_from(content.len()).unwrap_or(u64::MAX);
    Completion {
        usage: Usage {
            prompt_tokens: request.prompt_tokens,
            completion_tokens: reasoning_tokens.saturating_add(content_tokens),
            reasoning_tokens,
        },
        reasoning,
        content,
        finish_reason: fixed_finish_reason.unwrap_or(finish_reason).to_owned(),
        thinking: request.thinking,
    }
}

/// What every response object of one answer shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Envelope {
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
}

/// The fingerprint every answer reports.
const SYSTEM_FINGERPRINT: &str = "fp_mock_deepseek";

/// The non-streamed `chat.completion` object.
pub(super) fn render_json(completion: &Completion, envelope: &Envelope) -> Bytes {
    let mut message = Map::new();
    message.insert("role".to_owned(), json!("assistant"));
    message.insert("content".to_owned(), json!(completion.content.concat()));
    if completion.thinking {
        message.insert(
            "reasoning_content".to_owned(),
            json!(completion.reasoning.concat()),
        );
    }
    let body = json!({
        "id": envelope.id,
        "object": "chat.completion",
        "created": envelope.created,
        "model": envelope.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": completion.finish_reason,
        }],
        "usage": completion.usage.to_json(),
    });
    Bytes::from(body.to_string())
}

/// The streamed answer: one `data: …\n\n` event per chunk, ending with `data: [DONE]`.
pub(super) fn render_events(
    completion: &Completion,
    envelope: &Envelope,
    include_usage: bool,
) -> Vec<Bytes> {
    let chunk = |choices: Value| {
        json!({
            "id": envelope.id,
            "object": "chat.completion.chunk",
            "created": envelope.created,
            "model": envelope.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        })
    };
    let choice = |delta: Value, finish_reason: Value| json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }]);
    let mut events = Vec::with_capacity(completion.reasoning.len() + completion.content.len() + 4);
    events.push(chunk(choice(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
    )));
    for token in &completion.reasoning {
        events.push(chunk(choice(
            json!({ "content": null, "reasoning_content": token }),
            Value::Null,
        )));
    }
    for token in &completion.content {
        events.push(chunk(choice(json!({ "content": token }), Value::Null)));
    }
    events.push(chunk(choice(
        json!({ "content": "" }),
        json!(completion.finish_reason),
    )));
    if include_usage {
        let mut usage_chunk = chunk(json!([]));
        if let Value::Object(fields) = &mut usage_chunk {
            fields.insert("usage".to_owned(), completion.usage.to_json());
        }
        events.push(usage_chunk);
    }
    let mut frames: Vec<Bytes> = events
        .iter()
        .map(|event| Bytes::from(format!("data: {event}\n\n")))
        .collect();
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<String> {
        vec!["deepseek-chat".to_owned(), "deepseek-reasoner".to_owned()]
    }

    #[test]
    fn tokens_concatenate_back_to_the_text() {
        for text in [
            "",
            "one",
            "Hello from mock DeepSeek. You said: hi there",
            "  leading and trailing  ",
            "tabs\tand\nnewlines",
            "   ",
        ] {
            assert_eq!(tokenize(text).concat(), text);
        }
        assert_eq!(tokenize("a b  c"), vec!["a ", "b  ", "c"]);
        assert_eq!(tokenize(" a b"), vec![" a ", "b"]);
    }

    #[test]
    fn request_errors_have_deepseek_statuses() {
        let status = |body: &str| {
            parse_chat_request(body.as_bytes(), &models())
                .err()
                .map(|failure| failure.status.as_u16())
        };
        assert_eq!(status("{not json"), Some(400));
        assert_eq!(
            status(r#"{"messages":[{"role":"user","content":"x"}]}"#),
            Some(422)
        );
        assert_eq!(
            status(r#"{"model":"deepseek-chat","messages":[]}"#),
            Some(422)
        );
        assert_eq!(
            status(r#"{"model":"deepseek-chat","messages":[{"role":"user"}],"max_tokens":0}"#),
            Some(422)
        );
        assert_eq!(
            status(r#"{"model":"gpt-4","messages":[{"role":"user","content":"x"}]}"#),
            Some(400)
        );
        assert_eq!(
            status(r#"{"model":"deepseek-chat","messages":[{"role":"user","content":"x"}]}"#),
            None
        );
    }

    #[test]
    fn usage_follows_the_documented_counts() {
        let body = r#"{"model":"deepseek-chat","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi there"}]}]}"#;
        let request = parse_chat_request(body.as_bytes(), &models()).unwrap();
        assert_eq!(request.prompt_tokens, (2 + 4) + (2 + 4));
        assert_eq!(request.last_user_message, "hi there");
        let completion = complete(&request, None, None);
        assert_eq!(
            completion.content.concat(),
            "Hello from mock DeepSeek. You said: hi there"
        );
        assert_eq!(completion.usage.completion_tokens, 8);
        assert_eq!(completion.usage.reasoning_tokens, 0);
        assert_eq!(completion.finish_reason, "stop");
    }

    #[test]
    fn max_tokens_cuts_reasoning_then_content() {
        let body = r#"{"model":"deepseek-reasoner","max_tokens":5,"messages":[{"role":"user","content":"a b"}]}"#;
        let request = parse_chat_request(body.as_bytes(), &models()).unwrap();
        assert!(request.thinking);
        let completion = complete(&request, None, None);
        // "The user said: a b" is five tokens: all reasoning, no content.
        assert_eq!(completion.reasoning.len(), 5);
        assert!(completion.content.is_empty());
        assert_eq!(completion.finish_reason, "length");
        assert_eq!(completion.usage.completion_tokens, 5);
        assert_eq!(completion.usage.reasoning_tokens, 5);
    }

    #[test]
    fn thinking_can_be_switched_either_way() {
        let on = r#"{"model":"deepseek-chat","thinking":{"type":"enabled"},"messages":[{"role":"user","content":"x"}]}"#;
        let off = r#"{"model":"deepseek-reasoner","thinking":{"type":"disabled"},"messages":[{"role":"user","content":"x"}]}"#;
        assert!(
            parse_chat_request(on.as_bytes(), &models())
                .unwrap()
                .thinking
        );
        assert!(
            !parse_chat_request(off.as_bytes(), &models())
                .unwrap()
                .thinking
        );
    }

    #[test]
    fn stream_events_carry_one_token_each_and_end_with_done() {
        let body = r#"{"model":"deepseek-chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
        let request = parse_chat_request(body.as_bytes(), &models()).unwrap();
        let completion = complete(
            &request,
            Some("one two"),
            Some("insufficient_system_resource"),
        );
        let envelope = Envelope {
            id: "id".to_owned(),
            created: 1,
            model: request.model.clone(),
        };
        let events = render_events(&completion, &envelope, true);
        // role, two tokens, finish, usage, [DONE]
        assert_eq!(events.len(), 6);
        assert_eq!(&events[5][..], b"data: [DONE]\n\n");
        let parse = |event: &Bytes| -> Value {
            let text = std::str::from_utf8(event).unwrap();
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap()
        };
        assert_eq!(
            parse(&events[0])["choices"][0]["delta"]["role"],
            "assistant"
        );
        assert_eq!(parse(&events[1])["choices"][0]["delta"]["content"], "one ");
        assert_eq!(
            parse(&events[3])["choices"][0]["finish_reason"],
            "insufficient_system_resource"
        );
        let usage = parse(&events[4]);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 2);
        assert_eq!(usage["usage"]["total_tokens"], 2 + 5);
    }
}
