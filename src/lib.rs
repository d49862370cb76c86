//! Sidestream: a Kafka-compatible agent that keeps its data in object storage, and the controller
//! that orders it.
//!
//! The modules follow the data path of a produced record, top to bottom:
//!
//! - [`protocol`]: the Kafka wire (framing, request dispatch, one handler file per API family).
//!   It owns no state; it translates Kafka requests into calls on the agent.
//! - [`agent`]: the per-host sidecar: produce validation, the upload buffer that turns many
//!   small batches into one object, and the fetch path that reads objects back.
//! - [`object`]: the object format and the object store trait with its backends.
//! - [`controller`]: topics, offsets assigned at commit, the partition index, on a metadata store.
//!
//! [`admin`] is the command line's Kafka client (`sidestream group describe`).
//!
//! [`host`] takes what the agent needs of its machine first (the `data_dir` lock, open files,
//! free space); [`failures`] counts and logs the partitions answered with an error.
//! [`config`] is the `proxy.toml` schema; [`clock`] holds the injectable sources of time and
//! randomness that the core paths use instead of the system's; [`health`] the readiness checks
//! behind `/readyz`, [`probe`] the periodic checks that keep them true on an idle agent;
//! [`sdnotify`] tells systemd when the agent is ready and when it stops.

pub mod admin;
pub mod agent;
pub mod api;
pub mod clock;
pub mod config;
pub mod controller;
pub mod controller_bench;
pub mod failures;
pub mod format;
pub mod health;
pub mod host;
pub mod metrics;
pub mod object;
pub mod probe;
pub mod protocol;
pub mod sdnotify;
pub mod server;
