//! Produce: the checks a Kafka broker makes on a partition's records before it stores them,
//! then the path each acks level takes (DESIGN.md, "Durability promises"):
//!
//! - acks=all: the upload buffer only; answered when the object is committed, with offsets.
//! - acks=0/1: the WAL first (fsync'd, then handed to the upload buffer by the WAL writer);
//!   answered at once after the fsync, without offsets (they are assigned at commit).

use bytes::Bytes;
use tokio::time::Instant;

use super::upload::{GroupItem, PendingAppend};
use super::wal::Logged;
use super::{Agent, AgentError};
use crate::controller::TopicMeta;
use crate::protocol::records;

/// Where an accepted produce request stands.
pub enum Appended {
    /// acks=all: resolves to each batch's base offset once committed.
    Committed(Vec<PendingAppend>),
    /// acks=0/1: resolves once durable in the WAL; offsets are unknown until the commit.
    Logged(Logged),
    /// Nothing to store.
    Nothing,
}

impl Agent {
    /// Checks one partition's records as Kafka does (partition exists, one valid v2 batch,
    /// `max.message.bytes`).
    pub fn check_batch(
        &self,
        topic: &TopicMeta,
        partition: i32,
        records: &Bytes,
        api_version: i16,
    ) -> Result<GroupItem, AgentError> {
        if partition < 0 || partition >= topic.partitions {
            return Err(AgentError::UnknownTopicOrPartition);
        }
        let (batch, header) = records::validate_produce(records, api_version)?;
        let max = topic
            .config_i64("max.message.bytes")
            .unwrap_or(i64::from(self.settings.topics.max_message_bytes));
        if batch.len() as i64 > max {
            return Err(AgentError::MessageTooLarge { size: batch.len(), max });
        }
        Ok(GroupItem { topic_id: topic.id, partition, batch, header })
    }

    /// Accepts the checked batches of one produce request, by its acks level: queues them (in
    /// call order) for the uploader or the WAL, waiting only for buffer or log space (until
    /// `deadline`). What to wait for next is in the returned [`Appended`].
    pub async fn append(&self, items: Vec<GroupItem>, acks: i16, deadline: Instant) -> Result<Appended, AgentError> {
        if items.is_empty() {
            return Ok(Appended::Nothing);
        }
        let bytes = items.iter().map(|i| i.batch.len() as u64).sum();
        let records: u64 = items.iter().map(|i| i.header.record_count.max(0) as u64).sum();
        let permit = self.uploader.reserve(bytes, deadline).await?;
        let appended = if acks == -1 {
            Appended::Committed(self.uploader.submit(items, None, permit)?)
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
