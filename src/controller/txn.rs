//! Transactions: the transaction coordinator's state machine (Kafka's TransactionMetadata) and
//! the controller methods behind the transactional APIs.
//!
//! One [`Transaction`] per transactional id: its producer id and epoch, its timeout, its status
//! and what the ongoing transaction covers (partitions, consumer groups and their pending
//! offsets). Transitions follow Kafka:
//!
//! ```text
//! Empty/Complete* --AddPartitions/AddOffsets--> Ongoing --EndTxn--> PrepareCommit|PrepareAbort
//!     ^                                            |  timeout or fencing InitProducerId: epoch+1
//!     |                                            +--------------------> PrepareAbort
//!     +---- markers committed (one control batch per partition, one object) ----+
//! ```
//! A Prepare* transaction is finished by committing a marker object (`CommitRequest::txn_end`):
//! in that one store transaction the markers get offsets after the transaction's data, every
//! partition's open transaction closes (an abort is added to the aborted index), the
//! transaction becomes Complete*, and a commit's pending group offsets become committed.
//! Writing the markers is the agent's job (`agent::txn`), as objects are.
//!
//! Must not touch: Kafka wire types, object bytes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::groups::CommitOffset;
use super::{Controller, ControllerError};

/// Kafka's transaction.max.timeout.ms default: longer timeouts are refused.
pub const TRANSACTION_TIMEOUT_MS_MAX: i32 = 900_000;
/// A Prepare* transaction whose markers were not committed for this long (a crash, a failed
/// PUT) is handed to the agent's timer again.
pub const MARKER_RETRY_MS: i64 = 2_000;
/// Transactions (ongoing or not) kept per controller; InitProducerId beyond it is refused.
pub const TRANSACTIONS_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    /// Kafka's state names (DescribeTransactions, ListTransactions filters).
    pub fn kafka_name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }

    fn preparing(self) -> bool {
        matches!(self, TxnStatus::PrepareCommit | TxnStatus::PrepareAbort)
    }
}

/// One transactional id's coordinator state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    /// The epoch before the last bump (-1: none): a retried InitProducerId naming it gets the
    /// current epoch again (KIP-360).
    pub last_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    pub partitions: BTreeSet<(Uuid, i32)>,
    /// Consumer groups added with AddOffsetsToTxn, with the offsets TxnOffsetCommit sent.
    pub groups: BTreeMap<String, Vec<CommitOffset>>,
    /// When the ongoing transaction started (its timeout counts from here).
    pub started_ms: i64,
    pub updated_ms: i64,
}

/// The markers a Prepare* transaction needs: one control batch per partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnEnd {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The epoch written in the markers (bumped when the coordinator aborts on its own).
    pub epoch: i16,
    pub commit: bool,
    pub partitions: Vec<(Uuid, i32)>,
}

/// What InitProducerId with a transactional id gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnInit {
    Ready { producer_id: i64, epoch: i16 },
    /// A previous transaction must be finished first: write these markers, then ask again.
    Finish(TxnEnd),
}

impl Transaction {
    fn end(&self) -> TxnEnd {
        TxnEnd {
            transactional_id: self.transactional_id.clone(),
            producer_id: self.producer_id,
            epoch: self.epoch,
            commit: self.status == TxnStatus::PrepareCommit,
            partitions: self.partitions.iter().copied().collect(),
        }
    }

