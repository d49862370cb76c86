//! The upload buffer: many partitions' batches -> one object -> PUT -> commit -> answers.
//!
//! ```text
//! submit(group) --mpsc--> flusher: adds each group whole to the open object (batches grouped
//!                         by partition); seals it every flush_interval_ms (from its first
//!                         batch) or at flush_bytes
//!                sealed --bounded mpsc (max_in_flight_objects)--> committer: awaits each
//!                         object's PUT in seal order, commits it, answers every waiter
//! ```
//! A group is the batches of one produce request; it never straddles two objects, so a WAL entry
//! (one group) is committed whole, and the WAL mark sent with each commit (the highest WAL entry
//! in the object) tells recovery exactly which entries are committed. PUTs of sealed objects run
//! concurrently; commits happen strictly in seal order, so batches from one connection keep
//! their order in every partition and WAL marks only grow. Memory is bounded by
//! `buffer_bytes_max`: a group holds its bytes from a semaphore until every batch in it is
//! answered. Object store and controller failures are retried with capped exponential backoff;
//! producers waiting meanwhile time out on their own deadline with a retriable error.

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
use crate::clock::{Clock, Entropy};
use crate::controller::client::ControllerClient;
use crate::controller::{CommitRequest, ControllerError, WalMark};
use crate::metrics;
use crate::object::format::{ExtentInfo, ObjectBuilder};
use crate::object::{ObjectError, ObjectStore, keys};
use crate::protocol::records::BatchHeader;

/// Upload settings, from `[upload]`.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub flush_interval: Duration,
    pub flush_bytes: u64,
    pub buffer_bytes_max: u64,
    pub max_in_flight_objects: usize,
    /// The agent's name in object keys.
    pub agent: String,
    /// Key prefix inside the store.
    pub key_prefix: String,
    /// The id of this agent's WAL, sent with every commit that covers WAL entries.
    pub wal_log_id: Option<String>,
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
}

enum Msg {
    Group(Group),
    /// Seal what is buffered now, without waiting for the flush interval.
    Flush,
    /// Seal what is buffered now and stop; answered when everything is committed.
    Close(oneshot::Sender<()>),
}

/// Handle to the upload pipeline.
#[derive(Clone)]
pub struct Uploader {
    tx: mpsc::UnboundedSender<Msg>,
    budget: Arc<Semaphore>,
    budget_bytes: u64,
    committed_wal: watch::Receiver<u64>,
}

/// The components the pipeline uses.
pub struct UploadDeps {
    pub store: Arc<dyn ObjectStore>,
    /// Uploaded objects are written through into its memory tier.
    pub cache: Option<Arc<ReadCache>>,
    pub controller: Arc<dyn ControllerClient>,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
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
        let (committed_tx, committed_wal) = watch::channel(0);
        let deps = Arc::new(deps);
        let budget_bytes = settings.buffer_bytes_max;
        let committer = tokio::spawn(run_committer(sealed_rx, deps.clone(), settings.clone(), committed_tx));
        tokio::spawn(run_flusher(rx, sealed_tx, settings, deps, committer));
        Uploader { tx, budget: Arc::new(Semaphore::new(budget_bytes as usize)), budget_bytes, committed_wal }
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
    /// object holding the group is committed.
    pub fn submit(
        &self,
        items: Vec<GroupItem>,
        wal_entry: Option<u64>,
        permit: OwnedSemaphorePermit,
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
        let group = Group { items, wal_entry, permit: Arc::new(permit) };
        self.tx.send(Msg::Group(group)).map_err(|_| AgentError::ShuttingDown)?;
        Ok(pending)
    }

    /// Seals the buffered batches into an object now (recovery does not wait for the timer).
    pub fn flush(&self) {
        let _ = self.tx.send(Msg::Flush);
    }

    /// The highest WAL entry id known committed (0: none yet).
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
    _permit: Arc<OwnedSemaphorePermit>,
}

