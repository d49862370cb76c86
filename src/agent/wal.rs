//! The local write-ahead log: what makes acks=1 durable in milliseconds.
//!
//! acks=0/1 produce requests are appended here as one entry each, fsync'd, handed to the upload
//! buffer, and only then answered. After a crash, [`recover`] finds every complete entry and the
//! agent replays into objects those the controller has not committed (entry ids above the WAL
//! mark recorded with each commit), so nothing acknowledged is lost and nothing is committed
//! twice. acks=all data does not pass through here: its client is answered only after commit.
//!
//! ```text
//! <data_dir>/wal/log-id                  this log's id (the controller keys WAL marks by it)
//! <data_dir>/wal/<first entry id>.wal    segments; entry = len u32 | crc32c u32 | id u64 | payload
//! payload = count u32, then count x (topic id [16] | partition i32 | length u32 | batch bytes)
//! ```
//! The CRC covers the id and the payload. Ids are consecutive within a segment.
//!
//! Group commit: one writer thread takes every request queued while the previous write and
//! fsync ran, writes them with one `writev` (batches are not copied on their way to the file)
//! and one `fsync`, hands them to the uploader in id
//! order, then answers them. No timer: an idle log costs nothing, a busy one batches itself.
//! A segment is deleted once the controller has committed every entry in it.
//!
//! A failed write (disk full, I/O error) takes the log offline, as Kafka takes a failed log
//! directory offline, but not until a restart: the writer cuts the active segment back to its
//! last good length (no torn entry stays behind, so recovery still reaches every acknowledged
//! entry after it), appends get KAFKA_STORAGE_ERROR at once, and after a backoff (doubling from
//! [`RETRY_FIRST`] to [`RETRY_MAX`]) the next append tries the disk again; the first that
//! succeeds brings the log back online. `sidestream_wal_online` shows the state.
//!
//! Tests reach the disk through [`DiskFaults`]: each file operation of the writer may be failed
//! (a write after part of its bytes landed, as on a full disk). Under the deterministic
//! simulation ([`crate::clock::set_blocking_inline`]) the writer runs in the appending task, not
//! on its own thread, so which entries share a write is decided by the run, not by real time;
//! the retry backoff follows tokio's clock, which the simulation pauses.

use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout_at};
use uuid::Uuid;

use super::AgentError;
use super::upload::{GroupItem, Uploader};
use crate::clock::Entropy;
use crate::config::WalSync;
use crate::format::records;
use crate::metrics::{self, Counter, Histogram};
use crate::telemetry::trace::{self, Span, SpanContext, SpanKind};

const ENTRY_HEADER_BYTES: usize = 16;
const SEGMENT_SUFFIX: &str = ".wal";
/// Bytes written by one group commit at most (more waits for the next fsync).
const GROUP_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Backoff after the first failed write, doubled after each failed retry up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(50);
pub const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct WalSettings {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub sync: WalSync,
    pub bytes_max: u64,
}

/// One batch in an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalBatch {
    pub topic_id: Uuid,
    pub partition: i32,
    pub batch: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    pub id: u64,
    pub batches: Vec<WalBatch>,
}

#[derive(Debug, Clone)]
struct Segment {
    first_id: u64,
    /// None while empty.
    last_id: Option<u64>,
    path: PathBuf,
    bytes: u64,
}

/// What [`recover`] found on disk.
#[derive(Debug)]
pub struct Recovery {
    pub log_id: String,
    segments: Vec<Segment>,
    /// Bytes cut from a damaged segment and in segments after it.
    pub dropped_bytes: u64,
}

impl Recovery {
    /// The last complete entry's id (0 if none).
    pub fn last_id(&self) -> u64 {
        self.segments.iter().rev().find_map(|s| s.last_id).unwrap_or(0)
    }

    /// Entries with id > `after`, segment by segment (one segment in memory at a time).
    pub fn entries_after(&self, after: u64) -> impl Iterator<Item = std::io::Result<Vec<WalEntry>>> + '_ {
        self.segments.iter().filter(move |s| s.last_id.is_some_and(|l| l > after)).map(move |s| {
            let data = fs::read(&s.path)?;
            let (entries, _, _) = decode_segment(&data, s.first_id);
            Ok(entries.into_iter().filter(|e| e.id > after).collect())
        })
    }
}

