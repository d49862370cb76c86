//! The agent's cache of a remote controller's partition index: committed extents per partition
//! ([`ExtentCache`]), so tail reads and repeated reads make no controller call.
//!
//! - **Why it can be a cache.** A committed extent's offsets never change: a partition only grows at its
//!   end (offsets are assigned once, densely), and loses extents only at its beginning (the log
//!   start moving up). So an extent learned once stays true until its topic is deleted (a topic
//!   re-created under the same name has a new id, so it never meets the old entries) or the log
//!   start passes it ([`ExtentCache::trim_below`]), or compaction moves it (see below).
//! - **Answering.** A lookup from an offset is answered here only when the cached extents are
//!   contiguous from the one holding the offset until the asked bytes are covered or the high
//!   watermark the agent knows is reached: then the controller would have answered the same.
//!   Timestamp lookups need every extent from the log start on. Otherwise the caller asks the
//!   controller and inserts the answer (which creates the partition's entry).
//! - **Staying fresh.** The controller's commit notifications carry the extents of every commit;
//!   they are appended to the partitions already cached (before the high watermark moves), so a
//!   tail consumer finds new data here.
//! - **Compaction.** A swap moves extents to another object without changing their offsets;
//!   its notification replaces the cached extents it covers ([`ExtentCache::replace`]), a
//!   lookup answered before it is not inserted after it ([`ExtentCache::insert_found`]), and
//!   an agent that may have missed one clears the cache (the remote client compares the
//!   controller's count of swaps in each snapshot).
//! - **Bounded** by `bytes_max` (an estimate of each entry's memory): the least recently looked-up
//!   partition loses its oldest extents first.
//!
//! Must not touch: the network ([`super::remote`] calls the controller), offset assignment.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use uuid::Uuid;

use super::ExtentRecord;

/// Memory of one cached extent besides the record and its key: map node, Arc header.
const ENTRY_OVERHEAD_BYTES: usize = 64;

fn entry_bytes(e: &ExtentRecord) -> usize {
    std::mem::size_of::<ExtentRecord>() + e.object_key.len() + ENTRY_OVERHEAD_BYTES
}

type Key = (Uuid, i32);

#[derive(Default)]
struct Part {
    /// By base offset.
    extents: BTreeMap<i64, ExtentRecord>,
    bytes: usize,
    /// Tick of the last lookup (its key in `Inner::lru`).
    used: u64,
}

impl Part {
    /// The extent holding `offset`.
    fn holding(&self, offset: i64) -> Option<&ExtentRecord> {
        self.extents.range(..=offset).next_back().map(|(_, e)| e).filter(|e| e.end_offset > offset)
    }

    /// Contiguous extents from the one holding `from`, in offset order.
    fn walk(&self, from: i64) -> impl Iterator<Item = &ExtentRecord> {
        let mut next = self.holding(from);
        std::iter::from_fn(move || {
            let e = next?;
            next = self.extents.get(&e.end_offset);
            Some(e)
        })
    }
}

#[derive(Default)]
struct Inner {
    parts: HashMap<Key, Part>,
    /// Last lookup tick -> partition; the first entry is evicted first.
    lru: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    /// Bumped by every swap ([`ExtentCache::replace`]) and [`ExtentCache::clear`]: a lookup
    /// answered before one must not be inserted after it ([`ExtentCache::insert_found`]).
    generation: u64,
}

impl Inner {
    fn touch(&mut self, key: Key) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(p) = self.parts.get_mut(&key) {
            self.lru.remove(&p.used);
            p.used = tick;
            self.lru.insert(tick, key);
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(p) = self.parts.remove(&key) {
            self.lru.remove(&p.used);
            self.bytes -= p.bytes;
        }
    }

    fn evict(&mut self, bytes_max: usize) {
        while self.bytes > bytes_max {
            let Some((&tick, &key)) = self.lru.first_key_value() else { return };
            let Some(p) = self.parts.get_mut(&key) else {
                self.lru.remove(&tick);
                continue;
            };
            match p.extents.pop_first() {
                Some((_, e)) => {
                    let b = entry_bytes(&e);
                    p.bytes -= b;
                    self.bytes -= b;
                }
                None => self.remove(key),
            }
            if self.parts.get(&key).is_some_and(|p| p.extents.is_empty()) {
                self.remove(key);
            }
        }
    }
}

/// Committed extents per partition, bounded. Thread-safe; cheap lookups under one mutex.
pub struct ExtentCache {
    bytes_max: usize,
    inner: Mutex<Inner>,
}

