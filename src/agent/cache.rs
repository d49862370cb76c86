//! The read cache: fixed-size blocks of objects in a foyer hybrid cache (memory, then a disk
//! tier under `<data_dir>/cache`), keyed by (object key, block index).
//!
//! One GET of a block serves every partition stored in it. Objects this agent uploads are
//! inserted whole into the memory tier as they are committed (write-through: the block slices
//! share the uploaded buffer, no copy), so tail consumers on the producing agent never reach
//! the object store. A miss fetches the block with a ranged GET under the cold-read concurrency
//! budget (`[cache] cold_read_concurrency`), which uploads never wait on, and schedules the
//! next `readahead_blocks` blocks of the same object in the background for sequential readers
//! (in a per-partition object, written by compaction, `partition_readahead_bytes`).
//! Cold blocks stay in memory only; written-through blocks spill to the disk tier on eviction
//! (at most `disk_write_bytes_per_s`; beyond that they are dropped, so a fast producer's data
//! is not written to the local disk twice at full speed) and when the agent stops, so a
//! restarted agent serves its recent data from local disk.
//!
//! The disk tier never takes the last space of `data_dir` from the WAL and the metadata store:
//! at start-up it is sized to at most the filesystem's free space (plus what its own files
//! already hold) minus `disk_reserve_bytes` (shrunk with a warning, or left out when less than
//! its minimum remains), and its files are then allocated whole (`fallocate`), so it never
//! grows afterwards and its writes never meet ENOSPC (foyer 0.22's flusher panics on a failed
//! write: see [`ReadCache::open`]). It is split into at most [`DISK_TIER_FILES_MAX`] files (one
//! open descriptor each).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCacheProperties, Location,
    PsyncIoEngineConfig, Source, Throttle,
};
use tokio::sync::Semaphore;

use super::cost::TopicCost;
use crate::format::object::is_partition_object;
use crate::host;
use crate::metrics::{self, Counter};
use crate::object::{ObjectError, ObjectStore};
use crate::telemetry::trace::{self, SpanKind};

/// The disk tier is split into at most this many files (foyer "blocks", one descriptor each).
pub const DISK_TIER_FILES_MAX: u64 = 64;
/// Records the disk tier's size and file size under its directory.
const LAYOUT_FILE: &str = "layout";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache dir {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("read cache: {0}")]
    Foyer(#[source] foyer::Error),
}

/// Smallest disk tier kept: below it the tier is left out.
fn disk_tier_min_bytes(block_bytes: u64) -> u64 {
    4 * block_bytes.max(1 << 20)
}

/// The size of one disk tier file (foyer block): at least four cache blocks (of at least 1 MiB),
/// and large enough that the tier needs at most [`DISK_TIER_FILES_MAX`] files.
fn disk_tier_block_bytes(disk_bytes: u64, block_bytes: u64) -> u64 {
    const PAGE: u64 = 4096;
    let per_file = disk_bytes.div_ceil(DISK_TIER_FILES_MAX).div_ceil(PAGE) * PAGE;
    per_file.max(disk_tier_min_bytes(block_bytes)).min(disk_bytes)
}

/// Files (open descriptors) the disk tier of `settings` holds.
pub fn disk_tier_files(settings: &CacheSettings) -> u64 {
    if settings.disk_bytes == 0 {
        return 0;
    }
    settings.disk_bytes / disk_tier_block_bytes(settings.disk_bytes, settings.block_bytes)
}

