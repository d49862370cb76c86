//! How an agent talks to the controller: one trait, [`ControllerClient`].
//!
//! [`InProcess`] is the embedded implementation: a method call on a [`Controller`] in the same
//! process, with blocking store work moved to tokio's blocking pool. [`super::remote::Remote`]
//! implements the same trait over gRPC (and the controller service answers its group and
//! transaction calls through an `InProcess`); the data path does not know which it has.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

use super::groups::{
    CommittedOffset, GroupDescription, GroupError, GroupListing, JoinRequest, JoinResponse, OffsetCommitRequest,
    SyncRequest, SyncResponse, TopicPartition, consumer,
};
use super::log::PartitionOffsets;
use super::groups::GroupCoordinator;
use super::txn::{TxnDescription, TxnEnd, TxnInit};
use super::{CommitRequest, Controller, ControllerError, CreateTopic, ExtentRecord, TopicMeta, TopicRef};

#[async_trait]
pub trait ControllerClient: Send + Sync + 'static {
    fn cluster_id(&self) -> String;
    /// Cached topic metadata (cheap; called on every produce and fetch).
    fn topic(&self, r: TopicRef<'_>) -> Option<Arc<TopicMeta>>;
    fn topics(&self) -> Vec<Arc<TopicMeta>>;
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets, ControllerError>;
    /// Changes after every commit.
    fn commit_watch(&self) -> watch::Receiver<u64>;
    /// The first offset of the partition's earliest open transaction, else the high watermark.
    fn last_stable_offset(&self, topic_id: Uuid, partition: i32) -> Result<i64, ControllerError>;

    async fn create_topic(&self, req: CreateTopic) -> Result<Arc<TopicMeta>, ControllerError>;
    async fn delete_topic(&self, r: TopicRef<'_>) -> Result<Arc<TopicMeta>, ControllerError>;
    async fn commit_object(&self, req: CommitRequest) -> Result<Vec<Result<i64, ControllerError>>, ControllerError>;
    async fn find_extents(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Vec<ExtentRecord>, ControllerError>;
    async fn extent_for_timestamp(&self, topic_id: Uuid, partition: i32, timestamp: i64)
    -> Result<Option<ExtentRecord>, ControllerError>;
    async fn extent_with_max_timestamp(&self, topic_id: Uuid, partition: i32) -> Result<Option<ExtentRecord>, ControllerError>;
    /// The highest committed entry of the WAL `log_id` (0: none).
    async fn wal_mark(&self, log_id: &str) -> Result<u64, ControllerError>;
    /// A new producer id and epoch for an idempotent producer.
    async fn init_producer_id(&self) -> Result<(i64, i16), ControllerError>;

    // Transactions (controller::txn).
    /// Aborted transactions of a partition overlapping `[from_offset, to_offset)`:
    /// (producer id, first offset).
    async fn aborted_txns(&self, topic_id: Uuid, partition: i32, from_offset: i64, to_offset: i64)
    -> Result<Vec<(i64, i64)>, ControllerError>;
    /// InitProducerId with a transactional id; `expected`: (producer id, epoch) or (-1, -1).
    async fn init_transactional_producer(&self, transactional_id: String, timeout_ms: i32, expected: (i64, i16))
    -> Result<TxnInit, ControllerError>;
    async fn add_partitions_to_txn(
        &self,
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
        verify_only: bool,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError>;
    async fn add_offsets_to_txn(&self, transactional_id: String, producer_id: i64, epoch: i16, group_id: String)
    -> Result<(), ControllerError>;
    async fn txn_offset_commit(
        &self,
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
        group_id: String,
        offsets: Vec<super::groups::CommitOffset>,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError>;
    /// TxnOffsetCommit's group member check.
    async fn validate_txn_offset_commit(&self, group_id: String, member_id: String, instance_id: Option<String>, generation: i32)
    -> Result<(), GroupError>;
    /// The markers to write (None: already complete).
    async fn end_txn(&self, transactional_id: String, producer_id: i64, epoch: i16, commit: bool)
    -> Result<Option<TxnEnd>, ControllerError>;
    /// Timed-out transactions (now aborting) and unfinished ones: markers to write.
    async fn transactions_to_finish(&self) -> Result<Vec<TxnEnd>, ControllerError>;
    async fn describe_transaction(&self, transactional_id: String) -> Result<Option<TxnDescription>, ControllerError>;
    /// Partitions of `group_id` with offsets pending in an ongoing transaction (KIP-447).
    async fn pending_txn_offsets(&self, group_id: String) -> Result<Vec<super::groups::TopicPartition>, ControllerError>;
    async fn list_transactions(&self, states: Vec<String>, producer_ids: Vec<i64>, min_duration_ms: i64)
    -> Result<Vec<TxnDescription>, ControllerError>;

    // Consumer groups (controller::groups). JoinGroup and SyncGroup may wait for the other
    // members, up to the group's rebalance timeout.
    async fn join_group(&self, req: JoinRequest) -> JoinResponse;
    async fn sync_group(&self, req: SyncRequest) -> Result<SyncResponse, GroupError>;
    async fn heartbeat(&self, group_id: String, member_id: String, instance_id: Option<String>, generation: i32)
    -> Result<(), GroupError>;
    /// One result per (member id, instance id); `Err` is a group-level error.
    async fn leave_group(&self, group_id: String, members: Vec<(String, Option<String>)>)
    -> Result<Vec<Result<(), GroupError>>, GroupError>;
    /// One result per offset; `Err` is a group-level error.
    async fn commit_offsets(&self, req: OffsetCommitRequest) -> Result<Vec<Result<(), GroupError>>, GroupError>;
    /// `partitions: None`: every committed offset. `member`: (member id, epoch) to check.
    async fn fetch_offsets(
        &self,
        group_id: String,
        partitions: Option<Vec<TopicPartition>>,
        member: Option<(String, i32)>,
    ) -> Result<Vec<(TopicPartition, Option<CommittedOffset>)>, GroupError>;
    async fn delete_offsets(&self, group_id: String, partitions: Vec<TopicPartition>)
    -> Result<Vec<Result<(), GroupError>>, GroupError>;
    async fn list_groups(&self, states: Vec<String>, types: Vec<String>) -> Result<Vec<GroupListing>, GroupError>;
    async fn describe_group(&self, group_id: String) -> Result<GroupDescription, GroupError>;
    async fn delete_group(&self, group_id: String) -> Result<(), GroupError>;
    async fn consumer_group_heartbeat(&self, req: consumer::HeartbeatRequest) -> Result<consumer::HeartbeatResponse, GroupError>;
    async fn consumer_group_describe(&self, group_id: String) -> Result<consumer::GroupDescription, GroupError>;
    /// Orphan collection: for each object key, true if it is not committed and now can never be
    /// (delete the object), false if it is committed (keep it).
    async fn collect_orphans(&self, keys: Vec<String>) -> Result<Vec<bool>, ControllerError>;

    /// Agents in cluster mode that are registered and heartbeating with the controller, sorted
    /// by node id (as last heard from it); empty when the controller does not track them (the
    /// embedded one: sidecar mode only).
    fn live_agents(&self) -> Vec<LiveAgent> {
        Vec::new()
    }
}

/// A live agent as Kafka clients see it (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAgent {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub zone: Option<String>,
}

/// The embedded controller, called in-process.
#[derive(Clone)]
pub struct InProcess(pub Arc<Controller>);

impl InProcess {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Controller) -> Result<T, ControllerError> + Send + 'static,
    ) -> Result<T, ControllerError> {
        let c = self.0.clone();
        tokio::task::spawn_blocking(move || f(&c))
            .await
            .map_err(|e| ControllerError::Unavailable(format!("controller task failed: {e}")))?
    }

    async fn blocking_groups<T: Send + 'static>(
        &self,
        f: impl FnOnce(&GroupCoordinator) -> Result<T, GroupError> + Send + 'static,
    ) -> Result<T, GroupError> {
        let c = self.0.clone();
        tokio::task::spawn_blocking(move || f(c.groups()))
            .await
            .map_err(|e| GroupError::Unavailable(format!("controller task failed: {e}")))?
    }
}

