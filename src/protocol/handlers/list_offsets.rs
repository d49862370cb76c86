//! ListOffsets: earliest (-2, and -4 earliest-local), latest (-1), max timestamp (-3), and
//! offsets by timestamp. Lookups by timestamp answer a record, as Kafka does: the first record
//! (at or after the log start offset) whose timestamp is at or after the target, found in the
//! first batch whose max timestamp is; for max timestamp, the first record with the partition's
//! largest timestamp. A LogAppendTime batch's records all have its max timestamp. Latest with
//! isolation_level 1 (read_committed) is the last stable offset. Each topic needs DESCRIBE
//! (TOPIC_AUTHORIZATION_FAILED on its partitions).

use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use kafka_protocol::error::ResponseError;

use super::acls::Access;
use crate::agent::fetch::LEADER_EPOCH;
use crate::agent::{Agent, AgentError};
use crate::api::acl::{AclOperation, ResourceType};
use crate::api::{ControllerError, TopicRef};
use crate::protocol::error::agent_code;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const EARLIEST_PENDING_UPLOAD: i64 = -5;
const LATEST_TIERED: i64 = -6;

pub async fn handle(agent: &Agent, access: &Access<'_>, version: i16, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let allowed = access.check(AclOperation::Describe, ResourceType::Topic, &t.name.0);
        let meta = if allowed { agent.controller.topic(TopicRef::Name(&t.name.0)) } else { None };
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let r = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            if !allowed {
                let code = ResponseError::TopicAuthorizationFailed.code();
                partitions.push(r.with_error_code(code).with_offset(-1).with_timestamp(-1).with_leader_epoch(-1));
                continue;
            }
            let found = match &meta {
                None => Err(AgentError::UnknownTopicOrPartition),
                Some(meta) => lookup(agent, meta.id, p.partition_index, meta.partitions, p.timestamp, req.isolation_level == 1).await,
            };
            partitions.push(match found {
                Ok(Some((offset, timestamp))) => {
                    let r = r.with_offset(offset).with_timestamp(timestamp);
                    // The field exists from v4 on.
                    if version >= 4 { r.with_leader_epoch(LEADER_EPOCH) } else { r }
                }
                Ok(None) => r.with_offset(-1).with_timestamp(-1).with_leader_epoch(-1),
                Err(e) => r.with_error_code(agent_code(&e)).with_offset(-1).with_timestamp(-1).with_leader_epoch(-1),
            });
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(t.name.clone()).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// `(offset, timestamp)` for the request's timestamp, or None when no record qualifies.
async fn lookup(
    agent: &Agent,
    topic_id: uuid::Uuid,
    partition: i32,
    partitions: i32,
    timestamp: i64,
    read_committed: bool,
) -> Result<Option<(i64, i64)>, AgentError> {
    if partition < 0 || partition >= partitions {
        return Err(AgentError::UnknownTopicOrPartition);
    }
    let o = agent.controller.offsets(topic_id, partition)?;
    match timestamp {
        LATEST if read_committed => Ok(Some((agent.controller.last_stable_offset(topic_id, partition)?, -1))),
        LATEST | LATEST_TIERED => Ok(Some((o.next_offset, -1))),
        EARLIEST | EARLIEST_LOCAL | EARLIEST_PENDING_UPLOAD => Ok(Some((o.log_start_offset, -1))),
        MAX_TIMESTAMP => match agent.controller.extent_with_max_timestamp(topic_id, partition).await? {
            None => Ok(None),
            Some(e) => agent.record_with_timestamp(&e, e.max_timestamp, o.log_start_offset).await,
        },
        ts if ts >= 0 => match agent.controller.extent_for_timestamp(topic_id, partition, ts).await? {
            None => Ok(None),
            Some(e) => agent.record_with_timestamp(&e, ts, o.log_start_offset).await,
        },
        _ => Err(AgentError::Controller(ControllerError::InvalidRequest(format!("unknown special timestamp {timestamp}")))),
    }
}
