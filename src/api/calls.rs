//! Every call an agent makes to the controller, in one table ([`for_each_call!`]).
//!
//! One line per call: its variant name, its method name, how the controller runs it, its
//! arguments and its reply. From that line come:
//!
//! - here: the [`Call`] and [`Reply`] enums, their wire form ([`encode`], [`decode`]: JSON
//!   inside a versioned envelope, see [`WIRE_VERSION`]) and [`Call::wait_ms`];
//! - in the agent (`agent::client`): one typed method per call on `dyn ControllerClient`
//!   (`client.create_topic(req).await`), whichever transport is behind it (in-process or gRPC);
//! - in the controller (`controller::calls`): the `Answer` trait with one method per call,
//!   and `dispatch`, which runs each call as its kind says.
//!
//! How the controller runs a call (its kind):
//! - `now`: answered from memory on the caller's thread (no store access, no waiting);
//! - `blocking`: may write or read the metadata store: runs on tokio's blocking pool;
//! - `wait`: may wait for other group members (JoinGroup, SyncGroup), up to the group's
//!   rebalance timeout; sent once by a remote agent, with that deadline ([`Call::wait_ms`]).
//!
//! Adding a call: one line in the table below, its `Answer` method in `controller::calls`,
//! and the Kafka handler that calls it (see ARCHITECTURE.md, "Adding a controller call").
//!
//! Wire compatibility (agents and controllers one release apart): a call or reply is JSON with
//! the call's name as its tag; fields added later must be `Option` or `#[serde(default)]`, so
//! an older peer's message still decodes, and a newer peer's extra fields are ignored (an
//! argument of the table may carry serde attributes: `#[serde(default, skip_serializing_if =
//! "Option::is_none")] arg: Option<T>` keeps the older wire form when it is absent). A call an
//! older controller does not know decodes to an `INVALID_REQUEST`-class error naming it, never
//! a panic. The envelope's version says which table a peer speaks; see [`WIRE_VERSION`].

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The types the table names, for the modules that expand it.
pub mod prelude {
    pub use std::sync::Arc;

    pub use uuid::Uuid;

    pub use crate::api::acl::{AclBinding, AclFilter, AclSet};
    pub use crate::api::client_metrics::{ClientMetricsChange, ClientMetricsResource};
    pub use crate::api::configs::TopicConfigChange;
    pub use crate::api::groups::{
        CommitOffset, CommittedOffset, GroupDescription, GroupError, GroupListing, JoinRequest, JoinResponse, OffsetCommitRequest,
        SyncRequest, SyncResponse, TopicPartition, consumer, streams,
    };
    pub use crate::api::jobs::{JobLease, RetentionReport, StorageStats};
    pub use crate::api::quota::{QuotaAlteration, QuotaEntry, QuotaFilter, QuotaSet};
    pub use crate::api::scram::{ScramAlteration, ScramCredential, ScramMechanism, ScramUser};
    pub use crate::api::share;
    pub use crate::api::txn::{EndAnswer, ProducerDescription, TxnDescription, TxnEnd, TxnInit};
    pub use crate::api::{
        CandidatesRequest, CommitRequest, CommitResult, ControllerError, CreatePartitions, CreateTopic, ExtentRecord, ReplaceExtents,
        TopicKey, TopicMeta,
    };
    pub use std::collections::BTreeMap;
}

