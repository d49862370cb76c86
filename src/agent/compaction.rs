//! Object compaction: uploaded objects (each holds a little of many partitions) are rewritten
//! into per-partition objects of up to `[compaction] target_bytes`, so that a catch-up read of
//! one partition makes a few large GETs (the read cache reads per-partition objects far ahead)
//! instead of one per uploaded object; partitions with too little data for objects of their
//! own wait in partition-sorted objects, so the job costs a few PUTs per GiB more than the
//! uploads did, not one per partition.
//!
//! Every `check_interval`, [`ObjectCompactor::run_once`] does two things:
//!
//! 1. **Split.** The oldest uploaded objects (older than `min_age_ms`, smaller than half the
//!    target) are read whole, up to twice `target_bytes` of them. A partition with at least
//!    an eighth of the target in them (`share_bytes_min`: 8 MiB by default, the size of an
//!    upload) has its extents written, in offset order, into objects of that partition alone
//!    (a partition that filled an object leaves a small remainder for the next window, when
//!    more uploads wait: it starts a full object there). Every other partition's extents go
//!    into one partition-sorted object (`.s.sso`; more if they exceed the target), in which
//!    each partition's batches are adjacent and in offset order: a reader of one partition
//!    reads one span of it, and one swap moves all its partitions at once.
//! 2. **Merge.** A partition's per-partition objects smaller than half the target that follow
//!    each other in offsets are merged, up to `target_bytes`, once the merge is worth it: at
//!    least half the target, or at least four times the largest of them, or four of them or
//!    more with none over half the result (a byte is rewritten only when its object at least
//!    doubles: a few times at most, whatever the partition count). A partition's pieces of
//!    partition-sorted objects (one ranged GET each) join such runs, and a run holding them
//!    is written into a per-partition object once it holds `share_bytes_min` of them (with
//!    no per-partition object over half the run) or half the target: a partition leaves the
//!    sorted objects in objects of at least an upload's size.
//!
//! What it costs: at 1,000 evenly loaded partitions a split window of 128 MiB writes 2
//! sorted objects instead of 1,000 per-partition ones; a partition is extracted once it has
//! 8 MiB in sorted objects, so each byte is written about as often as before, in objects of
//! 8 MiB and more (a few hundred PUTs per GiB in all instead of thousands). A sorted object
//! stays until its last partition is extracted or retention removes it, so a partition that
//! never reaches `share_bytes_min` is read from sorted objects (one small ranged GET per
//! sorted object, 64 MiB of uploads each: still far fewer than from the uploads), and its
//! bytes keep the whole sorted object alive: at most what not compacting would have kept.
//! Sorted objects whose live extents fell under half their size are not re-split (not built:
//! it would save storage only, by rewriting the slow partitions' bytes once more; retention
//! bounds what a sorted object keeps).
//!
//! Each new object is uploaded, then swapped in with one controller call
//! (`ControllerClient::replace_extents`): in one store transaction the old extents (of every
//! partition the object holds, checked to be exactly as read) give way to new ones covering
//! the same offsets, and objects no extent references any more are listed for the garbage
//! collector, which deletes them after `[retention] object_delete_delay_ms`, so a read that
//! found the old extents still finds their bytes. Batches are copied byte for byte (CRCs
//! checked on the way), offsets never change, so a reader never sees a gap, a duplicate or a
//! changed byte. A swap refused because the extents changed meanwhile (retention, another
//! compaction) writes nothing, for none of its partitions: its object is an orphan, collected
//! like any other (`orphans.rs`); this job never deletes anything.
//!
//! The job makes at most `max_requests_per_s` object store requests, one at a time, and never
//! touches the upload path: producers do not wait for it.
//!
//! Must not touch: offsets, the upload pipeline, object deletion.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use uuid::Uuid;

use super::AgentError;
use super::cost;
use super::orphans::InFlightKeys;
use crate::agent::client::ControllerClient;
use crate::api::jobs::{JOB_COMPACTION, JobLease};
use crate::api::{CandidatesRequest, ControllerError, ExtentRecord, ReplaceExtents, TopicMeta};
use crate::clock::{Clock, Entropy};
use crate::format::object::ObjectBuilder;
use crate::format::records;
use crate::metrics::{self, Counter};
use crate::object::{ObjectStore, keys};

/// Uploaded objects asked for per split (at most `target_bytes` of them are read): bounds the
/// answer (every extent of each, up to one per partition) well under the call's size limit.
const SPLIT_OBJECTS_MAX: u32 = 64;
/// Extents of per-partition objects asked for per merge pass.
const MERGE_EXTENTS_MAX: u32 = 10_000;
/// A split reads this many times `target_bytes` of uploaded objects: a partition with most of
/// the data fills whole objects (the rest of its share, a smaller one, is merged later).
const SPLIT_WINDOW_TARGETS: u64 = 2;
/// Bytes of one partition log compaction reads per pass at most (from the log start).
const CLEAN_BYTES_MAX: u64 = 256 << 20;
/// A compressed batch's records decompress to at most this many bytes.
const DECOMPRESSED_BYTES_MAX: usize = 64 << 20;
/// A run of this many small objects is merged once none of them is more than half of it.
const MERGE_FAN_IN: usize = 4;
/// A partition gets objects of its own once it has at least `target_bytes` divided by this
/// (8 MiB of the default 64 MiB) in a split window, or in a run of partition-sorted objects:
/// the size of an upload, so an object of one partition never costs more PUTs per byte than
/// the uploads did. Below it, a partition's pieces go into partition-sorted objects.
const SHARE_DIVISOR: u64 = 8;
/// Adjacent extents of a new object are recorded as one up to this size (a fetch reads an
/// extent whole).
pub const EXTENT_BYTES_MAX: u64 = 1 << 20;

/// From `[compaction]`.
#[derive(Debug, Clone)]
pub struct CompactionSettings {
    pub check_interval: Duration,
    pub target_bytes: u64,
    pub max_requests_per_s: u32,
    pub min_age_ms: u64,
    /// The key prefix and agent name of the objects it writes (as the uploader's).
    pub key_prefix: String,
    pub agent: String,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub objects_read: u64,
    pub bytes_read: u64,
    pub objects_written: u64,
    pub bytes_written: u64,
    /// Of `objects_written`, the partition-sorted ones.
    pub sorted_objects_written: u64,
    /// Old extents swapped for new ones.
    pub extents_replaced: u64,
    /// Swaps refused because the extents changed meanwhile (their objects become orphans).
    pub lost_races: u64,
    /// Partitions log compaction cleaned.
    pub partitions_cleaned: u64,
}

