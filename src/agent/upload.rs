//! The upload buffer: many partitions' batches -> one object -> PUT -> commit -> answers.
//!
//! ```text
//! submit(group) --mpsc--> flusher: adds each group whole to the open object (batches grouped
//!                         by partition); seals it every flush_interval_ms (from its first
//!                         batch), at flush_bytes, or early: quiet_flush_ms after the last
//!                         arrival while acks=all producers wait, if the PUT budget allows
//!                sealed --bounded mpsc (max_in_flight_objects)--> committer: awaits each
//!                         object's PUT in seal order, commits it, answers every waiter
//! ```
//! A group is the batches of one produce request; it never straddles two objects, so a WAL entry
//! (one group) is committed whole. PUTs of sealed objects run concurrently; commits happen
//! strictly in seal order, so batches from one connection keep their order in every partition.
//! Memory is bounded by `buffer_bytes_max`: a group holds its bytes from a semaphore until every
//! batch in it is answered.
//!
//! **Flush when waiting no longer helps, within a PUT budget.** An object holding acks=all
//! batches is sealed as soon as nothing has arrived for `quiet_flush_ms`: its producers are at
//! their in-flight limit or have nothing more to send, so waiting out the flush interval would
//! add latency and no batching. Early seals spend tokens of a bucket refilled at `puts_per_s`
//! and holding at most `puts_burst`; every seal spends one when there is one, and early seals
//! wait for one. So an idle agent answers its next acks=all request in about one PUT, and a busy
//! one seals on the timer and at `flush_bytes` as before, at about the same PUTs per second.
//!
//! **Transaction markers take the same path.** [`Uploader::write_markers`] seals what is
//! buffered, then the markers (one control batch per partition) as an object of their own,
//! committed with `txn_end` in seal order: after every batch this agent accepted before them,
//! acks=1 batches of the same transaction included, which the controller then finds committed.
//!
//! **The committer owns every object until it is committed.** Object store and controller
//! failures are retried with capped exponential backoff, for as long as they last (producers
//! waiting meanwhile time out on their own deadline with a retriable error); an object whose key
//! was collected as an orphan meanwhile (`ControllerError::ObjectCollected`) is uploaded again
//! under a new key and committed before anything sealed after it. Its key is held in
//! [`InFlightKeys`] from before its PUT until its commit is answered, so this agent's orphan
//! collector never claims it.
//!
//! **One contiguous committed WAL mark.** WAL entries reach the flusher in id order and objects
//! commit in seal order, so the entries an object holds directly follow those of the objects
//! before it. The committer keeps the mark M (every entry <= M committed) and sends with each
//! commit the mark the commit makes true: the object's last entry when its first one is M + 1
//! (checked on every commit), else M. The controller stores it, [`Uploader::committed_wal`]
//! publishes it (WAL segments at or below it are deleted) and replay starts above it: no entry
//! is released before it and every entry before it are committed.
//!
//! **Traced objects.** A group submitted by a sampled request carries that request's span
//! context; the object it lands in gets a trace of its own, `object.upload` (seal to commit),
//! linked to each sampled request it carries (at most `LINKS_MAX`), with `object_store.put`
//! (every attempt) and `controller.commit` children. Objects carrying no sampled request are
//! sampled at the configured ratio on their own.
//!
//! **What cannot be kept is said loudly.** A commit the controller refuses for good (not an
//! outage, not a collected key) loses acknowledged acks=1 data: each such batch is counted
//! (`sidestream_acknowledged_batches_lost_total`), logged as an error, turns `/readyz` false,
//! and makes the shutdown report failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use uuid::Uuid;

use super::AgentError;
use super::cache::ReadCache;
use super::cost;
use super::orphans::{InFlightKeys, KeyHold};
use crate::agent::client::ControllerClient;
use crate::api::txn::TxnEnd;
use crate::api::{CommitRequest, ControllerError, WalMark};
use crate::clock::{Clock, Entropy};
use crate::format::object::{ExtentInfo, ObjectBuilder};
use crate::format::records::{self, BatchHeader};
use crate::metrics;
use crate::object::{ObjectError, ObjectStore, keys};
use crate::telemetry::trace::{self, Span, SpanContext, SpanKind};

/// Upload settings, from `[upload]`.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub flush_interval: Duration,
    pub flush_bytes: u64,
    pub buffer_bytes_max: u64,
    pub max_in_flight_objects: usize,
    /// Early seals: after this long without an arrival, while acks=all producers wait.
    pub quiet_flush: Duration,
    /// The PUT budget of early seals: tokens per second (0: no early seals) and bucket size.
    pub puts_per_s: u32,
    pub puts_burst: u32,
    /// The PUT budget of transactions, besides the one above: early seals of objects holding
    /// a waiting transactional producer's batches, and marker objects (tokens per second, 0:
    /// none beyond the general budget; bucket size).
    pub txn_puts_per_s: u32,
    pub txn_puts_burst: u32,
    /// The agent's name in object keys.
    pub agent: String,
    /// Key prefix inside the store.
    pub key_prefix: String,
    /// The id of this agent's WAL, sent with every commit that covers WAL entries.
    pub wal_log_id: Option<String>,
    /// The WAL mark the controller held at start: the next WAL entry submitted is this + 1.
    pub wal_start_mark: u64,
}

const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(20);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<i64, AgentError>>;

/// One validated batch to store.
#[derive(Debug, Clone)]
pub struct GroupItem {
    pub topic_id: Uuid,
    pub partition: i32,
    pub batch: Bytes,
    pub header: BatchHeader,
}

struct Group {
    items: Vec<(GroupItem, Reply)>,
    wal_entry: Option<u64>,
    permit: Arc<OwnedSemaphorePermit>,
    /// The sampled request's span the group came from.
    trace: Option<SpanContext>,
}

