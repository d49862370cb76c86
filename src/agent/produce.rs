//! Produce: the checks a Kafka broker makes on a partition's records before it stores them
//! ([`Agent::check_batch`]), then the use case itself ([`Agent::produce`]): transactional
//! batches verified, the request's batches queued in its connection's order, and the wait each
//! acks level promises (docs/design.md, "Durability promises"):
//!
//! - acks=all: the upload buffer only; answered when the object is committed, with offsets.
//! - acks=0/1: the WAL first (fsync'd, then handed to the upload buffer by the WAL writer);
//!   answered at once after the fsync, without offsets (they are assigned at commit).

use bytes::Bytes;
use tokio::time::Instant;

use super::upload::{GroupItem, PendingAppend};
use super::wal::Logged;
use super::{Agent, AgentError, HandOffGuard, Turn};
use crate::api::txn::TXN_VERSION_EPOCH_BUMP;
use crate::api::{ControllerError, TopicMeta};
use crate::format::records;
use crate::telemetry::trace::{self, Span, SpanKind};

/// Kafka 4's default `message.timestamp.after.max.ms` (one hour); `before` is unbounded.
const TIMESTAMP_AFTER_MAX_MS: i64 = 3_600_000;

/// Whether `topic` has `message.timestamp.type=LogAppendTime`: its batches are stamped with the
/// agent's time as it accepts them ([`Agent::check_batch`]).
pub fn log_append_time(topic: &TopicMeta) -> bool {
    topic.configs.get("message.timestamp.type").is_some_and(|t| t.trim() == "LogAppendTime")
}

/// Where an accepted produce request stands.
pub enum Appended {
    /// acks=all: resolves to each batch's base offset once committed.
    Committed(Vec<PendingAppend>),
    /// acks=0/1: resolves once durable in the WAL; offsets are unknown until the commit.
    Logged(Logged),
    /// Nothing to store.
    Nothing,
}

/// One batch of a produce request, checked ([`Agent::check_batch`]), with its topic.
pub struct ProduceBatch {
    pub topic: std::sync::Arc<TopicMeta>,
    pub item: GroupItem,
}

/// Why a checked batch was not stored.
#[derive(Debug, Clone)]
pub enum ProduceRefusal {
    /// A transactional batch (acks=0/1) the coordinator does not know as part of an ongoing
    /// transaction with its partition (KIP-890 verification).
    NotInTransaction(ControllerError),
    Failed(AgentError),
}

/// What became of each batch, in request order: its base offset (acks=all), `None` (acks=0/1:
/// durable in the WAL, offset assigned at commit), or why it was refused.
pub type Produced = Vec<Result<Option<i64>, ProduceRefusal>>;