/// One entry's payload, described rather than copied: the count and the per-batch headers in
/// `meta`, the batches themselves stay where the request put them. Built (and its CRC computed)
/// by the connection task; the writer thread only adds the 16-byte entry header and hands the
/// pieces to one `writev`.
struct Payload {
    /// count u32, then per batch: topic id [16] | partition i32 | length u32.
    meta: Vec<u8>,
    /// Payload bytes (meta and batches).
    len: usize,
    /// CRC32C of the payload bytes.
    crc: u32,
}

const PAYLOAD_COUNT_BYTES: usize = 4;
const PAYLOAD_BATCH_HEADER_BYTES: usize = 24;

impl Payload {
    fn new(items: &[GroupItem]) -> Self {
        let mut meta = Vec::with_capacity(PAYLOAD_COUNT_BYTES + items.len() * PAYLOAD_BATCH_HEADER_BYTES);
        meta.put_u32(items.len() as u32);
        for i in items {
            meta.put_slice(i.topic_id.as_bytes());
            meta.put_i32(i.partition);
            meta.put_u32(i.batch.len() as u32);
        }
        let (len, crc) = pieces(&meta, items).fold((0, 0), |(len, crc), p| (len + p.len(), crc32c::crc32c_append(crc, p)));
        Self { meta, len, crc }
    }

    fn pieces<'a>(&'a self, items: &'a [GroupItem]) -> impl Iterator<Item = &'a [u8]> + 'a {
        pieces(&self.meta, items)
    }

    /// The entry header: len u32 | crc32c(id, payload) u32 | id u64.
    fn entry_header(&self, id: u64) -> [u8; ENTRY_HEADER_BYTES] {
        let crc = crc32c::crc32c_combine(crc32c::crc32c(&id.to_be_bytes()), self.crc, self.len);
        let mut h = [0u8; ENTRY_HEADER_BYTES];
        h[..4].copy_from_slice(&(self.len as u32).to_be_bytes());
        h[4..8].copy_from_slice(&crc.to_be_bytes());
        h[8..].copy_from_slice(&id.to_be_bytes());
        h
    }
}

/// A payload's bytes in order: the count and the first batch's header, the first batch, the
/// second header...
fn pieces<'a>(meta: &'a [u8], items: &'a [GroupItem]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let headers = meta[PAYLOAD_COUNT_BYTES..].chunks(PAYLOAD_BATCH_HEADER_BYTES);
    std::iter::once(&meta[..PAYLOAD_COUNT_BYTES]).chain(headers.zip(items).flat_map(|(h, i)| [h, &i.batch[..]]))
}