/// Acknowledged data given up (commits refused for good), shared by the pipeline's handles.
#[derive(Debug, Default)]
pub struct Losses {
    batches: std::sync::atomic::AtomicU64,
}

impl Losses {
    /// `sidestream_acknowledged_batches_lost_total` (registered at start, so it shows 0 rather
    /// than nothing: an alert on it has a series to watch).
    pub fn counter() -> Arc<metrics::Counter> {
        metrics::counter(
            "sidestream_acknowledged_batches_lost_total",
            "Acknowledged (acks=1) batches whose commit the controller refused for good.",
            &[],
        )
    }

    /// Batches of acknowledged (WAL) data that could not be committed since start.
    pub fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn record(&self, n: u64, key: &str, why: &ControllerError) {
        if n == 0 {
            return;
        }
        let total = self.batches.fetch_add(n, std::sync::atomic::Ordering::SeqCst) + n;
        Self::counter().add(n);
        tracing::error!(key, batches = n, total, error = %why,
            "ACKNOWLEDGED DATA LOST: the controller refused to commit acknowledged batches");
        crate::health::set("durability", false, format!("{total} acknowledged batches could not be committed (last: {why}); see the log"));
    }
}

enum Msg {
    Group(Group),
    /// Seal what is buffered now, without waiting for the flush interval.
    Flush,
    /// Seal what is buffered now and stop; answered when everything is committed.
    Close(oneshot::Sender<()>),
    /// Seal what is buffered now; answered once every object sealed so far is committed.
    Barrier(oneshot::Sender<()>),
    /// A transaction's markers: sealed as an object of their own after what is buffered now,
    /// so they are committed after every batch this agent accepted before them.
    Markers(TxnEnd, oneshot::Sender<Result<(), AgentError>>),
}

/// Kafka's coordinator epoch in the marker value; there is one coordinator, forever.
const COORDINATOR_EPOCH: i32 = 0;

/// Handle to the upload pipeline.
#[derive(Clone)]
pub struct Uploader {
    tx: mpsc::UnboundedSender<Msg>,
    budget: Arc<Semaphore>,
    budget_bytes: u64,
    committed_wal: watch::Receiver<u64>,
    losses: Arc<Losses>,
}

/// The components the pipeline uses.
pub struct UploadDeps {
    pub store: Arc<dyn ObjectStore>,
    /// Uploaded objects are written through into its memory tier.
    pub cache: Option<Arc<ReadCache>>,
    pub controller: Arc<dyn ControllerClient>,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
    /// Keys uploaded and not yet committed, which the orphan collector must leave alone.
    pub in_flight: Arc<InFlightKeys>,
}

/// A batch accepted into the upload buffer, not yet committed.
pub struct PendingAppend(oneshot::Receiver<Result<i64, AgentError>>);

impl PendingAppend {
    /// Waits for the commit; Timeout if `deadline` passes first (the batch may still commit).
    pub async fn wait(self, deadline: Instant) -> Result<i64, AgentError> {
        match timeout_at(deadline, self.0).await {
            Err(_) => Err(AgentError::Timeout),
            Ok(Err(_)) => Err(AgentError::ShuttingDown),
            Ok(Ok(r)) => r,
        }
    }
}

impl Uploader {
    /// Starts the flusher and committer tasks.
    pub fn start(settings: UploadSettings, deps: UploadDeps) -> Uploader {
        let (tx, rx) = mpsc::unbounded_channel();
        let (sealed_tx, sealed_rx) = mpsc::channel(settings.max_in_flight_objects.max(1));
        let (committed_tx, committed_wal) = watch::channel(settings.wal_start_mark);
        let deps = Arc::new(deps);
        let budget_bytes = settings.buffer_bytes_max;
        let losses = Arc::new(Losses::default());
        Losses::counter();
        let committer = tokio::spawn(run_committer(sealed_rx, deps.clone(), settings.clone(), committed_tx, losses.clone()));
        tokio::spawn(run_flusher(rx, sealed_tx, settings, deps, committer));
        Uploader { tx, budget: Arc::new(Semaphore::new(budget_bytes as usize)), budget_bytes, committed_wal, losses }
    }

    /// Acknowledged data this pipeline had to give up since start (0 while every promise holds).
    pub fn losses(&self) -> &Losses {
        &self.losses
    }

    /// Reserves `bytes` of the upload buffer, waiting for space until `deadline`.
    pub async fn reserve(&self, bytes: u64, deadline: Instant) -> Result<OwnedSemaphorePermit, AgentError> {
        // A group larger than the whole budget could never be admitted; let it through alone.
        let want = bytes.min(self.budget_bytes).min(u64::from(u32::MAX)) as u32;
        match timeout_at(deadline, self.budget.clone().acquire_many_owned(want)).await {
            Err(_) => Err(AgentError::Timeout),
            Ok(Err(_)) => Err(AgentError::ShuttingDown),
            Ok(Ok(p)) => Ok(p),
        }
    }

    /// Hands a group of batches (one produce request, or one WAL entry) to the flusher. Never
    /// blocks. Each returned [`PendingAppend`] resolves to its batch's base offset once the
    /// object holding the group is committed. `trace`: the sampled request's span, which the
    /// object's trace links to.
    pub fn submit(
        &self,
        items: Vec<GroupItem>,
        wal_entry: Option<u64>,
        permit: OwnedSemaphorePermit,
        trace: Option<SpanContext>,
    ) -> Result<Vec<PendingAppend>, AgentError> {
        let mut pending = Vec::with_capacity(items.len());
        let items = items
            .into_iter()
            .map(|item| {
                let (reply, rx) = oneshot::channel();
                pending.push(PendingAppend(rx));
                (item, reply)
            })
            .collect();
        let group = Group { items, wal_entry, permit: Arc::new(permit), trace };
        self.tx.send(Msg::Group(group)).map_err(|_| AgentError::ShuttingDown)?;
        Ok(pending)
    }

