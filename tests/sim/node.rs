//! One simulated agent host: its data dir (the WAL on a real temporary disk), and the agent
//! incarnation running on it, assembled as `server::start_with` assembles one (the upload
//! pipeline, the WAL with its replay, the orphan collector, the object collector job), minus
//! the listeners: the sim calls the agent's entry points directly.
//!
//! A crash ends the incarnation's [`Life`] (its store and controller calls never return), stops
//! its background jobs, and drops it; a restart recovers the WAL (optionally with a torn tail
//! appended first) and replays what the controller has not committed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sidestream::agent::client::ControllerClient;
use sidestream::agent::jobs::{JobRunner, ObjectCollector};
use sidestream::agent::orphans::{InFlightKeys, OrphanCollector, OrphanSettings};
use sidestream::agent::upload::{UploadDeps, UploadSettings, Uploader};
use sidestream::agent::wal::{self, Wal, WalSettings};
use sidestream::agent::{Agent, AgentSettings, cache};
use sidestream::clock::{Clock, Entropy, SeededEntropy};
use sidestream::config::{Config, WalSync};
use sidestream::object::ObjectStore;
use tokio_util::sync::CancellationToken;

use crate::world::{Life, Rng, SimController, SimDisk, SimStore, World};

/// Settings every incarnation of every agent of a run shares (drawn from the seed).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub flush_interval_ms: u64,
    pub flush_bytes: u64,
    pub max_in_flight_objects: usize,
    pub orphan_grace_ms: u64,
    pub orphan_scan_ms: u64,
    pub gc_interval_ms: u64,
    /// Small segments: the WAL rolls and deletes committed ones often.
    pub wal_segment_bytes: u64,
    /// Early seals of objects acks=all producers wait for (`[upload] quiet_flush_ms`,
    /// `puts_per_s`, `puts_burst`; 0 PUTs per second: none).
    pub quiet_flush_ms: u64,
    pub puts_per_s: u32,
    pub puts_burst: u32,
    /// `[wal] sync = "fsync"` (else none: the disk faults then never see an fsync).
    pub wal_fsync: bool,
}

/// A running incarnation.
pub struct Running {
    pub agent: Arc<Agent>,
    life: Life,
    shutdown: CancellationToken,
}

pub struct Node {
    pub id: usize,
    pub dir: PathBuf,
    pub running: Option<Running>,
    incarnation: u32,
    /// Acknowledged batches earlier incarnations gave up (must stay 0).
    pub lost_batches: u64,
}

impl Node {
    pub fn new(id: usize, dir: PathBuf) -> Self {
        Self { id, dir, running: None, incarnation: 0, lost_batches: 0 }
    }

    pub fn agent(&self) -> Option<&Arc<Agent>> {
        self.running.as_ref().map(|r| &r.agent)
    }