    /// The request's producer must be this transaction's current one.
    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), ControllerError> {
        if producer_id != self.producer_id {
            return Err(ControllerError::InvalidProducerIdMapping(format!(
                "{} belongs to producer {}, not {producer_id}",
                self.transactional_id, self.producer_id
            )));
        }
        if epoch != self.epoch {
            return Err(ControllerError::ProducerFenced(format!(
                "{}: epoch {epoch} is not the current epoch {}",
                self.transactional_id, self.epoch
            )));
        }
        Ok(())
    }

    /// Starts (or continues) the ongoing transaction: AddPartitionsToTxn, AddOffsetsToTxn.
    fn begin(&mut self, now_ms: i64) -> Result<(), ControllerError> {
        match self.status {
            TxnStatus::Ongoing => {}
            s if s.preparing() => {
                return Err(ControllerError::ConcurrentTransactions(format!(
                    "{} is completing its previous transaction",
                    self.transactional_id
                )));
            }
            _ => {
                self.status = TxnStatus::Ongoing;
                self.partitions.clear();
                self.groups.clear();
                self.started_ms = now_ms;
            }
        }
        self.updated_ms = now_ms;
        Ok(())
    }

    /// Bumps the epoch (a new producer id when the epoch is exhausted), fencing the current one.
    fn bump_epoch(&mut self, new_producer_id: impl FnOnce() -> Result<i64, ControllerError>) -> Result<(), ControllerError> {
        if self.epoch >= i16::MAX - 1 {
            self.producer_id = new_producer_id()?;
            self.epoch = 0;
            self.last_epoch = -1;
        } else {
            self.last_epoch = self.epoch;
            self.epoch += 1;
        }
        Ok(())
    }
}

/// InitProducerId for a transactional id (pure). `existing`: the current state; `expected`:
/// the producer id and epoch the client sends (-1, -1: a new producer). Returns the new state
/// and the answer.
pub fn init(
    existing: Option<&Transaction>,
    transactional_id: &str,
    timeout_ms: i32,
    expected: (i64, i16),
    now_ms: i64,
    mut new_producer_id: impl FnMut() -> Result<i64, ControllerError>,
) -> Result<(Transaction, TxnInit), ControllerError> {
    if timeout_ms <= 0 || timeout_ms > TRANSACTION_TIMEOUT_MS_MAX {
        return Err(ControllerError::InvalidTransactionTimeout(format!(
            "transaction.timeout.ms={timeout_ms} must be in 1..={TRANSACTION_TIMEOUT_MS_MAX}"
        )));
    }
    let Some(t) = existing else {
        let t = Transaction {
            transactional_id: transactional_id.to_string(),
            producer_id: new_producer_id()?,
            epoch: 0,
            last_epoch: -1,
            timeout_ms,
            status: TxnStatus::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeMap::new(),
            started_ms: now_ms,
            updated_ms: now_ms,
        };
        let ready = TxnInit::Ready { producer_id: t.producer_id, epoch: t.epoch };
        return Ok((t, ready));
    };
    let mut t = t.clone();
    if expected.0 >= 0 {
        // KIP-360: a known producer asks for a bump. A retry of a bump that already happened
        // gets the same answer; anything else is a zombie.
        if expected.0 == t.producer_id && expected.1 == t.last_epoch && !matches!(t.status, TxnStatus::Ongoing) {
            let ready = TxnInit::Ready { producer_id: t.producer_id, epoch: t.epoch };
            return Ok((t, ready));
        }
        if expected.0 != t.producer_id || expected.1 != t.epoch {
            return Err(ControllerError::ProducerFenced(format!(
                "{transactional_id}: producer {} epoch {} is not the current one",
                expected.0, expected.1
            )));
        }
    }
    match t.status {
        TxnStatus::Ongoing => {
            // Fence the current producer and abort what it left open.
            t.bump_epoch(&mut new_producer_id)?;
            t.status = TxnStatus::PrepareAbort;
            t.updated_ms = now_ms;
            let end = t.end();
            Ok((t, TxnInit::Finish(end)))
        }
        s if s.preparing() => {
            let end = t.end();
            Ok((t, TxnInit::Finish(end)))
        }
        _ => {
            t.bump_epoch(&mut new_producer_id)?;
            t.timeout_ms = timeout_ms;
            t.status = TxnStatus::Empty;
            t.partitions.clear();
            t.groups.clear();
            t.updated_ms = now_ms;
            let ready = TxnInit::Ready { producer_id: t.producer_id, epoch: t.epoch };
            Ok((t, ready))
        }
    }
}

