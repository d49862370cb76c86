//! Offset sequencing: how a commit turns an object's extents into offsets.
//!
//! Invariant: a partition's offsets are dense and assigned exactly once, in commit order. The
//! controller holds the partition states under one lock while it plans a commit, writes the
//! plan through the store in one transaction, and only then applies it to memory: a failed
//! store write leaves memory untouched.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::ControllerError;
use super::producers::{self, ProducerState, Verdict};
use super::store::ExtentRecord;
use crate::object::format::ExtentInfo;

/// What the controller knows of one partition between commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    /// The high watermark: the next offset to assign.
    pub next_offset: i64,
}

/// What a commit does with one extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Store it at these offsets.
    Append(ExtentRecord),
    /// A retried batch of an idempotent producer, already stored at this base offset.
    Duplicate(i64),
}

/// A producer's state in one partition, as the commit leaves it.
pub type ProducerKey = (i64, Uuid, i32);

/// Plans a commit. `offsets` gives a partition's current state, or None if the partition does
/// not exist (its extent then gets an error, the others still commit); `producer` gives an
/// idempotent producer's state in a partition. Returns, in input order, each extent's plan or
/// error, and the producer states the plan changes.
pub fn plan_commit(
    object_key: &Arc<str>,
    object_size: u64,
    extents: &[ExtentInfo],
    now_ms: i64,
    mut offsets: impl FnMut(Uuid, i32) -> Option<PartitionOffsets>,
    mut producer: impl FnMut(&ProducerKey) -> Option<ProducerState>,
) -> (Vec<Result<Planned, ControllerError>>, HashMap<ProducerKey, ProducerState>) {
    let mut next: HashMap<(Uuid, i32), i64> = HashMap::new();
    let mut states: HashMap<ProducerKey, ProducerState> = HashMap::new();
    let plan = extents
        .iter()
        .map(|e| {
            if e.offset_count <= 0 {
                return Err(ControllerError::InvalidRequest("extent with no offsets".into()));
            }
            let key = (e.topic_id, e.partition);
            let base = match next.get(&key) {
                Some(n) => *n,
                None => offsets(e.topic_id, e.partition).ok_or(ControllerError::UnknownTopicOrPartition)?.next_offset,
            };
            if let Some(p) = &e.producer {
                let pkey = (p.producer_id, e.topic_id, e.partition);
                if let std::collections::hash_map::Entry::Vacant(slot) = states.entry(pkey)
                    && let Some(state) = producer(&pkey)
                {
                    slot.insert(state);
                }
                match producers::check(states.get(&pkey), p)? {
                    Verdict::Duplicate(base) => return Ok(Planned::Duplicate(base)),
                    Verdict::Append => producers::record(states.entry(pkey).or_default(), p, base, now_ms),
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
    (plan, states)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(t: u128, p: i32, n: i64) -> ExtentInfo {
        ExtentInfo { topic_id: Uuid::from_u128(t), partition: p, position: 0, length: 10, batch_count: 1, offset_count: n, max_timestamp: 0, producer: None }
    }

    #[test]
    fn offsets_are_dense_per_partition_and_unknown_partitions_fail_alone() {
        let key: Arc<str> = Arc::from("k");
        let (plan, _) = plan_commit(
            &key,
            100,
            &[ext(1, 0, 3), ext(1, 1, 2), ext(1, 0, 4), ext(2, 0, 1)],
            0,
            |t, p| (t == Uuid::from_u128(1)).then_some(PartitionOffsets { log_start_offset: 0, next_offset: 10 * i64::from(p) }),
            |_| None,
        );
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
        use crate::object::format::ProducerBatch;
        let key: Arc<str> = Arc::from("k");
        let mut e = ext(1, 0, 5);
        e.producer = Some(ProducerBatch { producer_id: 3, epoch: 0, first_sequence: 0, last_sequence: 4 });
        let mut gap = e;
        gap.producer = Some(ProducerBatch { producer_id: 3, epoch: 0, first_sequence: 9, last_sequence: 9 });
        gap.offset_count = 1;
        let (plan, states) = plan_commit(&key, 100, &[e, e, gap], 7, |_, _| Some(PartitionOffsets { log_start_offset: 0, next_offset: 20 }), |_| None);
        assert!(matches!(plan[0], Ok(Planned::Append(ref r)) if r.base_offset == 20));
        assert_eq!(plan[1], Ok(Planned::Duplicate(20)));
        assert!(matches!(plan[2], Err(ControllerError::OutOfOrderSequence(_))));
        assert_eq!(states[&(3, Uuid::from_u128(1), 0)].batches.len(), 1);
    }
}
