//! Scripted replies: what the mock answers instead of its normal behaviour.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

/// One scripted answer for one chat-completion request.
///
/// Replies are queued with [`MockDeepSeek::script`](super::MockDeepSeek::script) (or
/// `POST /_mock/script`) and consumed first in, first out by successive
/// `POST /chat/completions` requests that pass the API-key check. When the queue is empty the
/// mock answers normally.
///
/// A reply is built from [`Reply::ok`] (the normal deterministic answer) or
/// [`Reply::status`] and refined with modifiers:
///
/// - A 2xx reply without [`body`](Reply::body) is the normal answer to the request (streamed
///   when the request says `"stream": true`), sent with that status.
/// - Any other status without a body gets a DeepSeek-shaped error body
///   (`{"error":{"message","type","param","code"}}`): 402 "Insufficient Balance",
///   429 "Rate Limit Reached", 500 "Internal Server Error", 503 "Server overloaded", other
///   statuses their canonical reason.
/// - [`body`](Reply::body) sends that text verbatim (`content-type: application/json` unless a
///   [`header`](Reply::header) says otherwise).
///
/// # Chunks
///
/// For a streamed answer, *chunks* are the `data:` events in order: the role chunk, one chunk per
/// reasoning token and per content token, the chunk carrying `finish_reason`, the usage chunk
/// (when asked for) and `data: [DONE]`. `: keep-alive` comments are not chunks.
/// [`cut_after(n)`](Reply::cut_after) and [`reset_after(n)`](Reply::reset_after) deliver the
/// first `n` chunks; [`malformed_at(n)`](Reply::malformed_at) replaces the chunk after the first
/// `n` (index `n`, counting from 0) with invalid JSON. When both `cut_after` and `reset_after` are
/// set the smaller count wins, and a tie resets.
///
/// For any other body (a non-streamed answer, an error, a custom body) the same modifiers count
/// bytes: `cut_after(n)` sends the first `n` bytes and ends cleanly, `reset_after(n)` sends the
/// first `n` bytes and resets, `malformed_at(_)` replaces the whole body with invalid JSON, and
/// keep-alives are blank lines (`\n`) before the body, as DeepSeek sends them.
///
/// # Timing
///
/// All waits use `tokio::time`, so tests on paused time run them instantly.
/// [`delay_headers`](Reply::delay_headers) waits before the response head. Each of the
/// [`keep_alives`](Reply::keep_alives) is sent after waiting
/// [`keep_alive_interval`](Reply::keep_alive_interval), the first chunk follows the last
/// keep-alive at once, and [`chunk_delay`](Reply::chunk_delay) is waited before every chunk but
/// the first.
///
/// # JSON
///
/// `Reply` is `Serialize`/`Deserialize`, so another process can send the same script to
/// `POST /_mock/script`. Every field is optional; unknown fields are rejected; durations are
/// milliseconds (fractions allowed):
///
/// ```json
/// {
///   "status": 200,
///   "headers": {"retry-after": "2"},
///   "body": "raw text",
///   "content": "fixed text",
///   "finish_reason": "insufficient_system_resource",
///   "delay_headers_ms": 250,
///   "keep_alives": 3,
///   "keep_alive_interval_ms": 1000,
///   "chunk_delay_ms": 20,
///   "cut_after": 4,
///   "malformed_at": 2,
///   "reset_before_headers": false,
///   "reset_after": 5
/// }
/// ```
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::mock::Reply;
///
/// // Rate limited once, then a slow stream that DeepSeek cuts short.
/// let script = vec![
///     Reply::status(429).header("retry-after", "2"),
///     Reply::ok()
///         .keep_alives(2)
///         .keep_alive_interval(Duration::from_secs(1))
///         .chunk_delay(Duration::from_millis(50))
///         .cut_after(3),
/// ];
/// let json = serde_json::to_string(&script)?;
/// assert_eq!(
///     json,
///     r#"[{"status":429,"headers":{"retry-after":"2"}},{"status":200,"keep_alives":2,"keep_alive_interval_ms":1000,"chunk_delay_ms":50,"cut_after":3}]"#
/// );
/// let back: Vec<Reply> = serde_json::from_str(&json)?;
/// assert_eq!(back, script);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reply {
    pub(super) status: u16,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) finish_reason: Option<String>,
    #[serde(
        rename = "delay_headers_ms",
        with = "millis",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub(super) delay_headers: Duration,
    #[serde(skip_serializing_if = "is_zero")]
    pub(super) keep_alives: u32,
    #[serde(
        rename = "keep_alive_interval_ms",
        with = "millis",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub(super) keep_alive_interval: Duration,
    #[serde(
        rename = "chunk_delay_ms",
        with = "millis",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub(super) chunk_delay: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cut_after: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) malformed_at: Option<usize>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(super) reset_before_headers: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reset_after: Option<usize>,
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