/// The disk tier size that fits the filesystem: `disk_bytes`, or less (with a warning) when
/// the free space plus what the tier's files already hold, minus `disk_reserve_bytes`, is
/// smaller; 0 (no disk tier, with a warning) when that is under the tier's minimum. The cache is
/// an optimisation: a full disk must not keep the agent from starting.
pub fn fit_disk_tier(settings: &CacheSettings) -> u64 {
    if settings.disk_bytes == 0 {
        return 0;
    }
    let dir = &settings.dir;
    let probe = if dir.exists() { dir.as_path() } else { dir.parent().unwrap_or(dir.as_path()) };
    let (free, own) = match (host::available_bytes(probe), host::allocated_bytes(dir)) {
        (Ok(free), Ok(own)) => (free, own),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot measure free space: the cache has no disk tier");
            return 0;
        }
    };
    let budget = (free + own).saturating_sub(settings.disk_reserve_bytes);
    if budget >= settings.disk_bytes {
        return settings.disk_bytes;
    }
    let min = disk_tier_min_bytes(settings.block_bytes);
    if budget < min {
        tracing::warn!(dir = %dir.display(), free_bytes = free, cache_files_bytes = own, reserve_bytes = settings.disk_reserve_bytes,
            disk_bytes = settings.disk_bytes, "too little free space: the read cache has no disk tier");
        return 0;
    }
    let shrunk = budget / min * min;
    tracing::warn!(dir = %dir.display(), free_bytes = free, cache_files_bytes = own, reserve_bytes = settings.disk_reserve_bytes,
        disk_bytes = settings.disk_bytes, shrunk_to_bytes = shrunk, "too little free space: the read cache's disk tier is shrunk");
    shrunk
}

/// Settings from `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub memory_bytes: u64,
    /// 0: no disk tier.
    pub disk_bytes: u64,
    /// Writes into the disk tier at most this fast (0: unlimited); the excess is not cached.
    pub disk_write_bytes_per_s: u64,
    /// Free space of the filesystem left to everything else: the disk tier is shrunk to fit.
    pub disk_reserve_bytes: u64,
    pub block_bytes: u64,
    pub readahead_blocks: u32,
    /// A miss in a per-partition object (compaction's output: every byte of it belongs to the
    /// reader's partition) reads this many bytes ahead in the same GET instead.
    pub partition_readahead_bytes: u64,
    pub cold_read_concurrency: u32,
    pub dir: PathBuf,
}

/// A block of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub object: String,
    pub block: u64,
}

impl Code for BlockKey {
    fn encode(&self, writer: &mut impl std::io::Write) -> foyer::Result<()> {
        self.object.encode(writer)?;
        self.block.encode(writer)
    }
    fn decode(reader: &mut impl std::io::Read) -> foyer::Result<Self> {
        Ok(BlockKey { object: String::decode(reader)?, block: u64::decode(reader)? })
    }
    fn estimated_size(&self) -> usize {
        self.object.len() + 16
    }
}

struct TierBytes {
    memory: Arc<Counter>,
    disk: Arc<Counter>,
    object_store: Arc<Counter>,
    gets: Arc<Counter>,
}

pub struct ReadCache {
    cache: HybridCache<BlockKey, Bytes>,
    store: Arc<dyn ObjectStore>,
    block_bytes: u64,
    readahead_blocks: u32,
    partition_readahead_blocks: u64,
    cold: Arc<Semaphore>,
    served: TierBytes,
}

impl ReadCache {
    /// Opens the cache with the disk tier `settings` names (size it with [`fit_disk_tier`]
    /// first). The tier's files are allocated whole; if that fails (the disk filled in between)
    /// the cache opens without a disk tier, with a warning.
    pub async fn open(settings: &CacheSettings, store: Arc<dyn ObjectStore>) -> Result<Arc<Self>, CacheError> {
        let cache = match Self::build(settings, settings.disk_bytes).await {
            Ok(cache) => cache,
            Err(e @ CacheError::Dir { .. }) if settings.disk_bytes > 0 => {
                tracing::warn!(error = %e, "the read cache has no disk tier");
                Self::build(settings, 0).await?
            }
            Err(e) => return Err(e),
        };
        Ok(Self::with_cache(cache, settings, store))
    }

