//! Fetch: many partitions per request, long-polling on commit notifications until `min_bytes`
//! are available or `max_wait_ms` passes, in or out of a fetch session (KIP-227, see
//! [`crate::agent::fetch_session`]): incremental fetches name only what changed, and their
//! answers leave out partitions with nothing new. isolation_level 1 (read_committed) reads up
//! to the last stable offset and lists the aborted transactions of what it returns. Each topic
//! needs READ (TOPIC_AUTHORIZATION_FAILED on its partitions), as in Kafka.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ProducerId;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use tokio::time::{Duration, Instant};

use super::acls::Access;
use crate::agent::Agent;
use crate::agent::fetch_session::{self, Answered, Begun, Mode, PartitionKey, Wanted};
use crate::api::TopicRef;
use crate::api::acl::{AclOperation, ResourceType};
use crate::failures::{self, Op};
use crate::format::records::BatchChain;
use crate::metrics::{self, Bounded, Counter, TOPIC_LABELS_MAX};
use crate::protocol::error::agent_code;
use crate::telemetry::trace;

/// Fetch requests by session mode: `none`, `full` (opened a session), `incremental`, `error`.
fn requests(begun: &Begun) -> &'static Counter {
    static BY_MODE: OnceLock<[Arc<Counter>; 4]> = OnceLock::new();
    let c = BY_MODE.get_or_init(|| {
        ["none", "full", "incremental", "error"]
            .map(|m| metrics::counter("sidestream_fetch_requests_total", "Fetch requests, by fetch session mode.", &[("session", m)]))
    });
    &c[match begun {
        Ok((Mode::Sessionless, _)) => 0,
        Ok((Mode::Full { .. }, _)) => 1,
        Ok((Mode::Incremental { .. }, _)) => 2,
        Err(_) => 3,
    }]
}

/// Record bytes answered, by topic (the first [`TOPIC_LABELS_MAX`] topics, the rest as `__other`).
static BYTES_OUT: Bounded<Counter> = Bounded::new(TOPIC_LABELS_MAX, |topic| {
    metrics::counter(
        "sidestream_topic_bytes_out_total",
        "Record batch bytes fetched, by topic (the first 100 topics seen; later ones as __other).",
        &[("topic", topic)],
    )
});

/// A Fetch answer: the response with every `records` field unset, and the answered
/// partitions' batches beside it, in response order (`None`: null records), so they can be
/// written from the cache's buffers by [`encode`].
#[derive(Debug, Default)]
pub struct FetchAnswer {
    pub response: FetchResponse,
    pub records: Vec<Option<BatchChain>>,
}

/// Answers a Fetch from the connection `peer` (which then owns the session it opens or uses).
/// The long poll lasts at most `[agent] fetch_max_wait_ms_max`, whatever the client asks.
/// A sampled request is traced: its `Fetch` span is the parent of the object store GETs of its
/// cache misses.
pub async fn handle(agent: &Agent, access: &Access<'_>, version: i16, req: FetchRequest, peer: SocketAddr, client_id: &str) -> FetchAnswer {
    let Some(mut span) = super::request_span("Fetch", "receive", client_id, version) else {
        return handle_inner(agent, access, version, req, peer).await;
    };
    span.set("kafka.max_wait_ms", req.max_wait_ms);
    span.set("kafka.topics", req.topics.len());
    span.set("kafka.partitions", req.topics.iter().map(|t| t.partitions.len()).sum::<usize>());
    let answer = trace::scope(Some(span.context()), handle_inner(agent, access, version, req, peer)).await;
    span.set("messaging.batch.message_bytes", answer.records.iter().flatten().map(|c| c.len() as u64).sum::<u64>());
    if answer.response.error_code != 0 {
        span.fail(format!("error code {}", answer.response.error_code));
    }
    answer
}

