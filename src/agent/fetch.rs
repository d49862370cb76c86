//! Fetch: from (partition, offset) to the batches a consumer receives.
//!
//! The controller says which extents (object byte ranges) hold the offsets; the agent reads
//! them through the read cache (memory, disk, then the object store), checks each batch's CRC
//! (never serve corrupt data), and writes the assigned absolute base offset into each batch
//! header (a field the CRC does not cover) on the way out: large batches leave as slices of the
//! cached blocks, with only their 16 header bytes copied ([`BatchChain`]).
//! A read_committed read stops at the last stable offset and lists the aborted transactions
//! of the range it returns, so the consumer can drop their batches; a range without
//! transactional batches has none to drop, and asks the controller nothing (a tail consumer
//! of a remote-controller agent makes no controller call per fetch).

use uuid::Uuid;

use super::{Agent, AgentError, cost};
use crate::format::records::{self, BatchChain};

/// Leader epoch written into served batches; matches the epoch Metadata reports.
pub const LEADER_EPOCH: i32 = 0;

/// One partition's answer to a fetch.
#[derive(Debug, Default)]
pub struct PartitionRead {
    /// Whole record batches, back to back, offsets patched.
    pub records: BatchChain,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// read_committed only: (producer id, first offset) of the aborted transactions
    /// overlapping the returned batches.
    pub aborted: Option<Vec<(i64, i64)>>,
}

impl Agent {
    /// Reads batches of a partition starting with the one holding `offset`, up to `max_bytes`.
    /// When `allow_oversize`, the first batch is returned even if larger than `max_bytes`
    /// (Kafka does this for the first partition of a response so consumers always progress).
    /// `read_committed`: only batches below the last stable offset, with the aborted list.
    pub async fn read_partition(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
        max_bytes: u64,
        allow_oversize: bool,
        read_committed: bool,
    ) -> Result<PartitionRead, AgentError> {
        let offsets = self.controller.offsets(topic_id, partition).map_err(|_| AgentError::UnknownTopicOrPartition)?;
        let lso = self.controller.last_stable_offset(topic_id, partition).unwrap_or(offsets.next_offset).min(offsets.next_offset);
        let limit = if read_committed { lso } else { offsets.next_offset };
        let mut read = PartitionRead {
            records: BatchChain::default(),
            high_watermark: offsets.next_offset,
            last_stable_offset: lso,
            log_start_offset: offsets.log_start_offset,
            aborted: read_committed.then(Vec::new),
        };
        if offset < offsets.log_start_offset || offset > offsets.next_offset {
            return Err(AgentError::OffsetOutOfRange { offset, log_start: offsets.log_start_offset, high_watermark: offsets.next_offset });
        }
        if offset >= limit || (max_bytes == 0 && !allow_oversize) {
            return Ok(read);
        }
        let extents = self.controller.find_extents(topic_id, partition, offset, max_bytes.max(1)).await?;
        let cost = cost::by_id(&*self.controller, topic_id);
        let mut out = BatchChain::default();
        // The offset after the last batch returned.
        let mut out_end = offset;
        // Whether a transactional batch (data or marker) is among them: only those can belong
        // to an aborted transaction, and clients filter no other batch by the aborted list.
        let mut transactional = false;
        'extents: for e in extents {
            let data = self.cache.read(&e.object_key, e.position..e.position + e.length, e.object_size, &cost).await?;
            let mut base = e.base_offset;
            let mut seen = 0u64;
            for (at, h) in records::batches(&data) {
                let size = h.size_bytes as usize;
                seen += size as u64;
                let batch_base = base;
                base += h.offset_count();
                if base <= offset {
                    continue;
                }
                if batch_base >= limit {
                    break 'extents;
                }
                if out.len() + size > max_bytes as usize && !(out.is_empty() && allow_oversize) {
                    break 'extents;
                }
                let batch = data.slice(at..at + size);
                if !records::crc_ok(&batch) {
                    return Err(AgentError::CorruptObject(format!("batch CRC mismatch in {}", e.object_key)));
                }
                out.push(&batch, batch_base, LEADER_EPOCH);
                out_end = base;
                transactional |= h.is_transactional();
            }
            if seen != e.length || base != e.end_offset {
                return Err(AgentError::CorruptObject(format!(
                    "extent of {} at {} does not match its index entry",
                    e.object_key, e.position
                )));
            }
        }
        read.records = out;
        if read_committed && transactional {
            read.aborted = Some(self.controller.aborted_txns(topic_id, partition, offset, out_end).await?);
        }
        Ok(read)
    }
}

impl Agent {
    /// Within extent `e`, the first record whose timestamp is >= `timestamp` at or after offset
    /// `from_offset` (the log start offset), as Kafka finds it: the first batch whose max
    /// timestamp is >= `timestamp`, then the first such record in it (decompressed, at most
    /// `max_decompressed_batch_bytes`). `(offset, timestamp)`, or None if no record in `e` has one.
    pub async fn record_with_timestamp(
        &self,
        e: &crate::api::ExtentRecord,
        timestamp: i64,
        from_offset: i64,
    ) -> Result<Option<(i64, i64)>, AgentError> {
        let cost = cost::by_id(&*self.controller, e.topic_id);
        let data = self.cache.read(&e.object_key, e.position..e.position + e.length, e.object_size, &cost).await?;
        let mut base = e.base_offset;
        for (at, h) in records::batches(&data) {
            let batch_base = base;
            base += h.offset_count();
            if h.max_timestamp < timestamp || base <= from_offset {
                continue;
            }
            let batch = &data[at..at + h.size_bytes as usize];
            let corrupt = |why: &dyn std::fmt::Display| AgentError::CorruptObject(format!("batch in {} at {at}: {why}", e.object_key));
            if !records::crc_ok(batch) {
                return Err(corrupt(&"CRC mismatch"));
            }
            let found =
                records::record_at_or_after(batch, &h, timestamp, from_offset - batch_base, self.settings.max_decompressed_batch_bytes)
                    .map_err(|why| corrupt(&why))?;
            if let Some((delta, ts)) = found {
                return Ok(Some((batch_base + i64::from(delta), ts)));
            }
        }
        Ok(None)
    }
}
