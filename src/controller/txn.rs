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

use super::Controller;
use crate::api::ControllerError;
use crate::api::groups::CommitOffset;
use crate::api::txn::{EndAnswer, TXN_VERSION_EPOCH_BUMP, TxnDescription, TxnEnd, TxnInit, TxnStatus};

/// Kafka's transaction.max.timeout.ms default: longer timeouts are refused.
pub const TRANSACTION_TIMEOUT_MS_MAX: i32 = 900_000;
/// A Prepare* transaction whose markers were not committed for this long (a crash, a failed
/// PUT) is handed to the agent's timer again.
pub const MARKER_RETRY_MS: i64 = 2_000;
/// Transactions (ongoing or not) kept per controller; InitProducerId beyond it is refused.
pub const TRANSACTIONS_MAX: usize = 100_000;
/// Kafka's transactional.id.expiration.ms default (7 days).
pub const DEFAULT_TRANSACTIONAL_ID_EXPIRATION_MS: i64 = 604_800_000;
/// Transactional ids forgotten per store transaction by the expiry sweep.
const EXPIRED_IDS_PER_SWEEP_MAX: usize = 1_000;

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
    /// The transaction protocol version of the client's last request on the transaction (Kafka's
    /// `clientTransactionVersion`): 2 (KIP-890 part 2) bumps the epoch at every EndTxn; 0 and 1
    /// do not. Per transaction, so that clients of both versions share a coordinator.
    pub client_version: i16,
    /// The producer id that takes over when a version 2 EndTxn exhausted the epoch (-1: none):
    /// the markers carry the old id at `i16::MAX`, the completed transaction the new id at 0.
    pub next_producer_id: i64,
    /// The producer id before that switch (-1: none): a retried EndTxn naming it at
    /// `i16::MAX - 1` gets the new id back, as in Kafka.
    pub prev_producer_id: i64,
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

    /// Starts (or continues) the ongoing transaction: AddPartitionsToTxn, AddOffsetsToTxn, and
    /// from transaction version 2 Produce and TxnOffsetCommit (implicit adds).
    fn begin(&mut self, now_ms: i64, client_version: i16) -> Result<(), ControllerError> {
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
        self.client_version = client_version;
        self.updated_ms = now_ms;
        Ok(())
    }

    /// The producer id and epoch the client uses once the Prepare* (or complete) transaction is
    /// complete: after an exhausted epoch, the next producer id at epoch 0.
    fn after_completion(&self) -> (i64, i16) {
        if self.next_producer_id >= 0 { (self.next_producer_id, 0) } else { (self.producer_id, self.epoch) }
    }

    /// Bumps the epoch (a new producer id when the epoch is exhausted), fencing the current one.
    fn bump_epoch(&mut self, new_producer_id: impl FnOnce() -> Result<i64, ControllerError>) -> Result<(), ControllerError> {
        if self.epoch >= i16::MAX - 1 {
            self.producer_id = new_producer_id()?;
            self.epoch = 0;
            self.last_epoch = -1;
            self.prev_producer_id = -1;
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
            client_version: 0,
            next_producer_id: -1,
            prev_producer_id: -1,
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

/// EndTxn (pure). `client_version`: the transaction protocol version of the request (2 from
/// EndTxn v5): version 2 follows [`end_v2`], the others Kafka's version 1 rules (the same epoch
/// throughout; a retry finds the outcome done and gets None).
pub fn end(
    t: &mut Transaction,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    now_ms: i64,
    client_version: i16,
    new_producer_id: impl FnOnce() -> Result<i64, ControllerError>,
) -> Result<EndAnswer, ControllerError> {
    if client_version >= TXN_VERSION_EPOCH_BUMP {
        return end_v2(t, producer_id, epoch, commit, now_ms, new_producer_id);
    }
    t.check_producer(producer_id, epoch)?;
    let wanted = if commit { TxnStatus::PrepareCommit } else { TxnStatus::PrepareAbort };
    let done = if commit { TxnStatus::CompleteCommit } else { TxnStatus::CompleteAbort };
    let markers = match t.status {
        TxnStatus::Ongoing => {
            t.status = wanted;
            t.client_version = client_version;
            t.updated_ms = now_ms;
            Some(t.end())
        }
        s if s == wanted => Some(t.end()),
        s if s == done => None,
        s => return Err(invalid_transition(t, commit, s)),
    };
    let (producer_id, epoch) = t.after_completion();
    Ok(EndAnswer { markers, producer_id, epoch })
}

fn invalid_transition(t: &Transaction, commit: bool, s: TxnStatus) -> ControllerError {
    ControllerError::InvalidTxnState(format!(
        "{}: cannot {} a transaction in state {}",
        t.transactional_id,
        if commit { "commit" } else { "abort" },
        s.kafka_name()
    ))
}

/// EndTxn of a transaction version 2 client (KIP-890 part 2, Kafka's
/// `TransactionCoordinator.endTransaction` with `supportsEpochBump`): every commit or abort
/// bumps the epoch; the markers carry the bumped epoch, which the client gets back. At an
/// exhausted epoch (`i16::MAX - 1`) the markers carry `i16::MAX` and the completed transaction
/// moves to a new producer id at epoch 0. A retry names the epoch before the bump (or the old
/// producer id at `i16::MAX - 1`): once complete it is answered with the current producer id
/// and epoch; while Prepare* the same markers (Kafka answers CONCURRENT_TRANSACTIONS there; the
/// agent finishing the markers serves the retry as well). An abort with nothing added (Empty,
/// or after a complete transaction) is a transaction of its own, as in Kafka.
fn end_v2(
    t: &mut Transaction,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    now_ms: i64,
    new_producer_id: impl FnOnce() -> Result<i64, ControllerError>,
) -> Result<EndAnswer, ControllerError> {
    let retry_on_overflow = t.prev_producer_id == producer_id && producer_id != t.producer_id && epoch == i16::MAX - 1 && t.epoch == 0;
    let retry_on_bump = producer_id == t.producer_id && i32::from(epoch) + 1 == i32::from(t.epoch);
    if producer_id != t.producer_id && !retry_on_overflow {
        return Err(ControllerError::InvalidProducerIdMapping(format!(
            "{} belongs to producer {}, not {producer_id}",
            t.transactional_id, t.producer_id
        )));
    }
    let valid_epoch = match t.status {
        TxnStatus::Ongoing | TxnStatus::Empty => epoch == t.epoch,
        TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => retry_on_bump,
        TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => retry_on_bump || retry_on_overflow || epoch == t.epoch,
    };
    if !valid_epoch {
        return Err(ControllerError::ProducerFenced(format!("{}: epoch {epoch} is not the current epoch {}", t.transactional_id, t.epoch)));
    }
    let retry = retry_on_bump || retry_on_overflow;
    let wanted = if commit { TxnStatus::PrepareCommit } else { TxnStatus::PrepareAbort };
    let done = if commit { TxnStatus::CompleteCommit } else { TxnStatus::CompleteAbort };
    let markers = match t.status {
        TxnStatus::Ongoing => Some(prepare_v2(t, wanted, false, now_ms, new_producer_id)?),
        s if s == done && retry => None,
        // A new transaction that only aborts (nothing was added since the last one ended).
        TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort if !commit && !retry => {
            Some(prepare_v2(t, TxnStatus::PrepareAbort, true, now_ms, new_producer_id)?)
        }
        s if s == wanted => Some(t.end()),
        s => return Err(invalid_transition(t, commit, s)),
    };
    let (producer_id, epoch) = t.after_completion();
    Ok(EndAnswer { markers, producer_id, epoch })
}

/// Kafka's `prepareAbortOrCommit` for transaction version 2: Prepare* at a bumped epoch, with
/// the next producer id allocated when the epoch is exhausted.
fn prepare_v2(
    t: &mut Transaction,
    wanted: TxnStatus,
    nothing_added: bool,
    now_ms: i64,
    new_producer_id: impl FnOnce() -> Result<i64, ControllerError>,
) -> Result<TxnEnd, ControllerError> {
    assert!(wanted.preparing(), "prepare_v2 to {wanted:?}");
    if t.epoch == i16::MAX {
        // Never reached: the bump to i16::MAX also allocates the next producer id.
        return Err(ControllerError::InvalidTxnState(format!("{}: epoch {} cannot be bumped", t.transactional_id, t.epoch)));
    }
    t.next_producer_id = if t.epoch >= i16::MAX - 1 { new_producer_id()? } else { -1 };
    t.last_epoch = t.epoch;
    t.epoch += 1;
    if nothing_added {
        t.partitions.clear();
        t.groups.clear();
        t.started_ms = now_ms;
    }
    t.status = wanted;
    t.client_version = TXN_VERSION_EPOCH_BUMP;
    t.updated_ms = now_ms;
    Ok(t.end())
}

/// The coordinator's own abort of a transaction older than its timeout (pure): bumps the
/// epoch so the producer is fenced, as Kafka does.
pub fn expire(
    t: &mut Transaction,
    now_ms: i64,
    new_producer_id: impl FnOnce() -> Result<i64, ControllerError>,
) -> Result<Option<TxnEnd>, ControllerError> {
    if t.status != TxnStatus::Ongoing || now_ms - t.started_ms <= i64::from(t.timeout_ms) {
        return Ok(None);
    }
    t.bump_epoch(new_producer_id)?;
    t.status = TxnStatus::PrepareAbort;
    t.updated_ms = now_ms;
    Ok(Some(t.end()))
}

/// Whether `t` is expired by transactional.id.expiration.ms (pure): no transaction in
/// progress and not used (no state change) for longer than `expiry_ms`.
pub fn id_expired(t: &Transaction, now_ms: i64, expiry_ms: i64) -> bool {
    t.status.idle() && now_ms.saturating_sub(t.updated_ms) > expiry_ms
}

/// Marks a Prepare* transaction complete once its markers are committed; returns the group
/// offsets that become committed (none for an abort).
pub fn complete(t: &mut Transaction, now_ms: i64) -> BTreeMap<String, Vec<CommitOffset>> {
    let offsets = std::mem::take(&mut t.groups);
    let committed = t.status == TxnStatus::PrepareCommit;
    t.status = if committed { TxnStatus::CompleteCommit } else { TxnStatus::CompleteAbort };
    t.partitions.clear();
    t.updated_ms = now_ms;
    if t.next_producer_id >= 0 {
        // The epoch was exhausted (transaction version 2): the client goes on with the next
        // producer id; the last epoch it saw stays `i16::MAX - 1`, as in Kafka.
        t.prev_producer_id = t.producer_id;
        t.producer_id = std::mem::replace(&mut t.next_producer_id, -1);
        t.epoch = 0;
        t.last_epoch = i16::MAX - 1;
    }
    if committed { offsets } else { BTreeMap::new() }
}

/// A pending group offset as stored: topic, partition, offset, leader epoch, metadata.
type StoredOffset = (String, i32, i64, i32, String);

/// How a transaction is stored: one JSON document per transactional id.
#[derive(Serialize, Deserialize)]
struct Stored {
    producer_id: i64,
    epoch: i16,
    last_epoch: i16,
    timeout_ms: i32,
    status: TxnStatus,
    partitions: Vec<(String, i32)>,
    groups: Vec<(String, Vec<StoredOffset>)>,
    started_ms: i64,
    updated_ms: i64,
    /// Absent from what binaries before transaction version 2 stored: version 0, no switch.
    #[serde(default)]
    client_version: i16,
    #[serde(default = "no_producer_id")]
    next_producer_id: i64,
    #[serde(default = "no_producer_id")]
    prev_producer_id: i64,
}

fn no_producer_id() -> i64 {
    -1
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
        client_version: t.client_version,
        next_producer_id: t.next_producer_id,
        prev_producer_id: t.prev_producer_id,
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
                    .map(|(topic, partition, offset, leader_epoch, metadata)| CommitOffset {
                        topic,
                        partition,
                        offset,
                        leader_epoch,
                        metadata,
                    })
                    .collect();
                (g, os)
            })
            .collect(),
        started_ms: s.started_ms,
        updated_ms: s.updated_ms,
        client_version: s.client_version,
        next_producer_id: s.next_producer_id,
        prev_producer_id: s.prev_producer_id,
    })
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

    /// The transaction of an id a producer names; INVALID_PRODUCER_ID_MAPPING when unknown.
    fn known_transaction(&self, id: &str) -> Result<Transaction, ControllerError> {
        check_transactional_id(id)?;
        self.transaction(id)
            .ok_or_else(|| ControllerError::InvalidProducerIdMapping(format!("unknown transactional id {id}")))
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
    /// `client_version`: the transaction protocol version of the request, recorded in the
    /// transaction (2: Produce v12's implicit add, which starts a transaction as an
    /// AddPartitionsToTxn does).
    pub fn add_partitions_to_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        verify_only: bool,
        client_version: i16,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        // Verification reads memory only: no write lock (produce calls it for transactional
        // batches); so does an add with nothing to add (Produce v12 calls it for every
        // transactional batch); any other add holds it from the read to the store write.
        if !verify_only && self.already_added(transactional_id, producer_id, epoch, partitions, client_version) {
            return Ok(vec![Ok(()); partitions.len()]);
        }
        let _w = (!verify_only).then(|| self.lock_writes());
        let mut t = self.known_transaction(transactional_id)?;
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
            return Ok(resolved.into_iter().map(|r| r.and(Err(ControllerError::OperationNotAttempted))).collect());
        }
        let before = t.clone();
        t.begin(self.clock.now_ms(), client_version)?;
        t.partitions.extend(resolved.iter().filter_map(|r| r.as_ref().ok().copied()));
        if t.partitions != before.partitions || t.status != before.status || t.client_version != before.client_version {
            self.save_transaction(t)?;
        }
        Ok(resolved.into_iter().map(|r| r.map(|_| ())).collect())
    }

    /// Whether every partition is already in the producer's ongoing transaction, recorded at
    /// `client_version` (memory only): an add would change nothing.
    fn already_added(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        client_version: i16,
    ) -> bool {
        let Some(t) = self.transaction(transactional_id) else { return false };
        t.check_producer(producer_id, epoch).is_ok()
            && t.status == TxnStatus::Ongoing
            && t.client_version == client_version
            && partitions
                .iter()
                .all(|(topic, p)| self.topic(super::TopicRef::Name(topic)).is_some_and(|m| t.partitions.contains(&(m.id, *p))))
    }

    /// Blocking. AddOffsetsToTxn: the group's offsets will be committed with the transaction.
    pub fn add_offsets_to_txn(&self, transactional_id: &str, producer_id: i64, epoch: i16, group_id: &str) -> Result<(), ControllerError> {
        let _w = self.lock_writes();
        let mut t = self.known_transaction(transactional_id)?;
        t.check_producer(producer_id, epoch)?;
        let before = t.clone();
        t.begin(self.clock.now_ms(), 0)?;
        t.groups.entry(group_id.to_string()).or_default();
        if t != before {
            self.save_transaction(t)?;
        }
        Ok(())
    }

    /// Blocking. TxnOffsetCommit: remembers the offsets in the transaction; they become the
    /// group's committed offsets when (and only if) it commits. Per-offset results.
    /// `client_version` 2 (TxnOffsetCommit v5): the group is added to the transaction (started
    /// if need be) by this call, as Kafka's group coordinator does, with no AddOffsetsToTxn.
    pub fn txn_offset_commit(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group_id: &str,
        offsets: Vec<CommitOffset>,
        client_version: i16,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        let _w = self.lock_writes();
        let mut t = self.known_transaction(transactional_id)?;
        t.check_producer(producer_id, epoch)?;
        if client_version >= TXN_VERSION_EPOCH_BUMP {
            t.begin(self.clock.now_ms(), client_version)?;
            t.groups.entry(group_id.to_string()).or_default();
        }
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

    /// Blocking. EndTxn: moves the transaction to Prepare* ([`end`]); returns the markers to
    /// write (None: a retried EndTxn whose outcome is already complete) and the producer id and
    /// epoch the client goes on with.
    pub fn end_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        client_version: i16,
    ) -> Result<EndAnswer, ControllerError> {
        let _w = self.lock_writes();
        let mut t = self.known_transaction(transactional_id)?;
        let before = t.clone();
        let markers =
            end(&mut t, producer_id, epoch, commit, self.clock.now_ms(), client_version, || Ok(self.store.allocate_producer_id()?))?;
        if t != before {
            self.save_transaction(t)?;
        }
        Ok(markers)
    }

    /// Blocking. The coordinator's own work: aborts (epoch bumped) every ongoing transaction
    /// older than its timeout, and returns the markers of every Prepare* transaction left
    /// unfinished for [`MARKER_RETRY_MS`] (after a crash or a failed write), plus the new aborts.
    /// Also the expiry sweeps: transactional ids (transactional.id.expiration.ms) and idle
    /// producer states (producer.id.expiration.ms).
    pub fn transactions_to_finish(&self) -> Result<Vec<TxnEnd>, ControllerError> {
        let _w = self.lock_writes();
        let now = self.clock.now_ms();
        // The sweeps never hold up the aborts and marker retries below.
        if let Err(e) = self.expire_transactional_ids(now) {
            tracing::warn!(error = %e, "expiring transactional ids failed; retried next time");
        }
        if let Err(e) = self.expire_producers(now) {
            tracing::warn!(error = %e, "expiring idle producers failed; retried next time");
        }
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

    /// Forgets the transactional ids expired at `now` (caller holds write_lock): from the store,
    /// then from memory. DescribeTransactions then answers TRANSACTIONAL_ID_NOT_FOUND and a new
    /// InitProducerId starts afresh (a new producer id).
    fn expire_transactional_ids(&self, now: i64) -> Result<(), ControllerError> {
        let expired: Vec<String> = self
            .read()
            .transactions
            .values()
            .filter(|t| id_expired(t, now, self.txn_id_expiry_ms))
            .map(|t| t.transactional_id.clone())
            .take(EXPIRED_IDS_PER_SWEEP_MAX)
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        self.store.delete_transactions(&expired)?;
        let mut s = self.write();
        for id in &expired {
            if let Some(t) = s.transactions.remove(id)
                && s.txn_of.get(&t.producer_id) == Some(id)
            {
                s.txn_of.remove(&t.producer_id);
            }
        }
        tracing::info!(count = expired.len(), "transactional ids expired");
        Ok(())
    }

    /// Partitions of `group_id` whose offsets an ongoing (or committing) transaction holds.
    pub fn pending_txn_offsets(&self, group_id: &str) -> Vec<crate::api::groups::TopicPartition> {
        self.read()
            .transactions
            .values()
            .filter(|t| matches!(t.status, TxnStatus::Ongoing | TxnStatus::PrepareCommit))
            .filter_map(|t| t.groups.get(group_id))
            .flat_map(|os| os.iter().map(|o| (o.topic.clone(), o.partition)))
            .collect()
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
            partitions: t.partitions.iter().filter_map(|(id, p)| Some((s.by_id.get(id)?.name.clone(), *p))).collect(),
        }
    }

    /// ListTransactions: filters are ANDed; an empty filter matches everything.
    /// `min_duration_ms` (-1: none) keeps transactions started at least that long ago.
    pub fn list_transactions(&self, states: &[String], producer_ids: &[i64], min_duration_ms: i64) -> Vec<TxnDescription> {
        let now = self.clock.now_ms();
        let all: Vec<Transaction> = self.read().transactions.values().cloned().collect();
        let mut out: Vec<TxnDescription> = all
            .iter()
            .filter(|t| states.is_empty() || states.iter().any(|s| s == t.status.kafka_name()))
            .filter(|t| producer_ids.is_empty() || producer_ids.contains(&t.producer_id))
            .map(|t| self.description(t))
            // Kafka compares the start time whatever the state (-1 when none: always old enough).
            .filter(|d| min_duration_ms < 0 || now - d.started_ms >= min_duration_ms)
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
        let t = txn_of
            .get(&producer_id)
            .and_then(|id| transactions.get(id))
            .filter(|t| t.producer_id == producer_id)
            .ok_or_else(|| ControllerError::InvalidProducerIdMapping(format!("producer {producer_id} has no transactional id")))?;
        if epoch < t.epoch {
            return Err(ControllerError::InvalidProducerEpoch(format!("producer {producer_id} epoch {epoch} is older than {}", t.epoch)));
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
        t.begin(now, 0).unwrap();
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
        assert!(matches!(end(&mut t, 101, 0, true, 1, 0, || unreachable!()).map(|a| a.markers), Err(ControllerError::InvalidTxnState(_))));
        ongoing(&mut t, 1);
        t.groups.insert(
            "g".into(),
            vec![CommitOffset { topic: "t".into(), partition: 0, offset: 7, leader_epoch: -1, metadata: String::new() }],
        );
        assert!(matches!(end(&mut t, 101, 1, true, 2, 0, || unreachable!()).map(|a| a.markers), Err(ControllerError::ProducerFenced(_))));
        assert!(matches!(
            end(&mut t, 99, 0, true, 2, 0, || unreachable!()).map(|a| a.markers),
            Err(ControllerError::InvalidProducerIdMapping(_))
        ));
        let m = end(&mut t, 101, 0, true, 2, 0, || unreachable!()).map(|a| a.markers).unwrap().unwrap();
        assert!(m.commit);
        assert_eq!(end(&mut t, 101, 0, true, 3, 0, || unreachable!()).map(|a| a.markers).unwrap(), Some(m)); // retried before completion
        assert!(matches!(end(&mut t, 101, 0, false, 3, 0, || unreachable!()).map(|a| a.markers), Err(ControllerError::InvalidTxnState(_))));
        assert!(matches!(t.begin(3, 0), Err(ControllerError::ConcurrentTransactions(_))));
        let offsets = complete(&mut t, 4);
        assert_eq!(offsets["g"][0].offset, 7);
        assert_eq!(t.status, TxnStatus::CompleteCommit);
        assert_eq!(end(&mut t, 101, 0, true, 5, 0, || unreachable!()).map(|a| a.markers).unwrap(), None); // retried after completion
        // An aborted transaction's offsets are dropped.
        ongoing(&mut t, 6);
        t.groups.insert("g".into(), vec![]);
        end(&mut t, 101, 0, false, 7, 0, || unreachable!()).map(|a| a.markers).unwrap().unwrap();
        assert!(complete(&mut t, 8).is_empty());
        assert_eq!(decode("tx", &encode(&t)), Some(t));
    }

    /// EndTxn v5 (transaction version 2): the answer of one call, as (markers, producer id, epoch).
    fn end2(t: &mut Transaction, pid: i64, epoch: i16, commit: bool) -> Result<(Option<TxnEnd>, i64, i16), ControllerError> {
        end(t, pid, epoch, commit, 10, TXN_VERSION_EPOCH_BUMP, || Ok(500)).map(|a| (a.markers, a.producer_id, a.epoch))
    }

    #[test]
    fn version_2_end_bumps_the_epoch_every_time_and_the_markers_carry_it() {
        let (mut t, _) = init(None, "tx", 60_000, (-1, -1), 0, pids()).unwrap();
        t.begin(1, TXN_VERSION_EPOCH_BUMP).unwrap();
        t.partitions.insert((Uuid::from_u128(1), 0));
        assert_eq!(t.client_version, TXN_VERSION_EPOCH_BUMP);
        let (m, pid, epoch) = end2(&mut t, 101, 0, true).unwrap();
        let m = m.unwrap();
        assert_eq!((m.producer_id, m.epoch, m.commit, m.partitions.len()), (101, 1, true, 1));
        assert_eq!((pid, epoch), (101, 1));
        assert_eq!((t.status, t.epoch, t.last_epoch), (TxnStatus::PrepareCommit, 1, 0));
        // The old epoch can no longer add or produce: fenced.
        assert!(matches!(t.check_producer(101, 0), Err(ControllerError::ProducerFenced(_))));
        // A retry before the markers are in gets the same markers; the opposite outcome is refused.
        assert_eq!(end2(&mut t, 101, 0, true).unwrap(), (Some(m.clone()), 101, 1));
        assert!(matches!(end2(&mut t, 101, 0, false), Err(ControllerError::InvalidTxnState(_))));
        // The new epoch is not a retry while the transaction completes.
        assert!(matches!(end2(&mut t, 101, 1, true), Err(ControllerError::ProducerFenced(_))));
        complete(&mut t, 11);
        // A retry after completion: success with the current epoch, nothing to write.
        assert_eq!(end2(&mut t, 101, 0, true).unwrap(), (None, 101, 1));
        assert!(matches!(end2(&mut t, 101, 0, false), Err(ControllerError::InvalidTxnState(_))));
        // An older epoch than the retry's is fenced; the current epoch committing nothing is refused.
        let mut older = t.clone();
        older.epoch = 3;
        assert!(matches!(end2(&mut older, 101, 1, true), Err(ControllerError::ProducerFenced(_))));
        assert!(matches!(end2(&mut t, 101, 1, true), Err(ControllerError::InvalidTxnState(_))));
        // Next transaction: abort, one more bump.
        t.begin(12, TXN_VERSION_EPOCH_BUMP).unwrap();
        t.partitions.insert((Uuid::from_u128(1), 1));
        let (m, pid, epoch) = end2(&mut t, 101, 1, false).unwrap();
        assert_eq!((m.unwrap().epoch, pid, epoch), (2, 101, 2));
        complete(&mut t, 13);
        assert_eq!(end2(&mut t, 101, 1, false).unwrap(), (None, 101, 2)); // retried abort
        // An abort with nothing added is a transaction of its own: bumped, no partitions.
        let (m, _, epoch) = end2(&mut t, 101, 2, false).unwrap();
        assert_eq!((m.unwrap().partitions.len(), epoch, t.status), (0, 3, TxnStatus::PrepareAbort));
        // Stored and read back with its version.
        assert_eq!(decode("tx", &encode(&t)), Some(t.clone()));
        // Version 0-1 clients on the same coordinator: no bump.
        complete(&mut t, 14);
        t.begin(15, 0).unwrap();
        let a = end(&mut t, 101, 3, true, 16, 0, || unreachable!()).unwrap();
        assert_eq!((a.markers.unwrap().epoch, a.producer_id, a.epoch, t.client_version), (3, 101, 3, 0));
    }

    #[test]
    fn version_2_end_at_an_exhausted_epoch_moves_to_the_next_producer_id() {
        let (mut t, _) = init(None, "tx", 60_000, (-1, -1), 0, pids()).unwrap();
        t.epoch = i16::MAX - 1;
        t.begin(1, TXN_VERSION_EPOCH_BUMP).unwrap();
        t.partitions.insert((Uuid::from_u128(1), 0));
        let (m, pid, epoch) = end2(&mut t, 101, i16::MAX - 1, true).unwrap();
        // The markers close the old producer's batches at the last epoch; the client gets the new id.
        let m = m.unwrap();
        assert_eq!((m.producer_id, m.epoch), (101, i16::MAX));
        assert_eq!((pid, epoch), (500, 0));
        assert_eq!(decode("tx", &encode(&t)), Some(t.clone())); // the next id survives a restart
        assert_eq!(end2(&mut t, 101, i16::MAX - 1, true).unwrap(), (Some(m), 500, 0)); // retried while preparing
        complete(&mut t, 2);
        assert_eq!((t.producer_id, t.epoch, t.prev_producer_id, t.next_producer_id), (500, 0, 101, -1));
        // A retry naming the old producer at the exhausted epoch gets the new one.
        assert_eq!(end2(&mut t, 101, i16::MAX - 1, true).unwrap(), (None, 500, 0));
        assert!(matches!(end2(&mut t, 101, 7, true), Err(ControllerError::InvalidProducerIdMapping(_))));
        // The new producer id goes on.
        t.begin(3, TXN_VERSION_EPOCH_BUMP).unwrap();
        t.partitions.insert((Uuid::from_u128(1), 0));
        let (m, pid, epoch) = end2(&mut t, 500, 0, true).unwrap();
        assert_eq!((m.unwrap().epoch, pid, epoch), (1, 500, 1));
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

    mod controller {
        //! The coordinator through the controller: commits, markers, LSO, aborted index and
        //! timeouts, with a manual clock and restarts on the same SQLite file.
        use std::collections::BTreeMap;
        use std::sync::Arc;

        use super::super::*;
        use crate::api::groups::TopicPartition;
        use crate::clock::{ManualClock, SeededEntropy};
        use crate::config::TopicsConfig;
        use crate::controller::store::sqlite::SqliteStore;
        use crate::controller::{CommitRequest, CreateTopic};
        use crate::format::object::{ExtentInfo, ProducerBatch};

        fn open(path: &std::path::Path, clock: Arc<ManualClock>) -> Controller {
            let store = Arc::new(SqliteStore::open(path).unwrap());
            Controller::open(store, TopicsConfig::default(), 86_400_000, clock, Arc::new(SeededEntropy::new(5))).unwrap()
        }

        /// Commits one object holding one batch per (partition, records); `txn`: the producer's
        /// (id, epoch, first sequence) for transactional batches.
        fn commit(
            c: &Controller,
            key: &str,
            topic: Uuid,
            batches: &[(i32, i64)],
            txn: Option<(i64, i16, i32)>,
        ) -> Vec<Result<i64, ControllerError>> {
            let extents = batches
                .iter()
                .map(|(p, n)| ExtentInfo {
                    topic_id: topic,
                    partition: *p,
                    position: 0,
                    length: 10,
                    batch_count: 1,
                    offset_count: *n,
                    max_timestamp: 0,
                    producer: txn.map(|(pid, epoch, seq)| ProducerBatch {
                        producer_id: pid,
                        epoch,
                        first_sequence: seq,
                        last_sequence: seq + *n as i32 - 1,
                        transactional: true,
                    }),
                })
                .collect();
            c.commit_object(&object(key, extents, None)).unwrap()
        }

        /// One object of agent "a" holding `extents`.
        fn object(key: &str, extents: Vec<ExtentInfo>, txn_end: Option<TxnEnd>) -> CommitRequest {
            CommitRequest { object_key: key.into(), object_size_bytes: 100, agent: "a".into(), extents, wal: None, txn_end }
        }

        /// What the agent does with a TxnEnd: one marker extent per partition.
        fn write_markers(c: &Controller, key: &str, end: &TxnEnd) -> Result<Vec<Result<i64, ControllerError>>, ControllerError> {
            let extents = end
                .partitions
                .iter()
                .map(|(t, p)| ExtentInfo {
                    topic_id: *t,
                    partition: *p,
                    position: 0,
                    length: 10,
                    batch_count: 1,
                    offset_count: 1,
                    max_timestamp: 0,
                    producer: None,
                })
                .collect();
            c.commit_object(&object(key, extents, Some(end.clone())))
        }

        fn ready(r: TxnInit) -> (i64, i16) {
            match r {
                TxnInit::Ready { producer_id, epoch } => (producer_id, epoch),
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn a_version_2_store_is_migrated_and_keeps_its_data() {
            use crate::controller::store::{GroupOffsetRecord, MetadataStore};
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("c.db");
            let store = SqliteStore::open(&db).unwrap();
            store.load("cluster-2").unwrap();
            let rec = GroupOffsetRecord {
                group_id: "g".into(),
                topic: "t".into(),
                partition: 0,
                offset: 5,
                leader_epoch: -1,
                metadata: String::new(),
                commit_ms: 1,
            };
            store.commit_group_offsets(std::slice::from_ref(&rec)).unwrap();
            drop(store);
            // What a version 2 binary left behind: no transaction tables.
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch("DROP TABLE transactions; DROP TABLE open_txns; DROP TABLE aborted_txns; PRAGMA user_version = 2;")
                .unwrap();
            drop(c);
            let clock = Arc::new(ManualClock::new(1));
            let c = open(&db, clock);
            assert_eq!(c.cluster_id(), "cluster-2");
            assert_eq!(c.groups().fetch_offsets("g", None, None).unwrap()[0].1.as_ref().unwrap().offset, 5);
            assert!(matches!(c.init_transactional_producer("app", 1000, (-1, -1)).unwrap(), TxnInit::Ready { epoch: 0, .. }));
            let version: i32 = rusqlite::Connection::open(&db).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
            assert_eq!(version, 8);
        }

        #[test]
        fn lso_aborted_index_offsets_and_timeouts_survive_restarts() {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("c.db");
            let clock = Arc::new(ManualClock::new(1_000_000));
            let c = open(&db, clock.clone());
            let t = c
                .create_topic(&CreateTopic {
                    name: "t".into(),
                    partitions: 2,
                    replication_factor: -1,
                    configs: BTreeMap::new(),
                    validate_only: false,
                })
                .unwrap();
            let (pid, epoch) = ready(c.init_transactional_producer("app", 10_000, (-1, -1)).unwrap());
            // Not added yet: refused.
            assert!(matches!(commit(&c, "o0", t.id, &[(0, 3)], Some((pid, epoch, 0)))[0], Err(ControllerError::InvalidTxnState(_))));
            let added = c.add_partitions_to_txn("app", pid, epoch, &[("t".into(), 0), ("t".into(), 1)], false, 0).unwrap();
            assert!(added.iter().all(|r| r.is_ok()));
            commit(&c, "plain", t.id, &[(0, 2)], None);
            assert_eq!(commit(&c, "o1", t.id, &[(0, 3), (1, 1)], Some((pid, epoch, 0))), vec![Ok(2), Ok(0)]);
            commit(&c, "plain2", t.id, &[(0, 1)], None);
            assert_eq!(c.last_stable_offset(t.id, 0).unwrap(), 2);
            assert_eq!(c.last_stable_offset(t.id, 1).unwrap(), 0);
            c.add_offsets_to_txn("app", pid, epoch, "g").unwrap();
            let o = CommitOffset { topic: "t".into(), partition: 0, offset: 42, leader_epoch: -1, metadata: String::new() };
            assert!(c.txn_offset_commit("app", pid, epoch, "g", vec![o], 0).unwrap()[0].is_ok());
            // A restart in the middle of the transaction: everything is still there.
            drop(c);
            let c = open(&db, clock.clone());
            assert_eq!(c.last_stable_offset(t.id, 0).unwrap(), 2);
            assert_eq!(c.describe_transaction("app").unwrap().status, TxnStatus::Ongoing);
            // Abort: markers after the data, the LSO moves to the high watermark, the aborted
            // index names the transaction, the pending offsets are dropped.
            let end = c.end_txn("app", pid, epoch, false, 0).map(|a| a.markers).unwrap().unwrap();
            assert_eq!(write_markers(&c, "m1", &end).unwrap(), vec![Ok(6), Ok(1)]);
            assert_eq!(c.last_stable_offset(t.id, 0).unwrap(), 7);
            assert_eq!(c.aborted_txns(t.id, 0, 0, 7).unwrap(), vec![(pid, 2)]);
            assert_eq!(c.aborted_txns(t.id, 0, 7, 100).unwrap(), vec![]);
            assert_eq!(c.aborted_txns(t.id, 1, 0, 2).unwrap(), vec![(pid, 0)]);
            let tp: TopicPartition = ("t".into(), 0);
            assert!(c.pending_txn_offsets("g").is_empty());
            assert_eq!(c.groups().fetch_offsets("g", Some(std::slice::from_ref(&tp)), None).unwrap()[0].1, None);
            // Stale or repeated markers are refused.
            assert!(matches!(write_markers(&c, "m1-again", &end), Err(ControllerError::InvalidTxnState(_))));
            // A committed transaction makes its offsets visible.
            c.add_partitions_to_txn("app", pid, epoch, &[("t".into(), 0)], false, 0).unwrap();
            commit(&c, "o2", t.id, &[(0, 2)], Some((pid, epoch, 3)));
            c.add_offsets_to_txn("app", pid, epoch, "g").unwrap();
            let o = CommitOffset { topic: "t".into(), partition: 0, offset: 9, leader_epoch: -1, metadata: String::new() };
            c.txn_offset_commit("app", pid, epoch, "g", vec![o], 0).unwrap();
            assert_eq!(c.pending_txn_offsets("g"), vec![tp.clone()]);
            let end = c.end_txn("app", pid, epoch, true, 0).map(|a| a.markers).unwrap().unwrap();
            // Crash before the markers are written: after a restart the timer finishes them.
            drop(c);
            let c = open(&db, clock.clone());
            assert_eq!(c.transactions_to_finish().unwrap(), vec![]); // too recent to retry
            clock.advance_ms(MARKER_RETRY_MS as u64);
            assert_eq!(c.transactions_to_finish().unwrap(), vec![end.clone()]);
            write_markers(&c, "m2", &end).unwrap();
            assert_eq!(c.groups().fetch_offsets("g", Some(std::slice::from_ref(&tp)), None).unwrap()[0].1.as_ref().unwrap().offset, 9);
            assert_eq!(c.last_stable_offset(t.id, 0).unwrap(), 10);
            assert_eq!(c.end_txn("app", pid, epoch, true, 0).map(|a| a.markers).unwrap(), None); // a retried EndTxn
            // Timeout: an abandoned transaction is aborted at a bumped epoch, fencing the
            // producer's late batches.
            c.add_partitions_to_txn("app", pid, epoch, &[("t".into(), 1)], false, 0).unwrap();
            commit(&c, "o3", t.id, &[(1, 1)], Some((pid, epoch, 1)));
            clock.advance_ms(10_000);
            assert_eq!(c.transactions_to_finish().unwrap(), vec![]);
            clock.advance_ms(1);
            drop(c);
            let c = open(&db, clock.clone());
            let ends = c.transactions_to_finish().unwrap();
            assert_eq!(ends.len(), 1);
            assert_eq!((ends[0].epoch, ends[0].commit), (epoch + 1, false));
            write_markers(&c, "m3", &ends[0]).unwrap();
            assert_eq!(c.last_stable_offset(t.id, 1).unwrap(), 4);
            assert!(matches!(commit(&c, "late", t.id, &[(1, 1)], Some((pid, epoch, 2)))[0], Err(ControllerError::InvalidProducerEpoch(_))));
            assert!(matches!(c.end_txn("app", pid, epoch, true, 0).map(|a| a.markers), Err(ControllerError::ProducerFenced(_))));
            drop(c);
            let c = open(&db, clock);
            assert_eq!(c.aborted_txns(t.id, 1, 0, 100).unwrap(), vec![(pid, 0), (pid, 2)]);
            let listed = c.list_transactions(&["CompleteAbort".into()], &[], -1);
            assert_eq!(listed.iter().map(|d| d.transactional_id.as_str()).collect::<Vec<_>>(), vec!["app"]);
        }

        #[test]
        fn version_2_produce_and_offsets_add_implicitly_and_each_end_bumps_the_epoch() {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("c.db");
            let clock = Arc::new(ManualClock::new(1_000_000));
            let c = open(&db, clock.clone());
            let t = c
                .create_topic(&CreateTopic {
                    name: "t".into(),
                    partitions: 2,
                    replication_factor: -1,
                    configs: BTreeMap::new(),
                    validate_only: false,
                })
                .unwrap();
            let v2 = TXN_VERSION_EPOCH_BUMP;
            let (pid, epoch) = ready(c.init_transactional_producer("app", 10_000, (-1, -1)).unwrap());
            // Produce v12: the add starts the transaction (durably), then the batch commits.
            assert!(c.add_partitions_to_txn("app", pid, epoch, &[("t".into(), 0)], false, v2).unwrap()[0].is_ok());
            drop(c);
            let c = open(&db, clock.clone());
            let d = c.describe_transaction("app").unwrap();
            assert_eq!((d.status, d.partitions.len()), (TxnStatus::Ongoing, 1));
            assert_eq!(commit(&c, "o1", t.id, &[(0, 2)], Some((pid, epoch, 0))), vec![Ok(0)]);
            // TxnOffsetCommit v5: the group joins without AddOffsetsToTxn; v4 would be refused.
            let o = CommitOffset { topic: "t".into(), partition: 1, offset: 5, leader_epoch: -1, metadata: String::new() };
            assert!(matches!(c.txn_offset_commit("app", pid, epoch, "g", vec![o.clone()], 0), Err(ControllerError::InvalidTxnState(_))));
            assert!(c.txn_offset_commit("app", pid, epoch, "g", vec![o], v2).unwrap()[0].is_ok());
            let a = c.end_txn("app", pid, epoch, true, v2).unwrap();
            let end = a.markers.unwrap();
            assert_eq!((end.epoch, a.producer_id, a.epoch), (epoch + 1, pid, epoch + 1));
            assert_eq!(write_markers(&c, "m1", &end).unwrap(), vec![Ok(2)]);
            assert_eq!(c.groups().fetch_offsets("g", None, None).unwrap()[0].1.as_ref().unwrap().offset, 5);
            // A retried EndTxn with the old epoch: success, the current epoch.
            let again = c.end_txn("app", pid, epoch, true, v2).unwrap();
            assert_eq!((again.markers, again.producer_id, again.epoch), (None, pid, epoch + 1));
            // A late batch of the old epoch is fenced; the new epoch starts again at sequence 0.
            let epoch = epoch + 1;
            assert!(matches!(
                c.add_partitions_to_txn("app", pid, epoch - 1, &[("t".into(), 0)], false, v2),
                Err(ControllerError::ProducerFenced(_))
            ));
            assert!(c.add_partitions_to_txn("app", pid, epoch, &[("t".into(), 0)], false, v2).unwrap()[0].is_ok());
            assert_eq!(commit(&c, "o2", t.id, &[(0, 1)], Some((pid, epoch, 0))), vec![Ok(3)]);
            let a = c.end_txn("app", pid, epoch, false, v2).unwrap();
            assert_eq!(a.epoch, epoch + 1);
            write_markers(&c, "m2", &a.markers.unwrap()).unwrap();
            assert_eq!(c.aborted_txns(t.id, 0, 0, 100).unwrap(), vec![(pid, 3)]);
            assert_eq!(c.last_stable_offset(t.id, 0).unwrap(), 5);
        }

        #[test]
        fn idle_transactional_ids_and_producers_expire_but_not_while_a_transaction_is_open() {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("c.db");
            let clock = Arc::new(ManualClock::new(1_000_000));
            let reopen = || {
                let store = Arc::new(SqliteStore::open(&db).unwrap());
                Controller::open(store, TopicsConfig::default(), 3_000, clock.clone(), Arc::new(SeededEntropy::new(5)))
                    .unwrap()
                    .with_transactional_id_expiration_ms(2_000)
            };
            let c = reopen();
            let t = c
                .create_topic(&CreateTopic {
                    name: "t".into(),
                    partitions: 1,
                    replication_factor: -1,
                    configs: BTreeMap::new(),
                    validate_only: false,
                })
                .unwrap();
            let (idle_pid, _) = ready(c.init_transactional_producer("idle", 60_000, (-1, -1)).unwrap());
            let (pid, epoch) = ready(c.init_transactional_producer("busy", TRANSACTION_TIMEOUT_MS_MAX, (-1, -1)).unwrap());
            c.add_partitions_to_txn("busy", pid, epoch, &[("t".into(), 0)], false, 0).unwrap();
            commit(&c, "d1", t.id, &[(0, 2)], Some((pid, epoch, 0)));
            // An idempotent (not transactional) producer in the same partition.
            let plain = ExtentInfo {
                topic_id: t.id,
                partition: 0,
                position: 0,
                length: 10,
                batch_count: 1,
                offset_count: 1,
                max_timestamp: 0,
                producer: Some(ProducerBatch { producer_id: 900, epoch: 0, first_sequence: 0, last_sequence: 0, transactional: false }),
            };
            let req = CommitRequest {
                object_key: "p1".into(),
                object_size_bytes: 10,
                agent: "a".into(),
                extents: vec![plain],
                wal: None,
                txn_end: None,
            };
            c.commit_object(&req).unwrap()[0].clone().unwrap();
            let producers = |c: &Controller| {
                let mut v: Vec<i64> = c.read().producers.keys().map(|(p, _, _)| *p).collect();
                v.sort();
                v
            };
            assert_eq!(producers(&c), vec![pid, 900]);
            // Exactly at the expiry nothing goes; just after it, the idle id and the idle
            // producer go, the ongoing transaction and its producer state stay.
            clock.advance_ms(2_000);
            c.transactions_to_finish().unwrap();
            assert!(c.describe_transaction("idle").is_some());
            clock.advance_ms(1_001);
            assert_eq!(c.transactions_to_finish().unwrap(), vec![]);
            assert!(c.describe_transaction("idle").is_none());
            assert_eq!(c.describe_transaction("busy").unwrap().status, TxnStatus::Ongoing);
            let listed: Vec<String> = c.list_transactions(&[], &[], -1).into_iter().map(|d| d.transactional_id).collect();
            assert_eq!(listed, vec!["busy".to_string()]);
            assert_eq!(producers(&c), vec![pid]);
            // Gone from the store too; an open transaction's producer survives the load-time sweep.
            drop(c);
            let c = reopen();
            assert!(c.describe_transaction("idle").is_none());
            assert_eq!(producers(&c), vec![pid]);
            // The expired id starts afresh: a new producer id at epoch 0.
            let (again, epoch0) = ready(c.init_transactional_producer("idle", 60_000, (-1, -1)).unwrap());
            assert_ne!(again, idle_pid);
            assert_eq!(epoch0, 0);
            // Once its transaction is complete, the busy id and its producer state expire too.
            let end = c.end_txn("busy", pid, epoch, true, 0).map(|a| a.markers).unwrap().unwrap();
            write_markers(&c, "m1", &end).unwrap();
            clock.advance_ms(3_001);
            c.transactions_to_finish().unwrap();
            assert!(c.describe_transaction("busy").is_none());
            assert!(producers(&c).is_empty());
            // A zombie of the expired id is refused: its producer id maps to no transaction.
            assert!(matches!(c.end_txn("busy", pid, epoch, true, 0).map(|a| a.markers), Err(ControllerError::InvalidProducerIdMapping(_))));
        }

        #[derive(Debug, Clone)]
        enum Op {
            /// A non-transactional batch of one record.
            Plain(i32),
            /// A batch of producer `usize` in its transaction (adding the partition first).
            Txn(usize, i32),
            /// EndTxn of producer `usize`, commit or abort, markers written.
            End(usize, bool),
            /// Controller restart.
            Restart,
        }

        fn op() -> impl proptest::strategy::Strategy<Value = Op> {
            use proptest::prelude::*;
            prop_oneof![
                (0..2i32).prop_map(Op::Plain),
                (0..2usize, 0..2i32).prop_map(|(k, p)| Op::Txn(k, p)),
                (0..2usize, any::<bool>()).prop_map(|(k, c)| Op::End(k, c)),
                Just(Op::Restart),
            ]
        }

        proptest::proptest! {
            #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
            /// Against a model: the LSO is the first offset of the earliest open transaction
            /// (else the high watermark) and the aborted index lists exactly the aborted
            /// transactions, through any interleaving of commits, ends and restarts.
            #[test]
            fn lso_and_aborted_index_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
                let dir = tempfile::tempdir().unwrap();
                let db = dir.path().join("c.db");
                let clock = Arc::new(ManualClock::new(1));
                let mut c = open(&db, clock.clone());
                let t = c
                    .create_topic(&CreateTopic { name: "t".into(), partitions: 2, replication_factor: -1, configs: BTreeMap::new(), validate_only: false })
                    .unwrap();
                let ids = ["a", "b"];
                let producers: Vec<(i64, i16)> = ids.iter().map(|id| ready(c.init_transactional_producer(id, 60_000, (-1, -1)).unwrap())).collect();
                let mut seq = [[0i32; 2]; 2]; // per producer and partition, as in Kafka
                let mut hw = [0i64; 2];
                let mut open_first: Vec<BTreeMap<usize, i64>> = vec![BTreeMap::new(), BTreeMap::new()];
                let mut aborted: Vec<Vec<(i64, i64)>> = vec![Vec::new(), Vec::new()];
                for (n, op) in ops.into_iter().enumerate() {
                    let key = format!("o{n}");
                    match op {
                        Op::Plain(p) => {
                            commit(&c, &key, t.id, &[(p, 1)], None)[0].clone().unwrap();
                            hw[p as usize] += 1;
                        }
                        Op::Txn(k, p) => {
                            let (pid, epoch) = producers[k];
                            c.add_partitions_to_txn(ids[k], pid, epoch, &[("t".into(), p)], false, 0).unwrap();
                            let base = commit(&c, &key, t.id, &[(p, 2)], Some((pid, epoch, seq[k][p as usize])))[0].clone().unwrap();
                            seq[k][p as usize] += 2;
                            proptest::prop_assert_eq!(base, hw[p as usize]);
                            open_first[p as usize].entry(k).or_insert(base);
                            hw[p as usize] += 2;
                        }
                        Op::End(k, commit_it) => {
                            let (pid, epoch) = producers[k];
                            match c.end_txn(ids[k], pid, epoch, commit_it, 0).map(|a| a.markers) {
                                Ok(Some(end)) => {
                                    let offsets = write_markers(&c, &key, &end).unwrap();
                                    for ((_, p), o) in end.partitions.iter().zip(offsets) {
                                        let p = *p as usize;
                                        proptest::prop_assert_eq!(o.unwrap(), hw[p]);
                                        if let Some(first) = open_first[p].remove(&k) && !commit_it {
                                            aborted[p].push((pid, first));
                                        }
                                        hw[p] += 1;
                                    }
                                }
                                // Nothing open (Empty, or Complete with the other outcome).
                                Ok(None) | Err(ControllerError::InvalidTxnState(_)) => {
                                    proptest::prop_assert!(open_first.iter().all(|o| !o.contains_key(&k)));
                                }
                                Err(e) => proptest::prop_assert!(false, "{e}"),
                            }
                        }
                        Op::Restart => {
                            drop(c);
                            c = open(&db, clock.clone());
                        }
                    }
                    for p in 0..2 {
                        let lso = open_first[p].values().min().copied().unwrap_or(hw[p]);
                        proptest::prop_assert_eq!(c.last_stable_offset(t.id, p as i32).unwrap(), lso);
                        let mut want = aborted[p].clone();
                        want.sort_by_key(|a| a.1);
                        proptest::prop_assert_eq!(c.aborted_txns(t.id, p as i32, 0, hw[p]).unwrap(), want);
                    }
                }
            }
        }
    }
}
