//! The orphan collector: deletes objects that were uploaded but never committed.
//!
//! An agent that crashes between an object's PUT and its commit leaves an orphan: bytes in the
//! store that no offset points to. Every `orphan_scan_interval_ms`, this job walks the store one
//! hashed prefix and one page at a time (`keys::spread_prefixes`), takes the objects whose key
//! (its ULID) is older than `orphan_grace_ms`, and asks the controller which of them are not
//! committed. The controller answers and, in the same transaction, marks those keys so that they
//! can never be committed afterwards (`ControllerClient::collect_orphans`); only then are they
//! deleted. So an object is either committed or deleted, never both, whatever the timing of a
//! slow upload, a retried commit and this job.
//!
//! The collector never claims a key its own agent is still trying to commit ([`InFlightKeys`]:
//! the uploader and the marker writer hold each key from before its PUT until its commit is
//! answered), however long an outage of the object store or the controller lasted. With several
//! agents on one bucket, the controller service dooms a key of another agent only once that
//! agent's lease has ended (`controller/service.rs` `collect_orphans`). Should a key be doomed
//! all the same, nothing is lost: the uploader uploads the data again under a new key
//! (`upload.rs`), and the orphan is an orphan like any other.
//!
//! Keys that are not ours (other files in the bucket) are never touched.
//!
//! Must not touch: the upload pipeline (it only reads the store and asks the controller).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::AgentError;
use crate::agent::client::ControllerClient;
use crate::clock::Clock;
use crate::object::{ObjectStore, keys};

/// The object keys this agent has uploaded or is uploading and still tries to commit.
#[derive(Debug, Default)]
pub struct InFlightKeys(Mutex<HashSet<String>>);

impl InFlightKeys {
    /// Holds `key` until the returned guard is dropped (its commit answered, or given up).
    pub fn hold(self: &Arc<Self>, key: &str) -> KeyHold {
        let fresh = self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string());
        assert!(fresh, "object key {key} held twice");
        KeyHold { keys: self.clone(), key: key.to_string() }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(key)
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A key held in [`InFlightKeys`]; released on drop.
#[derive(Debug)]
pub struct KeyHold {
    keys: Arc<InFlightKeys>,
    key: String,
}

impl KeyHold {
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        self.keys.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// Keys asked per listing page (and per controller call).
const PAGE_KEYS: usize = 1000;

/// From `[object_store]`.
#[derive(Debug, Clone)]
pub struct OrphanSettings {
    /// Objects younger than this (by the time in their key) are never candidates.
    pub grace_ms: u64,
    pub scan_interval: Duration,
    /// The key prefix the upload pipeline writes under.
    pub key_prefix: String,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    pub listed: u64,
    /// Ours and older than the grace period.
    pub candidates: u64,
    pub deleted: u64,
}

#[derive(Clone)]
pub struct OrphanCollector {
    pub store: Arc<dyn ObjectStore>,
    pub controller: Arc<dyn ControllerClient>,
    pub clock: Arc<dyn Clock>,
    /// This agent's keys still being committed: never candidates.
    pub in_flight: Arc<InFlightKeys>,
    pub settings: OrphanSettings,
}

impl OrphanCollector {
    /// Walks the whole store once.
    pub async fn run_pass(&self) -> Result<PassStats, AgentError> {
        let mut stats = PassStats::default();
        for prefix in keys::spread_prefixes(&self.settings.key_prefix) {
            let mut after: Option<String> = None;
            loop {
                let page = self.store.list_page(&prefix, after.as_deref(), PAGE_KEYS).await?;
                stats.listed += page.len() as u64;
                let now_ms = self.clock.now_ms();
                let candidates: Vec<String> = page
                    .iter()
                    .filter(|m| {
                        keys::parse_object_key(&m.key).is_some_and(|k| now_ms.saturating_sub(k.created_ms) >= self.settings.grace_ms as i64)
                            && !self.in_flight.contains(&m.key)
                    })
                    .map(|m| m.key.clone())
                    .collect();
                stats.candidates += candidates.len() as u64;
                if !candidates.is_empty() {
                    let doomed = self.controller.collect_orphans(candidates.clone()).await?;
                    for (key, doomed) in candidates.iter().zip(doomed) {
                        if doomed {
                            self.store.delete(key).await?;
                            stats.deleted += 1;
                            tracing::info!(key, "deleted an orphan object (uploaded, never committed)");
                        }
                    }
                }
                if page.len() < PAGE_KEYS {
                    break;
                }
                after = page.last().map(|m| m.key.clone());
            }
        }
        Ok(stats)
    }

