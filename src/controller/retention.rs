//! Data that ages: retention by time and size, DeleteRecords, the object collector's books, and
//! the leases that keep each background job in one agent at a time ([`JobLeases`]).
//!
//! A log start only moves forward, and only by whole extents for retention (anywhere for
//! DeleteRecords: a start inside an extent keeps the extent, and fetches skip the records below
//! it). The store deletes the extents that end at or below the new start in the same
//! transaction, and an object whose last extent went becomes garbage there too
//! ([`super::store::MetadataStore::advance_log_starts`]); the collector (an agent job) deletes it from the
//! object store after `object_delete_delay_ms` and then forgets it. So an object that an index
//! row references is never garbage, and a committed object is deleted only after its last
//! reference went.
//!
//! Runs in the controller process. Must not touch: object bytes (the agent's jobs delete them).

use std::collections::HashMap;

use super::store::LogStartMove;
use super::{Controller, RECENT_EXTENTS_MAX};
use crate::api::ControllerError;
use crate::api::jobs::{JobLease, LogStart, RetentionReport, StorageStats};
use uuid::Uuid;

/// Extents retention reads from the store per page: a short first page, then long ones.
const RETENTION_FIRST_PAGE_EXTENTS: u32 = 8;
const RETENTION_PAGE_EXTENTS: u32 = 1_000;
/// Extents one retention pass removes from one partition at most (the next pass goes on).
const RETENTION_PASS_EXTENTS_MAX: usize = 100_000;
/// Keys the collector lists or forgets per call at most.
pub const GARBAGE_KEYS_PER_CALL_MAX: u32 = 1_000;
/// Distinct jobs the lease table holds at most.
const JOBS_MAX: usize = 64;
/// Topics named in [`StorageStats::topic_bytes`] (the metric's label set); the rest are summed
/// under [`OTHER_TOPICS`].
pub const STORAGE_TOPICS_MAX: usize = 100;
pub const OTHER_TOPICS: &str = "__other";

/// The default `[controller] job_lease_ms`.
pub const DEFAULT_JOB_LEASE_MS: i64 = 30_000;

#[derive(Debug)]
struct Held {
    holder: String,
    token: u64,
    until_ms: i64,
}

/// Which agent holds which job, until when. In memory: a controller that takes over grants
/// nothing for one lease length ([`JobLeases::new`]'s `granting_from_ms`), so every lease its
/// predecessor granted has run out first.
#[derive(Debug)]
pub struct JobLeases {
    ttl_ms: i64,
    granting_from_ms: i64,
    held: HashMap<String, Held>,
    next_token: u64,
}

impl JobLeases {
    /// Leases of `ttl_ms`, granted from `granting_from_ms` on; tokens start at `first_token`
    /// (a clock reading, so that a restarted controller does not hand out old tokens again).
    pub fn new(ttl_ms: i64, granting_from_ms: i64, first_token: u64) -> Self {
        assert!(ttl_ms > 0, "job lease of {ttl_ms} ms");
        Self { ttl_ms, granting_from_ms, held: HashMap::new(), next_token: first_token }
    }

    /// Grants `job` to `holder` (or renews its lease), unless another holder's lease runs.
    pub fn acquire(&mut self, job: &str, holder: &str, now_ms: i64) -> Result<Option<JobLease>, ControllerError> {
        if job.is_empty() || job.len() > 64 || holder.is_empty() || holder.len() > 256 {
            return Err(ControllerError::InvalidRequest("job and holder names: 1 to 64 and 1 to 256 bytes".into()));
        }
        if now_ms < self.granting_from_ms {
            return Ok(None);
        }
        let until_ms = now_ms.saturating_add(self.ttl_ms);
        if let Some(h) = self.held.get_mut(job)
            && h.until_ms > now_ms
        {
            if h.holder != holder {
                return Ok(None);
            }
            h.until_ms = until_ms;
            return Ok(Some(JobLease { job: job.into(), holder: holder.into(), token: h.token, ttl_ms: self.ttl_ms }));
        }
        if !self.held.contains_key(job) && self.held.len() >= JOBS_MAX {
            self.held.retain(|_, h| h.until_ms > now_ms);
            if self.held.len() >= JOBS_MAX {
                return Err(ControllerError::PolicyViolation(format!("more than {JOBS_MAX} jobs leased")));
            }
        }
        self.next_token += 1;
        let token = self.next_token;
        self.held.insert(job.into(), Held { holder: holder.into(), token, until_ms });
        Ok(Some(JobLease { job: job.into(), holder: holder.into(), token, ttl_ms: self.ttl_ms }))
    }

