//! Concurrency limits (being written for issue 9).
