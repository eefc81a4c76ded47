//! What the mock remembers of the API requests it received.

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, Method, Version, header};
use serde_json::{Map, Value};

/// One API request the mock received, as it arrived.
///
/// Every request to the API surface is recorded (chat completions, models, unknown paths, and
/// requests refused for a bad key or body), in arrival order; control requests under `/_mock/`
/// are not. A body over the size limit is recorded as empty.
///
/// The in-process record keeps the `Authorization` header as sent, so tests can assert on it;
/// its `Debug` output and `GET /_mock/requests` mask the key to its last four characters.
///
/// ```
/// use tower_deepseek::mock::MockDeepSeek;
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     tokio::runtime::Runtime::new()?.block_on(async {
///         let mock = MockDeepSeek::start().await?;
///         let mut stream = tokio::net::TcpStream::connect(mock.addr()).await?;
///         let body = r#"{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}"#;
///         let request = format!(
///             "POST /chat/completions HTTP/1.1\r\nhost: mock\r\nauthorization: Bearer {}\r\n\
///              x-trace-id: trace-42\r\ncontent-type: application/json\r\n\
///              content-length: {}\r\nconnection: close\r\n\r\n{body}",
///             mock.api_key(),
///             body.len(),
///         );
///         tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await?;
///         let mut response = Vec::new();
///         tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response).await?;
///
///         let recorded = mock.requests();
///         assert_eq!(recorded.len(), 1);
///         assert_eq!(recorded[0].path, "/chat/completions");
///         assert_eq!(recorded[0].headers["x-trace-id"], "trace-42");
///         assert_eq!(recorded[0].json()?["messages"][0]["content"], "hi");
///         Ok(())
///     })
/// }
/// ```
#[non_exhaustive]
#[derive(Clone)]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The request path, without the query.
    pub path: String,
    /// The query string, when there was one (without the `?`).
    pub query: Option<String>,
    /// The HTTP version the request came with.
    pub version: Version,
    /// The request headers, as sent.
    pub headers: HeaderMap,
    /// The request body.
    pub body: Bytes,
    /// `true` when the client abandoned the reply before it finished: it closed the
    /// connection (or, over HTTP/2, reset the stream) while the mock was still waiting to send
    /// the head or still sending the body. A scripted reset is not an abandonment. Hedged
    /// requests use it to prove the losing attempt was cancelled.
    pub cancelled: bool,
    /// The API request's number (the one in its trace ID), to find it again when it is
    /// abandoned.
    pub(super) sequence: u64,
}

impl RecordedRequest {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The request as `GET /_mock/requests` lists it: method, path, query, headers as a map of
    /// strings (repeated headers joined with `, `, the API key masked) and the body as JSON
    /// when it parses, as text otherwise.
    pub(super) fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for name in self.headers.keys() {
            let values: Vec<String> = self
                .headers
                .get_all(name)
                .iter()
                .map(|value| {
                    if name == header::AUTHORIZATION {
                        mask_authorization(value.as_bytes())
                    } else {
                        String::from_utf8_lossy(value.as_bytes()).into_owned()
                    }
                })
                .collect();
            headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
        }
        let body = self
            .json()
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()));
        serde_json::json!({
            "method": self.method.as_str(),
            "path": self.path,
            "query": self.query,
            "version": format!("{:?}", self.version),
            "headers": headers,
            "body": body,
            "cancelled": self.cancelled,
        })
    }
}

impl fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The derived output would print the API key.
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if name == header::AUTHORIZATION {
                    mask_authorization(value.as_bytes())
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name.as_str().to_owned(), shown)
            })
            .collect();
        f.debug_struct("RecordedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("version", &self.version)
            .field("headers", &headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("cancelled", &self.cancelled)
            .finish()
    }
}

/// `Bearer ****abcd`: the scheme and, like DeepSeek's own messages, at most the key's last
/// four characters (none for keys too short to hide the rest).
pub(super) fn mask_authorization(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let (scheme, key) = match text.split_once(' ') {
        Some((scheme, key)) => (scheme, key.trim()),
        None => ("", text.trim()),
    };
    let masked = format!("****{}", key_tail(key));
    if scheme.is_empty() {
        masked
    } else {
        format!("{scheme} {masked}")
    }
}

/// The last four characters of a key, or nothing when the key is eight characters or shorter.
pub(super) fn key_tail(key: &str) -> String {
    let count = key.chars().count();
    if count <= 8 {
        return String::new();
    }
    key.chars().skip(count - 4).collect()
}

/// The most recent requests, oldest first, at most `capacity` of them.
pub(super) struct RequestLog {
    capacity: usize,
    entries: VecDeque<RecordedRequest>,
}

impl RequestLog {
    pub(super) fn new(capacity: usize) -> RequestLog {
        RequestLog {
            capacity,
            entries: VecDeque::new(),
        }
    }

    pub(super) fn push(&mut self, request: RecordedRequest) {
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(request);
    }

    /// Marks the request numbered `sequence` as abandoned, if it is still kept.
    pub(super) fn mark_cancelled(&mut self, sequence: u64) {
        // The request is recent, so search from the newest end.
        if let Some(entry) = self
            .entries
            .iter_mut()
            .rev()
            .find(|entry| entry.sequence == sequence)
        {
            entry.cancelled = true;
        }
    }

    pub(super) fn snapshot(&self) -> Vec<RecordedRequest> {
        self.entries.iter().cloned().collect()
    }

    pub(super) fn to_json(&self) -> Value {
        Value::Array(self.entries.iter().map(RecordedRequest::to_json).collect())
    }

    /// Forgets every entry and says how many there were.
    pub(super) fn clear(&mut self) -> usize {
        let count = self.entries.len();
        self.entries.clear();
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str) -> RecordedRequest {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer sk-secret-1234abcd"),
        );
        RecordedRequest {
            method: Method::POST,
            path: path.to_owned(),
            query: None,
            version: Version::HTTP_11,
            headers,
            body: Bytes::from_static(b"not json"),
            cancelled: false,
            sequence: 1,
        }
    }

    #[test]
    fn log_keeps_only_the_most_recent() {
        let mut log = RequestLog::new(2);
        for path in ["/a", "/b", "/c"] {
            log.push(request(path));
        }
        let paths: Vec<String> = log.snapshot().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/b", "/c"]);
        assert_eq!(log.clear(), 2);
        assert!(log.snapshot().is_empty());
    }

    #[test]
    fn an_abandoned_request_is_marked_once_found() {
        let mut log = RequestLog::new(4);
        let mut second = request("/b");
        second.sequence = 2;
        log.push(request("/a"));
        log.push(second);
        log.mark_cancelled(2);
        log.mark_cancelled(99);
        let cancelled: Vec<bool> = log.snapshot().iter().map(|r| r.cancelled).collect();
        assert_eq!(cancelled, [false, true]);
        assert_eq!(log.to_json()[1]["cancelled"], true);
    }

    #[test]
    fn key_is_masked_in_debug_and_json() {
        let request = request("/chat/completions");
        let debug = format!("{request:?}");
        assert!(!debug.contains("sk-secret"), "{debug}");
        assert!(debug.contains("Bearer ****abcd"), "{debug}");
        let json = request.to_json();
        assert_eq!(json["headers"]["authorization"], "Bearer ****abcd");
        assert_eq!(json["body"], "not json");
    }

    #[test]
    fn short_keys_show_no_characters() {
        assert_eq!(mask_authorization(b"Bearer abc"), "Bearer ****");
        assert_eq!(mask_authorization(b"token"), "****");
    }
}
