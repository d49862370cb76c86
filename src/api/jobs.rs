//! The background jobs' side of the API: job leases, retention, object garbage collection and
//! what the store holds (used by both processes).
//!
//! A job (retention, object collection, compaction) runs in one agent at a time: the agent
//! leases it from the controller ([`JobLease`]) and hands the lease back with every call that
//! changes something, so a job whose lease lapsed (a paused or cut-off agent) changes nothing:
//! the controller refuses its calls with `LeaseNotHeld`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The retention job: log start offsets by `retention.ms` / `retention.bytes`, and expiry of
/// committed group offsets (`offsets.retention.minutes`).
pub const JOB_RETENTION: &str = "retention";
/// The object collector: deletes objects no index row references any more.
pub const JOB_OBJECT_GC: &str = "object-gc";
/// Object compaction and log compaction (`agent::compaction`).
pub const JOB_COMPACTION: &str = "compaction";

/// A job leased to one holder until `ttl_ms` after it was granted (or renewed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLease {
    pub job: String,
    pub holder: String,
    /// Changes with every grant to a new holder: a lease handed back after someone else held
    /// the job is refused even if it names the same holder.
    pub token: u64,
    pub ttl_ms: i64,
}

/// One partition's log start after a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStart {
    pub topic_id: Uuid,
    pub partition: i32,
    pub log_start_offset: i64,
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    /// The partitions whose log start moved, and where to.
    pub moved: Vec<LogStart>,
    /// Committed group offsets expired (`offsets.retention.minutes`).
    pub offsets_expired: u64,
}

/// What the object store holds, as the controller's books say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStats {
    pub objects: u64,
    pub object_bytes: u64,
    /// Of those, objects no index row references (deleted after `object_delete_delay_ms`).
    pub garbage_objects: u64,
    pub garbage_bytes: u64,
    /// Bytes the index holds per topic (by name), largest first.
    pub topic_bytes: Vec<(String, u64)>,
}