impl Default for Reply {
    /// The same as [`Reply::ok`].
    fn default() -> Self {
        Reply::ok()
    }
}

impl Reply {
    /// The normal answer (status 200), as if nothing were scripted; add modifiers to slow it
    /// down or break it.
    ///
    /// ```
    /// use tower_deepseek::mock::Reply;
    ///
    /// let reply = Reply::ok().content("fixed text").finish_reason("length");
    /// assert_eq!(reply, Reply::status(200).content("fixed text").finish_reason("length"));
    /// ```
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// A reply with this status. See the [type docs](Reply) for the body each status gets.
    ///
    /// A status outside 200..=599 cannot be sent as a final response: the mock answers 500
    /// with an error saying so instead (and `POST /_mock/script` rejects it).
    ///
    /// ```
    /// use tower_deepseek::mock::Reply;
    ///
    /// // The first two calls fail, the third gets the normal answer.
    /// let script = [Reply::status(503), Reply::status(503)];
    /// assert_eq!(script.len(), 2);
    /// ```
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: BTreeMap::new(),
            body: None,
            content: None,
            finish_reason: None,
            delay_headers: Duration::ZERO,
            keep_alives: 0,
            keep_alive_interval: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            cut_after: None,
            malformed_at: None,
            reset_before_headers: false,
            reset_after: None,
        }
    }

    /// Adds a response header. A later call with the same name (compared case-insensitively)
    /// replaces the earlier value; a scripted header replaces the mock's own of that name.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        let name = name.into().to_ascii_lowercase();
        self.headers.insert(name, value.into());
        self
    }

    /// Sends this text as the body, verbatim, instead of the answer or the default error.
    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = Some(body.into());
        self
    }

    /// Answers with this text instead of the generated one (split into tokens the same way).
    pub fn content(mut self, content: impl Into<String>) -> Reply {
        self.content = Some(content.into());
        self
    }

    /// Reports this `finish_reason` instead of `stop` or `length`, e.g.
    /// `insufficient_system_resource`.
    pub fn finish_reason(mut self, reason: impl Into<String>) -> Reply {
        self.finish_reason = Some(reason.into());
        self
    }

    /// Waits this long before sending the response head.
    pub fn delay_headers(mut self, delay: Duration) -> Reply {
        self.delay_headers = delay;
        self
    }

    /// Sends `count` keep-alives after the head and before the first chunk: `: keep-alive`
    /// comments in a stream, blank lines before any other body.
    pub fn keep_alives(mut self, count: u32) -> Reply {
        self.keep_alives = count;
        self
    }

    /// Waits this long before each keep-alive (none by default).
    pub fn keep_alive_interval(mut self, interval: Duration) -> Reply {
        self.keep_alive_interval = interval;
        self
    }

    /// Waits this long between consecutive stream chunks.
    pub fn chunk_delay(mut self, delay: Duration) -> Reply {
        self.chunk_delay = delay;
        self
    }

    /// Ends the body cleanly after `count` chunks (bytes, for a non-streamed body): a stream
    /// then ends without `data: [DONE]`.
    pub fn cut_after(mut self, count: usize) -> Reply {
        self.cut_after = Some(count);
        self
    }

    /// Replaces the chunk at index `index` (the one after the first `index`, counting from 0)
    /// with `data: {"id": oops`; a non-streamed body is replaced as a whole.
    pub fn malformed_at(mut self, index: usize) -> Reply {
        self.malformed_at = Some(index);
        self
    }

    /// Aborts the TCP connection with a reset (RST) instead of sending the response head.
    /// On HTTP/2 this aborts every stream on the connection.
    pub fn reset_before_headers(mut self) -> Reply {
        self.reset_before_headers = true;
        self
    }

    /// Aborts the TCP connection with a reset (RST) after `count` chunks (bytes, for a
    /// non-streamed body) have been handed to the connection.
    pub fn reset_after(mut self, count: usize) -> Reply {
        self.reset_after = Some(count);
        self
    }

    /// The scripted status code.
    pub fn status_code(&self) -> u16 {
        self.status
    }

    /// Whether this reply is the normal answer (a 2xx status without a custom body).
    pub(super) fn is_answer(&self) -> bool {
        (200..300).contains(&self.status) && self.body.is_none()
    }

    /// Checks that the reply can be sent: a final status and valid header names and values.
    pub(super) fn check(&self) -> Result<(), String> {
        if !(200..=599).contains(&self.status) || StatusCode::from_u16(self.status).is_err() {
            return Err(format!(
                "status {} is not a final HTTP status (200..=599)",
                self.status
            ));
        }
        for (name, value) in &self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("{name:?} is not a valid header name"));
            }
            if HeaderValue::from_str(value).is_err() {
                return Err(format!("the value of header {name:?} is not valid"));
            }
        }
        Ok(())
    }
}