async fn handle_inner(agent: &Agent, access: &Access<'_>, version: i16, req: FetchRequest, peer: SocketAddr) -> FetchAnswer {
    let begun = agent.fetch_sessions.begin(version, &req, peer);
    requests(&begun).inc();
    let (mode, wanted) = match begun {
        Ok(m) => m,
        Err(code) => {
            failures::record(Op::Fetch, code, "fetch session");
            return FetchAnswer { response: FetchResponse::default().with_error_code(code), records: Vec::new() };
        }
    };
    // READ on each topic, decided once for the whole long poll (by name: an unknown topic id has
    // none and gets UNKNOWN_TOPIC_ID).
    let mut denied = HashSet::new();
    let mut checked = HashSet::new();
    for (key, _) in &wanted {
        let name = if version >= 13 {
            agent.controller.topic(TopicRef::Id(key.topic_id)).map(|m| m.name.clone())
        } else {
            Some(key.topic.0.to_string())
        };
        if let Some(name) = name
            && checked.insert(name.clone())
            && !access.check(AclOperation::Read, ResourceType::Topic, &name)
        {
            denied.insert(name);
        }
    }
    let max_wait = (req.max_wait_ms.max(0) as u64).min(agent.settings.fetch_max_wait_ms_max);
    let deadline = Instant::now() + Duration::from_millis(max_wait);
    let mut commits = agent.controller.commit_watch();
    commits.borrow_and_update();
    let partitions = loop {
        let (partitions, bytes, any_error) = read_once(agent, version, &req, &wanted, &denied).await;
        if bytes >= i64::from(req.min_bytes) || any_error || Instant::now() >= deadline {
            break partitions;
        }
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { break partitions },
            _ = tokio::time::sleep_until(deadline) => {
                // One last look, so data committed just before the deadline is not missed.
                break read_once(agent, version, &req, &wanted, &denied).await.0;
            }
        }
    };
    let outcomes: Vec<_> = partitions
        .iter()
        .map(|(key, data, records)| fetch_session::Outcome {
            key: key.clone(),
            answered: Answered {
                high_watermark: data.high_watermark,
                last_stable_offset: data.last_stable_offset,
                log_start_offset: data.log_start_offset,
            },
            has_records: records.as_ref().is_some_and(|r| !r.is_empty()),
            has_error: data.error_code != 0,
        })
        .collect();
    let include = agent.fetch_sessions.finish(&mode, &outcomes);
    // Consecutive partitions of one topic share a topic entry, as in Kafka.
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    let mut chains = Vec::with_capacity(partitions.len());
    for ((key, data, records), included) in partitions.into_iter().zip(include) {
        if !included {
            continue;
        }
        if let Some(bytes) = records.as_ref().map(|r| r.len() as u64).filter(|&n| n > 0) {
            // From v13 requests name topics by id only.
            if !key.topic.0.is_empty() {
                BYTES_OUT.add(&key.topic.0, bytes);
            } else if let Some(meta) = agent.controller.topic(TopicRef::Id(key.topic_id)) {
                BYTES_OUT.add(&meta.name, bytes);
            }
        }
        chains.push(records);
        match topics.last_mut() {
            Some(t) if t.topic == key.topic && t.topic_id == key.topic_id => t.partitions.push(data),
            _ => {
                topics.push(FetchableTopicResponse::default().with_topic(key.topic).with_topic_id(key.topic_id).with_partitions(vec![data]))
            }
        }
    }
    FetchAnswer { response: FetchResponse::default().with_session_id(mode.session_id()).with_responses(topics), records: chains }
}