    /// Writes the markers of `end` (one control batch per partition) as an object of their own,
    /// committed with `txn_end` after everything accepted before, and waits for that commit
    /// (until `deadline`; the commit still happens later if it passes). Safe to repeat: markers
    /// of a transaction already completed are refused by the controller (INVALID_TXN_STATE).
    pub async fn write_markers(&self, end: &TxnEnd, deadline: Instant) -> Result<(), AgentError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Markers(end.clone(), tx)).map_err(|_| AgentError::ShuttingDown)?;
        match timeout_at(deadline, rx).await {
            Err(_) => Err(AgentError::Timeout),
            Ok(Err(_)) => Err(AgentError::ShuttingDown),
            Ok(Ok(r)) => r,
        }
    }

    /// Seals the buffered batches and waits (until `deadline`) until every object sealed so
    /// far is committed or given up: what this agent accepted before is in the log after it.
    pub async fn barrier(&self, deadline: Instant) -> Result<(), AgentError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Barrier(tx)).map_err(|_| AgentError::ShuttingDown)?;
        match timeout_at(deadline, rx).await {
            Err(_) => Err(AgentError::Timeout),
            Ok(Err(_)) => Err(AgentError::ShuttingDown),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Seals the buffered batches into an object now (recovery does not wait for the timer).
    pub fn flush(&self) {
        let _ = self.tx.send(Msg::Flush);
    }

    /// The contiguous committed WAL mark: every entry at or below it is committed (starts at
    /// the mark the controller held at start).
    pub fn committed_wal(&self) -> watch::Receiver<u64> {
        self.committed_wal.clone()
    }

    /// Seals the buffered batches, waits until every sealed object is committed, and stops.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A producer waiting for its batch: its extent and the offsets before it in that extent.
struct Waiter {
    extent: usize,
    offset_delta: i64,
    reply: Reply,
    /// Already acknowledged (a WAL entry's batch): a refusal loses acknowledged data.
    acknowledged: bool,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// What the committer takes, in seal order.
enum Queued {
    Object(Box<Sealed>),
    /// Answered when every object queued before it is committed (or given up).
    Barrier(oneshot::Sender<()>),
}

struct Sealed {
    /// The current key (a new one after a collected key), held from before its PUT.
    key: KeyHold,
    /// Kept until the commit, to upload again under a new key if the first one is collected.
    body: Bytes,
    extents: Vec<ExtentInfo>,
    waiters: Vec<Waiter>,
    /// The first and last WAL entries in the object, if it holds any.
    wal_entries: Option<(u64, u64)>,
    /// The PUT under way; None once it has landed.
    put: Option<JoinHandle<()>>,
    /// A marker object: the transaction it completes, and who waits for that.
    markers: Option<(TxnEnd, oneshot::Sender<Result<(), AgentError>>)>,
    /// `object.upload`, when traced: ends (is exported) once the commit is answered.
    span: Option<Span>,
}

type Pending = (GroupItem, Reply, Arc<OwnedSemaphorePermit>, bool);

/// The object being filled: batches grouped by partition, partitions in arrival order.
#[derive(Default)]
struct OpenObject {
    groups: Vec<((Uuid, i32), Vec<Pending>)>,
    index: HashMap<(Uuid, i32), usize>,
    bytes: u64,
    deadline: Option<Instant>,
    /// The first and last WAL entries added (in id order: checked by the committer).
    wal_entries: Option<(u64, u64)>,
    /// The sampled requests whose groups were added (at most `trace::LINKS_MAX`).
    links: Vec<SpanContext>,
    /// Groups added.
    requests: usize,
    /// Groups whose producers wait for the commit (acks=all; WAL entries are answered).
    waiting: usize,
    /// Those of them holding transactional batches: a transaction's commit waits for them.
    txn_waiting: usize,
    /// When the last group was added.
    last_arrival: Option<Instant>,
}

impl OpenObject {
    fn add(&mut self, g: Group, flush_interval: Duration) {
        self.deadline.get_or_insert_with(|| Instant::now() + flush_interval);
        if let Some(id) = g.wal_entry {
            self.wal_entries = Some(match self.wal_entries {
                None => (id, id),
                Some((first, last)) => (first.min(id), last.max(id)),
            });
        }
        let acknowledged = g.wal_entry.is_some();
        self.requests += 1;
        if !acknowledged {
            self.waiting += 1;
            if g.items.iter().any(|(item, _)| item.header.is_transactional()) {
                self.txn_waiting += 1;
            }
        }
        self.last_arrival = Some(Instant::now());
        if let Some(link) = g.trace
            && self.links.len() < trace::LINKS_MAX
        {
            self.links.push(link);
        }
        for (item, reply) in g.items {
            self.bytes += item.batch.len() as u64;
            let key = (item.topic_id, item.partition);
            let i = *self.index.entry(key).or_insert_with(|| {
                self.groups.push((key, Vec::new()));
                self.groups.len() - 1
            });
            self.groups[i].1.push((item, reply, g.permit.clone(), acknowledged));
        }
    }

    /// When to seal early: `quiet` after the last arrival while producers wait, once the
    /// budget has a token, or the transactions' budget when a transactional producer waits
    /// (None: nobody waits, or early seals are off).
    fn early_at(&self, budgets: &Budgets, quiet: Duration) -> Option<Instant> {
        if self.waiting == 0 {
            return None;
        }
        let quiet_at = self.last_arrival? + quiet;
        let txn = if self.txn_waiting > 0 { budgets.txn.ready_at() } else { None };
        let ready = match (budgets.puts.ready_at(), txn) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Some(quiet_at.max(ready?))
    }
}

/// Why an object was sealed (`sidestream_upload_seals_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SealReason {
    /// `flush_interval_ms` after its first batch.
    Interval,
    /// It reached `flush_bytes`.
    Bytes,
    /// Nothing arrived for `quiet_flush_ms` while acks=all producers waited.
    Quiet,
    /// Asked for: a barrier, transaction markers, recovery, shutdown.
    Asked,
}

impl SealReason {
    fn counter(self) -> &'static metrics::Counter {
        static COUNTERS: std::sync::OnceLock<[Arc<metrics::Counter>; 4]> = std::sync::OnceLock::new();
        let counters = COUNTERS.get_or_init(|| {
            ["interval", "bytes", "quiet", "asked"].map(|reason| {
                metrics::counter(
                    "sidestream_upload_seals_total",
                    "Objects sealed for upload, by why they were sealed.",
                    &[("reason", reason)],
                )
            })
        });
        &counters[self as usize]
    }
}

