//! tower-deepseek (crate docs are written in full once the modules land).
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
pub mod deepseek;
pub mod error;
#[cfg(feature = "mock")]
pub mod mock;

pub use error::{BoxError, Error, ErrorKind};