/// One pass over every wanted partition. Returns the answers, their record bytes and whether
/// any partition had an error (Kafka answers at once then).
async fn read_once(
    agent: &Agent,
    version: i16,
    req: &FetchRequest,
    wanted: &[(PartitionKey, Wanted)],
    denied: &HashSet<String>,
) -> (Vec<(PartitionKey, PartitionData, Option<BatchChain>)>, i64, bool) {
    let max_bytes = if req.max_bytes <= 0 { i32::MAX } else { req.max_bytes } as u64;
    let mut total = 0u64;
    let mut any_error = false;
    let mut out = Vec::with_capacity(wanted.len());
    for (key, w) in wanted {
        let meta = if version >= 13 {
            agent.controller.topic(TopicRef::Id(key.topic_id))
        } else {
            agent.controller.topic(TopicRef::Name(&key.topic.0))
        };
        // An error's records are empty, not null, as Kafka answers them: librdkafka refuses a
        // null record set ("invalid MessageSetSize -1") and never sees the error.
        let mut records = Some(BatchChain::default());
        let mut data = PartitionData::default()
            .with_partition_index(key.partition)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1);
        let name = if version >= 13 { meta.as_ref().map(|m| m.name.as_str()) } else { Some(&*key.topic.0) };
        match &meta {
            _ if name.is_some_and(|n| denied.contains(n)) => {
                any_error = true;
                let code = ResponseError::TopicAuthorizationFailed.code();
                failures::record(Op::Fetch, code, "READ on the topic is not allowed");
                data = data.with_error_code(code);
            }
            None => {
                any_error = true;
                let code = if version >= 13 { ResponseError::UnknownTopicId } else { ResponseError::UnknownTopicOrPartition };
                failures::record(Op::Fetch, code.code(), "unknown topic");
                data = data.with_error_code(code.code());
            }
            Some(meta) => {
                let budget = (w.partition_max_bytes.max(0) as u64).min(max_bytes.saturating_sub(total));
                let read_committed = req.isolation_level == 1;
                match agent.read_partition(meta.id, key.partition, w.fetch_offset, budget, total == 0, read_committed).await {
                    Ok(read) => {
                        total += read.records.len() as u64;
                        let aborted = read.aborted.map(|a| {
                            a.into_iter()
                                .map(|(pid, first)| {
                                    AbortedTransaction::default().with_producer_id(ProducerId(pid)).with_first_offset(first)
                                })
                                .collect()
                        });
                        data = data
                            .with_high_watermark(read.high_watermark)
                            .with_last_stable_offset(read.last_stable_offset)
                            .with_log_start_offset(read.log_start_offset)
                            .with_aborted_transactions(aborted);
                        records = Some(read.records);
                    }
                    Err(e) => {
                        any_error = true;
                        if let Ok(o) = agent.controller.offsets(meta.id, key.partition) {
                            let lso = agent.controller.last_stable_offset(meta.id, key.partition).unwrap_or(o.next_offset);
                            data = data
                                .with_high_watermark(o.next_offset)
                                .with_last_stable_offset(lso)
                                .with_log_start_offset(o.log_start_offset);
                        }
                        let code = agent_code(&e);
                        failures::record(Op::Fetch, code, &e.to_string());
                        data = data.with_error_code(code);
                    }
                }
            }
        }
        out.push((key.clone(), data, records));
    }
    (out, total as i64, any_error)
}

