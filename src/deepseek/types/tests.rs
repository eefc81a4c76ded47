//! Unit tests of the API types.

use super::*;
use crate::error::ErrorKind;
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

    let again: ChatChunk = serde_json::from_value(serde_json::to_value(&chunk).unwrap()).unwrap();
    assert_eq!(again, chunk);
    assert!(serde_json::from_str::<ChatChunk>("[1]").is_err());
    assert!(serde_json::from_str::<ChatChunk>(r#"{"created":"soon"}"#).is_err());
}

#[test]
fn unknown_finish_reason_is_kept() {
    let body = r#"{"choices":[{"index":0,"delta":{"content":""},"finish_reason":"model_tired"}]}"#;
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
