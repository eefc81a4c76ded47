//! Metrics (being written for issue 8).