/// At most one request per `interval`, in order of asking.
struct RequestBudget {
    interval: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl RequestBudget {
    fn new(per_s: u32) -> Self {
        Self { interval: Duration::from_secs(1) / per_s.max(1), next: tokio::sync::Mutex::new(Instant::now()) }
    }

    async fn take(&self) {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep_until(*next).await;
        }
        *next = (*next).max(now) + self.interval;
    }
}

struct Counters {
    bytes_read: Arc<Counter>,
    bytes_written: Arc<Counter>,
    objects_written: Arc<Counter>,
    lost_races: Arc<Counter>,
}

/// The object compaction job (see the module doc).
pub struct ObjectCompactor {
    store: Arc<dyn ObjectStore>,
    controller: Arc<dyn ControllerClient>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    /// Held for each new object from before its PUT until its swap is answered, so the orphan
    /// collector leaves it alone meanwhile.
    in_flight: Arc<InFlightKeys>,
    settings: CompactionSettings,
    budget: RequestBudget,
    /// The partition the last merge pass stopped after (None: start from the first).
    cursor: Mutex<Option<(Uuid, i32)>>,
    /// Log compaction: where each partition was cleaned up to (forgotten at a restart: the
    /// first pass then cleans again, changing nothing already clean).
    cleaned: Mutex<HashMap<(Uuid, i32), Cleaned>>,
    counters: Counters,
    /// The job lease the running pass holds ([`super::jobs::JobRunner`]); every swap hands it
    /// back, so a pass whose lease lapsed changes nothing.
    lease: Mutex<Option<JobLease>>,
}

/// Where log compaction left a partition.
#[derive(Debug, Clone, Copy)]
struct Cleaned {
    /// Cleaned up to this offset (exclusive).
    to: i64,
    /// The timestamp of the oldest tombstone kept (it goes once past `delete.retention.ms`).
    oldest_tombstone_ms: Option<i64>,
}

/// An extent as read, with its bytes.
type Piece = (ExtentRecord, Bytes);

/// Which kind of object compaction writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectKind {
    /// One partition's batches in offset order ([`keys::PARTITION_OBJECT_SUFFIX`]).
    Partition,
    /// Several partitions', each one's adjacent and in offset order
    /// ([`keys::SORTED_OBJECT_SUFFIX`]).
    Sorted,
}

/// Calls `f` with each batch of an extent's bytes (its absolute base offset, its bytes, its
/// header), after the checks a fetch makes (CRC, and the batches add up to the extent).
fn for_each_batch(
    e: &ExtentRecord,
    data: &[u8],
    mut f: impl FnMut(i64, &[u8], &records::BatchHeader) -> Result<(), records::RecordsError>,
) -> Result<(), AgentError> {
    let corrupt = |why: &str| AgentError::CorruptObject(format!("{why} in the extent of {} at {}", e.object_key, e.position));
    let (mut base, mut seen) = (e.base_offset, 0usize);
    for (at, h) in records::batches(data) {
        let batch = &data[at..at + h.size_bytes as usize];
        if !records::crc_ok(batch) {
            return Err(corrupt("batch CRC mismatch"));
        }
        f(base, batch, &h)?;
        seen += batch.len();
        base += h.offset_count();
    }
    if seen != data.len() || base != e.end_offset {
        return Err(corrupt("batches that do not match the index"));
    }
    Ok(())
}