#[async_trait]
impl ControllerClient for InProcess {
    fn cluster_id(&self) -> String {
        self.0.cluster_id().to_string()
    }
    fn topic(&self, r: TopicRef<'_>) -> Option<Arc<TopicMeta>> {
        self.0.topic(r)
    }
    fn topics(&self) -> Vec<Arc<TopicMeta>> {
        self.0.topics()
    }
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets, ControllerError> {
        self.0.offsets(topic_id, partition)
    }
    fn commit_watch(&self) -> watch::Receiver<u64> {
        self.0.commit_watch()
    }
    fn last_stable_offset(&self, topic_id: Uuid, partition: i32) -> Result<i64, ControllerError> {
        self.0.last_stable_offset(topic_id, partition)
    }

    async fn create_topic(&self, req: CreateTopic) -> Result<Arc<TopicMeta>, ControllerError> {
        self.blocking(move |c| c.create_topic(&req)).await
    }
    async fn delete_topic(&self, r: TopicRef<'_>) -> Result<Arc<TopicMeta>, ControllerError> {
        let owned = match r {
            TopicRef::Name(n) => Err(n.to_string()),
            TopicRef::Id(id) => Ok(id),
        };
        self.blocking(move |c| match &owned {
            Err(name) => c.delete_topic(TopicRef::Name(name)),
            Ok(id) => c.delete_topic(TopicRef::Id(*id)),
        })
        .await
    }
    async fn commit_object(&self, req: CommitRequest) -> Result<Vec<Result<i64, ControllerError>>, ControllerError> {
        self.blocking(move |c| c.commit_object(&req)).await
    }
    async fn find_extents(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Vec<ExtentRecord>, ControllerError> {
        if let Some(found) = self.0.find_recent_extents(topic_id, partition, from_offset, max_bytes)? {
            return Ok(found);
        }
        self.blocking(move |c| c.find_extents(topic_id, partition, from_offset, max_bytes)).await
    }
    async fn extent_for_timestamp(
        &self,
        topic_id: Uuid,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<ExtentRecord>, ControllerError> {
        self.blocking(move |c| c.extent_for_timestamp(topic_id, partition, timestamp)).await
    }
    async fn extent_with_max_timestamp(&self, topic_id: Uuid, partition: i32) -> Result<Option<ExtentRecord>, ControllerError> {
        self.blocking(move |c| c.extent_with_max_timestamp(topic_id, partition)).await
    }
    async fn wal_mark(&self, log_id: &str) -> Result<u64, ControllerError> {
        let log_id = log_id.to_string();
        self.blocking(move |c| c.wal_mark(&log_id)).await
    }
    async fn init_producer_id(&self) -> Result<(i64, i16), ControllerError> {
        self.blocking(|c| c.init_producer_id()).await
    }

    async fn aborted_txns(&self, topic_id: Uuid, partition: i32, from_offset: i64, to_offset: i64) -> Result<Vec<(i64, i64)>, ControllerError> {
        self.blocking(move |c| c.aborted_txns(topic_id, partition, from_offset, to_offset)).await
    }
    async fn init_transactional_producer(&self, transactional_id: String, timeout_ms: i32, expected: (i64, i16)) -> Result<TxnInit, ControllerError> {
        self.blocking(move |c| c.init_transactional_producer(&transactional_id, timeout_ms, expected)).await
    }
    async fn add_partitions_to_txn(
        &self,
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
        verify_only: bool,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        if verify_only {
            // Memory only (no store write, no write lock): answered on the caller's thread, as
            // produce verifies every transactional batch this way before acknowledging it.
            return self.0.add_partitions_to_txn(&transactional_id, producer_id, epoch, &partitions, true);
        }
        self.blocking(move |c| c.add_partitions_to_txn(&transactional_id, producer_id, epoch, &partitions, verify_only)).await
    }
    async fn add_offsets_to_txn(&self, transactional_id: String, producer_id: i64, epoch: i16, group_id: String) -> Result<(), ControllerError> {
        self.blocking(move |c| c.add_offsets_to_txn(&transactional_id, producer_id, epoch, &group_id)).await
    }
    async fn txn_offset_commit(
        &self,
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
        group_id: String,
        offsets: Vec<super::groups::CommitOffset>,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        self.blocking(move |c| c.txn_offset_commit(&transactional_id, producer_id, epoch, &group_id, offsets)).await
    }
    async fn validate_txn_offset_commit(&self, group_id: String, member_id: String, instance_id: Option<String>, generation: i32) -> Result<(), GroupError> {
        self.0.groups().validate_txn_offset_commit(&group_id, &member_id, instance_id.as_deref(), generation)
    }
    async fn end_txn(&self, transactional_id: String, producer_id: i64, epoch: i16, commit: bool) -> Result<Option<TxnEnd>, ControllerError> {
        self.blocking(move |c| c.end_txn(&transactional_id, producer_id, epoch, commit)).await
    }
    async fn transactions_to_finish(&self) -> Result<Vec<TxnEnd>, ControllerError> {
        self.blocking(|c| c.transactions_to_finish()).await
    }
    async fn describe_transaction(&self, transactional_id: String) -> Result<Option<TxnDescription>, ControllerError> {
        Ok(self.0.describe_transaction(&transactional_id))
    }
    async fn pending_txn_offsets(&self, group_id: String) -> Result<Vec<super::groups::TopicPartition>, ControllerError> {
        Ok(self.0.pending_txn_offsets(&group_id))
    }
    async fn list_transactions(&self, states: Vec<String>, producer_ids: Vec<i64>, min_duration_ms: i64) -> Result<Vec<TxnDescription>, ControllerError> {
        Ok(self.0.list_transactions(&states, &producer_ids, min_duration_ms))
    }

    async fn join_group(&self, req: JoinRequest) -> JoinResponse {
        self.0.groups().join(req).await
    }
    async fn sync_group(&self, req: SyncRequest) -> Result<SyncResponse, GroupError> {
        self.0.groups().sync(req).await
    }
    async fn heartbeat(&self, group_id: String, member_id: String, instance_id: Option<String>, generation: i32) -> Result<(), GroupError> {
        self.0.groups().heartbeat(&group_id, &member_id, instance_id.as_deref(), generation)
    }
    async fn leave_group(&self, group_id: String, members: Vec<(String, Option<String>)>) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.0.groups().leave(&group_id, &members)
    }
    async fn commit_offsets(&self, req: OffsetCommitRequest) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.blocking_groups(move |g| g.commit_offsets(&req)).await
    }
    async fn fetch_offsets(
        &self,
        group_id: String,
        partitions: Option<Vec<TopicPartition>>,
        member: Option<(String, i32)>,
    ) -> Result<Vec<(TopicPartition, Option<CommittedOffset>)>, GroupError> {
        self.0.groups().fetch_offsets(&group_id, partitions.as_deref(), member.as_ref().map(|(m, e)| (m.as_str(), *e)))
    }
    async fn delete_offsets(&self, group_id: String, partitions: Vec<TopicPartition>) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.blocking_groups(move |g| g.delete_offsets(&group_id, &partitions)).await
    }
    async fn list_groups(&self, states: Vec<String>, types: Vec<String>) -> Result<Vec<GroupListing>, GroupError> {
        Ok(self.0.groups().list_groups(&states, &types))
    }
    async fn describe_group(&self, group_id: String) -> Result<GroupDescription, GroupError> {
        self.0.groups().describe_group(&group_id)
    }
    async fn delete_group(&self, group_id: String) -> Result<(), GroupError> {
        self.blocking_groups(move |g| g.delete_group(&group_id)).await
    }
    async fn consumer_group_heartbeat(&self, req: consumer::HeartbeatRequest) -> Result<consumer::HeartbeatResponse, GroupError> {
        self.0.groups().consumer_heartbeat(req)
    }
    async fn consumer_group_describe(&self, group_id: String) -> Result<consumer::GroupDescription, GroupError> {
        self.0.groups().consumer_describe(&group_id)
    }
    async fn collect_orphans(&self, keys: Vec<String>) -> Result<Vec<bool>, ControllerError> {
        self.blocking(move |c| c.collect_orphans(&keys)).await
    }
}