/// Writes every byte of `bufs` (`write_vectored` may write part of them, e.g. past IOV_MAX).
fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the first `n` bytes of `slices` (an injected partial write).
fn write_prefix(file: &mut File, slices: &[IoSlice<'_>], mut n: usize) -> std::io::Result<()> {
    for s in slices {
        if n == 0 {
            break;
        }
        let take = n.min(s.len());
        file.write_all(&s[..take])?;
        n -= take;
    }
    Ok(())
}

fn decode_payload(id: u64, mut p: &[u8]) -> Option<WalEntry> {
    if p.remaining() < 4 {
        return None;
    }
    let n = p.get_u32() as usize;
    let mut batches = Vec::with_capacity(n.min(p.len() / 24));
    for _ in 0..n {
        if p.remaining() < 24 {
            return None;
        }
        let mut id_bytes = [0u8; 16];
        p.copy_to_slice(&mut id_bytes);
        let partition = p.get_i32();
        let len = p.get_u32() as usize;
        if p.remaining() < len {
            return None;
        }
        batches.push(WalBatch { topic_id: Uuid::from_bytes(id_bytes), partition, batch: Bytes::copy_from_slice(&p[..len]) });
        p.advance(len);
    }
    p.is_empty().then_some(WalEntry { id, batches })
}

/// Decodes the complete entries of a segment. Returns them, the byte length they cover, and
/// why decoding stopped early (torn or corrupt tail), if it did.
fn decode_segment(data: &[u8], first_id: u64) -> (Vec<WalEntry>, usize, Option<String>) {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let mut expected = first_id;
    while pos < data.len() {
        let rest = &data[pos..];
        if rest.len() < ENTRY_HEADER_BYTES {
            return (entries, pos, Some(format!("torn entry header at byte {pos}")));
        }
        let mut h = rest;
        let len = h.get_u32() as usize;
        let crc = h.get_u32();
        let id = h.get_u64();
        if rest.len() - ENTRY_HEADER_BYTES < len {
            return (entries, pos, Some(format!("torn entry {id} at byte {pos}")));
        }
        let payload = &rest[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + len];
        let actual = crc32c::crc32c_append(crc32c::crc32c(&id.to_be_bytes()), payload);
        if actual != crc {
            return (entries, pos, Some(format!("CRC mismatch at byte {pos}")));
        }
        if id != expected {
            return (entries, pos, Some(format!("entry id {id} where {expected} was expected, at byte {pos}")));
        }
        let Some(entry) = decode_payload(id, payload) else {
            return (entries, pos, Some(format!("malformed entry {id} at byte {pos}")));
        };
        entries.push(entry);
        pos += ENTRY_HEADER_BYTES + len;
        expected += 1;
    }
    (entries, pos, None)
}

fn segment_path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(format!("{first_id:020}{SEGMENT_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens the WAL directory: reads (or creates) the log id, checks every segment, truncates a
/// damaged segment at its last complete entry and removes the segments after it.
pub fn recover(dir: &Path, entropy: &dyn Entropy) -> std::io::Result<Recovery> {
    fs::create_dir_all(dir)?;
    let id_path = dir.join("log-id");
    let log_id = match fs::read_to_string(&id_path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => {
            let id = entropy.uuid().to_string();
            let tmp = dir.join("log-id.tmp");
            fs::write(&tmp, &id)?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &id_path)?;
            sync_dir(dir)?;
            id
        }
    };
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(first) = name.strip_suffix(SEGMENT_SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
            found.push((first, path));
        }
    }
    found.sort();
    let mut segments = Vec::new();
    let mut dropped_bytes = 0u64;
    let mut damaged = false;
    for (first_id, path) in found {
        if damaged {
            dropped_bytes += fs::metadata(&path)?.len();
            tracing::warn!(path = %path.display(), "removing WAL segment after a damaged one");
            fs::remove_file(&path)?;
            continue;
        }
        let mut data = Vec::new();
        File::open(&path)?.read_to_end(&mut data)?;
        let (entries, valid, damage) = decode_segment(&data, first_id);
        if let Some(why) = damage {
            damaged = true;
            let cut = data.len() - valid;
            dropped_bytes += cut as u64;
            tracing::warn!(path = %path.display(), why, kept_entries = entries.len(), dropped_bytes = cut,
                "WAL segment damaged: truncating after its last complete entry");
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(valid as u64)?;
            f.sync_all()?;
        }
        segments.push(Segment { first_id, last_id: entries.last().map(|e| e.id), path, bytes: valid as u64 });
    }
    if damaged {
        sync_dir(dir)?;
    }
    Ok(Recovery { log_id, segments, dropped_bytes })
}

struct WriteReq {
    payload: Payload,
    items: Vec<GroupItem>,
    permit: OwnedSemaphorePermit,
    /// The entry's log space: forgotten once written (given back when its segment is
    /// deleted), returned if the write fails.
    space: OwnedSemaphorePermit,
    reply: oneshot::Sender<Result<(), AgentError>>,
    /// The produce request's span when it is sampled: the parent of this entry's `wal.write`,
    /// linked from the object that carries the entry.
    trace: Option<SpanContext>,
}

/// A file operation of the WAL writer, as [`DiskFaults`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    /// Creating a segment (and syncing the directory).
    Create,
    /// Appending `bytes` to the active segment.
    Write { bytes: usize },
    /// fsync of the active segment (only with `[wal] sync = "fsync"`).
    Sync,
    /// Cutting a failed write off the active segment.
    Truncate,
}

/// An injected failure: for [`DiskOp::Write`], `written_bytes` of the data reach the file before
/// `error` (a full disk takes part of a write); other operations do nothing and fail.
#[derive(Debug)]
pub struct DiskFault {
    pub written_bytes: usize,
    pub error: std::io::Error,
}

/// Fault injection on the WAL's disk, for tests and the simulation (production passes none).
pub trait DiskFaults: Send + Sync + 'static {
    /// Called before each operation; `Err` fails it.
    fn check(&self, op: DiskOp) -> Result<(), DiskFault>;
}

