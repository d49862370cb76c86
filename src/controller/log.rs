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
use super::store::ExtentRecord;
use crate::object::format::ExtentInfo;

/// What the controller knows of one partition between commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    /// The high watermark: the next offset to assign.
    pub next_offset: i64,
}

/// Plans the offsets of a commit. `lookup` gives a partition's current state, or None if the
/// partition does not exist (its extent then gets an error, the others still commit).
/// Returns, in input order, each extent's record or error.
pub fn plan_commit(
    object_key: &Arc<str>,
    extents: &[ExtentInfo],
    mut lookup: impl FnMut(Uuid, i32) -> Option<PartitionOffsets>,
) -> Vec<Result<ExtentRecord, ControllerError>> {
    let mut next: HashMap<(Uuid, i32), i64> = HashMap::new();
    extents
        .iter()
        .map(|e| {
            if e.offset_count <= 0 {
                return Err(ControllerError::InvalidRequest("extent with no offsets".into()));
            }
            let key = (e.topic_id, e.partition);
            let base = match next.get(&key) {
                Some(n) => *n,
                None => lookup(e.topic_id, e.partition).ok_or(ControllerError::UnknownTopicOrPartition)?.next_offset,
            };
            let end = base + e.offset_count;
            next.insert(key, end);
            Ok(ExtentRecord {
                topic_id: e.topic_id,
                partition: e.partition,
                base_offset: base,
                end_offset: end,
                object_key: object_key.clone(),
                position: e.position,
                length: e.length,
                batch_count: e.batch_count,
                max_timestamp: e.max_timestamp,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(t: u128, p: i32, n: i64) -> ExtentInfo {
        ExtentInfo { topic_id: Uuid::from_u128(t), partition: p, position: 0, length: 10, batch_count: 1, offset_count: n, max_timestamp: 0 }
    }

    #[test]
    fn offsets_are_dense_per_partition_and_unknown_partitions_fail_alone() {
        let key: Arc<str> = Arc::from("k");
        let plan = plan_commit(&key, &[ext(1, 0, 3), ext(1, 1, 2), ext(1, 0, 4), ext(2, 0, 1)], |t, p| {
            (t == Uuid::from_u128(1)).then_some(PartitionOffsets { log_start_offset: 0, next_offset: 10 * i64::from(p) })
        });
        let bases: Vec<_> = plan.iter().map(|r| r.as_ref().map(|e| (e.base_offset, e.end_offset)).ok()).collect();
        assert_eq!(bases, vec![Some((0, 3)), Some((10, 12)), Some((3, 7)), None]);
        assert!(matches!(plan[3], Err(ControllerError::UnknownTopicOrPartition)));
    }
}
