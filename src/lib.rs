//! Sidestream: a Kafka-compatible agent that keeps its data in object storage, and the controller
//! that orders it.
//!
//! The modules follow the data path of a produced record, top to bottom, and say which process
//! runs them; imports only go down (`scripts/check-imports` checks it):
//!
//! - [`protocol`] (agent): the Kafka wire (framing, request dispatch, one handler file per API
//!   family). It owns no state; it translates Kafka requests into the agent's use cases.
//! - [`agent`] (agent): the per-host sidecar: produce validation, the WAL, the upload buffer that
//!   turns many small batches into one object, the fetch path that reads objects back, and its
//!   client of the controller ([`agent::client`]).
//! - [`object`] (agent): the object store trait with its backends, and object keys.
//! - [`controller`] (controller): topics, offsets assigned at commit, the partition index,
//!   groups and transactions, on a metadata store; embedded in the agent in sidecar mode.
//! - [`api`] (both): every controller call defined once, with its arguments, replies and wire.
//! - [`format`] (both): the record batch and object formats; a leaf.
//!
//! [`admin`] is the command line's Kafka client (`sidestream topic|group|produce|consume`);
//! [`controller_bench`] drives a controller service as agents do (`controller-bench`).
//!
//! [`host`] takes what the agent needs of its machine first (the `data_dir` lock, open files,
//! free space); [`failures`] counts and logs the partitions answered with an error.
//! [`config`] is the `proxy.toml` schema; [`clock`] holds the injectable sources of time and
//! randomness that the core paths use instead of the system's; [`metrics`] the counters and
//! histograms; [`health`] the readiness checks behind `/readyz` and the HTTP listener,
//! [`log_level`] the log filter that can change while the agent runs, [`probe`] the periodic checks that keep them true on an idle agent; [`sdnotify`] tells
//! systemd when the agent is ready and when it stops; [`telemetry`] exports the metrics and
//! sampled request traces over OpenTelemetry's OTLP.

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
pub mod log_level;
pub mod metrics;
pub mod object;
pub mod probe;
pub mod protocol;
pub mod sdnotify;
pub mod server;
pub mod telemetry;
pub mod users_cli;
