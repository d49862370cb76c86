//! The controller's metadata store: one schema behind one trait.
//!
//! The controller keeps a hot in-memory view (topics, next offsets, recent extents) and writes
//! every change through this trait first; the store is the source of truth after a restart.
//! [`sqlite`] is the embedded default; [`postgres`] is the shared one (several controller
//! replicas, one active at a time through a lease in the database). Both run the same contract
//! tests (`tests.rs`). Every method is blocking and is called off the async runtime's worker
//! threads.
//!
//! Both stores write through one writer thread fed by a bounded queue and read through a small
//! pool of connections ([`conn`]), with the timeouts of [`StoreSettings`]. Their errors are
//! sorted by what the caller must do ([`StoreError`]) and keep the database's error as source.

mod conn;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use super::producers::{ProducerKey, ProducerState};
use crate::api::acl::{AclBinding, AclOperation, AclPermission, PatternType, ResourceType};
use crate::api::client_metrics::ClientMetricsResource;
use crate::api::scram::{ScramCredential, ScramMechanism};
use crate::api::{ExtentRecord, WalMark};

/// A store error's cause: the database client's own error, kept whole.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Store failures, sorted by what the caller must do. `Retry`, `Invalid`, `Corrupt` and
/// `Internal` keep the database client's error as their [`std::error::Error::source`]; their
/// text carries that source's chain too, so a log line of the error alone says what happened.
/// `Conflict`, `Fenced` and `Stale` are the store's own refusals (its rules, not a failure), with
/// no cause beyond their text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Transient, worth retrying: the connection broke or could not be opened, a statement or a
    /// lock wait ran past its timeout, the database is busy, locked, shutting down or out of
    /// connections, a serialization failure or deadlock. The transaction was rolled back.
    #[error("metadata store unavailable (retriable): {}", chain(.source.as_ref()))]
    Retry {
        #[source]
        source: BoxError,
    },
    /// A uniqueness constraint refused the write (e.g. a topic name taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store refused the data handed in (a value out of range, a constraint other than
    /// uniqueness): the same call fails the same way.
    #[error("metadata store refused the data: {}", chain(.source.as_ref()))]
    Invalid {
        #[source]
        source: BoxError,
    },
    /// The stored data makes no sense (schema from the future, bad bytes).
    #[error("metadata store corrupt: {what}{}", suffix(.source))]
    Corrupt {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A bug or a broken invariant: SQL the database does not accept, a column of another type,
    /// the writer thread gone.
    #[error("metadata store internal error: {what}{}", suffix(.source))]
    Internal {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// This controller no longer holds the controller lease: another replica took over. The
    /// write was refused; the caller must stop writing (and reload if it becomes active again).
    #[error("fenced: {0}")]
    Fenced(String),
    /// The store moved under the caller's view (a partition is no longer at the offset the
    /// commit was planned from, or the object is already committed): nothing was written; the
    /// caller reloads its view and retries.
    #[error("stale view: {0}")]
    Stale(String),
}

impl StoreError {
    pub fn retry(source: impl Into<BoxError>) -> Self {
        StoreError::Retry { source: source.into() }
    }

    pub fn corrupt(what: impl Into<String>, source: Option<BoxError>) -> Self {
        StoreError::Corrupt { what: what.into(), source }
    }

    pub fn internal(what: impl Into<String>, source: Option<BoxError>) -> Self {
        StoreError::Internal { what: what.into(), source }
    }

    /// Whether the same call may succeed later (the controller answers "unavailable").
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Retry { .. })
    }

    /// The error's text and every source's below it, each once.
    pub fn report(&self) -> String {
        chain(self)
    }

    /// What an "unavailable" answer crossing the wire as a string (`ControllerError`,
    /// `GroupError`) carries: [`StoreError::report`], marked "internal" when retrying the same
    /// call cannot help (the operator must look).
    pub fn unavailable_text(&self) -> String {
        match self {
            StoreError::Invalid { .. } | StoreError::Corrupt { .. } | StoreError::Internal { .. } => {
                format!("internal: {}", self.report())
            }
            StoreError::Retry { .. } | StoreError::Conflict(_) | StoreError::Fenced(_) | StoreError::Stale(_) => self.report(),
        }
    }
}

/// A stored client metrics subscription (its configs as a JSON object).
fn client_metrics_row(name: String, configs: &str) -> Result<ClientMetricsResource, StoreError> {
    let configs = serde_json::from_str(configs)
        .map_err(|e| StoreError::corrupt(format!("client metrics subscription {name} does not decode"), Some(e.into())))?;
    Ok(ClientMetricsResource { name, configs })
}