/// The PUTs early seals may spend: a token bucket refilled at `per_s`, holding at most `burst`.
/// Every seal spends a token when there is one; only early seals wait for one, so the bucket
/// adds no PUT beyond `per_s` to what the interval and size seals cost.
#[derive(Debug)]
struct PutBudget {
    per_s: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl PutBudget {
    fn new(per_s: u32, burst: u32) -> Self {
        Self { per_s: f64::from(per_s), burst: f64::from(burst), tokens: f64::from(burst), at: Instant::now() }
    }

    fn tokens_at(&self, now: Instant) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.per_s).min(self.burst)
    }

    /// When the bucket holds a whole token (None: early seals are off).
    fn ready_at(&self) -> Option<Instant> {
        if self.per_s <= 0.0 || self.burst < 1.0 {
            return None;
        }
        let now = Instant::now();
        let missing = 1.0 - self.tokens_at(now);
        Some(if missing <= 0.0 { now } else { now + Duration::from_secs_f64(missing / self.per_s) })
    }

    fn spend(&mut self) {
        let now = Instant::now();
        let tokens = self.tokens_at(now);
        // A seal without a whole token empties the bucket; a debt ([`Self::charge`]) stays.
        self.tokens = if tokens > 0.0 { (tokens - 1.0).max(0.0) } else { tokens };
        self.at = now;
        debug_assert!((-self.burst..=self.burst).contains(&self.tokens));
    }

    /// Spends a token for a PUT that cannot wait, owing it when there is none (down to
    /// `-burst`): the early seals after it wait until the debt is refilled.
    fn charge(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens_at(now) - 1.0).max(-self.burst);
        self.at = now;
        debug_assert!((-self.burst..=self.burst).contains(&self.tokens));
    }

    fn has_token(&self) -> bool {
        self.per_s > 0.0 && self.tokens_at(Instant::now()) >= 1.0
    }
}

/// The general PUT budget and the transactions' (see [`UploadSettings::txn_puts_per_s`]).
#[derive(Debug)]
struct Budgets {
    puts: PutBudget,
    txn: PutBudget,
}

impl Budgets {
    fn new(settings: &UploadSettings) -> Self {
        Self {
            puts: PutBudget::new(settings.puts_per_s, settings.puts_burst),
            txn: PutBudget::new(settings.txn_puts_per_s, settings.txn_puts_burst),
        }
    }

    /// Spends the token a seal costs: an early seal a transaction waits for takes the
    /// transactions' token when there is one; every other seal the general one.
    fn spend(&mut self, reason: SealReason, open: &OpenObject) {
        if reason == SealReason::Quiet && open.txn_waiting > 0 && self.txn.has_token() {
            self.txn.spend();
        } else {
            self.puts.spend();
        }
    }
}

async fn run_flusher(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    sealed_tx: mpsc::Sender<Queued>,
    settings: UploadSettings,
    deps: Arc<UploadDeps>,
    committer: JoinHandle<()>,
) {
    let mut open = OpenObject::default();
    let mut budget = Budgets::new(&settings);
    let closed = loop {
        let early = open.early_at(&budget, settings.quiet_flush);
        let wake = match (open.deadline, early) {
            (Some(d), Some(e)) => Some(d.min(e)),
            (d, e) => d.or(e),
        };
        let msg = match wake {
            // Biased, the timer first: a busy inbox never holds off a due seal, and the order
            // does not depend on tokio's random branch choice (the simulation replays runs).
            Some(wake) => tokio::select! {
                biased;
                _ = sleep_until(wake) => {
                    let reason = if open.deadline.is_some_and(|d| d <= wake) { SealReason::Interval } else { SealReason::Quiet };
                    seal_open(&mut open, reason, &mut budget, &sealed_tx, &settings, &deps).await;
                    continue;
                }
                m = rx.recv() => m,
            },
            None => rx.recv().await,
        };
        match msg {
            Some(Msg::Group(g)) => {
                open.add(g, settings.flush_interval);
                if open.bytes >= settings.flush_bytes {
                    seal_open(&mut open, SealReason::Bytes, &mut budget, &sealed_tx, &settings, &deps).await;
                }
            }
            Some(Msg::Flush) => seal_open(&mut open, SealReason::Asked, &mut budget, &sealed_tx, &settings, &deps).await,
            Some(Msg::Barrier(done)) => {
                seal_open(&mut open, SealReason::Asked, &mut budget, &sealed_tx, &settings, &deps).await;
                let _ = sealed_tx.send(Queued::Barrier(done)).await;
            }
            Some(Msg::Markers(end, reply)) => {
                seal_open(&mut open, SealReason::Asked, &mut budget, &sealed_tx, &settings, &deps).await;
                // The markers' PUT is the transaction's: it takes a token of the transactions'
                // budget, owed if there is none (it never waits: the commit needs it).
                if settings.txn_puts_per_s > 0 {
                    budget.txn.charge();
                } else {
                    budget.puts.spend();
                }
                seal_markers(end, reply, &sealed_tx, &settings, &deps).await;
            }
            Some(Msg::Close(done)) => break Some(done),
            None => break None,
        }
    };
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Group(g) => open.add(g, settings.flush_interval),
            Msg::Markers(_, reply) => {
                let _ = reply.send(Err(AgentError::ShuttingDown));
            }
            Msg::Flush | Msg::Close(_) | Msg::Barrier(_) => {}
        }
    }
    seal(open, &sealed_tx, &settings, &deps).await;
    drop(sealed_tx);
    let _ = committer.await;
    if let Some(done) = closed {
        let _ = done.send(());
    }
}

