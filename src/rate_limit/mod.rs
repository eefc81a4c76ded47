//! Rate limiting (being written for issue 5).
