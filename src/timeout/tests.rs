//! Unit tests of the timeouts.