/// `Duration` as a number of milliseconds in JSON (fractions allowed).
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(
        duration: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        // Whole milliseconds stay integers so scripts read naturally.
        if duration.subsec_nanos().is_multiple_of(1_000_000) {
            let whole = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            serializer.serialize_u64(whole)
        } else {
            serializer.serialize_f64(duration.as_secs_f64() * 1000.0)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let millis = f64::deserialize(deserializer)?;
        Duration::try_from_secs_f64(millis / 1000.0).map_err(|_| {
            D::Error::custom(format!(
                "{millis} is not a duration in milliseconds (a finite, non-negative number)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let reply = Reply::status(503)
            .header("Retry-After", "2")
            .body("busy")
            .content("fixed")
            .finish_reason("length")
            .delay_headers(Duration::from_micros(1500))
            .keep_alives(3)
            .keep_alive_interval(Duration::from_secs(1))
            .chunk_delay(Duration::from_millis(20))
            .cut_after(4)
            .malformed_at(2)
            .reset_before_headers()
            .reset_after(5);
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json["headers"]["retry-after"], "2");
        assert_eq!(json["delay_headers_ms"], 1.5);
        let back: Reply = serde_json::from_value(json).unwrap();
        assert_eq!(back, reply);
    }

    #[test]
    fn empty_object_is_ok_and_unknown_fields_are_rejected() {
        let reply: Reply = serde_json::from_str("{}").unwrap();
        assert_eq!(reply, Reply::ok());
        assert!(serde_json::from_str::<Reply>(r#"{"stauts":503}"#).is_err());
        assert!(serde_json::from_str::<Reply>(r#"{"chunk_delay_ms":-1}"#).is_err());
    }

    #[test]
    fn check_rejects_unsendable_replies() {
        assert!(Reply::status(503).check().is_ok());
        assert!(Reply::status(101).check().is_err());
        assert!(Reply::status(1000).check().is_err());
        assert!(Reply::ok().header("bad name", "x").check().is_err());
        assert!(Reply::ok().header("x-ok", "line\nbreak").check().is_err());
    }

    #[test]
    fn only_bodiless_2xx_replies_are_answers() {
        assert!(Reply::ok().is_answer());
        assert!(Reply::status(201).is_answer());
        assert!(!Reply::ok().body("x").is_answer());
        assert!(!Reply::status(429).is_answer());
    }
}
