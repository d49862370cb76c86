//! Replicas, leaders and log dirs, as the admin tools ask about them: DescribeLogDirs,
//! ElectLeaders, AlterPartitionReassignments, ListPartitionReassignments and
//! OffsetForLeaderEpoch.
//!
//! Here a partition's data lives in the object store, and any agent serves any partition:
//! each partition has one replica, its Metadata leader, whose epoch is always
//! [`LEADER_EPOCH`]. So the answers are Kafka's for a cluster with nothing to move:
//! - DescribeLogDirs: one log dir, the object store's URL, with each partition this agent
//!   leads and the bytes the controller's index holds for it (offset lag 0; total and usable
//!   bytes unknown, -1, as Kafka says of a volume it cannot measure).
//! - ElectLeaders: ELECTION_NOT_NEEDED for every partition named (the leader is the preferred
//!   replica, and there is always one); with no partitions named, the empty list Kafka gives
//!   when no election was needed.
//! - ListPartitionReassignments: none in progress.
//! - AlterPartitionReassignments: a target equal to the current replica set completes at once;
//!   any other target is INVALID_REPLICA_ASSIGNMENT, saying why; a cancellation
//!   NO_REASSIGNMENT_IN_PROGRESS.
//! - OffsetForLeaderEpoch: the current epoch ends at the high watermark; an older epoch ends
//!   where the log starts, a newer one is unknown (-1, -1); `current_leader_epoch` is
//!   checked as Kafka checks it (FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH).
//!
//! ACLs as in Kafka's `KafkaApis`: DESCRIBE on the cluster for DescribeLogDirs and
//! ListPartitionReassignments, ALTER on the cluster for ElectLeaders and
//! AlterPartitionReassignments (CLUSTER_AUTHORIZATION_FAILED), DESCRIBE on each topic for a
//! consumer's OffsetForLeaderEpoch, CLUSTER_ACTION for a replica's.

