//! Idempotent producers: producer ids and the sequence check made at commit.
//!
//! Kafka's rules (ProducerStateManager): per producer and partition the controller keeps the
//! epoch and the sequence ranges and offsets of the last [`BATCHES_KEPT`] batches. A batch
//! whose range matches one of them is a retry: it is answered with the original offset and not
//! stored again. Otherwise its first sequence must follow the last one (or be 0 in a new epoch);
//! an older epoch is fenced. Producers unknown here (new, or expired) are accepted as they come.

use std::collections::VecDeque;

use uuid::Uuid;

use super::ControllerError;
use crate::format::object::ProducerBatch;

/// An idempotent producer in one partition: (producer id, topic id, partition).
pub type ProducerKey = (i64, Uuid, i32);

/// Batches remembered per producer and partition (Kafka's max.in.flight for idempotence).
pub const BATCHES_KEPT: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
}

/// What the controller remembers of one producer in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerState {
    pub epoch: i16,
    pub batches: VecDeque<SeqBatch>,
    pub last_seen_ms: i64,
}

/// The outcome of the sequence check of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New data: assign offsets and store it.
    Append,
    /// A retry of a stored batch: answer with its base offset, store nothing.
    Duplicate(i64),
}

fn next_sequence(s: i32) -> i32 {
    if s == i32::MAX { 0 } else { s + 1 }
}

/// Checks `batch` against the producer's state in its partition (None: unknown producer).
pub fn check(state: Option<&ProducerState>, batch: &ProducerBatch) -> Result<Verdict, ControllerError> {
    let Some(state) = state else { return Ok(Verdict::Append) };
    if batch.epoch < state.epoch {
        return Err(ControllerError::InvalidProducerEpoch(format!(
            "producer {} epoch {} is older than {}",
            batch.producer_id, batch.epoch, state.epoch
        )));
    }
    if batch.epoch > state.epoch {
        return if batch.first_sequence == 0 {
            Ok(Verdict::Append)
        } else {
            Err(ControllerError::OutOfOrderSequence(format!(
                "producer {} new epoch {} must start at sequence 0, not {}",
                batch.producer_id, batch.epoch, batch.first_sequence
            )))
        };
    }
    if let Some(b) = state.batches.iter().find(|b| b.first_sequence == batch.first_sequence && b.last_sequence == batch.last_sequence) {
        return Ok(Verdict::Duplicate(b.base_offset));
    }
    match state.batches.back() {
        Some(last) if batch.first_sequence != next_sequence(last.last_sequence) => Err(ControllerError::OutOfOrderSequence(format!(
            "producer {}: sequence {} after {}",
            batch.producer_id, batch.first_sequence, last.last_sequence
        ))),
        _ => Ok(Verdict::Append),
    }
}

/// Records an appended batch in the producer's state.
pub fn record(state: &mut ProducerState, batch: &ProducerBatch, base_offset: i64, now_ms: i64) {
    if batch.epoch != state.epoch {
        state.epoch = batch.epoch;
        state.batches.clear();
    }
    if state.batches.len() == BATCHES_KEPT {
        state.batches.pop_front();
    }
    state
        .batches
        .push_back(SeqBatch { first_sequence: batch.first_sequence, last_sequence: batch.last_sequence, base_offset });
    state.last_seen_ms = now_ms;
}

/// `first:last:base` triples, comma separated: how the store keeps the batches.
pub fn encode_batches(batches: &VecDeque<SeqBatch>) -> String {
    batches
        .iter()
        .map(|b| format!("{}:{}:{}", b.first_sequence, b.last_sequence, b.base_offset))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn decode_batches(s: &str) -> Option<VecDeque<SeqBatch>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut it = p.split(':');
            Some(SeqBatch {
                first_sequence: it.next()?.parse().ok()?,
                last_sequence: it.next()?.parse().ok()?,
                base_offset: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(epoch: i16, first: i32, last: i32) -> ProducerBatch {
        ProducerBatch { producer_id: 7, epoch, first_sequence: first, last_sequence: last, transactional: false }
    }

    #[test]
    fn sequences_duplicates_and_epochs_follow_kafka() {
        let mut s = ProducerState::default();
        assert_eq!(check(None, &b(0, 5, 9)), Ok(Verdict::Append)); // unknown producer
        record(&mut s, &b(0, 0, 4), 100, 1);
        assert_eq!(check(Some(&s), &b(0, 5, 9)), Ok(Verdict::Append));
        record(&mut s, &b(0, 5, 9), 105, 2);
        assert_eq!(check(Some(&s), &b(0, 0, 4)), Ok(Verdict::Duplicate(100)));
        assert_eq!(check(Some(&s), &b(0, 5, 9)), Ok(Verdict::Duplicate(105)));
        assert!(matches!(check(Some(&s), &b(0, 11, 12)), Err(ControllerError::OutOfOrderSequence(_))));
        assert!(matches!(check(Some(&s), &b(1, 3, 4)), Err(ControllerError::OutOfOrderSequence(_))));
        assert_eq!(check(Some(&s), &b(1, 0, 0)), Ok(Verdict::Append));
        record(&mut s, &b(1, 0, 0), 110, 3);
        assert!(matches!(check(Some(&s), &b(0, 10, 10)), Err(ControllerError::InvalidProducerEpoch(_))));
        for i in 1..10 {
            record(&mut s, &b(1, i, i), 110 + i64::from(i), 4);
        }
        assert_eq!(s.batches.len(), BATCHES_KEPT);
        assert_eq!(decode_batches(&encode_batches(&s.batches)).unwrap(), s.batches);
        // Sequences wrap after i32::MAX.
        let mut w = ProducerState::default();
        record(&mut w, &b(0, i32::MAX - 1, i32::MAX), 1, 1);
        assert_eq!(check(Some(&w), &b(0, 0, 3)), Ok(Verdict::Append));
    }
}
