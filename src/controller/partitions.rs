//! CreatePartitions: Kafka's checks on growing a topic (KRaft's
//! `ReplicationControlManager.createPartitions` and `validateManualPartitionAssignment`), in its
//! order and with its messages, as a pure function: how many partitions a request adds, or why
//! it adds none.
//!
//! A topic's partition count only grows: a smaller or equal count is refused here, and the
//! controller applies a plan under its write lock, from the count the plan was made against.
//!
//! Must not touch: the store, the controller's state (the caller checks the cluster's limits
//! and applies the plan).

use crate::api::{ControllerError, CreatePartitions};

/// Partitions one request may add to one topic (Kafka's `MAX_PARTITIONS_PER_BATCH`: more is
/// POLICY_VIOLATION, whatever the other limits say).
pub const ADDED_PARTITIONS_PER_REQUEST_MAX: i64 = 10_000;

/// Replicas of every partition as clients are told them (the leader alone): what a manual
/// assignment's replica lists must match, as Kafka matches them with the topic's first partition.
const REPLICAS_PER_PARTITION: usize = 1;

/// The number of partitions `req` adds to topic `name` of `current` partitions, after Kafka's
/// checks: the count must grow, by at most [`ADDED_PARTITIONS_PER_REQUEST_MAX`], and a manual
/// assignment must give each new partition a non-empty list of distinct registered brokers
/// (`req.brokers`), as many as the existing partitions have.
pub fn added(name: &str, current: i32, req: &CreatePartitions) -> Result<i32, ControllerError> {
    if req.count == current {
        return Err(ControllerError::InvalidPartitions(format!("Topic already has {current} partition(s).")));
    }
    if req.count < current {
        return Err(ControllerError::InvalidPartitions(format!(
            "The topic {name} currently has {current} partition(s); {} would not be an increase.",
            req.count
        )));
    }
    let added = i64::from(req.count) - i64::from(current);
    if added > ADDED_PARTITIONS_PER_REQUEST_MAX {
        return Err(ControllerError::PolicyViolation("Excessively large number of additional partitions per request.".into()));
    }
    if let Some(assignments) = &req.assignments {
        if assignments.len() as i64 != added {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "Attempted to add {added} additional partition(s), but only {} assignment(s) were specified.",
                assignments.len()
            )));
        }
        for replicas in assignments {
            check_assignment(replicas, &req.brokers)?;
        }
    }
    let added = i32::try_from(added).unwrap_or(i32::MAX);
    assert!(added > 0, "a plan that does not grow {name}");
    Ok(added)
}

/// Kafka's `validateManualPartitionAssignment`: the replica list sorted, each broker registered
/// and named once, then the replica count.
fn check_assignment(replicas: &[i32], brokers: &[i32]) -> Result<(), ControllerError> {
    let refuse = |why: String| Err(ControllerError::InvalidReplicaAssignment(format!("The manual partition assignment includes {why}")));
    if replicas.is_empty() {
        return refuse("an empty replica list.".into());
    }
    let mut sorted = replicas.to_vec();
    sorted.sort_unstable();
    let mut previous = None;
    for &broker in &sorted {
        if !brokers.contains(&broker) {
            return refuse(format!("broker {broker}, but no such broker is registered."));
        }
        if previous == Some(broker) {
            return refuse(format!("the broker {broker} more than once."));
        }
        previous = Some(broker);
    }
    if sorted.len() != REPLICAS_PER_PARTITION {
        return refuse(format!(
            "a partition with {} replica(s), but this is not consistent with previous partitions, which have \
             {REPLICAS_PER_PARTITION} replica(s).",
            sorted.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(count: i32, assignments: Option<Vec<Vec<i32>>>) -> CreatePartitions {
        CreatePartitions { name: "t".into(), count, assignments, brokers: vec![1, 3], validate_only: false }
    }

    /// The refusal's Kafka error code (INVALID_PARTITIONS 37, INVALID_REPLICA_ASSIGNMENT 39,
    /// POLICY_VIOLATION 44) and message.
    fn refused(current: i32, r: CreatePartitions) -> (i16, String) {
        let e = added("t", current, &r).unwrap_err();
        let code = match &e {
            ControllerError::InvalidPartitions(_) => 37,
            ControllerError::InvalidReplicaAssignment(_) => 39,
            ControllerError::PolicyViolation(_) => 44,
            other => panic!("{other:?}"),
        };
        (code, e.to_string())
    }

    /// The answers of a Kafka 4.4 broker to the same requests (codes and messages).
    #[test]
    fn counts_are_checked_as_kafka_checks_them() {
        assert_eq!(added("t", 3, &req(6, None)).unwrap(), 3);
        assert_eq!(refused(3, req(3, None)), (37, "Topic already has 3 partition(s).".into()));
        assert_eq!(refused(3, req(2, None)), (37, "The topic t currently has 3 partition(s); 2 would not be an increase.".into()));
        assert_eq!(refused(3, req(-1, None)).1, "The topic t currently has 3 partition(s); -1 would not be an increase.");
        assert_eq!(added("t", 3, &req(10_003, None)).unwrap(), 10_000);
        let too_many = (44, "Excessively large number of additional partitions per request.".to_string());
        assert_eq!(refused(3, req(10_004, None)), too_many);
        assert_eq!(refused(3, req(i32::MAX, Some(vec![vec![1]]))), too_many, "before the assignment's checks");
        // A smaller count is refused before anything about its assignment.
        assert_eq!(refused(3, req(1, Some(vec![vec![9]]))).0, 37);
    }

    #[test]
    fn manual_assignments_are_checked_as_kafka_checks_them() {
        assert_eq!(added("t", 3, &req(5, Some(vec![vec![1], vec![3]]))).unwrap(), 2);
        let cases: [(Vec<Vec<i32>>, &str); 8] = [
            (vec![], "Attempted to add 2 additional partition(s), but only 0 assignment(s) were specified."),
            (vec![vec![1]], "Attempted to add 2 additional partition(s), but only 1 assignment(s) were specified."),
            (vec![vec![1]; 3], "Attempted to add 2 additional partition(s), but only 3 assignment(s) were specified."),
            (vec![vec![1], vec![]], "The manual partition assignment includes an empty replica list."),
            (vec![vec![2], vec![1]], "The manual partition assignment includes broker 2, but no such broker is registered."),
            (vec![vec![-1], vec![1]], "The manual partition assignment includes broker -1, but no such broker is registered."),
            // Sorted first: the repeated 1 comes before the unknown 2.
            (vec![vec![1], vec![2, 1, 1]], "The manual partition assignment includes the broker 1 more than once."),
            (
                vec![vec![1], vec![3, 1]],
                "The manual partition assignment includes a partition with 2 replica(s), but this is not consistent with \
                 previous partitions, which have 1 replica(s).",
            ),
        ];
        for (assignments, message) in cases {
            assert_eq!(refused(3, req(5, Some(assignments.clone()))), (39, message.to_string()), "{assignments:?}");
        }
    }
}