    async fn build(settings: &CacheSettings, disk_bytes: u64) -> Result<HybridCache<BlockKey, Bytes>, CacheError> {
        let builder = HybridCacheBuilder::new()
            .with_name("sidestream-blocks")
            // A graceful shutdown writes the memory tier to disk, so a restart starts warm.
            .with_flush_on_close(true)
            .memory(settings.memory_bytes as usize)
            .with_weighter(|k: &BlockKey, v: &Bytes| k.object.len() + v.len() + 64)
            .storage();
        let dir_err = |source| CacheError::Dir { dir: settings.dir.clone(), source };
        if disk_bytes == 0 {
            // The files of a tier left out (no space, or disk_bytes = 0) give their space back.
            remove_files(&settings.dir);
            return builder.build().await.map_err(CacheError::Foyer);
        }
        std::fs::create_dir_all(&settings.dir).map_err(dir_err)?;
        // Files of another layout (size or file count changed) would linger beside the new
        // ones: the cache starts empty instead.
        let block_size = disk_tier_block_bytes(disk_bytes, settings.block_bytes) as usize;
        let layout_path = settings.dir.join(LAYOUT_FILE);
        let layout = format!("{disk_bytes} {block_size}\n");
        if std::fs::read_to_string(&layout_path).ok().as_deref() != Some(layout.as_str()) {
            remove_files(&settings.dir);
        }
        let mut throttle = Throttle::new();
        if settings.disk_write_bytes_per_s > 0 {
            throttle = throttle.with_write_throughput(settings.disk_write_bytes_per_s as usize);
        }
        let device = FsDeviceBuilder::new(&settings.dir)
            .with_capacity(disk_bytes as usize)
            .with_throttle(throttle)
            .build()
            .map_err(CacheError::Foyer)?;
        let cache = builder
            .with_io_engine_config(PsyncIoEngineConfig::new())
            .with_engine_config(BlockEngineConfig::new(device).with_block_size(block_size))
            .build()
            .await
            .map_err(CacheError::Foyer)?;
        // foyer creates its files sparse (set_len). A write into a hole needs new space, and a
        // failed write kills foyer 0.22's flusher (flusher.rs: the I/O task still holds the
        // buffer when it fails, so `rotate_buffer.take().unwrap()` panics on the next flush).
        // Allocated whole, the files need no space after start-up.
        if let Err(e) = preallocate_dir(&settings.dir) {
            let _ = cache.close().await;
            drop(cache);
            remove_files(&settings.dir);
            return Err(dir_err(e));
        }
        if let Err(e) = std::fs::write(&layout_path, layout) {
            tracing::warn!(path = %layout_path.display(), error = %e, "cannot record the disk tier's layout");
        }
        Ok(cache)
    }

    fn with_cache(cache: HybridCache<BlockKey, Bytes>, settings: &CacheSettings, store: Arc<dyn ObjectStore>) -> Arc<Self> {
        let tier = |t| metrics::counter("sidestream_fetch_bytes_total", "Bytes read for fetches, by where they came from.", &[("tier", t)]);
        Arc::new(ReadCache {
            cache,
            store,
            block_bytes: settings.block_bytes.max(4096),
            readahead_blocks: settings.readahead_blocks,
            partition_readahead_blocks: settings.partition_readahead_bytes / settings.block_bytes.max(4096),
            cold: Arc::new(Semaphore::new(settings.cold_read_concurrency.max(1) as usize)),
            served: TierBytes {
                memory: tier("memory"),
                disk: tier("disk"),
                object_store: tier("object_store"),
                gets: metrics::counter("sidestream_cache_block_gets_total", "Ranged GETs made to fill the read cache.", &[]),
            },
        })
    }

    fn block_range(&self, block: u64, object_size: u64) -> Range<u64> {
        let start = block * self.block_bytes;
        start..(start + self.block_bytes).min(object_size)
    }

    /// Write-through: the blocks of an object just uploaded, into the memory tier.
    pub fn insert_object(&self, key: &str, body: &Bytes) {
        let size = body.len() as u64;
        for block in 0..size.div_ceil(self.block_bytes) {
            let r = self.block_range(block, size);
            self.cache.insert(BlockKey { object: key.to_string(), block }, body.slice(r.start as usize..r.end as usize));
        }
    }

