//! One share-partition (KIP-932): which records of a partition a share group has delivered,
//! to whom, how often, and which are done.
//!
//! The state is a window of in-flight records, from the share-partition start offset (SPSO:
//! every record below it is done) to the end offset (the first record never acquired). Each
//! record in the window is:
//!
//! - `Available`: may be acquired (again);
//! - `Acquired` by a member until its lock deadline: the member acknowledges it, or the lock
//!   times out and it becomes available again;
//! - `Acknowledged` (ACCEPT, or a GAP: an offset without a record) or `Archived` (REJECT, or
//!   delivered `delivery_count_limit` times): done.
//!
//! Acquiring a record increments its delivery count. A record whose lock times out or that is
//! released after its last allowed delivery is archived. The window never holds more than
//! `max_record_locks` records, so a stuck record stalls at most that many after it, as in Kafka
//! (`group.share.partition.max.record.locks`).
//!
//! Durable form ([`Durable`]): the start offset and the window as runs of (first, last,
//! delivery count, state), where an acquired record is written as available with its count.
//! After a controller restart, acquisitions are therefore lost (their members are gone too) but
//! no delivery is forgotten: a record is redelivered with the count it had, and one that
//! reached the limit is archived on load.
//!
//! Must not touch: the store, the clock (times come in as arguments), Kafka wire types.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::api::share::{AckBatch, Acquired};

/// Kafka's acknowledgement types (ShareFetch/ShareAcknowledge `AcknowledgeTypes`).
pub const ACK_GAP: i8 = 0;
pub const ACK_ACCEPT: i8 = 1;
pub const ACK_RELEASE: i8 = 2;
pub const ACK_REJECT: i8 = 3;
pub const ACK_RENEW: i8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Available,
    Acquired { member: String, deadline_ms: i64 },
    Acknowledged,
    Archived,
}

impl State {
    fn is_done(&self) -> bool {
        matches!(self, State::Acknowledged | State::Archived)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    state: State,
    delivery_count: i16,
}

/// What acquiring and acknowledging need to know of the group's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub record_lock_duration_ms: i64,
    pub delivery_count_limit: i16,
    pub max_record_locks: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePartition {
    start_offset: i64,
    /// `records[i]` is offset `start_offset + i`; the end offset is `start_offset + len`.
    records: VecDeque<Record>,
    /// Bumped by every reset (AlterShareGroupOffsets), as Kafka's state epoch.
    state_epoch: i32,
}

/// A failed acknowledgement: Kafka's INVALID_RECORD_STATE (or INVALID_REQUEST for a malformed
/// batch), with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckError {
    InvalidRecordState(String),
    InvalidRequest(String),
}

impl SharePartition {
    /// A share-partition that starts delivering at `start_offset`.
    pub fn new(start_offset: i64) -> Self {
        Self { start_offset, records: VecDeque::new(), state_epoch: 0 }
    }

    pub fn start_offset(&self) -> i64 {
        self.start_offset
    }

    pub fn end_offset(&self) -> i64 {
        self.start_offset + self.records.len() as i64
    }

    pub fn state_epoch(&self) -> i32 {
        self.state_epoch
    }

    /// Records in the window that are done (acknowledged or archived): Kafka's lag leaves them out.
    pub fn done_in_window(&self) -> i64 {
        self.records.iter().filter(|r| r.state.is_done()).count() as i64
    }

    fn record_mut(&mut self, offset: i64) -> Option<&mut Record> {
        let i = usize::try_from(offset.checked_sub(self.start_offset)?).ok()?;
        self.records.get_mut(i)
    }

    /// Drops the done records at the front of the window.
    fn advance(&mut self) {
        while self.records.front().is_some_and(|r| r.state.is_done()) {
            self.records.pop_front();
            self.start_offset += 1;
        }
    }

    /// Retention or DeleteRecords moved the log start past records of the window: they are gone.
    fn skip_to(&mut self, log_start: i64) {
        while self.start_offset < log_start {
            if self.records.pop_front().is_none() {
                self.start_offset = log_start;
                return;
            }
            self.start_offset += 1;
        }
    }

