//! Offset sequencing: how a commit turns an object's extents into offsets.
//!
//! Invariant: a partition's offsets are dense and assigned exactly once, in commit order. The
//! controller holds the partition states under one lock while it plans a commit, writes the
//! plan through the store in one transaction, and only then applies it to memory: a failed
//! store write leaves memory untouched.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::producers::{self, ProducerKey, ProducerState, Verdict};
use super::store::OpenTxnRecord;
use crate::api::{ControllerError, ExtentRecord, PartitionOffsets};
use crate::format::object::{ExtentInfo, ProducerBatch};

/// What a commit does with one extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Store it at these offsets.
    Append(ExtentRecord),
    /// A retried batch of an idempotent producer, already stored at this base offset.
    Duplicate(i64),
}

/// What a plan needs to know of the controller's state.
pub trait CommitView {
    /// A partition's current state, or None if the partition does not exist (its extent then
    /// gets an error, the others still commit).
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Option<PartitionOffsets>;
    /// An idempotent producer's state in a partition.
    fn producer(&self, key: &ProducerKey) -> Option<ProducerState>;
    /// Ok if the transactional batch's producer may write to the partition now.
    fn check_txn(&self, batch: &ProducerBatch, topic_id: Uuid, partition: i32) -> Result<(), ControllerError>;
    /// Whether the producer has an open transaction in the partition already.
    fn txn_open(&self, topic_id: Uuid, partition: i32, producer_id: i64) -> bool;
}

/// A planned commit.
#[derive(Debug, Default)]
pub struct Plan {
    /// In input order: each extent's plan or error.
    pub results: Vec<Result<Planned, ControllerError>>,
    /// The producer states the plan changes.
    pub producers: HashMap<ProducerKey, ProducerState>,
    /// Transactions the plan opens in partitions (their first data).
    pub opened: Vec<OpenTxnRecord>,
}

