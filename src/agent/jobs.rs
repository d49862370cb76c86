//! Background jobs that run in one agent at a time, leased from the controller: retention
//! ([`RetentionJob`]) and the object collector ([`ObjectCollector`]).
//!
//! Every agent runs a [`JobRunner`] per job. Each interval it asks the controller for the job's
//! lease (`acquire_job_lease`); the agent that gets it runs one pass, renewing the lease every
//! third of its length while the pass runs, and hands the lease back with every call that
//! changes something. A pass whose lease is lost (not renewed: the agent was paused or cut off)
//! is dropped at once, and the controller refuses its calls anyway (`LeaseNotHeld`), so two
//! agents never change the same thing for the same job. With one `serve` process, the job
//! simply runs there.
//!
//! Must not touch: the produce and fetch paths (jobs only call the controller and delete
//! objects nothing references).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::AgentError;
use crate::agent::client::ControllerClient;
use crate::api::ControllerError;
use crate::api::jobs::{JOB_OBJECT_GC, JOB_RETENTION, JobLease};
use crate::object::ObjectStore;

/// One pass of a leased job.
pub trait Job: Send + Sync + 'static {
    /// The job's name (one lease per name).
    fn name(&self) -> &'static str;
    /// Runs one pass under `lease`; returns a line for the log.
    fn run_once(&self, lease: &JobLease) -> impl Future<Output = Result<String, AgentError>> + Send;
}

/// Runs a [`Job`] every `interval` while this agent holds its lease.
pub struct JobRunner<J> {
    pub job: J,
    pub controller: Arc<dyn ControllerClient>,
    /// This agent process, as the lease names it (unique among agents).
    pub holder: String,
    pub interval: Duration,
}

impl<J: Job> JobRunner<J> {
    /// Takes the lease if it is free (or ours) and runs one pass; `Ok(false)`: another agent
    /// holds it.
    pub async fn run_if_leased(&self) -> Result<bool, AgentError> {
        let name = self.job.name();
        let Some(lease) = self.controller.acquire_job_lease(name.into(), self.holder.clone()).await? else {
            return Ok(false);
        };
        let labels = [("job", name)];
        crate::metrics::counter("sidestream_job_runs_total", "Passes of a background job run by this agent.", &labels).inc();
        // Biased (here and below): polled in a fixed order, so a simulated run replays.
        let pass = tokio::select! {
            biased;
            pass = self.job.run_once(&lease) => pass,
            lost = self.renew(&lease) => Err(AgentError::Controller(lost)),
        };
        match pass {
            Ok(line) => {
                tracing::debug!(job = name, "{line}");
                Ok(true)
            }
            Err(e) => {
                crate::metrics::counter("sidestream_job_failures_total", "Passes of a background job that failed.", &labels).inc();
                Err(e)
            }
        }
    }

    /// Renews `lease` every third of its length; returns when it could not be renewed.
    async fn renew(&self, lease: &JobLease) -> ControllerError {
        let every = Duration::from_millis((lease.ttl_ms / 3).max(1) as u64);
        loop {
            tokio::time::sleep(every).await;
            match self.controller.acquire_job_lease(lease.job.clone(), self.holder.clone()).await {
                Ok(Some(l)) if l.token == lease.token => continue,
                Ok(_) => return ControllerError::LeaseNotHeld(format!("{} was taken over", lease.job)),
                // The controller is unreachable: the lease runs out before we can tell, stop now.
                Err(e) => return e,
            }
        }
    }

    /// Runs [`JobRunner::run_if_leased`] every `interval` until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.interval) => {}
                }
                let pass = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    pass = self.run_if_leased() => pass,
                };
                if let Err(e) = pass {
                    tracing::warn!(job = self.job.name(), error = %e, "background job pass failed; next one in the next interval");
                }
            }
        })
    }
}

/// Retention: the controller moves log starts by `retention.ms` / `retention.bytes` and expires
/// committed group offsets (`offsets_retention_ms`); the objects that lose their last extent
/// become garbage for the [`ObjectCollector`].
pub struct RetentionJob {
    pub controller: Arc<dyn ControllerClient>,
}

impl Job for RetentionJob {
    fn name(&self) -> &'static str {
        JOB_RETENTION
    }

    async fn run_once(&self, lease: &JobLease) -> Result<String, AgentError> {
        let report = self.controller.enforce_retention(lease.clone()).await?;
        for m in &report.moved {
            tracing::info!(topic_id = %m.topic_id, partition = m.partition, log_start_offset = m.log_start_offset, "retention moved the log start");
        }
        Ok(format!("retention pass: {} partitions moved, {} group offsets expired", report.moved.len(), report.offsets_expired))
    }
}

