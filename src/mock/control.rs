//! The control endpoints under `/_mock/`: another process scripts the mock and reads what it
//! recorded.

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::content::ApiFailure;
use super::script::Reply;
use super::server::{MockResponse, Shared, failure_response, json_response};

/// The control endpoints under `/_mock/`, which need no API key.
pub(super) fn control(shared: &Shared, parts: &Parts, body: &Bytes) -> MockResponse {
    let path = parts.uri.path();
    match (&parts.method, path) {
        (&Method::POST, "/_mock/script") => match parse_script(body) {
            Ok(replies) => {
                let queued = shared.enqueue(replies);
                json_response(StatusCode::OK, &json!({ "queued": queued }))
            }
            Err(message) => failure_response(&ApiFailure::new(
                StatusCode::BAD_REQUEST,
                message,
                "invalid_request_error",
            )),
        },
        (&Method::GET, "/_mock/script") => json_response(
            StatusCode::OK,
            &serde_json::to_value(shared.pending()).unwrap_or(Value::Null),
        ),
        (&Method::DELETE, "/_mock/script") => {
            let cleared = shared.clear_script();
            json_response(StatusCode::OK, &json!({ "cleared": cleared }))
        }
        (&Method::GET, "/_mock/stats") => json_response(
            StatusCode::OK,
            &json!({
                "connections": shared.connections(),
                "in_flight": shared.in_flight(),
                "api_requests": shared.api_requests(),
                "cancelled": shared.cancelled(),
            }),
        ),
        (&Method::GET, "/_mock/requests") => json_response(StatusCode::OK, &shared.requests_json()),
        (&Method::DELETE, "/_mock/requests") => {
            let cleared = shared.clear_requests();
            json_response(StatusCode::OK, &json!({ "cleared": cleared }))
        }
        (method, _) => failure_response(&ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!(
                "Not Found: {method} {path} (control endpoints: POST, GET, DELETE /_mock/script; GET, DELETE /_mock/requests; GET /_mock/stats)"
            ),
            "invalid_request_error",
        )),
    }
}

/// A JSON array of replies, or a single reply object; each must be sendable.
fn parse_script(body: &[u8]) -> Result<Vec<Reply>, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| format!("the script is not valid JSON: {error}"))?;
    let replies = match value {
        Value::Array(_) => serde_json::from_value::<Vec<Reply>>(value),
        Value::Object(_) => serde_json::from_value::<Reply>(value).map(|reply| vec![reply]),
        _ => {
            return Err(
                "the script must be a JSON array of replies or one reply object".to_owned(),
            );
        }
    }
    .map_err(|error| format!("the script is not a list of replies: {error}"))?;
    for (index, reply) in replies.iter().enumerate() {
        reply
            .check()
            .map_err(|problem| format!("reply {index}: {problem}"))?;
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_accepts_one_or_many_and_rejects_bad_replies() {
        assert_eq!(parse_script(br#"{"status":503}"#).unwrap().len(), 1);
        assert_eq!(parse_script(br#"[{"status":503},{}]"#).unwrap().len(), 2);
        assert!(parse_script(br#"[{"status":42}]"#).is_err());
        assert!(parse_script(br#""text""#).is_err());
        assert!(parse_script(b"[{").is_err());
    }
}