impl Plan {
    /// The extents the plan appends (not the duplicates), to write and apply.
    pub fn appended(&self) -> Vec<ExtentRecord> {
        self.results
            .iter()
            .filter_map(|r| match r {
                Ok(Planned::Append(e)) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Each extent's answer: its base offset (a duplicate's original one) or error.
    pub fn base_offsets(self) -> Vec<Result<i64, ControllerError>> {
        self.results
            .into_iter()
            .map(|r| {
                r.map(|p| match p {
                    Planned::Append(e) => e.base_offset,
                    Planned::Duplicate(base) => base,
                })
            })
            .collect()
    }
}

/// Plans a commit of `extents`, checking idempotent and transactional producers.
pub fn plan_commit(object_key: &Arc<str>, object_size: u64, extents: &[ExtentInfo], now_ms: i64, view: &impl CommitView) -> Plan {
    let mut next: HashMap<(Uuid, i32), i64> = HashMap::new();
    let mut states: HashMap<ProducerKey, ProducerState> = HashMap::new();
    let mut opened: Vec<OpenTxnRecord> = Vec::new();
    let results = extents
        .iter()
        .map(|e| {
            if e.offset_count <= 0 {
                return Err(ControllerError::InvalidRequest("extent with no offsets".into()));
            }
            let key = (e.topic_id, e.partition);
            let base = match next.get(&key) {
                Some(n) => *n,
                None => view.offsets(e.topic_id, e.partition).ok_or(ControllerError::UnknownTopicOrPartition)?.next_offset,
            };
            if let Some(p) = &e.producer {
                if p.transactional {
                    view.check_txn(p, e.topic_id, e.partition)?;
                }
                let pkey = (p.producer_id, e.topic_id, e.partition);
                if let std::collections::hash_map::Entry::Vacant(slot) = states.entry(pkey)
                    && let Some(state) = view.producer(&pkey)
                {
                    slot.insert(state);
                }
                match producers::check(states.get(&pkey), p)? {
                    Verdict::Duplicate(base) => return Ok(Planned::Duplicate(base)),
                    Verdict::Append => producers::record(states.entry(pkey).or_default(), p, base, now_ms),
                }
                let already = |o: &OpenTxnRecord| (o.topic_id, o.partition, o.producer_id) == (e.topic_id, e.partition, p.producer_id);
                if p.transactional && !view.txn_open(e.topic_id, e.partition, p.producer_id) && !opened.iter().any(already) {
                    opened.push(OpenTxnRecord {
                        topic_id: e.topic_id,
                        partition: e.partition,
                        producer_id: p.producer_id,
                        first_offset: base,
                    });
                }
            }
            let end = base + e.offset_count;
            next.insert(key, end);
            Ok(Planned::Append(ExtentRecord {
                topic_id: e.topic_id,
                partition: e.partition,
                base_offset: base,
                end_offset: end,
                object_key: object_key.clone(),
                position: e.position,
                length: e.length,
                batch_count: e.batch_count,
                max_timestamp: e.max_timestamp,
                object_size,
            }))
        })
        .collect();
    Plan { results, producers: states, opened }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partitions of topic 1 start at `10 * partition`; producer 5 may write transactionally
    /// to partition 0 only.
    struct View;

    impl CommitView for View {
        fn offsets(&self, t: Uuid, p: i32) -> Option<PartitionOffsets> {
            (t == Uuid::from_u128(1)).then_some(PartitionOffsets { log_start_offset: 0, next_offset: 10 * i64::from(p) })
        }
        fn producer(&self, _: &ProducerKey) -> Option<ProducerState> {
            None
        }
        fn check_txn(&self, b: &ProducerBatch, _: Uuid, p: i32) -> Result<(), ControllerError> {
            if b.producer_id == 5 && p == 0 { Ok(()) } else { Err(ControllerError::InvalidTxnState("not added".into())) }
        }
        fn txn_open(&self, _: Uuid, _: i32, _: i64) -> bool {
            false
        }
    }

    fn ext(t: u128, p: i32, n: i64) -> ExtentInfo {
        ExtentInfo {
            topic_id: Uuid::from_u128(t),
            partition: p,
            position: 0,
            length: 10,
            batch_count: 1,
            offset_count: n,
            max_timestamp: 0,
            producer: None,
        }
    }

    fn batch(producer_id: i64, first: i32, last: i32, transactional: bool) -> Option<ProducerBatch> {
        Some(ProducerBatch { producer_id, epoch: 0, first_sequence: first, last_sequence: last, transactional })
    }

    #[test]
    fn offsets_are_dense_per_partition_and_unknown_partitions_fail_alone() {
        let key: Arc<str> = Arc::from("k");
        let plan = plan_commit(&key, 100, &[ext(1, 0, 3), ext(1, 1, 2), ext(1, 0, 4), ext(2, 0, 1)], 0, &View).results;
        let bases: Vec<_> = plan
            .iter()
            .map(|r| match r {
                Ok(Planned::Append(e)) => Some((e.base_offset, e.end_offset)),
                _ => None,
            })
            .collect();
        assert_eq!(bases, vec![Some((0, 3)), Some((10, 12)), Some((3, 7)), None]);
        assert!(matches!(plan[3], Err(ControllerError::UnknownTopicOrPartition)));
    }

    #[test]
    fn a_retried_idempotent_batch_in_the_same_commit_is_a_duplicate() {
        let key: Arc<str> = Arc::from("k");
        let mut e = ext(1, 2, 5);
        e.producer = batch(3, 0, 4, false);
        let mut gap = e;
        gap.producer = batch(3, 9, 9, false);
        gap.offset_count = 1;
        let plan = plan_commit(&key, 100, &[e, e, gap], 7, &View);
        assert!(matches!(plan.results[0], Ok(Planned::Append(ref r)) if r.base_offset == 20));
        assert_eq!(plan.results[1], Ok(Planned::Duplicate(20)));
        assert!(matches!(plan.results[2], Err(ControllerError::OutOfOrderSequence(_))));
        assert_eq!(plan.producers[&(3, Uuid::from_u128(1), 2)].batches.len(), 1);
    }

    #[test]
    fn transactional_batches_open_a_transaction_once_and_only_where_added() {
        let key: Arc<str> = Arc::from("k");
        let mut a = ext(1, 0, 2);
        a.producer = batch(5, 0, 1, true);
        let mut b = ext(1, 0, 3);
        b.producer = batch(5, 2, 4, true);
        let mut elsewhere = ext(1, 1, 1);
        elsewhere.producer = batch(5, 0, 0, true);
        let plan = plan_commit(&key, 100, &[ext(1, 0, 1), a, b, elsewhere], 7, &View);
        assert!(matches!(plan.results[3], Err(ControllerError::InvalidTxnState(_))));
        // The transaction's first offset is its first batch's, after the plain batch before it.
        assert_eq!(plan.opened, vec![OpenTxnRecord { topic_id: Uuid::from_u128(1), partition: 0, producer_id: 5, first_offset: 1 }]);
    }
}
