//! The formats every layer shares, and nothing else: a leaf that imports no other module of
//! the crate, so the agent, the object store and the controller can all depend on it without
//! depending on each other.
//!
//! - [`records`]: Kafka's record batch v2 (headers validated and patched, records never
//!   decoded, except to check compressed batches).
//! - [`object`]: one object = many partitions' record batches + an index + a checksummed
//!   footer, and the commit facts taken from it ([`object::ExtentInfo`],
//!   [`object::ProducerBatch`]): what the agent tells the controller about each partition's
//!   byte range.
//! - [`otlp_metrics`]: OTLP metrics (protobuf), as KIP-714 clients push them, read into
//!   points without materialising the message.
//!
//! Must not touch: I/O, clocks, configuration, the controller, the Kafka protocol crate's
//! request types.

pub mod object;
pub mod otlp_metrics;
pub mod records;
