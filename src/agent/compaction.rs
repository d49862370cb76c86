//! Object compaction: uploaded objects (each holds a little of many partitions) are rewritten
//! into per-partition objects of up to `[compaction] target_bytes`, so that a catch-up read of
//! one partition makes a few large GETs (the read cache reads per-partition objects far ahead)
//! instead of one per uploaded object.
//!
//! Every `check_interval`, [`ObjectCompactor::run_once`] does two things:
//!
//! 1. **Split.** The oldest uploaded objects (older than `min_age_ms`, smaller than half the
//!    target) are read whole, up to `target_bytes` of them, and each partition's extents in them
//!    are written, in offset order, into objects of that partition alone.
//! 2. **Merge.** A partition's per-partition objects smaller than half the target that follow
//!    each other in offsets are merged, up to `target_bytes`, once the merge is worth it: at
//!    least half the target, or at least four times the largest of them, or four of them or
//!    more with none over half the result (a byte is rewritten only when its object at least
//!    doubles: a few times at most, whatever the partition count).
//!
//! Each new object is uploaded, then swapped in with one controller call
//! (`ControllerClient::replace_extents`): in one store transaction the old extents (checked to
//! be exactly as read) give way to new ones covering the same offsets, and objects no extent
//! references any more are listed for the garbage collector, which deletes them after
//! `[retention] object_delete_delay_ms`, so a read that found the old extents still finds
//! their bytes. Batches are copied byte for byte (CRCs checked on the way), offsets never
//! change, so a reader never sees a gap, a duplicate or a changed byte. A swap refused because
//! the extents changed meanwhile (retention, another compaction) writes nothing: its object is
//! an orphan, collected like any other (`orphans.rs`); this job never deletes anything.
//!
//! The job makes at most `max_requests_per_s` object store requests, one at a time, and never
//! touches the upload path: producers do not wait for it.
//!
//! Must not touch: offsets, the upload pipeline, object deletion.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::AgentError;
use super::orphans::InFlightKeys;
use crate::agent::client::ControllerClient;
use crate::api::{CandidatesRequest, ControllerError, ExtentRecord, ReplaceExtents};
use crate::clock::{Clock, Entropy};
use crate::format::object::ObjectBuilder;
use crate::format::records;
use crate::metrics::{self, Counter};
use crate::object::{ObjectStore, keys};

/// Uploaded objects asked for per split.
const SPLIT_OBJECTS_MAX: u32 = 1024;
/// Extents of per-partition objects asked for per merge pass.
const MERGE_EXTENTS_MAX: u32 = 10_000;
/// A run of this many small objects is merged once none of them is more than half of it.
const MERGE_FAN_IN: usize = 4;
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
    /// Old extents swapped for new ones.
    pub extents_replaced: u64,
    /// Swaps refused because the extents changed meanwhile (their objects become orphans).
    pub lost_races: u64,
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
    counters: Counters,
}