/// Seals the open object (if it holds anything) for `reason`, spending a PUT token.
async fn seal_open(
    open: &mut OpenObject,
    reason: SealReason,
    budget: &mut Budgets,
    sealed_tx: &mpsc::Sender<Queued>,
    settings: &UploadSettings,
    deps: &Arc<UploadDeps>,
) {
    if open.groups.is_empty() {
        return;
    }
    reason.counter().inc();
    budget.spend(reason, open);
    seal(std::mem::take(open), sealed_tx, settings, deps).await;
}

/// Builds the object, starts its PUT, queues it for commit (waits if too many are in flight).
async fn seal(open: OpenObject, sealed_tx: &mpsc::Sender<Queued>, settings: &UploadSettings, deps: &Arc<UploadDeps>) {
    if open.groups.is_empty() {
        return;
    }
    // Copying megabytes is CPU work: keep it off the async workers, where it would delay the
    // connections' tasks queued behind it.
    let (bytes, batches) = (open.bytes as usize, open.groups.iter().map(|(_, a)| a.len()).sum());
    // Traced when it carries a sampled request's data, else at the sampling ratio.
    let mut span = if open.links.is_empty() {
        trace::root("object.upload", SpanKind::Internal)
    } else {
        trace::root_unsampled("object.upload", SpanKind::Internal)
    };
    if let Some(span) = span.as_mut() {
        open.links.iter().for_each(|l| span.link(*l));
        span.set("sidestream.object.bytes", bytes);
        span.set("sidestream.object.batches", batches);
        span.set("sidestream.object.partitions", open.groups.len());
        span.set("sidestream.object.requests", open.requests);
        span.set("sidestream.object.sampled_requests", open.links.len());
    }
    let groups = open.groups;
    let built = crate::clock::run_blocking(move || {
        let mut builder = ObjectBuilder::with_capacity(bytes, batches);
        let mut waiters = Vec::new();
        for (_, appends) in groups {
            for (item, reply, permit, acknowledged) in appends {
                match builder.add_batch(item.topic_id, item.partition, &item.batch, &item.header) {
                    Ok(at) => {
                        waiters.push(Waiter { extent: at.extent, offset_delta: at.offset_delta, reply, acknowledged, _permit: permit })
                    }
                    Err(e) => {
                        if acknowledged {
                            tracing::error!(error = %e, "ACKNOWLEDGED DATA LOST: a logged batch does not fit an object");
                        }
                        let _ = reply.send(Err(AgentError::CorruptObject(e.to_string())));
                    }
                }
            }
        }
        let (body, extents) = builder.finish();
        (body, extents, waiters)
    })
    .await;
    let Ok((body, extents, waiters)) = built else {
        // The building task panicked: its waiters were dropped with it and see ShuttingDown.
        tracing::error!("building an object failed");
        return;
    };
    let trace = span.as_ref().map(Span::context);
    let (key, put) = start_upload(deps, settings, &body, &extents, trace);
    if let Some(span) = span.as_mut() {
        span.set("sidestream.object.key", key.key());
    }
    let sealed = Sealed { key, body, extents, waiters, wal_entries: open.wal_entries, put: Some(put), markers: None, span };
    queue_sealed(sealed, sealed_tx).await;
}

/// Builds a transaction's marker object, starts its PUT, queues it for commit.
async fn seal_markers(
    end: TxnEnd,
    reply: oneshot::Sender<Result<(), AgentError>>,
    sealed_tx: &mpsc::Sender<Queued>,
    settings: &UploadSettings,
    deps: &Arc<UploadDeps>,
) {
    let now = deps.clock.now_ms();
    let mut builder = ObjectBuilder::new();
    for (topic_id, partition) in &end.partitions {
        let (batch, header) = records::control_batch(end.producer_id, end.epoch, end.commit, now, COORDINATOR_EPOCH);
        if let Err(e) = builder.add_batch(*topic_id, *partition, &batch, &header) {
            let _ = reply.send(Err(AgentError::CorruptObject(e.to_string())));
            return;
        }
    }
    let (body, extents) = builder.finish();
    let (key, put) = start_upload(deps, settings, &body, &extents, None);
    let sealed = Sealed {
        key,
        body,
        extents,
        waiters: Vec::new(),
        wal_entries: None,
        put: Some(put),
        markers: Some((end, reply)),
        span: None,
    };
    queue_sealed(sealed, sealed_tx).await;
}

/// Hands a sealed object to the committer (waits if too many are in flight).
async fn queue_sealed(sealed: Sealed, sealed_tx: &mpsc::Sender<Queued>) {
    if let Err(mpsc::error::SendError(Queued::Object(s))) = sealed_tx.send(Queued::Object(Box::new(sealed))).await {
        if let Some(put) = s.put {
            put.abort();
        }
        if let Some((_, reply)) = s.markers {
            let _ = reply.send(Err(AgentError::ShuttingDown));
        }
        fail_all(s.waiters, AgentError::ShuttingDown);
    }
}