/// Client metrics changes as stored: each subscription's configs as a JSON object, or `None`
/// to delete it.
fn client_metrics_rows(changes: &[(String, Option<BTreeMap<String, String>>)]) -> Result<Vec<(String, Option<String>)>, StoreError> {
    changes
        .iter()
        .map(|(name, configs)| {
            let json = configs.as_ref().map(serde_json::to_string).transpose().map_err(|e| StoreError::Invalid { source: e.into() })?;
            Ok((name.clone(), json))
        })
        .collect()
}

/// `e`'s text followed by each source's, skipping a source whose text is already there (some
/// errors print their cause themselves).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let t = cause.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        next = cause.source();
    }
    text
}

fn suffix(source: &Option<BoxError>) -> String {
    source.as_ref().map(|e| format!(": {}", chain(e.as_ref()))).unwrap_or_default()
}

/// How a store uses its database, as data (`[controller] store_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// Reader connections at most (index lookups: extents, WAL marks, aborted transactions).
    pub read_connections: usize,
    /// PostgreSQL: how long opening a connection may take.
    pub connect_timeout_ms: u64,
    /// PostgreSQL: `statement_timeout` and `idle_in_transaction_session_timeout` of every
    /// connection; SQLite: `busy_timeout`.
    pub statement_timeout_ms: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self::from(&crate::config::ControllerConfig::default())
    }
}

impl From<&crate::config::ControllerConfig> for StoreSettings {
    fn from(c: &crate::config::ControllerConfig) -> Self {
        Self {
            read_connections: c.store_read_connections as usize,
            connect_timeout_ms: c.store_connect_timeout_ms,
            statement_timeout_ms: c.store_statement_timeout_ms,
        }
    }
}

/// One object's commit: the object, its planned extents, its WAL mark, the producer states.
pub type ObjectCommit<'a> = (&'a ObjectRecord, &'a [ExtentRecord], Option<&'a WalMark>, &'a [(ProducerKey, ProducerState)], &'a TxnEffects);

/// A store opened by [`open`], and the same store as a PostgreSQL one (for its lease) if it is.
pub type Opened = (Arc<dyn MetadataStore>, Option<Arc<postgres::PgStore>>);

/// Opens the store `url` names.
pub fn open(url: &crate::config::StoreUrl, settings: &StoreSettings) -> Result<Opened, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => Ok((Arc::new(sqlite::SqliteStore::open_with(path, settings)?), None)),
        crate::config::StoreUrl::Postgres(url) => {
            let store = Arc::new(postgres::PgStore::open_with(url, settings)?);
            Ok((store.clone(), Some(store)))
        }
    }
}

/// An [`ObjectCommit`] owned, to hand to a store's writer thread.
type OwnedCommit = (ObjectRecord, Vec<ExtentRecord>, Option<WalMark>, Vec<(ProducerKey, ProducerState)>, TxnEffects);

fn owned_commits(commits: &[ObjectCommit<'_>]) -> Vec<OwnedCommit> {
    commits
        .iter()
        .map(|(o, extents, wal, producers, txn)| ((*o).clone(), extents.to_vec(), wal.cloned(), producers.to_vec(), (*txn).clone()))
        .collect()
}

/// The default `[controller] object_commit_window_ms`: an object key is committed within this
/// long after it was made, or never (the controller refuses older keys, and keeps orphan marks
/// only this long).
pub const DEFAULT_COMMIT_WINDOW_MS: i64 = 86_400_000;

/// A partition's log start moved forward (retention, DeleteRecords).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStartMove {
    pub topic_id: Uuid,
    pub partition: i32,
    pub log_start_offset: i64,
}

/// What the index holds of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSize {
    pub topic_id: Uuid,
    pub partition: i32,
    pub bytes: u64,
    pub extents: u64,
}

/// Objects in the store's books: every committed object not yet deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredObjects {
    pub objects: u64,
    pub bytes: u64,
    /// Of those, the ones no extent references (waiting for the collector).
    pub garbage_objects: u64,
    pub garbage_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub id: Uuid,
    pub name: String,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRecord {
    pub topic_id: Uuid,
    pub partition: i32,
    pub log_start_offset: i64,
    pub next_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    pub key: String,
    pub size_bytes: u64,
    pub agent: String,
    pub committed_ms: i64,
}

/// A consumer group's committed offset of one partition (topics by name, as in Kafka).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffsetRecord {
    pub group_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_ms: i64,
}

