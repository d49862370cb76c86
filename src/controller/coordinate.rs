//! Consumer groups and transactions through a remote controller: the body of the one generic
//! `Coordinate` RPC.
//!
//! Every group and transaction method of [`ControllerClient`] is one [`Call`] variant, sent as
//! JSON (serde) inside a prost envelope (`rpc::CoordinateRequest`: a version and the body). The
//! controller service answers by calling the same method on its own embedded controller
//! ([`serve`], through [`InProcess`]), so a remote agent gets exactly the embedded semantics,
//! errors included: [`ControllerError`] and [`GroupError`] cross the wire as themselves (by
//! variant name) and the agent maps them to Kafka codes in the one usual place.
//!
//! - **Versioned.** [`VERSION`] is checked by the controller; a newer call variant an older
//!   controller does not know fails to decode: both are INVALID_REQUEST, never a panic.
//! - **Bounded.** Bodies above [`BODY_BYTES_MAX`] are refused on both sides before decoding.
//! - **Compact enough.** Byte payloads (group metadata, assignments) travel as hex strings and
//!   topic ids as UUID strings ([`serde_with`]).
//!
//! Must not touch: group or transaction logic (in `groups`, `txn`), the prost messages (in
//! [`super::rpc`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ControllerError;
use super::client::{ControllerClient, InProcess};
use super::groups::{CommitOffset, JoinRequest, OffsetCommitRequest, SyncRequest, TopicPartition, consumer};

/// The version of [`Call`]'s encoding this build speaks.
pub const VERSION: u32 = 1;
/// Largest call or reply body either side accepts (bytes of JSON).
pub const BODY_BYTES_MAX: usize = 16 << 20;

/// One coordinator call: a [`ControllerClient`] method and its arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    // Consumer groups.
    JoinGroup(JoinRequest),
    SyncGroup(SyncRequest),
    Heartbeat { group_id: String, member_id: String, instance_id: Option<String>, generation: i32 },
    LeaveGroup { group_id: String, members: Vec<(String, Option<String>)> },
    CommitOffsets(OffsetCommitRequest),
    FetchOffsets { group_id: String, partitions: Option<Vec<TopicPartition>>, member: Option<(String, i32)> },
    DeleteOffsets { group_id: String, partitions: Vec<TopicPartition> },
    ListGroups { states: Vec<String>, types: Vec<String> },
    DescribeGroup { group_id: String },
    DeleteGroup { group_id: String },
    ConsumerGroupHeartbeat(consumer::HeartbeatRequest),
    ConsumerGroupDescribe { group_id: String },
    ValidateTxnOffsetCommit { group_id: String, member_id: String, instance_id: Option<String>, generation: i32 },
    // Transactions.
    AbortedTxns {
        #[serde(with = "serde_with::uuid_str")]
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        to_offset: i64,
    },
    InitTransactionalProducer { transactional_id: String, timeout_ms: i32, expected: (i64, i16) },
    AddPartitionsToTxn { transactional_id: String, producer_id: i64, epoch: i16, partitions: Vec<(String, i32)>, verify_only: bool },
    AddOffsetsToTxn { transactional_id: String, producer_id: i64, epoch: i16, group_id: String },
    TxnOffsetCommit { transactional_id: String, producer_id: i64, epoch: i16, group_id: String, offsets: Vec<CommitOffset> },
    EndTxn { transactional_id: String, producer_id: i64, epoch: i16, commit: bool },
    TransactionsToFinish,
    DescribeTransaction { transactional_id: String },
    PendingTxnOffsets { group_id: String },
    ListTransactions { states: Vec<String>, producer_ids: Vec<i64>, min_duration_ms: i64 },
}