/// The table of calls: expands `$m! { ... }` with one entry per call,
/// `[kind] Variant method(arg: Type, ...) -> Reply;`.
#[macro_export]
#[doc(hidden)]
macro_rules! for_each_call {
    ($m:ident) => {
        $m! {
            // Topics, commits and the partition index.
            [blocking] CreateTopic create_topic(req: CreateTopic) -> Result<Arc<TopicMeta>, ControllerError>;
            [blocking] CreateInternalTopic create_internal_topic(name: String) -> Result<Arc<TopicMeta>, ControllerError>;
            [blocking] DeleteTopic delete_topic(topic: TopicKey) -> Result<Arc<TopicMeta>, ControllerError>;
            [blocking] CreatePartitions create_partitions(req: CreatePartitions) -> Result<Arc<TopicMeta>, ControllerError>;
            [blocking] CommitObject commit_object(req: CommitRequest) -> CommitResult;
            [blocking] FindExtents find_extents(topic_id: Uuid, partition: i32, from_offset: i64, max_bytes: u64) -> Result<Vec<ExtentRecord>, ControllerError>;
            [blocking] ExtentForTimestamp extent_for_timestamp(topic_id: Uuid, partition: i32, timestamp: i64) -> Result<Option<ExtentRecord>, ControllerError>;
            [blocking] ExtentWithMaxTimestamp extent_with_max_timestamp(topic_id: Uuid, partition: i32) -> Result<Option<ExtentRecord>, ControllerError>;
            [blocking] WalMark wal_mark(log_id: String) -> Result<u64, ControllerError>;
            [blocking] InitProducerId init_producer_id() -> Result<(i64, i16), ControllerError>;
            [blocking] CollectOrphans collect_orphans(keys: Vec<String>) -> Result<Vec<bool>, ControllerError>;
            // Object compaction (agent::compaction).
            [blocking] CompactionCandidates compaction_candidates(req: CandidatesRequest) -> Result<Vec<ExtentRecord>, ControllerError>;
            [blocking] ReplaceExtents replace_extents(lease: JobLease, req: ReplaceExtents) -> Result<(), ControllerError>;
            // Topic configs (controller::configs): AlterConfigs, IncrementalAlterConfigs.
            [blocking] AlterTopicConfigs alter_topic_configs(changes: Vec<TopicConfigChange>, validate_only: bool) -> Result<Vec<Result<Arc<TopicMeta>, ControllerError>>, ControllerError>;
            [blocking] DeleteRecords delete_records(partitions: Vec<(Uuid, i32, i64)>) -> Result<Vec<Result<i64, ControllerError>>, ControllerError>;
            // Background jobs (controller::retention): leases, retention, object collection.
            [now] AcquireJobLease acquire_job_lease(job: String, holder: String) -> Result<Option<JobLease>, ControllerError>;
            [blocking] EnforceRetention enforce_retention(lease: JobLease) -> Result<RetentionReport, ControllerError>;
            [blocking] GarbageObjects garbage_objects(lease: JobLease, min_age_ms: i64, limit: u32) -> Result<Vec<String>, ControllerError>;
            [blocking] ForgetObjects forget_objects(lease: JobLease, keys: Vec<String>) -> Result<(), ControllerError>;
            [blocking] StorageStats storage_stats() -> Result<StorageStats, ControllerError>;
            // Replicas and producers as the admin tools see them (DescribeLogDirs, DescribeProducers).
            [blocking] PartitionSizes partition_sizes() -> Result<Vec<(Uuid, i32, u64)>, ControllerError>;
            [now] DescribeProducers describe_producers(partitions: Vec<(Uuid, i32)>) -> Result<Vec<Result<Vec<ProducerDescription>, ControllerError>>, ControllerError>;
            // Transactions (controller::txn).
            [blocking] AbortedTxns aborted_txns(topic_id: Uuid, partition: i32, from_offset: i64, to_offset: i64) -> Result<Vec<(i64, i64)>, ControllerError>;
            [blocking] InitTransactionalProducer init_transactional_producer(transactional_id: String, timeout_ms: i32, expected: (i64, i16)) -> Result<TxnInit, ControllerError>;
            // `client_version` (None from agents before transaction version 2: 0): see `controller::txn`.
            [blocking] AddPartitionsToTxn add_partitions_to_txn(transactional_id: String, producer_id: i64, epoch: i16, partitions: Vec<(String, i32)>, verify_only: bool, #[serde(default, skip_serializing_if = "Option::is_none")] client_version: Option<i16>) -> Result<Vec<Result<(), ControllerError>>, ControllerError>;
            [blocking] AddOffsetsToTxn add_offsets_to_txn(transactional_id: String, producer_id: i64, epoch: i16, group_id: String) -> Result<(), ControllerError>;
            [blocking] TxnOffsetCommit txn_offset_commit(transactional_id: String, producer_id: i64, epoch: i16, group_id: String, offsets: Vec<CommitOffset>, #[serde(default, skip_serializing_if = "Option::is_none")] client_version: Option<i16>) -> Result<Vec<Result<(), ControllerError>>, ControllerError>;
            [now] ValidateTxnOffsetCommit validate_txn_offset_commit(group_id: String, member_id: String, instance_id: Option<String>, generation: i32) -> Result<(), GroupError>;
            // `end_txn`: transaction version 0 only, kept for agents of the previous release;
            // `end_txn2` takes the client's version and answers the producer id and epoch too.
            [blocking] EndTxn end_txn(transactional_id: String, producer_id: i64, epoch: i16, commit: bool) -> Result<Option<TxnEnd>, ControllerError>;
            [blocking] EndTxn2 end_txn2(transactional_id: String, producer_id: i64, epoch: i16, commit: bool, client_version: i16) -> Result<EndAnswer, ControllerError>;
            [blocking] TransactionsToFinish transactions_to_finish() -> Result<Vec<TxnEnd>, ControllerError>;
            [now] DescribeTransaction describe_transaction(transactional_id: String) -> Result<Option<TxnDescription>, ControllerError>;
            [now] PendingTxnOffsets pending_txn_offsets(group_id: String) -> Result<Vec<TopicPartition>, ControllerError>;
            [now] ListTransactions list_transactions(states: Vec<String>, producer_ids: Vec<i64>, min_duration_ms: i64) -> Result<Vec<TxnDescription>, ControllerError>;
            // ACLs (controller::acls): the set agents authorize from, and the ACL APIs.
            [now] AllAcls all_acls() -> Result<AclSet, ControllerError>;
            [now] DescribeAcls describe_acls(filter: AclFilter) -> Result<Vec<AclBinding>, ControllerError>;
            [blocking] CreateAcls create_acls(bindings: Vec<AclBinding>) -> Result<Vec<Result<(), ControllerError>>, ControllerError>;
            [blocking] DeleteAcls delete_acls(filters: Vec<AclFilter>) -> Result<Vec<Result<Vec<AclBinding>, ControllerError>>, ControllerError>;
            // Consumer groups (controller::groups).
            [wait] JoinGroup join_group(req: JoinRequest) -> JoinResponse;
            [wait] SyncGroup sync_group(req: SyncRequest) -> Result<SyncResponse, GroupError>;
            [now] Heartbeat heartbeat(group_id: String, member_id: String, instance_id: Option<String>, generation: i32) -> Result<(), GroupError>;
            [now] LeaveGroup leave_group(group_id: String, members: Vec<(String, Option<String>)>) -> Result<Vec<Result<(), GroupError>>, GroupError>;
            [blocking] CommitOffsets commit_offsets(req: OffsetCommitRequest) -> Result<Vec<Result<(), GroupError>>, GroupError>;
            [now] FetchOffsets fetch_offsets(group_id: String, partitions: Option<Vec<TopicPartition>>, member: Option<(String, i32)>) -> Result<Vec<(TopicPartition, Option<CommittedOffset>)>, GroupError>;
            [blocking] DeleteOffsets delete_offsets(group_id: String, partitions: Vec<TopicPartition>) -> Result<Vec<Result<(), GroupError>>, GroupError>;
            [now] ListGroups list_groups(states: Vec<String>, types: Vec<String>) -> Result<Vec<GroupListing>, GroupError>;
            [now] DescribeGroup describe_group(group_id: String) -> Result<GroupDescription, GroupError>;
            [blocking] DeleteGroup delete_group(group_id: String) -> Result<(), GroupError>;
            [now] ConsumerGroupHeartbeat consumer_group_heartbeat(req: consumer::HeartbeatRequest) -> Result<consumer::HeartbeatResponse, GroupError>;
            [now] ConsumerGroupDescribe consumer_group_describe(group_id: String) -> Result<consumer::GroupDescription, GroupError>;
            // Share groups (controller::groups::shares) and the GROUP config resource.
            [blocking] ShareGroupHeartbeat share_group_heartbeat(req: share::HeartbeatRequest) -> Result<share::HeartbeatResponse, GroupError>;
            [now] ShareGroupDescribe share_group_describe(group_id: String) -> Result<share::GroupDescription, GroupError>;
            [blocking] ShareRecords share_records(req: share::RecordsRequest) -> Result<share::RecordsAnswer, GroupError>;
            [now] ShareGroupOffsets share_group_offsets(group_id: String, topics: Option<Vec<(String, Vec<i32>)>>) -> Result<Vec<share::StartOffset>, GroupError>;
            [blocking] AlterShareGroupOffsets alter_share_group_offsets(group_id: String, offsets: Vec<(String, i32, i64)>) -> Result<Vec<Result<(), GroupError>>, GroupError>;
            [blocking] DeleteShareGroupOffsets delete_share_group_offsets(group_id: String, topics: Vec<String>) -> Result<Vec<Result<Uuid, GroupError>>, GroupError>;
            [now] GroupConfigs group_configs(group_id: String) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>), GroupError>;
            [blocking] AlterGroupConfigs alter_group_configs(group_id: String, changes: Vec<(String, Option<String>)>, validate_only: bool) -> Result<(), GroupError>;
            [now] StreamsGroupHeartbeat streams_group_heartbeat(req: streams::HeartbeatRequest) -> Result<streams::HeartbeatResponse, GroupError>;
            [now] StreamsGroupDescribe streams_group_describe(group_id: String) -> Result<streams::GroupDescription, GroupError>;
            // Users (controller::users): SCRAM credentials.
            [blocking] ScramCredential scram_credential(user: String, mechanism: ScramMechanism) -> Result<Option<ScramCredential>, ControllerError>;
            [blocking] AlterScramCredentials alter_scram_credentials(alterations: Vec<ScramAlteration>) -> Result<Vec<Result<(), ControllerError>>, ControllerError>;
            [blocking] DescribeScramCredentials describe_scram_credentials(users: Option<Vec<String>>) -> Result<Vec<ScramUser>, ControllerError>;
            // Client quotas (controller::quotas): the set agents enforce, and the quota APIs.
            [now] AllClientQuotas all_client_quotas() -> Result<QuotaSet, ControllerError>;
            [now] DescribeClientQuotas describe_client_quotas(filter: QuotaFilter) -> Result<Vec<QuotaEntry>, ControllerError>;
            [blocking] AlterClientQuotas alter_client_quotas(alterations: Vec<QuotaAlteration>, validate_only: bool) -> Result<Vec<Result<(), ControllerError>>, ControllerError>;
            // Client metrics subscriptions (controller::client_metrics): CLIENT_METRICS resources.
            [now] AllClientMetrics all_client_metrics() -> Result<Vec<ClientMetricsResource>, ControllerError>;
            [blocking] AlterClientMetrics alter_client_metrics(changes: Vec<ClientMetricsChange>, validate_only: bool) -> Result<Vec<Result<(), ControllerError>>, ControllerError>;
        }
    };
}
pub use for_each_call;

use prelude::*;

/// How the controller runs a call (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Now,
    Blocking,
    Wait,
}

