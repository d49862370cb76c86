//! The controller's API: every call an agent makes to the controller, its arguments, its
//! replies and its errors, defined once and shared by both sides.
//!
//! - [`calls`]: the table of calls. From it come the [`calls::Call`] and [`calls::Reply`]
//!   enums, the typed methods the agent calls (`client.create_topic(..)`), the controller's
//!   dispatch (`controller::calls`), and the wire form (JSON in a versioned envelope).
//! - [`groups`], [`txn`]: the arguments and replies of the group and transaction calls.
//! - [`acl`]: ACL bindings, filters and the controller's set of them (Kafka's model).
//! - [`configs`]: topic configs (Kafka's names, types, defaults, checks) and their changes.
//! - [`quota`]: client quotas (entities, keys, the set agents enforce, describe filters).
//! - [`rpc`]: the gRPC wire; [`tls`]: its TLS (the PEM files, checked, as tonic's settings).
//! - this file: topics, commits, extents, and [`ControllerError`].
//!
//! The agent (its Kafka handlers and its client of the controller) and the controller both
//! import this module; it imports only [`crate::format`]. Must not touch: logic of either side.

pub mod acl;
pub mod calls;
pub mod client_metrics;
pub mod configs;
pub mod groups;
pub mod jobs;
pub mod quota;
pub mod rpc;
pub mod scram;
pub mod serde_with;
pub mod share;
pub mod tls;
pub mod txn;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::format::object::ExtentInfo;
use txn::TxnEnd;

/// Controller failures, sorted by what the caller does: tell the client (invalid input,
/// unknown topic), or retry later (unavailable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ControllerError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("unknown topic id")]
    UnknownTopicId,
    // Kafka's own wording: tools print it as is (kafka-topics.sh --create).
    #[error("Topic '{0}' already exists.")]
    TopicAlreadyExists(String),
    #[error("invalid topic name: {0}")]
    InvalidTopicName(String),
    /// Kafka's words stand alone (kafka-topics.sh --alter prints them as they are).
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    /// A manual replica assignment Kafka would refuse (CreatePartitions), in Kafka's words.
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A limit of the cluster (e.g. `max_partitions_total`) refuses the request.
    #[error("{0}")]
    PolicyViolation(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("out of order sequence: {0}")]
    OutOfOrderSequence(String),
    #[error("invalid producer epoch: {0}")]
    InvalidProducerEpoch(String),
    #[error("producer fenced: {0}")]
    ProducerFenced(String),
    #[error("invalid producer id mapping: {0}")]
    InvalidProducerIdMapping(String),
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    #[error("invalid transaction timeout: {0}")]
    InvalidTransactionTimeout(String),
    /// Retriable: the previous transaction of this transactional id is being completed.
    #[error("concurrent transactions: {0}")]
    ConcurrentTransactions(String),
    /// Another partition of the same request failed.
    #[error("operation not attempted")]
    OperationNotAttempted,
    /// The metadata store failed; retrying may succeed.
    #[error("controller unavailable: {0}")]
    Unavailable(String),
    /// The object's key was collected as an orphan (marked uncommittable): nothing was
    /// committed. Its data is still the agent's to keep: upload it again under a new key.
    #[error("object collected: {0}")]
    ObjectCollected(String),
    /// Compaction's swap found the extents it replaces changed meanwhile (retention, another
    /// compaction): nothing was written. Sent only in answer to `replace_extents`.
    #[error("extents changed: {0}")]
    ExtentsChanged(String),
    /// DeleteRecords beyond the high watermark (or a negative offset other than -1).
    #[error("offset out of range: {0}")]
    OffsetOutOfRange(String),
    /// A background job's call made without the job's lease (it expired, or another agent
    /// holds it now): nothing was changed; the job stops until it holds the lease again.
    #[error("job lease not held: {0}")]
    LeaseNotHeld(String),
    /// A credential, ACL or quota that does not exist (deleting it).
    #[error("{0}")]
    ResourceNotFound(String),
    /// A credential the broker does not accept (iterations out of bounds, empty name).
    #[error("{0}")]
    UnacceptableCredential(String),
    /// The same resource twice in one request.
    #[error("{0}")]
    DuplicateResource(String),
    #[error("{0}")]
    UnsupportedSaslMechanism(String),
}

