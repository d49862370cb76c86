//! The read cache: fixed-size blocks of objects in a foyer hybrid cache (memory, then a disk
//! tier under `<data_dir>/cache`), keyed by (object key, block index).
//!
//! One GET of a block serves every partition stored in it. Objects this agent uploads are
//! inserted whole into the memory tier as they are committed (write-through: the block slices
//! share the uploaded buffer, no copy), so tail consumers on the producing agent never reach
//! the object store. A miss fetches the block with a ranged GET under the cold-read concurrency
//! budget (`[cache] cold_read_concurrency`), which uploads never wait on, and schedules the
//! next `readahead_blocks` blocks of the same object in the background for sequential readers.
//! Cold blocks stay in memory only; written-through blocks spill to the disk tier on eviction
//! (at most `disk_write_bytes_per_s`; beyond that they are dropped, so a fast producer's data
//! is not written to the local disk twice at full speed) and when the agent stops, so a
//! restarted agent serves its recent data from local disk.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCacheProperties, Location, PsyncIoEngineConfig, Source, Throttle,
};
use tokio::sync::Semaphore;

use crate::metrics::{self, Counter};
use crate::object::{ObjectError, ObjectStore};

/// Settings from `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub memory_bytes: u64,
    /// 0: no disk tier.
    pub disk_bytes: u64,
    /// Writes into the disk tier at most this fast (0: unlimited); the excess is not cached.
    pub disk_write_bytes_per_s: u64,
    pub block_bytes: u64,
    pub readahead_blocks: u32,
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
    cold: Arc<Semaphore>,
    served: TierBytes,
}

