//! Retries (being written for issue 7).