/// One commit's answer: each extent's base offset or error, or an error for the whole commit.
pub type CommitResult = Result<Vec<Result<i64, ControllerError>>, ControllerError>;

/// A topic as agents see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub id: Uuid,
    pub name: String,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

impl TopicMeta {
    pub fn config_i64(&self, key: &str) -> Option<i64> {
        self.configs.get(key).and_then(|v| v.parse().ok())
    }
}

/// How a client names a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRef<'a> {
    Name(&'a str),
    Id(Uuid),
}

/// A topic named by a client, owned: a call's argument ([`TopicRef`] borrows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicKey {
    Name(String),
    Id(Uuid),
}

impl TopicKey {
    pub fn as_ref(&self) -> TopicRef<'_> {
        match self {
            TopicKey::Name(n) => TopicRef::Name(n),
            TopicKey::Id(id) => TopicRef::Id(*id),
        }
    }
}

/// A CreateTopics request after the protocol layer resolved defaults it knows about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopic {
    pub name: String,
    /// -1: the configured default.
    pub partitions: i32,
    /// -1 or >= 1; objects in object storage need no replicas, so any positive factor is accepted.
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    pub validate_only: bool,
}

/// A CreatePartitions request for one topic (Kafka's `CreatePartitionsTopic`), after the
/// protocol layer's checks (duplicates, ACLs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePartitions {
    pub name: String,
    /// The topic's new partition count (not the number added).
    pub count: i32,
    /// Manual replica assignment: one broker id list per new partition. Checked as Kafka checks
    /// it, then ignored (every agent serves every partition).
    pub assignments: Option<Vec<Vec<i32>>>,
    /// The node ids clients are shown (Kafka's registered brokers), which an assignment may name.
    pub brokers: Vec<i32>,
    pub validate_only: bool,
}

/// One uploaded object to commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    pub object_key: String,
    pub object_size_bytes: u64,
    pub agent: String,
    /// In data order; a partition appears at most once per object.
    pub extents: Vec<ExtentInfo>,
    /// Set when the object holds a transaction's markers (one control batch per extent): the
    /// commit completes the transaction.
    pub txn_end: Option<TxnEnd>,
    /// The highest entry of the agent's WAL that this object holds; recorded in the same
    /// transaction, so WAL replay after a crash skips exactly what is committed.
    pub wal: Option<WalMark>,
}

/// A position in an agent's write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalMark {
    pub log_id: String,
    pub entry_id: u64,
}

/// Kafka's limit on partitions per topic is practical, not protocol; ours is explicit.
pub const PARTITIONS_MAX: i32 = 100_000;

/// What the controller knows of one partition between commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    /// The high watermark: the next offset to assign.
    pub next_offset: i64,
}

/// A partition's contiguous byte range in one object, with the offsets assigned to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentRecord {
    pub topic_id: Uuid,
    pub partition: i32,
    pub base_offset: i64,
    /// Exclusive.
    pub end_offset: i64,
    pub object_key: std::sync::Arc<str>,
    pub position: u64,
    pub length: u64,
    pub batch_count: u32,
    pub max_timestamp: i64,
    /// Size of the whole object (the read cache's last block ends there).
    pub object_size: u64,
}

/// Compaction's swap of index rows: `old` extents (as the job read them) are replaced by `new`
/// ones in the object `object_key`, which cover exactly the same offsets of each partition.
/// Offsets never change; only where the batches live (and, for log compaction, which records
/// remain in them). A per-partition object's swap holds one partition; a partition-sorted
/// object's ([`crate::format::object::SORTED_OBJECT_SUFFIX`]) holds every partition in it, all
/// swapped in one transaction (a controller of an older release refuses such a swap as
/// invalid, writing nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceExtents {
    pub object_key: String,
    pub object_size_bytes: u64,
    pub agent: String,
    /// The first partition of the extents (by topic id, then partition).
    pub topic_id: Uuid,
    pub partition: i32,
    /// By topic id, partition, then base offset.
    pub old: Vec<ExtentRecord>,
    /// By topic id, partition, then base offset, all in `object_key`.
    pub new: Vec<ExtentRecord>,
}

