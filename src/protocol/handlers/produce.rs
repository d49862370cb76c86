//! Produce: every partition's batch is checked first, then the request's valid batches are
//! accepted together (one WAL entry for acks=0/1, one upload group for acks=all), so a request
//! costs one fsync or one flush interval however many partitions it has. acks=1 is answered
//! with base offset -1 (offsets are assigned later, at commit); acks=0 gets no response.
//! Transactional batches with acks=0/1 are verified with the transaction coordinator before
//! they are accepted (their answer comes before the commit that would check them).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use tokio::time::{Duration, Instant};

use std::sync::{Arc, OnceLock};

use super::str_bytes;
use crate::metrics::{self, Histogram};
use crate::agent::upload::GroupItem;
use crate::agent::{Agent, AgentError};
use crate::agent::produce::Appended;
use crate::api::{ControllerError, TopicRef};
use crate::protocol::connection::Turn;
use crate::protocol::error::{agent_code, controller_code};
use crate::format::records::{self, RecordsError};
use crate::failures::{self, Op};

/// How long an acks=0 request may wait for buffer space (its client is not waiting at all).
const ACKS_0_TIMEOUT: Duration = Duration::from_secs(30);

/// A partition's fate: accepted (index into the request's accepted batches) or refused, with
/// Kafka's per-record errors when there are some.
enum Slot {
    Accepted(usize),
    Failed(i16, String, Vec<(i32, String)>),
}

impl Slot {
    fn failed(code: i16, message: String) -> Self {
        Slot::Failed(code, message, Vec::new())
    }

    fn refused(e: AgentError) -> Self {
        let code = agent_code(&e);
        match e {
            AgentError::Records(RecordsError::Rejected { message, record_errors, .. }) => Slot::Failed(code, message, record_errors),
            e => Slot::failed(code, e.to_string()),
        }
    }
}

/// Whether any partition's batch has the transactional bit (Kafka then requires the request's
/// transactional id before anything else).
fn has_transactional_batch(req: &ProduceRequest) -> bool {
    req.topic_data.iter().flat_map(|t| &t.partition_data).any(|p| {
        p.records.as_ref().is_some_and(|r| matches!(records::peek_header(r), Ok(Some(h)) if h.is_transactional()))
    })
}

/// Kafka's answer for a transactional batch that failed verification: INVALID_TXN_STATE, which
/// Produce v11+ (KIP-890) clients get as TRANSACTION_ABORTABLE.
fn verification_refusal(e: &ControllerError, version: i16) -> Slot {
    match e {
        ControllerError::InvalidTxnState(_) if version >= 11 => {
            Slot::failed(ResponseError::TransactionAbortable.code(), "Partition was not added to the transaction".into())
        }
        ControllerError::InvalidTxnState(_) => {
            Slot::failed(ResponseError::InvalidTxnState.code(), "Partition was not added to the transaction".into())
        }
        e => Slot::failed(controller_code(e), e.to_string()),
    }
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
    // Kafka: a transactional batch in a request without a transactional id fails every partition.
    let no_txn_id = req.transactional_id.is_none() && has_transactional_batch(&req);
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
                Slot::failed(ResponseError::InvalidRequiredAcks.code(), format!("acks={acks} is not 0, 1 or -1"))
            } else if no_txn_id {
                Slot::failed(ResponseError::TransactionalIdAuthorizationFailed.code(), "transactional batch without a transactional id".into())
            } else {
                match (&meta, &p.records) {
                    (None, _) => Slot::failed(unknown.code(), "unknown topic".into()),
                    (Some(_), None) => Slot::failed(ResponseError::InvalidRecord.code(), "null records".into()),
                    (Some(meta), Some(records)) => match agent.check_batch(meta, p.index, records, version) {
                        Ok(item) => {
                            items.push(item);
                            Slot::Accepted(items.len() - 1)
                        }
                        Err(e) => Slot::refused(e),
                    },
                }
            };
            slots.push((p.index, slot));
        }
        topics.push((t.name.clone(), t.topic_id, meta, slots));
    }
    if acks != -1 {
        verify_transactional(agent, version, &req, &mut items, &mut topics).await;
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
            let (result, record_errors) = match slot {
                Slot::Accepted(i) => (results.get(i).cloned().unwrap_or(Ok(None)), Vec::new()),
                Slot::Failed(code, msg, record_errors) => (Err((code, msg)), record_errors),
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
                    if version >= 8 {
                        let record_errors = record_errors
                            .into_iter()
                            .map(|(i, m)| BatchIndexAndErrorMessage::default().with_batch_index(i).with_batch_index_error_message(Some(str_bytes(m))))
                            .collect();
                        r.with_error_message(Some(str_bytes(msg))).with_record_errors(record_errors)
                    } else {
                        r
                    }
                }
            });
        }
        responses.push(TopicProduceResponse::default().with_name(name).with_topic_id(topic_id).with_partition_responses(partitions));
    }
    Some((acks, ProduceResponse::default().with_responses(responses)))
}

/// The request's topics as the handler collects them: name, id, metadata, each partition's slot.
type Topics = Vec<(kafka_protocol::messages::TopicName, uuid::Uuid, Option<Arc<crate::api::TopicMeta>>, Vec<(i32, Slot)>)>;

/// acks=0/1: refuses the transactional batches the coordinator does not know as part of an
/// ongoing transaction with their partition (acks=all: the commit refuses them, and its answer
/// is the client's), renumbering the accepted ones.
async fn verify_transactional(agent: &Agent, version: i16, req: &ProduceRequest, items: &mut Vec<GroupItem>, topics: &mut Topics) {
    let Some(transactional_id) = &req.transactional_id else { return };
    let mut names = vec![""; items.len()];
    for (_, _, meta, slots) in topics.iter() {
        for (_, slot) in slots {
            if let (Slot::Accepted(i), Some(m)) = (slot, meta) {
                names[*i] = m.name.as_str();
            }
        }
    }
    let asked: Vec<usize> = (0..items.len()).filter(|&i| items[i].header.is_transactional()).collect();
    if asked.is_empty() {
        return;
    }
    let batches: Vec<(&str, &GroupItem)> = asked.iter().map(|&i| (names[i], &items[i])).collect();
    let answers = agent.verify_transactional(transactional_id.0.as_str(), &batches).await;
    let mut refused: Vec<Option<Slot>> = (0..items.len()).map(|_| None).collect();
    for (&i, answer) in asked.iter().zip(answers) {
        if let Err(e) = answer {
            refused[i] = Some(verification_refusal(&e, version));
        }
    }
    if refused.iter().all(Option::is_none) {
        return;
    }
    // Keep the verified items, in order; a slot's index follows its item.
    let keep: Vec<bool> = refused.iter().map(Option::is_none).collect();
    let mut new_index = vec![0; items.len()];
    let mut kept = 0;
    for (i, &k) in keep.iter().enumerate() {
        new_index[i] = kept;
        kept += usize::from(k);
    }
    for (_, _, _, slots) in topics.iter_mut() {
        for (_, slot) in slots.iter_mut() {
            if let Slot::Accepted(i) = *slot {
                *slot = refused[i].take().unwrap_or(Slot::Accepted(new_index[i]));
            }
        }
    }
    let mut keep = keep.into_iter();
    items.retain(|_| keep.next().unwrap_or(true));
}