struct Sealed {
    key: String,
    size_bytes: u64,
    extents: Vec<ExtentInfo>,
    waiters: Vec<Waiter>,
    wal_entry: Option<u64>,
    put: JoinHandle<()>,
}

type Pending = (GroupItem, Reply, Arc<OwnedSemaphorePermit>);

/// The object being filled: batches grouped by partition, partitions in arrival order.
#[derive(Default)]
struct OpenObject {
    groups: Vec<((Uuid, i32), Vec<Pending>)>,
    index: HashMap<(Uuid, i32), usize>,
    bytes: u64,
    deadline: Option<Instant>,
    wal_entry: Option<u64>,
}

impl OpenObject {
    fn add(&mut self, g: Group, flush_interval: Duration) {
        self.deadline.get_or_insert_with(|| Instant::now() + flush_interval);
        if g.wal_entry.is_some() {
            self.wal_entry = self.wal_entry.max(g.wal_entry);
        }
        for (item, reply) in g.items {
            self.bytes += item.batch.len() as u64;
            let key = (item.topic_id, item.partition);
            let i = *self.index.entry(key).or_insert_with(|| {
                self.groups.push((key, Vec::new()));
                self.groups.len() - 1
            });
            self.groups[i].1.push((item, reply, g.permit.clone()));
        }
    }
}