/// EndTxn (pure): the markers to write, or None when a retried EndTxn finds its outcome done.
pub fn end(t: &mut Transaction, producer_id: i64, epoch: i16, commit: bool, now_ms: i64) -> Result<Option<TxnEnd>, ControllerError> {
    t.check_producer(producer_id, epoch)?;
    let wanted = if commit { TxnStatus::PrepareCommit } else { TxnStatus::PrepareAbort };
    let done = if commit { TxnStatus::CompleteCommit } else { TxnStatus::CompleteAbort };
    match t.status {
        TxnStatus::Ongoing => {
            t.status = wanted;
            t.updated_ms = now_ms;
            Ok(Some(t.end()))
        }
        s if s == wanted => Ok(Some(t.end())),
        s if s == done => Ok(None),
        s => Err(ControllerError::InvalidTxnState(format!(
            "{}: cannot {} a transaction in state {}",
            t.transactional_id,
            if commit { "commit" } else { "abort" },
            s.kafka_name()
        ))),
    }
}

/// The coordinator's own abort of a transaction older than its timeout (pure): bumps the
/// epoch so the producer is fenced, as Kafka does.
pub fn expire(t: &mut Transaction, now_ms: i64, new_producer_id: impl FnOnce() -> Result<i64, ControllerError>) -> Result<Option<TxnEnd>, ControllerError> {
    if t.status != TxnStatus::Ongoing || now_ms - t.started_ms <= i64::from(t.timeout_ms) {
        return Ok(None);
    }
    t.bump_epoch(new_producer_id)?;
    t.status = TxnStatus::PrepareAbort;
    t.updated_ms = now_ms;
    Ok(Some(t.end()))
}

/// Marks a Prepare* transaction complete once its markers are committed; returns the group
/// offsets that become committed (none for an abort).
pub fn complete(t: &mut Transaction, now_ms: i64) -> BTreeMap<String, Vec<CommitOffset>> {
    let offsets = std::mem::take(&mut t.groups);
    let committed = t.status == TxnStatus::PrepareCommit;
    t.status = if committed { TxnStatus::CompleteCommit } else { TxnStatus::CompleteAbort };
    t.partitions.clear();
    t.updated_ms = now_ms;
    if committed { offsets } else { BTreeMap::new() }
}

/// How a transaction is stored: one JSON document per transactional id.
#[derive(Serialize, Deserialize)]
struct Stored {
    producer_id: i64,
    epoch: i16,
    last_epoch: i16,
    timeout_ms: i32,
    status: TxnStatus,
    partitions: Vec<(String, i32)>,
    groups: Vec<(String, Vec<(String, i32, i64, i32, String)>)>,
    started_ms: i64,
    updated_ms: i64,
}

pub fn encode(t: &Transaction) -> String {
    let s = Stored {
        producer_id: t.producer_id,
        epoch: t.epoch,
        last_epoch: t.last_epoch,
        timeout_ms: t.timeout_ms,
        status: t.status,
        partitions: t.partitions.iter().map(|(id, p)| (id.to_string(), *p)).collect(),
        groups: t
            .groups
            .iter()
            .map(|(g, os)| {
                (g.clone(), os.iter().map(|o| (o.topic.clone(), o.partition, o.offset, o.leader_epoch, o.metadata.clone())).collect())
            })
            .collect(),
        started_ms: t.started_ms,
        updated_ms: t.updated_ms,
    };
    serde_json::to_string(&s).unwrap_or_default()
}

pub fn decode(transactional_id: &str, body: &str) -> Option<Transaction> {
    let s: Stored = serde_json::from_str(body).ok()?;
    Some(Transaction {
        transactional_id: transactional_id.to_string(),
        producer_id: s.producer_id,
        epoch: s.epoch,
        last_epoch: s.last_epoch,
        timeout_ms: s.timeout_ms,
        status: s.status,
        partitions: s.partitions.iter().map(|(id, p)| Some((id.parse().ok()?, *p))).collect::<Option<_>>()?,
        groups: s
            .groups
            .into_iter()
            .map(|(g, os)| {
                let os = os
                    .into_iter()
                    .map(|(topic, partition, offset, leader_epoch, metadata)| CommitOffset { topic, partition, offset, leader_epoch, metadata })
                    .collect();
                (g, os)
            })
            .collect(),
        started_ms: s.started_ms,
        updated_ms: s.updated_ms,
    })
}

/// One transaction as DescribeTransactions and ListTransactions show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnDescription {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    pub status: TxnStatus,
    pub timeout_ms: i32,
    pub started_ms: i64,
    /// Topic names and partitions.
    pub partitions: Vec<(String, i32)>,
}