    /// Locks whose deadline passed: the record is available again, or archived after its last
    /// allowed delivery. Returns whether anything changed.
    pub fn expire_locks(&mut self, now_ms: i64, limits: &Limits) -> bool {
        let mut changed = false;
        for r in &mut self.records {
            if let State::Acquired { deadline_ms, .. } = r.state
                && deadline_ms <= now_ms
            {
                r.state = if r.delivery_count >= limits.delivery_count_limit { State::Archived } else { State::Available };
                changed = true;
            }
        }
        self.advance();
        changed
    }

    /// The earliest lock deadline in the window.
    pub fn next_lock_deadline_ms(&self) -> Option<i64> {
        self.records
            .iter()
            .filter_map(|r| match r.state {
                State::Acquired { deadline_ms, .. } => Some(deadline_ms),
                _ => None,
            })
            .min()
    }

    /// Acquires up to `max_records` records for `member`, the available ones of the window
    /// first, then new ones below `high_watermark`, as ranges of consecutive offsets with one
    /// delivery count each.
    pub fn acquire(
        &mut self,
        member: &str,
        max_records: usize,
        log_start: i64,
        high_watermark: i64,
        now_ms: i64,
        limits: &Limits,
    ) -> Vec<Acquired> {
        self.expire_locks(now_ms, limits);
        self.skip_to(log_start);
        let deadline_ms = now_ms.saturating_add(limits.record_lock_duration_ms);
        let mut out: Vec<Acquired> = Vec::new();
        let take = |offset: i64, r: &mut Record, out: &mut Vec<Acquired>| {
            r.delivery_count = r.delivery_count.saturating_add(1);
            r.state = State::Acquired { member: member.to_string(), deadline_ms };
            match out.last_mut() {
                Some(last) if last.last_offset + 1 == offset && last.delivery_count == r.delivery_count => last.last_offset = offset,
                _ => out.push(Acquired { first_offset: offset, last_offset: offset, delivery_count: r.delivery_count }),
            }
        };
        let mut count = 0;
        let start = self.start_offset;
        for (i, r) in self.records.iter_mut().enumerate() {
            if count == max_records {
                break;
            }
            if r.state == State::Available {
                take(start + i as i64, r, &mut out);
                count += 1;
            }
        }
        while count < max_records && self.end_offset() < high_watermark && self.records.len() < limits.max_record_locks {
            let offset = self.end_offset();
            self.records.push_back(Record { state: State::Available, delivery_count: 0 });
            let r = self.records.back_mut().expect("just pushed");
            take(offset, r, &mut out);
            count += 1;
        }
        out
    }

    /// Gives back records acquired by `member` that it was never sent (a fetch answer that
    /// could not hold them): available again, this delivery not counted.
    pub fn unacquire(&mut self, member: &str, first_offset: i64, last_offset: i64) {
        for offset in first_offset..=last_offset {
            if let Some(r) = self.record_mut(offset)
                && matches!(&r.state, State::Acquired { member: m, .. } if m == member)
            {
                r.state = State::Available;
                r.delivery_count = r.delivery_count.saturating_sub(1);
            }
        }
    }

