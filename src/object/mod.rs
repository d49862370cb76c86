//! Objects: where what the agent uploads is stored, and under which key (its layout is
//! [`crate::format::object`]).
//!
//! - [`store`]: the small [`store::ObjectStore`] trait every backend implements
//!   ([`s3`] for S3 and compatible services, [`local`] directory, [`memory`] for tests).
//! - Wrappers around any store: [`retry`] (backoff with jitter, under a deadline) and
//!   [`metrics`] (requests, bytes, errors, latency). `server.rs` stacks them as
//!   retry(metrics(backend)), so every attempt is counted.
//! - [`keys`]: the one place that builds (and parses) object keys.
//!
//! This module knows nothing about Kafka requests, offsets or the controller: it stores bytes.

pub mod faulty;
pub mod keys;
pub mod local;
pub mod memory;
pub mod metrics;
pub mod retry;
pub mod s3;
pub mod store;

pub use store::{ObjectError, ObjectStore};