/// Whether the log takes appends: set by the writer, read by [`Wal::enqueue`].
struct Health {
    online: AtomicBool,
    /// While offline: when appends may try the disk again, in ms since `base`.
    retry_at_ms: AtomicU64,
    /// tokio's clock: the writer thread enters the runtime, so both sides read the same one.
    base: Instant,
}

impl Health {
    fn new() -> Arc<Self> {
        let health = Arc::new(Health { online: AtomicBool::new(true), retry_at_ms: AtomicU64::new(0), base: Instant::now() });
        let gauge = Arc::downgrade(&health);
        metrics::gauges("sidestream_wal_online", "1 while the WAL takes writes, 0 while a failed write keeps it offline.", move || {
            gauge.upgrade().map(|h| vec![(vec![], i64::from(h.online.load(Ordering::SeqCst)))]).unwrap_or_default()
        });
        health
    }

    /// An error while offline and the retry time has not come; Ok to try the disk.
    fn check(&self) -> Result<(), AgentError> {
        if self.online.load(Ordering::SeqCst) || self.now_ms() >= self.retry_at_ms.load(Ordering::SeqCst) {
            return Ok(());
        }
        Err(AgentError::Wal("the write-ahead log is offline after a failed write (disk full?); retrying".into()))
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn offline_until(&self, retry: Duration) {
        self.retry_at_ms.store(self.now_ms() + retry.as_millis() as u64, Ordering::SeqCst);
        self.online.store(false, Ordering::SeqCst);
    }
}

/// The writer and its queue, run by the appending task (under the simulation).
type InlineWriter = (Writer, mpsc::UnboundedReceiver<WriteReq>);

/// Handle to the running WAL.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::UnboundedSender<WriteReq>,
    space: Arc<Semaphore>,
    health: Arc<Health>,
    /// The writer and its queue when it runs in the appending task (the simulation).
    inline: Option<Arc<Mutex<InlineWriter>>>,
}

impl Wal {
    /// Starts the writer thread (appending after `recovery`'s segments, ids from `next_id`) and
    /// the task deleting segments once the uploader's contiguous committed mark passes them
    /// (every entry at or below it committed). `committed_mark` is the WAL mark the controller
    /// already holds. `faults` fails chosen disk operations (tests; `None` in production).
    pub fn start(
        settings: WalSettings,
        recovery: Recovery,
        next_id: u64,
        committed_mark: u64,
        uploader: Uploader,
        faults: Option<Arc<dyn DiskFaults>>,
    ) -> std::io::Result<Wal> {
        let space = Arc::new(Semaphore::new(settings.bytes_max.min(Semaphore::MAX_PERMITS as u64) as usize));
        let on_disk: u64 = recovery.segments.iter().map(|s| s.bytes).sum();
        space.forget_permits(on_disk.min(settings.bytes_max) as usize);
        let segments = Arc::new(Mutex::new(recovery.segments));
        delete_committed(&segments, committed_mark, &space);
        let health = Health::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer::open(settings, segments.clone(), next_id, uploader.clone(), health.clone(), faults)?;
        let inline = if crate::clock::blocking_inline() {
            Some(Arc::new(Mutex::new((writer, rx))))
        } else {
            let runtime = tokio::runtime::Handle::current();
            std::thread::Builder::new().name("sidestream-wal".into()).spawn(move || {
                let _clock = runtime.enter();
                writer.run(rx)
            })?;
            None
        };
        let mut committed = uploader.committed_wal();
        let cleanup_space = space.clone();
        tokio::spawn(async move {
            let mut last = committed_mark;
            while committed.changed().await.is_ok() {
                let mark = *committed.borrow_and_update();
                // The uploader publishes one contiguous mark that only grows.
                assert!(mark >= last, "the committed WAL mark went back: {last} -> {mark}");
                last = mark;
                delete_committed(&segments, mark, &cleanup_space);
            }
        });
        Ok(Wal { tx, space, health, inline })
    }