/// Picks a fresh key for `body` (holding `extents`), holds it, and starts its PUT (traced as
/// a child of `parent`, the object's span, when there is one).
fn start_upload(
    deps: &Arc<UploadDeps>,
    settings: &UploadSettings,
    body: &Bytes,
    extents: &[ExtentInfo],
    parent: Option<SpanContext>,
) -> (KeyHold, JoinHandle<()>) {
    let key = keys::new_object_key(&settings.key_prefix, &settings.agent, &*deps.clock, &*deps.entropy);
    let hold = deps.in_flight.hold(&key);
    let bytes_by_topic = cost::bytes_by_topic(extents.iter().map(|e| (e.topic_id, e.length)));
    let put = tokio::spawn(put_with_retry(deps.clone(), key, body.clone(), bytes_by_topic, parent));
    (hold, put)
}

fn backoff(attempt: u32) -> Duration {
    RETRY_BACKOFF_MIN.saturating_mul(1 << attempt.min(10)).min(RETRY_BACKOFF_MAX)
}

/// `bytes_by_topic`: each topic's bytes in `body` (every attempt is counted for each).
async fn put_with_retry(deps: Arc<UploadDeps>, key: String, body: Bytes, bytes_by_topic: HashMap<Uuid, u64>, parent: Option<SpanContext>) {
    let store = &deps.store;
    let uploads = metrics::counter("sidestream_objects_uploaded_total", "Objects uploaded by this agent.", &[]);
    let bytes = metrics::counter("sidestream_object_upload_bytes_total", "Bytes of objects uploaded.", &[]);
    let errors = metrics::counter("sidestream_object_upload_errors_total", "Failed object upload attempts.", &[]);
    let latency = metrics::histogram("sidestream_object_upload_seconds", "Time of one successful object upload.", &[]);
    let mut attempt = 0;
    loop {
        let started = std::time::Instant::now();
        cost::count_put(&*deps.controller, &bytes_by_topic);
        let mut span = trace::child_of(parent, "object_store.put", SpanKind::Client);
        if let Some(span) = span.as_mut() {
            span.set("sidestream.object.key", key.as_str());
            span.set("sidestream.object.bytes", body.len());
            span.set("sidestream.attempt", attempt);
        }
        let put = store.put(&key, body.clone()).await;
        if let (Some(span), Err(e)) = (span.as_mut(), &put) {
            span.fail(e);
        }
        drop(span);
        match put {
            Ok(()) => {
                crate::health::set("object_store", true, "uploads succeed");
                latency.record(started.elapsed());
                uploads.inc();
                bytes.add(body.len() as u64);
                if let Some(cache) = &deps.cache {
                    cache.insert_object(&key, &body);
                }
                return;
            }
            Err(e) => {
                errors.inc();
                let retriable = e.is_retriable();
                tracing::warn!(key, attempt, error = %e, retriable, "object upload failed; retrying");
                crate::health::set("object_store", false, format!("uploads fail: {e}"));
                // Permanent errors are retried too, more slowly: an operator may fix a
                // permission or a full disk, and the producers' own timeouts bound their wait.
                sleep(if retriable { backoff(attempt) } else { RETRY_BACKOFF_MAX }).await;
                attempt += 1;
            }
        }
    }
}