    /// A miss's GET is counted for `cost`'s topic.
    async fn block(&self, key: &str, block: u64, object_size: u64, cost: &Arc<TopicCost>) -> Result<Bytes, ObjectError> {
        // A miss reads this block and the next `readahead_blocks` of the object in one ranged
        // GET (sequential readers make a fifth of the GETs), and caches each of them.
        // A per-partition object is the reader's partition alone: read far ahead (about 20
        // GETs per GB for a catch-up reader instead of a few hundred).
        let blocks = object_size.div_ceil(self.block_bytes);
        let partition = is_partition_object(key);
        let ahead = if partition {
            self.partition_readahead_blocks.max(u64::from(self.readahead_blocks))
        } else {
            u64::from(self.readahead_blocks)
        };
        let span_end = blocks.min(block + 1 + ahead);
        let range = self.block_range(block, object_size).start..self.block_range(span_end - 1, object_size).end;
        let (store, cold, gets, cache) = (self.store.clone(), self.cold.clone(), self.served.gets.clone(), self.cache.clone());
        let cost = cost.clone();
        let block_bytes = self.block_bytes;
        let object = key.to_string();
        // A sampled fetch's span is current here; the fetch below may run in another task.
        let parent = trace::current();
        let entry = self
            .cache
            .get_or_fetch(&BlockKey { object: key.to_string(), block }, move || async move {
                let _permit = cold.acquire_owned().await.map_err(|e| ObjectError::Transient(e.to_string()))?;
                gets.inc();
                let mut traced = trace::child_of(parent, "object_store.get", SpanKind::Client);
                if let Some(t) = traced.as_mut() {
                    t.set("sidestream.object.key", object.as_str());
                    t.set("sidestream.range_bytes", range.end - range.start);
                }
                // A per-partition object's long span in one request: GETs are what it costs.
                let got = if partition {
                    store.get_range_once(&object, range.clone()).await
                } else {
                    store.get_range(&object, range.clone()).await
                };
                if let (Some(t), Err(e)) = (traced.as_mut(), &got) {
                    t.fail(e);
                }
                drop(traced);
                let span = got?;
                cost.get(span.len() as u64);
                // Blocks read cold (catch-up consumers) stay in memory only: spilling them to
                // the disk tier would compete with the WAL's fsyncs for the disk and evict the
                // written-through tail blocks, which are the ones worth keeping.
                let properties = || HybridCacheProperties::default().with_location(Location::InMem);
                let piece = |b: u64| {
                    let from = ((b - block) * block_bytes) as usize;
                    span.slice(from..(from + block_bytes as usize).min(span.len()))
                };
                for next in block + 1..span_end {
                    cache.insert_with_properties(BlockKey { object: object.clone(), block: next }, piece(next), properties());
                }
                Ok::<_, ObjectError>((piece(block), properties()))
            })
            .await
            .map_err(|e| ObjectError::Transient(format!("read cache: {e}")))?;
        let bytes = entry.value().clone();
        let counter = match entry.source() {
            Source::Memory => &self.served.memory,
            Source::Disk => &self.served.disk,
            Source::Outer => &self.served.object_store,
        };
        counter.add(bytes.len() as u64);
        Ok(bytes)
    }

    /// Bytes `range` of an object of `object_size` bytes, block by block through the cache;
    /// the GETs of misses are counted for `cost`'s topic (the one the caller reads).
    pub async fn read(&self, key: &str, range: Range<u64>, object_size: u64, cost: &Arc<TopicCost>) -> Result<Bytes, ObjectError> {
        if range.start >= range.end || range.end > object_size {
            return Err(ObjectError::NotFound(format!("{key} range {range:?} beyond {object_size} bytes")));
        }
        let first = range.start / self.block_bytes;
        let last = (range.end - 1) / self.block_bytes;
        let read = if first == last {
            let b = self.block(key, first, object_size, cost).await?;
            let base = first * self.block_bytes;
            b.slice((range.start - base) as usize..(range.end - base) as usize)
        } else {
            let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
            for block in first..=last {
                let b = self.block(key, block, object_size, cost).await?;
                let r = self.block_range(block, object_size);
                let from = range.start.max(r.start) - r.start;
                let to = range.end.min(r.end) - r.start;
                out.extend_from_slice(&b[from as usize..to as usize]);
            }
            out.freeze()
        };
        Ok(read)
    }

    pub async fn close(&self) {
        let _ = self.cache.close().await;
    }
}

/// Allocates every regular file in `dir` to its length.
fn preallocate_dir(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() && meta.len() > 0 {
            let file = std::fs::OpenOptions::new().write(true).open(entry.path())?;
            host::preallocate(&file, meta.len())?;
        }
    }
    Ok(())
}