/// Writes a Fetch response frame (length prefix, header, body) as a list of slices: the
/// fields in small buffers, the record data as the slices of each partition's [`BatchChain`],
/// uncopied. Byte for byte what kafka-protocol encodes for the same response with the records
/// filled in (a property test holds it to that); fields this agent never sets (tagged fields:
/// diverging epoch, current leader, snapshot id, node endpoints) send the answer through
/// kafka-protocol's encoder instead.
pub fn encode(header_version: i16, correlation_id: i32, version: i16, answer: FetchAnswer) -> Result<Vec<Bytes>, String> {
    let FetchAnswer { response, records } = answer;
    let partitions = response.responses.iter().map(|t| t.partitions.len()).sum::<usize>();
    if partitions != records.len() {
        return Err(format!("{partitions} partitions but {} record chains", records.len()));
    }
    if !(4..=18).contains(&version) || !plain(&response) {
        let mut response = response;
        let mut chains = records.into_iter();
        for p in response.responses.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
            p.records = chains.next().flatten().map(|c| c.to_bytes());
        }
        return super::encode_frame(header_version, correlation_id, version, &response);
    }
    let flexible = version >= 12;
    let mut w = ChunkWriter { chunks: vec![Bytes::new()], buf: BytesMut::with_capacity(256), flexible };
    w.buf.put_i32(correlation_id);
    if header_version >= 1 {
        w.no_tags();
    }
    w.buf.put_i32(response.throttle_time_ms);
    if version >= 7 {
        w.buf.put_i16(response.error_code);
        w.buf.put_i32(response.session_id);
    }
    let mut chains = records.into_iter();
    w.len(response.responses.len());
    for t in &response.responses {
        if version >= 13 {
            w.buf.put_slice(t.topic_id.as_bytes());
        } else {
            w.string(t.topic.0.as_bytes());
        }
        w.len(t.partitions.len());
        for p in &t.partitions {
            w.buf.put_i32(p.partition_index);
            w.buf.put_i16(p.error_code);
            w.buf.put_i64(p.high_watermark);
            w.buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                w.buf.put_i64(p.log_start_offset);
            }
            match &p.aborted_transactions {
                None => w.null(),
                Some(aborted) => {
                    w.len(aborted.len());
                    for a in aborted {
                        w.buf.put_i64(a.producer_id.0);
                        w.buf.put_i64(a.first_offset);
                        w.no_tags();
                    }
                }
            }
            if version >= 11 {
                w.buf.put_i32(p.preferred_read_replica.0);
            }
            match chains.next().flatten() {
                None => w.null(),
                Some(chain) => {
                    w.len(chain.len());
                    w.chain(chain);
                }
            }
            w.no_tags();
        }
        w.no_tags();
    }
    w.no_tags();
    Ok(w.finish())
}

/// Whether `response` has only the fields [`encode`] writes itself.
fn plain(response: &FetchResponse) -> bool {
    response.node_endpoints.is_empty()
        && response.unknown_tagged_fields.is_empty()
        && response.responses.iter().all(|t| {
            t.unknown_tagged_fields.is_empty()
                && t.partitions.iter().all(|p| {
                    p.records.is_none()
                        && p.diverging_epoch == Default::default()
                        && p.current_leader == Default::default()
                        && p.snapshot_id == Default::default()
                        && p.unknown_tagged_fields.is_empty()
                        && p.aborted_transactions.iter().flatten().all(|a| a.unknown_tagged_fields.is_empty())
                })
        })
}

/// Kafka's encodings of lengths, strings and tags, classic or flexible (compact, tagged).
struct ChunkWriter {
    /// The first slot is the frame length, filled in by `finish`.
    chunks: Vec<Bytes>,
    buf: BytesMut,
    flexible: bool,
}

