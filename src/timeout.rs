//! Streaming-aware timeouts (being written for issue 7).