fn check_transactional_id(id: &str) -> Result<(), ControllerError> {
    if id.is_empty() {
        return Err(ControllerError::InvalidRequest("empty transactional id".into()));
    }
    Ok(())
}

impl Controller {
    fn transaction(&self, id: &str) -> Option<Transaction> {
        self.read().transactions.get(id).cloned()
    }

    /// Writes a transaction's new state to the store, then to memory (caller holds write_lock).
    fn save_transaction(&self, t: Transaction) -> Result<(), ControllerError> {
        self.store.put_transaction(&t.transactional_id, &encode(&t))?;
        let mut s = self.write();
        s.txn_of.insert(t.producer_id, t.transactional_id.clone());
        s.transactions.insert(t.transactional_id.clone(), t);
        Ok(())
    }

    /// Blocking. InitProducerId with a transactional id.
    pub fn init_transactional_producer(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: (i64, i16),
    ) -> Result<TxnInit, ControllerError> {
        check_transactional_id(transactional_id)?;
        let _w = self.lock_writes();
        let existing = self.transaction(transactional_id);
        if existing.is_none() && self.read().transactions.len() >= TRANSACTIONS_MAX {
            return Err(ControllerError::Unavailable(format!("more than {TRANSACTIONS_MAX} transactional ids")));
        }
        let (t, answer) = init(existing.as_ref(), transactional_id, timeout_ms, expected, self.clock.now_ms(), || {
            Ok(self.store.allocate_producer_id()?)
        })?;
        if existing.as_ref() != Some(&t) {
            self.save_transaction(t)?;
        }
        Ok(answer)
    }