/// A share group's delivery state of one partition (`controller::groups::share_partition`'s
/// durable form, as JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePartitionRecord {
    pub group_id: String,
    pub topic_id: Uuid,
    pub partition: i32,
    pub body: String,
}

/// Everything the controller loads at start-up (extents stay in the store).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cluster_id: String,
    pub topics: Vec<TopicRecord>,
    pub partitions: Vec<PartitionRecord>,
    pub producers: Vec<(ProducerKey, ProducerState)>,
    /// Transactional id and its encoded state (`controller::txn::encode`).
    pub transactions: Vec<(String, String)>,
    /// Every partition's open transactions (they hold back the last stable offset).
    pub open_txns: Vec<OpenTxnRecord>,
}

/// A transaction open in a partition: its producer wrote data from `first_offset` on and no
/// marker closed it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenTxnRecord {
    pub topic_id: Uuid,
    pub partition: i32,
    pub producer_id: i64,
    pub first_offset: i64,
}

/// An aborted transaction in a partition: data of `producer_id` in `[first_offset,
/// last_offset]` (the abort marker's offset) is skipped by read_committed consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxnRecord {
    pub topic_id: Uuid,
    pub partition: i32,
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What a commit changes in the transactions' state, written in the commit's store transaction.
#[derive(Debug, Clone, Default)]
pub struct TxnEffects {
    pub opened: Vec<OpenTxnRecord>,
    pub closed: Vec<OpenTxnRecord>,
    pub aborted: Vec<AbortedTxnRecord>,
    /// A transaction completed by this commit's markers: id and encoded state.
    pub transaction: Option<(String, String)>,
    /// Offsets a committed transaction makes visible to their groups.
    pub group_offsets: Vec<GroupOffsetRecord>,
}

/// An `acls` row (Kafka's codes) back into a binding; a code this build does not know is corrupt
/// data (only validated bindings are ever written).
fn acl_from_row(
    resource_type: i64,
    resource_name: String,
    pattern_type: i64,
    principal: String,
    host: String,
    operation: i64,
    permission: i64,
) -> Result<AclBinding, StoreError> {
    let code = |what: &str, v: i64| i8::try_from(v).map_err(|_| StoreError::corrupt(format!("acls: {what} code {v} out of range"), None));
    let unknown = |what: &str, v: i64| StoreError::corrupt(format!("acls: unknown {what} code {v}"), None);
    let binding = AclBinding {
        resource_type: ResourceType::from_code(code("resource type", resource_type)?)
            .ok_or_else(|| unknown("resource type", resource_type))?,
        resource_name,
        pattern_type: PatternType::from_code(code("pattern type", pattern_type)?).ok_or_else(|| unknown("pattern type", pattern_type))?,
        principal,
        host,
        operation: AclOperation::from_code(code("operation", operation)?).ok_or_else(|| unknown("operation", operation))?,
        permission: AclPermission::from_code(code("permission", permission)?).ok_or_else(|| unknown("permission", permission))?,
    };
    binding.validate().map_err(|e| StoreError::corrupt(format!("acls: stored binding {binding}: {e}"), None))?;
    Ok(binding)
}