impl Call {
    /// Calls that may wait for other group members (up to the rebalance timeout): sent once,
    /// with a deadline of that wait plus [`WAIT_SLACK_MS`], never retried by the agent (the
    /// Kafka client retries after a retriable error, rejoining if needed).
    pub fn wait_ms(&self) -> Option<i64> {
        match self {
            Call::JoinGroup(r) => Some(i64::from(r.rebalance_timeout_ms.max(r.session_timeout_ms).max(0))),
            // The group's rebalance timeout is not in the request: the largest one allowed.
            Call::SyncGroup(_) => Some(SYNC_WAIT_MS_MAX),
            Call::Heartbeat { .. } | Call::ConsumerGroupHeartbeat(_) => Some(0),
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

/// A call's body, checked against [`BODY_BYTES_MAX`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ControllerError> {
    let body = serde_json::to_vec(value).map_err(|e| ControllerError::InvalidRequest(format!("coordinator body: {e}")))?;
    if body.len() > BODY_BYTES_MAX {
        return Err(ControllerError::InvalidRequest(format!("coordinator body of {} bytes is over {BODY_BYTES_MAX}", body.len())));
    }
    Ok(body)
}

/// A body back into its type; too large or malformed bodies are invalid requests.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControllerError> {
    if body.len() > BODY_BYTES_MAX {
        return Err(ControllerError::InvalidRequest(format!("coordinator body of {} bytes is over {BODY_BYTES_MAX}", body.len())));
    }
    serde_json::from_slice(body).map_err(|e| ControllerError::InvalidRequest(format!("coordinator body: {e}")))
}

/// The controller's side: runs `call` on the embedded controller, returns the reply body.
/// `finish` filters `transactions_to_finish` (the service hands each transaction to one agent
/// at a time).
pub async fn serve(
    c: &InProcess,
    call: Call,
    finish: impl FnOnce(Vec<super::txn::TxnEnd>) -> Vec<super::txn::TxnEnd>,
) -> Result<Vec<u8>, ControllerError> {
    match call {
        Call::JoinGroup(r) => encode(&c.join_group(r).await),
        Call::SyncGroup(r) => encode(&c.sync_group(r).await),
        Call::Heartbeat { group_id, member_id, instance_id, generation } => {
            encode(&c.heartbeat(group_id, member_id, instance_id, generation).await)
        }
        Call::LeaveGroup { group_id, members } => encode(&c.leave_group(group_id, members).await),
        Call::CommitOffsets(r) => encode(&c.commit_offsets(r).await),
        Call::FetchOffsets { group_id, partitions, member } => encode(&c.fetch_offsets(group_id, partitions, member).await),
        Call::DeleteOffsets { group_id, partitions } => encode(&c.delete_offsets(group_id, partitions).await),
        Call::ListGroups { states, types } => encode(&c.list_groups(states, types).await),
        Call::DescribeGroup { group_id } => encode(&c.describe_group(group_id).await),
        Call::DeleteGroup { group_id } => encode(&c.delete_group(group_id).await),
        Call::ConsumerGroupHeartbeat(r) => encode(&c.consumer_group_heartbeat(r).await),
        Call::ConsumerGroupDescribe { group_id } => encode(&c.consumer_group_describe(group_id).await),
        Call::ValidateTxnOffsetCommit { group_id, member_id, instance_id, generation } => {
            encode(&c.validate_txn_offset_commit(group_id, member_id, instance_id, generation).await)
        }
        Call::AbortedTxns { topic_id, partition, from_offset, to_offset } => {
            encode(&c.aborted_txns(topic_id, partition, from_offset, to_offset).await)
        }
        Call::InitTransactionalProducer { transactional_id, timeout_ms, expected } => {
            encode(&c.init_transactional_producer(transactional_id, timeout_ms, expected).await)
        }
        Call::AddPartitionsToTxn { transactional_id, producer_id, epoch, partitions, verify_only } => {
            encode(&c.add_partitions_to_txn(transactional_id, producer_id, epoch, partitions, verify_only).await)
        }
        Call::AddOffsetsToTxn { transactional_id, producer_id, epoch, group_id } => {
            encode(&c.add_offsets_to_txn(transactional_id, producer_id, epoch, group_id).await)
        }
        Call::TxnOffsetCommit { transactional_id, producer_id, epoch, group_id, offsets } => {
            encode(&c.txn_offset_commit(transactional_id, producer_id, epoch, group_id, offsets).await)
        }
        Call::EndTxn { transactional_id, producer_id, epoch, commit } => {
            encode(&c.end_txn(transactional_id, producer_id, epoch, commit).await)
        }
        Call::TransactionsToFinish => encode(&c.transactions_to_finish().await.map(finish)),
        Call::DescribeTransaction { transactional_id } => encode(&c.describe_transaction(transactional_id).await),
        Call::PendingTxnOffsets { group_id } => encode(&c.pending_txn_offsets(group_id).await),
        Call::ListTransactions { states, producer_ids, min_duration_ms } => {
            encode(&c.list_transactions(states, producer_ids, min_duration_ms).await)
        }
    }
}

/// Serde helpers for the coordinator types' fields that have no serde form of their own
/// (`bytes::Bytes`, `uuid::Uuid`; the crates' serde features are off).
pub mod serde_with {
    use bytes::Bytes;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use uuid::Uuid;

