//! Objects: the format of what the agent uploads, where it is stored, and under which key.
//!
//! - [`format`]: one object = many partitions' record batches + an index + a checksummed footer.
//! - [`store`]: the small [`store::ObjectStore`] trait every backend implements
//!   ([`local`] directory, [`memory`] for tests).
//! - [`keys`]: the one place that builds object keys.
//!
//! This module knows nothing about Kafka requests, offsets or the controller: it stores bytes.

pub mod faulty;
pub mod format;
pub mod keys;
pub mod local;
pub mod memory;
pub mod store;

pub use store::{ObjectError, ObjectStore};