impl ReadCache {
    pub async fn open(settings: &CacheSettings, store: Arc<dyn ObjectStore>) -> Result<Arc<Self>, ObjectError> {
        let builder = HybridCacheBuilder::new()
            .with_name("sidestream-blocks")
            // A graceful shutdown writes the memory tier to disk, so a restart starts warm.
            .with_flush_on_close(true)
            .memory(settings.memory_bytes as usize)
            .with_weighter(|k: &BlockKey, v: &Bytes| k.object.len() + v.len() + 64)
            .storage();
        let builder = if settings.disk_bytes > 0 {
            std::fs::create_dir_all(&settings.dir)
                .map_err(|e| ObjectError::Permanent(format!("cache dir {}: {e}", settings.dir.display())))?;
            let mut throttle = Throttle::new();
            if settings.disk_write_bytes_per_s > 0 {
                throttle = throttle.with_write_throughput(settings.disk_write_bytes_per_s as usize);
            }
            let device = FsDeviceBuilder::new(&settings.dir)
                .with_capacity(settings.disk_bytes as usize)
                .with_throttle(throttle)
                .build()
                .map_err(|e| ObjectError::Permanent(format!("cache device: {e}")))?;
            let block_size = (settings.block_bytes.max(1 << 20) * 4).min(settings.disk_bytes) as usize;
            builder
                .with_io_engine_config(PsyncIoEngineConfig::new())
                .with_engine_config(BlockEngineConfig::new(device).with_block_size(block_size))
        } else {
            builder
        };
        let cache = builder.build().await.map_err(|e| ObjectError::Permanent(format!("cache: {e}")))?;
        let tier = |t| metrics::counter("sidestream_fetch_bytes_total", "Bytes read for fetches, by where they came from.", &[("tier", t)]);
        Ok(Arc::new(ReadCache {
            cache,
            store,
            block_bytes: settings.block_bytes.max(4096),
            readahead_blocks: settings.readahead_blocks,
            cold: Arc::new(Semaphore::new(settings.cold_read_concurrency.max(1) as usize)),
            served: TierBytes {
                memory: tier("memory"),
                disk: tier("disk"),
                object_store: tier("object_store"),
                gets: metrics::counter("sidestream_cache_block_gets_total", "Ranged GETs made to fill the read cache.", &[]),
            },
        }))
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

    async fn block(&self, key: &str, block: u64, object_size: u64) -> Result<Bytes, ObjectError> {
        // A miss reads this block and the next `readahead_blocks` of the object in one ranged
        // GET (sequential readers make a fifth of the GETs), and caches each of them.
        let blocks = object_size.div_ceil(self.block_bytes);
        let span_end = blocks.min(block + 1 + u64::from(self.readahead_blocks));
        let range = self.block_range(block, object_size).start..self.block_range(span_end - 1, object_size).end;
        let (store, cold, gets, cache) = (self.store.clone(), self.cold.clone(), self.served.gets.clone(), self.cache.clone());
        let block_bytes = self.block_bytes;
        let object = key.to_string();
        let entry = self
            .cache
            .get_or_fetch(&BlockKey { object: key.to_string(), block }, move || async move {
                let _permit = cold.acquire_owned().await.map_err(|e| ObjectError::Transient(e.to_string()))?;
                gets.inc();
                let span = store.get_range(&object, range.clone()).await?;
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

    /// Bytes `range` of an object of `object_size` bytes, block by block through the cache.
    pub async fn read(&self, key: &str, range: Range<u64>, object_size: u64) -> Result<Bytes, ObjectError> {
        if range.start >= range.end || range.end > object_size {
            return Err(ObjectError::NotFound(format!("{key} range {range:?} beyond {object_size} bytes")));
        }
        let first = range.start / self.block_bytes;
        let last = (range.end - 1) / self.block_bytes;
        let read = if first == last {
            let b = self.block(key, first, object_size).await?;
            let base = first * self.block_bytes;
            b.slice((range.start - base) as usize..(range.end - base) as usize)
        } else {
            let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
            for block in first..=last {
                let b = self.block(key, block, object_size).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::memory::MemoryStore;

    fn settings(dir: &std::path::Path, disk_bytes: u64) -> CacheSettings {
        CacheSettings {
            memory_bytes: 1 << 20,
            disk_bytes,
            disk_write_bytes_per_s: 0,
            block_bytes: 4096,
            readahead_blocks: 2,
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
        let gets = || cache.served.gets.get();
        let before = gets();
        assert_eq!(cache.read("a", 100..9000, 20_000).await.unwrap(), body.slice(100..9000));
        assert_eq!(cache.read("a", 19_990..20_000, 20_000).await.unwrap(), body.slice(19_990..20_000));
        assert!(gets() > before);
        assert!(cache.read("a", 0..20_001, 20_000).await.is_err());

        store.put("b", body.clone()).await.unwrap();
        cache.insert_object("b", &body);
        let before = gets();
        assert_eq!(cache.read("b", 5000..15_000, 20_000).await.unwrap(), body.slice(5000..15_000));
        assert_eq!(gets(), before, "a written-through object is served from memory");

        // Read-ahead: one GET brings this block and the next two (readahead_blocks = 2).
        store.put("c", body.clone()).await.unwrap();
        let before = gets();
        assert_eq!(cache.read("c", 0..100, 20_000).await.unwrap(), body.slice(0..100));
        assert_eq!(cache.read("c", 4096..12_288, 20_000).await.unwrap(), body.slice(4096..12_288));
        assert_eq!(gets(), before + 1, "blocks 1 and 2 came with block 0");
        assert_eq!(cache.read("c", 12_288..20_000, 20_000).await.unwrap(), body.slice(12_288..20_000));
        assert_eq!(gets(), before + 2);
    }

    /// Bytes the disk tier wrote after `objects` objects of 1 MiB went through a 1 MiB memory
    /// tier at 50 objects/s (each evicted block is offered to the disk tier).
    async fn disk_bytes_written(disk_write_bytes_per_s: u64, objects: u32) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let settings = CacheSettings {
            block_bytes: 64 * 1024,
            disk_write_bytes_per_s,
            ..settings(dir.path(), 256 << 20)
        };
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