    /// Ok if `lease` is the running lease of its job.
    pub fn check(&self, lease: &JobLease, now_ms: i64) -> Result<(), ControllerError> {
        match self.held.get(&lease.job) {
            Some(h) if h.holder == lease.holder && h.token == lease.token && h.until_ms > now_ms => Ok(()),
            _ => Err(ControllerError::LeaseNotHeld(format!("{} (token {}) by {}", lease.job, lease.token, lease.holder))),
        }
    }
}

/// How far retention moves a partition's log start, given its extents from the log start on
/// (in offset order) and the bytes the partition holds: past each extent, from the first,
/// whose newest record is older than `cutoff_ms`, or without which the partition still holds
/// `retention_bytes`; it stops at the first extent that is neither (as Kafka's segments).
/// Returns the new start (None: nothing to remove), the bytes left, and whether the walk
/// stopped at an extent it keeps (false: every extent given may go, look at the next ones).
pub fn retention_start(
    extents: &[crate::api::ExtentRecord],
    cutoff_ms: Option<i64>,
    retention_bytes: Option<u64>,
    mut bytes: u64,
) -> (Option<i64>, u64, bool) {
    let mut start = None;
    for e in extents {
        let expired = cutoff_ms.is_some_and(|c| e.max_timestamp < c);
        let over = retention_bytes.is_some_and(|r| bytes.saturating_sub(e.length) >= r);
        if !(expired || over) {
            return (start, bytes, true);
        }
        bytes = bytes.saturating_sub(e.length);
        start = Some(e.end_offset);
    }
    (start, bytes, false)
}

