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

mod message;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use message::*;
pub use request::*;
pub use response::*;
