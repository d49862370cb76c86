//! Produce: every partition's batch is checked first, then the request's valid batches are
//! accepted together (one WAL entry for acks=0/1, one upload group for acks=all), so a request
//! costs one fsync or one flush interval however many partitions it has. acks=1 is answered
//! with base offset -1 (offsets are assigned later, at commit); acks=0 gets no response. A
//! `LogAppendTime` topic's batch is answered with the time it was stamped with
//! (`log_append_time_ms`, known at acceptance, so acks=1 gets it too); others with -1.
//! Transactional batches with acks=0/1 are verified with the transaction coordinator before
//! they are accepted (their answer comes before the commit that would check them).
//!
//! ACLs (Kafka's order): transactional batches need WRITE on the transactional id
//! (TRANSACTIONAL_ID_AUTHORIZATION_FAILED on every partition), each topic WRITE
//! (TOPIC_AUTHORIZATION_FAILED on its partitions, before it is looked up).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use tokio::time::{Duration, Instant};

use std::sync::{Arc, OnceLock};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Turn;
use crate::agent::produce::{ProduceBatch, ProduceRefusal, log_append_time};
use crate::agent::{Agent, AgentError};
use crate::api::acl::{AclOperation, ResourceType};
use crate::api::{ControllerError, TopicRef, is_internal_topic};
use crate::failures::{self, Op};
use crate::format::records::{self, RecordsError};
use crate::metrics::{self, Bounded, Counter, Histogram, TOPIC_LABELS_MAX};
use crate::protocol::error::{agent_code, controller_code};
use crate::telemetry::trace;

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
    req.topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .any(|p| p.records.as_ref().is_some_and(|r| matches!(records::peek_header(r), Ok(Some(h)) if h.is_transactional())))
}

/// Kafka's answer for a transactional batch that failed verification (or, v12+, its implicit
/// add): INVALID_TXN_STATE, which Produce v11+ (KIP-890) clients get as TRANSACTION_ABORTABLE;
/// a fenced producer gets INVALID_PRODUCER_EPOCH, as Kafka's AddPartitionsToTxnManager answers.
fn verification_refusal(e: &ControllerError, version: i16) -> (i16, String) {
    match e {
        ControllerError::ProducerFenced(m) => (ResponseError::InvalidProducerEpoch.code(), m.clone()),
        ControllerError::InvalidTxnState(_) if version >= 11 => {
            (ResponseError::TransactionAbortable.code(), "Partition was not added to the transaction".into())
        }
        ControllerError::InvalidTxnState(_) => (ResponseError::InvalidTxnState.code(), "Partition was not added to the transaction".into()),
        e => (controller_code(e), e.to_string()),
    }
}

/// Record bytes of the batches stored, by topic (the first [`TOPIC_LABELS_MAX`] topics, the rest
/// as `__other`).
static BYTES_IN: Bounded<Counter> = Bounded::new(TOPIC_LABELS_MAX, |topic| {
    metrics::counter(
        "sidestream_topic_bytes_in_total",
        "Record batch bytes produced and stored, by topic (the first 100 topics seen; later ones as __other).",
        &[("topic", topic)],
    )
});

