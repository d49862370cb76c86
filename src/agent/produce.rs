//! Produce: the checks a Kafka broker makes on a partition's records before it stores them,
//! then the hand-off to the upload buffer.
//!
//! Every acks level is answered only once the batch's object is committed (the WAL, which lets
//! acks=1 answer earlier, is not built yet).

use bytes::Bytes;
use tokio::time::Instant;

use super::upload::PendingAppend;
use super::{Agent, AgentError};
use crate::controller::TopicMeta;
use crate::protocol::records;

impl Agent {
    /// Validates one partition's records and hands them to the upload buffer. The returned
    /// [`PendingAppend`] resolves to the batch's base offset once it is committed.
    pub async fn produce(
        &self,
        topic: &TopicMeta,
        partition: i32,
        records: &Bytes,
        api_version: i16,
        deadline: Instant,
    ) -> Result<PendingAppend, AgentError> {
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
        self.uploader.enqueue(topic.id, partition, batch, header, deadline).await
    }
}
