//! Produce: every partition's batch is checked and queued first, then the handler waits for
//! all of them together, so one request costs one flush interval however many partitions it has.
//! acks=0 gets no response and does not wait.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use tokio::time::{Duration, Instant};

use super::str_bytes;
use crate::agent::Agent;
use crate::agent::upload::PendingAppend;
use crate::controller::TopicRef;
use crate::protocol::error::agent_code;

/// How long an acks=0 batch may wait for buffer space (its client is not waiting at all).
const ACKS_0_TIMEOUT: Duration = Duration::from_secs(30);

enum Slot {
    Pending(PendingAppend),
    Failed(i16, String),
}

pub async fn handle(agent: &Agent, version: i16, req: ProduceRequest) -> Option<ProduceResponse> {
    let acks = req.acks;
    let deadline = Instant::now()
        + if acks == 0 { ACKS_0_TIMEOUT } else { Duration::from_millis(req.timeout_ms.max(0) as u64) };
    let mut topics = Vec::with_capacity(req.topic_data.len());
    for t in &req.topic_data {
        let meta = if version >= 13 {
            agent.controller.topic(TopicRef::Id(t.topic_id))
        } else {
            agent.controller.topic(TopicRef::Name(&t.name.0))
        };
        let unknown = if version >= 13 { ResponseError::UnknownTopicId } else { ResponseError::UnknownTopicOrPartition };
        let mut slots = Vec::with_capacity(t.partition_data.len());
        for p in &t.partition_data {
            let slot = if !(-1..=1).contains(&acks) {
                Slot::Failed(ResponseError::InvalidRequiredAcks.code(), format!("acks={acks} is not 0, 1 or -1"))
            } else {
                match (&meta, &p.records) {
                    (None, _) => Slot::Failed(unknown.code(), "unknown topic".into()),
                    (Some(_), None) => Slot::Failed(ResponseError::InvalidRecord.code(), "null records".into()),
                    (Some(meta), Some(records)) => match agent.produce(meta, p.index, records, version, deadline).await {
                        Ok(pending) => Slot::Pending(pending),
                        Err(e) => Slot::Failed(agent_code(&e), e.to_string()),
                    },
                }
            };
            slots.push((p.index, slot));
        }
        topics.push((t.name.clone(), t.topic_id, meta, slots));
    }
    if acks == 0 {
        return None;
    }
    let mut responses = Vec::with_capacity(topics.len());
    for (name, topic_id, meta, slots) in topics {
        let mut partitions = Vec::with_capacity(slots.len());
        for (index, slot) in slots {
            let result = match slot {
                Slot::Pending(p) => p.wait(deadline).await.map_err(|e| (agent_code(&e), e.to_string())),
                Slot::Failed(code, msg) => Err((code, msg)),
            };
            let mut r = PartitionProduceResponse::default().with_index(index).with_log_append_time_ms(-1);
            r = match result {
                Ok(base) => {
                    let log_start = meta
                        .as_ref()
                        .and_then(|m| agent.controller.offsets(m.id, index).ok())
                        .map_or(0, |o| o.log_start_offset);
                    r.with_base_offset(base).with_log_start_offset(log_start)
                }
                Err((code, msg)) => {
                    let r = r.with_error_code(code).with_base_offset(-1).with_log_start_offset(-1);
                    if version >= 8 { r.with_error_message(Some(str_bytes(msg))) } else { r }
                }
            };
            partitions.push(r);
        }
        responses.push(TopicProduceResponse::default().with_name(name).with_topic_id(topic_id).with_partition_responses(partitions));
    }
    Some(ProduceResponse::default().with_responses(responses))
}