impl Agent {
    /// The produce use case for one request's checked batches: adds the transactional ones'
    /// partitions to the producer's transaction when `implicit_add` (Produce v12+, transaction
    /// version 2: the client sends no AddPartitionsToTxn; a durable controller write before the
    /// batch is appended, whatever acks) or else verifies them (acks=0/1; for acks=all the
    /// commit checks them, and its answer is the client's), waits for the request's `turn`
    /// (earlier produce requests of its connection queue first), appends, and waits as `acks`
    /// says: acks=0/1 until the WAL entry is durable and handed to the uploader, acks=all until
    /// each batch is committed or `deadline` passes.
    #[allow(clippy::too_many_arguments)]
    pub async fn produce(
        &self,
        batches: Vec<ProduceBatch>,
        transactional_id: Option<&str>,
        implicit_add: bool,
        acks: i16,
        deadline: Instant,
        mut turn: Option<Turn>,
        hand_off: HandOffGuard,
    ) -> Produced {
        let mut results: Produced = vec![Ok(None); batches.len()];
        if (acks != -1 || implicit_add)
            && let Some(id) = transactional_id
        {
            let asked: Vec<usize> = (0..batches.len()).filter(|&i| batches[i].item.header.is_transactional()).collect();
            let to_verify: Vec<(&str, &GroupItem)> = asked.iter().map(|&i| (batches[i].topic.name.as_str(), &batches[i].item)).collect();
            let answers = self.verify_transactional(id, &to_verify, implicit_add).await;
            for (&i, answer) in asked.iter().zip(answers) {
                if let Err(e) = answer {
                    results[i] = Err(ProduceRefusal::NotInTransaction(e));
                }
            }
        }
        let accepted: Vec<usize> = (0..batches.len()).filter(|&i| results[i].is_ok()).collect();
        let mut batches: Vec<Option<ProduceBatch>> = batches.into_iter().map(Some).collect();
        let items: Vec<GroupItem> = accepted.iter().filter_map(|&i| batches[i].take()).map(|b| b.item).collect();
        if acks != -1 {
            for item in items.iter().filter(|i| i.header.is_transactional()) {
                self.txn_unflushed.insert(item.header.producer_id);
            }
        }
        if let Some(turn) = turn.as_mut() {
            turn.wait().await;
        }
        // Sampled requests: the WAL append (acks=0/1: buffer space, the queue, the group commit's
        // write and fsync) or the wait for the upload and commit (acks=all).
        let mut span = trace::child(if acks == -1 { "upload.wait" } else { "wal.append" }, SpanKind::Internal);
        if let Some(span) = span.as_mut() {
            span.set("sidestream.batches", items.len());
            span.set("sidestream.bytes", items.iter().map(|i| i.batch.len()).sum::<usize>());
        }
        let appended = trace::scope(span.as_ref().map(Span::context), self.append(items, acks, deadline)).await;
        drop(turn);
        let appended = match appended {
            Ok(Appended::Logged(logged)) => logged.wait().await.map(|()| Appended::Nothing),
            other => other,
        };
        drop(hand_off);
        match appended {
            Ok(Appended::Nothing) | Ok(Appended::Logged(_)) => {}
            Ok(Appended::Committed(pending)) => {
                for (&i, p) in accepted.iter().zip(pending) {
                    results[i] = p.wait(deadline).await.map(Some).map_err(ProduceRefusal::Failed);
                }
            }
            Err(e) => accepted.iter().for_each(|&i| results[i] = Err(ProduceRefusal::Failed(e.clone()))),
        }
        if let Some(span) = span.as_mut()
            && let Some(Err(e)) = results.iter().find(|r| r.is_err())
        {
            span.fail(match e {
                ProduceRefusal::NotInTransaction(e) => e.to_string(),
                ProduceRefusal::Failed(e) => e.to_string(),
            });
        }
        results
    }

    /// Checks one partition's records as Kafka does (partition exists, one valid v2 batch,
    /// `max.message.bytes`, then every record: [`records::validate_records`]). On a topic with
    /// `message.timestamp.type=LogAppendTime` the batch is stamped with the agent's time now
    /// ([`records::with_log_append_time`]; record timestamps are not range-checked, as in
    /// Kafka): what the WAL and the object then hold is final, so a replay stores the same bytes.
    pub fn check_batch(&self, topic: &TopicMeta, partition: i32, records: &Bytes, api_version: i16) -> Result<GroupItem, AgentError> {
        if partition < 0 || partition >= topic.partitions {
            return Err(AgentError::UnknownTopicOrPartition);
        }
        let (batch, header) = records::validate_produce(records, api_version)?;
        let max = topic.config_i64("max.message.bytes").unwrap_or(i64::from(self.settings.topics.max_message_bytes));
        if batch.len() as i64 > max {
            return Err(AgentError::MessageTooLarge { size: batch.len(), max });
        }
        let log_append_time = log_append_time(topic);
        let now_ms = self.clock.now_ms();
        // Unbounded: no record timestamp is refused.
        let unless_log_append_time = |key, default| if log_append_time { i64::MAX } else { topic.config_i64(key).unwrap_or(default) };
        let checks = records::RecordChecks {
            topic: &topic.name,
            partition,
            now_ms,
            timestamp_before_max_ms: unless_log_append_time("message.timestamp.before.max.ms", i64::MAX),
            timestamp_after_max_ms: unless_log_append_time("message.timestamp.after.max.ms", TIMESTAMP_AFTER_MAX_MS),
            compacted: topic.configs.get("cleanup.policy").is_some_and(|p| p.split(',').any(|p| p.trim() == "compact")),
            max_decompressed_bytes: self.settings.max_decompressed_batch_bytes,
        };
        records::validate_records(&batch, &header, &checks)?;
        let (batch, header) = if log_append_time { records::with_log_append_time(&batch, &header, now_ms) } else { (batch, header) };
        Ok(GroupItem { topic_id: topic.id, partition, batch, header })
    }