async fn run_flusher(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    sealed_tx: mpsc::Sender<Sealed>,
    settings: UploadSettings,
    deps: Arc<UploadDeps>,
    committer: JoinHandle<()>,
) {
    let mut open = OpenObject::default();
    let closed = loop {
        let msg = match open.deadline {
            Some(deadline) => tokio::select! {
                m = rx.recv() => m,
                _ = sleep_until(deadline) => {
                    seal(std::mem::take(&mut open), &sealed_tx, &settings, &deps).await;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match msg {
            Some(Msg::Group(g)) => {
                open.add(g, settings.flush_interval);
                if open.bytes >= settings.flush_bytes {
                    seal(std::mem::take(&mut open), &sealed_tx, &settings, &deps).await;
                }
            }
            Some(Msg::Flush) => seal(std::mem::take(&mut open), &sealed_tx, &settings, &deps).await,
            Some(Msg::Close(done)) => break Some(done),
            None => break None,
        }
    };
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Group(g) = msg {
            open.add(g, settings.flush_interval);
        }
    }
    seal(open, &sealed_tx, &settings, &deps).await;
    drop(sealed_tx);
    let _ = committer.await;
    if let Some(done) = closed {
        let _ = done.send(());
    }
}

/// Builds the object, starts its PUT, queues it for commit (waits if too many are in flight).
async fn seal(open: OpenObject, sealed_tx: &mpsc::Sender<Sealed>, settings: &UploadSettings, deps: &Arc<UploadDeps>) {
    if open.groups.is_empty() {
        return;
    }
    // Copying megabytes is CPU work: keep it off the async workers, where it would delay the
    // connections' tasks queued behind it.
    let (bytes, batches) = (open.bytes as usize, open.groups.iter().map(|(_, a)| a.len()).sum());
    let groups = open.groups;
    let built = tokio::task::spawn_blocking(move || {
        let mut builder = ObjectBuilder::with_capacity(bytes, batches);
        let mut waiters = Vec::new();
        for (_, appends) in groups {
            for (item, reply, permit) in appends {
                match builder.add_batch(item.topic_id, item.partition, &item.batch, &item.header) {
                    Ok(at) => waiters.push(Waiter { extent: at.extent, offset_delta: at.offset_delta, reply, _permit: permit }),
                    Err(e) => {
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
    let key = keys::new_object_key(&settings.key_prefix, &settings.agent, &*deps.clock, &*deps.entropy);
    let size_bytes = body.len() as u64;
    let put = tokio::spawn(put_with_retry(deps.clone(), key.clone(), body));
    let sealed = Sealed { key, size_bytes, extents, waiters, wal_entry: open.wal_entry, put };
    if let Err(mpsc::error::SendError(s)) = sealed_tx.send(sealed).await {
        s.put.abort();
        fail_all(s.waiters, AgentError::ShuttingDown);
    }
}

fn backoff(attempt: u32) -> Duration {
    RETRY_BACKOFF_MIN.saturating_mul(1 << attempt.min(10)).min(RETRY_BACKOFF_MAX)
}

async fn put_with_retry(deps: Arc<UploadDeps>, key: String, body: Bytes) {
    let store = &deps.store;
    let uploads = metrics::counter("sidestream_objects_uploaded_total", "Objects uploaded by this agent.", &[]);
    let bytes = metrics::counter("sidestream_object_bytes_uploaded_total", "Bytes of objects uploaded.", &[]);
    let errors = metrics::counter("sidestream_object_upload_errors_total", "Failed object upload attempts.", &[]);
    let latency = metrics::histogram("sidestream_object_upload_seconds", "Time of one successful object upload.", &[]);
    let mut attempt = 0;
    loop {
        let started = std::time::Instant::now();
        match store.put(&key, body.clone()).await {
            Ok(()) => {
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
                // Permanent errors are retried too, more slowly: an operator may fix a
                // permission or a full disk, and the producers' own timeouts bound their wait.
                sleep(if retriable { backoff(attempt) } else { RETRY_BACKOFF_MAX }).await;
                attempt += 1;
            }
        }
    }
}

async fn run_committer(
    mut sealed_rx: mpsc::Receiver<Sealed>,
    deps: Arc<UploadDeps>,
    settings: UploadSettings,
    committed_wal: watch::Sender<u64>,
) {
    let commits = metrics::counter("sidestream_commits_total", "Objects committed to the controller.", &[]);
    let latency = metrics::histogram("sidestream_commit_seconds", "Time to commit one object (retries included).", &[]);
    while let Some(s) = sealed_rx.recv().await {
        if s.put.await.is_err() {
            fail_all(s.waiters, AgentError::ObjectStore(ObjectError::Transient("upload cancelled".into())));
            continue;
        }
        let wal = match (&settings.wal_log_id, s.wal_entry) {
            (Some(log_id), Some(entry_id)) => Some(WalMark { log_id: log_id.clone(), entry_id }),
            _ => None,
        };
        let req = CommitRequest {
            object_key: s.key.clone(),
            object_size_bytes: s.size_bytes,
            agent: settings.agent.clone(),
            extents: s.extents,
            wal,
            txn_end: None,
        };
        let mut attempt = 0;
        let started = std::time::Instant::now();
        let results = loop {
            match deps.controller.commit_object(req.clone()).await {
                Ok(r) => break Ok(r),
                Err(ControllerError::Unavailable(e)) => {
                    tracing::warn!(key = s.key, attempt, error = %e, "commit failed; retrying");
                    sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => break Err(e),
            }
        };
        match results {
            Ok(bases) => {
                latency.record(started.elapsed());
                commits.inc();
                if let Some(entry) = s.wal_entry {
                    committed_wal.send_if_modified(|c| {
                        let grew = entry > *c;
                        *c = (*c).max(entry);
                        grew
                    });
                }
                for w in s.waiters {
                    let r = match bases.get(w.extent) {
                        Some(Ok(base)) => Ok(base + w.offset_delta),
                        Some(Err(e)) => Err(AgentError::Controller(e.clone())),
                        None => Err(AgentError::Controller(ControllerError::InvalidRequest("missing extent".into()))),
                    };
                    let _ = w.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(key = s.key, error = %e, "commit refused");
                fail_all(s.waiters, AgentError::Controller(e));
            }
        }
    }
}

fn fail_all(waiters: Vec<Waiter>, e: AgentError) {
    for w in waiters {
        let _ = w.reply.send(Err(e.clone()));
    }
}