impl ChunkWriter {
    fn varint(&mut self, mut v: u32) {
        while v >= 0x80 {
            self.buf.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.put_u8(v as u8);
    }

    /// An array's or a byte string's length.
    fn len(&mut self, n: usize) {
        if self.flexible { self.varint(n as u32 + 1) } else { self.buf.put_i32(n as i32) }
    }

    /// A null array or byte string.
    fn null(&mut self) {
        if self.flexible { self.varint(0) } else { self.buf.put_i32(-1) }
    }

    fn string(&mut self, s: &[u8]) {
        if self.flexible {
            self.varint(s.len() as u32 + 1)
        } else {
            self.buf.put_i16(s.len() as i16)
        }
        self.buf.put_slice(s);
    }

    /// An empty tagged-field section (flexible versions only).
    fn no_tags(&mut self) {
        if self.flexible {
            self.varint(0);
        }
    }

    fn chain(&mut self, chain: BatchChain) {
        if !self.buf.is_empty() {
            self.chunks.push(self.buf.split().freeze());
        }
        self.chunks.extend(chain.into_chunks());
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.buf.is_empty() {
            self.chunks.push(self.buf.split().freeze());
        }
        let len: usize = self.chunks.iter().map(Bytes::len).sum();
        self.chunks[0] = Bytes::copy_from_slice(&(len as i32).to_be_bytes());
        self.chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::records::encode_batch;
    use kafka_protocol::messages::fetch_response::AbortedTransaction;
    use kafka_protocol::messages::{ProducerId, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;
    use uuid::Uuid;

    /// One partition: (batches, value bytes, aborted transactions, null records).
    type PartitionShape = (u8, u16, Option<u8>, bool);

    /// A response of `shape[topic][partition]`. Only fields `version` has are set
    /// (kafka-protocol refuses to encode others).
    fn answer(version: i16, shape: &[Vec<PartitionShape>], session_id: i32) -> (FetchAnswer, FetchResponse) {
        let session_id = if version >= 7 { session_id } else { 0 };
        let mut answer = FetchAnswer::default();
        let mut expected = FetchResponse::default().with_session_id(session_id).with_throttle_time_ms(7);
        for (t, parts) in shape.iter().enumerate() {
            let topic = FetchableTopicResponse::default();
            let mut topic = if version >= 13 {
                topic.with_topic_id(Uuid::from_u128(t as u128 + 1))
            } else {
                topic.with_topic(TopicName(StrBytes::from_string(format!("topic-{t}"))))
            };
            for (p, &(batches, value_bytes, aborted, null)) in parts.iter().enumerate() {
                let mut chain = BatchChain::default();
                for b in 0..batches {
                    let value = vec![b; value_bytes as usize];
                    chain.push(&encode_batch(1000, &[&value, b"x"]), i64::from(b) * 2, 3);
                }
                let aborted = aborted.map(|n| {
                    (0..n).map(|i| AbortedTransaction::default().with_producer_id(ProducerId(i.into())).with_first_offset(9)).collect()
                });
                let data = PartitionData::default()
                    .with_partition_index(p as i32)
                    .with_high_watermark(100)
                    .with_last_stable_offset(90)
                    .with_log_start_offset(if version >= 5 { 3 } else { -1 })
                    .with_preferred_read_replica(kafka_protocol::messages::BrokerId(if version >= 11 { 2 } else { -1 }))
                    .with_aborted_transactions(aborted);
                let records = (!null).then_some(chain);
                topic.partitions.push(data.clone().with_records(records.as_ref().map(BatchChain::to_bytes)));
                answer.records.push(records);
                let mut unset = topic.clone();
                unset.partitions.iter_mut().for_each(|p| p.records = None);
                if p + 1 == parts.len() {
                    answer.response.responses.push(unset);
                }
            }
            expected.responses.push(topic);
        }
        answer.response = answer.response.with_session_id(session_id).with_throttle_time_ms(7);
        (answer, expected)
    }

    proptest! {
        #[test]
        fn chunks_equal_kafka_protocols_encoding(
            version in 4i16..=18,
            session_id in any::<i32>(),
            shape in prop::collection::vec(
                prop::collection::vec((0u8..4, prop_oneof![0u16..64, 4000u16..9000], prop::option::of(0u8..3), any::<bool>()), 1..4),
                0..3),
        ) {
            let (answer, expected) = answer(version, &shape, session_id);
            let header_version = kafka_protocol::messages::ApiKey::Fetch.response_header_version(version);
            let chunks = encode(header_version, 5, version, answer).unwrap();
            let ours: Vec<u8> = chunks.concat();
            let theirs = super::super::encode_frame(header_version, 5, version, &expected).unwrap();
            let theirs: Vec<u8> = theirs.concat();
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn large_batches_are_not_copied() {
        let big = encode_batch(1, &[&[7u8; 8000]]);
        let small = encode_batch(1, &[b"small"]);
        let mut chain = BatchChain::default();
        chain.push(&big, 10, 0);
        chain.push(&small, 11, 0);
        chain.push(&big, 12, 0);
        let chunks = chain.into_chunks();
        // header | body | (small batch + header) | body
        assert_eq!(chunks.iter().map(Bytes::len).collect::<Vec<_>>(), vec![16, big.len() - 16, small.len() + 16, big.len() - 16]);
        assert_eq!(chunks[1].as_ptr(), big[16..].as_ptr());
        assert_eq!(chunks[3].as_ptr(), big[16..].as_ptr());
        assert_eq!(&chunks[0][..8], &10i64.to_be_bytes());
    }
}