/// An extent as read, with its bytes.
type Piece = (ExtentRecord, Bytes);

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
            counters: Counters {
                bytes_read: counter("sidestream_compaction_read_bytes_total", "Bytes object compaction read."),
                bytes_written: counter("sidestream_compaction_written_bytes_total", "Bytes object compaction wrote."),
                objects_written: counter("sidestream_compaction_objects_total", "Per-partition objects object compaction wrote."),
                lost_races: counter(
                    "sidestream_compaction_lost_races_total",
                    "Compaction swaps refused because the extents changed meanwhile.",
                ),
            },
        }
    }

    /// One pass: a split of the oldest uploaded objects, then the merges due.
    pub async fn run_once(&self) -> Result<Stats, AgentError> {
        let mut stats = Stats::default();
        self.split(&mut stats).await?;
        self.merge(&mut stats).await?;
        Ok(stats)
    }

    /// Runs a pass every `check_interval` (at once again after a pass that wrote something)
    /// until `shutdown`.
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut busy = false;
            loop {
                if !busy {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(self.settings.check_interval) => {}
                    }
                }
                let pass = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    pass = self.run_once() => pass,
                };
                busy = false;
                match pass {
                    Ok(stats) if stats.objects_written > 0 => {
                        tracing::info!(?stats, "object compaction pass");
                        busy = true;
                    }
                    Ok(stats) => tracing::debug!(?stats, "object compaction pass: nothing to do"),
                    Err(e) => tracing::warn!(error = %e, "object compaction pass failed; next one in the next interval"),
                }
            }
        })
    }

    fn small_bytes(&self) -> u64 {
        self.settings.target_bytes / 2
    }

    /// Reads the byte span of `extents` (all of one object) in one GET: each extent's bytes.
    async fn read(&self, key: &str, extents: Vec<ExtentRecord>, stats: &mut Stats) -> Result<Vec<Piece>, AgentError> {
        let (Some(start), Some(end)) = (extents.iter().map(|e| e.position).min(), extents.iter().map(|e| e.position + e.length).max())
        else {
            return Ok(Vec::new());
        };
        self.budget.take().await;
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

    /// Split: the oldest uploaded objects, up to `target_bytes`, into per-partition objects.
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
        for (key, extents) in objects {
            let size = extents[0].object_size;
            if window > 0 && window + size > self.settings.target_bytes {
                break;
            }
            window += size;
            for piece in self.read(&key, extents, stats).await? {
                by_partition.entry((piece.0.topic_id, piece.0.partition)).or_default().push(piece);
            }
        }
        for ((topic_id, partition), mut pieces) in by_partition {
            pieces.sort_by_key(|(e, _)| e.base_offset);
            let mut batch: Vec<Piece> = Vec::new();
            let mut bytes = 0u64;
            for piece in pieces {
                if !batch.is_empty() && bytes + piece.0.length > self.settings.target_bytes {
                    self.rewrite(topic_id, partition, std::mem::take(&mut batch), stats).await?;
                    bytes = 0;
                }
                bytes += piece.0.length;
                batch.push(piece);
            }
            if !batch.is_empty() {
                self.rewrite(topic_id, partition, batch, stats).await?;
            }
        }
        Ok(())
    }

    /// Merge: runs of small per-partition objects that follow each other, where worth it.
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

    /// Merges a run of objects (each: its extents) if it is worth it.
    async fn merge_run(&self, topic_id: Uuid, partition: i32, run: Vec<Vec<ExtentRecord>>, stats: &mut Stats) -> Result<(), AgentError> {
        let sizes: Vec<u64> = run.iter().map(|o| o.iter().map(|e| e.length).sum()).collect();
        let bytes: u64 = sizes.iter().sum();
        let largest = sizes.iter().copied().max().unwrap_or(0);
        let worth = bytes >= self.small_bytes() || bytes >= 4 * largest || (run.len() >= MERGE_FAN_IN && largest <= bytes / 2);
        if run.len() < 2 || !worth {
            return Ok(());
        }
        let mut pieces = Vec::new();
        for object in run {
            let key = object[0].object_key.clone();
            pieces.extend(self.read(&key, object, stats).await?);
        }
        self.rewrite(topic_id, partition, pieces, stats).await
    }

    /// Writes `pieces` (extents of one partition, by offset) into a new per-partition object and
    /// swaps it in. A lost race (the extents changed meanwhile) is counted, not an error.
    async fn rewrite(&self, topic_id: Uuid, partition: i32, pieces: Vec<Piece>, stats: &mut Stats) -> Result<(), AgentError> {
        let key = keys::new_partition_object_key(&self.settings.key_prefix, &self.settings.agent, &*self.clock, &*self.entropy);
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
                let placed = builder.add_batch(topic_id, partition, batch, &h).map_err(|f| corrupt(&f.to_string()))?;
                position.get_or_insert(placed.position);
                seen += batch.len() as u64;
                next += h.offset_count();
            }
            let Some(position) = position else { return Err(corrupt("no batch")) };
            if seen != e.length || next != e.end_offset {
                return Err(corrupt("batches that do not match the index"));
            }
            let moved = ExtentRecord { object_key: object_key.clone(), position, object_size: 0, ..e.clone() };
            match new.last_mut() {
                Some(prev)
                    if prev.end_offset == moved.base_offset
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
        self.store.put(&key, body).await?;
        stats.objects_written += 1;
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
        match self.controller.replace_extents(req).await {
            Ok(()) => stats.extents_replaced += replaced,
            Err(ControllerError::ExtentsChanged(why) | ControllerError::ObjectCollected(why)) => {
                stats.lost_races += 1;
                self.counters.lost_races.inc();
                tracing::info!(key, %why, "compaction swap refused (the extents changed meanwhile); the new object is an orphan");
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
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

    /// Uploads of many partitions become per-partition objects, then merge; every partition
    /// reads byte for byte the same, from the same offsets, before, during and after, while a
    /// reader reads continuously and producers keep committing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn compaction_keeps_every_byte_and_offset_while_readers_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let c = Controller::open(db, TopicsConfig::default(), 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(7))).unwrap();
        let controller: Arc<dyn ControllerClient> = Arc::new(InProcess(Arc::new(c)));
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let req = CreateTopic {
            name: "t".into(),
            partitions: PARTITIONS,
            replication_factor: -1,
            configs: Default::default(),
            validate_only: false,
        };
        let topic = controller.create_topic(req).await.unwrap().id;
        let committed = AtomicU64::new(0);
        // One upload: a batch (idempotent producer batches too: extents of their own) of each
        // partition; every record says where it belongs.
        let upload = |n: u64| {
            let (controller, store) = (controller.clone(), store.clone());
            async move {
                let mut b = ObjectBuilder::new();
                for p in 0..PARTITIONS {
                    let values: Vec<Vec<u8>> = (0..3).map(|i| format!("o{n}-p{p}-r{i}-{}", "x".repeat(300)).into_bytes()).collect();
                    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
                    let producer = (n < 40 && n.is_multiple_of(3)).then_some((9, 0, n as i32));
                    let batch = encode_producer_batch(producer, n as i64, &refs);
                    b.add_batch(topic, p, &batch, &peek_header(&batch).unwrap().unwrap()).unwrap();
                }
                let (body, extents) = b.finish();
                let key = format!("00/a/{n:026}.sso");
                store.put(&key, body.clone()).await.unwrap();
                let req = CommitRequest {
                    object_key: key,
                    object_size_bytes: body.len() as u64,
                    agent: "a".into(),
                    extents,
                    txn_end: None,
                    wal: None,
                };
                assert!(controller.commit_object(req).await.unwrap().iter().all(|r| r.is_ok()));
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

        let settings = CompactionSettings {
            check_interval: Duration::from_millis(10),
            target_bytes: 64 << 10,
            max_requests_per_s: 100_000,
            min_age_ms: 0,
            key_prefix: String::new(),
            agent: "agent-1".into(),
        };
        let job = ObjectCompactor::new(
            store.clone(),
            controller.clone(),
            Arc::new(SystemClock),
            Arc::new(SeededEntropy::new(8)),
            Arc::new(InFlightKeys::default()),
            settings,
        );
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
        for round in 0..30 {
            let stats = job.run_once().await.unwrap();
            total.objects_written += stats.objects_written;
            total.extents_replaced += stats.extents_replaced;
            total.lost_races += stats.lost_races;
            // Producers keep going meanwhile.
            if round < 5 {
                upload(100 + round).await;
            }
            if round >= 5 && stats.objects_written == 0 {
                break;
            }
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
            // Compacted: per-partition objects, few and large extents.
            assert!(extents.iter().all(|e| crate::format::object::is_partition_object(&e.object_key)), "{extents:?}");
            assert!(bases.len() < 10, "partition {p}: {} extents", bases.len());
        }
    }

    /// A swap that lost a race (the extents moved meanwhile) writes nothing and is counted.
    #[tokio::test]
    async fn a_lost_race_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let c = Controller::open(db, TopicsConfig::default(), 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(7))).unwrap();
        let controller: Arc<dyn ControllerClient> = Arc::new(InProcess(Arc::new(c)));
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let req =
            CreateTopic { name: "t".into(), partitions: 1, replication_factor: -1, configs: Default::default(), validate_only: false };
        let topic = controller.create_topic(req).await.unwrap().id;
        let batch = crate::format::records::encode_batch(1, &[b"a", b"b"]);
        let mut b = ObjectBuilder::new();
        b.add_batch(topic, 0, &batch, &peek_header(&batch).unwrap().unwrap()).unwrap();
        let (body, extents) = b.finish();
        store.put("00/a/o.sso", body.clone()).await.unwrap();
        let req = CommitRequest {
            object_key: "00/a/o.sso".into(),
            object_size_bytes: body.len() as u64,
            agent: "a".into(),
            extents,
            txn_end: None,
            wal: None,
        };
        controller.commit_object(req).await.unwrap();
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
        controller.replace_extents(swap("00/a/x.p.sso")).await.unwrap();
        assert!(matches!(controller.replace_extents(swap("00/a/y.p.sso")).await, Err(ControllerError::ExtentsChanged(_))));
        assert_eq!(controller.find_extents(topic, 0, 0, u64::MAX).await.unwrap(), vec![moved("00/a/x.p.sso")]);
        // A swap must cover exactly the offsets it replaces.
        let mut short = swap("00/a/z.p.sso");
        short.old = vec![moved("00/a/x.p.sso")];
        short.new[0].end_offset -= 1;
        assert!(matches!(controller.replace_extents(short).await, Err(ControllerError::InvalidRequest(_))));
    }
}