use std::collections::HashMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{ReassignablePartitionResponse, ReassignableTopicResponse};
use kafka_protocol::messages::describe_log_dirs_response::{DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, DescribeLogDirsRequest, DescribeLogDirsResponse,
    ElectLeadersRequest, ElectLeadersResponse, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::agent::cluster::Brokers;
use crate::agent::fetch::LEADER_EPOCH;
use crate::api::acl::{AclOperation, ResourceType};
use crate::api::{ListenerAddress, TopicRef};
use crate::protocol::error::controller_code;

/// Total and usable bytes of a volume Kafka cannot measure (`DescribeLogDirsResponse.UNKNOWN_VOLUME_BYTES`).
const UNKNOWN_VOLUME_BYTES: i64 = -1;
/// ElectLeaders' election types.
const ELECTION_PREFERRED: i8 = 0;
const ELECTION_UNCLEAN: i8 = 1;
/// Kafka's "no epoch" in OffsetForLeaderEpoch (`UNDEFINED_EPOCH`, `UNDEFINED_EPOCH_OFFSET`).
const UNDEFINED_EPOCH: i32 = -1;
const UNDEFINED_EPOCH_OFFSET: i64 = -1;

pub async fn describe_log_dirs(
    agent: &Agent,
    access: &Access<'_>,
    req: DescribeLogDirsRequest,
    client_id: &str,
    listener: &ListenerAddress,
) -> DescribeLogDirsResponse {
    if !access.check_cluster(AclOperation::Describe) {
        return DescribeLogDirsResponse::default().with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let sizes = match agent.controller.partition_sizes().await {
        Ok(sizes) => sizes,
        Err(e) => return DescribeLogDirsResponse::default().with_error_code(controller_code(&e)),
    };
    let sizes: HashMap<(uuid::Uuid, i32), u64> = sizes.into_iter().map(|(t, p, b)| ((t, p), b)).collect();
    let brokers = Brokers::for_client(agent, listener, client_id);
    let me = agent.settings.node_id;
    // Every topic, or the ones asked for (unknown ones and partitions left out, as in Kafka).
    let wanted: Vec<(std::sync::Arc<crate::api::TopicMeta>, Vec<i32>)> = match &req.topics {
        None => agent.controller.topics().into_iter().map(|t| (t.clone(), (0..t.partitions).collect())).collect(),
        Some(topics) => topics
            .iter()
            .filter_map(|t| {
                let meta = agent.controller.topic(TopicRef::Name(&t.topic.0))?;
                let partitions = t.partitions.iter().copied().filter(|p| (0..meta.partitions).contains(p)).collect();
                Some((meta, partitions))
            })
            .collect(),
    };
    let topics = wanted
        .into_iter()
        .map(|(meta, partitions)| {
            let partitions = partitions
                .into_iter()
                .filter(|p| brokers.leader(meta.id, *p) == me)
                .map(|p| {
                    let bytes = sizes.get(&(meta.id, p)).copied().unwrap_or(0);
                    DescribeLogDirsPartition::default()
                        .with_partition_index(p)
                        .with_partition_size(i64::try_from(bytes).unwrap_or(i64::MAX))
                        .with_offset_lag(0)
                        .with_is_future_key(false)
                })
                .collect::<Vec<_>>();
            DescribeLogDirsTopic::default().with_name(TopicName(str_bytes(meta.name.clone()))).with_partitions(partitions)
        })
        .filter(|t| !t.partitions.is_empty())
        .collect();
    let dir = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(agent.settings.log_dir.clone()))
        .with_topics(topics)
        .with_total_bytes(UNKNOWN_VOLUME_BYTES)
        .with_usable_bytes(UNKNOWN_VOLUME_BYTES);
    DescribeLogDirsResponse::default().with_results(vec![dir])
}

pub fn elect_leaders(agent: &Agent, access: &Access<'_>, version: i16, req: ElectLeadersRequest) -> ElectLeadersResponse {
    let refuse = |code: i16, message: Option<String>| {
        let results = req
            .topic_partitions
            .iter()
            .flatten()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        PartitionResult::default()
                            .with_partition_id(*p)
                            .with_error_code(code)
                            .with_error_message(message.clone().map(str_bytes))
                    })
                    .collect();
                ReplicaElectionResult::default().with_topic(t.topic.clone()).with_partition_result(partitions)
            })
            .collect();
        ElectLeadersResponse::default().with_error_code(code).with_replica_election_results(results)
    };
    if !access.check_cluster(AclOperation::Alter) {
        return refuse(ResponseError::ClusterAuthorizationFailed.code(), None);
    }
    let election = if version >= 1 { req.election_type } else { ELECTION_PREFERRED };
    if election != ELECTION_PREFERRED && election != ELECTION_UNCLEAN {
        return refuse(ResponseError::InvalidRequest.code(), Some(format!("unknown election type {election}")));
    }
    // No partitions named: every partition, and only the elections that happened are listed.
    let Some(topics) = &req.topic_partitions else { return ElectLeadersResponse::default() };
    let results = topics
        .iter()
        .map(|t| {
            let meta = agent.controller.topic(TopicRef::Name(&t.topic.0));
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let r = PartitionResult::default().with_partition_id(*p);
                    match &meta {
                        Some(m) if (0..m.partitions).contains(p) => r
                            .with_error_code(ResponseError::ElectionNotNeeded.code())
                            .with_error_message(Some(str_bytes("Leader election not needed for topic partition."))),
                        _ => r
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes(format!("No such topic partition {}-{p}", t.topic.0)))),
                    }
                })
                .collect();
            ReplicaElectionResult::default().with_topic(t.topic.clone()).with_partition_result(partitions)
        })
        .collect();
    ElectLeadersResponse::default().with_replica_election_results(results)
}