    /// Runs a pass every `scan_interval` until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                // Biased: polled in a fixed order, so a simulated run replays.
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.settings.scan_interval) => {}
                }
                let pass = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    pass = self.run_pass() => pass,
                };
                match pass {
                    Ok(stats) => tracing::debug!(?stats, "orphan collection pass"),
                    Err(e) => tracing::warn!(error = %e, "orphan collection pass failed; next one in the next interval"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::Range;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;
    use tokio::time::Instant;

    use super::*;
    use crate::agent::client::InProcess;
    use crate::agent::upload::{GroupItem, UploadDeps, UploadSettings, Uploader};
    use crate::api::CreateTopic;
    use crate::clock::{ManualClock, SeededEntropy, SystemClock};
    use crate::config::TopicsConfig;
    use crate::controller::Controller;
    use crate::controller::store::sqlite::SqliteStore;
    use crate::format::records::{encode_batch, peek_header};
    use crate::object::memory::MemoryStore;
    use crate::object::store::{ObjectError, ObjectMeta};

    fn controller(dir: &std::path::Path) -> Arc<dyn ControllerClient> {
        let store = Arc::new(SqliteStore::open(&dir.join("c.db")).unwrap());
        let c = Controller::open(store, TopicsConfig::default(), 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(5)));
        Arc::new(InProcess(Arc::new(c.unwrap())))
    }

    fn collector(
        store: Arc<dyn ObjectStore>,
        controller: Arc<dyn ControllerClient>,
        clock: Arc<dyn Clock>,
        grace_ms: u64,
    ) -> OrphanCollector {
        OrphanCollector {
            store,
            controller,
            clock,
            in_flight: Arc::new(InFlightKeys::default()),
            settings: OrphanSettings { grace_ms, scan_interval: Duration::from_millis(1), key_prefix: "p".into() },
        }
    }

    #[tokio::test]
    async fn old_uncommitted_objects_of_ours_are_deleted_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let c = controller(dir.path());
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let e = SeededEntropy::new(1);
        let orphan = keys::new_object_key("p", "agent-1", &*clock, &e);
        clock.advance_ms(500);
        let young = keys::new_object_key("p", "agent-1", &*clock, &e);
        for key in [&orphan, &young, &"p/00/not-ours.txt".to_string(), &"elsewhere/x.sso".to_string()] {
            store.put(key, Bytes::from_static(b"x")).await.unwrap();
        }
        let job = collector(store.clone(), c, clock.clone(), 1000);
        clock.advance_ms(600);
        let stats = job.run_pass().await.unwrap();
        assert_eq!(stats, PassStats { listed: 3, candidates: 1, deleted: 1 });
        assert_eq!(store.head(&orphan).await.unwrap(), None);
        assert!(store.head(&young).await.unwrap().is_some());
        assert!(store.head("p/00/not-ours.txt").await.unwrap().is_some());
        assert!(store.head("elsewhere/x.sso").await.unwrap().is_some());
    }

    /// A memory store that, on every other put, runs a collector pass after storing the object
    /// and before the put returns: the exact moment an agent crash would leave an orphan,
    /// with the commit still to come.
    struct CollectBetweenPutAndCommit {
        inner: Arc<MemoryStore>,
        collector: OnceLock<OrphanCollector>,
        puts: AtomicU64,
    }

    #[async_trait]
    impl ObjectStore for CollectBetweenPutAndCommit {
        async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
            self.inner.put(key, body).await?;
            if self.puts.fetch_add(1, Ordering::SeqCst).is_multiple_of(2)
                && let Some(c) = self.collector.get()
            {
                c.run_pass().await.map_err(|e| ObjectError::Transient(e.to_string()))?;
            }
            Ok(())
        }
        async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
            self.inner.get_range(key, range).await
        }
        async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
            self.inner.get(key).await
        }
        async fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
            self.inner.head(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), ObjectError> {
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
            self.inner.list(prefix).await
        }
    }

    /// A collector that does not know the uploader's keys (another agent's, or an older
    /// release's) dooms objects between their PUT and their commit: the uploader uploads each
    /// again under a new key, and every batch is committed all the same, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_collector_racing_commits_never_deletes_a_committed_object_nor_loses_one() {
        race_collector_and_uploader(false).await;
    }

    /// With the uploader's keys held, the collector never claims one: nothing is uploaded twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_collector_never_claims_a_key_its_agent_is_committing() {
        race_collector_and_uploader(true).await;
    }

    async fn race_collector_and_uploader(shared_keys: bool) {
        let dir = tempfile::tempdir().unwrap();
        let c = controller(dir.path());
        let topic = c
            .create_topic(CreateTopic {
                name: "race".into(),
                partitions: 3,
                replication_factor: -1,
                configs: BTreeMap::new(),
                validate_only: false,
            })
            .await
            .unwrap();
        let memory = Arc::new(MemoryStore::new());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // Grace 0: every uncommitted object is a candidate, the harshest setting.
        let mut job = collector(memory.clone(), c.clone(), clock.clone(), 0);
        let in_flight = Arc::new(InFlightKeys::default());
        if shared_keys {
            job.in_flight = in_flight.clone();
        }
        let hooked = Arc::new(CollectBetweenPutAndCommit { inner: memory.clone(), collector: OnceLock::new(), puts: AtomicU64::new(0) });
        let _ = hooked.collector.set(job.clone());
        // And a collector looping on its own as fast as it can, racing everything.
        let shutdown = CancellationToken::new();
        let background = job.clone().spawn(shutdown.clone());
        let uploader = Arc::new(Uploader::start(
            UploadSettings {
                flush_interval: Duration::from_millis(2),
                flush_bytes: 4096,
                buffer_bytes_max: 1 << 20,
                max_in_flight_objects: 4,
                quiet_flush: Duration::from_millis(2),
                puts_per_s: 0,
                puts_burst: 0,
                txn_puts_per_s: 0,
                txn_puts_burst: 0,
                agent: "agent-1".into(),
                key_prefix: "p".into(),
                wal_log_id: Some("race-log".into()),
                wal_start_mark: 0,
            },
            UploadDeps {
                store: hooked.clone(),
                cache: None,
                controller: c.clone(),
                clock: clock.clone(),
                entropy: Arc::new(SeededEntropy::new(9)),
                in_flight: in_flight.clone(),
            },
        ));
        // Every batch is a WAL entry, ids given in submission order (as the WAL writer does).
        let wal_ids = Arc::new(std::sync::Mutex::new(0u64));
        let mut producers = Vec::new();
        for p in 0..3 {
            let (uploader, topic_id, wal_ids) = (uploader.clone(), topic.id, wal_ids.clone());
            producers.push(tokio::spawn(async move {
                let mut results = Vec::new();
                for i in 0..40 {
                    let batch = encode_batch(i, &[format!("p{p}-{i}").as_bytes()]);
                    let header = peek_header(&batch).unwrap().unwrap();
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let permit = uploader.reserve(batch.len() as u64, deadline).await.unwrap();
                    let item = GroupItem { topic_id, partition: p, batch, header };
                    let pending = {
                        let mut id = wal_ids.lock().unwrap();
                        *id += 1;
                        uploader.submit(vec![item], Some(*id), permit, None).unwrap().pop().unwrap()
                    };
                    results.push(pending.wait(deadline).await);
                }
                results
            }));
        }
        for (p, producer) in producers.into_iter().enumerate() {
            let results = producer.await.unwrap();
            // Every batch is committed, in the order it was submitted.
            let offsets: Vec<i64> = results.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(offsets, (0..40).collect::<Vec<i64>>(), "partition {p}");
            // Every acknowledged record is there, in a committed object that still exists.
            let next = c.offsets(topic.id, p as i32).unwrap().next_offset;
            assert_eq!(next, 40, "partition {p}: offsets are assigned only to committed batches");
            let extents = c.find_extents(topic.id, p as i32, 0, u64::MAX).await.unwrap();
            assert_eq!(extents.iter().map(|e| e.end_offset - e.base_offset).sum::<i64>(), next);
            for e in extents {
                let read = memory.get_range(&e.object_key, e.position..e.position + e.length).await;
                assert!(read.is_ok(), "committed object {} was deleted: {read:?}", e.object_key);
            }
        }
        uploader.close().await;
        // The contiguous WAL mark covers every entry, in the agent and in the store.
        assert_eq!(*uploader.committed_wal().borrow(), 120);
        assert_eq!(c.wal_mark("race-log".into()).await.unwrap(), 120);
        assert_eq!(uploader.losses().batches(), 0);
        shutdown.cancel();
        background.await.unwrap();
        // Nothing uncommitted is left behind once the collector has run again.
        job.run_pass().await.unwrap();
        let left = memory.list("p/").await.unwrap().len();
        let committed: usize = {
            let mut keys = std::collections::BTreeSet::new();
            for p in 0..3 {
                for e in c.find_extents(topic.id, p, 0, u64::MAX).await.unwrap() {
                    keys.insert(e.object_key.to_string());
                }
            }
            keys.len()
        };
        assert_eq!(left, committed);
        let puts = hooked.puts.load(Ordering::SeqCst) as usize;
        eprintln!("race (keys shared: {shared_keys}): {committed} objects committed, {puts} PUTs");
        if shared_keys {
            assert_eq!(puts, committed, "a held key is never collected, so nothing is uploaded twice");
        } else {
            assert!(puts > committed, "every other object is collected between its upload and its commit, and uploaded again");
        }
    }
}
