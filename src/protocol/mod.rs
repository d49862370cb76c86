//! The Kafka wire: everything between a TCP socket and the agent.
//!
//! - [`frame`]: length-prefixed frames, bounded before anything is allocated.
//! - [`listener`]: a listener's protocol and advertised address; a connection's [`listener::Peer`]
//!   (address, listener, principal).
//! - [`tls`], [`sasl`]: what secures a connection before its first request is served.
//! - [`connection`]: the accept loops and one pipelined connection (requests read ahead, answers
//!   written in request order).
//! - [`handlers`]: header decoding, the API version table, one `match` on the API key, and one
//!   file per API family.
//! - [`error`]: the one place where internal errors become Kafka error codes.
//! - [`request_metrics`]: requests and their latency by API and version, on `/metrics`.
//!
//! Must not touch: storage, offsets, object layout. Handlers translate; the agent decides.

pub mod connection;
pub mod error;
pub mod frame;
pub mod handlers;
pub mod listener;
pub mod request_metrics;
pub mod sasl;
pub mod tls;