/// Garbage keys asked per call.
const GC_PAGE_KEYS: u32 = 1_000;

/// Deletes objects no index row references, `delete_delay_ms` after they lost their last
/// reference (reads in flight finish first), at most `deletes_per_s`; then the controller
/// forgets them. A delete that fails is tried again on a later pass.
pub struct ObjectCollector {
    pub controller: Arc<dyn ControllerClient>,
    pub store: Arc<dyn ObjectStore>,
    pub delete_delay_ms: u64,
    pub deletes_per_s: u32,
}

impl Job for ObjectCollector {
    fn name(&self) -> &'static str {
        JOB_OBJECT_GC
    }

    async fn run_once(&self, lease: &JobLease) -> Result<String, AgentError> {
        let deleted_total = crate::metrics::counter(
            "sidestream_objects_deleted_total",
            "Objects deleted from the object store because no index row referenced them any more.",
            &[],
        );
        let mut pace = tokio::time::interval(Duration::from_secs(1) / self.deletes_per_s.max(1));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut deleted, mut failed) = (0u64, 0u64);
        loop {
            let keys = self.controller.garbage_objects(lease.clone(), self.delete_delay_ms as i64, GC_PAGE_KEYS).await?;
            let mut gone = Vec::with_capacity(keys.len());
            for key in &keys {
                pace.tick().await;
                match self.store.delete(key).await {
                    Ok(()) => gone.push(key.clone()),
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(key, error = %e, "deleting a garbage object failed; it is tried again later");
                    }
                }
            }
            if !gone.is_empty() {
                self.controller.forget_objects(lease.clone(), gone.clone()).await?;
                deleted_total.add(gone.len() as u64);
                deleted += gone.len() as u64;
            }
            // A page with failures is not asked again in this pass (it would list them again).
            if keys.len() < GC_PAGE_KEYS as usize || gone.len() < keys.len() {
                break;
            }
        }
        Ok(format!("object collection pass: {deleted} deleted, {failed} failed"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::agent::client::InProcess;
    use crate::api::{CommitRequest, CreateTopic, TopicRef};
    use crate::clock::{ManualClock, SeededEntropy};
    use crate::config::TopicsConfig;
    use crate::controller::Controller;
    use crate::controller::store::sqlite::SqliteStore;
    use crate::format::object::ExtentInfo;
    use crate::object::memory::MemoryStore;

    /// Retention by time on a topic with two objects, then the collector: the expired object
    /// goes from the bucket only after the delete delay, the other one never.
    #[tokio::test]
    async fn expired_extents_go_and_their_object_follows_after_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let c =
            Arc::new(Controller::open(store, TopicsConfig::default(), 86_400_000, clock.clone(), Arc::new(SeededEntropy::new(1))).unwrap());
        let client: Arc<dyn ControllerClient> = Arc::new(InProcess(c.clone()));
        let configs = BTreeMap::from([("retention.ms".to_string(), "60000".to_string())]);
        let t = c
            .create_topic(&CreateTopic { name: "t".into(), partitions: 1, replication_factor: -1, configs, validate_only: false })
            .unwrap();
        let objects = Arc::new(MemoryStore::new());
        for (key, ts) in [("old", 1_000), ("new", 990_000)] {
            objects.put(key, bytes::Bytes::from_static(b"0123456789")).await.unwrap();
            let extent = ExtentInfo {
                topic_id: t.id,
                partition: 0,
                position: 0,
                length: 10,
                batch_count: 1,
                offset_count: 5,
                max_timestamp: ts,
                producer: None,
            };
            let req = CommitRequest {
                object_key: key.into(),
                object_size_bytes: 10,
                agent: "a".into(),
                extents: vec![extent],
                wal: None,
                txn_end: None,
            };
            c.commit_object(&req).unwrap();
        }
        fn runner<J: Job>(job: J, client: &Arc<dyn ControllerClient>, holder: &str) -> JobRunner<J> {
            JobRunner { job, controller: client.clone(), holder: holder.into(), interval: Duration::from_secs(1) }
        }
        assert!(runner(RetentionJob { controller: client.clone() }, &client, "me").run_if_leased().await.unwrap());
        assert_eq!(c.offsets(t.id, 0).unwrap().log_start_offset, 5);
        assert_eq!(c.find_extents(t.id, 0, 0, u64::MAX).unwrap().iter().map(|e| e.base_offset).collect::<Vec<_>>(), vec![5]);
        let collector =
            ObjectCollector { controller: client.clone(), store: objects.clone(), delete_delay_ms: 60_000, deletes_per_s: 1000 };
        let gc = runner(collector, &client, "me");
        gc.run_if_leased().await.unwrap();
        assert!(objects.head("old").await.unwrap().is_some(), "deleted before the delay");
        // Another holder gets no job while our leases run.
        assert!(!runner(RetentionJob { controller: client.clone() }, &client, "other").run_if_leased().await.unwrap());
        clock.advance_ms(60_000);
        gc.run_if_leased().await.unwrap();
        assert_eq!(objects.head("old").await.unwrap(), None);
        assert!(objects.head("new").await.unwrap().is_some());
        assert_eq!(c.storage_stats().unwrap().objects, 1);
        assert!(c.topic(TopicRef::Name("t")).is_some());
    }

    /// Commits of two-partition objects, DeleteRecords moving random log starts and the
    /// collector (with no delay at all) race; afterwards every index row's object is still in
    /// the bucket, and every object no row references is gone. Seeded; the seed is printed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn the_collector_racing_commits_and_delete_records_never_deletes_a_referenced_object() {
        let seed: u64 = std::env::var("SIDESTREAM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(18);
        eprintln!("seed {seed}");
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let clock = Arc::new(crate::clock::SystemClock);
        let c = Arc::new(Controller::open(store, TopicsConfig::default(), 86_400_000, clock, Arc::new(SeededEntropy::new(seed))).unwrap());
        let client: Arc<dyn ControllerClient> = Arc::new(InProcess(c.clone()));
        let t = c
            .create_topic(&CreateTopic {
                name: "t".into(),
                partitions: 4,
                replication_factor: -1,
                configs: BTreeMap::new(),
                validate_only: false,
            })
            .unwrap();
        let topic_id = t.id;
        let objects = Arc::new(MemoryStore::new());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committer = {
            let (c, objects) = (c.clone(), objects.clone());
            tokio::spawn(async move {
                for i in 0..300u32 {
                    let key = format!("o{i:04}");
                    objects.put(&key, bytes::Bytes::from_static(b"0123456789")).await.unwrap();
                    let extent = |p: i32, position: u64| ExtentInfo {
                        topic_id,
                        partition: p,
                        position,
                        length: 5,
                        batch_count: 1,
                        offset_count: 3,
                        max_timestamp: 0,
                        producer: None,
                    };
                    let (a, b) = ((i % 4) as i32, ((i + 1) % 4) as i32);
                    let req = CommitRequest {
                        object_key: key,
                        object_size_bytes: 10,
                        agent: "a".into(),
                        extents: vec![extent(a, 0), extent(b, 5)],
                        wal: None,
                        txn_end: None,
                    };
                    let c = c.clone();
                    tokio::task::spawn_blocking(move || c.commit_object(&req).unwrap()).await.unwrap();
                }
            })
        };
        let mover = {
            let (c, done) = (c.clone(), done.clone());
            tokio::task::spawn_blocking(move || {
                let mut rng = seed;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let p = (rng >> 33) as i32 % 4;
                    let hw = c.offsets(topic_id, p).unwrap().next_offset;
                    // Anywhere up to the high watermark, inside extents too.
                    let to = if hw == 0 { 0 } else { (rng >> 40) as i64 % (hw + 1) };
                    c.delete_records(&[(topic_id, p, to)]).unwrap();
                }
            })
        };
        let collector = ObjectCollector { controller: client.clone(), store: objects.clone(), delete_delay_ms: 0, deletes_per_s: 100_000 };
        let gc = JobRunner { job: collector, controller: client.clone(), holder: "gc".into(), interval: Duration::from_millis(1) };
        let mut passes = 0;
        while !committer.is_finished() {
            gc.run_if_leased().await.unwrap();
            passes += 1;
        }
        committer.await.unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        mover.await.unwrap();
        gc.run_if_leased().await.unwrap();
        let mut referenced = std::collections::BTreeSet::new();
        for p in 0..4 {
            let start = c.offsets(t.id, p).unwrap().log_start_offset;
            for e in c.find_extents(t.id, p, start, u64::MAX).unwrap() {
                referenced.insert(e.object_key.to_string());
            }
        }
        for i in 0..300u32 {
            let key = format!("o{i:04}");
            let present = objects.head(&key).await.unwrap().is_some();
            assert_eq!(present, referenced.contains(&key), "{key}: in the bucket {present}, referenced {}", !present);
        }
        assert!(passes > 1 && referenced.len() < 300, "{passes} passes, {} objects referenced: nothing raced", referenced.len());
    }
}
