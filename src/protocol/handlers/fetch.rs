//! Fetch: many partitions per request, long-polling on commit notifications until `min_bytes`
//! are available or `max_wait_ms` passes. Fetch sessions (KIP-227) are declined by answering
//! session id 0, which tells clients to send full fetches; an unknown session id gets
//! FETCH_SESSION_ID_NOT_FOUND as in Kafka. isolation_level 1 (read_committed) reads up to the
//! last stable offset and lists the aborted transactions of what it returns.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::ProducerId;
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use tokio::time::{Duration, Instant};

use crate::agent::Agent;
use crate::controller::TopicRef;
use crate::protocol::error::agent_code;

/// Longest long-poll honoured, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(300);
/// session_epoch value that means "no session" (FINAL_EPOCH).
const FINAL_EPOCH: i32 = -1;

pub async fn handle(agent: &Agent, version: i16, req: FetchRequest) -> FetchResponse {
    if version >= 7 && (req.session_id != 0 && req.session_epoch != FINAL_EPOCH) {
        return FetchResponse::default().with_error_code(ResponseError::FetchSessionIdNotFound.code());
    }
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let mut commits = agent.controller.commit_watch();
    commits.borrow_and_update();
    loop {
        let (response, bytes, any_error) = read_once(agent, version, &req).await;
        if bytes >= i64::from(req.min_bytes) || any_error || Instant::now() >= deadline {
            return response;
        }
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { return response },
            _ = tokio::time::sleep_until(deadline) => {
                // One last look, so data committed just before the deadline is not missed.
                return read_once(agent, version, &req).await.0;
            }
        }
    }
}

/// One pass over every requested partition. Returns the response, its record bytes and
/// whether any partition had an error (Kafka answers at once then).
async fn read_once(agent: &Agent, version: i16, req: &FetchRequest) -> (FetchResponse, i64, bool) {
    let max_bytes = if req.max_bytes <= 0 { i32::MAX } else { req.max_bytes } as u64;
    let mut total = 0u64;
    let mut any_error = false;
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let meta = if version >= 13 {
            agent.controller.topic(TopicRef::Id(t.topic_id))
        } else {
            agent.controller.topic(TopicRef::Name(&t.topic.0))
        };
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let mut data = PartitionData::default()
                .with_partition_index(p.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1);
            match &meta {
                None => {
                    any_error = true;
                    let code = if version >= 13 { ResponseError::UnknownTopicId } else { ResponseError::UnknownTopicOrPartition };
                    data = data.with_error_code(code.code());
                }
                Some(meta) => {
                    let budget = (p.partition_max_bytes.max(0) as u64).min(max_bytes.saturating_sub(total));
                    let read_committed = req.isolation_level == 1;
                    match agent.read_partition(meta.id, p.partition, p.fetch_offset, budget, total == 0, read_committed).await {
                        Ok(read) => {
                            total += read.records.len() as u64;
                            let aborted = read.aborted.map(|a| {
                                a.into_iter()
                                    .map(|(pid, first)| AbortedTransaction::default().with_producer_id(ProducerId(pid)).with_first_offset(first))
                                    .collect()
                            });
                            data = data
                                .with_high_watermark(read.high_watermark)
                                .with_last_stable_offset(read.last_stable_offset)
                                .with_log_start_offset(read.log_start_offset)
                                .with_aborted_transactions(aborted)
                                .with_records(Some(read.records));
                        }
                        Err(e) => {
                            any_error = true;
                            if let Ok(o) = agent.controller.offsets(meta.id, p.partition) {
                                let lso = agent.controller.last_stable_offset(meta.id, p.partition).unwrap_or(o.next_offset);
                                data = data
                                    .with_high_watermark(o.next_offset)
                                    .with_last_stable_offset(lso)
                                    .with_log_start_offset(o.log_start_offset);
                            }
                            data = data.with_error_code(agent_code(&e));
                        }
                    }
                }
            }
            partitions.push(data);
        }
        topics.push(
            FetchableTopicResponse::default().with_topic(t.topic.clone()).with_topic_id(t.topic_id).with_partitions(partitions),
        );
    }
    (FetchResponse::default().with_responses(topics), total as i64, any_error)
}