    /// Applies one acknowledgement batch of `member`: every offset must be acquired by it
    /// (else nothing of the batch is applied). `types` holds one type for the whole range or
    /// one per offset.
    pub fn acknowledge(&mut self, member: &str, batch: &AckBatch, now_ms: i64, limits: &Limits) -> Result<(), AckError> {
        let (first, last) = (batch.first_offset, batch.last_offset);
        let len = last
            .checked_sub(first)
            .and_then(|d| d.checked_add(1))
            .filter(|&n| n > 0)
            .ok_or_else(|| AckError::InvalidRequest(format!("acknowledgement batch [{first}, {last}] is empty or reversed")))?;
        if batch.types.len() != 1 && batch.types.len() as i64 != len {
            return Err(AckError::InvalidRequest(format!(
                "acknowledgement batch [{first}, {last}] has {} types for {len} offsets",
                batch.types.len()
            )));
        }
        if let Some(t) = batch.types.iter().find(|t| !(ACK_GAP..=ACK_RENEW).contains(*t)) {
            return Err(AckError::InvalidRequest(format!("unknown acknowledge type {t}")));
        }
        let type_of = |offset: i64| if batch.types.len() == 1 { batch.types[0] } else { batch.types[(offset - first) as usize] };
        for offset in first..=last {
            let held = self.record_mut(offset).is_some_and(|r| matches!(&r.state, State::Acquired { member: m, .. } if m == member));
            if !held {
                return Err(AckError::InvalidRecordState(format!("offset {offset} is not acquired by this member")));
            }
        }
        let deadline_ms = now_ms.saturating_add(limits.record_lock_duration_ms);
        for offset in first..=last {
            let t = type_of(offset);
            let r = self.record_mut(offset).expect("checked above");
            r.state = match t {
                ACK_GAP | ACK_ACCEPT => State::Acknowledged,
                ACK_REJECT => State::Archived,
                ACK_RELEASE if r.delivery_count >= limits.delivery_count_limit => State::Archived,
                ACK_RELEASE => State::Available,
                _ => State::Acquired { member: member.to_string(), deadline_ms },
            };
        }
        self.advance();
        Ok(())
    }

    /// Every record `member` holds becomes available again (archived after its last allowed
    /// delivery): the member left or its session expired. Returns whether any did.
    pub fn release_member(&mut self, member: &str, limits: &Limits) -> bool {
        let mut changed = false;
        for r in &mut self.records {
            if matches!(&r.state, State::Acquired { member: m, .. } if m == member) {
                r.state = if r.delivery_count >= limits.delivery_count_limit { State::Archived } else { State::Available };
                changed = true;
            }
        }
        self.advance();
        changed
    }

    /// AlterShareGroupOffsets: delivery starts again at `offset`, with nothing in flight.
    pub fn reset(&mut self, offset: i64) {
        self.start_offset = offset;
        self.records.clear();
        self.state_epoch = self.state_epoch.saturating_add(1);
    }

    /// The durable form: acquired records are written as available with their count.
    pub fn durable(&self) -> Durable {
        let mut runs: Vec<Run> = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            let offset = self.start_offset + i as i64;
            let state = match r.state {
                State::Available | State::Acquired { .. } => DURABLE_AVAILABLE,
                State::Acknowledged => DURABLE_ACKNOWLEDGED,
                State::Archived => DURABLE_ARCHIVED,
            };
            match runs.last_mut() {
                Some(run) if run.last + 1 == offset && run.state == state && run.count == r.delivery_count => run.last = offset,
                _ => runs.push(Run { first: offset, last: offset, count: r.delivery_count, state }),
            }
        }
        Durable { start_offset: self.start_offset, state_epoch: self.state_epoch, runs }
    }

    /// Back from the durable form; records delivered `delivery_count_limit` times are archived.
    pub fn from_durable(d: &Durable, delivery_count_limit: i16) -> Result<Self, String> {
        let mut p = SharePartition { start_offset: d.start_offset, records: VecDeque::new(), state_epoch: d.state_epoch };
        for run in &d.runs {
            if run.first != p.end_offset() || run.last < run.first {
                return Err(format!("run [{}, {}] does not follow offset {}", run.first, run.last, p.end_offset()));
            }
            let state = match run.state {
                DURABLE_AVAILABLE if run.count >= delivery_count_limit => State::Archived,
                DURABLE_AVAILABLE => State::Available,
                DURABLE_ACKNOWLEDGED => State::Acknowledged,
                DURABLE_ARCHIVED => State::Archived,
                s => return Err(format!("unknown record state {s}")),
            };
            for _ in run.first..=run.last {
                p.records.push_back(Record { state: state.clone(), delivery_count: run.count });
            }
        }
        p.advance();
        Ok(p)
    }
}

