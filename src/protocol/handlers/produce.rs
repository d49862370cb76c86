//! Produce: every partition's batch is checked first, then the request's valid batches are
//! accepted together (one WAL entry for acks=0/1, one upload group for acks=all), so a request
//! costs one fsync or one flush interval however many partitions it has. acks=1 is answered
//! with base offset -1 (offsets are assigned later, at commit); acks=0 gets no response.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use tokio::time::{Duration, Instant};

use std::sync::{Arc, OnceLock};

use super::str_bytes;
use crate::metrics::{self, Histogram};
use crate::agent::Agent;
use crate::agent::produce::Appended;
use crate::controller::TopicRef;
use crate::protocol::connection::Turn;
use crate::failures::{self, Op};
use crate::protocol::error::agent_code;

/// How long an acks=0 request may wait for buffer space (its client is not waiting at all).
const ACKS_0_TIMEOUT: Duration = Duration::from_secs(30);

/// A partition's fate: accepted (index into the request's accepted batches) or refused.
enum Slot {
    Accepted(usize),
    Failed(i16, String),
}

pub async fn handle(agent: &Agent, version: i16, req: ProduceRequest, turn: Option<Turn>) -> Option<ProduceResponse> {
    let started = std::time::Instant::now();
    let response = handle_inner(agent, version, req, turn).await;
    if let Some((acks, _)) = &response {
        static LATENCY: OnceLock<[Arc<Histogram>; 2]> = OnceLock::new();
        let [acks_1, acks_all] = LATENCY.get_or_init(|| {
            let h = |acks| metrics::histogram("sidestream_produce_seconds", "Produce request latency, by acks.", &[("acks", acks)]);
            [h("1"), h("all")]
        });
        match acks {
            1 => acks_1.record(started.elapsed()),
            -1 => acks_all.record(started.elapsed()),
            _ => {}
        }
    }
    response.map(|(_, r)| r)
}

async fn handle_inner(
    agent: &Agent,
    version: i16,
    req: ProduceRequest,
    mut turn: Option<Turn>,
) -> Option<(i16, ProduceResponse)> {
    let acks = req.acks;
    let hand_off = match turn.as_mut().and_then(|t| t.hand_off.take()) {
        Some(guard) => guard,
        None => agent.hand_offs.enter(),
    };
    let deadline = Instant::now()
        + if acks == 0 { ACKS_0_TIMEOUT } else { Duration::from_millis(req.timeout_ms.max(0) as u64) };
    let mut items = Vec::new();
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
                    (Some(meta), Some(records)) => match agent.check_batch(meta, p.index, records, version) {
                        Ok(item) => {
                            items.push(item);
                            Slot::Accepted(items.len() - 1)
                        }
                        Err(e) => Slot::Failed(agent_code(&e), e.to_string()),
                    },
                }
            };
            slots.push((p.index, slot));
        }
        topics.push((t.name.clone(), t.topic_id, meta, slots));
    }
    let accepted = items.len();
    // Queue in request order: earlier produce requests of this connection queue first.
    if let Some(turn) = turn.as_mut() {
        turn.wait().await;
    }
    let appended = agent.append(items, acks, deadline).await;
    drop(turn);
    // acks=0/1: wait until the WAL entry is durable and handed to the uploader.
    let appended = match appended {
        Ok(Appended::Logged(logged)) => logged.wait().await.map(|()| Appended::Nothing),
        other => other,
    };
    drop(hand_off);
    if acks == 0 {
        if let Err(e) = appended {
            failures::record(Op::Produce, agent_code(&e), &format!("acks=0 produce dropped: {e}"));
        }
        return None;
    }
    // Each accepted batch's result: Some(base offset) when known, None for acks=1.
    let results: Vec<Result<Option<i64>, (i16, String)>> = match appended {
        Ok(Appended::Nothing) | Ok(Appended::Logged(_)) => Vec::new(),
        Ok(Appended::Committed(pending)) => {
            let mut out = Vec::with_capacity(pending.len());
            for p in pending {
                out.push(p.wait(deadline).await.map(Some).map_err(|e| (agent_code(&e), e.to_string())));
            }
            out
        }
        Err(e) => vec![Err((agent_code(&e), e.to_string())); accepted],
    };
    let mut responses = Vec::with_capacity(topics.len());
    for (name, topic_id, meta, slots) in topics {
        let mut partitions = Vec::with_capacity(slots.len());
        for (index, slot) in slots {
            let result = match slot {
                Slot::Accepted(i) => results.get(i).cloned().unwrap_or(Ok(None)),
                Slot::Failed(code, msg) => Err((code, msg)),
            };
            let r = PartitionProduceResponse::default().with_index(index).with_log_append_time_ms(-1);
            let log_start = || {
                meta.as_ref().and_then(|m| agent.controller.offsets(m.id, index).ok()).map_or(0, |o| o.log_start_offset)
            };
            partitions.push(match result {
                Ok(Some(base)) => r.with_base_offset(base).with_log_start_offset(log_start()),
                Ok(None) => r.with_base_offset(-1).with_log_start_offset(log_start()),
                Err((code, msg)) => {
                    failures::record(Op::Produce, code, &msg);
                    let r = r.with_error_code(code).with_base_offset(-1).with_log_start_offset(-1);
                    if version >= 8 { r.with_error_message(Some(str_bytes(msg))) } else { r }
                }
            });
        }
        responses.push(TopicProduceResponse::default().with_name(name).with_topic_id(topic_id).with_partition_responses(partitions));
    }
    Some((acks, ProduceResponse::default().with_responses(responses)))
}