    /// Blocking. AddPartitionsToTxn: one result per partition, in order. When one partition is
    /// refused, the others get OPERATION_NOT_ATTEMPTED, as in Kafka. `verify_only`: checks
    /// that every partition is already in the ongoing transaction (KIP-890 verification).
    pub fn add_partitions_to_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        verify_only: bool,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        check_transactional_id(transactional_id)?;
        let _w = self.lock_writes();
        let mut t = self.transaction(transactional_id).ok_or_else(|| {
            ControllerError::InvalidProducerIdMapping(format!("unknown transactional id {transactional_id}"))
        })?;
        t.check_producer(producer_id, epoch)?;
        let resolved: Vec<Result<(Uuid, i32), ControllerError>> = partitions
            .iter()
            .map(|(topic, p)| match self.topic(super::TopicRef::Name(topic)) {
                Some(m) if (0..m.partitions).contains(p) => Ok((m.id, *p)),
                _ => Err(ControllerError::UnknownTopicOrPartition),
            })
            .collect();
        if verify_only {
            return Ok(resolved
                .into_iter()
                .map(|r| {
                    let tp = r?;
                    if t.status == TxnStatus::Ongoing && t.partitions.contains(&tp) {
                        Ok(())
                    } else {
                        Err(ControllerError::InvalidTxnState(format!("partition not in the transaction of {transactional_id}")))
                    }
                })
                .collect());
        }
        if resolved.iter().any(|r| r.is_err()) {
            return Ok(resolved
                .into_iter()
                .map(|r| r.and(Err(ControllerError::OperationNotAttempted)))
                .collect());
        }
        let before = t.clone();
        t.begin(self.clock.now_ms())?;
        t.partitions.extend(resolved.iter().filter_map(|r| r.as_ref().ok().copied()));
        if t.partitions != before.partitions || t.status != before.status {
            self.save_transaction(t)?;
        }
        Ok(resolved.into_iter().map(|r| r.map(|_| ())).collect())
    }

    /// Blocking. AddOffsetsToTxn: the group's offsets will be committed with the transaction.
    pub fn add_offsets_to_txn(&self, transactional_id: &str, producer_id: i64, epoch: i16, group_id: &str) -> Result<(), ControllerError> {
        check_transactional_id(transactional_id)?;
        let _w = self.lock_writes();
        let mut t = self.transaction(transactional_id).ok_or_else(|| {
            ControllerError::InvalidProducerIdMapping(format!("unknown transactional id {transactional_id}"))
        })?;
        t.check_producer(producer_id, epoch)?;
        let before = t.clone();
        t.begin(self.clock.now_ms())?;
        t.groups.entry(group_id.to_string()).or_default();
        if t != before {
            self.save_transaction(t)?;
        }
        Ok(())
    }

    /// Blocking. TxnOffsetCommit: remembers the offsets in the transaction; they become the
    /// group's committed offsets when (and only if) it commits. Per-offset results.
    pub fn txn_offset_commit(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group_id: &str,
        offsets: Vec<CommitOffset>,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        check_transactional_id(transactional_id)?;
        let _w = self.lock_writes();
        let mut t = self.transaction(transactional_id).ok_or_else(|| {
            ControllerError::InvalidProducerIdMapping(format!("unknown transactional id {transactional_id}"))
        })?;
        t.check_producer(producer_id, epoch)?;
        if t.status != TxnStatus::Ongoing || !t.groups.contains_key(group_id) {
            return Err(ControllerError::InvalidTxnState(format!(
                "{transactional_id}: group {group_id} was not added to an ongoing transaction"
            )));
        }
        let mut results = Vec::with_capacity(offsets.len());
        let pending = t.groups.entry(group_id.to_string()).or_default();
        for o in offsets {
            if self.topic(super::TopicRef::Name(&o.topic)).is_none_or(|m| !(0..m.partitions).contains(&o.partition)) {
                results.push(Err(ControllerError::UnknownTopicOrPartition));
                continue;
            }
            pending.retain(|p| (p.topic.as_str(), p.partition) != (o.topic.as_str(), o.partition));
            pending.push(o);
            results.push(Ok(()));
        }
        t.updated_ms = self.clock.now_ms();
        self.save_transaction(t)?;
        Ok(results)
    }

    /// Blocking. EndTxn: moves the transaction to Prepare*; returns the markers to write (None:
    /// a retried EndTxn whose outcome is already complete).
    pub fn end_txn(&self, transactional_id: &str, producer_id: i64, epoch: i16, commit: bool) -> Result<Option<TxnEnd>, ControllerError> {
        check_transactional_id(transactional_id)?;
        let _w = self.lock_writes();
        let mut t = self.transaction(transactional_id).ok_or_else(|| {
            ControllerError::InvalidProducerIdMapping(format!("unknown transactional id {transactional_id}"))
        })?;
        let before = t.clone();
        let markers = end(&mut t, producer_id, epoch, commit, self.clock.now_ms())?;
        if t != before {
            self.save_transaction(t)?;
        }
        Ok(markers)
    }

    /// Blocking. The coordinator's own work: aborts (epoch bumped) every ongoing transaction
    /// older than its timeout, and returns the markers of every Prepare* transaction left
    /// unfinished for [`MARKER_RETRY_MS`] (after a crash or a failed write), plus the new aborts.
    pub fn transactions_to_finish(&self) -> Result<Vec<TxnEnd>, ControllerError> {
        let _w = self.lock_writes();
        let now = self.clock.now_ms();
        let candidates: Vec<Transaction> = self
            .read()
            .transactions
            .values()
            .filter(|t| {
                (t.status == TxnStatus::Ongoing && now - t.started_ms > i64::from(t.timeout_ms))
                    || (t.status.preparing() && now - t.updated_ms >= MARKER_RETRY_MS)
            })
            .cloned()
            .collect();
        let mut out = Vec::new();
        for mut t in candidates {
            if t.status.preparing() {
                out.push(t.end());
                continue;
            }
            if let Some(end) = expire(&mut t, now, || Ok(self.store.allocate_producer_id()?))? {
                tracing::info!(transactional_id = %t.transactional_id, "transaction timed out: aborting");
                self.save_transaction(t)?;
                out.push(end);
            }
        }
        Ok(out)
    }

    /// DescribeTransactions: None for an unknown id.
    pub fn describe_transaction(&self, transactional_id: &str) -> Option<TxnDescription> {
        let t = self.transaction(transactional_id)?;
        Some(self.description(&t))
    }

    fn description(&self, t: &Transaction) -> TxnDescription {
        let s = self.read();
        TxnDescription {
            transactional_id: t.transactional_id.clone(),
            producer_id: t.producer_id,
            epoch: t.epoch,
            status: t.status,
            timeout_ms: t.timeout_ms,
            started_ms: if t.status == TxnStatus::Empty { -1 } else { t.started_ms },
            partitions: t
                .partitions
                .iter()
                .filter_map(|(id, p)| Some((s.by_id.get(id)?.name.clone(), *p)))
                .collect(),
        }
    }

    /// ListTransactions: filters are ANDed; an empty filter matches everything.
    /// `min_duration_ms` (-1: none) keeps transactions running for at least that long.
    pub fn list_transactions(&self, states: &[String], producer_ids: &[i64], min_duration_ms: i64) -> Vec<TxnDescription> {
        let now = self.clock.now_ms();
        let all: Vec<Transaction> = self.read().transactions.values().cloned().collect();
        let mut out: Vec<TxnDescription> = all
            .iter()
            .filter(|t| states.is_empty() || states.iter().any(|s| s == t.status.kafka_name()))
            .filter(|t| producer_ids.is_empty() || producer_ids.contains(&t.producer_id))
            .filter(|t| min_duration_ms < 0 || (t.status == TxnStatus::Ongoing && now - t.started_ms >= min_duration_ms))
            .map(|t| self.description(t))
            .collect();
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        out
    }

    /// Checks a transactional batch at commit: its producer's transaction must be ongoing, at
    /// the batch's epoch, with the partition added (caller holds the state lock).
    pub(super) fn check_txn_batch(
        txn_of: &std::collections::HashMap<i64, String>,
        transactions: &std::collections::HashMap<String, Transaction>,
        producer_id: i64,
        epoch: i16,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<(), ControllerError> {
        let t = txn_of.get(&producer_id).and_then(|id| transactions.get(id)).filter(|t| t.producer_id == producer_id).ok_or_else(|| {
            ControllerError::InvalidProducerIdMapping(format!("producer {producer_id} has no transactional id"))
        })?;
        if epoch < t.epoch {
            return Err(ControllerError::InvalidProducerEpoch(format!(
                "producer {producer_id} epoch {epoch} is older than {}",
                t.epoch
            )));
        }
        if epoch != t.epoch || t.status != TxnStatus::Ongoing || !t.partitions.contains(&(topic_id, partition)) {
            return Err(ControllerError::InvalidTxnState(format!(
                "transactional batch of producer {producer_id} for a partition not in its ongoing transaction"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pids() -> impl FnMut() -> Result<i64, ControllerError> {
        let mut next = 100;
        move || {
            next += 1;
            Ok(next)
        }
    }

    fn ongoing(t: &mut Transaction, now: i64) {
        t.begin(now).unwrap();
        t.partitions.insert((Uuid::from_u128(1), 0));
    }

    #[test]
    fn init_bumps_epochs_fences_and_aborts_what_the_old_producer_left_open() {
        let mut ids = pids();
        let (t, r) = init(None, "tx", 60_000, (-1, -1), 0, &mut ids).unwrap();
        assert_eq!(r, TxnInit::Ready { producer_id: 101, epoch: 0 });
        // A second producer with the same id: epoch 1, the first is fenced.
        let (mut t, r) = init(Some(&t), "tx", 60_000, (-1, -1), 1, &mut ids).unwrap();
        assert_eq!(r, TxnInit::Ready { producer_id: 101, epoch: 1 });
        assert!(matches!(t.check_producer(101, 0), Err(ControllerError::ProducerFenced(_))));
        ongoing(&mut t, 2);
        // A third one while a transaction is open: abort it at a bumped epoch first.
        let (mut t, r) = init(Some(&t), "tx", 60_000, (-1, -1), 3, &mut ids).unwrap();
        let TxnInit::Finish(end) = r else { panic!("{r:?}") };
        assert_eq!((end.epoch, end.commit, end.partitions.len()), (2, false, 1));
        assert_eq!(t.status, TxnStatus::PrepareAbort);
        // Asked again before the markers are in: the same markers.
        assert_eq!(init(Some(&t), "tx", 60_000, (-1, -1), 4, &mut ids).unwrap().1, TxnInit::Finish(end));
        assert!(complete(&mut t, 5).is_empty());
        let (t, r) = init(Some(&t), "tx", 60_000, (-1, -1), 6, &mut ids).unwrap();
        assert_eq!(r, TxnInit::Ready { producer_id: 101, epoch: 3 });
        // KIP-360: the current producer bumps its own epoch; a retry of that bump gets the same
        // answer; a stale producer is fenced.
        let (t, r) = init(Some(&t), "tx", 60_000, (101, 3), 7, &mut ids).unwrap();
        assert_eq!(r, TxnInit::Ready { producer_id: 101, epoch: 4 });
        assert_eq!(init(Some(&t), "tx", 60_000, (101, 3), 8, &mut ids).unwrap().1, TxnInit::Ready { producer_id: 101, epoch: 4 });
        assert!(matches!(init(Some(&t), "tx", 60_000, (101, 1), 8, &mut ids), Err(ControllerError::ProducerFenced(_))));
        assert!(matches!(init(Some(&t), "tx", 0, (-1, -1), 8, &mut ids), Err(ControllerError::InvalidTransactionTimeout(_))));
        // An exhausted epoch moves to a new producer id.
        let mut old = t.clone();
        old.epoch = i16::MAX - 1;
        let (_, r) = init(Some(&old), "tx", 60_000, (-1, -1), 9, &mut ids).unwrap();
        assert_eq!(r, TxnInit::Ready { producer_id: 102, epoch: 0 });
    }

    #[test]
    fn end_commit_and_abort_follow_kafka_and_retries_are_answered() {
        let (mut t, _) = init(None, "tx", 60_000, (-1, -1), 0, pids()).unwrap();
        assert!(matches!(end(&mut t, 101, 0, true, 1), Err(ControllerError::InvalidTxnState(_))));
        ongoing(&mut t, 1);
        t.groups.insert("g".into(), vec![CommitOffset { topic: "t".into(), partition: 0, offset: 7, leader_epoch: -1, metadata: String::new() }]);
        assert!(matches!(end(&mut t, 101, 1, true, 2), Err(ControllerError::ProducerFenced(_))));
        assert!(matches!(end(&mut t, 99, 0, true, 2), Err(ControllerError::InvalidProducerIdMapping(_))));
        let m = end(&mut t, 101, 0, true, 2).unwrap().unwrap();
        assert!(m.commit);
        assert_eq!(end(&mut t, 101, 0, true, 3).unwrap(), Some(m)); // retried before completion
        assert!(matches!(end(&mut t, 101, 0, false, 3), Err(ControllerError::InvalidTxnState(_))));
        assert!(matches!(t.begin(3), Err(ControllerError::ConcurrentTransactions(_))));
        let offsets = complete(&mut t, 4);
        assert_eq!(offsets["g"][0].offset, 7);
        assert_eq!(t.status, TxnStatus::CompleteCommit);
        assert_eq!(end(&mut t, 101, 0, true, 5).unwrap(), None); // retried after completion
        // An aborted transaction's offsets are dropped.
        ongoing(&mut t, 6);
        t.groups.insert("g".into(), vec![]);
        end(&mut t, 101, 0, false, 7).unwrap().unwrap();
        assert!(complete(&mut t, 8).is_empty());
        assert_eq!(decode("tx", &encode(&t)), Some(t));
    }

    #[test]
    fn a_transaction_older_than_its_timeout_is_aborted_at_a_bumped_epoch() {
        let (mut t, _) = init(None, "tx", 1_000, (-1, -1), 0, pids()).unwrap();
        assert_eq!(expire(&mut t, 10_000, || unreachable!()).unwrap(), None); // not ongoing
        ongoing(&mut t, 10_000);
        assert_eq!(expire(&mut t, 11_000, || unreachable!()).unwrap(), None);
        let end = expire(&mut t, 11_001, || unreachable!()).unwrap().unwrap();
        assert_eq!((end.epoch, end.commit), (1, false));
        assert!(matches!(t.check_producer(101, 0), Err(ControllerError::ProducerFenced(_))));
    }
}