/// Which objects' extents compaction looks at ([`crate::api::calls`] `compaction_candidates`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidatesRequest {
    /// Objects smaller than this.
    pub small_bytes: u64,
    /// Objects committed before this time (ms since the epoch).
    pub committed_before_ms: i64,
    /// false: uploaded objects (many partitions each; neither kind of compaction's output),
    /// the oldest `limit` objects smaller than `small_bytes`, every extent of each, by commit
    /// time then position. true: compaction's output, by partition then offset, from the
    /// partition after `after`, at most `limit` extents: those of per-partition objects
    /// ([`crate::format::object::PARTITION_OBJECT_SUFFIX`]) smaller than `small_bytes`, and
    /// those of partition-sorted objects
    /// ([`crate::format::object::SORTED_OBJECT_SUFFIX`]) of any size.
    pub partition_objects: bool,
    pub after: Option<(Uuid, i32)>,
    pub limit: u32,
}

/// A live agent as Kafka clients see it (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAgent {
    pub node_id: i32,
    /// The address of its first listener (what agents of older versions register alone).
    pub host: String,
    pub port: i32,
    pub zone: Option<String>,
    /// Every listener's advertised address, by Kafka listener name.
    pub listeners: Vec<ListenerAddress>,
}

impl LiveAgent {
    /// Its address for clients of `listener`; `None` if it has no listener of that name (Kafka
    /// leaves such brokers out). An agent that registered no names has only its first address.
    pub fn address(&self, listener: &str) -> Option<(&str, i32)> {
        if self.listeners.is_empty() {
            return Some((&self.host, self.port));
        }
        self.listeners.iter().find(|l| l.name == listener).map(|l| (l.host.as_str(), l.port))
    }
}

/// A listener's advertised address, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerAddress {
    pub name: String,
    pub host: String,
    pub port: i32,
}

/// Kafka's internal topics: internal by name, as Kafka's `Topic.isInternal`, however they were
/// created (by the agents on first need, or by a client's CreateTopics, as Kafka allows). Never
/// written by clients: Produce and DeleteRecords refuse them, as Kafka does.
pub const INTERNAL_TOPICS: &[&str] = &["__consumer_offsets", "__transaction_state", "__share_group_state"];

/// Whether clients are told `name` is internal (Kafka's `Topic.isInternal`: by name).
pub fn is_internal_topic(name: &str) -> bool {
    INTERNAL_TOPICS.contains(&name)
}

/// The internal topics the controller creates when a client first needs one, laid out as
/// Kafka 4.4 creates them (`offsets.topic.num.partitions` and
/// `transaction.state.log.num.partitions` are 50): `__consumer_offsets` on the first
/// FindCoordinator for a group, `__transaction_state` on the first for a transactional id,
/// either on a Metadata request that may auto-create it. Here they stay empty (the controller
/// keeps group offsets and transactions in its store); they exist so that clients see what
/// Kafka shows them: listed with `is_internal`, skipped by regex subscriptions, readable and
/// empty, never writable. `__share_group_state` has no layout: there are no share groups.
pub fn internal_topic_layout(name: &str) -> Option<(i32, &'static [(&'static str, &'static str)])> {
    const OFFSETS: &[(&str, &str)] = &[("cleanup.policy", "compact"), ("compression.type", "producer"), ("segment.bytes", "104857600")];
    const TRANSACTIONS: &[(&str, &str)] = &[
        ("cleanup.policy", "compact"),
        ("compression.type", "uncompressed"),
        ("segment.bytes", "104857600"),
        ("unclean.leader.election.enable", "false"),
    ];
    match name {
        "__consumer_offsets" => Some((50, OFFSETS)),
        "__transaction_state" => Some((50, TRANSACTIONS)),
        _ => None,
    }
}

/// Kafka's rule: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), ControllerError> {
    let bad = |why: &str| Err(ControllerError::InvalidTopicName(format!("{name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return bad("only ASCII alphanumerics, '.', '_' and '-' are allowed");
    }
    Ok(())
}