/// A topic config as an integer, else the broker default.
fn config_i64(configs: &std::collections::BTreeMap<String, String>, key: &str, default: i64) -> i64 {
    configs.get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Controller {
    /// Leases `job` to `holder` (see [`JobLeases::acquire`]).
    pub fn acquire_job_lease(&self, job: &str, holder: &str) -> Result<Option<JobLease>, ControllerError> {
        let now = self.clock.now_ms();
        self.leases().acquire(job, holder, now)
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, JobLeases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn check_lease(&self, lease: &JobLease) -> Result<(), ControllerError> {
        self.leases().check(lease, self.clock.now_ms())
    }

    /// Blocking. DeleteRecords: moves each partition's log start to its offset (-1: the high
    /// watermark), in one store transaction. Each partition's answer is its log start after the
    /// call (an offset below it changes nothing), or `OffsetOutOfRange` beyond the high
    /// watermark, or `UnknownTopicOrPartition`.
    pub fn delete_records(&self, partitions: &[(Uuid, i32, i64)]) -> Result<Vec<Result<i64, ControllerError>>, ControllerError> {
        let _w = self.lock_writes();
        let mut moves = Vec::new();
        let mut results = Vec::with_capacity(partitions.len());
        for &(topic_id, partition, offset) in partitions {
            let result = self.offsets(topic_id, partition).and_then(|o| {
                let target = if offset == -1 { o.next_offset } else { offset };
                if target < 0 || target > o.next_offset {
                    return Err(ControllerError::OffsetOutOfRange(format!(
                        "offset {offset} is not in [0, {}] (-1: the high watermark)",
                        o.next_offset
                    )));
                }
                if target > o.log_start_offset {
                    moves.push(LogStartMove { topic_id, partition, log_start_offset: target });
                }
                Ok(target.max(o.log_start_offset))
            });
            results.push(result);
        }
        self.move_log_starts_locked(&moves)?;
        Ok(results)
    }

    /// Moves log starts forward (caller holds the write lock): the store first, then memory.
    /// Moves that would go back or past the high watermark are dropped.
    fn move_log_starts_locked(&self, moves: &[LogStartMove]) -> Result<Vec<LogStart>, ControllerError> {
        let moves: Vec<LogStartMove> = {
            let s = self.read();
            moves
                .iter()
                .filter(|m| {
                    s.partitions
                        .get(&(m.topic_id, m.partition))
                        .and_then(|p| p.offsets)
                        .is_some_and(|o| o.log_start_offset < m.log_start_offset && m.log_start_offset <= o.next_offset)
                })
                .copied()
                .collect()
        };
        if moves.is_empty() {
            return Ok(Vec::new());
        }
        self.store.advance_log_starts(&moves, self.clock.now_ms()).map_err(|e| self.store_error(e))?;
        let mut s = self.write();
        for m in &moves {
            if let Some(p) = s.partitions.get_mut(&(m.topic_id, m.partition)) {
                if let Some(o) = p.offsets.as_mut() {
                    o.log_start_offset = o.log_start_offset.max(m.log_start_offset);
                }
                while p.recent.front().is_some_and(|e| e.end_offset <= m.log_start_offset) {
                    p.recent.pop_front();
                }
                debug_assert!(p.recent.len() <= RECENT_EXTENTS_MAX);
            }
        }
        Ok(moves
            .iter()
            .map(|m| LogStart { topic_id: m.topic_id, partition: m.partition, log_start_offset: m.log_start_offset })
            .collect())
    }

    /// Blocking. One retention pass (the leased retention job): moves each partition of a topic
    /// with `cleanup.policy` `delete` past its extents beyond `retention.ms` / `retention.bytes`,
    /// expires committed group offsets (`offsets.retention.minutes`), and refreshes the
    /// storage figures ([`Controller::storage_stats`]).
    pub fn enforce_retention(&self, lease: &JobLease) -> Result<RetentionReport, ControllerError> {
        self.check_lease(lease)?;
        let now = self.clock.now_ms();
        let sizes: HashMap<(Uuid, i32), u64> =
            self.store.partition_sizes()?.into_iter().map(|p| ((p.topic_id, p.partition), p.bytes)).collect();
        let mut moves = Vec::new();
        for t in self.topics() {
            let policy = t.configs.get("cleanup.policy").map_or("delete", String::as_str);
            if !policy.split(',').any(|p| p.trim() == "delete") {
                continue;
            }
            let retention_ms = config_i64(&t.configs, "retention.ms", self.defaults.retention_ms);
            let retention_bytes = config_i64(&t.configs, "retention.bytes", self.defaults.retention_bytes);
            let cutoff_ms = (retention_ms >= 0).then(|| now.saturating_sub(retention_ms));
            let bytes_max = (retention_bytes >= 0).then_some(retention_bytes as u64);
            if cutoff_ms.is_none() && bytes_max.is_none() {
                continue;
            }
            for partition in 0..t.partitions {
                let Ok(o) = self.offsets(t.id, partition) else { continue };
                let mut bytes = sizes.get(&(t.id, partition)).copied().unwrap_or(0);
                let (mut from, mut start, mut seen) = (o.log_start_offset, None, 0usize);
                // Most passes remove nothing: a short first page tells, then full pages.
                let mut page_extents = RETENTION_FIRST_PAGE_EXTENTS;
                loop {
                    let page = self.store.find_extents(t.id, partition, from, page_extents)?;
                    let (moved, left, stopped) = retention_start(&page, cutoff_ms, bytes_max, bytes);
                    if let Some(s) = moved {
                        start = Some(s);
                        from = s;
                    }
                    bytes = left;
                    seen += page.len();
                    if stopped || page.len() < page_extents as usize || seen >= RETENTION_PASS_EXTENTS_MAX {
                        break;
                    }
                    page_extents = RETENTION_PAGE_EXTENTS;
                }
                if let Some(s) = start.filter(|s| *s > o.log_start_offset) {
                    moves.push(LogStartMove { topic_id: t.id, partition, log_start_offset: s });
                }
            }
        }
        let moved = {
            let _w = self.lock_writes();
            // Checked again under the lock: a lease that ran out meanwhile changes nothing.
            self.check_lease(lease)?;
            self.move_log_starts_locked(&moves)?
        };
        let offsets_expired = self.groups.expire_offsets(now)?;
        self.storage_stats()?;
        Ok(RetentionReport { moved, offsets_expired })
    }

    /// Blocking. Up to `limit` garbage objects that lost their last reference at least
    /// `min_age_ms` ago (the collector's `object_delete_delay_ms`).
    pub fn garbage_objects(&self, lease: &JobLease, min_age_ms: i64, limit: u32) -> Result<Vec<String>, ControllerError> {
        self.check_lease(lease)?;
        let before = self.clock.now_ms().saturating_sub(min_age_ms.max(0));
        Ok(self.store.garbage(before, limit.min(GARBAGE_KEYS_PER_CALL_MAX))?)
    }

    /// Blocking. The collector deleted these garbage objects (see
    /// [`super::store::MetadataStore::forget_objects`]).
    pub fn forget_objects(&self, lease: &JobLease, keys: &[String]) -> Result<(), ControllerError> {
        if keys.len() > GARBAGE_KEYS_PER_CALL_MAX as usize {
            return Err(ControllerError::InvalidRequest(format!("more than {GARBAGE_KEYS_PER_CALL_MAX} keys")));
        }
        let now = self.clock.now_ms();
        let window_start = now.saturating_sub(self.commit_window_ms);
        // A key made before the commit window needs no mark: it is refused by its age.
        let keys: Vec<(String, bool)> = keys
            .iter()
            .map(|k| (k.clone(), crate::object::keys::parse_object_key(k).is_none_or(|p| p.created_ms >= window_start)))
            .collect();
        let _w = self.lock_writes();
        self.check_lease(lease)?;
        self.store.forget_objects(&keys, now, window_start).map_err(|e| self.store_error(e))
    }

    /// Blocking. The bytes the index holds per partition (topic id, partition, bytes), of
    /// partitions that hold any: what DescribeLogDirs reports as each partition's size.
    pub fn partition_sizes(&self) -> Result<Vec<(Uuid, i32, u64)>, ControllerError> {
        Ok(self.store.partition_sizes()?.into_iter().map(|p| (p.topic_id, p.partition, p.bytes)).collect())
    }

    /// Blocking. What the object store holds, from the store's books (and kept for
    /// [`Controller::last_storage_stats`]).
    pub fn storage_stats(&self) -> Result<StorageStats, ControllerError> {
        let objects = self.store.stored_objects()?;
        let mut by_topic: HashMap<Uuid, u64> = HashMap::new();
        for p in self.store.partition_sizes()? {
            *by_topic.entry(p.topic_id).or_default() += p.bytes;
        }
        let mut topic_bytes: Vec<(String, u64)> = {
            let s = self.read();
            by_topic.into_iter().filter_map(|(id, b)| s.by_id.get(&id).map(|t| (t.name.clone(), b))).collect()
        };
        topic_bytes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if topic_bytes.len() > STORAGE_TOPICS_MAX {
            let other: u64 = topic_bytes.drain(STORAGE_TOPICS_MAX - 1..).map(|(_, b)| b).sum();
            topic_bytes.push((OTHER_TOPICS.into(), other));
        }
        let stats = StorageStats {
            objects: objects.objects,
            object_bytes: objects.bytes,
            garbage_objects: objects.garbage_objects,
            garbage_bytes: objects.garbage_bytes,
            topic_bytes,
        };
        *self.storage.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats.clone());
        Ok(stats)
    }

    /// The storage figures of the last [`Controller::storage_stats`] (for `/metrics`, which
    /// must not query the store).
    pub fn last_storage_stats(&self) -> Option<StorageStats> {
        self.storage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Registers the storage gauges of `/metrics`, read from the controller's last figures (each
/// retention pass refreshes them; `source` gives the active controller's): bytes and objects
/// stored, garbage waiting, bytes per topic.
pub fn register_storage_gauges(source: std::sync::Arc<dyn Fn() -> Option<StorageStats> + Send + Sync>) {
    type Pick = fn(&StorageStats) -> crate::metrics::GaugeSamples;
    let families: [(&'static str, &'static str, Pick); 5] = [
        ("sidestream_stored_bytes", "Bytes of the objects the store holds (referenced or waiting for deletion).", |s| {
            vec![(vec![], s.object_bytes as i64)]
        }),
        ("sidestream_stored_objects", "Objects the store holds (referenced or waiting for deletion).", |s| {
            vec![(vec![], s.objects as i64)]
        }),
        ("sidestream_garbage_objects", "Objects no index row references, waiting for object_delete_delay_ms.", |s| {
            vec![(vec![], s.garbage_objects as i64)]
        }),
        ("sidestream_garbage_bytes", "Bytes of the objects waiting for deletion.", |s| vec![(vec![], s.garbage_bytes as i64)]),
        ("sidestream_stored_topic_bytes", "Bytes the index holds per topic (the largest topics; the rest as __other).", |s| {
            s.topic_bytes.iter().map(|(t, b)| (vec![("topic", t.clone())], *b as i64)).collect()
        }),
    ];
    for (name, help, pick) in families {
        let source = source.clone();
        crate::metrics::gauges(name, help, move || source().map(|s| pick(&s)).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ExtentRecord;
    use std::sync::Arc;

    fn ext(base: i64, end: i64, length: u64, max_timestamp: i64) -> ExtentRecord {
        ExtentRecord {
            topic_id: Uuid::nil(),
            partition: 0,
            base_offset: base,
            end_offset: end,
            object_key: Arc::from("k"),
            position: 0,
            length,
            batch_count: 1,
            max_timestamp,
            object_size: length,
        }
    }

    #[test]
    fn retention_removes_whole_extents_from_the_start_and_stops_at_the_first_it_keeps() {
        let extents = [ext(0, 10, 100, 5), ext(10, 20, 100, 50), ext(20, 30, 100, 6), ext(30, 40, 100, 70)];
        // By time: the third is old too, but the second stops the walk (as a Kafka segment).
        assert_eq!(retention_start(&extents, Some(10), None, 400), (Some(10), 300, true));
        assert_eq!(retention_start(&extents, Some(100), None, 400), (Some(40), 0, false));
        // By size: keep at least 150 bytes, so two extents stay (200 >= 150, 100 < 150).
        assert_eq!(retention_start(&extents, None, Some(150), 400), (Some(20), 200, true));
        assert_eq!(retention_start(&extents, None, Some(400), 400), (None, 400, true));
        assert_eq!(retention_start(&extents, None, Some(0), 400), (Some(40), 0, false));
    }

    /// Retention walks past its short first page: 20 extents of 10 bytes, 50 bytes kept.
    /// On a partition added by CreatePartitions: a pass covers the topic's partitions as they
    /// are now.
    #[test]
    fn a_pass_removes_extents_across_pages_and_keeps_retention_bytes() {
        use crate::api::{CommitRequest, CreatePartitions, CreateTopic};
        use crate::clock::{SeededEntropy, SystemClock};
        use crate::controller::store::sqlite::SqliteStore;
        use crate::format::object::ExtentInfo;

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let c = Controller::open(store, Default::default(), 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(2))).unwrap();
        let configs = [("retention.bytes".to_string(), "50".to_string())].into_iter().collect();
        let t = c
            .create_topic(&CreateTopic { name: "t".into(), partitions: 1, replication_factor: -1, configs, validate_only: false })
            .unwrap();
        let grow = CreatePartitions { name: "t".into(), count: 2, assignments: None, brokers: vec![1], validate_only: false };
        c.create_partitions(&grow).unwrap();
        for i in 0..20 {
            let extent = ExtentInfo {
                topic_id: t.id,
                partition: 1,
                position: 0,
                length: 10,
                batch_count: 1,
                offset_count: 3,
                max_timestamp: i64::MAX,
                producer: None,
            };
            let req = CommitRequest {
                object_key: format!("o{i}"),
                object_size_bytes: 10,
                agent: "a".into(),
                extents: vec![extent],
                wal: None,
                txn_end: None,
            };
            c.commit_object(&req).unwrap();
        }
        let lease = c.acquire_job_lease("retention", "me").unwrap().unwrap();
        let report = c.enforce_retention(&lease).unwrap();
        assert_eq!(report.moved, vec![LogStart { topic_id: t.id, partition: 1, log_start_offset: 45 }]);
        assert_eq!(c.find_extents(t.id, 1, 0, u64::MAX).unwrap().len(), 5);
        assert_eq!(c.garbage_objects(&lease, 0, 100).unwrap().len(), 15);
        assert!(c.enforce_retention(&lease).unwrap().moved.is_empty(), "a second pass has nothing to do");
        assert!(matches!(c.enforce_retention(&JobLease { token: lease.token + 1, ..lease }), Err(ControllerError::LeaseNotHeld(_))));
    }

    #[test]
    fn a_job_has_one_holder_until_its_lease_runs_out() {
        let mut l = JobLeases::new(1_000, 500, 7);
        assert_eq!(l.acquire("gc", "a", 0).unwrap(), None, "nothing before granting_from");
        let a = l.acquire("gc", "a", 500).unwrap().unwrap();
        assert_eq!(l.acquire("gc", "b", 1_000).unwrap(), None);
        // Renewing keeps the token and extends the lease.
        assert_eq!(l.acquire("gc", "a", 1_400).unwrap().unwrap().token, a.token);
        assert!(l.check(&a, 2_399).is_ok());
        assert!(matches!(l.check(&a, 2_400), Err(ControllerError::LeaseNotHeld(_))));
        let b = l.acquire("gc", "b", 2_400).unwrap().unwrap();
        assert_ne!(b.token, a.token);
        assert!(l.check(&a, 2_401).is_err(), "the old holder's lease is refused");
        // Even the same holder's old lease, once someone else held the job.
        let a2 = l.acquire("gc", "a", 3_400).unwrap().unwrap();
        assert!(l.check(&a, 3_401).is_err());
        assert!(l.check(&a2, 3_401).is_ok());
        assert!(l.acquire("", "a", 3_500).is_err());
    }
}