    /// Queues one entry (the batches of one produce request) for the writer, waiting for log
    /// space until `deadline`. Entries are written in the order they are queued. The returned
    /// [`Logged`] resolves once the entry is durable (per `[wal] sync`) and handed to the
    /// uploader. `permit` is the entry's reservation of upload buffer space.
    pub async fn enqueue(&self, items: Vec<GroupItem>, permit: OwnedSemaphorePermit, deadline: Instant) -> Result<Logged, AgentError> {
        self.health.check()?;
        let payload = Payload::new(&items);
        let need = ((payload.len + ENTRY_HEADER_BYTES) as u64).min(u64::from(u32::MAX)) as u32;
        let space = match timeout_at(deadline, self.space.clone().acquire_many_owned(need)).await {
            Err(_) => return Err(AgentError::Timeout),
            Ok(Err(_)) => return Err(AgentError::ShuttingDown),
            Ok(Ok(p)) => p,
        };
        let (reply, rx) = oneshot::channel();
        let trace = trace::current();
        self.tx.send(WriteReq { payload, items, permit, space, reply, trace }).map_err(|_| AgentError::ShuttingDown)?;
        if let Some(inline) = &self.inline {
            let mut guard = inline.lock().unwrap_or_else(|p| p.into_inner());
            let (writer, queue) = &mut *guard;
            while let Ok(first) = queue.try_recv() {
                writer.commit(next_group(queue, first));
            }
        }
        Ok(Logged(rx))
    }
}

/// An entry queued for the WAL writer.
pub struct Logged(oneshot::Receiver<Result<(), AgentError>>);

impl Logged {
    /// Waits until the entry is durable and handed to the uploader.
    pub async fn wait(self) -> Result<(), AgentError> {
        self.0.await.map_err(|_| AgentError::ShuttingDown)?
    }
}

/// Deletes every segment whose entries are all <= `mark` (never the newest segment).
fn delete_committed(segments: &Mutex<Vec<Segment>>, mark: u64, space: &Semaphore) {
    let mut segs = segments.lock().unwrap_or_else(|p| p.into_inner());
    while segs.len() > 1 && segs[1].first_id <= mark.saturating_add(1) {
        let s = segs.remove(0);
        match fs::remove_file(&s.path) {
            Ok(()) => space.add_permits(s.bytes as usize),
            Err(e) => {
                tracing::error!(path = %s.path.display(), error = %e, "cannot delete committed WAL segment");
                segs.insert(0, s);
                return;
            }
        }
    }
}

struct WalMetrics {
    write_errors: Arc<Counter>,
    fsyncs: Arc<Counter>,
    entries: Arc<Counter>,
    bytes: Arc<Counter>,
    write_latency: Arc<Histogram>,
}

impl WalMetrics {
    fn new() -> Self {
        Self {
            write_errors: metrics::counter(
                "sidestream_wal_write_errors_total",
                "WAL group writes that failed (each took the log offline or kept it so).",
                &[],
            ),
            fsyncs: metrics::counter("sidestream_wal_syncs_total", "WAL group commits (one write + fsync each).", &[]),
            entries: metrics::counter("sidestream_wal_entries_total", "WAL entries written (one per acks=0/1 produce request).", &[]),
            bytes: metrics::counter("sidestream_wal_bytes_total", "Bytes written to the WAL.", &[]),
            write_latency: metrics::histogram("sidestream_wal_sync_seconds", "Time of one WAL group write + fsync.", &[]),
        }
    }
}

struct Writer {
    metrics: WalMetrics,
    settings: WalSettings,
    segments: Arc<Mutex<Vec<Segment>>>,
    file: Option<File>,
    active_bytes: u64,
    active_last: Option<u64>,
    next_id: u64,
    uploader: Uploader,
    health: Arc<Health>,
    /// A failed write may have left bytes past `active_bytes` in the active segment: they are
    /// cut before anything else is appended.
    dirty: bool,
    /// Wait before the next try after a failed one (while offline).
    retry: Duration,
    faults: Option<Arc<dyn DiskFaults>>,
}

/// The requests of one group commit: `first` and every request queued behind it, up to
/// [`GROUP_BYTES_MAX`].
fn next_group(rx: &mut mpsc::UnboundedReceiver<WriteReq>, first: WriteReq) -> Vec<WriteReq> {
    let mut bytes = first.payload.len;
    let mut reqs = vec![first];
    while bytes < GROUP_BYTES_MAX {
        match rx.try_recv() {
            Ok(r) => {
                bytes += r.payload.len;
                reqs.push(r);
            }
            Err(_) => break,
        }
    }
    reqs
}