macro_rules! kind {
    (now) => {
        Kind::Now
    };
    (blocking) => {
        Kind::Blocking
    };
    (wait) => {
        Kind::Wait
    };
}

macro_rules! define_calls {
    ($([$kind:ident] $variant:ident $method:ident ($($(#[$meta:meta])* $arg:ident: $ty:ty),*) -> $reply:ty;)*) => {
        /// One call and its arguments.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(tag = "call", rename_all = "snake_case")]
        pub enum Call {
            $($variant { $($(#[$meta])* $arg: $ty),* },)*
        }

        /// One call's reply.
        #[derive(Debug, Serialize, Deserialize)]
        #[serde(tag = "reply", content = "value", rename_all = "snake_case")]
        pub enum Reply {
            $($variant($reply),)*
        }

        impl Call {
            /// The call's name, as on the wire.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Call::$variant { .. } => stringify!($method),)*
                }
            }

            pub fn kind(&self) -> Kind {
                match self {
                    $(Call::$variant { .. } => kind!($kind),)*
                }
            }

            /// The reply that says this call failed with `e` before the controller answered it.
            pub fn failed(&self, e: ControllerError) -> Reply {
                match self {
                    $(Call::$variant { .. } => Reply::$variant(<$reply as Failed>::failed(e)),)*
                }
            }
        }

        impl Reply {
            /// The name of the call this replies to.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Reply::$variant(_) => stringify!($method),)*
                }
            }

            /// Whether the controller answered "unavailable, try again" (a store failure).
            pub fn retriable(&self) -> bool {
                match self {
                    $(Reply::$variant(r) => Failed::retriable(r),)*
                }
            }
        }
    };
}

for_each_call!(define_calls);

impl Call {
    /// Calls that may wait for other group members (up to the rebalance timeout): sent once,
    /// with a deadline of that wait plus [`WAIT_SLACK_MS`], never retried by the agent (the
    /// Kafka client retries after a retriable error, rejoining if needed). Heartbeats are sent
    /// once too (with no wait): a late one is worth nothing.
    pub fn wait_ms(&self) -> Option<i64> {
        match self {
            Call::JoinGroup { req } => Some(i64::from(req.rebalance_timeout_ms.max(req.session_timeout_ms).max(0))),
            // The group's rebalance timeout is not in the request: the largest one allowed.
            Call::SyncGroup { .. } => Some(SYNC_WAIT_MS_MAX),
            Call::Heartbeat { .. } | Call::ConsumerGroupHeartbeat { .. } | Call::StreamsGroupHeartbeat { .. } => Some(0),
            _ => None,
        }
    }
}

/// Added to a waiting call's deadline: the controller's own work and the network.
pub const WAIT_SLACK_MS: i64 = 5_000;
/// A SyncGroup waits at most for the leader's assignment: bounded by the group's rebalance
/// timeout, itself bounded by Kafka clients' `max.poll.interval.ms`; 30 minutes is the
/// coordinator's `max_session_timeout_ms` bound.
const SYNC_WAIT_MS_MAX: i64 = 1_800_000;

/// A reply type: how a call that got no answer fails, and which answers are worth retrying.
pub trait Failed {
    fn failed(e: ControllerError) -> Self;
    fn retriable(&self) -> bool {
        false
    }
}

impl<T> Failed for Result<T, ControllerError> {
    fn failed(e: ControllerError) -> Self {
        Err(e)
    }
    fn retriable(&self) -> bool {
        matches!(self, Err(ControllerError::Unavailable(_)))
    }
}

impl<T> Failed for Result<T, GroupError> {
    /// A group call that got no answer fails as the group error Kafka clients retry on
    /// (COORDINATOR_NOT_AVAILABLE: they find the coordinator again and rejoin if needed).
    fn failed(e: ControllerError) -> Self {
        Err(match e {
            ControllerError::Unavailable(m) => GroupError::Unavailable(m),
            other => GroupError::InvalidRequest(other.to_string()),
        })
    }
}

impl Failed for JoinResponse {
    fn failed(e: ControllerError) -> Self {
        let e = match <Result<(), GroupError>>::failed(e) {
            Err(e) => e,
            Ok(()) => GroupError::Unavailable("no answer".into()),
        };
        JoinResponse::error(String::new(), e)
    }
}

/// The version of the table's wire form this build speaks. Version 1 was the JSON
/// `Coordinate` body of group and transaction calls only; 2 is every call.
pub const WIRE_VERSION: u32 = 2;
/// The oldest version this build still answers (an agent one release behind).
pub const WIRE_VERSION_MIN: u32 = 2;
/// Largest call or reply body either side accepts (bytes of JSON).
pub const BODY_BYTES_MAX: usize = 64 << 20;

/// A call or reply's body, checked against [`BODY_BYTES_MAX`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ControllerError> {
    let body = serde_json::to_vec(value).map_err(|e| ControllerError::InvalidRequest(format!("controller call body: {e}")))?;
    if body.len() > BODY_BYTES_MAX {
        return Err(ControllerError::InvalidRequest(format!("controller call body of {} bytes is over {BODY_BYTES_MAX}", body.len())));
    }
    Ok(body)
}

/// A body back into its type; too large or malformed bodies (an unknown call among them) are
/// invalid requests.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControllerError> {
    if body.len() > BODY_BYTES_MAX {
        return Err(ControllerError::InvalidRequest(format!("controller call body of {} bytes is over {BODY_BYTES_MAX}", body.len())));
    }
    serde_json::from_slice(body).map_err(|e| ControllerError::InvalidRequest(format!("controller call body: {e}")))
}

/// Checks the version a peer speaks.
pub fn check_version(version: u32) -> Result<(), ControllerError> {
    if (WIRE_VERSION_MIN..=WIRE_VERSION).contains(&version) {
        return Ok(());
    }
    Err(ControllerError::InvalidRequest(format!(
        "controller call version {version} is not between {WIRE_VERSION_MIN} and {WIRE_VERSION} (upgrade the agent or the controller)"
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use bytes::Bytes;

    use super::*;
    use crate::api::groups::{ClientInfo, JoinedMember};

    #[test]
    fn calls_and_replies_round_trip_with_bytes_ids_and_errors() {
        let join = Call::JoinGroup {
            req: JoinRequest {
                group_id: "g".into(),
                member_id: String::new(),
                group_instance_id: Some("i".into()),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 60_000,
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::from_static(&[0, 1, 0xfe, 0xff]))],
                require_known_member_id: true,
                client: ClientInfo { client_id: "c".into(), client_host: "/127.0.0.1".into() },
            },
        };
        assert_eq!(join.wait_ms(), Some(60_000));
        let back: Call = decode(&encode(&join).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{join:?}"));

        let reply = JoinResponse {
            error: Some(GroupError::Unavailable("x".into())),
            member_id: "m".into(),
            generation_id: 3,
            protocol_type: None,
            protocol_name: Some("range".into()),
            leader: "m".into(),
            skip_assignment: false,
            members: vec![JoinedMember { member_id: "m".into(), group_instance_id: None, metadata: Bytes::from_static(b"\x00meta") }],
        };
        assert_eq!(decode::<JoinResponse>(&encode(&reply).unwrap()).unwrap(), reply);

        let t = Uuid::new_v4();
        let end = TxnEnd { transactional_id: "tx".into(), producer_id: 7, epoch: 2, commit: false, partitions: vec![(t, 3)] };
        let r: Result<TxnInit, ControllerError> = Ok(TxnInit::Finish(end));
        assert_eq!(decode::<Result<TxnInit, ControllerError>>(&encode(&r).unwrap()).unwrap(), r);
        let errs: Result<Vec<Result<(), ControllerError>>, ControllerError> =
            Ok(vec![Ok(()), Err(ControllerError::ProducerFenced("f".into())), Err(ControllerError::OperationNotAttempted)]);
        assert_eq!(decode::<Result<Vec<Result<(), ControllerError>>, ControllerError>>(&encode(&errs).unwrap()).unwrap(), errs);

        let hb = consumer::HeartbeatResponse {
            member_id: "m".into(),
            member_epoch: 4,
            heartbeat_interval_ms: 5000,
            assignment: Some(BTreeMap::from([(t, BTreeSet::from([0, 2]))])),
        };
        assert_eq!(decode::<consumer::HeartbeatResponse>(&encode(&hb).unwrap()).unwrap(), hb);
    }

    #[test]
    fn bad_bodies_are_invalid_requests_not_panics() {
        for body in [&b"{"[..], b"{\"call\":\"no_such_call\"}", b"{\"call\":\"join_group\",\"protocols\":[[\"r\",\"zz\"]]}", b""] {
            assert!(matches!(decode::<Call>(body), Err(ControllerError::InvalidRequest(_))), "{body:?}");
        }
        let big = vec![b' '; BODY_BYTES_MAX + 1];
        assert!(matches!(decode::<Call>(&big), Err(ControllerError::InvalidRequest(_))));
    }

    #[test]
    fn every_call_and_reply_round_trips() {
        let id = Uuid::from_u128(7);
        let calls = vec![
            Call::CreateTopic {
                req: CreateTopic {
                    name: "t".into(),
                    partitions: 3,
                    replication_factor: -1,
                    configs: BTreeMap::new(),
                    validate_only: false,
                },
            },
            Call::DeleteTopic { topic: TopicKey::Id(id) },
            Call::FindExtents { topic_id: id, partition: 1, from_offset: 5, max_bytes: 1 << 20 },
            Call::InitProducerId {},
            Call::Heartbeat { group_id: "g".into(), member_id: "m".into(), instance_id: None, generation: 3 },
            Call::StreamsGroupHeartbeat {
                req: streams::HeartbeatRequest {
                    group_id: "app".into(),
                    member_id: "m".into(),
                    topology: Some(streams::Topology {
                        epoch: 1,
                        subtopologies: vec![streams::Subtopology {
                            id: "0".into(),
                            source_topics: vec!["in".into()],
                            changelog_topics: vec![streams::TopicInfo {
                                name: "app-chg".into(),
                                configs: vec![("cleanup.policy".into(), "compact".into())],
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                    }),
                    active: Some([("0".to_string(), [0, 2].into())].into()),
                    user_endpoint: Some(("h".into(), 8080)),
                    ..Default::default()
                },
            },
        ];
        for call in calls {
            let back: Call = decode(&encode(&call).unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{call:?}"));
        }
        let streams_reply = Reply::StreamsGroupHeartbeat(Ok(streams::HeartbeatResponse {
            member_id: "m".into(),
            member_epoch: 3,
            heartbeat_interval_ms: 5_000,
            status: vec![streams::Status { code: streams::STATUS_MISSING_INTERNAL_TOPICS, detail: "x".into() }],
            active: Some([("1".to_string(), [3].into())].into()),
            standby: None,
            warmup: Some(Default::default()),
            create_topics: vec![streams::TopicToCreate { name: "app-chg".into(), partitions: 4, configs: vec![] }],
        }));
        let back: Reply = decode(&encode(&streams_reply).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{streams_reply:?}"));
        let reply = Reply::FindExtents(Err(ControllerError::ObjectCollected("k".into())));
        let back: Reply = decode(&encode(&reply).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{reply:?}"));
        assert!(Reply::WalMark(Err(ControllerError::Unavailable("x".into()))).retriable());
        assert!(!Reply::WalMark(Ok(3)).retriable());
    }

    /// Version skew: an older peer's call (a field it does not know is missing on our side,
    /// here an extra one it sends) still decodes; a call this build does not know is a clean
    /// error naming it, never a panic.
    #[test]
    fn peers_one_release_apart_still_talk() {
        let newer = br#"{"call":"wal_mark","log_id":"wal-1","added_in_a_later_release":true}"#;
        match decode::<Call>(newer).unwrap() {
            Call::WalMark { log_id } => assert_eq!(log_id, "wal-1"),
            other => panic!("{other:?}"),
        }
        // An argument added later (a previous agent's AddPartitionsToTxn has no client_version).
        let older =
            br#"{"call":"add_partitions_to_txn","transactional_id":"tx","producer_id":3,"epoch":0,"partitions":[],"verify_only":false}"#;
        assert!(matches!(decode::<Call>(older).unwrap(), Call::AddPartitionsToTxn { client_version: None, .. }));
        let unknown = br#"{"call":"describe_quotas","entity":"user"}"#;
        let e = decode::<Call>(unknown).unwrap_err();
        assert!(matches!(&e, ControllerError::InvalidRequest(m) if m.contains("describe_quotas")), "{e}");
        assert!(check_version(WIRE_VERSION).is_ok());
        assert!(check_version(WIRE_VERSION + 1).is_err());
        assert!(check_version(1).is_err());
    }

    /// The wire form of one call of each shape as this release writes it: a later release
    /// must still decode these (the golden file changes only with [`WIRE_VERSION_MIN`]).
    #[test]
    fn golden_calls_of_this_wire_version_decode() {
        let golden = include_str!("../../tests/in_process/wire/calls-v2.jsonl");
        let mut n = 0;
        for line in golden.lines().filter(|l| !l.trim().is_empty()) {
            let call: Call = decode(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&encode(&call).unwrap()).unwrap(),
                serde_json::from_str::<serde_json::Value>(line).unwrap(),
                "{line}"
            );
            n += 1;
        }
        assert!(n >= 10, "{n} golden calls");
        let _ = Arc::new(());
    }
}