async fn run_committer(
    mut sealed_rx: mpsc::Receiver<Queued>,
    deps: Arc<UploadDeps>,
    settings: UploadSettings,
    committed_wal: watch::Sender<u64>,
    losses: Arc<Losses>,
) {
    let commits = metrics::counter("sidestream_commits_total", "Objects committed to the controller.", &[]);
    let latency = metrics::histogram("sidestream_commit_seconds", "Time to commit one object (retries included).", &[]);
    let reuploads = metrics::counter(
        "sidestream_objects_reuploaded_total",
        "Objects uploaded again under a new key because their first key was collected as an orphan.",
        &[],
    );
    // Every WAL entry <= mark is committed (or, loudly, given up).
    let mut mark = settings.wal_start_mark;
    while let Some(queued) = sealed_rx.recv().await {
        let mut s = match queued {
            Queued::Object(s) => *s,
            Queued::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        // The mark this commit makes true: the object's last entry if its entries directly
        // follow the mark, else (an invariant broken: never seen) the mark as it is.
        let (contiguous, commit_mark) = match s.wal_entries {
            None => (true, mark),
            Some((first, last)) if first == mark + 1 => (true, last),
            Some((first, last)) => {
                tracing::error!(mark, first, last, "WAL entries out of order in the upload pipeline; the WAL mark stays");
                debug_assert!(false, "WAL entries {first}..={last} do not follow the mark {mark}");
                (false, mark)
            }
        };
        // An object without WAL entries (acks=all only) moves no mark: nothing to record.
        let wal = match (&settings.wal_log_id, s.wal_entries) {
            (Some(log_id), Some(_)) if commit_mark > 0 => Some(WalMark { log_id: log_id.clone(), entry_id: commit_mark }),
            _ => None,
        };
        let mut attempt = 0;
        let started = std::time::Instant::now();
        let object_span = s.span.as_ref().map(Span::context);
        let results = loop {
            if let Some(put) = s.put.take()
                && put.await.is_err()
            {
                // Only a shutdown aborts a PUT: the WAL keeps the data for the next start.
                break Err(ControllerError::Unavailable("upload cancelled".into()));
            }
            let req = CommitRequest {
                object_key: s.key.key().to_string(),
                object_size_bytes: s.body.len() as u64,
                agent: settings.agent.clone(),
                extents: s.extents.clone(),
                wal: wal.clone(),
                txn_end: s.markers.as_ref().map(|(end, _)| end.clone()),
            };
            let mut span = trace::child_of(object_span, "controller.commit", SpanKind::Client);
            if let Some(span) = span.as_mut() {
                span.set("sidestream.object.key", s.key.key());
                span.set("sidestream.extents", s.extents.len());
                span.set("sidestream.attempt", attempt);
            }
            let committed = deps.controller.commit_object(req).await;
            if let (Some(span), Err(e)) = (span.as_mut(), &committed) {
                span.fail(e);
            }
            drop(span);
            match committed {
                Ok(r) => {
                    crate::health::set("controller", true, "commits succeed");
                    break Ok(r);
                }
                Err(ControllerError::Unavailable(e)) => {
                    tracing::warn!(key = s.key.key(), attempt, error = %e, "commit failed; retrying");
                    crate::health::set("controller", false, format!("commits fail: {e}"));
                    sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(ControllerError::ObjectCollected(e)) => {
                    // The data is still ours: upload it again and commit it, before anything
                    // sealed later (this loop holds the order).
                    tracing::warn!(key = s.key.key(), error = %e, "object collected before its commit; uploading it again");
                    reuploads.inc();
                    let (key, put) = start_upload(&deps, &settings, &s.body, &s.extents, object_span);
                    (s.key, s.put) = (key, Some(put));
                }
                Err(e) => break Err(e),
            }
        };
        if let Some((end, reply)) = s.markers.take() {
            let answer = match results {
                Ok(bases) => {
                    latency.record(started.elapsed());
                    commits.inc();
                    tracing::debug!(transactional_id = %end.transactional_id, commit = end.commit, partitions = end.partitions.len(), "transaction markers committed");
                    // A deleted topic's marker fails alone; the transaction is complete all the same.
                    match bases.into_iter().find_map(|r| r.err().filter(|e| !matches!(e, ControllerError::UnknownTopicOrPartition))) {
                        None => Ok(()),
                        Some(e) => Err(AgentError::Controller(e)),
                    }
                }
                Err(ControllerError::Unavailable(e)) => Err(AgentError::ObjectStore(ObjectError::Transient(e))),
                // Markers of a transaction already complete (a repeat): not data, nothing lost.
                Err(e) => Err(AgentError::Controller(e)),
            };
            let _ = reply.send(answer);
            continue;
        }
        match results {
            Ok(bases) => {
                latency.record(started.elapsed());
                commits.inc();
                let mut lost = 0;
                let mut lost_error = None;
                for w in s.waiters {
                    let r = match bases.get(w.extent) {
                        Some(Ok(base)) => Ok(base + w.offset_delta),
                        Some(Err(e)) => Err(e.clone()),
                        None => Err(ControllerError::InvalidRequest("missing extent".into())),
                    };
                    if let Err(e) = &r
                        && w.acknowledged
                        && !matches!(e, ControllerError::UnknownTopicOrPartition | ControllerError::UnknownTopicId)
                    {
                        lost += 1;
                        lost_error = Some(e.clone());
                    }
                    let _ = w.reply.send(r.map_err(AgentError::Controller));
                }
                if let Some(e) = lost_error {
                    losses.record(lost, s.key.key(), &e);
                }
                if contiguous && commit_mark > mark {
                    advance_mark(&mut mark, commit_mark, &committed_wal);
                }
            }
            Err(ControllerError::Unavailable(e)) => {
                // Shutting down with the upload cancelled: nothing is released; the WAL replays
                // the object's entries at the next start.
                fail_all(s.waiters, AgentError::ObjectStore(ObjectError::Transient(e)));
            }
            Err(e) => {
                let lost = s.waiters.iter().filter(|w| w.acknowledged).count() as u64;
                tracing::error!(key = s.key.key(), error = %e, "commit refused");
                losses.record(lost, s.key.key(), &e);
                fail_all(s.waiters, AgentError::Controller(e));
                // Refused for good: holding the mark would only stop every later entry from
                // being released. The loss is counted and reported above.
                if contiguous && commit_mark > mark {
                    advance_mark(&mut mark, commit_mark, &committed_wal);
                }
            }
        }
    }
}

/// Moves the contiguous WAL mark forward (never back) and publishes it.
fn advance_mark(mark: &mut u64, to: u64, committed_wal: &watch::Sender<u64>) {
    assert!(to > *mark, "the WAL mark only grows: {} -> {to}", *mark);
    *mark = to;
    committed_wal.send_replace(to);
}

fn fail_all(waiters: Vec<Waiter>, e: AgentError) {
    for w in waiters {
        let _ = w.reply.send(Err(e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::agent::client::InProcess;
    use crate::api::CreateTopic;
    use crate::clock::{SeededEntropy, SystemClock};
    use crate::config::TopicsConfig;
    use crate::controller::Controller;
    use crate::controller::store::sqlite::SqliteStore;
    use crate::format::records::{encode_batch, peek_header};
    use crate::object::memory::MemoryStore;

    const INTERVAL: Duration = Duration::from_secs(1);
    const QUIET: Duration = Duration::from_millis(2);

    /// An uploader with a 1 s flush interval and the given PUT budget, over a memory store and
    /// an in-process controller with one topic; returns it with the topic's id.
    async fn start_uploader(dir: &std::path::Path, puts_per_s: u32, puts_burst: u32) -> (Uploader, Uuid) {
        start_uploader_with(dir, puts_per_s, puts_burst, 0).await
    }

    /// [`start_uploader`] with a transactions' budget of `txn_puts_per_s` (as its burst too).
    async fn start_uploader_with(dir: &std::path::Path, puts_per_s: u32, puts_burst: u32, txn_puts_per_s: u32) -> (Uploader, Uuid) {
        let store = Arc::new(SqliteStore::open(&dir.join("c.db")).unwrap());
        let c = Controller::open(store, TopicsConfig::default(), 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(5)));
        let controller: Arc<dyn ControllerClient> = Arc::new(InProcess(Arc::new(c.unwrap())));
        let create =
            CreateTopic { name: "t".into(), partitions: 1, replication_factor: -1, configs: BTreeMap::new(), validate_only: false };
        let topic = controller.create_topic(create).await.unwrap();
        let settings = UploadSettings {
            flush_interval: INTERVAL,
            flush_bytes: 1 << 20,
            buffer_bytes_max: 1 << 22,
            max_in_flight_objects: 4,
            quiet_flush: QUIET,
            puts_per_s,
            puts_burst,
            txn_puts_per_s,
            txn_puts_burst: txn_puts_per_s,
            agent: "a".into(),
            key_prefix: "p".into(),
            wal_log_id: Some("log".into()),
            wal_start_mark: 0,
        };
        let deps = UploadDeps {
            store: Arc::new(MemoryStore::new()),
            cache: None,
            controller,
            clock: Arc::new(SystemClock),
            entropy: Arc::new(SeededEntropy::new(7)),
            in_flight: Arc::new(InFlightKeys::default()),
        };
        (Uploader::start(settings, deps), topic.id)
    }

    /// Submits one batch (a WAL entry when `wal_entry` is set, else acks=all) and returns how
    /// long its commit took on tokio's (paused) clock.
    async fn commit_time(uploader: &Uploader, topic_id: Uuid, wal_entry: Option<u64>) -> Duration {
        commit_time_of(uploader, topic_id, wal_entry, encode_batch(0, &[b"v".as_slice()])).await
    }

    async fn commit_time_of(uploader: &Uploader, topic_id: Uuid, wal_entry: Option<u64>, batch: Bytes) -> Duration {
        let header = peek_header(&batch).unwrap().unwrap();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(30);
        let permit = uploader.reserve(batch.len() as u64, deadline).await.unwrap();
        let item = GroupItem { topic_id, partition: 0, batch, header };
        let pending = uploader.submit(vec![item], wal_entry, permit, None).unwrap().pop().unwrap();
        match pending.wait(deadline).await {
            Ok(_) => {}
            // A transactional batch of no transaction: the controller refuses its commit, which
            // is answered once the object is sealed and uploaded, the time measured.
            Err(AgentError::Controller(ControllerError::InvalidProducerIdMapping(_))) if header.is_transactional() => {}
            Err(e) => panic!("commit failed: {e}"),
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_agent_answers_acks_all_after_the_quiet_spell_until_the_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, topic) = start_uploader(dir.path(), 4, 2).await;
        // The burst: two early seals, each about the quiet spell after the batch.
        for _ in 0..2 {
            let took = commit_time(&uploader, topic, None).await;
            assert!(took >= QUIET && took < QUIET * 10, "early seal took {took:?}");
        }
        // The bucket is empty: the next token comes a quarter second later (4 per second),
        // still well before the interval.
        let took = commit_time(&uploader, topic, None).await;
        assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(300), "token wait took {took:?}");
        // A quiet second refills the bucket.
        tokio::time::sleep(INTERVAL).await;
        let took = commit_time(&uploader, topic, None).await;
        assert!(took < QUIET * 10, "after a refill took {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_waiting_or_no_budget_waits_out_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        // acks=1: the WAL entry was answered already; nobody waits, so no early seal.
        let (uploader, topic) = start_uploader(dir.path(), 4, 4).await;
        let took = commit_time(&uploader, topic, Some(1)).await;
        assert!(took >= INTERVAL, "a WAL entry sealed early after {took:?}");
        // puts_per_s = 0: early seals are off.
        let dir = tempfile::tempdir().unwrap();
        let (uploader, topic) = start_uploader(dir.path(), 0, 4).await;
        let took = commit_time(&uploader, topic, None).await;
        assert!(took >= INTERVAL, "sealed early without a budget after {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_transaction_seals_early_on_the_transactions_budget() {
        let dir = tempfile::tempdir().unwrap();
        // No general budget: a plain acks=all batch waits out the interval; a transactional
        // one is sealed after the quiet spell while the transactions' budget has tokens.
        let (uploader, topic) = start_uploader_with(dir.path(), 0, 0, 2).await;
        let took = commit_time(&uploader, topic, None).await;
        assert!(took >= INTERVAL, "sealed early without a budget after {took:?}");
        let txn_batch = || records::encode_transactional_batch(7, 0, 0, 0, &[b"v".as_slice()]);
        for _ in 0..2 {
            let took = commit_time_of(&uploader, topic, None, txn_batch()).await;
            assert!(took >= QUIET && took < QUIET * 10, "transactional early seal took {took:?}");
        }
        // Spent: the next token comes half a second later (2 per second).
        let took = commit_time_of(&uploader, topic, None, txn_batch()).await;
        assert!(took >= Duration::from_millis(450) && took < INTERVAL, "token wait took {took:?}");
    }

    #[test]
    fn a_charge_without_a_token_is_owed() {
        let mut budget = PutBudget::new(10, 2);
        let at = budget.at;
        budget.charge();
        budget.charge();
        budget.charge();
        budget.charge();
        assert!((budget.tokens + 2.0).abs() < 1e-3, "owed down to -burst: {}", budget.tokens);
        assert!(!budget.has_token());
        // A plain spend does not forgive the debt; a token is whole again 0.3 s later.
        budget.spend();
        assert!(budget.tokens < -1.9, "{}", budget.tokens);
        assert!(budget.tokens_at(at + Duration::from_millis(290)) < 1.0);
        assert!(budget.tokens_at(budget.at + Duration::from_millis(310)) >= 1.0);
    }

    #[test]
    fn the_budget_refills_at_its_rate_up_to_its_burst() {
        let mut budget = PutBudget::new(10, 3);
        let start = budget.at;
        assert_eq!(budget.tokens_at(start), 3.0);
        for _ in 0..5 {
            budget.spend();
        }
        // Spending never borrows: the bucket bottoms out at zero.
        assert!(budget.tokens < 1e-3, "{}", budget.tokens);
        let at = budget.at;
        assert!((budget.tokens_at(at + Duration::from_millis(150)) - 1.5).abs() < 1e-2);
        assert_eq!(budget.tokens_at(at + Duration::from_secs(60)), 3.0);
        assert!(PutBudget::new(0, 3).ready_at().is_none());
        assert!(PutBudget::new(3, 0).ready_at().is_none());
    }
}