/// Removes the files of a disk tier given up (their space goes back to the WAL).
fn remove_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::cost;
    use crate::object::memory::MemoryStore;

    fn settings(dir: &std::path::Path, disk_bytes: u64) -> CacheSettings {
        CacheSettings {
            memory_bytes: 1 << 20,
            disk_bytes,
            disk_write_bytes_per_s: 0,
            disk_reserve_bytes: 0,
            block_bytes: 4096,
            readahead_blocks: 2,
            partition_readahead_bytes: 16_384,
            cold_read_concurrency: 4,
            dir: dir.to_path_buf(),
        }
    }

    #[tokio::test]
    async fn reads_span_blocks_and_written_through_objects_need_no_get() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let body: Bytes = (0..20_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        store.put("a", body.clone()).await.unwrap();
        let cache = ReadCache::open(&settings(dir.path(), 0), store.clone()).await.unwrap();
        let cost = cost::by_name("cache-test");
        let gets = || cache.served.gets.get();
        let before = gets();
        let (topic_gets, all_gets) = (cost.get_requests.get(), before);
        assert_eq!(cache.read("a", 100..9000, 20_000, &cost).await.unwrap(), body.slice(100..9000));
        assert_eq!(cache.read("a", 19_990..20_000, 20_000, &cost).await.unwrap(), body.slice(19_990..20_000));
        assert!(gets() > before);
        assert!(cache.read("a", 0..20_001, 20_000, &cost).await.is_err());

        store.put("b", body.clone()).await.unwrap();
        cache.insert_object("b", &body);
        let before = gets();
        assert_eq!(cache.read("b", 5000..15_000, 20_000, &cost).await.unwrap(), body.slice(5000..15_000));
        assert_eq!(gets(), before, "a written-through object is served from memory");

        // Read-ahead: one GET brings this block and the next two (readahead_blocks = 2).
        store.put("c", body.clone()).await.unwrap();
        let before = gets();
        assert_eq!(cache.read("c", 0..100, 20_000, &cost).await.unwrap(), body.slice(0..100));
        assert_eq!(cache.read("c", 4096..12_288, 20_000, &cost).await.unwrap(), body.slice(4096..12_288));
        assert_eq!(gets(), before + 1, "blocks 1 and 2 came with block 0");
        assert_eq!(cache.read("c", 12_288..20_000, 20_000, &cost).await.unwrap(), body.slice(12_288..20_000));
        assert_eq!(gets(), before + 2);

        // A per-partition object is read 16 KiB ahead: blocks 0 to 4 in one GET.
        store.put("d.p.sso", body.clone()).await.unwrap();
        let before = gets();
        assert_eq!(cache.read("d.p.sso", 0..20_000, 20_000, &cost).await.unwrap(), body);
        assert_eq!(gets(), before + 1);
        // Every GET is counted for the topic read, with its bytes.
        assert_eq!(cost.get_requests.get() - topic_gets, gets() - all_gets);
        assert!(cost.get_bytes.get() >= 20_000 + 16_384, "{}", cost.get_bytes.get());
    }

    /// Bytes the disk tier wrote after `objects` objects of 1 MiB went through a 1 MiB memory
    /// tier at 50 objects/s (each evicted block is offered to the disk tier).
    async fn disk_bytes_written(disk_write_bytes_per_s: u64, objects: u32) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let settings = CacheSettings { block_bytes: 64 * 1024, disk_write_bytes_per_s, ..settings(dir.path(), 256 << 20) };
        let cache = ReadCache::open(&settings, Arc::new(MemoryStore::new())).await.unwrap();
        let body: Bytes = vec![7u8; 1 << 20].into();
        for i in 0..objects {
            cache.insert_object(&format!("o{i}"), &body);
            // Paced like uploads (not a wait for a condition): the engine writes in between.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        cache.close().await;
        cache.cache.statistics().disk_write_bytes()
    }

    #[tokio::test]
    async fn the_disk_tier_write_rate_is_limited() {
        // 32 MiB offered in 0.64 s: unlimited, all of it is written (about 34 MiB with the
        // engine's framing); at 1 MiB/s, about one engine block is admitted, the rest dropped.
        let unlimited = disk_bytes_written(0, 32).await;
        let limited = disk_bytes_written(1 << 20, 32).await;
        assert!(unlimited >= 24 << 20, "unlimited: {unlimited} bytes written");
        assert!(limited <= 12 << 20, "limited to 1 MiB/s: {limited} bytes written");
    }
}