    /// Starts an incarnation: recovers the WAL, asks the controller its mark (retried while it
    /// is down), starts the pipeline and replays the uncommitted entries.
    pub async fn start(&mut self, world: &Arc<World>, settings: &NodeSettings, rng: &mut Rng) {
        assert!(self.running.is_none());
        self.incarnation += 1;
        let life = Life::new();
        let shutdown = CancellationToken::new();
        let clock: Arc<dyn Clock> = world.clock.clone();
        let entropy: Arc<dyn Entropy> = Arc::new(SeededEntropy::new(rng.next_u64()));
        let store: Arc<dyn ObjectStore> = Arc::new(SimStore { world: world.clone(), life: life.clone(), node: self.id });
        let controller: Arc<dyn ControllerClient> = Arc::new(SimController { world: world.clone(), life: life.clone(), node: self.id });
        let config = Config::default();
        let cache_settings = cache::CacheSettings {
            memory_bytes: 16 << 20,
            disk_bytes: 0,
            disk_write_bytes_per_s: 0,
            disk_reserve_bytes: 0,
            block_bytes: config.cache.block_bytes,
            readahead_blocks: config.cache.readahead_blocks,
            partition_readahead_bytes: config.cache.partition_readahead_bytes,
            cold_read_concurrency: config.cache.cold_read_concurrency,
            dir: self.dir.join("cache"),
        };
        let cache = cache::ReadCache::open(&cache_settings, store.clone()).await.expect("sim: read cache");
        let wal_settings = WalSettings {
            dir: self.dir.join("wal"),
            segment_bytes: settings.wal_segment_bytes,
            sync: if settings.wal_fsync { WalSync::Fsync } else { WalSync::None },
            bytes_max: 256 << 20,
        };
        let recovery = wal::recover(&wal_settings.dir, &*entropy).expect("sim: WAL recovery");
        let wal_mark = loop {
            match controller.wal_mark(recovery.log_id.clone()).await {
                Ok(mark) => break mark,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        world.trace.log(format_args!(
            "a{} start #{}: WAL last {} mark {} dropped {} bytes",
            self.id,
            self.incarnation,
            recovery.last_id(),
            wal_mark,
            recovery.dropped_bytes
        ));
        let in_flight = Arc::new(InFlightKeys::default());
        OrphanCollector {
            store: store.clone(),
            controller: controller.clone(),
            clock: clock.clone(),
            in_flight: in_flight.clone(),
            settings: OrphanSettings {
                grace_ms: settings.orphan_grace_ms,
                scan_interval: Duration::from_millis(settings.orphan_scan_ms),
                key_prefix: String::new(),
            },
        }
        .spawn(shutdown.clone());
        JobRunner {
            job: ObjectCollector { controller: controller.clone(), store: store.clone(), delete_delay_ms: 60_000, deletes_per_s: 100 },
            controller: controller.clone(),
            holder: format!("agent-{}/{}", self.id, self.incarnation),
            interval: Duration::from_millis(settings.gc_interval_ms),
        }
        .spawn(shutdown.clone());
        let uploader = Uploader::start(
            UploadSettings {
                flush_interval: Duration::from_millis(settings.flush_interval_ms),
                flush_bytes: settings.flush_bytes,
                buffer_bytes_max: 64 << 20,
                max_in_flight_objects: settings.max_in_flight_objects,
                quiet_flush: Duration::from_millis(settings.quiet_flush_ms),
                puts_per_s: settings.puts_per_s,
                puts_burst: settings.puts_burst,
                txn_puts_per_s: settings.puts_per_s,
                txn_puts_burst: settings.puts_burst,
                agent: format!("agent-{}", self.id),
                key_prefix: String::new(),
                wal_log_id: Some(recovery.log_id.clone()),
                wal_start_mark: wal_mark,
            },
            UploadDeps {
                store: store.clone(),
                cache: Some(cache.clone()),
                controller: controller.clone(),
                clock: clock.clone(),
                entropy: entropy.clone(),
                in_flight,
            },
        );
        sidestream::server::replay_wal(&recovery, wal_mark, &uploader).await.expect("sim: WAL replay");
        let next_id = recovery.last_id().max(wal_mark) + 1;
        let wal = Wal::start(
            wal_settings,
            recovery,
            next_id,
            wal_mark,
            uploader.clone(),
            Some(Arc::new(SimDisk { world: world.clone(), node: self.id })),
        )
        .expect("sim: WAL start");
        let acl_source = controller.clone();
        let authorizer = sidestream::agent::acl::Authorizer::new(
            &sidestream::agent::acl::AclSettings { enabled: false, super_users: Vec::new(), allow_if_no_acl: true },
            move || acl_source.acls(),
        );
        let quota_source = controller.clone();
        let client_telemetry =
            sidestream::agent::client_telemetry::ClientTelemetry::new(&config.client_telemetry, clock.clone(), entropy.clone());
        let agent = Arc::new(Agent {
            settings: AgentSettings {
                node_id: self.id as i32,
                topics: config.topics.clone(),
                cluster_mode: false,
                zone: None,
                max_decompressed_batch_bytes: 1 << 20,
                fetch_max_wait_ms_max: 500,
                log_dir: "memory://sim".into(),
            },
            quotas: sidestream::agent::quota::Quotas::new(
                Box::new(move || quota_source.client_quotas()),
                clock.clone(),
                sidestream::agent::quota::ENTITIES_MAX,
            ),
            controller,
            store,
            clock,
            cache,
            uploader,
            wal,
            hand_offs: Default::default(),
            txn_unflushed: Default::default(),
            share_sessions: Default::default(),
            fetch_sessions: sidestream::agent::fetch_session::FetchSessions::new(16, 1 << 20),
            authorizer,
            broker_configs: sidestream::agent::broker_config::BrokerConfigs::new(&config, &[]),
            internal_topics: Default::default(),
            client_telemetry,
        });
        world.trace.log(format_args!("a{} serving #{}", self.id, self.incarnation));
        self.running = Some(Running { agent, life, shutdown });
    }

    /// Kills the incarnation: nothing it does reaches the store or the controller any more.
    /// `torn_tail`: bytes of a half-written entry appended to the WAL's last segment (a write
    /// the crash cut short, never acknowledged).
    pub fn crash(&mut self, world: &World, torn_tail: Option<Vec<u8>>) {
        let Some(running) = self.running.take() else { return };
        running.life.end();
        running.shutdown.cancel();
        self.lost_batches += running.agent.uploader.losses().batches();
        drop(running);
        let mut torn = 0;
        if let Some(bytes) = torn_tail
            && let Some(last) = last_segment(&self.dir.join("wal"))
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&last).expect("sim: open WAL segment");
            f.write_all(&bytes).expect("sim: tear the WAL tail");
            torn = bytes.len();
        }
        world.trace.log(format_args!("a{} crash #{} (torn tail: {torn} bytes)", self.id, self.incarnation));
    }
}

/// The WAL segment entries are appended to (the highest first entry id).
fn last_segment(dir: &std::path::Path) -> Option<PathBuf> {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            let id = p.file_name()?.to_str()?.strip_suffix(".wal")?.parse().ok()?;
            Some((id, p))
        })
        .collect();
    segments.sort();
    segments.pop().map(|(_, p)| p)
}