impl Writer {
    fn open(
        settings: WalSettings,
        segments: Arc<Mutex<Vec<Segment>>>,
        next_id: u64,
        uploader: Uploader,
        health: Arc<Health>,
        faults: Option<Arc<dyn DiskFaults>>,
    ) -> std::io::Result<Self> {
        let mut w = Writer {
            metrics: WalMetrics::new(),
            settings,
            segments,
            file: None,
            active_bytes: 0,
            active_last: None,
            next_id,
            uploader,
            health,
            dirty: false,
            retry: RETRY_FIRST,
            faults,
        };
        // Keep appending to the newest segment only if ids continue it.
        let last = w.segments.lock().unwrap_or_else(|p| p.into_inner()).last().cloned();
        if let Some(s) = last {
            let continues = match s.last_id {
                Some(l) => l + 1 == next_id,
                None => s.first_id == next_id,
            };
            if continues && s.bytes < w.settings.segment_bytes {
                w.file = Some(OpenOptions::new().append(true).open(&s.path)?);
                w.active_bytes = s.bytes;
                w.active_last = s.last_id;
            }
        }
        Ok(w)
    }

    /// The injected failure of `op`, if any (with a write's partial bytes left to the caller).
    fn fault(&self, op: DiskOp) -> Result<(), DiskFault> {
        self.faults.as_ref().map_or(Ok(()), |f| f.check(op))
    }

    fn roll(&mut self, first_id: u64) -> std::io::Result<()> {
        self.fault(DiskOp::Create).map_err(|f| f.error)?;
        let path = segment_path(&self.settings.dir, first_id);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if self.settings.sync == WalSync::Fsync {
            sync_dir(&self.settings.dir)?;
        }
        self.segments.lock().unwrap_or_else(|p| p.into_inner()).push(Segment { first_id, last_id: None, path, bytes: 0 });
        self.file = Some(file);
        self.active_bytes = 0;
        self.active_last = None;
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<WriteReq>) {
        while let Some(first) = rx.blocking_recv() {
            let reqs = next_group(&mut rx, first);
            self.commit(reqs);
        }
    }

    /// One group commit: writes `reqs` as consecutive entries, syncs, hands them to the
    /// uploader and answers them; or takes the log offline and answers them with the error.
    fn commit(&mut self, reqs: Vec<WriteReq>) {
        let bytes: usize = reqs.iter().map(|r| r.payload.len).sum();
        // Queued before the log went offline: answered without touching the disk until the
        // retry time.
        if let Err(e) = self.health.check() {
            for r in reqs {
                let _ = r.reply.send(Err(AgentError::Wal(e.to_string())));
            }
            return;
        }
        let first_id = self.next_id;
        let headers: Vec<_> = reqs.iter().enumerate().map(|(i, r)| r.payload.entry_header(first_id + i as u64)).collect();
        let mut slices: Vec<IoSlice<'_>> = Vec::new();
        for (r, h) in reqs.iter().zip(&headers) {
            slices.push(IoSlice::new(h));
            slices.extend(r.payload.pieces(&r.items).map(IoSlice::new));
        }
        let written = bytes + reqs.len() * ENTRY_HEADER_BYTES;
        // The group commit as each sampled request's child: its write and fsync, shared.
        let mut spans: Vec<Span> = reqs.iter().filter_map(|r| trace::child_of(r.trace, "wal.write", SpanKind::Internal)).collect();
        let started = std::time::Instant::now();
        let result = self.write(first_id, written, &mut slices);
        drop(slices);
        for span in &mut spans {
            span.set("sidestream.wal.group_entries", reqs.len());
            span.set("sidestream.wal.group_bytes", written);
            if let Err(e) = &result {
                span.fail(e);
            }
        }
        drop(spans);
        match result {
            Ok(()) => {
                if !self.health.online.load(Ordering::SeqCst) {
                    tracing::warn!(dir = %self.settings.dir.display(), "WAL write succeeded: the log is back online");
                    self.health.online.store(true, Ordering::SeqCst);
                }
                self.retry = RETRY_FIRST;
                self.metrics.write_latency.record(started.elapsed());
                self.metrics.fsyncs.inc();
                self.metrics.entries.add(reqs.len() as u64);
                self.metrics.bytes.add(written as u64);
                let last_id = first_id + reqs.len() as u64 - 1;
                self.next_id = last_id + 1;
                self.active_bytes += written as u64;
                self.active_last = Some(last_id);
                if let Some(s) = self.segments.lock().unwrap_or_else(|p| p.into_inner()).last_mut() {
                    s.bytes = self.active_bytes;
                    s.last_id = Some(last_id);
                }
                for (i, r) in reqs.into_iter().enumerate() {
                    let id = first_id + i as u64;
                    r.space.forget(); // given back when the segment holding the entry is deleted
                    let result = self.uploader.submit(r.items, Some(id), r.permit, r.trace).map(|_| ());
                    let _ = r.reply.send(result);
                }
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                self.dirty = true;
                let repaired = self.repair();
                let was_online = self.health.online.load(Ordering::SeqCst);
                self.health.offline_until(self.retry);
                if was_online {
                    tracing::error!(error = %e, dir = %self.settings.dir.display(), retry = ?self.retry,
                        "WAL write failed: the log is offline (appends get KAFKA_STORAGE_ERROR) until a retried write succeeds");
                } else {
                    tracing::debug!(error = %e, retry = ?self.retry, "WAL write failed again");
                }
                if let Err(re) = repaired {
                    tracing::debug!(error = %re, "cannot cut the failed write off the WAL segment yet");
                }
                self.retry = (self.retry * 2).min(RETRY_MAX);
                // Dropping each request's log space gives it back: nothing was written.
                for r in reqs {
                    let _ = r.reply.send(Err(AgentError::Wal(format!("write failed: {e}"))));
                }
            }
        }
    }