/// Kafka's record state codes (as its share coordinator persists them).
const DURABLE_AVAILABLE: i8 = 0;
const DURABLE_ACKNOWLEDGED: i8 = 2;
const DURABLE_ARCHIVED: i8 = 4;

/// Consecutive records with one state and delivery count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub first: i64,
    pub last: i64,
    pub count: i16,
    pub state: i8,
}

/// A share-partition as the store keeps it (JSON in `share_partitions.body`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    pub start_offset: i64,
    #[serde(default)]
    pub state_epoch: i32,
    #[serde(default)]
    pub runs: Vec<Run>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { record_lock_duration_ms: 30_000, delivery_count_limit: 3, max_record_locks: 10 };

    fn ack(first: i64, last: i64, t: i8) -> AckBatch {
        AckBatch { first_offset: first, last_offset: last, types: vec![t] }
    }

    fn ranges(a: &[Acquired]) -> Vec<(i64, i64, i16)> {
        a.iter().map(|a| (a.first_offset, a.last_offset, a.delivery_count)).collect()
    }

    #[test]
    fn acquires_new_records_up_to_the_limits() {
        let mut p = SharePartition::new(0);
        assert_eq!(ranges(&p.acquire("a", 4, 0, 100, 0, &LIMITS)), vec![(0, 3, 1)]);
        assert_eq!(ranges(&p.acquire("b", 100, 0, 100, 0, &LIMITS)), vec![(4, 9, 1)], "the window holds max_record_locks");
        assert!(p.acquire("c", 100, 0, 100, 0, &LIMITS).is_empty());
        assert_eq!(p.end_offset(), 10);
    }

    #[test]
    fn accept_moves_the_start_offset_and_release_redelivers_with_a_higher_count() {
        let mut p = SharePartition::new(5);
        p.acquire("a", 10, 0, 10, 0, &LIMITS);
        p.acknowledge("a", &ack(5, 6, ACK_ACCEPT), 0, &LIMITS).unwrap();
        assert_eq!(p.start_offset(), 7);
        p.acknowledge("a", &ack(8, 8, ACK_RELEASE), 0, &LIMITS).unwrap();
        assert_eq!(ranges(&p.acquire("b", 10, 0, 10, 0, &LIMITS)), vec![(8, 8, 2)]);
        assert_eq!(
            p.acknowledge("b", &ack(7, 7, ACK_ACCEPT), 0, &LIMITS),
            Err(AckError::InvalidRecordState("offset 7 is not acquired by this member".into())),
            "a member acknowledges only what it holds"
        );
    }

    #[test]
    fn the_delivery_limit_archives_and_reject_archives_at_once() {
        let mut p = SharePartition::new(0);
        for n in 1..=3 {
            assert_eq!(ranges(&p.acquire("a", 1, 0, 1, 0, &LIMITS)), vec![(0, 0, n)]);
            p.acknowledge("a", &ack(0, 0, ACK_RELEASE), 0, &LIMITS).unwrap();
        }
        assert_eq!(p.start_offset(), 1, "released after its third delivery: archived");
        p.acquire("a", 1, 0, 2, 0, &LIMITS);
        p.acknowledge("a", &ack(1, 1, ACK_REJECT), 0, &LIMITS).unwrap();
        assert_eq!(p.start_offset(), 2);
    }

    #[test]
    fn locks_time_out_and_renew_extends_them() {
        let mut p = SharePartition::new(0);
        p.acquire("a", 2, 0, 2, 0, &LIMITS);
        p.acknowledge("a", &ack(1, 1, ACK_RENEW), 20_000, &LIMITS).unwrap();
        assert_eq!(p.next_lock_deadline_ms(), Some(30_000));
        assert_eq!(ranges(&p.acquire("b", 10, 0, 2, 30_000, &LIMITS)), vec![(0, 0, 2)], "offset 0's lock timed out, 1 was renewed");
        assert_eq!(ranges(&p.acquire("b", 10, 0, 2, 50_000, &LIMITS)), vec![(1, 1, 2)]);
    }

    #[test]
    fn per_offset_types_gaps_and_bad_batches() {
        let mut p = SharePartition::new(0);
        p.acquire("a", 3, 0, 3, 0, &LIMITS);
        let b = AckBatch { first_offset: 0, last_offset: 2, types: vec![ACK_ACCEPT, ACK_GAP, ACK_RELEASE] };
        p.acknowledge("a", &b, 0, &LIMITS).unwrap();
        assert_eq!(p.start_offset(), 2);
        let bad = AckBatch { first_offset: 2, last_offset: 2, types: vec![1, 1] };
        assert!(matches!(p.acknowledge("a", &bad, 0, &LIMITS), Err(AckError::InvalidRequest(_))));
        assert!(matches!(p.acknowledge("a", &ack(3, 2, 1), 0, &LIMITS), Err(AckError::InvalidRequest(_))));
        assert!(matches!(p.acknowledge("a", &ack(2, 2, 9), 0, &LIMITS), Err(AckError::InvalidRequest(_))));
        assert!(matches!(p.acknowledge("a", &ack(i64::MIN, i64::MAX, 1), 0, &LIMITS), Err(AckError::InvalidRequest(_))));
    }

    #[test]
    fn a_leaving_member_releases_and_unacquire_does_not_count() {
        let mut p = SharePartition::new(0);
        p.acquire("a", 2, 0, 4, 0, &LIMITS);
        p.acquire("b", 2, 0, 4, 0, &LIMITS);
        p.unacquire("b", 3, 3);
        assert!(p.release_member("a", &LIMITS));
        assert_eq!(ranges(&p.acquire("c", 10, 0, 4, 0, &LIMITS)), vec![(0, 1, 2), (3, 3, 1)]);
    }

    #[test]
    fn retention_skips_records_and_reset_starts_over() {
        let mut p = SharePartition::new(0);
        p.acquire("a", 2, 0, 4, 0, &LIMITS);
        assert_eq!(ranges(&p.acquire("a", 10, 3, 6, 0, &LIMITS)), vec![(3, 5, 1)]);
        p.reset(100);
        assert_eq!((p.start_offset(), p.end_offset(), p.state_epoch()), (100, 100, 1));
    }

    #[test]
    fn the_durable_form_keeps_counts_and_forgets_acquisitions() {
        let mut p = SharePartition::new(10);
        p.acquire("a", 5, 0, 20, 0, &LIMITS);
        p.acknowledge("a", &ack(11, 11, ACK_ACCEPT), 0, &LIMITS).unwrap();
        p.acknowledge("a", &ack(12, 12, ACK_REJECT), 0, &LIMITS).unwrap();
        let d = p.durable();
        assert_eq!(
            d.runs,
            vec![
                Run { first: 10, last: 10, count: 1, state: 0 },
                Run { first: 11, last: 11, count: 1, state: 2 },
                Run { first: 12, last: 12, count: 1, state: 4 },
                Run { first: 13, last: 14, count: 1, state: 0 },
            ]
        );
        let json = serde_json::to_string(&d).unwrap();
        let mut back = SharePartition::from_durable(&serde_json::from_str(&json).unwrap(), 3).unwrap();
        assert_eq!(ranges(&back.acquire("b", 10, 0, 15, 0, &LIMITS)), vec![(10, 10, 2), (13, 14, 2)]);
        let at_limit = Durable { start_offset: 0, state_epoch: 0, runs: vec![Run { first: 0, last: 1, count: 3, state: 0 }] };
        assert_eq!(SharePartition::from_durable(&at_limit, 3).unwrap().start_offset(), 2, "delivered to the limit: archived");
        let gap = Durable { start_offset: 0, state_epoch: 0, runs: vec![Run { first: 1, last: 1, count: 1, state: 0 }] };
        assert!(SharePartition::from_durable(&gap, 3).is_err());
    }
}