    use crate::controller::groups::assignor::Assignment;

    /// Bytes as a lowercase hex string.
    struct Hex(Bytes);

    impl Serialize for Hex {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            let mut out = String::with_capacity(self.0.len() * 2);
            for b in self.0.iter() {
                out.push(DIGITS[usize::from(b >> 4)] as char);
                out.push(DIGITS[usize::from(b & 15)] as char);
            }
            s.serialize_str(&out)
        }
    }

    impl<'de> Deserialize<'de> for Hex {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            if s.len() % 2 != 0 {
                return Err(D::Error::custom("odd hex length"));
            }
            let digit = |c: u8| (c as char).to_digit(16).map(|v| v as u8).ok_or_else(|| D::Error::custom("bad hex digit"));
            s.as_bytes().chunks(2).map(|p| -> Result<u8, D::Error> { Ok((digit(p[0])? << 4) | digit(p[1])?) }).collect::<Result<Vec<u8>, _>>().map(|v| Hex(v.into()))
        }
    }

    /// A UUID as its hyphenated string.
    struct Id(Uuid);

    impl Serialize for Id {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Id {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            String::deserialize(d)?.parse().map(Id).map_err(D::Error::custom)
        }
    }

    pub mod hex_bytes {
        use super::*;
        pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
            Hex(b.clone()).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
            Ok(Hex::deserialize(d)?.0)
        }
    }

    pub mod uuid_str {
        use super::*;
        pub fn serialize<S: Serializer>(id: &Uuid, s: S) -> Result<S::Ok, S::Error> {
            Id(*id).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
            Ok(Id::deserialize(d)?.0)
        }
    }

    /// `Vec<(String, Bytes)>`: JoinGroup protocols, SyncGroup assignments.
    pub mod named_bytes {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[(String, Bytes)], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|(n, b)| (n, Hex(b.clone()))))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Bytes)>, D::Error> {
            Ok(Vec::<(String, Hex)>::deserialize(d)?.into_iter().map(|(n, h)| (n, h.0)).collect())
        }
    }

    /// `Option<Assignment>` (KIP-848 owned and assigned partitions).
    pub mod assignment {
        use super::*;
        use std::collections::BTreeSet;
        pub fn serialize<S: Serializer>(a: &Option<Assignment>, s: S) -> Result<S::Ok, S::Error> {
            a.as_ref().map(|a| a.iter().map(|(t, ps)| (Id(*t), ps)).collect::<Vec<_>>()).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Assignment>, D::Error> {
            Ok(Option::<Vec<(Id, BTreeSet<i32>)>>::deserialize(d)?.map(|v| v.into_iter().map(|(t, ps)| (t.0, ps)).collect()))
        }
    }

    /// `Vec<(Uuid, i32)>`: a transaction's partitions.
    pub mod uuid_parts {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[(Uuid, i32)], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|(t, p)| (Id(*t), p)))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Uuid, i32)>, D::Error> {
            Ok(Vec::<(Id, i32)>::deserialize(d)?.into_iter().map(|(t, p)| (t.0, p)).collect())
        }
    }

    /// `Vec<(Uuid, String, Vec<i32>)>`: KIP-848 described assignments.
    pub mod named_uuid_parts {
        use super::*;
        /// (topic id, topic name, partitions).
        type Parts = Vec<(Uuid, String, Vec<i32>)>;
        pub fn serialize<S: Serializer>(v: &Parts, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|(t, n, ps)| (Id(*t), n, ps)))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Parts, D::Error> {
            Ok(Vec::<(Id, String, Vec<i32>)>::deserialize(d)?.into_iter().map(|(t, n, ps)| (t.0, n, ps)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use bytes::Bytes;

    use super::*;
    use crate::controller::groups::{ClientInfo, GroupError, JoinResponse, JoinedMember};
    use crate::controller::txn::{TxnEnd, TxnInit};

    #[test]
    fn calls_and_replies_round_trip_with_bytes_ids_and_errors() {
        let join = Call::JoinGroup(JoinRequest {
            group_id: "g".into(),
            member_id: String::new(),
            group_instance_id: Some("i".into()),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(&[0, 1, 0xfe, 0xff]))],
            require_known_member_id: true,
            client: ClientInfo { client_id: "c".into(), client_host: "/127.0.0.1".into() },
        });
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

    /// A real `sidestream controller` service (SQLite in a temp dir) and a [`Remote`] agent
    /// client: groups and transactions through gRPC give the embedded answers.
    mod through_the_service {
        use std::sync::Arc;
        use std::time::Duration;

        use bytes::Bytes;
        use tokio_util::sync::CancellationToken;

        use crate::clock::{SeededEntropy, SystemClock};
        use crate::config::{GroupsConfig, StoreUrl, TopicsConfig};
        use crate::controller::client::ControllerClient;
        use crate::controller::groups::{ClientInfo, CommitOffset, GroupError, JoinRequest, OffsetCommitRequest, SyncRequest};
        use crate::controller::remote::{Remote, RemoteSettings};
        use crate::controller::service::{self, ServiceSettings};
        use crate::controller::txn::{TxnInit, TxnStatus};
        use crate::controller::{CommitRequest, ControllerError, CreateTopic};
        use crate::object::format::{ExtentInfo, ProducerBatch};

        async fn start() -> (tempfile::TempDir, service::RunningService, Remote, CancellationToken) {
            let dir = tempfile::tempdir().unwrap();
            let settings = ServiceSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                advertised: String::new(),
                store: StoreUrl::Sqlite(dir.path().join("controller.db")),
                store_settings: crate::controller::store::StoreSettings::default(),
                token: None,
                failover_ms: 5000,
                agent_lease_ms: 10_000,
                topics: TopicsConfig::default(),
                groups: GroupsConfig { initial_rebalance_delay_ms: 0, ..GroupsConfig::default() },
                producer_id_expiration_ms: 86_400_000,
                transactional_id_expiration_ms: 604_800_000,
            };
            let svc = service::start(settings, Arc::new(SystemClock), Arc::new(SeededEntropy::new(1))).await.unwrap();
            let stop = CancellationToken::new();
            let remote = Remote::connect(
                RemoteSettings {
                    addresses: vec![svc.local_addr.to_string()],
                    token: None,
                    agent: "agent-1".into(),
                    call_deadline: Duration::from_secs(5),
                    connect_timeout: Duration::from_secs(2),
                    member: crate::controller::rpc::Member { node_id: 1, host: "127.0.0.1".into(), port: 9092, zone: None, cluster_mode: false },
                    instance: "test-instance".into(),
                    index_cache_bytes_max: 1 << 20,
                },
                Duration::from_secs(10),
                stop.clone(),
            )
            .await
            .unwrap();
            (dir, svc, remote, stop)
        }

        async fn until<F: Fn() -> bool>(what: &str, f: F) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !f() {
                assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_group_and_a_transaction_through_grpc() {
            let (_dir, svc, remote, stop) = start().await;
            let topic = remote
                .create_topic(CreateTopic { name: "t".into(), partitions: 2, replication_factor: -1, configs: Default::default(), validate_only: false })
                .await
                .unwrap();

            // A one-member classic group: join, sync, heartbeat, commit, fetch, list, leave.
            let join = JoinRequest {
                group_id: "g".into(),
                member_id: String::new(),
                group_instance_id: None,
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 10_000,
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::from_static(b"\x00meta"))],
                require_known_member_id: false,
                client: ClientInfo { client_id: "c".into(), client_host: "/127.0.0.1".into() },
            };
            let joined = remote.join_group(join).await;
            assert_eq!(joined.error, None, "{joined:?}");
            assert_eq!(joined.leader, joined.member_id);
            assert_eq!(joined.members[0].metadata, Bytes::from_static(b"\x00meta"));
            let (member, generation) = (joined.member_id.clone(), joined.generation_id);
            let synced = remote
                .sync_group(SyncRequest {
                    group_id: "g".into(),
                    generation_id: generation,
                    member_id: member.clone(),
                    group_instance_id: None,
                    protocol_type: Some("consumer".into()),
                    protocol_name: Some("range".into()),
                    assignments: vec![(member.clone(), Bytes::from_static(b"\xffassigned"))],
                })
                .await
                .unwrap();
            assert_eq!(synced.assignment, Bytes::from_static(b"\xffassigned"));
            remote.heartbeat("g".into(), member.clone(), None, generation).await.unwrap();
            assert_eq!(remote.heartbeat("g".into(), member.clone(), None, generation + 1).await, Err(GroupError::IllegalGeneration));
            let offsets = vec![CommitOffset { topic: "t".into(), partition: 1, offset: 42, leader_epoch: -1, metadata: "m".into() }];
            let committed = remote
                .commit_offsets(OffsetCommitRequest {
                    group_id: "g".into(),
                    generation_id_or_member_epoch: generation,
                    member_id: member.clone(),
                    group_instance_id: None,
                    api_version: 8,
                    offsets,
                })
                .await
                .unwrap();
            assert_eq!(committed, vec![Ok(())]);
            let fetched = remote.fetch_offsets("g".into(), None, None).await.unwrap();
            assert_eq!(fetched.len(), 1);
            assert_eq!((fetched[0].0.clone(), fetched[0].1.as_ref().map(|c| c.offset)), (("t".into(), 1), Some(42)));
            let listed = remote.list_groups(Vec::new(), Vec::new()).await.unwrap();
            assert_eq!(listed.iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(), vec!["g"]);
            assert_eq!(remote.describe_group("g".into()).await.unwrap().members.len(), 1);
            assert_eq!(remote.leave_group("g".into(), vec![(member.clone(), None)]).await.unwrap(), vec![Ok(())]);
            assert_eq!(remote.heartbeat("g".into(), member, None, generation).await, Err(GroupError::UnknownMemberId));

            // A transaction: its open data holds the LSO back until the markers are committed.
            let TxnInit::Ready { producer_id, epoch } = remote.init_transactional_producer("tx".into(), 60_000, (-1, -1)).await.unwrap() else {
                panic!("not ready")
            };
            let added = remote.add_partitions_to_txn("tx".into(), producer_id, epoch, vec![("t".into(), 0)], false).await.unwrap();
            assert_eq!(added, vec![Ok(())]);
            let extent = |n: i64, producer: Option<ProducerBatch>| ExtentInfo {
                topic_id: topic.id,
                partition: 0,
                position: 0,
                length: 10,
                batch_count: 1,
                offset_count: n,
                max_timestamp: 0,
                producer,
            };
            let commit = |key: &str, extents, txn_end| CommitRequest {
                object_key: key.into(),
                object_size_bytes: 100,
                agent: "agent-1".into(),
                extents,
                wal: None,
                txn_end,
            };
            remote.commit_object(commit("plain", vec![extent(2, None)], None)).await.unwrap();
            assert_eq!(remote.last_stable_offset(topic.id, 0), Ok(2), "own commit, nothing open: LSO follows");
            let batch = ProducerBatch { producer_id, epoch, first_sequence: 0, last_sequence: 2, transactional: true };
            assert_eq!(remote.commit_object(commit("data", vec![extent(3, Some(batch))], None)).await.unwrap(), vec![Ok(2)]);
            remote.commit_object(commit("after", vec![extent(1, None)], None)).await.unwrap();
            assert_eq!(remote.offsets(topic.id, 0).unwrap().next_offset, 6);
            let described = remote.describe_transaction("tx".into()).await.unwrap().unwrap();
            assert_eq!((described.status, described.partitions), (TxnStatus::Ongoing, vec![("t".into(), 0)]));
            assert_eq!(remote.last_stable_offset(topic.id, 0), Ok(2), "the open transaction holds the LSO");
            // A zombie epoch is fenced with the right error across the wire.
            assert!(matches!(remote.end_txn("tx".into(), producer_id, epoch - 1, true).await, Err(ControllerError::ProducerFenced(_))));
            let end = remote.end_txn("tx".into(), producer_id, epoch, true).await.unwrap().unwrap();
            let markers = vec![extent(1, None)];
            assert_eq!(remote.commit_object(commit("markers", markers.clone(), Some(end.clone()))).await.unwrap(), vec![Ok(6)]);
            // The same markers again: refused as stale, harmless.
            let again = remote.commit_object(commit("markers-again", markers, Some(end))).await;
            assert!(matches!(again, Err(ControllerError::InvalidTxnState(_))), "{again:?}");
            until("the LSO to pass the markers", || remote.last_stable_offset(topic.id, 0) == Ok(7)).await;
            assert_eq!(remote.describe_transaction("tx".into()).await.unwrap().unwrap().status, TxnStatus::CompleteCommit);
            assert_eq!(remote.aborted_txns(topic.id, 0, 0, 10).await.unwrap(), Vec::new());
            assert!(remote.transactions_to_finish().await.unwrap().is_empty());
            assert_eq!(remote.list_transactions(Vec::new(), Vec::new(), -1).await.unwrap().len(), 1);
            assert!(remote.pending_txn_offsets("g".into()).await.unwrap().is_empty());

            // Markers never written (the agent died after EndTxn): once MARKER_RETRY_MS passed,
            // one poller gets them and the next one does not (one writer at a time).
            let TxnInit::Ready { producer_id, epoch } = remote.init_transactional_producer("tx2".into(), 60_000, (-1, -1)).await.unwrap() else {
                panic!("not ready")
            };
            remote.add_partitions_to_txn("tx2".into(), producer_id, epoch, vec![("t".into(), 1)], false).await.unwrap();
            let end = remote.end_txn("tx2".into(), producer_id, epoch, false).await.unwrap().unwrap();
            assert!(remote.transactions_to_finish().await.unwrap().is_empty(), "not due yet");
            tokio::time::sleep(Duration::from_millis(crate::controller::txn::MARKER_RETRY_MS as u64 + 100)).await;
            assert_eq!(remote.transactions_to_finish().await.unwrap(), vec![end]);
            assert!(remote.transactions_to_finish().await.unwrap().is_empty(), "handed out to one agent at a time");
            stop.cancel();
            svc.shutdown().await;
        }
    }
}