pub trait MetadataStore: Send + Sync + 'static {
    /// Loads the snapshot; on a fresh store, records `new_cluster_id` first.
    fn load(&self, new_cluster_id: &str) -> Result<Snapshot, StoreError>;
    /// Inserts a topic and its partitions (starting at offset 0).
    fn create_topic(&self, topic: &TopicRecord) -> Result<(), StoreError>;
    /// Grows topic `topic_id` from `from` partitions to `to` (the new ones start at offset 0),
    /// in one transaction; `Stale`, and nothing written, unless it has exactly `from` now.
    fn add_partitions(&self, topic_id: Uuid, from: i32, to: i32) -> Result<(), StoreError>;
    /// Removes a topic, its partitions, its extents, its producer states, its open transactions,
    /// its aborted transaction index and the group offsets committed on its name; its objects
    /// that no other extent references become garbage (at `now_ms`). One transaction.
    fn delete_topic(&self, id: Uuid, name: &str, now_ms: i64) -> Result<(), StoreError>;
    /// Replaces each topic's configs with the given set (a config left out goes back to its
    /// default), all topics in one transaction. A topic that no longer exists gets none.
    fn set_topic_configs(&self, topics: &[(Uuid, BTreeMap<String, String>)]) -> Result<(), StoreError>;
    /// Retention and DeleteRecords, in one transaction: moves each partition's log start
    /// forward to its move's (never back), deletes its extents that end at or below it and its
    /// aborted transactions that end below it, and makes garbage (at `now_ms`) every object no
    /// extent references afterwards.
    fn advance_log_starts(&self, moves: &[LogStartMove], now_ms: i64) -> Result<(), StoreError>;
    /// Up to `limit` garbage objects (no extent references them) that became garbage at or
    /// before `before_ms`, oldest first: the ones the collector may delete now.
    fn garbage(&self, before_ms: i64, limit: u32) -> Result<Vec<String>, StoreError>;
    /// The collector deleted these garbage objects from the object store: their rows go, and
    /// each key whose flag says so keeps an orphan mark (at `now_ms`), so that a late replay of
    /// its commit is refused. Marks made before `marks_before_ms` are dropped. Keys that are not
    /// garbage are left alone.
    fn forget_objects(&self, keys: &[(String, bool)], now_ms: i64, marks_before_ms: i64) -> Result<(), StoreError>;
    /// Bytes and extents the index holds per partition (retention.bytes, metrics).
    fn partition_sizes(&self) -> Result<Vec<PartitionSize>, StoreError>;
    /// Objects the store knows of (committed and not yet deleted), and how many are garbage.
    fn stored_objects(&self) -> Result<StoredObjects, StoreError>;
    /// The extents recorded by the commit of `object_key`, if it was committed.
    fn committed_extents(&self, object_key: &str) -> Result<Option<Vec<ExtentRecord>>, StoreError>;
    /// In one transaction: records the object and its extents, moves each extent's partition
    /// `next_offset` from the extent's `base_offset` to its `end_offset` (`Stale` and nothing
    /// written if the partition is no longer at `base_offset`), raises the WAL mark if one is
    /// given, and writes the idempotent producers' states and the transactions' effects.
    /// `Conflict` if the key was doomed as an orphan ([`MetadataStore::doom_uncommitted`]):
    /// such a key can never be committed.
    fn commit_object(
        &self,
        object: &ObjectRecord,
        extents: &[ExtentRecord],
        wal: Option<&WalMark>,
        producers: &[(ProducerKey, ProducerState)],
        txn: &TxnEffects,
    ) -> Result<(), StoreError>;
    /// Group commit: every commit of `commits` (in order) in one transaction, all or none.
    fn commit_objects(&self, commits: &[ObjectCommit<'_>]) -> Result<(), StoreError>;
    /// Registers (or re-registers) an agent: its new epoch, higher than any it had before, so
    /// the agent's earlier incarnation is fenced.
    fn register_agent(&self, name: &str) -> Result<u64, StoreError>;
    /// Inserts or replaces a transactional id's encoded state.
    fn put_transaction(&self, transactional_id: &str, body: &str) -> Result<(), StoreError>;
    /// Forgets transactional ids (`transactional.id.expiration.ms`), in one transaction.
    fn delete_transactions(&self, transactional_ids: &[String]) -> Result<(), StoreError>;
    /// Aborted transactions of a partition that overlap `[from_offset, to_offset)`, by first
    /// offset, at most `limit`: `(producer id, first offset)`.
    fn aborted_txns(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        to_offset: i64,
        limit: u32,
    ) -> Result<Vec<(i64, i64)>, StoreError>;
    /// A producer id never handed out before.
    fn allocate_producer_id(&self) -> Result<i64, StoreError>;
    /// Forgets producer states last seen before `before_ms`, except those of a producer with a
    /// transaction open in that partition (Kafka keeps them until the transaction ends).
    fn expire_producers(&self, before_ms: i64) -> Result<(), StoreError>;
    /// The highest committed entry of WAL `log_id` (0 when none).
    fn wal_mark(&self, log_id: &str) -> Result<u64, StoreError>;
    /// Orphan collection, in one transaction: for each key, false if it is committed (keep the
    /// object), else true, and the key is marked so that it can never be committed afterwards
    /// (delete the object). Check and mark are atomic with respect to `commit_object`, so an
    /// object is either committed or deleted, never both, however the two race.
    fn doom_uncommitted(&self, keys: &[String], now_ms: i64) -> Result<Vec<bool>, StoreError>;
    /// Up to `limit` extents of a partition with `end_offset > from_offset`, by offset.
    fn find_extents(&self, topic_id: Uuid, partition: i32, from_offset: i64, limit: u32) -> Result<Vec<ExtentRecord>, StoreError>;
    /// The first extent (by offset) holding a batch with `max_timestamp >= timestamp`.
    fn first_extent_at_or_after(&self, topic_id: Uuid, partition: i32, timestamp: i64) -> Result<Option<ExtentRecord>, StoreError>;
    /// The extent holding the partition's largest timestamp (earliest such, by offset).
    fn extent_with_max_timestamp(&self, topic_id: Uuid, partition: i32) -> Result<Option<ExtentRecord>, StoreError>;
    /// Every ACL binding (loaded once, at start-up).
    fn acls(&self) -> Result<Vec<AclBinding>, StoreError>;
    /// In one transaction: inserts the bindings of `create` (one already stored stays as it is)
    /// and deletes those of `delete`.
    fn alter_acls(&self, create: &[AclBinding], delete: &[AclBinding]) -> Result<(), StoreError>;
    /// Every committed group offset (loaded once, at start-up).
    fn load_group_offsets(&self) -> Result<Vec<GroupOffsetRecord>, StoreError>;
    /// In one transaction: inserts or replaces each offset.
    fn commit_group_offsets(&self, offsets: &[GroupOffsetRecord]) -> Result<(), StoreError>;
    /// Deletes a group's offsets of `partitions` (topic name, partition), or all of them.
    fn delete_group_offsets(&self, group_id: &str, partitions: Option<&[(String, i32)]>) -> Result<(), StoreError>;
    /// Extents compaction may rewrite (see [`crate::api::CandidatesRequest`]): of objects
    /// committed before `committed_before_ms`; uploaded objects smaller than `small_bytes`
    /// (`partition_objects` false: the oldest `limit` of them, every extent of each, by commit
    /// time, key, position) or compaction's output (true: per-partition objects smaller than
    /// `small_bytes` and partition-sorted objects of any size, by partition after `after`, then
    /// offset, at most `limit` extents).
    fn compaction_candidates(&self, req: &crate::api::CandidatesRequest) -> Result<Vec<ExtentRecord>, StoreError>;
    /// Compaction's swap, in one transaction: deletes the `old` extents (`Stale`, and nothing
    /// written, unless each still exists exactly as given), records `object` (`Conflict` if its
    /// key was doomed as an orphan, `Stale` if it is already recorded) with the `new` extents,
    /// and puts every object of `old` that no extent references any more into `garbage`
    /// (since `object.committed_ms`), for the garbage collector. Never touches offsets.
    fn replace_extents(&self, object: &ObjectRecord, old: &[ExtentRecord], new: &[ExtentRecord]) -> Result<(), StoreError>;

    /// SCRAM credentials: of `user`, or of every user; sorted by user and mechanism.
    fn scram_credentials(&self, user: Option<&str>) -> Result<Vec<(String, ScramCredential)>, StoreError>;
    /// Upserts and deletes SCRAM credentials in one transaction.
    fn alter_scram_credentials(
        &self,
        upserts: &[(String, ScramCredential)],
        deletes: &[(String, ScramMechanism)],
    ) -> Result<(), StoreError>;

    /// Client quotas: every (entity key, quota key, value), sorted by entity and key. The
    /// store keeps the controller's strings (`api::quota`) as they are.
    fn client_quotas(&self) -> Result<Vec<(String, String, f64)>, StoreError>;
    /// Sets (`Some`) and removes (`None`) client quotas, all in one transaction.
    fn alter_client_quotas(&self, changes: &[(String, String, Option<f64>)]) -> Result<(), StoreError>;

    /// Every share-partition's state (loaded once, at start-up).
    fn load_share_partitions(&self) -> Result<Vec<SharePartitionRecord>, StoreError>;
    /// In one transaction: inserts or replaces each share-partition's state.
    fn put_share_partitions(&self, rows: &[SharePartitionRecord]) -> Result<(), StoreError>;
    /// Deletes a share group's state of `partitions` (topic id, partition), or all of it.
    fn delete_share_partitions(&self, group_id: &str, partitions: Option<&[(Uuid, i32)]>) -> Result<(), StoreError>;
    /// Every group config (group id, name, value), sorted.
    fn group_configs(&self) -> Result<Vec<(String, String, String)>, StoreError>;
    /// Sets (`Some`) and removes (`None`) one group's configs, in one transaction.
    fn alter_group_configs(&self, group_id: &str, changes: &[(String, Option<String>)]) -> Result<(), StoreError>;
    /// Client metrics subscriptions (CLIENT_METRICS resources), each with its configs as set.
    fn client_metrics(&self) -> Result<Vec<ClientMetricsResource>, StoreError>;
    /// Sets (`Some`: the subscription's whole configs) and deletes (`None`) subscriptions, all
    /// in one transaction.
    fn set_client_metrics(&self, changes: &[(String, Option<BTreeMap<String, String>>)]) -> Result<(), StoreError>;
}
