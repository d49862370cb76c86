//! The controller's side of every call in the table ([`crate::api::calls`]): the [`Answer`]
//! trait, one method per call, implemented once for [`Controller`] here; and [`dispatch`],
//! which runs a [`Call`] as its kind says (on the caller's thread, on the blocking pool, or
//! awaited) and wraps the answer in its [`Reply`].
//!
//! The in-process client (an agent with the embedded controller) and the gRPC service (remote
//! agents) both answer through [`dispatch`], so a remote agent gets exactly the embedded
//! semantics, errors included.
//!
//! Must not touch: transport (gRPC, envelopes), the agent's caches.

use std::future::Future;
use std::pin::Pin;

use crate::api::calls::prelude::*;
use crate::api::calls::{Call, Reply};

use super::Controller;

/// A `wait` call's answer: a future that may wait for other group members.
pub type Waiting<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

macro_rules! answer_fn {
    (wait, $method:ident ($($arg:ident: $ty:ty),*) -> $reply:ty) => {
        fn $method(&self, $($arg: $ty),*) -> Waiting<$reply>;
    };
    ($kind:ident, $method:ident ($($arg:ident: $ty:ty),*) -> $reply:ty) => {
        fn $method(&self, $($arg: $ty),*) -> $reply;
    };
}

macro_rules! run {
    (now, $c:expr, $method:ident ($($arg:ident),*)) => {
        Answer::$method(&**$c, $($arg),*)
    };
    (blocking, $c:expr, $method:ident ($($arg:ident),*)) => {{
        let c = $c.clone();
        match crate::clock::run_blocking(move || Answer::$method(&*c, $($arg),*)).await {
            Ok(r) => r,
            Err(e) => crate::api::calls::Failed::failed(ControllerError::Unavailable(format!("controller task failed: {e}"))),
        }
    }};
    (wait, $c:expr, $method:ident ($($arg:ident),*)) => {
        Answer::$method(&**$c, $($arg),*).await
    };
}