    /// Cuts what a failed write left in the active segment past its last complete entry, so
    /// the next entry follows it directly (recovery stops at the first torn entry: anything
    /// appended after one would be lost).
    fn repair(&mut self) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if let Some(file) = self.file.as_ref() {
            self.fault(DiskOp::Truncate).map_err(|f| f.error)?;
            file.set_len(self.active_bytes)?;
            if self.settings.sync == WalSync::Fsync {
                file.sync_all()?;
            }
            let len = file.metadata()?.len();
            if len != self.active_bytes {
                return Err(std::io::Error::other(format!("WAL segment is {len} bytes after truncation to {}", self.active_bytes)));
            }
        }
        self.dirty = false;
        Ok(())
    }

    /// Appends entries from `first_id` on (`len` bytes in `slices`), then syncs per settings.
    fn write(&mut self, first_id: u64, len: usize, slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
        self.repair()?;
        let continues = self.active_last.is_some_and(|l| l + 1 == first_id);
        let full = self.active_bytes > 0 && self.active_bytes + len as u64 > self.settings.segment_bytes;
        if self.file.is_none() || full || (self.active_bytes > 0 && !continues) {
            self.roll(first_id)?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("no active WAL segment"));
        };
        if let Some(faults) = &self.faults
            && let Err(fault) = faults.check(DiskOp::Write { bytes: len })
        {
            assert!(fault.written_bytes <= len, "a failed write lands {} of its {len} bytes", fault.written_bytes);
            write_prefix(file, slices, fault.written_bytes)?;
            return Err(fault.error);
        }
        write_all_vectored(file, slices)?;
        if self.settings.sync == WalSync::Fsync {
            if let Some(faults) = &self.faults {
                faults.check(DiskOp::Sync).map_err(|f| f.error)?;
            }
            file.sync_data()?;
        }
        Ok(())
    }
}