    /// Asks the controller whether each transactional batch belongs to an ongoing transaction
    /// of `transactional_id` that includes its partition (KIP-890 verification; the check
    /// `Controller::check_txn_batch` repeats at commit), or with `add` (transaction version 2)
    /// has the controller add the partition, starting the transaction if none is ongoing.
    /// `batches`: (topic name, checked batch); one call per producer id and epoch. One result
    /// per batch, in order.
    async fn verify_transactional(
        &self,
        transactional_id: &str,
        batches: &[(&str, &GroupItem)],
        add: bool,
    ) -> Vec<Result<(), ControllerError>> {
        let client_version = if add { TXN_VERSION_EPOCH_BUMP } else { 0 };
        let mut results = vec![Ok(()); batches.len()];
        let mut producers: Vec<(i64, i16)> = batches.iter().map(|(_, i)| (i.header.producer_id, i.header.producer_epoch)).collect();
        producers.sort_unstable();
        producers.dedup();
        for (producer_id, epoch) in producers {
            let mine: Vec<usize> = (0..batches.len())
                .filter(|&n| (batches[n].1.header.producer_id, batches[n].1.header.producer_epoch) == (producer_id, epoch))
                .collect();
            let partitions = mine.iter().map(|&n| (batches[n].0.to_string(), batches[n].1.partition)).collect();
            let answers = self
                .controller
                .add_partitions_to_txn(transactional_id.to_string(), producer_id, epoch, partitions, !add, Some(client_version))
                .await;
            match answers {
                Ok(answers) => {
                    for (&n, answer) in mine.iter().zip(answers) {
                        results[n] = answer;
                    }
                }
                Err(e) => mine.iter().for_each(|&n| results[n] = Err(e.clone())),
            }
        }
        results
    }

    /// Accepts the checked batches of one produce request, by its acks level: queues them (in
    /// call order) for the uploader or the WAL, waiting only for buffer or log space (until
    /// `deadline`). What to wait for next is in the returned [`Appended`].
    async fn append(&self, items: Vec<GroupItem>, acks: i16, deadline: Instant) -> Result<Appended, AgentError> {
        if items.is_empty() {
            return Ok(Appended::Nothing);
        }
        let bytes = items.iter().map(|i| i.batch.len() as u64).sum();
        let records: u64 = items.iter().map(|i| i.header.record_count.max(0) as u64).sum();
        let permit = self.uploader.reserve(bytes, deadline).await?;
        let appended = if acks == -1 {
            Appended::Committed(self.uploader.submit(items, None, permit, trace::current())?)
        } else {
            Appended::Logged(self.wal.enqueue(items, permit, deadline).await?)
        };
        produced_records().add(records);
        Ok(appended)
    }
}

/// `sidestream_produce_records_total`: records of the batches accepted (queued for the WAL or
/// the upload buffer; refused batches are not counted).
fn produced_records() -> &'static crate::metrics::Counter {
    static RECORDS: std::sync::OnceLock<std::sync::Arc<crate::metrics::Counter>> = std::sync::OnceLock::new();
    RECORDS.get_or_init(|| {
        crate::metrics::counter("sidestream_produce_records_total", "Records in the batches produce requests had accepted.", &[])
    })
}