impl ObjectCompactor {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        controller: Arc<dyn ControllerClient>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        in_flight: Arc<InFlightKeys>,
        settings: CompactionSettings,
    ) -> Self {
        let counter = |name, help| metrics::counter(name, help, &[]);
        Self {
            budget: RequestBudget::new(settings.max_requests_per_s),
            store,
            controller,
            clock,
            entropy,
            in_flight,
            settings,
            cursor: Mutex::new(None),
            cleaned: Mutex::new(HashMap::new()),
            lease: Mutex::new(None),
            counters: Counters {
                bytes_read: counter("sidestream_compaction_read_bytes_total", "Bytes object compaction read."),
                bytes_written: counter("sidestream_compaction_written_bytes_total", "Bytes object compaction wrote."),
                objects_written: counter(
                    "sidestream_compaction_objects_total",
                    "Objects object compaction wrote (per-partition and partition-sorted).",
                ),
                lost_races: counter(
                    "sidestream_compaction_lost_races_total",
                    "Compaction swaps refused because the extents changed meanwhile.",
                ),
            },
        }
    }

    /// Sets the job lease the next passes hand back with their swaps.
    pub fn set_lease(&self, lease: JobLease) {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
    }

    /// One pass: a split of the oldest uploaded objects, the merges due, then log compaction of
    /// the compacted topics' partitions that are dirty enough.
    pub async fn run_once(&self) -> Result<Stats, AgentError> {
        let mut stats = Stats::default();
        self.split(&mut stats).await?;
        self.merge(&mut stats).await?;
        self.clean(&mut stats).await?;
        Ok(stats)
    }

    fn small_bytes(&self) -> u64 {
        self.settings.target_bytes / 2
    }

    /// A partition with fewer bytes than this in a split window goes into partition-sorted
    /// objects, and leaves them once a run of them holds this many (see [`SHARE_DIVISOR`]).
    fn share_bytes_min(&self) -> u64 {
        (self.settings.target_bytes / SHARE_DIVISOR).max(1)
    }

    /// Reads the byte span of `extents` (all of one object) in one GET: each extent's bytes.
    async fn read(&self, key: &str, extents: Vec<ExtentRecord>, stats: &mut Stats) -> Result<Vec<Piece>, AgentError> {
        let (Some(start), Some(end)) = (extents.iter().map(|e| e.position).min(), extents.iter().map(|e| e.position + e.length).max())
        else {
            return Ok(Vec::new());
        };
        self.budget.take().await;
        cost::count_get(&*self.controller, &cost::bytes_by_topic(extents.iter().map(|e| (e.topic_id, e.length))));
        let span = self.store.get_range_once(key, start..end).await?;
        if span.len() as u64 != end - start {
            return Err(AgentError::CorruptObject(format!("{key}: {} bytes read of {start}..{end}", span.len())));
        }
        stats.objects_read += 1;
        stats.bytes_read += span.len() as u64;
        self.counters.bytes_read.add(span.len() as u64);
        Ok(extents
            .into_iter()
            .map(|e| {
                let from = (e.position - start) as usize;
                let bytes = span.slice(from..from + e.length as usize);
                (e, bytes)
            })
            .collect())
    }

    /// Split: the oldest uploaded objects, up to `SPLIT_WINDOW_TARGETS * target_bytes`, into
    /// per-partition objects (partitions with at least [`Self::share_bytes_min`] of the window)
    /// and partition-sorted objects of at most `target_bytes` (all the others).
    async fn split(&self, stats: &mut Stats) -> Result<(), AgentError> {
        let req = CandidatesRequest {
            small_bytes: self.small_bytes(),
            committed_before_ms: self.clock.now_ms().saturating_sub(self.settings.min_age_ms as i64),
            partition_objects: false,
            after: None,
            limit: SPLIT_OBJECTS_MAX,
        };
        let rows = self.controller.compaction_candidates(req).await?;
        // By object, in commit order.
        let mut objects: Vec<(Arc<str>, Vec<ExtentRecord>)> = Vec::new();
        for e in rows {
            match objects.last_mut() {
                Some((key, extents)) if *key == e.object_key => extents.push(e),
                _ => objects.push((e.object_key.clone(), vec![e])),
            }
        }
        let mut by_partition: BTreeMap<(Uuid, i32), Vec<Piece>> = BTreeMap::new();
        let mut window = 0u64;
        // Whether more uploads wait beyond this window.
        let mut more = false;
        for (key, extents) in objects {
            let size = extents[0].object_size;
            if window > 0 && window + size > SPLIT_WINDOW_TARGETS * self.settings.target_bytes {
                more = true;
                break;
            }
            window += size;
            for piece in self.read(&key, extents, stats).await? {
                by_partition.entry((piece.0.topic_id, piece.0.partition)).or_default().push(piece);
            }
        }
        // Small shares, by partition then offset, for the next partition-sorted object.
        let mut sorted: Vec<Piece> = Vec::new();
        let mut sorted_bytes = 0u64;
        for ((topic_id, partition), mut pieces) in by_partition {
            pieces.sort_by_key(|(e, _)| e.base_offset);
            let share: u64 = pieces.iter().map(|(e, _)| e.length).sum();
            if share < self.share_bytes_min() {
                // A share is smaller than an object: never cut between two sorted objects.
                if sorted_bytes > 0 && sorted_bytes + share > self.settings.target_bytes {
                    self.write_object(ObjectKind::Sorted, std::mem::take(&mut sorted), stats).await?;
                    sorted_bytes = 0;
                }
                sorted_bytes += share;
                sorted.extend(pieces);
                continue;
            }
            let mut batch: Vec<Piece> = Vec::new();
            let mut bytes = 0u64;
            let mut full = 0;
            for piece in pieces {
                if !batch.is_empty() && bytes + piece.0.length > self.settings.target_bytes {
                    self.rewrite(topic_id, partition, std::mem::take(&mut batch), stats).await?;
                    bytes = 0;
                    full += 1;
                }
                bytes += piece.0.length;
                batch.push(piece);
            }
            // A large partition's small remainder waits in its uploads for the next window,
            // where it starts a full object instead of staying a small one between full ones.
            let held = more && full > 0 && bytes < self.small_bytes();
            if !batch.is_empty() && !held {
                self.rewrite(topic_id, partition, batch, stats).await?;
            }
        }
        if !sorted.is_empty() {
            self.write_object(ObjectKind::Sorted, sorted, stats).await?;
        }
        Ok(())
    }

    /// Merge: runs of small per-partition objects and of a partition's pieces of
    /// partition-sorted objects that follow each other, where worth it.
    async fn merge(&self, stats: &mut Stats) -> Result<(), AgentError> {
        let after = *self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let req = CandidatesRequest {
            small_bytes: self.small_bytes(),
            committed_before_ms: i64::MAX,
            partition_objects: true,
            after,
            limit: MERGE_EXTENTS_MAX,
        };
        let rows = self.controller.compaction_candidates(req).await?;
        let full = rows.len() as u32 >= MERGE_EXTENTS_MAX;
        let mut partitions: Vec<((Uuid, i32), Vec<ExtentRecord>)> = Vec::new();
        for e in rows {
            match partitions.last_mut() {
                Some((tp, extents)) if *tp == (e.topic_id, e.partition) => extents.push(e),
                _ => partitions.push(((e.topic_id, e.partition), vec![e])),
            }
        }
        // The last partition of a full answer may be cut short: the next pass starts with it.
        if full && partitions.len() > 1 {
            partitions.pop();
        }
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = if full { partitions.last().map(|(tp, _)| *tp) } else { None };
        for ((topic_id, partition), extents) in partitions {
            // Objects in offset order (of their first extent), each with its extents.
            let mut order: Vec<Arc<str>> = Vec::new();
            let mut of: HashMap<Arc<str>, Vec<ExtentRecord>> = HashMap::new();
            for e in extents {
                let list = of.entry(e.object_key.clone()).or_insert_with(|| {
                    order.push(e.object_key.clone());
                    Vec::new()
                });
                list.push(e);
            }
            let mut run: Vec<Vec<ExtentRecord>> = Vec::new();
            for key in order {
                let Some(object) = of.remove(&key) else { continue };
                let follows = run.last().is_some_and(|prev| prev[prev.len() - 1].end_offset == object[0].base_offset);
                let run_bytes: u64 = run.iter().flatten().map(|e| e.length).sum();
                let bytes: u64 = object.iter().map(|e| e.length).sum();
                if !follows || run_bytes + bytes > self.settings.target_bytes {
                    self.merge_run(topic_id, partition, std::mem::take(&mut run), stats).await?;
                }
                run.push(object);
            }
            self.merge_run(topic_id, partition, run, stats).await?;
        }
        Ok(())
    }

    /// Merges a run of objects (each: its extents, of one partition) if it is worth it.
    ///
    /// A run of per-partition objects only: at least half the target, or at least four times
    /// its largest object, or [`MERGE_FAN_IN`] objects or more with none over half of it. A run
    /// holding pieces of partition-sorted objects: at least half the target, or at least
    /// [`Self::share_bytes_min`] of them with no per-partition object over half the run (its
    /// leading per-partition objects are left out until that holds), so a partition leaves
    /// its sorted objects in objects of at least that size, and a large object is not
    /// rewritten to add a little to it.
    async fn merge_run(&self, topic_id: Uuid, partition: i32, run: Vec<Vec<ExtentRecord>>, stats: &mut Stats) -> Result<(), AgentError> {
        let mut run = std::collections::VecDeque::from(run);
        let size = |o: &Vec<ExtentRecord>| -> u64 { o.iter().map(|e| e.length).sum() };
        let is_sorted = |o: &Vec<ExtentRecord>| crate::format::object::is_sorted_object(&o[0].object_key);
        loop {
            let bytes: u64 = run.iter().map(size).sum();
            let largest = run.iter().map(size).max().unwrap_or(0);
            let sorted_bytes: u64 = run.iter().filter(|o| is_sorted(o)).map(size).sum();
            let largest_partition_object = run.iter().filter(|o| !is_sorted(o)).map(size).max().unwrap_or(0);
            let worth = if sorted_bytes == 0 {
                run.len() >= 2
                    && (bytes >= self.small_bytes() || bytes >= 4 * largest || (run.len() >= MERGE_FAN_IN && largest <= bytes / 2))
            } else {
                bytes >= self.small_bytes() || (sorted_bytes >= self.share_bytes_min() && largest_partition_object <= bytes / 2)
            };
            if worth {
                break;
            }
            // Leading per-partition objects too large to join: the sorted pieces after them
            // may still be worth extracting on their own.
            if sorted_bytes >= self.share_bytes_min() && run.front().is_some_and(|o| !is_sorted(o)) {
                run.pop_front();
                continue;
            }
            return Ok(());
        }
        let mut pieces = Vec::new();
        for object in run {
            let key = object[0].object_key.clone();
            pieces.extend(self.read(&key, object, stats).await?);
        }
        self.rewrite(topic_id, partition, pieces, stats).await?;
        Ok(())
    }

    /// Log compaction of every partition of the topics with `cleanup.policy` `compact` (or
    /// `compact,delete`). See [`ObjectCompactor::clean_partition`].
    async fn clean(&self, stats: &mut Stats) -> Result<(), AgentError> {
        for topic in self.controller.topics() {
            let compacted = topic.configs.get("cleanup.policy").is_some_and(|p| p.split(',').any(|p| p.trim() == "compact"));
            if !compacted {
                continue;
            }
            for partition in 0..topic.partitions {
                self.clean_partition(&topic, partition, stats).await?;
            }
        }
        Ok(())
    }

    /// Log compaction of one partition, as Kafka's cleaner does it, from the log start up to the
    /// first extent that is not cleanable yet (above the last stable offset, or holding a record
    /// younger than `min.compaction.lag.ms`), at most [`CLEAN_BYTES_MAX`], once the part not
    /// cleaned since the last pass is at least `min.cleanable.dirty.ratio` of it (or a kept
    /// tombstone is now past `delete.retention.ms`):
    ///
    /// - a record is dropped when a later record of the range has the same key (latest value per
    ///   key); a tombstone (null value) that is the latest of its key is dropped too once it is
    ///   older than `delete.retention.ms`;
    /// - only records of non-transactional batches are dropped or count as "later": batches of
    ///   transactions (their data, committed or aborted, and their markers) are kept as they are,
    ///   so no record is ever dropped for the sake of one a consumer may not see;
    /// - offsets never change: a cleaned batch keeps its offsets and its producer's fields and
    ///   only loses records (gaps, as in Kafka), an emptied one stays as an empty batch; each
    ///   extent keeps its offsets, so a swap (in offset order, stopping at the first lost race)
    ///   never exposes a tombstone's removal before the removal of what it deleted.
    async fn clean_partition(&self, topic: &TopicMeta, partition: i32, stats: &mut Stats) -> Result<(), AgentError> {
        let now = self.clock.now_ms();
        let Ok(o) = self.controller.offsets(topic.id, partition) else { return Ok(()) };
        let lso = self.controller.last_stable_offset(topic.id, partition).unwrap_or(o.next_offset).min(o.next_offset);
        let config = |k: &str, default: i64| topic.config_i64(k).unwrap_or(default);
        let lag_ms = config("min.compaction.lag.ms", 0);
        let horizon = now.saturating_sub(config("delete.retention.ms", 86_400_000));
        let ratio: f64 = topic.configs.get("min.cleanable.dirty.ratio").and_then(|v| v.parse().ok()).unwrap_or(0.5);
        let mut extents: Vec<ExtentRecord> = Vec::new();
        let (mut at, mut total) = (o.log_start_offset, 0u64);
        'find: while at < lso {
            let found = self.controller.find_extents(topic.id, partition, at, 16 << 20).await?;
            if found.is_empty() {
                break;
            }
            for e in found {
                let young = e.max_timestamp > now.saturating_sub(lag_ms);
                if e.base_offset > at || e.end_offset > lso || young || (total > 0 && total + e.length > CLEAN_BYTES_MAX) {
                    break 'find;
                }
                total += e.length;
                at = e.end_offset;
                extents.push(e);
            }
        }
        let cleaned = self.cleaned.lock().unwrap_or_else(|p| p.into_inner()).get(&(topic.id, partition)).copied();
        let dirty: u64 = extents.iter().filter(|e| cleaned.is_none_or(|c| e.base_offset >= c.to)).map(|e| e.length).sum();
        // Kept tombstones past delete.retention.ms are a reason to clean again (KIP-534).
        let tombstones_due = cleaned.and_then(|c| c.oldest_tombstone_ms).is_some_and(|t| t < horizon);
        if !tombstones_due && (dirty == 0 || (dirty as f64) < ratio * total as f64) {
            return Ok(());
        }
        // Read the range, by object.
        let mut pieces: Vec<Piece> = Vec::new();
        let mut run: Vec<ExtentRecord> = Vec::new();
        for e in extents {
            if run.last().is_some_and(|r| r.object_key != e.object_key) {
                let key = run[0].object_key.clone();
                pieces.extend(self.read(&key, std::mem::take(&mut run), stats).await?);
            }
            run.push(e);
        }
        if let Some(first) = run.first() {
            let key = first.object_key.clone();
            pieces.extend(self.read(&key, run, stats).await?);
        }
        let end = pieces.last().map(|(e, _)| e.end_offset).unwrap_or(at);
        // Each key's latest offset among the records that may be dropped or drop others.
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        for (e, data) in &pieces {
            for_each_batch(e, data, |base, batch, h| {
                if h.is_control() || h.is_transactional() {
                    return Ok(());
                }
                let section = records::records_section(batch, h, DECOMPRESSED_BYTES_MAX)?;
                for r in records::record_views(&section, h.record_count)? {
                    if let Some(k) = r.key {
                        latest.insert(k.to_vec(), base + i64::from(r.offset_delta));
                    }
                }
                Ok(())
            })?;
        }
        // The batches without the records that lost.
        let mut cleaned: Vec<(Piece, bool)> = Vec::with_capacity(pieces.len());
        let mut oldest_tombstone_ms: Option<i64> = None;
        for (e, data) in pieces {
            let mut out = bytes::BytesMut::with_capacity(data.len());
            let mut changed = false;
            for_each_batch(&e, &data, |base, batch, h| {
                if h.is_control() || h.is_transactional() {
                    out.extend_from_slice(batch);
                    return Ok(());
                }
                let section = records::records_section(batch, h, DECOMPRESSED_BYTES_MAX)?;
                let views = records::record_views(&section, h.record_count)?;
                let kept: Vec<&[u8]> = views
                    .iter()
                    .filter(|r| match r.key {
                        None => true,
                        Some(k) => {
                            let offset = base + i64::from(r.offset_delta);
                            let timestamp = h.base_timestamp.saturating_add(r.timestamp_delta);
                            let keep = latest.get(k) == Some(&offset) && !(r.tombstone && timestamp < horizon);
                            if keep && r.tombstone {
                                oldest_tombstone_ms = Some(oldest_tombstone_ms.map_or(timestamp, |t: i64| t.min(timestamp)));
                            }
                            keep
                        }
                    })
                    .map(|r| r.raw)
                    .collect();
                if kept.len() == views.len() {
                    out.extend_from_slice(batch);
                } else {
                    out.extend_from_slice(&records::rebuild_batch(batch, &kept));
                    changed = true;
                }
                Ok(())
            })?;
            cleaned.push(((e, out.freeze()), changed));
        }
        // New objects in offset order, only where something changed; stop at a lost race.
        let mut chunk: Vec<Piece> = Vec::new();
        let (mut bytes, mut chunk_changed) = (0u64, false);
        let mut all_swapped = true;
        for ((e, data), changed) in cleaned {
            if !chunk.is_empty() && bytes + data.len() as u64 > self.settings.target_bytes {
                if chunk_changed && !self.rewrite(topic.id, partition, std::mem::take(&mut chunk), stats).await? {
                    all_swapped = false;
                    break;
                }
                chunk.clear();
                (bytes, chunk_changed) = (0, false);
            }
            bytes += data.len() as u64;
            chunk_changed |= changed;
            chunk.push((e, data));
        }
        if all_swapped && chunk_changed && !chunk.is_empty() {
            all_swapped = self.rewrite(topic.id, partition, chunk, stats).await?;
        }
        if all_swapped {
            stats.partitions_cleaned += 1;
            let done = Cleaned { to: end, oldest_tombstone_ms };
            self.cleaned.lock().unwrap_or_else(|p| p.into_inner()).insert((topic.id, partition), done);
        }
        Ok(())
    }

    /// Writes `pieces` (extents of one partition, by offset, each with its batches: as read, or
    /// as log compaction left them) into a new per-partition object and swaps it in: true once
    /// swapped. A lost race (the extents changed meanwhile) is counted, not an error.
    async fn rewrite(&self, topic_id: Uuid, partition: i32, pieces: Vec<Piece>, stats: &mut Stats) -> Result<bool, AgentError> {
        assert!(pieces.iter().all(|(e, _)| (e.topic_id, e.partition) == (topic_id, partition)), "a piece of another partition");
        self.write_object(ObjectKind::Partition, pieces, stats).await
    }

    /// Writes `pieces` (extents by partition then offset, each with its batches) into a new
    /// object of `kind`, in that order (so each partition's batches are adjacent), and swaps it
    /// in for all of them in one controller call: true once swapped. A lost race (some extent
    /// changed meanwhile) is counted, not an error, and swaps nothing.
    async fn write_object(&self, kind: ObjectKind, pieces: Vec<Piece>, stats: &mut Stats) -> Result<bool, AgentError> {
        assert!(!pieces.is_empty(), "an object of nothing");
        // The pieces come from the store's index: overlapping extents there (a damaged store)
        // fail this pass with an error rather than stop the job with a panic.
        let ordered = pieces
            .windows(2)
            .all(|w| (w[0].0.topic_id, w[0].0.partition, w[0].0.end_offset) <= (w[1].0.topic_id, w[1].0.partition, w[1].0.base_offset));
        if !ordered {
            return Err(AgentError::CorruptObject("index extents out of partition and offset order (overlapping?)".into()));
        }
        let (prefix, agent) = (&self.settings.key_prefix, &self.settings.agent);
        let key = match kind {
            ObjectKind::Partition => keys::new_partition_object_key(prefix, agent, &*self.clock, &*self.entropy),
            ObjectKind::Sorted => keys::new_sorted_object_key(prefix, agent, &*self.clock, &*self.entropy),
        };
        let (topic_id, partition) = (pieces[0].0.topic_id, pieces[0].0.partition);
        let total: u64 = pieces.iter().map(|(e, _)| e.length).sum();
        let batches: u32 = pieces.iter().map(|(e, _)| e.batch_count).sum();
        let mut builder = ObjectBuilder::with_capacity(total as usize, batches as usize);
        let object_key: Arc<str> = Arc::from(key.as_str());
        let mut new: Vec<ExtentRecord> = Vec::new();
        for (e, data) in &pieces {
            // The checks a fetch makes: never copy what could not be served.
            let corrupt = |why: &str| AgentError::CorruptObject(format!("{why} in the extent of {} at {}", e.object_key, e.position));
            let (mut next, mut seen) = (e.base_offset, 0u64);
            let mut position = None;
            for (at, h) in records::batches(data) {
                let batch = &data[at..at + h.size_bytes as usize];
                if !records::crc_ok(batch) {
                    return Err(corrupt("batch CRC mismatch"));
                }
                let placed = builder.add_batch(e.topic_id, e.partition, batch, &h).map_err(|f| corrupt(&f.to_string()))?;
                position.get_or_insert(placed.position);
                seen += batch.len() as u64;
                next += h.offset_count();
            }
            let Some(position) = position else { return Err(corrupt("no batch")) };
            if seen != data.len() as u64 || next != e.end_offset {
                return Err(corrupt("batches that do not match the index"));
            }
            let moved = ExtentRecord { object_key: object_key.clone(), position, length: seen, object_size: 0, ..e.clone() };
            match new.last_mut() {
                Some(prev)
                    if (prev.topic_id, prev.partition) == (moved.topic_id, moved.partition)
                        && prev.end_offset == moved.base_offset
                        && prev.position + prev.length == moved.position
                        && prev.length + moved.length <= EXTENT_BYTES_MAX =>
                {
                    prev.end_offset = moved.end_offset;
                    prev.length += moved.length;
                    prev.batch_count += moved.batch_count;
                    prev.max_timestamp = prev.max_timestamp.max(moved.max_timestamp);
                }
                _ => new.push(moved),
            }
        }
        let (body, _) = builder.finish();
        let size = body.len() as u64;
        for e in &mut new {
            e.object_size = size;
        }
        let _hold = self.in_flight.hold(&key);
        self.budget.take().await;
        cost::count_put(&*self.controller, &cost::bytes_by_topic(new.iter().map(|e| (e.topic_id, e.length))));
        self.store.put(&key, body).await?;
        stats.objects_written += 1;
        if kind == ObjectKind::Sorted {
            stats.sorted_objects_written += 1;
        }
        stats.bytes_written += size;
        self.counters.objects_written.inc();
        self.counters.bytes_written.add(size);
        let old: Vec<ExtentRecord> = pieces.into_iter().map(|(e, _)| e).collect();
        let replaced = old.len() as u64;
        let req = ReplaceExtents {
            object_key: key.clone(),
            object_size_bytes: size,
            agent: self.settings.agent.clone(),
            topic_id,
            partition,
            old,
            new,
        };
        let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(lease) = lease else {
            return Err(ControllerError::LeaseNotHeld("compaction runs only under its job lease".into()).into());
        };
        match self.controller.replace_extents(lease, req).await {
            Ok(()) => {
                stats.extents_replaced += replaced;
                Ok(true)
            }
            Err(ControllerError::ExtentsChanged(why) | ControllerError::ObjectCollected(why)) => {
                stats.lost_races += 1;
                self.counters.lost_races.inc();
                tracing::info!(key, %why, "compaction swap refused (the extents changed meanwhile); the new object is an orphan");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The compactor as a leased job: one agent compacts at a time.
impl super::jobs::Job for Arc<ObjectCompactor> {
    fn name(&self) -> &'static str {
        JOB_COMPACTION
    }

    async fn run_once(&self, lease: &JobLease) -> Result<String, AgentError> {
        self.set_lease(lease.clone());
        let stats = ObjectCompactor::run_once(self).await?;
        if stats.objects_written > 0 || stats.partitions_cleaned > 0 {
            tracing::info!(?stats, "object compaction pass");
        }
        Ok(format!("object compaction pass: {stats:?}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;
    use crate::agent::client::InProcess;
    use crate::api::{CommitRequest, CreateTopic};
    use crate::clock::{SeededEntropy, SystemClock};
    use crate::config::TopicsConfig;
    use crate::controller::Controller;
    use crate::controller::store::sqlite::SqliteStore;
    use crate::format::records::{encode_producer_batch, peek_header};
    use crate::object::memory::MemoryStore;

    const PARTITIONS: i32 = 8;

    /// Every byte of a partition's batches, by walking its extents from offset 0: what a
    /// consumer reading the whole partition receives (offsets aside, which are the extents').
    async fn read_all(controller: &Arc<dyn ControllerClient>, store: &Arc<dyn ObjectStore>, topic: Uuid, p: i32) -> (Vec<u8>, Vec<i64>) {
        let end = controller.offsets(topic, p).unwrap().next_offset;
        let (mut bytes, mut bases, mut at) = (Vec::new(), Vec::new(), 0);
        while at < end {
            let extents = controller.find_extents(topic, p, at, 1 << 20).await.unwrap();
            assert!(!extents.is_empty(), "partition {p}: no extent at {at} below {end}");
            for e in extents {
                // No gap and no duplicate: each extent starts where the previous one ended.
                assert_eq!(e.base_offset, at, "partition {p}: extent at {} after {at}", e.base_offset);
                bytes.extend_from_slice(&store.get_range(&e.object_key, e.position..e.position + e.length).await.unwrap());
                bases.push(e.base_offset);
                at = e.end_offset;
            }
        }
        (bytes, bases)
    }

    /// A controller with one topic "t" of `partitions` partitions, and an empty object store.
    async fn setup(partitions: i32) -> (tempfile::TempDir, Arc<dyn ControllerClient>, Arc<dyn ObjectStore>, Uuid) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let c = Controller::open(db, TopicsConfig::default(), 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(7))).unwrap();
        let controller: Arc<dyn ControllerClient> = Arc::new(InProcess(Arc::new(c)));
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let req = CreateTopic { name: "t".into(), partitions, replication_factor: -1, configs: Default::default(), validate_only: false };
        let topic = controller.create_topic(req).await.unwrap().id;
        (dir, controller, store, topic)
    }

    /// The compaction job (64 KiB target: a share of at least 8 KiB gets objects of its own),
    /// holding the job lease.
    async fn job(controller: &Arc<dyn ControllerClient>, store: &Arc<dyn ObjectStore>) -> ObjectCompactor {
        let settings = CompactionSettings {
            check_interval: Duration::from_millis(10),
            target_bytes: 64 << 10,
            max_requests_per_s: 100_000,
            min_age_ms: 0,
            key_prefix: String::new(),
            agent: "agent-1".into(),
        };
        /// A second ahead of the controller's clock: with `min_age_ms` 0, an upload committed in
        /// the millisecond of a pass is a candidate too (the query asks for strictly older).
        struct Ahead;
        impl Clock for Ahead {
            fn now_ms(&self) -> i64 {
                SystemClock.now_ms() + 1000
            }
        }
        let job = ObjectCompactor::new(
            store.clone(),
            controller.clone(),
            Arc::new(Ahead),
            Arc::new(SeededEntropy::new(8)),
            Arc::new(InFlightKeys::default()),
            settings,
        );
        job.set_lease(controller.acquire_job_lease(JOB_COMPACTION.into(), "test".into()).await.unwrap().unwrap());
        job
    }

    /// Commits an uploaded object `key` holding `batches` (partition, batch), in that order.
    async fn commit_upload(
        controller: &Arc<dyn ControllerClient>,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        topic: Uuid,
        batches: Vec<(i32, Bytes)>,
    ) {
        let mut b = ObjectBuilder::new();
        for (p, batch) in batches {
            b.add_batch(topic, p, &batch, &peek_header(&batch).unwrap().unwrap()).unwrap();
        }
        let (body, extents) = b.finish();
        store.put(key, body.clone()).await.unwrap();
        let req = CommitRequest {
            object_key: key.into(),
            object_size_bytes: body.len() as u64,
            agent: "a".into(),
            extents,
            txn_end: None,
            wal: None,
        };
        assert!(controller.commit_object(req).await.unwrap().iter().all(|r| r.is_ok()));
    }

    /// Uploads of many partitions become per-partition objects, then merge; every partition
    /// reads byte for byte the same, from the same offsets, before, during and after, while a
    /// reader reads continuously and producers keep committing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn compaction_keeps_every_byte_and_offset_while_readers_read() {
        let (_dir, controller, store, topic) = setup(PARTITIONS).await;
        let committed = AtomicU64::new(0);
        // One upload: a batch (idempotent producer batches too: extents of their own) of each
        // partition; every record says where it belongs.
        let upload = |n: u64| {
            let (controller, store) = (controller.clone(), store.clone());
            async move {
                let batches = (0..PARTITIONS)
                    .map(|p| {
                        let values: Vec<Vec<u8>> = (0..3).map(|i| format!("o{n}-p{p}-r{i}-{}", "x".repeat(300)).into_bytes()).collect();
                        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
                        let producer = (n < 40 && n.is_multiple_of(3)).then_some((9, 0, n as i32));
                        (p, encode_producer_batch(producer, n as i64, &refs))
                    })
                    .collect();
                commit_upload(&controller, &store, &format!("00/a/{n:026}.sso"), topic, batches).await;
            }
        };
        for n in 0..40 {
            upload(n).await;
            committed.fetch_add(1, Ordering::Relaxed);
        }
        let before: Vec<_> = {
            let mut v = Vec::new();
            for p in 0..PARTITIONS {
                v.push(read_all(&controller, &store, topic, p).await.0);
            }
            v
        };

        let job = job(&controller, &store).await;
        // A reader reads every partition over and over while compaction runs: each read must
        // be a prefix-equal copy of the bytes before (later uploads only append).
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (controller, store, stop, before) = (controller.clone(), store.clone(), stop.clone(), before.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for p in 0..PARTITIONS {
                        let (bytes, _) = read_all(&controller, &store, topic, p).await;
                        assert_eq!(&bytes[..before[p as usize].len()], &before[p as usize][..], "partition {p} changed");
                    }
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        };
        let mut total = Stats::default();
        let mut idle = 0;
        for round in 0..40 {
            let stats = job.run_once().await.unwrap();
            total.objects_written += stats.objects_written;
            total.extents_replaced += stats.extents_replaced;
            total.lost_races += stats.lost_races;
            // Producers keep going meanwhile.
            if round < 5 {
                upload(100 + round).await;
            }
            // Done once two passes in a row find nothing (uploads committed in the same
            // millisecond as a pass wait for the next one).
            idle = if stats.objects_written == 0 { idle + 1 } else { 0 };
            if round >= 5 && idle >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.await.unwrap() > 0);
        assert!(total.objects_written > 0 && total.extents_replaced > 0, "{total:?}");
        assert_eq!(total.lost_races, 0);

        for p in 0..PARTITIONS {
            let (bytes, bases) = read_all(&controller, &store, topic, p).await;
            assert_eq!(&bytes[..before[p as usize].len()], &before[p as usize][..]);
            assert_eq!(controller.offsets(topic, p).unwrap().next_offset, 45 * 3, "offsets never move");
            let extents = controller.find_extents(topic, p, 0, u64::MAX).await.unwrap();
            // Compacted, into few and large extents: the first 40 uploads (a large share of
            // each split window) into per-partition objects; those that came one a pass
            // meanwhile (too small a share) into partition-sorted objects, where they stay
            // until the partition has enough of them.
            let (first, later): (Vec<_>, Vec<_>) = extents.iter().partition(|e| e.end_offset <= 40 * 3);
            assert!(first.iter().all(|e| crate::format::object::is_partition_object(&e.object_key)), "{extents:?}");
            let compacted =
                |e: &&ExtentRecord| crate::format::object::is_partition_object(&e.object_key) || e.object_key.ends_with(".s.sso");
            assert!(later.iter().all(compacted), "{extents:?}");
            assert!(bases.len() < 10, "partition {p}: {} extents", bases.len());
        }
    }

    /// A swap that lost a race (the extents moved meanwhile) writes nothing and is counted.
    #[tokio::test]
    async fn a_lost_race_changes_nothing() {
        let (_dir, controller, store, topic) = setup(1).await;
        commit_upload(&controller, &store, "00/a/o.sso", topic, vec![(0, crate::format::records::encode_batch(1, &[b"a", b"b"]))]).await;
        let old = controller.find_extents(topic, 0, 0, u64::MAX).await.unwrap();
        let moved = |key: &str| ExtentRecord { object_key: Arc::from(key), position: 0, object_size: old[0].length, ..old[0].clone() };
        let swap = |key: &str| ReplaceExtents {
            object_key: key.into(),
            object_size_bytes: old[0].length,
            agent: "a".into(),
            topic_id: topic,
            partition: 0,
            old: old.clone(),
            new: vec![moved(key)],
        };
        let lease = controller.acquire_job_lease(JOB_COMPACTION.into(), "test".into()).await.unwrap().unwrap();
        // Without the job's lease nothing is swapped.
        let stale = JobLease { token: lease.token + 1, ..lease.clone() };
        assert!(matches!(controller.replace_extents(stale, swap("00/a/w.p.sso")).await, Err(ControllerError::LeaseNotHeld(_))));
        controller.replace_extents(lease.clone(), swap("00/a/x.p.sso")).await.unwrap();
        assert!(matches!(controller.replace_extents(lease.clone(), swap("00/a/y.p.sso")).await, Err(ControllerError::ExtentsChanged(_))));
        assert_eq!(controller.find_extents(topic, 0, 0, u64::MAX).await.unwrap(), vec![moved("00/a/x.p.sso")]);
        // A swap must cover exactly the offsets it replaces.
        let mut short = swap("00/a/z.p.sso");
        short.old = vec![moved("00/a/x.p.sso")];
        short.new[0].end_offset -= 1;
        assert!(matches!(controller.replace_extents(lease, short).await, Err(ControllerError::InvalidRequest(_))));
    }

    /// Partitions of the partition-sorted test: partition 0 has a large share of every
    /// upload, the others a small one.
    const MANY: i32 = 40;

    /// Upload `n` of the partition-sorted test: about 10 KB of partition 0 (when `big`) and a
    /// batch of about 180 bytes of each other partition; every record says where it belongs.
    fn many_batches(n: u64, big: bool) -> Vec<(i32, Bytes)> {
        (0..MANY)
            .map(|p| {
                let (count, size) = if p == 0 && big { (10, 1000) } else { (1, 100) };
                let values: Vec<Vec<u8>> = (0..count).map(|i| format!("o{n}-p{p}-r{i}-{}", "y".repeat(size)).into_bytes()).collect();
                let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
                (p, crate::format::records::encode_batch(n as i64, &refs))
            })
            .collect()
    }

    /// The keys in the store ending with `suffix`.
    async fn keys_ending(store: &Arc<dyn ObjectStore>, suffix: &str) -> Vec<String> {
        store.list("").await.unwrap().into_iter().map(|m| m.key).filter(|k| k.ends_with(suffix)).collect()
    }

    /// Runs passes until two in a row write nothing; the passes' stats added up.
    async fn settle(job: &ObjectCompactor) -> Stats {
        let (mut total, mut idle) = (Stats::default(), 0);
        for _ in 0..100 {
            let stats = job.run_once().await.unwrap();
            total.objects_written += stats.objects_written;
            total.sorted_objects_written += stats.sorted_objects_written;
            total.extents_replaced += stats.extents_replaced;
            total.lost_races += stats.lost_races;
            idle = if stats.objects_written == 0 { idle + 1 } else { 0 };
            if idle >= 2 {
                return total;
            }
        }
        panic!("compaction did not settle: {total:?}");
    }

    /// Many partitions with small shares of a split window share one partition-sorted object
    /// (not an object each), each one's batches adjacent and in offset order, while a
    /// partition with a large share gets per-partition objects directly; readers read every
    /// byte at its offset through them; once a partition has enough bytes in sorted objects,
    /// the merge moves them into a per-partition object.
    #[tokio::test]
    async fn small_shares_go_into_one_sorted_object_until_a_partition_has_enough() {
        let (_dir, controller, store, topic) = setup(MANY).await;
        let job = job(&controller, &store).await;
        assert_eq!(job.share_bytes_min(), 8 << 10);
        // About 17 KB each: six uploads fit a split window (128 KiB), in which partition 0 has
        // about 60 KB and every other partition about 1.1 KB.
        for n in 0..6 {
            commit_upload(&controller, &store, &format!("00/a/{n:026}.sso"), topic, many_batches(n, true)).await;
        }
        let read_every = || async {
            let mut v = Vec::new();
            for p in 0..MANY {
                v.push(read_all(&controller, &store, topic, p).await.0);
            }
            v
        };
        let before = read_every().await;
        let in_objects = |p: i32, suffix: &'static str| {
            let controller = controller.clone();
            async move { controller.find_extents(topic, p, 0, u64::MAX).await.unwrap().iter().all(|e| e.object_key.ends_with(suffix)) }
        };

        let stats = job.run_once().await.unwrap();
        assert_eq!(stats.sorted_objects_written, 1, "{stats:?}");
        assert_eq!(stats.lost_races, 0);
        let sorted = keys_ending(&store, ".s.sso").await;
        assert_eq!(sorted.len(), 1, "{sorted:?}");
        assert!(store.head(&sorted[0]).await.unwrap().unwrap() <= 64 << 10);
        // Only partition 0 has objects of its own.
        let partition_objects = keys_ending(&store, ".p.sso").await;
        assert!(!partition_objects.is_empty() && partition_objects.len() <= 2, "{partition_objects:?}");
        assert!(in_objects(0, ".p.sso").await);
        for p in 1..MANY {
            assert!(in_objects(p, ".s.sso").await, "partition {p}");
            // Its batches are adjacent in the sorted object, in offset order.
            let extents = controller.find_extents(topic, p, 0, u64::MAX).await.unwrap();
            assert!(extents.windows(2).all(|w| w[0].position + w[0].length == w[1].position && w[0].end_offset == w[1].base_offset));
        }
        assert_eq!(read_every().await, before, "every byte at its offset (read_all checks offsets are dense)");

        // More uploads, partition 0 small now too: every partition reaches 8 KiB in sorted
        // objects (about 180 bytes an upload) and is moved into a per-partition object.
        for n in 6..70 {
            commit_upload(&controller, &store, &format!("00/a/{n:026}.sso"), topic, many_batches(n, false)).await;
        }
        let before = read_every().await;
        let stats = settle(&job).await;
        assert_eq!(stats.lost_races, 0);
        assert!(stats.sorted_objects_written >= 1, "{stats:?}");
        assert_eq!(read_every().await, before);
        for p in 1..MANY {
            let extents = controller.find_extents(topic, p, 0, u64::MAX).await.unwrap();
            let extracted: u64 =
                extents.iter().filter(|e| crate::format::object::is_partition_object(&e.object_key)).map(|e| e.length).sum();
            assert!(extracted >= job.share_bytes_min(), "partition {p}: {extracted} bytes in per-partition objects: {extents:?}");
            assert!(extents.iter().all(|e| keys::parse_object_key(&e.object_key).is_some_and(|k| k.agent == "agent-1")), "all compacted");
        }
        for p in 0..MANY {
            assert_eq!(controller.offsets(topic, p).unwrap().next_offset, if p == 0 { 6 * 10 + 64 } else { 70 }, "offsets never move");
        }
        // One object per partition (its extraction) and a few sorted ones, where an object per
        // partition per split window would be four times as many.
        assert!(stats.objects_written < 2 * MANY as u64, "{stats:?}");
    }

    /// A partition-sorted object's swap replaces the extents of all its partitions in one
    /// call, or (one of them changed meanwhile) nothing at all.
    #[tokio::test]
    async fn a_sorted_swap_moves_all_its_partitions_or_none() {
        let (_dir, controller, store, topic) = setup(2).await;
        let batch = |v: &[u8]| crate::format::records::encode_batch(1, &[v, v]);
        commit_upload(&controller, &store, "00/a/o.sso", topic, vec![(0, batch(b"a")), (1, batch(b"b"))]).await;
        let mut old: Vec<ExtentRecord> = controller.find_extents(topic, 0, 0, u64::MAX).await.unwrap();
        old.extend(controller.find_extents(topic, 1, 0, u64::MAX).await.unwrap());
        let size = old.iter().map(|e| e.length).sum::<u64>();
        let mut at = 0;
        let new: Vec<ExtentRecord> = old
            .iter()
            .map(|e| {
                at += e.length;
                ExtentRecord { object_key: Arc::from("00/a/x.s.sso"), position: at - e.length, object_size: size, ..e.clone() }
            })
            .collect();
        let swap = |key: &str, old: Vec<ExtentRecord>| ReplaceExtents {
            object_key: key.into(),
            object_size_bytes: size,
            agent: "a".into(),
            topic_id: topic,
            partition: 0,
            old,
            new: new.iter().map(|e| ExtentRecord { object_key: Arc::from(key), ..e.clone() }).collect(),
        };
        let lease = controller.acquire_job_lease(JOB_COMPACTION.into(), "test".into()).await.unwrap().unwrap();
        // Partition 1's extent changed meanwhile: partition 0's stays too.
        let mut changed = old.clone();
        changed[1].length += 1;
        assert!(matches!(
            controller.replace_extents(lease.clone(), swap("00/a/y.s.sso", changed)).await,
            Err(ControllerError::ExtentsChanged(_))
        ));
        assert_eq!(controller.find_extents(topic, 0, 0, u64::MAX).await.unwrap(), vec![old[0].clone()]);
        // Partitions out of order: refused.
        let mut reversed = swap("00/a/z.s.sso", old.clone());
        reversed.old.reverse();
        assert!(matches!(controller.replace_extents(lease.clone(), reversed).await, Err(ControllerError::InvalidRequest(_))));
        controller.replace_extents(lease, swap("00/a/x.s.sso", old.clone())).await.unwrap();
        for (p, e) in new.iter().enumerate() {
            assert_eq!(controller.find_extents(topic, p as i32, 0, u64::MAX).await.unwrap(), vec![e.clone()]);
        }
    }
}