/// Turns a recovered entry back into uploadable items (headers re-read from the batches).
pub fn entry_items(entry: WalEntry) -> Vec<GroupItem> {
    entry
        .batches
        .into_iter()
        .filter_map(|b| match records::peek_header(&b.batch) {
            Ok(Some(header)) => Some(GroupItem { topic_id: b.topic_id, partition: b.partition, batch: b.batch, header }),
            _ => {
                tracing::error!(entry = entry.id, "WAL entry holds an unreadable batch; skipping it");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SeededEntropy;

    fn item(p: i32, v: &[u8]) -> GroupItem {
        let batch = records::encode_batch(1, &[v]);
        let header = records::peek_header(&batch).unwrap().unwrap();
        GroupItem { topic_id: Uuid::from_u128(5), partition: p, batch, header }
    }

    /// An entry's bytes as the writer lays them out.
    fn entry_bytes(id: u64, items: &[GroupItem]) -> Vec<u8> {
        let p = Payload::new(items);
        let mut out = p.entry_header(id).to_vec();
        p.pieces(items).for_each(|piece| out.extend_from_slice(piece));
        out
    }

    fn write_entries(dir: &Path, first_id: u64, n: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        for id in first_id..first_id + n {
            buf.extend(entry_bytes(id, &[item(id as i32, format!("v{id}").as_bytes())]));
        }
        fs::write(segment_path(dir, first_id), &buf).unwrap();
        buf
    }

    #[test]
    fn recovery_keeps_complete_entries_and_truncates_damage() {
        let dir = tempfile::tempdir().unwrap();
        let e = SeededEntropy::new(1);
        let a = write_entries(dir.path(), 1, 3);
        let b = write_entries(dir.path(), 4, 3);
        write_entries(dir.path(), 7, 2);
        let r = recover(dir.path(), &e).unwrap();
        assert_eq!(r.last_id(), 8);
        assert_eq!(r.dropped_bytes, 0);
        let all: Vec<u64> = r.entries_after(2).flat_map(|s| s.unwrap()).map(|e| e.id).collect();
        assert_eq!(all, vec![3, 4, 5, 6, 7, 8]);
        let log_id = r.log_id.clone();

        // Damage the second segment in its middle: entries 4 and part of 5 survive as 4 only;
        // the third segment is removed.
        let mut damaged = b.clone();
        let cut = b.len() / 2;
        damaged[cut] ^= 0xff;
        fs::write(segment_path(dir.path(), 4), &damaged).unwrap();
        let r = recover(dir.path(), &e).unwrap();
        assert_eq!(r.log_id, log_id);
        assert!(r.dropped_bytes > 0);
        assert!(!segment_path(dir.path(), 7).exists());
        let ids: Vec<u64> = r.entries_after(0).flat_map(|s| s.unwrap()).map(|e| e.id).collect();
        assert!(ids.starts_with(&[1, 2, 3]) && ids.len() < 6, "{ids:?}");
        assert_eq!(fs::read(segment_path(dir.path(), 1)).unwrap(), a);
    }

    #[test]
    fn a_torn_tail_at_every_byte_keeps_every_complete_entry() {
        let dir = tempfile::tempdir().unwrap();
        let e = SeededEntropy::new(2);
        let full = write_entries(dir.path(), 1, 4);
        let ends: Vec<usize> = {
            let (entries, _, _) = decode_segment(&full, 1);
            let mut pos = 0;
            entries
                .iter()
                .map(|x| {
                    pos += entry_bytes(x.id, &entry_items(x.clone())).len();
                    pos
                })
                .collect()
        };
        for cut in 0..full.len() {
            fs::write(segment_path(dir.path(), 1), &full[..cut]).unwrap();
            let r = recover(dir.path(), &e).unwrap();
            let complete = ends.iter().filter(|end| **end <= cut).count() as u64;
            assert_eq!(r.last_id(), complete, "cut at {cut}");
            assert_eq!(
                fs::metadata(segment_path(dir.path(), 1)).unwrap().len() as usize,
                ends.iter().copied().filter(|end| *end <= cut).max().unwrap_or(0)
            );
        }
    }

    #[test]
    fn payload_round_trips() {
        let items = vec![item(0, b"a"), item(3, b"bcd")];
        let entry = entry_bytes(9, &items);
        let p = &entry[ENTRY_HEADER_BYTES..];
        let e = decode_payload(9, p).unwrap();
        assert_eq!(e.batches.len(), 2);
        assert_eq!(e.batches[1].partition, 3);
        assert_eq!(e.batches[1].batch, items[1].batch);
        assert!(decode_payload(9, &p[..p.len() - 1]).is_none());
        // The header's CRC (combined from the payload's) is the CRC of id and payload.
        let crc = u32::from_be_bytes(entry[4..8].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c_append(crc32c::crc32c(&9u64.to_be_bytes()), p));
        assert_eq!(u32::from_be_bytes(entry[..4].try_into().unwrap()) as usize, p.len());
    }

    #[test]
    fn vectored_writes_finish_past_the_iovec_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let pieces: Vec<Vec<u8>> = (0..5000u32).map(|i| i.to_be_bytes()[..(i % 4 + 1) as usize].to_vec()).collect();
        let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let mut file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        write_all_vectored(&mut file, &mut slices).unwrap();
        assert_eq!(fs::read(&path).unwrap(), pieces.concat());
    }
}