pub fn list_partition_reassignments(access: &Access<'_>, _req: ListPartitionReassignmentsRequest) -> ListPartitionReassignmentsResponse {
    if !access.check_cluster(AclOperation::Describe) {
        return ListPartitionReassignmentsResponse::default().with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    ListPartitionReassignmentsResponse::default()
}

pub fn alter_partition_reassignments(
    agent: &Agent,
    access: &Access<'_>,
    req: AlterPartitionReassignmentsRequest,
    client_id: &str,
    listener: &ListenerAddress,
) -> AlterPartitionReassignmentsResponse {
    let answer = AlterPartitionReassignmentsResponse::default().with_allow_replication_factor_change(req.allow_replication_factor_change);
    if !access.check_cluster(AclOperation::Alter) {
        return answer.with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let brokers = Brokers::for_client(agent, listener, client_id);
    let responses = req
        .topics
        .iter()
        .map(|t| {
            let meta = agent.controller.topic(TopicRef::Name(&t.name.0));
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let r = ReassignablePartitionResponse::default().with_partition_index(p.partition_index);
                    let (code, message) = match (&meta, &p.replicas) {
                        (Some(m), _) if !(0..m.partitions).contains(&p.partition_index) => {
                            (ResponseError::UnknownTopicOrPartition.code(), None)
                        }
                        (None, _) => (ResponseError::UnknownTopicOrPartition.code(), None),
                        (Some(_), None) => (
                            ResponseError::NoReassignmentInProgress.code(),
                            Some(format!("Unable to find an ongoing reassignment for partition {}-{}", t.name.0, p.partition_index)),
                        ),
                        (Some(m), Some(target)) => {
                            let current = brokers.leader(m.id, p.partition_index);
                            if target.len() == 1 && target[0].0 == current {
                                (0, None)
                            } else {
                                (
                                    ResponseError::InvalidReplicaAssignment.code(),
                                    Some(format!(
                                        "partition {}-{} has the one replica {current}: its data is in the object store and any \
                                         agent serves it, so there is nothing to move",
                                        t.name.0, p.partition_index
                                    )),
                                )
                            }
                        }
                    };
                    r.with_error_code(code).with_error_message(message.map(str_bytes))
                })
                .collect();
            ReassignableTopicResponse::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    answer.with_responses(responses)
}

pub fn offset_for_leader_epoch(agent: &Agent, access: &Access<'_>, req: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    // A consumer's request (replica id -1, or -2 for debugging) needs DESCRIBE on each topic; a
    // follower's CLUSTER_ACTION on the cluster.
    let from_replica = req.replica_id.0 >= 0;
    let replica_allowed = from_replica && access.check_cluster(AclOperation::ClusterAction);
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let allowed =
                if from_replica { replica_allowed } else { access.check(AclOperation::Describe, ResourceType::Topic, &t.topic.0) };
            let meta = if allowed { agent.controller.topic(TopicRef::Name(&t.topic.0)) } else { None };
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let r = EpochEndOffset::default().with_partition(p.partition);
                    let undefined = |r: EpochEndOffset, code: i16| {
                        r.with_error_code(code).with_leader_epoch(UNDEFINED_EPOCH).with_end_offset(UNDEFINED_EPOCH_OFFSET)
                    };
                    if !allowed {
                        let code =
                            if from_replica { ResponseError::ClusterAuthorizationFailed } else { ResponseError::TopicAuthorizationFailed };
                        return undefined(r, code.code());
                    }
                    let Some(m) = meta.as_ref().filter(|m| (0..m.partitions).contains(&p.partition)) else {
                        return undefined(r, ResponseError::UnknownTopicOrPartition.code());
                    };
                    if p.current_leader_epoch != UNDEFINED_EPOCH && p.current_leader_epoch < LEADER_EPOCH {
                        return undefined(r, ResponseError::FencedLeaderEpoch.code());
                    }
                    if p.current_leader_epoch > LEADER_EPOCH {
                        return undefined(r, ResponseError::UnknownLeaderEpoch.code());
                    }
                    match agent.controller.offsets(m.id, p.partition) {
                        Err(e) => undefined(r, controller_code(&e)),
                        Ok(o) => match epoch_end(p.leader_epoch, o.log_start_offset, o.next_offset) {
                            Some((epoch, end)) => r.with_leader_epoch(epoch).with_end_offset(end),
                            None => r.with_leader_epoch(UNDEFINED_EPOCH).with_end_offset(UNDEFINED_EPOCH_OFFSET),
                        },
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default().with_topic(t.topic.clone()).with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// Kafka's `LeaderEpochFileCache.endOffsetFor` over a log with the one epoch [`LEADER_EPOCH`]
/// from `log_start` on: (epoch, end offset), or None for an undefined or unknown epoch.
fn epoch_end(requested: i32, log_start: i64, high_watermark: i64) -> Option<(i32, i64)> {
    match requested {
        UNDEFINED_EPOCH => None,
        LEADER_EPOCH => Some((LEADER_EPOCH, high_watermark)),
        e if e > LEADER_EPOCH => None,
        // An epoch before the first one ends where the first one starts.
        e => Some((e, log_start)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_end_as_kafkas_cache_says() {
        assert_eq!(epoch_end(LEADER_EPOCH, 5, 42), Some((LEADER_EPOCH, 42)));
        assert_eq!(epoch_end(LEADER_EPOCH + 1, 5, 42), None);
        assert_eq!(epoch_end(UNDEFINED_EPOCH, 5, 42), None);
        assert_eq!(epoch_end(-7, 5, 42), Some((-7, 5)));
    }
}