/// Answers a Produce (None for acks=0). A sampled request is traced: its `Produce` span is the
/// parent of the WAL append (acks=0/1) or of the wait for the commit (acks=all), and the
/// uploaded objects that carry its batches link to it.
pub async fn handle(
    agent: &Agent,
    access: &Access<'_>,
    version: i16,
    req: ProduceRequest,
    turn: Option<Turn>,
    client_id: &str,
) -> Option<ProduceResponse> {
    let started = std::time::Instant::now();
    let mut span = super::request_span("Produce", "send", client_id, version);
    if let Some(span) = span.as_mut() {
        span.set("kafka.acks", req.acks);
        span.set("kafka.topics", req.topic_data.len());
        span.set("kafka.partitions", req.topic_data.iter().map(|t| t.partition_data.len()).sum::<usize>());
        let bytes: usize = req.topic_data.iter().flat_map(|t| &t.partition_data).filter_map(|p| p.records.as_ref()).map(|r| r.len()).sum();
        span.set("messaging.batch.message_bytes", bytes);
        if let Some(id) = &req.transactional_id {
            span.set("kafka.transactional_id", id.0.as_str());
        }
    }
    let response = trace::scope(span.as_ref().map(|s| s.context()), handle_inner(agent, access, version, req, turn)).await;
    if let (Some(span), Some((_, r))) = (span.as_mut(), &response) {
        let failed = r.responses.iter().flat_map(|t| &t.partition_responses).filter(|p| p.error_code != 0).count();
        span.set("kafka.partitions_failed", failed);
        if failed > 0 {
            span.fail(format!("{failed} partitions refused"));
        }
    }
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
    access: &Access<'_>,
    version: i16,
    req: ProduceRequest,
    mut turn: Option<Turn>,
) -> Option<(i16, ProduceResponse)> {
    let acks = req.acks;
    let hand_off = match turn.as_mut().and_then(|t| t.hand_off.take()) {
        Some(guard) => guard,
        None => agent.hand_offs.enter(),
    };
    let deadline = Instant::now() + if acks == 0 { ACKS_0_TIMEOUT } else { Duration::from_millis(req.timeout_ms.max(0) as u64) };
    let mut items = Vec::new();
    // Each accepted batch's topic and size, for the bytes-in counters.
    let mut sizes = Vec::new();
    let mut topics = Vec::with_capacity(req.topic_data.len());
    // Kafka: transactional batches need the request's transactional id and WRITE on it, else
    // every partition fails.
    let txn_refused = if has_transactional_batch(&req) {
        match &req.transactional_id {
            None => Some("transactional batch without a transactional id".to_string()),
            Some(id) if !access.check(AclOperation::Write, ResourceType::TransactionalId, &id.0) => {
                Some(format!("WRITE on transactional id {} is not allowed", id.0))
            }
            Some(_) => None,
        }
    } else {
        None
    };
    for t in &req.topic_data {
        let meta = if version >= 13 {
            agent.controller.topic(TopicRef::Id(t.topic_id))
        } else {
            agent.controller.topic(TopicRef::Name(&t.name.0))
        };
        let unknown = if version >= 13 { ResponseError::UnknownTopicId } else { ResponseError::UnknownTopicOrPartition };
        // WRITE on the topic, by name (an unknown topic id has none: UNKNOWN_TOPIC_ID).
        let name = if version >= 13 { meta.as_ref().map(|m| m.name.as_str()) } else { Some(&*t.name.0) };
        let denied = txn_refused.is_none() && name.is_some_and(|n| !access.check(AclOperation::Write, ResourceType::Topic, n));
        let mut slots = Vec::with_capacity(t.partition_data.len());
        for p in &t.partition_data {
            let slot = if !(-1..=1).contains(&acks) {
                Slot::failed(ResponseError::InvalidRequiredAcks.code(), format!("acks={acks} is not 0, 1 or -1"))
            } else if let Some(why) = &txn_refused {
                Slot::failed(ResponseError::TransactionalIdAuthorizationFailed.code(), why.clone())
            } else if denied {
                Slot::failed(
                    ResponseError::TopicAuthorizationFailed.code(),
                    format!("WRITE on topic {} is not allowed", name.unwrap_or("")),
                )
            } else {
                match (&meta, &p.records) {
                    (None, _) => Slot::failed(unknown.code(), "unknown topic".into()),
                    (Some(meta), _) if is_internal_topic(&meta.name) => {
                        Slot::failed(ResponseError::InvalidTopicException.code(), format!("Cannot append to internal topic {}", meta.name))
                    }
                    (Some(_), None) => Slot::failed(ResponseError::InvalidRecord.code(), "null records".into()),
                    (Some(meta), Some(records)) => match agent.check_batch(meta, p.index, records, version) {
                        Ok(item) => {
                            sizes.push((meta.clone(), records.len() as u64));
                            items.push(ProduceBatch { topic: meta.clone(), item });
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
    // Kafka's log_append_time_ms: the time a LogAppendTime topic's batch was stamped with, else -1.
    let append_times: Vec<i64> = items.iter().map(|b| if log_append_time(&b.topic) { b.item.header.max_timestamp } else { -1 }).collect();
    // Produce v12+ comes from transaction version 2 clients, which send no AddPartitionsToTxn:
    // the partition joins the transaction with its batch (Kafka's rule: the request version).
    let implicit_add = version >= 12;
    let txn_id = req.transactional_id.as_ref().map(|t| t.0.as_str());
    let produced = agent.produce(items, txn_id, implicit_add, acks, deadline, turn, hand_off).await;
    for ((topic, bytes), _) in sizes.iter().zip(&produced).filter(|(_, r)| r.is_ok()) {
        BYTES_IN.add(&topic.name, *bytes);
    }
    if acks == 0 {
        // The refusals of one acks=0 request share their cause: recorded once.
        if let Some(Err(ProduceRefusal::Failed(e))) = produced.iter().find(|r| matches!(r, Err(ProduceRefusal::Failed(_)))) {
            failures::record(Op::Produce, agent_code(e), &format!("acks=0 produce dropped: {e}"));
        }
        return None;
    }
    // Each accepted batch's result: Some(base offset) when known, None for acks=1.
    let mut produced: Vec<Option<_>> = produced.into_iter().map(Some).collect();
    let mut responses = Vec::with_capacity(topics.len());
    for (name, topic_id, meta, slots) in topics {
        let mut partitions = Vec::with_capacity(slots.len());
        for (index, slot) in slots {
            let (result, record_errors) = match slot {
                Slot::Accepted(i) => match produced[i].take().unwrap_or(Ok(None)) {
                    Ok(base) => (Ok((base, append_times[i])), Vec::new()),
                    Err(ProduceRefusal::NotInTransaction(e)) => (Err(verification_refusal(&e, version)), Vec::new()),
                    Err(ProduceRefusal::Failed(e)) => (Err((agent_code(&e), e.to_string())), Vec::new()),
                },
                Slot::Failed(code, msg, record_errors) => (Err((code, msg)), record_errors),
            };
            let r = PartitionProduceResponse::default().with_index(index).with_log_append_time_ms(-1);
            let log_start = || meta.as_ref().and_then(|m| agent.controller.offsets(m.id, index).ok()).map_or(0, |o| o.log_start_offset);
            partitions.push(match result {
                Ok((base, append_time)) => {
                    r.with_base_offset(base.unwrap_or(-1)).with_log_append_time_ms(append_time).with_log_start_offset(log_start())
                }
                Err((code, msg)) => {
                    failures::record(Op::Produce, code, &msg);
                    let r = r.with_error_code(code).with_base_offset(-1).with_log_start_offset(-1);
                    if version >= 8 {
                        let record_errors = record_errors
                            .into_iter()
                            .map(|(i, m)| {
                                BatchIndexAndErrorMessage::default().with_batch_index(i).with_batch_index_error_message(Some(str_bytes(m)))
                            })
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