macro_rules! define_answer {
    ($([$kind:ident] $variant:ident $method:ident ($($(#[$meta:meta])* $arg:ident: $ty:ty),*) -> $reply:ty;)*) => {
        /// What the controller answers to each call of the table. `blocking` methods may touch
        /// the store (they run on the blocking pool); `now` methods must not.
        pub trait Answer: Send + Sync + 'static {
            $(answer_fn!($kind, $method ($($arg: $ty),*) -> $reply);)*
        }

        /// Runs `call` on the controller.
        pub async fn dispatch(c: &Arc<Controller>, call: Call) -> Reply {
            if let Some(reply) = answer_from_memory(c, &call) {
                return reply;
            }
            match call {
                $(Call::$variant { $($arg),* } => Reply::$variant(run!($kind, c, $method ($($arg),*))),)*
            }
        }
    };
}

crate::api::calls::for_each_call!(define_answer);

/// Blocking calls that memory can often answer without the blocking pool: a tail read whose
/// extents are among the recent ones, and the check of a transactional batch at produce.
fn answer_from_memory(c: &Controller, call: &Call) -> Option<Reply> {
    match call {
        Call::FindExtents { topic_id, partition, from_offset, max_bytes } => {
            match c.find_recent_extents(*topic_id, *partition, *from_offset, *max_bytes) {
                Ok(Some(found)) => Some(Reply::FindExtents(Ok(found))),
                Ok(None) => None,
                Err(e) => Some(Reply::FindExtents(Err(e))),
            }
        }
        // Memory only (no store write, no write lock): produce verifies every transactional
        // batch this way before acknowledging it.
        Call::AddPartitionsToTxn { transactional_id, producer_id, epoch, partitions, verify_only: true, .. } => {
            Some(Reply::AddPartitionsToTxn(c.add_partitions_to_txn(transactional_id, *producer_id, *epoch, partitions, true, 0)))
        }
        _ => None,
    }
}

impl Answer for Controller {
    fn create_topic(&self, req: CreateTopic) -> Result<Arc<TopicMeta>, ControllerError> {
        Controller::create_topic(self, &req)
    }
    fn create_internal_topic(&self, name: String) -> Result<Arc<TopicMeta>, ControllerError> {
        Controller::create_internal_topic(self, &name)
    }
    fn delete_topic(&self, topic: TopicKey) -> Result<Arc<TopicMeta>, ControllerError> {
        Controller::delete_topic(self, topic.as_ref())
    }
    fn create_partitions(&self, req: CreatePartitions) -> Result<Arc<TopicMeta>, ControllerError> {
        Controller::create_partitions(self, &req)
    }
    fn commit_object(&self, req: CommitRequest) -> CommitResult {
        Controller::commit_object(self, &req)
    }
    fn find_extents(&self, topic_id: Uuid, partition: i32, from_offset: i64, max_bytes: u64) -> Result<Vec<ExtentRecord>, ControllerError> {
        Controller::find_extents(self, topic_id, partition, from_offset, max_bytes)
    }
    fn extent_for_timestamp(&self, topic_id: Uuid, partition: i32, timestamp: i64) -> Result<Option<ExtentRecord>, ControllerError> {
        Controller::extent_for_timestamp(self, topic_id, partition, timestamp)
    }
    fn extent_with_max_timestamp(&self, topic_id: Uuid, partition: i32) -> Result<Option<ExtentRecord>, ControllerError> {
        Controller::extent_with_max_timestamp(self, topic_id, partition)
    }
    fn wal_mark(&self, log_id: String) -> Result<u64, ControllerError> {
        Controller::wal_mark(self, &log_id)
    }
    fn init_producer_id(&self) -> Result<(i64, i16), ControllerError> {
        Controller::init_producer_id(self)
    }
    fn collect_orphans(&self, keys: Vec<String>) -> Result<Vec<bool>, ControllerError> {
        Controller::collect_orphans(self, &keys)
    }
    fn alter_topic_configs(
        &self,
        changes: Vec<TopicConfigChange>,
        validate_only: bool,
    ) -> Result<Vec<Result<Arc<TopicMeta>, ControllerError>>, ControllerError> {
        Controller::alter_topic_configs(self, &changes, validate_only)
    }
    fn delete_records(&self, partitions: Vec<(Uuid, i32, i64)>) -> Result<Vec<Result<i64, ControllerError>>, ControllerError> {
        Controller::delete_records(self, &partitions)
    }

    fn acquire_job_lease(&self, job: String, holder: String) -> Result<Option<JobLease>, ControllerError> {
        Controller::acquire_job_lease(self, &job, &holder)
    }
    fn enforce_retention(&self, lease: JobLease) -> Result<RetentionReport, ControllerError> {
        Controller::enforce_retention(self, &lease)
    }
    fn garbage_objects(&self, lease: JobLease, min_age_ms: i64, limit: u32) -> Result<Vec<String>, ControllerError> {
        Controller::garbage_objects(self, &lease, min_age_ms, limit)
    }
    fn forget_objects(&self, lease: JobLease, keys: Vec<String>) -> Result<(), ControllerError> {
        Controller::forget_objects(self, &lease, &keys)
    }
    fn storage_stats(&self) -> Result<StorageStats, ControllerError> {
        Controller::storage_stats(self)
    }

    fn partition_sizes(&self) -> Result<Vec<(Uuid, i32, u64)>, ControllerError> {
        Controller::partition_sizes(self)
    }

    fn describe_producers(
        &self,
        partitions: Vec<(Uuid, i32)>,
    ) -> Result<Vec<Result<Vec<ProducerDescription>, ControllerError>>, ControllerError> {
        Ok(Controller::describe_producers(self, &partitions))
    }

    fn compaction_candidates(&self, req: CandidatesRequest) -> Result<Vec<ExtentRecord>, ControllerError> {
        Controller::compaction_candidates(self, &req)
    }

    fn replace_extents(&self, lease: JobLease, req: ReplaceExtents) -> Result<(), ControllerError> {
        Controller::replace_extents(self, &lease, &req)
    }

    fn aborted_txns(&self, topic_id: Uuid, partition: i32, from_offset: i64, to_offset: i64) -> Result<Vec<(i64, i64)>, ControllerError> {
        Controller::aborted_txns(self, topic_id, partition, from_offset, to_offset)
    }
    fn init_transactional_producer(
        &self,
        transactional_id: String,
        timeout_ms: i32,
        expected: (i64, i16),
    ) -> Result<TxnInit, ControllerError> {
        Controller::init_transactional_producer(self, &transactional_id, timeout_ms, expected)
    }
    fn add_partitions_to_txn(
        &self,
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
        verify_only: bool,
        client_version: Option<i16>,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        Controller::add_partitions_to_txn(
            self,
            &transactional_id,
            producer_id,
            epoch,
            &partitions,
            verify_only,
            client_version.unwrap_or(0),
        )
    }
    fn add_offsets_to_txn(&self, transactional_id: String, producer_id: i64, epoch: i16, group_id: String) -> Result<(), ControllerError> {
        Controller::add_offsets_to_txn(self, &transactional_id, producer_id, epoch, &group_id)
    }
    fn txn_offset_commit(
        &self,
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
        group_id: String,
        offsets: Vec<CommitOffset>,
        client_version: Option<i16>,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        Controller::txn_offset_commit(self, &transactional_id, producer_id, epoch, &group_id, offsets, client_version.unwrap_or(0))
    }
    fn validate_txn_offset_commit(
        &self,
        group_id: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
    ) -> Result<(), GroupError> {
        self.groups().validate_txn_offset_commit(&group_id, &member_id, instance_id.as_deref(), generation)
    }
    fn end_txn(&self, transactional_id: String, producer_id: i64, epoch: i16, commit: bool) -> Result<Option<TxnEnd>, ControllerError> {
        Ok(Controller::end_txn(self, &transactional_id, producer_id, epoch, commit, 0)?.markers)
    }
    fn end_txn2(
        &self,
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        client_version: i16,
    ) -> Result<EndAnswer, ControllerError> {
        Controller::end_txn(self, &transactional_id, producer_id, epoch, commit, client_version)
    }
    fn transactions_to_finish(&self) -> Result<Vec<TxnEnd>, ControllerError> {
        Controller::transactions_to_finish(self)
    }
    fn describe_transaction(&self, transactional_id: String) -> Result<Option<TxnDescription>, ControllerError> {
        Ok(Controller::describe_transaction(self, &transactional_id))
    }
    fn pending_txn_offsets(&self, group_id: String) -> Result<Vec<TopicPartition>, ControllerError> {
        Ok(Controller::pending_txn_offsets(self, &group_id))
    }
    fn list_transactions(
        &self,
        states: Vec<String>,
        producer_ids: Vec<i64>,
        min_duration_ms: i64,
    ) -> Result<Vec<TxnDescription>, ControllerError> {
        Ok(Controller::list_transactions(self, &states, &producer_ids, min_duration_ms))
    }

    fn all_acls(&self) -> Result<AclSet, ControllerError> {
        Ok(AclSet::clone(&Controller::acls(self)))
    }
    fn describe_acls(&self, filter: AclFilter) -> Result<Vec<AclBinding>, ControllerError> {
        Ok(Controller::describe_acls(self, &filter))
    }
    fn create_acls(&self, bindings: Vec<AclBinding>) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        Controller::create_acls(self, &bindings)
    }
    fn delete_acls(&self, filters: Vec<AclFilter>) -> Result<Vec<Result<Vec<AclBinding>, ControllerError>>, ControllerError> {
        Controller::delete_acls(self, &filters)
    }

    fn join_group(&self, req: JoinRequest) -> Waiting<JoinResponse> {
        let groups = self.groups().clone();
        Box::pin(async move { groups.join(req).await })
    }
    fn sync_group(&self, req: SyncRequest) -> Waiting<Result<SyncResponse, GroupError>> {
        let groups = self.groups().clone();
        Box::pin(async move { groups.sync(req).await })
    }
    fn heartbeat(&self, group_id: String, member_id: String, instance_id: Option<String>, generation: i32) -> Result<(), GroupError> {
        self.groups().heartbeat(&group_id, &member_id, instance_id.as_deref(), generation)
    }
    fn leave_group(&self, group_id: String, members: Vec<(String, Option<String>)>) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.groups().leave(&group_id, &members)
    }
    fn commit_offsets(&self, req: OffsetCommitRequest) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.groups().commit_offsets(&req)
    }
    fn fetch_offsets(
        &self,
        group_id: String,
        partitions: Option<Vec<TopicPartition>>,
        member: Option<(String, i32)>,
    ) -> Result<Vec<(TopicPartition, Option<CommittedOffset>)>, GroupError> {
        self.groups().fetch_offsets(&group_id, partitions.as_deref(), member.as_ref().map(|(m, e)| (m.as_str(), *e)))
    }
    fn delete_offsets(&self, group_id: String, partitions: Vec<TopicPartition>) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.groups().delete_offsets(&group_id, &partitions)
    }
    fn list_groups(&self, states: Vec<String>, types: Vec<String>) -> Result<Vec<GroupListing>, GroupError> {
        Ok(self.groups().list_groups(&states, &types))
    }
    fn describe_group(&self, group_id: String) -> Result<GroupDescription, GroupError> {
        self.groups().describe_group(&group_id)
    }
    fn delete_group(&self, group_id: String) -> Result<(), GroupError> {
        self.groups().delete_group(&group_id)
    }
    fn consumer_group_heartbeat(&self, req: consumer::HeartbeatRequest) -> Result<consumer::HeartbeatResponse, GroupError> {
        self.groups().consumer_heartbeat(req)
    }
    fn consumer_group_describe(&self, group_id: String) -> Result<consumer::GroupDescription, GroupError> {
        self.groups().consumer_describe(&group_id)
    }
    fn share_group_heartbeat(&self, req: share::HeartbeatRequest) -> Result<share::HeartbeatResponse, GroupError> {
        self.groups().share_heartbeat(req)
    }
    fn share_group_describe(&self, group_id: String) -> Result<share::GroupDescription, GroupError> {
        self.groups().share_describe(&group_id)
    }
    fn share_records(&self, req: share::RecordsRequest) -> Result<share::RecordsAnswer, GroupError> {
        self.groups().share_records(req)
    }
    fn share_group_offsets(
        &self,
        group_id: String,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<share::StartOffset>, GroupError> {
        self.groups().share_offsets(&group_id, topics.as_deref())
    }
    fn alter_share_group_offsets(
        &self,
        group_id: String,
        offsets: Vec<(String, i32, i64)>,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.groups().alter_share_offsets(&group_id, &offsets)
    }
    fn delete_share_group_offsets(&self, group_id: String, topics: Vec<String>) -> Result<Vec<Result<Uuid, GroupError>>, GroupError> {
        self.groups().delete_share_offsets(&group_id, &topics)
    }
    /// (the group's own configs, every config's default).
    fn group_configs(&self, group_id: String) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>), GroupError> {
        let g = self.groups();
        Ok((g.group_configs(&group_id), g.group_config_defaults()))
    }
    fn alter_group_configs(&self, group_id: String, changes: Vec<(String, Option<String>)>, validate_only: bool) -> Result<(), GroupError> {
        self.groups().alter_group_configs(&group_id, &changes, validate_only)
    }
    fn streams_group_heartbeat(&self, req: streams::HeartbeatRequest) -> Result<streams::HeartbeatResponse, GroupError> {
        self.groups().streams_heartbeat(req)
    }
    fn streams_group_describe(&self, group_id: String) -> Result<streams::GroupDescription, GroupError> {
        self.groups().streams_describe(&group_id)
    }

    fn scram_credential(&self, user: String, mechanism: ScramMechanism) -> Result<Option<ScramCredential>, ControllerError> {
        Controller::scram_credential(self, &user, mechanism)
    }
    fn alter_scram_credentials(&self, alterations: Vec<ScramAlteration>) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        Controller::alter_scram_credentials(self, &alterations)
    }
    fn describe_scram_credentials(&self, users: Option<Vec<String>>) -> Result<Vec<ScramUser>, ControllerError> {
        Controller::describe_scram_credentials(self, users.as_deref())
    }

    fn all_client_quotas(&self) -> Result<QuotaSet, ControllerError> {
        Ok(QuotaSet::clone(&Controller::client_quotas(self)))
    }
    fn describe_client_quotas(&self, filter: QuotaFilter) -> Result<Vec<QuotaEntry>, ControllerError> {
        Controller::describe_client_quotas(self, &filter)
    }
    fn alter_client_quotas(
        &self,
        alterations: Vec<QuotaAlteration>,
        validate_only: bool,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        Controller::alter_client_quotas(self, &alterations, validate_only)
    }

    fn all_client_metrics(&self) -> Result<Vec<ClientMetricsResource>, ControllerError> {
        Ok(Vec::clone(&Controller::client_metrics(self)))
    }
    fn alter_client_metrics(
        &self,
        changes: Vec<ClientMetricsChange>,
        validate_only: bool,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        Controller::alter_client_metrics(self, &changes, validate_only)
    }
}