impl ExtentCache {
    /// `bytes_max` 0: the cache holds nothing and answers nothing.
    pub fn new(bytes_max: u64) -> Self {
        Self { bytes_max: usize::try_from(bytes_max).unwrap_or(usize::MAX), inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Extents starting with the one holding `from_offset` until `max_bytes` are covered (at
    /// least one), as the controller's FindExtents answers; `None` when the cache cannot tell
    /// (ask the controller). `high_watermark`: the agent's view of the partition's end.
    pub fn find(&self, topic_id: Uuid, partition: i32, from_offset: i64, max_bytes: u64, high_watermark: i64) -> Option<Vec<ExtentRecord>> {
        let mut inner = self.lock();
        let part = inner.parts.get(&(topic_id, partition))?;
        let mut out = Vec::new();
        let (mut bytes, mut end) = (0u64, from_offset);
        for e in part.walk(from_offset) {
            if !out.is_empty() && bytes >= max_bytes {
                break;
            }
            bytes += e.length;
            end = e.end_offset;
            out.push(e.clone());
        }
        let complete = !out.is_empty() && (bytes >= max_bytes || end >= high_watermark);
        if !complete {
            return None;
        }
        inner.touch((topic_id, partition));
        Some(out)
    }

    /// The first extent holding a timestamp >= `timestamp` (`Some(None)`: none below the high
    /// watermark); `None` when the cache does not hold the log from its start.
    pub fn for_timestamp(
        &self,
        topic_id: Uuid,
        partition: i32,
        timestamp: i64,
        log_start: i64,
        high_watermark: i64,
    ) -> Option<Option<ExtentRecord>> {
        if high_watermark <= log_start {
            return Some(None);
        }
        let mut inner = self.lock();
        let part = inner.parts.get(&(topic_id, partition))?;
        let mut found = None;
        for e in part.walk(log_start) {
            if e.max_timestamp >= timestamp {
                found = Some(Some(e.clone()));
                break;
            }
            if e.end_offset >= high_watermark {
                found = Some(None);
                break;
            }
        }
        if found.is_some() {
            inner.touch((topic_id, partition));
        }
        found
    }

    /// The extent with the largest timestamp (the first of equals), if the whole log from
    /// `log_start` to `high_watermark` is cached.
    pub fn with_max_timestamp(&self, topic_id: Uuid, partition: i32, log_start: i64, high_watermark: i64) -> Option<Option<ExtentRecord>> {
        if high_watermark <= log_start {
            return Some(None);
        }
        let mut inner = self.lock();
        let part = inner.parts.get(&(topic_id, partition))?;
        let mut best: Option<&ExtentRecord> = None;
        let mut end = log_start;
        for e in part.walk(log_start) {
            if best.is_none_or(|b| e.max_timestamp > b.max_timestamp) {
                best = Some(e);
            }
            end = e.end_offset;
            if end >= high_watermark {
                break;
            }
        }
        let answer = (end >= high_watermark).then(|| best.cloned());
        if answer.is_some() {
            inner.touch((topic_id, partition));
        }
        answer
    }

    /// Adds committed extents of one partition. `create`: an answer of the controller to a
    /// lookup here (makes the partition's entry); otherwise (commit notifications) only a
    /// partition already cached takes them.
    pub fn insert(&self, topic_id: Uuid, partition: i32, extents: &[ExtentRecord], create: bool) {
        if self.bytes_max == 0 || extents.is_empty() {
            return;
        }
        let key = (topic_id, partition);
        let mut inner = self.lock();
        if let std::collections::hash_map::Entry::Vacant(v) = inner.parts.entry(key) {
            if !create {
                return;
            }
            v.insert(Part::default());
        }
        if create {
            inner.touch(key);
        }
        let mut added = 0;
        let Some(part) = inner.parts.get_mut(&key) else { return };
        for e in extents {
            if e.topic_id != topic_id || e.partition != partition || e.end_offset <= e.base_offset {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(v) = part.extents.entry(e.base_offset) {
                added += entry_bytes(e);
                v.insert(e.clone());
            }
        }
        part.bytes += added;
        inner.bytes += added;
        inner.evict(self.bytes_max);
    }

    /// The log start moved to `log_start`: extents wholly below it are gone.
    pub fn trim_below(&self, topic_id: Uuid, partition: i32, log_start: i64) {
        let mut inner = self.lock();
        let Some(part) = inner.parts.get_mut(&(topic_id, partition)) else { return };
        let mut freed = 0;
        while let Some(e) = part.extents.first_entry().filter(|e| e.get().end_offset <= log_start) {
            freed += entry_bytes(&e.remove());
        }
        part.bytes -= freed;
        inner.bytes -= freed;
    }

    /// The controller says the partition ends at `next_offset`: a cached extent beyond it
    /// belongs to another history (a store restored from a backup): forget the partition.
    pub fn check_end(&self, topic_id: Uuid, partition: i32, next_offset: i64) {
        let mut inner = self.lock();
        let beyond = inner
            .parts
            .get(&(topic_id, partition))
            .and_then(|p| p.extents.last_key_value())
            .is_some_and(|(_, e)| e.end_offset > next_offset);
        if beyond {
            inner.remove((topic_id, partition));
        }
    }

    /// Keeps only the partitions of topics for which `keep` is true (deleted topics go).
    pub fn retain_topics(&self, keep: impl Fn(Uuid) -> bool) {
        let mut inner = self.lock();
        let gone: Vec<Key> = inner.parts.keys().filter(|(t, _)| !keep(*t)).copied().collect();
        for key in gone {
            inner.remove(key);
        }
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        let generation = inner.generation + 1;
        *inner = Inner { generation, ..Inner::default() };
    }

    /// Changes with every swap and clear: taken before asking the controller, handed to
    /// [`ExtentCache::insert_found`] with its answer.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// A controller's answer to a lookup asked at `generation`: inserted as by
    /// [`ExtentCache::insert`] (creating the partition's entry) unless a swap or a clear came
    /// in between (the answer may then hold extents the swap replaced).
    pub fn insert_found(&self, generation: u64, topic_id: Uuid, partition: i32, extents: &[ExtentRecord]) {
        if self.lock().generation == generation {
            self.insert(topic_id, partition, extents, true);
        }
    }

    /// A compaction swap: the cached extents of the partition that `new` covers are replaced by
    /// `new` (same offsets, another object; extents of other partitions in it are ignored).
    /// Only a partition already cached takes them.
    pub fn replace(&self, topic_id: Uuid, partition: i32, new: &[ExtentRecord]) {
        let mut inner = self.lock();
        inner.generation += 1;
        let Some(part) = inner.parts.get_mut(&(topic_id, partition)) else { return };
        let covered: Vec<i64> = part
            .extents
            .values()
            .filter(|e| {
                new.iter().any(|n| {
                    (n.topic_id, n.partition) == (topic_id, partition) && n.base_offset < e.end_offset && e.base_offset < n.end_offset
                })
            })
            .map(|e| e.base_offset)
            .collect();
        let mut delta: isize = 0;
        for base in covered {
            if let Some(e) = part.extents.remove(&base) {
                delta -= entry_bytes(&e) as isize;
            }
        }
        for n in new.iter().filter(|n| n.topic_id == topic_id && n.partition == partition && n.end_offset > n.base_offset) {
            delta += entry_bytes(n) as isize;
            part.extents.insert(n.base_offset, n.clone());
        }
        part.bytes = part.bytes.saturating_add_signed(delta);
        inner.bytes = inner.bytes.saturating_add_signed(delta);
        let bytes_max = self.bytes_max;
        inner.evict(bytes_max);
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn ext(t: Uuid, base: i64, end: i64, ts: i64) -> ExtentRecord {
        ExtentRecord {
            topic_id: t,
            partition: 0,
            base_offset: base,
            end_offset: end,
            object_key: Arc::from(format!("obj-{base}")),
            position: 0,
            length: 100,
            batch_count: 1,
            max_timestamp: ts,
            object_size: 1000,
        }
    }

    #[test]
    fn answers_only_contiguous_runs_up_to_the_bytes_or_the_high_watermark() {
        let t = Uuid::new_v4();
        let c = ExtentCache::new(1 << 20);
        assert_eq!(c.find(t, 0, 0, 1, 10), None);
        c.insert(t, 0, &[ext(t, 0, 5, 1), ext(t, 5, 10, 2)], true);
        // From inside the first extent, up to the high watermark.
        let got = c.find(t, 0, 3, 1_000, 10).unwrap();
        assert_eq!(got.iter().map(|e| e.base_offset).collect::<Vec<_>>(), vec![0, 5]);
        // Bytes covered by one extent.
        assert_eq!(c.find(t, 0, 3, 50, 20).unwrap().len(), 1);
        // The high watermark moved on and the cache has not seen the extent: ask the controller.
        assert_eq!(c.find(t, 0, 5, 1_000, 20), None);
        // A notification appends it.
        c.insert(t, 0, &[ext(t, 10, 20, 3)], false);
        assert_eq!(c.find(t, 0, 5, 1_000, 20).unwrap().len(), 2);
        // A gap (an extent from 30 without 20..30) is never bridged.
        c.insert(t, 0, &[ext(t, 30, 40, 4)], false);
        assert_eq!(c.find(t, 0, 15, 1_000, 40), None);
        assert_eq!(c.find(t, 0, 35, 1_000, 40).unwrap().len(), 1);
        // Notifications do not create entries for partitions nobody read here.
        let other = Uuid::new_v4();
        c.insert(other, 0, &[ext(other, 0, 5, 1)], false);
        assert_eq!(c.find(other, 0, 0, 1, 5), None);
    }

    #[test]
    fn timestamp_lookups_need_the_log_from_its_start() {
        let t = Uuid::new_v4();
        let c = ExtentCache::new(1 << 20);
        c.insert(t, 0, &[ext(t, 5, 10, 20), ext(t, 10, 15, 30), ext(t, 15, 20, 30)], true);
        assert_eq!(c.for_timestamp(t, 0, 0, 0, 20), None, "0..5 is not cached");
        assert_eq!(c.with_max_timestamp(t, 0, 0, 20), None);
        c.insert(t, 0, &[ext(t, 0, 5, 50)], true);
        assert_eq!(c.for_timestamp(t, 0, 25, 0, 20).unwrap().unwrap().base_offset, 0);
        assert_eq!(c.for_timestamp(t, 0, 60, 0, 20), Some(None));
        assert_eq!(c.with_max_timestamp(t, 0, 0, 20).unwrap().unwrap().base_offset, 0);
        assert_eq!(c.for_timestamp(t, 0, 25, 5, 20).unwrap().unwrap().base_offset, 10, "from the log start");
        assert_eq!(c.with_max_timestamp(t, 0, 5, 20).unwrap().unwrap().base_offset, 10, "first of equals");
        assert_eq!(c.with_max_timestamp(t, 0, 0, 25), None, "the high watermark is past the cache");
        assert_eq!(c.for_timestamp(t, 0, 25, 3, 3), Some(None), "empty partition");
    }

    #[test]
    fn bounded_least_recently_read_partition_loses_its_oldest_extents_first() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let one = entry_bytes(&ext(a, 0, 1, 0));
        let c = ExtentCache::new((one * 4) as u64);
        c.insert(a, 0, &[ext(a, 0, 1, 0), ext(a, 1, 2, 0)], true);
        c.insert(b, 0, &[ext(b, 0, 1, 0), ext(b, 1, 2, 0)], true);
        assert_eq!(c.bytes(), one * 4);
        assert!(c.find(a, 0, 0, u64::MAX, 2).is_some()); // a is now the most recent
        c.insert(b, 0, &[ext(b, 2, 3, 0)], false);
        assert!(c.bytes() <= one * 4);
        assert!(c.find(b, 0, 0, u64::MAX, 3).is_none(), "b lost its oldest extent");
        assert_eq!(c.find(b, 0, 1, u64::MAX, 3).unwrap().len(), 2);
        assert_eq!(c.find(a, 0, 0, u64::MAX, 2).unwrap().len(), 2);
        // Off.
        let off = ExtentCache::new(0);
        off.insert(a, 0, &[ext(a, 0, 1, 0)], true);
        assert_eq!(off.bytes(), 0);
        assert!(off.find(a, 0, 0, 1, 1).is_none());
    }

    #[test]
    fn invalidation_by_topic_log_start_and_a_shorter_log() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let c = ExtentCache::new(1 << 20);
        c.insert(a, 0, &[ext(a, 0, 5, 0), ext(a, 5, 10, 0)], true);
        c.insert(b, 0, &[ext(b, 0, 5, 0)], true);
        c.trim_below(a, 0, 5);
        assert!(c.find(a, 0, 0, 1, 10).is_none());
        assert!(c.find(a, 0, 5, 1, 10).is_some());
        c.check_end(a, 0, 10);
        assert!(c.find(a, 0, 5, 1, 10).is_some());
        c.check_end(a, 0, 7);
        assert!(c.find(a, 0, 5, 1, 7).is_none());
        c.retain_topics(|t| t != b);
        assert!(c.find(b, 0, 0, 1, 5).is_none());
        assert_eq!(c.bytes(), 0);
    }
}
